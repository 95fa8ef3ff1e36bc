"""Commands about tasks: spawn, ps, jobs, pstat, kill, sig (PVM 3.4's formats)."""
from __future__ import annotations

import os
import signal

from pvmconsole.console import Console
from pvmconsole.jobs import (
    JobTable,
    copy_line,
    gather,
    job_line,
    parse_spawn,
    ps_header,
    ps_row,
    tids_of,
)
from pvmconsole.registry import Command, CommandError
from pvmconsole.vm import MASTER
from pvmconsole.vmtable import HostRecord
from shmd.errors import PvmBadParam, PvmError, PvmNoTask, strerror
from shmd.tids import CONSOLE_TID, host_of, parse

CONSOLE_ROW = {"console": True, "tid": CONSOLE_TID, "ptid": None, "flags": 0x4, "name": "pvm"}


def _fail(errors: list[str]) -> None:
    if errors:
        raise CommandError("; ".join(errors))


def do_spawn(c: Console, args: list[str]) -> None:
    req = parse_spawn(args)
    c.machine().prune()  # no copies for hosts that went down
    table = JobTable.of(c)
    job, results = table.spawn(req)
    if job is not None:
        c.print(f"[{job.number}]")
    ok = sum(1 for r in results if isinstance(r, int))
    c.print(f"{ok} successful", *(copy_line(r) for r in results))
    if job is not None:
        table.start_relay(job)
    bad = [r for r in results if not isinstance(r, int)]
    seen: list[str] = []
    for e in bad:  # one stderr line per distinct failure, not per copy
        text = str(e)
        if text not in seen:
            seen.append(text)
    _fail(seen)


def _ps_flags(word: str) -> dict:
    if not word.startswith("-"):
        raise CommandError(f"unknown flag {word}")
    o: dict = {"a": False, "l": False, "x": False, "h": None, "n": None}
    i = 1
    while i < len(word):
        ch = word[i]
        if ch in "alx":
            o[ch] = True
        elif ch in "hn":
            o[ch] = word[i + 1:]
            if not o[ch]:
                raise CommandError(f"-{ch} needs a value")
            break
        else:
            raise CommandError(f"unknown flag -{ch}")
        i += 1
    return o


def do_ps(c: Console, args: list[str]) -> None:
    o = _ps_flags(args[0]) if args else _ps_flags("-")
    vm = c.machine()
    if o["a"]:
        vm.prune()  # (hosts that went down are not asked)
    hosts = vm.hosts()
    if o["n"] is not None:
        sel = [h for h in hosts if h.name == o["n"]]
        if not sel:
            raise CommandError(f"unknown host {o['n']}")
    elif o["h"] is not None:
        try:
            htid = parse(o["h"])
        except PvmError:
            raise CommandError(f"unknown host {o['h']}") from None
        sel = [h for h in hosts if h.dtid == htid]
        if not sel:
            raise CommandError(f"unknown host {o['h']}")
    elif o["a"]:
        sel = list(hosts)
    else:
        sel = [h for h in hosts if h.index == MASTER]
    rows = [ps_header(o["l"])]
    if o["x"] and any(h.index == MASTER for h in sel):
        master = next(h for h in sel if h.index == MASTER)
        rows.append(ps_row(master.name, {**CONSOLE_ROW, "pid": os.getpid()}, o["l"]))
    errors = []
    for h, tasks in gather(vm, sel):
        if isinstance(tasks, PvmError):
            errors.append(f"{h.name}: {tasks}")
            continue
        for t in sorted(tasks, key=lambda t: t.get("tid", 0)):
            rows.append(ps_row(h.name, t, o["l"]))
    c.print(*rows)
    _fail(errors)


def _task_index(c: Console, tids: list[int]) -> tuple[dict[int, tuple[HostRecord, dict]], list[str]]:
    """tid -> (host, task) for the given tids, asking only their hosts."""
    vm = c.machine()
    by_index = {h.index: h for h in vm.hosts()}
    want = sorted({by_index[host_of(t)].index for t in tids if host_of(t) in by_index})
    found: dict[int, tuple[HostRecord, dict]] = {}
    errors = []
    for h, tasks in gather(vm, [by_index[i] for i in want]):
        if isinstance(tasks, PvmError):
            errors.append(f"{h.name}: {tasks}")
            continue
        for t in tasks:
            found[int(t["tid"])] = (h, t)
    return found, errors


def do_pstat(c: Console, args: list[str]) -> None:
    parsed = tids_of(args)
    found, errors = _task_index(c, [t for t in parsed if isinstance(t, int)])
    lines = []
    for w, t in zip(args, parsed):
        if isinstance(t, PvmError):
            lines.append(f"{w:>9}  {strerror(PvmBadParam)}")
            errors.append(f"{w}: {strerror(PvmBadParam)}")
        elif t == CONSOLE_TID and t not in found:
            lines.append(f"t{t:8x}  run")
        else:
            lines.append(f"t{t:8x}  {'run' if t in found else strerror(PvmNoTask)}")
    c.print(*lines)
    _fail(errors)


def _signal(c: Console, signum: int, words: list[str], *, cmd: str) -> None:
    """Send *signum* to each tid, by its host; one error per bad tid, the rest go on."""
    parsed = tids_of(words)
    errors: list[str] = []
    tids: list[int] = []
    for w, t in zip(words, parsed):
        if isinstance(t, PvmError):
            errors.append(f"{w}: {strerror(PvmBadParam)}")
        else:
            tids.append(t)
    vm = c.machine()
    by_index = {h.index: h for h in vm.hosts()}
    groups: dict[int, list[int]] = {}
    for t in tids:
        groups.setdefault(host_of(t), []).append(t)
    if CONSOLE_TID in tids:
        found, _ = _task_index(c, [CONSOLE_TID])
        if CONSOLE_TID not in found:  # no task has the console's tid: it means the console
            errors.append(f"t{CONSOLE_TID:x}: that's me.")
            groups[host_of(CONSOLE_TID)].remove(CONSOLE_TID)
    for index, group in groups.items():
        if not group:
            continue
        h = by_index.get(index)
        if h is None:
            errors += [f"t{t:x}: {strerror(PvmNoTask)}" for t in group]
            continue
        try:
            res = vm.link(h).signal(signum, group)
        except PvmError as e:
            errors += [f"t{t:x}: {e}" for t in group]
            continue
        errors += [f"t{t:x}: {strerror(e.code)}" for t, e in res.items() if e is not None]
    _fail(errors)


def do_kill(c: Console, args: list[str]) -> None:
    children = False
    if args and args[0].startswith("-"):
        if args[0] != "-c":
            raise CommandError(f"unknown flag {args[0]}")
        children, args = True, args[1:]
    if not args:
        raise CommandError("incorrect arg count")
    if not children:
        _signal(c, signal.SIGTERM, args, cmd="kill")
        return
    parents = tids_of(args)
    errors = [f"{w}: {strerror(PvmBadParam)}" for w, t in zip(args, parents) if isinstance(t, PvmError)]
    want = {t for t in parents if isinstance(t, int)}
    vm = c.machine()
    kids = []
    for h, tasks in gather(vm, vm.hosts()):
        if isinstance(tasks, PvmError):
            errors.append(f"{h.name}: {tasks}")
            continue
        kids += [f"{int(t['tid']):x}" for t in tasks if t.get("ptid") in want]
    if kids:
        try:
            _signal(c, signal.SIGTERM, kids, cmd="kill")
        except CommandError as e:
            errors.append(str(e))
    _fail(errors)


def do_sig(c: Console, args: list[str]) -> None:
    try:
        signum = int(args[0])
    except ValueError:
        signum = -1
    if not 0 < signum < signal.NSIG:
        raise PvmError(PvmBadParam, f"signal number {args[0]}")
    _signal(c, signum, args[1:], cmd="sig")


def do_jobs(c: Console, args: list[str]) -> None:
    long = False
    if args:
        if args[0] != "-l":
            raise CommandError(f"unknown flag {args[0]}")
        long = True
    table = JobTable.of(c)
    jobs = table.live()
    if not long:
        c.print(*(job_line(j) for j in jobs))
        return
    found: dict[int, tuple[HostRecord, dict]] = {}
    errors: list[str] = []
    if jobs:
        found, errors = _task_index(c, sorted({t for j in jobs for t in j.live}))
    for j in jobs:
        c.print(job_line(j), ps_header(True))
        for t in j.tids:
            if t in j.live and t in found:
                h, task = found[t]
                c.print(ps_row(h.name, task, True))
    _fail(errors)


COMMANDS = [
    Command("spawn", 2, None, "Spawn task", (
        "Syntax:  spawn [ options ] file [ arg ... ]",
        "Options:  -(count)  number of tasks, default 1",
        "          -(host)   spawn on host, default is any (-. = the console's host)",
        "          -(ARCH)   spawn on hosts of ARCH",
        "          -~(host)  spawn on any host but this one (or any ARCH but this)",
        "          -:(wd)    working directory for the tasks (also -host:wd, -ARCH:wd)",
        "          --host=ADDR[:wd]  spawn on the host of this name",
        "          ->        redirect job output to console",
        "          ->(file)  redirect output of job to file",
        "          ->>(file) append output of job to file",
        "The program is looked for on the host's ep= path (a name with '/' is taken as is,",
        "relative to the working directory); a .py program runs with the project's Python.",
    ), do_spawn),
    Command("ps", 1, 2, "List tasks", (
        "Syntax:  ps [ -axl ] [ -h(host tid) ] [ -n(host name) ]  (flags in one word)",
        "Options:  -a       all hosts (default is the console's host)",
        "          -h(tid)  host with this dtid     -n(name)  host with this name",
        "          -l       long output (PTID, PID)  -x       show the console too",
        "Output fields:  HOST  TID  PTID  PID  FLAG  COMMAND",
        "FLAG letters:  c = joined by itself (connected), f = started by pvm_spawn",
    ), do_ps),
    Command("jobs", 1, 2, "Display list of running jobs", ("Syntax:  jobs [ -l ]",), do_jobs),
    Command("pstat", 2, None, "Show status of tasks", ("Syntax:  pstat tid ...",), do_pstat),
    Command("kill", 2, None, "Terminate tasks", (
        "Syntax:  kill [ -c ] tid ...",
        "Options:  -c   kill children of tid",), do_kill),
    Command("sig", 3, None, "Send signal to task", ("Syntax:  sig signum tid ...",), do_sig),
]

"""Tasks seen from the console: `spawn` option parsing and placement over the hosts,
the job table (output of ``->`` jobs arrives while you type), and the ps/jobs formats.

A spawn runs ``pvm_spawn`` once per host that gets copies (hostlink.HostLink.spawn,
in parallel), reads its ``tid``/``err`` lines, and for an output job keeps reading
its ``out``/``eof`` lines on a thread per host until every task's output ended.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pvmconsole.formats import HOST_W
from pvmconsole.registry import CommandError
from pvmconsole.runner import LineStream
from pvmconsole.view import mask as trace_mask
from pvmconsole.vmtable import HostRecord
from shmd.errors import PvmBadParam, PvmCantStart, PvmError, PvmHostFail, PvmNoHost, PvmNotImpl, strerror
from shmd.spawner import parse_err_line
from shmd.tids import CONSOLE_TID, host_of, parse
from shmd.trace import ENV as TRACE_ENV

if TYPE_CHECKING:
    from pvmconsole.console import Console
    from pvmconsole.vm import VirtualMachine

RESULT_TIMEOUT = 60.0  # pvm_spawn must say how each copy went within this
PARALLEL = 5
EXPORT_VAR = "PVM_EXPORT"


# ---- spawn options ------------------------------------------------------------------------
@dataclass
class SpawnRequest:
    prog: str
    args: list[str]
    count: int = 1
    host: str | None = None  # -host
    arch: str | None = None  # -ARCH
    complement: bool = False  # -~host / -~ARCH: every other host
    wd: str | None = None  # -...:wd
    output: str | None = None  # None | "console" | "file"
    path: str | None = None  # ->file / ->>file
    append: bool = False
    trace: bool = False  # -@: the tasks record trace events from their join


def parse_spawn(words: Sequence[str]) -> SpawnRequest:
    """PVM's spawn options (each its own word, before the program): -N count,
    -host, -ARCH, --host=ADDR, [-host|-ARCH|-]:wd, -~host, ->, ->file, ->>file, -@."""
    req = SpawnRequest("", [])
    i = 0
    while i < len(words) and words[i].startswith("-") and len(words[i]) > 1:
        w = words[i][1:]
        i += 1
        if w[0].isdigit():
            if not w.isdigit():
                raise CommandError(f"bad count -{w}")
            req.count = int(w)
        elif w.startswith(">>"):
            req.output, req.path, req.append = "file", w[2:], True
            if not req.path:
                raise CommandError("->> needs a file name")
        elif w.startswith(">"):
            req.output, req.path = ("console", None) if w == ">" else ("file", w[1:])
        elif w[0] == "?":
            raise PvmError(PvmNotImpl, "-? (start under a debugger)")
        elif w == "@":
            req.trace = True
        else:
            if w.startswith("-host="):
                where, _, wd = w[len("-host="):].partition(":")
                req.host = where or None
            else:
                if w[0] == "~":
                    req.complement, w = True, w[1:]
                where, _, wd = w.partition(":")
                if where and where[0].isupper():
                    req.arch = where
                elif where:
                    req.host = where
            if wd:
                req.wd = wd
            if req.complement and not (req.host or req.arch):
                raise CommandError("-~ needs a host or architecture")
    if i >= len(words):
        raise CommandError("incorrect arg count")
    req.prog, req.args = words[i], list(words[i + 1:])
    if req.count < 1:
        raise PvmError(PvmBadParam, f"count {req.count}: at least one copy")
    return req


def place(req: SpawnRequest, hosts: Sequence[HostRecord], start: int) -> list[HostRecord | PvmError]:
    """The host of each copy: the named host, or round robin (from *start*) over the
    hosts of the architecture / all running hosts / all but the named one."""
    if req.host == ".":  # the console's own host (the master)
        req.host = next((h.name for h in hosts if h.index == 1), ".")
    if req.host and not req.complement:
        h = next((h for h in hosts if h.name == req.host), None)
        return [h or PvmError(PvmNoHost, req.host)] * req.count
    cands = [h for h in hosts if h.state == "running"]
    if req.arch:
        cands = [h for h in cands if (h.arch != req.arch) == req.complement]
    elif req.complement:
        cands = [h for h in cands if h.name != req.host]
    if not cands:
        what = req.arch or req.host or "running host"
        return [PvmError(PvmNoHost, f"no {'host but ' if req.complement else ''}{what}")] * req.count
    return [cands[(start + k) % len(cands)] for k in range(req.count)]


def exported_env() -> dict[str, str]:
    """The variables named in PVM_EXPORT, for the spawned tasks."""
    names = [n for n in os.environ.get(EXPORT_VAR, "").split(":") if n]
    env = {n: os.environ[n] for n in names if n in os.environ}
    if env:
        env[EXPORT_VAR] = ":".join(names)
    return env


# ---- jobs -----------------------------------------------------------------------------------
@dataclass
class Job:
    number: int
    tids: list[int]  # in spawn order
    write: Callable[[str], None]  # where its lines go (console or file)
    close: Callable[[], None] = lambda: None
    live: set[int] = field(default_factory=set)
    streams: list[tuple[int, LineStream]] = field(default_factory=list)  # (host index, output)
    done: threading.Event = field(default_factory=threading.Event)


class JobTable:
    """The console's output jobs, numbered from 1 as PVM's."""

    def __init__(self, console: Console):
        self.console = console
        self.jobs: dict[int, Job] = {}
        self._next = 1
        self._cursor = 0  # round-robin placement goes on where the last spawn stopped
        self._lock = threading.RLock()

    @classmethod
    def of(cls, console: Console) -> JobTable:
        if console.jobs is None:
            console.jobs = cls(console)
        return console.jobs

    def live(self) -> list[Job]:
        with self._lock:
            return [j for _, j in sorted(self.jobs.items())]

    def wait_all(self, timeout: float | None = None) -> bool:
        """Wait until every job finished; False if some did not within *timeout*."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for j in self.live():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not j.done.wait(left):
                return False
        return True

    # -- spawn --------------------------------------------------------------------------------
    def spawn(self, req: SpawnRequest) -> tuple[Job | None, list[int | PvmError]]:
        """Start the copies; returns the job (output jobs only) and per copy a tid or error."""
        c = self.console
        vm = c.machine()
        hosts = vm.hosts()
        job_write, job_close = None, lambda: None
        if req.output == "file":
            assert req.path is not None
            # O_APPEND either way: two jobs writing one file (->f, then ->>f) each write at
            # its end; without it, the first job's writes went at its own offset, over
            # lines the second had appended
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if req.append else os.O_TRUNC)
            try:
                fd = os.open(os.path.expanduser(req.path), flags, 0o600)
            except OSError as e:
                raise CommandError(f"{req.path}: {e.strerror}") from None
            f = os.fdopen(fd, "a", encoding="utf-8", errors="replace")
            flock = threading.Lock()

            def job_write(line: str) -> None:  # noqa: F811
                with flock:
                    if not f.closed:
                        f.write(line + "\n")
                        f.flush()

            job_close = f.close
        elif req.output == "console":
            job_write = c.print_async  # type: ignore[assignment]  # (*lines) takes one line
        with self._lock:
            where = place(req, hosts, self._cursor)
            self._cursor += req.count
        relay = job_write is not None
        groups: dict[str, list[int]] = {}
        for k, h in enumerate(where):
            if isinstance(h, HostRecord):
                groups.setdefault(h.name, []).append(k)
        results: list[int | PvmError] = [h for h in where]  # type: ignore[misc]
        env = exported_env()
        if req.trace:  # the console's trace mask (shmd/trace.py)
            env[TRACE_ENV] = str(trace_mask.bits(self.console))
        by_name = {h.name: h for h in hosts}
        streams: dict[str, LineStream] = {}

        def one(name: str) -> tuple[str, list[int | PvmError], LineStream | None]:
            h = by_name[name]
            n = len(groups[name])
            link = vm.link(h)
            try:
                s = link.spawn(req.prog, req.args, n, ptid=CONSOLE_TID, relay=relay,
                               wd=req.wd or h.options.get("wd"), ep=h.options.get("ep"),
                               env=env)
            except PvmError as e:
                return name, [e] * n, None
            got: list[int | PvmError] = []
            notes: list[str] = []
            deadline = time.monotonic() + RESULT_TIMEOUT
            try:
                while len(got) < n:
                    line = s.readline(max(0.0, deadline - time.monotonic()))
                    if line is None or line == "spawned":
                        break
                    if line.startswith("tid "):
                        got.append(int(line[4:], 16))
                    elif line.startswith("err "):
                        got.append(parse_err_line(line))
                    elif line.strip():
                        notes.append(line.strip())
                if len(got) == n:
                    line = s.readline(max(0.0, deadline - time.monotonic()))  # "spawned"
            except TimeoutError:
                notes.append(f"pvm_spawn gave no answer within {RESULT_TIMEOUT:g} s")
            if len(got) < n:
                why = "; ".join(notes[-3:]) or "pvm_spawn ended early"
                code = PvmCantStart if not got else PvmHostFail
                got += [PvmError(code, f"{name}: {why}")] * (n - len(got))
            if not relay or not any(isinstance(g, int) for g in got):
                s.close()
                return name, got, None
            return name, got, s

        names = list(groups)
        if len(names) <= 1:
            outs = [one(n) for n in names]
        else:
            # pvm_spawn over SSH: PARALLEL at a time (as PVM's rsh); pvm_netds: every host at once
            fast = not relay and all(vm.link(by_name[n]).netd is not None for n in names)
            with ThreadPoolExecutor(max_workers=len(names) if fast else min(PARALLEL, len(names))) as pool:
                outs = list(pool.map(one, names))
        for name, got, s in outs:
            for k, g in zip(groups[name], got):
                results[k] = g
            if s is not None:
                streams[name] = s
        if not relay:
            return None, results
        tids = [r for r in results if isinstance(r, int)]
        with self._lock:
            job = Job(self._next, tids, job_write, job_close, live=set(tids))
            self._next += 1
            if tids:
                self.jobs[job.number] = job
        job.streams = [(by_name[n].index, st) for n, st in streams.items()]
        return job, results

    def start_relay(self, job: Job) -> None:
        """Threads that pass each host's output lines on; the last EOF finishes the job."""
        if not job.live:
            self._finish(job)
            return
        for index, s in job.streams:
            threading.Thread(target=self._pump, args=(job, index, s), daemon=True,
                             name=f"job {job.number}").start()

    def _pump(self, job: Job, index: int, s: LineStream) -> None:
        for line in s:
            kind, _, rest = line.partition(" ")
            try:
                if kind == "out":
                    hexid, _, text = rest.partition(" ")
                    job.write(f"[{job.number}:t{int(hexid, 16):x}] {text}")
                elif kind == "eof":
                    self._eof(job, int(rest, 16))
                elif kind == "done":
                    break
            except ValueError:
                continue  # not a relay line (a diagnostic of the host): ignored
        s.close()
        # The stream ended: a task of this host without its EOF (host or connection lost)
        for tid in sorted(job.live):
            if host_of(tid) == index:
                self._eof(job, tid)

    def _eof(self, job: Job, tid: int) -> None:
        with self._lock:
            if tid not in job.live:
                return
            job.live.discard(tid)
            last = not job.live
        job.write(f"[{job.number}:t{tid:x}] EOF")
        if last:
            self._finish(job)

    def _finish(self, job: Job) -> None:
        with self._lock:
            self.jobs.pop(job.number, None)
        job.close()
        self.console.print_async(f"[{job.number}] finished")
        job.done.set()


# ---- tasks of the hosts ------------------------------------------------------------------------
def gather(vm: VirtualMachine, hosts: Sequence[HostRecord]) -> list[tuple[HostRecord, list[dict] | PvmError]]:
    """Each host's tasks (its pvm_netd's answer, all asked at once; else pvm_spawn --tasks,
    in parallel); a failed host gives its error."""
    pre = vm.asked(hosts, "tasks")

    def one(h: HostRecord) -> tuple[HostRecord, list[dict] | PvmError]:
        try:
            return h, vm.link(h).tasks(asked=pre.get(h.name))
        except PvmError as e:
            return h, e
    if len(hosts) <= 1 or all(h.name in pre for h in hosts):
        return [one(h) for h in hosts]  # (answered already: nothing to wait for)
    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(hosts))) as pool:
        return list(pool.map(one, hosts))


def tids_of(words: Sequence[str]) -> list[int | PvmError]:
    out: list[int | PvmError] = []
    for w in words:
        try:
            out.append(parse(w))
        except PvmError as e:
            out.append(e)
    return out


# ---- formats ----------------------------------------------------------------------------------
_FLAG_LETTERS = ((0x400, "T"), (0x200, "H"), (0x100, "R"), (0x20, "s"), (0x10, "o"),
                 (0x8, "a"), (0x4, "c"), (0x2, "f"))


def flag_string(flags: int) -> str:
    """PVM's ps FLAG: hex, '/', the set bits' letters high to low (6 -> "6/c,f")."""
    letters = [ch for bit, ch in _FLAG_LETTERS if flags & bit]
    return f"{flags:x}/{','.join(letters)}" if letters else f"{flags:x}"


def ps_header(long: bool) -> str:
    extra = f"{'PTID':>9}{'PID':>8}" if long else ""
    return f"{'HOST':>{HOST_W}}{'TID':>9}{extra}{'FLAG 0x':>10} COMMAND"


def _tidcol(tid: int | None) -> str:
    if tid is None:
        return f"{'-':>9}"
    if tid == CONSOLE_TID:
        return "   (cons)"
    return f" {tid:8x}"


def ps_row(host: str, t: Mapping[str, object], long: bool) -> str:
    tid = t.get("tid")
    tidcol = "   (cons)" if t.get("console") else f" {int(tid):8x}"  # type: ignore[call-overload]
    extra = ""
    if long:
        ptid = t.get("ptid")
        extra = _tidcol(int(ptid) if ptid is not None else None) + f" {int(t.get('pid', 0)):6d}"  # type: ignore[call-overload]
    name = str(t.get("name") or "-")
    return f"{host:>{HOST_W}}{tidcol}{extra} {flag_string(int(t.get('flags', 0))):>9} {name}"  # type: ignore[call-overload]


def job_line(job: Job) -> str:
    return f" {job.number}:" + "".join(f" t{t:x}" for t in job.tids if t in job.live)


def copy_line(r: int | PvmError) -> str:
    return f"t{r:x}" if isinstance(r, int) else strerror(r.code)


__all__ = ["SpawnRequest", "parse_spawn", "place", "JobTable", "Job", "gather", "tids_of",
           "flag_string", "ps_header", "ps_row", "job_line", "copy_line"]

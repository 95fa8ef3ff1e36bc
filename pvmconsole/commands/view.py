"""``view`` (the live full-screen view of hosts and tasks) and ``trace`` (message
traces: on, off, save as Chrome trace-event JSON, show as a space-time diagram).
See docs/view.md."""
from __future__ import annotations

import json
import os
import shutil
import time

from pvmconsole.console import Console
from pvmconsole.hostlink import STAT_TIMEOUT, HostLink
from pvmconsole.netlink import ask_all
from pvmconsole.registry import Command, CommandError
from pvmconsole.view import clocks, mask
from pvmconsole.view.model import Selection, frame, keep_best_clocks
from pvmconsole.view.source import poll
from pvmconsole.vm import VirtualMachine
from shmd import private, trace
from shmd.errors import PvmError

SNAPSHOT_GAP = 0.5  # seconds between the two samples of a one-shot frame (for its rates)
TRACE_TIMEOUT = 60.0  # a dump of a million events takes its time over SSH


def title(vm: VirtualMachine) -> str:
    return f"pvm view  vm {vm.vmid or '-'}  {time.strftime('%H:%M:%S')}"


def _terminal(c: Console) -> bool:
    """Is the console's output a terminal a full-screen app can use?"""
    isatty = getattr(c.out, "isatty", None)
    return bool(isatty is not None and isatty() and os.environ.get("TERM") != "dumb")


def do_view(c: Console, args: list[str]) -> None:
    vm = c.machine()
    if _terminal(c):
        from pvmconsole.view.app import run  # prompt_toolkit's app only for a terminal
        run(vm, lambda: title(vm))
        return
    before = poll(vm)  # a one-shot frame: two samples, for the rates
    time.sleep(SNAPSHOT_GAP)
    now = poll(vm)
    best: dict[str, list[float]] = {}
    for s in (before, now):
        keep_best_clocks(best, s)
    c.print(*frame(now, before, Selection(), title=title(vm)))


# ---- trace ------------------------------------------------------------------------------
def _by_program(link: HostLink, word: str) -> dict:
    """``pvm_shmd_stat --trace WORD`` run on the host (the way without pvm_netd)."""
    r = link.runner.run([link.stat_program, "--trace", word, *([f"-vmid={link.vmid}"] if link.vmid else [])],
                        timeout=TRACE_TIMEOUT if word in ("dump", "take") else STAT_TIMEOUT)
    if r.rc != 0:
        raise PvmError(0, (r.stderr.strip().splitlines() or [f"exit {r.rc}"])[-1])
    reply = json.loads(r.stdout)
    if not isinstance(reply, dict):
        raise ValueError(r.stdout[:40])
    return reply


def _on_hosts(vm: VirtualMachine, word: str, refresh: bool = False) -> list[tuple[str, dict, list[float]]]:
    """Trace request *word* (on, off, a mask, dump, take) done on every host: asked of
    each host's pvm_netd on the console's open channel, all at once (shmd/traceask.py),
    else by running ``pvm_shmd_stat --trace WORD`` there. (host, reply, its clock:
    [offset, uncertainty, when], clocks.py; measured again first when *refresh*)."""
    out, errors = [], []
    kept = clocks.current(vm, refresh)
    hosts = vm.hosts()
    links = [vm.link(h) for h in hosts]
    netds = [(k, link.netd) for k, link in enumerate(links) if link.netd is not None]
    timeout = TRACE_TIMEOUT if word in ("dump", "take") else STAT_TIMEOUT
    asked = dict(zip((k for k, _ in netds), ask_all([n for _, n in netds if n], "trace", timeout, {"word": word})))
    for k, h in enumerate(hosts):
        try:
            reply = asked.get(k)
            if not isinstance(reply, dict):  # no pvm_netd there, or it failed: the program
                reply = _by_program(links[k], word)
        except (PvmError, ValueError) as e:
            errors.append(f"{h.name}: {e}")
            continue
        out.append((h.name, reply, kept.get(h.name, [])))  # ([]: its clock could not be measured)
    if errors:
        raise CommandError("; ".join(errors))
    return out


def _trace(c: Console) -> tuple[list[trace.Event], dict[int, str], dict[str, list[float]], dict[str, float]]:
    """The events of every host on the console's clock (each host's offset taken off,
    then shifted within it where a message would arrive before it was sent: trace.align),
    tid -> name, each host's clock and the shift."""
    dumps = _on_hosts(c.machine(), "dump", refresh=True)
    lost = sum(int(d.get("lost", 0)) for _, d, _ in dumps)
    if lost:
        c.print(f"({lost} trace events lost: a ring overran between two drains)")
    events, names = trace.events_of((h, d, o[0] if o else 0.0) for h, d, o in dumps)
    events, shifts = trace.align(events, {h: o[1] if o else clocks.UNKNOWN for h, _, o in dumps})
    return events, names, {h: o for h, _, o in dumps}, shifts


def clock_lines(kept: dict[str, list[float]], shifts: dict[str, float]) -> list[str]:
    """The hosts' clocks as trace show prints them above the diagram."""
    def one(h: str, o: list[float]) -> str:
        moved = shifts.get(h, 0.0)
        return clocks.words(h, o) + (f", moved {moved * 1e6:+.1f} us by its messages" if moved else "")

    return ["clocks (host - console): " + "; ".join(one(h, o) for h, o in sorted(kept.items()))]


def do_trace(c: Console, args: list[str]) -> None:
    op = args[0] if args else ""
    if op in ("", "+", "-", "*", "xpvm") or op.removeprefix("pvm_") in trace.PVM_EVENTS:
        try:
            mask.change(c, args)  # PVM's trace [+|-] name ...: the events recorded
        except ValueError as e:
            raise CommandError(str(e)) from None
        if not args:
            c.print(*mask.lines(c))
    elif op in ("buf", "opt"):
        raise CommandError(f"{op}: not implemented (events go to the hosts' trace rings)")
    elif op in ("on", "off"):
        word = str(mask.bits(c)) if op == "on" else "off"
        for name, reply, clock in _on_hosts(c.machine(), word):
            c.print(f"{name}: trace {op}, clock offset {clocks.words('', clock).strip()}"
                    f", {reply.get('events', 0)} events kept")
    elif op == "save":
        if len(args) != 2:
            raise CommandError("Syntax: trace save FILE")
        events, names, kept, shifts = _trace(c)
        offsets = {h: (o[0] if o else 0.0) - shifts.get(h, 0.0) for h, o in kept.items()}
        try:
            private.write_atomic(args[1], json.dumps(trace.chrome(events, names, offsets)).encode())
        except OSError as e:
            raise CommandError(f"{args[1]}: {e.strerror or e}") from None
        c.print(f"{len(events)} events, {len(trace.flows(events)[0])} messages written to {args[1]}")
    elif op == "show":
        try:
            window = [float(w) / 1e3 for w in args[1:3]]
        except ValueError:
            raise CommandError(f"trace show {' '.join(args[1:])}: times in ms (FROM TO)") from None
        if len(window) == 2 and not 0 <= window[0] < window[1]:
            raise CommandError(f"trace show {' '.join(args[1:])}: FROM must be >= 0 and less than TO")
        events, names, kept, shifts = _trace(c)
        head = clock_lines(kept, shifts)
        if _terminal(c) and not window and events:
            from pvmconsole.view.timeline import run as show  # full screen: zoom, scroll
            show(events, names, head)
            return
        width = max(40, shutil.get_terminal_size((120, 24)).columns - 30)
        a, b = (window + [None, None])[:2]
        c.print(*head, *trace.diagram(events, names, width, a, b), *trace.use_lines(events, names, width, a, b))
    elif op == "clear":
        _on_hosts(c.machine(), "take")
    else:
        raise CommandError(f'no such event "{op}" (nor on, off, save, show, clear)')


COMMANDS = [
    Command("view", 1, 1, "Live view of hosts and tasks", (
        "Syntax:  view",
        "Full screen, refreshed 4 times a second: every host (daemon, load, tasks, pages",
        "used per segment, messages and bytes per second in and out) and every task (tid,",
        "host, program, state, messages and bytes sent and received).",
        "Keys: q quit, up/down select a task, k kill it, / filter, esc clear the filter.",
        "Not on a terminal (pvm -e view): one frame, printed.",
    ), do_view),
    Command("trace", 1, None, "Set/display trace event mask; trace on, off, save, show", (
        "Syntax:  trace                 print the trace mask",
        "         trace [+|-] name ...  add or remove PVM events (pvm_ optional), * all, xpvm",
        "         trace on | off        every task of every host records the mask's events",
        "         trace save FILE       Chrome trace-event JSON (ui.perfetto.dev opens it)",
        "         trace show [FROM TO]  space-time diagram, times in ms from the first event",
        "         trace clear           forget the events kept so far",
        "spawn -@ traces the spawned tasks alone (the mask's events).",
    ), do_trace),
]

"""What the console's ``view`` shows, as text: hosts and tasks from each host's daemon
state (``pvm_shmd_stat --json``, the state ``stat`` prints), rates from two samples.

Nothing here talks to a host: ``Sample`` holds what one round of ``vm.stat()`` gave,
``frame`` lays two samples out as lines (the full-screen app and ``pvm -e view``
print the same lines).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pvmconsole.console import printable
from pvmconsole.hostlink import users_tasks
from shmd.layout import COUNTERS

BAR = 10  # columns of a segment's pages bar
STATES = {"running": "running", "precv": "precv", "pages": "pages", "exited": "exited"}


@dataclass
class Sample:
    """One round of the hosts' daemon states: (host name, state dict or error text)."""

    hosts: list[tuple[str, dict | str]]
    taken: float = field(default_factory=time.monotonic)

    def state(self, name: str) -> dict | None:
        return next((s for n, s in self.hosts if n == name and isinstance(s, dict)), None)


@dataclass
class Selection:
    """What the user picked: a row of the task table, a filter on the tasks, and a
    host (its row in the hosts table, -1: none) whose tasks alone are shown."""

    row: int = 0
    filter: str = ""
    host: int = -1
    on_hosts: bool = False  # the up/down keys move in the hosts table


def _num(x: float) -> str:
    """A count or rate in at most 6 columns: 999, 12.3k, 4.56M, 7.89G."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div * 0.9995 and not (unit == "k" and abs(x) < 1e4 and x == int(x)):
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}" if x == int(x) else f"{x:.1f}"


def _rate(now: dict, before: dict | None, key: str) -> float:
    """Per second, from the daemon's own clock at the two samples (0 without two)."""
    if before is None or now.get("pid") != before.get("pid"):
        return 0.0
    dt = float(now.get("clock", 0)) - float(before.get("clock", 0))
    d = int(now["counters"].get(key, 0)) - int(before["counters"].get(key, 0))
    return d / dt if dt > 0 and d >= 0 else 0.0


LEVELS = ".123456789#"  # a segment's pages in use, in tenths, when it has one column


def bar(used: int, total: int, width: int = BAR) -> str:
    fill = round(width * used / total) if total else 0
    return "[" + "#" * fill + "." * (width - fill) + "]"


def pages_bar(segs: list[dict]) -> str:
    """Pages in use per segment as bars: 10 columns each for up to 2 segments, 4 for
    up to 4, else one column each (``.`` none, ``1``-``9`` tenths, ``#`` full)."""
    used = [(int(s["pages"]) - int(s["free"]), int(s["pages"])) for s in segs]
    if len(used) > 4:
        return "[" + "".join(LEVELS[round(10 * u / t) if t else 0] for u, t in used) + "]"
    return "".join(bar(u, t, BAR if len(used) <= 2 else 4) for u, t in used)


def tasks_of(sample: Sample) -> list[tuple[str, dict]]:
    """(host, task) of every task the hosts report, live ones then exited ones, by tid."""
    live, gone = [], []
    for name, st in sample.hosts:
        if isinstance(st, dict):
            live += [(name, t) for t in users_tasks(st.get("tasks", [])) if isinstance(t, dict)]
            gone += [(name, t) for t in st.get("exited_tasks", []) if isinstance(t, dict)]
    seen = {t["tid"] for _, t in live}
    gone = [(h, t) for h, t in gone if t["tid"] not in seen]
    return sorted(live, key=lambda x: x[1]["tid"]) + sorted(gone, key=lambda x: x[1]["tid"])


def shown_tasks(sample: Sample, sel: Selection) -> list[tuple[str, dict]]:
    """The tasks the filter lets through (its text in the tid, host, program or state)."""
    f = sel.filter.lower()
    only = sample.hosts[sel.host][0] if 0 <= sel.host < len(sample.hosts) else None
    return [(h, t) for h, t in tasks_of(sample)
            if (only is None or h == only) and (not f or any(f in str(x).lower() for x in
                            (f"t{t['tid']:x}", h, t.get("name", ""), t.get("state", ""))))]


HOST_HEAD = (f"{'HOST':<16} {'DAEMON':<8} {'LOAD':>5} {'TASKS':>5}  {'PAGES USED (per segment)':<30}"
             f" {'MSG/s IN':>8} {'OUT':>7} {'B/s IN':>8} {'OUT':>7}")
TASK_HEAD = (f"  {'TID':<9} {'HOST':<16} {'PROGRAM':<16} {'STATE':<8} {'SENT':>7} {'SENT B':>8}"
             f" {'RECVD':>7} {'RECVD B':>8}")


def host_lines(now: Sample, before: Sample | None, picked: int = -1) -> list[str]:
    """The hosts table; host number *picked* marked (``>`` before its name)."""
    lines = [HOST_HEAD]
    for k, (name, st) in enumerate(now.hosts):
        label = (">" if k == picked else "") + name
        if not isinstance(st, dict):
            lines.append(f"{label[:16]:<16} {'down':<8} {printable(st)[:80]}")
            continue
        prev = before.state(name) if before is not None else None
        segs = [s for s in st.get("segments", []) if isinstance(s, dict)]
        pages = pages_bar(segs)
        used = sum(int(s["pages"]) - int(s["free"]) for s in segs)
        total = sum(int(s["pages"]) for s in segs)
        pages = f"{pages} {used}/{total}"
        rates = [_rate(st, prev, k) for k in ("recvd", "sent", "recvd_bytes", "sent_bytes")]
        lines.append(f"{label[:16]:<16} {'pid ' + str(st.get('pid', '?')):<8} "
                     f"{float(st.get('load', 0)):5.2f} {len(users_tasks(st.get('tasks', []))):5d}  {pages:<30}"
                     f" {_num(rates[0]):>8} {_num(rates[1]):>7} {_num(rates[2]):>8} {_num(rates[3]):>7}")
    return lines


def clock_line(now: Sample) -> list[str]:
    """The clock offsets of the hosts not on this machine (a line, or none)."""
    words = [f"{name} {o[0] * 1e6:+.0f} us (+-{o[1] * 1e6:.0f})" for name, st in now.hosts
             if isinstance(st, dict) and isinstance(o := st.get("clock_offset"), list)
             and len(o) == 2 and o[1]]
    return [f"clock offsets (host - console): {', '.join(words)}"] if words else []


def keep_best_clocks(best: dict[str, list[float]], now: Sample) -> None:
    """Give each host of *now* the best clock offset seen so far (the one measured
    with the shortest round trip), remembered in *best*."""
    for name, st in now.hosts:
        if not isinstance(st, dict) or not isinstance(st.get("clock_offset"), list):
            continue
        key = f"{name} {st.get('pid')}"  # a new daemon: a new clock history
        if key not in best or st["clock_offset"][1] < best[key][1]:
            best[key] = st["clock_offset"]
        st["clock_offset"] = best[key]


def task_line(host: str, t: dict, selected: bool) -> str:
    c = [int(t.get(k, 0)) for k in COUNTERS]
    tid = f"t{t['tid']:x}"
    return (f"{'>' if selected else ' '} {tid:<9} {host[:16]:<16} "
            f"{printable(str(t.get('name', '')))[:16]:<16} {STATES.get(t.get('state', ''), '?'):<8}"
            f" {_num(c[0]):>7} {_num(c[1]):>8} {_num(c[2]):>7} {_num(c[3]):>8}")


def frame(now: Sample, before: Sample | None, sel: Selection, height: int = 0,
          title: str = "") -> list[str]:
    """The view's lines: a title, the hosts table, the tasks table (from *sel.row* on
    when the tasks do not fit in *height* lines; 0: no limit), a key help line."""
    sel.host = max(-1, min(sel.host, len(now.hosts) - 1))
    tasks = shown_tasks(now, sel)
    sel.row = max(0, min(sel.row, len(tasks) - 1))
    ntasks = sum(1 for _, t in tasks if t.get("state") != "exited")
    head = [f"{title}  {len(now.hosts)} host{'s' * (len(now.hosts) != 1)}, {ntasks} task"
            f"{'s' * (ntasks != 1)}" + (f"  filter /{sel.filter}" if sel.filter else "")
            + (f"  host {now.hosts[sel.host][0]}" if sel.host >= 0 else ""),
            "", *host_lines(now, before, sel.host), *clock_line(now), "", TASK_HEAD]
    room = max(height - len(head) - 1, 0) if height else len(tasks)
    first = max(0, min(sel.row - room + 1, len(tasks) - room)) if room < len(tasks) else 0
    return [*head, *(task_line(h, t, k == sel.row)  # only the rows that fit are laid out
                     for k, (h, t) in enumerate(tasks[first:first + room], first))]


def selected(now: Sample, sel: Selection) -> tuple[str, dict] | None:
    tasks = shown_tasks(now, sel)
    return tasks[sel.row] if 0 <= sel.row < len(tasks) else None


def sample(results: Sequence[tuple[str, object]]) -> Sample:
    """A Sample from ``vm.stat()``'s (name, state or PvmError) pairs."""
    return Sample([(n, s if isinstance(s, dict) else str(s)) for n, s in results])

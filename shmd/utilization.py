"""XPVM's utilization view, from a trace: how many tasks compute, are in message
overhead, or wait, at each moment.

A task counts from its first event (its spawn, or its first call once tracing began)
to its exit (or the trace's end). Inside a receive (precv start to end) it *waits*
until the message it took was sent (the psend that flows to it; the whole receive when
that send was not traced), then it is in *overhead* (the message is there: matched,
copied) until the receive returns; a receive whose message was sent before it began
is all overhead. Anything else is *computing*. (A psend is one instant in the trace:
its cost shows as computing.)

``steps`` gives the counts where they change; ``rows`` draws them as text columns for
``trace show`` (as the diagram's time axis), ``counters`` as Chrome counter events
(``"ph": "C"``) that Perfetto and chrome://tracing draw as tracks.
"""
from __future__ import annotations

from collections.abc import Sequence

from .trace import EXIT, PRECV_END, PRECV_START, Event, flows

STATES = ("computing", "overhead", "waiting")
COMPUTING, OVERHEAD, WAITING = range(3)
CHARS = "#=."  # a column's cells, from the bottom: computing, overhead, waiting


def spans(events: Sequence[Event]) -> dict[int, tuple[float, float, list[tuple[float, float, int]]]]:
    """Per task: (first, last moment it counts, its (start, end, OVERHEAD or WAITING)
    intervals), times as in *events* (which are in time order)."""
    if not events:
        return {}
    sent = {id(f.recv): f.send.t for f in flows(events)[0]}
    end_of_trace = events[-1].t
    out: dict[int, tuple[float, float, list[tuple[float, float, int]]]] = {}
    began: dict[int, float] = {}
    for e in events:
        first, last, parts = out.get(e.owner, (e.t, end_of_trace, []))
        if e.kind == PRECV_START:
            began[e.owner] = e.t
        elif e.kind == PRECV_END:
            s = began.pop(e.owner, e.t)
            # (its send not traced: taken as waited for all along)
            ready = min(max(sent[id(e)], s), e.t) if id(e) in sent else e.t
            if ready > s:
                parts.append((s, ready, WAITING))
            if e.t > ready:
                parts.append((ready, e.t, OVERHEAD))
        elif e.kind == EXIT:
            last = e.t
        out[e.owner] = (first, last, parts)
    for tid, s in began.items():  # still waiting when the trace ends
        first, last, parts = out[tid]
        parts.append((s, last, WAITING))
    return out


def steps(events: Sequence[Event]) -> list[tuple[float, int, int, int]]:
    """(time, computing, overhead, waiting) at each moment the counts change, in time
    order; the last has every count 0 (the trace's end)."""
    delta: dict[float, list[int]] = {}

    def add(t: float, state: int, d: int) -> None:
        delta.setdefault(t, [0, 0, 0])[state] += d

    for first, last, parts in spans(events).values():
        add(first, COMPUTING, 1)
        add(last, COMPUTING, -1)
        for s, e, state in parts:
            s, e = max(s, first), min(e, last)
            if e > s:
                add(s, COMPUTING, -1)
                add(s, state, 1)
                add(e, state, -1)
                add(e, COMPUTING, 1)
    out, now = [], [0, 0, 0]
    for t in sorted(delta):
        now = [a + b for a, b in zip(now, delta[t])]
        out.append((t, now[0], now[1], now[2]))
    return out


def averages(st: Sequence[tuple[float, int, int, int]], a: float, b: float, width: int
             ) -> list[tuple[float, float, float]]:
    """The mean (computing, overhead, waiting) over each of *width* columns from time
    *a* to *b* (times as in *st*; before its first step every count is 0)."""
    span = (b - a) / width
    if span <= 0:
        return [(0.0, 0.0, 0.0)] * width
    out = []
    j = 0
    for c in range(width):
        x0, x1 = a + c * span, a + (c + 1) * span
        while j + 1 < len(st) and st[j + 1][0] <= x0:
            j += 1  # the step in force at x0
        area = [0.0, 0.0, 0.0]
        k = j
        while k < len(st) and st[k][0] < x1:
            lo, hi = max(st[k][0], x0), min(st[k + 1][0], x1) if k + 1 < len(st) else x1
            for s in range(3):
                area[s] += st[k][1 + s] * max(hi - lo, 0.0)
            k += 1
        out.append((area[0] / span, area[1] / span, area[2] / span))
    return out


def rows(events: Sequence[Event], width: int, start: float, end: float, height: int = 6) -> list[str]:
    """The counts as *height* text rows of *width* columns (the top row first), time
    from *start* to *end* seconds after the first event: in each column, from the
    bottom, ``#`` computing, ``=`` overhead, ``.`` waiting, one row per task when the
    tasks fit (else scaled)."""
    st = steps(events)
    if not st:
        return []
    t0 = events[0].t
    most = max(c + o + w for _, c, o, w in st) or 1
    scale = min(1.0, height / most)
    h = min(height, most)
    cols = averages(st, t0 + start, t0 + end, width)
    tops = [(round(c * scale), round((c + o) * scale), round((c + o + w) * scale)) for c, o, w in cols]
    return ["".join(CHARS[0] if r < tc else CHARS[1] if r < to else CHARS[2] if r < tw else " "
                    for tc, to, tw in tops) for r in range(h - 1, -1, -1)]


def counters(events: Sequence[Event], pid: int, us) -> list[dict]:
    """Chrome trace-event counter events ("ph": "C", one track per state) under
    process *pid*; *us* turns a time into the file's microseconds."""
    return [{"ph": "C", "name": "utilization", "pid": pid, "tid": 0, "ts": us(t),
             "args": {"computing": c, "overhead": o, "waiting": w}} for t, c, o, w in steps(events)]

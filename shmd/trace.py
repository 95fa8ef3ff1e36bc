"""Message tracing (PVM's trace option; what XPVM drew): events, the rings, the files.

A traced task records an event for each ``psend``, ``precv``/``precv_into``/``precv_view``
(start and end), its join (SPAWN) and its leave (EXIT): 32 bytes (``EVENT``: monotonic
time, kind, source, destination, tag, length) stored in its own slot's trace ring in
segment 0 (``layout.trace_ring_off``), one writer per ring: stores, no system call. The
events are kept in a list first and written when the task publishes its counters
(idle, taskbase.py's _publish), when a receive starts with NOTED kept, at a switch,
when it leaves and when its interpreter exits without a leave (``_at_exit``).

What is recorded is a mask (``BIT``; PVM's event names map to it: ``PVM_EVENTS``):
for a task spawned with ``$PVM_TRACE=<mask>`` (the console's ``spawn -@``) and for
every task of a host whose header trace word is a mask (``trace on``). A task looks at
that word when it publishes its counters (idle, every PUBLISH_EVERY sends) and
``switch`` follows it: with the compiled fast path, its Routes and Inbox are given the
task's TraceRing (shmd._fast: they record their own events) and the general paths past
them are wrapped (``_wrap_general``); without it, the public calls are wrapped. With
tracing off the task runs the plain methods, so nothing is checked per message at all.

pvm_shmd drains the rings (``Collector``) every few milliseconds while tracing is on,
when a task leaves, and when asked (``pvm_shmd_stat --trace dump``); it stores how far
it drained beside the count, and a task keeps (up to BACKLOG) what its ring has no
room for rather than write over events not drained. ``chrome`` turns the
events of every host into Chrome trace-event JSON (Perfetto, chrome://tracing), and
``diagram`` draws them as text, time across and one line per task.
"""
from __future__ import annotations

import atexit
import functools
import itertools
import os
import struct
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from . import control, fastpath, layout
from .errors import PvmError

ENV = "PVM_TRACE"  # a mask (below): the task traces from its join (spawn -@)
EVENT = struct.Struct("<diiiiQ")  # time, kind, src, dst, tag, length
SPAWN, EXIT, PSEND, PRECV_START, PRECV_END = 1, 2, 3, 4, 5
KINDS = {SPAWN: "spawn", EXIT: "exit", PSEND: "psend", PRECV_START: "precv",
         PRECV_END: "precv end"}
# A trace mask (the header's trace word, $PVM_TRACE): which events are recorded.
BIT = {SPAWN: 1, EXIT: 2, PSEND: 4, PRECV_START: 8, PRECV_END: 8}
ALL = 15
# PVM's trace event names (its console's `trace` mask; the TEV table) and the events
# of ours each stands for (0: a call this library has not, accepted and not recorded)
PVM_EVENTS: dict[str, int] = {
    **dict.fromkeys((
        "addhosts barrier bcast bufinfo config delete delhosts freebuf getfds getinst "
        "getopt getrbuf getsbuf gettid gsize halt initsend insert joingroup kill lookup "
        "lvgroup mkbuf mstat mytid notify parent perror probe pstat sendsig setopt setrbuf "
        "setsbuf start_pvmd tasks tickle tidtohost version reg_hoster reg_rm reg_tasker "
        "reg_tracer archcode catchout getmwid gettmask hostsync packf reduce setmwid "
        "settmask unpackf gather scatter putinfo getinfo delinfo getmboxinfo newcontext "
        "freecontext setcontext getcontext siblings getminfo setminfo addmhf delmhf "
        "mhf_invoke timing profiling user_defined").split(), 0),
    **{f"{p}{t}": 0 for p in ("pk", "upk") for t in
       ("byte", "cplx", "dcplx", "double", "float", "int", "uint", "long", "ulong", "short",
        "ushort", "str")},
    "send": 4, "psend": 4, "mcast": 4, "recv": 8, "precv": 8, "trecv": 8, "nrecv": 8,
    "recvf": 8, "spawn": 1, "newtask": 1, "spntask": 1, "exit": 2, "endtask": 2}


def mask_of(names) -> int:
    """The mask of the events PVM event *names* stand for."""
    m = 0
    for n in names:
        m |= PVM_EVENTS[n]
    return m


def env_mask(value: str | None) -> int:
    """The mask $PVM_TRACE asks for (0: not traced; anything but a mask is not one)."""
    return int(value) if value and value.isdigit() and 0 < int(value) <= ALL else 0
MAX_KEPT = 1_000_000  # events a daemon keeps (older ones are dropped and counted lost)
EVENTS_OFF = 64  # the events of a ring start here (its count is at its start)
# what a traced task's methods are replaced by (in its __dict__): its public calls
# (without the compiled module), or the general paths past the compiled fast paths,
# which record their own events
WRAPPED = ("psend", "precv", "precv_into", "precv_view", "_psend", "_precv", "_precv_into")


_now = time.monotonic
_flat = itertools.chain.from_iterable


@functools.cache
def _events(m: int) -> struct.Struct:
    """*m* EVENTs in a row: one pack_into for them all (half the time of one a time)."""
    return struct.Struct("<" + EVENT.format.lstrip("<") * m)


def switch(task: Any, mask: int, event: int = 0) -> None:
    """Trace *task*'s calls the *mask* names from now (0: none); record *event* (SPAWN
    at a join, EXIT at a leave) if the mask it comes under names it."""
    old = active(task)
    for name in WRAPPED:
        task.__dict__.pop(name, None)
    task.__dict__["_trace_mask"] = mask
    rec, flush, noted = _recorder(task)
    keep = noted.append
    cring = task.__dict__.get("_trace_ring")  # compiled: the fast paths record into it
    if cring is not None:
        cring.forget()  # (a receive begun under the old mask)
        sends = task.__dict__["_send_trace"] = cring if mask & BIT[PSEND] else None
        for p in task._peers.values():
            if p.fx is not None:
                p.fx.trace = sends
        if task._fx is not None:
            task._fx.trace = cring if mask & BIT[PRECV_END] else None
    if event and (mask | old) & BIT[event]:
        rec(event, task.tid, 0, 0, 0)
    if not mask:
        _flush_all(task, flush)  # (a leave, trace off: every event kept is handed over)
    else:
        flush(True)  # (a switch, a join: what was noted goes to the ring now)
    if not mask & (BIT[PSEND] | BIT[PRECV_END]):
        return
    cls, tid = type(task), task.tid
    if mask & BIT[PRECV_END]:  # (its compiled take records nothing: wrapped either way)
        task.precv_view = _traced_view(task, cls.precv_view, noted, flush)
    if cring is not None:
        _wrap_general(task, mask, cring)
        return
    psend, precv, precv_into = cls.psend, cls.precv, cls.precv_into

    # Per call only the clock is read and a tuple kept: the ring is written when the
    # task publishes its counters (taskbase.py: before a receive sleeps or spins after
    # PUBLISH_IDLE receives, every PUBLISH_EVERY sends) and, for a task that always
    # finds messages waiting, when a receive starts with NOTED events kept. A send's
    # tuple is kept after the send and a receive's start before it waits: on a
    # ping-pong the other task is working then, not waiting for us.
    def t_psend(dest: int, tag: int, data, timeout: float | None = None) -> None:
        t = _now()
        psend(task, dest, tag, data, timeout)
        keep((t, PSEND, tid, dest, tag, _nbytes(data)))

    def t_precv(source: int = -1, tag: int = -1, timeout: float | None = None):
        if len(noted) >= NOTED:
            flush()
        keep((_now(), PRECV_START, source, tid, tag, 0))
        m = precv(task, source, tag, timeout)
        keep((_now(), PRECV_END, m.src, tid, m.tag, len(m.data)))
        return m

    def t_precv_into(buffer, source: int = -1, tag: int = -1,
                     timeout: float | None = None) -> tuple[int, int, int]:
        if len(noted) >= NOTED:
            flush()
        keep((_now(), PRECV_START, source, tid, tag, 0))
        got = precv_into(task, buffer, source, tag, timeout)
        keep((_now(), PRECV_END, got[0], tid, got[1], got[2]))
        return got

    if mask & BIT[PSEND]:
        task.psend = t_psend
    if mask & BIT[PRECV_END]:
        task.precv, task.precv_into = t_precv, t_precv_into


def _nbytes(data: Any) -> int:
    return len(data) if type(data) is bytes else memoryview(data).nbytes


def _traced_view(task: Any, precv_view: Any, noted: list, flush: Any) -> Any:
    """*task*'s precv_view, its start and end kept as tuples (with or without the
    compiled module: its compiled take, Inbox.take_run, records nothing)."""
    tid, keep = task.tid, noted.append

    def t_precv_view(source: int = -1, tag: int = -1, timeout: float | None = None):
        if len(noted) >= NOTED:
            flush()
        keep((_now(), PRECV_START, source, tid, tag, 0))
        v = precv_view(task, source, tag, timeout)
        keep((_now(), PRECV_END, v.src, tid, v.tag, v.data.nbytes))
        return v
    return t_precv_view


def _wrap_general(task: Any, mask: int, ring: Any) -> None:
    """Trace *task* whose fast paths are compiled: they record into *ring* (its
    TraceRing, their *trace*: set by switch), and the general paths past them are
    wrapped here to record into it too. A receive the compiled take began and left to
    the general path is finished by it (TraceRing.begin keeps the start)."""
    cls = type(task)
    psend, precv, precv_into = cls._psend, cls._precv, cls._precv_into

    def t_psend(dest: int, tag: int, data, timeout: float | None = None) -> None:
        t = ring.stamp()
        psend(task, dest, tag, data, timeout)
        ring.sent(t, dest, tag, _nbytes(data))

    def t_precv(source: int, tag: int, timeout: float | None, budget: float | None):
        ring.begin(source, tag)
        try:
            m = precv(task, source, tag, timeout, budget)
        except BaseException:
            ring.finish()  # (its start alone)
            raise
        ring.finish(m.src, m.tag, len(m.data))
        return m

    def t_precv_into(mv: memoryview, source: int, tag: int, timeout: float | None,
                     budget: float | None) -> tuple[int, int, int]:
        ring.begin(source, tag)
        try:
            got = precv_into(task, mv, source, tag, timeout, budget)
        except BaseException:
            ring.finish()
            raise
        ring.finish(*got)
        return got

    if mask & BIT[PSEND]:
        task._psend = t_psend
    if mask & BIT[PRECV_END]:
        task._precv, task._precv_into = t_precv, t_precv_into


def _flush_all(task: Any, flush: Any) -> None:
    """Every event *task* kept goes to its ring when it stops tracing (trace off, a
    leave): as many as fit, then pvm_shmd drains the ring and the next go in; what
    still does not fit (pvm_shmd gone or too slow) over undrained ones, counted lost."""
    for _ in range(LEAVE_DRAINS):
        if not flush(True) or not _drain_now(task.vmid):
            break
    flush(True, True)


def _drain_now(vmid: str) -> bool:
    """pvm_shmd drains every ring now (trace_request), asked on a connection of its own
    (a task's may be in use by another thread); False if it did not answer. Also the
    compiled ring's on_full (a task kept all it may: BACKLOG events, its ring full):
    the task waits for that rather than write over events not drained. (The VM id,
    not the task: the compiled ring keeps this, and the task keeps the ring.)"""
    try:
        control.request("trace", vmid, timeout=DRAIN_TIMEOUT)
        return True
    except PvmError:
        return False  # (gone or stopped: the ring is written over, the loss counted)


DRAIN_TIMEOUT = 1.0  # seconds a full task waits for pvm_shmd to drain (_drain_now)


def active(task: Any) -> int:
    """The mask *task* traces now (0: not traced)."""
    return task.__dict__.get("_trace_mask", 0)


def _at_exit(ref: weakref.ref, pid: int) -> None:
    """The interpreter exits with the task still joined (no leave: the daemon will reap
    it): its exit recorded if its mask says so, and what it kept written to its ring,
    which pvm_shmd drains when it reaps the slot. (After a leave: nothing, the
    segment is no longer ours; nor in a child forked since: the task is not its.)"""
    task = ref()
    if os.getpid() != pid or task is None or task.closed or "_trace_rec" not in task.__dict__:
        return
    note, flush, _ = task.__dict__["_trace_rec"]
    if active(task) & BIT[EXIT]:
        note(EXIT, task.tid, 0, 0, 0)
    flush(True, True)  # (what does not fit: over undrained events, counted lost)


def _recorder(task: Any):
    """(note, flush, noted) of *task*: ``note(kind, src, dst, tag, length)`` keeps an
    event (stamped now) in the list ``noted`` (of EVENT's fields), ``flush()`` writes
    the kept ones to the task's trace ring. One set per task: it keeps the ring's
    count, and a call traced before a switch may end after it. taskbase.py's _publish
    calls flush (``_trace_rec[1]``)."""
    pair = task.__dict__.get("_trace_rec")
    if pair is None:
        pair = task.__dict__["_trace_rec"] = _new_recorder(task)
        atexit.register(_at_exit, weakref.ref(task), os.getpid())
    return pair


# Events kept before note or a receive's start writes them to the ring. Small: a
# receive's start is when its task waits for the other side (on a ping-pong, while the
# other task works), so a few events packed there cost no latency, while 64 packed at
# once (about 30 us of struct packing here) held up every 21st round trip. Measured
# with bench/bench_trace.py --iters 5000 --repeat 1 --blocks 40, two runs each, 2-vCPU
# Xeon at load 3.7-4.1: on/off 1.27 and 1.21 with 64, 1.14 and 1.14 with 4.
NOTED = 4
BACKLOG = 1 << 16  # events it keeps while its ring has no room (the daemon is behind)
# pvm_shmd is asked to drain the ring of a task that stops tracing (or leaves) this many
# times at most while its kept events do not fit in it (_flush_all)
LEAVE_DRAINS = 2 * BACKLOG // layout.TRACE_EVENTS


def _new_recorder(task: Any):
    q, buf = task._q, task._buf
    base = layout.trace_ring_off(task._slot)
    c, ev = base // 8, base + EVENTS_OFF
    n, size = layout.TRACE_EVENTS, layout.TRACE_EVENT
    noted: list[tuple] = []
    keep = noted.append
    first = 0  # noted[:first] are in the ring (taken off the list in bulk, not at each flush)
    fast = fastpath.fast
    # the compiled fast paths' ring (switch), and the events it keeps (task.py closes it)
    cring = task.__dict__["_trace_ring"] = None if fast is None else fast.TraceRing(
        buf, ring=base, events=EVENTS_OFF, nevents=n, backlog=BACKLOG, tid=task.tid,
        kinds=(PSEND, PRECV_START, PRECV_END), tsc=fastpath.TSC,
        on_full=functools.partial(_drain_now, task.vmid))

    def flush(all_: bool = False, force: bool = False) -> int:
        """Move kept events into the ring (*all_*: even a few; *force*: over events
        pvm_shmd has not drained, which it counts lost); return how many are still kept."""
        nonlocal first
        kept_c = cring.flush(force) if cring is not None else 0
        left = len(noted) - first
        if left <= 0:
            return kept_c
        k = q[c]  # we alone write the count (here, or cring: shmd._fast)
        # what pvm_shmd has not drained yet is not overwritten while we can keep it
        room = min(left, n - (k - q[c + 1])) if left < BACKLOG and not force else left
        if room < (1 if all_ else min(left, NOTED)):
            return kept_c + left  # (nearly full: wait for pvm_shmd rather than write a few)
        end = first + room
        while first < end:  # in one piece up to the ring's end, then from its start
            at = k % n
            m = min(end - first, n - at)
            _events(m).pack_into(buf, ev + at * size, *_flat(noted[first:first + m]))
            k += m
            first += m
        q[c] = k  # after the events: a reader never takes a half-written one
        if first == len(noted):
            noted.clear()
            first = 0
        elif first > len(noted) // 2:  # (pvm_shmd is behind: the list is cut now and then)
            del noted[:first]
            first = 0
        return kept_c + len(noted) - first

    def note(kind: int, src: int, dst: int, tag: int, length: int) -> None:
        keep((_now(), kind, src, dst, tag, length))
        if len(noted) >= NOTED:
            flush()

    return note, flush, noted


class Collector:
    """pvm_shmd's side: the events drained from the task slots' rings, with the tasks'
    names, and how many were lost (a ring overrun between two drains, or MAX_KEPT).
    A drain copies the ring's bytes as they are (a memcpy, not a tuple per event: a
    traced ping-pong writes hundreds of thousands a second, and pvm_shmd shares the
    CPUs with it); ``events`` unpacks them when asked."""

    def __init__(self) -> None:
        self.seen = [0] * layout.MAX_TASKS  # events already taken from each ring
        self._raw: list[tuple[int, bytes]] = []  # (owner tid, its EVENTs as written)
        self.count = 0  # events in _raw
        self.names: dict[int, str] = {}
        self.lost = 0
        self._counts = [layout.trace_ring_off(i) // 8 for i in range(layout.MAX_TASKS)]

    @property
    def events(self) -> list[tuple]:
        """(owner tid, time, kind, src, dst, tag, length) of each event kept, as drained."""
        return [(owner, *e) for owner, raw in self._raw for e in EVENT.iter_unpack(raw)]

    def pending(self, m64: memoryview) -> list[int]:
        """The slots whose ring has events not drained yet: one word read per slot (a
        drain every millisecond while tracing must not cost pvm_shmd a CPU)."""
        seen, counts = self.seen, self._counts
        return [i for i in range(layout.MAX_TASKS) if m64[counts[i]] != seen[i]]

    def joined(self, m64: memoryview, i: int) -> None:
        """A new task in slot *i*: its ring starts empty."""
        m64[layout.trace_ring_off(i) // 8] = m64[layout.trace_ring_off(i) // 8 + 1] = 0
        self.seen[i] = 0

    def drain(self, buf: memoryview, m64: memoryview, i: int, owner: int, name: str) -> int:
        """Take the events slot *i*'s task (*owner*) wrote since the last drain; return
        how many it had written since (more than the ring holds: some were lost)."""
        base = layout.trace_ring_off(i)
        n, size = layout.TRACE_EVENTS, layout.TRACE_EVENT
        count, seen = m64[base // 8], self.seen[i]
        if count == seen:
            return 0
        if not seen <= count <= seen + (1 << 40):  # a scribbled count: start again from it
            self.seen[i] = m64[base // 8 + 1] = count
            return 0
        first = max(seen, count - n)
        parts = []
        k = first
        while k < count:  # in one piece up to the ring's end, then from its start
            at = k % n
            m = min(count - k, n - at)
            parts.append(buf[base + EVENTS_OFF + at * size:base + EVENTS_OFF + (at + m) * size])
            k += m
        raw = b"".join(parts)  # (a copy: the task may write over the ring from now on)
        after = m64[base // 8]  # events the writer overwrote while we read are lost
        keep = min(max(0, after - n - first), count - first)
        self.lost += (first - seen) + keep
        self.names[owner] = name
        if keep < count - first:
            self._raw.append((owner, raw[keep * size:]))
            self.count += count - first - keep
        self.seen[i] = m64[base // 8 + 1] = count  # drained: the task may write over them
        excess = self.count - MAX_KEPT
        while excess > 0:  # the oldest go first
            owner0, raw0 = self._raw[0]
            drop = min(excess, len(raw0) // size)
            if drop == len(raw0) // size:
                del self._raw[0]
            else:
                self._raw[0] = (owner0, raw0[drop * size:])
            self.count -= drop
            self.lost += drop
            excess -= drop
        return count - seen

    def dump(self, clear: bool = False) -> dict:
        """The events so far (oldest first), for ``pvm_shmd_stat --trace dump``."""
        out = {"events": sorted(self.events, key=lambda e: e[1]),  # (a stable sort)
               "names": {str(k): v for k, v in self.names.items()}, "lost": self.lost,
               "clock": _now()}
        if clear:
            self._raw, self.count, self.lost = [], 0, 0
        return out


# ---- reading a trace ----------------------------------------------------------------
class Event(NamedTuple):
    host: str
    owner: int  # the task that recorded it
    t: float  # seconds, on the console's clock (the host's offset taken off)
    kind: int
    src: int
    dst: int
    tag: int
    length: int


class Flow(NamedTuple):
    """One message: its psend and the precv that took it."""

    send: Event
    recv: Event


def events_of(dumps: Iterable[tuple[str, Mapping, float]]) -> tuple[list[Event], dict[int, str]]:
    """The events of every host's dump (host name, dump, clock offset: the host's
    monotonic clock minus the console's), on one clock, in time order; and tid -> name."""
    out, names = [], {}
    for host, d, offset in dumps:
        for e in d.get("events", []):
            # (a ring a faulty process scribbled on gives events of no kind: left out)
            if isinstance(e, (list, tuple)) and len(e) == 7 and e[2] in KINDS:
                out.append(Event(host, int(e[0]), float(e[1]) - offset, *map(int, e[2:])))
        names.update({int(k): str(v) for k, v in d.get("names", {}).items()})
    out.sort(key=lambda e: e.t)
    return out, names


def flows(events: Sequence[Event], slack: float = 0.0) -> tuple[list[Flow], list[Event]]:
    """Pair each precv end with the psend it took: the first not yet taken from that
    source to that receiver with that tag (PVM keeps a pair's messages in order) sent
    before it, or at most *slack* seconds after it (clocks of two hosts not yet
    aligned). Returns the flows and the sends no traced receive took."""
    sends: dict[tuple[int, int, int], list[Event]] = {}
    recvs: dict[tuple[int, int, int], list[Event]] = {}
    for e in events:
        if e.kind in (PSEND, PRECV_END):
            (sends if e.kind == PSEND else recvs).setdefault((e.src, e.dst, e.tag), []).append(e)
    out, left = [], []
    for key, ss in sends.items():
        k = 0
        for r in recvs.get(key, ()):
            if k < len(ss) and ss[k].t <= r.t + slack:
                out.append(Flow(ss[k], r))
                k += 1
        left.extend(ss[k:])
    out.sort(key=lambda f: f.send.t)
    return out, left


LATENCY = 1e-6  # the least time a message between two hosts takes (seconds)


def align(events: Sequence[Event], within: Mapping[str, float]) -> tuple[list[Event], dict[str, float]]:
    """*events* of hosts whose clock offsets are known to *within* (host -> seconds)
    shifted so that no message arrives before it was sent: the best known host (the
    console's own: within 0) stays, then each host in turn moves the least that puts
    the receives of messages from the hosts already placed after their sends (by
    LATENCY) and its sends before their receives there. Returns the events in time
    order and each host's shift (seconds; 0 where the measured offset held)."""
    hosts = sorted({e.host for e in events}, key=lambda h: (within.get(h, 0.0), h))
    if len(hosts) < 2:
        return list(events), {}
    pairs = flows(events, slack=2 * max(within.get(h, 0.0) for h in hosts) + LATENCY)[0]
    shift: dict[str, float] = {}
    for h in hosts:
        lo, hi = -float("inf"), float("inf")
        for f in pairs:
            s, r = f.send, f.recv
            if r.host == h and s.host != h and s.host in shift:
                lo = max(lo, s.t + shift[s.host] + LATENCY - r.t)
            elif s.host == h and r.host != h and r.host in shift:
                hi = min(hi, r.t + shift[r.host] - LATENCY - s.t)
        shift[h] = (lo + hi) / 2 if lo > hi else min(max(0.0, lo), hi)  # (lo > hi: clocks drifted)
    if not any(shift.values()):
        return list(events), {}
    out = sorted((e._replace(t=e.t + shift[e.host]) if shift[e.host] else e for e in events),
                 key=lambda e: e.t)
    return out, {h: d for h, d in shift.items() if d}


def chrome(events: Sequence[Event], names: Mapping[int, str], offsets: Mapping[str, float]
           ) -> dict:
    """Chrome trace-event JSON (the "JSON Object Format"): a process per host, a thread
    (track) per task, a slice per call (psend: an instant; precv: start to end) and a
    flow arrow from each psend to the precv that took it; and the utilization counters
    (tasks computing, in overhead, waiting: utilization.py) as a process of their own.
    Times in microseconds from the first event."""
    from .utilization import counters  # (it reads traces: it imports this module)

    t0 = events[0].t if events else 0.0
    hosts = sorted({e.host for e in events})
    pid = {h: k + 1 for k, h in enumerate(hosts)}

    def us(t: float) -> float:
        return round((t - t0) * 1e6, 3)

    out: list[dict] = []
    for h in hosts:
        out.append({"ph": "M", "name": "process_name", "pid": pid[h], "tid": 0,
                    "args": {"name": f"{h} (clock offset {offsets.get(h, 0.0) * 1e6:+.0f} us)"}})
    for tid in sorted({e.owner for e in events}):
        host = next(e.host for e in events if e.owner == tid)
        out.append({"ph": "M", "name": "thread_name", "pid": pid[host], "tid": tid,
                    "args": {"name": f"t{tid:x} {names.get(tid, '')}".strip()}})
    started: dict[int, Event] = {}
    for e in events:
        base = {"pid": pid[e.host], "tid": e.owner, "cat": "pvm"}
        if e.kind == PSEND:
            out.append({**base, "ph": "X", "name": "psend", "ts": us(e.t), "dur": 0,
                        "args": {"dst": f"t{e.dst:x}", "tag": e.tag, "bytes": e.length}})
        elif e.kind == PRECV_START:
            started[e.owner] = e
        elif e.kind == PRECV_END:
            s = started.pop(e.owner, e)
            out.append({**base, "ph": "X", "name": "precv", "ts": us(s.t),
                        "dur": round(us(e.t) - us(s.t), 3),
                        "args": {"src": f"t{e.src:x}", "tag": e.tag, "bytes": e.length}})
        else:
            out.append({**base, "ph": "i", "s": "t", "name": KINDS[e.kind], "ts": us(e.t)})
    if events:  # the utilization counters: a process of their own, after the hosts
        vm = len(hosts) + 1
        out.append({"ph": "M", "name": "process_name", "pid": vm, "tid": 0,
                    "args": {"name": "virtual machine: tasks computing, in overhead, waiting"}})
        out.extend(counters(events, vm, us))
    for k, f in enumerate(flows(events)[0], 1):
        s, r = f.send, f.recv
        name = f"msg tag {s.tag} {s.length} B"
        out.append({"ph": "s", "id": k, "name": name, "cat": "msg", "pid": pid[s.host],
                    "tid": s.owner, "ts": us(s.t)})
        out.append({"ph": "f", "bp": "e", "id": k, "name": name, "cat": "msg",
                    "pid": pid[r.host], "tid": r.owner, "ts": us(r.t)})
    return {"traceEvents": out, "displayTimeUnit": "ns",
            "otherData": {"clock_offsets_us": {h: round(o * 1e6, 1) for h, o in offsets.items()}}}


def diagram(events: Sequence[Event], names: Mapping[int, str], width: int = 100,
            start: float | None = None, end: float | None = None) -> list[str]:
    r"""The space-time diagram as text: a scale, then a line per task with a gap line
    between two tasks, time across *width* columns from *start* to *end* (seconds from
    the first event; default: all). On a task's line ``s`` is a psend, ``r`` the
    receive that took a message, ``-`` waiting in a receive, ``S``/``X`` spawn and
    exit. Each message is a line from its psend to its receive, as XPVM drew it: ``\``
    going down, ``/`` going up, ``|`` when both are in one column, across the gap lines
    and, between tasks further apart, the task lines it passes (where they are blank)."""
    if not events:
        return ["(no trace events)"]
    t0 = events[0].t
    a, b = _window(events, start, end)
    tids = sorted({e.owner for e in events})
    row = {t: 2 * k for k, t in enumerate(tids)}  # gap lines between: odd rows
    grid = [[" "] * width for _ in range(2 * len(tids) - 1)]

    def x(t: float) -> float:
        return (t - t0 - a) / (b - a) * (width - 1)

    waiting: dict[int, float] = {}
    for e in events:
        r = row[e.owner]
        if e.kind == PRECV_START:
            waiting[e.owner] = e.t
            continue
        if e.kind == PRECV_END and e.owner in waiting:
            x0, x1 = x(waiting.pop(e.owner)), x(e.t)
            for k in range(max(int(x0), 0), min(int(x1), width - 1) + 1):
                if grid[r][k] == " ":
                    grid[r][k] = "-"
        if 0 <= x(e.t) <= width - 1:
            grid[r][int(x(e.t))] = {PSEND: "s", PRECV_END: "r", SPAWN: "S", EXIT: "X"}[e.kind]
    for f in flows(events)[0]:
        r0, r1 = row[f.send.owner], row[f.recv.owner]
        if r0 == r1:
            continue  # to itself: its s and r say it
        xs, xr = x(f.send.t), x(f.recv.t)
        step = 1 if r1 > r0 else -1
        for r in range(r0 + step, r1, step):
            c = int(xs + (xr - xs) * (r - r0) / (r1 - r0) + 0.5)
            if 0 <= c < width and grid[r][c] in " -":
                grid[r][c] = "|" if int(xs + 0.5) == int(xr + 0.5) else "\\" if step > 0 else "/"
    labels = _labels(events, names)
    w = max(map(len, labels.values()))
    left, right = f"{a * 1e3:.3f} ms", f"{b * 1e3:.3f} ms"
    lines = [" " * w + " |" + left + right.rjust(width - len(left)) + "|"]
    for r, cells in enumerate(grid):
        label = labels[tids[r // 2]] if r % 2 == 0 else ""
        lines.append(label.ljust(w) + " |" + "".join(cells) + "|")
    return lines


def _window(events: Sequence[Event], start: float | None, end: float | None) -> tuple[float, float]:
    """The (start, end) a drawing shows, seconds from the first event (default: all)."""
    a = 0.0 if start is None else start
    b = (events[-1].t - events[0].t if end is None else end) or 1e-9
    return a, max(b, a + 1e-9)


def _labels(events: Sequence[Event], names: Mapping[int, str]) -> dict[int, str]:
    """Each task's label: ``t40005 name``. (A name is what its task joined with:
    control characters are shown as ?, not sent to the terminal.)"""
    return {t: "".join(ch if ch.isprintable() else "?" for ch in f"t{t:x} {names.get(t, '')}")
            for t in sorted({e.owner for e in events})}


def use_lines(events: Sequence[Event], names: Mapping[int, str], width: int = 100,
              start: float | None = None, end: float | None = None, height: int = 6) -> list[str]:
    """XPVM's utilization view under the diagram (the same columns): how many tasks
    compute, are in message overhead, wait (shmd/utilization.py), and a legend."""
    from .utilization import rows  # (it reads traces: it imports this module)

    if not events:
        return []
    a, b = _window(events, start, end)
    w = max(map(len, _labels(events, names).values()))
    # the diagram's column c holds the times c to c+1 of width-1 steps from a to b
    cells = rows(events, width, a, a + (b - a) * width / max(width - 1, 1), height)
    return [("utilization" if k == 0 else "").ljust(w) + " |" + r + "|" for k, r in enumerate(cells)] + [
        " " * w + "  # computing  = overhead (message there, taken)  . waiting in a receive"]

"""What every part of a Task shares: its state, the checks, the peers it sends to.

A ``Task`` (task.py) is built in layers, each a module a reader can take in alone,
each a class that inherits the one below it (so a layer calls only what is below it
or here; Sending and Receiving both stand on Rendezvous, and Task on both)::

    Task       task.py: joining, attaching the segments, leaving
    Receiving  receiving.py: precv, precv_into, precv_view, probe
    Sending    sending.py: psend and posting descriptors to another task's inbox
    Rendezvous rendezvous.py: direct delivery, both sides (direct.py does the copying)
    Inbox      inbox.py: our ring, the pending queue, sleeping, messages in pieces
    Pages      pages.py: allocating and freeing runs of pages
    TaskBase   this module: the state's attributes, _check_alive, _peer (a Peer)

Method lookups through the layers are cached by the interpreter: they cost nothing.

The attributes are set in ``Task.__init__``/``_attach``; they are declared here (no
values: nothing is added to the class) so that each layer is type-checked alone.
"""
from __future__ import annotations

import os
import struct
import weakref
from collections import deque
from typing import Any

import sysv_ipc

from . import calibrate, control, fastpath, ipc, layout, mutex, tids, trace
from .errors import PvmBadParam, PvmError, PvmNoTask, PvmSysErr
from .message import Desc, Matcher, MessageView
from .remote import RemoteTid
from .wake import FUTEX, FutexWaiter, FutexWake

ANY = -1
SLICE = 0.2  # a blocked receiver re-checks the daemon this often (seconds)
MAX_SPIN = 200e-6  # longest busy-wait before blocking (seconds)
MASK64 = (1 << 64) - 1  # counters wrap rather than raise when scribbled near 2**64
INF = float("inf")
_TID = layout.T_TID_I
_TRACE_WORD = layout.H_TRACE_I
_PUBLISH_MASK = layout.PUBLISH_EVERY - 1
PUBLISH_IDLE = 32  # messages received between two _publish calls of receives that spin


def damaged(what: str) -> PvmError:
    """The error for a shared word that cannot be right (scribbled on)."""
    return PvmError(PvmSysErr, f"shared memory damaged: {what}")


def spin_allowed() -> bool:
    """Busy-waiting only pays when the peer has a CPU of its own."""
    try:
        ncpu = len(os.sched_getaffinity(0))
    except OSError:
        ncpu = os.cpu_count() or 1
    return ncpu >= 2 and os.getloadavg()[0] < ncpu


def cpus_apart(pid: int) -> bool | None:
    """True if process *pid* and we can never run on one CPU (affinities disjoint), False
    if we always do (both bound to one same CPU); None if we may (or *pid* cannot be
    asked).

    A sender posts to a sleeping receiver before waking it only when False: woken
    first on our CPU, the receiver preempts us, finds its inbox empty and yields back,
    two wasted switches a message (8 B ping-pong, spin off, both bound to one CPU: 2.03
    involuntary switches a message and 22-24 us one way, against 0.37 and 14-18 us
    posting first). Otherwise it wakes first: the wake-up, tens of microseconds,
    overlaps the posting, and on another CPU a receiver woken before it blocks never
    sleeps. Measured with unbound processes on 2 CPUs, neither order won everywhere
    (posting first: 0.5-0.9x at load 6, 2x slower at load 2-3.3) and neither the load,
    the CPU count nor a trial of the order (our involuntary switches) told which, so
    they keep the wake-up first."""
    try:
        mine, theirs = os.sched_getaffinity(0), os.sched_getaffinity(pid)
    except OSError:
        return None
    if not mine & theirs:
        return True
    return False if len(mine | theirs) == 1 else None


class Peer:
    """A local task we send to, as ``_peer`` caches it: its slot, semaphores, and the
    indexes of the words of its slot that senders read and write (int32 ``*_i``,
    int64 ``*_q``, in the views of segment 0)."""

    __slots__ = ("slot", "lock", "wake", "serial", "tid_i", "pid_i", "serial_i", "waiting_i",
                 "sending_i", "head_q", "tail_q", "start_q", "posted_q", "consumed_q", "rv",
                 "ring", "seen", "first", "fx")

    def __init__(self, slot: int, lock: mutex.Mutex, wake: sysv_ipc.Semaphore | FutexWake,
                 serial: int):
        bi, bq = layout.slot_i(slot), layout.slot_q(slot)
        self.slot, self.lock, self.wake = slot, lock, wake
        self.serial = serial  # which join of the slot it is (a rejoin: not this Peer's)
        self.tid_i, self.pid_i = bi + layout.T_TID_I, bi + layout.T_PID_I
        self.serial_i, self.waiting_i = bi + layout.T_SERIAL_I, bi + layout.T_WAITING_I
        self.sending_i = bi + layout.T_SENDING_I
        self.head_q, self.tail_q = bq + layout.T_HEAD_Q, bq + layout.T_TAIL_Q
        self.start_q = bq + layout.T_START_TICKS_Q
        self.posted_q, self.consumed_q = bq + layout.T_POSTED_Q, bq + layout.T_CONSUMED_Q
        self.rv = bq + layout.T_RV_Q  # its direct-delivery record (int64 word index)
        self.ring = layout.slot_off(slot) + layout.SLOT_HDR  # byte offset of its ring
        # its head as last read: the head only grows, so a stale one can only make the
        # ring look fuller, and not reading it spares a cache line the receiver writes
        self.seen = 0
        self.first = True  # wake it before posting (unless it is bound to our one CPU)?
        self.fx: Any = None  # psend's compiled fast path to it (fastpath.route), if built

    def rouse(self) -> bool:
        """Wake it; False if it is gone (its semaphore removed: it left, and what we
        posted went with it). A semaphore at its maximum (SEMVMX) already holds a
        wake-up: ValueError there means nothing is lost."""
        try:
            self.wake.release()
        except sysv_ipc.ExistentialError:
            return False
        except ValueError:
            pass
        return True


class TaskBase:
    """The state of a Task (see task.py for what each holds) and what every layer
    uses: whether pvm_shmd and we are still there, and the peers we send to."""

    vmid: str
    tid: int
    closed: bool
    _pid: int
    _slot: int
    _gen: int
    _src: int  # the src our descriptors carry: our tid (pvm_netd: the remote sender's)
    _daemon: tuple[int, int]
    _shm0: sysv_ipc.SharedMemory
    _segs: list[sysv_ipc.SharedMemory]
    _views: list[memoryview]
    _conn: control.Connection | None
    # segment 0 as bytes, int64 and int32 words
    _buf: memoryview
    _q: memoryview
    _i: memoryview
    # the segments: page size, count, message pages, locks, pages each, page maps
    # (int32 index), table entries (int32 and int64 index), rovers (int32 index)
    _ps: int
    _nsegs: int
    _data: list[memoryview]
    _locks: list[ipc.Lock]
    _npages: list[int]
    _mapb: list[int]
    _segi: list[int]
    _segq: list[int]
    _rover: list[int]
    _intent: list[int]  # each segment's intent record (int32 index: pagemap.commit)
    _maxpages: int
    _home: int
    _deferred: list[tuple[int, int, int]]
    _bases: list[int]
    # our slot's words: head, tail, consumed, record (int64); waiting, pending, sending
    # (int32); our ring's byte offset
    _H: int
    _T: int
    _C: int
    _R: int
    _W: int
    _P: int
    _S: int
    _ring: int
    _mylock: mutex.Mutex
    _mywake: sysv_ipc.Semaphore
    _waiter: ipc.Waiter | FutexWaiter  # how we sleep: our daemon's kind (_wake, wake.py)
    _wake: int  # wake.SEM or wake.FUTEX
    _base0: int  # where segment 0 is mapped here (a futex names a peer's word by address)
    _direct: bool
    _paths: calibrate.Choice  # from which sizes large messages go direct
    # receiving: the pending queue and what the receive paths remember
    _pending: deque[Desc]
    _fx: Any  # precv's compiled fast path on our ring (fastpath.inbox), if built
    _sx: Any  # our runs of pages, compiled (fastpath.segments), if built
    _run_max: int  # psend's compiled fast path: one run of pages up to this size
    _mviews: weakref.WeakSet[MessageView]
    _matchers: dict[tuple[int, int], Matcher]
    _orphans: dict[int, int]
    _at: int | None
    _unspilled: bool
    _spun: bool
    _sleeps: int
    _spin_auto: bool
    _spin_checked: float
    _spin_budget: float
    _rx: struct.Struct  # precv's guess of the next small message's length
    # sending
    _peers: dict[int, Peer]
    _owed: dict[int, int]
    _hdrs: dict[int, bytes]
    _served: set[int]
    # message counters (stored in our slot by _publish: layout.COUNTERS), and tracing
    _ntx: int
    _btx: int
    _nrx: int
    _brx: int
    _cq: int  # our slot's first counter word (int64 index)
    _pub_at: int  # _nrx at which a receive about to spin calls _publish
    _blocked: int  # our slot's blocked word (int32 index)
    _tracing: int  # the header's trace word as last seen (a change: trace.switch)
    _traceable: bool  # False for pvm_netd
    _send_trace: Any = None  # the TraceRing our compiled sends record into (trace.switch)

    def _publish(self) -> None:
        """Store our message counters in our slot (for pvm_shmd and the console's view),
        and start or stop tracing if the header's trace word changed. Called before a
        receive sleeps, before one spins when PUBLISH_IDLE messages came since the last
        call (storing costs ~0.4 us: not before every spin), every PUBLISH_EVERY sends,
        and on leave."""
        q, c = self._q, self._cq
        self._pub_at = self._nrx + PUBLISH_IDLE
        q[c] = self._ntx
        q[c + 1] = self._btx
        q[c + 2] = self._nrx
        q[c + 3] = self._brx
        on = self._i[_TRACE_WORD] if self._traceable else 0
        if on != self._tracing:  # trace on/off on our host: follow it (spawn -@ or not)
            self._tracing = on
            trace.switch(self, on)
        noted = self.__dict__.get("_trace_rec")  # (note, flush) once traced
        if noted is not None:
            noted[1]()  # events a traced task noted go to its ring while it is idle

    def _sent(self, n: int) -> None:
        """Count a message of *n* bytes sent (the general paths; psend's fast path has
        this inline)."""
        self._ntx += 1
        self._btx += n
        if not self._ntx & _PUBLISH_MASK:
            self._publish()

    def _received(self, n: int) -> None:
        """Count a message of *n* bytes received (the general paths)."""
        self._nrx += 1
        self._brx += n

    def _check_alive(self) -> None:
        """Raise if the daemon died or the shared memory was reset under us."""
        h = layout.header(self._buf)
        if h["generation"] != self._gen or h["state"] != layout.READY:
            raise PvmError(PvmSysErr, "the shared memory was reset (HUP or reset)")
        if not ipc.alive(*self._daemon):
            raise PvmError(PvmSysErr, "pvm_shmd died")
        if self._i[layout.slot_i(self._slot) + _TID] & 0xFFFFFFFF != self.tid:
            raise PvmError(PvmSysErr, "this task was removed by pvm_shmd")

    def _peer(self, tid: int) -> Peer:
        """The Peer of local task *tid*, cached while its slot still holds it."""
        p = self._peers.get(tid)
        # the tid, and which join (a task that rejoined with the same tid has a new ring)
        if (p is not None and self._i[p.tid_i] & 0xFFFFFFFF == tid
                and self._i[p.serial_i] == p.serial):
            return p
        if not isinstance(tid, int) or not 0 < tid <= 0x7FFFFFFF:
            raise PvmError(PvmBadParam, f"bad tid {tid!r}")
        if tids.host_of(tid) != tids.host_of(self.tid):
            raise RemoteTid(tid)  # psend routes it through pvm_netd (remote.py)
        for i in range(layout.MAX_TASKS):
            t = layout.slot(self._buf, i)
            if t["tid"] == tid and t["state"] == layout.ACTIVE:
                lock = mutex.Mutex(self._base0 + layout.slot_off(i) + layout.T_LOCK_OFF)
                try:
                    if self._wake == FUTEX:  # its waiting word, in the segment we share
                        k = layout.slot_i(i) + layout.T_WAITING_I
                        wake: sysv_ipc.Semaphore | FutexWake = FutexWake(
                            self._i, k, self._base0 + 4 * k)
                    else:
                        wake = ipc.open_sem(t["wake_key"], t["wake_id"])
                except (ipc.Gone, sysv_ipc.Error):
                    break
                p = self._peers[tid] = Peer(i, lock, wake, t["serial"])
                p.first = cpus_apart(t["pid"]) is not False
                p.fx = fastpath.route(self._buf, p, tid, self._wake)
                if p.fx is not None:
                    p.fx.trace = self._send_trace
                return p
        raise PvmError(PvmNoTask, f"no task {tids.fmt(tid)}")

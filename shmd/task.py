"""Message passing through the daemon's shared pages: ``join()``, ``Task.psend/precv``.

A sender allocates pages in a segment under that segment's semaphore, copies the
data there (or into the descriptor itself for small messages), and appends a
descriptor to the receiver's inbox ring under the inbox's semaphore; it wakes the
receiver only if the receiver said it is going to sleep. The receiver drains its
ring in arrival order into a private list, takes the first match, copies the data
out and frees the pages. Nothing on this path talks to the daemon.

Page ownership makes death safe: a run belongs to its sender until the receiver
takes the descriptor off its ring, then to the receiver; the daemon frees the runs
of a dead task that no live inbox still refers to, and everything queued to it.

Any process of the user can write the shared structures, so every index and length
read from them (head and tail, descriptors, page maps, the direct-delivery record)
is bounded where it is read: damage raises PvmError(PvmSysErr) naming the word and
its value (``_damaged``), never an IndexError or a loop whose count came from shared
memory. On the fast paths that costs one comparison, folded into a test they had.
"""
from __future__ import annotations

import contextlib
import functools
import os
import struct
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import sysv_ipc

from . import control, direct, ipc, layout, pagemap, paths
from .errors import PvmBadMsg, PvmBadParam, PvmError, PvmExists, PvmNoMem, PvmNoTask, PvmOverflow, PvmSysErr, PvmTimeout

ANY = -1
TIDHOST = 0x3FFC0000
TIDLOCAL = 0x3FFFF
SLICE = 0.2  # a blocked receiver re-checks the daemon this often (seconds)
MAX_SPIN = 200e-6  # longest busy-wait before blocking (seconds)
IN_FLIGHT = 4 << 20  # paged bytes a receiver may have waiting before senders pause
STALL = 5e-3  # a receiver that takes nothing for this long is not paced (seconds)
MIN_SPIN = 10e-6  # a spin that keeps missing shrinks to this
POST_WAIT = 10e-6  # how long a woken receiver polls for the message its waker posts
SPIN_RECHECK = 1.0  # how often an automatic spin re-checks the host's load (seconds)
FREE_WAIT = 0.02  # how long a free waits for a segment's lock before it is put off
ABORT_WAIT = 0.02  # how long past its deadline a sender that gives up mid-message tries
# to post F_ABORT (a full inbox: the abort is owed, and the receiver sees in our slot's
# "sending" word that we gave up)
MAX_TAG = 0x7FFFFFFF
_SENDING = 120 // 4  # a slot's u32 (int32 index from the slot): the tid its task sends a
# message in pieces to, 0 when none (bytes 116-127 of the slot header are free in
# layout.T; the task zeroes its own at join)
_MASK64 = (1 << 64) - 1  # counters wrap rather than raise when scribbled near 2**64
_MAX_TOTAL = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGESIZE")  # no message is larger

_INF = float("inf")
_open: dict[str, Task] = {}  # VM id -> this process's open task (one task per process)

_DESC = struct.Struct(layout.DESC_FMT)
_unpack_desc = _DESC.unpack_from
_pack_desc = _DESC.pack_into
_M = layout.MAXPAGES
_OWNER = 2 * layout.MAXPAGES  # the owner array's index in a page map
_RING, _DESCSZ, _INL = layout.RING, layout.DESC, layout.D_INLINE
_SLOT_HDR, _INLINE, _F_FIRST = layout.SLOT_HDR, layout.INLINE, layout.F_FIRST
_MEDIUM = layout.MEDIUM
_F_SKIP, _SPAN_ADD = layout.F_SKIP, layout.D_INLINE + layout.DESC - 1  # span: (n + _SPAN_ADD) // DESC
_new = tuple.__new__
_WAITING = layout.T["waiting"][0] // 4  # the waiting word, in int32s from a slot's start
_START_TICKS = layout.T["start_ticks"][0] // 8  # a task's start time, in int64s
_LOCK_ID = layout.T["lock_id"][0] // 4  # its inbox lock's semaphore id, in int32s
_SMALL_TYPES = (bytes, bytearray)  # what psend's fast path takes (len() is the byte count)
_RV_OPEN, _RV_CLAIMED, _RV_NONE = layout.RV_OPEN, layout.RV_CLAIMED, layout.RV_NONE
_fence = ipc.fence
_clock = time.perf_counter


@functools.cache
def _small_desc(n: int) -> struct.Struct:
    """A descriptor with *n* inline bytes: src, tag, nbytes, seg, flags, data."""
    return struct.Struct(f"<IiQi8xI8x{n}s")


class MemoryFull(PvmTimeout):
    """psend found no free pages before its timeout: a PvmTimeout (it timed out) whose
    code is PvmNoMem (what it waited for), as documented for memory full."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.code, self.name = PvmNoMem, "PvmNoMem"


def _add32(m: memoryview, k: int, n: int) -> None:
    """m[k] += n for a u32 counter in an int32 view, wrapping (a scribbled counter
    must not make an update raise)."""
    m[k] = (m[k] + n + (1 << 31)) % (1 << 32) - (1 << 31)


def _damaged(what: str) -> PvmError:
    """The error for a shared word that cannot be right (scribbled on)."""
    return PvmError(PvmSysErr, f"shared memory damaged: {what}")


class Message(NamedTuple):
    """A received message."""

    src: int
    tag: int
    data: bytes


class _Desc(NamedTuple):
    src: int
    tag: int
    nbytes: int
    seg: int
    page: int
    npages: int
    flags: int
    total: int
    inline: bytes | None


class MessageView:
    """A received message left in the shared pages: ``data`` is a memoryview on them.

    Release it (``release()`` or a ``with`` block) to free the pages; until then the
    sender's pages stay allocated. Arrays made with ``array()`` must be dropped
    before the release (it raises BufferError while one is still referenced)."""

    __slots__ = ("_task", "_d", "src", "tag", "data", "_arrays", "__weakref__")

    def __init__(self, task: Task, d: _Desc, data: memoryview):
        self._task, self._d, self.src, self.tag, self.data = task, d, d.src, d.tag, data
        self._arrays: list = []

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def array(self, dtype, shape=None):
        """The data as a numpy array (no copy), valid until release()."""
        import numpy

        if self._d is None:
            raise ValueError("the view was released")
        a = numpy.frombuffer(self.data, dtype=dtype)
        if shape is not None:
            a = a.reshape(shape)
        self._arrays.append(a)
        return a

    def release(self) -> None:
        """Free the pages. Raises BufferError if an array from array() is still in use."""
        if self._d is None:
            return
        for a in self._arrays:
            if sys.getrefcount(a) > 3:  # the list, the loop variable, the argument
                raise BufferError("an array made by MessageView.array() is still in use; "
                                  "drop it (del) before releasing the view")
        self._arrays.clear()
        d, self._d = self._d, None
        self.data.release()
        if d.seg >= 0:
            self._task._free(d.seg, d.page)

    @property
    def released(self) -> bool:
        return self._d is None

    def __enter__(self) -> MessageView:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._d is None else f"{self.data.nbytes} bytes"
        return f"<MessageView from t{self.src:x} tag {self.tag}: {state}>"


def _as_bytes_view(data) -> memoryview:
    try:
        mv = memoryview(data)
    except TypeError:
        raise PvmError(PvmBadParam, f"data of type {type(data).__name__} is not a buffer") from None
    if mv.format != "B" or mv.ndim != 1:
        if not mv.c_contiguous:
            raise PvmError(PvmBadParam, "data is not contiguous")
        mv = mv.cast("B")
    return mv


def _spin_allowed() -> bool:
    """Busy-waiting only pays when the peer has a CPU of its own."""
    try:
        ncpu = len(os.sched_getaffinity(0))
    except OSError:
        ncpu = os.cpu_count() or 1
    return ncpu >= 2 and os.getloadavg()[0] < ncpu


class Task:
    """A process enrolled with this host's pvm_shmd. Use ``shmd.join()``."""

    def __init__(self, vmid: str | None = None, name: str | None = None, spin: bool | None = None):
        self.vmid = paths.current_vmid(vmid)
        self.closed = True
        other = _open.get(self.vmid)
        if other is not None and not other.closed and other._pid == os.getpid():
            # pvm_shmd gives a process that joins again the slot it already has (as a
            # spawner's child adopts its slot): two Task objects would share one inbox.
            raise PvmError(PvmExists, f"this process already joined as t{other.tid:x}; "
                                      "one task per process (use that one)")
        self._pid = os.getpid()
        self._shm0, buf = control.attach_seg0(self.vmid)
        self._views: list[memoryview] = [buf]
        self._segs = [self._shm0]
        self._conn = None
        try:
            h = layout.header(buf)
            if h["state"] != layout.READY:
                raise control.NoDaemon("pvm_shmd is not ready")
            self._daemon = (h["pid"], h["start_ticks"])
            self._conn = control.Connection(h["sock"])
            name = name or os.path.basename(sys.argv[0] or "python")
            reply = self._conn.request("join", pid=os.getpid(), name=name)
            self.tid, self._slot, self._gen = reply["tid"], reply["slot"], reply["generation"]
            self._attach(buf, h)
        except BaseException:
            self._detach()
            raise
        self._spin_auto = spin is None  # re-judged now and then: load changes
        self._spin_checked = time.monotonic()
        self._spin_budget = MAX_SPIN if (_spin_allowed() if spin is None else spin) else 0.0
        self._owed: dict[int, int] = {}  # dest -> tag of an F_ABORT not yet posted
        self._mviews: weakref.WeakSet[MessageView] = weakref.WeakSet()
        self._at: int | None = None  # where _take found its message (pending index)
        self._unspilled = False  # the pending list holds messages still in the pages
        self._spun = False  # the fast path of a receive already spun for this message
        self._sleeps = 0  # our sleeps so far (the waiting word holds the current one)
        self.closed = False
        _open[self.vmid] = self

    def _attach(self, buf: memoryview, h) -> None:
        self._buf = buf
        self._q = buf.cast("Q")
        self._i = buf.cast("i")
        self._views += [self._q, self._i]
        self._ps = h["pagesize"]
        self._nsegs = h["nsegs"]
        if not 0 <= self._slot < layout.MAX_TASKS:
            raise PvmError(PvmSysErr, f"pvm_shmd gave slot {self._slot!r} (0 to "
                                      f"{layout.MAX_TASKS - 1})")
        if not 1 <= self._nsegs <= layout.MAXSEG or self._ps <= 0:
            raise _damaged(f"{self._nsegs} segments of page size {self._ps} in the header")
        self._data: list[memoryview] = []
        self._locks: list[ipc.Lock] = []
        self._npages = []
        self._mapb = []
        for s in range(self._nsegs):
            e = layout.segent(buf, s)
            n, off = e["npages"], e["data_off"]
            if not 1 <= n <= layout.MAXPAGES or e["map_off"] != layout.map_off(s):
                raise _damaged(f"segment {s}: {n} pages, page map at {e['map_off']}")
            try:
                shm = self._shm0 if s == 0 else ipc.attach_owned(e["shmid"], f"segment {s}")
            except (ipc.Gone, sysv_ipc.Error) as err:
                raise PvmError(PvmSysErr, f"segment {s} (shmid {e['shmid']}): {err}") from None
            if s:
                self._segs.append(shm)
            if shm.size < off + n * self._ps:  # slices past its end would be short
                raise _damaged(f"segment {s}: {n} pages of {self._ps} bytes at {off} do "
                               f"not fit its {shm.size} bytes")
            ipc.populate(shm)  # map every page now: no page faults on the hot path
            whole = memoryview(shm)
            self._views.append(whole)
            data = whole[off:off + n * self._ps]
            self._views.append(data)
            self._data.append(data)
            try:
                self._locks.append(ipc.Lock(ipc.open_sem(e["semkey"], e["semid"])))
            except (ipc.Gone, sysv_ipc.Error) as err:
                raise PvmError(PvmSysErr, f"segment {s}'s semaphore: {err}") from None
            self._npages.append(n)
            self._mapb.append(e["map_off"] // 4)
        self._segq = [(layout.SEGTAB_OFF + s * layout.SEGENT) // 8 for s in range(self._nsegs)]
        self._segi = [(layout.SEGTAB_OFF + s * layout.SEGENT) // 4 for s in range(self._nsegs)]
        self._rover = [layout.rover_index(s) for s in range(self._nsegs)]
        self._maxpages = max(self._npages)
        sb = layout.slot_off(self._slot)
        self._H, self._T = (sb + 16) // 8, (sb + 24) // 8
        self._ring = sb + layout.SLOT_HDR
        self._C = (sb + 104) // 8  # our "consumed" counter
        self._matchers: dict[tuple[int, int], object] = {}
        self._W, self._P = sb // 4 + _WAITING, (sb + 48) // 4
        t = layout.slot(buf, self._slot)
        self._R = (sb + layout.RV_OFF) // 8  # our direct-delivery record (word index)
        self._S = sb // 4 + _SENDING  # our "sending" word
        self._i[self._S] = 0
        self._orphans: dict[int, int] = {}  # src -> ends still to come of messages we dropped
        self._deferred: list[tuple[int, int, int]] = []  # frees a stuck lock put off
        try:
            self._mylock = ipc.Lock(ipc.open_sem(t["lock_key"], t["lock_id"]))
            self._mywake = ipc.nonblocking(ipc.open_sem(t["wake_key"], t["wake_id"]))
        except (ipc.Gone, sysv_ipc.Error) as err:
            raise PvmError(PvmSysErr, f"our inbox semaphores: {err}") from None
        self._direct = direct.available()
        # where our mapping of each segment's pages starts (senders hand us runs by
        # segment and page number, and we copy into them with process_vm_readv)
        self._bases = [direct.address(d) for d in self._data] if self._direct else []
        self._rx = _small_desc(0)  # precv's guess of the next small message's length
        self._hdrs: dict[int, bytes] = {}  # tag << 8 | length -> descriptor
        self._served: set[int] = set()  # dests our last large message went direct to
        self._waiter = ipc.Waiter(t["wake_id"])
        self._pending: deque[_Desc] = deque()
        self._peers: dict[int, tuple] = {}  # tid -> (slot, lock, wake)
        self._home = self._slot % self._nsegs  # senders spread over segments

    # ---- lifecycle ------------------------------------------------------------------
    def _detach(self) -> None:
        if any(not mv.released for mv in getattr(self, "_mviews", ())):
            # an array still points into the segments: unmapping them would leave it
            # dangling (a crash on access), so they stay mapped until the process exits
            self._views, self._segs = [], []
        for v in reversed(self._views):
            v.release()
        self._views = []
        for shm in self._segs:
            try:
                shm.detach()
            except sysv_ipc.Error:
                pass
        self._segs = []
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def leave(self) -> None:
        """Leave the virtual machine: messages still queued to us are dropped."""
        if self.closed:
            return
        self.closed = True
        if _open.get(self.vmid) is self:
            del _open[self.vmid]
        for mv in list(self._mviews):  # before leaving: after it the pages are not ours
            try:
                mv.release()
            except (BufferError, PvmError):
                pass
        self._pending.clear()  # pages we hold are ours: the daemon frees them on leave
        try:
            self._conn.request("leave")
        except PvmError:
            pass  # the daemon is gone: nothing to tell it
        self._detach()

    close = leave

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc) -> None:
        self.leave()

    def __repr__(self) -> str:
        return f"<Task t{self.tid:x}{' left' if self.closed else ''}>"

    # ---- checks ---------------------------------------------------------------------
    def _check_alive(self) -> None:
        """Raise if the daemon died or the shared memory was reset under us."""
        h = layout.header(self._buf)
        if h["generation"] != self._gen or h["state"] != layout.READY:
            raise PvmError(PvmSysErr, "the shared memory was reset (HUP or reset)")
        if not ipc.alive(*self._daemon):
            raise PvmError(PvmSysErr, "pvm_shmd died")
        if self._i[layout.slot_off(self._slot) // 4] & 0xFFFFFFFF != self.tid:
            raise PvmError(PvmSysErr, "this task was removed by pvm_shmd")

    def _peer(self, tid: int) -> tuple:
        """(slot, inbox lock, wake semaphore, slot word, ...) of a local task, cached."""
        p = self._peers.get(tid)
        # the tid, and the inbox lock (a task that rejoined with the same tid has new ones)
        if (p is not None and self._i[p[3]] & 0xFFFFFFFF == tid
                and self._i[p[3] + _LOCK_ID] == p[1].id):
            return p
        if not isinstance(tid, int) or not 0 < tid <= 0x7FFFFFFF:
            raise PvmError(PvmBadParam, f"bad tid {tid!r}")
        if (tid & TIDHOST) != (self.tid & TIDHOST):
            raise PvmError(PvmNoTask, f"t{tid:x} is on another host (shared memory is local)")
        for i in range(layout.MAX_TASKS):
            t = layout.slot(self._buf, i)
            if t["tid"] == tid and t["state"] == layout.ACTIVE:
                try:
                    lock = ipc.Lock(ipc.open_sem(t["lock_key"], t["lock_id"]))
                    wake = ipc.open_sem(t["wake_key"], t["wake_id"])
                except (ipc.Gone, sysv_ipc.Error):
                    break
                ti = layout.slot_off(i) // 4
                # the fast path of psend reads these: the inbox lock's semaphore, the
                # tail's word index, the ring's byte offset, the head as last read (the
                # head only grows: a stale one can only make the ring look fuller, and
                # not reading it spares a cache line the receiver keeps writing)
                p = (i, lock, wake, ti, lock.sem, (ti >> 1) + 3, (ti << 2) + _SLOT_HDR, [0])
                self._peers[tid] = p
                return p
        raise PvmError(PvmNoTask, f"no task t{tid:x}")

    # ---- pages ----------------------------------------------------------------------
    def _alloc(self, want: int, deadline: float) -> tuple[int, int]:
        """(segment, first page) of *want* pages, waiting for frees until *deadline*
        (then MemoryFull). No wait here, a lock's included, runs past the deadline."""
        delay = 20e-6
        m, tid = self._i, self.tid
        if self._deferred:
            self._free_deferred()
        while True:
            for k in range(self._nsegs):
                s = (self._home + k) % self._nsegs
                if want > self._npages[s]:
                    continue
                lock = self._locks[s]
                try:
                    # held long only by a stopped holder: not past our deadline for it
                    if not lock.acquire(min(SLICE, max(deadline - time.monotonic(), 0.0))):
                        continue
                except ipc.Gone:
                    raise PvmError(PvmSysErr, "pvm_shmd removed its segments") from None
                try:
                    p = pagemap.alloc(m, self._mapb[s], self._npages[s], want, tid,
                                      self._rover[s])
                    if p >= 0:
                        _add32(m, self._segi[s] + 5, -want)  # free pages
                        self._q[self._segq[s] + 5] = (self._q[self._segq[s] + 5] + 1) & _MASK64
                        return s, p
                finally:
                    lock.release()
            left = deadline - time.monotonic()
            if left <= 0:
                raise MemoryFull(f"no {want} free pages in any segment within the "
                                 "timeout (memory full)")
            self._check_alive()
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5e-3)

    def _free(self, s: int, p: int, only_if: int = 0) -> None:
        """Free the run at page *p* of segment *s* (if *only_if*, only while that tid
        owns it). A segment lock held past FREE_WAIT (its holder stopped) does not hold
        up the call (a receive's timeout must hold): the free waits in _deferred for
        our next allocation or sleep; the run stays ours meanwhile."""
        lock = self._locks[s]
        try:
            if not lock.acquire(FREE_WAIT):
                self._deferred.append((s, p, only_if))
                return
        except ipc.Gone:
            raise PvmError(PvmSysErr, "pvm_shmd removed its segments") from None
        try:
            if only_if and (not 0 <= p < self._npages[s]
                            or self._i[self._mapb[s] + _OWNER + p] != only_if):
                return
            n = pagemap.free(self._i, self._mapb[s], self._npages[s], p, self._rover[s])
            if n:
                _add32(self._i, self._segi[s] + 5, n)
                self._q[self._segq[s] + 6] = (self._q[self._segq[s] + 6] + 1) & _MASK64
        finally:
            lock.release()

    def _free_deferred(self) -> None:
        """Try again the frees a stuck segment lock put off."""
        todo, self._deferred = self._deferred, []
        for run in todo:
            self._free(*run)

    # ---- send -----------------------------------------------------------------------
    def psend(self, dest: int, tag: int, data, timeout: float | None = None) -> None:
        """Send *data* (any contiguous buffer) to task *dest* with 0 <= *tag* < 2**31.

        Waits up to *timeout* seconds in all (None: for ever) for free pages, inbox
        room or a receiver taking a direct copy, then raises PvmTimeout (MemoryFull,
        code PvmNoMem, when it was pages it waited for); the message is then not sent."""
        p = self._peers.get(dest)
        if p is not None and type(data) in _SMALL_TYPES and (n := len(data)) <= _INLINE:
            # the common small send, inline here (every interpreter step counts): a known
            # peer, a tag seen before (its descriptor is cached, so the tag is valid),
            # the inbox lock free, room in the ring; anything else takes the general
            # path below, which waits and reports errors
            i = self._i
            ti = p[3]
            # A receiver asleep is woken first, the message posted after: the wake-up
            # takes tens of microseconds to arrive, the posting one or two. (Its slot is
            # checked first: the cached semaphore must still be that task's.)
            early = i[ti + _WAITING]
            if early and i[ti] == dest:
                try:
                    p[2].release()
                except sysv_ipc.ExistentialError:
                    pass
            hdr = self._hdrs.get(tag << 8 | n)
            if hdr is not None and not self._owed:
                sem = p[4]
                try:
                    sem.acquire()  # non-blocking (IPC_NOWAIT), with SEM_UNDO
                except sysv_ipc.Error:
                    sem = None  # busy, or gone (a reaped peer's semaphore is removed)
                if sem is not None:
                    q = self._q
                    T = p[5]
                    tail = q[T]
                    seen = p[7]
                    if not 0 <= tail - seen[0] < _RING:  # full, or a new task in the slot
                        seen[0] = q[T - 1]
                    # (a tail behind the head is damage: the general path names it)
                    if i[ti] == dest and 0 <= tail - seen[0] < _RING:
                        d = p[6] + (tail % _RING) * _DESCSZ
                        self._buf[d:d + _INL + n] = hdr + data
                        q[T] = tail + 1
                        try:
                            sem.release()  # a semop: barrier between tail store, flag load
                        except sysv_ipc.ExistentialError:
                            return  # the receiver was reaped meanwhile; so was the message
                        # Asleep in a sleep we did not wake: wake it. Still in the one we
                        # woke: it looks at the ring once awake and, before it sleeps
                        # again, stores a new number and looks again after a barrier
                        # (one of us sees the other's store: the Dekker handshake).
                        w = i[ti + _WAITING]
                        if w and w != early:
                            try:
                                p[2].release()
                            except sysv_ipc.ExistentialError:
                                pass
                        return
                    try:
                        sem.release()
                    except sysv_ipc.ExistentialError:
                        pass
        if not 0 <= tag <= MAX_TAG:
            raise PvmError(PvmBadParam, f"tag {tag} must be >= 0 and < 2**31")
        mv = data if type(data) is bytes else _as_bytes_view(data)
        n = len(data) if mv is data else mv.nbytes
        deadline = _INF if timeout is None else time.monotonic() + timeout
        peer = self._peer(dest)
        if self._owed and dest in self._owed:
            self._post(peer, dest, self._owed[dest], 0, -1, 0, 0, layout.F_ABORT, 0, None,
                       deadline)
            del self._owed[dest]
        elif self._owed:
            self._owed = {t: g for t, g in self._owed.items() if self._owes(t)}
        if n <= layout.INLINE:
            self._post(peer, dest, tag, n, -1, 0, 0, layout.F_FIRST, n, mv, deadline)
            if tag << 8 | n not in self._hdrs:
                self._hdr(tag, n)  # the next one with this tag and length takes the fast path
            return
        if n <= layout.MEDIUM and self._post(peer, dest, tag, n, -1, 0, 0, layout.F_FIRST, n,
                                             mv, deadline, wait=False):
            return  # in the inbox itself; with no room there, through the pages
        if mv is data:
            mv = memoryview(data)  # slices of bytes would copy
        if n >= direct.MIN and self._direct and self._send_direct(peer, dest, tag, mv, n,
                                                                    deadline):
            return
        self._throttle(peer, dest, deadline)
        ps, off, flags = self._ps, 0, layout.F_FIRST
        piece = self._maxpages * ps
        if n > piece:  # in pieces: our slot says to whom until the last one is posted
            self._i[self._S] = dest  # (a receiver waiting for a piece looks here)
        try:
            while off < n:
                chunk = min(n - off, piece)
                want = -(-chunk // ps)
                try:
                    s, p = self._alloc(want, deadline)
                except BaseException:
                    if off:  # the receiver must drop the pieces it already has
                        self._abort(peer, dest, tag)
                    raise
                try:
                    b = p * ps
                    self._data[s][b:b + chunk] = mv[off:off + chunk]
                    more = layout.F_MORE if off + chunk < n else 0
                    self._post(peer, dest, tag, chunk, s, p, want, flags | more, n, None,
                               deadline)
                except BaseException:
                    self._free(s, p)
                    if off:
                        self._abort(peer, dest, tag)
                    raise
                off += chunk
                flags = 0
        finally:
            if n > piece:
                self._i[self._S] = 0

    def _send_direct(self, peer, dest: int, tag: int, mv: memoryview, n: int,
                     deadline: float) -> bool:
        """Deliver straight into *dest*'s posted buffer if it is waiting for this
        message (see direct.py). False: it was not, or cross-memory attach failed
        (it is then off for this task); the caller sends through the pages."""
        q, i, ti = self._q, self._i, peer[3]
        r = (ti * 4 + layout.RV_OFF) >> 3
        if q[r] != _RV_OPEN:
            # A receiver that spins and is busy in a receive that posts (taking earlier
            # messages), or that we just served, posts again soon: rather than queue
            # behind (it would copy out of the pages, and find its inbox never empty
            # again), wait while it empties its inbox and posts.
            if not q[r + layout.RV_SPINS] or not (q[r + layout.RV_ACTIVE]
                                                  or dest in self._served):
                return False
            if not self._await_post(ti, r, n, tag, deadline):
                self._served.discard(dest)
                return False
        src, chunk = direct.address(mv), direct.chunk_for(n)  # not under the lock
        run = None
        if q[r + layout.RV_ADDR] == 0:  # a precv_view: into a run of pages we pick
            if not self._posted_for(r, tag, n):
                return False
            try:
                run = self._alloc(-(-n // self._ps), 0.0)  # no waiting here for pages
            except PvmError as e:
                if e.code != PvmNoMem:
                    raise
                return False
        claimed = False
        try:
            claimed = self._claim(peer, dest, r, tag, n, src, chunk, run, deadline)
        finally:
            if run is not None and not claimed:
                self._free(*run)
        if not claimed:
            return False
        dst, pid, start = q[r + layout.RV_ADDR], i[ti + 1], q[(ti >> 1) + _START_TICKS]
        if i[ti + _WAITING]:
            try:
                peer[2].release()
            except sysv_ipc.ExistentialError:
                return True  # it left meanwhile; so did its buffer
        if run is None:
            status = direct.send(q, r, pid, src, dst, n, chunk, lambda: ipc.alive(pid, start),
                                 deadline)
        else:
            status = direct.GONE
            try:
                status = direct.send(q, r, pid, src, dst, n, chunk,
                                     lambda: ipc.alive(pid, start), deadline,
                                     self._bases[run[0]] + run[1] * self._ps)
            finally:
                if status == direct.GONE:  # or an exception: the receiver waits for a
                    q[r + direct.DA] = 2  # verdict, or is dead (then pvm_shmd reads this)
                # pvm_shmd hands the run back to us if it reaped the receiver while we
                # still wrote into it: then we free it
                self._free(*run, only_if=self.tid)
        if status == direct.WITHDRAWN:
            return False  # the receiver's timeout ran out: into its inbox instead
        if status == direct.GAVE_UP:
            if run is None:  # cross-memory attach refused (into pages, the receiver
                self._direct = False  # could not read: we copied its part ourselves)
            return False
        if status == direct.LATE:
            raise PvmTimeout(f"t{dest:x} did not finish taking the message before the timeout")
        self._served.add(dest)
        return True

    def _claim(self, peer, dest: int, r: int, tag: int, n: int, src: int, chunk: int,
               run: tuple[int, int] | None, deadline: float) -> bool:
        """Claim *dest*'s posted record for our *n*-byte message under its inbox lock,
        if it still waits for it; a *run* of pages (segment, page) goes to it then."""
        q, i, ti = self._q, self._i, peer[3]
        lock = peer[1]
        try:
            if not lock.acquire(min(SLICE, max(deadline - time.monotonic(), 0.0))):
                return False
        except ipc.Gone:
            return False
        try:
            # the inbox is empty (head read before the record: the receiver closes the
            # record before it takes a message off the ring), the record open, and
            # this message is the one it waits for, and fits
            if (i[ti] != dest or q[(ti >> 1) + 2] != q[(ti >> 1) + 3] or q[r] != _RV_OPEN
                    or not self._posted_for(r, tag, n)
                    or (q[r + layout.RV_ADDR] == 0) != (run is not None)):
                return False
            if run is not None:
                s, p = run
                i[self._mapb[s] + _OWNER + p] = dest  # its run from now on
                q[r + layout.RV_ADDR] = layout.rv_run_word(s, p)
            i[2 * (r + layout.RV_FROM)], i[2 * (r + layout.RV_FROM) + 1] = self.tid, tag
            q[r + layout.RV_PID], q[r + layout.RV_SRC] = self._pid, src
            q[r + layout.RV_N], q[r + layout.RV_CHUNK] = n, chunk
            for w in (direct.FA, direct.DA, direct.BB, direct.DB, direct.BFAIL):
                q[r + w] = 0
            q[r] = _RV_CLAIMED
            return True
        finally:
            lock.release()  # a semop: the barrier between the claim and the flag load

    def _await_post(self, ti: int, r: int, n: int, tag: int, deadline: float) -> bool:
        """Wait for the receiver in slot word *ti* to empty its inbox and post a
        buffer (True). Not for ever: not once it posts for another message, nor once
        it has been out of a receive for REPOST_WAIT, nor if it takes nothing off its
        inbox for REPOST_WAIT plus the time it takes to copy *n* bytes out."""
        q, h, t = self._q, (ti >> 1) + 2, (ti >> 1) + 3
        patience = direct.REPOST_WAIT + n / direct.COPY_RATE
        seen = q[h]
        clock = time.perf_counter
        start = since = active = clock()
        while True:
            state = q[r]
            if state == _RV_OPEN:
                if not self._posted_for(r, tag, n):
                    return False  # it waits for another message
                if q[h] == q[t]:
                    return True
            now = clock()
            if q[h] != seen:
                seen, since = q[h], now
            elif now - since > patience:
                return False
            if q[r + layout.RV_ACTIVE]:
                active = now
            elif now - active > direct.REPOST_WAIT:
                return False
            if time.monotonic() >= deadline:
                return False
            if now - start > MAX_SPIN:
                time.sleep(20e-6)

    def _posted_for(self, r: int, tag: int, n: int) -> bool:
        """The buffer posted in the record at word *r* takes our *n*-byte message with
        *tag* (its source and tag, or wildcards, and its size)."""
        i = self._i
        return (i[2 * (r + layout.RV_MATCH)] in (ANY, self.tid)
                and i[2 * (r + layout.RV_MATCH) + 1] in (ANY, tag)
                and self._q[r + layout.RV_CAP] >= n)

    def _hdr(self, tag: int, n: int) -> bytes:
        """The descriptor of a small message from us (cached: it is the same for
        every message with that tag and length)."""
        if len(self._hdrs) > 1024:
            self._hdrs.clear()
        h = self._hdrs[tag << 8 | n] = _DESC.pack(self.tid, tag, n, -1, 0, 0, _F_FIRST, n)
        return h

    def _throttle(self, peer, dest: int, deadline: float) -> None:
        """Pace a sender that is far ahead of a receiver that is busy receiving: while
        more than IN_FLIGHT bytes of paged messages wait in *dest*'s inbox, wait for it
        to take some (the data is then still in cache when it is read). A receiver
        that takes nothing for STALL seconds is not receiving: we do not wait for it,
        so buffering (up to the memory) is as before and nothing deadlocks on it."""
        q, sb = self._q, peer[3] * 4
        P, C = (sb + 96) >> 3, (sb + 104) >> 3
        if q[P] - q[C] <= IN_FLIGHT:
            return
        seen, since = q[C], time.perf_counter()
        delay = 0.0
        while q[P] - q[C] > IN_FLIGHT:
            now = time.perf_counter()
            if q[C] != seen:
                seen, since = q[C], now
            elif now - since > STALL:
                return
            if time.monotonic() >= deadline:
                raise PvmTimeout(f"t{dest:x} receives too slowly "
                                 f"({q[P] - q[C]} bytes waiting in its inbox)")
            if now - since > MAX_SPIN:  # poll briefly first: it frees room in microseconds
                delay = min(max(delay * 2, 20e-6), 1e-3)
                time.sleep(delay)

    def _abort(self, peer, dest: int, tag: int) -> None:
        """Tell *dest* that the message in pieces we were sending will not be finished.
        If its inbox stays full for ABORT_WAIT, the abort is owed: posted before our
        next message to it. Our "sending" word, cleared first, tells it meanwhile."""
        self._i[self._S] = 0
        try:
            self._post(peer, dest, tag, 0, -1, 0, 0, layout.F_ABORT, 0, None,
                       time.monotonic() + ABORT_WAIT)
        except PvmError as e:
            if e.code != PvmNoTask and e.code != PvmSysErr:
                self._owed[dest] = tag

    def _owes(self, dest: int) -> bool:
        """Is *dest*, to which we owe an abort, still a task (else forget the debt)?"""
        try:
            self._peer(dest)
            return True
        except PvmError:
            return False

    def _post(self, peer, dest, tag, n, s, p, npages, flags, total, inline, deadline,
              wait: bool = True) -> bool:
        """Queue a descriptor in *dest*'s inbox (with *n* bytes of *inline* data after
        it when *s* < 0), waiting until *deadline* for room; or, if not *wait* (a medium
        message), return False at once unless the ring is filled no further than
        MEDIUM_FILL. A sleeping receiver is woken first."""
        slot, lock, wake, ti = peer[:4]
        q, i = self._q, self._i
        sb = ti * 4
        H, T = (sb + 16) >> 3, (sb + 24) >> 3
        need = 1 if s >= 0 else layout.span(n)
        early = i[ti + _WAITING]  # woken now, it is back about when the message is there
        if early:
            try:
                wake.release()
            except sysv_ipc.ExistentialError:
                pass
        delay = 20e-6
        while True:
            try:
                # held long only by a stopped holder: not past our deadline for it
                got = lock.acquire(min(SLICE, max(deadline - time.monotonic(), 0.0)))
            except ipc.Gone:
                self._check_alive()  # pvm_shmd stopped (its semaphores go): PvmSysErr
                raise PvmError(PvmNoTask, f"t{dest:x} exited") from None
            if got:
                if i[ti] & 0xFFFFFFFF != dest:
                    lock.release()
                    self._check_alive()
                    raise PvmError(PvmNoTask, f"t{dest:x} exited")
                tail = q[T]
                used = tail - q[H]
                if not 0 <= used <= _RING:  # the head only grows, up to the tail
                    lock.release()
                    raise _damaged(f"inbox of t{dest:x}: head {q[H]}, tail {tail}")
                k = tail % _RING
                fill = _RING - k if k + need > _RING else 0  # a message does not wrap
                if used + fill + need <= (_RING if wait else layout.MEDIUM_FILL):
                    break
                lock.release()
                if not wait:
                    return False
            left = deadline - time.monotonic()
            if left <= 0:
                raise PvmTimeout(f"inbox of t{dest:x} full (it does not receive)" if got
                                 else f"inbox of t{dest:x} stayed locked")
            self._check_alive()
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5e-3)
        ring = sb + _SLOT_HDR
        if fill:
            _pack_desc(self._buf, ring + k * _DESCSZ, self.tid, 0, fill * _DESCSZ - _INL,
                       -1, 0, 0, _F_SKIP, 0)
            tail += fill
        d = ring + (tail % _RING) * _DESCSZ
        _pack_desc(self._buf, d, self.tid, tag, n, s, p, npages, flags, total)
        if inline is not None and n:
            self._buf[d + _INL:d + _INL + n] = inline
        if s >= 0:
            q[(sb + 96) >> 3] = (q[(sb + 96) >> 3] + n) & _MASK64
        q[T] = tail + need
        lock.release()  # a semop, the barrier between our tail store and the flag load
        w = i[ti + _WAITING]
        if w and w != early:  # asleep in a sleep we did not wake (see psend)
            try:
                wake.release()
            except sysv_ipc.ExistentialError:
                pass  # it left meanwhile; the message went with it
        return True

    # ---- receive --------------------------------------------------------------------
    def _drain(self, match) -> _Desc | None:
        """Move ring entries to the pending list until one satisfies *match*.

        The hot path of every receive: descriptors are built with tuple.__new__ (a
        NamedTuple's own constructor costs several times more)."""
        q, H = self._q, self._H
        head, tail = q[H], q[self._T]
        if head >= tail:
            if head > tail:
                raise _damaged(f"our inbox: head {head} past tail {tail}")
            return None
        if tail - head > _RING:
            raise _damaged(f"our inbox: tail {tail}, head {head} ({tail - head} "
                           f"descriptors queued, the ring holds {_RING})")
        buf, i, pend, ring = self._buf, self._i, self._pending, self._ring
        while head < tail:
            k = head % _RING
            off = ring + k * _DESCSZ
            f = _unpack_desc(buf, off)
            if f[3] < 0:
                n = (f[2] + _SPAN_ADD) // _DESCSZ
                # its bytes stay in the ring, before its end and the tail
                if k + n > _RING or head + n > tail or f[6] > 15:
                    raise self._bad_desc(head, f)
                head += n
                if f[6] & _F_SKIP:
                    q[H] = head
                    continue
                if f[2] > _MEDIUM:
                    raise self._bad_desc(head - n, f)
                d = _new(_Desc, f + (buf[off + _INL:off + _INL + f[2]].tobytes(),))
            else:
                s = f[3]
                # a run in one of our segments of as many pages as its bytes need
                if (s >= self._nsegs or f[5] != (f[2] + self._ps - 1) // self._ps
                        or not f[5] or f[4] + f[5] > self._npages[s] or f[2] > f[7]
                        or f[6] > 15):
                    raise self._bad_desc(head, f)
                i[self._mapb[s] + _OWNER + f[4]] = self.tid  # the run is ours now
                q[self._C] = (q[self._C] + f[2]) & _MASK64
                d = _new(_Desc, f + (None,))
                head += 1
            q[H] = head
            if match(d):
                if pend:
                    i[self._P] = len(pend)
                return d
            pend.append(d)
            if f[3] >= 0:
                self._unspilled = True
        i[self._P] = len(pend)
        return None

    def _bad_desc(self, n: int, f: tuple) -> PvmError:
        """The error for descriptor number *n* of our inbox, whose fields *f* cannot be
        right; it is left on the ring (the head stays before it)."""
        return _damaged(f"descriptor {n} of our inbox: from t{f[0]:x}, {f[2]} bytes, "
                        f"segment {f[3]}, page {f[4]}, {f[5]} pages, flags {f[6]:#x}, "
                        f"total {f[7]}")

    def _take(self, match, deadline: float, block: bool = True) -> _Desc | None:
        """The first message (pending, then ring) that satisfies *match*."""
        if self._orphans:
            self._purge()
        if self._pending:
            for k, d in enumerate(self._pending):
                if match(d):
                    del self._pending[k]
                    self._i[self._P] = len(self._pending)
                    self._at = k
                    return d
        self._at = None
        q, H, T = self._q, self._H, self._T
        while True:
            d = self._drain(match)
            if self._orphans:
                self._purge()  # what the ring brought of messages we dropped
            if d is not None or not block:
                self._spun = False
                return d
            budget = self._spin_budget
            if not budget or self._spun:
                self._spun = False
                self._sleep(deadline)
                continue
            head, start = q[H], time.perf_counter()
            end = start + budget
            while q[T] == head and time.perf_counter() < end:
                pass
            if q[T] != head:
                continue
            self._sleep(deadline)
            # Adapt the spin to the gaps between messages: a message that came soon
            # after we gave up means a slightly longer spin would have saved the
            # sleep (and the sender's costly wake-up); a long gap means spin less.
            waited = time.perf_counter() - start
            if q[T] != head and waited < MAX_SPIN:
                self._spin_budget = min(MAX_SPIN, max(budget, waited * 1.5))
            elif budget > MIN_SPIN:
                self._spin_budget = max(budget / 2, MIN_SPIN)

    def _put_back(self, d: _Desc) -> None:
        """Return the descriptor _take just gave to where it was (order is kept)."""
        if self._at is None:
            self._pending.append(d)
        else:
            self._pending.insert(self._at, d)
        self._i[self._P] = len(self._pending)
        if d.seg >= 0:
            self._unspilled = True

    def _spill(self) -> None:
        """Copy the messages waiting in the pending list out of the shared pages and
        free the pages. Done only before blocking: a sender we wait for may need those
        pages (otherwise a receiver waiting for one source while others' messages fill
        the memory would deadlock with that source's psend)."""
        pend = self._pending
        for k, d in enumerate(pend):
            if d.seg >= 0:
                b = d.page * self._ps
                src = self._data[d.seg][b:b + d.nbytes]
                data = bytes(src)
                src.release()
                self._free(d.seg, d.page)
                pend[k] = d._replace(seg=-1, inline=data)
        self._unspilled = False

    def _sleep(self, deadline: float) -> None:
        """Block until a sender wakes us, a slice passes or the deadline is reached."""
        now = time.monotonic()
        if now >= deadline:
            raise PvmTimeout("no matching message before the timeout")
        if self._unspilled:
            self._spill()
        if self._deferred:
            self._free_deferred()
        if self._spin_auto and now - self._spin_checked > SPIN_RECHECK:
            self._spin_checked = now
            self._spin_budget = (self._spin_budget or MAX_SPIN) if _spin_allowed() else 0.0
        # No lock here (a Dekker handshake): we store waiting, then a full barrier,
        # before looking at the ring; a sender stores the tail, then a semop (its
        # unlock, a barrier in the kernel) before looking at waiting. One of the two
        # always sees the other's store, so no wake-up is lost.
        i, W = self._i, self._W
        self._sleeps = self._sleeps % 0x7FFFFFFF + 1
        i[W] = self._sleeps  # which sleep: a sender that woke this one need not again
        try:
            if _fence is not None:
                _fence()  # a stale wake-up left on the semaphore only costs a loop
            else:
                try:
                    self._mywake.acquire()  # a semop: the barrier, where there is no fence
                    return
                except sysv_ipc.BusyError:
                    pass
            if self._q[self._T] != self._q[self._H] or self._q[self._R] == _RV_CLAIMED:
                return
            woke = self._waiter.down(min(SLICE, deadline - now))
        except (ipc.Gone, sysv_ipc.ExistentialError):
            raise PvmError(PvmSysErr, "pvm_shmd removed our inbox (it exited)") from None
        finally:
            i[W] = 0
        if not woke:
            self._check_alive()
        elif self._q[self._T] == self._q[self._H] and self._q[self._R] != _RV_CLAIMED:
            # Woken before the message is there: psend wakes a sleeper first and posts
            # after (a microsecond or two). Polling that long beats sleeping again.
            q, T, H, clock = self._q, self._T, self._H, time.perf_counter
            end = clock() + POST_WAIT
            while q[T] == q[H] and clock() < end:
                pass

    def _matcher(self, source: int, tag: int):
        m = self._matchers.get((source, tag))
        if m is None:
            if len(self._matchers) > 256:
                self._matchers.clear()
            m = self._matchers[source, tag] = self._make_matcher(source, tag)
        return m

    @staticmethod
    def _make_matcher(source: int, tag: int):
        if source == ANY and tag == ANY:
            return lambda d: d.flags & layout.F_FIRST
        if source == ANY:
            return lambda d: d.flags & layout.F_FIRST and d.tag == tag
        if tag == ANY:
            return lambda d: d.flags & layout.F_FIRST and d.src == source
        return lambda d: d.flags & layout.F_FIRST and d.src == source and d.tag == tag

    def _next_piece(self, src: int, deadline: float, mark: _Desc) -> _Desc | None:
        """The next piece of *src*'s message in flight, whose place in the queue *mark*
        holds; None if it was aborted, or *src* died or gave up before sending it (its
        slot's "sending" word no longer names us: the F_ABORT it owes us, when it
        comes, is dropped as _orphans says). PvmTimeout at *deadline*."""
        def match(d):
            return d.src == src and not d.flags & layout.F_FIRST

        while True:
            d = self._take_after(mark, match)
            if d is not None:
                return None if d.flags & layout.F_ABORT else d
            try:
                ti = self._peer(src)[3]
            except PvmError:
                d = self._take_after(mark, match)  # it may have sent, then died
                return None if d is None or d.flags & layout.F_ABORT else d
            if self._i[ti + _SENDING] != self.tid:
                # Not sending to us any more: all it posted before it said so is in
                # our ring now (it posts, then clears the word; we read the word, then
                # the ring). Nothing there: it gave up without an abort it could post.
                d = self._take_after(mark, match)
                if d is None:
                    self._orphans[src] = self._orphans.get(src, 0) + 1
                    return None
                return None if d.flags & layout.F_ABORT else d
            self._sleep(deadline)

    def _take_after(self, mark: _Desc, match) -> _Desc | None:
        """The first descriptor satisfying *match* that came after *mark* (pending,
        then ring); never block. A sender's earlier message in pieces may wait in the
        queue before *mark* with pieces of its own: they are not this message's."""
        if self._orphans:
            self._purge()
        pend = self._pending
        after = False
        for k, d in enumerate(pend):
            if d is mark:
                after = True
            elif after and match(d):
                del pend[k]
                self._i[self._P] = len(pend)
                return d
        found = self._drain(match)
        if self._orphans:
            self._purge()
        return found

    def _purge(self) -> None:
        """Drop the pieces and aborts still to come of messages we dropped mid-way
        (_orphans: per sender, how many such messages have not ended yet; a sender's
        descriptors arrive in order, so theirs come before any of its later ones)."""
        pend, orphans = self._pending, self._orphans
        k = 0
        while k < len(pend) and orphans:
            d = pend[k]
            c = orphans.get(d.src)
            if not c or d.flags & layout.F_FIRST:
                k += 1
                continue
            del pend[k]
            if d.seg >= 0:
                self._free(d.seg, d.page)
            if not d.flags & layout.F_MORE:  # its last piece, or its abort
                if c == 1:
                    del orphans[d.src]
                else:
                    orphans[d.src] = c - 1
        self._i[self._P] = len(pend)

    def _assemble(self, d: _Desc, into, deadline: float = _INF):
        """The data of the message whose first piece is *d*: bytes-like, or the byte
        count written into *into*; None if its sender gave up or died mid-message.
        At *deadline* (PvmTimeout, or any exception while waiting for a piece) what
        came so far is kept, in its place in the queue, for the next receive."""
        if not d.flags & layout.F_MORE:
            return self._copy_out(d, into)
        first = d
        if first.total > _MAX_TOTAL:
            if d.seg >= 0:
                self._free(d.seg, d.page)
            raise _damaged(f"message from t{d.src:x} of {d.total} bytes (more than this "
                           "machine's memory)")
        pend = self._pending
        mark = _new(_Desc, (0, 0, 0, -1, 0, 0, 0, 0, b""))  # its place; no receive takes it
        pend.insert(self._at if self._at is not None else len(pend), mark)
        whole = bytearray(first.total) if into is None else None
        out = memoryview(whole) if into is None else into
        off = 0
        keep = None
        try:
            while True:
                if d.nbytes > first.total - off:
                    if d.seg >= 0:
                        self._free(d.seg, d.page)
                    if d.flags & layout.F_MORE:  # the rest will come: drop it then
                        self._orphans[d.src] = self._orphans.get(d.src, 0) + 1
                    raise PvmError(PvmBadMsg, f"message from t{d.src:x}: pieces hold more "
                                              f"than the {first.total} bytes the first said")
                self._copy_out(d, out[off:off + d.nbytes])
                off += d.nbytes
                if not d.flags & layout.F_MORE:
                    break
                try:
                    d = self._next_piece(d.src, deadline, mark)
                except BaseException:
                    keep = _new(_Desc, (first.src, first.tag, off, -1, 0, 0,
                                        layout.F_FIRST | layout.F_MORE, first.total,
                                        bytes(out[:off])))
                    raise
                if d is None:
                    return None
        finally:
            for k, x in enumerate(pend):
                if x is mark:
                    if keep is None:
                        del pend[k]
                    else:
                        pend[k] = keep
                    break
            self._i[self._P] = len(pend)
            if whole is not None:
                out.release()
        if off != first.total:
            raise PvmError(PvmBadMsg, f"message from t{d.src:x}: pieces hold {off} bytes, "
                                      f"the first said {first.total}")
        return off if whole is None else whole

    def _receive(self, source: int, tag: int, timeout: float | None, into=None,
                 deadline: float | None = None):
        """Take a whole message: (src, tag, data) where data is bytes-like, or the byte
        count written into *into*. A large *into* is posted for direct delivery while
        nothing matching is queued (see direct.py). *deadline*, if given, is the one
        computed from *timeout* when the caller already waited."""
        if deadline is None:
            deadline = _INF if timeout is None else time.monotonic() + timeout
        match = self._matcher(source, tag)
        post = into is not None and into.nbytes >= direct.MIN and self._direct
        if post:
            self._q[self._R + layout.RV_ACTIVE] = 1
            try:
                return self._receive_posting(match, source, tag, deadline, into)
            finally:
                self._q[self._R + layout.RV_ACTIVE] = 0
        while True:
            d = self._take(match, deadline)
            got = self._whole(d, into, deadline)
            if got is not None:
                return got

    def _receive_posting(self, match, source: int, tag: int, deadline: float, into):
        """_receive for a buffer that direct delivery can fill."""
        while True:
            d = self._take(match, deadline, block=False)
            if d is None:
                got = self._await_direct(into, source, tag, deadline)
            else:
                got = self._whole(d, into, deadline)
            if got is not None:
                return got
            # the inbox got something, or the sender gave up or died: look again

    def _whole(self, d: _Desc, into, deadline: float = _INF):
        """(src, tag, data) of the message *d* starts, once all its pieces are in;
        None if its sender gave up or died mid-message (it is then dropped)."""
        if into is not None and d.total > into.nbytes:
            self._put_back(d)
            raise PvmError(PvmOverflow, f"message of {d.total} bytes from t{d.src:x} does "
                                        f"not fit in {into.nbytes} bytes (kept)")
        data = self._assemble(d, into, deadline)
        return None if data is None else (d.src, d.tag, data)

    def _await_direct(self, into: memoryview | None, source: int, tag: int, deadline: float):
        """Post *into* (None: "into pages", for precv_view) and wait, spinning then
        sleeping as ``_take`` does, until a sender claims it (then copy with it:
        (src, tag, nbytes), or into pages the _Desc of the message; None if it gave up)
        or the inbox gets a message (None). Posting and closing are plain stores: a
        sender claims only under the inbox lock and with the inbox empty, and we close
        before we take anything off it."""
        q, i, r, H, T = self._q, self._i, self._R, self._H, self._T
        i[2 * (r + layout.RV_MATCH)], i[2 * (r + layout.RV_MATCH) + 1] = source, tag
        if into is None:  # the sender picks a run of pages that one segment holds
            q[r + layout.RV_ADDR], q[r + layout.RV_CAP] = 0, min(self._npages) * self._ps
        else:
            q[r + layout.RV_ADDR], q[r + layout.RV_CAP] = direct.address(into), into.nbytes
        q[r + layout.RV_SPINS] = 1 if self._spin_budget else 0
        q[r] = _RV_OPEN
        try:
            head = q[H]
            clock = time.perf_counter
            end = clock() + self._spin_budget
            while q[T] == head and q[r] == _RV_OPEN:
                if clock() >= end:
                    self._sleep(deadline)
        except BaseException as e:
            try:
                with self._mylock_held():
                    claimed = q[r] == _RV_CLAIMED
                    if not claimed:
                        q[r] = _RV_NONE
            except (ipc.Gone, PvmError):
                claimed = q[r] == _RV_CLAIMED  # pvm_shmd is gone: nobody claims any more
            if not claimed:
                q[r] = _RV_NONE
                raise
            # a sender is already writing into the buffer: finish with it first (we
            # withdraw at once if our time ran out: it stops at its next chunk)
            got = self._take_direct(into, deadline)
            if got is not None and isinstance(e, PvmTimeout):
                return got  # it came in time after all
            if got is not None and into is None:  # whole in pages: queued first (it
                self._pending.appendleft(got)  # was next), not lost
                i[self._P] = len(self._pending)
                self._unspilled = True
            raise
        if q[r] == _RV_CLAIMED:
            return self._take_direct(into, deadline)
        q[r] = _RV_NONE  # before anything is taken off the ring
        return None

    def _take_direct(self, into: memoryview | None, deadline: float = _INF):
        """Copy our part of the message a sender claimed our record for (into *into*,
        or None: into pages), and wait for its verdict: (src, tag, nbytes), or into
        pages the message's _Desc; None if it gave up or died (a run of pages it gave
        us is then freed). Past *deadline* we withdraw (see direct.receive)."""
        q, i, r = self._q, self._i, self._R
        pages = into is None
        src, tag = i[2 * (r + layout.RV_FROM)], i[2 * (r + layout.RV_FROM) + 1]
        n, chunk = q[r + layout.RV_N], q[r + layout.RV_CHUNK]
        dst = q[r + layout.RV_ADDR]
        pid = q[r + layout.RV_PID]
        try:
            ti = self._peer(src)[3]
            start = self._q[(ti >> 1) + _START_TICKS]
            spid = i[ti + 1]
        except PvmError:
            ti, start, spid = -1, -1, pid  # its slot is gone: so is it

        # Every word we index or loop with is checked against what we posted (our
        # buffer, its size) and what the sender must have computed from them.
        cap = min(self._npages) * self._ps if into is None else into.nbytes
        bad = None
        if not 0 < n <= cap or chunk != direct.chunk_for(n) or pid != spid:
            bad = f"{n} bytes in chunks of {chunk} from pid {pid} (t{src & 0xFFFFFFFF:x} " \
                  f"is pid {spid}) for a buffer of {cap}"
        elif pages:
            s, p = layout.rv_run(dst)
            want = -(-n // self._ps)
            if (not dst & layout.RV_PAGES or s >= self._nsegs
                    or p + want > self._npages[s]
                    or i[self._mapb[s] + p] != -want
                    or i[self._mapb[s] + _OWNER + p] != self.tid):
                bad = f"run word {dst:#x} for {n} bytes"
            else:
                dst = self._bases[s] + p * self._ps
        elif dst != direct.address(into):
            bad = f"buffer address {dst:#x}, we posted {direct.address(into):#x}"
        if bad is not None:
            if not q[r + direct.BFAIL]:
                q[r + direct.BFAIL] = direct.WITHDRAW  # a real sender stops
            q[r] = _RV_NONE
            raise _damaged(f"our direct-delivery record: {bad}")

        # The sender is waited for as long as its process lives, whatever happens to
        # pvm_shmd: until it says it is done, it may still be writing into the buffer.
        try:
            alive: Callable[[], bool] = functools.partial(ipc.alive, pid, start)
            if deadline < _INF:
                alive = direct.withdrawing(q, r, alive, deadline)
            ok = direct.receive(q, r, pid, q[r + layout.RV_SRC], dst, n, chunk, alive)
        finally:
            q[r] = _RV_NONE
        if not pages:
            return (src, tag, n) if ok else None
        if not ok:
            self._free(s, p)
            return None
        return _new(_Desc, (src, tag, n, s, p, -(-n // self._ps), _F_FIRST, n, None))

    @contextlib.contextmanager
    def _mylock_held(self):
        """Our own inbox lock (senders claim our record under it)."""
        while not self._mylock.acquire(SLICE):
            self._check_alive()
        try:
            yield
        finally:
            self._mylock.release()

    def _copy_out(self, d: _Desc, into):
        if d.seg < 0:
            if into is None:
                return d.inline
            into[:d.nbytes] = d.inline
            return d.nbytes
        b = d.page * self._ps
        src = self._data[d.seg][b:b + d.nbytes]
        try:
            if into is None:
                return bytes(src)
            into[:d.nbytes] = src
            return d.nbytes
        finally:
            src.release()
            self._free(d.seg, d.page)

    def precv(self, source: int = ANY, tag: int = ANY, timeout: float | None = None) -> Message:
        """Receive the first message from *source* with *tag* (-1: any). Waits up to
        *timeout* seconds (None: for ever) for it to start arriving, then raises
        PvmTimeout. ``data`` is bytes (a bytearray for a message sent in pieces)."""
        deadline = None
        if not self._pending:
            # _next_small, inline (keep the two in step): the receive every small
            # message takes. Calling it instead costs ~0.05 us a message, measured:
            # 2.74-2.76x mpi4py's ping-pong latency became 2.83-3.04x, the floor being 3x.
            q, H, T = self._q, self._H, self._T
            head = q[H]
            if head == q[T] and timeout != 0:
                if self._spin_budget:
                    clock = _clock
                    end = clock() + self._spin_budget
                    # three looks per clock reading: a message is seen sooner
                    while q[T] == head and q[T] == head and q[T] == head and clock() < end:
                        pass
                if head == q[T]:
                    # Sleep here (once: a wake-up, a slice or the deadline), not in the
                    # general path: what runs between a wake-up and the reply is on the
                    # critical path, and it runs slowly (cold caches).
                    self._spun = True  # the general path sleeps without spinning again
                    deadline = _INF if timeout is None else time.monotonic() + timeout
                    self._sleep(deadline)
            # something queued, and no more than the ring holds (a damaged head or
            # tail takes the general path, which names it)
            if 0 < q[T] - head <= _RING:
                off = self._ring + (head % _RING) * _DESCSZ
                # src, tag, nbytes, seg, flags and the data, in one call, guessing the
                # length of the last small message (a wrong guess costs a slice)
                f = self._rx.unpack_from(self._buf, off)
                if (f[3] < 0 and f[4] == _F_FIRST and (source == ANY or f[0] == source)
                        and (tag == ANY or f[1] == tag)):
                    data = f[5]
                    if len(data) != f[2]:
                        data, span = self._unguessed(off, f[2], head)
                        head += span - 1
                    q[H] = head + 1
                    self._spun = False
                    return _new(Message, (f[0], f[1], data))
        return _new(Message, self._receive(source, tag, timeout, deadline=deadline))

    def _unguessed(self, off: int, n: int, head: int) -> tuple[bytes, int]:
        """The *n* inline bytes of the descriptor at *off* (number *head*) when the
        receive fast path guessed another length, and the descriptors it takes. A
        small length is the next guess; a medium message's bytes run on through the
        next descriptors (before the ring's end and the tail, or it is damage)."""
        span = layout.span(n)
        if n > _MEDIUM or head % _RING + span > _RING or head + span > self._q[self._T]:
            raise self._bad_desc(head, _unpack_desc(self._buf, off))
        if n <= _INLINE:
            self._rx = _small_desc(n)
        return self._buf[off + _INL:off + _INL + n].tobytes(), span

    def _next_small(self, source: int, tag: int, timeout: float | None, room: int):
        """The common case of a receive, in as few interpreter steps as we can: nothing
        pending, and the next message in the ring (after a spin, or one sleep, if it is
        empty) is a small one that matches and fits in *room* bytes. Returns (message,
        deadline): the message (src, tag, data) taken off the ring, or None for the
        general path, with the deadline already running if we slept (else None).
        ``precv`` has this inline (keep the two in step)."""
        q, H, T = self._q, self._H, self._T
        head = q[H]
        deadline = None
        if head == q[T] and timeout != 0:
            if self._spin_budget:
                clock = _clock
                end = clock() + self._spin_budget
                while q[T] == head and q[T] == head and q[T] == head and clock() < end:
                    pass
            if head == q[T]:
                self._spun = True  # the general path sleeps without spinning again
                deadline = _INF if timeout is None else time.monotonic() + timeout
                self._sleep(deadline)
        if 0 < q[T] - head <= _RING:  # (damage takes the general path, which names it)
            off = self._ring + (head % _RING) * _DESCSZ
            f = self._rx.unpack_from(self._buf, off)
            if (f[3] < 0 and f[4] == _F_FIRST and f[2] <= room
                    and (source == ANY or f[0] == source) and (tag == ANY or f[1] == tag)):
                data = f[5]
                if len(data) != f[2]:
                    data, span = self._unguessed(off, f[2], head)
                    head += span - 1
                q[H] = head + 1
                self._spun = False
                return (f[0], f[1], data), None
        return None, deadline

    def precv_into(self, buffer, source: int = ANY, tag: int = ANY,
                   timeout: float | None = None) -> tuple[int, int, int]:
        """Receive straight into *buffer*; return (src, tag, nbytes). A message larger
        than the buffer raises PvmError(PvmOverflow) and stays queued."""
        mv = _as_bytes_view(buffer)
        if mv.readonly:
            raise PvmError(PvmBadParam, "receive buffer is read-only")
        deadline = None
        if not self._pending and (mv.nbytes < direct.MIN or not self._direct):
            got, deadline = self._next_small(source, tag, timeout, mv.nbytes)
            if got is not None:
                n = len(got[2])
                mv[:n] = got[2]
                return got[0], got[1], n
        return self._receive(source, tag, timeout, into=mv, deadline=deadline)

    def precv_view(self, source: int = ANY, tag: int = ANY,
                   timeout: float | None = None) -> MessageView:
        """Receive without copying: a MessageView on the shared pages, to release.
        A message that came inline (small) or in pieces (larger than a segment), or
        that was moved out of the pages while we waited, is a private copy."""
        deadline = _INF if timeout is None else time.monotonic() + timeout
        match = self._matcher(source, tag)
        while True:
            # Nothing queued: a large message may come into pages, both of us copying.
            # Only for a receiver that spins: one asleep helps late, and measured, a
            # stream with the spin off got slower (11-12 GB/s against 12-13 at 1 MiB).
            if self._direct and self._spin_budget:
                d = self._take(match, deadline, block=False)
                if d is None:
                    self._q[self._R + layout.RV_ACTIVE] = 1
                    try:
                        d = self._await_direct(None, source, tag, deadline)
                    finally:
                        self._q[self._R + layout.RV_ACTIVE] = 0
                    if d is None:
                        continue  # the inbox got something, or the sender gave up
            else:
                d = self._take(match, deadline)
            if d.seg >= 0 and not d.flags & layout.F_MORE:
                b = d.page * self._ps
                v = MessageView(self, d, self._data[d.seg][b:b + d.nbytes])
                self._mviews.add(v)
                return v
            data = self._assemble(d, None, deadline)
            if data is not None:
                return MessageView(self, d._replace(seg=-1), memoryview(data))

    def probe(self, source: int = ANY, tag: int = ANY) -> tuple[int, int, int] | None:
        """(src, tag, total bytes) of the first matching message waiting, else None."""
        self._drain(lambda d: False)
        match = self._matcher(source, tag)
        for d in self._pending:
            if match(d):
                return d.src, d.tag, d.total
        return None


def current(vmid: str | None = None) -> Task | None:
    """This process's open task for *vmid* (default ``$PVM_VMID``), if it joined."""
    t = _open.get(paths.current_vmid(vmid))
    return t if t is not None and not t.closed and t._pid == os.getpid() else None


def join(vmid: str | None = None, name: str | None = None, spin: bool | None = None) -> Task:
    """Enroll this process with the host's pvm_shmd (found from the user and the VM id)."""
    return Task(vmid, name, spin)

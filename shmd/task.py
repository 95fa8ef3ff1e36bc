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
its value (``damaged``), never an IndexError or a loop whose count came from shared
memory. On the fast paths that costs one comparison, folded into a test they had.

This module holds the Task itself: joining, attaching the segments, leaving. Its
parts are layers in modules of their own, listed in taskbase.py: pages.py, inbox.py,
rendezvous.py, sending.py, receiving.py; message.py holds what a receive returns.
"""
from __future__ import annotations

import os
import sys
import time
import weakref
from collections import deque

import sysv_ipc

from . import calibrate, control, direct, fastpath, ipc, layout, mutex, paths, tids, trace, wake
from .errors import MemoryFull, PvmError, PvmExists, PvmSysErr  # noqa: F401  (MemoryFull: shmd.task's, as before)
from .message import DESC as _DESC  # noqa: F401  (the names tools and tests use)
from .message import Desc as _Desc  # noqa: F401
from .message import Message, MessageView, small_desc  # noqa: F401
from .message import as_bytes_view as _as_bytes_view  # noqa: F401
from .pages import DEFER_MAX
from .receiving import Receiving
from .sending import MAX_TAG, Sending  # noqa: F401
from .taskbase import ANY, MAX_SPIN, SLICE, damaged, spin_allowed  # noqa: F401
from .tids import TIDHOST, TIDLOCAL  # noqa: F401

_open: dict[str, Task] = {}  # VM id -> this process's open task (one task per process)


class Task(Receiving, Sending):
    """A process enrolled with this host's pvm_shmd. Use ``shmd.join()``."""

    def __init__(self, vmid: str | None = None, name: str | None = None, spin: bool | None = None,
                 role: str | None = None):
        self.vmid = paths.current_vmid(vmid)
        self.closed = True
        other = _open.get(self.vmid)
        if other is not None and not other.closed and other._pid == os.getpid():
            # pvm_shmd gives a process that joins again the slot it already has (as a
            # spawner's child adopts its slot): two Task objects would share one inbox.
            raise PvmError(PvmExists, f"this process already joined as {tids.fmt(other.tid)}; "
                                      "one task per process (use that one)")
        self._pid = os.getpid()
        paths_ = calibrate.choice()  # a bad $PVM_SHMD_PATH is refused before we join
        self._shm0, buf = control.attach_seg0(self.vmid)
        self._views = [buf]
        self._segs = [self._shm0]
        self._conn = None
        try:
            h = layout.header(buf)
            if h["state"] != layout.READY:
                raise control.NoDaemon("pvm_shmd is not ready")
            self._daemon = (h["pid"], h["start_ticks"])
            self._conn = control.Connection(h["sock"])
            name = name or os.path.basename(sys.argv[0] or "python")
            # (role "net": pvm_netd, which pvm_shmd gives the tid kept for it)
            reply = self._conn.request("join", pid=os.getpid(), name=name, **({"role": role} if role else {}))
            self.tid, self._slot, self._gen = reply["tid"], reply["slot"], reply["generation"]
            self._src = self.tid
            # (pvm_netd does not map every page as it starts: the daemon fills the pages
            # in once it is ready; a page pvm_netd touches later costs it a minor fault)
            self._attach(buf, h, paths_, populate=role != "net")
        except BaseException:
            self._detach()
            raise
        self._spin_auto = spin is None  # re-judged now and then: load changes
        self._spin_checked = time.monotonic()
        self._spin_budget = MAX_SPIN if (spin_allowed() if spin is None else spin) else 0.0
        self._owed = {}  # dest -> tag of an F_ABORT not yet posted
        self._mviews = weakref.WeakSet()
        self._at = None  # where _take found its message (pending index)
        self._unspilled = False  # the pending list holds messages still in the pages
        self._spun = False  # the fast path of a receive already spun for this message
        self._sleeps = 0  # our sleeps so far (the waiting word holds the current one)
        self.closed = False
        _open[self.vmid] = self
        # pvm_netd is PVM's pvmd, not a task of the program: never traced (its forwarding
        # shows as the tasks' own sends and receives)
        self._traceable = role != "net"
        # pvm_netd sends to other hosts through its own out thread, a task straight (netsend.py)
        self._net_direct = role != "net"
        self._tracing = self._i[layout.H_TRACE_I] if self._traceable else 0
        mask = (trace.env_mask(os.environ.get(trace.ENV)) or self._tracing) if self._traceable else 0
        if mask:  # spawned traced (spawn -@), or the host traces
            trace.switch(self, mask, trace.SPAWN)

    def _attach(self, buf: memoryview, h, paths_: calibrate.Choice, populate: bool = True) -> None:
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
            raise damaged(f"{self._nsegs} segments of page size {self._ps} in the header")
        self._data = []
        self._locks = []
        self._npages = []
        self._mapb = []
        for s in range(self._nsegs):
            e = layout.segent(buf, s)
            n, off = e["npages"], e["data_off"]
            if not 1 <= n <= layout.MAXPAGES or e["map_off"] != layout.map_off(s):
                raise damaged(f"segment {s}: {n} pages, page map at {e['map_off']}")
            try:
                shm = self._shm0 if s == 0 else ipc.attach_owned(e["shmid"], f"segment {s}")
            except (ipc.Gone, sysv_ipc.Error) as err:
                raise PvmError(PvmSysErr, f"segment {s} (shmid {e['shmid']}): {err}") from None
            if s:
                self._segs.append(shm)
            if shm.size < off + n * self._ps:  # slices past its end would be short
                raise damaged(f"segment {s}: {n} pages of {self._ps} bytes at {off} do "
                              f"not fit its {shm.size} bytes")
            if populate:
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
            self._mapb.append(layout.map_i(s))
        self._segq = [layout.segent_q(s) for s in range(self._nsegs)]
        self._segi = [layout.segent_i(s) for s in range(self._nsegs)]
        self._rover = [layout.rover_index(s) for s in range(self._nsegs)]
        self._intent = [layout.intent_i(s) for s in range(self._nsegs)]
        self._maxpages = max(self._npages)
        # our slot's words (int64: head, tail, consumed, direct-delivery record; int32:
        # waiting, pending, sending) and our ring's byte offset
        bq, bi = layout.slot_q(self._slot), layout.slot_i(self._slot)
        self._H, self._T = bq + layout.T_HEAD_Q, bq + layout.T_TAIL_Q
        self._C, self._R = bq + layout.T_CONSUMED_Q, bq + layout.T_RV_Q
        self._W, self._P = bi + layout.T_WAITING_I, bi + layout.T_PENDING_I
        self._S = bi + layout.T_SENDING_I
        self._ring = layout.slot_off(self._slot) + layout.SLOT_HDR
        self._matchers = {}
        t = layout.slot(buf, self._slot)
        self._i[self._S] = 0
        self._orphans = {}  # src -> ends still to come of messages we dropped
        self._deferred = []  # frees a stuck lock put off
        self._mylock = mutex.Mutex(self._shm0.address + layout.slot_off(self._slot)
                                   + layout.T_LOCK_OFF)
        try:
            self._mywake = ipc.nonblocking(ipc.open_sem(t["wake_key"], t["wake_id"]))
        except (ipc.Gone, sysv_ipc.Error) as err:
            raise PvmError(PvmSysErr, f"our wake-up semaphore: {err}") from None
        self._direct = direct.available()
        self._paths = paths_
        # where our mapping of each segment's pages starts (senders hand us runs by
        # segment and page number, and we copy into them with process_vm_readv)
        self._bases = [direct.address(d) for d in self._data] if self._direct else []
        self._rx = small_desc(0)  # precv's guess of the next small message's length
        self._hdrs = {}  # tag << 8 | length -> descriptor
        self._served = set()  # dests our last large message went direct to
        self._wake = h["wake"]  # the kind our daemon chose (wake.py): every task of it sleeps so
        if self._wake not in (wake.SEM, wake.FUTEX) or (self._wake == wake.FUTEX
                                                       and "futex" not in wake.available()):
            raise damaged(f"wake-up kind {self._wake} in the header")
        self._base0 = self._shm0.address
        self._waiter = (wake.FutexWaiter(self._base0 + 4 * self._W) if self._wake == wake.FUTEX
                        else ipc.Waiter(t["wake_id"]))
        self._pending = deque()
        self._peers = {}  # tid -> Peer
        self._home = self._slot % self._nsegs  # senders spread over segments
        self._sx = fastpath.segments(self)  # our runs of pages, compiled (if built)
        # the largest message psend's compiled fast path puts in one run of pages (larger
        # ones: in pieces, or straight to a waiting receiver, by the general path)
        self._run_max = self._maxpages * self._ps
        if self._direct:
            self._run_max = min(self._run_max, self._paths.least - 1)
        self._fx = fastpath.inbox(self, DEFER_MAX)  # precv's fast path, compiled (if built)
        self._ntx = self._btx = self._nrx = self._brx = 0
        self._cq = bq + layout.T_SENT_Q
        self._pub_at = 0
        self._blocked = bi + layout.T_BLOCKED_I

    # ---- lifecycle ------------------------------------------------------------------
    def _detach(self) -> None:
        # the compiled fast paths hold segment 0's view: they let go of it first
        for fx in [self.__dict__.get("_fx"), self.__dict__.get("_trace_ring"), self.__dict__.get("_sx"),
                   *(p.fx for p in getattr(self, "_peers", {}).values())]:
            if fx is not None:
                fx.close()
        self._peers, self._fx, self._sx = {}, None, None
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
            self._publish()  # the daemon adds our counters to the host's on leave
            if trace.active(self):
                trace.switch(self, 0, trace.EXIT)  # (recorded if its mask says so)
        except (ValueError, PvmError):
            pass  # (a view released by a failed attach)
        ns = sys.modules.get("shmd.netsend")  # (imported by a send to another host)
        if ns is not None:
            ns.leave(self.vmid)  # what we sent to other hosts leaves before we do
        try:
            if self._conn is not None:
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
        return f"<Task {tids.fmt(self.tid)}{' left' if self.closed else ''}>"


def current(vmid: str | None = None) -> Task | None:
    """This process's open task for *vmid* (default ``$PVM_VMID``), if it joined."""
    t = _open.get(paths.current_vmid(vmid))
    return t if t is not None and not t.closed and t._pid == os.getpid() else None


def join(vmid: str | None = None, name: str | None = None, spin: bool | None = None) -> Task:
    """Enroll this process with the host's pvm_shmd (found from the user and the VM id)."""
    return Task(vmid, name, spin)


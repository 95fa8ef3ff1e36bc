"""A task's own route to the tasks of other hosts: straight to their host's pvm_netd.

A message to a tid of another host went through this host's pvm_netd: psend into its
inbox, its out thread woken to read it and frame it, then ZeroMQ to the far host's
pvm_netd, which delivers it. Each hand-off between sleeping threads costs tens of
microseconds (docs/performance.md, "Between hosts"). Here the sending task frames the
chunks itself and sends them to the far pvm_netd on a DEALER socket of its own, with
the VM's keys (CURVE, or PLAIN on a trusted network): the same frames, the same
authentication, one hand-off less.

Where the far host's pvm_netd listens and the VM's keys come from this host's route
file (remote.route: private, 0600, owner and mode checked at each read). Everything
else is as through pvm_netd: the far pvm_netd delivers each message whole, as from
our tid; order per sender and receiver holds (one socket per host and process, used
under a lock); a host that is down gives PvmHostFail (the route file says so, looked
at every remote.CHECK seconds while a send waits); a full queue (the far receiver is
slow: HWM chunks, then TCP's buffers) makes psend wait and time out, so memory stays
bounded. What a psend queued is sent before the task leaves, or before its process
exits (a wait of at most LINGER seconds).

``PVM_NET_DIRECT=0`` sends everything through this host's pvm_netd again (for
comparisons and bug reports); pvm_netd's own task always sends that way (its in
thread must not wait on the network).
"""
from __future__ import annotations

import atexit
import os
import threading
import time

import zmq
import zmq.utils.garbage  # noqa: F401  (before our atexit: see _at_exit)

from . import remote, tids
from .errors import MemoryFull, PvmError
from .wire import NOBLOCK, chunk_frames, secure, send_frames

ENV = "PVM_NET_DIRECT"
HWM = 16  # chunks queued per socket (of up to remote.CHUNK bytes each), as pvm_netd's
LINGER = 3.0  # seconds a leave (or the exit) waits for queued chunks to leave
ZERO_COPY = 1 << 18  # a chunk of bytes this large is handed to zmq without a copy


class _Link:
    """The socket to one host's pvm_netd, at the address the route file gave."""

    def __init__(self, ctx: zmq.Context, at: tuple[str, int], keys: tuple[str, str], trusted: bool):
        self.at, self.keys, self.trusted = at, keys, trusted
        s = ctx.socket(zmq.DEALER)
        s.linger = int(LINGER * 1000)
        s.sndhwm = HWM
        secure(s, keys[0].encode("ascii"), keys[1].encode("ascii"), trusted, server=False)
        s.connect(f"tcp://{at[0]}:{at[1]}")
        self.sock = s


class _Links:
    """This process's sockets to other hosts' pvm_netd, by (VM, host)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()  # one sender at a time per process: order, and zmq's rule
        self.ctx: zmq.Context | None = None
        self.links: dict[tuple[str, int], _Link] = {}

    def link(self, vmid: str, h: int, r: dict) -> _Link | None:
        """The socket to host *h* of VM *vmid* (*r*: its route file); None if the route
        file does not say where it is (a pvm_netd of before: through ours, then)."""
        at, keys = r.get("at", {}).get(str(h)) if isinstance(r.get("at"), dict) else None, r.get("keys")
        if not (isinstance(at, list) and len(at) == 2 and isinstance(at[0], str) and isinstance(at[1], int)
                and isinstance(keys, list) and len(keys) == 2
                and all(isinstance(k, str) and len(k) == 40 and k.isascii() for k in keys)):
            return None  # (not what pvm_netd writes: through it, which says what is wrong)
        where = (at[0], at[1])
        if where[0] in ("0.0.0.0", "::", "*"):  # (bound everywhere: the console's own host)
            where = ("127.0.0.1", where[1])
        trusted = r.get("trusted") is True
        got = self.links.get((vmid, h))
        if got is not None and (got.at, got.keys, got.trusted) == (where, tuple(keys), trusted):
            return got
        if got is not None:  # the host came back elsewhere: what was queued for the old one is lost with it
            got.sock.close(0)
        if self.ctx is None:
            self.ctx = zmq.Context()
        link = self.links[(vmid, h)] = _Link(self.ctx, where, (str(keys[0]), str(keys[1])), trusted)
        return link

    def flush(self, vmid: str | None = None) -> None:
        """Close the sockets (of *vmid*, or all) once what they queued has left, or after
        LINGER seconds (at once for a host the route file says is down: nothing would
        leave); the context too once none is left."""
        with self.lock:
            for key in [k for k in self.links if vmid is None or k[0] == vmid]:
                try:
                    up = remote.route(key[0])["hosts"].get(str(key[1])) is True
                except PvmError:
                    up = False  # (no pvm_netd here any more: the VM is going)
                self.links.pop(key).sock.close(None if up else 0)  # (linger: the queue is sent first)
            if not self.links and self.ctx is not None:
                self.ctx.term()  # waits for the closed sockets' queues, LINGER at most
                self.ctx = None


_state: _Links | None = None
_state_lock = threading.Lock()


def _links() -> _Links:
    global _state
    s = _state
    if s is None:
        with _state_lock:
            s = _state
            if s is None:
                s = _state = _Links()
    return s


def _forget() -> None:
    """In a forked child: the parent's sockets and context are not ours to use or close
    (nor its locks, which another of its threads may have held)."""
    global _state, _state_lock
    _state, _state_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget)


def enabled(task) -> bool:
    """Does *task* send to other hosts itself? (Not pvm_netd, not with PVM_NET_DIRECT=0.)"""
    return task._net_direct and os.environ.get(ENV, "1") != "0"


def send(task, dest: int, tag: int, mv: memoryview | bytes, n: int, deadline: float) -> bool:
    """psend of *n* bytes of *mv* to *dest* on another host, straight to its pvm_netd;
    False if the route file does not say how (the caller goes through pvm_netd)."""
    vmid, h = task.vmid, tids.host_of(dest)
    r = remote.route(vmid)
    remote.check_host(vmid, dest, r)  # PvmNoTask / PvmHostFail before anything is queued
    links = _links()
    with links.lock:
        link = links.link(vmid, h, r)
        if link is None:
            return False
        # bytes cannot change under zmq: large chunks of them go uncopied (zmq holds a
        # reference until they are on the wire); any other buffer is copied, since psend
        # returns before they are sent and the caller may then write into it
        fixed = type(mv) is bytes or (isinstance(mv, memoryview) and type(mv.obj) is bytes)
        off = 0
        while True:
            chunk = min(n - off, remote.CHUNK)
            frames = chunk_frames(task.tid, dest, tag, n, off, mv[off:off + chunk])
            try:
                _queue(task, link, dest, frames, deadline, copy=not (fixed and chunk >= ZERO_COPY))
            except BaseException:
                if off:  # the far side drops what it has of this message
                    try:
                        link.sock.send_multipart(chunk_frames(task.tid, dest, tag, n, remote.ABORT, b""),
                                                 flags=zmq.NOBLOCK)
                    except zmq.ZMQError:
                        pass  # full or gone: the next message's first chunk drops it there
                raise
            off += chunk
            if off >= n:
                return True


def _queue(task, link: _Link, dest: int, frames: list, deadline: float, copy: bool = True) -> None:
    """Queue one chunk's *frames* on *link*, waiting while its queue is full: looking at
    the destination's host every remote.CHECK seconds; MemoryFull (a PvmTimeout)
    at *deadline*, as a full pvm_netd gives."""
    while True:
        try:
            send_frames(link.sock, frames, NOBLOCK, copy=copy)
            return
        except zmq.Again:
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            raise MemoryFull(f"the queue to host {tids.host_of(dest)} stayed full (a receiver there "
                             f"is slow): no room for {tids.fmt(dest)} within the timeout")
        link.sock.poll(int(min(left, remote.CHECK) * 1000) + 1, zmq.POLLOUT)
        remote.check_host(task.vmid, dest)


def leave(vmid: str) -> None:
    """A task of *vmid* leaves: what its sends queued goes first (LINGER seconds at most)."""
    if _state is not None and _state.pid == os.getpid():
        try:
            _state.flush(vmid)
        except (PvmError, zmq.ZMQError):
            pass


@atexit.register
def _at_exit() -> None:
    """A process that ends without leaving: its queued messages still go. (Handlers run
    last registered first: pyzmq's collector of chunks sent uncopied, imported above
    before this was registered, stops after this flush, not before it; the other way
    round zmq called into a stopped collector when it freed them, and the process
    died of SIGSEGV.)"""
    leave_all = _state
    if leave_all is not None and leave_all.pid == os.getpid():
        try:
            leave_all.flush()
        except zmq.ZMQError:
            pass

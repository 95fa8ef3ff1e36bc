"""Messages to and from tasks of other hosts: the library's side of pvm_netd.

A message to a tid of another host goes to that host's network process (netd.py, a
task of its pvm_shmd like any other), which puts the whole message into the
receiver's inbox with the remote sender's tid as src. So a remote message is an
ordinary queued message at the receiver: wildcards, probe, precv_into's overflow rule
and order per sender (one sender, one connection, one delivering thread) hold as on
one host. ``send`` sends it there itself (netsend.py: the chunks on a socket of the
task's own); with PVM_NET_DIRECT=0, and for pvm_netd's own messages, it posts the
message to this host's pvm_netd through the shared pages instead, in chunks of at
most CHUNK bytes, each led by an ``OUT`` header (final destination, tag, total
length, offset), and that one forwards them.

pvm_netd keeps its route file (``paths.tmpfile("pvmnet", vmid)``, private, 0600):
its tid and which hosts are up. ``send`` and a receive waiting for a task of another
host look at it (every CHECK seconds while they wait) to raise PvmHostFail for a host
that is down rather than wait for ever.

A task's requests about the virtual machine (spawn on any host, the hosts, the tasks
of every host, signals to tasks of other hosts, notifications: ``ask``) go to
pvm_netd as a JSON message with tag REQ_TAG (chunks go with tag 0); its answer comes
back from pvm_netd's tid with tag REPLY_TAG and the request's id.
"""
from __future__ import annotations

import itertools
import json
import os
import struct
import time
from typing import TYPE_CHECKING

from . import layout, paths, private, tids
from .errors import MemoryFull, PvmError, PvmHostFail, PvmNoTask, PvmTimeout

if TYPE_CHECKING:
    from .receiving import Receiving
    from .sending import Sending

CHUNK = 1 << 20  # bytes of a message per piece through pvm_netd (and per network frame)
CHECK = 0.5  # how often a wait on another host looks whether it is still up (seconds)
OUT = struct.Struct("<IiQQ")  # local task -> pvm_netd: dest, tag, total, offset
ABORT = (1 << 64) - 1  # offset of an abort: the message in chunks will not be finished
ROUTE_STEM = "pvmnet"
NAME = "pvm_netd"  # the name pvm_netd joins with (what pvm_shmd_stat shows)
REQ_TAG = 1  # a task's request to pvm_netd (JSON); message chunks go with tag 0
REPLY_TAG = 1  # pvm_netd's answer, from pvm_netd's tid (no task's message comes from it)
REQUEST_MAX = 64 * 1024  # bytes of a JSON request or answer (to pvm_netd, pvmgs, or back): more is refused
ASK_TIMEOUT = 10.0  # a request answered by this host (and maybe others): the longest wait
SPAWN_TIMEOUT = 60.0  # pvm_netd's answer to a spawn (every copy enrolled and exec'd, on any host)
_ids = itertools.count(1)


class RemoteTid(PvmError):
    """A tid of another host where a local one was needed (``_peer``): PvmNoTask for
    callers that do not route (as before), the cue to route for psend."""

    def __init__(self, tid: int):
        super().__init__(PvmNoTask, f"{tids.fmt(tid)} is on another host")


_cache: dict[str, tuple[tuple[int, int, int], dict]] = {}  # vmid -> (inode, mtime_ns, size), contents


def load_json(data: bytes | memoryview) -> object:
    """The JSON value of a request or answer; ValueError if it is not JSON or longer
    than REQUEST_MAX (nothing parses an unbounded input from another process)."""
    if len(data) > REQUEST_MAX:
        raise ValueError(f"request of {len(data)} bytes (at most {REQUEST_MAX})")
    return json.loads(bytes(data))


def route_path(vmid: str) -> str:
    """Where pvm_netd keeps its route file for *vmid* (private, 0600; its directory
    checked once per process: every message to another host looks at it)."""
    return paths.tmpfile_once(ROUTE_STEM, vmid)


def route(vmid: str) -> dict:
    """The route file of *vmid* ({"tid": netd's tid, "hosts": {"2": true, ...}}, cached
    while unchanged); PvmNoTask if no pvm_netd runs for this VM on this host."""
    path = route_path(vmid)
    try:
        st = os.stat(path)
    except OSError:
        raise PvmError(PvmNoTask, "no pvm_netd on this host: a task on another host is out of "
                                  "reach (start the VM with the console)") from None
    # (pvm_netd replaces the file, so a new one is a new inode even within the clock's
    # tick that stamps mtimes: two changes in a few ms are both seen)
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    got = _cache.get(vmid)
    if got is not None and got[0] == key:
        return got[1]
    text = private.read_text(path)
    try:
        r = json.loads(text or "")
        if not isinstance(r, dict) or not isinstance(r.get("tid"), int) or not isinstance(r.get("hosts"), dict):
            raise ValueError
    except ValueError:
        raise PvmError(PvmNoTask, f"unreadable route file {path}") from None
    _cache[vmid] = (key, r)
    return r


def check_host(vmid: str, tid: int, r: dict | None = None) -> int:
    """pvm_netd's tid, if the host of *tid* is in the VM and up; PvmHostFail if it is
    down, PvmNoTask if there is no such host. (*r*: the route file, if just read.)"""
    r = r if r is not None else route(vmid)
    up = r["hosts"].get(str(tids.host_of(tid)))
    if up is None:
        raise PvmError(PvmNoTask, f"{tids.fmt(tid)}: no host {tids.host_of(tid)} in the virtual machine")
    if not up:
        raise PvmError(PvmHostFail, f"{tids.fmt(tid)}: host {tids.host_of(tid)} is down")
    return r["tid"]


def send(task: Sending, dest: int, tag: int, mv: memoryview | bytes, n: int, deadline: float) -> None:
    """psend of *n* bytes to *dest* on another host: straight to its host's pvm_netd
    (netsend.py), else to ours, in chunks."""
    from . import netsend  # (imports zmq: only in a task that sends to another host)

    if netsend.enabled(task) and netsend.send(task, dest, tag, mv, n, deadline):
        return
    off = 0
    while True:
        chunk = min(n - off, CHUNK)
        piece = OUT.pack(dest, tag, n, off) + mv[off:off + chunk]
        try:
            _post(task, dest, piece, deadline)
        except BaseException:
            if off:  # the far side drops what it has of this message
                try:
                    _post(task, dest, OUT.pack(dest, tag, n, ABORT), time.monotonic() + CHECK)
                except PvmError:
                    pass  # pvm_netd gone or full: the next message's first chunk drops it
            raise
        off += chunk
        if off >= n:
            return


def _post(task: Sending, dest: int, piece: bytes, deadline: float) -> None:
    """One piece to pvm_netd, looking at the destination host every CHECK seconds and
    waiting while pvm_netd holds too much for other hosts (its "held" word)."""
    while True:
        net = check_host(task.vmid, dest)
        left = deadline - time.monotonic()
        try:
            if _held(task, net, time.monotonic() + max(0.0, min(left, CHECK))):
                if left <= CHECK:
                    raise MemoryFull(f"pvm_netd holds more than it may for other hosts (a "
                                     f"receiver there is slow): no room for {tids.fmt(dest)} "
                                     "within the timeout")
                continue
            task.psend(net, 0, piece, timeout=max(0.0, min(left, CHECK)))
            return
        except PvmTimeout:
            if left <= CHECK:
                raise
        except PvmError as e:
            if e.code == PvmNoTask:
                raise PvmError(PvmHostFail, f"pvm_netd of this host is gone ({e.detail or e})") from None
            raise


def _held(task: Sending, net: int, until: float) -> bool:
    """Is pvm_netd's "held" word still up at *until* (monotonic)? (It rarely is: one
    read, then polls with growing sleeps.)"""
    word = layout.slot_i(task._peer(net).slot) + layout.T_HELD_I
    delay = 50e-6
    while task._i[word]:
        left = until - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(delay, left))
        delay = min(2 * delay, 5e-3)
    return False


def take(task: Receiving, match, source: int, deadline: float):
    """_take (blocking) for a *source* on another host: every CHECK seconds of
    waiting, PvmHostFail if that host went down."""
    while True:
        try:
            return task._take(match, min(deadline, time.monotonic() + CHECK))
        except PvmTimeout:
            if time.monotonic() >= deadline:
                raise
            check_host(task.vmid, source)


def receive(task: Receiving, match, source: int, deadline: float, into):
    """_receive for a *source* on another host (no direct delivery: pvm_netd posts)."""
    while True:
        got = task._whole(take(task, match, source, deadline), into, deadline)
        if got is not None:
            return got


def ask(task, op: str, timeout: float = ASK_TIMEOUT, **args: object) -> object:
    """What this host's pvm_netd answers to request *op* (a ``Net.asks`` entry) with
    *args*, asked by *task*; PvmNoTask if no pvm_netd runs here (a daemon started by
    hand), the request's own PvmError if it failed, PvmTimeout after *timeout* s (a
    late answer is dropped by the next request)."""
    net = route(task.vmid)["tid"]
    rid = f"{os.getpid()}.{next(_ids)}"
    deadline = time.monotonic() + timeout
    try:
        task.psend(net, REQ_TAG, json.dumps({**args, "op": op, "id": rid}).encode(), timeout)
    except PvmError as e:
        if e.code == PvmNoTask:
            raise PvmError(PvmNoTask, "pvm_netd of this host is gone") from None
        raise
    while True:
        m = task.precv(net, REPLY_TAG, max(0.0, deadline - time.monotonic()))
        try:
            got = load_json(m.data)
        except ValueError:
            continue
        if not isinstance(got, dict) or got.get("id") != rid:
            continue  # the answer to an earlier request that timed out
        if "ok" in got:
            return got["ok"]
        code = got.get("code")
        raise PvmError(code if isinstance(code, int) and code < 0 else PvmNoTask, str(got.get("error")))

"""PVM's dynamic groups: pvm_joingroup, pvm_lvgroup, pvm_gsize, pvm_getinst, pvm_gettid,
pvm_barrier, pvm_bcast, pvm_reduce (PvmMax, PvmMin, PvmSum, PvmProduct), pvm_gather,
pvm_scatter.

Membership lives in the group server (shmd.pvmgs, started on first use); the data of
bcast, reduce, gather and scatter go straight between the members, packed (XDR) and
sent with psend, leaving the program's active buffers alone."""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from . import pvmgs, tids
from .errors import (
    PvmBadParam,
    PvmError,
    PvmHostFail,
    PvmNoInst,
    PvmNoTask,
    PvmNotInGroup,
    PvmNullGroup,
    PvmOk,
    PvmSysErr,
    PvmTimeout,
)
from .pvmbuf import KINDS, PVM_STR, Buffer, PvmDataDefault, parse, source
from .pvmmsg import S, take_early

__all__ = ["PvmMax", "PvmMin", "PvmSum", "PvmProduct", "pvm_joingroup", "pvm_lvgroup", "pvm_gsize",
           "pvm_getinst", "pvm_gettid", "pvm_barrier", "pvm_bcast", "pvm_reduce", "pvm_gather", "pvm_scatter"]


def PvmMax(a, b):  # noqa: N802  (PVM's names)
    """Reduction: the larger of each pair (PVM's PvmMax)."""
    return max(a, b)


def PvmMin(a, b):  # noqa: N802
    """Reduction: the smaller of each pair."""
    return min(a, b)


def PvmSum(a, b):  # noqa: N802
    return a + b


def PvmProduct(a, b):  # noqa: N802
    return a * b


_NUMPY_OPS = {PvmMax: "maximum", PvmMin: "minimum", PvmSum: "add", PvmProduct: "multiply"}


# how long a task of another host waits for the group server to answer first (it may be
# starting on a busy master: pvm_shmd there starts it once it hears of another host)
PING_TIMEOUT = 15.0
PING_EVERY = 0.25  # ... asking again this often (a server starting on the master misses the first)


def _ask(me, to: int, req: dict, wait_on_master: bool) -> dict:
    """Send *req* to pvmgs *to* and wait for its reply (errors raised as PvmError). While
    we wait: PvmSysErr if the master's server exited (*wait_on_master*: we are on its
    host and can see it), PvmHostFail if the master host went down."""
    me.psend(to, pvmgs.REQ, json.dumps(req).encode())
    while True:
        try:
            m = me.precv(to, pvmgs.REPLY, 1.0)
        except PvmTimeout:
            if wait_on_master and pvmgs.server_tid(me) != to:
                raise PvmError(PvmSysErr, "the group server (pvmgs) exited") from None
            if not wait_on_master and tids.MASTER in pvmgs.down_hosts(me):
                raise PvmError(PvmHostFail, "the master host, where the group server runs, is down") from None
            continue
        r = json.loads(bytes(m.data))
        if "ping" not in r:  # (the answer to a ping sent twice comes twice)
            break
    if "err" in r:
        raise PvmError(r["err"], r.get("detail"))
    return r


def _server(me) -> int:
    """The VM's group server's tid (tids.GS_TID), once we know it answers: on the master
    host started if none runs; from another host asked (ping) until it answers."""
    if S.server:
        return S.server
    if tids.host_of(me.tid) == tids.MASTER:
        S.server = pvmgs.start(me)
        return S.server
    deadline = time.monotonic() + PING_TIMEOUT
    while True:
        me.psend(tids.GS_TID, pvmgs.REQ, b'{"op": "ping"}')
        try:
            me.precv(tids.GS_TID, pvmgs.REPLY, min(PING_EVERY, max(deadline - time.monotonic(), 0)))
            break
        except PvmTimeout:
            if time.monotonic() >= deadline:
                raise PvmError(PvmSysErr, f"no answer in {PING_TIMEOUT:g} s from the group server (pvmgs) at "
                                          f"{tids.fmt(tids.GS_TID)} on the master host (its pvm_shmd starts it once "
                                          "its pvm_netd knows another host)") from None
    S.server = tids.GS_TID
    return S.server


def _request(**req: Any) -> dict:
    """Ask the group server; its reply (errors raised as PvmError)."""
    me = S.me()
    g = req.get("group")
    if not isinstance(g, str) or not g:
        raise PvmError(PvmNullGroup, f"group name {g!r} (a non-empty str)")
    on_master = tids.host_of(me.tid) == tids.MASTER
    if req.get("op") == "join" and not on_master and not S.watched:
        # a member of another host: its host's pvmgs tells the server when it is gone
        _ask(me, pvmgs.start(me), {"op": "watch"}, False)
        S.watched = True
    for attempt in (0, 1):
        server = _server(me)
        try:
            return _ask(me, server, req, on_master)
        except PvmError as e:
            # the server we knew is gone (it exited, was killed): find or start another
            if e.code in (PvmNoTask, PvmSysErr) and on_master and not attempt:
                S.server = 0
                continue
            raise
    raise AssertionError("unreachable")


def pvm_joingroup(group: str) -> int:
    """Join *group* (made if new); return our instance number (the lowest free one)."""
    return _request(op="join", group=group)["inst"]


def pvm_lvgroup(group: str) -> int:
    _request(op="leave", group=group)
    return PvmOk


def _members(group: str) -> dict[int, int]:
    return {int(i): t for i, t in _request(op="members", group=group)["members"].items()}


def pvm_gsize(group: str) -> int:
    """Number of members of *group* (0 for a group that does not exist)."""
    return len(_members(group))


def pvm_getinst(group: str, tid: int) -> int:
    for i, t in _members(group).items():
        if t == tid:
            return i
    raise PvmError(PvmNotInGroup, f"t{tid:x} is not in {group!r}")


def pvm_gettid(group: str, inst: int) -> int:
    t = _members(group).get(inst)
    if t is None:
        raise PvmError(PvmNoInst, f"{group!r} has no instance {inst!r}")
    return t


def pvm_barrier(group: str, count: int = -1) -> int:
    """Wait until *count* members of *group* (-1: all of them) have called it. A
    member that dies is no longer waited for; if too few remain, PvmNoInst."""
    if not isinstance(count, int) or (count < 1 and count != -1):
        raise PvmError(PvmBadParam, f"count {count!r}")
    _request(op="barrier", group=group, count=count)
    return PvmOk


def pvm_bcast(group: str, msgtag: int) -> int:
    """Send the active send buffer to every member of *group* but ourselves."""
    from .pvmmsg import pvm_mcast

    pvm_mcast(list(_members(group).values()), msgtag)
    return PvmOk


# ---- collective data ----------------------------------------------------------------------------
def _check(datatype: int, count: int, msgtag: int) -> None:
    if datatype == PVM_STR or datatype not in KINDS:
        raise PvmError(PvmBadParam, f"datatype {datatype!r}")
    if not isinstance(count, int) or count < 0:
        raise PvmError(PvmBadParam, f"count {count!r}")
    if not isinstance(msgtag, int) or msgtag < 0:
        raise PvmError(PvmBadParam, f"msgtag {msgtag!r}")


def _send(tid: int, tag: int, datatype: int, data: Any, count: int, offset: int = 0) -> None:
    b = Buffer(PvmDataDefault)
    if offset:
        data = source(data, KINDS[datatype], offset + count, 1)[offset * KINDS[datatype].per:]
    b.pack(datatype, data, count, 1)
    w = b.wire()
    try:
        S.me().psend(tid, tag, w)
    finally:
        if isinstance(w, memoryview):
            w.release()
        b.free()


def _recv(tid: int, tag: int) -> Buffer:
    got = take_early(tid, tag)
    if got is None:
        m = S.me().precv(tid, tag)
        got = (m.src, m.tag, m.data)
    enc, body = parse(memoryview(got[2]))
    return Buffer(PvmDataDefault, body, got[0], got[1], wire_enc=enc)


def _root(group: str, rootginst: int) -> tuple[dict[int, int], int, int]:
    members = _members(group)
    me = S.me().tid
    if me not in members.values():
        raise PvmError(PvmNotInGroup, f"t{me:x} is not in {group!r}")
    if rootginst not in members:
        raise PvmError(PvmNoInst, f"{group!r} has no instance {rootginst!r} (the root)")
    return members, members[rootginst], me


def pvm_reduce(func: Callable[[Any, Any], Any], data: Any, count: int, datatype: int, msgtag: int,
               group: str, rootginst: int) -> int:
    """Combine *data* (count items, a writable buffer, list or numpy array) of every
    member with *func* (PvmMax, PvmMin, PvmSum, PvmProduct, or any f(a, b) on two
    items) into the root's *data*; the others' *data* is left as it was."""
    _check(datatype, count, msgtag)
    if not callable(func):
        raise PvmError(PvmBadParam, f"func {func!r} is not PvmMax, PvmMin, PvmSum, PvmProduct or a function")
    members, root, me = _root(group, rootginst)
    if me != root:
        _send(root, msgtag, datatype, data, count)
        return PvmOk
    parts = [_recv(t, msgtag) for i, t in sorted(members.items()) if t != me]
    np = sys.modules.get("numpy")
    if np is not None and isinstance(data, np.ndarray) and func in _NUMPY_OPS:
        flat = data.reshape(-1)
        acc = flat[:count]
        other = np.empty(count, dtype=acc.dtype)
        for b in parts:
            b.unpack(datatype, other, count, 1)
            getattr(np, _NUMPY_OPS[func])(acc, other, out=acc)
        return PvmOk
    mine = Buffer(PvmDataDefault)
    mine.pack(datatype, data, count, 1)
    acc = list(_received(mine).unpack(datatype, None, count, 1))
    for b in parts:
        acc = [func(x, y) for x, y in zip(acc, b.unpack(datatype, None, count, 1))]
    out = Buffer(PvmDataDefault)
    out.pack(datatype, acc, count, 1)
    _received(out).unpack(datatype, data, count, 1)
    return PvmOk


def _received(b: Buffer) -> Buffer:
    """A send buffer read back as its receiver would."""
    enc, body = parse(memoryview(bytes(b.wire())))
    return Buffer(PvmDataDefault, body, wire_enc=enc)


def pvm_gather(result: Any, data: Any, count: int, datatype: int, msgtag: int, group: str,
               rootginst: int) -> int:
    """The root gets every member's *count* items of *data* into *result*, instance i's
    at items i*count ... (room for (highest instance + 1) * count items)."""
    _check(datatype, count, msgtag)
    members, root, me = _root(group, rootginst)
    if me != root:
        _send(root, msgtag, datatype, data, count)
        return PvmOk
    whole = Buffer(PvmDataDefault)
    for i in range(max(members) + 1):
        t = members.get(i)
        if t is None:
            whole.pack(datatype, [0] * count, count, 1)  # a hole in the instances: zeros
        elif t == me:
            whole.pack(datatype, data, count, 1)
        else:
            whole.pack(datatype, _recv(t, msgtag).unpack(datatype, None, count, 1), count, 1)
    _received(whole).unpack(datatype, result, count * (max(members) + 1), 1)
    return PvmOk


def pvm_scatter(result: Any, data: Any, count: int, datatype: int, msgtag: int, group: str,
                rootginst: int) -> int:
    """The root sends items i*count ... of *data* to instance i; every member (the
    root too) gets its *count* items in *result*."""
    _check(datatype, count, msgtag)
    members, root, me = _root(group, rootginst)
    if me == root:
        for i, t in sorted(members.items()):
            _send(t, msgtag, datatype, data, count, offset=i * count)
    b = _recv(root, msgtag)
    b.unpack(datatype, result, count, 1)
    return PvmOk


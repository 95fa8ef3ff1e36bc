"""PVM's message buffers and the calls that send and receive them: pvm_initsend,
pvm_mkbuf, pvm_freebuf, pvm_get/setsbuf, pvm_get/setrbuf, pvm_bufinfo, pvm_send,
pvm_mcast, pvm_recv, pvm_nrecv, pvm_trecv, pvm_probe; and the exit notifications
pvm_notify asks for, delivered among the received messages.

Everything goes through ``Task.psend``/``Task.precv``: a packed message is a psend of
its header and body (shmd.pvmbuf), so it travels wherever psend does, and a pvm_recv
takes psend's messages too (as Raw buffers)."""
from __future__ import annotations

import struct
import time
from collections.abc import Iterable
from typing import Any

from . import layout, tids
from .errors import PvmBadParam, PvmError, PvmNoBuf, PvmNoSuchBuf, PvmOk, PvmOverflow, PvmTimeout
from .pvmbuf import (
    HEADER,
    MAGIC,
    RAW,
    SMALL_ROOM,
    VERSION,
    XDR,
    Buffer,
    PvmDataDefault,
    PvmDataRaw,
    keep_room,
    parse,
    receive_room,
)
from .task import ANY, Task, current, join
from .taskbase import INF

PvmTaskExit, PvmHostDelete, PvmHostAdd, PvmRouteAdd, PvmRouteDelete = 1, 2, 3, 4, 5
PvmNotifyCancel = 0x100
# what psend's fast path carries: bytes or a bytearray of up to MEDIUM (compiled; in
# Python up to INLINE, the rest taking its general path as before)
_SMALL, _HDR = layout.MEDIUM, HEADER.size
_pack_header, _unpack_header = HEADER.pack_into, HEADER.unpack_from
NOTIFY_SLICE = 0.1  # how often a receive waiting with exit notifications armed looks at the task table


class State:
    """This process's PVM library state: its task, buffers and armed notifications."""

    def __init__(self) -> None:
        self.task: Task | None = None
        self.bufs: dict[int, Buffer] = {}
        self.next_id = 1
        self.sbuf = 0
        self.rbuf = 0
        self.probed = 0  # the info-only buffer pvm_probe made last
        self.watch: dict[int, list[int]] = {}  # tid -> tags to send when it exits
        self.early: list[tuple[int, int, bytes]] = []  # notifications due, probed messages
        self.options: dict[int, int] = {}
        self.server = 0  # the group server's tid, once found (shmd.pvmgroups)
        self.watched = False  # this host's pvmgs watches us for the server (another host's member)

    def me(self) -> Task:
        t = self.task
        if t is None or t.closed:
            t = self.task = current() or join()  # a process that joined with shmd.join() is that task
        return t

    def add(self, buf: Buffer) -> int:
        i = self.next_id
        self.next_id += 1
        self.bufs[i] = buf
        return i

    def get(self, bufid: int) -> Buffer:
        if not isinstance(bufid, int) or isinstance(bufid, bool):
            raise PvmError(PvmBadParam, f"bufid {bufid!r} is not an int")
        b = self.bufs.get(bufid)
        if b is None:
            raise PvmError(PvmNoSuchBuf, f"bufid {bufid} (never made, or freed)")
        return b

    def free(self, bufid: int) -> None:
        b = self.bufs.pop(bufid, None)
        if b is not None:
            b.free()
        if self.sbuf == bufid:
            self.sbuf = 0
        if self.rbuf == bufid:
            self.rbuf = 0

    def reset(self) -> None:
        for b in self.bufs.values():
            b.free()
        self.__init__()  # type: ignore[misc]


S = State()


def _tid(tid: Any, what: str = "tid") -> int:
    if not isinstance(tid, int) or isinstance(tid, bool):
        raise PvmError(PvmBadParam, f"{what} {tid!r} is not an int")
    return tid


def _tids(tids_: Any) -> list[int]:
    """A list of tids from any iterable of ints (PvmBadParam otherwise)."""
    if isinstance(tids_, (str, bytes)):
        raise PvmError(PvmBadParam, f"tids {tids_!r}: a list of tids, not a string")
    try:
        items = list(tids_)
    except TypeError:
        raise PvmError(PvmBadParam, f"tids {tids_!r} is not a list of tids") from None
    return [_tid(t) for t in items]


def _tag(tag: Any) -> int:
    if not isinstance(tag, int) or isinstance(tag, bool) or tag < -1:
        raise PvmError(PvmBadParam, f"msgtag {tag!r} must be an int >= -1 (-1: any)")
    return tag


# ---- buffers --------------------------------------------------------------------------------
def pvm_mkbuf(encoding: int = PvmDataDefault) -> int:
    """A new empty send buffer; return its id."""
    return S.add(Buffer(encoding))


def pvm_freebuf(bufid: int) -> int:
    S.get(bufid)
    S.free(bufid)
    return PvmOk


def pvm_initsend(encoding: int = PvmDataDefault) -> int:
    """Free the active send buffer and make a new one with *encoding*; return its id."""
    old = S.bufs.get(S.sbuf)
    if old is not None and old.reset(encoding):
        return S.sbuf  # the same id and memory, emptied: as a new buffer would be
    b = Buffer(encoding)
    if S.sbuf:
        S.free(S.sbuf)
    S.sbuf = S.add(b)
    return S.sbuf


def pvm_getsbuf() -> int:
    return S.sbuf


def pvm_getrbuf() -> int:
    return S.rbuf


def pvm_setsbuf(bufid: int) -> int:
    """Make *bufid* (0: none) the active send buffer; return the previous one."""
    if bufid:
        S.get(bufid)
    old, S.sbuf = S.sbuf, bufid
    return old


def pvm_setrbuf(bufid: int) -> int:
    """Make *bufid* (0: none) the active receive buffer; return the previous one
    (which is then kept, not freed by the next receive)."""
    if bufid:
        S.get(bufid)
    old, S.rbuf = S.rbuf, bufid
    return old


def pvm_bufinfo(bufid: int) -> tuple[int, int, int]:
    """(nbytes, msgtag, tid) of a buffer: the body's bytes, and the tag and source of
    a received message (-1, -1 for a send buffer)."""
    b = S.get(bufid)
    return b.nbytes, b.tag, b.src


def sbuf() -> Buffer:
    b = S.bufs.get(S.sbuf)  # (ids start at 1: none is 0)
    if b is not None:
        return b
    if not S.sbuf:
        raise PvmError(PvmNoBuf, "no active send buffer (pvm_initsend first)")
    return S.get(S.sbuf)


def rbuf() -> Buffer:
    b = S.bufs.get(S.rbuf)
    if b is not None:
        return b
    if not S.rbuf:
        raise PvmError(PvmNoBuf, "no active receive buffer (pvm_recv first)")
    return S.get(S.rbuf)


# ---- sending --------------------------------------------------------------------------------
def _send_wire(me: Task, dests: Iterable[int], tag: int) -> None:
    if not isinstance(tag, int) or isinstance(tag, bool) or tag < 0:
        raise PvmError(PvmBadParam, f"msgtag {tag!r} must be an int >= 0")
    w = sbuf().wire()
    if len(w) <= _SMALL and isinstance(w, memoryview):
        small = bytes(w)  # psend's fast path takes bytes
        w.release()
        w = small
    try:
        for d in dests:
            me.psend(d, tag, w)
    finally:
        if isinstance(w, memoryview):
            w.release()  # the buffer may grow again


def pvm_send(tid: int, msgtag: int) -> int:
    """Send the active send buffer to *tid* with *msgtag*."""
    me = S.task
    if me is None or me.closed:
        me = S.me()
    b = S.bufs.get(S.sbuf)
    if b is not None and type(tid) is int and type(msgtag) is int and msgtag >= 0:
        # the common small message, a packed (not InPlace) one psend carries in the
        # inbox: its header written, a copy (psend's fast path takes a bytearray)
        # straight to psend
        n = b._n
        if n <= _SMALL and b._parts is None and b.body is None:
            d = b._data
            _pack_header(d, 0, MAGIC, VERSION, b.wire_enc, n - _HDR)
            me.psend(tid, msgtag, d[:n])
            return PvmOk
    _send_wire(me, [_tid(tid)], msgtag)
    return PvmOk


def pvm_mcast(tids_: Iterable[int], msgtag: int) -> int:
    """Send the active send buffer to every tid in *tids_* but ourselves (as PVM)."""
    me = S.me()
    dests = _tids(tids_)
    _send_wire(me, [t for t in dict.fromkeys(dests) if t != me.tid], msgtag)
    return PvmOk


# ---- receiving ------------------------------------------------------------------------------
def _as_buffer(src: int, tag: int, data) -> Buffer:
    enc, body = parse(memoryview(data))
    return Buffer(PvmDataDefault if enc == 0 else PvmDataRaw, body, src, tag, wire_enc=enc)


def _note(tid: int, tag: int) -> tuple[int, int, bytes]:
    """The message a task-exit notification is: from the daemon, one int, the tid."""
    me = S.me()
    return tids.dtid(tids.host_of(me.tid)), tag, (_NOTE_HDR + struct.pack(">i", tid))


_NOTE_HDR = struct.pack("<6sBBQ", b"\x7fPVMpk", 1, 0, 4)


def live_tids(me: Task) -> set[int]:
    """The tids joined to this host's daemon now (its task table in segment 0)."""
    return layout.tids_in(me._i)


def _check_exits(me: Task) -> None:
    if not S.watch:
        return
    here = tids.host_of(me.tid)
    live = live_tids(me)
    for t in [t for t in S.watch if tids.host_of(t) == here and t not in live]:
        for tag in S.watch.pop(t):
            S.early.append(_note(t, tag))


def take_early(source: int, tag: int) -> tuple[int, int, bytes] | None:
    """The first message matching (*source*, *tag*) in our queue of early ones
    (notifications, messages pvm_probe took off the inbox), removed from it."""
    for k, (src, t, data) in enumerate(S.early):
        if (source == ANY or source == src) and (tag == ANY or tag == t):
            del S.early[k]
            return src, t, data
    return None


def _match_args(source: Any, tag: Any) -> None:
    """PvmBadParam unless *source* is a tid and *tag* a msgtag (-1: any)."""
    if type(source) is not int or type(tag) is not int or tag < -1:
        _tid(source, "source tid")
        _tag(tag)


def _receive(source: int, tag: int, timeout: float | None) -> Buffer | None:
    me = S.task
    if me is None or me.closed:
        me = S.me()
    _match_args(source, tag)
    deadline = INF if timeout is None else time.monotonic() + timeout
    need = 0  # bytes of the message that did not fit last time round
    if not S.watch and not S.early:
        # The common case, nothing of our own to look at first: one precv_into with the
        # whole timeout, which spins (and adapts its spin) and sleeps as precv does.
        room = receive_room(0)
        try:
            src, t, n = me.precv_into(room, source, tag, timeout)
        except PvmTimeout:
            keep_room(room)
            if time.monotonic() >= deadline:
                return None
        except PvmError as e:
            keep_room(room)
            if e.code != PvmOverflow:
                raise
            found = me.probe(source, tag)  # the message that did not fit: still first
            need = found[2] if found is not None else 0
        else:
            return Buffer.received(src, t, room, n)
    while True:
        if S.watch:
            _check_exits(me)
        if S.early:
            got = take_early(source, tag)
            if got is not None:
                return _as_buffer(*got)
        left = deadline - time.monotonic()
        wait = left if not S.watch else min(left, NOTIFY_SLICE)
        # into memory of our own, reused from message to message: a fresh allocation
        # per message costs its page faults (1-2 ms a MiB, measured)
        room = receive_room(need)
        try:
            src, t, n = me.precv_into(room, source, tag, max(wait, 0.0))
        except PvmTimeout:
            keep_room(room)  # (a message in pieces stays, with what came of it, in its place)
            if time.monotonic() >= deadline:
                return None
            continue
        except PvmError as e:
            if e.code != PvmOverflow:
                raise
            found = me.probe(source, tag)  # the message that did not fit: still first
            need = found[2] if found is not None else 0
            continue
        return Buffer.received(src, t, room, n)


def _install(b: Buffer | None) -> int:
    if b is None:
        return 0
    if S.rbuf:
        S.free(S.rbuf)  # as PVM: a receive frees the active receive buffer
    S.rbuf = S.add(b)
    return S.rbuf


def pvm_recv(tid: int = ANY, msgtag: int = ANY) -> int:
    """Wait for a message from *tid* with *msgtag* (-1: any); it becomes the active
    receive buffer (the previous one is freed); return its id."""
    b = S.bufs.get(S.rbuf) if S.rbuf else None
    me = S.task
    if (b is not None and b._whole is not None and me is not None and not me.closed and not S.watch
            and not S.early and type(tid) is int and type(msgtag) is int and msgtag >= -1):
        # The common receive, in as few steps as we can (they run between a wake-up and
        # the reply): the active receive buffer, a message received into memory of our
        # own, takes the next message in that memory, and keeps its id. (PVM frees it and
        # makes a new one, which gets the id just freed.) Anything else: the general path.
        room = b._keep
        try:
            src, t, n = me.precv_into(b._whole if b._big else b._head, tid, msgtag)
        except PvmError as e:
            if e.code != PvmOverflow:
                S.free(S.rbuf)  # as below: freed also when the receive fails
                raise
        else:
            # the buffer now holds this message: a packed one's header read and checked
            # (body_at, inline), its body viewed where it came
            h = _unpack_header(room) if n >= _HDR else None
            if (h is not None and h[0] == MAGIC and h[1] == VERSION and h[3] == n - _HDR
                    and (h[2] == XDR or h[2] == RAW)):
                b.encoding = b.wire_enc = h[2]
                b.body = b._whole[_HDR:n]
            else:  # a psend's bytes: Raw, from the start
                b.encoding = b.wire_enc = RAW
                b.body = b._whole[:n]
            b.src, b.tag, b.pos, b._big = src, t, 0, n > SMALL_ROOM
            return S.rbuf
    _match_args(tid, msgtag)
    if S.rbuf:
        # Freed before the wait, as PVM's pvm_recv does (so also when the receive fails),
        # so that less runs between the message's arrival and the caller's reply; its
        # memory is then the one this receive reuses.
        S.free(S.rbuf)
    b = _receive(tid, msgtag, None)
    if b is None:  # (cannot be: no timeout)
        return 0
    S.rbuf = S.add(b)
    return S.rbuf


def pvm_nrecv(tid: int = ANY, msgtag: int = ANY) -> int:
    """pvm_recv without waiting: 0 if no such message has arrived."""
    return _install(_receive(tid, msgtag, 0))


def pvm_trecv(tid: int = ANY, msgtag: int = ANY, timeout: float | None = None) -> int:
    """pvm_recv waiting at most *timeout* seconds (None: for ever); 0 if none came.
    (PVM's takes a struct timeval; here seconds as a float.)"""
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise PvmError(PvmBadParam, f"timeout {timeout!r} must be seconds >= 0 or None")
    return _install(_receive(tid, msgtag, timeout))


def pvm_probe(tid: int = ANY, msgtag: int = ANY) -> int:
    """0 if no matching message has arrived, else the id of a buffer on it (for
    pvm_bufinfo; not the active receive buffer). The message stays to be received:
    it is taken off the inbox into this process's queue of early messages, which
    every receive of shmd.pvm looks at first."""
    me = S.me()
    _tid(tid, "source tid")
    _tag(msgtag)
    _check_exits(me)
    found = next(((src, t, data) for src, t, data in S.early
                  if (tid == ANY or tid == src) and (msgtag == ANY or msgtag == t)), None)
    if found is None:
        try:
            m = me.precv(tid, msgtag, 0)
        except PvmTimeout:
            return 0
        found = (m.src, m.tag, m.data)
        S.early.append(found)
    if S.probed in S.bufs:
        S.free(S.probed)
    S.probed = S.add(_as_buffer(*found))
    return S.probed


# ---- exit notification ----------------------------------------------------------------------
def pvm_notify(what: int, msgtag: int, tids_: Iterable[int] = ()) -> int:
    """Ask for a message with *msgtag* (one int: the tid) when a task in *tids_* exits
    (PvmTaskExit; ``what | PvmNotifyCancel`` cancels). Delivered to this task's
    pvm_recv/nrecv/trecv/probe from the daemon's tid, within NOTIFY_SLICE of the
    exit while a receive waits. Tasks of other hosts, PvmHostDelete and PvmHostAdd
    (*tids_*: a count) are pvm_netd's (pvmtask.notify_far); route notifications are
    accepted and never fire."""
    me = S.me()
    if not isinstance(msgtag, int) or msgtag < 0:
        raise PvmError(PvmBadParam, f"msgtag {msgtag!r} must be an int >= 0")
    base = what & ~PvmNotifyCancel
    if base not in (PvmTaskExit, PvmHostDelete, PvmHostAdd, PvmRouteAdd, PvmRouteDelete):
        raise PvmError(PvmBadParam, f"notify kind {what!r}")
    if base in (PvmRouteAdd, PvmRouteDelete):
        return PvmOk
    from .pvmtask import notify_far  # (pvmtask imports this module)

    if base != PvmTaskExit:
        return notify_far(what, msgtag, tids_)
    ts = _tids(tids_)
    far = [t for t in ts if tids.host_of(t) != tids.host_of(me.tid)]
    if far:
        notify_far(what, msgtag, far)
        ts = [t for t in ts if t not in far]
    if what & PvmNotifyCancel:
        for t in ts:
            tags = S.watch.get(t, [])
            if msgtag in tags:
                tags.remove(msgtag)
            if not tags:
                S.watch.pop(t, None)
        return PvmOk
    live = live_tids(me)
    here = tids.host_of(me.tid)
    for t in ts:
        if tids.host_of(t) == here and t not in live:
            S.early.append(_note(t, msgtag))  # already gone: PVM notifies at once
        else:
            S.watch.setdefault(t, []).append(msgtag)
    return PvmOk


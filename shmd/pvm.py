"""PVM 3.4's library calls, for programs translated line by line from C.

    from shmd.pvm import *
    me = pvm_mytid()
    pvm_initsend(PvmDataDefault)
    pvm_pkint([1, 2, 3], 3, 1)
    pvm_pkstr("hello")
    pvm_send(peer, 1)
    pvm_recv(-1, -1)
    pvm_upkint(buf, 3, 1)
    pvm_psend(peer, 1, array, len(array), PVM_DOUBLE)
    pvm_exit()

Errors raise PvmError carrying PVM's code (``e.code``, ``e.name``) instead of being
returned. The parts: message buffers and packing (shmd.pvmbuf, shmd.pvmpackf), sending
and receiving them (shmd.pvmmsg), tasks and the virtual machine (shmd.pvmtask), dynamic
groups (shmd.pvmgroups, served by shmd.pvmgs). docs/pvm-api.md lists every call.
"""
from __future__ import annotations

from typing import Any

from . import errors
from .errors import *  # noqa: F403  (PVM's error codes, PvmError, PvmTimeout, strerror)
from .errors import PvmBadParam, PvmError, PvmNotImpl, PvmOk, PvmOverflow, strerror
from .message import as_bytes_view
from .pvmbuf import (  # noqa: F401
    HEADER,
    KINDS,
    PVM_BYTE,
    PVM_CPLX,
    PVM_DCPLX,
    PVM_DOUBLE,
    PVM_FLOAT,
    PVM_INT,
    PVM_LONG,
    PVM_SHORT,
    PVM_STR,
    PVM_UINT,
    PVM_ULONG,
    PVM_USHORT,
    Buffer,
    PvmDataDefault,
    PvmDataInPlace,
    PvmDataRaw,
    parse,
)
from .pvmgroups import *  # noqa: F403
from .pvmmsg import (  # noqa: F401
    PvmHostAdd,
    PvmHostDelete,
    PvmNotifyCancel,
    PvmRouteAdd,
    PvmRouteDelete,
    PvmTaskExit,
    S,
    pvm_bufinfo,
    pvm_freebuf,
    pvm_getrbuf,
    pvm_getsbuf,
    pvm_initsend,
    pvm_mcast,
    pvm_mkbuf,
    pvm_notify,
    pvm_nrecv,
    pvm_probe,
    pvm_recv,
    pvm_send,
    pvm_setrbuf,
    pvm_setsbuf,
    pvm_trecv,
    rbuf,
    sbuf,
    take_early,
)
from .pvmpackf import pvm_packf, pvm_unpackf  # noqa: F401
from .pvmtask import *  # noqa: F403
from .task import ANY, join

#: Element size in bytes of each datatype (C's sizes on LP64 Linux).
SIZES = {c: k.native for c, k in KINDS.items()}

#: numpy dtype of each datatype (for building buffers).
DTYPES = {c: k.np for c, k in KINDS.items()}


def _size(datatype: int) -> int:
    if datatype == PVM_STR:
        raise PvmError(PvmNotImpl, "PVM_STR is not supported by psend/precv")
    try:
        return SIZES[datatype]
    except (KeyError, TypeError):
        raise PvmError(PvmBadParam, f"unknown datatype {datatype!r}") from None


def _room(buf, count: int, size: int) -> memoryview:
    """The first *count* items of *size* bytes of *buf*, as a byte view."""
    mv = as_bytes_view(buf)
    if not isinstance(count, int) or count < 0 or count * size > mv.nbytes:
        raise PvmError(PvmBadParam, f"len {count!r} x {size} bytes exceeds the buffer "
                                    f"({mv.nbytes} bytes)")
    return mv[:count * size]


# ---- psend / precv --------------------------------------------------------------------------
def pvm_psend(tid: int, tag: int, buf, len: int, datatype: int,
              timeout: float | None = None) -> int:
    """Send *len* items of *datatype* from *buf* to *tid* with *tag* >= 0; return PvmOk
    (errors raise PvmError). The bytes go as they are (a Raw message, no header).
    *timeout* (not in PVM): longest wait for free pages."""
    size = _size(datatype)
    S.me().psend(tid, tag, _room(buf, len, size), timeout)
    return PvmOk


def pvm_precv(tid: int, tag: int, buf, len: int, datatype: int,
              timeout: float | None = None) -> tuple[int, int, int]:
    """Receive from *tid* (-1: any) with *tag* (-1: any) into *buf* (room for *len*
    items); return (rtid, rtag, rlen) with rlen in items. A message larger than the
    room raises PvmError(PvmOverflow) and stays queued. A packed message (pvm_send)
    is unpacked as *len* items of *datatype*, as PVM's precv does. *timeout* (not in
    PVM): PvmTimeout after that many seconds."""
    size = _size(datatype)
    room = _room(buf, len, size)
    me = S.me()
    early = take_early(tid, tag)
    if early is not None:
        return _unpacked(early, buf, len, datatype)
    try:
        src, rtag, n = me.precv_into(room, tid, tag, timeout)
    except PvmError as e:
        if e.code != PvmOverflow:
            raise
        # a packed message holds len items in more bytes (its header, XDR's padding)
        found = me.probe(tid, tag)
        k = KINDS[datatype]
        if found is None or found[2] > HEADER.size + len * max(k.xdr, k.native) + 3:
            raise
        m = me.precv(found[0], found[1], timeout)  # (one in pieces may still be coming)
        return _unpacked((m.src, m.tag, m.data), buf, len, datatype)
    if n >= HEADER.size and parse(room[:n])[1].nbytes != n:
        return _unpacked((src, rtag, bytes(room[:n])), buf, len, datatype)
    return src, rtag, n // size


def _unpacked(msg: tuple[int, int, Any], buf, len: int, datatype: int) -> tuple[int, int, int]:
    """pvm_precv's end for a message taken whole: its body unpacked into *buf*."""
    src, tag, data = msg
    enc, body = parse(memoryview(data))
    k = KINDS[datatype]
    per = k.xdr if enc == 0 else k.native
    n = body.nbytes // per
    if n > len:
        S.early.append(msg)  # as psend's: kept for a receive with room enough
        raise PvmError(PvmOverflow, f"message of {n} items from t{src:x} does not fit in {len} (kept)")
    b = Buffer(PvmDataDefault if enc == 0 else PvmDataRaw, body, src, tag, wire_enc=enc)
    if n:
        b.unpack(datatype, buf if k.code != PVM_BYTE else as_bytes_view(buf), n, 1)
    return src, tag, n


# ---- packing and unpacking ------------------------------------------------------------------
def _packer(datatype: int):
    def pk(values: Any, nitem: int = 1, stride: int = 1) -> int:
        (S.bufs.get(S.sbuf) or sbuf()).pack(datatype, values, nitem, stride)  # (sbuf() names what is wrong)
        return PvmOk

    name = KINDS[datatype].name
    pk.__name__ = pk.__qualname__ = f"pvm_pk{name}"
    pk.__doc__ = (f"Pack *nitem* {name}s of *values* (any sequence or buffer; a scalar when "
                  f"nitem is 1), every *stride*-th, into the active send buffer.")
    return pk


def _unpacker(datatype: int):
    def upk(buf: Any = None, nitem: int = 1, stride: int = 1):
        got = (S.bufs.get(S.rbuf) or rbuf()).unpack(datatype, buf, nitem, stride)
        return PvmOk if buf is not None else got

    name = KINDS[datatype].name
    upk.__name__ = upk.__qualname__ = f"pvm_upk{name}"
    upk.__doc__ = (f"Unpack *nitem* {name}s from the active receive buffer into *buf* (a writable "
                   f"buffer or a list, every *stride*-th place); returns PvmOk, or with buf None "
                   f"the values (an array.array; a list of complex for complex types).")
    return upk


pvm_pkbyte, pvm_upkbyte = _packer(PVM_BYTE), _unpacker(PVM_BYTE)
pvm_pkshort, pvm_upkshort = _packer(PVM_SHORT), _unpacker(PVM_SHORT)
pvm_pkushort, pvm_upkushort = _packer(PVM_USHORT), _unpacker(PVM_USHORT)
pvm_pkint, pvm_upkint = _packer(PVM_INT), _unpacker(PVM_INT)
pvm_pkuint, pvm_upkuint = _packer(PVM_UINT), _unpacker(PVM_UINT)
pvm_pklong, pvm_upklong = _packer(PVM_LONG), _unpacker(PVM_LONG)
pvm_pkulong, pvm_upkulong = _packer(PVM_ULONG), _unpacker(PVM_ULONG)
pvm_pkfloat, pvm_upkfloat = _packer(PVM_FLOAT), _unpacker(PVM_FLOAT)
pvm_pkdouble, pvm_upkdouble = _packer(PVM_DOUBLE), _unpacker(PVM_DOUBLE)
pvm_pkcplx, pvm_upkcplx = _packer(PVM_CPLX), _unpacker(PVM_CPLX)
pvm_pkdcplx, pvm_upkdcplx = _packer(PVM_DCPLX), _unpacker(PVM_DCPLX)


def pvm_pkstr(s: str | bytes) -> int:
    """Pack a string (its length, its bytes and a NUL, as PVM)."""
    sbuf().pkstr(s)
    return PvmOk


def pvm_upkstr() -> str:
    """Unpack a string packed by pvm_pkstr; return it."""
    return rbuf().upkstr()


ERROR_NAMES = dict(errors.NAMES)

__all__ = ([n for n in dir() if n.startswith(("pvm_", "PVM_", "Pvm"))]
           + ["SIZES", "DTYPES", "ANY", "ERROR_NAMES", "join", "strerror"])

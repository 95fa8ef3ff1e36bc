"""PVM-shaped names for people porting PVM programs: pvm_mytid, pvm_psend, pvm_precv,
pvm_exit, the datatype constants, and PVM's error codes; errors are raised as PvmError
carrying PVM's code (``e.code``, ``e.name``) instead of being returned.

    from shmd.pvm import *
    me = pvm_mytid()
    pvm_psend(peer, 1, array, len(array), PVM_DOUBLE)
    rtid, rtag, rlen = pvm_precv(-1, -1, buf, len(buf), PVM_DOUBLE)
    pvm_exit()
"""
from __future__ import annotations

from . import errors
from .errors import (  # noqa: F401
    PvmAlready,
    PvmBadMsg,
    PvmBadParam,
    PvmDenied,
    PvmError,
    PvmExists,
    PvmMismatch,
    PvmNoData,
    PvmNoMem,
    PvmNoTask,
    PvmNotImpl,
    PvmOk,
    PvmOutOfRes,
    PvmOverflow,
    PvmSysErr,
    PvmTimeout,
    strerror,
)
from .message import as_bytes_view
from .task import ANY, Task, current, join
from .tids import fmt

PVM_STR, PVM_BYTE, PVM_SHORT, PVM_INT, PVM_FLOAT, PVM_CPLX, PVM_DOUBLE, PVM_DCPLX = range(8)
PVM_LONG, PVM_USHORT, PVM_UINT, PVM_ULONG = 8, 9, 10, 11

#: Element size in bytes of each datatype (C's sizes on LP64 Linux).
SIZES = {PVM_BYTE: 1, PVM_SHORT: 2, PVM_USHORT: 2, PVM_INT: 4, PVM_UINT: 4, PVM_LONG: 8,
         PVM_ULONG: 8, PVM_FLOAT: 4, PVM_CPLX: 8, PVM_DOUBLE: 8, PVM_DCPLX: 16}

#: numpy dtype of each datatype (for building buffers).
DTYPES = {PVM_BYTE: "u1", PVM_SHORT: "i2", PVM_USHORT: "u2", PVM_INT: "i4", PVM_UINT: "u4",
          PVM_LONG: "i8", PVM_ULONG: "u8", PVM_FLOAT: "f4", PVM_CPLX: "c8", PVM_DOUBLE: "f8",
          PVM_DCPLX: "c16"}

_task: Task | None = None


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


def _me() -> Task:
    global _task
    if _task is None or _task.closed:
        _task = current() or join()  # a process that joined with shmd.join() is that task
    return _task


def pvm_mytid() -> int:
    """This process's tid, enrolling it with the host's pvm_shmd on first use."""
    return _me().tid


def pvm_psend(tid: int, tag: int, buf, len: int, datatype: int,
              timeout: float | None = None) -> int:
    """Send *len* items of *datatype* from *buf* to *tid* with *tag* >= 0; return PvmOk
    (errors raise PvmError). *timeout* (not in PVM): longest wait for free pages."""
    size = _size(datatype)
    _me().psend(tid, tag, _room(buf, len, size), timeout)
    return PvmOk


def pvm_precv(tid: int, tag: int, buf, len: int, datatype: int,
              timeout: float | None = None) -> tuple[int, int, int]:
    """Receive from *tid* (-1: any) with *tag* (-1: any) into *buf* (room for *len*
    items); return (rtid, rtag, rlen) with rlen in items. A message larger than the
    room raises PvmError(PvmOverflow) and stays queued. *timeout* (not in PVM):
    PvmTimeout after that many seconds."""
    size = _size(datatype)
    src, rtag, n = _me().precv_into(_room(buf, len, size), tid, tag, timeout)
    return src, rtag, n // size


def pvm_probe(tid: int = ANY, tag: int = ANY) -> int:
    """Bytes of the first waiting message matching (*tid*, *tag*), 0 if none (PVM's
    pvm_probe returns a buffer id > 0 or 0)."""
    found = _me().probe(tid, tag)
    return 0 if found is None else max(found[2], 1)


def pvm_exit() -> int:
    """Leave the virtual machine (messages still queued to us are dropped)."""
    global _task
    if _task is not None:
        _task.leave()
        _task = None
    return PvmOk


def pvm_perror(msg: str, code: int) -> str:
    """PVM's ``libpvm [tid]: msg: text`` line for *code* (returned, not printed)."""
    tid = _task.tid if _task is not None and not _task.closed else 0
    return f"libpvm [{fmt(tid)}]: {msg}: {strerror(code)}"


ERROR_NAMES = dict(errors.NAMES)

__all__ = ([n for n in dir() if n.startswith(("pvm_", "PVM_", "Pvm"))]
           + ["SIZES", "DTYPES", "ANY", "ERROR_NAMES", "join", "strerror"])

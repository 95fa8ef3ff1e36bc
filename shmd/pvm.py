"""PVM-shaped names for people porting PVM programs: pvm_mytid, pvm_psend, pvm_precv,
pvm_exit, the datatype constants, and errors raised as PvmError carrying PVM's code."""
from __future__ import annotations

from .errors import PvmBadParam, PvmError, PvmNotImpl, PvmOk
from .task import ANY, Task, join

PVM_STR, PVM_BYTE, PVM_SHORT, PVM_INT, PVM_FLOAT, PVM_CPLX, PVM_DOUBLE, PVM_DCPLX = range(8)
PVM_LONG, PVM_USHORT, PVM_UINT, PVM_ULONG = 8, 9, 10, 11

#: Element size in bytes of each datatype (C's sizes on LP64 Linux).
SIZES = {PVM_BYTE: 1, PVM_SHORT: 2, PVM_USHORT: 2, PVM_INT: 4, PVM_UINT: 4, PVM_LONG: 8,
         PVM_ULONG: 8, PVM_FLOAT: 4, PVM_CPLX: 8, PVM_DOUBLE: 8, PVM_DCPLX: 16}

_task: Task | None = None


def _size(datatype: int) -> int:
    if datatype == PVM_STR:
        raise PvmError(PvmNotImpl, "PVM_STR is not supported by psend/precv")
    try:
        return SIZES[datatype]
    except KeyError:
        raise PvmError(PvmBadParam, f"unknown datatype {datatype}") from None


def _me() -> Task:
    global _task
    if _task is None or _task.closed:
        _task = join()
    return _task


def pvm_mytid() -> int:
    """This process's tid, enrolling it with the host's pvm_shmd on first use."""
    return _me().tid


def pvm_psend(tid: int, tag: int, buf, len: int, datatype: int) -> int:
    """Send *len* items of *datatype* from *buf*; return PvmOk (errors raise PvmError)."""
    size = _size(datatype)
    mv = memoryview(buf).cast("B")
    if len < 0 or len * size > mv.nbytes:
        raise PvmError(PvmBadParam, f"len {len} exceeds the buffer")
    _me().psend(tid, tag, mv[:len * size])
    return PvmOk


def pvm_precv(tid: int, tag: int, buf, len: int, datatype: int,
              timeout: float | None = None) -> tuple[int, int, int]:
    """Receive into *buf* (room for *len* items); return (rtid, rtag, rlen) with rlen in
    items. A message larger than the room raises PvmError(PvmOverflow) and stays queued."""
    size = _size(datatype)
    mv = memoryview(buf).cast("B")
    if len < 0 or len * size > mv.nbytes:
        raise PvmError(PvmBadParam, f"len {len} exceeds the buffer")
    src, rtag, n = _me().precv_into(mv[:len * size], tid, tag, timeout)
    return src, rtag, n // size


def pvm_exit() -> int:
    """Leave the virtual machine."""
    global _task
    if _task is not None:
        _task.leave()
        _task = None
    return PvmOk


__all__ = [n for n in dir() if n.startswith(("pvm_", "PVM_"))] + ["SIZES", "ANY", "join"]

"""The compiled small-message fast path (``shmd._fast``), when it is there.

``./dev`` builds ``shmd/_fast.c`` when the machine has a C compiler and Python's headers
(setup.py; optional). It does what psend's and precv's first lines do in Python, for
the same messages (small, inline in a descriptor, to or from a local task), by the
same protocol, so tasks with and without it talk to each other. ``PVM_SHMD_PURE=1``
runs the Python path only (the tests run both; a bug report can say which).
"""
from __future__ import annotations

import os
import struct
from typing import Any

from . import layout, wake
from .message import Message

ENV = "PVM_SHMD_PURE"


def _load() -> Any:
    """The configured module, or None (not built, or $PVM_SHMD_PURE)."""
    if os.environ.get(ENV, "") not in ("", "0"):
        return None
    try:
        from . import _fast  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None
    # each field's offset in a descriptor, from the one format that defines it
    fmt = layout.DESC_FMT
    src, tag, nbytes, seg, page, npages, flags, total = (
        struct.calcsize(fmt[:k + 1]) for k in range(len(fmt) - 1))
    if fmt[1:] != "IiQiIIIQ":  # the types the C side reads and writes there
        return None
    _fast.configure(ring=layout.RING, desc=layout.DESC, d_inline=layout.D_INLINE,
                    inline=layout.INLINE, medium=layout.MEDIUM, medium_fill=layout.MEDIUM_FILL,
                    f_first=layout.F_FIRST, f_skip=layout.F_SKIP, src=src, tag=tag, nbytes=nbytes,
                    seg=seg, page=page, npages=npages, flags=flags, total=total,
                    maxpages=layout.MAXPAGES, intent_max=layout.INTENT_MAX, s_free=layout.S_FREE_I,
                    s_allocated=layout.S_ALLOCATED_Q, s_freed=layout.S_FREED_Q, message=Message)
    return _fast


def _tsc_steady() -> bool:
    """Whether the kernel keeps time by the TSC (its clocksource is "tsc"): it then
    found it steady and the same on every CPU, and trace stamps read it (_fast.c's
    TraceRing; else clock_gettime, about three times its cost)."""
    try:
        with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
            return f.read(64).strip() == "tsc"
    except OSError:
        return False


fast = _load()
TSC = fast is not None and _tsc_steady()
KIND = "compiled" if fast is not None else "python"  # what pvm_shmd_stat and the benchmark say


def route(buf: memoryview, peer: Any, dest: int, kind: int) -> Any:
    """psend's compiled fast path to *peer* (a taskbase.Peer of task *dest*, woken the
    wake.py *kind* way), on *buf* (segment 0); None without the module."""
    if fast is None:
        return None
    w = peer.wake
    futex = kind == wake.FUTEX
    return fast.Route(buf, ring=peer.ring, tid=4 * peer.tid_i, waiting=4 * peer.waiting_i,
                      head=8 * peer.head_q, tail=8 * peer.tail_q, posted=8 * peer.posted_q,
                      dest=dest, lock=layout.slot_off(peer.slot) + layout.T_LOCK_OFF,
                      wake=-1 if futex else w.id, wake_undo=False if futex else w.undo,
                      first=peer.first, serial=4 * peer.serial_i, join=peer.serial)


def inbox(task: Any, defer_max: int) -> Any:
    """precv's compiled fast path on *task*'s ring (and its messages in one run of
    pages: task._sx frees them, or pages.py later, while fewer than *defer_max* wait);
    None without the module."""
    if fast is None:
        return None
    return fast.Inbox(task._buf, ring=task._ring, head=8 * task._H, tail=8 * task._T,
                      consumed=8 * task._C, segments=task._sx, defer_max=defer_max)


def segments(task: Any) -> Any:
    """The compiled allocation and freeing of *task*'s runs of pages (pages.py's common
    case: a lock free at the first try, no plan left to finish); None without the module."""
    if fast is None:
        return None
    return fast.Segments(task._buf, list(task._data), ps=task._ps, npages=task._npages,
                         mapb=task._mapb, intent=task._intent, segi=task._segi, segq=task._segq,
                         rover=task._rover, locks=[lk.id for lk in task._locks], tid=task.tid,
                         home=task._home, deferred=task._deferred)

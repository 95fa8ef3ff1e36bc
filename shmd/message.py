"""What a receive gives back (``Message``, ``MessageView``) and the descriptor a
receiver keeps of each message queued to it (``Desc``), with the struct formats the
inbox's descriptors are read and written with (layout.DESC_FMT)."""
from __future__ import annotations

import functools
import struct
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from . import layout
from .errors import PvmBadParam, PvmError

if TYPE_CHECKING:
    from .pages import Pages

DESC = struct.Struct(layout.DESC_FMT)  # src tag nbytes seg page npages flags total


@functools.cache
def small_desc(n: int) -> struct.Struct:
    """A descriptor with *n* inline bytes: src, tag, nbytes, seg, flags, data."""
    return struct.Struct(f"<IiQi8xI8x{n}s")



class Message(NamedTuple):
    """A received message."""

    src: int
    tag: int
    data: bytes


class Desc(NamedTuple):
    """A descriptor as the receiver keeps it (DESC_FMT's fields, then the inline
    bytes, or None when the data is in pages)."""

    src: int
    tag: int
    nbytes: int
    seg: int
    page: int
    npages: int
    flags: int
    total: int
    inline: bytes | None



Matcher = Callable[[Desc], object]  # does a queued descriptor match a receive?

class MessageView:
    """A received message left in the shared pages: ``data`` is a memoryview on them.

    Release it (``release()`` or a ``with`` block) to free the pages; until then the
    sender's pages stay allocated. Arrays made with ``array()`` must be dropped
    before the release (it raises BufferError while one is still referenced)."""

    __slots__ = ("_task", "_d", "src", "tag", "data", "_arrays", "__weakref__")

    def __init__(self, task: Pages, d: Desc, data: memoryview):
        self._task, self.src, self.tag, self.data = task, d.src, d.tag, data
        self._d: Desc | None = d
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
            sx = self._task._sx  # compiled (fastpath.py): when its segment's lock is free
            if sx is None or not sx.free(d.seg, d.page):
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


def as_bytes_view(data) -> memoryview:
    """*data* (any contiguous buffer) as a flat view of bytes; PvmBadParam if it is not one."""
    try:
        mv = memoryview(data)
    except TypeError:
        raise PvmError(PvmBadParam, f"data of type {type(data).__name__} is not a buffer") from None
    if mv.format != "B" or mv.ndim != 1:
        if not mv.c_contiguous:
            raise PvmError(PvmBadParam, "data is not contiguous")
        mv = mv.cast("B")
    return mv

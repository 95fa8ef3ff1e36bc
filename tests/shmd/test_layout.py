"""Walking a task's inbox ring (layout.ring_entries), as pvm_shmd does to count and
reclaim what a task's inbox holds: pure computation on a private copy of segment 0's
task table, with descriptors written as psend writes them."""
from __future__ import annotations

import struct

from shmd import layout

DESC = struct.Struct(layout.DESC_FMT)
SLOT = 1  # not slot 0: offsets must be taken from the slot's own start


def ring_with(entries: list[tuple[int, int, int]], start: int) -> tuple[memoryview, int]:
    """A buffer whose slot SLOT holds *entries* (nbytes, seg, flags) from counter
    *start* on, each taking layout.span(nbytes) descriptors when seg < 0; the inline
    bytes after a descriptor are 0x07, which read as a descriptor would look paged.
    Returns (int32 view, tail)."""
    buf = bytearray(layout.slot_off(SLOT + 1))
    n = start
    for nbytes, seg, flags in entries:
        d = layout.desc_off(SLOT, n)
        DESC.pack_into(buf, d, 0x40001, 1, nbytes % 2**64, seg, 0, 1, flags, nbytes % 2**64)
        if seg < 0 and nbytes >= 0:
            fill = layout.span(nbytes) * layout.DESC - layout.D_INLINE
            buf[d + layout.D_INLINE:d + layout.D_INLINE + fill] = b"\x07" * fill
            n += layout.span(nbytes)
        else:
            n += 1
    return memoryview(buf).cast("i"), n


def test_span():
    assert layout.span(0) == layout.span(layout.INLINE) == 1
    assert layout.span(layout.INLINE + 1) == 2
    assert layout.span(layout.MEDIUM) == (layout.MEDIUM + layout.D_INLINE - 1) // layout.DESC + 1


def test_entries_step_over_inline_bytes_and_fillers():
    start = 5 * layout.RING - 20  # the ring has gone round five times; 20 descriptors left
    filler = 20 * layout.DESC - layout.D_INLINE  # nbytes of an F_SKIP over those 20
    entries = [(10, -1, layout.F_FIRST), (4096, 0, layout.F_FIRST),
               (filler, -1, layout.F_SKIP), (3000, -1, layout.F_FIRST),
               (0, -1, layout.F_ABORT), (layout.MEDIUM, -1, layout.F_FIRST)]
    m32, tail = ring_with(entries, start)
    got = list(layout.ring_entries(m32, SLOT, start, tail))
    at = [start, start + 1, start + 22, start + 22 + layout.span(3000),
          start + 23 + layout.span(3000)]
    assert [n for n, _ in got] == at
    assert [d for _, d in got] == [layout.desc_off(SLOT, n) for n in at]
    assert tail - start == 2 + 20 + layout.span(3000) + 1 + layout.span(layout.MEDIUM)


def test_a_bad_length_still_moves_on():
    # nbytes whose low word reads as -200: a span below 1
    m32, _ = ring_with([(-200, -1, layout.F_FIRST)] * 3, 0)
    assert layout.span(-200) < 1
    assert [n for n, _ in layout.ring_entries(m32, SLOT, 0, 3)] == [0, 1, 2]


def test_used_slots_are_those_whose_tid_word_is_set():
    """The strided scan the daemon's stat and the task table use: the slots with a tid
    (however high its bits), in order, none other; tids_in gives their tids."""
    buf = bytearray(layout.slot_off(layout.MAX_TASKS))
    m32 = memoryview(buf).cast("i")
    assert layout.used_slots(m32) == [] and layout.tids_in(m32) == set()
    for i, tid in ((0, 0x40001), (5, 0x80040002), (layout.MAX_TASKS - 1, 7)):
        layout.slot(memoryview(buf), i)["tid"] = tid
        m32[layout.slot_i(i) + layout.T_STATE_I] = 1  # (a neighbouring word: not looked at)
    m32[layout.slot_i(9) + layout.T_STATE_I] = 1
    assert layout.used_slots(m32) == [0, 5, layout.MAX_TASKS - 1]
    assert layout.tids_in(m32) == {0x40001, 0x80040002, 7}
    m32.release()

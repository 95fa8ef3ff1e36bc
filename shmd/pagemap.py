"""A segment's page map: next-fit runs with boundary tags, in shared memory.

For a run of n pages starting at page p: ``hdr[p]`` and ``ftr[p+n-1]`` hold +n when
the run is free and -n when it is allocated; ``owner[p]`` holds the tid that holds an
allocated run. Allocation skips whole runs (allocated ones too), and freeing merges
with both neighbours in constant time, so no operation walks page by page.

Allocation is next fit: it starts at a rover (the start of the run after the last one
it handed out) and wraps round. A first fit from page 0 walked every run in flight
each time: with 256 messages of 16 KiB in flight, 5 us an allocation. The rover always
names a run's first page: a free that merges runs round it moves it to the merged
run's start.

Callers hold the segment's semaphore; these functions only compute.
``m`` is an int32 memoryview over segment 0 and ``b`` the map's index in it.

An operation writes several words; a process killed -9 in the middle leaves its lock
to the next taker (SEM_UNDO) and the map half written (an allocated run without an
owner, a header and footer that disagree): damaged for good. So ``alloc`` and ``free``
given a *plan* (a list) only compute: they append their writes to it as index, value,
index, value... (every write an absolute value), and ``commit`` stores the plan in the
segment's intent record (``layout.intent_i``) before it applies it, and clears the
record after. Whoever takes the segment's lock next calls ``finish`` first, which
applies a plan a killed process left there, again: the operation is done whole.

The map is in memory any process of the user may scribble on: every run length read
is bounded before it is used as an index. A map that cannot be right (a zero-length
run, a run past the last page, a header and footer that disagree, an allocated run
without an owner) raises ``Damaged``, naming the page and the value: a
``PvmError(PvmSysErr)`` for the tasks, and a ``ValueError`` too, for callers that
caught what ``runs`` raised before. Nothing here loops more than *npages* times.
"""
from __future__ import annotations

import struct

from .errors import PvmError, PvmSysErr
from .layout import INTENT_MAX, MAP_FTR, MAP_OWNER, MAP_STRIDE, SEGENT, intent_i, map_i, map_off, segent_i


class Damaged(PvmError, ValueError):
    """A page map that cannot be right (code PvmSysErr; also a ValueError)."""

    def __init__(self, detail: str):
        PvmError.__init__(self, PvmSysErr, detail)


def _bad(b: int, p: int, what: str) -> Damaged:
    seg, rest = divmod(b * 4 - map_off(0), MAP_STRIDE)
    name = f"segment {seg}'s page map" if rest == 0 and seg >= 0 else f"page map at {b}"
    return Damaged(f"{name} damaged at page {p}: {what}")


def give(m: memoryview, b: int, p: int, owner: int) -> None:
    """Make *owner* the holder of the allocated run at page *p* (a run handed back)."""
    m[b + MAP_OWNER + p] = owner


def init(m: memoryview, b: int, npages: int, r: int = -1) -> None:
    """One free run of every page (and the rover, at index *r* of *m*, on it)."""
    m[b] = npages
    m[b + MAP_FTR + npages - 1] = npages
    m[b + MAP_OWNER] = 0
    if r >= 0:
        m[r] = 0


def alloc(m: memoryview, b: int, npages: int, want: int, owner: int, r: int = -1,
          plan: list[int] | None = None) -> int:
    """A free run of at least *want* pages, the first from the rover at index *r* of
    *m* on (from page 0 without one), wrapping round: mark it for *owner*; return its
    first page, or -1 when no run is large enough. With *plan*, the writes are only
    appended to it (see ``commit``)."""
    w: list[int] = [] if plan is None else plan
    start = m[r] if r >= 0 else 0
    if not 0 < start < npages:
        start = 0
    else:
        # the rover must start a run: the run before it ends there (its footer and
        # header agree); a scribbled one is ignored (the search starts at page 0)
        k = m[b + MAP_FTR + start - 1]
        k = k if k > 0 else -k
        if not 0 < k <= start or m[b + start - k] != m[b + MAP_FTR + start - 1]:
            start = 0
    p = _fit(m, b, start, npages, npages, want, owner, w)
    if p < 0 and start:
        p = _fit(m, b, 0, start, npages, want, owner, w)
    if p >= 0 and r >= 0:
        w += (r, p + want if p + want < npages else 0)
    if plan is None:
        _apply(m, w)
    return p


def _fit(m: memoryview, b: int, p: int, stop: int, npages: int, want: int, owner: int,
         w: list[int]) -> int:
    """alloc's walk over the runs that start in [p, stop); p starts a run. Damaged if
    a run's length is 0 or goes past *npages* (at most *npages* steps)."""
    f = b + MAP_FTR
    while p < stop:
        v = m[b + p]
        n = v if v > 0 else -v
        if n == 0 or n > npages - p:
            raise _bad(b, p, f"run header {v} (of {npages} pages)")
        if v >= want:
            if m[f + p + v - 1] != v:
                raise _bad(b, p, f"free run header {v}, footer {m[f + p + v - 1]}")
            w += (b + p, -want, f + p + want - 1, -want)
            if v > want:
                w += (b + p + want, v - want, f + p + v - 1, v - want)
            w += (b + MAP_OWNER + p, owner)
            return p
        p += n
    return -1


def free(m: memoryview, b: int, npages: int, p: int, r: int = -1,
         plan: list[int] | None = None) -> int:
    """Free the allocated run starting at page *p*, merging it with free neighbours
    (and moving the rover at index *r* of *m* to the merged run's start if it pointed
    inside); return the number of pages freed (0 if *p* does not start an allocated run).

    A page that does not start an allocated run (a second free of the same run, a
    stale descriptor) is refused: its header and footer must both say -n. A free
    neighbour whose length runs past the map, or whose header and footer disagree,
    raises Damaged before anything is written. With *plan*, the writes are only
    appended to it (see ``commit``)."""
    if not 0 <= p < npages:
        return 0
    n = -m[b + p]
    f = b + MAP_FTR
    if n <= 0 or p + n > npages or m[f + p + n - 1] != -n:
        return 0
    start, length = p, n
    q = p + n
    after = m[b + q] if q < npages else 0
    if after > 0:
        if after > npages - q or m[f + q + after - 1] != after:
            raise _bad(b, q, f"free run header {after}, footer "
                             f"{m[f + q + after - 1] if after <= npages - q else '-'}")
        length += after
    before = m[f + p - 1] if p > 0 else 0
    if before > 0:
        if before > p or m[b + p - before] != before:
            raise _bad(b, p - 1, f"free run footer {before}, header "
                                 f"{m[b + p - before] if before <= p else '-'}")
        start -= before
        length += before
    w: list[int] = [] if plan is None else plan
    w += (b + MAP_OWNER + p, 0)
    if start != p:
        w += (b + p, 0)  # no stale -n inside the merged run: a second free must fail
    w += (b + start, length, f + start + length - 1, length)
    if r >= 0 and start < m[r] < start + length:
        w += (r, start)
    if plan is None:
        _apply(m, w)
    return n


def _apply(m: memoryview, w: list[int]) -> None:
    for k in range(0, len(w), 2):
        m[w[k]] = w[k + 1]


_PAIRS = {n: struct.Struct(f"<{n}i") for n in range(2, 2 * INTENT_MAX + 1, 2)}


def commit(m: memoryview, rec: int, plan: list[int]) -> None:
    """Do *plan* (index, value pairs) so that it is done whole even if we are killed
    in the middle: kept in the intent record at index *rec* (``layout.intent_i``)
    first, its count written last (from then on the next holder of the lock redoes
    it, see ``finish``), cleared once done."""
    n = len(plan)
    _PAIRS[n].pack_into(m, 4 * rec + 4, *plan)  # (cheaper than a slice from an array)
    m[rec] = n >> 1
    for k in range(0, n, 2):
        m[plan[k]] = plan[k + 1]
    m[rec] = 0


def finish(m: memoryview, seg: int) -> bool:
    """Redo the plan a process killed while it held segment *seg*'s lock left in its
    intent record (the caller holds the lock now); True if there was one. A record
    that cannot be right (a count past INTENT_MAX, an index outside this segment's map
    and table entry) raises Damaged, and is left as it is."""
    rec = intent_i(seg)
    n = m[rec]
    if not n:
        return False
    b, e = map_i(seg), segent_i(seg)
    if not 0 < n <= INTENT_MAX:
        raise Damaged(f"segment {seg}'s intent record damaged: {n} writes")
    pairs = m[rec + 1:rec + 1 + 2 * n].tolist()
    for k in range(0, 2 * n, 2):
        i = pairs[k]
        if not (b <= i < b + MAP_STRIDE // 4 or e <= i < e + SEGENT // 4):
            raise Damaged(f"segment {seg}'s intent record damaged: a write to word {i}")
    _apply(m, pairs)
    m[rec] = 0
    return True


def runs(m: memoryview, b: int, npages: int):
    """Yield (first page, pages, allocated, owner) for every run, never one past
    *npages*; raise Damaged (before yielding it) at the first run that cannot be right:
    length 0 or past the last page, a footer that disagrees with its header, an
    allocated run whose owner is not a tid."""
    p = 0
    f = b + MAP_FTR
    while p < npages:
        v = m[b + p]
        n = v if v > 0 else -v
        if n == 0 or n > npages - p:
            raise _bad(b, p, f"run header {v} (of {npages} pages)")
        if m[f + p + n - 1] != v:
            raise _bad(b, p, f"run header {v}, footer {m[f + p + n - 1]}")
        owner = m[b + MAP_OWNER + p] if v < 0 else 0
        if v < 0 and owner <= 0:
            raise _bad(b, p, f"allocated run of {n} pages owned by {owner}")
        yield p, n, v < 0, owner
        p += n


def summary(m: memoryview, b: int, npages: int) -> tuple[int, int]:
    """(pages free, largest free run)."""
    free_pages = largest = 0
    for _, n, allocated, _ in runs(m, b, npages):
        if not allocated:
            free_pages += n
            largest = max(largest, n)
    return free_pages, largest

"""A segment's page map: first-fit runs with boundary tags, in shared memory.

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
"""
from __future__ import annotations

from .layout import MAXPAGES


def init(m: memoryview, b: int, npages: int, r: int = -1) -> None:
    """One free run of every page (and the rover, at index *r* of *m*, on it)."""
    m[b] = npages
    m[b + MAXPAGES + npages - 1] = npages
    m[b + 2 * MAXPAGES] = 0
    if r >= 0:
        m[r] = 0


def alloc(m: memoryview, b: int, npages: int, want: int, owner: int, r: int = -1) -> int:
    """A free run of at least *want* pages, the first from the rover at index *r* of
    *m* on (from page 0 without one), wrapping round: mark it for *owner*; return its
    first page, or -1 when no run is large enough."""
    start = m[r] if r >= 0 else 0
    if not 0 < start < npages:
        start = 0
    p = _fit(m, b, start, npages, want, owner)
    if p < 0 and start:
        p = _fit(m, b, 0, start, want, owner)
    if p >= 0 and r >= 0:
        m[r] = p + want if p + want < npages else 0
    return p


def _fit(m: memoryview, b: int, p: int, stop: int, want: int, owner: int) -> int:
    """alloc's walk over the runs that start in [p, stop); p starts a run."""
    while p < stop:
        v = m[b + p]
        if v >= want:
            f = b + MAXPAGES
            m[b + p] = -want
            m[f + p + want - 1] = -want
            if v > want:
                m[b + p + want] = v - want
                m[f + p + v - 1] = v - want
            m[b + 2 * MAXPAGES + p] = owner
            return p
        if v == 0:  # a corrupt map must not loop forever
            return -1
        p += v if v > 0 else -v
    return -1


def free(m: memoryview, b: int, npages: int, p: int, r: int = -1) -> int:
    """Free the allocated run starting at page *p*, merging it with free neighbours
    (and moving the rover at index *r* of *m* to the merged run's start if it pointed
    inside); return the number of pages freed (0 if *p* does not start an allocated run).

    A page that does not start an allocated run (a second free of the same run, a
    stale descriptor) is refused: its header and footer must both say -n."""
    if not 0 <= p < npages:
        return 0
    n = -m[b + p]
    f = b + MAXPAGES
    if n <= 0 or p + n > npages or m[f + p + n - 1] != -n:
        return 0
    m[b + 2 * MAXPAGES + p] = 0
    start, length = p, n
    q = p + n
    if q < npages and m[b + q] > 0:
        length += m[b + q]
    if p > 0 and m[f + p - 1] > 0:
        start -= m[f + p - 1]
        length += m[f + p - 1]
    if start != p:
        m[b + p] = 0  # no stale -n inside the merged run: a second free must fail
    m[b + start] = length
    m[f + start + length - 1] = length
    if r >= 0 and start < m[r] < start + length:
        m[r] = start
    return n


def runs(m: memoryview, b: int, npages: int):
    """Yield (first page, pages, allocated, owner) for every run."""
    p = 0
    while p < npages:
        v = m[b + p]
        if v == 0:  # a corrupt map must not loop forever
            raise ValueError(f"page map corrupt at page {p}")
        n = v if v > 0 else -v
        yield p, n, v < 0, (m[b + 2 * MAXPAGES + p] if v < 0 else 0)
        p += n


def summary(m: memoryview, b: int, npages: int) -> tuple[int, int]:
    """(pages free, largest free run)."""
    free_pages = largest = 0
    for _, n, allocated, _ in runs(m, b, npages):
        if not allocated:
            free_pages += n
            largest = max(largest, n)
    return free_pages, largest

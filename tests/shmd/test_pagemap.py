"""The page map (shmd/pagemap.py): random alloc/free sequences keep the boundary-tag
invariants and the page accounting; a stale or double free is refused, never corrupts.

Pure computation on a private int32 array laid out like a map in segment 0.
"""
from __future__ import annotations

from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmd import pagemap
from shmd.errors import PvmSysErr
from shmd.layout import MAXPAGES

B = 7  # maps live at an arbitrary index inside segment 0, not at 0
R = 3  # and the rover at another


def new_map(npages: int, rover: bool = False) -> memoryview:
    m = memoryview(array("i", [0x5A5A5A5A] * (B + 3 * MAXPAGES)))  # garbage, as in reused shm
    pagemap.init(m, B, npages, R if rover else -1)
    return m


def check_invariants(m: memoryview, npages: int, held: dict[int, tuple[int, int]]) -> None:
    """Runs tile [0, npages); header and footer agree; no two free runs touch; every
    allocated run is one we hold, with its owner; accounting adds up."""
    runs = list(pagemap.runs(m, B, npages))
    p, prev_free = 0, False
    allocated = {}
    for start, n, alloc, owner in runs:
        assert start == p and n > 0
        sign = -1 if alloc else 1
        assert m[B + start] == sign * n, f"header of run at {start}"
        assert m[B + MAXPAGES + start + n - 1] == sign * n, f"footer of run at {start}"
        if not alloc:
            assert not prev_free, f"two adjacent free runs at {start}"
        else:
            allocated[start] = (n, owner)
        prev_free = not alloc
        p += n
    assert p == npages
    assert allocated == held
    free, largest = pagemap.summary(m, B, npages)
    assert free == npages - sum(n for n, _ in held.values())
    assert largest == max([n for _, n, a, _ in runs if not a] or [0])


ops = st.lists(st.one_of(
    st.tuples(st.just("alloc"), st.integers(1, 24), st.integers(1, 5)),
    st.tuples(st.just("free"), st.integers(0, 1000)),
    st.tuples(st.just("stale"), st.integers(0, 1000)),  # free of a page we do not hold
), max_size=120)


@settings(max_examples=300, deadline=None)
@given(npages=st.integers(1, 64), seq=ops, rover=st.booleans())
def test_random_alloc_free_keeps_invariants(npages, seq, rover):
    m = new_map(npages, rover)
    r = R if rover else -1
    held: dict[int, tuple[int, int]] = {}
    freed_once: list[int] = []
    for op in seq:
        if op[0] == "alloc":
            _, want, owner = op
            free, _ = pagemap.summary(m, B, npages)
            runs = list(pagemap.runs(m, B, npages))
            biggest = max([n for _, n, a, _ in runs if not a] or [0])
            # next fit: the first run large enough from the rover on, wrapping round
            start = m[R] if rover else 0
            fits = [q for q, n, a, _ in runs if not a and n >= want]
            expect = min([q for q in fits if q >= start] or fits or [-1])
            p = pagemap.alloc(m, B, npages, want, owner, r)
            if want <= biggest:
                assert p >= 0, "the search missed a run large enough"
                assert p == expect, f"took the run at {p}, not the next fit at {expect}"
                held[p] = (want, owner)
            else:
                assert p == -1
        elif op[0] == "free" and held:
            p = sorted(held)[op[1] % len(held)]
            n, _ = held.pop(p)
            assert pagemap.free(m, B, npages, p, r) == n
            freed_once.append(p)
        elif op[0] == "stale":
            # a page that does not start a run we hold: a second free, or any page
            cands = freed_once + list(range(npages))
            p = cands[op[1] % len(cands)]
            if p not in held:
                assert pagemap.free(m, B, npages, p, r) == 0, f"stale free of page {p} accepted"
        check_invariants(m, npages, held)
        if rover:  # the rover names a run's first page
            assert m[R] in {q for q, _, _, _ in pagemap.runs(m, B, npages)}
    for p in list(held):
        assert pagemap.free(m, B, npages, p, r) == held.pop(p)[0]
    check_invariants(m, npages, {})
    assert list(pagemap.runs(m, B, npages)) == [(0, npages, False, 0)]


def test_double_free_after_merge_does_not_release_someone_elses_run():
    """The case hypothesis found: free A, free B (merges into A), C takes A+B; a second
    free of B's old first page used to release half of C."""
    m = new_map(8)
    a = pagemap.alloc(m, B, 8, 2, 1)
    b = pagemap.alloc(m, B, 8, 2, 2)
    assert pagemap.free(m, B, 8, a) == 2 and pagemap.free(m, B, 8, b) == 2
    c = pagemap.alloc(m, B, 8, 4, 3)
    assert c == 0
    assert pagemap.free(m, B, 8, b) == 0
    check_invariants(m, 8, {0: (4, 3)})


def test_out_of_range_and_corrupt_map_do_not_hang():
    m = new_map(4)
    assert pagemap.free(m, B, 4, -1) == 0
    assert pagemap.free(m, B, 4, 4) == 0
    m[B] = 0  # corrupt: a zero-length run
    with pytest.raises(pagemap.Damaged, match="page 0: run header 0"):
        pagemap.alloc(m, B, 4, 1, 1)
    with pytest.raises(pagemap.Damaged):
        list(pagemap.runs(m, B, 4))


def damaged(runs_or_call) -> str:
    """The text of the Damaged a call raises (it is a PvmSysErr and a ValueError)."""
    with pytest.raises(pagemap.Damaged) as e:
        runs_or_call()
    assert e.value.code == PvmSysErr and isinstance(e.value, ValueError)
    return str(e.value)


def test_a_run_header_past_the_map_is_damage_not_free_pages():
    """198 million free pages out of 1024 came from a header nobody bounded."""
    m = new_map(1024)
    m[B] = 198_000_000
    assert "run header 198000000 (of 1024 pages)" in damaged(lambda: list(pagemap.runs(m, B, 1024)))
    assert "198000000" in damaged(lambda: pagemap.summary(m, B, 1024))
    assert "198000000" in damaged(lambda: pagemap.alloc(m, B, 1024, 1, 7))
    m[B] = -(1 << 31)  # the most negative header: an allocated run of 2**31 pages
    assert "run header -2147483648" in damaged(lambda: list(pagemap.runs(m, B, 1024)))
    damaged(lambda: pagemap.alloc(m, B, 1024, 1, 7, R))


def test_runs_never_yield_past_npages_nor_loop_on_a_scribbled_map():
    m = new_map(16)
    a = pagemap.alloc(m, B, 16, 4, 9)
    pagemap.alloc(m, B, 16, 4, 9)
    m[B + a + 4] = 20  # the second run's header says 20 pages: past the map
    got = []
    with pytest.raises(pagemap.Damaged, match="page 4"):
        for run in pagemap.runs(m, B, 16):
            got.append(run)
    assert got == [(0, 4, True, 9)]  # the damaged run is not yielded


def test_footer_and_owner_damage_are_named():
    m = new_map(8)
    pagemap.alloc(m, B, 8, 2, 5)
    m[B + MAXPAGES + 1] = -3  # footer disagrees with header -2
    assert "footer -3" in damaged(lambda: list(pagemap.runs(m, B, 8)))
    m = new_map(8)
    pagemap.alloc(m, B, 8, 2, 5)
    m[B + 2 * MAXPAGES] = 0
    assert "owned by 0" in damaged(lambda: list(pagemap.runs(m, B, 8)))


def test_free_with_a_damaged_neighbour_writes_nothing():
    m = new_map(8)
    a = pagemap.alloc(m, B, 8, 2, 5)  # pages 0-1; 2-7 free
    m[B + 2] = 60  # the free neighbour's header runs past the map
    before = bytes(m)
    assert "page 2" in damaged(lambda: pagemap.free(m, B, 8, a))
    assert bytes(m) == before
    m = new_map(8)
    pagemap.alloc(m, B, 8, 2, 5)
    b = pagemap.alloc(m, B, 8, 2, 5)  # pages 2-3
    pagemap.free(m, B, 8, 0)
    m[B + MAXPAGES + 1] = 7  # the free run before it says 7 pages: before page 0
    before = bytes(m)
    damaged(lambda: pagemap.free(m, B, 8, b))
    assert bytes(m) == before


def test_a_scribbled_rover_is_not_trusted():
    m = new_map(16, rover=True)
    pagemap.alloc(m, B, 16, 4, 1, R)
    m[R] = 2  # inside the run just handed out: not a run's first page
    p = pagemap.alloc(m, B, 16, 4, 2, R)
    assert p == 4  # searched from page 0, not from the middle of the allocated run
    check_invariants(m, 16, {0: (4, 1), 4: (4, 2)})

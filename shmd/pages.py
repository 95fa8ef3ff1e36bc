"""Pages: allocating and freeing runs of a segment's pages, as a Task does it.

Under the segment's semaphore, pagemap.py does the work on the page map; this layer
picks the segment (from ours, ``_home``, on), waits for frees up to the caller's
deadline, keeps the segment table's counters, and puts off a free whose segment lock
is held by a stopped process (``_deferred``) rather than block a receive on it.
Every change to a map (and the segment's free-page count) is one plan committed whole
(pagemap.commit): a task killed -9 mid-way leaves it to the next taker of the lock,
which finishes it first (pagemap.finish), not a damaged map.
"""
from __future__ import annotations

import time

import sysv_ipc

from . import ipc, layout, pagemap
from .errors import MemoryFull, PvmError, PvmSysErr
from .taskbase import MASK64, SLICE, TaskBase

FREE_WAIT = 0.02  # how long a free waits for a segment's lock before it is put off
DEFER_MAX = 8  # runs a receive may leave to free later when their segment's lock is busy
_FREE, _ALLOCATED, _FREED = layout.S_FREE_I, layout.S_ALLOCATED_Q, layout.S_FREED_Q
_OWNER = layout.MAP_OWNER


def plus32(m: memoryview, k: int, n: int) -> int:
    """m[k] + n for a u32 counter in an int32 view, wrapping (a scribbled counter
    must not make an update raise)."""
    return (m[k] + n + (1 << 31)) % (1 << 32) - (1 << 31)


class Pages(TaskBase):
    """Runs of pages for our messages: ``_alloc``, ``_free``."""

    def _alloc(self, want: int, deadline: float) -> tuple[int, int]:
        """(segment, first page) of *want* pages, waiting for frees until *deadline*
        (then MemoryFull). No wait here, a lock's included, runs past the deadline."""
        delay = 20e-6
        blocked = 0
        m, tid = self._i, self.tid
        if self._deferred:
            self._free_deferred()
        while True:
            for k in range(self._nsegs):
                s = (self._home + k) % self._nsegs
                if want > self._npages[s]:
                    continue
                lock = self._locks[s]
                try:
                    # held long only by a stopped holder: not past our deadline for it
                    if not lock.acquire(min(SLICE, max(deadline - time.monotonic(), 0.0))):
                        continue
                except ipc.Gone:
                    raise PvmError(PvmSysErr, "pvm_shmd removed its segments") from None
                try:
                    if m[self._intent[s]]:
                        pagemap.finish(m, s)  # what a task killed holding it left undone
                    plan: list[int] = []
                    p = pagemap.alloc(m, self._mapb[s], self._npages[s], want, tid,
                                      self._rover[s], plan)
                    if p >= 0:
                        k = self._segi[s] + _FREE  # pages free
                        plan += (k, plus32(m, k, -want))
                        pagemap.commit(m, self._intent[s], plan)
                        w = self._segq[s] + _ALLOCATED  # allocations so far
                        self._q[w] = (self._q[w] + 1) & MASK64
                        if blocked:
                            self._i[self._blocked] = 0
                        return s, p
                finally:
                    lock.release()
            left = deadline - time.monotonic()
            if left <= 0:
                self._i[self._blocked] = 0
                raise MemoryFull(f"no {want} free pages in any segment within the "
                                 "timeout (memory full)")
            self._check_alive()
            if not blocked:  # (for the console's view: this task waits for pages)
                blocked = self._i[self._blocked] = layout.BLOCKED_PAGES
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5e-3)

    def _free(self, s: int, p: int, only_if: int = 0) -> None:
        """Free the run at page *p* of segment *s* (if *only_if*, only while that tid
        owns it). A segment lock held past FREE_WAIT (its holder stopped) does not hold
        up the call (a receive's timeout must hold): the free waits in _deferred for
        our next allocation or sleep; the run stays ours meanwhile."""
        lock = self._locks[s]
        try:
            if not lock.acquire(FREE_WAIT):
                self._deferred.append((s, p, only_if))
                return
        except ipc.Gone:
            raise PvmError(PvmSysErr, "pvm_shmd removed its segments") from None
        try:
            self._free_held(s, p, only_if)
        finally:
            lock.release()

    def _free_held(self, s: int, p: int, only_if: int = 0) -> None:
        """_free's work, under segment *s*'s lock (held by the caller)."""
        m = self._i
        if m[self._intent[s]]:
            pagemap.finish(m, s)  # what a task killed holding it left undone
        if only_if and (not 0 <= p < self._npages[s]
                        or m[self._mapb[s] + _OWNER + p] != only_if):
            return
        plan: list[int] = []
        n = pagemap.free(m, self._mapb[s], self._npages[s], p, self._rover[s], plan)
        if n:
            k = self._segi[s] + _FREE
            plan += (k, plus32(m, k, n))
            pagemap.commit(m, self._intent[s], plan)
            w = self._segq[s] + _FREED
            self._q[w] = (self._q[w] + 1) & MASK64

    def _free_soon(self, s: int, p: int, npages: int) -> None:
        """Free a run we received and copied out: now if its segment's lock is free
        (with the runs put off before in that segment, under the same hold), else
        later (``_deferred``: up to DEFER_MAX runs of at most 1/DEFER_MAX of the
        segment each; past that, or for a larger run, we wait as _free does). In a
        stream the lock is the sender's too, allocating: a receiver that waited for
        it (sleeping, when the holder was preempted) ran a 64 KiB stream at a fraction
        of its speed on a loaded host. A run put off stays ours (its owner word says
        so): if we die meanwhile pvm_shmd frees it with our others."""
        sx = self._sx
        if sx is not None and sx.free(s, p):
            return  # compiled (fastpath.py): the lock was free, no plan left to finish
        lock, deferred = self._locks[s], self._deferred
        if len(deferred) >= DEFER_MAX or npages * DEFER_MAX > self._npages[s]:
            self._free_deferred()
            self._free(s, p)
            return
        try:
            lock.sem.acquire()  # non-blocking (IPC_NOWAIT), with SEM_UNDO
        except sysv_ipc.BusyError:
            deferred.append((s, p, 0))
            return
        except sysv_ipc.ExistentialError:
            raise PvmError(PvmSysErr, "pvm_shmd removed its segments") from None
        try:
            self._free_held(s, p)
            if deferred:
                for run in [r for r in deferred if r[0] == s]:
                    try:
                        deferred.remove(run)
                    except ValueError:
                        continue  # another thread of ours freed it (pvm_netd has two)
                    self._free_held(*run)
        finally:
            lock.release()

    def _free_deferred(self) -> None:
        """Try again the frees a stuck segment lock put off. Each run is taken off the
        list (one atomic pop) before it is freed: pvm_netd's threads, one receiving and
        one sending, share the list, and a run freed twice frees someone else's."""
        deferred = self._deferred
        for _ in range(len(deferred)):  # (one try each: _free puts a still stuck one back)
            try:
                run = deferred.pop(0)
            except IndexError:
                return
            self._free(*run)

"""The receiving side's queue: our inbox ring, the pending list, sleeping.

``_drain`` moves descriptors off our ring (where senders append them) into the
pending list until one matches; ``_take`` finds the first match there or in the ring,
spinning then sleeping (``_sleep``: the Dekker handshake with senders, see there).
A message in pieces (larger than a segment) is put together by ``_assemble``, which
keeps its place in the queue while it waits for the next piece; the pieces of a
message we dropped mid-way are thrown away as they come (``_orphans``, ``_purge``).
Before sleeping, messages waiting in the pending list are copied out of the pages
(``_spill``): a sender we wait for may need them.
"""
from __future__ import annotations

import os
import time
from typing import Literal, overload

import sysv_ipc

from . import ipc, layout, remote
from .errors import PvmBadMsg, PvmError, PvmSysErr, PvmTimeout
from .message import DESC, Desc, Matcher
from .pages import Pages
from .taskbase import INF, MASK64, MAX_SPIN, SLICE, damaged, spin_allowed
from .tids import TIDHOST
from .wake import SEM

MIN_SPIN = 10e-6  # a spin that keeps missing shrinks to this
POST_WAIT = 10e-6  # how long a woken receiver polls for the message its waker posts
STALE_MAX = 64  # left-over wake-ups taken off before a sleep, at most
SPIN_RECHECK = 1.0  # how often an automatic spin re-checks the host's load (seconds)
_MAX_TOTAL = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGESIZE")  # no message is larger

_unpack_desc = DESC.unpack_from
_new = tuple.__new__  # a NamedTuple's own constructor costs several times more
_RING, _DESCSZ, _INL, _MEDIUM = layout.RING, layout.DESC, layout.D_INLINE, layout.MEDIUM
_F_SKIP, _SPAN_ADD = layout.F_SKIP, layout.D_INLINE + layout.DESC - 1  # span: (n + _SPAN_ADD) // DESC
_OWNER, _RV_CLAIMED = layout.MAP_OWNER, layout.RV_CLAIMED
_fence = ipc.fence


class Inbox(Pages):
    """Taking messages off our inbox: ``_take``, ``_sleep``, ``_assemble``."""

    def _drain(self, match) -> Desc | None:
        """Move ring entries to the pending list until one satisfies *match*.

        The hot path of every receive: descriptors are built with tuple.__new__ (a
        NamedTuple's own constructor costs several times more)."""
        q, H = self._q, self._H
        head, tail = q[H], q[self._T]
        if head >= tail:
            if head > tail:
                raise damaged(f"our inbox: head {head} past tail {tail}")
            return None
        if tail - head > _RING:
            raise damaged(f"our inbox: tail {tail}, head {head} ({tail - head} "
                           f"descriptors queued, the ring holds {_RING})")
        buf, i, pend, ring = self._buf, self._i, self._pending, self._ring
        while head < tail:
            k = head % _RING
            off = ring + k * _DESCSZ
            f = _unpack_desc(buf, off)
            if f[3] < 0:
                n = (f[2] + _SPAN_ADD) // _DESCSZ
                # its bytes stay in the ring, before its end and the tail
                if k + n > _RING or head + n > tail or f[6] > 15:
                    raise self._bad_desc(head, f)
                head += n
                if f[6] & _F_SKIP:
                    q[H] = head
                    continue
                if f[2] > _MEDIUM:
                    raise self._bad_desc(head - n, f)
                d = _new(Desc, f + (buf[off + _INL:off + _INL + f[2]].tobytes(),))
            else:
                s = f[3]
                # a run in one of our segments of as many pages as its bytes need
                if (s >= self._nsegs or f[5] != (f[2] + self._ps - 1) // self._ps
                        or not f[5] or f[4] + f[5] > self._npages[s] or f[2] > f[7]
                        or f[6] > 15):
                    raise self._bad_desc(head, f)
                i[self._mapb[s] + _OWNER + f[4]] = self.tid  # the run is ours now
                q[self._C] = (q[self._C] + f[2]) & MASK64
                d = _new(Desc, f + (None,))
                head += 1
            q[H] = head
            if match(d):
                if pend:
                    i[self._P] = len(pend)
                return d
            pend.append(d)
            if f[3] >= 0:
                self._unspilled = True
        i[self._P] = len(pend)
        return None

    def _take_paged(self, off: int, head: int, into):
        """The receive fast paths' case of a message in one run of pages: the
        descriptor at *off* (number *head*, next on our ring, nothing pending) is
        whole and matches. Take it off the ring as ``_drain`` would, copy it out and
        free the run: bytes, or the byte count written into *into*. None, with
        nothing done, if it does not fit *into* or a field is not right (the general
        path then takes it, and names the damage)."""
        src, tag, n, s, p, npages, flags, total = _unpack_desc(self._buf, off)
        ps = self._ps
        if (n != total or s >= self._nsegs or not 0 < npages == (n + ps - 1) // ps
                or p + npages > self._npages[s] or (into is not None and n > len(into))):
            return None
        q = self._q
        self._i[self._mapb[s] + _OWNER + p] = self.tid  # the run is ours now
        q[self._C] = (q[self._C] + n) & MASK64
        q[self._H] = head + 1
        b = p * ps
        view = self._data[s][b:b + n]
        try:
            if into is None:
                return bytes(view)
            into[:n] = view
            return n
        finally:
            view.release()
            self._free_soon(s, p, npages)

    def _bad_desc(self, n: int, f: tuple) -> PvmError:
        """The error for descriptor number *n* of our inbox, whose fields *f* cannot be
        right; it is left on the ring (the head stays before it)."""
        return damaged(f"descriptor {n} of our inbox: from t{f[0]:x}, {f[2]} bytes, "
                        f"segment {f[3]}, page {f[4]}, {f[5]} pages, flags {f[6]:#x}, "
                        f"total {f[7]}")

    @overload
    def _take(self, match: Matcher, deadline: float, block: Literal[True] = ...) -> Desc: ...

    @overload
    def _take(self, match: Matcher, deadline: float, block: bool) -> Desc | None: ...

    def _take(self, match: Matcher, deadline: float, block: bool = True) -> Desc | None:
        """The first message (pending, then ring) that satisfies *match*; waiting for
        it (PvmTimeout at *deadline*) unless not *block* (then None if there is none)."""
        if self._orphans:
            self._purge()
        if self._pending:
            for k, x in enumerate(self._pending):
                if match(x):
                    del self._pending[k]
                    self._i[self._P] = len(self._pending)
                    self._at = k
                    return x
        self._at = None
        q, H, T = self._q, self._H, self._T
        while True:
            d = self._drain(match)
            if self._orphans:
                self._purge()  # what the ring brought of messages we dropped
            if d is not None or not block:
                self._spun = False
                return d
            budget = self._spin_budget
            if not budget or self._spun:
                self._spun = False
                self._sleep(deadline)
                continue
            head, start = q[H], time.perf_counter()
            end = start + budget
            while q[T] == head and time.perf_counter() < end:
                pass
            if q[T] != head:
                continue
            self._sleep(deadline)
            self._adapt_spin(budget, time.perf_counter() - start, q[T] != head)

    def _adapt_spin(self, budget: float, waited: float, came: bool) -> None:
        """After a spin of *budget* (not 0) that missed and a sleep, *waited* seconds in
        all: adapt the spin to the gaps between messages. A message that *came* soon
        after we gave up means a slightly longer spin would have saved the sleep (and
        the sender's costly wake-up); a long gap means spin less (a receiver whose
        messages come from another host, through pvm_netd, spun 200 us for each of
        them, a third of a CPU that host's pvm_netd needed)."""
        if came and waited < MAX_SPIN:
            self._spin_budget = min(MAX_SPIN, max(budget, waited * 1.5))
        elif budget > MIN_SPIN:
            self._spin_budget = max(budget / 2, MIN_SPIN)

    def _put_back(self, d: Desc) -> None:
        """Return the descriptor _take just gave to where it was (order is kept)."""
        if self._at is None:
            self._pending.append(d)
        else:
            self._pending.insert(self._at, d)
        self._i[self._P] = len(self._pending)
        if d.seg >= 0:
            self._unspilled = True

    def _spill(self) -> None:
        """Copy the messages waiting in the pending list out of the shared pages and
        free the pages. Done only before blocking: a sender we wait for may need those
        pages (otherwise a receiver waiting for one source while others' messages fill
        the memory would deadlock with that source's psend)."""
        pend = self._pending
        for k, d in enumerate(pend):
            if d.seg >= 0:
                b = d.page * self._ps
                src = self._data[d.seg][b:b + d.nbytes]
                data = bytes(src)
                src.release()
                self._free(d.seg, d.page)
                pend[k] = d._replace(seg=-1, inline=data)
        self._unspilled = False

    def _unwoken(self, most: int) -> None:
        """Take up to *most* left-over wake-ups off our wake semaphore (the sem kind: a
        count; IPC_NOWAIT, as a semtimedop with a zero timeout cost 70 us here)."""
        if self._wake != SEM:
            return
        try:
            for _ in range(most):
                self._mywake.acquire()
        except (sysv_ipc.BusyError, sysv_ipc.ExistentialError):
            pass  # none left (or pvm_shmd gone: the sleep below says so)

    def _sleep(self, deadline: float) -> None:
        """Block until a sender wakes us, a slice passes or the deadline is reached."""
        now = time.monotonic()
        if now >= deadline:
            raise PvmTimeout("no matching message before the timeout")
        if self._unspilled:
            self._spill()
        if self._deferred:
            self._free_deferred()
        self._publish()  # idle: our counters to our slot
        if self._spin_auto and now - self._spin_checked > SPIN_RECHECK:
            self._spin_checked = now
            self._spin_budget = (self._spin_budget or MAX_SPIN) if spin_allowed() else 0.0
        # No lock here (a Dekker handshake): we store waiting, then a full barrier,
        # before looking at the ring; a sender stores the tail, then a semop (its
        # unlock, a barrier in the kernel) before looking at waiting. One of the two
        # always sees the other's store, so no wake-up is lost.
        i, W = self._i, self._W
        # A sender that saw our waiting word set may wake a sleep that never happened:
        # we found its message at the look below and returned, or (posting first, then
        # waking) it woke us after we had taken the message. Left on the semaphore, such
        # wake-ups ended later sleeps at once, and they piled up (a spin-off ping-pong:
        # 1652 after 3000 round trips), keeping a receiver that should sleep polling
        # (POST_WAIT) instead, up to SEMVMX. Taken off before each sleep, and at once
        # when the look finds the message (with only the first, spin-off ping-pongs
        # still fell into polling in some runs: 12-19 us one way against 23-29).
        self._unwoken(STALE_MAX)
        self._sleeps = self._sleeps % 0x7FFFFFFF + 1
        i[W] = self._sleeps  # which sleep: a sender that woke this one need not again
        try:
            if _fence is not None:
                _fence()  # a stale wake-up left on the semaphore only costs a loop
            else:
                try:
                    self._mywake.acquire()  # a semop: the barrier, where there is no fence
                    return
                except sysv_ipc.BusyError:
                    pass
            if self._q[self._T] != self._q[self._H] or self._q[self._R] == _RV_CLAIMED:
                self._unwoken(1)  # (a sender may have woken this sleep: see above)
                return
            woke = self._waiter.down(min(SLICE, deadline - now))
        except (ipc.Gone, sysv_ipc.ExistentialError):
            raise PvmError(PvmSysErr, "pvm_shmd removed our inbox (it exited)") from None
        finally:
            i[W] = 0
        if not woke:
            self._check_alive()
        elif self._q[self._T] == self._q[self._H] and self._q[self._R] != _RV_CLAIMED:
            # Woken before the message is there: a sender wakes us first and posts
            # after (a microsecond or two; taskbase.cpus_apart). Polling that long
            # beats sleeping again. The poll yields the CPU: on a busy host the wake-up
            # may have preempted the waker, which cannot post until we let it run.
            # Measured (8 B ping-pong, load 4 on 2 CPUs, every wake first): a busy poll
            # slept again 0.2-0.8 times a message, 31-39 us one way; a yielding one
            # never, 17-19 us.
            q, T, H, clock = self._q, self._T, self._H, time.perf_counter
            end = clock() + POST_WAIT
            while q[T] == q[H] and clock() < end:
                os.sched_yield()


    def _next_piece(self, src: int, deadline: float, mark: Desc) -> Desc | None:
        """The next piece of *src*'s message in flight, whose place in the queue *mark*
        holds; None if it was aborted, or *src* died or gave up before sending it (its
        slot's "sending" word no longer names us: the F_ABORT it owes us, when it
        comes, is dropped as _orphans says). PvmTimeout at *deadline*."""
        def match(d):
            return d.src == src and not d.flags & layout.F_FIRST

        while True:
            d = self._take_after(mark, match)
            if d is not None:
                return None if d.flags & layout.F_ABORT else d
            try:
                # from another host, it comes through pvm_netd: its slot says to whom
                sending = self._peer(src if not (src ^ self.tid) & TIDHOST
                                     else remote.route(self.vmid)["tid"]).sending_i
            except PvmError:
                d = self._take_after(mark, match)  # it may have sent, then died
                return None if d is None or d.flags & layout.F_ABORT else d
            if self._i[sending] != self.tid:
                # Not sending to us any more: all it posted before it said so is in
                # our ring now (it posts, then clears the word; we read the word, then
                # the ring). Nothing there: it gave up without an abort it could post.
                d = self._take_after(mark, match)
                if d is None:
                    self._orphans[src] = self._orphans.get(src, 0) + 1
                    return None
                return None if d.flags & layout.F_ABORT else d
            self._sleep(deadline)

    def _take_after(self, mark: Desc, match) -> Desc | None:
        """The first descriptor satisfying *match* that came after *mark* (pending,
        then ring); never block. A sender's earlier message in pieces may wait in the
        queue before *mark* with pieces of its own: they are not this message's."""
        if self._orphans:
            self._purge()
        pend = self._pending
        after = False
        for k, d in enumerate(pend):
            if d is mark:
                after = True
            elif after and match(d):
                del pend[k]
                self._i[self._P] = len(pend)
                return d
        found = self._drain(match)
        if self._orphans:
            self._purge()
        return found

    def _purge(self) -> None:
        """Drop the pieces and aborts still to come of messages we dropped mid-way
        (_orphans: per sender, how many such messages have not ended yet; a sender's
        descriptors arrive in order, so theirs come before any of its later ones)."""
        pend, orphans = self._pending, self._orphans
        k = 0
        while k < len(pend) and orphans:
            d = pend[k]
            c = orphans.get(d.src)
            if not c or d.flags & layout.F_FIRST:
                k += 1
                continue
            del pend[k]
            if d.seg >= 0:
                self._free(d.seg, d.page)
            if not d.flags & layout.F_MORE:  # its last piece, or its abort
                if c == 1:
                    del orphans[d.src]
                else:
                    orphans[d.src] = c - 1
        self._i[self._P] = len(pend)

    def _assemble(self, d: Desc, into, deadline: float = INF):
        """The data of the message whose first piece is *d*: bytes-like, or the byte
        count written into *into*; None if its sender gave up or died mid-message.
        At *deadline* (PvmTimeout, or any exception while waiting for a piece) what
        came so far is kept, in its place in the queue, for the next receive."""
        if not d.flags & layout.F_MORE:
            return self._copy_out(d, into)
        first = d
        if first.total > _MAX_TOTAL:
            if d.seg >= 0:
                self._free(d.seg, d.page)
            raise damaged(f"message from t{d.src:x} of {d.total} bytes (more than this "
                           "machine's memory)")
        pend = self._pending
        mark = _new(Desc, (0, 0, 0, -1, 0, 0, 0, 0, b""))  # its place; no receive takes it
        pend.insert(self._at if self._at is not None else len(pend), mark)
        whole = bytearray(first.total) if into is None else None
        out = into if whole is None else memoryview(whole)
        off = 0
        keep = None
        try:
            while True:
                if d.nbytes > first.total - off:
                    if d.seg >= 0:
                        self._free(d.seg, d.page)
                    if d.flags & layout.F_MORE:  # the rest will come: drop it then
                        self._orphans[d.src] = self._orphans.get(d.src, 0) + 1
                    raise PvmError(PvmBadMsg, f"message from t{d.src:x}: pieces hold more "
                                              f"than the {first.total} bytes the first said")
                self._copy_out(d, out[off:off + d.nbytes])
                off += d.nbytes
                if not d.flags & layout.F_MORE:
                    break
                try:
                    nxt = self._next_piece(d.src, deadline, mark)
                except BaseException:
                    keep = _new(Desc, (first.src, first.tag, off, -1, 0, 0,
                                        layout.F_FIRST | layout.F_MORE, first.total,
                                        bytes(out[:off])))
                    raise
                if nxt is None:
                    return None
                d = nxt
        finally:
            for k, x in enumerate(pend):
                if x is mark:
                    if keep is None:
                        del pend[k]
                    else:
                        pend[k] = keep
                    break
            self._i[self._P] = len(pend)
            if whole is not None:
                out.release()
        if off != first.total:
            raise PvmError(PvmBadMsg, f"message from t{d.src:x}: pieces hold {off} bytes, "
                                      f"the first said {first.total}")
        return off if whole is None else whole


    def _copy_out(self, d: Desc, into):
        """The data of the one piece *d*: bytes, or the byte count written into *into*
        (its pages are freed)."""
        if d.seg < 0:
            if into is None:
                return d.inline
            into[:d.nbytes] = d.inline
            return d.nbytes
        b = d.page * self._ps
        src = self._data[d.seg][b:b + d.nbytes]
        try:
            if into is None:
                return bytes(src)
            into[:d.nbytes] = src
            return d.nbytes
        finally:
            src.release()
            self._free(d.seg, d.page)

"""Direct delivery of large messages, as a Task takes part in it (both sides).

direct.py holds the protocol and does the copying; here is how a Task gets there.
A receiver posts its buffer in its slot's record (``_await_direct``: ``precv_into``
with a large buffer, or ``precv_view`` "into pages") and waits for a sender to claim
it, then copies its half (``_take_direct``, which first checks every word of the
record it will use). A sender of a large message looks for a posted record that
matches, waits a little for a busy receiver to post again (``_await_post``), claims it
under the receiver's inbox lock (``_claim``: only with the inbox empty, so order is
kept) and copies its half (``_send_direct``); anything else sends through the pages.
"""
from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable

from . import direct, ipc, layout, mutex
from .errors import PvmError, PvmNoMem, PvmTimeout
from .inbox import Inbox
from .message import Desc
from .taskbase import ANY, INF, MAX_SPIN, SLICE, Peer, damaged

_new = tuple.__new__
_OWNER, _F_FIRST = layout.MAP_OWNER, layout.F_FIRST
_RV_OPEN, _RV_CLAIMED, _RV_NONE = layout.RV_OPEN, layout.RV_CLAIMED, layout.RV_NONE


class Rendezvous(Inbox):
    """A large message straight into the receiver's buffer: ``_send_direct`` (the
    sender), ``_await_direct`` and ``_take_direct`` (the receiver)."""

    def _send_direct(self, peer: Peer, dest: int, tag: int, mv: memoryview, n: int,
                     deadline: float) -> bool:
        """Deliver straight into *dest*'s posted buffer if it is waiting for this
        message (see direct.py). False: it was not, or cross-memory attach failed
        (it is then off for this task); the caller sends through the pages."""
        q, i, r = self._q, self._i, peer.rv
        if q[r] != _RV_OPEN:
            # A receiver that spins and is busy in a receive that posts (taking earlier
            # messages), or that we just served, posts again soon: rather than queue
            # behind (it would copy out of the pages, and find its inbox never empty
            # again), wait while it empties its inbox and posts.
            if not q[r + layout.RV_SPINS] or not (q[r + layout.RV_ACTIVE]
                                                  or dest in self._served):
                return False
            if not self._await_post(peer, n, tag, deadline):
                self._served.discard(dest)
                return False
        # the path measured (or forced) for this size and this kind of receive
        if n < (self._paths.view_min if q[r + layout.RV_ADDR] == 0 else self._paths.into_min):
            return False
        src, chunk = direct.address(mv), direct.chunk_for(n)  # not under the lock
        run = None
        if q[r + layout.RV_ADDR] == 0:  # a precv_view: into a run of pages we pick
            if not self._posted_for(r, tag, n):
                return False
            try:
                run = self._alloc(-(-n // self._ps), 0.0)  # no waiting here for pages
            except PvmError as e:
                if e.code != PvmNoMem:
                    raise
                return False
        claimed = False
        try:
            claimed = self._claim(peer, dest, r, tag, n, src, chunk, run, deadline)
        finally:
            if run is not None and not claimed:
                self._free(*run)
        if not claimed:
            return False
        dst, pid, start = q[r + layout.RV_ADDR], i[peer.pid_i], q[peer.start_q]
        if i[peer.waiting_i] and not peer.rouse():
            return True  # it left meanwhile; so did its buffer
        if run is None:
            status = direct.send(q, r, pid, src, dst, n, chunk, lambda: ipc.alive(pid, start),
                                 deadline)
        else:
            status = direct.GONE
            try:
                status = direct.send(q, r, pid, src, dst, n, chunk,
                                     lambda: ipc.alive(pid, start), deadline,
                                     self._bases[run[0]] + run[1] * self._ps)
            finally:
                if status == direct.GONE:  # or an exception: the receiver waits for a
                    q[r + direct.DA] = 2  # verdict, or is dead (then pvm_shmd reads this)
                # pvm_shmd hands the run back to us if it reaped the receiver while we
                # still wrote into it: then we free it
                self._free(*run, only_if=self.tid)
        if status == direct.WITHDRAWN:
            return False  # the receiver's timeout ran out: into its inbox instead
        if status == direct.GAVE_UP:
            if run is None:  # cross-memory attach refused (into pages, the receiver
                self._direct = False  # could not read: we copied its part ourselves)
            return False
        if status == direct.LATE:
            raise PvmTimeout(f"t{dest:x} did not finish taking the message before the timeout")
        self._served.add(dest)
        return True

    def _claim(self, peer: Peer, dest: int, r: int, tag: int, n: int, src: int, chunk: int,
               run: tuple[int, int] | None, deadline: float) -> bool:
        """Claim *dest*'s posted record for our *n*-byte message under its inbox lock,
        if it still waits for it; a *run* of pages (segment, page) goes to it then."""
        q, i, lock = self._q, self._i, peer.lock
        try:
            if not lock.acquire(min(SLICE, max(deadline - time.monotonic(), 0.0))):
                return False
        except mutex.Broken:
            return False
        try:
            # the inbox is empty (head read before the record: the receiver closes the
            # record before it takes a message off the ring), the record open, and
            # this message is the one it waits for, and fits
            if (i[peer.tid_i] != dest or q[peer.head_q] != q[peer.tail_q] or q[r] != _RV_OPEN
                    or not self._posted_for(r, tag, n)
                    or (q[r + layout.RV_ADDR] == 0) != (run is not None)):
                return False
            if run is not None:
                s, p = run
                i[self._mapb[s] + _OWNER + p] = dest  # its run from now on
                q[r + layout.RV_ADDR] = layout.rv_run_word(s, p)
            i[2 * (r + layout.RV_FROM)], i[2 * (r + layout.RV_FROM) + 1] = self._src, tag
            q[r + layout.RV_PID], q[r + layout.RV_SRC] = self._pid, src
            q[r + layout.RV_N], q[r + layout.RV_CHUNK] = n, chunk
            for w in (direct.FA, direct.DA, direct.BB, direct.DB, direct.BFAIL):
                q[r + w] = 0
            q[r] = _RV_CLAIMED
            return True
        finally:
            lock.release()  # a full barrier: between the claim and the flag load

    def _await_post(self, peer: Peer, n: int, tag: int, deadline: float) -> bool:
        """Wait for the receiver *peer* to empty its inbox and post a
        buffer (True). Not for ever: not once it posts for another message, nor once
        it has been out of a receive for REPOST_WAIT, nor if it takes nothing off its
        inbox for REPOST_WAIT plus the time it takes to copy *n* bytes out."""
        q, h, t, r = self._q, peer.head_q, peer.tail_q, peer.rv
        patience = direct.REPOST_WAIT + n / direct.COPY_RATE
        seen = q[h]
        clock = time.perf_counter
        start = since = active = clock()
        while True:
            state = q[r]
            if state == _RV_OPEN:
                if not self._posted_for(r, tag, n):
                    return False  # it waits for another message
                if q[h] == q[t]:
                    return True
            now = clock()
            if q[h] != seen:
                seen, since = q[h], now
            elif now - since > patience:
                return False
            if q[r + layout.RV_ACTIVE]:
                active = now
            elif now - active > direct.REPOST_WAIT:
                return False
            if time.monotonic() >= deadline:
                return False
            if now - start > MAX_SPIN:
                time.sleep(20e-6)

    def _posted_for(self, r: int, tag: int, n: int) -> bool:
        """The buffer posted in the record at word *r* takes our *n*-byte message with
        *tag* (its source and tag, or wildcards, and its size)."""
        i = self._i
        return (i[2 * (r + layout.RV_MATCH)] in (ANY, self._src)
                and i[2 * (r + layout.RV_MATCH) + 1] in (ANY, tag)
                and self._q[r + layout.RV_CAP] >= n)


    def _await_direct(self, into: memoryview | None, source: int, tag: int, deadline: float):
        """Post *into* (None: "into pages", for precv_view) and wait, spinning then
        sleeping as ``_take`` does, until a sender claims it (then copy with it:
        (src, tag, nbytes), or into pages the Desc of the message; None if it gave up)
        or the inbox gets a message (None). Posting and closing are plain stores: a
        sender claims only under the inbox lock and with the inbox empty, and we close
        before we take anything off it."""
        q, i, r, H, T = self._q, self._i, self._R, self._H, self._T
        i[2 * (r + layout.RV_MATCH)], i[2 * (r + layout.RV_MATCH) + 1] = source, tag
        if into is None:  # the sender picks a run of pages that one segment holds
            q[r + layout.RV_ADDR], q[r + layout.RV_CAP] = 0, min(self._npages) * self._ps
        else:
            q[r + layout.RV_ADDR], q[r + layout.RV_CAP] = direct.address(into), into.nbytes
        q[r + layout.RV_SPINS] = 1 if self._spin_budget else 0
        q[r] = _RV_OPEN
        try:
            head = q[H]
            clock = time.perf_counter
            budget = self._spin_budget
            start = clock()
            end = start + budget
            slept = False
            while q[T] == head and q[r] == _RV_OPEN:
                if clock() >= end:
                    slept = True
                    self._sleep(deadline)
            if slept and budget:  # (as _take: the spin follows the gaps between messages)
                self._adapt_spin(budget, clock() - start, True)
        except BaseException as e:
            try:
                with self._mylock_held():
                    claimed = q[r] == _RV_CLAIMED
                    if not claimed:
                        q[r] = _RV_NONE
            except (ipc.Gone, PvmError):
                claimed = q[r] == _RV_CLAIMED  # pvm_shmd is gone: nobody claims any more
            if not claimed:
                q[r] = _RV_NONE
                raise
            # a sender is already writing into the buffer: finish with it first (we
            # withdraw at once if our time ran out: it stops at its next chunk)
            got = self._take_direct(into, deadline)
            if got is not None and isinstance(e, PvmTimeout):
                return got  # it came in time after all
            if got is not None and into is None:  # whole in pages: queued first (it
                self._pending.appendleft(got)  # was next), not lost
                i[self._P] = len(self._pending)
                self._unspilled = True
            raise
        if q[r] == _RV_CLAIMED:
            return self._take_direct(into, deadline)
        q[r] = _RV_NONE  # before anything is taken off the ring
        return None

    def _take_direct(self, into: memoryview | None, deadline: float = INF):
        """Copy our part of the message a sender claimed our record for (into *into*,
        or None: into pages), and wait for its verdict: (src, tag, nbytes), or into
        pages the message's Desc; None if it gave up or died (a run of pages it gave
        us is then freed). Past *deadline* we withdraw (see direct.receive)."""
        q, i, r = self._q, self._i, self._R
        pages = into is None
        src, tag = i[2 * (r + layout.RV_FROM)], i[2 * (r + layout.RV_FROM) + 1]
        n, chunk = q[r + layout.RV_N], q[r + layout.RV_CHUNK]
        dst = q[r + layout.RV_ADDR]
        pid = q[r + layout.RV_PID]
        try:
            peer = self._peer(src)
            start, spid = q[peer.start_q], i[peer.pid_i]
        except PvmError:
            start, spid = -1, pid  # its slot is gone: so is it

        # Every word we index or loop with is checked against what we posted (our
        # buffer, its size) and what the sender must have computed from them.
        cap = min(self._npages) * self._ps if into is None else into.nbytes
        bad = None
        if not 0 < n <= cap or chunk != direct.chunk_for(n) or pid != spid:
            bad = f"{n} bytes in chunks of {chunk} from pid {pid} (t{src & 0xFFFFFFFF:x} " \
                  f"is pid {spid}) for a buffer of {cap}"
        elif pages:
            s, p = layout.rv_run(dst)
            want = -(-n // self._ps)
            if (not dst & layout.RV_PAGES or s >= self._nsegs
                    or p + want > self._npages[s]
                    or i[self._mapb[s] + p] != -want
                    or i[self._mapb[s] + _OWNER + p] != self.tid):
                bad = f"run word {dst:#x} for {n} bytes"
            else:
                dst = self._bases[s] + p * self._ps
        elif dst != direct.address(into):
            bad = f"buffer address {dst:#x}, we posted {direct.address(into):#x}"
        if bad is not None:
            if not q[r + direct.BFAIL]:
                q[r + direct.BFAIL] = direct.WITHDRAW  # a real sender stops
            q[r] = _RV_NONE
            raise damaged(f"our direct-delivery record: {bad}")

        # The sender is waited for as long as its process lives, whatever happens to
        # pvm_shmd: until it says it is done, it may still be writing into the buffer.
        try:
            alive: Callable[[], bool] = functools.partial(ipc.alive, pid, start)
            if deadline < INF:
                alive = direct.withdrawing(q, r, alive, deadline)
            ok = direct.receive(q, r, pid, q[r + layout.RV_SRC], dst, n, chunk, alive)
        finally:
            q[r] = _RV_NONE
        if not pages:
            return (src, tag, n) if ok else None
        if not ok:
            self._free(s, p)
            return None
        return _new(Desc, (src, tag, n, s, p, -(-n // self._ps), _F_FIRST, n, None))

    @contextlib.contextmanager
    def _mylock_held(self):
        """Our own inbox lock (senders claim our record under it)."""
        while not self._mylock.acquire(SLICE):
            self._check_alive()
        try:
            yield
        finally:
            self._mylock.release()

"""Sending: ``psend`` and the posting of descriptors to another task's inbox.

A message up to INLINE bytes travels in its descriptor, up to MEDIUM in the
descriptors after it (while the receiver's ring is no more than MEDIUM_FILL full);
a large one goes straight into a receiver that waits for it (rendezvous.py), else
through a run of pages, in pieces of up to a segment. ``_post`` appends a descriptor
under the receiver's inbox lock and wakes it if it sleeps; psend's first lines do the
same for the common small message with as few interpreter steps as we can, or hand
it to shmd._fast where it is built (fastpath.py: messages in the inbox, and in one run
of pages taken without waiting, ``_post_run``). A sender
far ahead of a busy receiver is paced (``_throttle``); one that gives up in the middle
of a message in pieces tells the receiver (``_abort``, or an abort owed: ``_owed``).
"""
from __future__ import annotations

import time

from . import layout, mutex, remote
from .errors import PvmBadParam, PvmError, PvmNoTask, PvmSysErr, PvmTimeout
from .message import DESC, as_bytes_view
from .remote import RemoteTid
from .rendezvous import Rendezvous
from .taskbase import INF, MASK64, MAX_SPIN, SLICE, Peer, damaged

MAX_TAG = 0x7FFFFFFF
IN_FLIGHT = 4 << 20  # paged bytes a receiver may have waiting before senders pause
STALL = 5e-3  # a receiver that takes nothing for this long is not paced (seconds)
ABORT_WAIT = 0.02  # how long past its deadline a sender that gives up mid-message tries
# to post F_ABORT (a full inbox: the abort is owed, and the receiver sees in our slot's
# "sending" word that we gave up)

_pack_desc = DESC.pack_into
_RING, _DESCSZ, _INL, _INLINE = layout.RING, layout.DESC, layout.D_INLINE, layout.INLINE
_MEDIUM = layout.MEDIUM
_F_FIRST, _F_SKIP = layout.F_FIRST, layout.F_SKIP
_PUBLISH_MASK = layout.PUBLISH_EVERY - 1
_SMALL_TYPES = (bytes, bytearray)  # what psend's fast path takes (len() is the byte count)


class Sending(Rendezvous):
    """``psend``, and ``_post``: a descriptor into another task's inbox."""

    def psend(self, dest: int, tag: int, data, timeout: float | None = None) -> None:
        """Send *data* (any contiguous buffer) to task *dest* with 0 <= *tag* < 2**31.

        Waits up to *timeout* seconds in all (None: for ever) for free pages, inbox
        room or a receiver taking a direct copy, then raises PvmTimeout (MemoryFull,
        code PvmNoMem, when it was pages it waited for); the message is then not sent."""
        p = self._peers.get(dest)
        if p is not None and type(data) in _SMALL_TYPES:
            # the common sends (every interpreter step counts): a known peer, the inbox
            # lock free, room in the ring. Compiled (fastpath.py): up to MEDIUM bytes in
            # the inbox, up to _run_max in one run of pages taken without waiting; in
            # Python: up to INLINE, with a tag seen before (its descriptor is cached, so
            # the tag is valid). Anything else takes the general path below, which
            # waits and reports errors.
            fx = p.fx
            n = len(data)
            if n <= _MEDIUM:
                if fx is not None:
                    sent = not self._owed and fx.post(self._src, tag, data)
                else:
                    hdr = self._hdrs.get(tag << 8 | n) if n <= _INLINE else None
                    sent = hdr is not None and not self._owed and self._post_small(p, dest, hdr, data)
            elif (fx is not None and n <= self._run_max and 0 <= tag <= MAX_TAG and not self._owed
                  and not self._deferred and self._q[p.posted_q] - self._q[p.consumed_q] <= IN_FLIGHT):
                run = self._sx.alloc_copy(data)
                sent = run is not None
                if sent and not fx.post_pages(self._src, tag, n, *run):
                    tr = fx.trace  # (traced: fx records only the posts it makes)
                    t = tr.stamp() if tr is not None else 0
                    self._post_run(dest, tag, n, run, INF if timeout is None else time.monotonic() + timeout)
                    if tr is not None:
                        tr.sent(t, dest, tag, n)
            else:
                sent = False
            if sent:
                self._ntx += 1  # (_sent, inline)
                self._btx += n
                if not self._ntx & _PUBLISH_MASK:
                    self._publish()
                return
        self._psend(dest, tag, data, timeout)

    def _psend(self, dest: int, tag: int, data, timeout: float | None = None) -> None:
        """psend past its fast path: every send, waiting as psend says. trace.py wraps
        it in a traced task whose fast path is compiled (which records its own)."""
        if not 0 <= tag <= MAX_TAG:
            raise PvmError(PvmBadParam, f"tag {tag} must be >= 0 and < 2**31")
        if type(data) is bytes:
            inline: bytes | memoryview = data  # posted as it is: no view to make
            n = len(data)
        else:
            inline = as_bytes_view(data)
            n = inline.nbytes
        deadline = INF if timeout is None else time.monotonic() + timeout
        try:
            peer = self._peer(dest)
        except RemoteTid:
            peer = None  # (sent outside the handler: its errors are not chained to this)
        if peer is None:
            return remote.send(self, dest, tag, inline, n, deadline)
        if self._owed and dest in self._owed:
            self._post(peer, dest, self._owed[dest], 0, -1, 0, 0, layout.F_ABORT, 0, None,
                       deadline)
            del self._owed[dest]
        elif self._owed:
            self._owed = {t: g for t, g in self._owed.items() if self._owes(t)}
        if n <= layout.INLINE:
            self._post(peer, dest, tag, n, -1, 0, 0, _F_FIRST, n, inline, deadline)
            if tag << 8 | n not in self._hdrs:
                self._hdr(tag, n)  # the next one with this tag and length takes the fast path
            self._sent(n)
            return
        if n <= layout.MEDIUM and self._post(peer, dest, tag, n, -1, 0, 0, _F_FIRST, n,
                                             inline, deadline, wait=False):
            self._sent(n)
            return  # in the inbox itself; with no room there, through the pages
        # (slices of bytes would copy)
        mv = inline if isinstance(inline, memoryview) else memoryview(inline)
        if n >= self._paths.least and self._direct and self._send_direct(peer, dest, tag, mv, n,
                                                                    deadline):
            self._sent(n)
            return
        self._throttle(peer, dest, deadline)
        ps, off, flags = self._ps, 0, _F_FIRST
        piece = self._maxpages * ps
        sx = self._sx
        if sx is not None and n <= piece:
            # compiled (fastpath.py): a run taken and filled without waiting, then posted
            # (a busy lock, no room: the loop below, which waits)
            if self._deferred:
                self._free_deferred()
            run = sx.alloc_copy(mv)
            if run is not None:
                self._post_run(dest, tag, n, run, deadline, peer)
                self._sent(n)
                return
        if n > piece:  # in pieces: our slot says to whom until the last one is posted
            self._i[self._S] = dest  # (a receiver waiting for a piece looks here)
        try:
            while off < n:
                chunk = min(n - off, piece)
                want = -(-chunk // ps)
                try:
                    s, page = self._alloc(want, deadline)
                except BaseException:
                    if off:  # the receiver must drop the pieces it already has
                        self._abort(peer, dest, tag)
                    raise
                try:
                    b = page * ps
                    self._data[s][b:b + chunk] = mv[off:off + chunk]
                    more = layout.F_MORE if off + chunk < n else 0
                    self._post(peer, dest, tag, chunk, s, page, want, flags | more, n, None,
                               deadline)
                except BaseException:
                    self._free(s, page)
                    if off:
                        self._abort(peer, dest, tag)
                    raise
                off += chunk
                flags = 0
        finally:
            if n > piece:
                self._i[self._S] = 0
        self._sent(n)

    def _post_run(self, dest: int, tag: int, n: int, run: tuple[int, int, int], deadline: float,
                  peer: Peer | None = None) -> None:
        """Post our message of *n* bytes in the run of pages *run* (segment, page,
        pages: shmd._fast.Segments filled it) to *dest*, waiting for room until
        *deadline*; the run is freed if it cannot be."""
        s, page, want = run
        try:
            if peer is None:
                peer = self._peer(dest)  # (the cached one may be stale: a new task)
            fx = peer.fx
            if fx is None or not fx.post_pages(self._src, tag, n, s, page, want):
                self._post(peer, dest, tag, n, s, page, want, _F_FIRST, n, None, deadline)
        except BaseException:
            self._free(s, page)
            raise

    def _post_small(self, p: Peer, dest: int, hdr: bytes, data: bytes | bytearray) -> bool:
        """psend's fast path in Python (shmd._fast's Route.post when compiled): post
        *hdr* and the small *data* to *dest* if its inbox lock is free and its ring has
        room; False, with nothing posted, otherwise."""
        i = self._i
        tid_i = p.tid_i
        # A receiver asleep is woken first, the message posted after: the wake-up
        # takes tens of microseconds to arrive, the posting one or two. One bound to
        # our one CPU is woken after (early = 0): it would preempt us and find
        # nothing (Peer.first: taskbase.cpus_apart). (Its slot is checked first: the
        # cached wake-up must still be that task's.)
        early = i[p.waiting_i]
        if early and i[tid_i] == dest:
            if p.first:
                p.rouse()
            else:
                early = 0
        lock = p.lock
        if not lock.try_acquire():
            return False  # busy
        q = self._q
        T = p.tail_q
        tail = q[T]
        if not 0 <= tail - p.seen < _RING:  # full, or a new task in the slot
            p.seen = q[p.head_q]
        # (a tail behind the head is damage: the general path names it; the slot's
        # serial tells a task that left and joined again with that tid: _peer's anew)
        if i[tid_i] == dest and i[p.serial_i] == p.serial and 0 <= tail - p.seen < _RING:
            d = p.ring + (tail % _RING) * _DESCSZ
            self._buf[d:d + _INL + len(data)] = hdr + data
            q[T] = tail + 1
            lock.release()  # (a full barrier: between the tail store and the flag load)
            # Asleep in a sleep we did not wake (or did not wake early): wake it.
            # Still in the one we woke: it looks at the ring once awake and, before
            # it sleeps again, stores a new number and looks again after a barrier
            # (one of us sees the other's store: the Dekker handshake).
            w = i[p.waiting_i]
            if w and w != early:
                p.rouse()
            return True
        lock.release()
        return False

    def _hdr(self, tag: int, n: int) -> bytes:
        """The descriptor of a small message from us (cached: it is the same for
        every message with that tag and length)."""
        if len(self._hdrs) > 1024:
            self._hdrs.clear()
        h = self._hdrs[tag << 8 | n] = DESC.pack(self._src, tag, n, -1, 0, 0, _F_FIRST, n)
        return h

    def _throttle(self, peer: Peer, dest: int, deadline: float) -> None:
        """Pace a sender that is far ahead of a receiver that is busy receiving: while
        more than IN_FLIGHT bytes of paged messages wait in *dest*'s inbox, wait for it
        to take some (the data is then still in cache when it is read). A receiver
        that takes nothing for STALL seconds is not receiving: we do not wait for it,
        so buffering (up to the memory) is as before and nothing deadlocks on it."""
        q, P, C = self._q, peer.posted_q, peer.consumed_q
        if q[P] - q[C] <= IN_FLIGHT:
            return
        seen, since = q[C], time.perf_counter()
        delay = 0.0
        while q[P] - q[C] > IN_FLIGHT:
            now = time.perf_counter()
            if q[C] != seen:
                seen, since = q[C], now
            elif now - since > STALL:
                return
            if time.monotonic() >= deadline:
                raise PvmTimeout(f"t{dest:x} receives too slowly "
                                 f"({q[P] - q[C]} bytes waiting in its inbox)")
            if now - since > MAX_SPIN:  # poll briefly first: it frees room in microseconds
                delay = min(max(delay * 2, 20e-6), 1e-3)
                time.sleep(delay)

    def _abort(self, peer: Peer, dest: int, tag: int) -> None:
        """Tell *dest* that the message in pieces we were sending will not be finished.
        If its inbox stays full for ABORT_WAIT, the abort is owed: posted before our
        next message to it. Our "sending" word, cleared first, tells it meanwhile."""
        self._i[self._S] = 0
        try:
            self._post(peer, dest, tag, 0, -1, 0, 0, layout.F_ABORT, 0, None,
                       time.monotonic() + ABORT_WAIT)
        except PvmError as e:
            if e.code != PvmNoTask and e.code != PvmSysErr:
                self._owed[dest] = tag

    def _owes(self, dest: int) -> bool:
        """Is *dest*, to which we owe an abort, still a task (else forget the debt)?"""
        try:
            self._peer(dest)
            return True
        except PvmError:
            return False

    def _post(self, peer: Peer, dest: int, tag: int, n: int, s: int, p: int, npages: int,
              flags: int, total: int, inline: bytes | memoryview | None, deadline: float,
              wait: bool = True) -> bool:
        """Queue a descriptor in *dest*'s inbox (with *n* bytes of *inline* data after
        it when *s* < 0), waiting until *deadline* for room; or, if not *wait* (a medium
        message), return False at once unless the ring is filled no further than
        MEDIUM_FILL. A sleeping receiver is woken first, unless it is bound to our one
        CPU: then once the descriptor is there (Peer.first)."""
        lock = peer.lock
        q, i = self._q, self._i
        H, T = peer.head_q, peer.tail_q
        need = 1 if s >= 0 else layout.span(n)
        # woken now (unless on our one CPU), it is back about when the message is there;
        # early: the number of the sleep we woke
        early = i[peer.waiting_i] if peer.first else 0
        if early:
            peer.rouse()
        delay = 20e-6
        while True:
            try:
                # held long only by a stopped holder: not past our deadline for it
                got = lock.acquire(min(SLICE, max(deadline - time.monotonic(), 0.0)))
            except mutex.Broken as err:
                self._check_alive()  # pvm_shmd reset the segment: PvmSysErr
                raise damaged(f"inbox lock of t{dest:x}: {err}") from None
            if got:
                if i[peer.tid_i] & 0xFFFFFFFF != dest:
                    lock.release()
                    self._check_alive()
                    raise PvmError(PvmNoTask, f"t{dest:x} exited")
                tail = q[T]
                used = tail - q[H]
                if not 0 <= used <= _RING:  # the head only grows, up to the tail
                    lock.release()
                    raise damaged(f"inbox of t{dest:x}: head {q[H]}, tail {tail}")
                k = tail % _RING
                fill = _RING - k if k + need > _RING else 0  # a message does not wrap
                if used + fill + need <= (_RING if wait else layout.MEDIUM_FILL):
                    break
                lock.release()
                if not wait:
                    return False
            left = deadline - time.monotonic()
            if left <= 0:
                raise PvmTimeout(f"inbox of t{dest:x} full (it does not receive)" if got
                                 else f"inbox of t{dest:x} stayed locked")
            self._check_alive()
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5e-3)
        ring = peer.ring
        if fill:
            _pack_desc(self._buf, ring + k * _DESCSZ, self._src, 0, fill * _DESCSZ - _INL,
                       -1, 0, 0, _F_SKIP, 0)
            tail += fill
        d = ring + (tail % _RING) * _DESCSZ
        _pack_desc(self._buf, d, self._src, tag, n, s, p, npages, flags, total)
        if inline is not None and n:
            self._buf[d + _INL:d + _INL + n] = inline
        if s >= 0:
            q[peer.posted_q] = (q[peer.posted_q] + n) & MASK64
        q[T] = tail + need
        lock.release()  # a full barrier, between our tail store and the flag load
        w = i[peer.waiting_i]
        if w and w != early:  # asleep in a sleep we did not wake (see psend)
            peer.rouse()  # (gone meanwhile: the message went with it)
        return True

"""Receiving: ``precv``, ``precv_into``, ``precv_view``, ``probe``.

The common case, nothing pending and a small message next in our ring (after a spin,
or one sleep), is taken in as few interpreter steps as we can: by shmd._fast's
``Inbox.take`` where it is built (fastpath.py; also a message in one run of pages),
in ``precv`` and ``precv_into`` themselves (and by ``Inbox.take_run`` in ``precv_view``:
a message in one run of pages, left there); else (and after that take found nothing)
inline in ``_precv`` and in ``_next_small`` for ``_precv_into`` (keep the two in
step). Everything else goes
through ``_receive``: the first match from the pending queue or the ring (inbox.py),
put together if it came in pieces; a large ``precv_into`` buffer, and ``precv_view``
on a receiver that spins, are posted for direct delivery while nothing matching is
queued (rendezvous.py).
"""
from __future__ import annotations

import time

from . import layout, remote
from .calibrate import NEVER
from .errors import PvmBadParam, PvmError, PvmOverflow
from .message import DESC, Desc, Matcher, Message, MessageView, as_bytes_view, small_desc
from .rendezvous import Rendezvous
from .taskbase import ANY, INF
from .tids import TIDHOST

_unpack_desc = DESC.unpack_from
_new = tuple.__new__
_RING, _DESCSZ, _INL, _INLINE = layout.RING, layout.DESC, layout.D_INLINE, layout.INLINE
_MEDIUM, _F_FIRST, _RV_ACTIVE = layout.MEDIUM, layout.F_FIRST, layout.RV_ACTIVE
_clock = time.perf_counter


class Receiving(Rendezvous):
    """The receive calls of a Task."""

    def precv(self, source: int = ANY, tag: int = ANY, timeout: float | None = None) -> Message:
        """Receive the first message from *source* with *tag* (-1: any). Waits up to
        *timeout* seconds (None: for ever) for it to start arriving, then raises
        PvmTimeout. ``data`` is bytes (a bytearray for a message sent in pieces)."""
        fx = self._fx
        if fx is not None and not self._pending:
            # compiled (fastpath.py): the spin, then a small message that matches
            if self._nrx >= self._pub_at:  # our counters to our slot, now and then
                self._publish()
            m = fx.take(source, tag, self._spin_budget if timeout != 0 else 0.0)
            if m is not None:
                self._spun = False
                self._nrx += 1  # (_received, inline)
                self._brx += len(m[2])
                return m
            return self._precv(source, tag, timeout, 0.0)  # (spun already: sleep, or the rest)
        return self._precv(source, tag, timeout, None)

    def _precv(self, source: int, tag: int, timeout: float | None,
               budget: float | None) -> Message:
        """precv past the compiled fast path (all of it without one): spin *budget*
        seconds (None: ours), sleep, take. trace.py wraps it in a traced task."""
        deadline = None
        if not self._pending:
            if budget is None:
                budget = self._spin_budget if timeout != 0 else 0.0
            # _next_small, inline (keep the two in step): the receive every small
            # message takes. Calling it instead costs ~0.05 us a message, measured:
            # 2.74-2.76x mpi4py's ping-pong latency became 2.83-3.04x, the floor being 3x.
            q, H, T = self._q, self._H, self._T
            head = q[H]
            if head == q[T] and timeout != 0:
                if self._nrx >= self._pub_at:  # idle: our counters to our slot, now and
                    self._publish()  # then (a receive that goes on to sleep always does)
                if budget:
                    clock = _clock
                    end = clock() + budget
                    # three looks per clock reading: a message is seen sooner
                    while q[T] == head and q[T] == head and q[T] == head and clock() < end:
                        pass
                if head == q[T]:
                    # Sleep here (once: a wake-up, a slice or the deadline), not in the
                    # general path: what runs between a wake-up and the reply is on the
                    # critical path, and it runs slowly (cold caches).
                    self._spun = True  # the general path sleeps without spinning again
                    deadline = INF if timeout is None else time.monotonic() + timeout
                    self._sleep(deadline)
            # something queued, and no more than the ring holds (a damaged head or
            # tail takes the general path, which names it)
            if 0 < q[T] - head <= _RING:
                off = self._ring + (head % _RING) * _DESCSZ
                # src, tag, nbytes, seg, flags and the data, in one call, guessing the
                # length of the last small message (a wrong guess costs a slice)
                f = self._rx.unpack_from(self._buf, off)
                if (f[3] < 0 and f[4] == _F_FIRST and (source == ANY or f[0] == source)
                        and (tag == ANY or f[1] == tag)):
                    data = f[5]
                    if len(data) != f[2]:
                        data, span = self._unguessed(off, f[2], head)
                        head += span - 1
                    q[H] = head + 1
                    self._spun = False
                    self._nrx += 1  # (_received, inline)
                    self._brx += f[2]
                    return _new(Message, (f[0], f[1], data))
                if (f[3] >= 0 and f[4] == _F_FIRST and (source == ANY or f[0] == source)
                        and (tag == ANY or f[1] == tag)):
                    # a whole message in one run of pages: no queue, no Desc (64 KiB
                    # streams spent a third of the receive in the general path)
                    data = self._take_paged(off, head, None)
                    if data is not None:
                        self._spun = False
                        self._nrx += 1  # (_received, inline)
                        self._brx += len(data)
                        return _new(Message, (f[0], f[1], data))
        got = self._receive(source, tag, timeout, deadline=deadline)
        self._received(len(got[2]))
        return _new(Message, got)

    def _unguessed(self, off: int, n: int, head: int) -> tuple[bytes, int]:
        """The *n* inline bytes of the descriptor at *off* (number *head*) when the
        receive fast path guessed another length, and the descriptors it takes. A
        small length is the next guess; a medium message's bytes run on through the
        next descriptors (before the ring's end and the tail, or it is damage)."""
        span = layout.span(n)
        if n > _MEDIUM or head % _RING + span > _RING or head + span > self._q[self._T]:
            raise self._bad_desc(head, _unpack_desc(self._buf, off))
        if n <= _INLINE:
            self._rx = small_desc(n)
        return self._buf[off + _INL:off + _INL + n].tobytes(), span

    def _next_small(self, source: int, tag: int, timeout: float | None, into: memoryview,
                    budget: float):
        """The common case of a receive, in as few interpreter steps as we can: nothing
        pending, and the next message in the ring (after a spin of *budget* seconds, or
        one sleep, if it is empty) is a small one, or one in one run of pages, that
        matches and fits in *into*. Returns (message, deadline): the message (src, tag,
        data) taken off the ring (a paged one is copied into *into* here: data is then
        its length), or None for the general path, with the deadline already running if
        we slept (else None). ``_precv`` has this inline (keep the two in step)."""
        room = into.nbytes
        q, H, T = self._q, self._H, self._T
        head = q[H]
        deadline = None
        if head == q[T] and timeout != 0:
            if self._nrx >= self._pub_at:
                self._publish()
            if budget:
                clock = _clock
                end = clock() + budget
                while q[T] == head and q[T] == head and q[T] == head and clock() < end:
                    pass
            if head == q[T]:
                self._spun = True  # the general path sleeps without spinning again
                deadline = INF if timeout is None else time.monotonic() + timeout
                self._sleep(deadline)
        if 0 < q[T] - head <= _RING:  # (damage takes the general path, which names it)
            off = self._ring + (head % _RING) * _DESCSZ
            f = self._rx.unpack_from(self._buf, off)
            if (f[3] < 0 and f[4] == _F_FIRST and f[2] <= room
                    and (source == ANY or f[0] == source) and (tag == ANY or f[1] == tag)):
                data = f[5]
                if len(data) != f[2]:
                    data, span = self._unguessed(off, f[2], head)
                    head += span - 1
                q[H] = head + 1
                self._spun = False
                return (f[0], f[1], data), None
            if (f[3] >= 0 and f[4] == _F_FIRST and (source == ANY or f[0] == source)
                    and (tag == ANY or f[1] == tag)):
                n = self._take_paged(off, head, into)
                if n is not None:
                    self._spun = False
                    return (f[0], f[1], n), None
        return None, deadline

    def precv_into(self, buffer, source: int = ANY, tag: int = ANY,
                   timeout: float | None = None) -> tuple[int, int, int]:
        """Receive straight into *buffer*; return (src, tag, nbytes). A message larger
        than the buffer raises PvmError(PvmOverflow) and stays queued."""
        mv = as_bytes_view(buffer)
        if mv.readonly:
            raise PvmError(PvmBadParam, "receive buffer is read-only")
        fx = self._fx
        if fx is not None and not self._pending and (mv.nbytes < self._paths.into_min
                                                     or not self._direct):
            # compiled (fastpath.py), as in precv
            if self._nrx >= self._pub_at:
                self._publish()
            got = fx.take(source, tag, self._spin_budget if timeout != 0 else 0.0, mv)
            if got is not None:
                self._spun = False
                self._received(got[2])
                return got
            return self._precv_into(mv, source, tag, timeout, 0.0)
        return self._precv_into(mv, source, tag, timeout, None)

    def _precv_into(self, mv: memoryview, source: int, tag: int, timeout: float | None,
                    budget: float | None) -> tuple[int, int, int]:
        """precv_into past the compiled fast path (all of it without one), as _precv."""
        deadline = None
        if not self._pending and (mv.nbytes < self._paths.into_min or not self._direct):
            if budget is None:
                budget = self._spin_budget if timeout != 0 else 0.0
            got, deadline = self._next_small(source, tag, timeout, mv, budget)
            if got is not None:
                data = got[2]
                if data.__class__ is int:
                    self._received(data)
                    return got  # (paged: already in mv)
                n = len(data)
                mv[:n] = data
                self._received(n)
                return got[0], got[1], n
        src, tag, n = self._receive(source, tag, timeout, into=mv, deadline=deadline)
        self._received(n)
        return src, tag, n

    def precv_view(self, source: int = ANY, tag: int = ANY,
                   timeout: float | None = None) -> MessageView:
        """Receive without copying: a MessageView on the shared pages, to release.
        A message that came inline (small) or in pieces (larger than a segment), or
        that was moved out of the pages while we waited, is a private copy."""
        far = source > 0 and (source ^ self.tid) & TIDHOST  # another host's: watch it
        both = self._direct and self._spin_budget and self._paths.view_min < NEVER and not far
        fx = self._fx
        if fx is not None and not self._pending and not far:
            # compiled (fastpath.py): a message next in our ring in one run of pages,
            # taken off it and left there (after the spin, unless it may come into
            # pages by both of us, below). Measured: 64 KiB streamed at 0.6x precv's
            # speed through the general path, the receiver's Python the bottleneck.
            if self._nrx >= self._pub_at:
                self._publish()
            spin = self._spin_budget if timeout != 0 and not both else 0.0
            run = fx.take_run(source, tag, spin)
            if run is not None:
                self._spun = False
                return self._view(_new(Desc, (*run, _F_FIRST, run[2], None)), run[3], run[4], run[2])
            self._spun = spin > 0  # (spun already: the general path sleeps at once)
        deadline = INF if timeout is None else time.monotonic() + timeout
        match = self._matcher(source, tag)
        while True:
            # Nothing queued: a large message may come into pages, both of us copying.
            # Only for a receiver that spins: one asleep helps late, and measured, a
            # stream with the spin off got slower (11-12 GB/s against 12-13 at 1 MiB).
            if both:
                d = self._take(match, deadline, block=False)
                if d is None:
                    self._q[self._R + _RV_ACTIVE] = 1
                    try:
                        d = self._await_direct(None, source, tag, deadline)
                    finally:
                        self._q[self._R + _RV_ACTIVE] = 0
            elif far:
                d = remote.take(self, match, source, deadline)
            else:
                d = self._take(match, deadline)  # (blocking: never None)
            if d is None:
                continue  # the inbox got something, or the sender gave up
            if d.seg >= 0 and not d.flags & layout.F_MORE:
                return self._view(d, d.seg, d.page, d.nbytes)
            data = self._assemble(d, None, deadline)
            if data is not None:
                self._received(len(data))
                return MessageView(self, d._replace(seg=-1), memoryview(data))

    def _view(self, d: Desc, s: int, p: int, n: int) -> MessageView:
        """The view on message *d*, received whole into the run at page *p* of our
        segment *s* (ours now, freed when the view is released)."""
        b = p * self._ps
        v = MessageView(self, d, self._data[s][b:b + n])
        self._mviews.add(v)
        self._received(n)
        return v

    def probe(self, source: int = ANY, tag: int = ANY) -> tuple[int, int, int] | None:
        """(src, tag, total bytes) of the first matching message waiting, else None."""
        self._drain(lambda d: False)
        match = self._matcher(source, tag)
        for d in self._pending:
            if match(d):
                return d.src, d.tag, d.total
        return None



    def _receive(self, source: int, tag: int, timeout: float | None, into=None,
                 deadline: float | None = None):
        """Take a whole message: (src, tag, data) where data is bytes-like, or the byte
        count written into *into*. A large *into* is posted for direct delivery while
        nothing matching is queued (see direct.py). *deadline*, if given, is the one
        computed from *timeout* when the caller already waited."""
        if deadline is None:
            deadline = INF if timeout is None else time.monotonic() + timeout
        match = self._matcher(source, tag)
        if source > 0 and (source ^ self.tid) & TIDHOST:  # from another host: watch it
            return remote.receive(self, match, source, deadline, into)
        post = into is not None and into.nbytes >= self._paths.into_min and self._direct
        if post:
            self._q[self._R + _RV_ACTIVE] = 1
            try:
                return self._receive_posting(match, source, tag, deadline, into)
            finally:
                self._q[self._R + _RV_ACTIVE] = 0
        while True:
            d = self._take(match, deadline)
            got = self._whole(d, into, deadline)
            if got is not None:
                return got

    def _receive_posting(self, match, source: int, tag: int, deadline: float, into):
        """_receive for a buffer that direct delivery can fill."""
        while True:
            d = self._take(match, deadline, block=False)
            if d is None:
                got = self._await_direct(into, source, tag, deadline)
            else:
                got = self._whole(d, into, deadline)
            if got is not None:
                return got
            # the inbox got something, or the sender gave up or died: look again

    def _whole(self, d: Desc, into, deadline: float = INF):
        """(src, tag, data) of the message *d* starts, once all its pieces are in;
        None if its sender gave up or died mid-message (it is then dropped)."""
        if into is not None and d.total > into.nbytes:
            self._put_back(d)
            raise PvmError(PvmOverflow, f"message of {d.total} bytes from t{d.src:x} does "
                                        f"not fit in {into.nbytes} bytes (kept)")
        data = self._assemble(d, into, deadline)
        return None if data is None else (d.src, d.tag, data)


    def _matcher(self, source: int, tag: int) -> Matcher:
        """The test a queued descriptor passes to be what a receive asks for (cached)."""
        m = self._matchers.get((source, tag))
        if m is None:
            if len(self._matchers) > 256:
                self._matchers.clear()
            m = self._matchers[source, tag] = self._make_matcher(source, tag)
        return m

    @staticmethod
    def _make_matcher(source: int, tag: int) -> Matcher:
        if source == ANY and tag == ANY:
            return lambda d: d.flags & _F_FIRST
        if source == ANY:
            return lambda d: d.flags & _F_FIRST and d.tag == tag
        if tag == ANY:
            return lambda d: d.flags & _F_FIRST and d.src == source
        return lambda d: d.flags & _F_FIRST and d.src == source and d.tag == tag

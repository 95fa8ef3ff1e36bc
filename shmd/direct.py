"""Direct delivery of large messages: one copy, done by both processes at once.

A receiver blocked in ``precv_into`` with a large buffer posts that buffer in its
slot's record (``layout.RV_*``). A sender of a large message that finds the record
open, matching and its inbox empty claims it under the inbox lock, and the message
goes straight from the sender's buffer into the receiver's with cross-memory attach
(``process_vm_writev`` by the sender, ``process_vm_readv`` by the receiver): no
shared pages, no second copy. The two split the work without a lock: the sender
takes chunks from the front, the receiver from the back, each announcing a chunk
before copying it and then (after a full barrier) looking at the other's count.
In Dekker's way one of the two always sees the other's claim; a chunk both claimed
is copied twice with the same bytes, which is harmless, and none is left out:

- the sender copies every chunk it claimed, and stops when it reaches the receiver's;
- the receiver backs off a chunk the sender also claimed (the sender copies it);
- the sender, before it returns (its buffer may then change), waits until the
  receiver is done with every chunk the sender saw it claim; a claim it did not see
  is one the receiver backs off from.

A receiver blocked in ``precv_view`` posts the same record with no buffer (address
0): "into pages". The sender then allocates a run of pages, hands it to the receiver
(page owner, and the record's address word: ``RV_PAGES | segment << 32 | page``) as it
claims, and the two copy the same way into the run: the sender with a plain memmove
into its mapping, the receiver with ``process_vm_readv`` into its own. From the claim
on the run is the receiver's: it frees it if the message does not come whole. If the
receiver dies while the sender still writes (no DA yet), pvm_shmd gives the run back
to the sender instead of freeing it, and the sender, once done, frees a run it finds
its own again (both under the segment's semaphore). So a zero-copy receive of a large
message costs the sender half a copy, not a whole one.

The sender's DA word ends it: 1 delivered, 2 given up (the receiver drops what it
got; the message then goes through the pages, or, when psend's timeout ran out, is
not sent). Each side waits for the other only while the other's process lives (its
pid and start time), whatever becomes of pvm_shmd.

A receiver whose timeout runs out while a sender copies withdraws: it writes
``WITHDRAW`` in the BFAIL word (unless its own reads failed). The sender looks at it
before each of its chunks and stops (WITHDRAWN: the message then goes through the
pages), so the receiver has its verdict within one chunk's copy. It still waits for
that verdict: until then the sender may be writing into its buffer. Only a sender
that is stopped (SIGSTOP) holds a receiver past its timeout that way.

Every count read from the record is bounded by what this side knows (the number of
chunks), so no loop here runs longer because the record was scribbled on; the
receiver's caller checks the record's words before it calls ``receive``.

The barrier is ``ipc.fence`` (an atomic exchange), which exists on x86-64 only:
elsewhere direct delivery stays off (``available()``).
"""
from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Callable

from . import layout
from .ipc import _libc, fence

FA, DA, BB, DB, BFAIL = layout.RV_FA, layout.RV_DA, layout.RV_BB, layout.RV_DB, layout.RV_BFAIL
CHUNK = 128 << 10  # the smallest piece one side claims at a time ...
HALF = 512 << 10  # ... messages up to twice this go in two pieces, bigger ones in PIECES
PIECES = 16
SPIN = 200e-6  # how long a wait for the other side polls before it sleeps (seconds)
REPOST_WAIT = 50e-6  # how long a sender waits for a receiver out of a receive (seconds),
COPY_RATE = 4e9  # or one taking nothing off its inbox, plus the time to copy out at this rate
CHECK = 0.01  # how often a longer wait checks that the other side lives (seconds)
OK, GAVE_UP, GONE, LATE, WITHDRAWN = 0, 1, 2, 3, 4
WITHDRAW = 2  # BFAIL value: the receiver's timeout ran out, the sender stops (1: reads failed)


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int),
                ("ndim", ctypes.c_int), ("format", ctypes.c_char_p),
                ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


for _f in (_libc.process_vm_readv, _libc.process_vm_writev):
    _f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p,
                   ctypes.c_ulong, ctypes.c_ulong]
    _f.restype = ctypes.c_ssize_t
_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
def address(buf) -> int:
    """Address of the first byte of a contiguous buffer (keep *buf* alive meanwhile)."""
    view = _PyBuffer()
    _get_buffer(buf, ctypes.byref(view), 0)
    try:
        return view.buf
    finally:
        _release_buffer(ctypes.byref(view))


_memmove = ctypes.memmove


def _copy(fn, pid: int, local: int, remote: int, n: int) -> int:
    """Bytes copied by process_vm_writev/readv, or -errno."""
    lv, rv = _Iovec(local, n), _Iovec(remote, n)
    got = fn(pid, ctypes.byref(lv), 1, ctypes.byref(rv), 1, 0)
    return got if got >= 0 else -ctypes.get_errno()


def available() -> bool:
    """Cross-memory attach works here (x86-64, and the kernel lets us use it)."""
    if fence is None:
        return False
    src, dst = ctypes.create_string_buffer(b"x" * 8), ctypes.create_string_buffer(8)
    return _copy(_libc.process_vm_readv, os.getpid(), ctypes.addressof(dst),
                 ctypes.addressof(src), 8) == 8


def chunk_for(n: int) -> int:
    """Size of the pieces the two sides share *n* bytes in: large enough that the
    cost of a call is small beside its copy, small enough to share the work out."""
    return layout.round_up(max(CHUNK, min(-(-n // 2), HALF), -(-n // PIECES)), 4096)


def wait(done: Callable[[], bool], alive: Callable[[], bool],
         deadline: float = float("inf")) -> int:
    """Poll *done* (briefly busy, then sleeping a little longer each time) until it
    holds (OK), *alive* says the other side is gone (GONE) or *deadline* (monotonic)
    passes (LATE)."""
    start = time.perf_counter()
    while time.perf_counter() - start < SPIN:
        if done():
            return OK
    delay, checked = 20e-6, time.monotonic()
    while not done():
        now = time.monotonic()
        if now >= deadline:
            return OK if done() else LATE
        if now - checked > CHECK:
            if not alive():
                return OK if done() else GONE
            checked = now
        time.sleep(delay)
        delay = min(delay * 2, 1e-3)
    return OK


def send(q, r: int, pid: int, src: int, dst: int, n: int, chunk: int,
         alive: Callable[[], bool], deadline: float = float("inf"), local: int = 0) -> int:
    """The sender's part, once it has claimed the record at word *r* of *q* (the
    receiver's pid, buffer address *dst*; or, with *local*, shared pages the receiver
    reads into at its own address and we write at *local*): OK; GAVE_UP (the receiver
    drops the message: send it another way); GONE (the receiver died); LATE (the
    receiver, stopped, did not finish its pieces before *deadline*: it drops the
    message, which is not sent; what it may still read of our buffer it throws away);
    WITHDRAWN (the receiver's timeout ran out: it drops the message, send it another
    way)."""
    if local:
        def put(off: int, ln: int) -> int:
            _memmove(local + off, src + off, ln)
            return ln
    else:
        def put(off: int, ln: int) -> int:
            return _copy(_libc.process_vm_writev, pid, src + off, dst + off, ln)
    k, last, status = 0, -(-n // chunk), OK
    # Before each piece, a fresh look at how far the receiver has come from the back
    # (a stale one would have us copy a piece it is copying too: harmless, but slow).
    while k < last - q[r + BB]:
        if q[r + BFAIL] == WITHDRAW:
            status = WITHDRAWN
            break
        q[r + FA] = k + 1
        fence()
        off = k * chunk
        ln = min(chunk, n - off)
        got = put(off, ln)
        if got != ln:
            status = GONE if got == -errno.ESRCH else GAVE_UP
            break
        k += 1
    fence()
    theirs = min(q[r + BB], last)  # any piece it takes after this, it sees ours and leaves
    if status == GONE:
        return GONE
    # the receiver may still be reading our buffer: wait for every chunk we saw it take
    waited = wait(lambda: q[r + DB] >= theirs, alive, deadline)
    if waited == GONE:
        return GONE
    if waited == LATE:
        q[r + DA] = 2
        return LATE
    if status == OK and q[r + BFAIL] == 1:
        # it could not read them after all: we copy its chunks ourselves
        for c in range(last - theirs, last):
            off = c * chunk
            if put(off, min(chunk, n - off)) != min(chunk, n - off):
                status = GAVE_UP
                break
    q[r + DA] = 1 if status == OK else 2
    return status


def receive(q, r: int, pid: int, src: int, dst: int, n: int, chunk: int,
            alive: Callable[[], bool]) -> bool:
    """The receiver's part of a claimed record: copy chunks from the back until they
    meet the sender's, then wait for the sender's verdict. True if the message is
    whole in our buffer; False if the sender gave up or died. (*alive*, called every
    CHECK while we wait, is where the caller withdraws once its time is up: see
    ``withdrawing``.)"""
    last = -(-n // chunk)
    j = 0
    while j < last:
        c = last - 1 - j
        if c < q[r + FA]:
            break  # the sender has taken it (and everything below)
        q[r + BB] = j + 1
        fence()
        if c < q[r + FA]:
            q[r + DB] = j + 1  # it took this one too: it copies it
            break
        off = c * chunk
        ln = min(chunk, n - off)
        if _copy(_libc.process_vm_readv, pid, dst + off, src + off, ln) != ln:
            q[r + BFAIL] = 1
            q[r + DB] = j + 1
            break
        j += 1
        q[r + DB] = j
    return wait(lambda: q[r + DA] != 0, alive) == OK and q[r + DA] == 1


def withdrawing(q, r: int, alive: Callable[[], bool], deadline: float) -> Callable[[], bool]:
    """*alive* for ``receive`` that, once *deadline* (monotonic) has passed, also
    withdraws the receiver (WITHDRAW in BFAIL, unless its reads failed): the sender
    stops at its next chunk. Its verdict is still waited for: until then it may be
    writing into our buffer."""
    def check() -> bool:
        if time.monotonic() >= deadline and not q[r + BFAIL]:
            q[r + BFAIL] = WITHDRAW
        return alive()
    return check

"""A task's inbox lock: a robust, process-shared pthread mutex in its slot of segment 0.

``pvm_shmd`` makes one in every task slot when it creates segment 0 (``init``; never
again while the segment lives: a sender may still hold one a task left, and glibc links
a held robust mutex into its holder's list). Senders take it to post into the ring,
the receiver to close its direct-delivery record, ``pvm_shmd`` to empty a ring it
reaps. Free, it is taken and released in user space: about 18 ns for the pair, where
the SysV semaphore it replaces cost 0.94 us (two semops with SEM_UNDO, measured on a
2-vCPU AMD EPYC guest), on every message. Like SEM_UNDO it outlives its holder: the
kernel marks it when a holder dies, and the next taker gets EOWNERDEAD and makes it
consistent (what it guards, a ring's tail, is stored whole after the descriptor).

shmd._fast takes the same mutex (fastpath.py gives it the offset). The protocol needs
a full barrier between storing a tail and reading a waiting word (inbox.py's Dekker
handshake), which the semop gave: glibc's release is an atomic exchange, a full barrier
on x86-64; elsewhere it is a release only, and ``release`` follows it with an acquire
on the same word (a try), which a release cannot pass (C adds a fence).
"""
from __future__ import annotations

import ctypes
import errno
import os
import time

SPIN = 20e-6  # a held lock is tried again this long before sleeping (held a microsecond)
_X86 = os.uname().machine in ("x86_64", "AMD64")

_libc = ctypes.CDLL(None, use_errno=True)
_trylock = _libc.pthread_mutex_trylock
_unlock = _libc.pthread_mutex_unlock
_clocklock = _libc.pthread_mutex_clocklock
_consistent = _libc.pthread_mutex_consistent
for _f in (_trylock, _unlock, _consistent):
    _f.argtypes = [ctypes.c_void_p]
    _f.restype = ctypes.c_int


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_clocklock.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_Timespec)]
_clocklock.restype = ctypes.c_int


class Broken(Exception):
    """The mutex cannot be taken: its memory is not a mutex (ENOTRECOVERABLE, EINVAL)."""


def init(addr: int) -> None:
    """Make a robust, process-shared mutex at *addr* (in a shared mapping: layout.T's
    "lock" bytes)."""
    attr = ctypes.create_string_buffer(64)  # (pthread_mutexattr_t: 4 bytes in glibc)
    for call, *args in ((_libc.pthread_mutexattr_init,),
                        (_libc.pthread_mutexattr_setpshared, 1),  # PTHREAD_PROCESS_SHARED
                        (_libc.pthread_mutexattr_setrobust, 1)):  # PTHREAD_MUTEX_ROBUST
        rc = call(attr, *args)
        if rc:
            raise OSError(rc, f"pthread_mutexattr: {os.strerror(rc)}")
    try:
        rc = _libc.pthread_mutex_init(ctypes.c_void_p(addr), attr)
        if rc:
            raise OSError(rc, f"pthread_mutex_init: {os.strerror(rc)}")
    finally:
        _libc.pthread_mutexattr_destroy(attr)


class Mutex:
    """The mutex at *addr*: ``acquire(timeout)`` -> bool, ``release()``."""

    __slots__ = ("addr", "_p")

    def __init__(self, addr: int):
        self.addr = addr
        self._p = ctypes.c_void_p(addr)

    def _taken(self, rc: int) -> bool:
        if rc == 0:
            return True
        if rc == errno.EOWNERDEAD:  # its holder died holding it: ours now
            _consistent(self._p)
            return True
        if rc in (errno.EBUSY, errno.ETIMEDOUT, errno.EINTR):
            return False
        raise Broken(f"mutex at {self.addr:#x}: {os.strerror(rc)}")

    def try_acquire(self) -> bool:
        """Take it if it is free, without waiting."""
        return self._taken(_trylock(self._p))

    def acquire(self, timeout: float) -> bool:
        """Take it, waiting up to *timeout* seconds; False if it stayed held."""
        p = self._p
        if self._taken(_trylock(p)):
            return True
        # Held: a holder keeps it a microsecond or two, so try again for a little while
        # before sleeping in the kernel (a wake-up there costs tens of microseconds on a
        # VM)
        clock = time.perf_counter
        end = clock() + min(SPIN, timeout)
        while clock() < end:
            if self._taken(_trylock(p)):
                return True
        if timeout <= SPIN:
            return False
        at = time.clock_gettime(time.CLOCK_MONOTONIC) + timeout - SPIN
        ts = _Timespec(int(at), int((at - int(at)) * 1e9))
        return self._taken(_clocklock(p, time.CLOCK_MONOTONIC, ctypes.byref(ts)))

    def release(self) -> None:
        """Let it go: a full barrier too (see the module's docstring)."""
        _unlock(self._p)
        if not _X86 and _trylock(self._p) == 0:
            _unlock(self._p)

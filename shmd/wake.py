"""How a sleeping receiver is woken: a SysV semaphore or a futex, whichever is faster here.

A receiver that finds its inbox empty stores the number of its sleep in its slot's
waiting word, makes a full barrier, looks at its ring once more and sleeps; a sender
that posted (then made a barrier) and sees the waiting word set wakes it (the Dekker
handshake of inbox.py). Two ways to sleep and wake, one per daemon (every task of a
daemon uses the kind the header's wake word names, ``layout.H_WAKE_I``):

- **sem**: the receiver's wake semaphore (made by pvm_shmd, 0600): the sender's
  ``release`` (semop +1), the receiver's timed ``semtimedop`` (ipc.Waiter). A stale
  wake-up left on the semaphore costs the receiver one loop.
- **futex**: the waiting word itself. The receiver waits with FUTEX_WAIT for the word
  to change from its sleep's number; a sender stores 0 there, then FUTEX_WAKE. A store
  of 0 by two senders at once loses nothing (no count to get wrong), and a sender that
  clears the word before the receiver is in the kernel makes FUTEX_WAIT return at once.
  The word lives in segment 0 (0600, ours): only our own processes can wake or block
  us; nothing is created, so nothing can leak when a task is killed -9.

Which is faster depends on the machine (how the kernel and hypervisor wake a halted
CPU for each), so pvm_shmd measures both at start (``measure``: a ping-pong of this
very handshake between two processes on two CPUs) and picks the faster one
(calibrate.py keeps the figures with the large-message ones). ``PVM_SHMD_WAKE``
forces a kind (``sem``, ``futex``, ``auto``: measured, the default) for a daemon
started with it; tasks follow their daemon.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import time
from typing import Any

from .errors import PvmBadParam, PvmError
from .ipc import MAX_WAIT, Waiter, _libc, _Timespec, wait_children

ENV = "PVM_SHMD_WAKE"
KINDS = ("sem", "futex")  # the header's wake word holds the index
MODES = (*KINDS, "auto")
SEM, FUTEX = 0, 1
# the futex system call's number (none elsewhere: sem only)
_SYS_FUTEX = {"x86_64": 202, "AMD64": 202, "aarch64": 98, "arm64": 98}.get(os.uname().machine)
FUTEX_WAIT, FUTEX_WAKE = 0, 1  # shared (not FUTEX_PRIVATE): the word is in shared memory
ROUND_TRIPS = 200  # timed per trial of measure(), each kind (the median counts)
WARM = 20  # round trips not timed (the first wake-ups of a fresh process are slow)
TRIALS = 3  # interleaved; the median of each kind's trials counts

_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def available() -> tuple[str, ...]:
    """The kinds this machine has."""
    return KINDS if _SYS_FUTEX is not None else KINDS[:1]


def mode() -> str:
    """``$PVM_SHMD_WAKE`` (default auto); PvmError(PvmBadParam) naming a bad value or a
    kind this machine does not have."""
    m = os.environ.get(ENV, "") or "auto"
    if m not in MODES:
        raise PvmError(PvmBadParam, f"{ENV}={m!r}: use one of {', '.join(MODES)}")
    if m != "auto" and m not in available():
        raise PvmError(PvmBadParam, f"{ENV}={m}: no {m} on {os.uname().machine}")
    return m


class FutexWaiter:
    """The receiver's side: wait until a sender clears the waiting word at *addr* (or
    a timeout). The same ``down(timeout)`` as ipc.Waiter; arguments are built once
    (ctypes converting them costs more than the system call)."""

    __slots__ = ("word", "_ts", "_head")

    def __init__(self, addr: int):
        self.word = ctypes.c_int.from_address(addr)
        self._ts = _Timespec()
        assert _SYS_FUTEX is not None
        self._head = (ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(addr), ctypes.c_int(FUTEX_WAIT))

    def down(self, timeout: float) -> bool:
        """False if *timeout* seconds passed with the word unchanged; True otherwise
        (woken, cleared before we slept, or a signal: the caller looks again anyway)."""
        v = self.word.value
        if not v:
            return True
        timeout = min(timeout, MAX_WAIT)
        ts = self._ts
        ts.tv_sec = whole = int(timeout)
        ts.tv_nsec = int((timeout - whole) * 1e9)
        if _syscall(*self._head, ctypes.c_int(v), ctypes.byref(ts)) == 0:
            return True
        return ctypes.get_errno() != errno.ETIMEDOUT


class FutexWake:
    """The sender's side: ``release()`` clears the receiver's waiting word (index *k*
    of the int32 view *m32*, at *addr* in our mapping) and wakes it."""

    __slots__ = ("_m32", "_k", "_args")

    def __init__(self, m32: memoryview, k: int, addr: int):
        assert _SYS_FUTEX is not None
        self._m32, self._k = m32, k
        self._args = (ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(addr), ctypes.c_int(FUTEX_WAKE),
                      ctypes.c_int(1))

    def release(self) -> None:
        self._m32[self._k] = 0
        _syscall(*self._args)


# ---- measuring ----------------------------------------------------------------------------
def _pingpong(kind: str, who: int, m32: memoryview, addr: int, sems: Any, n: int,
              out: Any) -> None:
    """Side *who* (0 pings, 1 echoes) of *n* round trips in which every receive sleeps
    in the kernel until the other side wakes it the *kind* way (the cost this choice
    is about; the handshake around it is the same for both). With futex, direction k
    is waiting word k: its receiver sets it before it wakes the other side (so the
    reply cannot come first) and sleeps until a sender clears it."""
    if kind == "futex":
        waiters: list[Any] = [FutexWaiter(addr + 4 * k) for k in range(2)]
        wakes: list[Any] = [FutexWake(m32, k, addr + 4 * k) for k in range(2)]
    else:
        waiters = [Waiter(s.id) for s in sems]
        wakes = list(sems)
    mine, theirs = (1, 0) if who == 0 else (0, 1)
    futex = kind == "futex"
    clock = time.perf_counter
    for r in range(WARM + n):
        if who == 1:
            _wait(m32, mine, waiters[mine], futex)
            wakes[theirs].release()
            continue
        t0 = clock()
        if futex:
            m32[mine] = 1
        wakes[theirs].release()
        _wait(m32, mine, waiters[mine], futex)
        if r >= WARM:
            out[r - WARM] = clock() - t0


def _wait(m32: memoryview, k: int, waiter: Any, futex: bool) -> None:
    if not futex:
        while not waiter.down(1.0):
            pass
        return
    while m32[k]:
        waiter.down(1.0)
    if k == 0:
        m32[k] = 1  # the echo side: set before it wakes the pinging side


def measure(sems: Any, trials: int = TRIALS, n: int = ROUND_TRIPS) -> dict[str, list[float]]:
    """One-way microseconds of a sleep and wake-up for each kind this machine has, one
    figure per trial (the median of *n* round trips; *trials* interleaved, between two
    forked processes on the host's first two CPUs); {} if they could not run. *sems*:
    two semaphores of the caller's (value 0), for the sem kind."""
    kinds = available()
    with open("/sys/devices/system/cpu/online") as f:
        first = f.read().strip().split(",")[0]
    lo, _, hi = first.partition("-")
    cpus = [int(lo), int(hi or lo)]
    mem = mmap.mmap(-1, 4096)
    views: list[Any] = [memoryview(mem)]
    views.append(views[0].cast("i"))
    views.append(views[0][64:].cast("d"))
    m32, out = views[1], views[2]
    cbuf = (ctypes.c_char * 4096).from_buffer(mem)
    addr = ctypes.addressof(cbuf)
    got: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        for _ in range(trials):
            for kind in kinds:
                m32[0], m32[1] = 1, 0  # the echo side waits first
                us = _run_pair(kind, m32, addr, sems, n, cpus, out)
                if us is None:
                    return {}
                got[kind].append(us)
    finally:
        del cbuf
        for v in reversed(views):
            v.release()
        mem.close()
    return {k: [round(x, 2) for x in v] for k, v in got.items()}


def _run_pair(kind: str, m32: memoryview, addr: int, sems: Any, n: int, cpus: list[int],
              out: Any) -> float | None:
    """One trial: fork the two sides, wait (bounded) for both; one-way microseconds."""
    import statistics  # (not at import: every task imports this module, a daemon's start calls this)

    pids = []
    for who in (1, 0):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                try:
                    os.sched_setaffinity(0, {cpus[who]})
                except OSError:
                    pass
                _pingpong(kind, who, m32, addr, sems, n, out)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    ok = wait_children(pids, 5.0)  # (a side stuck: one lost wake-up waits 1 s)
    return statistics.median(out[:n].tolist()) / 2 * 1e6 if ok else None

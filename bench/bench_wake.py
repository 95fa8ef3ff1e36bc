"""Benchmark: what each way of waking a sleeping process costs on this machine (run by hand).

    .venv/bin/python bench/bench_wake.py [--trials 7] [--round-trips 3000]

A sleeping receiver's wake-up is most of the 8 B ping-pong with the spin off. This
times a ping-pong of one-byte wake-ups between two processes pinned to two CPUs, each
side sleeping in the kernel until the other wakes it, for every mechanism a receiver
could sleep on here:

- sem: a SysV semaphore per direction (sysv_ipc release / acquire), as our tasks do;
- futex: a word per direction, FUTEX_WAIT / FUTEX_WAKE through ctypes;
- eventfd, pipe: one per direction, a byte (eventfd: a count) written and read;
- socketpair: ONE Unix stream socket pair, both directions on it (as bench_ipc's
  socketpair row and multiprocessing.Pipe on Linux use it);
- 2 socketpairs: one pair per direction, each used one way, which is how a receiver
  woken by any of many senders would have to use sockets;
- msgqueue: a SysV message queue per direction.

Then the wake-up as our tasks do it (wake.measure: the waiting word, the barrier, the
check of the ring, then the sleep) for each kind pvm_shmd can choose. Trials are
interleaved (kind after kind), each a fresh pair of processes; a figure is the median
one-way time of a trial's round trips, and the table shows the median of the trials
with their range. Nothing is left behind (every IPC object is removed).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import sysv_ipc  # noqa: E402

from shmd import wake  # noqa: E402

WARM = 200
Side = tuple[Callable[[], Any], Callable[[], Any]]  # (sleep until woken, wake the other)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "?"


def _sem() -> tuple[Side, Side, Callable[[], None]]:
    a, b = (sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, 0o600) for _ in range(2))
    return ((lambda: a.acquire(5), b.release), (lambda: b.acquire(5), a.release),
            lambda: (a.remove(), b.remove()))


def _futex() -> tuple[Side, Side, Callable[[], None]]:
    import mmap
    mem = mmap.mmap(-1, 4096)
    cbuf = (ctypes.c_int * 1024).from_buffer(mem)
    waiters = [wake.FutexWaiter(ctypes.addressof(cbuf) + 64 * k) for k in range(2)]
    m32 = memoryview(mem).cast("i")
    wakes = [wake.FutexWake(m32, 16 * k, ctypes.addressof(cbuf) + 64 * k) for k in range(2)]

    def sleeper(k: int) -> Callable[[], None]:
        def sleep() -> None:  # until the other side stores 0 (FutexWake), then re-arm
            while m32[16 * k]:
                waiters[k].down(5)
            m32[16 * k] = 1
        return sleep
    m32[0] = m32[16] = 1

    def close() -> None:
        nonlocal cbuf
        del cbuf
        m32.release()
        mem.close()
    return ((sleeper(0), wakes[1].release), (sleeper(1), wakes[0].release), close)


def _fds(read: Callable[[int], Any], write: Callable[[int], Any], r: list[int], w: list[int],
         close: list[Any]) -> tuple[Side, Side, Callable[[], None]]:
    """Side 0 sleeps on r[0] and wakes side 1 through w[1]; side 1 the other way."""
    return ((lambda: read(r[0]), lambda: write(w[1])), (lambda: read(r[1]), lambda: write(w[0])),
            lambda: [c() for c in close])


def _pipe() -> tuple[Side, Side, Callable[[], None]]:
    p0, p1 = os.pipe(), os.pipe()
    return _fds(lambda fd: os.read(fd, 1), lambda fd: os.write(fd, b"x"), [p0[0], p1[0]],
                [p0[1], p1[1]], [lambda fd=fd: os.close(fd) for fd in (*p0, *p1)])


def _eventfd() -> tuple[Side, Side, Callable[[], None]]:
    e = [os.eventfd(0), os.eventfd(0)]
    return _fds(os.eventfd_read, lambda fd: os.eventfd_write(fd, 1), e, e,
                [lambda fd=fd: os.close(fd) for fd in e])


def _socketpair() -> tuple[Side, Side, Callable[[], None]]:
    a, b = socket.socketpair()  # side 0 reads a, writes a (to b); side 1 the other end
    return ((lambda: a.recv(1), lambda: a.send(b"x")), (lambda: b.recv(1), lambda: b.send(b"x")),
            lambda: (a.close(), b.close()))


def _two_socketpairs() -> tuple[Side, Side, Callable[[], None]]:
    s0, s1 = socket.socketpair(), socket.socketpair()  # sN: side N's inbox, read at [0]
    return _fds(lambda fd: os.read(fd, 1), lambda fd: os.write(fd, b"x"),
                [s0[0].fileno(), s1[0].fileno()], [s0[1].fileno(), s1[1].fileno()],
                [s.close for s in (*s0, *s1)])


def _msgqueue() -> tuple[Side, Side, Callable[[], None]]:
    a, b = (sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX, 0o600) for _ in range(2))
    return ((a.receive, lambda: b.send(b"x")), (b.receive, lambda: a.send(b"x")),
            lambda: (a.remove(), b.remove()))


KINDS: dict[str, Callable[[], tuple[Side, Side, Callable[[], None]]]] = {
    "sem": _sem, "futex": _futex, "eventfd": _eventfd, "pipe": _pipe, "socketpair": _socketpair,
    "2 socketpairs": _two_socketpairs, "msgqueue": _msgqueue}


def trial(make: Callable[[], tuple[Side, Side, Callable[[], None]]], n: int,
          cpus: list[int]) -> float:
    """One fresh pair of processes, *n* timed round trips: median one-way microseconds."""
    me, other, close = make()
    r, w = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                os.sched_setaffinity(0, {cpus[1]})
                sleep, wake_other = other
                for _ in range(WARM + n):
                    sleep()
                    wake_other()
                code = 0
            finally:
                os._exit(code)
        os.sched_setaffinity(0, {cpus[0]})
        sleep, wake_other = me
        clock = time.perf_counter_ns
        rtts = []
        for k in range(WARM + n):
            t = clock()
            wake_other()
            sleep()
            if k >= WARM:
                rtts.append(clock() - t)
        _, status = os.waitpid(pid, 0)
        if status:
            raise RuntimeError(f"the other side failed (status {status})")
        return statistics.median(rtts) / 2e3
    finally:
        os.close(r)
        os.close(w)
        close()
        os.sched_setaffinity(0, set(cpus_all()))


def cpus_all() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=7)
    ap.add_argument("--round-trips", type=int, default=3000)
    a = ap.parse_args()
    cpus = cpus_all()
    if len(cpus) < 2:
        sys.exit("bench_wake: needs 2 CPUs (the two sides are pinned apart)")
    print(f"# {' '.join(sys.argv)}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"# machine: {os.cpu_count()} CPUs, {cpu_model()}; Linux {platform.release()}")
    try:
        with open("/sys/devices/system/cpu/cpuidle/current_driver") as f:
            print(f"# cpuidle driver: {f.read().strip()}")
    except OSError:
        pass
    print(f"# each trial: a fresh pair pinned to CPUs {cpus[0]} and {cpus[1]}, {WARM} round "
          f"trips warm-up, {a.round_trips} timed; the median of {a.trials} interleaved trials")
    got: dict[str, list[float]] = {k: [] for k in KINDS}
    for _ in range(a.trials):
        for k, make in KINDS.items():
            got[k].append(trial(make, a.round_trips, cpus))
    sems = [sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, 0o600) for _ in range(2)]
    try:
        ours = wake.measure(sems, trials=a.trials, n=400)  # (its buffer holds 500)
    finally:
        for s in sems:
            s.remove()
    print("\n1. one-byte wake-up ping-pong, one-way microseconds (lower is better)")
    print(f"{'':<34}{'median':>8}{'min':>8}{'max':>8}")
    for k, v in got.items():
        print(f"{k:<34}{statistics.median(v):8.1f}{min(v):8.1f}{max(v):8.1f}")
    print("\n2. as our tasks sleep (waiting word, barrier, ring check, sleep; wake.measure)")
    for k, v in ours.items():
        print(f"{'pvm-shmd, ' + k:<34}{statistics.median(v):8.1f}{min(v):8.1f}{max(v):8.1f}")


if __name__ == "__main__":
    main()

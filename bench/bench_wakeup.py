"""How fast each kernel wake-up mechanism wakes a sleeping process on this machine.

A blocking ping-pong between two forked processes pinned to two CPUs, nothing but the
mechanism itself (no spinning: each side sleeps in the kernel until the other wakes it),
one row per mechanism, all in one run, interleaved run by run so drift hits them alike:

- semop (sysv_ipc): a pair of SysV semaphores, sysv_ipc's blocking acquire and release;
- semtimedop (shmd): what pvm-shmd's sleeping receive does (``ipc.Waiter.down``, ctypes
  semtimedop with prebuilt arguments) woken by sysv_ipc's release;
- futex (shmd): FUTEX_WAIT/FUTEX_WAKE on a word of shared memory through syscall(2),
  with the classes of pvm-shmd's futex kind (``shmd/wake.py``);
- eventfd: os.eventfd, a blocking read of 8 bytes, woken by a write;
- pipe byte: a byte through os.pipe, each way;
- socketpair byte: a byte through one Unix socketpair, each way (both directions on it,
  as a socketpair ping-pong uses it);
- 2 socketpairs: a byte through a pair per direction, each used one way;
- SysV msg queue: sysv_ipc.MessageQueue send/receive, one queue each way.

    .venv/bin/python bench/bench_wakeup.py            # 5 runs of 2000 round trips each
    .venv/bin/python bench/bench_wakeup.py --repeat 3 --iters 500

Prints the one-way time (median round trip / 2, microseconds) per run and the median
over the runs; lower is better. A benchmark run by hand, not a test.
"""
from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import socket
import statistics
import struct
import sys
import time

import sysv_ipc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from shmd import ipc, wake  # noqa: E402


class Futex:
    """shmd's futex kind (shmd/wake.py, the classes tasks use): direction k is waiting
    word k of shared memory; its receiver sleeps until a sender clears it, then sets
    it again (before it answers, so an answer's wake-up cannot come first)."""

    def __init__(self):
        self.mem = mmap.mmap(-1, 4096)
        self.cbuf = (ctypes.c_char * 4096).from_buffer(self.mem)
        base = ctypes.addressof(self.cbuf)
        self.m32 = memoryview(self.mem).cast("i")
        self.m32[0] = self.m32[1] = 1
        self.waiters = [wake.FutexWaiter(base + 4 * k) for k in range(2)]
        self.wakes = [wake.FutexWake(self.m32, k, base + 4 * k) for k in range(2)]

    def post(self, k: int, seq: int) -> None:
        self.wakes[k].release()

    def wait(self, k: int, seq: int) -> None:
        m32, waiter = self.m32, self.waiters[k]
        while m32[k]:
            waiter.down(1.0)  # a timeout on every wait
        m32[k] = 1


def make(name: str):
    """(ping, pong, cleanup): ping(seq) sends to the other side, pong(seq) waits for its
    reply; the other side runs them mirrored (``side`` below)."""
    if name in ("semop (sysv_ipc)", "semtimedop (shmd)"):
        sems = [sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, 0o600, 0) for _ in range(2)]
        waiters = [ipc.Waiter(s.id) for s in sems]
        if name.startswith("semop"):
            def send(k, seq):
                sems[k].release()

            def recv(k, seq):
                sems[k].acquire()
        else:
            def send(k, seq):
                sems[k].release()

            def recv(k, seq):
                while not waiters[k].down(1.0):
                    pass

        def cleanup():
            for s in sems:
                s.remove()
        return send, recv, cleanup
    if name == "futex (shmd)":
        f = Futex()
        return (lambda k, seq: f.post(k, seq)), (lambda k, seq: f.wait(k, seq)), lambda: None
    if name == "eventfd":
        fds = [os.eventfd(0) for _ in range(2)]
        one = struct.pack("Q", 1)

        def cleanup():
            for fd in fds:
                os.close(fd)
        return (lambda k, seq: os.write(fds[k], one)), (lambda k, seq: os.read(fds[k], 8)), cleanup
    if name == "pipe byte":
        pipes = [os.pipe() for _ in range(2)]

        def cleanup():
            for r, w in pipes:
                os.close(r)
                os.close(w)
        return (lambda k, seq: os.write(pipes[k][1], b"x")), \
            (lambda k, seq: os.read(pipes[k][0], 1)), cleanup
    if name == "socketpair byte":
        a, b = socket.socketpair()
        ends = [(a, b), (b, a)]  # direction k: written at ends[k][0], read at ends[k][1]

        def cleanup():
            a.close()
            b.close()
        return (lambda k, seq: ends[k][0].send(b"x")), (lambda k, seq: ends[k][1].recv(1)), cleanup
    if name == "2 socketpairs":
        # one pair per direction, each used one way: how a receiver woken by any of many
        # senders would have to use sockets (its own pair, one read end, one write end)
        pairs = [socket.socketpair() for _ in range(2)]

        def cleanup():
            for x, y in pairs:
                x.close()
                y.close()
        return (lambda k, seq: pairs[k][0].send(b"x")), (lambda k, seq: pairs[k][1].recv(1)), cleanup
    if name == "SysV msg queue":
        qs = [sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX, 0o600) for _ in range(2)]

        def cleanup():
            for q in qs:
                q.remove()
        return (lambda k, seq: qs[k].send(b"x")), (lambda k, seq: qs[k].receive()), cleanup
    raise ValueError(name)


MECHANISMS = ("semop (sysv_ipc)", "semtimedop (shmd)", "futex (shmd)", "eventfd",
              "pipe byte", "socketpair byte", "2 socketpairs", "SysV msg queue")


def one_run(name: str, iters: int, warm: int) -> float:
    """One-way microseconds (median round trip / 2) of *name* between two fresh,
    pinned processes."""
    send, recv, cleanup = make(name)
    r, w = os.pipe()
    cpus = sorted(os.sched_getaffinity(0))
    try:
        pid = os.fork()
        if pid == 0:  # the echo side: wait on direction 0, answer on direction 1
            code = 0
            try:
                os.close(r)
                os.sched_setaffinity(0, {cpus[-1]})
                for seq in range(1, iters + warm + 1):
                    recv(0, seq)
                    send(1, seq)
            except BaseException:
                code = 1
            os._exit(code)
        os.close(w)
        os.sched_setaffinity(0, {cpus[0]})
        rtts = []
        clock = time.perf_counter
        for seq in range(1, iters + warm + 1):
            t0 = clock()
            send(0, seq)
            recv(1, seq)
            if seq > warm:
                rtts.append(clock() - t0)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status):
            raise RuntimeError(f"{name}: the echo side failed")
        return statistics.median(rtts) / 2 * 1e6
    finally:
        os.close(r)
        os.sched_setaffinity(0, set(cpus))
        cleanup()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="runs per mechanism (default 5)")
    ap.add_argument("--iters", type=int, default=2000, help="round trips per run (default 2000)")
    a = ap.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        print("note: one CPU only: both processes share it", file=sys.stderr)
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    print(f"# {' '.join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:]))}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {cpu}, {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f} at the start")
    got: dict[str, list[float]] = {m: [] for m in MECHANISMS}
    for _ in range(a.repeat):
        for m in MECHANISMS:  # interleaved: drift of a shared box hits every row alike
            got[m].append(one_run(m, a.iters, max(20, a.iters // 20)))
    print("one-way wake-up ping-pong, microseconds (median of the runs; every run after)")
    base = statistics.median(got["semtimedop (shmd)"])
    for m in MECHANISMS:
        med = statistics.median(got[m])
        print(f"  {m:22} {med:7.1f}  ({med / base:4.2f}x shmd's)   "
              + " ".join(f"{x:.1f}" for x in got[m]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where pvm-shmd's psend/precv spend their time (a diagnosis helper, run by hand).

    .venv/bin/python bench/_profile_shmd.py [--n 20000]

Starts a private pvm_shmd (removed at the end) and prints:
  1. self-send cost: one process psends to itself and receives (no wake-up, no other
     CPU): microseconds per message, pvm-shmd vs the bare floor's operations (one
     semaphore up + down and the copies), at 8 B, 64 KiB and 1 MiB;
  2. the costs of the pieces of that path, timed alone (semop, ctypes semtimedop,
     BusyError, descriptor pack/unpack, page alloc/free...);
  3. a cProfile of each side of an 8-byte ping-pong with the spin off: the top
     functions by own time, per message;
  4. system calls per round trip of that ping-pong (strace -c -f), if strace is there.

    .venv/bin/python bench/_profile_shmd.py --stream 64K [--n 20000] [--no-profile]

instead streams --n messages of that size (psend -> precv_into, spin on, two pinned
processes) and prints each side's microseconds per message and GB/s, then (unless
--no-profile) a cProfile of each side: the top functions by own time, per message.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import sysv_ipc  # noqa: E402

import shmd  # noqa: E402
from shmd import ipc, layout, pagemap  # noqa: E402

BIN = os.path.dirname(sys.executable)


def per_call(stmt, setup_globals, n: int) -> float:
    """Microseconds per call of *stmt* (best of 5)."""
    t = timeit.Timer(stmt, globals=setup_globals)
    return min(t.repeat(5, n)) / n * 1e6


def self_send(vmid: str, n: int) -> None:
    print("1. self-send: psend to itself then receive, one process, us per message")
    print(f"{'':34}{'8 B':>10}{'1 KiB':>10}{'64 KiB':>10}{'1 MiB':>10}")
    sizes = [8, 1 << 10, 64 << 10, 1 << 20]
    rows = {}
    with shmd.join(vmid=vmid, spin=False) as me:
        me_tid = me.tid
        for size in sizes:
            data = bytearray(os.urandom(size))
            rbuf = bytearray(size)
            k = n if size <= 65536 else max(200, n // 20)
            g = {"me": me, "t": me_tid, "data": data, "rbuf": rbuf}
            rows.setdefault("psend + precv", []).append(
                per_call("me.psend(t, 1, data); me.precv(t, 1)", g, k))
            rows.setdefault("psend + precv_into", []).append(
                per_call("me.psend(t, 1, data); me.precv_into(rbuf, t, 1)", g, k))
            rows.setdefault("psend + precv_view + release", []).append(
                per_call("me.psend(t, 1, data); me.precv_view(t, 1).release()", g, k))
            rows.setdefault("psend alone (then drained)", []).append(_psend_alone(me, data, k))
    sem = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, mode=0o600, initial_value=0)
    try:
        for size in sizes:
            shm = memoryview(bytearray(size))
            data = bytearray(os.urandom(size))
            rbuf = memoryview(bytearray(size))
            g = {"sem": sem, "shm": shm, "data": data, "rbuf": rbuf}
            k = n if size <= 65536 else max(200, n // 20)
            rows.setdefault("floor: copy in, up, down, copy out", []).append(
                per_call("shm[:] = data; sem.release(); sem.acquire(); rbuf[:] = shm", g, k))
    finally:
        sem.remove()
    for name, vals in rows.items():
        print(f"{name:34}" + "".join(f"{v:10.2f}" for v in vals))
    print()


def _psend_alone(me, data, k: int) -> float:
    """psend alone: send up to 100 (less than the ring), drain them untimed, repeat."""
    total, done = 0.0, 0
    t_ = me.tid
    while done < k:
        batch = min(100, k - done)
        t = time.perf_counter()
        for _ in range(batch):
            me.psend(t_, 1, data)
        total += time.perf_counter() - t
        for _ in range(batch):
            me.precv_view(t_, 1).release()
        done += batch
    return total / k * 1e6


def pieces(vmid: str, n: int) -> None:
    print("2. the pieces, timed alone, us per call")
    with shmd.join(vmid=vmid, spin=False) as me:
        lock = me._peer(me.tid).lock  # our inbox lock, as a sender takes it
        wake = me._mywake
        desc = shmd.task._DESC
        buf = me._buf
        d_off = layout.slot_off(me._slot) + layout.SLOT_HDR
        m, b, np_ = me._i, me._mapb[0], me._npages[0]

        def busy():
            try:
                wake.acquire()
            except sysv_ipc.BusyError:
                pass

        g = {"lock": lock, "wake": wake, "desc": desc, "buf": buf, "d": d_off, "me": me,
             "ipc": ipc, "busy": busy, "pagemap": pagemap, "m": m,
             "b": b, "np": np_, "tid": me.tid, "time": time, "layout": layout,
             "Desc": shmd.task._Desc, "f": (1, 2, 3, -1, 0, 0, 1, 3)}
        items = [
            ("inbox lock: acquire + release (2 semop)", "lock.acquire(1.0); lock.release()"),
            ("sysv_ipc sem.release() (1 semop)", "wake.release(); wake.acquire()", 2),
            ("failed non-blocking acquire (BusyError)", "busy()"),
            ("sem.release + Waiter.down (succeeds)", "wake.release(); me._waiter.down(1.0)"),
            ("ipc.fence()", "ipc.fence()"),
            ("descriptor pack_into", "desc.pack_into(buf, d, 1, 2, 3, -1, 0, 0, 1, 3)"),
            ("descriptor unpack + _Desc(...)", "Desc(*desc.unpack_from(buf, d), None)"),
            ("me._matcher(src, tag)", "me._matcher(5, 1)"),
            ("me._peer(own tid) (cached)", "me._peer(tid)"),
            ("pagemap alloc(16) + free, no lock", "pagemap.free(m, b, np, "
                                                 "pagemap.alloc(m, b, np, 16, tid))"),
            ("me._alloc(16) + me._free (with locks)", "me._free(*me._alloc(16, 1e18))"),
            ("me._check_alive()", "me._check_alive()"),
            ("time.monotonic()", "time.monotonic()"),
        ]
        for it in items:
            name, stmt = it[0], it[1]
            div = it[2] if len(it) > 2 else 1
            try:  # task.py's internals change: report what no longer exists
                print(f"  {name:44}{per_call(stmt, g, n) / div:8.2f}")
            except Exception as e:
                print(f"  {name:44}     n/a ({type(e).__name__}: {e})")
    print()


def _pong(vmid, n, prof_path, cpu, rfd, wfd):
    os.sched_setaffinity(0, {cpu})
    with shmd.join(vmid=vmid, spin=False) as me:
        os.write(wfd, f"{me.tid}\n".encode())
        other = int(os.read(rfd, 64))
        pr = cProfile.Profile() if prof_path else None
        if pr:
            pr.enable()
        for _ in range(n):
            m = me.precv(other, 1)
            me.psend(other, 1, m.data)
        if pr:
            pr.disable()
            pr.dump_stats(prof_path)
        os.write(wfd, b"done\n")
        os.read(rfd, 64)


def fork_other(side, *args) -> tuple[int, int, int]:
    """Run side(*args, rfd, wfd) in a forked process and pin ourselves to CPU 0:
    (its pid, our read end, our write end) of the pipes between us."""
    a_r, b_w = os.pipe()
    b_r, a_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            side(*args, b_r, b_w)
        finally:
            os._exit(0)
    os.sched_setaffinity(0, {0})
    return pid, a_r, a_w


def pingpong_profile(vmid: str, n: int, tmp: str, profile: bool = True) -> float:
    """8-byte ping-pong, spin off, both sides profiled; returns us one-way (profiled)."""
    prof_b = os.path.join(tmp, "pong.prof") if profile else None
    pid, a_r, a_w = fork_other(_pong, vmid, n, prof_b, 1 % (os.cpu_count() or 1))
    try:
        with shmd.join(vmid=vmid, spin=False) as me:
            other = int(os.read(a_r, 64))
            os.write(a_w, f"{me.tid}\n".encode())
            data = b"12345678"
            def step():
                me.psend(other, 1, data)
                me.precv(other, 1)
            dt, pr = timed(step, n, profile)
            os.read(a_r, 64)
            os.write(a_w, b"ok\n")
    finally:
        os.waitpid(pid, 0)
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    if profile:
        top_functions((("pinger (psend then precv)", pstats.Stats(pr)),
                       ("ponger (precv then psend)", pstats.Stats(prof_b))), n, "round trip")
    return dt / n / 2 * 1e6


def timed(step, n: int, profile: bool):
    """(seconds for *n* calls of *step*, the cProfile of them or None)."""
    pr = cProfile.Profile() if profile else None
    if pr:
        pr.enable()
    t = time.perf_counter()
    for _ in range(n):
        step()
    dt = time.perf_counter() - t
    if pr:
        pr.disable()
    return dt, pr


def top_functions(sides, n: int, per: str) -> None:
    """Each side's top 14 functions by own time, in microseconds per *per*."""
    for side, stats in sides:
        print(f"   {side}: top own-time functions, us per {per} (profiled)")
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:14]
        for (fname, line, func), (_cc, nc, tt, ct, _) in rows:
            where = f"{os.path.basename(fname)}:{line}({func})" if line else func
            print(f"     {tt / n * 1e6:7.2f} own {ct / n * 1e6:7.2f} cum "
                  f"{nc / n:5.1f} calls  {where[:70]}")


def syscalls(vmid: str, n: int, tmp: str) -> None:
    if not shutil.which("strace"):
        print("4. (strace not installed: no system-call counts)")
        return
    out = os.path.join(tmp, "strace.txt")
    code = (f"import sys; sys.path[:0] = [{HERE!r}, {os.path.join(HERE, '..')!r}]; "
            f"import _profile_shmd as p; p.pingpong_profile({vmid!r}, {n:d}, {tmp!r}, profile=False)")
    subprocess.run(["strace", "-f", "-c", "-o", out, sys.executable, "-c", code],
                   env=dict(os.environ), capture_output=True, timeout=300)
    print(f"4. system calls per round trip of the 8-byte ping-pong, spin off (strace -c -f, "
          f"{n} round trips; start-up calls included but amortized)")
    with open(out) as f:
        for line in f:
            cols = line.split()
            if len(cols) >= 5 and cols[0][0].isdigit() and cols[-1] not in ("total",):
                calls = int(cols[3])
                if calls >= n // 2:
                    errs = int(cols[4]) if len(cols) == 6 else 0
                    print(f"   {cols[-1]:14}{calls / n:6.2f} per round trip"
                          + (f" ({errs / n:.2f} failing)" if errs else ""))
    print()


def _stream_side(vmid, size, n, prof_path, rfd, wfd):
    """The receiving side of ``stream``, in a forked process pinned to CPU 1."""
    os.sched_setaffinity(0, {1 % (os.cpu_count() or 1)})
    with shmd.join(vmid=vmid, spin=True) as me:
        os.write(wfd, f"{me.tid}\n".encode())
        int(os.read(rfd, 64))
        buf = bytearray(size)
        for _ in range(200):  # warm-up
            me.precv_into(buf)
        dt, pr = timed(lambda: me.precv_into(buf), n, prof_path is not None)
        if pr:
            pr.dump_stats(prof_path)
        os.write(wfd, f"{dt}\n".encode())


def stream(vmid: str, size: int, n: int, tmp: str, profile: bool) -> None:
    """A stream of *n* messages of *size* bytes, psend -> precv_into, spin on."""
    prof_r = os.path.join(tmp, "recv.prof") if profile else None
    pid, a_r, a_w = fork_other(_stream_side, vmid, size, n, prof_r)
    try:
        with shmd.join(vmid=vmid, spin=True) as me:
            other = int(os.read(a_r, 64))
            os.write(a_w, f"{me.tid}\n".encode())
            data = bytearray(os.urandom(size))
            for _ in range(200):
                me.psend(other, 1, data)
            ds, pr = timed(lambda: me.psend(other, 1, data), n, profile)
            dr = float(os.read(a_r, 64))
    finally:
        os.waitpid(pid, 0)
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    print(f"stream of {n} x {size} B{' (profiled)' if profile else ''}: sender "
          f"{ds / n * 1e6:.2f} us/msg, receiver {dr / n * 1e6:.2f} us/msg, "
          f"{size * n / dr / 1e9:.2f} GB/s")
    if profile:
        top_functions((("sender (psend)", pstats.Stats(pr)),
                       ("receiver (precv_into)", pstats.Stats(prof_r))), n, "message")


def parse_size(text: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:].upper(), 1)
    return int(text[:-1] if mult > 1 else text) * mult


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--stream", type=parse_size, default=None,
                    help="stream messages of this size (64K, 1M) instead")
    ap.add_argument("--no-profile", action="store_true", help="--stream without cProfile")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="prof_shmd.")
    vmid = f"prof{os.getpid()}"
    env = dict(os.environ, PVM_TMP=tmp, PVM_VMID=vmid)
    os.environ["PVM_TMP"] = tmp  # our tasks read the paths our daemon measured
    r = subprocess.run([os.path.join(BIN, "pvm_shmd"), "-maxpages=4096", "-maxsegs=8"],
                       env=env, capture_output=True, text=True, timeout=60)
    if r.returncode:
        print(r.stderr, file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
        return 1
    try:
        print(f"# load average {os.getloadavg()[0]:.2f}")
        if a.stream:
            stream(vmid, a.stream, a.n, tmp, not a.no_profile)
            return 0
        self_send(vmid, a.n)
        pieces(vmid, a.n)
        print("3. cProfile of an 8-byte ping-pong, spin off")
        plain = pingpong_profile(vmid, a.n // 4, tmp, profile=False)
        print(f"   unprofiled: {plain:.1f} us one-way")
        pingpong_profile(vmid, a.n // 4, tmp)
        print()
        syscalls(vmid, a.n // 4, tmp)
    finally:
        subprocess.run([os.path.join(BIN, "pvm_shmd_stat"), "--stop"], env=env,
                       capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

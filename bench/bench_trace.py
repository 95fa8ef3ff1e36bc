"""Benchmark: what tracing costs the 8 B ping-pong (run by hand).

    .venv/bin/python bench/bench_trace.py [--iters 20000] [--repeat 5] [--size 8]

Starts a pvm_shmd of its own (private PVM_TMP and VM id), then, --repeat times, a
ping-pong pair with tracing off and one with tracing on (the host's trace word set
before the pair joins: both tasks record every psend and precv start and end), each a
fresh pair of processes pinned to CPUs 0 and 1. Prints the median one-way latency
(median round trip / 2) of each run, off and on side by side, their ratio, and how
many events the daemon kept and lost. Everything is stopped and removed at the end.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import shmd  # noqa: E402
from shmd import control, trace  # noqa: E402

MP = multiprocessing.get_context("fork")
BIN = os.path.dirname(sys.executable)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "?"


def side(role: int, conn, vmid: str, size: int, iters: int, warm: int) -> None:
    """One end of the ping-pong: role 0 times, role 1 echoes."""
    try:
        os.sched_setaffinity(0, {role % os.cpu_count()})  # type: ignore[operator]
    except OSError:
        pass
    with shmd.join(vmid=vmid, name=f"pp{role}") as me:
        conn.send(me.tid)
        other = conn.recv()
        conn.send("ready")
        conn.recv()
        msg = bytes(size)
        if role == 0:
            rtts = []
            clock = time.perf_counter_ns
            for _ in range(warm + iters):
                t = clock()
                me.psend(other, 1, msg)
                me.precv(other, 1)
                rtts.append(clock() - t)
            conn.send(statistics.median(rtts[warm:]) / 2000.0)
        else:
            for _ in range(warm + iters):
                me.psend(other, 1, me.precv(other, 1).data)
            conn.send(None)
        conn.recv()  # both done before either leaves


def pair(vmid: str, size: int, iters: int, warm: int) -> float:
    ends = [MP.Pipe() for _ in range(2)]
    procs = [MP.Process(target=side, args=(r, ends[r][1], vmid, size, iters, warm))
             for r in range(2)]
    for p in procs:
        p.start()
    a, b = (e[0] for e in ends)
    ta, tb = a.recv(), b.recv()
    a.send(tb)
    b.send(ta)
    a.recv(), b.recv()
    a.send("go")
    b.send("go")
    lat = a.recv()
    b.recv()
    a.send("bye")
    b.send("bye")
    for p in procs:
        p.join(60)
    return lat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--size", type=int, default=8)
    a = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="bench_trace.")
    vmid = f"bt{os.getpid()}"
    env = {**os.environ, "PVM_TMP": tmp, "PVM_VMID": vmid}
    os.environ.update(PVM_TMP=tmp, PVM_VMID=vmid)
    stat = [os.path.join(BIN, "pvm_shmd_stat")]
    r = subprocess.run([os.path.join(BIN, "pvm_shmd"), "-maxsegs=1"], env=env,
                       capture_output=True, text=True, timeout=60)
    if r.returncode:
        print(f"bench_trace.py: pvm_shmd: {r.stderr.strip()}", file=sys.stderr)
        return 1
    try:
        print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
              f"{a.size} B ping-pong, {a.iters} round trips a run, median RTT/2 in us")
        print(f"{'run':>4} {'trace off':>10} {'trace on':>10} {'on/off':>7} {'events kept':>12} {'lost':>8}")
        offs, ons = [], []
        for k in range(a.repeat):
            control.request("trace", vmid, set=0)
            off = pair(vmid, a.size, a.iters, a.iters // 10)
            control.request("trace", vmid, set=trace.ALL)
            on = pair(vmid, a.size, a.iters, a.iters // 10)
            d = control.request("trace", vmid, set=0, dump=True, clear=True)
            offs.append(off)
            ons.append(on)
            print(f"{k + 1:4d} {off:10.2f} {on:10.2f} {on / off:7.2f} {len(d['events']):12d} "
                  f"{d['lost']:8d}")
        mo, mn = statistics.median(offs), statistics.median(ons)
        print(f"{'med':>4} {mo:10.2f} {mn:10.2f} {mn / mo:7.2f}")
        print(json.dumps({"off_us": mo, "on_us": mn, "overhead": mn / mo - 1}))
    finally:
        subprocess.run([*stat, "--stop"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: what tracing costs the 8 B ping-pong (run by hand).

    .venv/bin/python bench/bench_trace.py [--iters 20000] [--repeat 5] [--size 8]
                                          [--blocks 40] [--spin on|auto|off]

Starts a pvm_shmd of its own (private PVM_TMP and VM id), then:

1. on against off, interleaved: one ping-pong pair (pinned to CPUs 0 and 1) runs
   --blocks blocks of --iters/10 round trips, tracing every psend and precv (start
   and end) in every other block (both tasks switch together, trace.switch); the
   median round trip / 2 of each block; per mode the median of its blocks. Blocks a
   few milliseconds apart see the same load, which a busy machine's drift would
   otherwise put between two runs.
2. what tracing costs a message in CPU time: one task sends to itself and takes it
   (psend + precv: the work of one hop of the ping-pong, no waiting), --blocks blocks
   of --iters/10, traced in every other one; the task's own CPU time
   (time.thread_time: time the machine gave to others is not in it), so this holds
   on a loaded machine where the latencies above scatter.
3. off against no tracing code, --repeat times a pair of pairs: one whose tasks never
   look at the host's trace word (as pvm_netd, which is never traced) and one that
   does (trace off: the plain methods, the word read when it publishes).

It prints each row and the medians side by side with their ratios, and how many
events the daemon kept and lost. Everything is stopped and removed at the end.
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
from shmd import control, fastpath, trace  # noqa: E402

MP = multiprocessing.get_context("fork")
SPIN = {"auto": None, "on": True, "off": False}
BIN = os.path.dirname(sys.executable)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "?"


def side(role: int, conn, vmid: str, size: int, iters: int, warm: int, blocks: int = 0,
         traceable: bool = True, spin: bool | None = None) -> None:
    """One end of the ping-pong: role 0 times, role 1 echoes. With *blocks*: that many
    blocks of *iters*, traced in every other one (role 0 sends the latencies of each)."""
    try:
        os.sched_setaffinity(0, {role % os.cpu_count()})  # type: ignore[operator]
    except OSError:
        pass
    with shmd.join(vmid=vmid, name=f"pp{role}", spin=spin) as me:
        me._traceable = traceable and not blocks  # (blocks: we switch, not the host's word)
        if blocks:
            trace.switch(me, 0)
        conn.send(me.tid)
        other = conn.recv()
        conn.send("ready")
        conn.recv()
        msg = bytes(size)
        if blocks:
            lat = []
            for b in range(-1, blocks):  # (block -1: a warm-up)
                trace.switch(me, trace.ALL if b % 2 else 0)
                clock, rtts = time.perf_counter_ns, []
                for _ in range(iters):
                    if role == 0:
                        t = clock()
                        me.psend(other, 1, msg)
                        me.precv(other, 1)
                        rtts.append(clock() - t)
                    else:
                        me.psend(other, 1, me.precv(other, 1).data)
                if b >= 0 and role == 0:
                    lat.append(statistics.median(rtts) / 2000.0)
            trace.switch(me, 0)
            conn.send(lat if role == 0 else None)
        elif role == 0:
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


def self_cost(vmid: str, size: int, iters: int, blocks: int) -> tuple[list[float], list[float]]:
    """CPU us per psend + precv of a task to itself: (untraced blocks, traced blocks)."""
    out: tuple[list[float], list[float]] = ([], [])
    with shmd.join(vmid=vmid, name="self") as me:
        me._traceable = False  # (we switch, not the host's word)
        msg, tid, cpu = bytes(size), me.tid, time.thread_time_ns
        for b in range(-1, blocks):
            trace.switch(me, trace.ALL if b % 2 else 0)
            ps, pr = me.psend, me.precv
            t = cpu()
            for _ in range(iters):
                ps(tid, 1, msg)
                pr(tid, 1)
            if b >= 0:
                out[b % 2].append((cpu() - t) / iters / 1000.0)
        trace.switch(me, 0)
    return out


def pair(vmid: str, size: int, iters: int, warm: int, blocks: int = 0, traceable: bool = True,
         spin: bool | None = None):
    ends = [MP.Pipe() for _ in range(2)]
    procs = [MP.Process(target=side, args=(r, ends[r][1], vmid, size, iters, warm, blocks, traceable,
                                           spin))
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
    ap.add_argument("--blocks", type=int, default=40)
    ap.add_argument("--size", type=int, default=8)
    # (on by default: the sides are pinned to one CPU each, and "auto" never spins for a
    # task whose affinity is one CPU, so its ping-pong would measure wake-ups, not tracing)
    ap.add_argument("--spin", choices=SPIN, default="on",
                    help="the ping-pong's spin (shmd.join's spin=; auto: as a program gets it)")
    a = ap.parse_args(argv)
    spin = SPIN[a.spin]
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
              f"{a.size} B ping-pong, spin {a.spin}, {a.iters} round trips a run, median RTT/2 "
              f"in us; {fastpath.KIND} path, stamps from "
              f"{'the TSC' if fastpath.TSC else 'the clock'}")
        control.request("trace", vmid, set=trace.ALL)  # the daemon drains the rings
        lat = pair(vmid, a.size, a.iters // 10, 0, a.blocks, spin=spin)
        d = control.request("trace", vmid, set=0, dump=True, clear=True)
        offs, ons = lat[0::2], lat[1::2]
        print(f"1. interleaved: {len(lat)} blocks of {a.iters // 10} round trips, one pair")
        print(f"{'block':>5} {'trace off':>10} {'trace on':>10} {'on/off':>7}")
        for k, (off, on) in enumerate(zip(offs, ons)):
            print(f"{2 * k + 1:5d} {off:10.2f} {on:10.2f} {on / off:7.2f}")
        mo, mn = statistics.median(offs), statistics.median(ons)
        print(f"{'med':>5} {mo:10.2f} {mn:10.2f} {mn / mo:7.3f}   events kept {len(d['events'])}, "
              f"lost {d['lost']}")
        control.request("trace", vmid, set=trace.ALL)
        plain, traced = self_cost(vmid, a.size, a.iters // 10, a.blocks)
        d2 = control.request("trace", vmid, set=0, dump=True, clear=True)
        cp, ct = statistics.median(plain), statistics.median(traced)
        print(f"2. CPU per psend + precv to itself: untraced {cp:.2f} us, traced {ct:.2f} us: tracing adds "
              f"{(ct - cp) * 1000:.0f} ns a message, {(ct - cp) / mo * 100:.1f} % of the one-way latency "
              f"above ({len(d2['events'])} events kept, {d2['lost']} lost)")
        print(f"3. separate pairs, {a.iters} round trips each")
        print(f"{'run':>4} {'no trace code':>14} {'trace off':>10} {'off/none':>9}")
        nones, offs2 = [], []
        for k in range(a.repeat):
            none = pair(vmid, a.size, a.iters, a.iters // 10, traceable=False, spin=spin)
            off = pair(vmid, a.size, a.iters, a.iters // 10, spin=spin)
            nones.append(none)
            offs2.append(off)
            print(f"{k + 1:4d} {none:14.2f} {off:10.2f} {off / none:9.2f}")
        m0, m1 = statistics.median(nones), statistics.median(offs2)
        print(f"{'med':>4} {m0:14.2f} {m1:10.2f} {m1 / m0:9.3f}   load now {os.getloadavg()[0]:.2f}")
        print(json.dumps({"off_us": mo, "on_us": mn, "overhead_on": mn / mo - 1, "cpu_added_ns": (ct - cp) * 1000,
                          "none_us": m0, "off_pairs_us": m1, "overhead_off": m1 / m0 - 1}))
    finally:
        subprocess.run([*stat, "--stop"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

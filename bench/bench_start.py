"""Benchmark: the CPU time of one host's start, as the console starts a host (run by hand).

    .venv/bin/python bench/bench_start.py [--runs 5] [--before OTHER_CHECKOUT]

For this checkout and, with --before, another one (its code run by this Python through
PYTHONPATH: a git worktree with its compiled part built in place, ``python setup.py
build_ext --inplace``, and its bytecode compiled), side by side, RUNS times:
starts a host's pvm_shmd and its pvm_netd the way the console does on a remote host (the
same programs, arguments and stdin; here without SSH, in a private PVM_TMP with a VM id
of its own), and reports the CPU time (user + system) each process spent until it was
ready: the starting process(es) (pvm_shmd -net=, which starts both and exits once both
said ready; before it, pvm_shmd and then pvm_netd) from the kernel's accounting of
waited-for children, the daemons from /proc/PID/task/*/schedstat
(nanoseconds, every thread) read once both said ready (pvm_shmd's by then includes its
filling in of its pages, which it does after it said ready; what it spent until ready is
in its log, and printed where the log says it). Wall time of the whole start too. The
daemons are stopped after each run. Medians, and each run's figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# run in the Python under test: one start, its figures as JSON
ONE = r'''
import json, os, resource, subprocess, sys, time
import zmq
bin_, vmid = os.path.dirname(sys.executable), sys.argv[1]

def children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime

def threads_cpu(pid: int) -> float:
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{t}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9

def field(out: str, name: str) -> int:
    return int(out.split(f"{name}<")[1].split(">")[0])

keys = [k.decode() for k in zmq.curve_keypair()]
line = json.dumps({"public": keys[0], "secret": keys[1], "peers": [], "trusted": False,
                   "me": {"name": "bench", "ep": None, "wd": None}})
out = {}
t0, c0 = time.perf_counter(), children()
argv = [os.path.join(bin_, "pvm_shmd"), f"-vmid={vmid}", "-host=2", "-name=bench"]
r = subprocess.run(argv + ["-net=127.0.0.1"], input=line + "\n", capture_output=True, text=True, timeout=60)
together = "unknown option '-net=" not in r.stderr
if not together:  # (a checkout from before pvm_shmd -net=: pvm_netd by a program start of its own)
    c0 = children()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
if r.returncode:
    sys.exit(f"pvm_shmd: {r.stderr.strip()}")
ddpro = next(ln for ln in r.stdout.splitlines() if ln.startswith("ddpro<"))
out["pvm_shmd daemon"] = threads_cpu(field(ddpro, "pid"))
c1 = children()
out["starter(s)"] = c1 - c0
if together:
    netd_line = next(ln for ln in r.stdout.splitlines() if ln.startswith("netd<"))
else:
    n = subprocess.run([os.path.join(bin_, "pvm_netd"), f"-vmid={vmid}", "-host=2", "-bind=127.0.0.1"],
                       input=line + "\n", capture_output=True, text=True, timeout=60)
    if n.returncode:
        sys.exit(f"pvm_netd: {n.stderr.strip()}")
    netd_line = n.stdout
    out["starter(s)"] += children() - c1
out["pvm_netd daemon"] = threads_cpu(field(netd_line, "pid"))
out["wall"] = time.perf_counter() - t0
from shmd import paths  # (the daemon's own figure until ready, where its log gives it)
with open(paths.log_path(vmid)) as f:
    said = [ln for ln in f if "ready: " in ln and "start-up CPU " in ln]
if said:
    out["pvm_shmd daemon until ready"] = float(said[-1].split("start-up CPU ")[1].split()[0]) / 1e3
subprocess.run([os.path.join(bin_, "pvm_shmd_stat"), "--stop", f"-vmid={vmid}"], capture_output=True, timeout=30)
print(json.dumps(out))
'''


def run_one(path: str, vmid: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o700)
        env = {**os.environ, "PVM_TMP": tmp, "PYTHONPATH": path}
        # (the large-message paths are measured once per boot and kept in PVM_TMP: measured
        # here by a first start not counted, as on a host that started a VM before)
        for _ in range(2):
            r = subprocess.run([sys.executable, "-c", ONE, vmid], capture_output=True, text=True, env=env, timeout=120,
                               cwd="/")
            if r.returncode:
                raise SystemExit(f"{path or 'this checkout'}: {r.stderr.strip()[-400:]}")
        return json.loads(r.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--before", help="another checkout's directory, measured beside this one")
    a = ap.parse_args()
    if a.runs < 1:
        ap.error(f"--runs {a.runs}: expected at least 1")
    sides = {"this checkout": "", **({a.before: os.path.abspath(a.before)} if a.before else {})}
    got: dict[str, dict[str, list[float]]] = {s: {} for s in sides}
    for k in range(a.runs):
        for side, path in sides.items():  # (interleaved: the machine's noise falls on both)
            for f, v in run_one(path, f"bs{os.getpid() % 1000}{k}").items():
                got[side].setdefault(f, []).append(v)
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    print(f"CPU: {cpu}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; ms, median of {a.runs} (each run)")
    for side, figs in got.items():
        print(f"{side}:")
        cpu_total = [sum(v[i] for f, v in figs.items() if f != "wall" and "until" not in f) for i in range(a.runs)]
        rows = [*figs.items(), ("CPU, all", cpu_total)]
        if "pvm_shmd daemon until ready" in figs:
            rows.append(("CPU, until ready", [cpu_total[i] - figs["pvm_shmd daemon"][i]
                                              + figs["pvm_shmd daemon until ready"][i] for i in range(a.runs)]))
        for f, vs in rows:
            each = " ".join(f"{v * 1e3:.1f}" for v in vs)
            print(f"  {f:<28}{statistics.median(vs) * 1e3:8.1f}   ({each})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

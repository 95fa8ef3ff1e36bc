"""Benchmark: hosts over SSH on a lab of emulated hosts (run by hand, as root).

    .venv/bin/python bench/bench_ssh.py [--hosts 8] [--repeat 3]

Prints tables of:
  1. one command (``true``) on an open connection vs a new connection each time;
  2. connect + one command on 1/4/8 hosts, one at a time vs in parallel (fan-out 5, as PVM);
  3. the console's ``add`` of 1/4/8 hosts (real pvm_shmd started over SSH), serial vs parallel;
  4. the console's ``stat`` of one host on an open connection (runs pvm_shmd_stat remotely).
The lab is made in a private directory and removed at the end.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pvmconsole import lab as labmod  # noqa: E402
from pvmconsole import vm as vmmod  # noqa: E402
from pvmconsole.ssh import SshRunner  # noqa: E402


def ms(xs: list[float]) -> str:
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(len(xs) * 0.9))]
    return f"{statistics.median(xs) * 1000:8.1f} {p90 * 1000:8.1f} {len(xs):5d}"


def exec_latency(lab: labmod.Lab, n: int) -> None:
    print("\n1. one command (true) on pvmh1          median ms   p90 ms     n")
    r = SshRunner("pvmh1", config=lab.ssh_config)
    r.run(["true"], timeout=10)
    open_t = []
    for _ in range(n):
        t = time.perf_counter()
        r.run(["true"], timeout=10)
        open_t.append(time.perf_counter() - t)
    r.close()
    print(f"   open connection (reused)           {ms(open_t)}")
    new_t = []
    for _ in range(max(5, n // 5)):
        t = time.perf_counter()
        r = SshRunner("pvmh1", config=lab.ssh_config)
        r.run(["true"], timeout=10)
        r.close()
        new_t.append(time.perf_counter() - t)
    print(f"   new connection each time           {ms(new_t)}")


def connect_fanout(lab: labmod.Lab, counts: list[int], repeat: int) -> None:
    print("\n2. connect + true on N hosts, wall time   serial ms  parallel(5) ms")

    def one(h: str) -> None:
        r = SshRunner(h, config=lab.ssh_config)
        try:
            r.run(["true"], timeout=10)
        finally:
            r.close()

    for n in counts:
        names = [h.name for h in lab.hosts[:n]]
        ser, par = [], []
        for _ in range(repeat):
            t = time.perf_counter()
            for h in names:
                one(h)
            ser.append(time.perf_counter() - t)
            t = time.perf_counter()
            with ThreadPoolExecutor(5) as ex:
                list(ex.map(one, names))
            par.append(time.perf_counter() - t)
        print(f"   N={n}                                {statistics.median(ser) * 1000:9.0f}  "
              f"{statistics.median(par) * 1000:14.0f}")


def console_add(lab: labmod.Lab, counts: list[int], repeat: int, stat_n: int) -> None:
    print("\n3. console `add` of N hosts (pvm_shmd started over SSH)   serial ms  parallel(5) ms")
    tmp = tempfile.mkdtemp(prefix="pvm-bench-")
    os.environ["PVM_TMP"] = tmp
    os.environ["PVM_SSH_CONFIG"] = lab.ssh_config
    dx = labmod.local_program("pvm_shmd")
    stat_t: list[float] = []
    try:
        for n in counts:
            specs = [f"{h.name} dx={dx}" for h in lab.hosts[:n]]
            row = {}
            for mode, fan in (("serial", 1), ("parallel", 5)):
                times = []
                for k in range(repeat):
                    vmid = f"bench{os.getpid()}{n}{mode[0]}{k}"
                    os.environ["PVM_VMID"] = vmid
                    vmmod.PARALLEL_STARTS = fan
                    vm = vmmod.VirtualMachine(vmid)
                    vm.open(None)  # the master (this machine)
                    try:
                        t = time.perf_counter()
                        out = vm.add(specs)
                        times.append(time.perf_counter() - t)
                        bad = [o for o in out if o.error is not None]
                        if bad:
                            raise SystemExit(f"add failed: {bad}")
                        if n == counts[-1] and mode == "parallel" and k == 0:
                            vm.stat(["pvmh1"])
                            for _ in range(stat_n):
                                t = time.perf_counter()
                                vm.stat(["pvmh1"])
                                stat_t.append(time.perf_counter() - t)
                    finally:
                        vm.halt()
                row[mode] = statistics.median(times)
            print(f"   N={n}                                                 {row['serial'] * 1000:9.0f}  "
                  f"{row['parallel'] * 1000:14.0f}")
    finally:
        vmmod.PARALLEL_STARTS = 5
        os.rmdir(tmp) if not os.listdir(tmp) else None
    print("\n4. console `stat pvmh1` on an open connection   median ms   p90 ms     n")
    print(f"   (pvm_shmd_stat --json run remotely)          {ms(stat_t)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n", type=int, default=50, help="samples for latencies")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_ssh: needs root (it makes a lab of emulated hosts)", file=sys.stderr)
        return 1
    d = tempfile.mkdtemp(prefix="pvm-lab-bench-", dir="/run")
    t = time.perf_counter()
    lab = labmod.up(a.hosts, d, f"pvb{os.getpid() % 100000}")
    print(f"lab: {a.hosts} hosts up in {time.perf_counter() - t:.2f} s ({os.cpu_count()} CPUs)")
    try:
        counts = [c for c in (1, 4, 8) if c <= a.hosts]
        exec_latency(lab, a.n)
        connect_fanout(lab, counts, a.repeat)
        console_add(lab, counts, a.repeat, a.n // 2)
    finally:
        t = time.perf_counter()
        problems = labmod.down(d)
        print(f"\nlab down in {time.perf_counter() - t:.2f} s{'; ' + '; '.join(problems) if problems else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

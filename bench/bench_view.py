"""Benchmark: how long the console's view takes to build a frame (run by hand).

    .venv/bin/python bench/bench_view.py [--hosts 8] [--tasks 100] [--rounds 200]

Builds the view's frame (pvmconsole/view/model.py ``frame``: hosts with rates and
page bars, the task rows that fit, the filter) from two samples of --hosts daemon
states with --tasks tasks each, shaped as ``pvm_shmd_stat --json`` gives them, and
prints the median and worst build time in milliseconds, with and without a filter,
against the issue's 50 ms. The sampling runs in a thread of its own in the view and
is not part of a frame.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from pvmconsole.view.model import Sample, Selection, frame  # noqa: E402

TEMPLATE = {"pid": 1234, "tid": 0x40000, "host": 1, "name": "h", "vmid": "v", "uptime": 9.0,
            "pagesize": 4096, "generation": 0, "load": 0.5, "clock": 100.0, "trace": 0,
            "segments": [{"id": s, "pages": 4096, "free": 4000, "largest_free": 4000,
                          "allocated": 5, "freed": 5} for s in range(8)],
            "counters": {"sent": 0, "sent_bytes": 0, "recvd": 0, "recvd_bytes": 0},
            "exited_tasks": []}


def states(hosts: int, tasks: int, clock: float, scale: int) -> Sample:
    out = []
    for h in range(hosts):
        st = copy.deepcopy(TEMPLATE)
        st["clock"] = clock
        st["tasks"] = [{"tid": (h + 1) << 18 | (k + 2), "pid": 1000 + k, "name": f"worker{k}",
                        "state": ("running", "precv", "pages")[k % 3], "sent": k * scale,
                        "sent_bytes": 8 * k * scale, "recvd": k * scale,
                        "recvd_bytes": 8 * k * scale, "pages": k % 7, "connected": True,
                        "waiting": k % 4} for k in range(tasks)]
        st["counters"] = {c: sum(t[c] for t in st["tasks"]) for c in
                          ("sent", "sent_bytes", "recvd", "recvd_bytes")}
        out.append((f"host{h}", st))
    return Sample(out)


def timed(now: Sample, before: Sample, sel: Selection, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        frame(now, before, sel, height=60, title="bench")
        times.append((time.perf_counter() - t) * 1e3)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=200)
    a = ap.parse_args(argv)
    before, now = states(a.hosts, a.tasks, 100.0, 10), states(a.hosts, a.tasks, 100.25, 12)
    print(f"{a.hosts} hosts x {a.tasks} tasks, {a.rounds} frames each, load "
          f"{os.getloadavg()[0]:.2f}; milliseconds per frame (the issue's bar: 50)")
    print(f"{'':<22} {'median':>8} {'worst':>8}")
    for what, sel in (("all tasks", Selection(row=a.tasks * a.hosts // 2)),
                      ("filter /worker1", Selection(filter="worker1"))):
        t = timed(now, before, sel, a.rounds)
        print(f"{what:<22} {statistics.median(t):8.2f} {max(t):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

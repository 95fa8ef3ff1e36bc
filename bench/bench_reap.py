#!/usr/bin/env python3
"""How long from ``kill -9`` of a task holding pages until pvm_shmd has freed them.

Starts a private pvm_shmd (its own PVM_TMP and VM id, small segments), then N times:
a real task process joins, allocates pages (a sender that never handed them over),
says ready; we SIGKILL it and poll segment 0's page map (as an alien process would,
no socket round trip) until every page is free again. Prints median, p90 and max.

    .venv/bin/python bench/bench_reap.py [-n 50] [--pages 20] [--keep-connection]

Without --keep-connection the task's socket to the daemon closes when the kernel tears
it down (the daemon's fast path: EOF); --keep-connection has a grandchild inherit the
task's socket so only the periodic /proc check (every 0.2 s) can notice the death.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r'''
import os, sys, time, shmd
t = shmd.join(name="victim", spin=False)
t._alloc(int(sys.argv[1]), time.monotonic() + 10)
gc = 0
if sys.argv[2] == "1":
    gc = os.fork()
    if gc == 0:  # keeps a copy of the socket open
        time.sleep(30); os._exit(0)
print("ready", gc, flush=True)
time.sleep(60)
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=50, help="trials (default 50)")
    ap.add_argument("--pages", type=int, default=20, help="pages the victim holds")
    ap.add_argument("--keep-connection", action="store_true",
                    help="a grandchild keeps the socket open: only the /proc check can tell")
    a = ap.parse_args()
    if not 1 <= a.pages <= 64:
        ap.error("--pages must be 1..64 (the daemon runs with -maxpages=64)")
    bindir = os.path.dirname(sys.executable)
    tmp = tempfile.mkdtemp(prefix="bench-reap-")
    vmid = f"bench{os.getpid()}"
    env = {**os.environ, "PVM_TMP": tmp, "PVM_VMID": vmid}
    os.environ.update(PVM_TMP=tmp, PVM_VMID=vmid)
    r = subprocess.run([os.path.join(bindir, "pvm_shmd"), "-maxpages=64", "-maxsegs=2"],
                       capture_output=True, text=True, timeout=60, env=env)
    if r.returncode:
        print(r.stderr, file=sys.stderr)
        return 1
    from shmd import control, layout

    shm, buf = control.attach_seg0(vmid)
    total = sum(layout.segent(buf, s)["npages"] for s in range(layout.header(buf)["nsegs"]))

    def free_pages() -> int:
        return sum(layout.segent(buf, s)["free"] for s in range(2))

    times: list[float] = []
    keep: list[float] = []
    try:
        for _ in range(a.n):
            p = subprocess.Popen([sys.executable, "-c", CHILD, str(a.pages),
                                  "1" if a.keep_connection else "0"],
                                 stdout=subprocess.PIPE, text=True, env=env)
            word, gc = p.stdout.readline().split()
            assert word == "ready"
            assert free_pages() == total - a.pages
            t0 = time.perf_counter()
            p.send_signal(signal.SIGKILL)
            deadline = t0 + 10
            while free_pages() != total:
                if time.perf_counter() > deadline:
                    raise SystemExit("pages not freed within 10 s")
                time.sleep(0.0002)
            times.append(time.perf_counter() - t0)
            if int(gc):
                os.kill(int(gc), signal.SIGKILL)
            p.wait()
            p.stdout.close()
        keep = sorted(times)
    finally:
        buf.release()
        shm.detach()
        subprocess.run([os.path.join(bindir, "pvm_shmd_stat"), "--stop"], env=env,
                       capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
    ms = [t * 1000 for t in keep]
    mode = "socket kept open by a grandchild (/proc check)" if a.keep_connection else "socket EOF"
    print(f"kill -9 -> {a.pages} pages free, {len(ms)} trials, {mode}: "
          f"median {statistics.median(ms):.1f} ms, p90 {ms[int(0.9 * (len(ms) - 1))]:.1f} ms, "
          f"min {ms[0]:.1f} ms, max {ms[-1]:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

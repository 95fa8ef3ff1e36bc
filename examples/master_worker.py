#!/usr/bin/env python3
"""Master/worker: the master hands out numpy blocks with psend, workers compute and send
results back, the master checks them. Uses the PVM-shaped names (shmd.pvm).

Needs a running daemon of your user and VM id (``pvm_shmd`` or the console's ``add``).

    python examples/master_worker.py --workers 3 --blocks 40 --rows 256

Each block is a (rows x 256) float64 matrix; a worker returns its row sums computed by
receiving the block straight into a preallocated array (pvm_precv, PVM_DOUBLE) and
replying with pvm_psend. Tag 0 stops a worker.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from shmd.pvm import PVM_DOUBLE, PVM_INT, PvmError, pvm_exit, pvm_mytid, pvm_precv, pvm_psend  # noqa: E402

COLS = 256
TAG_STOP, TAG_HELLO, TAG_WORK, TAG_RESULT = 0, 1, 2, 3


def worker(master: int, rows: int) -> int:
    me = pvm_mytid()
    try:
        pvm_psend(master, TAG_HELLO, np.array([me], "i4"), 1, PVM_INT)
        block = np.empty((rows, COLS + 1))  # column 0 carries the block number
        while True:
            src, tag, n = pvm_precv(master, -1, block, block.size, PVM_DOUBLE, timeout=60)
            if tag == TAG_STOP:
                return 0
            r = n // (COLS + 1)
            out = np.empty(r + 1)
            out[0] = block[0, 0]
            out[1:] = block[:r, 1:].sum(axis=1)
            pvm_psend(master, TAG_RESULT, out, out.size, PVM_DOUBLE)
    finally:
        pvm_exit()


def master(nworkers: int, nblocks: int, rows: int) -> int:
    me = pvm_mytid()
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker",
                               str(me), "--rows", str(rows)]) for _ in range(nworkers)]
    try:
        hello = np.zeros(1, "i4")
        workers = [pvm_precv(-1, TAG_HELLO, hello, 1, PVM_INT, timeout=30)[0]
                   for _ in range(nworkers)]
        print(f"master t{me:x}, workers " + " ".join(f"t{w:x}" for w in workers))
        rng = np.random.default_rng(1)
        blocks = [rng.standard_normal((rows, COLS)) for _ in range(nblocks)]
        t0 = time.perf_counter()
        todo, busy, done = list(range(nblocks)), {}, {}
        buf = np.empty(rows + 1)

        def hand_out(w: int) -> None:
            b = todo.pop()
            msg = np.hstack([np.full((rows, 1), float(b)), blocks[b]])
            pvm_psend(w, TAG_WORK, msg, msg.size, PVM_DOUBLE, timeout=30)
            busy[w] = b

        for w in workers:
            if todo:
                hand_out(w)
        while busy:
            src, tag, n = pvm_precv(-1, TAG_RESULT, buf, buf.size, PVM_DOUBLE, timeout=60)
            b = int(buf[0])
            del busy[src]
            done[b] = buf[1:n].copy()
            if todo:
                hand_out(src)
        took = time.perf_counter() - t0
        bad = [b for b in range(nblocks) if not np.allclose(done[b], blocks[b].sum(axis=1))]
        for w in workers:
            pvm_psend(w, TAG_STOP, b"", 0, PVM_DOUBLE)
        status = max(p.wait(timeout=30) for p in procs)
        mb = nblocks * rows * COLS * 8 / 1e6
        print(f"{nblocks} blocks ({mb:.1f} MB) by {nworkers} workers in {took:.3f} s; "
              f"{'all results correct' if not bad else f'WRONG results for blocks {bad}'}")
        return 1 if bad or status else 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        pvm_exit()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=40)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--worker", type=lambda s: int(s, 0), help=argparse.SUPPRESS)
    a = ap.parse_args()
    try:
        if a.worker is not None:
            return worker(a.worker, a.rows)
        return master(a.workers, a.blocks, a.rows)
    except PvmError as e:
        print(f"master_worker: {e} ({e.name})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

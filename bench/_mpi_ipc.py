"""The mpi4py part of bench/bench_ipc.py, run under ``mpirun -n 2`` (not by hand).

    mpirun -n 2 --allow-run-as-root --oversubscribe --bind-to none \\
        python bench/_mpi_ipc.py --lat 8,1024 --bw 65536 --repeat 3 --scale 1

Rank r pins itself to CPU r. Rank 0 prints one line ``RESULT <json>``:
{"lat": {size: [one-way us per run]}, "bw": {size: [GB/s per run]}, "errors": [...]}.
Same protocol as the other transports: ping-pong echoes the message back; streaming
sends a sequence number and the length in the first 16 bytes and the receiver checks
them and a CRC of a sampled 256-byte window of every message.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Payload, bw_count, lat_iters  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lat", default="")
    ap.add_argument("--bw", default="")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0)
    a = ap.parse_args()
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    try:
        os.sched_setaffinity(0, {rank % os.cpu_count()})
    except OSError:
        pass
    peer = 1 - rank
    lat_sizes = [int(s) for s in a.lat.split(",") if s]
    bw_sizes = [int(s) for s in a.bw.split(",") if s]
    out = {"lat": {}, "bw": {}, "errors": [], "version": MPI.Get_library_version().splitlines()[0]}
    for size in lat_sizes:
        pl = Payload(size)
        msg = pl.buf
        rbuf = bytearray(size)
        iters, warm = lat_iters(size, a.scale)
        runs = []
        for _ in range(a.repeat):
            comm.Barrier()
            rtts = []
            if rank == 0:
                for i in range(warm + iters):
                    pl.stamp(i)
                    t = time.perf_counter_ns()
                    comm.Send([msg, MPI.BYTE], dest=peer, tag=1)
                    comm.Recv([rbuf, MPI.BYTE], source=peer, tag=1)
                    rtts.append(time.perf_counter_ns() - t)
                    if not pl.check_echo(rbuf, i):
                        out["errors"].append(f"lat {size}: bad echo at {i}")
                        break
                runs.append(statistics.median(rtts[warm:]) / 2000.0)
            else:
                for _ in range(warm + iters):
                    comm.Recv([rbuf, MPI.BYTE], source=peer, tag=1)
                    comm.Send([rbuf, MPI.BYTE], dest=peer, tag=1)
        out["lat"][size] = runs
    for size in bw_sizes:
        pl = Payload(size)
        rbuf = bytearray(size)
        n, warm = bw_count(size, a.scale)
        runs = []
        for _ in range(a.repeat):
            comm.Barrier()
            if rank == 0:
                for i in range(warm + n):
                    pl.stamp(i)
                    comm.Send([pl.buf, MPI.BYTE], dest=peer, tag=2)
                res = comm.recv(source=peer, tag=3)
                if isinstance(res, str):
                    out["errors"].append(f"bw {size}: {res}")
                else:
                    runs.append(res)
            else:
                st = MPI.Status()
                err = None
                t0 = 0.0
                for i in range(warm + n):
                    comm.Recv([rbuf, MPI.BYTE], source=peer, tag=2, status=st)
                    if i == warm - 1:
                        t0 = time.perf_counter()
                    e = pl.verify(rbuf, st.Get_count(MPI.BYTE), i)
                    if e and err is None:
                        err = e
                t1 = time.perf_counter()
                comm.send(err if err else n * size / (t1 - t0) / 1e9, dest=peer, tag=3)
        out["bw"][size] = runs
    if rank == 0:
        print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

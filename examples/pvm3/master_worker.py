#!/usr/bin/env python3
"""master/worker with packed messages of mixed types (PVM's master1/slave1).

The master spawns NWORK copies of itself as workers and sends each a message packing
an int (the worker's number), a string, a double array and a complex; each worker
unpacks it, computes, and packs back its number, the array's sum, its scaled array
and the string reversed. The master checks every result.

    pvm> spawn -> /path/to/examples/pvm3/master_worker.py 4 1000
"""
import os
import sys

import numpy as np

from shmd.pvm import *

TAG_WORK, TAG_RESULT = 1, 2


def worker() -> int:
    master = pvm_parent()
    pvm_recv(master, TAG_WORK)
    me = pvm_upkint(None, 1)[0]
    n = pvm_upkint(None, 1)[0]
    word = pvm_upkstr()
    data = np.empty(n)
    pvm_upkdouble(data, n, 1)
    scale = pvm_upkdcplx(None, 1)[0]
    pvm_initsend(PvmDataDefault)
    pvm_pkint(me)
    pvm_pkdouble(float(data.sum()))
    pvm_pkdouble(data * scale.real, n, 1)
    pvm_pkstr(word[::-1])
    pvm_send(master, TAG_RESULT)
    pvm_exit()
    return 0


def master(nwork: int, n: int) -> int:
    print(f"master t{pvm_mytid():x}: {nwork} workers, {n} doubles each")
    tids = pvm_spawn(os.path.abspath(sys.argv[0]), ["worker"], PvmTaskDefault, "", nwork)
    if any(t < 0 for t in tids):
        print("spawn failed:", [strerror(t) for t in tids if t < 0])
        pvm_exit()
        return 1
    for i, tid in enumerate(tids):
        pvm_initsend(PvmDataDefault)
        pvm_pkint([i, n], 2, 1)
        pvm_pkstr(f"worker-{i}")
        pvm_pkdouble(np.arange(n) + i, n, 1)
        pvm_pkdcplx(complex(i + 1, 0.5))
        pvm_send(tid, TAG_WORK)
    bad = 0
    for _ in tids:
        pvm_recv(-1, TAG_RESULT)
        i = pvm_upkint(None, 1)[0]
        total = pvm_upkdouble(None, 1)[0]
        scaled = np.empty(n)
        pvm_upkdouble(scaled, n, 1)
        word = pvm_upkstr()
        want = np.arange(n) + i
        good = (total == want.sum() and (scaled == want * (i + 1)).all() and word == f"worker-{i}"[::-1])
        bad += not good
        print(f"worker {i}: sum {total:.0f} {'ok' if good else 'WRONG'}")
    print("OK: all results correct" if not bad else f"WRONG: {bad} results")
    pvm_exit()
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker())
    sys.exit(master(int(sys.argv[1]) if len(sys.argv) > 1 else 3, int(sys.argv[2]) if len(sys.argv) > 2 else 1000))

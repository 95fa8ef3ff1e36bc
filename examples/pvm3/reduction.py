#!/usr/bin/env python3
"""Reduction: NPROC copies in the group "sum"; each makes its part of a vector, and
pvm_reduce gives instance 0 the element-wise sum (PvmSum) and maximum (PvmMax) over
the group, which it checks against the values computed directly.

    pvm> spawn -> /path/to/examples/pvm3/reduction.py 4 100000
"""
import os
import sys

import numpy as np

from shmd.pvm import *

GROUP = "sum"


def part(inst: int, n: int) -> np.ndarray:
    return np.sin(np.arange(n) * (inst + 1.0)) * (inst + 1)


def main() -> int:
    nproc = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100000
    pvm_mytid()
    inst = pvm_joingroup(GROUP)  # before the others start: the first copy is instance 0, the root
    if sys.argv[3:4] != ["copy"]:
        tids = pvm_spawn(os.path.abspath(sys.argv[0]), [str(nproc), str(n), "copy"], PvmTaskDefault, "", nproc - 1)
        if any(t < 0 for t in tids):
            print("spawn failed:", [strerror(t) for t in tids if t < 0])
            pvm_exit()
            return 1
    pvm_barrier(GROUP, nproc)
    total = part(inst, n)
    pvm_reduce(PvmSum, total, n, PVM_DOUBLE, 1, GROUP, 0)
    most = part(inst, n)
    pvm_reduce(PvmMax, most, n, PVM_DOUBLE, 2, GROUP, 0)
    ok = True
    if inst == 0:
        parts = [part(i, n) for i in range(nproc)]
        ok = bool(np.allclose(total, sum(parts)) and (most == np.max(parts, axis=0)).all())
        print(f"{nproc} tasks, {n} doubles: sum[1] {total[1]:.6f}, max[1] {most[1]:.6f} ({'OK' if ok else 'WRONG'})")
    pvm_barrier(GROUP, nproc)  # nobody leaves before the root has its results
    pvm_lvgroup(GROUP)
    pvm_exit()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

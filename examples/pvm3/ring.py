#!/usr/bin/env python3
"""SPMD ring: NPROC copies of one program in the group "ring". The first copy spawns
the others (after joining: it is instance 0); all join, meet at a barrier, then a token goes round the ring by instance
number, each adding its instance; a last barrier, and instance 0 checks the sum.

    pvm> spawn -> /path/to/examples/pvm3/ring.py 4
"""
import os
import sys

from shmd.pvm import *

GROUP, TAG = "ring", 7


def main() -> int:
    nproc = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    me = pvm_mytid()
    # the first copy joins before it starts the others: it is instance 0, the one that
    # prints (joining after them, a copy that joined first would be, and print unseen)
    inst = pvm_joingroup(GROUP)
    if sys.argv[2:3] != ["copy"]:
        tids = pvm_spawn(os.path.abspath(sys.argv[0]), [str(nproc), "copy"], PvmTaskDefault, "", nproc - 1)
        if any(t < 0 for t in tids):
            print("spawn failed:", [strerror(t) for t in tids if t < 0])
            pvm_exit()
            return 1
    pvm_barrier(GROUP, nproc)  # everyone has joined
    right = pvm_gettid(GROUP, (inst + 1) % nproc)
    left = pvm_gettid(GROUP, (inst - 1) % nproc)
    if inst == 0:
        pvm_initsend(PvmDataDefault)
        pvm_pkint(0)
        pvm_send(right, TAG)
        pvm_recv(left, TAG)
        total = pvm_upkint(None, 1)[0]
        want = sum(range(nproc))
        print(f"t{me:x}: token back after {nproc} tasks, sum {total} ({'OK' if total == want else 'WRONG'})")
    else:
        pvm_recv(left, TAG)
        value = pvm_upkint(None, 1)[0]
        pvm_initsend(PvmDataDefault)
        pvm_pkint(value + inst)
        pvm_send(right, TAG)
        total = want = 0
    pvm_barrier(GROUP, nproc)
    pvm_lvgroup(GROUP)
    pvm_exit()
    return 0 if total == want else 1


if __name__ == "__main__":
    sys.exit(main())

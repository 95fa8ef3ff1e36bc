"""Where PVM's packed calls spend their time in one process (a diagnosis helper, run by hand).

    .venv/bin/python bench/_profile_pvm.py [--n 20000] [--repeat 7]

Starts a private pvm_shmd (removed at the end) and one task that sends 8 bytes to itself
and receives them (no wake-up, no other CPU), timing per round, the fastest of --repeat:
psend + precv_into (the peer) beside pvm_initsend + pvm_pkbyte + pvm_send + pvm_recv +
pvm_upkbyte in each encoding, the two interleaved; then the packed calls' pieces alone.
"""
from __future__ import annotations

import argparse
import os
import sys
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from bench_ipc import Owned, machine, start_daemon  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args(argv)
    owned = Owned()
    try:
        os.environ.update(owned.env(start_daemon(owned, 8)))
        import shmd
        from shmd import pvm

        me = shmd.join(spin=False)
        tid, data, into = me.tid, bytearray(8), bytearray(8)

        def packed(enc: int):
            def f():
                pvm.pvm_initsend(enc)
                pvm.pvm_pkbyte(data, 8, 1)
                pvm.pvm_send(tid, 1)
                pvm.pvm_recv(tid, 1)
                pvm.pvm_upkbyte(into, 8, 1)
            return f

        rounds = {"psend + precv_into": lambda: (me.psend(tid, 1, data), me.precv_into(into, tid, 1))}
        for enc in ("PvmDataDefault", "PvmDataRaw", "PvmDataInPlace"):
            rounds[f"packed, {enc}"] = packed(getattr(pvm, enc))
        best = dict.fromkeys(rounds, float("inf"))
        for _ in range(a.repeat):  # interleaved: a burst of load falls on all of them
            for name, f in rounds.items():
                best[name] = min(best[name], timeit.timeit(f, number=a.n) / a.n)

        def alone(f) -> float:
            return min(timeit.repeat(f, number=a.n, repeat=a.repeat)) / a.n

        pvm.pvm_initsend(pvm.PvmDataDefault)
        pvm.pvm_pkbyte(data, 8, 1)
        pieces = {
            "pvm_initsend": alone(lambda: pvm.pvm_initsend(pvm.PvmDataDefault)),
            "pvm_initsend + pvm_pkbyte": alone(lambda: (pvm.pvm_initsend(pvm.PvmDataDefault),
                                                        pvm.pvm_pkbyte(data, 8, 1))),
            "pvm_send + pvm_recv": alone(lambda: (pvm.pvm_send(tid, 1), pvm.pvm_recv(tid, 1))),
            "pvm_send + precv_into": alone(lambda: (pvm.pvm_send(tid, 1), me.precv_into(bytearray(64), tid, 1))),
        }
        pvm.pvm_send(tid, 1)
        pvm.pvm_recv(tid, 1)
        b = pvm.rbuf()

        def upk():
            b.pos = 0
            pvm.pvm_upkbyte(into, 8, 1)
        pieces["pvm_upkbyte (and a pos reset)"] = alone(upk)
        pvm.pvm_exit()
    finally:
        owned.clean()
    for line in machine():
        print(line)
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"\none task to itself, 8 bytes, microseconds a round (fastest of {a.repeat} x {a.n}, interleaved)")
    for name, t in best.items():
        print(f"  {name:32s} {t * 1e6:7.2f}")
    print("\nthe pieces alone (PvmDataDefault), microseconds")
    for name, t in pieces.items():
        print(f"  {name:32s} {t * 1e6:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""timing: round trips and bandwidth through pvm_initsend/pvm_pkbyte/pvm_send and
pvm_recv/pvm_upkbyte (PVM's timing.c). The master spawns an echo task; for each size
it times ROUNDS round trips (latency = half of one), checks the data came back whole,
then streams messages one way for the bandwidth.

    pvm> spawn -> /path/to/examples/pvm3/timing.py 20
"""
import os
import sys
import time

from shmd.pvm import *

SIZES = [8, 64, 1024, 16384, 65536, 262144, 1048576]
TAG_ECHO, TAG_STREAM, TAG_DONE = 1, 2, 3


def echo() -> int:
    master = pvm_parent()
    while True:
        bufid = pvm_recv(master, -1)
        nbytes, tag, _ = pvm_bufinfo(bufid)
        if tag == TAG_DONE:
            break
        if tag == TAG_STREAM:
            data = bytearray(nbytes)
            pvm_upkbyte(data, nbytes, 1)
            continue
        data = bytearray(nbytes)
        pvm_upkbyte(data, nbytes, 1)
        pvm_initsend(PvmDataDefault)
        pvm_pkbyte(data, nbytes, 1)
        pvm_send(master, TAG_ECHO)
    pvm_initsend(PvmDataDefault)
    pvm_send(master, TAG_DONE)
    pvm_exit()
    return 0


def main(rounds: int) -> int:
    pvm_mytid()
    peer = pvm_spawn(os.path.abspath(sys.argv[0]), ["echo"], PvmTaskDefault, "", 1)[0]
    if peer < 0:
        print("spawn failed:", strerror(peer))
        pvm_exit()
        return 1
    print(f"{'bytes':>8} {'latency us':>11} {'MB/s':>8}")
    bad = 0
    for size in SIZES:
        out = bytes((i * 7) & 0xFF for i in range(256)) * (size // 256) + bytes(size % 256)
        back = bytearray(size)
        t0 = time.perf_counter()
        for _ in range(rounds):
            pvm_initsend(PvmDataDefault)
            pvm_pkbyte(out, size, 1)
            pvm_send(peer, TAG_ECHO)
            pvm_recv(peer, TAG_ECHO)
            pvm_upkbyte(back, size, 1)
        rtt = (time.perf_counter() - t0) / rounds
        bad += back != out
        t0 = time.perf_counter()
        for _ in range(rounds):
            pvm_initsend(PvmDataDefault)
            pvm_pkbyte(out, size, 1)
            pvm_send(peer, TAG_STREAM)
        pvm_initsend(PvmDataDefault)
        pvm_pkbyte(out, 8, 1)
        pvm_send(peer, TAG_ECHO)  # answered once every streamed message was taken
        pvm_recv(peer, TAG_ECHO)
        rate = size * rounds / (time.perf_counter() - t0) / 1e6
        print(f"{size:>8} {rtt / 2 * 1e6:>11.1f} {rate:>8.1f}")
    pvm_initsend(PvmDataDefault)
    pvm_send(peer, TAG_DONE)
    pvm_recv(peer, TAG_DONE)
    print("OK: every echo came back whole" if not bad else f"WRONG: {bad} echoes differ")
    pvm_exit()
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["echo"]:
        sys.exit(echo())
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))

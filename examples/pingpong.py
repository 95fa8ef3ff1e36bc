#!/usr/bin/env python3
"""Ping-pong between two tasks through pvm_shmd's shared pages, with round-trip times.

Needs a running daemon of your user and VM id (``pvm_shmd`` or the console's ``add``).

    python examples/pingpong.py                    # starts its partner itself
    python examples/pingpong.py --sizes 8,65536,4194304 --rounds 200

The first process (ping) starts a second copy of itself (pong) that echoes every
message back; ping checks each echo and prints the median round trip per size.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import shmd  # noqa: E402

TAG_PING, TAG_PONG, TAG_STOP = 1, 2, 3


def pong(ping_tid: int) -> int:
    with shmd.join(name="pong") as me:
        me.psend(ping_tid, TAG_PONG, b"ready", timeout=10)
        while True:
            m = me.precv(ping_tid, shmd.ANY, timeout=60)
            if m.tag == TAG_STOP:
                return 0
            me.psend(ping_tid, TAG_PONG, m.data, timeout=60)


def ping(sizes: list[int], rounds: int) -> int:
    with shmd.join(name="ping") as me:
        partner = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--pong",
                                    str(me.tid)])
        try:
            peer = me.precv(tag=TAG_PONG, timeout=30).src
            print(f"ping t{me.tid:x} <-> pong t{peer:x}")
            print(f"{'bytes':>10} {'rounds':>7} {'median us':>10} {'MB/s':>9}")
            for size in sizes:
                data = os.urandom(size)
                times = []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    me.psend(peer, TAG_PING, data, timeout=30)
                    back = me.precv(peer, TAG_PONG, timeout=30)
                    times.append(time.perf_counter() - t0)
                    if back.data != data:
                        print(f"echo of {size} bytes differs", file=sys.stderr)
                        return 1
                med = statistics.median(times)
                print(f"{size:>10} {rounds:>7} {med * 1e6:>10.1f} {2 * size / med / 1e6:>9.1f}")
            me.psend(peer, TAG_STOP, b"", timeout=10)
            return partner.wait(timeout=30)
        finally:
            if partner.poll() is None:
                partner.kill()
                partner.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0,8,1024,65536,1048576",
                    help="comma-separated message sizes in bytes")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--pong", type=lambda s: int(s, 0), help=argparse.SUPPRESS)
    a = ap.parse_args()
    try:
        if a.pong is not None:
            return pong(a.pong)
        return ping([int(s) for s in a.sizes.split(",")], a.rounds)
    except shmd.PvmError as e:
        print(f"pingpong: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

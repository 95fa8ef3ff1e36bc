"""Benchmark: PVM's packed messages (pvm_initsend + pvm_pkbyte + pvm_send, pvm_recv +
pvm_upkbyte) beside psend/precv_into, on one host (run by hand).

    .venv/bin/python bench/bench_pvm.py [--rounds N] [--real-pvm]

Starts a pvm_shmd of its own (VM id of its own, removed at the end) and two tasks
(forked): a ping-pong for the latency (half a round trip, median of --repeat runs) at
8 B .. 1 MiB, a one-way stream for the bandwidth at 64 KiB .. 16 MiB. Every echo is
checked. With --real-pvm, the same with Debian's PVM 3.4.6 (``pvm_bench.c`` beside
this file, compiled against libpvm3; needs ``apt-get install pvm pvm-dev``): via its
pvmd (the default route) and with PvmRouteDirect. The machine is shared: the numbers
are noisy, so ours and the peer's are printed side by side from one run, the repeats
interleaved (each repeat runs every path), with the median and the spread.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

from bench_ipc import Owned, machine, start_daemon  # noqa: E402

LAT = [8, 64, 1024, 16384, 65536, 1 << 20]
BW = [64 << 10, 1 << 20, 4 << 20, 16 << 20]
MODES = ["psend/precv_into", "PvmDataDefault", "PvmDataRaw", "PvmDataInPlace"]
TAG, ACK = 1, 2
SPIN: bool | None = None  # --spin: None lets each task decide by the load (shmd.join's default)


def _send(mode: str, me, peer: int, data: bytearray, n: int) -> None:
    from shmd import pvm

    if mode == "psend/precv_into":
        me.psend(peer, TAG, data if n == len(data) else memoryview(data)[:n])
        return
    pvm.pvm_initsend(getattr(pvm, mode))
    pvm.pvm_pkbyte(data, n, 1)
    pvm.pvm_send(peer, TAG)


def _recv(mode: str, me, peer: int, into: bytearray, n: int) -> None:
    from shmd import pvm

    if mode == "psend/precv_into":
        me.precv_into(memoryview(into)[:n], peer, TAG)
        return
    pvm.pvm_recv(peer, TAG)
    pvm.pvm_upkbyte(into, n, 1)


def _peer(mode: str, sizes: list[int], rounds: int, stream: bool, up, down) -> None:
    import shmd

    me = shmd.join(spin=SPIN)
    up.put(me.tid)
    master = q_get(down)
    buf = bytearray(max(sizes))
    for n in sizes:
        for _ in range(rounds + 2):
            _recv(mode, me, master, buf, n)
            if not stream:
                _send(mode, me, master, buf, n)
        if stream:
            me.psend(master, ACK, b"k")
    me.leave()


def q_get(q):
    return q.get(timeout=60)


def run(mode: str, sizes: list[int], rounds: int, stream: bool) -> dict[int, float]:
    """Seconds per one-way message (latency) or bytes per second (stream), by size."""
    import shmd

    ctx = mp.get_context("fork")
    up: mp.Queue = ctx.Queue()
    down: mp.Queue = ctx.Queue()
    p = ctx.Process(target=_peer, args=(mode, sizes, rounds, stream, up, down))
    p.start()
    me = shmd.join(spin=SPIN)
    try:
        peer = q_get(up)
        down.put(me.tid)
        time.sleep(0.05)
        out = {}
        data = bytearray(os.urandom(max(sizes)))
        back = bytearray(max(sizes))
        for n in sizes:
            for k in range(rounds + 2):
                if k == 2:
                    t0 = time.perf_counter()
                _send(mode, me, peer, data, n)
                if not stream:
                    _recv(mode, me, peer, back, n)
                    if back[:n] != data[:n]:
                        raise SystemExit(f"{mode}: echo of {n} bytes differs")
            if stream:
                me.precv(peer, ACK, 60)
            dt = time.perf_counter() - t0
            out[n] = n * rounds / dt if stream else dt / rounds / 2
        return out
    finally:
        from shmd import pvm

        pvm.pvm_exit()
        me.leave()
        p.join(60)


def real_pvm(rounds: int, direct: bool) -> tuple[dict[int, float], dict[int, float]] | None:
    """Latency and bandwidth of Debian's PVM 3.4.6, or None if it is not installed."""
    root = "/usr/lib/pvm3"
    if not (shutil.which("cc") and os.path.exists(os.path.join(root, "lib", "pvmd"))
            and os.path.exists("/usr/include/pvm3.h")):
        return None
    tmp = tempfile.mkdtemp(prefix="bench_pvm.")
    try:
        exe = os.path.join(tmp, "pvm_bench")
        subprocess.run(["cc", "-O2", "-o", exe, os.path.join(HERE, "pvm_bench.c"), "-lpvm3"], check=True)
        env = dict(os.environ, PVM_ROOT=root, PVM_TMP=tmp, PVM_ALLOW_ROOT="1", HOME=tmp)
        env.pop("PVM_VMID", None)
        d = subprocess.Popen([os.path.join(root, "lib", "pvmd")], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            d.stdout.readline()  # its socket address: ready
            r = subprocess.run([exe, str(rounds), "1" if direct else "0"], env=env, capture_output=True,
                               text=True, timeout=600)
            lat, bw = {}, {}
            for line in r.stdout.splitlines():
                kind, size, val = line.split()
                if kind in ("lat", "bw"):  # (not "med": the median, for bench_net)
                    (lat if kind == "lat" else bw)[int(size)] = float(val)
            return lat, bw
        finally:
            subprocess.run([os.path.join(root, "lib", "pvm"), "-e"], input="halt\n", env=env, text=True,
                           capture_output=True, timeout=30)
            try:
                d.wait(10)
            except subprocess.TimeoutExpired:
                d.kill()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def label(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1024 else f"{n} B"


def _table(title: str, sizes: list[int], rows: dict, fmt, col: int = 10) -> None:
    w = max(len(m) for m in rows) + 2
    print(f"\n{title}")
    print(f"{'':{w}}" + "".join(f"{label(n):>{col}}" for n in sizes))
    for m, v in rows.items():
        print(f"{m:{w}}" + "".join(f"{fmt(v[n]):>{col}}" if n in v else f"{'-':>{col}}" for n in sizes))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--real-pvm", action="store_true")
    ap.add_argument("--spin", choices=("auto", "on", "off"), default="auto",
                    help="our receivers' busy-wait before they sleep (default: by the load, as shmd.join)")
    ap.add_argument("--max", type=int, default=LAT[-1], help="largest latency size (bytes)")
    a = ap.parse_args(argv)
    global SPIN
    SPIN = {"auto": None, "on": True, "off": False}[a.spin]
    lat_sizes = [n for n in LAT if n <= a.max]
    owned = Owned()
    # every run of every path, by path: repeats interleaved (each round runs every path
    # once, real PVM included) so that a burst of load on the shared machine falls on
    # all of them, not on one path's runs
    lats: dict[str, list[dict[int, float]]] = {}
    bws: dict[str, list[dict[int, float]]] = {}
    missing = False
    try:
        vmid = start_daemon(owned, 8)
        os.environ.update(owned.env(vmid))
        for _ in range(a.repeat):
            for mode in MODES:
                lats.setdefault(mode, []).append(run(mode, lat_sizes, a.rounds, False))
                bws.setdefault(mode, []).append(run(mode, BW, max(a.rounds // 10, 8), True))
            for direct in (False, True) if a.real_pvm and not missing else ():
                got = real_pvm(a.rounds, direct)
                name = "PVM 3.4.6 " + ("PvmRouteDirect" if direct else "via pvmd")
                if got is None:
                    print(f"{name}: not installed (apt-get install pvm pvm-dev)", file=sys.stderr)
                    missing = True
                    break
                lats.setdefault(name, []).append(got[0])
                bws.setdefault(name, []).append(got[1])
    finally:
        owned.clean()

    def med(runs: dict[str, list[dict[int, float]]], sizes: list[int]) -> dict[str, dict[int, float]]:
        return {m: {n: statistics.median(r[n] for r in rs) for n in sizes} for m, rs in runs.items()}

    for line in machine():
        print(line)
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"load average before printing: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; our spin: {a.spin}")
    _table(f"latency, one way (half a round trip), microseconds, median of {a.repeat}: "
           "pack + send + recv + unpack", LAT, med(lats, lat_sizes), lambda x: f"{x * 1e6:.1f}")
    spread = {m: {n: (min(r[n] for r in rs), max(r[n] for r in rs)) for n in lat_sizes} for m, rs in lats.items()}
    _table("latency spread, microseconds: fastest-slowest run", LAT, spread,
           lambda x: f"{x[0] * 1e6:.0f}-{x[1] * 1e6:.0f}", 13)
    _table(f"bandwidth, one-way stream, GB/s, median of {a.repeat}", BW, med(bws, BW), lambda x: f"{x / 1e9:.2f}")
    return 0

if __name__ == "__main__":
    sys.exit(main())

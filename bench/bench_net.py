"""Benchmark: psend/precv between tasks of two hosts through pvm_netd, side by side with
the floors (run by hand).

    .venv/bin/python bench/bench_net.py [--repeat 3] [--only ours,ours-trusted,ours-packed,ours-via-netd,floors]
    .venv/bin/python bench/bench_net.py --lab [--repeat 3] [--only ...,pvm]   (root)

Two "hosts" on this machine: two pvm_shmd (VM ids of their own, host 1 and host 2, a
private PVM_TMP) each with its pvm_netd bound to 127.0.0.1, so the network is the
loopback device. With --lab: two hosts of a pvm-lab made for the run (each its own
network, IPC and PID namespace and sshd, joined by veth pairs and a bridge; removed at
the end), a VM of this checkout's console over them, and the same rows between them, plus
real PVM 3.4.6's (_net_lab.py says how each is run). Rows, in one run:

  ours            a task of host 1 and one of host 2, psend/precv (each sends to the other
                  host's pvm_netd, which delivers)
  ours-trusted    the same with the trusted-network option (authenticated, not encrypted)
  ours-packed     as ours, with PVM's packed messages: pvm_initsend(PvmDataDefault) +
                  pvm_pkbyte + pvm_send, pvm_recv + pvm_upkbyte (shmd.pvm)
  ours-via-netd   as ours, each task sending through its own host's pvm_netd
                  (PVM_NET_DIRECT=0: the route before tasks sent to the far pvm_netd)
  tcp             a plain Python TCP socket pair (the floor)
  tls             Python's ssl, mutual, ECDSA P-256 (the other candidate)
  zmq             pyzmq PAIR without encryption (the library's floor)
  zmq-curve       pyzmq PAIR with CURVE (the library's floor with its encryption)
  PVM via pvmds   (--lab) Debian's PVM 3.4.6, pvm_bench.c: packed messages through the
                  two pvmds (UDP between them)
  PVM direct      (--lab) the same with PvmRouteDirect (a TCP connection task to task)

Ping-pong one-way latency (median round trip / 2) at 8 B, 1 KiB, 64 KiB, 1 MiB and
stream bandwidth (bytes acknowledged by the receiver / time) at 64 KiB, 1 MiB, 16 MiB;
each figure the median over --repeat runs. Everything started is stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import zmq  # noqa: E402
from _net_floor import floors, measure  # noqa: E402

BIN = os.path.dirname(sys.executable)
LAT = (8, 1024, 65536, 1 << 20)
BW = (65536, 1 << 20, 16 << 20)
ROWS = ("ours", "ours-trusted", "ours-packed", "ours-via-netd", "floors")

# host 2's task: echo ping-pongs, sink streams (tag 2: a stream; its last message tag 3)
PEER = r'''
import sys, shmd
with shmd.join(name="bench") as me:
    print(me.tid, flush=True)
    buf = bytearray((16 << 20) + 4096)  # (a packed message has PVM's header too)
    while True:
        src, tag, n = me.precv_into(buf, timeout=120)
        if tag == 1:
            me.psend(src, 1, memoryview(buf)[:n])
        elif tag == 3:
            me.psend(src, 4, b"k")
        elif tag == 9:
            break
'''


def cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


class Hosts:
    """Two daemons with their pvm_netd, and host 2's peer task."""

    def __init__(self, tmp: str, trusted: bool, direct: bool = True):
        self.env = {**os.environ, "PVM_TMP": tmp, "PVM_NET_DIRECT": "1" if direct else "0"}
        self.keys = [k.decode() for k in zmq.curve_keypair()]
        self.vmids = ("bn1", "bn2")
        self.peer: subprocess.Popen | None = None
        port = None
        for h, v in enumerate(self.vmids, start=1):
            env = {**self.env, "PVM_VMID": v}
            r = subprocess.run([os.path.join(BIN, "pvm_shmd"), f"-host={h}"], env=env, capture_output=True,
                               text=True, timeout=30)
            if r.returncode:
                raise SystemExit(f"pvm_shmd: {r.stderr.strip()}")
            peers = [[1, "127.0.0.1", port]] if port else []
            line = json.dumps({"public": self.keys[0], "secret": self.keys[1], "peers": peers, "trusted": trusted})
            r = subprocess.run([os.path.join(BIN, "pvm_netd"), f"-host={h}", "-bind=127.0.0.1"], env=env,
                               input=line + "\n", capture_output=True, text=True, timeout=30)
            if r.returncode:
                raise SystemExit(f"pvm_netd: {r.stderr.strip()}")
            port = port or int(r.stdout.split("netd<")[1].split(">")[0])
        os.environ.update(PVM_TMP=tmp, PVM_VMID=self.vmids[0], PVM_NET_DIRECT=self.env["PVM_NET_DIRECT"])
        from shmd import remote
        deadline = time.monotonic() + 10
        while remote.route(self.vmids[0])["hosts"].get("2") is not True:
            if time.monotonic() > deadline:
                raise SystemExit("host 2 never came up at host 1")
            time.sleep(0.02)
        self.peer = subprocess.Popen([sys.executable, "-c", PEER], stdout=subprocess.PIPE, text=True,
                                     env={**self.env, "PVM_VMID": self.vmids[1]})
        assert self.peer.stdout is not None
        self.tid = int(self.peer.stdout.readline())

    def close(self) -> None:
        if self.peer is not None and self.peer.poll() is None:
            self.peer.kill()
            self.peer.wait(10)
        for v in self.vmids:
            subprocess.run([os.path.join(BIN, "pvm_shmd_stat"), "--stop", f"-vmid={v}"], env=self.env,
                           capture_output=True, timeout=30)


def ours(vmid: str | None, peer: int, packed: bool = False) -> dict[str, float]:
    """As a task of VM *vmid* (None: $PVM_VMID), with the echo task *peer* of another host:
    psend/precv (or, *packed*, pvm_initsend(PvmDataDefault) + pvm_pkbyte + pvm_send,
    pvm_recv + pvm_upkbyte: the echo sends the packed message back as it came)."""
    import shmd
    from shmd import pvm

    def send(tag: int, msg: bytes) -> None:
        if packed:
            pvm.pvm_initsend(pvm.PvmDataDefault)
            pvm.pvm_pkbyte(msg, len(msg), 1)
            pvm.pvm_send(peer, tag)
        else:
            me.psend(peer, tag, msg, timeout=60)

    with shmd.join(vmid, spin=False) as me:
        buf = bytearray(16 << 20)

        def pinger(n: int):
            msg = bytes(n)
            if packed:
                return lambda: (send(1, msg), pvm.pvm_trecv(peer, 1, 30), pvm.pvm_upkbyte(buf, n, 1))
            return lambda: (send(1, msg), me.precv_into(buf, peer, 1, timeout=30))

        def pusher(n: int):
            msg = bytes(n)

            def push(last: bool) -> None:
                send(3 if last else 2, msg)
                if last:
                    me.precv(peer, 4, timeout=60)
            return push

        try:
            return measure(pinger, pusher, LAT, BW)
        finally:
            me.psend(peer, 9, b"")
            if packed:
                pvm.pvm_exit()  # (the library's state: its buffers, its task)


VARIANTS = (("ours", False, False, True), ("ours-trusted", True, False, True), ("ours-packed", False, True, True),
            ("ours-via-netd", False, False, False))  # (row, trusted, packed, direct)


def loopback(only: set[str], repeat: int) -> dict[str, list[dict]]:
    """The rows between two pvm_shmd+pvm_netd of this machine, over the loopback device."""
    runs: dict[str, list[dict]] = {}
    for _ in range(repeat):
        for name, trusted, packed, direct in VARIANTS:
            if name not in only:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                os.chmod(tmp, 0o700)
                hosts = Hosts(tmp, trusted, direct)
                try:
                    runs.setdefault(name, []).append(ours(hosts.vmids[0], hosts.tid, packed))
                finally:
                    hosts.close()
        for k, r in (floors("127.0.0.1", sizes_lat=LAT, sizes_bw=BW) if "floors" in only else {}).items():
            runs.setdefault(k, []).append(r)
    return runs


def in_lab(only: set[str], repeat: int) -> dict[str, list[dict]]:
    """The rows between two hosts of a pvm-lab made for the run (and removed after)."""
    import _net_lab
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from lab_probe import running_lab

    missing = _net_lab.pvm_missing() if "pvm" in only else None
    if missing:
        print(f"(no PVM rows: {missing})")
    runs: dict[str, list[dict]] = {}
    with running_lab("n", 2) as lab:
        h1, h2 = lab.hosts[:2]
        for _ in range(repeat):
            for name, trusted, packed, direct in VARIANTS:
                if name in only:
                    runs.setdefault(name, []).append(_net_lab.ours(lab, name, trusted, packed, direct, PEER))
            if "pvm" in only and not missing:
                for k, r in _net_lab.real_pvm(lab).items():
                    runs.setdefault(k, []).append(r)
            if "floors" in only:
                for k, r in floors(h2.addr, sizes_lat=LAT, sizes_bw=BW, server_ns=h2.netns,
                                   client_ns=h1.netns).items():
                    runs.setdefault(k, []).append(r)
    return runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--lab", action="store_true",
                    help="between two hosts of a pvm-lab made for the run (root), with real PVM 3.4.6's rows")
    ap.add_argument("--only", help=f"rows to run, comma-separated: {', '.join(ROWS)} (default: all; "
                                   "pvm only with --lab)")
    ap.add_argument("--side", type=int, metavar="TID", help=argparse.SUPPRESS)  # (--lab: host 1's pinger)
    ap.add_argument("--packed", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side is not None:
        print(json.dumps(ours(None, a.side, a.packed)))
        return 0
    rows = ROWS + (("pvm",) if a.lab else ())
    only = set((a.only or ",".join(rows)).split(","))
    if not only or only - set(rows):
        ap.error(f"--only {a.only!r}: expected a comma-separated list of {', '.join(rows)}")
    if a.repeat < 1:
        ap.error(f"--repeat {a.repeat}: expected at least 1")
    where = ("two hosts of a pvm-lab (network namespaces, veth pairs and a bridge)" if a.lab
             else "loopback between two pvm_shmd+pvm_netd of this machine")
    print(f"CPU: {cpu()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; {where}; median of {a.repeat}")
    runs = in_lab(only, a.repeat) if a.lab else loopback(only, a.repeat)
    head = "".join(f"{_size(n) + ' us':>11}" for n in LAT) + "".join(f"{_size(n) + ' GB/s':>12}" for n in BW)
    print(f"{'transport':<15}{head}")
    for k, rs in runs.items():
        med = {f: statistics.median(r[f] for r in rs) for f in rs[0]}
        print(f"{k:<15}" + "".join(f"{med[f'lat{n}'] * 1e6:11.1f}" for n in LAT)
              + "".join(f"{med[f'bw{n}'] / 1e9:12.2f}" for n in BW))
    return 0


def _size(n: int) -> str:
    return f"{n >> 20}M" if n >= 1 << 20 else f"{n >> 10}K" if n >= 1024 else f"{n}B"


if __name__ == "__main__":
    sys.exit(main())

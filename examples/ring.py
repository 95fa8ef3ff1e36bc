"""A token ring and an all-to-all exchange over every host of the virtual machine:
it only works when tasks on different hosts message each other (pvm_netd).

From the console (the master must run on the console's host, where the VM table is):

    pvm> spawn -> -. ring.py master 3 100000

master [LAPS] [SIZE]  joins the local pvm_shmd, starts one member on every host of the
                      VM (through that host's pvm_spawn, its parent tid ours), learns
                      their tids (each sends its own), sends everyone the ring, sends a
                      SIZE-byte token round it LAPS times, then waits for each member's
                      all-to-all report. Prints ``ok`` lines and exits 0 when every byte
                      arrived as sent.
member                joins its host's pvm_shmd; passes the token on (checking it);
                      sends each other member a message made for that pair and checks
                      the one each sends it; reports to the master.
"""
from __future__ import annotations

import os
import socket
import struct
import sys
import time

import shmd
from shmd.task import ANY

TAG_HELLO, TAG_RING, TAG_TOKEN, TAG_ALL, TAG_REPORT = 1, 2, 3, 4, 5
TIMEOUT = 60.0


def payload(a: int, b: int, size: int) -> bytes:
    """The bytes *a* sends *b* (every pair its own, every byte position different)."""
    seed = (a * 2654435761 ^ b) & 0xFFFFFFFF
    block = bytes((seed >> (8 * (k % 4)) ^ k) & 0xFF for k in range(251))
    return (block * (size // 251 + 1))[:size]


def member() -> int:
    me = shmd.join()
    master = int(os.environ["PVM_PARENT"], 16)
    me.psend(master, TAG_HELLO, socket.gethostname().encode(), timeout=TIMEOUT)
    m = me.precv(master, TAG_RING, timeout=TIMEOUT)
    laps, size = struct.unpack_from("<II", m.data)
    ring = list(struct.unpack_from(f"<{(len(m.data) - 8) // 4}I", m.data, 8))
    i = ring.index(me.tid)
    left, right = ring[i - 1], ring[(i + 1) % len(ring)]
    token = payload(master, 0, size)
    bad = 0
    for _ in range(laps):
        t = me.precv(left, TAG_TOKEN, timeout=TIMEOUT)
        bad += t.data != token
        me.psend(right, TAG_TOKEN, t.data, timeout=TIMEOUT)
    # step k: send to the member k places on, take from the one k places back (each
    # step needs room for one message per member, not for all of them at once)
    members = ring[1:]
    j = members.index(me.tid)
    others = [t for t in members if t != me.tid]
    for k in range(1, len(members)):
        to, fro = members[(j + k) % len(members)], members[j - k]
        me.psend(to, TAG_ALL, payload(me.tid, to, size), timeout=TIMEOUT)
        got = me.precv(fro, TAG_ALL, timeout=TIMEOUT)
        bad += got.data != payload(fro, me.tid, size)
    me.psend(master, TAG_REPORT, struct.pack("<II", bad, len(others)), timeout=TIMEOUT)
    me.leave()
    return 0


def master(laps: int, size: int) -> int:
    from pvmconsole.vm import VirtualMachine
    from shmd.errors import PvmError
    from shmd.paths import current_vmid

    vm = VirtualMachine(current_vmid())
    try:
        hosts = vm.hosts()
    except PvmError:
        print("master: no virtual machine table here: run it on the console's host", flush=True)
        return 1
    me = shmd.join()
    t0 = time.monotonic()
    streams = [vm.link(h).spawn(os.path.abspath(__file__), ["member"], 1, ptid=me.tid, relay=False,
                                ep=h.options.get("ep")) for h in hosts]
    for h, s in zip(hosts, streams):  # pvm_spawn says "tid ..." or "err ...", then exits
        try:
            while (line := s.readline(TIMEOUT)) is not None:
                if line.startswith("err"):
                    print(f"{h.name}: member not started: {line[4:]}", flush=True)
                    return 1
        finally:
            s.close()
    names = {}
    for _ in hosts:
        m = me.precv(ANY, TAG_HELLO, timeout=TIMEOUT)
        names[m.src] = m.data.decode()
    ring = [me.tid, *sorted(names)]
    msg = struct.pack("<II", laps, size) + struct.pack(f"<{len(ring)}I", *ring)
    for t in ring[1:]:
        me.psend(t, TAG_RING, msg, timeout=TIMEOUT)
    token = payload(me.tid, 0, size)
    bad = 0
    for _ in range(laps):
        me.psend(ring[1], TAG_TOKEN, token, timeout=TIMEOUT)
        back = me.precv(ring[-1], TAG_TOKEN, timeout=TIMEOUT)
        bad += back.data != token
    print(f"ring of {len(ring) - 1} members on {len(set(names.values()))} hosts: {laps} laps of "
          f"{size} bytes {'ok' if not bad else f'{bad} WRONG'}", flush=True)
    for _ in ring[1:]:
        r = me.precv(ANY, TAG_REPORT, timeout=TIMEOUT)
        wrong, n = struct.unpack("<II", r.data)
        bad += wrong
        print(f"t{r.src:x} ({names[r.src]}): all-to-all with {n} others "
              f"{'ok' if not wrong else f'{wrong} WRONG'}", flush=True)
    vm.close()
    print(f"{'ok' if not bad else 'FAILED'} in {time.monotonic() - t0:.2f} s", flush=True)
    me.leave()
    return 0 if not bad else 1


def main(argv: list[str]) -> int:
    role = argv[0] if argv else "master"
    if role == "member":
        return member()
    if role == "master":
        return master(int(argv[1]) if len(argv) > 1 else 3, int(argv[2]) if len(argv) > 2 else 100000)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

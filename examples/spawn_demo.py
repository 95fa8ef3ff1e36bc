"""Master / foreman / worker over every host of the virtual machine.

From the console (the master may run on any host of the VM):

    pvm> spawn -> -. spawn_demo.py master 2 200000

(``spawn_demo.py`` found on the host's ``ep=`` path, or give its full path.) Roles:

master  [W] [N]  joins its host's pvm_shmd (so it shows in `ps`), lists the hosts
                 (pvm_config) and starts one foreman on each (pvm_spawn with PvmTaskHost:
                 that host's pvm_netd starts it), its own tid the foremen's parent,
                 receives each foreman's result with precv and checks it against the same
                 sum computed here.
foreman W N SEED joins its host's pvm_shmd, spawns W workers there (shmd.spawner.spawn),
                 hands each a slice of an N-element numpy array with psend, collects the
                 partial sums with precv, psends (seed, sum, workers, host) to the master.
worker           precv's its slice from the foreman (PVM_PARENT), sends back sum(x*x).

Messages between foreman and workers go through the host's shared memory; a foreman on
another host reaches the master through the hosts' pvm_netd (same psend/precv).
"""
from __future__ import annotations

import os
import socket
import struct
import sys
import time

import numpy as np

import shmd
from shmd import spawner
from shmd.task import ANY

TAG_WORK, TAG_RESULT, TAG_REPORT = 1, 2, 3
TIMEOUT = 60.0


def data_for(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n)


def worker() -> int:
    me = shmd.join()
    parent = int(os.environ["PVM_PARENT"], 16)
    msg = me.precv(parent, TAG_WORK, timeout=TIMEOUT)
    x = np.frombuffer(msg.data, dtype=np.float64)
    me.psend(parent, TAG_RESULT, np.array([np.dot(x, x)]), timeout=TIMEOUT)
    me.leave()
    return 0


def foreman(w: int, n: int, seed: int) -> int:
    me = shmd.join()
    host = socket.gethostname()
    tids = spawner.spawn(os.path.abspath(__file__), ["worker"], count=w, output="inherit")
    bad = [t for t in tids if not isinstance(t, int)]
    if bad:
        print(f"ERROR {host}: {bad[0]}", flush=True)
        return 1
    x = data_for(seed, n)
    for tid, part in zip(tids, np.array_split(x, w)):
        me.psend(tid, TAG_WORK, np.ascontiguousarray(part), timeout=TIMEOUT)
    total = 0.0
    for _ in tids:
        msg = me.precv(ANY, TAG_RESULT, timeout=TIMEOUT)
        total += float(np.frombuffer(msg.data, dtype=np.float64)[0])
    for _ in tids:  # reap our children
        os.wait()
    master = int(os.environ["PVM_PARENT"], 16)
    me.psend(master, TAG_REPORT, struct.pack("<qdi", seed, total, w) + host.encode(), timeout=TIMEOUT)
    me.leave()
    return 0


def master(w: int, n: int) -> int:
    from shmd.errors import PvmError
    from shmd.pvm import PvmTaskHost, pvm_config, pvm_spawn

    me = shmd.join()
    _, _, hosts = pvm_config()  # every host of the VM (through this host's pvm_netd)
    print(f"master t{me.tid:x}: {len(hosts)} hosts, {w} workers each, {n} numbers per host",
          flush=True)
    t0 = time.monotonic()
    names = {}
    for k, h in enumerate(hosts):  # one foreman on each host, started by that host
        seed = 1000 + k
        tid, = pvm_spawn(os.path.abspath(__file__), ["foreman", str(w), str(n), str(seed)], PvmTaskHost,
                         h.hi_name, 1)
        if tid < 0:
            print(f"{h.hi_name}: foreman not started: {PvmError(tid)}", flush=True)
        else:
            names[seed] = h.hi_name
    ok = 0
    for _ in names:
        try:
            m = me.precv(ANY, TAG_REPORT, timeout=TIMEOUT)
        except PvmError as e:
            print(f"no more results: {e}", flush=True)
            break
        seed, got, workers = struct.unpack_from("<qdi", m.data)
        where = m.data[struct.calcsize("<qdi"):].decode()
        want = float(np.dot(data_for(seed, n), data_for(seed, n)))
        good = abs(got - want) <= 1e-9 * abs(want)
        ok += good
        print(f"{names.get(seed, '?')} ({where}, foreman t{m.src:x}, {workers} workers): sum {got:.6f} "
              f"{'ok' if good else f'WRONG (expected {want:.6f})'}", flush=True)
    print(f"{ok} of {len(hosts)} hosts ok in {time.monotonic() - t0:.2f} s", flush=True)
    me.leave()
    return 0 if ok == len(hosts) else 1


def main(argv: list[str]) -> int:
    role = argv[0] if argv else "master"
    if role == "worker":
        return worker()
    if role == "foreman":
        return foreman(int(argv[1]), int(argv[2]), int(argv[3]))
    if role == "master":
        return master(int(argv[1]) if len(argv) > 1 else 2, int(argv[2]) if len(argv) > 2 else 100000)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

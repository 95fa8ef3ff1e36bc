"""PVM's packed messages and dynamic groups across hosts, with real daemons and real
pvm_netds: two "hosts" on this machine (test_net.py's Two: two pvm_shmd of two VM ids,
started as host 1 and host 2, each with its pvm_netd on 127.0.0.1). The test process is
a task of host 1, the master, where the VM's one group server runs (tids.GS_TID); the
workers are tasks of host 2."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from daemons import shmd_vm, wait_for  # noqa: F401  (a fixture)
from test_net import Two, two  # noqa: F401  (a fixture)

from pvmconsole.hostlink import users_tasks
from shmd import control, pvm, pvmgs, tids

# a task of host 2: joins group "span", says its tid and instance, then answers the
# master's mcast, takes part in a barrier, a bcast and a reduction, and a last barrier;
# with an argument it then waits to be killed, else it exits
WORKER = r'''
import sys, time
import numpy as np
from shmd import pvm
me = pvm.pvm_mytid()
inst = pvm.pvm_joingroup("span")
print(me, inst, flush=True)
pvm.pvm_recv(-1, 1)
word = pvm.pvm_upkstr()
pvm.pvm_initsend(pvm.PvmDataDefault)
pvm.pvm_pkstr(word + str(inst))
pvm.pvm_pkint([inst, pvm.pvm_gsize("span")], 2, 1)
pvm.pvm_send(pvm.pvm_gettid("span", 0), 2)
pvm.pvm_barrier("span", -1)
pvm.pvm_recv(-1, 3)
x = pvm.pvm_upkdouble(None, 1, 1)[0]
pvm.pvm_reduce(pvm.PvmSum, np.array([x * (inst + 1), inst]), 2, pvm.PVM_DOUBLE, 4, "span", 0)
pvm.pvm_reduce(pvm.PvmMax, [inst], 1, pvm.PVM_INT, 5, "span", 0)
pvm.pvm_barrier("span", -1)
if len(sys.argv) > 1:
    time.sleep(60)
pvm.pvm_exit()
'''


@pytest.fixture
def hosts(two):
    """test_net's two hosts; this process (a task of host 1 once it calls shmd.pvm) leaves first."""
    try:
        yield two
    finally:
        pvm.pvm_exit()


def _worker(two: Two, *args: str, host: int = 2) -> tuple[subprocess.Popen, int, int]:
    p = subprocess.Popen([sys.executable, "-c", WORKER, *args], stdout=subprocess.PIPE, text=True,
                         env=two.vm.env(two.b if host == 2 else two.a))
    two.procs.append(p)
    tid, inst = map(int, p.stdout.readline().split())
    return p, tid, inst


def test_group_spanning_two_hosts(hosts):
    """One group server for both hosts: instances numbered across them, mcast to tasks
    of the other host, barrier, bcast and reductions with members on both, and a member
    killed -9 on the other host leaves the group (its number is reused), as do the
    members of a host that goes down."""
    me = pvm.pvm_mytid()
    assert tids.host_of(me) == 1 and pvm.pvm_joingroup("span") == 0
    a, ta, ia = _worker(hosts)
    b, tb, ib = _worker(hosts, "then wait")
    h, th, ih = _worker(hosts, host=1)
    assert tids.host_of(ta) == tids.host_of(tb) == 2 and tids.host_of(th) == 1 and sorted((ia, ib, ih)) == [1, 2, 3]
    assert pvm.pvm_gsize("span") == 4 and pvm.pvm_gettid("span", ia) == ta and pvm.pvm_getinst("span", tb) == ib
    pvm.pvm_initsend(pvm.PvmDataDefault)
    pvm.pvm_pkstr("hello ")
    pvm.pvm_mcast([ta, th, tb, me], 1)  # to tasks of both hosts, not to ourselves (as PVM)
    got = {}
    for _ in range(3):
        pvm.pvm_recv(-1, 2)
        _, _, src = pvm.pvm_bufinfo(pvm.pvm_getrbuf())
        got[src] = (pvm.pvm_upkstr(), pvm.pvm_upkint(None, 2, 1).tolist())
    assert got == {t: (f"hello {i}", [i, 4]) for t, i in ((ta, ia), (tb, ib), (th, ih))}
    assert pvm.pvm_nrecv(-1, 1) == 0
    pvm.pvm_barrier("span", -1)
    pvm.pvm_initsend(pvm.PvmDataDefault)
    pvm.pvm_pkdouble(2.5, 1, 1)
    pvm.pvm_bcast("span", 3)
    total = np.array([2.5, 0.0])
    pvm.pvm_reduce(pvm.PvmSum, total, 2, pvm.PVM_DOUBLE, 4, "span", 0)
    assert total.tolist() == [2.5 * (1 + 2 + 3 + 4), 0 + 1 + 2 + 3]
    mx = [0]
    pvm.pvm_reduce(pvm.PvmMax, mx, 1, pvm.PVM_INT, 5, "span", 0)
    assert mx == [3]
    pvm.pvm_barrier("span", -1)
    assert a.wait(20) == 0 and h.wait(20) == 0
    wait_for(lambda: pvm.pvm_gsize("span") == 2, 10, "the members that exited to leave")
    b.kill()  # -9 on host 2: its host's pvmgs tells the server
    b.wait(10)
    t0 = time.monotonic()
    wait_for(lambda: pvm.pvm_gsize("span") == 1, 10, "the member killed on host 2 to leave")
    assert time.monotonic() - t0 < 5
    c, tc, ic = _worker(hosts)
    assert ic == 1  # the lowest free number again, whichever host
    os.kill(hosts.pid2, signal.SIGKILL)  # host 2 goes silent: pvm_netd of host 1 marks it down
    wait_for(lambda: pvm.pvm_gsize("span") == 1, 10, "the members of a host that is down to leave")
    c.kill()


def test_group_started_from_another_host(hosts):
    """Once the VM spans hosts, pvm_shmd of the master runs the group server by itself:
    a task of host 2 is the first to join (instance 0), one of host 1 the next. It is not
    among the user's tasks (as pvm_netd), though it is in the daemon's table."""
    wait_for(lambda: pvmgs.server_tid(pvm.S.me()) == tids.GS_TID, 10, "pvm_shmd of host 1 to start pvmgs")
    r = subprocess.run([sys.executable, "-c", "from shmd import pvm\nprint(pvm.pvm_joingroup('x'))\n"
                        "import time; time.sleep(0.5)\nprint(pvm.pvm_gsize('x'))\npvm.pvm_exit()"],
                       capture_output=True, text=True, timeout=30, env=hosts.vm.env(hosts.b))
    assert r.stdout.split() == ["0", "1"], r
    wait_for(lambda: pvm.pvm_gsize("x") == 0, 10, "the task of host 2, which exited, to leave")
    assert pvm.pvm_joingroup("x") == 0  # its number is free again
    table = control.request("stat", hosts.a)["tasks"]
    assert tids.GS_TID in [t["tid"] for t in table]
    assert tids.GS_TID not in [t["tid"] for t in users_tasks(table)]

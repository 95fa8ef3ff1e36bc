"""Dynamic groups through the group server (shmd.pvmgs): membership and instance
numbers, barriers (a dead member is not waited for), bcast, reduce, gather, scatter."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from shmd import pvm, pvmgs, tids
from shmd.pvm import PvmError


@pytest.fixture
def mytid(daemon):
    yield pvm.pvm_mytid()
    pvm.pvm_exit()


def test_membership_and_instances_reused(mytid, peers):
    assert pvm.pvm_joingroup("g") == 0
    a, b = peers(), peers()
    assert a.call("result = pvm.pvm_joingroup('g')") == 1
    assert b.call("result = pvm.pvm_joingroup('g')") == 2
    assert pvm.pvm_gsize("g") == 3 and pvm.pvm_gettid("g", 1) == a.tid and pvm.pvm_getinst("g", b.tid) == 2
    a.call("pvm.pvm_lvgroup('g')")
    c = peers()
    assert c.call("result = pvm.pvm_joingroup('g')") == 1  # the lowest free number, as PVM
    assert pvm.pvm_joingroup("other") == 0 and pvm.pvm_gsize("nothing") == 0
    for call, code in ((lambda: pvm.pvm_joingroup("g"), pvm.PvmDupGroup),
                       (lambda: pvm.pvm_gettid("g", 7), pvm.PvmNoInst),
                       (lambda: pvm.pvm_getinst("g", a.tid), pvm.PvmNotInGroup),
                       (lambda: pvm.pvm_lvgroup("nothing"), pvm.PvmNoGroup),
                       (lambda: pvm.pvm_joingroup(""), pvm.PvmNullGroup),
                       (lambda: pvm.pvm_joingroup(5), pvm.PvmNullGroup),
                       (lambda: pvm.pvm_barrier("g", 0), pvm.PvmBadParam),
                       (lambda: pvm.pvm_barrier("g", -2), pvm.PvmBadParam)):
        with pytest.raises(PvmError) as e:
            call()
        assert e.value.code == code
    c.kill()  # a member that dies leaves its groups
    deadline = time.monotonic() + 5
    while pvm.pvm_gsize("g") != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pvm.pvm_gsize("g") == 2
    assert pvmgs.server_tid(pvm.S.me()) > 0


def test_barrier_and_a_dead_member(mytid, peers):
    ps = [peers() for _ in range(3)]
    pvm.pvm_joingroup("b")
    for p in ps:
        p.call("pvm.pvm_joingroup('b')")
    for p in ps[:2]:
        p.start("pvm.pvm_barrier('b', -1); result = time.monotonic()")
    time.sleep(0.2)
    assert not ps[0].ready()
    ps[2].kill()  # never comes to the barrier: it dies, and is not waited for
    t0 = time.monotonic()
    assert pvm.pvm_barrier("b", -1) == pvm.PvmOk
    assert time.monotonic() - t0 < 5
    assert all(p.result() > 0 for p in ps[:2])
    ps[1].start("pvm.pvm_barrier('b', 3)")  # 3 of 3 left: then one dies -> too few: PvmNoInst
    time.sleep(0.2)
    ps[0].kill()
    with pytest.raises(Exception) as e:
        ps[1].result(timeout=10)
    assert getattr(e.value, "code", None) == pvm.PvmNoInst


def test_bcast_reduce_gather_scatter(mytid, peers):
    ps = [peers() for _ in range(3)]
    assert pvm.pvm_joingroup("w") == 0
    for i, p in enumerate(ps, 1):
        assert p.call("result = pvm.pvm_joingroup('w')") == i
    pvm.pvm_barrier("w", 1)  # count 1: only us
    work = """
inst = pvm.pvm_getinst('w', pvm.pvm_mytid())
pvm.pvm_recv(-1, 1); word = pvm.pvm_upkstr()
a = np.arange(4.0) * (inst + 1)
pvm.pvm_reduce(pvm.PvmSum, a, 4, pvm.PVM_DOUBLE, 2, 'w', 0)
l = [inst, -inst]
pvm.pvm_reduce(pvm.PvmMax, l, 2, pvm.PVM_INT, 3, 'w', 0)
pvm.pvm_gather(None, [inst * 10, inst * 10 + 1], 2, pvm.PVM_INT, 4, 'w', 0)
mine = np.zeros(2, 'i4')
pvm.pvm_scatter(mine, None, 2, pvm.PVM_INT, 5, 'w', 0)
pvm.pvm_reduce(pvm.PvmMin, [inst + 1], 1, pvm.PVM_INT, 6, 'w', 0)
pvm.pvm_reduce(pvm.PvmProduct, np.array([inst + 1.0]), 1, pvm.PVM_DOUBLE, 7, 'w', 0)
result = [word, list(l), mine.tolist()]
"""
    for p in ps:
        p.start(work)
    pvm.pvm_initsend(pvm.PvmDataDefault)
    pvm.pvm_pkstr("go")
    pvm.pvm_bcast("w", 1)
    total = np.arange(4.0)
    pvm.pvm_reduce(pvm.PvmSum, total, 4, pvm.PVM_DOUBLE, 2, "w", 0)
    assert total.tolist() == (np.arange(4.0) * (1 + 2 + 3 + 4)).tolist()
    mx = [0, 0]
    pvm.pvm_reduce(pvm.PvmMax, mx, 2, pvm.PVM_INT, 3, "w", 0)
    assert mx == [3, 0]
    got = np.zeros(8, "i4")
    pvm.pvm_gather(got, [0, 1], 2, pvm.PVM_INT, 4, "w", 0)
    assert got.tolist() == [0, 1, 10, 11, 20, 21, 30, 31]
    mine = [0, 0]
    pvm.pvm_scatter(mine, list(range(100, 108)), 2, pvm.PVM_INT, 5, "w", 0)
    assert mine == [100, 101]
    low, prod = [1], np.array([1.0])
    pvm.pvm_reduce(pvm.PvmMin, low, 1, pvm.PVM_INT, 6, "w", 0)
    pvm.pvm_reduce(pvm.PvmProduct, prod, 1, pvm.PVM_DOUBLE, 7, "w", 0)
    assert low == [1] and prod.tolist() == [24.0]
    assert [p.result() for p in ps] == [["go", [i, -i], [100 + 2 * i, 101 + 2 * i]] for i in (1, 2, 3)]
    for bad in (lambda: pvm.pvm_reduce("sum", [1], 1, pvm.PVM_INT, 1, "w", 0),
                lambda: pvm.pvm_reduce(pvm.PvmSum, [1], 1, pvm.PVM_STR, 1, "w", 0),
                lambda: pvm.pvm_reduce(pvm.PvmSum, [1], -1, pvm.PVM_INT, 1, "w", 0)):
        with pytest.raises(PvmError) as e:
            bad()
        assert e.value.code == pvm.PvmBadParam
    with pytest.raises(PvmError) as e:
        pvm.pvm_reduce(pvm.PvmSum, [1], 1, pvm.PVM_INT, 1, "w", 9)
    assert e.value.code == pvm.PvmNoInst


def test_the_group_servers_tid_is_kept_for_it(daemon):
    """pvm_shmd gives the local part kept for pvmgs (t7fffe on the master) to a join with
    role "gs" while it is free, and never to another task (nor to a second "gs")."""
    code = ("import sys\nfrom shmd.task import Task\nt = Task(role=sys.argv[1] or None)\n"
            "print(t.tid, flush=True)\nsys.stdin.readline()\nt.leave()")
    procs, got = [], []
    try:
        for role in ("", "gs", "gs", "net", ""):
            p = subprocess.Popen([sys.executable, "-c", code, role], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
            procs.append(p)
            got.append(int(p.stdout.readline()))
    finally:
        for p in procs:
            p.communicate("\n", timeout=10)
    assert got[1] == tids.GS_TID and got[3] == tids.dtid(1) | tids.NETD_LOCAL
    assert not {tids.local_of(t) for t in got[:1] + got[2:3] + got[4:]} & set(tids.RESERVED.values())
    assert all(tids.is_netd(t) for t in got[1:2] + got[3:4]) and not tids.is_netd(got[0])

"""pvm_send/mcast/recv/nrecv/trecv/probe between tasks, mixed with psend/precv; buffer
switching and bad buffer ids; pvm_notify of task exit; pvm_spawn, pvm_kill, pvm_tasks,
pvm_config, pvm_parent, pvm_setopt/getopt, on one host."""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

from shmd import pvm
from shmd.pvm import ANY, PvmError
from shmd.pvmmsg import NOTIFY_SLICE

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def mytid(daemon):
    yield pvm.pvm_mytid()
    pvm.pvm_exit()


ECHO = """
bufid = pvm.pvm_recv(-1, -1)
n, tag, src = pvm.pvm_bufinfo(bufid)
pvm.pvm_send(src, tag + 1)   # the received buffer is not the send buffer: re-pack it
"""


@pytest.mark.parametrize("enc", [pvm.PvmDataDefault, pvm.PvmDataRaw, pvm.PvmDataInPlace])
def test_mixed_types_round_trip(mytid, peers, enc):
    p = peers()
    p.start("""
pvm.pvm_recv(-1, 7)
i = pvm.pvm_upkint(None, 3); s = pvm.pvm_upkstr(); d = np.zeros(1000); pvm.pvm_upkdouble(d, 1000, 1)
c = pvm.pvm_upkdcplx(None, 2); b = bytearray(5); pvm.pvm_upkbyte(b, 5)
n, tag, src = pvm.pvm_bufinfo(pvm.pvm_getrbuf())
pvm.pvm_initsend(enc)
pvm.pvm_pkdouble(d[::-1].copy(), 1000, 1); pvm.pvm_pkstr(s.upper()); pvm.pvm_pkint(i, 3)
pvm.pvm_send(src, 8)
result = [list(i), s, c[1].imag, bytes(b).decode(), n, tag, src]
""", enc=enc)
    pvm.pvm_initsend(enc)
    pvm.pvm_pkint([1, -2, 3], 3, 1)
    pvm.pvm_pkstr("mixed")
    pvm.pvm_pkdouble(np.arange(1000.0), 1000, 1)
    pvm.pvm_pkdcplx([1j, 2 + 3j], 2, 1)
    pvm.pvm_pkbyte(b"bytes", 5, 1)
    nbytes = pvm.pvm_bufinfo(pvm.pvm_getsbuf())[0]
    pvm.pvm_send(p.tid, 7)
    got = p.result()
    assert got == [[1, -2, 3], "mixed", 3.0, "bytes", nbytes, 7, mytid]
    bufid = pvm.pvm_recv(p.tid, 8)
    assert pvm.pvm_bufinfo(bufid)[1:] == (8, p.tid)
    d = np.zeros(1000)
    pvm.pvm_upkdouble(d, 1000, 1)
    assert (d == np.arange(1000.0)[::-1]).all()
    assert pvm.pvm_upkstr() == "MIXED" and list(pvm.pvm_upkint(None, 3)) == [1, -2, 3]


def test_empty_message_and_large_one(mytid):
    pvm.pvm_initsend(pvm.PvmDataDefault)
    pvm.pvm_send(mytid, 1)
    assert pvm.pvm_bufinfo(pvm.pvm_recv(mytid, 1)) == (0, 1, mytid)
    big = np.random.default_rng(0).random(3 << 15)  # 768 KiB to ourselves: through the pages
    pvm.pvm_initsend(pvm.PvmDataDefault)
    pvm.pvm_pkdouble(big, big.size, 1)
    pvm.pvm_send(mytid, 2)
    pvm.pvm_recv(mytid, 2)
    out = np.empty_like(big)
    pvm.pvm_upkdouble(out, big.size, 1)
    assert (out == big).all()


def test_receive_buffer_takes_each_message_whole(mytid):
    """pvm_recv refills the active receive buffer in its own memory: messages smaller and
    larger than it, empty, and a psend's bare bytes after packed ones, each read whole and
    no more (nothing of an earlier, longer message shows)."""
    for k, (enc, n) in enumerate([(pvm.PvmDataDefault, 8), (pvm.PvmDataRaw, 100_000), (pvm.PvmDataDefault, 5),
                                  (pvm.PvmDataRaw, 0), (pvm.PvmDataInPlace, 40), (pvm.PvmDataDefault, 3)]):
        pvm.pvm_initsend(enc)
        pvm.pvm_pkbyte(bytes([k + 1]) * n, n, 1)
        pvm.pvm_send(mytid, 7)
        b = pvm.pvm_recv(mytid, 7)
        assert pvm.pvm_bufinfo(b) == (n + (-n % 4 if enc == pvm.PvmDataDefault else 0), 7, mytid)
        got = bytearray(n)
        pvm.pvm_upkbyte(got, n, 1)
        assert got == bytes([k + 1]) * n
        with pytest.raises(PvmError) as e:
            pvm.pvm_upkbyte(bytearray(1), 1, 1)
        assert e.value.code == pvm.PvmNoData
    pvm.pvm_psend(mytid, 8, b"abc", 3, pvm.PVM_BYTE)
    assert pvm.pvm_bufinfo(pvm.pvm_recv(mytid, 8)) == (3, 8, mytid)
    assert bytes(pvm.pvm_upkbyte(None, 3, 1)) == b"abc"


def test_messages_larger_than_a_segment(mytid, peers):
    """1.5 MiB through 1 MiB segments: in pieces, the receive's memory grown on the way."""
    p = peers()
    p.start("""
big = np.arange(3 << 16, dtype='f8')
for enc in (0, 1, 2):
    pvm.pvm_initsend(enc); pvm.pvm_pkdouble(big, big.size, 1); pvm.pvm_send(d, 9)
pvm.pvm_psend(d, 10, big, big.size, pvm.PVM_DOUBLE)
""", d=mytid)
    for _ in range(3):
        assert pvm.pvm_bufinfo(pvm.pvm_trecv(p.tid, 9, 20)) == (3 << 19, 9, p.tid)
        got = np.empty(3 << 16)
        pvm.pvm_upkdouble(got, got.size, 1)
        assert (got == np.arange(3 << 16)).all()
    got = np.empty(3 << 16)
    assert pvm.pvm_precv(p.tid, 10, got, got.size, pvm.PVM_DOUBLE, timeout=20) == (p.tid, 10, 3 << 16)
    assert got[-1] == (3 << 16) - 1
    p.result()


def test_precv_of_a_packed_message_and_recv_of_a_psend(mytid):
    for enc in (pvm.PvmDataDefault, pvm.PvmDataRaw):
        pvm.pvm_initsend(enc)
        pvm.pvm_pkint(np.arange(10, dtype="i4"), 10, 1)
        pvm.pvm_send(mytid, 3)
        out = np.zeros(10, "i4")
        assert pvm.pvm_precv(mytid, 3, out, 10, pvm.PVM_INT, timeout=5) == (mytid, 3, 10)
        assert (out == np.arange(10)).all()
    pvm.pvm_initsend(pvm.PvmDataDefault)
    pvm.pvm_pkshort(list(range(10)), 10, 1)  # 40 bytes in XDR for 20 of room: still fits as 10 shorts
    pvm.pvm_send(mytid, 4)
    out = np.zeros(10, "i2")
    assert pvm.pvm_precv(mytid, 4, out, 10, pvm.PVM_SHORT, timeout=5) == (mytid, 4, 10)
    assert out.tolist() == list(range(10))
    pvm.pvm_initsend(pvm.PvmDataDefault)
    pvm.pvm_pkint(list(range(10)), 10, 1)
    pvm.pvm_send(mytid, 5)
    with pytest.raises(PvmError) as e:  # 10 ints for room of 5: kept, as psend's
        pvm.pvm_precv(mytid, 5, np.zeros(5, "i4"), 5, pvm.PVM_INT, timeout=5)
    assert e.value.code == pvm.PvmOverflow
    assert pvm.pvm_bufinfo(pvm.pvm_recv(mytid, 5))[0] == 40
    pvm.pvm_psend(mytid, 6, np.arange(4.0), 4, pvm.PVM_DOUBLE)
    assert pvm.pvm_bufinfo(pvm.pvm_recv(-1, 6)) == (32, 6, mytid)
    assert list(pvm.pvm_upkdouble(None, 4)) == [0.0, 1.0, 2.0, 3.0]


def test_wildcards_probe_nrecv_trecv(mytid, peers):
    a, b = peers(), peers()
    for p, tag in ((a, 1), (b, 2)):
        p.call("pvm.pvm_initsend(0); pvm.pvm_pkstr(f'from {tag}'); pvm.pvm_send(d, tag)", d=mytid, tag=tag)
    assert pvm.pvm_nrecv(ANY, 9) == 0
    t0 = time.monotonic()
    assert pvm.pvm_trecv(ANY, 9, 0.3) == 0
    assert 0.25 < time.monotonic() - t0 < 2
    probed = pvm.pvm_probe(b.tid, ANY)
    assert probed > 0 and pvm.pvm_bufinfo(probed)[1:] == (2, b.tid)
    assert pvm.pvm_getrbuf() != probed
    assert pvm.pvm_recv(ANY, 2) > 0 and pvm.pvm_upkstr() == "from 2"
    assert pvm.pvm_trecv(a.tid, ANY, 5) > 0 and pvm.pvm_upkstr() == "from 1"
    assert pvm.pvm_probe() == 0
    with pytest.raises(PvmError) as e:
        pvm.pvm_trecv(ANY, ANY, -1)
    assert e.value.code == pvm.PvmBadParam


def test_mcast_skips_ourselves(mytid, peers):
    ps = [peers() for _ in range(3)]
    for p in ps:
        p.start("pvm.pvm_recv(-1, 11); result = pvm.pvm_upkint(None, 1)[0]")
    pvm.pvm_initsend(pvm.PvmDataDefault)
    pvm.pvm_pkint(42)
    pvm.pvm_mcast([p.tid for p in ps] + [mytid], 11)
    assert [p.result() for p in ps] == [42, 42, 42]
    assert pvm.pvm_nrecv(ANY, 11) == 0


def test_buffer_switching_and_bad_ids(mytid):
    one = pvm.pvm_initsend(pvm.PvmDataDefault)
    pvm.pvm_pkstr("one")
    two = pvm.pvm_mkbuf(pvm.PvmDataRaw)
    assert pvm.pvm_setsbuf(two) == one and pvm.pvm_getsbuf() == two
    pvm.pvm_pkstr("two")
    pvm.pvm_send(mytid, 1)
    pvm.pvm_setsbuf(one)
    pvm.pvm_send(mytid, 2)
    first = pvm.pvm_recv(mytid, 2)
    kept = pvm.pvm_setrbuf(0)  # saved: the next receive does not free it
    assert kept == first and pvm.pvm_getrbuf() == 0
    pvm.pvm_recv(mytid, 1)
    assert pvm.pvm_upkstr() == "two"
    pvm.pvm_setrbuf(kept)
    assert pvm.pvm_upkstr() == "one"
    with pytest.raises(PvmError):
        pvm.pvm_recv("t4", 1)  # bad input is found before the active receive buffer is freed
    assert pvm.pvm_getrbuf() == kept
    assert pvm.pvm_freebuf(two) == pvm.PvmOk
    for call in (lambda: pvm.pvm_freebuf(two), lambda: pvm.pvm_setsbuf(two), lambda: pvm.pvm_bufinfo(12345)):
        with pytest.raises(PvmError) as e:
            call()
        assert e.value.code == pvm.PvmNoSuchBuf and "freed" in str(e.value)
    pvm.pvm_setsbuf(0)
    with pytest.raises(PvmError) as e:
        pvm.pvm_pkint(1)
    assert e.value.code == pvm.PvmNoBuf
    pvm.pvm_setrbuf(0)
    with pytest.raises(PvmError) as e:
        pvm.pvm_upkint(None, 1)
    assert e.value.code == pvm.PvmNoBuf
    for bad in (lambda: pvm.pvm_send(mytid, -1), lambda: pvm.pvm_initsend(7), lambda: pvm.pvm_send("x", 1),
                lambda: pvm.pvm_recv(ANY, -5), lambda: pvm.pvm_mcast(5, 1), lambda: pvm.pvm_mcast("t4", 1),
                lambda: pvm.pvm_notify(pvm.PvmTaskExit, 1, 7), lambda: pvm.pvm_notify(99, 1, []),
                lambda: pvm.pvm_spawn("x.py", "abc"), lambda: pvm.pvm_trecv(ANY, ANY, "1")):
        with pytest.raises(PvmError) as e:
            bad()
        assert e.value.code == pvm.PvmBadParam
    with pytest.raises(PvmError) as e:
        pvm.pvm_initsend()
        pvm.pvm_send(mytid + 999, 1)
    assert e.value.code == pvm.PvmNoTask


def test_notify_task_exit(mytid, peers):
    p = peers()
    gone = peers()
    gone_tid = gone.tid
    gone.kill()
    pvm.pvm_notify(pvm.PvmTaskExit, 99, [p.tid, gone_tid])
    assert pvm.pvm_trecv(ANY, 99, 5) > 0 and pvm.pvm_upkint(None, 1)[0] == gone_tid  # already gone: at once
    assert pvm.pvm_nrecv(ANY, 99) == 0
    p.kill()
    t0 = time.monotonic()
    bufid = pvm.pvm_trecv(ANY, 99, 10)
    assert bufid > 0 and time.monotonic() - t0 < 3
    assert pvm.pvm_upkint(None, 1)[0] == p.tid and pvm.pvm_bufinfo(bufid)[2] == pvm.pvm_tidtohost(mytid)


def test_spawn_parent_tasks_kill_config(mytid, tmp_path):
    prog = tmp_path / "child.py"
    prog.write_text("import sys\nfrom shmd.pvm import *\n"
                    "pvm_initsend(PvmDataDefault); pvm_pkint(pvm_parent()); pvm_pkstr(' '.join(sys.argv[1:]))\n"
                    "pvm_send(pvm_parent(), 5)\npvm_recv(pvm_parent(), 6)\npvm_exit()\n")
    got = pvm.pvm_spawn(str(prog), ["a", "b"], pvm.PvmTaskDefault, "", 2)
    assert len(got) == 2 and all(t > 0 for t in got)
    for _ in got:
        pvm.pvm_recv(ANY, 5)
        assert pvm.pvm_upkint(None, 1)[0] == mytid and pvm.pvm_upkstr() == "a b"
    n, tasks = pvm.pvm_tasks(0)
    by_tid = {t.ti_tid: t for t in tasks}
    assert n == 3 and set(by_tid) == {mytid, *got}
    assert by_tid[got[0]].ti_ptid == mytid and by_tid[got[0]].ti_a_out == "child.py"
    assert pvm.pvm_tasks(got[1])[0] == 1
    nhost, narch, hosts = pvm.pvm_config()
    assert (nhost, narch, hosts[0].hi_tid, hosts[0].hi_arch) == (1, 1, pvm.pvm_tidtohost(mytid), "LINUX64")
    pvm.pvm_notify(pvm.PvmTaskExit, 7, got)
    assert pvm.pvm_pstat(got[0]) == pvm.PvmOk and pvm.pvm_mstat(hosts[0].hi_name) == pvm.PvmOk
    assert pvm.pvm_kill(got[0]) == pvm.PvmOk
    pvm.pvm_initsend()
    pvm.pvm_send(got[1], 6)
    exited = {pvm.pvm_upkint(None, 1)[0] for _ in got if pvm.pvm_trecv(ANY, 7, 10) > 0}
    assert exited == set(got)
    for bad, code in ((lambda: pvm.pvm_kill(mytid), pvm.PvmBadParam),
                      (lambda: pvm.pvm_kill(got[0]), pvm.PvmNoTask),
                      (lambda: pvm.pvm_tasks(got[0]), pvm.PvmNoTask),
                      (lambda: pvm.pvm_pstat(got[0]), pvm.PvmNoTask),
                      (lambda: pvm.pvm_sendsig(got[0], 15), pvm.PvmNoTask),
                      (lambda: pvm.pvm_mstat("elsewhere.example"), pvm.PvmNoHost),
                      (lambda: pvm.pvm_spawn(str(prog), [], 0, "", 0), pvm.PvmBadParam)):
        with pytest.raises(PvmError) as e:
            bad()
        assert e.value.code == code
    assert pvm.pvm_spawn("no-such-program-here", [], 0, "", 1) == [pvm.PvmNoFile]
    assert pvm.pvm_spawn(str(prog), [], pvm.PvmTaskHost, "elsewhere.example", 1) == [pvm.PvmNoHost]
    with pytest.raises(PvmError) as e:
        pvm.pvm_parent()
    assert e.value.code == pvm.PvmNoParent


def test_options(mytid):
    assert pvm.pvm_getopt(pvm.PvmRoute) == pvm.PvmAllowDirect
    assert pvm.pvm_setopt(pvm.PvmRoute, pvm.PvmRouteDirect) == pvm.PvmAllowDirect
    assert pvm.pvm_getopt(pvm.PvmRoute) == pvm.PvmRouteDirect
    assert pvm.pvm_setopt(pvm.PvmAutoErr, 0) == 1
    for bad in (lambda: pvm.pvm_setopt(99, 1), lambda: pvm.pvm_setopt(pvm.PvmRoute, 9),
                lambda: pvm.pvm_getopt("x")):
        with pytest.raises(PvmError) as e:
            bad()
        assert e.value.code == pvm.PvmBadParam
    assert pvm.pvm_perror("send", pvm.PvmNoTask) == f"libpvm [t{mytid:x}]: send: No such task"
    assert sys.modules["shmd.pvm"] is pvm


def test_a_receive_waits_in_one_precv_into_when_nothing_is_armed(mytid, monkeypatch):
    """With no notification armed, pvm_recv/trecv wait in one precv_into with the whole
    timeout (its spin adapts to the gaps between messages as precv's does), not in
    slices; with one armed they wait in slices (to look at the task table)."""
    me = pvm.S.me()
    waits: list = []
    real = me.precv_into

    def spy(room, source, tag, timeout=None):
        waits.append(timeout)
        return real(room, source, tag, timeout)

    monkeypatch.setattr(me, "precv_into", spy)
    assert pvm.pvm_trecv(ANY, 5, 0.25) == 0
    assert waits == [0.25]
    pvm.pvm_initsend()
    pvm.pvm_send(mytid, 5)
    waits.clear()
    assert pvm.pvm_recv(ANY, 5) > 0 and waits == [None]
    pvm.pvm_notify(pvm.PvmTaskExit, 6, [mytid])  # a live task watched: the receive looks in slices
    waits.clear()
    assert pvm.pvm_trecv(ANY, 5, 0.25) == 0
    assert len(waits) > 1 and max(waits) <= NOTIFY_SLICE

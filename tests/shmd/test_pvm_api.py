"""The PVM-shaped API: pvm_mytid, pvm_psend/pvm_precv with every datatype, wildcards,
rlen in items, error codes raised as PvmError, pvm_exit."""
from __future__ import annotations

import numpy as np
import pytest

from shmd import errors, pvm
from shmd.pvm import (
    ANY,
    DTYPES,
    PVM_BYTE,
    PVM_DOUBLE,
    PVM_INT,
    PVM_STR,
    SIZES,
    PvmBadParam,
    PvmError,
    PvmNotImpl,
    PvmOverflow,
    pvm_exit,
    pvm_mytid,
    pvm_precv,
    pvm_probe,
    pvm_psend,
)

ALL_TYPES = ["PVM_BYTE", "PVM_SHORT", "PVM_INT", "PVM_FLOAT", "PVM_CPLX", "PVM_DOUBLE",
             "PVM_DCPLX", "PVM_LONG", "PVM_USHORT", "PVM_UINT", "PVM_ULONG"]


@pytest.fixture
def mytid(daemon):
    yield pvm_mytid()
    pvm_exit()


def test_constants_are_pvms():
    assert [getattr(pvm, n) for n in ["PVM_STR"] + ALL_TYPES] == \
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert SIZES == {1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 7: 16, 8: 8, 9: 2, 10: 4, 11: 8}
    for t, dt in DTYPES.items():
        assert np.dtype(dt).itemsize == SIZES[t]
    assert (pvm.PvmOk, pvm.PvmBadParam, pvm.PvmNoMem, pvm.PvmSysErr, pvm.PvmNoTask,
            pvm.PvmNotImpl, pvm.PvmOverflow) == (0, -2, -10, -14, -31, -24, -4)
    assert pvm.ERROR_NAMES[-31] == "PvmNoTask" and pvm.strerror(-31) == "No such task"


def test_errors_carry_code_and_name():
    e = PvmError(errors.PvmNoTask, "t40002")
    assert (e.code, e.name, str(e)) == (-31, "PvmNoTask", "No such task: t40002")
    assert pvm.pvm_perror("psend", -31) == "libpvm [t0]: psend: No such task"


def test_mytid_joins_once_and_exit_leaves(daemon):
    tid = pvm_mytid()
    assert tid == pvm_mytid() and tid >> 18 == 1
    assert [t["tid"] for t in daemon.stat()["tasks"]] == [tid]
    assert pvm_exit() == pvm.PvmOk
    assert daemon.stat()["tasks"] == []
    assert pvm_exit() == pvm.PvmOk


@pytest.mark.parametrize("name", ALL_TYPES)
def test_every_datatype_round_trips(mytid, peers, name):
    t = getattr(pvm, name)
    p = peers()
    a = (np.arange(1000) * 7 - 300).astype(DTYPES[t])
    if np.iscomplexobj(a):
        a = (a + 1j * np.arange(1000)).astype(DTYPES[t])
    p.start("""
buf = np.zeros(2000, dt)
rtid, rtag, rlen = pvm.pvm_precv(-1, -1, buf, 2000, t, timeout=10)
pvm.pvm_psend(rtid, rtag + 1, buf, rlen, t)
result = [rtid, rtag, rlen]
""", dt=DTYPES[t], t=t)
    assert pvm_psend(p.tid, 4, a, 1000, t) == pvm.PvmOk
    out = np.zeros(1000, DTYPES[t])
    assert p.result() == [mytid, 4, 1000]
    assert pvm_precv(p.tid, 5, out, 1000, t, timeout=10) == (p.tid, 5, 1000)
    assert np.array_equal(out, a)


def test_len_counts_items_and_partial_sends(mytid):
    a = np.arange(100, dtype="i4")
    pvm_psend(mytid, 1, a, 10, PVM_INT)  # only the first 10 items
    out = np.zeros(100, "i4")
    assert pvm_precv(ANY, ANY, out, 100, PVM_INT, timeout=5) == (mytid, 1, 10)
    assert list(out[:11]) == list(range(10)) + [0]
    pvm_psend(mytid, 2, b"abcdefgh", 8, PVM_BYTE)
    out = bytearray(8)
    assert pvm_precv(mytid, 2, out, 8, PVM_BYTE, timeout=5) == (mytid, 2, 8)
    assert out == b"abcdefgh"


def test_wildcard_source_and_tag(mytid, peers):
    a, b = peers(), peers()
    a.call("pvm.pvm_psend(d, 1, b'from-a', 6, pvm.PVM_BYTE)", d=mytid)
    b.call("pvm.pvm_psend(d, 2, b'from-b', 6, pvm.PVM_BYTE)", d=mytid)
    buf = bytearray(6)
    assert pvm_precv(ANY, 2, buf, 6, PVM_BYTE, timeout=5) == (b.tid, 2, 6)
    assert buf == b"from-b"
    assert pvm_precv(a.tid, ANY, buf, 6, PVM_BYTE, timeout=5) == (a.tid, 1, 6)
    assert buf == b"from-a"


def test_tag_zero(mytid):
    pvm_psend(mytid, 0, b"t0", 2, PVM_BYTE)
    assert pvm_probe(ANY, 0) > 0
    buf = bytearray(2)
    assert pvm_precv(ANY, 0, buf, 2, PVM_BYTE, timeout=5) == (mytid, 0, 2)
    assert pvm_probe() == 0


def test_buffer_too_small_raises_overflow_and_keeps_it(mytid):
    pvm_psend(mytid, 1, np.arange(100.0), 100, PVM_DOUBLE)
    small = np.zeros(50)
    with pytest.raises(PvmError) as e:
        pvm_precv(ANY, ANY, small, 50, PVM_DOUBLE, timeout=5)
    assert e.value.code == PvmOverflow
    big = np.zeros(100)
    assert pvm_precv(ANY, ANY, big, 100, PVM_DOUBLE, timeout=5)[2] == 100
    assert big[99] == 99.0


def test_bad_datatypes_and_lengths(mytid):
    for dt, code in ((PVM_STR, PvmNotImpl), (12, PvmBadParam), (-1, PvmBadParam),
                     ("x", PvmBadParam)):
        with pytest.raises(PvmError) as e:
            pvm_psend(mytid, 1, b"abcd", 4, dt)
        assert e.value.code == code
        with pytest.raises(PvmError) as e:
            pvm_precv(mytid, 1, bytearray(4), 4, dt, timeout=0)
        assert e.value.code == code
    for n in (-1, 5):
        with pytest.raises(PvmError) as e:
            pvm_psend(mytid, 1, b"abcd", n, PVM_BYTE)
        assert e.value.code == PvmBadParam
    with pytest.raises(PvmError) as e:
        pvm_psend(mytid, 1, np.zeros(3, "i4"), 2, PVM_DOUBLE)  # 16 bytes > 12
    assert e.value.code == PvmBadParam


def test_no_task_and_other_host(mytid):
    for tid in (mytid + 999, (3 << 18) | 1):
        with pytest.raises(PvmError) as e:
            pvm_psend(tid, 1, b"x", 1, PVM_BYTE)
        assert e.value.code == pvm.PvmNoTask


def test_timeout_is_a_pvm_error(mytid):
    with pytest.raises(pvm.PvmTimeout) as e:
        pvm_precv(ANY, ANY, bytearray(1), 1, PVM_BYTE, timeout=0.1)
    assert isinstance(e.value, PvmError) and e.value.code == pvm.PvmNoData

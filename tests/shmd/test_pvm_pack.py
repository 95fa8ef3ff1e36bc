"""Packing and unpacking (shmd.pvmbuf, pvm_packf): every datatype in every encoding,
strides, strings, the XDR wire format itself, and bad input. No daemon: buffers only."""
from __future__ import annotations

import array
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmd import pvm
from shmd.pvmbuf import HEADER, KINDS, PVM_BYTE, PVM_DOUBLE, PVM_INT, PVM_SHORT, Buffer, parse

ENCODINGS = [pvm.PvmDataDefault, pvm.PvmDataRaw, pvm.PvmDataInPlace]


def received(b: Buffer) -> Buffer:
    """*b* as its receiver gets it (the wire bytes parsed back)."""
    w = bytes(b.wire())
    enc, body = parse(memoryview(w))
    return Buffer(pvm.PvmDataRaw, body, 1, 2, wire_enc=enc)


def values(k, n: int):
    a = (np.arange(n) * 37 - 5 * n).astype(k.np) if k.code != PVM_BYTE else np.arange(n).astype("u1")
    if np.iscomplexobj(a):
        a = a + 1j * np.arange(n)
    if k.np.startswith("u"):
        a = np.arange(n).astype(k.np) * 3
    return a.astype(k.np)


@pytest.mark.parametrize("enc", ENCODINGS)
@pytest.mark.parametrize("code", sorted(KINDS))
def test_every_type_round_trips_with_strides(enc, code):
    k = KINDS[code]
    a = values(k, 40)
    b = Buffer(enc)
    b.pack(code, a, 40, 1)  # numpy, whole
    b.pack(code, a, 7, 3)  # numpy, strided
    b.pack(code, a.tolist(), 5, 2)  # a list, strided
    b.pack(code, array.array(k.tc, memoryview(a.tobytes()).cast(k.tc)) if k.per == 1 else a.tolist(), 4, 1)
    b.pack(code, a, 0, 1)  # nothing
    b.pack(code, a[3].item(), 1, 1)  # a scalar
    r = received(b)
    out = np.zeros(40, k.np)
    assert r.unpack(code, out, 40, 1) is out and (out == a).all()
    out = np.zeros(21, k.np)
    r.unpack(code, out, 7, 3)
    assert (out[::3] == a[:21:3]).all() and not out[1::3].any()
    lst = [None] * 9
    r.unpack(code, lst, 5, 2)
    assert lst[::2] == a[:10:2].tolist() and lst[1::2] == [None] * 4
    if k.per == 1:
        got = array.array(k.tc, bytes(4 * k.native))
        r.unpack(code, got, 4, 1)
        assert got.tolist() == a[:4].tolist()
    else:
        assert r.unpack(code, None, 4, 1) == a[:4].tolist()
    r.unpack(code, None, 0, 1)
    assert list(r.unpack(code, None, 1, 1)) in ([a[3].item()], [a[3].real, a[3].imag])
    assert r.pos == r.nbytes  # everything read, nothing more
    with pytest.raises(pvm.PvmError) as e:
        r.unpack(code, None, 1)
    assert e.value.code == pvm.PvmNoData and "past the end" in str(e.value)


def test_xdr_is_big_endian_and_padded_as_pvm():
    b = Buffer(pvm.PvmDataDefault)
    b.pack(PVM_INT, [1, -2], 2)
    b.pack(PVM_SHORT, [-3], 1)  # a short is 4 bytes in XDR
    b.pack(PVM_BYTE, b"abcde", 5)  # bytes padded to 4
    b.pack(PVM_DOUBLE, 1.5)
    b.pkstr("hi")  # length with the NUL, the bytes, the NUL, padding
    w = bytes(b.wire())
    magic, version, enc, n = HEADER.unpack_from(w)
    assert (enc, n) == (0, len(w) - HEADER.size)
    assert w[HEADER.size:] == (struct.pack(">iii", 1, -2, -3) + b"abcde\0\0\0" + struct.pack(">d", 1.5)
                              + struct.pack(">i", 3) + b"hi\0\0")


def test_raw_is_native_and_inplace_reads_at_send_time():
    a = np.arange(4, dtype="i4")
    raw, inplace = Buffer(pvm.PvmDataRaw), Buffer(pvm.PvmDataInPlace)
    raw.pack(PVM_INT, a, 4)
    inplace.pack(PVM_INT, a, 4)
    a[0] = 99  # after packing, before sending
    assert bytes(raw.wire())[HEADER.size:] == np.arange(4, dtype="i4").tobytes()
    assert bytes(inplace.wire())[HEADER.size:] == a.tobytes()


def test_strings_and_empty_message():
    b = Buffer(pvm.PvmDataDefault)
    for s in ("", "héllo wörld", "x" * 1001):
        b.pkstr(s)
    r = received(b)
    assert [r.upkstr() for _ in range(3)] == ["", "héllo wörld", "x" * 1001]
    e = received(Buffer(pvm.PvmDataRaw))
    assert e.nbytes == 0
    with pytest.raises(pvm.PvmError) as err:
        e.upkstr()
    assert err.value.code == pvm.PvmNoData


def test_psend_bytes_are_a_raw_message():
    enc, body = parse(memoryview(b"\x7fPVMpk but not a header at all"))
    assert enc == pvm.PvmDataRaw and bytes(body).startswith(b"\x7fPVMpk")


@pytest.mark.parametrize("bad, code, text", [
    (lambda b: b.pack(PVM_INT, "abc", 3), pvm.PvmBadParam, "str"),
    (lambda b: b.pack(PVM_INT, [1, 2], 3), pvm.PvmBadParam, "needs 3"),
    (lambda b: b.pack(PVM_INT, [1, 2], -1), pvm.PvmBadParam, "nitem -1"),
    (lambda b: b.pack(PVM_INT, [1, 2], 1, 0), pvm.PvmBadParam, "stride 0"),
    (lambda b: b.pack(PVM_INT, [1.5], 1), pvm.PvmBadParam, "int"),
    (lambda b: b.pack(PVM_INT, np.zeros(3), 3), pvm.PvmBadParam, "float64"),
    (lambda b: b.pack(PVM_INT, object(), 1), pvm.PvmBadParam, "object"),
    (lambda b: b.pack(PVM_INT, [2 ** 40], 1), pvm.PvmBadParam, "int"),
    (lambda b: b.pack(99, [1], 1), pvm.PvmBadParam, "datatype 99"),
    (lambda b: b.pkstr(5), pvm.PvmBadParam, "str or bytes"),
    (lambda b: b.pkstr("a\0b"), pvm.PvmBadParam, "NUL"),
])
def test_bad_packing_names_the_problem(bad, code, text):
    b = Buffer(pvm.PvmDataDefault)
    b.pack(PVM_INT, 7)
    with pytest.raises(pvm.PvmError) as e:
        bad(b)
    assert e.value.code == code and text in str(e.value)
    r = received(b)  # nothing half-packed
    assert r.nbytes == 4 and list(r.unpack(PVM_INT, None, 1)) == [7]


def test_bad_unpacking_leaves_the_position():
    b = Buffer(pvm.PvmDataDefault)
    b.pack(PVM_INT, [1, 2, 3], 3)
    r = received(b)
    for target, n in ((bytes(12), 3), ([0], 3), (np.zeros(3, "i4")[::-1].reshape(3, 1)[::2], 1),
                      (array.array("d", [0.0] * 3), 3), (np.zeros(2, "i4"), 3), ("abc", 3)):
        with pytest.raises(pvm.PvmError) as e:
            r.unpack(PVM_INT, target, n)
        assert e.value.code == pvm.PvmBadParam
    with pytest.raises(pvm.PvmError) as e:
        r.unpack(PVM_INT, None, 4)
    assert e.value.code == pvm.PvmNoData
    assert list(r.unpack(PVM_INT, None, 3)) == [1, 2, 3]


def test_numpy_pack_is_memory_speed_shaped():
    # the numpy path writes the wire format in one numpy operation: a view, not a copy loop
    a = np.random.default_rng(1).random(1 << 17)
    b = Buffer(pvm.PvmDataDefault)
    b.pack(PVM_DOUBLE, a, a.size)
    r = received(b)
    assert bytes(r.body) == a.astype(">f8").tobytes()
    out = np.empty_like(a)
    r.unpack(PVM_DOUBLE, out, a.size)
    assert (out == a).all()


def test_packf_and_unpackf(daemon):
    pvm.pvm_packf("%+ %d %3d %*.2lf %s %hd %c %lx", pvm.PvmDataDefault, 7, [1, 2, 3], 2, [0.5, 9, 1.5], "s!",
                  -4, 65, 1 + 2j)
    me = pvm.pvm_mytid()
    try:
        pvm.pvm_send(me, 3)
        assert pvm.pvm_recv(me, 3) > 0
        got = pvm.pvm_unpackf("%d %3d %*lf %s %hd %c %lx", 2)
        assert (got[0], list(got[1]), list(got[2]), got[3], got[4], got[5], got[6]) == \
            (7, [1, 2, 3], [0.5, 1.5], "s!", -4, 65, 1 + 2j)
        for fmt, args in (("%q", (1,)), ("%d", ()), ("%d", (1, 2)), ("%*d", ("x", [1]))):
            with pytest.raises(pvm.PvmError) as e:
                pvm.pvm_packf(fmt, *args)
            assert e.value.code == pvm.PvmBadParam
    finally:
        pvm.pvm_exit()


def test_reused_memory_leaves_no_stale_bytes():
    old = Buffer(pvm.PvmDataDefault)
    old.pack(PVM_INT, [-1] * 100, 100)
    old.free()  # its memory is kept for the next send buffer
    b = Buffer(pvm.PvmDataDefault)
    b.pack(PVM_BYTE, b"abcde", 5)
    b.pack(PVM_BYTE, bytearray(b"xy"), 2)
    assert bytes(b.wire())[HEADER.size:] == b"abcde\0\0\0xy\0\0"
    assert b.reset(pvm.PvmDataRaw) and b.nbytes == 0
    b.pack(PVM_BYTE, b"abcde", 3)
    assert bytes(b.wire())[HEADER.size:] == b"abc" and received(b).wire_enc == pvm.PvmDataRaw
    inplace = Buffer(pvm.PvmDataInPlace)
    inplace.pack(PVM_BYTE, b"abc", 3)
    assert inplace.reset(pvm.PvmDataInPlace) and inplace.nbytes == 0  # its parts let go
    inplace.pack(PVM_BYTE, b"de", 2)
    assert bytes(inplace.wire())[HEADER.size:] == b"de"
    assert not received(b).reset(pvm.PvmDataRaw)  # a received buffer is no send buffer


@settings(max_examples=60, deadline=None)
@given(enc=st.sampled_from(ENCODINGS), items=st.lists(st.tuples(
    st.sampled_from(sorted(KINDS)), st.integers(0, 40), st.integers(1, 4), st.booleans()), max_size=8))
def test_any_sequence_of_packs_unpacks_back(enc, items):
    """Whatever mix of types, counts, strides and containers is packed, unpacking the
    same sequence gives the same values and ends exactly at the message's end."""
    b = Buffer(enc)
    want = []
    for code, n, stride, as_numpy in items:
        k = KINDS[code]
        a = values(k, max(n * stride, 1))
        b.pack(code, a if as_numpy else a.tolist(), n, stride)
        want.append((code, n, a[:n * stride:stride]))
    r = received(b)
    for code, n, expect in want:
        got = np.zeros(n, KINDS[code].np)
        r.unpack(code, got, n, 1)
        assert (got == expect).all()
    assert r.pos == r.nbytes


def test_no_numpy_needed():
    """shmd.pvm packs and unpacks with numpy unimportable (it is optional)."""
    import subprocess
    import sys

    code = """
import sys, array
sys.modules['numpy'] = None
from shmd import pvm
from shmd.pvmbuf import Buffer, parse
b = Buffer(pvm.PvmDataDefault)
b.pack(pvm.PVM_DOUBLE, array.array('d', [1.5, 2.5, 3.5]), 2, 2)
b.pack(pvm.PVM_SHORT, [1, -2], 2)
b.pkstr('x')
enc, body = parse(memoryview(bytes(b.wire())))
r = Buffer(pvm.PvmDataRaw, body, wire_enc=enc)
out = array.array('d', [0.0, 0.0])
r.unpack(pvm.PVM_DOUBLE, out, 2)
print(out.tolist(), list(r.unpack(pvm.PVM_SHORT, None, 2)), r.upkstr(), 'numpy' in sys.modules and sys.modules['numpy'])
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "[1.5, 3.5] [1, -2] x None"


@pytest.mark.parametrize("wire", [
    HEADER.pack(b"\x7fPVMpk", 1, 0, 4) + b"abcd",  # packed, XDR
    HEADER.pack(b"\x7fPVMpk", 1, 1, 3) + b"abc",  # packed, Raw
    HEADER.pack(b"\x7fPVMpk", 1, 0, 5) + b"abcd",  # a length that is not the body's: a psend's bytes
    HEADER.pack(b"\x7fPVMpk", 2, 0, 4) + b"abcd",  # another version
    HEADER.pack(b"\x7fPVMpk", 1, 2, 4) + b"abcd",  # no such wire encoding
    b"\x7fPVMpk", b"", b"x" * 40,  # shorter than a header; bare bytes
])
def test_received_buffer_reads_the_header_as_parse_does(wire):
    room = bytearray(64) + b"junk"  # reused memory: bytes past the message are stale
    room[:len(wire)] = wire
    b = Buffer.received(5, 6, room, len(wire))
    enc, body = parse(memoryview(wire))
    assert (b.wire_enc, b.encoding, bytes(b.body), b.src, b.tag) == (enc, enc, bytes(body), 5, 6)
    b.free()

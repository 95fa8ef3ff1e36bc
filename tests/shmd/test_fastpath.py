"""The small-message fast path, compiled (shmd._fast) and in Python, and the two together.

Each side of every exchange here runs one of the two paths (a peer with PVM_SHMD_PURE=1
runs Python's; ``me`` is switched by the ``paths`` fixture), so the tests show that the
compiled path keeps the protocol: order, wildcards, inline and medium lengths, a full
ring, a buffer too small, tasks that leave.
"""
from __future__ import annotations

import os
import shutil
import sysconfig
import time

import pytest
from peers import crc, payload

import shmd
from shmd import fastpath, layout
from shmd.errors import PvmError, PvmOverflow, PvmTimeout

COMPILED = fastpath.fast is not None
needs_compiled = pytest.mark.skipif(not COMPILED, reason="shmd._fast is not built here "
                                    "(no C compiler or Python headers), or PVM_SHMD_PURE is set")
# (ours, the peer's): which path each side runs
PAIRS = [("compiled", "compiled"), ("compiled", "python"), ("python", "compiled"),
         ("python", "python")]


@pytest.fixture(params=PAIRS, ids=["-".join(p) for p in PAIRS])
def paths(request, monkeypatch, daemon, peers):
    """(me, peer): our task and a peer process, each on the path the param names."""
    ours, theirs = request.param
    if "compiled" in request.param and not COMPILED:
        pytest.skip("shmd._fast is not built here")
    if ours == "python":
        monkeypatch.setattr(fastpath, "fast", None)
    env = dict(os.environ, **{fastpath.ENV: "1" if theirs == "python" else "0"})
    p = peers(env=env)
    assert p.call("result = shmd.fastpath.KIND") == theirs
    with shmd.join() as me:
        assert (me._fx is not None) == (ours == "compiled")
        yield me, p


def test_the_compiled_path_is_built_where_it_can_be():
    """./dev builds it where a compiler and Python's headers are: a broken build would
    otherwise fall back to Python without a word."""
    headers = os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
    if not (shutil.which("gcc") or shutil.which("cc")) or not headers:
        pytest.skip("no C compiler or no Python.h here: the Python path is the one")
    if os.environ.get(fastpath.ENV, "") not in ("", "0"):
        pytest.skip(f"{fastpath.ENV} is set")
    assert fastpath.KIND == "compiled"


SEQ = """
import random
rng = random.Random(seed)
for i in range(count):
    n = rng.choice(sizes)
    me.psend(dest, rng.choice(tags), i.to_bytes(4, 'little') + payload(seed * 1000 + i, n),
             timeout=20)
result = count
"""
SIZES = [0, 4, layout.INLINE - 4, layout.INLINE - 3, 500, layout.MEDIUM - 4]


def test_every_small_length_in_order_both_ways(paths):
    me, p = paths
    p.start(SEQ, seed=1, count=600, dest=me.tid, tags=[0, 5], sizes=SIZES)
    got = [me.precv(p.tid, timeout=20) for _ in range(600)]
    assert p.result() == 600
    for i, m in enumerate(got):
        assert int.from_bytes(m.data[:4], "little") == i
        assert m.data[4:] == payload(1000 + i, len(m.data) - 4)
    # and back: our sends (the fast path after each tag's first) in order at the peer
    p.start("result = [(m.tag, m.data.hex()) for m in (me.precv(timeout=10) for _ in range(300))]")
    for i in range(300):
        me.psend(p.tid, i % 3, i.to_bytes(4, "little") * (1 + i % 20), timeout=10)
    assert p.result() == [[i % 3, (i.to_bytes(4, "little") * (1 + i % 20)).hex()] for i in range(300)]


def test_wildcards_and_precv_into(paths):
    me, p = paths
    p.call(SEQ, seed=2, count=90, dest=me.tid, tags=[1, 2, 3], sizes=SIZES[:3])
    buf = bytearray(layout.INLINE)
    seen = []
    for source, tag in ((p.tid, 3), (shmd.ANY, 1), (shmd.ANY, shmd.ANY)):
        while True:
            try:
                src, t, n = me.precv_into(buf, source, tag, timeout=0.2)
            except PvmTimeout:
                break
            assert src == p.tid and tag in (shmd.ANY, t)
            seen.append((t, int.from_bytes(buf[:4], "little")))
    assert sorted(i for _, i in seen) == list(range(90))
    for tag in (1, 2, 3):
        order = [i for t, i in seen if t == tag]
        assert order == sorted(order)


def test_a_buffer_too_small_keeps_the_message(paths):
    me, p = paths
    p.call("me.psend(dest, 4, b'x' * 60); me.psend(dest, 4, b'y')", dest=me.tid)
    small = bytearray(10)
    with pytest.raises(PvmError) as e:
        me.precv_into(small, timeout=5)
    assert e.value.code == PvmOverflow and small == bytearray(10)
    assert me.precv(timeout=5).data == b"x" * 60
    assert me.precv_into(small, timeout=5) == (p.tid, 4, 1) and small[:1] == b"y"


def test_a_full_ring_waits_then_goes_on(paths):
    """More small messages than the ring holds: the fast path declines, the general
    path waits for room, nothing is lost or reordered."""
    me, p = paths
    n = layout.RING * 3
    for i in range(8):  # the peer's descriptor of this tag and length is cached first
        me.psend(p.tid, 9, b"warm%04d" % i)
    p.start("time.sleep(0.3); result = [me.precv(timeout=10).data.hex() for _ in range(k)]",
            k=n + 8)
    for i in range(n):
        me.psend(p.tid, 9, b"m%07d" % i, timeout=20)
    got = p.result()
    assert [bytes.fromhex(x) for x in got] == ([b"warm%04d" % i for i in range(8)]
                                              + [b"m%07d" % i for i in range(n)])


def test_a_receiver_that_sleeps_is_woken(paths):
    """The spin runs out, the receiver sleeps; the next fast send wakes it."""
    me, p = paths
    p.call("me.psend(dest, 1, b'a')", dest=me.tid)
    assert me.precv(timeout=5).data == b"a"
    p.start("time.sleep(0.2); me.psend(dest, 1, b'b')", dest=me.tid)
    assert me.precv(timeout=5).data == b"b"
    p.result()
    me.psend(p.tid, 1, b"c")
    p.start("result = me.precv(timeout=5).data.hex()")
    assert p.result() == b"c".hex()


def test_a_peer_that_left_is_no_task(paths):
    me, p = paths
    me.psend(p.tid, 1, b"hello")
    assert p.call("result = me.precv(timeout=5).data.hex()") == b"hello".hex()
    tid = p.tid
    p.call("me.leave()")
    with pytest.raises(PvmError):
        me.psend(tid, 1, b"hello")


@needs_compiled
def test_compiled_objects_refuse_bad_offsets_and_closed_use(daemon):
    fast = fastpath.fast
    with shmd.join() as me:
        buf = me._buf
        with pytest.raises(ValueError, match="outside"):
            fast.Inbox(buf, ring=len(buf), head=0, tail=8)
        with pytest.raises(ValueError, match="aligned"):
            fast.Inbox(buf, ring=0, head=4, tail=8)
        with pytest.raises(ValueError, match="outside"):
            fast.Route(buf, ring=0, tid=0, waiting=4, head=len(buf), tail=8, posted=16, dest=1,
                       lock=0, wake=-1, wake_undo=False, first=True, serial=8, join=1)
        with pytest.raises(ValueError, match="serial word.*outside"):
            fast.Route(buf, ring=0, tid=0, waiting=4, head=8, tail=8, posted=16, dest=1,
                       lock=0, wake=-1, wake_undo=False, first=True, serial=len(buf), join=1)
        with pytest.raises(ValueError, match="npages"):
            fast.Segments(buf, list(me._data), ps=me._ps, npages=[1] * (me._nsegs + 1),
                          mapb=me._mapb, intent=me._intent, segi=me._segi, segq=me._segq,
                          rover=me._rover, locks=[0] * me._nsegs, tid=me.tid, home=0, deferred=[])
        with pytest.raises(BufferError):
            fast.Inbox(b"read-only", ring=0, head=0, tail=8)
        box = fast.Inbox(buf, ring=me._ring, head=8 * me._H, tail=8 * me._T)
        assert box.take(-1, -1, 0.0) is None  # nothing there
        box.close()
        with pytest.raises(ValueError, match="closed"):
            box.take(-1, -1, 0.0)
        with pytest.raises(TypeError):
            me._fx.take("any", -1, 0.0)
    with pytest.raises(ValueError, match="released"):
        len(buf)  # leave let go of the segment: no compiled object held it


@needs_compiled
def test_a_payload_checked_byte_for_byte_through_the_compiled_path(paths, daemon):
    """Every way a message travels without waiting: in its descriptor, in the inbox,
    in a run of pages (allocated and freed by shmd._fast.Segments or pages.py): every
    byte, and every page free again after."""
    me, p = paths
    ps = me._ps
    for n in (0, 1, 7, 8, layout.INLINE, layout.INLINE + 1, layout.MEDIUM, layout.MEDIUM + 1, ps,
              3 * ps + 5, 1 << 16, 1 << 20):
        data = payload(n, n)
        me.psend(p.tid, 2, data)
        me.psend(p.tid, 2, data)  # the second takes the fast path (its header cached)
        assert p.call("result = [crc(me.precv(timeout=5).data) for _ in range(2)]") \
            == [crc(data)] * 2
    # and back through the peer's path, in a stream that reuses freed runs
    p.start("""
for k in range(200):
    me.psend(dest, 3, payload(k, [100, 5000, 70000][k % 3]), timeout=10)
result = 200""", dest=me.tid)
    for k in range(200):
        assert me.precv(p.tid, 3, timeout=10).data == payload(k, [100, 5000, 70000][k % 3])
    assert p.result() == 200
    me._free_deferred()  # (frees a busy lock put off: done at the next allocation or sleep)
    p.call("me._free_deferred()")
    segs = daemon.stat()["segments"]
    assert all(seg["free"] == seg["pages"] for seg in segs), segs


def test_views_of_runs_of_pages_in_order_released_out_of_order(paths, daemon):
    """precv_view on either path (compiled: Inbox.take_run, then the compiled free at
    release): order kept across inline and paged messages, the right bytes in every
    view while later ones are taken, the runs ours (the sender killed, pvm_shmd keeps
    them), freed whatever the order of release."""
    me, p = paths
    sizes = [5, 1 << 16, layout.MEDIUM + 1, 3 * me._ps + 5, 100, 1 << 20, 1 << 16]
    p.start("""
for k, n in enumerate(sizes):
    me.psend(dest, 4, payload(k, n), timeout=10)
result = len(sizes)""", dest=me.tid, sizes=sizes)
    views = []
    for n in sizes:
        v = me.precv_view(p.tid, 4, timeout=10)
        assert (v.src, v.tag, v.nbytes) == (p.tid, 4, n)
        views.append(v)
    assert p.result() == len(sizes)
    p.kill()
    p.wait(5)
    deadline = time.monotonic() + 10
    while len((st := daemon.stat())["tasks"]) > 1 and time.monotonic() < deadline:
        time.sleep(0.02)  # (pvm_shmd reclaims the killed sender's pages)
    assert len(st["tasks"]) == 1
    held = sum(-(-n // me._ps) for n in sizes if n > layout.MEDIUM)
    assert sum(x["pages"] - x["free"] for x in st["segments"]) == held
    for k, v in enumerate(views):  # (all still held: none was written over)
        assert v.data == payload(k, sizes[k]), k
    for v in views[1::2] + views[0::2]:
        v.release()
    with pytest.raises(PvmTimeout):
        me.precv_view(timeout=0.05)
    me._free_deferred()
    segs = daemon.stat()["segments"]
    assert all(seg["free"] == seg["pages"] for seg in segs), segs


@needs_compiled
def test_take_run_leaves_what_it_does_not_take(daemon):
    """The compiled take of a view takes only a whole message in one run of pages that
    matches; anything else (nothing there, an inline message, another tag) stays."""
    with shmd.join() as me:
        assert me._fx.take_run(-1, -1, 0.0) is None
        me.psend(me.tid, 1, b"small")
        assert me._fx.take_run(-1, -1, 0.0) is None  # inline: the Python path's
        assert me.precv(me.tid, 1, timeout=1).data == b"small"
        big = payload(1, 1 << 16)
        me.psend(me.tid, 2, big)
        assert me._fx.take_run(-1, 3, 0.0) is None  # another tag: left queued
        with me.precv_view(-1, 2, timeout=1) as v:
            assert v.data == big
        with pytest.raises(TypeError):
            me._fx.take_run(-1, -1)
        box = fastpath.fast.Inbox(me._buf, ring=me._ring, head=8 * me._H, tail=8 * me._T)
        box.close()
        with pytest.raises(ValueError, match="closed"):
            box.take_run(-1, -1, 0.0)


@needs_compiled
def test_scribbled_counters_below_zero_stay_inside_the_segment():
    """A head or an event count scribbled below 0 (C's % keeps the sign) is declined or
    wrapped into the ring, never used to reach before it."""
    fast = fastpath.fast
    buf = bytearray(64 + layout.RING * layout.DESC + 4096)
    q = memoryview(buf).cast("q")
    box = fast.Inbox(buf, ring=64, head=0, tail=8)
    q[0], q[1] = -5, 0
    assert box.take(-1, -1, 0.0) is None  # (the Python path names the damage)
    box.close()
    ring = fast.TraceRing(buf, ring=0, events=64, nevents=8, backlog=4, tid=7)
    q[0], q[1] = -3, -3  # count and drained, scribbled
    for k in range(6):
        ring.sent(ring.stamp(), 1, k, 2)  # the backlog (4) overflows: written over, whatever the count
    assert ring.flush(True) >= 0 and q[0] >= -3
    written = [bytes(buf[64 + 32 * k:64 + 32 * (k + 1)]) for k in range(8)]
    assert sum(1 for w in written if any(w)) >= 4  # inside the ring's 8 events
    ring.close()

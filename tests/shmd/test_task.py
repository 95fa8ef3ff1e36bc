"""The Pythonic library against a real pvm_shmd: join, psend/precv/precv_into/precv_view,
probe, wildcards, ordering, tags, buffers, memory full, pieces, timeouts.

The test process is one task (``me``); each peer is another process and task (pvm_shmd
gives one tid per process, so a second join in one process is refused)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from peers import PeerError, crc, payload

import shmd
from shmd import control, layout, spawner
from shmd.errors import (
    PvmBadParam,
    PvmError,
    PvmExists,
    PvmNoMem,
    PvmNoTask,
    PvmOverflow,
    PvmSysErr,
    PvmTimeout,
)

PS = layout.pagesize()


@pytest.fixture
def me(daemon):
    with shmd.join() as t:
        yield t


def small_daemon(maxpages=64, maxsegs=2):
    return pytest.mark.parametrize("daemon", [(maxpages, maxsegs)], indirect=True)


# ---- joining -------------------------------------------------------------------------
def test_join_gives_a_pvm_tid_and_leave_frees_the_slot(daemon):
    with shmd.join() as t:
        assert t.tid >> 18 == 1  # host index 1 in bits 18-29
        assert 0 < t.tid & 0x3FFFF  # local part in bits 0-17
        assert t.tid & ~0x3FFFFFFF == 0
        st = daemon.stat()
        assert [x["tid"] for x in st["tasks"]] == [t.tid]
        assert repr(t) == f"<Task t{t.tid:x}>"
    assert t.closed
    assert daemon.stat()["tasks"] == []


def test_join_without_a_daemon_is_a_pvm_error(pvm_env):
    with pytest.raises(PvmError) as e:
        shmd.join()
    assert e.value.code == PvmSysErr


def test_second_join_in_one_process_is_refused(me):
    with pytest.raises(PvmError) as e:
        shmd.join()
    assert e.value.code == PvmExists and f"{me.tid:x}" in str(e.value)


def test_join_by_explicit_vm_id(daemon, pvm_env, monkeypatch):
    monkeypatch.delenv("PVM_VMID")
    with pytest.raises(PvmError):
        shmd.join()  # the default VM id has no daemon
    with shmd.join(pvm_env["vmid"]) as t:
        assert t.vmid == pvm_env["vmid"]


# ---- round trips ---------------------------------------------------------------------
ECHO = """
m = me.precv(timeout=10)
me.psend(m.src, m.tag + 1, m.data)
result = [m.src, m.tag, len(m.data), crc(m.data)]
"""


@pytest.mark.parametrize("size", [0, 1, layout.INLINE, layout.INLINE + 1, layout.MEDIUM,
                                  layout.MEDIUM + 1, PS, 3 * PS + 5,
                                  1 << 20, 256 * PS * 2 + 12345])  # last: in pieces
def test_round_trip_every_size(me, peers, size):
    p = peers()
    data = payload(size, size)
    p.start(ECHO)
    me.psend(p.tid, 7, data)
    m = me.precv(p.tid, 8, timeout=10)  # before the answer: the echo may need our pages
    assert p.result() == [me.tid, 7, size, crc(data)]
    assert (m.src, m.tag, bytes(m.data)) == (p.tid, 8, data)


@pytest.mark.parametrize("make", [
    bytes, bytearray, lambda b: memoryview(b), lambda b: np.frombuffer(b, "u1"),
    lambda b: np.frombuffer(b, "f8").reshape(-1, 4), lambda b: memoryview(b).cast("d")])
def test_any_contiguous_buffer_can_be_sent(me, peers, make):
    p = peers()
    raw = payload(3, 8 * 4 * 100)
    p.start(ECHO)
    me.psend(p.tid, 1, make(raw))
    assert p.result()[3] == crc(raw)
    assert bytes(me.precv(p.tid, 2, timeout=10).data) == raw


def test_bad_buffers_and_tags_are_bad_params(me):
    for data in ("text", 12, np.arange(20)[::2]):
        with pytest.raises(PvmError) as e:
            me.psend(me.tid, 1, data)
        assert e.value.code == PvmBadParam
    for tag in (-1, -5, 1 << 31):
        with pytest.raises(PvmError) as e:
            me.psend(me.tid, tag, b"x")
        assert e.value.code == PvmBadParam
    with pytest.raises(PvmError) as e:
        me.precv_into(b"read-only", timeout=0)
    assert e.value.code == PvmBadParam


def test_tag_zero_and_the_largest_tag(me):
    me.psend(me.tid, 0, b"zero")
    me.psend(me.tid, 0x7FFFFFFF, b"max")
    assert me.precv(tag=0x7FFFFFFF, timeout=5).data == b"max"
    m = me.precv(tag=0, timeout=5)
    assert (m.src, m.tag, m.data) == (me.tid, 0, b"zero")


def test_send_to_self_every_path(me):
    sizes = [0, 5, layout.INLINE + 1, layout.MEDIUM, 10 * PS, 256 * PS + 1]
    for i, n in enumerate(sizes):
        me.psend(me.tid, i, payload(i, n))
    for i, n in enumerate(sizes):
        assert me.precv(me.tid, i, timeout=5).data == payload(i, n)


# ---- destinations --------------------------------------------------------------------
def test_send_to_another_host_is_no_task_at_once(me):
    other = (2 << 18) | (me.tid & 0x3FFFF)
    t0 = time.monotonic()
    with pytest.raises(PvmError) as e:
        me.psend(other, 1, b"x" * 100000)
    assert e.value.code == PvmNoTask and "another host" in str(e.value)
    assert time.monotonic() - t0 < 1


def test_send_to_unknown_or_bad_tid(me):
    with pytest.raises(PvmError) as e:
        me.psend(me.tid + 1000, 1, b"x")
    assert e.value.code == PvmNoTask
    for bad in (-1, 0, 1 << 32):
        with pytest.raises(PvmError) as e:
            me.psend(bad, 1, b"x")
        assert e.value.code == PvmBadParam


def test_send_to_a_task_that_left(me, peers):
    p = peers()
    me.psend(p.tid, 1, b"first")
    p.call("me.leave()")
    deadline = time.monotonic() + 5
    with pytest.raises(PvmError) as e:
        while time.monotonic() < deadline:
            me.psend(p.tid, 1, b"x" * 50000)
    assert e.value.code == PvmNoTask


# ---- ordering and wildcards ----------------------------------------------------------
SIZES = [0, 10, 200, layout.MEDIUM, 5000, 40000, 300000]
SEND_SEQ = """
import random
rng = random.Random(seed)
for i in range(count):
    size = rng.choice(sizes)
    tag = rng.choice(tags)
    body = i.to_bytes(4, 'little') + payload(seed * 100000 + i, size)
    me.psend(dest, tag, body, timeout=20)
result = count
"""


def check_seq(msgs, src):
    """The sequence numbers of *src*'s messages: increasing, no duplicates."""
    seqs = [int.from_bytes(m.data[:4], "little") for m in msgs if m.src == src]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    return seqs


def test_messages_from_one_sender_arrive_in_order(me, peers):
    a, b = peers(), peers()
    a.start(SEND_SEQ, seed=1, count=300, dest=me.tid, tags=[0, 1, 2], sizes=SIZES)
    b.start(SEND_SEQ, seed=2, count=300, dest=me.tid, tags=[0, 1, 2], sizes=SIZES)
    got = [me.precv(timeout=20) for _ in range(600)]
    assert a.result() == b.result() == 300
    for src, seed in ((a.tid, 1), (b.tid, 2)):
        assert check_seq(got, src) == list(range(300))
        for m in got:
            if m.src == src:
                i = int.from_bytes(m.data[:4], "little")
                assert bytes(m.data[4:]) == payload(seed * 100000 + i, len(m.data) - 4)
    assert me.probe() is None


def test_wildcards_select_by_source_and_tag(me, peers):
    a, b = peers(), peers()
    a.call(SEND_SEQ, seed=3, count=60, dest=me.tid, tags=[1, 2], sizes=SIZES[:4])
    b.call(SEND_SEQ, seed=4, count=60, dest=me.tid, tags=[1, 2], sizes=SIZES[:4])
    first_b2 = me.probe(b.tid, 2)
    assert first_b2 is not None and first_b2[:2] == (b.tid, 2)
    got = []
    for source, tag in ((b.tid, 2), (shmd.ANY, 1), (a.tid, shmd.ANY), (shmd.ANY, shmd.ANY)):
        while True:
            try:
                m = me.precv(source, tag, timeout=0.2)
            except PvmTimeout:
                break
            assert source in (shmd.ANY, m.src) and tag in (shmd.ANY, m.tag)
            got.append(m)
    # every message once, and per (sender, tag) in order
    assert len(got) == 120
    for src in (a.tid, b.tid):
        for tag in (1, 2):
            check_seq([m for m in got if m.tag == tag], src)
    for src in (a.tid, b.tid):
        assert sorted(int.from_bytes(m.data[:4], "little") for m in got if m.src == src) \
            == list(range(60))


# ---- receiving into buffers and views --------------------------------------------------
def test_buffer_too_small_is_an_error_that_keeps_the_message(me, peers):
    p = peers()
    p.call("""
me.psend(dest, 1, b'a' * 10)
me.psend(dest, 2, payload(9, 100000))
me.psend(dest, 1, b'c' * 10)
""", dest=me.tid)
    assert me.precv(tag=1, timeout=5).data == b"a" * 10
    small = bytearray(1000)
    for _ in range(2):
        with pytest.raises(PvmError) as e:
            me.precv_into(small, timeout=5)
        assert e.value.code == PvmOverflow and "kept" in str(e.value)
    assert small == bytearray(1000)
    # the kept message is still first: order is unchanged
    big = np.zeros(100000, "u1")
    assert me.precv_into(big, timeout=5) == (p.tid, 2, 100000)
    assert big.tobytes() == payload(9, 100000)
    assert me.precv(timeout=5).data == b"c" * 10


def test_precv_into_a_numpy_array(me, peers):
    p = peers()
    a = np.arange(100000, dtype="f8")
    p.start("m = me.precv(timeout=10); me.psend(m.src, 5, m.data)")
    me.psend(p.tid, 4, a)
    p.result()
    out = np.empty_like(a)
    assert me.precv_into(out, p.tid, 5, timeout=10) == (p.tid, 5, a.nbytes)
    assert np.array_equal(out, a)
    out2 = np.zeros(200000)  # larger is fine: nbytes says how much came
    p.start("m = me.precv(timeout=10); me.psend(m.src, 5, m.data)")
    me.psend(p.tid, 4, a[:10])
    p.result()
    assert me.precv_into(out2, timeout=10)[2] == 80


def pages_used(d):
    return sum(s["pages"] - s["free"] for s in d.stat()["segments"])


def test_medium_messages_go_round_the_inbox_without_pages(me, daemon):
    """Up to layout.MEDIUM bytes, a message's bytes fill the descriptors after its own
    and no page is used. It never wraps round the ring's end (a filler takes the rest),
    so sizes that do not divide the ring, sent over and over, go round it many times."""
    rng = np.random.default_rng(7)
    sizes = [layout.INLINE + 1, layout.MEDIUM, 1000, layout.MEDIUM - 1]
    sizes += [int(n) for n in rng.integers(layout.INLINE + 1, layout.MEDIUM + 1, 600)]
    went_round = 0

    def allocations() -> int:  # every segment's count of runs handed out, as it is now
        return sum(me._q[me._segq[s] + layout.S_ALLOCATED_Q] for s in range(me._nsegs))

    before = allocations()
    for k in range(0, len(sizes), 2):
        batch = [(k + j, payload(k + j, n)) for j, n in enumerate(sizes[k:k + 2])]
        for tag, data in batch:
            me.psend(me.tid, tag, data)
        # no page taken (read in the segment table: pvm_shmd_stat 300 times took a minute)
        assert allocations() == before
        for tag, data in batch:
            m = me.precv(timeout=5)
            assert (m.src, m.tag, m.data) == (me.tid, tag, data)
        went_round = me._q[me._H] // layout.RING
    assert went_round >= 10
    assert pages_used(daemon) == 0 and daemon.stat()["counters"]["allocated"] == before


def test_medium_messages_past_their_share_of_the_inbox_take_the_pages(me, daemon):
    """Medium messages fill the ring only up to MEDIUM_FILL descriptors: the rest of
    the ring is kept for a descriptor per message, so 128 messages always fit; past
    that share they go through the pages, in order with the others."""
    n, count = 4000, 40
    per = layout.span(n)
    inline = layout.MEDIUM_FILL // per
    for i in range(count):
        me.psend(me.tid, i, payload(i, n))
    assert pages_used(daemon) == (count - inline) * -(-n // PS)
    tasks = {t["tid"]: t for t in daemon.stat()["tasks"]}
    assert tasks[me.tid]["waiting"] == count
    for i in range(count):
        assert me.precv(timeout=5).data == payload(i, n)
    assert pages_used(daemon) == 0


def test_precv_view_is_zero_copy_until_released(me, daemon):
    a = np.arange(50000, dtype="f8")
    me.psend(me.tid, 1, a)
    assert pages_used(daemon) == -(-a.nbytes // PS)
    with me.precv_view(timeout=5) as v:
        assert (v.src, v.tag, v.nbytes) == (me.tid, 1, a.nbytes)
        arr = v.array("f8")
        assert np.array_equal(arr, a)
        arr[0] = 42  # writable, in the shared pages
        assert pages_used(daemon) == -(-a.nbytes // PS)  # still held: no copy was made
        with pytest.raises(BufferError):
            v.release()  # arr still uses the pages
        del arr
    assert v.released and pages_used(daemon) == 0
    v.release()  # twice is harmless


def test_precv_view_of_inline_and_pieces(me, daemon):
    big = payload(5, 256 * PS + 999)
    me.psend(me.tid, 1, b"tiny")
    me.psend(me.tid, 2, big)
    with me.precv_view(timeout=5) as v:
        assert bytes(v.data) == b"tiny"
    with me.precv_view(timeout=5) as v:
        assert bytes(v.data) == big
    assert pages_used(daemon) == 0


def test_unreleased_view_is_freed_on_leave(daemon):
    with shmd.join() as t:
        t.psend(t.tid, 1, b"x" * 20000)
        v = t.precv_view(timeout=5)
        assert pages_used(daemon) == 5
    assert v.released
    assert daemon.wait_idle()["tasks"] == []


def test_probe(me):
    assert me.probe() is None
    me.psend(me.tid, 3, b"abc")
    assert me.probe() == (me.tid, 3, 3)
    assert me.probe(tag=4) is None
    assert me.probe(me.tid, 3) == (me.tid, 3, 3)
    me.precv(timeout=1)
    assert me.probe() is None


# ---- timeouts, blocking --------------------------------------------------------------
def test_precv_timeout_returns_control(me):
    for timeout in (0, 0.3):
        t0 = time.monotonic()
        with pytest.raises(PvmTimeout) as e:
            me.precv(timeout=timeout)
        took = time.monotonic() - t0
        assert timeout <= took < timeout + 0.5
        assert isinstance(e.value, PvmError)


def test_blocked_receiver_wakes_on_a_message(me, peers):
    p = peers()
    p.start("t0 = time.monotonic(); m = me.precv(timeout=20); "
            "result = [m.data.decode(), time.monotonic() - t0]")
    time.sleep(0.5)
    assert not p.ready()
    me.psend(p.tid, 1, b"wake")
    data, took = p.result(timeout=5)
    assert data == "wake" and took >= 0.4



def test_sleeping_receivers_miss_no_wake_up(daemon, peers):
    """Spin off everywhere: every message finds its receiver asleep. Senders wake it
    before posting and again after only if it went to sleep anew (the Dekker check);
    a lost wake-up would stall a round trip for a whole slice (0.2 s). Two pingers
    through one echo, thousands of round trips: all in order, none stalled."""
    echo, a, c = peers(join=False), peers(join=False), peers(join=False)
    for p in (echo, a, c):
        p.tid = p.call("me = shmd.join(spin=False); result = me.tid")
    n = 1500
    echo.start("""
for _ in range(2 * n):
    m = me.precv(timeout=10)
    me.psend(m.src, m.tag, m.data)
""", n=n)
    ping = """
slow, bad = 0, 0
for i in range(n):
    t0 = time.monotonic()
    me.psend(dest, 1, i.to_bytes(4, 'little'))
    m = me.precv(dest, 1, timeout=10)
    slow += time.monotonic() - t0 > 0.15
    bad += int.from_bytes(m.data, 'little') != i
result = [slow, bad]
"""
    a.start(ping, dest=echo.tid, n=n)
    c.start(ping, dest=echo.tid, n=n)
    for p in (a, c):
        slow, bad = p.result(timeout=60)
        assert bad == 0 and slow <= 1, (slow, bad)  # one stall: a hiccup of the host
    echo.result(timeout=10)

# ---- memory full, pieces -------------------------------------------------------------
@small_daemon(64, 2)
def test_memory_full_waits_then_raises_and_loses_nothing(me, peers, daemon):
    p = peers()
    chunk = 20 * PS
    sent = p.call("""
n = 0
while True:
    try:
        me.psend(dest, 1, n.to_bytes(4, 'little') + payload(n, chunk), timeout=0.3)
    except shmd.PvmError as e:
        result = [n, e.code, type(e).__name__]
        break
    n += 1
""", dest=me.tid, chunk=chunk - 4)
    n, code, _ = sent
    assert n == 6 and code == PvmNoMem  # 3 runs of 20 pages fit in each 64-page segment
    # a sender waiting for memory goes on as soon as pages are freed
    p.start("me.psend(dest, 1, n.to_bytes(4, 'little') + payload(n, chunk), timeout=10); "
            "result = 'sent'", dest=me.tid, n=n, chunk=chunk - 4)
    time.sleep(0.5)
    assert not p.ready()
    first = me.precv(timeout=5)
    assert p.result(timeout=5) == "sent"
    got = [first] + [me.precv(timeout=5) for _ in range(n)]
    for i, m in enumerate(got):
        assert bytes(m.data) == i.to_bytes(4, "little") + payload(i, chunk - 4)
    assert pages_used(daemon) == 0


@small_daemon(64, 2)
def test_message_larger_than_a_segment_goes_in_pieces(me, peers, daemon):
    p = peers()
    big = payload(77, 64 * PS * 5 + 17)  # 5+ segments' worth, through 2 segments
    p.start("m = me.precv(timeout=20); result = [len(m.data), crc(m.data)]")
    me.psend(p.tid, 9, big, timeout=20)
    assert p.result() == [len(big), crc(big)]
    assert daemon.wait_idle()["segments"][0]["allocated"] >= 2


@small_daemon(64, 2)
def test_sender_giving_up_mid_message_aborts_it(me, peers, daemon):
    p = peers()
    err = p.call("""
try:
    me.psend(dest, 1, payload(1, 64 * 4096 * 4), timeout=0.5)
except shmd.PvmError as e:
    result = e.code
me.psend(dest, 2, b'after', timeout=5)
""", dest=me.tid)
    assert err == PvmNoMem
    m = me.precv(timeout=5)  # the aborted pieces are dropped, the next message is whole
    assert (m.src, m.tag, m.data) == (p.tid, 2, b"after")
    assert me.probe() is None
    assert pages_used(daemon) == 0


@small_daemon(64, 2)
def test_receiver_waiting_for_one_source_frees_others_pages(me, peers, daemon):
    """B fills the memory with messages to R; R waits for A; A's big message must get
    through (R moves B's messages out of the pages while it waits)."""
    a, b, r = peers(), peers(), peers()
    nb = b.call("""
n = 0
try:
    while True:
        me.psend(dest, 1, payload(n, 30 * 4096), timeout=0.3)
        n += 1
except shmd.PvmError:
    result = n
""", dest=r.tid)
    assert nb >= 4
    r.start("m = me.precv(source, timeout=20); result = crc(m.data)", source=a.tid)
    big = payload(99, 100 * PS)
    a.call(f"me.psend(dest, 3, payload(99, {100 * PS}), timeout=15)", dest=r.tid)
    assert r.result() == crc(big)
    got = r.call("""
result = []
for i in range(n):
    m = me.precv(timeout=5)
    result.append([m.src, crc(m.data) == crc(payload(i, 30 * 4096))])
""", n=nb)
    assert got == [[b.tid, True]] * nb
    assert pages_used(daemon) == 0


def test_timeout_zero_psend_to_a_full_inbox(me, peers):
    p = peers()
    with pytest.raises(PvmTimeout):
        for _ in range(layout.RING + 1):
            me.psend(p.tid, 1, b"x", timeout=0)
    got = p.call("result = sum(1 for _ in range(n) if me.precv(timeout=5))", n=layout.RING)
    assert got == layout.RING


def test_peer_error_reports_codes(peers):
    p = peers()
    with pytest.raises(PeerError) as e:
        p.call("me.precv(timeout=0.1)")
    assert e.value.type == "PvmTimeout"


@small_daemon(4096, 2)
def test_senders_ahead_of_a_receiver_that_does_not_receive_are_not_held(me, peers):
    """The in-flight pacing (4 MiB) waits only for a receiver that is receiving: two
    tasks that each send 8 MiB to the other before receiving still both finish."""
    p = peers()
    big = 1 << 20
    p.start(f"""
for i in range(8):
    me.psend(dest, 1, payload(i, {big}), timeout=10)
got = [me.precv(dest, 1, timeout=10).data for i in range(8)]
result = all(bytes(g) == payload(100 + i, {big}) for i, g in enumerate(got))
""", dest=me.tid)
    for i in range(8):
        me.psend(p.tid, 1, payload(100 + i, big), timeout=10)
    for i in range(8):
        assert bytes(me.precv(p.tid, 1, timeout=10).data) == payload(i, big)
    assert p.result(timeout=20) is True


def test_the_task_table_read_from_segment_0_agrees_with_pvm_shmd(daemon):
    # spawner.tasks (pvm_netd's answer to ps) reads the table from segment 0, without
    # asking pvm_shmd; the "c" flag is the slot's conn word, which pvm_shmd keeps: set
    # when the task's own connection holds the slot, cleared when it closes.
    def connected() -> tuple[dict, dict]:
        ours = {t["tid"]: (t["pid"], t["name"], t["connected"]) for t in spawner.tasks(daemon.vmid)}
        theirs = {t["tid"]: (t["pid"], t["name"], t["connected"])
                  for t in control.request("stat", daemon.vmid)["tasks"]}
        return ours, theirs

    kid = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                           stdin=subprocess.PIPE)
    enroller = control.connect(daemon.vmid)
    try:
        k = enroller.request("join", pid=kid.pid, name="kid")["tid"]  # enrolled by its parent
        with shmd.join(name="me") as me:
            ours, theirs = connected()
            assert ours == theirs == {k: (kid.pid, "kid", False), me.tid: (os.getpid(), "me", True)}
            rows = {t["tid"]: t for t in spawner.tasks(daemon.vmid, me._buf)}  # (as pvm_netd does)
            assert rows[me.tid]["flags"] == spawner.F_CONNECTED and rows[k]["flags"] == 0
            me._conn.close()  # our own connection gone (the process lives: not reaped)
            me._conn = None
            deadline = time.monotonic() + 10
            while connected()[0][me.tid][2] and time.monotonic() < deadline:
                time.sleep(0.02)
            ours, theirs = connected()
            assert ours == theirs and ours[me.tid] == (os.getpid(), "me", False)
    finally:
        enroller.close()
        kid.stdin.close()
        kid.wait(10)


def test_the_spawn_registry_appends_and_keeps_only_live_records_past_its_size(daemon):
    """spawner.record appends a line per copy (a later line for a tid wins); past
    COMPACT_BYTES it rewrites the file with the records of tids still joined, then the
    new ones. ps's PTID (spawner.tasks) reads them back."""
    import shmd

    with shmd.join(daemon.vmid) as me:
        spawner.record(daemon.vmid, [{"tid": me.tid, "pid": os.getpid(), "ptid": 0x40001}])
        spawner.record(daemon.vmid, [{"tid": me.tid, "pid": os.getpid(), "ptid": 0x40002}])  # wins
        path = spawner.registry_path(daemon.vmid)
        assert len(open(path).read().splitlines()) == 2
        assert {t["tid"]: t["ptid"] for t in spawner.tasks(daemon.vmid)}[me.tid] == 0x40002
        gone = [{"tid": 0x40100 + k, "pid": 1, "ptid": 0x40001} for k in range(40)]
        while os.stat(path).st_size < spawner.COMPACT_BYTES:
            spawner.record(daemon.vmid, gone)
        new = {"tid": 0x40fff, "pid": 1, "ptid": 0x40003}
        spawner.record(daemon.vmid, [new])  # rewritten: ours, live, and the new one
        assert spawner.load_registry(daemon.vmid) == {me.tid: {"tid": me.tid, "pid": os.getpid(), "ptid": 0x40002},
                                                      0x40fff: new}
        assert os.stat(path).st_mode & 0o777 == 0o600

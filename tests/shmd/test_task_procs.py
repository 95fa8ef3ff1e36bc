"""Tasks in separate processes when things die: the daemon killed or stopped under a
blocked receiver (and sender), HUP under a blocked receiver, kill -9 of senders and
receivers in the middle of transfers. Every wait has a timeout."""
from __future__ import annotations

import os
import random
import signal
import time

import pytest
from peers import PeerError

from shmd.errors import PvmNoTask, PvmSysErr

PS = os.sysconf("SC_PAGESIZE")


def blocked(peer, code: str, **names) -> None:
    """Start *code* in *peer* and check that it is still blocked half a second later."""
    peer.start(code, **names)
    time.sleep(0.5)
    assert not peer.ready(), "the call did not block"


# ---- the daemon goes away --------------------------------------------------------------
@pytest.mark.parametrize("how", ["SIGKILL", "stop"])
@pytest.mark.parametrize("call", ["me.precv()", "me.precv_into(bytearray(1 << 20))"])
def test_daemon_gone_under_a_blocked_receiver_is_an_error(daemon, peers, how, call):
    """precv, and precv_into of a buffer large enough to be posted for direct delivery."""
    r = peers()
    blocked(r, f"t0 = time.monotonic()\ntry:\n    {call}\n"
               "except shmd.PvmError as e:\n    result = [e.code, time.monotonic() - t0]")
    if how == "SIGKILL":
        os.kill(daemon.pid, signal.SIGKILL)
    else:
        daemon.stop()  # TERM: the daemon removes every IPC object (as the console's reset)
    code, took = r.result(timeout=5)
    assert code == PvmSysErr and took < 3


@pytest.mark.parametrize("daemon", [(16, 2)], indirect=True)
def test_daemon_killed_under_a_sender_waiting_for_memory(daemon, peers):
    s, r = peers(), peers()
    blocked(s, """
try:
    for i in range(100):
        me.psend(dest, 1, b'x' * 8 * 4096)
except shmd.PvmError as e:
    result = [i, e.code]
""", dest=r.tid)
    os.kill(daemon.pid, signal.SIGKILL)
    i, code = s.result(timeout=5)
    assert i == 4 and code == PvmSysErr  # 2 segments of 16 pages hold 4 messages


def test_hup_under_a_blocked_receiver(daemon, peers):
    """HUP clears the shared memory and TERMs (then KILLs) every task: a blocked
    receiver does not hang. One with a TERM handler sees it as an exception in precv."""
    plain, handled, s = peers(), peers(), peers()
    s.call("me.psend(dest, 1, b'y' * 100000)", dest=plain.tid)  # pages held
    blocked(plain, "me.precv(tag=5)")
    blocked(handled, """
class Term(Exception):
    pass
def on_term(*a):
    raise Term('SIGTERM')
signal.signal(signal.SIGTERM, on_term)
t0 = time.monotonic()
try:
    me.precv()
except Term as e:
    result = ['term', time.monotonic() - t0]
""")
    gen = daemon.stat()["generation"]
    os.kill(daemon.pid, signal.SIGHUP)
    assert handled.result(timeout=5)[0] == "term"
    assert plain.wait(timeout=5) == -signal.SIGTERM
    handled.close()
    st = daemon.wait_idle(timeout=10)
    assert st["generation"] == gen + 1 and st["tasks"] == []
    assert all(x["free"] == x["pages"] for x in st["segments"])
    # the daemon goes on, fresh
    a, b = peers(), peers()
    a.call("me.psend(dest, 1, b'z' * 50000)", dest=b.tid)
    assert b.call("result = len(me.precv(timeout=5).data)") == 50000


# ---- kill -9 in the middle of transfers ------------------------------------------------
RECEIVE = """
got = {}
ended = False
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        m = me.precv(timeout=1.0 if ended else 20)
    except shmd.PvmTimeout:
        break
    if m.tag == 9:
        ended = True
        continue
    seq = int.from_bytes(m.data[:4], 'little')
    ok = crc(m.data[8:]) == int.from_bytes(m.data[4:8], 'little')
    got.setdefault(str(m.src), []).append([seq, ok, len(m.data)])
result = got
"""

SEND = """
import random
rng = random.Random(seed)
sent = []
for i in range(count):
    dest = dests[i % len(dests)]
    if dest in gone:
        continue
    body = payload(seed * 1000 + i, rng.randint(0, maxsize))
    msg = i.to_bytes(4, 'little') + crc(body).to_bytes(4, 'little') + body
    try:
        me.psend(dest, 1, msg, timeout=20)
        sent.append([dest, i])
    except shmd.PvmError as e:
        if e.code != -31:
            raise
        gone.append(dest)
if end:
    for d in dests:
        if d not in gone:
            me.psend(d, 9, b'', timeout=5)
result = [sent, gone]
"""


def check_stream(entries, expect=None):
    """Intact, in order, once; and exactly *expect* (sequence numbers) if given."""
    seqs = [seq for seq, ok, _ in entries]
    assert all(ok for _, ok, _ in entries), "a message arrived corrupted"
    assert seqs == sorted(set(seqs)), "out of order or duplicated"
    if expect is not None:
        assert seqs == expect


@pytest.mark.parametrize("round_", range(3))
def test_sender_killed_mid_transfer_loses_only_its_own(daemon, peers, round_):
    rng = random.Random(round_)
    victim, other, r = peers(), peers(), peers()
    r.start(RECEIVE)
    victim.start(SEND, seed=1, count=10000, dests=[r.tid], gone=[], maxsize=3 << 20, end=False)
    other.start(SEND, seed=2, count=300, dests=[r.tid], gone=[], maxsize=300000, end=True)
    time.sleep(rng.uniform(0.3, 1.5))
    victim.kill()
    sent, _ = other.result(timeout=60)
    got = r.result(timeout=60)
    check_stream(got[str(other.tid)], [i for _, i in sent])
    check_stream(got.get(str(victim.tid), []))
    for p in (other, r):
        p.close()
    st = daemon.wait_idle(timeout=10)
    assert st["tasks"] == [] and all(x["free"] == x["pages"] for x in st["segments"])
    assert st["counters"]["reaped"] >= 1


@pytest.mark.parametrize("round_", range(3))
def test_receiver_killed_mid_transfer_loses_only_its_own(daemon, peers, round_):
    rng = random.Random(10 + round_)
    s, victim, r = peers(), peers(), peers()
    victim.start("while True:\n    me.precv(timeout=30)")
    r.start(RECEIVE)
    s.start(SEND, seed=3, count=2000, dests=[victim.tid, r.tid], gone=[], maxsize=2 << 20,
            end=True)
    time.sleep(rng.uniform(0.1, 0.6))
    victim.kill()
    sent, gone = s.result(timeout=60)
    assert gone == [victim.tid]
    assert len([1 for d, _ in sent if d == r.tid]) == 1000
    got = r.result(timeout=60)
    check_stream(got[str(s.tid)], [i for d, i in sent if d == r.tid])
    for p in (s, r):
        p.close()
    st = daemon.wait_idle(timeout=10)
    assert st["tasks"] == [] and all(x["free"] == x["pages"] for x in st["segments"])


def test_receiver_killed_holding_views_and_pending_pages(daemon, peers):
    s, r = peers(), peers()
    s.call("""
for i in range(6):
    me.psend(dest, i, b'v' * 30000)
""", dest=r.tid)
    r.call("v = me.precv_view(tag=3, timeout=5); result = me.probe()")
    assert sum(x["pages"] - x["free"] for x in daemon.stat()["segments"]) == 6 * 8
    r.kill()
    r.wait(5)
    st = daemon.wait_idle(timeout=10, tasks=1)
    assert all(x["free"] == x["pages"] for x in st["segments"])
    with pytest.raises(PeerError) as e:
        s.call("me.psend(dest, 1, b'late')", dest=r.tid)
    assert e.value.code == PvmNoTask

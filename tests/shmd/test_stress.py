"""Stress: 4 senders x 4 receivers, thousands of messages of random sizes up to 4 MiB
(each with a checksum and a per-pair sequence number), through a daemon small enough
(2 segments of 512 pages) that messages go in pieces and the memory is often full,
while some senders and receivers are killed with SIGKILL at random instants. One
receiver uses precv (through the pages), two precv_into a large buffer (large messages
then often go straight from sender to receiver: direct.py), one precv_view with its
spin on (large messages then often come into pages both copy into: direct.py too).

At the end every message from a living sender to a living receiver has arrived exactly
once, intact and in order; a killed sender's messages arrived as an intact prefix; and
once every task is gone the daemon has every page free and no tasks."""
from __future__ import annotations

import json
import os
import random
import time
from array import array

import pytest
from daemons import shmd_vm  # noqa: F401  (a fixture)

import shmd
from shmd import layout, pagemap, wake
from shmd.errors import PvmError, PvmSysErr

SEED = int(os.environ.get("STRESS_SEED", "0")) or random.randrange(1, 1 << 30)
PER_SENDER = int(os.environ.get("STRESS_MESSAGES", "8000"))
MAXSIZE = 4 << 20
TAG_DATA, TAG_END, TAG_DEAD = 1, 9, 8

SENDER = """
import random
rng = random.Random(seed)
counts = {str(r): 0 for r in receivers}
gone = []
for i in range(n):
    r = rng.choice(receivers)
    if r in gone:
        continue
    k = rng.random()
    size = (rng.randint(0, 65536) if k < 0.7 else rng.randint(65536, 1 << 20) if k < 0.95
            else rng.randint(1 << 20, maxsize))
    seq = counts[str(r)]
    body = payload(seed * 1000003 + seq * 7 + r, size)
    try:
        me.psend(r, TAG_DATA, seq.to_bytes(4, 'little') + crc(body).to_bytes(4, 'little')
                 + body, timeout=30)
    except shmd.PvmError as e:
        if e.code != -31:  # PvmNoTask: that receiver was killed
            raise
        gone.append(r)
        continue
    counts[str(r)] = seq + 1
for r in receivers:
    if r not in gone:
        try:
            me.psend(r, TAG_END, str(counts[str(r)]).encode(), timeout=30)
        except shmd.PvmError as e:
            if e.code != -31:
                raise
result = counts
"""

RECEIVER = """
import json
got = {str(s): [] for s in senders}
ends, dead = {}, set()
deadline = time.monotonic() + limit
if mode == "into":  # into one large buffer: large messages come straight from the senders
    mv = memoryview(bytearray(maxsize + 8))
    def receive(timeout):
        src, tag, n = me.precv_into(mv, timeout=timeout)
        return src, tag, mv[:n]
elif mode == "view":  # zero-copy; it posts "into pages" only while it spins
    me._spin_auto, me._spin_budget = False, 2e-4
    def receive(timeout):
        with me.precv_view(timeout=timeout) as v:
            return v.src, v.tag, bytes(v.data)
else:
    def receive(timeout):
        return me.precv(timeout=timeout)
while not all(str(s) in ends or s in dead for s in senders):
    src, tag, data = receive(max(0.1, deadline - time.monotonic()))
    if tag == TAG_DEAD:
        dead.update(json.loads(bytes(data)))
    elif tag == TAG_END:
        ends[str(src)] = int(bytes(data))
    else:
        seq = int.from_bytes(data[:4], 'little')
        ok = crc(data[8:]) == int.from_bytes(data[4:8], 'little')
        got[str(src)].append(seq if ok else -1 - seq)
result = {'got': got, 'ends': ends}
"""


@pytest.fixture(params=wake.available())
def wake_kind(request, monkeypatch, pvm_env):
    """PVM_SHMD_WAKE for the daemon: the kill -9 promises hold whichever way sleepers
    are woken (wake.py)."""
    monkeypatch.setenv(wake.ENV, request.param)
    return request.param


@pytest.mark.parametrize("daemon", [(512, 2)], indirect=True)
def test_stress_senders_receivers_with_kills(wake_kind, daemon, peers):
    rng = random.Random(SEED)
    print(f"STRESS_SEED={SEED}")
    limit = 90.0
    senders = [peers() for _ in range(4)]
    receivers = [peers() for _ in range(4)]
    stids, rtids = [s.tid for s in senders], [r.tid for r in receivers]
    consts = dict(TAG_DATA=TAG_DATA, TAG_END=TAG_END, TAG_DEAD=TAG_DEAD)
    with shmd.join() as me:
        for r, mode in zip(receivers, ("precv", "into", "view", "into")):
            r.start(RECEIVER, senders=stids, limit=limit, mode=mode, maxsize=MAXSIZE,
                    **consts)
        t0 = time.monotonic()
        for i, s in enumerate(senders):
            s.start(SENDER, seed=SEED % 100000 * 10 + i, receivers=rtids, n=PER_SENDER,
                    maxsize=MAXSIZE, **consts)
        # kill one sender and one receiver at random instants while traffic flows
        dead_s, dead_r = rng.choice(senders), rng.choice(receivers)
        for victim in rng.sample([dead_s, dead_r], 2):
            time.sleep(rng.uniform(0.05, 0.5))  # early: a sender ends in ~2 s
            assert not victim.ready(), "the victim finished before it was killed"
            victim.kill()
        live_s = [s for s in senders if s is not dead_s]
        live_r = [r for r in receivers if r is not dead_r]
        counts = {s.tid: s.result(timeout=limit) for s in live_s}
        sending_time = time.monotonic() - t0
        assert dead_s.wait(5) == -9 and dead_r.wait(5) == -9
        for r in live_r:  # the killed sender will not say END: tell the receivers
            me.psend(r.tid, TAG_DEAD, json.dumps([dead_s.tid]).encode(), timeout=10)
        results = {r.tid: r.result(timeout=limit) for r in live_r}
    total = 0
    for r in live_r:
        got, ends = results[r.tid]["got"], results[r.tid]["ends"]
        for s in live_s:
            n = counts[s.tid][str(r.tid)]
            assert ends[str(s.tid)] == n
            assert got[str(s.tid)] == list(range(n)), \
                f"t{s.tid:x} -> t{r.tid:x}: not exactly once, intact and in order"
            total += n
        prefix = got[str(dead_s.tid)]  # killed sender: an intact prefix
        assert prefix == list(range(len(prefix)))
        total += len(prefix)
    assert total > 1000
    for p in live_s + live_r:
        p.close()
    st = daemon.wait_idle(timeout=10)
    assert st["tasks"] == [], st["tasks"]
    assert all(s["free"] == s["pages"] for s in st["segments"]), st["segments"]
    assert st["counters"]["reaped"] >= 2
    print(f"{total} messages checked; senders took {sending_time:.1f} s; "
          f"{st['counters']['allocated']} page runs allocated")


def _cut_short(me, want: int) -> tuple[int, list[int]]:
    """Leave segment 0's page map as a task killed -9 inside pagemap.commit does: the
    plan of an allocation of *want* pages kept in the intent record, half applied.
    (first page, plan)"""
    m, b, n = me._i, me._mapb[0], me._npages[0]
    plan: list[int] = []
    p = pagemap.alloc(m, b, n, want, me.tid, me._rover[0], plan)
    k = me._segi[0] + layout.S_FREE_I
    plan += (k, m[k] - want)
    rec = layout.intent_i(0)
    m[rec + 1:rec + 1 + len(plan)] = array("i", plan)
    m[rec] = len(plan) // 2
    for j in range(0, 4, 2):  # the run's header and footer: not its owner, nor the rest
        m[plan[j]] = plan[j + 1]
    with pytest.raises(pagemap.Damaged):  # as it stands, the map cannot be right
        list(pagemap.runs(m, b, n))
    return p, plan


@pytest.mark.parametrize("taker", ["task", "pvm_shmd"])
def test_a_page_map_change_cut_short_is_finished_by_the_next_taker(daemon, taker):
    pages = daemon.stat()["segments"][0]["free"]
    with shmd.join() as me:
        m, b, n = me._i, me._mapb[0], me._npages[0]
        p, _ = _cut_short(me, 3)
        if taker == "task":  # the next allocation in that segment finishes it first
            me._home = 0
            s2, p2 = me._alloc(1, time.monotonic() + 5)
            assert s2 == 0
        else:  # pvm_shmd takes the lock to report (as it does to reap)
            assert daemon.stat()["segments"][0]["free"] == pages - 3
        assert m[layout.intent_i(0)] == 0
        assert (p, 3, True, me.tid) in list(pagemap.runs(m, b, n))
        me._free(0, p)
        if taker == "task":
            me._free(s2, p2)
    st = daemon.wait_idle(timeout=10)
    assert all(s["free"] == s["pages"] for s in st["segments"]), st["segments"]


def test_a_damaged_intent_record_is_named(daemon):
    with shmd.join() as me:
        rec = layout.intent_i(0)
        me._home = 0
        for count, first, named in ((99, 0, "99 writes"), (1, 5, "a write to word 5")):
            me._i[rec], me._i[rec + 1] = count, first
            with pytest.raises(PvmError) as e:
                me._alloc(1, time.monotonic() + 5)
            assert e.value.code == PvmSysErr and named in str(e.value), str(e.value)
            me._i[rec] = 0

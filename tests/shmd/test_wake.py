"""How sleeping receivers are woken (shmd/wake.py): each kind, forced by PVM_SHMD_WAKE,
is the one the daemon's tasks use and wakes every sleep (none waits out its slice);
a bad value is a one-line error naming it (test_paths.py); a scribbled header word is
named at join;
the daemon's choice follows the measurement and distrusts a busy host's; in either order
of wake-up and post no wake-up is lost, and the order follows the CPUs sender and
receiver may run on (taskbase.cpus_apart); an inbox lock whose holder was killed is
taken over (mutex.py)."""
from __future__ import annotations

import os
import sys
import time

import pytest
import sysv_ipc

import shmd
from shmd import calibrate, fastpath, ipc, layout, taskbase, wake
from shmd.errors import PvmTimeout

KINDS = wake.available()


@pytest.fixture(params=KINDS)
def kind(request, monkeypatch, pvm_env):
    """PVM_SHMD_WAKE for the daemon (its tasks follow it)."""
    monkeypatch.setenv(wake.ENV, request.param)
    return request.param


class Counting:
    """A receiver's waiter that remembers how each of its sleeps ended."""

    def __init__(self, inner):
        self.inner, self.ends = inner, []

    def down(self, timeout: float) -> bool:
        woke = self.inner.down(timeout)
        self.ends.append(woke)
        return woke


def test_each_kind_wakes_every_sleep(kind, daemon, peers):
    st = daemon.stat()["paths"]["wake"]
    assert (st["kind"], st["why"]) == (kind, f"forced by PVM_SHMD_WAKE={kind}")
    p = peers()
    with shmd.join(spin=False) as me:
        assert me._i[layout.H_WAKE_I] == KINDS.index(kind)
        assert isinstance(me._waiter, wake.FutexWaiter if kind == "futex" else ipc.Waiter)
        me._waiter = counting = Counting(me._waiter)
        # the peer sends each message a little after the last reply: we are asleep by then
        p.start("import time\n"
                "for k in range(30):\n"
                "    time.sleep(0.003)\n"
                "    me.psend(dest, 5, k.to_bytes(4, 'little'))\n"
                "    assert me.precv(dest, 6, timeout=20).data == b'ok'", dest=me.tid)
        for k in range(30):
            m = me.precv(p.tid, 5, timeout=20)
            assert int.from_bytes(m.data, "little") == k
            me.psend(p.tid, 6, b"ok")
        p.result(20)
        # it slept, and every sleep ended in a wake-up, none in its slice: no wake-up lost
        assert counting.ends and all(counting.ends), counting.ends
        # and the peer, a sleeping receiver too (spin off), was woken the same way
        assert p.call("result = type(me._waiter).__name__") == ("FutexWaiter" if kind == "futex"
                                                        else "Waiter")


# in a peer: Counting (as above), for its waiter
COUNTING = """
class Counting:
    def __init__(self, inner):
        self.inner, self.ends = inner, []
    def down(self, timeout):
        woke = self.inner.down(timeout)
        self.ends.append(woke)
        return woke
"""
# in a peer: its waiter counting, and the order forced (first: wake first)
PEER_SETUP = COUNTING + """
from shmd import taskbase
taskbase.cpus_apart = lambda pid: first
me._spin_auto, me._spin_budget = False, 0.0
me._waiter = w = Counting(me._waiter)
"""
ROUNDS = 300


@pytest.mark.parametrize("first", [True, False], ids=["wake-first", "post-first"])
def test_no_wake_up_is_lost_in_either_order(kind, daemon, peers, first, monkeypatch, request):
    # Back-to-back ping-pongs, both sides asleep between messages (spin off): each
    # sender's wake-up races its receiver going to sleep, the Dekker handshake's
    # window. A lost wake-up leaves a sleep to end in its slice (SLICE, 0.2 s), not
    # woken: counted on both sides.
    monkeypatch.setattr(taskbase, "cpus_apart", lambda pid: first)  # (not by our CPUs)
    p = peers()
    p.call(PEER_SETUP, first=first)
    # Each on a CPU of its own where there are two: sharing one, the woken side runs
    # first and has sent its next message before the other looks, which then never
    # sleeps (in 2 of 10 runs on a 2-vCPU guest): no race to test on that side.
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        p.call("import os\nos.sched_setaffinity(0, {cpu})", cpu=cpus[1])
        os.sched_setaffinity(0, {cpus[0]})
        request.addfinalizer(lambda: os.sched_setaffinity(0, cpus))
    with shmd.join(spin=False) as me:
        me._waiter = counting = Counting(me._waiter)
        p.start("for k in range(rounds):\n"
                "    me.psend(dest, 6, me.precv(dest, 5, timeout=5).data)\n"
                "result = w.ends", dest=me.tid, rounds=ROUNDS)
        for k in range(ROUNDS):
            me.psend(p.tid, 5, k.to_bytes(4, "little"))
            assert me.precv(p.tid, 6, timeout=5).data == k.to_bytes(4, "little")
        theirs = p.result(20)
    assert counting.ends and all(counting.ends), counting.ends.count(False)
    assert theirs and all(theirs), theirs.count(False)


@pytest.mark.parametrize("mine, theirs, apart", [
    ({0}, {1}, True),  # never on one CPU: wake first
    ({1}, {1}, False),  # always on one: post first
    ({0, 1}, {1}, None),  # may share: wake first (neither order won everywhere)
    ({0, 1}, {0, 1}, None),
])
def test_the_order_follows_the_cpus_we_may_run_on(monkeypatch, mine, theirs, apart):
    monkeypatch.setattr(taskbase.os, "sched_getaffinity", lambda pid: mine if pid == 0 else theirs)
    assert taskbase.cpus_apart(1234) is apart


def test_a_peer_bound_to_our_one_cpu_is_woken_after_the_post(daemon, peers):
    if len(taskbase.os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU")
    cpus = sorted(taskbase.os.sched_getaffinity(0))
    p = peers()
    p.call("os.sched_setaffinity(0, {cpu})", cpu=cpus[1])  # (its Peer for us: made later)
    with shmd.join() as me:
        me.psend(p.tid, 1, b"x")  # (our Peer for it: made now)
        assert me._peers[p.tid].first is True  # we may run on its CPU: wake first
        before = taskbase.os.sched_getaffinity(0)
        taskbase.os.sched_setaffinity(0, {cpus[1]})
        try:
            me._peers.clear()
            me.psend(p.tid, 1, b"y")
            assert me._peers[p.tid].first is False
        finally:
            taskbase.os.sched_setaffinity(0, before)
        assert [p.call("result = me.precv(dest, 1, timeout=5).data.decode()", dest=me.tid)
                for _ in range(2)] == ["x", "y"]


def test_a_scribbled_wake_word_is_named_at_join(daemon):
    with shmd.join() as me:
        me._i[layout.H_WAKE_I] = 7
        try:
            r = daemon.run([sys.executable, "-c", "import shmd; shmd.join()"])
        finally:
            me._i[layout.H_WAKE_I] = 0
    assert r.returncode != 0 and "wake-up kind 7 in the header" in r.stderr, r.stderr


def test_the_choice_follows_the_measurement(monkeypatch):
    monkeypatch.delenv(wake.ENV, raising=False)
    m = {"load": 0.0, "wake_us": {"sem": [9.0, 8.0, 9.5], "futex": [4.0, 7.9, 3.0]}}
    assert calibrate.wake_choice(m) == (("futex", "measured: faster in every trial")
                                        if "futex" in KINDS else
                                        ("sem", "measured: nothing faster in every trial, the semaphore"))
    # faster in two trials of three: within the noise, the semaphore stays
    assert calibrate.wake_choice({**m, "wake_us": {"sem": [9.0, 8.0, 9.5], "futex": [4.0, 8.1, 3.0]}}) \
        == ("sem", "measured: nothing faster in every trial, the semaphore")
    kind, why = calibrate.wake_choice({**m, "load": 99.0})  # a busy host's: not trusted
    assert kind == "sem" and "busy host (load average 99.00)" in why
    assert calibrate.wake_choice({**m, "wake_us": {}}) == ("sem", "not measured: the semaphore")
    monkeypatch.setenv(wake.ENV, "sem")
    assert calibrate.wake_choice(m) == ("sem", "forced by PVM_SHMD_WAKE=sem")


def test_the_daemon_measures_each_kind(daemon):
    w = daemon.stat()["paths"]["wake"]
    assert set(w["one_way_us"]) == set(KINDS) and all(v > 0 for v in w["one_way_us"].values())
    assert all(len(v) == wake.TRIALS for v in w["trials_us"].values())


@pytest.fixture
def sem_kind(monkeypatch, pvm_env):
    """The daemon's tasks sleep on their wake semaphores (a count: what can be left over)."""
    monkeypatch.setenv(wake.ENV, "sem")


def wake_sem(me, slot: int):
    t = layout.slot(me._buf, slot)
    return ipc.open_sem(t["wake_key"], t["wake_id"])


def test_a_sleep_its_message_beat_takes_its_wake_up_off(sem_kind, daemon, peers):
    # A sender saw our waiting word and woke us, but we found its message before we
    # slept: the wake-up, left on the semaphore, would end our next sleep at once.
    p = peers()
    with shmd.join(spin=False) as me:
        p.call("me.psend(dest, 1, b'x')", dest=me.tid)
        for _ in range(500):  # (queued once the call returns; bounded all the same)
            if me._q[me._T] != me._q[me._H]:
                break
            time.sleep(0.01)
        sem = wake_sem(me, me._slot)
        sem.release()  # the sender's wake-up of the sleep we are about to begin
        me._sleep(time.monotonic() + 5)  # returns at once: the message is there
        assert sem.value == 0
        assert me.precv(p.tid, 1, timeout=5).data == b"x"


def test_a_spin_off_ping_pong_leaves_no_wake_ups_behind(sem_kind, daemon, peers):
    # Left-over wake-ups piled up (1652 after 3000 round trips, in about three runs
    # of four): every sleep then ended at once and the receiver, spin off, polled.
    p = peers()
    with shmd.join(spin=False) as me:
        p.call("me._spin_auto, me._spin_budget = False, 0.0")
        p.start("for k in range(rounds):\n"
                "    me.psend(dest, 6, me.precv(dest, 5, timeout=5).data)", dest=me.tid,
                rounds=3000)
        for _ in range(3000):
            me.psend(p.tid, 5, b"12345678")
            assert me.precv(p.tid, 6, timeout=5).data == b"12345678"
        p.result(20)
        left = [wake_sem(me, me._slot).value, wake_sem(me, me._peer(p.tid).slot).value]
    assert max(left) <= 2, left


@pytest.mark.parametrize("path", ["python", "compiled"])
def test_a_wake_semaphore_at_its_maximum_loses_nothing(sem_kind, daemon, peers, path):
    # A receiver's semaphore at SEMVMX already holds a wake-up: psend must not fail.
    if path == "compiled" and fastpath.fast is None:
        pytest.skip("shmd._fast is not built here")
    p = peers()
    with shmd.join(spin=False) as me:
        for n in (8, 100_000):  # inline, and in pages
            me.psend(p.tid, 1, b"-")  # (our Peer for it)
            peer = me._peer(p.tid)
            if path == "python":
                peer.fx = None
            sem = wake_sem(me, peer.slot)
            sem.value = sysv_ipc.SEMAPHORE_VALUE_MAX
            me._i[peer.waiting_i] = 77  # as if asleep: we wake it
            try:
                me.psend(p.tid, 2, bytes(n))
            finally:
                me._i[peer.waiting_i] = 0
                sem.value = 0
            assert p.call("result = [len(me.precv(dest, t, timeout=5).data) for t in (1, 2)]",
                          dest=me.tid) == [1, n]


@pytest.mark.parametrize("path", ["compiled", "python"])
def test_an_inbox_lock_whose_holder_was_killed_is_taken_over(daemon, peers, path, monkeypatch):
    """A task killed -9 holding another's inbox lock (a robust mutex: mutex.py) leaves
    it to the next taker, as SEM_UNDO did the semaphore: sends time out while it is
    held, and post once its holder is dead, on either path."""
    if path == "compiled" and fastpath.fast is None:
        pytest.skip("shmd._fast is not built here")
    if path == "python":
        monkeypatch.setattr(fastpath, "fast", None)
    holder = peers()
    with shmd.join() as me:
        assert holder.call("from shmd import layout, mutex\n"
                           "lock = mutex.Mutex(me._base0 + layout.slot_off(slot) + layout.T_LOCK_OFF)\n"
                           "result = lock.acquire(1)", slot=me._slot) is True
        t = time.monotonic()
        with pytest.raises(PvmTimeout, match="stayed locked"):
            me.psend(me.tid, 1, b"held", timeout=0.1)
        assert time.monotonic() - t < 2
        holder.kill()
        holder.wait()
        for k in range(3):  # (the first takes it over; the others find it free again)
            me.psend(me.tid, 2, b"after %d" % k, timeout=5)
        assert [me.precv(me.tid, 2, timeout=5).data for _ in range(3)] == [
            b"after 0", b"after 1", b"after 2"]
        assert me.probe() is None  # the timed-out send posted nothing


JOIN_GS = ("from shmd.task import Task\n"
           "t = Task(name='gs', spin=False, role='gs')\n"
           "result = [t.tid, t._slot]")
COUNT_SLEEPS = COUNTING + "t._waiter = w = Counting(t._waiter)\n"


@pytest.mark.parametrize("path", ["compiled", "python"])
def test_a_sender_wakes_a_task_that_joined_again_with_the_same_tid(kind, daemon, peers, path,
                                                                   monkeypatch):
    """pvmgs and pvm_netd join again with the tid kept for their role, here in the same
    slot. A sender that knew the first one must not post to the second on its old
    wake-up (gone with it: the receiver would sleep out its slice, not be woken): the
    slot's serial word tells the fast paths, which then leave it to _peer."""
    if path == "compiled" and fastpath.fast is None:
        pytest.skip("shmd._fast is not built here")
    if path == "python":
        monkeypatch.setattr(fastpath, "fast", None)
    p = peers(join=False)
    with shmd.join(spin=False) as me:
        tid, slot = p.call(JOIN_GS)
        for word in (b"first", b"again"):  # (known now to our fast paths)
            me.psend(tid, 1, word)
        assert p.call("result = [t.precv(timeout=5).data.decode() for _ in range(2)]") == [
            "first", "again"]
        p.call("t.leave()")
        assert p.call(JOIN_GS) == [tid, slot]  # the same tid in the same slot
        p.call(COUNT_SLEEPS)
        p.start("m = t.precv(timeout=5)\nresult = [m.data.decode(), w.ends]")
        time.sleep(0.05)  # (asleep by now)
        me.psend(tid, 1, b"later")
        data, ends = p.result(10)
    assert data == "later"
    assert ends and all(ends), ends  # every sleep woken, none out at its slice

"""shmd.ipc's timed semaphore waits, on real SysV semaphores. (The barrier, ipc.fence, is
tested by what it guards: test_task's test_sleeping_receivers_miss_no_wake_up.)"""
from __future__ import annotations

import json
import os
import threading
import time

import pytest
import sysv_ipc

from shmd import ipc, private, resources


@pytest.fixture
def sem():
    s = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, mode=0o600, initial_value=0)
    yield s
    try:
        s.remove()
    except sysv_ipc.ExistentialError:
        pass


@pytest.mark.parametrize("undo", [False, True])
def test_waiter_takes_a_posted_unit(sem, undo):
    w = ipc.Waiter(sem.id, undo=undo)
    sem.release()
    sem.release()
    assert w.down(1.0) and w.down(1.0)
    assert sem.value == 0


def test_waiter_times_out_and_can_wait_again(sem):
    w = ipc.Waiter(sem.id)
    for timeout in (0.05, 0.12):  # the timespec it reuses is set afresh each time
        t = time.monotonic()
        assert not w.down(timeout)
        took = time.monotonic() - t
        assert timeout * 0.9 <= took < timeout + 1.0
    threading.Timer(0.05, sem.release).start()
    assert w.down(5.0)


def test_waiter_raises_gone_when_the_semaphore_is_removed(sem):
    w = ipc.Waiter(sem.id)
    threading.Timer(0.05, sem.remove).start()
    with pytest.raises(ipc.Gone):
        w.down(5.0)



@pytest.mark.parametrize("hold", [0.005, 0.2])  # within the spin before sleeping, and past it
def test_lock_waits_for_its_holder_then_times_out(sem, hold):
    sem.release()  # a free lock
    lock, other = ipc.Lock(sem), ipc.Lock(sysv_ipc.Semaphore(sem.key))
    assert other.acquire(1.0)
    t = time.monotonic()  # before the timer starts: a busy machine may run it at once
    threading.Timer(hold, other.release).start()
    assert lock.acquire(5.0)
    assert time.monotonic() - t >= hold * 0.9
    t = time.monotonic()
    assert not other.acquire(0.1)  # held by us: it waits its timeout, then gives up
    assert 0.09 <= time.monotonic() - t < 1.0
    lock.release()
    assert other.acquire(1.0)
    other.release()


def test_two_threads_sleep_on_one_lock_each_with_its_own_timeout(sem, monkeypatch):
    """pvm_netd's two threads share its segment locks: two threads asleep on one lock at
    once each sleep through a Waiter of their own (a Waiter's timespec is rewritten by
    each down: shared, a thread could sleep for the other's timeout), and each wait
    ends at its own timeout."""
    sem.release()  # a free lock
    lock, holder = ipc.Lock(sem), ipc.Lock(sysv_ipc.Semaphore(sem.key))
    assert holder.acquire(1.0)
    used: dict[str, set[int]] = {"long": set(), "short": set()}
    down = ipc.Waiter.down

    def recording_down(self: ipc.Waiter, timeout: float) -> bool:
        used[threading.current_thread().name].add(id(self))
        return down(self, timeout)

    monkeypatch.setattr(ipc.Waiter, "down", recording_down)
    got: dict[str, tuple[bool, float]] = {}

    def wait(name: str, timeout: float) -> None:
        t = time.monotonic()
        ok = lock.acquire(timeout)
        got[name] = (ok, time.monotonic() - t)
        if ok:
            lock.release()

    long_wait = threading.Thread(target=wait, args=("long", 5.0), name="long")
    long_wait.start()
    time.sleep(0.2)  # the long one asleep first (past the lock's spin)
    short = threading.Thread(target=wait, args=("short", 0.05), name="short")
    short.start()
    short.join(5)
    assert got["short"][0] is False and got["short"][1] < 1.0, got
    holder.release()  # the long one gets the lock, within its own timeout
    long_wait.join(5)
    assert got["long"][0] is True, got
    assert used["long"] and used["short"] and not used["long"] & used["short"], used


def test_the_registry_is_a_line_per_change_and_reads_back_what_is_held(pvm_env):
    # Resources appends a line per object made or removed (a rename over the file cost
    # 1.3 ms each, four per task), rewriting it whole only when removed ones pile up;
    # leftovers() reads back exactly the objects still held, in either format.
    path = os.path.join(private.directory(), "test.ipc")
    res = resources.Resources(path)
    try:
        keep = res.semaphore(0)
        for _ in range(3 * resources.COMPACT_SLACK):  # made and removed: appended, compacted
            res.drop("sem", res.semaphore(1).id)
        with open(path) as f:
            lines = f.read().splitlines()
        assert len(lines) <= 2 * len(res.objects) + resources.COMPACT_SLACK + 1
        assert resources.leftovers(path, None) == {("sem", keep.id)}
        assert json.loads(lines[-1])[0] == "-"  # a removal, appended
        # a registry as daemons before wrote it: one JSON list of rows
        private.write_atomic(path, json.dumps([["sem", keep.id, keep.key]]).encode())
        assert resources.leftovers(path, None) == {("sem", keep.id)}
    finally:
        res.remove_all()
    assert not os.path.exists(path)

"""The receive fast path for a message in one run of pages (precv and precv_into take it
off the ring, copy it out and free the run without the general path), and its free put
off while the segment's lock is busy (``Pages._free_soon``). Real processes, a real
daemon: its page counts tell whether every run came back."""
from __future__ import annotations

import numpy as np
import pytest
from peers import payload

import shmd

SIZE = 64 << 10  # 16 pages: through the pages, below any direct path (forced: pages)


@pytest.fixture
def me(daemon, monkeypatch):
    monkeypatch.setenv("PVM_SHMD_PATH", "pages")
    with shmd.join(spin=False) as t:
        yield t


def all_free(daemon) -> bool:
    return all(s["free"] == s["pages"] for s in daemon.wait_idle(tasks=2)["segments"])


def test_paged_messages_fast_path_intact_in_order_and_matched(daemon, me, peers):
    p = peers()
    for k, tag in enumerate((1, 2, 1, 3)):
        p.call("me.psend(dest, tag, payload(k, size))", dest=me.tid, tag=tag, k=k, size=SIZE)
    m = me.precv(tag=2, timeout=10)  # not the first: the general path queues the first
    assert (m.src, m.tag, bytes(m.data)) == (p.tid, 2, payload(1, SIZE))
    buf = np.zeros(SIZE + 8, "u1")
    assert me.precv_into(buf, tag=1, timeout=10) == (p.tid, 1, SIZE)
    assert buf[:SIZE].tobytes() == payload(0, SIZE) and not buf[SIZE:].any()
    m = me.precv(p.tid, 1, timeout=10)
    assert bytes(m.data) == payload(2, SIZE)
    assert me.precv_into(buf, timeout=10) == (p.tid, 3, SIZE)  # nothing pending: fast path
    assert buf[:SIZE].tobytes() == payload(3, SIZE)
    small = np.zeros(SIZE - 1, "u1")  # too small: PvmOverflow, the message stays queued
    p.call("me.psend(dest, 4, payload(4, size))", dest=me.tid, size=SIZE)
    with pytest.raises(shmd.PvmError, match="does not fit"):
        me.precv_into(small, timeout=10)
    assert bytes(me.precv(timeout=10).data) == payload(4, SIZE)
    assert all_free(daemon)


def test_a_busy_segment_lock_puts_frees_off_and_they_come_back(daemon, me, peers):
    p, holder = peers(), peers()
    for k in range(3):
        p.call("me.psend(dest, 1, payload(k, size))", dest=me.tid, k=k, size=SIZE)
    holder.call("held = [lock.acquire(5.0) for lock in me._locks]; result = all(held)")
    buf = np.zeros(SIZE, "u1")
    for k in range(3):  # copied out; each free put off, the receive not held up
        assert me.precv_into(buf, timeout=10) == (p.tid, 1, SIZE)
        assert buf.tobytes() == payload(k, SIZE)
    assert len(me._deferred) == 3
    holder.call("for lock in me._locks: lock.release()")
    p.call("me.psend(dest, 1, payload(3, size))", dest=me.tid, size=SIZE)
    assert bytes(me.precv(timeout=10).data) == payload(3, SIZE)
    assert not me._deferred  # freed with this one, under one hold of the lock
    assert all_free(daemon)

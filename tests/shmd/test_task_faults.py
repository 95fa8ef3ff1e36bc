"""Faults the library must survive (issue #11, items 8-10), with real daemons and real
task processes:

* a same-user process scribbling on the shared structures (a task's ring counters, a
  descriptor, a page map): the task that reads the damage gets PvmError(PvmSysErr)
  naming it, at once, never an IndexError and never a hang;
* timeouts that hold within 10 % + 50 ms whatever the path: a send in pieces into
  full memory and a full inbox, a receive waiting for the rest of a message in pieces,
  a receive whose buffer a slow sender is filling by direct delivery;
* pvm_shmd TERMed under a sender blocked on a full inbox: PvmSysErr, as documented.

The scribbler is this test process: it attaches segment 0 as any process of the user
can (``control.attach_seg0``) and writes words; it puts them back before the daemon
is stopped. Every wait has a timeout.
"""
from __future__ import annotations

import contextlib
import os
import signal
import struct
import time

import pytest
from peers import crc, payload

from shmd import control, layout
from shmd.errors import PvmNoMem, PvmSysErr

PS = layout.pagesize()
RUN = """
t0 = time.monotonic()
try:
    {call}
    result = ["ok", time.monotonic() - t0, None, "", False]
except shmd.PvmError as e:
    result = [type(e).__name__, time.monotonic() - t0, e.code, str(e),
              isinstance(e, shmd.PvmTimeout)]
"""


def within(took: float, timeout: float) -> bool:
    """The issue's rule for every timeout: no later than 10 % + 50 ms past it."""
    return took <= timeout * 1.1 + 0.05


def run(peer, call: str, timeout: float = 20, **names) -> list:
    """[outcome, seconds taken, code, text, is a PvmTimeout] of *call* in *peer*
    (outcome "ok" or the exception's class name)."""
    return peer.call(RUN.format(call=call), timeout=timeout, **names)


@contextlib.contextmanager
def seg0(pvm_env):
    """Segment 0 as a scribbler sees it: (bytes, int32, uint64) views."""
    shm, buf = control.attach_seg0(pvm_env["vmid"])
    i32, q64 = buf.cast("i"), buf.cast("Q")
    try:
        yield buf, i32, q64
    finally:
        for v in (q64, i32, buf):
            v.release()
        shm.detach()


def slot_words(peer) -> tuple[int, int, int]:
    """(slot, head's uint64 index, tail's uint64 index) of *peer*'s inbox."""
    slot = peer.call("result = me._slot")
    base = layout.slot_off(slot)
    return slot, (base + layout.T["head"][0]) // 8, (base + layout.T["tail"][0]) // 8


def small_daemon(maxpages=64, maxsegs=2):
    return pytest.mark.parametrize("daemon", [(maxpages, maxsegs)], indirect=True)


# ---- item 8: damage is named where it is read ---------------------------------------
@pytest.mark.parametrize("head,tail,named", [
    (0, 1 << 62, "tail 4611686018427387904"),
    (10, 0, "head 10 past tail 0"),
])
def test_scribbled_ring_counters_are_named_in_receiver_and_sender(daemon, peers, pvm_env,
                                                                  head, tail, named):
    """A tail of 2**62 used to make the receiver walk 2**62 descriptors (a hang); a head
    past the tail made it wait for ever; senders waited for room that never came."""
    r, s = peers(), peers()
    _, H, T = slot_words(r)
    r.start(RUN.format(call="me.precv(timeout=5)"))
    time.sleep(0.3)  # asleep in its receive
    with seg0(pvm_env) as (_, _, q):
        q[H], q[T] = head, tail
        try:
            what, took, code, text, _ = r.result(timeout=10)
            assert (what, code) == ("PvmError", PvmSysErr) and named in text, text
            assert took < 1.0  # at its next look (a slice is 0.2 s), not at its timeout
            what, took, code, text, _ = run(s, "me.psend(dest, 1, b'x', timeout=2)", dest=r.tid)
            assert (what, code) == ("PvmError", PvmSysErr), text
            assert f"inbox of t{r.tid:x}" in text and f"tail {tail}" in text and took < 1.0
            # a paged message (its own path to the ring) is refused the same way
            what, _, code, text, _ = run(s, "me.psend(dest, 1, b'y' * 9000, timeout=2)",
                                      dest=r.tid)
            assert (what, code) == ("PvmError", PvmSysErr) and f"tail {tail}" in text, text
        finally:
            q[H] = q[T] = 0  # repaired: the peers leave and the daemon stops cleanly
    assert run(s, "me.psend(dest, 3, b'z', timeout=2)", dest=r.tid)[0] == "ok"
    assert r.call("m = me.precv(timeout=2); result = [m.tag, m.data.decode()]") == [3, "z"]
    assert daemon.wait_idle(tasks=2)["segments"][0]["free"] == daemon.maxpages


BAD_DESCRIPTORS = {
    # name: (nbytes, seg, page, npages, flags, total), and what the error must name
    "segment out of range": ((5000, 7, 0, 2, 1, 5000), "segment 7"),
    "page out of range": ((5000, 0, 300, 2, 1, 5000), "page 300"),
    "npages past the segment": ((40960, 0, 250, 10, 1, 40960), "10 pages"),
    "npages too few for nbytes": ((100000, 0, 0, 1, 1, 100000), "100000 bytes"),
    "nbytes past the total": ((5000, 0, 0, 2, 1, 10), "total 10"),
    "inline nbytes past the ring": ((10 ** 6, -1, 0, 0, 1, 10 ** 6), "1000000 bytes"),
    "inline nbytes past medium": ((8000, -1, 0, 0, 1, 8000), "8000 bytes"),
    "unknown flags": ((5000, 0, 0, 2, 0x41, 5000), "flags 0x41"),
}


@pytest.mark.parametrize("case", sorted(BAD_DESCRIPTORS))
@pytest.mark.parametrize("call", ["me.precv(timeout=3)", "me.probe()",
                                  "me.precv_view(timeout=3)"])
def test_a_bad_descriptor_is_named_not_indexed(daemon, peers, pvm_env, case, call):
    """A descriptor a scribbler appended to an inbox: before, an IndexError (segment 7),
    an empty or wrong message (page 300, a million inline bytes read from the slots
    after the ring), or pages past the segment."""
    fields, named = BAD_DESCRIPTORS[case]
    r = peers()
    slot, H, T = slot_words(r)
    with seg0(pvm_env) as (buf, _, q):
        tail = q[T]
        struct.pack_into(layout.DESC_FMT, buf, layout.desc_off(slot, tail), 0x40099, 1,
                         *fields)
        q[T] = tail + 1
        try:
            what, took, code, text, _ = run(r, call, timeout=10)
            assert (what, code) == ("PvmError", PvmSysErr), text
            assert "damaged" in text and named in text, text
            assert took < 1.0
        finally:
            q[H] = q[T]  # skip it: the task leaves cleanly
    assert daemon.wait_idle(tasks=1)["segments"][0]["free"] == daemon.maxpages


@pytest.mark.parametrize("header,named", [(10 ** 8, "run header 100000000 (of 256 pages)"),
                                          (0, "run header 0"),
                                          (-300, "run header -300")])
def test_a_damaged_page_map_is_named_in_the_sender(daemon, peers, pvm_env, header, named):
    """A run header past the last page made alloc write a footer far outside the map
    (IndexError, or someone else's memory); a zero-length run made psend wait for pages
    until its timeout (PvmNoMem) while every page was free."""
    s, r = peers(), peers()
    with seg0(pvm_env) as (_, m, _):
        maps = [layout.map_off(k) // 4 for k in range(daemon.maxsegs)]
        saved = [m[b] for b in maps]
        for b in maps:
            m[b] = header
        try:
            what, took, code, text, _ = run(s, "me.psend(dest, 1, b'p' * 20000, timeout=2)",
                                         dest=r.tid)
            assert (what, code) == ("Damaged", PvmSysErr), text  # pagemap.Damaged
            assert "page map damaged" in text and named in text, text
            assert took < 1.0
        finally:
            for b, v in zip(maps, saved):
                m[b] = v
    assert run(s, "me.psend(dest, 1, b'p' * 20000, timeout=2)", dest=r.tid)[0] == "ok"
    assert r.call("result = len(me.precv(timeout=2).data)") == 20000


# ---- item 9: timeouts hold whatever the path ----------------------------------------
@small_daemon(64, 2)
def test_a_send_in_pieces_into_full_memory_and_inbox_times_out_on_time(daemon, peers):
    """The review's case: the receiver's inbox nearly full, a 6 MiB message in pieces
    of one segment (256 KiB here), two pieces fill the memory and the inbox. psend(
    timeout=T) took T + 10 s (its F_ABORT waited for room) and the receiver's precv
    waited for the rest as long as the sender lived. Now both hold their timeouts, the
    receiver drops the abandoned message, the owed abort is dropped when it comes, and
    nothing else is lost."""
    s, r = peers(), peers()
    s.call("for k in range(n): me.psend(dest, 1, k.to_bytes(2, 'little'), timeout=5)",
           dest=r.tid, n=layout.RING - 2)
    big = 6 << 20
    what, took, code, text, timed_out = run(
        s, "me.psend(dest, 9, payload(9, big), timeout=1.0)", timeout=30, dest=r.tid, big=big)
    assert timed_out and code == PvmNoMem, text  # a PvmTimeout (MemoryFull), code PvmNoMem
    assert "Timed out" in text and within(took, 1.0), (took, text)
    # the receiver takes the two pieces, sees the sender gave up, drops them, and then
    # waits for another matching message only until its own timeout
    what, took, _, text, _ = run(r, "me.precv(source, 9, timeout=1.0)", timeout=30,
                              source=s.tid)
    assert what == "PvmTimeout" and within(took, 1.0), (took, text)
    got = r.call("result = [int.from_bytes(me.precv(source, 1, timeout=5).data, 'little') "
                 "for _ in range(n)]", source=s.tid, n=layout.RING - 2)
    assert got == list(range(layout.RING - 2))
    # the sender's next message: the abort it owed goes first, and is dropped
    assert run(s, "me.psend(dest, 2, b'after', timeout=5)", dest=r.tid)[0] == "ok"
    assert r.call("m = me.precv(timeout=5); result = [m.src, m.tag, m.data.decode(), "
                  "me.probe(), len(me._pending)]") == [s.tid, 2, "after", None, 0]
    assert all(x["free"] == x["pages"] for x in daemon.wait_idle(tasks=2)["segments"])


@small_daemon(64, 2)
def test_a_receive_waiting_for_the_rest_of_a_message_times_out_and_keeps_it(daemon, peers):
    """The sender of a 6 MiB message in pieces is stopped (SIGSTOP) while it waits for
    pages: the receiver's precv(timeout=1) used to wait as long as the sender lived.
    It now times out on time, keeps the pieces it has, and the next receive, once the
    sender goes on, gets the whole message."""
    s, r = peers(), peers()
    big = 6 << 20
    s.start(RUN.format(call="me.psend(dest, 9, payload(9, big), timeout=60)"), dest=r.tid,
            big=big)
    time.sleep(0.5)  # two pieces are in the inbox, the third waits for pages
    assert not s.ready()
    os.kill(s.pid, signal.SIGSTOP)
    try:
        what, took, _, text, _ = run(r, "me.precv(source, 9, timeout=1.0)", timeout=30,
                                  source=s.tid)
        assert what == "PvmTimeout" and within(took, 1.0), (took, text)
        assert r.call("result = me.probe()") == [s.tid, 9, big]  # kept, in its place
    finally:
        os.kill(s.pid, signal.SIGCONT)
    assert r.call("m = me.precv(source, 9, timeout=30); result = [len(m.data), crc(m.data)]",
                  timeout=40, source=s.tid) == [big, crc(payload(9, big))]
    assert s.result(timeout=30)[0] == "ok"
    assert all(x["free"] == x["pages"] for x in daemon.wait_idle(tasks=2)["segments"])


@small_daemon(64, 2)
@pytest.mark.parametrize("how", ["killed", "gave up"])
def test_a_sender_of_pieces_that_stops_midway_costs_only_that_message(daemon, peers, how):
    """The sender of a 6 MiB message in pieces stops after two (memory full): killed,
    or giving up at its timeout while the receiver's inbox is full (its F_ABORT owed,
    and it sends nothing more). A receiver waiting with no timeout for a message with
    that tag used to wait for the rest as long as the sender lived; it now drops the
    two pieces (the sender's slot is gone, or no longer says it sends to us) and takes
    the next such message, from another task."""
    s, r, other = peers(), peers(), peers()
    if how == "killed":
        s.start("me.psend(dest, 9, payload(9, 6 << 20), timeout=60)", dest=r.tid)
        time.sleep(0.5)
        s.kill()
        s.wait(5)
    else:
        s.call("for k in range(n): me.psend(dest, 1, b'x', timeout=5)", dest=r.tid,
               n=layout.RING - 2)
        what, took, _, text, timed_out = run(
            s, "me.psend(dest, 9, payload(9, 6 << 20), timeout=0.5)", timeout=30, dest=r.tid)
        assert timed_out and within(took, 0.5), (took, text)
    r.start(RUN.format(call="m = me.precv(tag=9)\n    assert m.data == b'next', m"))
    time.sleep(0.5)
    other.call("me.psend(dest, 9, b'next', timeout=5)", dest=r.tid)
    what, _, _, text, _ = r.result(timeout=15)
    assert what == "ok", text
    if how == "gave up":
        assert r.call("result = sum(1 for _ in range(n) if me.precv(tag=1, timeout=5))",
                      n=layout.RING - 2) == layout.RING - 2
        assert run(s, "me.psend(dest, 2, b'later', timeout=5)", dest=r.tid)[0] == "ok"
        assert r.call("m = me.precv(timeout=5); result = [m.tag, m.data.decode(), "
                      "me.probe(), len(me._pending)]") == [2, "later", None, 0]
    assert all(x["free"] == x["pages"] for x in daemon.wait_idle(tasks=3 if how != "killed"
                                                                   else 2)["segments"])


@small_daemon(64, 2)
def test_pieces_are_matched_to_their_own_message(daemon, peers):
    """Two messages in pieces from one sender, the receiver taking the second first:
    the second's pieces must not be taken from the first's, which wait earlier in the
    queue (they were: the second came back with the first's tail in it, as
    test_task_direct's posted buffer test saw when it went through the pages)."""
    s, r = peers(), peers()
    size = 300 << 10  # two pieces of a 256 KiB segment each; both do not fit at once
    s.start(RUN.format(call="me.psend(dest, 6, payload(6, size), timeout=20)\n    "
                            "me.psend(dest, 5, payload(5, size), timeout=20)"),
            dest=r.tid, size=size)
    got = r.call("a = me.precv(tag=5, timeout=20); b = me.precv(tag=6, timeout=20); "
                 "result = [crc(a.data), crc(b.data), me.probe()]", timeout=30)
    assert got == [crc(payload(5, size)), crc(payload(6, size)), None]
    assert s.result(timeout=20)[0] == "ok"
    assert all(x["free"] == x["pages"] for x in daemon.wait_idle(tasks=2)["segments"])


@pytest.fixture
def direct_path(monkeypatch, pvm_env):
    """Direct delivery forced on (from 64 KiB), whatever this machine measured: where
    it measured slower than the pages (a 2-vCPU AMD EPYC guest), the buffer was never
    posted and the message came through the pages in 0.4 s."""
    monkeypatch.setenv("PVM_SHMD_PATH", "direct")


def test_a_receiver_withdraws_from_a_slow_direct_copy_on_time(direct_path, daemon, peers):
    """precv_into(timeout=3) of a 32 MiB buffer claimed by a sender whose copy crawls
    (220 ms a chunk, 16 chunks; the receiver takes none): the receiver used to wait for
    the whole copy. It withdraws at its timeout, the sender stops at its next chunk
    and sends the message through the pages, where the next receive finds it."""
    size = 32 << 20
    s, r = peers(), peers()
    r.call("""
from shmd import direct
real = direct.receive
def no_help(q, r, pid, src, dst, n, chunk, alive):
    q[r + direct.BB] = q[r + direct.DB] = 0  # takes no chunk: the sender copies all
    return real(q, r, pid, src, dst, 0, chunk, alive)
direct.receive = no_help
buf = bytearray(size)
""", size=size)
    if not r.call("result = me._direct"):
        pytest.skip("cross-memory attach is not available here")
    s.call("""
import time
from shmd import direct
real = direct._copy
def slow(fn, pid, local, remote, n):
    if fn is direct._libc.process_vm_writev:
        time.sleep(0.22)
    return real(fn, pid, local, remote, n)
direct._copy = slow
""")
    r.start(RUN.format(call="me.precv_into(buf, timeout=3.0)"))
    time.sleep(0.2)  # posted
    s.start(RUN.format(call="me.psend(dest, 3, payload(3, size), timeout=30)"), dest=r.tid,
            size=size)
    what, took, _, text, _ = r.result(timeout=30)
    assert what == "PvmTimeout" and within(took, 3.0), (took, text)
    got = r.call("src, tag, n = me.precv_into(buf, timeout=30); "
                 "result = [src, tag, n, crc(buf)]", timeout=40)
    assert got == [s.tid, 3, size, crc(payload(3, size))]
    assert s.result(timeout=30)[0] == "ok"


def test_a_segment_lock_held_by_a_stopped_process_does_not_hold_a_receive(daemon, peers,
                                                                          pvm_env):
    """Every page map's semaphore taken by another process (as one stopped while it
    held them): a receive of a paged message that is already there used to wait 5 s
    for the lock to free the pages, then raise. It returns the message on time; the
    free is done once the lock is back."""
    from shmd import ipc

    s, r = peers(), peers()
    assert run(s, "me.psend(dest, 1, payload(1, 20000), timeout=2)", dest=r.tid)[0] == "ok"
    with seg0(pvm_env) as (buf, _, _):
        locks = [ipc.Lock(ipc.open_sem(e["semkey"], e["semid"]))
                 for e in (layout.segent(buf, k) for k in range(daemon.maxsegs))]
    held = [lock for lock in locks if lock.acquire(2.0)]
    try:
        assert len(held) == len(locks)
        what, took, _, text, _ = run(r, "m = me.precv(timeout=0.5)\n    "
                                        "assert m.data == payload(1, 20000)")
        assert what == "ok" and within(took, 0.5), (took, text)
    finally:
        for lock in held:
            lock.release()
    assert run(r, "me.precv(timeout=0.3)")[0] == "PvmTimeout"  # its sleep does the free
    assert all(x["free"] == x["pages"] for x in daemon.wait_idle(tasks=2)["segments"])


# ---- item 10: TERM under a sender blocked on a full inbox ---------------------------
def test_term_under_a_sender_blocked_on_a_full_inbox_is_a_sys_err(daemon, peers):
    """docs/library.md: daemon stopped (TERM) under a blocked psend -> PvmSysErr within
    about 0.2 s. The sender saw its receiver's semaphore vanish and said PvmNoTask."""
    s, r = peers(), peers()
    s.start(RUN.format(call="for k in range(n): me.psend(dest, 1, b'x')"), dest=r.tid,
            n=layout.RING + 1)
    time.sleep(0.5)
    assert not s.ready(), "the sender did not block on the full inbox"
    daemon.stop()  # TERM: every IPC object goes
    t0 = time.monotonic()
    what, _, code, text, _ = s.result(timeout=10)
    assert (what, code) == ("PvmError", PvmSysErr), text
    assert time.monotonic() - t0 < 3
    what, _, code, text, _ = run(r, "me.precv(tag=5, timeout=5)")  # the receiver too
    assert (what, code) == ("PvmError", PvmSysErr), text

"""The tasks' message counters (stat, the console's view) and tracing (trace.py), with a
real pvm_shmd and real tasks: what pvm_shmd_stat reports after known traffic, and a
traced ping-pong's events, flows and Chrome JSON."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from daemons import STAT
from peers import Peer, payload

import shmd
from shmd import fastpath, layout, trace
from shmd.errors import PvmTimeout

IDLE = "try:\n    me.precv(timeout=0.02)\nexcept Exception:\n    pass\n"  # a receive finding nothing


def idle(task: shmd.Task) -> None:
    """An empty receive: the task is idle, so it stores its counters and looks at the trace word."""
    with pytest.raises(PvmTimeout):
        task.precv(timeout=0.02)


def row(st: dict, tid: int) -> dict:
    return next(t for t in st["tasks"] if t["tid"] == tid)


def test_counters_after_known_traffic_then_the_hosts_totals(daemon):
    peer = Peer(env=daemon.env())
    try:
        with shmd.join() as me:
            peer.call("me.psend(dest, 1, b'x' * 8); me.psend(dest, 2, b'y' * 1000);"
                      "me.psend(dest, 3, payload(3, 100000))", dest=me.tid)
            assert me.precv().tag == 1
            assert me.precv_into(bytearray(1000))[2] == 1000
            v = me.precv_view()
            assert v.data.nbytes == 100000
            v.release()
            for data in (b"a" * 8, b"b" * 8, payload(9, 70000)):
                me.psend(peer.tid, 5, data)
            peer.call("for _ in range(3): me.precv()\n" + IDLE)
            idle(me)
            st = daemon.stat()
            mine, theirs = row(st, me.tid), row(st, peer.tid)
            assert [mine[k] for k in ("sent", "sent_bytes", "recvd", "recvd_bytes")] == [
                3, 70016, 3, 101008]
            assert [theirs[k] for k in ("sent", "sent_bytes", "recvd", "recvd_bytes")] == [
                3, 101008, 3, 70016]
            assert mine["state"] == theirs["state"] == "running"
            assert st["counters"]["sent"] == st["counters"]["recvd"] == 6
            # the peer waits in precv (asleep): its state says so
            peer.start("me.precv(timeout=5)")
            daemon_state = ""
            for _ in range(200):
                daemon_state = row(daemon.stat(), peer.tid)["state"]
                if daemon_state == "precv":
                    break
            assert daemon_state == "precv"
            me.psend(peer.tid, 6, b"z")
            peer.result()
        st = daemon.stat()  # we left: our counters are the host's, our row an exited one
        assert st["counters"]["sent"] == 7 and st["counters"]["sent_bytes"] == 171025
        gone = [t for t in st["exited_tasks"] if t["tid"] == me.tid]
        assert gone and gone[0]["state"] == "exited" and gone[0]["sent"] == 4
    finally:
        peer.close()


def dump(daemon, op: str = "dump") -> dict:
    r = daemon.run([STAT, "--trace", op])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("path", ["compiled", "python"])  # the tracing wrappers (fastpath.py)
def test_traced_ping_pong_has_exactly_its_messages_and_valid_chrome_json(daemon, tmp_path, path,
                                                                          monkeypatch):
    if path == "compiled" and fastpath.fast is None:
        pytest.skip("shmd._fast is not built here")
    if path == "python":
        monkeypatch.setattr(fastpath, "fast", None)
    sizes = [8, 1, 88, 1000, 5000, 100000, 0, 8] * 3  # (tags and lengths seen again: fast path)
    peer = Peer(env={**daemon.env(), trace.ENV: str(trace.ALL),  # spawn -@: traced from its join
                     fastpath.ENV: "1" if path == "python" else "0"})
    try:
        with shmd.join(name="pinger") as me:
            assert dump(daemon, "on")["trace"] == trace.ALL
            idle(me)  # we see the word now: traced from here
            peer.start("for _ in range(n):\n    m = me.precv()\n    me.psend(m.src, m.tag, m.data)\n",
                       n=len(sizes))
            for k, n in enumerate(sizes):
                data = payload(k, n)
                me.psend(peer.tid, 100 + k % 8, data)
                assert me.precv(peer.tid, 100 + k % 8).data == data
            peer.result()
            peer.call(IDLE)  # idle: its events kept so far go to its ring (trace.py)
            assert dump(daemon, "off")["trace"] == 0
            idle(me)
            me.psend(peer.tid, 1, b"untraced")  # after trace off: not recorded
            peer.call("me.precv()")
        d = dump(daemon, "take")
        assert d["lost"] == 0
        events, names = trace.events_of([("h", d, 0.0)])
        assert names[me.tid] == "pinger"
        sent = [(e.dst, e.tag, e.length) for e in events if e.kind == trace.PSEND and e.owner == me.tid]
        assert sent == [(peer.tid, 100 + k % 8, n) for k, n in enumerate(sizes)]
        back = [(e.dst, e.tag, e.length) for e in events
                if e.kind == trace.PSEND and e.owner == peer.tid]
        assert back == [(me.tid, 100 + k % 8, n) for k, n in enumerate(sizes)]
        assert [e.kind for e in events if e.owner == peer.tid][0] == trace.SPAWN
        # every receive of the peer's a start and an end (the compiled take's start
        # kept when the general path finishes it), then its idle one: a start alone
        recvs = [e for e in events if e.owner == peer.tid and e.kind in (trace.PRECV_START, trace.PRECV_END)]
        assert [e.kind for e in recvs] == [trace.PRECV_START, trace.PRECV_END] * len(sizes) + [
            trace.PRECV_START]
        assert [e.length for e in recvs[1::2]] == sizes
        flows, unmatched = trace.flows(events)
        assert len(flows) == 2 * len(sizes) and not unmatched, (unmatched, [e for e in events if e.kind != trace.PSEND])
        assert all(f.send.t <= f.recv.t and f.send.length == f.recv.length for f in flows)
        # the Chrome JSON, written and read back: every flow starts before it ends
        path = tmp_path / "t.json"
        path.write_text(json.dumps(trace.chrome(events, names, {"h": 0.0})))
        doc = json.loads(path.read_text())
        evs = doc["traceEvents"]
        assert all(e["ph"] in "XMisfC" and "pid" in e and "tid" in e for e in evs)
        use = [e["args"] for e in evs if e["ph"] == "C"]  # the utilization counters
        assert use and all(0 <= sum(a.values()) <= 2 for a in use) and any(a["waiting"] for a in use)
        starts = {e["id"]: e["ts"] for e in evs if e["ph"] == "s"}
        ends = {e["id"]: e["ts"] for e in evs if e["ph"] == "f"}
        assert starts.keys() == ends.keys() and len(starts) == 2 * len(sizes)
        assert all(starts[k] <= ends[k] for k in starts)
        assert all(e["dur"] >= 0 for e in evs if e["ph"] == "X")
        tracks = {e["tid"] for e in evs if e["ph"] == "M" and e["name"] == "thread_name"}
        assert tracks == {me.tid, peer.tid}
        # and as text: the time scale, a line per task, a gap line between them where
        # the messages cross (going down from us to the peer, up on the way back)
        t0 = events[0].t  # the ping-pong's part, across 200 columns
        first = next(e.t for e in events if e.kind == trace.PSEND) - t0
        lines = trace.diagram(events, names, 200, first, events[-1].t - t0)
        assert len(lines) == 4 and all(len(ln) == len(lines[0]) for ln in lines)
        first, second = sorted([me.tid, peer.tid])
        assert lines[1].startswith(f"t{first:x} ") and lines[3].startswith(f"t{second:x} ")
        assert "s" in lines[1] and "r" in lines[1] and "s" in lines[3] and "r" in lines[3]
        gap = lines[2][lines[2].index("|") + 1:-1]
        assert gap.strip() and set(gap) <= set(" \\/|"), lines
        assert dump(daemon)["events"] == []  # taken
    finally:
        peer.close()


def test_bad_trace_request_is_refused_and_the_daemon_goes_on(daemon):
    from shmd import control
    from shmd.errors import PvmError

    for bad in (16, -1, "1", None):
        with pytest.raises(PvmError, match="a mask from 0 to 15"):
            control.request("trace", daemon.vmid, set=bad)
    assert dump(daemon, "off")["trace"] == 0
    r = daemon.run([STAT, "--trace", "16"])
    assert r.returncode == 2 and "on, off, a mask from 0 to 15, dump or take" in r.stderr


def test_diagram_draws_each_message_from_its_send_to_its_receive():
    E = trace.Event
    events = [E("h", 1, 0.0, trace.SPAWN, 1, 0, 0, 0), E("h", 2, 0.0, trace.SPAWN, 2, 0, 0, 0),
              E("h", 3, 0.0, trace.SPAWN, 3, 0, 0, 0), E("h", 3, 0.05, trace.PRECV_START, -1, 3, -1, 0),
              E("h", 1, 0.1, trace.PSEND, 1, 3, 5, 8), E("h", 2, 0.2, trace.PRECV_START, -1, 2, -1, 0),
              E("h", 3, 0.5, trace.PRECV_END, 1, 3, 5, 8), E("h", 3, 0.6, trace.PSEND, 3, 2, 5, 8),
              E("h", 2, 0.9, trace.PRECV_END, 3, 2, 5, 8), E("h", 1, 1.0, trace.EXIT, 1, 0, 0, 0)]
    assert trace.diagram(events, {1: "a", 2: "b", 3: "c"}, width=50) == [
        "     |0.000 ms                               1000.000 ms|",
        "t1 a |S   s                                            X|",
        "     |          \\                                       |",
        "t2 b |S        ------\\----------------------------r     |",
        "     |                    \\                /            |",
        "t3 c |S ----------------------r    s                    |",
    ]
    assert trace.diagram([], {}) == ["(no trace events)"]


def test_utilization_of_a_known_trace():
    """Two tasks (times in ms): A spawns at 0, sends at 1, waits from 2 for B's message
    (sent at 4, taken at 5), exits at 6; B spawns at 0, waits from 0.5 for A's message
    (sent at 1, taken at 1.5), sends at 4, exits at 8."""
    from shmd import utilization as use

    A, B, ms = 0x40001, 0x40002, 1e-3
    raw = [(A, 0, trace.SPAWN, A, 0, 0, 0), (B, 0, trace.SPAWN, B, 0, 0, 0),
           (B, 0.5, trace.PRECV_START, -1, B, -1, 0), (A, 1, trace.PSEND, A, B, 7, 8),
           (B, 1.5, trace.PRECV_END, A, B, 7, 8), (A, 2, trace.PRECV_START, B, A, 9, 0),
           (B, 4, trace.PSEND, B, A, 9, 100), (A, 5, trace.PRECV_END, B, A, 9, 100),
           (A, 6, trace.EXIT, A, 0, 0, 0), (B, 8, trace.EXIT, B, 0, 0, 0)]
    events = [trace.Event("h", o, t * ms, *rest) for o, t, *rest in raw]
    got = [(round(t / ms, 3), c, o, w) for t, c, o, w in use.steps(events)]
    assert got == [(0, 2, 0, 0), (0.5, 1, 0, 1), (1, 1, 1, 0), (1.5, 2, 0, 0), (2, 1, 0, 1),
                   (4, 1, 1, 0), (5, 2, 0, 0), (6, 1, 0, 0), (8, 0, 0, 0)]
    # 8 columns of 1 ms: the mean counts in each
    cols = use.averages(use.steps(events), 0, 8 * ms, 8)
    assert [tuple(round(x, 3) for x in col) for col in cols] == [
        (1.5, 0, 0.5), (1.5, 0.5, 0), (1, 0, 1), (1, 0, 1), (1, 1, 0), (2, 0, 0), (1, 0, 0), (1, 0, 0)]
    assert use.rows(events, 8, 0, 8 * ms, 2) == ["##..=#  ", "########"]  # (1.5 rounds to 2)
    doc = trace.chrome(events, {A: "a", B: "b"}, {"h": 0.0})
    c = [(e["ts"], e["args"]) for e in doc["traceEvents"] if e["ph"] == "C"]
    assert c[3] == (1500.0, {"computing": 2, "overhead": 0, "waiting": 0}) and len(c) == 9
    vm = next(e for e in doc["traceEvents"] if e["ph"] == "M" and e["args"]["name"].startswith("virtual machine"))
    assert {e["pid"] for e in doc["traceEvents"] if e["ph"] == "C"} == {vm["pid"]} != {1}


def test_a_full_ring_keeps_the_events_in_order_until_drained():
    """flush writes no more than the ring has room for (pvm_shmd behind), keeps the rest
    in order, and writes them once it has drained: every event once, in order."""
    from shmd import layout

    class Slot:  # a task's slot 0 and its trace ring, in a buffer of our own
        _slot = 0
        tid = 0x40001
        vmid = "none"  # (no daemon: the compiled ring is never full here)
        _buf = bytearray(layout.trace_ring_off(1))
        _q = memoryview(_buf).cast("q")

    t = Slot()
    note, flush, _ = trace._recorder(t)
    c, n = layout.trace_ring_off(0) // 8, layout.TRACE_EVENTS
    col = trace.Collector()
    for k in range(n + 300):  # more than the ring holds, nothing drained: 300 wait
        note(trace.PSEND, 1, 2, k, 8)
    flush()
    assert 0 < t._q[c] <= n  # written up to the ring's room, not over undrained events
    col.drain(memoryview(t._buf), t._q, 0, 0x40001, "t")  # pvm_shmd drains: room again
    flush(True)
    col.drain(memoryview(t._buf), t._q, 0, 0x40001, "t")
    assert [e[5] for e in col.events] == list(range(n + 300)) and col.lost == 0


def test_a_traced_task_that_ends_without_leave_has_its_events_and_exit(daemon):
    """No leave (the daemon reaps it): what the task kept is written at its exit."""
    import subprocess
    import sys

    code = ("import shmd\nme = shmd.join(name='quitter')\nme.psend(me.tid, 3, b'abc')\n"
            "me.precv(me.tid, 3)\nprint(me.tid)\n")
    r = subprocess.run([sys.executable, "-c", code], env={**daemon.env(), trace.ENV: str(trace.ALL)},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    tid = int(r.stdout)

    def kinds() -> list[int]:
        return [e[2] for e in dump(daemon, "take")["events"] if e[0] == tid]
    got: list[int] = []
    for _ in range(100):  # (the daemon reaps the slot, and drains its ring, within a tick)
        got += kinds()
        if trace.EXIT in got:
            break
        time.sleep(0.05)
    assert got == [trace.SPAWN, trace.PSEND, trace.PRECV_START, trace.PRECV_END, trace.EXIT], got


@pytest.mark.parametrize("path", ["compiled", "python"])
def test_a_traced_receive_that_times_out_records_its_start_alone(daemon, path, monkeypatch):
    """The receive's start is recorded when its timeout ends it; the next receive's start
    is its own (the compiled take keeps a start open for the general path: not past it)."""
    if path == "compiled" and fastpath.fast is None:
        pytest.skip("shmd._fast is not built here")
    if path == "python":
        monkeypatch.setattr(fastpath, "fast", None)
    dump(daemon, "on")
    try:
        with shmd.join(name="alone") as me:
            t0 = time.monotonic()
            with pytest.raises(PvmTimeout):
                me.precv(me.tid, 7, timeout=0.05)
            me.psend(me.tid, 7, b"x")
            assert me.precv(me.tid, 7).data == b"x"
            big = payload(1, 200000)  # (the general paths: pages, and precv_into's copy)
            me.psend(me.tid, 8, big)
            assert me.precv_into(bytearray(len(big)), me.tid, 8) == (me.tid, 8, len(big))
            t1 = time.monotonic()
    finally:
        dump(daemon, "off")
    events = [e for e in trace.events_of([("h", dump(daemon, "take"), 0.0)])[0]
              if e.kind in (trace.PSEND, trace.PRECV_START, trace.PRECV_END)]
    t = me.tid
    assert [(e.kind, e.src, e.dst, e.tag, e.length) for e in events] == [
        (trace.PRECV_START, t, t, 7, 0), (trace.PSEND, t, t, 7, 1), (trace.PRECV_START, t, t, 7, 0),
        (trace.PRECV_END, t, t, 7, 1), (trace.PSEND, t, t, 8, len(big)),
        (trace.PRECV_START, t, t, 8, 0), (trace.PRECV_END, t, t, 8, len(big))]
    assert events[1].t - events[0].t >= 0.05  # (after the timeout: not the first start)
    assert t0 <= events[0].t and events[-1].t <= t1
    assert [e.t for e in events] == sorted(e.t for e in events)


@pytest.mark.parametrize("tsc", [True, False], ids=["tsc", "clock"])
def test_compiled_trace_stamps_become_monotonic_times(tsc):
    """TraceRing's raw stamps (TSC readings where the kernel keeps time by the TSC, else
    the clock) are written as time.monotonic() seconds, each within its neighbours."""
    fast = fastpath.fast
    if fast is None:
        pytest.skip("shmd._fast is not built here")
    if tsc and not fastpath.TSC:
        pytest.skip("the kernel does not keep time by the TSC here: stamps read the clock")
    n = 32
    buf = bytearray(64 + trace.EVENT.size * n)
    ring = fast.TraceRing(buf, ring=0, events=64, nevents=n, backlog=n, tid=9, tsc=tsc)
    marks = []
    for k in range(20):
        before = time.monotonic()
        s = ring.stamp()
        marks.append((before, time.monotonic()))
        ring.sent(s, 1, k, 8)
        time.sleep(0.001)
    assert ring.flush(True) == 0
    got = [trace.EVENT.unpack_from(buf, 64 + trace.EVENT.size * k) for k in range(20)]
    ring.close()
    assert [g[1:] for g in got] == [(trace.PSEND, 9, 1, k, 8) for k in range(20)]
    for (before, after), g in zip(marks, got):
        assert before - 2e-6 <= g[0] <= after + 2e-6, (before, g[0], after)


@pytest.mark.parametrize("path", ["compiled", "python"])
def test_every_event_kept_reaches_the_daemon_when_the_task_leaves(daemon, path, monkeypatch):
    """A task that leaves with more events kept than its ring holds (3000 messages to
    itself between two of pvm_shmd's drains) has pvm_shmd drain the ring as often as
    it takes: every event arrives, its exit too, none lost."""
    if path == "compiled" and fastpath.fast is None:
        pytest.skip("shmd._fast is not built here")
    if path == "python":
        monkeypatch.setattr(fastpath, "fast", None)
    dump(daemon, "on")
    n = 3000
    try:
        with shmd.join(name="many") as me:
            for _ in range(n):
                me.psend(me.tid, 1, b"12345678")
                me.precv(me.tid, 1)
    finally:
        dump(daemon, "off")
    d = dump(daemon, "take")
    kinds = [e.kind for e in trace.events_of([("h", d, 0.0)])[0]]
    assert d["lost"] == 0
    assert {k: kinds.count(k) for k in set(kinds)} == {
        trace.SPAWN: 1, trace.PSEND: n, trace.PRECV_START: n, trace.PRECV_END: n, trace.EXIT: 1}


def test_a_task_that_outruns_the_daemon_waits_for_it_rather_than_lose_events(daemon):
    """The compiled path keeps up to trace.BACKLOG events while its ring is full; past
    that it asks pvm_shmd to drain and waits (here: pvm_shmd stopped for 0.3 s while
    a task writes more events than it may keep), instead of writing over events not
    drained."""
    if fastpath.fast is None:
        pytest.skip("shmd._fast is not built here")
    dump(daemon, "on")
    n = (trace.BACKLOG + layout.TRACE_EVENTS) // 3 + 500  # events: 3 a message
    pid = daemon.pid
    cont = threading.Timer(0.3, os.kill, (pid, signal.SIGCONT))
    try:
        with shmd.join(name="fast") as me:
            t = time.monotonic()
            os.kill(pid, signal.SIGSTOP)
            cont.start()
            for _ in range(n):
                me.psend(me.tid, 1, b"12345678")
                me.precv(me.tid, 1)
            waited = time.monotonic() - t
    finally:
        cont.cancel()
        os.kill(pid, signal.SIGCONT)
        dump(daemon, "off")
    d = dump(daemon, "take")
    assert d["lost"] == 0
    assert len(d["events"]) == 3 * n + 2  # (and its spawn and exit)
    assert waited >= 0.25  # it waited for pvm_shmd

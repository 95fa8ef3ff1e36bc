"""Messages between hosts through pvm_netd, with real daemons and real network processes.

Two "hosts" on this machine: two pvm_shmd of two VM ids, started as host 1 and host 2,
each with its pvm_netd bound to 127.0.0.1 (the lab tests run the same across network
namespaces). The test process is a task of host 1; tasks of host 2 are child processes.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
import zmq
from conftest import BIN, need_root
from daemons import PVM_SHMD, SMALL, daemon_objects, shmd_vm, wait_for
from other_user import other_user  # noqa: F401  (a fixture)

import shmd
from shmd import handshake, ipc, netd, netsend, remote, spawner, tids, wire
from shmd.errors import PvmError, PvmHostFail, PvmOverflow

NETD = os.path.join(BIN, "pvm_netd")

# a task of host 2: reports its tid, then echoes every message back to its sender until
# tag 99; with argv[1] = a tid, first streams 200 numbered messages to it with tag 5
ECHO = r'''
import sys, shmd
with shmd.join(name="echo") as me:
    print(me.tid, flush=True)
    if len(sys.argv) > 1:
        for k in range(200):
            me.psend(int(sys.argv[1]), 5, k.to_bytes(4, "little") * 3)
    while True:
        m = me.precv(timeout=60)
        if m.tag == 99:
            break
        me.psend(m.src, m.tag, m.data)
'''


NAMES = {1: "alpha", 2: "beta", 3: "gamma"}  # the hosts' names, as the console would give them


def netd_line(host: int, keys, peers, trusted: bool = False, me: dict | None = None) -> str:
    """What pvm_netd reads on stdin (the console's hostlink.net_line)."""
    pub, sec = keys
    return json.dumps({"public": pub.decode(), "secret": sec.decode(), "peers": peers, "trusted": trusted,
                       "me": {"name": NAMES[host], "arch": "LINUX64", "speed": 1000 * host} if me is None else me})


def ready_fields(line: str) -> dict[str, str]:
    return dict(f.split("<") for f in line.strip().rstrip(">").split("> "))


def start_netd(vm, vmid: str, host: int, keys, peers, trusted: bool = False) -> tuple[int, int]:
    """pvm_netd for *vmid* as host *host* (named NAMES[host]): (port, pid)."""
    r = subprocess.run([NETD, f"-vmid={vmid}", f"-host={host}", "-bind=127.0.0.1"],
                       input=netd_line(host, keys, peers, trusted) + "\n",
                       capture_output=True, text=True, timeout=20, env=vm.env(vmid))
    assert r.returncode == 0, r.stderr
    w = ready_fields(r.stdout)
    return int(w["netd"]), int(w["pid"])


def adopt(vm, ddpro: str) -> None:
    """The daemon of ready line *ddpro*, started here without vm.start: stopped after the test."""
    pid = int(ready_fields(ddpro)["pid"])
    vm.daemons.append((pid, ipc.process_start(pid)))


def start_together(vm, vmid: str, host: int, keys, peers) -> tuple[int, int]:
    """pvm_shmd -net=127.0.0.1 for *vmid* as host *host*: its daemon and its pvm_netd
    (told only the name: arch, speed and dsig are the daemon's), as the console starts
    a host; pvm_netd's (port, pid)."""
    r = subprocess.run([PVM_SHMD, *SMALL, f"-vmid={vmid}", f"-host={host}", f"-name={NAMES[host]}",
                        "-net=127.0.0.1"], input=netd_line(host, keys, peers, me={"name": NAMES[host]}) + "\n",
                       capture_output=True, text=True, timeout=20, env=vm.env(vmid))
    vm.vmids.add(vmid)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    ddpro, netd = r.stdout.splitlines()
    adopt(vm, ddpro)
    assert ddpro.startswith("ddpro<") and netd.startswith("netd<"), r.stdout
    w = ready_fields(netd)
    return int(w["netd"]), int(w["pid"])


class Two:
    """Host 1 (VM id a, the test process joins it) and host 2 (VM id b) with their netds."""

    def __init__(self, vm, trusted: bool = False, small: bool = True, together: bool = False):
        self.vm = vm
        self.a, self.b = vm.vmid, vm.vmid + "b"
        self.keys = zmq.curve_keypair()
        vm.start("-host=1", vmid=self.a, small=small)
        self.port1, self.pid1 = start_netd(vm, self.a, 1, self.keys, [], trusted)
        if together:  # (host 2 as the console starts a host it adds: one program start)
            self.port2, self.pid2 = start_together(vm, self.b, 2, self.keys, [[1, "127.0.0.1", self.port1]])
        else:
            vm.start("-host=2", vmid=self.b, small=small)
            self.port2, self.pid2 = start_netd(vm, self.b, 2, self.keys, [[1, "127.0.0.1", self.port1]], trusted)
        self.procs: list[subprocess.Popen] = []
        self.netds = [self.pid1, self.pid2]
        # host 1 hears host 2's hello: both up
        wait_for(lambda: remote.route(self.a)["hosts"].get("2") is True, what="host 2 up at host 1")

    def echo(self, *args: str) -> tuple[subprocess.Popen, int]:
        p = subprocess.Popen([sys.executable, "-c", ECHO, *args], stdout=subprocess.PIPE, text=True,
                             env=self.vm.env(self.b))
        self.procs.append(p)
        return p, int(p.stdout.readline())

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        for pid in self.netds:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in self.netds:
            wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}") or _zombie(pid), what=f"netd {pid} gone")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture
def two(shmd_vm):
    t = Two(shmd_vm)
    try:
        yield t
    finally:
        t.close()


# the bytes of test message *seed* of *n* bytes (source text: the sink task runs it too)
PATTERN = """
def pattern(n, seed):
    if n < 4096:
        return bytes((k * 7 + seed) & 0xFF for k in range(n))
    return (bytes(range(256)) * (n // 256 + 1))[seed % 256:][:n]
"""
_defs: dict = {}
exec(PATTERN, _defs)
pattern = _defs["pattern"]


def test_host_started_with_its_netd_by_one_program(shmd_vm):
    """pvm_shmd -net=: the daemon, then pvm_netd forked from the starting process (named
    pvm_netd, in a session of its own), which serves: messages both ways, and host 1
    hears of host 2 with the arch, speed and dsig of its daemon's ready line."""
    two = Two(shmd_vm, together=True)
    try:
        with open(f"/proc/{two.pid2}/comm") as f:
            assert f.read().strip() == "pvm_netd"
        assert os.getsid(two.pid2) == two.pid2
        daemon = shmd_vm.stat(two.b)["pid"]
        assert two.pid2 != daemon and os.getsid(daemon) != two.pid2
        p, peer = two.echo()
        with shmd.join(two.a) as me:
            for n in (8, remote.CHUNK + 5):
                me.psend(peer, 3, pattern(n, n), timeout=20)
                assert bytes(me.precv(peer, 3, timeout=20).data) == pattern(n, n)
            hosts = {h["host"]: h for h in remote.ask(me, "config", 10)["up"]}
            assert {k: hosts[2][k] for k in ("name", "arch", "speed", "dsig")} == \
                {"name": "beta", "arch": handshake.arch(), "speed": handshake.SPEED, "dsig": handshake.DSIG}
            me.psend(peer, 99, b"", timeout=5)
        assert p.wait(20) == 0
    finally:
        two.close()


@pytest.mark.parametrize("stdin,needle", [
    ("not json\n", "-net=127.0.0.1: stdin: expected one JSON line"),
    ("", "-net=127.0.0.1: stdin: expected one JSON line"),
    ('{"public": "x", "secret": "y", "peers": []}\n', "keys must be 40 characters"),
])
def test_host_start_with_bad_netd_input_starts_nothing(shmd_vm, stdin, needle):
    """A bad line for pvm_netd: one line naming it, status 2, no daemon, no IPC object."""
    r = subprocess.run([PVM_SHMD, "-host=2", "-net=127.0.0.1"], input=stdin, capture_output=True, text=True,
                       timeout=20, env=shmd_vm.env())  # (input "": stdin at its end at once)
    assert r.returncode == 2 and r.stdout == "", r
    assert len(r.stderr.splitlines()) == 1 and needle in r.stderr, r.stderr
    assert not shmd_vm.files() and not daemon_objects(shmd_vm.vmid)


def test_host_start_whose_netd_cannot_bind_keeps_the_daemon(shmd_vm):
    """pvm_netd cannot bind (an address not of this machine): the daemon runs, its ready
    line on stdout, pvm_netd's reason on stderr, status 0 (the console notes a host
    without a network process, as when pvm_netd fails on its own)."""
    keys = zmq.curve_keypair()
    r = subprocess.run([PVM_SHMD, *SMALL, "-host=2", "-net=192.0.2.1"], input=netd_line(2, keys, []) + "\n",
                       capture_output=True, text=True, timeout=20, env=shmd_vm.env())
    assert r.returncode == 0, r.stderr
    adopt(shmd_vm, r.stdout)
    assert r.stdout.startswith("ddpro<") and len(r.stdout.splitlines()) == 1, r.stdout
    assert r.stderr.startswith("pvm_netd: ") and "192.0.2.1" in r.stderr and len(r.stderr.splitlines()) == 1
    assert shmd_vm.stat()["pid"] == int(ready_fields(r.stdout)["pid"])


def test_a_netd_of_another_release_is_named_at_start(shmd_vm):
    """pvm_netd's ready line says its wire version: the console takes the port from a
    line of its own WIRE, and names a pvm_netd of another release (an older one says
    none) instead of counting on a host whose pvm_netd would not hear the others."""
    from pvmconsole import hostlink

    r = subprocess.run([PVM_SHMD, *SMALL, "-host=2", "-net=127.0.0.1"], capture_output=True, text=True,
                       input=netd_line(2, zmq.curve_keypair(), []) + "\n", timeout=20, env=shmd_vm.env())
    assert r.returncode == 0, r.stderr
    ddpro, line = r.stdout.splitlines()
    adopt(shmd_vm, ddpro)
    w = ready_fields(line)
    try:
        assert w["wire"] == str(wire.WIRE)
        assert hostlink.netd_port(r.stdout, "no line") == int(w["netd"])
        for other in (line.replace(f" wire<{wire.WIRE}>", ""), line.replace(f"<{wire.WIRE}>", f"<{wire.WIRE + 1}>")):
            with pytest.raises(PvmError) as e:
                hostlink.netd_port(other, "no line")
            assert "of another release" in str(e.value), e.value
        with pytest.raises(PvmError, match="no line"):
            hostlink.netd_port("", "no line")
    finally:
        os.kill(int(w["pid"]), signal.SIGTERM)
        wait_for(lambda: not os.path.exists(f"/proc/{w['pid']}") or _zombie(int(w["pid"])), what="pvm_netd gone")


@pytest.mark.parametrize("direct", ["1", "0"], ids=["direct", "through-netd"])
def test_ping_pong_every_byte_across_hosts(two, direct, monkeypatch):
    """Sizes from tag-0 empty to several network chunks (and more than a segment of the
    small daemons, so the receiving side takes it in pieces): every byte comes back,
    sent by each task to the far pvm_netd itself (netsend.py) or through its own host's."""
    monkeypatch.setenv(netsend.ENV, direct)  # (the echo task inherits it)
    p, peer = two.echo()
    assert tids.host_of(peer) == 2
    with shmd.join(two.a) as me:
        assert tids.host_of(me.tid) == 1
        for k, n in enumerate((0, 8, 1000, 4096, 65536, remote.CHUNK, 3 * remote.CHUNK + 17)):
            data = pattern(n, k)
            me.psend(peer, k % 3, data, timeout=20)
            m = me.precv(peer, k % 3, timeout=20)
            assert (m.src, m.tag, len(m.data)) == (peer, k % 3, n)
            assert bytes(m.data) == data, f"{n} bytes came back changed"
        # precv_into: too small raises and keeps the message, then it fits
        me.psend(peer, 7, pattern(5000, 1), timeout=20)
        assert wait_for(lambda: me.probe(peer, 7), what="echo queued")[2] == 5000
        small = bytearray(100)
        with pytest.raises(PvmError) as e:
            me.precv_into(small, peer, 7, timeout=5)
        assert e.value.code == PvmOverflow
        big = bytearray(6000)
        assert me.precv_into(big, shmd.ANY, 7, timeout=5) == (peer, 7, 5000)
        assert bytes(big[:5000]) == pattern(5000, 1)
        me.psend(peer, 99, b"", timeout=5)
    assert p.wait(20) == 0


def test_wildcard_and_order_local_and_remote(two):
    """A remote sender's 200 messages and a local one's, taken with wildcards: each
    sender's in order, both there."""
    with shmd.join(two.a) as me:
        p, peer = two.echo(str(me.tid))
        local = subprocess.Popen([sys.executable, "-c",
                                  f"import shmd\nwith shmd.join() as t:\n for k in range(200): "
                                  f"t.psend({me.tid}, 6, k.to_bytes(4, 'little'))"],
                                 env=two.vm.env(two.a))
        got: dict[int, list[int]] = {}
        for _ in range(400):
            m = me.precv(shmd.ANY, shmd.ANY, timeout=20)
            got.setdefault(m.src, []).append(int.from_bytes(m.data[:4], "little"))
        assert local.wait(20) == 0
        assert got[peer] == list(range(200))
        assert [v for s, v in got.items() if s != peer] == [list(range(200))]
        me.psend(peer, 99, b"", timeout=5)
    assert p.wait(20) == 0


def _frame_to(me_tid: int, tag: int) -> list[bytes]:
    return [wire.MSG, wire.NET.pack(tids.dtid(2) + 0x77, me_tid, tag, 5, 0), b"hello"]


def test_wrong_key_and_garbage_get_nothing(two):
    """A client with a wrong key pair, one with no key (no CURVE) and random bytes at the
    port deliver nothing and leave the host working; the VM's key (the control) does."""
    with shmd.join(two.a) as me:
        ctx = zmq.Context()
        try:
            bad = []  # kept open while we wait: a closed socket drops what it queued
            for keys in (zmq.curve_keypair(), None):
                s = ctx.socket(zmq.DEALER)
                s.linger = 0
                if keys is not None:
                    s.curve_publickey, s.curve_secretkey = keys
                    s.curve_serverkey = two.keys[0]
                s.connect(f"tcp://127.0.0.1:{two.port1}")
                s.send_multipart(_frame_to(me.tid, 11), flags=zmq.NOBLOCK)
                bad.append(s)
            for seed in range(5):
                with socket.create_connection(("127.0.0.1", two.port1), timeout=5) as raw:
                    raw.sendall(os.urandom(2000 + seed))
            time.sleep(1.5)
            assert me.probe() is None, "a message got in without the VM's key"
            for s in bad:
                s.close()
            good = ctx.socket(zmq.DEALER)
            good.linger = 0
            good.curve_publickey, good.curve_secretkey = two.keys
            good.curve_serverkey = two.keys[0]
            good.connect(f"tcp://127.0.0.1:{two.port1}")
            good.send_multipart(_frame_to(me.tid, 12))
            m = me.precv(shmd.ANY, 12, timeout=10)
            assert (m.src, m.data) == (tids.dtid(2) + 0x77, b"hello")
            good.close()
        finally:
            ctx.destroy(0)
        assert os.path.exists(f"/proc/{two.pid1}") and not _zombie(two.pid1)


def test_one_frame_messages_and_hosts_of_another_wire(two):
    """A whole small message is one frame (kind, header, body) and a piece of a larger
    one three; pvm_netd takes both. A hello, beat or join notice of another wire (an
    older release's, without the WIRE field, or another WIRE) is not heard: its host
    never comes up, so nothing is sent to it in frames it would drop; one of this WIRE is."""
    assert len(wire.chunk_frames(1, 2, 3, 5, 0, b"hello")) == 1
    assert len(wire.chunk_frames(1, 2, 3, 9, 4, b"hello")) == 3  # a piece
    assert len(wire.chunk_frames(1, 2, 3, wire.BIG, 0, bytes(wire.BIG))) == 3
    assert wire.split_request(wire.request(wire.ASK, b"17", b'{"op": "x"}')) == (b"17", b'{"op": "x"}')
    src = tids.dtid(2) + 0x77
    with shmd.join(two.a) as me:
        ctx = zmq.Context()
        try:
            s = ctx.socket(zmq.DEALER)
            s.linger = 0
            s.curve_publickey, s.curve_secretkey = two.keys
            s.curve_serverkey = two.keys[0]
            s.connect(f"tcp://127.0.0.1:{two.port1}")
            s.send_multipart(wire.chunk_frames(src, me.tid, 21, 5, 0, b"whole"))
            s.send_multipart([wire.MSG, wire.NET.pack(src, me.tid, 22, 5, 0), b"three"])
            for tag, body in ((21, b"whole"), (22, b"three")):
                m = me.precv(shmd.ANY, tag, timeout=10)
                assert (m.src, m.data) == (src, body)
            old = struct.Struct("<IH")
            for hello in (old.pack(5, 1), netd.HELLO.pack(6, 1, wire.WIRE + 1), netd.HELLO.pack(7, 1, wire.WIRE)):
                s.send_multipart([netd.HELLO_KIND, hello, b"127.0.0.1", b"{}"])
            wait_for(lambda: remote.route(two.a)["hosts"].get("7") is True, what="host 7's hello heard")
            hosts = remote.route(two.a)["hosts"]
            assert "5" not in hosts and "6" not in hosts, hosts
        finally:
            ctx.destroy(0)


def test_host_death_gives_host_fail(two):
    """kill -9 of host 2's daemon and pvm_netd: a receive from a task there and a send to
    it raise PvmHostFail within 3 s; host 1 goes on, and its task leaves at once."""
    p, peer = two.echo()
    with shmd.join(two.a) as me:
        me.psend(peer, 1, b"x", timeout=5)
        assert me.precv(peer, 1, timeout=10).data == b"x"
        os.kill(two.pid2, signal.SIGKILL)
        os.kill(two.vm.daemons[1][0], signal.SIGKILL)
        t = time.monotonic()
        try:  # (not known down yet: queued on our socket to the dead pvm_netd, never to leave)
            me.psend(peer, 1, b"queued", timeout=5)
        except PvmError as err:
            assert err.code == PvmHostFail
        with pytest.raises(PvmError) as e:
            me.precv(peer, 1, timeout=30)
        assert e.value.code == PvmHostFail
        assert time.monotonic() - t < 3.0
        for receive in (lambda: me.precv_view(peer, 1, timeout=30),
                        lambda: me.precv_into(bytearray(1 << 20), peer, shmd.ANY, timeout=30)):
            with pytest.raises(PvmError) as e:
                receive()
            assert e.value.code == PvmHostFail
        with pytest.raises(PvmError) as e:
            me.psend(peer, 1, b"y", timeout=30)
        assert e.value.code == PvmHostFail
        t = time.monotonic()
    # leaving does not wait netsend.LINGER for what can never leave for a host that is down
    assert time.monotonic() - t < netsend.LINGER / 2
    p.kill()
    from daemons import remove_vm_leftovers
    remove_vm_leftovers(two.b)


def test_alive_is_answered_from_the_shared_memory_and_fails_with_the_daemon(two):
    """The console's mstat asks each pvm_netd "alive": True while its pvm_shmd runs
    (from the segment and the daemon's pid, no request to it); once the daemon is
    killed -9, never True again (an error answer, or none once pvm_netd has gone)."""
    from shmd.netask import NetLink
    keys = [k.decode() for k in two.keys]
    link = NetLink("127.0.0.1", two.port2, keys)
    try:
        assert link.ask("alive") is True
        pid = two.vm.daemons[1][0]
        os.kill(pid, signal.SIGKILL)
        from shmd import ipc
        wait_for(lambda: ipc.process_start(pid) is None, 10, "pvm_shmd gone (or a zombie)")
        for _ in range(3):
            with pytest.raises(PvmError):
                link.ask("alive")
    finally:
        link.close()
    os.kill(two.pid2, signal.SIGKILL)
    from daemons import remove_vm_leftovers
    remove_vm_leftovers(two.b)


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 1024


# a task of host 2 that checks each message it gets (tag 2, message k: pattern(1 MiB, k))
# and answers with a small one (no pages: the answers never wait for memory)
SINK = PATTERN + ECHO.split("    while True:")[0] + """    k = 0
    while True:
        m = me.precv(timeout=60)
        if m.tag == 99:
            break
        me.psend(m.src, 3, bytes([k % 256, bytes(m.data) == pattern(1 << 20, k)]))
        k += 1
"""


def test_stopped_receiver_makes_senders_wait_and_loses_nothing(two):
    """A receiver on host 2 stopped (SIGSTOP): 1 MiB messages to it are taken until the
    queues between the hosts are full, then psend times out; neither pvm_netd grows
    without bound. Continued, it gets every message sent, in order, intact."""
    p = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True, env=two.vm.env(two.b))
    two.procs.append(p)
    peer = int(p.stdout.readline())
    with shmd.join(two.a) as me:
        os.kill(p.pid, signal.SIGSTOP)
        rss = _rss_mib(os.getpid())
        try:
            sent = 0
            with pytest.raises(PvmError) as e:
                while sent < 400:
                    me.psend(peer, 2, pattern(1 << 20, sent), timeout=3)
                    sent += 1
            assert isinstance(e.value, shmd.errors.PvmTimeout), e.value
            assert 0 < sent < 200, f"{sent} MiB taken for a stopped receiver"
            for pid in (two.pid1, two.pid2):
                assert _rss_mib(pid) < 300, f"pvm_netd {pid}: {_rss_mib(pid):.0f} MiB"
            # (and the sender's own queue to host 2, netsend.HWM chunks: not all it sent)
            assert _rss_mib(os.getpid()) - rss < 150, f"sender grew by {_rss_mib(os.getpid()) - rss:.0f} MiB"
        finally:
            os.kill(p.pid, signal.SIGCONT)
        for k in range(sent):  # each answered: all of them, in order, intact
            m = me.precv(peer, 3, timeout=30)
            assert tuple(m.data) == (k % 256, 1), f"message {k} of {sent}: {tuple(m.data)}"
        me.psend(peer, 99, b"", timeout=5)
    assert p.wait(20) == 0


# a task of host 2 that says each message it gets (tag 2, message k: pattern(size, k)) is
# intact, on its stdout, as it gets it; tag 99 ends it
TELL = PATTERN + """
import shmd
with shmd.join(name="tell") as me:
    print(me.tid, flush=True)
    k = 0
    while True:
        m = me.precv(timeout=60)
        if m.tag == 99:
            break
        print(k, bytes(m.data) == pattern(len(m.data), k), flush=True)
        k += 1
"""


@pytest.mark.parametrize("direct", ["1", "0"], ids=["direct", "through-netd"])
def test_a_task_sends_to_the_far_netd_itself(two, direct, monkeypatch):
    """With this host's pvm_netd stopped (SIGSTOP, well within the heartbeats' DEAD), a
    message sent to a task of host 2 still gets there: the task sent it to host 2's
    pvm_netd itself. With PVM_NET_DIRECT=0 it waits in this host's pvm_netd until that
    goes on, as before."""
    monkeypatch.setenv(netsend.ENV, direct)
    p = subprocess.Popen([sys.executable, "-c", TELL], stdout=subprocess.PIPE, text=True, env=two.vm.env(two.b))
    two.procs.append(p)
    peer = int(p.stdout.readline())
    with shmd.join(two.a) as me:
        me.psend(peer, 2, pattern(10, 0), timeout=5)  # (the first: connects)
        assert p.stdout.readline().split() == ["0", "True"]
        os.kill(two.pid1, signal.SIGSTOP)
        try:
            me.psend(peer, 2, pattern(10, 1), timeout=5)
            ready = select.select([p.stdout], [], [], 1.2)[0]  # (< netd.DEAD: host 2 counts us up)
        finally:
            os.kill(two.pid1, signal.SIGCONT)
        assert bool(ready) == (direct == "1"), "arrived while this host's pvm_netd was stopped" if ready else \
            "did not arrive while this host's pvm_netd was stopped"
        assert p.stdout.readline().split() == ["1", "True"]
        me.psend(peer, 99, b"", timeout=5)
    assert p.wait(20) == 0


def test_a_route_file_that_does_not_say_where_sends_through_this_hosts_netd():
    """netsend takes from the route file only what pvm_netd writes there (an address and a
    port, two Z85 keys); anything else, it leaves the message to this host's pvm_netd."""
    keys = [k.decode() for k in zmq.curve_keypair()]
    links = netsend._Links()
    at = {"2": ["127.0.0.1", 5555]}
    for r in ({}, {"at": at}, {"at": {"2": ["127.0.0.1", "5555"]}, "keys": keys},
              {"at": ["127.0.0.1", 5555], "keys": keys}, {"at": at, "keys": ["x", "y"]},
              {"at": at, "keys": [keys[0], 7]}, {"at": {"3": ["127.0.0.1", 5555]}, "keys": keys}):
        assert links.link("v", 2, r) is None, r
    assert links.ctx is None  # (nothing was made for them)
    try:
        link = links.link("v", 2, {"at": {"2": ["0.0.0.0", 5555]}, "keys": keys})
        assert link is not None and link.at == ("127.0.0.1", 5555)
    finally:
        for lk in links.links.values():
            lk.sock.close(0)
        if links.ctx is not None:
            links.ctx.term()


# a task of host 1 that sends N messages of SIZE bytes (pattern(SIZE, k)) to DEST and
# ends at once: leaving, then os._exit ("leave"), or without leaving (its process exits
# with the task open);
# odd ones from one bytearray written over right after each psend (which must have
# copied it), even ones as bytes (handed to zmq uncopied)
SEND_AND_GO = PATTERN + """
import os, sys, shmd
dest, n, size, how = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
me = shmd.join(name="sender")
buf = bytearray(size)
for k in range(n):
    if k % 2:
        buf[:] = pattern(size, k)
        me.psend(dest, 2, buf, timeout=30)
        buf[:] = bytes(size)  # (a psend that kept a view of buf would send these zeros)
    else:
        me.psend(dest, 2, pattern(size, k), timeout=30)
if how == "leave":
    me.leave()
    os._exit(0)  # (no atexit handlers: what leave sent is all that goes)
"""


@pytest.mark.parametrize("how", ["leave", "exit"])
def test_what_a_task_queued_arrives_after_it_is_gone(two, how):
    """A task sends 24 MiB to host 2 and is gone at once: psend returned with chunks
    still queued in its own process (its socket to host 2's pvm_netd), which leave, or
    the process's exit, sends first. Every message arrives intact, in order, whether
    copied (a bytearray written over right after psend) or not (bytes)."""
    p = subprocess.Popen([sys.executable, "-c", TELL], stdout=subprocess.PIPE, text=True, env=two.vm.env(two.b))
    two.procs.append(p)
    peer = int(p.stdout.readline())
    n = 24
    s = subprocess.run([sys.executable, "-c", SEND_AND_GO, str(peer), str(n), str(1 << 20), how],
                       capture_output=True, text=True, env=two.vm.env(two.a), timeout=60)
    assert s.returncode == 0, s.stderr
    got = [p.stdout.readline().split() for _ in range(n)]
    assert got == [[str(k), "True"] for k in range(n)]
    with shmd.join(two.a) as me:
        me.psend(peer, 99, b"", timeout=5)
    assert p.wait(20) == 0


# a task that streams N numbered messages of SIZE bytes (tag 5) to DEST, then says done
STREAM = r'''
import sys, shmd
with shmd.join(name="stream") as me:
    print(me.tid, flush=True)
    dest, n, size = (int(w) for w in sys.argv[1:4])
    for k in range(n):
        me.psend(dest, 5, k.to_bytes(4, "little") * (size // 4), timeout=30)
    print("done", flush=True)
'''


DRAIN = ECHO.replace("me.psend(m.src, m.tag, m.data)", "pass")  # receives, answers nothing


def _pages_free(vm, vmid: str) -> bool:
    return all(s["free"] == s["pages"] for s in vm.stat(vmid)["segments"])


def test_senders_killed_mid_stream_across_hosts(two):
    """Two tasks of host 2 stream to one of host 1, a third of host 1 to one of host 2;
    one sender and the far receiver are killed -9 mid-stream. The live sender's messages
    all arrive once, in order, intact; the dead one's are a prefix; no pages stay in use
    on either host once the tasks are gone."""
    n, size = 300, 20000
    with shmd.join(two.a) as me:
        sink = subprocess.Popen([sys.executable, "-c", DRAIN], stdout=subprocess.PIPE, text=True,
                                env=two.vm.env(two.b))  # host 2's receiver
        two.procs.append(sink)
        far = int(sink.stdout.readline())
        senders = []
        for _ in range(2):
            s = subprocess.Popen([sys.executable, "-c", STREAM, str(me.tid), str(n), str(size)],
                                 stdout=subprocess.PIPE, text=True, env=two.vm.env(two.b))
            two.procs.append(s)
            senders.append((s, int(s.stdout.readline())))
        local = subprocess.Popen([sys.executable, "-c", STREAM, str(far), str(n), str(size)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=two.vm.env(two.a))
        two.procs.append(local)
        local.stdout.readline()
        (live, live_tid), (doomed, doomed_tid) = senders
        got: dict[int, list[int]] = {live_tid: [], doomed_tid: []}
        killed = False
        while len(got[live_tid]) < n:
            m = me.precv(shmd.ANY, 5, timeout=30)
            k = int.from_bytes(m.data[:4], "little")
            assert m.data == k.to_bytes(4, "little") * (size // 4), f"message {k} from t{m.src:x} changed"
            got[m.src].append(k)
            if not killed and len(got[doomed_tid]) >= 50:
                os.kill(doomed.pid, signal.SIGKILL)
                os.kill(sink.pid, signal.SIGKILL)  # host 1's stream loses its receiver
                doomed.wait(10)  # reaped, as a spawner reaps its tasks (a zombie counts as
                sink.wait(10)  # alive for pvm_shmd)
                killed = True
        # the dead sender's last messages may still come: take them while host 1's stream
        # runs (not receiving would leave our inbox's pages full: the stream would wait)
        while True:
            try:
                m = me.precv(shmd.ANY, 5, timeout=0.5)
            except shmd.errors.PvmTimeout:
                if local.poll() is not None:
                    break
                continue
            got[m.src].append(int.from_bytes(m.data[:4], "little"))
        assert local.wait(60) == 0, local.stderr.read()  # sends to a receiver that died: dropped
        assert got[live_tid] == list(range(n))
        assert got[doomed_tid] == list(range(len(got[doomed_tid])))
        assert live.wait(30) == 0
    for p in two.procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)
    for vmid in (two.a, two.b):
        wait_for(lambda vmid=vmid: _pages_free(two.vm, vmid), 10, f"every page of {vmid} free")


LATE = r'''
import sys, time, shmd
with shmd.join(name="late") as me:
    print(me.tid, flush=True)
    n, size = int(sys.argv[1]), int(sys.argv[2])
    time.sleep(float(sys.argv[3]))  # not receiving yet: the pages of its host fill
    for k in range(n):
        m = me.precv(shmd.ANY, 5, timeout=30)
        got = bytes(m.data)
        assert got == k.to_bytes(4, "little") * (size // 4), (k, len(got), got[:8], got[-8:], hex(m.src))
    print("ok", flush=True)
'''


def test_two_hosts_streaming_to_each_other_through_full_pages(two):
    """A task of each host streams to one of the other, whose receiver starts late: both
    hosts' pages fill with messages going out and coming in. pvm_netd reads its inbox
    on while the other host is slow to take its frames (past netd.HOLD bytes the
    senders wait instead), so each in thread always finds pages to deliver into: every
    message arrives (without that, each host's pages held only what was going out, and
    both streams waited on each other until they timed out)."""
    n, size = 1500, 20000  # 30 MB each way, through 512 KiB of pages per host
    procs = []
    for host in (two.b, two.a):
        p = subprocess.Popen([sys.executable, "-c", LATE, str(n), str(size), "3"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=two.vm.env(host))
        two.procs.append(p)
        procs.append((p, int(p.stdout.readline())))
    for host, (_, dest) in zip((two.a, two.b), procs):
        s = subprocess.Popen([sys.executable, "-c", STREAM, str(dest), str(n), str(size)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=two.vm.env(host))
        two.procs.append(s)
        procs.append((s, 0))
    for p, _ in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.split()[-1] in ("ok", "done"), out
    for vmid in (two.a, two.b):
        wait_for(lambda vmid=vmid: _pages_free(two.vm, vmid), 10, f"every page of {vmid} free")


def test_trusted_network_authenticates_without_encryption(shmd_vm):
    """"trusted": no encryption (ZeroMQ PLAIN), but a client without the VM's secret, or
    speaking CURVE, gets nothing in; messages between the hosts go as before."""
    two = Two(shmd_vm, trusted=True)
    try:
        p, peer = two.echo()
        with shmd.join(two.a) as me:
            data = pattern(3 * remote.CHUNK + 5, 9)
            me.psend(peer, 4, data, timeout=20)
            assert bytes(me.precv(peer, 4, timeout=20).data) == data
            ctx = zmq.Context()
            try:
                bad = []
                for login in ((b"pvm", b"not the secret"), (b"other", two.keys[1]), None):
                    s = ctx.socket(zmq.DEALER)
                    s.linger = 0
                    if login is None:  # CURVE with the VM's own keys: not what a trusted VM speaks
                        s.curve_publickey, s.curve_secretkey = two.keys
                        s.curve_serverkey = two.keys[0]
                    else:
                        s.plain_username, s.plain_password = login
                    s.connect(f"tcp://127.0.0.1:{two.port1}")
                    s.send_multipart(_frame_to(me.tid, 11), flags=zmq.NOBLOCK)
                    bad.append(s)
                time.sleep(1.5)
                assert me.probe() is None, "a message got in without the VM's secret"
                good = ctx.socket(zmq.DEALER)
                good.linger = 0
                good.plain_username, good.plain_password = b"pvm", two.keys[1]
                good.connect(f"tcp://127.0.0.1:{two.port1}")
                good.send_multipart(_frame_to(me.tid, 12))
                assert me.precv(shmd.ANY, 12, timeout=10).data == b"hello"
                for s in [*bad, good]:
                    s.close()
            finally:
                ctx.destroy(0)
            me.psend(peer, 99, b"", timeout=5)
        assert p.wait(20) == 0
    finally:
        two.close()


# spawned by pvm_spawn (through pvm_netd): tells its parent its tid and parent, then waits
# for tag 99 from it (or a signal)
CHILD = r"""
import struct, shmd
from shmd.pvm import pvm_parent
with shmd.join() as me:
    parent = pvm_parent()
    me.psend(parent, 7, struct.pack("<ii", me.tid, parent))
    me.precv(parent, 99, timeout=60)
"""


@pytest.fixture
def pvm_api():
    """shmd.pvm's calls for this process (its library state reset afterwards)."""
    from shmd import pvm, pvmmsg
    try:
        yield pvm
    finally:
        pvmmsg.S.reset()


def _note(pvm, tag: int, n: int, timeout: float) -> list[int]:
    """The ints of the next notification with *tag* (PvmTimeout-like failure if none)."""
    bufid = pvm.pvm_trecv(-1, tag, timeout)
    assert bufid > 0, f"no notification with tag {tag} within {timeout} s"
    return list(pvm.pvm_upkint(None, n, 1))


def test_program_spawns_lists_signals_and_watches_tasks_of_other_hosts(two, pvm_api, tmp_path):
    """From a program: pvm_config lists both hosts; pvm_spawn places copies on a named
    host, on an architecture, and round robin over both; each copy's pvm_parent is us;
    pvm_tasks sees them on their hosts; pvm_kill of a task of the other host ends it
    and the PvmTaskExit notification comes as a message with our tag."""
    pvm = pvm_api
    prog = tmp_path / "child.py"
    prog.write_text(CHILD)
    with shmd.join(two.a) as me:
        nhost, narch, hosts = pvm.pvm_config()
        assert (nhost, narch) == (2, 1)
        assert [(h.hi_tid, h.hi_name, h.hi_speed) for h in hosts] == [(tids.dtid(1), "alpha", 1000),
                                                                      (tids.dtid(2), "beta", 2000)]
        there = pvm.pvm_spawn(str(prog), [], pvm.PvmTaskHost, "beta", 2)
        spread = pvm.pvm_spawn(str(prog), [], pvm.PvmTaskDefault, "", 4)
        arch = pvm.pvm_spawn(str(prog), [], pvm.PvmTaskArch, "LINUX64", 2)
        assert [tids.host_of(t) for t in there] == [2, 2], there
        assert sorted(tids.host_of(t) for t in spread) == [1, 1, 2, 2], spread
        assert sorted(tids.host_of(t) for t in arch) == [1, 2], arch
        children = there + spread + arch
        for t in children:  # each child's pvm_parent is us, wherever it runs
            m = me.precv(t, 7, timeout=30)
            assert struct.unpack("<ii", m.data) == (t, me.tid)
        pythonic = spawner.spawn(str(prog), host="beta") + spawner.spawn(str(prog), host="*", count=2)
        assert [tids.host_of(t) for t in pythonic[:1]] == [2] and len(set(map(tids.host_of, pythonic[1:]))) == 2
        children += pythonic
        for t in pythonic:
            assert struct.unpack("<ii", me.precv(t, 7, timeout=30).data) == (t, me.tid)
        nowhere, = spawner.spawn(str(prog), host="nowhere")
        assert isinstance(nowhere, PvmError) and nowhere.code == pvm.PvmNoHost
        assert pvm.pvm_spawn(str(prog), [], pvm.PvmTaskHost, "nowhere", 2) == [pvm.PvmNoHost] * 2
        assert pvm.pvm_spawn(str(prog), [], pvm.PvmTaskArch, "SUN4", 1) == [pvm.PvmNoHost]
        assert pvm.pvm_spawn("no-such-program", [], pvm.PvmTaskHost, "beta", 1) == [pvm.PvmNoFile]
        n, tasks = pvm.pvm_tasks(0)
        seen = {t.ti_tid: t for t in tasks}
        assert n == len(tasks) and set(children) <= set(seen)
        assert all(seen[t].ti_host == tids.dtid(tids.host_of(t)) and seen[t].ti_ptid == me.tid for t in children)
        assert not any(tids.is_netd(t) for t in seen)
        _, on2 = pvm.pvm_tasks(tids.dtid(2))
        assert {t.ti_tid for t in on2} == {t for t in children if tids.host_of(t) == 2}
        assert [t.ti_tid for t in pvm.pvm_tasks(there[1])[1]] == [there[1]]
        pvm.pvm_notify(pvm.PvmTaskExit, 50, [there[0]])
        assert pvm.pvm_trecv(-1, 50, 0.3) == 0  # (not before it exits)
        pvm.pvm_kill(there[0])
        assert _note(pvm, 50, 1, 5) == [there[0]]
        assert pvm.pvm_mstat("beta") == pvm.PvmOk
        with pytest.raises(PvmError) as e:
            pvm.pvm_kill(there[0])  # gone now
        assert e.value.code == pvm.PvmNoTask
        pvm.pvm_sendsig(there[1], signal.SIGKILL)
        wait_for(lambda: there[1] not in {t.ti_tid for t in pvm.pvm_tasks(tids.dtid(2))[1]}, what="SIGKILL")
        for t in children[2:]:
            me.psend(t, 99, b"", timeout=10)
        wait_for(lambda: not set(children) & {t.ti_tid for t in pvm.pvm_tasks(0)[1]}, what="the children end")


def test_host_add_and_delete_are_notified(two, pvm_api):
    """PvmHostAdd when a third host joins (a count and its dtid), PvmHostDelete when host
    2's pvm_netd dies (its dtid, within netd.DEAD + 1 s), each with our tag; pvm_config
    follows; a PvmTaskExit watch on a task of the dead host fires too."""
    pvm = pvm_api
    p, peer = two.echo()
    p2, ended = two.echo()
    with shmd.join(two.a) as me:
        pvm.pvm_notify(pvm.PvmHostAdd, 62, -1)
        pvm.pvm_notify(pvm.PvmHostDelete, 61, [tids.dtid(2)])
        pvm.pvm_notify(pvm.PvmTaskExit, 63, [peer, ended])
        me.psend(ended, 99, b"", timeout=5)  # it ends: told once, not again when its host dies
        assert _note(pvm, 63, 1, 5) == [ended]
        c = two.a + "c"
        two.vm.start("-host=3", vmid=c)
        _, pid3 = start_netd(two.vm, c, 3, two.keys, [[1, "127.0.0.1", two.port1]])
        two.netds.append(pid3)
        assert _note(pvm, 62, 2, 10) == [1, tids.dtid(3)]
        assert [h.hi_name for h in pvm.pvm_config()[2]] == ["alpha", "beta", "gamma"]
        os.kill(two.pid2, signal.SIGKILL)
        t = time.monotonic()
        assert _note(pvm, 61, 1, 10) == [tids.dtid(2)]
        assert time.monotonic() - t < netd.DEAD + 1.0
        assert _note(pvm, 63, 1, 5) == [peer]  # its host is gone: so is it (and only it)
        assert [h.hi_name for h in pvm.pvm_config()[2]] == ["alpha", "gamma"]
        pvm.pvm_notify(pvm.PvmHostDelete, 64, [tids.dtid(2)])  # already down: at once
        assert _note(pvm, 64, 1, 5) == [tids.dtid(2)]
        assert me.probe() is None  # nothing else came
    p.kill()


class Capture:
    """The TCP payload on the loopback to or from *ports*, as the wire carries it: read
    with an AF_PACKET socket (root), on a thread, until stop()."""

    def __init__(self, ports) -> None:
        need_root("reading the loopback's packets (AF_PACKET)")
        self.ports = set(ports)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.1)
        self.data = bytearray()
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while self.running:
            try:
                f = self.sock.recv(1 << 18)
            except TimeoutError:
                continue
            if len(f) < 54 or f[12:14] != b"\x08\x00" or f[23] != 6:  # IPv4, TCP
                continue
            tcp = 14 + (f[14] & 15) * 4
            sport, dport = struct.unpack_from(">HH", f, tcp)
            if sport in self.ports or dport in self.ports:
                self.data += f[tcp + (f[tcp + 12] >> 4) * 4:]

    def stop(self) -> bytes:
        self.running = False
        self.thread.join(5)
        self.sock.close()
        return bytes(self.data)


SECRET = b"<pvm: readable on the wire?>" * 4096  # 112 KiB nobody else could guess


def _on_the_wire(two) -> bytes:
    """What the loopback carried between the two pvm_netds while a task of host 1 sent
    SECRET to a task of host 2 and got it back."""
    p, peer = two.echo()
    cap = Capture([two.port1, two.port2])
    try:
        with shmd.join(two.a) as me:
            me.psend(peer, 4, SECRET, timeout=20)
            assert bytes(me.precv(peer, 4, timeout=20).data) == SECRET
            me.psend(peer, 99, b"", timeout=5)
    finally:
        seen = cap.stop()
    assert p.wait(20) == 0
    assert len(seen) > 2 * len(SECRET), f"only {len(seen)} bytes seen: the capture missed the traffic"
    return seen


def test_nothing_readable_on_the_wire(two):
    """CURVE: the bytes a task sends to another host are not on the wire in clear (the
    capture is shown to see them when they are: trusted mode, below)."""
    assert SECRET[:64] not in _on_the_wire(two)


def test_trusted_network_sends_in_clear(shmd_vm):
    """The control of the test above: with "trusted" (no encryption) the capture finds them."""
    need_root("reading the loopback's packets (AF_PACKET)")
    two = Two(shmd_vm, trusted=True)
    try:
        assert SECRET[:64] in _on_the_wire(two)
    finally:
        two.close()


def _attack(port: int, server_key: bytes, victim: int, vmid: str, route: str) -> dict:
    """As another user: what this VM's pvm_netd and files give a client with a key pair of
    its own (a message to *victim*, a spawn and a stat request) and a join."""
    ctx = zmq.Context()
    out: dict = {}
    try:
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
        s.curve_serverkey = server_key
        s.connect(f"tcp://127.0.0.1:{port}")
        s.send_multipart(_frame_to(victim, 13), flags=zmq.NOBLOCK)
        for rid, ask in ((b"1", {"op": "spawn", "prog": "/bin/true", "here": True}), (b"2", {"op": "stat"})):
            s.send(wire.request(wire.ASK, rid, json.dumps(ask).encode()), flags=zmq.NOBLOCK)
        out["answers"] = s.poll(1500)
        try:
            shmd.join(vmid)
            out["joined"] = True
        except PvmError as e:
            out["join"] = e.code
        try:
            with open(route, "rb") as f:
                out["route"] = len(f.read())
        except OSError as e:
            out["route"] = e.errno
    finally:
        ctx.destroy(0)
    return out


@pytest.mark.root
def test_another_user_cannot_send_or_ask_through_pvm_netd(two, other_user):
    """A second uid (root only): its own CURVE key gets no message in and no answer out
    of pvm_netd (no spawn, no stat), it cannot join the VM's pvm_shmd (so it cannot
    post to pvm_netd either) nor read its route file (which holds the VM's keys)."""
    import errno
    import mmap  # noqa: F401  (loaded for the other user's join: it cannot read our checkout)

    from shmd import calibrate
    calibrate.choice()  # (measured here, as we may: the other user's join reads the result)
    def users(vmid: str) -> list[int]:  # (the master's pvm_shmd may start the group server meanwhile)
        return [t["tid"] for t in two.vm.stat(vmid)["tasks"] if not tids.is_netd(t["tid"])]

    with shmd.join(two.a) as me:
        before = users(two.a)
        got = other_user.run(_attack, two.port1, two.keys[0], me.tid, two.a, remote.route_path(two.a))
        assert got["answers"] == 0
        assert "joined" not in got and got["join"] < 0
        assert got["route"] in (errno.EACCES, errno.EPERM)
        time.sleep(0.5)
        assert me.probe() is None, "a message of the other user's got in"
        assert users(two.a) == before, "the other user started a task"


# a task of host 2: receives one message of N bytes (argv[1]) and answers whether they
# are the little-endian uint64 counters 0, 1, 2, ... (cut at N bytes)
COUNTERS = r"""
import sys, numpy as np, shmd
n = int(sys.argv[1])
with shmd.join(name="counters") as me:
    print(me.tid, flush=True)
    m = me.precv(timeout=300)
    got, step, ok = np.frombuffer(m.data, np.uint8), 1 << 26, len(m.data) == n
    for k in range(0, n if ok else 0, step):  # in slices: no GiB of booleans
        ok = ok and np.array_equal(got[k:k + step], np.arange(k // 8, (k + step) // 8 + 1, dtype="<u8")
                                   .view(np.uint8)[:min(step, n - k)])
    me.psend(m.src, 2, b"%d %d" % (len(m.data), ok))
"""


def test_a_gibibyte_across_hosts(shmd_vm):
    """A message of 1 GiB + 7 bytes to a task of host 2 (1 MiB network chunks; the
    daemons' default segments): it arrives whole, every byte as sent."""
    import numpy as np

    n = (1 << 30) + 7
    data = np.arange(n // 8 + 1, dtype="<u8").view(np.uint8)[:n]
    two = Two(shmd_vm, small=False)
    try:
        p = subprocess.Popen([sys.executable, "-c", COUNTERS, str(n)], stdout=subprocess.PIPE, text=True,
                             env=two.vm.env(two.b))
        two.procs.append(p)
        peer = int(p.stdout.readline())
        with shmd.join(two.a) as me:
            me.psend(peer, 1, data, timeout=300)
            assert bytes(me.precv(peer, 2, timeout=300).data) == b"%d 1" % n
        assert p.wait(30) == 0
    finally:
        two.close()


# a task streaming to every other task of the mesh (their tids on stdin, one JSON line):
# n rounds of one message to each (tag 5: its round and our tid, repeated to size bytes),
# taking what comes in between; then tag 6 to each; then it reads the tids that were
# killed (a second JSON line) and takes messages until every other peer's tag 6 came
# (none for QUIET s: it gives up); prints {src: [rounds in order received]} and the
# messages that were not as sent
MESH = r'''
import json, sys, time, shmd
from shmd.errors import PvmError, PvmNoTask, PvmTimeout
n, size, quiet = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
def body(k, src):
    return (k.to_bytes(4, "little") + src.to_bytes(4, "little")) * (size // 8)
with shmd.join(name="mesh") as me:
    print(me.tid, flush=True)
    peers = [p for p in json.loads(sys.stdin.readline()) if p != me.tid]
    got, bad, done = {}, [], set()
    def take(wait):
        """One message (False if none came within wait s)."""
        try:
            m = me.precv(timeout=wait)
        except PvmTimeout:
            return False
        if m.tag == 6:
            done.add(m.src)
        else:
            k = int.from_bytes(m.data[:4], "little")
            if bytes(m.data) != body(k, m.src):
                bad.append([m.src, k])
            got.setdefault(m.src, []).append(k)
        return True
    def send(p, data):
        """psend, taking our own messages while p's inbox stays full: p may be waiting
        for room in ours (every task sends before it receives; two or three of them
        could otherwise wait on each other in a ring). A psend that times out sent
        nothing, so it is tried again."""
        end = time.monotonic() + 60
        while True:
            try:
                return me.psend(p, 5, data, timeout=0.25)
            except PvmTimeout:
                if time.monotonic() > end:
                    raise
                while take(0):
                    pass
    live = list(peers)
    for k in range(n):
        for p in list(live):
            try:
                send(p, body(k, me.tid))
            except PvmError as e:
                if e.code != PvmNoTask:
                    raise
                live.remove(p)  # a task of this host that died (one of another host: dropped there)
        while take(0):
            pass
    for p in live:
        try:
            me.psend(p, 6, b"", timeout=20)
        except PvmError:
            pass
    dead = set(json.loads(sys.stdin.readline()))
    while not set(peers) - dead <= done and take(quiet):
        pass
    print(json.dumps({"got": got, "bad": bad}), flush=True)
'''


def test_chaos_three_hosts_kill_nine(shmd_vm):
    """Two tasks on each of three hosts stream to every other task while two of them, on
    different hosts, are killed -9 at a random moment: every message from a live sender
    to a live receiver arrives once, in order, intact; a dead sender's are a prefix; no
    page stays in use on any host once the tasks are gone."""
    import random

    vm, keys = shmd_vm, zmq.curve_keypair()
    vmids = [vm.vmid, vm.vmid + "b", vm.vmid + "c"]
    ports: list[int] = []
    netds: list[int] = []
    procs: list[tuple[subprocess.Popen, int, int]] = []  # (process, tid, host)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    n, size = 150, 2000  # (inline in the inboxes: no task waits for pages others hold)
    try:
        for h, v in enumerate(vmids, 1):
            vm.start(f"-host={h}", vmid=v, small=False)
            port, pid = start_netd(vm, v, h, keys, [[k + 1, "127.0.0.1", p] for k, p in enumerate(ports)])
            ports.append(port)
            netds.append(pid)
        for v in vmids:
            wait_for(lambda v=v: sum(remote.route(v)["hosts"].values()) == 2, what=f"every host up at {v}")
        for h, v in enumerate(vmids, 1):
            for _ in range(2):
                p = subprocess.Popen([sys.executable, "-c", MESH, str(n), str(size), "60"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=vm.env(v))
                procs.append((p, int(p.stdout.readline()), h))
        everyone = json.dumps([t for _, t, _ in procs]) + "\n"
        for p, _, _ in procs:
            p.stdin.write(everyone)
            p.stdin.flush()
        time.sleep(rng.uniform(0.3, 1.5))
        doomed = [rng.choice([x for x in procs if x[2] == h]) for h in rng.sample([1, 2, 3], 2)]
        for p, _, _ in doomed:
            p.kill()
            p.wait(10)
        dead = {t for _, t, _ in doomed}
        for p, me, _ in procs:
            if me not in dead:
                p.stdin.write(json.dumps(sorted(dead)) + "\n")
                p.stdin.flush()
        for p, me, _ in procs:
            if me in dead:
                continue
            out, _ = p.communicate(timeout=180)
            assert p.returncode == 0, f"seed {seed}: t{me:x} exited {p.returncode}"
            r = json.loads(out.splitlines()[-1])
            got = {int(s): ks for s, ks in r["got"].items()}
            assert r["bad"] == [], f"seed {seed}: t{me:x} got changed messages {r['bad'][:5]}"
            for _, src, _ in procs:
                if src == me:
                    continue
                ks = got.get(src, [])
                want = list(range(n)) if src not in dead else list(range(len(ks)))
                assert ks == want, (f"seed {seed}: t{me:x} from t{src:x}: {ks[:10]}... ({len(ks)} of {n}); killed "
                                    f"{sorted(map(tids.fmt, dead))}")
    finally:
        for p, _, _ in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        for pid in netds:
            os.kill(pid, signal.SIGTERM)
        for pid in netds:
            wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}") or _zombie(pid), what=f"netd {pid} gone")
    for v in vmids:
        wait_for(lambda v=v: _pages_free(vm, v), 10, f"every page of {v} free")

"""No request can kill or stall pvm_shmd: hostile and faulty clients on its socket, with a
real daemon and real task processes (issue: a daemon that no request can kill)."""
from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time

from daemons import PVM_SHMD, SMALL, shmd_vm, wait_for  # noqa: F401

from shmd import control, handshake, ipc

REQUEST_TIMEOUT = 10.0


def connect(vm) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(REQUEST_TIMEOUT)
    s.connect(control.daemon_info(vm.vmid)["sock"])
    return s


def ask(s: socket.socket, raw: bytes) -> dict:
    s.sendall(raw)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        assert chunk, "the daemon closed the connection"
        buf += chunk
    return json.loads(buf)


def test_garbage_requests_get_an_error_and_the_daemon_serves_on(shmd_vm, monkeypatch):
    vm = shmd_vm
    monkeypatch.setenv("PVM_VMID", vm.vmid)
    ready = vm.start()
    s = connect(vm)
    for raw in (b"[" * 1000, b"[" * 60000, b'{"op": ' + b"[" * 5000, b"\xff\xfe", b"null",
                b'"op"', b'{"op": 5}', b'{"op": "join", "pid": "x"}',
b'{"op": "' + b"z" * 1000 + b'"}'):
        r = ask(s, raw + b"\n")
        assert "error" in r and isinstance(r.get("code"), int), (raw[:40], r)
        assert len(r["error"]) < 200
    assert ask(s, b'{"op": "ping"}\n') == {"pid": ready["pid"]}
    s.close()
    # a line with no end, longer than any request: that client goes, the daemon stays
    s = connect(vm)
    try:
        s.sendall(b"x" * (1 << 20))
    except OSError:
        pass  # the daemon may close as soon as it has seen enough
    s.close()
    assert control.request("ping", vm.vmid)["pid"] == ready["pid"]
    assert vm.stat()["pid"] == ready["pid"]


def test_a_join_cannot_claim_another_process(shmd_vm, monkeypatch):
    vm = shmd_vm
    monkeypatch.setenv("PVM_VMID", vm.vmid)
    vm.start()
    # a process that is not ours to enrol (a parent may enrol its own child): a grandchild,
    # its parent kept alive (an orphan's parent could be us, as init of a PID namespace)
    sh = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE,
                          text=True)
    bystander = int(sh.stdout.readline())
    assert ipc.parent_pid(bystander) == sh.pid != os.getpid()
    try:
        c = control.connect(vm.vmid)
        try:
            r = None
            try:
                r = c.request("join", pid=bystander, name="victim")
            except Exception as e:  # PvmError(PvmDenied)
                assert "not a child of the requesting process" in str(e), e
            assert r is None
        finally:
            c.close()
        assert not [t for t in vm.stat()["tasks"] if t["pid"] == bystander]
    finally:
        os.kill(bystander, signal.SIGKILL)
        sh.wait(10)
        sh.stdout.close()


FLOOD = r'''
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.setblocking(False)
op, batch = (sys.argv[3], int(sys.argv[4])) if len(sys.argv) > 3 else ("stat", 64)
req = json.dumps({"op": op}).encode() + b"\n"
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:  # requests as fast as it can, never reading a reply
    try:
        s.send(req * batch)
    except BlockingIOError:
        time.sleep(0.0005)
'''


def test_reaping_and_joins_keep_their_latency_under_a_flood(shmd_vm, monkeypatch):
    """300 idle connections and 5 clients flooding requests without reading the replies:
    a killed task is still reaped, and a join still answered, in well under a second
    (before, reaping took 10 s and joins timed out)."""
    vm = shmd_vm
    monkeypatch.setenv("PVM_VMID", vm.vmid)
    vm.start()
    sock = control.daemon_info(vm.vmid)["sock"]
    idle = []
    for _ in range(300):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock)
        idle.append(s)
    flooders = [subprocess.Popen([sys.executable, "-c", FLOOD, sock, "20"]) for _ in range(5)]
    try:
        time.sleep(1.0)  # the flood is on, the daemon's replies pile up unread
        reaped, joined = [], []
        for _ in range(3):
            t = vm.task(name="victim")
            slot_tid = t.tid
            t0 = time.monotonic()
            t.kill(signal.SIGKILL)
            wait_for(lambda tid=slot_tid: tid not in [x["tid"] for x in
                                                     control.request("stat", vm.vmid)["tasks"]],
                     timeout=10, what="the killed task reaped", step=0.002)
            reaped.append(time.monotonic() - t0)
            t0 = time.monotonic()
            c = control.connect(vm.vmid, timeout=REQUEST_TIMEOUT)
            try:
                c.request("join", name="j")
                joined.append(time.monotonic() - t0)
                c.request("leave")
            finally:
                c.close()
        print(f"under the flood: reaped in {[round(x * 1000) for x in reaped]} ms, "
              f"joined in {[round(x * 1000) for x in joined]} ms")
        # the bound is far from both the old figure (10 s) and the normal one (~15 ms)
        assert max(reaped) < 1.0 and max(joined) < 1.0, (reaped, joined)
        assert all(p.poll() is None for p in flooders)  # not merely dropped
    finally:
        for p in flooders:
            p.kill()
            p.wait()
        for s in idle:
            s.close()
    assert vm.stat()["tasks"] == []
    assert ipc.alive(*vm.daemons[0])


def test_more_connections_than_descriptors_neither_spins_nor_blocks_joins(shmd_vm, monkeypatch):
    """With a descriptor limit of 80 and 300 connections open, the daemon closes idle
    ones to make room instead of spinning on accept (before: 100 % CPU, joins timed out)."""
    vm = shmd_vm
    monkeypatch.setenv("PVM_VMID", vm.vmid)
    r = subprocess.run([PVM_SHMD, *SMALL], capture_output=True, text=True, timeout=30, env=vm.env(),
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (80, 80)))
    assert r.returncode == 0, r.stderr
    pid = handshake.parse(r.stdout)["pid"]
    vm.daemons.append((pid, ipc.process_start(pid)))

    def cpu_seconds() -> float:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    sock = control.daemon_info(vm.vmid)["sock"]
    idle = []
    try:
        for _ in range(300):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sock)
            idle.append(s)
        c0, t0 = cpu_seconds(), time.monotonic()
        time.sleep(2.0)
        busy = (cpu_seconds() - c0) / (time.monotonic() - t0)
        t0 = time.monotonic()
        c = control.connect(vm.vmid, timeout=REQUEST_TIMEOUT)
        try:
            c.request("join", name="j")
            joined = time.monotonic() - t0
            c.request("leave")
        finally:
            c.close()
        print(f"fd limit 80, 300 connections: daemon CPU {busy:.0%}, join {joined * 1000:.0f} ms")
        assert busy < 0.5 and joined < 1.0, (busy, joined)
    finally:
        for s in idle:
            s.close()





def test_a_client_sending_faster_than_it_is_served_does_not_grow_the_daemon(shmd_vm, monkeypatch):
    vm = shmd_vm
    monkeypatch.setenv("PVM_VMID", vm.vmid)
    ready = vm.start()

    def rss_kib() -> int:
        with open(f"/proc/{ready['pid']}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    before = rss_kib()
    sock = control.daemon_info(vm.vmid)["sock"]
    flooder = subprocess.Popen([sys.executable, "-c", FLOOD, sock, "3", "ping", "512"])
    try:
        time.sleep(3.5)
        grown = rss_kib() - before
        assert control.request("ping", vm.vmid)["pid"] == ready["pid"]
    finally:
        flooder.kill()
        flooder.wait()
    print(f"daemon RSS grew {grown} KiB under a ping flood")
    assert grown < 32 * 1024, grown  # bounded buffers: a few hundred KiB, not the flood

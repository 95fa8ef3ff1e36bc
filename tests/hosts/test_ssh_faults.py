"""SSH failures in words, and timed-out commands that leave nothing running (issue #11,
item 12): real TCP listeners that never answer or reset, real paramiko; in the lab, real
sshd and real daemons."""
from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from consoles import PVM, TIMEOUT, pvm, vm  # noqa: F401 (vm: fixture)
from lab_probe import running_lab

from pvmconsole import lab as labmod
from pvmconsole.runner import LocalRunner
from pvmconsole.ssh import SshError, SshRunner
from shmd.errors import PvmCantStart

pytestmark = pytest.mark.lab  # real sshd servers, lab hosts or namespaces (root)


@contextmanager
def listener(mode: str) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts and then: "silent" never answers; "reset"
    reads the client's banner and resets the connection; "close" reads it and closes.
    Yields the port; every socket is closed afterwards."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    ls.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                c, _ = ls.accept()
            except (TimeoutError, OSError):
                continue
            held.append(c)
            if mode == "silent":
                continue
            c.settimeout(5)
            try:
                c.recv(256)  # the client's "SSH-2.0-..." line: the exchange has begun
            except OSError:
                pass
            if mode == "reset":  # SO_LINGER 0: close sends RST
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield ls.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        for c in held:
            c.close()
        ls.close()


def ssh_config(tmp_path, name: str, port: int, extra: str = "") -> str:
    path = tmp_path / f"ssh_config_{name}"
    path.write_text(f"Host {name}\n    HostName 127.0.0.1\n    Port {port}\n    User root\n{extra}")
    return str(path)


def test_host_that_never_answers_reports_a_timeout_and_how_long(tmp_path):
    with listener("silent") as port:
        r = SshRunner("silent", config=ssh_config(tmp_path, "silent", port, "    ConnectTimeout 1\n"))
        t = time.monotonic()
        with pytest.raises(SshError) as e:
            r.run(["true"], timeout=30)
        took = time.monotonic() - t
        r.close()
    msg = str(e.value)
    assert e.value.code == PvmCantStart
    assert f"silent: SSH handshake with 127.0.0.1:{port} timed out after 1 s: no SSH banner came" in msg, msg
    assert "ConnectTimeout" in msg and "\n" not in msg  # what to do, on one line
    assert 0.9 < took < 3, took
    print(f"silent host: reported after {took:.2f} s")


def test_command_deadline_shorter_than_connect_timeout_is_the_one_reported(tmp_path):
    """The limit reported is the one that ran out (the review saw 'No existing session'
    when the command's deadline and paramiko's banner wait raced)."""
    with listener("silent") as port:
        r = SshRunner("slow", config=ssh_config(tmp_path, "slow", port))  # ConnectTimeout 10
        with pytest.raises(SshError) as e:
            r.run(["true"], timeout=1.5)
        r.close()
    assert "slow: SSH handshake with" in str(e.value) and "timed out after 1.5 s" in str(e.value), e.value
    assert "No existing session" not in str(e.value)


@pytest.mark.parametrize("mode,words", [
    ("reset", "connection reset by peer (127.0.0.1:{port}) during the SSH banner exchange"),
    ("close", "127.0.0.1:{port} closed the connection during the SSH banner exchange"),
])
def test_reset_or_closed_connection_is_said_in_words(tmp_path, mode, words):
    with listener(mode) as port:
        r = SshRunner(mode, config=ssh_config(tmp_path, mode, port))
        t = time.monotonic()
        with pytest.raises(SshError) as e:
            r.run(["true"], timeout=30)
        took = time.monotonic() - t
        r.close()
    msg = str(e.value)
    assert f"{mode}: " + words.format(port=port) in msg, msg
    assert "[Errno" not in msg and "banner[" not in msg and "its log on" in msg
    assert took < 3


def test_console_add_of_a_silent_host_says_it_timed_out(vm, tmp_path, monkeypatch):
    with listener("silent") as port:
        monkeypatch.setenv("PVM_SSH_CONFIG", ssh_config(tmp_path, "silent", port, "    ConnectTimeout 1\n"))
        r = pvm("--norc", "-e", "add silent")
    assert r.returncode == 1
    assert r.stderr.startswith("-e:1: add: silent: Can't start pvmd (silent: SSH handshake with "
                               f"127.0.0.1:{port} timed out after 1 s: "), r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert pvm("--norc", "-e", "halt").returncode == 0


# -- timed-out commands leave nothing behind -------------------------------------------------
def procs_with(marker: str) -> list[str]:
    """Command lines (seen from here: lab hosts' processes too) that contain *marker*."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def wait_gone(marker: str, within: float = 3.0) -> list[str]:
    deadline = time.monotonic() + within
    while (left := procs_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_local_timeout_stops_the_program_and_its_children(tmp_path):
    sleeper = str(tmp_path / "fault-sleep-local")
    shutil.copy("/bin/sleep", sleeper)
    try:
        t = time.monotonic()
        res = LocalRunner().run(["sh", "-c", f"{sleeper} 300 & {sleeper} 301"], timeout=0.5)
        took = time.monotonic() - t
        assert res.rc == 124 and "timed out after 0.5 s" in res.stderr
        assert took < 3
        assert wait_gone(sleeper, 1.0) == []
    finally:
        for line in procs_with(sleeper):  # only ours: the marker is this test's own file
            os.kill(int(line.split(":")[0]), 9)


@pytest.fixture(scope="module")
def lab():
    with running_lab("f", 1) as lab:
        yield lab


def test_ssh_timeout_kills_the_remote_process_group(lab):
    sleeper = os.path.join(lab.dir, "fault-sleep-ssh")
    shutil.copy("/bin/sleep", sleeper)
    r = SshRunner("pvmh1", config=lab.ssh_config)
    try:
        t = time.monotonic()
        res = r.run(["sh", "-c", f"{sleeper} 300 & {sleeper} 301"], timeout=1)
        took = time.monotonic() - t
        assert res.rc == 124, res
        assert res.stderr.endswith("pvmh1: sh timed out after 1 s; stopped it and what it started there\n"), res.stderr
        assert "pvm-console-pid" not in res.stderr
        assert wait_gone(sleeper, 1.0) == []
        assert took < 4, took
        print(f"ssh timeout of 1 s plus the remote kill: {took:.2f} s")
        ok = r.run(["sh", "-c", "echo out; echo err >&2"], timeout=10)  # the pid line is not output
        assert (ok.rc, ok.stdout, ok.stderr) == (0, "out\n", "err\n")
    finally:
        r.close()


def test_add_that_times_out_leaves_nothing_running_on_the_host(lab, pvm_env, tmp_path):
    """A pvm_shmd whose start never finishes: the real daemon comes up (detached, in a
    session of its own), then the starter hangs with a child. The console gives up after
    PVM_START_TIMEOUT and must stop all three there."""
    vmid = pvm_env["vmid"]
    hang = os.path.join(lab.dir, f"hang-{vmid}")
    os.mkdir(hang)
    real = labmod.local_program("pvm_shmd")
    os.symlink(labmod.local_program("pvm_shmd_stat"), os.path.join(hang, "pvm_shmd_stat"))
    shutil.copy("/bin/sleep", os.path.join(hang, "fault-sleep"))
    with open(os.path.join(hang, "pvm_shmd"), "w") as f:
        f.write(f'#!/bin/sh\n{real} "$@" >/dev/null 2>&1\n"{hang}/fault-sleep" 300 &\nwait\n')
    os.chmod(os.path.join(hang, "pvm_shmd"), 0o755)
    env = dict(os.environ, PVM_SSH_CONFIG=lab.ssh_config, HOME=str(tmp_path), PVM_START_TIMEOUT="2")
    try:
        t = time.monotonic()
        r = subprocess.run([PVM, "--norc", "-e", f"add 'pvmh1 dx={hang}/pvm_shmd'"], env=env,
                           capture_output=True, text=True, timeout=TIMEOUT)
        took = time.monotonic() - t
        assert r.returncode == 1
        assert r.stderr.startswith("-e:1: add: pvmh1: Can't start pvmd (pvmh1: "
                                   f"{hang}/pvm_shmd timed out after 2 s; stopped it and what it "
                                   "started there; the pvm_shmd it had started is stopped too)"), r.stderr
        assert wait_gone(hang) == []  # the starter and its child
        assert wait_gone(f"-vmid={vmid} -host=2") == []  # the daemon it had started
        assert took < 15, took
        print(f"add with PVM_START_TIMEOUT=2, cleanup included: {took:.2f} s")
    finally:
        subprocess.run([PVM, "--norc", "-e", "halt"], env=env, capture_output=True, timeout=TIMEOUT)
        left = procs_with(f"-vmid={vmid} ")  # this test's VM id only: nothing else is touched
        for line in left:
            os.kill(int(line.split(":")[0]), 15)  # a daemon's TERM removes its IPC objects
        assert left == [], f"daemons of the test's VM left running: {left}"

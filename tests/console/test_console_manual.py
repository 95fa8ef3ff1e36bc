"""so=ms (manual start-up): the console prints the pvm_shmd command line, the user
starts it on the host and types its ready line back (here: a real daemon in a
private IPC namespace, its line fed through the console's stdin)."""
from __future__ import annotations

import io
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
from conftest import BIN, need_namespace

from pvmconsole import hostlink
from shmd.errors import PvmCantStart, PvmError

PVM = os.path.join(BIN, "pvm")
SHMD = os.path.join(BIN, "pvm_shmd")
SHMD_STAT = os.path.join(BIN, "pvm_shmd_stat")
TIMEOUT = 90
HAND = "127.0.0.2"  # not is_local(): a "remote" host whose daemon we start by hand


@pytest.fixture
def vm(pvm_env, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PVM_SHMD_OPTS", "-maxpages=64 -maxsegs=2")
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"{HAND} so=ms dx={SHMD}\n")
    table = os.path.join(pvm_env["state"], f"pvmd.{os.getuid()}.{pvm_env['vmid']}")
    yield {**pvm_env, "home": str(home), "hostfile": str(hostfile)}
    if os.path.exists(table):
        subprocess.run([PVM, "--norc", "-e", "halt"], capture_output=True, timeout=TIMEOUT)
    subprocess.run([SHMD_STAT, "--stop"], capture_output=True, timeout=TIMEOUT)


def _stop_hand_daemon(pid: int, private_tmp: str) -> None:
    """Stop the daemon started in its own IPC namespace; wait until it is gone."""
    subprocess.run(["nsenter", f"--target={pid}", "--ipc", "--", "env", f"PVM_TMP={private_tmp}",
                    SHMD_STAT, "--stop"], capture_output=True, timeout=TIMEOUT)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    if os.path.exists(f"/proc/{pid}"):
        os.kill(pid, signal.SIGKILL)


def test_manual_host_joins_with_typed_ready_line(vm, tmp_path):
    need_namespace("starting a second pvm_shmd of the same VM id")
    private = tmp_path / "hand"
    private.mkdir()
    p = subprocess.Popen([PVM, "--norc", "-k", vm["hostfile"]], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hand_pid = None
    try:
        assert p.stderr.readline() == "*** Manual startup ***\n"
        assert p.stderr.readline() == f'Login to "{HAND}" and type:\n'
        argv = shlex.split(p.stderr.readline())
        assert argv == [SHMD, f"-vmid={vm['vmid']}", "-host=2", f"-name={HAND}",
                        "-maxpages=64", "-maxsegs=2"]
        r = subprocess.run(["unshare", "--ipc", "--", "env", f"PVM_TMP={private}", *argv],
                           capture_output=True, text=True, timeout=TIMEOUT)
        assert r.returncode == 0, r.stderr
        ready = next(ln for ln in r.stdout.splitlines() if ln.startswith("ddpro<"))
        hand_pid = int(ready.split("pid<")[1].split(">")[0])
        out, err = p.communicate(f"{ready}\nconf\nmstat {HAND}\nhalt\n", timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if hand_pid is not None:
            _stop_hand_daemon(hand_pid, str(private))
    lines = out.splitlines()
    assert "2 hosts, 1 data format" in lines
    row = next(ln for ln in lines if ln.split()[:1] == [HAND])
    assert row.split()[1:] == ["80000", "LINUX64", "1000", "0x00408c41"]
    assert err.startswith("Type response: \nThanks\n") or err.startswith("\nThanks\n"), err
    # Not reachable over SSH here: later commands say so in one line; halt still ends.
    hint = f"{HAND}: Host failed (started by hand (so=ms): stop it there with pvm_shmd_stat --stop ("
    assert f"stdin:2: mstat: {hint}" in err
    assert f"stdin:3: halt: {hint}" in err
    assert p.returncode == 1  # halt reports the host it could not stop
    assert not os.path.exists(os.path.join(vm["state"], f"pvmd.{os.getuid()}.{vm['vmid']}"))


def test_garbled_response_fails_that_host_only(vm):
    r = subprocess.run([PVM, "--norc", vm["hostfile"]], input="not a ready line\nconf\nhalt\n",
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert "1 host, 1 data format" in r.stdout.splitlines()
    errs = [ln for ln in r.stderr.splitlines() if "Can't start pvmd" in ln]
    assert errs == [f"pvm: {HAND}: Can't start pvmd: so=ms: not a pvm_shmd handshake line: "
                    "'not a ready line'"]


def test_add_at_end_of_input_fails_and_console_goes_on(vm):
    r = subprocess.run([PVM, "--norc", "-k", "-e", f"add '{HAND} so=ms dx=/x/pvm_shmd'; conf"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 1
    assert "*** Manual startup ***" in r.stderr
    assert f"/x/pvm_shmd -vmid={vm['vmid']} -host=2 -name={HAND}" in r.stderr
    assert f"{HAND}: Can't start pvmd (so=ms: end of input, no response)" in r.stderr
    assert "1 host, 1 data format" in r.stdout  # conf still ran
    subprocess.run([PVM, "--norc", "-e", "halt"], capture_output=True, timeout=TIMEOUT)


def test_dialogue_times_out(monkeypatch):
    rfd, wfd = os.pipe()
    stdin = os.fdopen(rfd)
    monkeypatch.setattr(sys, "stdin", stdin)
    err = io.StringIO()
    try:
        with pytest.raises(PvmError) as e:
            hostlink.manual_dialogue("h1", ["pvm_shmd", "-name=h 1"], timeout=0.2, err=lambda: err)
        assert e.value.code == PvmCantStart and "no response within 0.2 s" in e.value.detail
        assert "pvm_shmd '-name=h 1'\nType response: " in err.getvalue()
    finally:
        os.write(wfd, b"\n")  # release the pending reader
        os.close(wfd)
        q = hostlink._pending_read
        if q is not None:
            q.get(timeout=5)
        hostlink._pending_read = None
        stdin.close()

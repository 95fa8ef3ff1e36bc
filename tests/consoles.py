"""Driving the real `pvm` console from tests (no tests here): a one-host VM in batches
(the ``vm`` fixture, ``pvm()``), and an interactive console on a pipe (``Console``) with
the task program the task tests spawn. Used by the console, task and host tests.
"""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import BIN, sysv_objects

PVM = os.path.join(BIN, "pvm")
SHMD_STAT = os.path.join(BIN, "pvm_shmd_stat")
ME = socket.gethostname()
TIMEOUT = 90
PROMPT = "pvm>"  # prompt_toolkit draws the trailing blank as a cursor move
CPR_REQUEST = "\x1b[6n"  # prompt_toolkit asks where the cursor is; a terminal answers


@pytest.fixture
def vm(pvm_env, tmp_path, monkeypatch):
    """A private VM id, PVM_TMP and HOME; small segments; every daemon stopped after."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PVM_SHMD_OPTS", "-maxpages=64 -maxsegs=2")
    table = os.path.join(pvm_env["state"], f"pvmd.{os.getuid()}.{pvm_env['vmid']}")
    env = {**pvm_env, "home": str(home), "table": table}
    yield env
    if os.path.exists(env["table"]):
        subprocess.run([PVM, "--norc", "-e", "halt"], capture_output=True, timeout=TIMEOUT)
    subprocess.run([SHMD_STAT, "--stop"], capture_output=True, timeout=TIMEOUT)  # belt and braces


def pvm(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PVM, *args], input=input, capture_output=True, text=True, timeout=TIMEOUT)


def daemon_state() -> dict:
    r = subprocess.run([SHMD_STAT, "--json"], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is not alive
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def shm_ids() -> set[int]:
    return {i for kind, i in sysv_objects() if kind == "shm"}


JOB_LINE = re.compile(r"^\[\d+(:t[0-9a-f]+\] |\] finished$)")

TASK_PROG = textwrap.dedent('''\
    """A test task: joins, says ready, optionally holds pages, answers SIGUSR1, waits."""
    import os, signal, sys, time
    import shmd
    me = shmd.join()
    mode, secs = sys.argv[1], float(sys.argv[2])
    if "hold" in mode:  # a message to ourselves, never received: pages held in the daemon
        me.psend(me.tid, 5, b"x" * 40000)
    if "noterm" in mode:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, lambda s, f: print(f"got signal {s}", flush=True))
    print(f"ready t{me.tid:x} pid {os.getpid()} parent {os.environ.get('PVM_PARENT')} "
          f"cwd {os.getcwd()}", flush=True)
    print("a line on stderr", file=sys.stderr, flush=True)
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        time.sleep(0.05)
    print("bye", flush=True)
''')


# ---- per-VM hygiene (the machine-wide check is conftest's) ------------------------------
def vm_procs(vmid: str) -> list[int]:
    """Live processes of this machine whose environment carries PVM_VMID=vmid."""
    mark = f"PVM_VMID={vmid}".encode()
    found = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        if int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{d}/stat", "rb") as f:
                st = f.read()
        except OSError:
            continue
        if mark in env and st[st.rindex(b")") + 2:][:1] not in (b"Z", b"X"):
            found.append(int(d))
    return found


def sysv_ids(tmp: str, vmid: str) -> set[tuple[str, int]]:
    """The SysV objects our daemon recorded it made (its .ipc registry in *tmp*, the
    private state directory)."""
    path = os.path.join(tmp, f"pvm_shmd.{os.getuid()}.{vmid}.ipc")
    try:
        with open(path) as f:
            return {(k, int(i)) for k, i, _ in json.load(f)}
    except (OSError, ValueError):
        return set()


def sysv_exist(ids: set[tuple[str, int]]) -> set[tuple[str, int]]:
    now = set()
    for kind in ("shm", "sem"):
        with open(f"/proc/sysvipc/{kind}") as f:
            next(f)
            now |= {(kind, int(line.split()[1])) for line in f}
    return ids & now


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


# ---- a console driven line by line -------------------------------------------------------------
class Console:
    """`pvm --norc -k [hostfile]` reading commands from a pipe; output (stdout and stderr
    merged, in order) collected by a thread."""

    def __init__(self, env: dict, cwd: str, hostfile: str | None = None):
        self.p = subprocess.Popen([PVM, "--norc", "-k", *([hostfile] if hostfile else [])],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._n = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.p.stdout:  # type: ignore[union-attr]
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def _next(self, deadline: float) -> str | None:
        line = self._q.get(timeout=max(0.01, deadline - time.monotonic()))
        if line is not None:
            self.lines.append(line)
        return line

    def expect(self, pattern: str, timeout: float = 30) -> re.Match:
        """Wait for a line (from now on) matching *pattern*."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        try:
            while True:
                line = self._next(deadline)
                if line is None:
                    raise AssertionError(f"console ended before {pattern!r}:\n" + "\n".join(self.lines))
                m = rx.search(line)
                if m:
                    return m
        except queue.Empty:
            raise AssertionError(f"no {pattern!r} within {timeout:g} s:\n" + "\n".join(self.lines)) from None

    def seen(self, pattern: str, timeout: float = 30) -> re.Match:
        """Wait until some line, earlier or later, matches *pattern* (job output comes
        in any order)."""
        rx = re.compile(pattern)
        for line in self.lines:
            m = rx.search(line)
            if m:
                return m
        return self.expect(pattern, timeout)

    def send(self, line: str) -> None:
        self.p.stdin.write(line + "\n")  # type: ignore[union-attr]
        self.p.stdin.flush()  # type: ignore[union-attr]

    def cmd(self, line: str, timeout: float = 30) -> list[str]:
        """Run one command; its output lines (job output that came meanwhile left out:
        see lines/seen())."""
        self._n += 1
        mark = f"__done{self._n}__"
        self.send(line)
        self.send(f"echo {mark}")
        self.expect("^" + re.escape(f"pvm> {line}") + "$", timeout)
        start = len(self.lines)
        self.expect("^" + re.escape(mark) + "$", timeout)
        return [ln for ln in self.lines[start:-1] if ln != f"pvm> echo {mark}"
                and not JOB_LINE.match(ln)]

    def close(self, timeout: float = 60) -> int:
        try:
            self.p.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise
        deadline = time.monotonic() + 5
        try:
            while self._next(deadline) is not None:
                pass
        except queue.Empty:
            pass
        return rc


def task_rows(lines: list[str]) -> list[list[str]]:
    return [ln.split() for ln in lines if re.match(r"^\s+\S+\s+(\(cons\)|[0-9a-f]+)\s", ln)
            and "HOST" not in ln]

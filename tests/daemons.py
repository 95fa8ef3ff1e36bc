"""The one daemon harness of the tests (no tests here): start real pvm_shmd daemons, drive
real task processes, read /proc/sysvipc, and clean up everything even when a test fails.
conftest's ``daemon`` fixture is a VM of this module with one daemon started.

Import the ``shmd_vm`` fixture from here: ``from daemons import shmd_vm``.
"""
from __future__ import annotations

import json
import os
import resource
import select
import signal
import subprocess
import sys
import time

import pytest
import sysv_ipc
from conftest import BIN

from shmd import handshake, ipc, layout, paths, private
from shmd.resources import leftovers

PVM_SHMD = os.path.join(BIN, "pvm_shmd")
STAT = os.path.join(BIN, "pvm_shmd_stat")
IPCFREE = os.path.join(BIN, "ipcfree")
SMALL = ["-maxpages=64", "-maxsegs=2"]
TIMEOUT = 30.0

# A task process: one JSON command per stdin line, one JSON reply per stdout line.
CHILD = r'''
import json, os, random, signal, sys, time
import shmd
from shmd import layout
t = None
held = []
def reply(r):
    sys.stdout.write(json.dumps(r) + "\n"); sys.stdout.flush()
reply({"pid": os.getpid()})
for line in sys.stdin:
    c = json.loads(line); op = c["op"]
    try:
        if op == "join":
            t = shmd.join(name=c.get("name"), spin=False)
            r = {"tid": t.tid, "slot": t._slot}
        elif op == "alloc":  # a sender that allocated pages and has not handed them over
            s, p = t._alloc(c["n"], time.monotonic() + c.get("timeout", 10))
            held.append((s, p))
            r = {"seg": s, "page": p}
        elif op == "free_all":
            for s, p in held:
                t._free(s, p)
            r = {"freed": len(held)}; held.clear()
        elif op == "churn":  # allocate and free at random, as many processes do at once
            rnd = random.Random(c.get("seed", 0)); mine = []; n = 0
            end = time.monotonic() + c.get("seconds", 1.0)
            while time.monotonic() < end or mine:
                if mine and (time.monotonic() >= end or len(mine) >= c.get("hold", 3)
                             or rnd.random() < 0.5):
                    t._free(*mine.pop(rnd.randrange(len(mine))))
                else:
                    mine.append(t._alloc(rnd.randint(1, c.get("max", 5)), time.monotonic() + 5))
                    n += 1
            while t._deferred:  # frees a lock held past FREE_WAIT put off (a loaded machine)
                t._free_deferred()
            r = {"allocs": n}
        elif op == "send":
            t.psend(c["dest"], c.get("tag", 1), bytes([c.get("byte", 7)]) * c["nbytes"],
                    timeout=c.get("timeout", 10))
            r = {}
        elif op == "recv":
            m = t.precv(c.get("src", -1), c.get("tag", -1), timeout=c.get("timeout", 10))
            r = {"src": m.src, "tag": m.tag, "n": len(m.data), "bytes": sorted(set(m.data))}
        elif op == "lockseg":  # take a segment's page-map semaphore and keep it
            r = {"ok": t._locks[c["seg"]].acquire(5.0)}
        elif op == "ignore_term":
            signal.signal(signal.SIGTERM, signal.SIG_IGN); r = {}
        elif op == "leave":
            t.leave(); r = {}
        elif op == "exit":
            reply({}); sys.exit(0)
        else:
            r = {"error": "unknown op " + op}
    except Exception as e:
        r = {"error": repr(e)}
    reply(r)
'''


def _no_core():
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class Child:
    """A real task process driven over pipes; every read has a deadline."""

    def __init__(self, env: dict[str, str]):
        self.p = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                  preexec_fn=_no_core)
        self._buf = b""
        self.pid = self.read()["pid"]
        self.tid = 0

    def read(self, timeout: float = TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.p.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"task pid {self.p.pid} did not answer in {timeout} s")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    err = self.p.stderr.read().decode(errors="replace") if self.p.poll() is not None else ""
                    raise EOFError(f"task pid {self.p.pid} exited ({self.p.returncode}): {err[-2000:]}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def send(self, op: str, **args) -> None:
        self.p.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        self.p.stdin.flush()

    def do(self, op: str, timeout: float = TIMEOUT, **args) -> dict:
        self.send(op, **args)
        r = self.read(timeout)
        assert "error" not in r, f"{op}: {r['error']}"
        return r

    def join(self, name: str = "t") -> int:
        self.tid = self.do("join", name=name)["tid"]
        return self.tid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.p.wait(timeout)

    def close(self) -> None:
        self.kill()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            try:
                f.close()
            except OSError:
                pass


def proc_alive(pid: int) -> bool:
    """Running and not a zombie."""
    return ipc.process_start(pid) is not None


def wait_for(cond, timeout: float = 10.0, what: str = "condition", step: float = 0.01):
    """Poll *cond* until it returns a true value or *timeout* passes (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def sysv_rows(kind: str) -> list[dict[str, int]]:
    return ipc.proc_table(kind)


def objects_by_creator(pid: int) -> set[tuple[str, int]]:
    """SysV segments whose creator pid is *pid* (semaphores record no creator)."""
    return {("shm", r["shmid"]) for r in sysv_rows("shm") if r["cpid"] == pid}


SHM_DEST = 0o1000  # perms bit of a segment removed while still attached


def perms(row: dict) -> int:
    """/proc/sysvipc prints perms in octal."""
    return int(str(row["perms"]), 8)


def exists(kind: str, iid: int) -> bool:
    """The object exists and was not removed (a removed segment that a process still
    has attached stays listed, marked SHM_DEST, until the last detach)."""
    col = ipc.ID_COLUMN[kind]
    return any(r[col] == iid and not (kind == "shm" and perms(r) & SHM_DEST)
               for r in sysv_rows(kind))


def listed(kind: str, iid: int) -> bool:
    col = ipc.ID_COLUMN[kind]
    return any(r[col] == iid for r in sysv_rows(kind))


def daemon_objects(vmid: str) -> set[tuple[str, int]]:
    """Every object the daemon of *vmid* records: segment 0 and what it names."""
    key = paths.seg0_key(vmid)
    row = next((r for r in sysv_rows("shm") if r["key"] & 0xFFFFFFFF == key
                and r["uid"] == os.getuid()), None)
    if row is None:
        return set()
    shm = sysv_ipc.attach(row["shmid"])
    buf = memoryview(shm)
    try:
        if bytes(buf[:8]) != layout.MAGIC:
            return {("shm", row["shmid"])}
        if layout.header(buf)["vmid"] != vmid:
            return set()  # another VM id whose key is the same (1 in 4095): not ours
        return leftovers(paths.daemon_files(vmid)["ipc"], buf) | {("shm", row["shmid"])}
    finally:
        buf.release()
        shm.detach()


def remove_vm_leftovers(vmid: str) -> set[tuple[str, int]]:
    """Remove what a daemon of *vmid* left (segment 0, what it and the registry name)."""
    objs = daemon_objects(vmid)
    try:
        objs |= leftovers(paths.daemon_files(vmid)["ipc"], None)
    except private.UnsafeState:
        pass  # a test made the private directory unusable: there is no registry of ours

    for kind, iid in objs:
        ipc.remove(kind, iid)
    return objs


class VM:
    """Daemons and task processes of one test; ``cleanup`` stops and removes them all."""

    def __init__(self, env: dict):
        self.vmid, self.tmp = env["vmid"], env["tmp"]
        self.state = os.path.join(self.tmp, f"pvm.{os.getuid()}")  # the private directory
        self.vmids = {self.vmid}
        self.daemons: list[tuple[int, int]] = []  # (pid, start ticks)
        self.children: list[Child] = []
        self.fg: list[subprocess.Popen] = []

    def files(self) -> list[str]:
        """The names in the private state directory ([] before it is made)."""
        try:
            return os.listdir(self.state)
        except FileNotFoundError:
            return []

    def env(self, vmid: str | None = None) -> dict[str, str]:
        return {**os.environ, "PVM_TMP": self.tmp, "PVM_VMID": vmid or self.vmid}

    def run(self, argv: list[str], vmid: str | None = None, timeout: float = TIMEOUT,
            env: dict | None = None) -> subprocess.CompletedProcess:
        if vmid:
            self.vmids.add(vmid)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=env or self.env(vmid))

    def start(self, *args: str, vmid: str | None = None, small: bool = True) -> dict:
        """Start a detached daemon; return its parsed ready line (must succeed)."""
        r = self.run([PVM_SHMD, *(SMALL if small else []), *args], vmid=vmid)
        assert r.returncode == 0, f"pvm_shmd exited {r.returncode}: {r.stderr}"
        lines = r.stdout.splitlines()
        assert len(lines) == 1, f"expected one ready line, got {r.stdout!r}"
        ready = handshake.parse(lines[0])
        self.daemons.append((ready["pid"], ipc.process_start(ready["pid"])))
        return ready

    def start_fg(self, *args: str, vmid: str | None = None) -> tuple[subprocess.Popen, dict]:
        """A daemon in the foreground (-foreground): our child; its ready line parsed."""
        if vmid:
            self.vmids.add(vmid)
        p = subprocess.Popen([PVM_SHMD, *SMALL, "-foreground", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=self.env(vmid), text=False)
        self.fg.append(p)
        line = read_line(p.stdout, TIMEOUT)
        ready = handshake.parse(line.decode())
        self.daemons.append((ready["pid"], ipc.process_start(ready["pid"])))
        return p, ready

    def stat(self, vmid: str | None = None) -> dict:
        r = self.run([STAT, "--json"], vmid=vmid)
        assert r.returncode == 0, f"pvm_shmd_stat --json exited {r.returncode}: {r.stderr}"
        return json.loads(r.stdout)

    def task(self, vmid: str | None = None, join: bool = True, name: str = "t") -> Child:
        c = Child(self.env(vmid))
        self.children.append(c)
        if join:
            c.join(name)
        return c

    # ---- the first daemon, as the message-passing tests see it ----------------------
    @property
    def pid(self) -> int:
        """The pid of the first daemon started."""
        return self.daemons[0][0]

    def alive(self) -> bool:
        return bool(self.daemons) and ipc.alive(*self.daemons[0])

    def wait_idle(self, timeout: float = 10.0, tasks: int = 0) -> dict:
        """Wait until *tasks* tasks remain and every page is free; return the state."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stat()
            free = all(s["free"] == s["pages"] for s in st["segments"])
            if free and len(st["tasks"]) == tasks or time.monotonic() > deadline:
                return st
            time.sleep(0.05)

    def stop(self) -> None:
        """TERM the first daemon (it removes every IPC object), as `pvm_shmd_stat --stop`."""
        if self.alive():
            r = self.run([STAT, "--stop", "--timeout=15"], timeout=30)
            assert r.returncode == 0, r.stderr

    def cleanup(self) -> None:
        for c in self.children:
            c.close()
        for pid, start in self.daemons:
            if ipc.alive(pid, start):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while any(ipc.alive(p, s) for p, s in self.daemons) and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid, start in self.daemons:
            if ipc.alive(pid, start):
                os.kill(pid, signal.SIGKILL)
        for p in self.fg:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
            for f in (p.stdout, p.stderr):
                f.close()
        old = os.environ.get("PVM_TMP")
        os.environ["PVM_TMP"] = self.tmp
        try:
            for vmid in self.vmids:
                remove_vm_leftovers(vmid)
        finally:
            if old is None:
                os.environ.pop("PVM_TMP", None)
            else:
                os.environ["PVM_TMP"] = old


def read_line(f, timeout: float) -> bytes:
    """One line from a pipe, or fail after *timeout* (no hang)."""
    fd, buf = f.fileno(), b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"no line within {timeout} s (got {buf!r})")
        ch = os.read(fd, 1)
        if not ch:
            raise EOFError(f"pipe closed (got {buf!r})")
        buf += ch
    return buf


def pages_free(st: dict) -> int:
    return sum(s["free"] for s in st["segments"])


def pages_total(st: dict) -> int:
    return sum(s["pages"] for s in st["segments"])


@pytest.fixture
def shmd_vm(pvm_env):
    vm = VM(pvm_env)
    yield vm
    vm.cleanup()

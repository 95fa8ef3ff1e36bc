"""Suite-wide fixtures and the machine-hygiene check.

The session fails if any test leaves a SysV object of this user behind
(/proc/sysvipc before vs after) or a project daemon running.
"""
from __future__ import annotations

import itertools
import os
import sys
import time

import pytest

BIN = os.path.dirname(sys.executable)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout
HELPERS = os.path.dirname(os.path.abspath(__file__))  # tests/: conftest and the helper modules
_counter = itertools.count()


def sysv_objects() -> set[tuple[str, int]]:
    """(kind, id) of every SysV object owned by this uid."""
    uid = os.getuid()
    found = set()
    for kind in ("shm", "sem", "msg"):
        with open(f"/proc/sysvipc/{kind}") as f:
            head = f.readline().split()
            iid, iuid = 1, head.index("uid")
            for line in f:
                cols = line.split()
                if int(cols[iuid]) == uid:
                    found.add((kind, int(cols[iid])))
    return found


def project_daemons() -> set[int]:
    """Pids of running pvm_shmd daemons (any VM id) of this uid."""
    pids = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            if os.stat(f"/proc/{d}").st_uid != os.getuid():
                continue
        except OSError:
            continue
        if any(w.endswith(b"pvm_shmd") or w == b"shmd.daemon" for w in cmd[:3]):
            pids.add(int(d))
    return pids


@pytest.fixture(scope="session", autouse=True)
def machine_left_as_found():
    """Fail the session when tests leak SysV objects or daemons. It only reports: on
    a machine shared with other work it must not remove what it did not make."""
    before_ipc, before_pids = sysv_objects(), project_daemons()
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked_ipc = sysv_objects() - before_ipc
        leaked_pids = project_daemons() - before_pids
        if not (leaked_ipc or leaked_pids) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not leaked_ipc, f"tests leaked SysV objects: {sorted(leaked_ipc)}"
    assert not leaked_pids, f"tests left daemons running: {sorted(leaked_pids)}"


@pytest.fixture
def pvm_env(tmp_path, monkeypatch):
    """A private PVM_TMP and a unique VM id for one test."""
    # VM ids share a segment-0 key 1 time in 4095 (paths.seg0_key): take one whose key no
    # segment of ours uses, so a test never meets (or cleans up) another VM's objects
    from shmd import ipc, paths

    used = {r["key"] & 0xFFFFFFFF for r in ipc.proc_table("shm") if r["uid"] == os.getuid()}
    vmid = f"t{os.getpid()}x{next(_counter)}"
    while paths.seg0_key(vmid) in used:
        vmid = f"t{os.getpid()}x{next(_counter)}"
    monkeypatch.setenv("PVM_TMP", str(tmp_path))
    monkeypatch.setenv("PVM_VMID", vmid)
    # every file of the VM lives in the private directory $PVM_TMP/pvm.<uid> (shmd/private.py)
    return {"tmp": str(tmp_path), "vmid": vmid, "state": str(tmp_path / f"pvm.{os.getuid()}")}


def need_root(what: str) -> None:
    """Skip (loudly, with the reason) when not root."""
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root (namespaces); run the suite as root to include it")


_refused: dict[str, str | None] = {}


def need_namespace(what: str, kind: str = "ipc") -> None:
    """Skip with the reason when not root, or when this machine refuses to make a
    namespace of *kind* (a container, a chroot): probed once per kind."""
    need_root(what)
    if kind not in _refused:
        import subprocess

        try:
            r = subprocess.run(["unshare", f"--{kind}", "true"], capture_output=True, text=True,
                               timeout=30)
            _refused[kind] = None if r.returncode == 0 else (r.stderr.strip() or f"exit {r.returncode}")
        except (OSError, subprocess.TimeoutExpired) as e:
            _refused[kind] = str(e)
    if _refused[kind]:
        pytest.skip(f"{what} needs a {kind} namespace, which this machine refuses: {_refused[kind]}")


@pytest.fixture
def daemon(pvm_env, request):
    """A pvm_shmd for one test (daemons.VM with one daemon started): (maxpages, maxsegs)
    by indirect parametrization, default (256, 2); stopped, and whatever it left removed,
    afterwards."""
    from daemons import VM

    maxpages, maxsegs = getattr(request, "param", (256, 2))
    vm = VM(pvm_env)
    vm.start(f"-maxpages={maxpages}", f"-maxsegs={maxsegs}", small=False)
    vm.maxpages, vm.maxsegs = maxpages, maxsegs
    yield vm
    vm.cleanup()


@pytest.fixture
def peers(daemon):
    """Helper processes that join the daemon and do what the test tells them."""
    from peers import Peers

    p = Peers()
    yield p
    p.close()

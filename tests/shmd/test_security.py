"""Another user on the same host attacks this user's virtual machine (issue: nobody else
gets in). Each attack is made for real by a second uid (tests/other_user.py, root only):
files planted in a shared PVM_TMP, links, locks, and SysV objects at our keys.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import tempfile

import pytest
import sysv_ipc
from conftest import BIN
from daemons import IPCFREE, PVM_SHMD, STAT, exists, shmd_vm  # noqa: F401
from other_user import other_user  # noqa: F401  (a fixture)

from shmd import control, ipc, layout, paths, private
from shmd.errors import PvmDenied, PvmError
from shmd.exits import StatExit

pytestmark = pytest.mark.root  # acts as a second user (setuid)

PVM = os.path.join(BIN, "pvm")
UID = os.getuid()


@pytest.fixture
def shared(shmd_vm, monkeypatch):
    """PVM_TMP is a shared sticky directory, as /tmp (the default) is; in a directory the
    other user can reach (a test's tmp_path is under a 0700 one)."""
    base = tempfile.mkdtemp(prefix="pvm-shared-")
    os.chmod(base, 0o755)
    d = os.path.join(base, "shared")
    os.mkdir(d)
    os.chmod(d, 0o1777)
    old = shmd_vm.tmp, shmd_vm.state
    shmd_vm.tmp, shmd_vm.state = d, os.path.join(d, f"pvm.{UID}")
    monkeypatch.setenv("PVM_TMP", d)
    yield d
    # the daemons of this PVM_TMP, while it is still there: a console's too, if a test
    # failed before its halt
    subprocess.run([STAT, "--stop"], capture_output=True, timeout=60, env=shmd_vm.env())
    shmd_vm.cleanup()
    shmd_vm.tmp, shmd_vm.state = old
    shutil.rmtree(base)


def names(vm) -> list[str]:
    """PVM's names of the VM's files (as a planter would guess them)."""
    s = f".{UID}.{vm.vmid}"
    return [f"pvmd{s}", f"pvmd{s}.lock", f"pvml{s}", f"pvm_shmd{s}.pid", f"pvm_shmd{s}.ipc",
            f"pvm_shmd{s}.ipc.new", f"pvm_shmd{s}.sock", f"pvmspawn{s}"]


def victim_file(where) -> str:
    p = os.path.join(str(where), "victim")
    with open(p, "w") as f:
        f.write("precious\n")
    os.chmod(p, 0o644)
    return p


def console(vm, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PVM, "--norc", *args], capture_output=True, text=True, timeout=90,
                          env={**vm.env(), "PVM_SHMD_OPTS": "-maxpages=64 -maxsegs=2",
                               "HOME": vm.tmp, **(env or {})})


def evil_program(other, base: str) -> tuple[str, str]:
    """An executable pvm_shmd_stat (and pvm_shmd) of the attacker's that leaves a mark."""
    evil = other.mkdir(os.path.join(base, "evil"), 0o755)
    mark = os.path.join(base, "evil", "ran-as")

    def plant(evil: str, mark: str) -> None:
        for prog in ("pvm_shmd", "pvm_shmd_stat", "pvm_spawn"):
            p = os.path.join(evil, prog)
            with open(p, "w") as f:
                f.write(f"#!/bin/sh\nid -u > {mark}\nexit 1\n")
            os.chmod(p, 0o755)

    other.run(plant, evil, mark)
    return os.path.join(evil, "pvm_shmd"), mark


def table_json(vm, dx: str) -> str:
    host = {"name": socket.gethostname(), "index": 1, "arch": "LINUX64", "speed": 1000,
            "dsig": 0x408C41, "pid": 1, "state": "running", "options": {"dx": dx}}
    return json.dumps({"format": 1, "vmid": vm.vmid, "hosts": [host], "known": {},
                       "defaults": {}, "hostfile": "", "created": 0.0})


def write_as(other, path: str, text: str, mode: int = 0o644) -> None:
    def w(path: str, text: str, mode: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        os.write(fd, text.encode())
        os.close(fd)
    other.run(w, path, text, mode)


# ---- 1: a planted host table never runs anything --------------------------------------------

def test_planted_table_in_shared_tmp_is_never_read(shmd_vm, shared, other_user):
    vm = shmd_vm
    dx, mark = evil_program(other_user, os.path.dirname(shared))
    write_as(other_user, os.path.join(shared, names(vm)[0]), table_json(vm, dx))
    r = console(vm, "-e", "conf")
    try:
        assert r.returncode == 0, r.stderr
        assert "stale" not in r.stderr and not os.path.exists(mark), r.stderr
        assert os.stat(os.path.join(vm.state, names(vm)[0])).st_uid == UID  # our own table
    finally:
        console(vm, "-e", "halt")
    assert not os.path.exists(mark)


def test_squatted_state_directory_is_refused_with_owner_and_mode(shmd_vm, shared, other_user):
    vm = shmd_vm
    dx, mark = evil_program(other_user, os.path.dirname(shared))
    squat = other_user.mkdir(os.path.join(shared, f"pvm.{UID}"), 0o777)
    write_as(other_user, os.path.join(squat, names(vm)[0]), table_json(vm, dx))
    r = console(vm, "-e", "conf")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"uid {other_user.uid}" in lines[0] and "0777" in lines[0] and squat in lines[0]
    assert not os.path.exists(mark)
    assert not _at_key(paths.seg0_key(vm.vmid))  # nothing started
    # the daemon and the tools refuse it the same way
    for argv in ([PVM_SHMD, "-maxpages=64", "-maxsegs=2"], [IPCFREE, "-n"]):
        r = vm.run(argv)
        assert r.returncode != 0 and f"uid {other_user.uid}" in r.stderr, (argv, r.stderr)
    assert not os.path.exists(mark)


def test_table_not_owned_by_us_in_our_directory_is_refused(shmd_vm, shared, other_user):
    """Defence in depth: a file in our directory that someone else owns is not read."""
    vm = shmd_vm
    dx, mark = evil_program(other_user, os.path.dirname(shared))
    table = os.path.join(private.directory(), names(vm)[0])
    with open(table, "w") as f:
        f.write(table_json(vm, dx))
    os.chown(table, other_user.uid, other_user.uid)
    r = console(vm, "-e", "conf")
    assert r.returncode != 0 and "not a private file of yours" in r.stderr, r.stderr
    assert not os.path.exists(mark)
    os.unlink(table)


# ---- 2: a segment at our key made by someone else is never trusted -----------------------

def _fake_seg0(vmid: str, claim_uid: int, give_to: int | None, mode: int) -> int:
    """As the attacker: a complete, valid-looking segment 0 at the victim's key."""
    key = paths.seg0_key(vmid, uid=claim_uid)
    geo = layout.Geometry(layout.pagesize(), 1, 1)
    shm = sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=mode, size=geo.seg_size(0))
    buf = memoryview(shm)
    h = layout.header(buf)
    for name, value in (("version", layout.VERSION), ("uid", claim_uid), ("pid", os.getpid()),
                        ("host", 1), ("pagesize", geo.pagesize), ("nsegs", 1),
                        ("max_tasks", layout.MAX_TASKS), ("ring", layout.RING),
                        ("state", layout.READY), ("maps_off", geo.maps_off), ("vmid", vmid),
                        ("sock", "/nonexistent/sock")):
        h[name] = value
    e = layout.segent(buf, 0)
    for name, value in (("shmid", shm.id), ("key", key), ("npages", 1),
                        ("data_off", geo.data0_off), ("map_off", layout.map_off(0))):
        e[name] = value
    buf[:8] = layout.MAGIC
    buf.release()
    shm.detach()
    if give_to is not None:
        shm.uid = give_to  # the owner may give a segment away; its creator stays
    return shm.id


@pytest.mark.parametrize("how", ["open to all", "given to us"])
def test_segment_at_our_key_made_by_another_user_is_refused(shmd_vm, other_user, how):
    vm = shmd_vm
    give = UID if how == "given to us" else None
    shmid = other_user.run(_fake_seg0, vm.vmid, UID, give, 0o666 if give is None else 0o600)
    with pytest.raises(PvmError) as e:
        control.attach_seg0(vm.vmid)
    assert e.value.code == PvmDenied and f"created by uid {other_user.uid}" in str(e.value)
    import shmd

    with pytest.raises(PvmError, match=f"created by uid {other_user.uid}"):
        shmd.join(vm.vmid)
    r = vm.run([PVM_SHMD, "-maxpages=64", "-maxsegs=2"])
    assert r.returncode == 5 and f"created by uid {other_user.uid}" in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1
    vm.run([IPCFREE, "--vmid", vm.vmid, "--force"])
    assert exists("shm", shmid)  # never removed: it is not ours
    r = vm.run([STAT, "--stop"])
    assert r.returncode == StatExit.FAILED and f"created by uid {other_user.uid}" in r.stderr


# ---- 3: nothing makes us remove an object that is not this VM's --------------------------

@pytest.fixture
def victim_segment():
    """A segment of ours that belongs to something else (IPC_PRIVATE, as most are)."""
    shm = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, mode=0o600, size=4096)
    shm.detach()
    yield shm.id
    ipc.remove("shm", shm.id)


def test_planted_registry_in_shared_tmp_removes_nothing(shmd_vm, shared, other_user,
                                                          victim_segment):
    vm = shmd_vm
    for key in (None, 0):
        path = os.path.join(shared, names(vm)[4])
        if os.path.exists(path):
            os.unlink(path)
        write_as(other_user, path, json.dumps([["shm", victim_segment, key]]))
        vm.start()
        assert vm.run([STAT, "--stop"]).returncode == 0
        assert vm.run([IPCFREE, "--vmid", vm.vmid]).returncode == 0
        assert exists("shm", victim_segment)


def test_our_registry_naming_an_object_by_a_null_or_zero_key_removes_nothing(
        shmd_vm, victim_segment):
    vm = shmd_vm
    reg = paths.daemon_files(vm.vmid)["ipc"]
    for key in (None, 0):
        private.write_atomic(reg, json.dumps([["shm", victim_segment, key]]).encode())
        assert vm.run([IPCFREE, "--vmid", vm.vmid]).returncode == 0
        assert exists("shm", victim_segment)
        private.write_atomic(reg, json.dumps([["shm", victim_segment, key]]).encode())
        vm.start()  # reclaims what its registry names: only what is ours by key too
        assert vm.run([STAT, "--stop"]).returncode == 0
        assert exists("shm", victim_segment)


def _crafted_dead_seg0(vmid: str, uid: int, victim: int) -> int:
    """As the attacker: segment 0 at the victim's key, of a 'dead' daemon whose segment
    table names the victim's segment."""
    key = paths.seg0_key(vmid, uid=uid)
    shm = sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=0o644, size=1 << 16)
    buf = memoryview(shm)
    h = layout.header(buf)
    for name, value in (("version", layout.VERSION), ("uid", uid), ("pid", 999999),
                        ("nsegs", 1), ("vmid", vmid)):
        h[name] = value
    layout.segent(buf, 0)["shmid"] = victim
    buf[:8] = layout.MAGIC
    buf.release()
    shm.detach()
    return shm.id


def test_crafted_dead_segment_zero_removes_nothing(shmd_vm, other_user, victim_segment):
    vm = shmd_vm
    shmid = other_user.run(_crafted_dead_seg0, vm.vmid, UID, victim_segment)
    r = vm.run([PVM_SHMD, "-maxpages=64", "-maxsegs=2"])
    assert r.returncode == 5 and f"created by uid {other_user.uid}" in r.stderr, r.stderr
    for argv in ([IPCFREE, "--vmid", vm.vmid], [IPCFREE, "--vmid", vm.vmid, "--force"]):
        vm.run(argv)
        assert exists("shm", victim_segment) and exists("shm", shmid), argv


# ---- 4: links are never followed ----------------------------------------------------------

def test_links_planted_in_shared_tmp_are_not_followed(shmd_vm, shared, other_user):
    vm = shmd_vm
    victim = victim_file(os.path.dirname(shared))

    def plant(shared: str, victim: str, names: list[str]) -> None:
        for n in names:
            os.symlink(victim, os.path.join(shared, n))

    other_user.run(plant, shared, victim, names(vm))
    vm.start()
    assert vm.run([STAT, "--stop"]).returncode == 0
    assert vm.run([IPCFREE, "--vmid", vm.vmid]).returncode == 0
    assert open(victim).read() == "precious\n" and os.stat(victim).st_mode & 0o777 == 0o644


def test_state_directory_that_is_a_link_is_refused(shmd_vm, shared, other_user):
    vm = shmd_vm
    theirs = other_user.mkdir(os.path.join(os.path.dirname(shared), "theirs"), 0o777)
    other_user.run(os.symlink, theirs, os.path.join(shared, f"pvm.{UID}"))
    r = vm.run([PVM_SHMD, "-maxpages=64", "-maxsegs=2"])
    assert r.returncode == 5 and "symbolic link" in r.stderr and len(r.stderr.splitlines()) == 1
    assert os.listdir(theirs) == []


@pytest.mark.parametrize("which", [2, 3])  # the log, the lock file
def test_a_link_in_our_own_directory_is_refused_not_followed(shmd_vm, tmp_path, which):
    vm = shmd_vm
    victim = victim_file(tmp_path)
    link = os.path.join(private.directory(), names(vm)[which])
    os.symlink(victim, link)
    r = vm.run([PVM_SHMD, "-maxpages=64", "-maxsegs=2"])
    assert r.returncode == 5 and "symbolic link" in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert open(victim).read() == "precious\n" and os.stat(victim).st_mode & 0o777 == 0o644
    private.unlink(link)


# ---- 5: another user's files and locks do not keep us from starting ----------------------

def test_locked_files_of_another_user_in_shared_tmp_do_not_block(shmd_vm, shared, other_user):
    vm = shmd_vm
    held = []
    for n in (names(vm)[3], names(vm)[1]):  # pvm_shmd.<uid>.pid, pvmd.<uid>.lock
        path = os.path.join(shared, n)
        write_as(other_user, path, "4242\n", 0o644)
        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH)  # held as the other user's process would hold it
        held.append(fd)
    try:
        r = console(vm, "-e", "conf")
        assert r.returncode == 0 and "already running" not in r.stderr, r.stderr
        assert console(vm, "-e", "halt").returncode == 0
    finally:
        for fd in held:
            os.close(fd)


def _at_key(key: int) -> list[dict]:
    return [r for r in ipc.proc_table("shm") if r["key"] & 0xFFFFFFFF == key]

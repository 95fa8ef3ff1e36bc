"""A faulty process of the same user scribbles over segment 0: the daemon notices where
it reads, goes on serving, and the tools always stop it and clean up (real daemon, real
task processes, real scribbles through the shared memory)."""
from __future__ import annotations

import signal
import struct
import subprocess

import pytest
from daemons import IPCFREE, STAT, exists, shmd_vm, wait_for  # noqa: F401

from shmd import control, ipc, layout
from shmd.errors import PvmError
from shmd.exits import StatExit


def scribble(vmid: str, off: int, data: bytes) -> None:
    """Write *data* at *off* of segment 0, as a faulty task of ours could."""
    shm = ipc.attach_owned(_seg0_id(vmid), "segment 0")
    try:
        shm.write(data, off)
    finally:
        shm.detach()


def _seg0_id(vmid: str) -> int:
    from shmd import paths

    key = paths.seg0_key(vmid)
    return next(r["shmid"] for r in ipc.proc_table("shm") if r["key"] & 0xFFFFFFFF == key)


def one_line(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr


def test_a_scribbled_inbox_tail_does_not_hang_the_daemon(shmd_vm):
    vm = shmd_vm
    vm.start()
    t = vm.task(name="victim")
    i = next(s for s in range(layout.MAX_TASKS) if _slot_tid(vm.vmid, s) == t.tid)
    tail_off = layout.slot_off(i) + layout.T["tail"][0]
    scribble(vm.vmid, tail_off, struct.pack("<Q", 1 << 62))
    r = vm.run([STAT, "--json"], timeout=10)  # counted, not walked 2^62 times
    assert r.returncode == 0, r.stderr
    t.kill(signal.SIGKILL)
    wait_for(lambda: not vm.stat()["tasks"], timeout=10, what="the task reaped")
    assert vm.run([STAT, "--stop"], timeout=20).returncode == 0
    assert not [o for o in vm.daemons if ipc.alive(*o)]


def _slot_tid(vmid: str, i: int) -> int:
    shm, buf = control.attach_seg0(vmid)
    try:
        return layout.slot(buf, i)["tid"]
    finally:
        buf.release()
        shm.detach()


@pytest.mark.parametrize("where,data,needle", [
    ("vmid", b"\xff\xfe", "VM id"),
    ("magic", b"XXXXXXXX", "bad magic"),
    ("nsegs", struct.pack("<I", 200), "200 segments"),
])
def test_a_damaged_header_is_refused_where_read_and_the_tools_still_stop_it(
        shmd_vm, where, data, needle):
    vm = shmd_vm
    ready = vm.start()
    registry_objects = set()
    from shmd import paths
    from shmd.resources import leftovers

    registry_objects = leftovers(paths.daemon_files(vm.vmid)["ipc"], None)
    assert registry_objects
    scribble(vm.vmid, layout.H[where][0], data)
    with pytest.raises(PvmError, match=needle):
        import shmd

        shmd.join(vm.vmid)
    r = vm.run([STAT, "--json"], timeout=10)
    assert r.returncode == StatExit.FAILED and needle in one_line(r)
    r = vm.run([STAT, "--stop"], timeout=20)  # found through its lock file
    assert r.returncode == 0, r.stderr
    assert not ipc.alive(ready["pid"], ipc.process_start(ready["pid"]) or 0)
    assert not [o for o in registry_objects if exists(*o)]  # it removed everything


def test_ipcfree_cleans_up_after_a_damaged_daemon_killed_with_sigkill(shmd_vm):
    vm = shmd_vm
    ready = vm.start()
    from shmd import paths
    from shmd.resources import leftovers

    objs = leftovers(paths.daemon_files(vm.vmid)["ipc"], None)
    scribble(vm.vmid, layout.H["vmid"][0], b"\xff")
    import os

    os.kill(ready["pid"], signal.SIGKILL)
    wait_for(lambda: ipc.process_start(ready["pid"]) is None, timeout=10, what="daemon gone")
    r = vm.run([IPCFREE, "--vmid", vm.vmid])
    assert r.returncode == 0, r.stderr
    assert not [o for o in objs if exists(*o)]


def test_a_damaged_page_map_is_reported_and_a_dead_task_still_reaped(shmd_vm):
    vm = shmd_vm
    vm.start()
    t = vm.task(name="victim")
    t.do("alloc", n=3)
    # segment 1's first run header says 10^8 pages (of 64): the "198 million free pages"
    scribble(vm.vmid, layout.map_off(1), struct.pack("<i", 100_000_000))
    st = vm.stat()
    seg = st["segments"][1]
    assert "damaged" in seg and "100000000" in seg["damaged"] and seg["free"] <= seg["pages"]
    t.kill(signal.SIGKILL)
    wait_for(lambda: not vm.stat()["tasks"], timeout=10, what="the task's slot freed")
    assert vm.run([STAT, "--stop"], timeout=20).returncode == 0

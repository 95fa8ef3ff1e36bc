"""ipcfree: what a SIGKILLed pvm_shmd left is listed (-n) and removed; a live daemon's
objects are refused unless --force; --all takes every SysV object of the user.

The default and --all modes look at every VM id of the user, so they run inside a
private IPC namespace (root) where they cannot touch anybody else's objects."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

from conftest import HELPERS, need_namespace
from daemons import IPCFREE, daemon_objects, exists, listed, proc_alive, shmd_vm, wait_for

assert shmd_vm


def ids(text: str) -> set[tuple[str, int]]:
    kinds = {"-m": "shm", "-s": "sem", "-q": "msg"}
    return {(kinds[f], int(i)) for f, i in re.findall(r"(-[msq]) (\d+)", text)}


def test_kill9_daemon_then_ipcfree_lists_and_removes(shmd_vm):
    vm = shmd_vm
    ready = vm.start()
    c = vm.task()
    c.do("alloc", n=4)
    objs = daemon_objects(vm.vmid)
    assert len(objs) == 5  # 2 segments, 2 page-map semaphores, the task's wake-up
    os.kill(ready["pid"], signal.SIGKILL)
    wait_for(lambda: not proc_alive(ready["pid"]), timeout=5, what="daemon death")
    c.close()
    files = set(vm.files())
    base = f"pvm_shmd.{os.getuid()}.{vm.vmid}"
    assert {base + ".pid", base + ".sock", base + ".ipc"} <= files
    r = vm.run([IPCFREE, "-n", "--vmid", vm.vmid])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("would delete ") and ids(r.stdout) == objs
    assert all(exists(*o) for o in objs)  # -n removes nothing
    r = vm.run([IPCFREE, "--vmid", vm.vmid])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("deleting ") and ids(r.stdout) == objs
    assert not [o for o in objs if listed(*o)]
    # stale files too (the host's measured large-message paths stay: calibrate.py)
    assert set(vm.files()) - {f"pvm_paths.{os.getuid()}"} == {f"pvml.{os.getuid()}.{vm.vmid}"}
    r = vm.run([IPCFREE, "-n", "--vmid", vm.vmid])
    assert r.returncode == 0 and r.stdout.strip() == "didn't find anything"
    ready2 = vm.start()  # a clean start afterwards
    assert vm.stat()["pid"] == ready2["pid"]


def test_ipcfree_refuses_a_live_daemon_unless_forced(shmd_vm):
    vm = shmd_vm
    ready = vm.start()
    objs = daemon_objects(vm.vmid)
    r = vm.run([IPCFREE, "--vmid", vm.vmid])
    assert r.returncode == 1
    assert f"refusing: pvm_shmd pid {ready['pid']}" in r.stderr and "is alive" in r.stderr
    assert r.stdout.strip() == "didn't find anything"
    assert all(exists(*o) for o in objs) and vm.stat()["pid"] == ready["pid"]
    r = vm.run([IPCFREE, "-n", "--force", "--vmid", vm.vmid])
    assert r.returncode == 0 and ids(r.stdout) == objs
    # forced: the daemon loses its objects; it still exits cleanly on TERM
    r = vm.run([IPCFREE, "--force", "--vmid", vm.vmid])
    assert r.returncode == 0 and ids(r.stdout) == objs
    assert not [o for o in objs if exists(*o)]
    os.kill(ready["pid"], signal.SIGTERM)
    wait_for(lambda: not proc_alive(ready["pid"]), timeout=10, what="daemon exit")


def test_ipcfree_usage_errors(shmd_vm):
    r = shmd_vm.run([IPCFREE, "--all", "--vmid", "x"])
    assert r.returncode == 2 and "exclude" in r.stderr
    r = shmd_vm.run([IPCFREE, "--vmid", "a b"])
    assert r.returncode == 2 and "bad VM id" in r.stderr


NAMESPACED = r'''
import json, os, signal, subprocess, sys, time
import sysv_ipc
sys.path.insert(0, sys.argv[1])
from daemons import daemon_objects, PVM_SHMD, STAT, IPCFREE
out = {}
def run(*argv, vmid=None):
    env = {**os.environ, "PVM_VMID": vmid or os.environ["PVM_VMID"]}
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, env=env)
    return [r.returncode, r.stdout, r.stderr]
def ids(kind):
    with open(f"/proc/sysvipc/{kind}") as f:
        f.readline()
        return sorted(int(l.split()[1]) for l in f)
dead, live = os.environ["PVM_VMID"] + "d", os.environ["PVM_VMID"] + "l"
try:
    r = run(PVM_SHMD, "-maxpages=16", "-maxsegs=2", vmid=dead)
    pid = int(r[1].split("pid<")[1].split(">")[0])
    out["dead"] = sorted(map(list, daemon_objects(dead)))
    os.kill(pid, signal.SIGKILL)
    while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split(") ")[1][0] != "Z":
        time.sleep(0.01)
    assert run(PVM_SHMD, "-maxpages=16", "-maxsegs=2", vmid=live)[0] == 0
    out["live"] = sorted(map(list, daemon_objects(live)))
    mine = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, size=4096)  # not the project's
    mine.detach()
    sem = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX)
    out["other"] = [["shm", mine.id], ["sem", sem.id]]
    out["n"] = run(IPCFREE, "-n")
    out["rm"] = run(IPCFREE)
    out["after_rm"] = {"shm": ids("shm"), "sem": ids("sem")}
    out["all_n"] = run(IPCFREE, "--all", "-n")
    out["all"] = run(IPCFREE, "--all")
    out["after_all"] = {"shm": ids("shm"), "sem": ids("sem")}
    out["stat_live"] = run(STAT, "--json", vmid=live)[0]
finally:
    out["stop"] = run(STAT, "--stop", vmid=live)
    out["end"] = {"shm": ids("shm"), "sem": ids("sem")}
print(json.dumps(out))
'''


def test_ipcfree_default_and_all_in_a_private_ipc_namespace(shmd_vm):
    need_namespace("a private IPC namespace")
    r = subprocess.run(["unshare", "--ipc", sys.executable, "-c", NAMESPACED, HELPERS],
                       capture_output=True, text=True, timeout=180, env=shmd_vm.env())
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    dead = {tuple(o) for o in out["dead"]}
    live = {tuple(o) for o in out["live"]}
    other = {tuple(o) for o in out["other"]}
    rc, stdout, stderr = out["n"]
    assert rc == 1 and ids(stdout) == dead  # the dead VM's objects; the live one refused
    assert "refusing: pvm_shmd pid" in stderr
    rc, stdout, _ = out["rm"]
    assert rc == 1 and ids(stdout) == dead
    left = {("shm", i) for i in out["after_rm"]["shm"]} | {("sem", i) for i in out["after_rm"]["sem"]}
    assert left == live | other
    rc, stdout, stderr = out["all_n"]
    assert rc == 1 and ids(stdout) == other and "refusing" in stderr  # --all spares the live
    rc, stdout, _ = out["all"]
    assert rc == 1 and ids(stdout) == other
    left = {("shm", i) for i in out["after_all"]["shm"]} | {("sem", i) for i in out["after_all"]["sem"]}
    assert left == live
    assert out["stat_live"] == 0 and out["stop"][0] == 0
    assert out["end"] == {"shm": [], "sem": []}


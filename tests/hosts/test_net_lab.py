"""Messages between the hosts of a lab virtual machine through their pvm_netd: real
console, real sshd, a real pvm_shmd and pvm_netd on every host (each host its own
network, PID and IPC namespace), tasks on every host.

After each test the VM is halted and nothing of it may remain on any host.
"""
from __future__ import annotations

import os
import re
import struct
import subprocess
import time

import pytest
from conftest import ROOT
from consoles import PVM, vm_procs, wait_for  # noqa: F401
from lab_probe import host_procs, lab_vm_setup, running_lab, ssh, write_progs

import shmd
from pvmconsole import lab as labmod
from shmd import tids
from shmd.errors import PvmError, PvmHostFail

pytestmark = pytest.mark.lab  # real sshd servers, lab hosts or namespaces (root)

EXAMPLES = os.path.join(ROOT, "examples")
ECHO = """\
import shmd
me = shmd.join()
print(f"echo t{me.tid:x}", flush=True)
while True:
    m = me.precv(timeout=120)
    me.psend(m.src, m.tag, m.data, timeout=60)
"""
# started by pvm_spawn from a program: tells its parent its tid and parent, then waits
CHILD = """\
import struct, shmd
from shmd.pvm import pvm_parent
with shmd.join() as me:
    me.psend(pvm_parent(), 7, struct.pack("<ii", me.tid, pvm_parent()))
    me.precv(pvm_parent(), 99, timeout=120)
"""


@pytest.fixture(scope="module")
def lab():
    with running_lab("w", 3) as lab:
        write_progs(lab, {"echo.py": ECHO, "child.py": CHILD})
        yield lab


@pytest.fixture
def vm(lab, pvm_env, tmp_path):
    hostfile, env = lab_vm_setup(lab, str(tmp_path), f"{lab.dir}/progs:{EXAMPLES}",
                                 "-maxpages=1024 -maxsegs=2")  # 8 MiB: room for the messages in flight

    class Vm:
        vmid, hosts = pvm_env["vmid"], [h.name for h in lab.hosts]
        hf = str(hostfile)

        @staticmethod
        def run(cmds: str, timeout: float = 120) -> subprocess.CompletedProcess:
            return subprocess.run([PVM, "--norc", str(hostfile), "-e", cmds], capture_output=True, text=True,
                                  timeout=timeout, cwd=tmp_path, env=env)

    v = Vm()
    yield v
    v.run("halt")
    wait_for(lambda: not vm_procs(v.vmid), 10, "local processes of the VM to end")
    for h in v.hosts:
        try:
            wait_for(lambda h=h: host_procs(lab, h, v.vmid, daemons=True) == [], 10, f"processes on {h} to end")
        except BaseException:
            left = " ".join(host_procs(lab, h, v.vmid, daemons=True))
            print(ssh(lab, h, f"ps -o pid,stat,args -p {left}; ps axf").stdout)
            raise


def test_ring_and_all_to_all_over_every_host(lab, vm):
    """examples/ring.py: a token of more than one network chunk round 4 hosts, then every
    member to every other; every byte checked by the members and the master."""
    size = 1_500_000
    r = vm.run(f"spawn -> -. ring.py master 3 {size}")
    out = r.stdout
    assert r.returncode == 0, r.stderr + out
    assert re.search(rf"\] ring of 4 members on 4 hosts: 3 laps of {size} bytes ok$", out, re.M), out
    assert len(re.findall(r"\] t[0-9a-f]+ \(\S+\): all-to-all with 3 others ok$", out, re.M)) == 4, out
    assert re.search(r"\] ok in [0-9.]+ s$", out, re.M), out


def test_host_death_gives_host_fail_and_the_vm_goes_on(lab, vm):
    """kill -9 of pvmh2's pvm_shmd and pvm_netd: a task here waiting for a message from a
    task there gets PvmHostFail within 3 s; pvmh1 still answers."""
    r = vm.run("spawn -pvmh1 echo.py; spawn -pvmh2 echo.py")
    assert r.returncode == 0, r.stderr + r.stdout
    t1, t2 = (int(t, 16) for t in re.findall(r"^t([0-9a-f]+)$", r.stdout, re.M))
    me = shmd.join(vm.vmid)
    try:
        for t in (t1, t2):
            me.psend(t, 3, b"x" * 200_000, timeout=20)
            assert me.precv(t, 3, timeout=20).data == b"x" * 200_000
        pids = ssh(lab, "pvmh2", f"pgrep -f -- '[-]vmid={vm.vmid}'").stdout.split()
        assert len(pids) == 2, pids  # its pvm_shmd and its pvm_netd
        ssh(lab, "pvmh2", "kill -9 " + " ".join(pids))
        t = time.monotonic()
        with pytest.raises(PvmError) as e:
            me.precv(t2, 3, timeout=30)
        assert e.value.code == PvmHostFail
        assert time.monotonic() - t < 3.0
        me.psend(t1, 4, b"still", timeout=10)
        assert me.precv(t1, 4, timeout=10).data == b"still"
    finally:
        me.leave()
    ssh(lab, "pvmh2", "ipcrm -a; true")  # what the killed daemon could not remove


def _conf(vm) -> dict[str, int]:
    """The console's conf: host name -> dtid."""
    r = vm.run("conf")
    assert r.returncode == 0, r.stderr
    return {m[1]: int(m[2], 16) for m in re.finditer(r"^\s*(\S+)\s+([0-9a-f]+)\s+LINUX64\b", r.stdout, re.M)}


def _ps(vm) -> set[int]:
    """The tids ps -a lists."""
    r = vm.run("ps -a")
    assert r.returncode == 0, r.stderr
    return {int(m[1], 16) for m in re.finditer(r"^\s*\S+\s+([0-9a-f]+)\s", r.stdout, re.M)}


def test_program_and_console_reach_every_host_through_pvm_netd(lab, vm):
    """The console's spawn, ps -a, sig and kill go through each host's pvm_netd (a copy it
    starts is its child); a program's pvm_config lists every host, pvm_spawn starts a
    copy on a named lab host (its pvm_parent is the program), pvm_kill ends it and the
    PvmTaskExit notification comes; kill -9 of a host's daemon and pvm_netd gives
    PvmHostDelete within 3 s and conf no longer lists it."""
    from shmd import pvm, pvmmsg

    r = vm.run("spawn -4 echo.py; ps -a")
    assert r.returncode == 0, r.stderr + r.stdout
    started = [int(t, 16) for t in re.findall(r"^t([0-9a-f]+)$", r.stdout, re.M)]
    hosts = _conf(vm)
    assert len(hosts) == 4 and sorted(tids.host_of(t) for t in started) == [1, 2, 3, 4], r.stdout
    for t in started:
        assert re.search(rf"^\s*\S+\s+{t:x}\b.*echo\.py", r.stdout, re.M), r.stdout  # ps -a lists it
    h2 = next(n for n, d in hosts.items() if n == "pvmh2")
    far = next(t for t in started if tids.dtid(tids.host_of(t)) == hosts[h2])
    netd_pid = ssh(lab, h2, f"ps -C pvm_netd -o pid=,args= | grep -- '-vmid={vm.vmid} '").stdout.split()[:1]
    task_pid = ssh(lab, h2, f"grep -l -a -z -x PVM_MYTID={far:x} /proc/[0-9]*/environ").stdout.split("/")[2]
    parent = ssh(lab, h2, f"ps -o ppid= -p {task_pid}").stdout.split()
    assert parent == netd_pid, (parent, netd_pid)  # spawned by pvm_netd, not a pvm_spawn over SSH
    me = shmd.join(vm.vmid)
    try:
        n, _, cfg = pvm.pvm_config()
        assert {h.hi_name: h.hi_tid for h in cfg} == hosts
        child, = pvm.pvm_spawn("child.py", [], pvm.PvmTaskHost, "pvmh3", 1)
        assert tids.dtid(tids.host_of(child)) == hosts["pvmh3"], child
        assert struct.unpack("<ii", me.precv(child, 7, timeout=30).data) == (child, me.tid)
        assert child in {t.ti_tid for t in pvm.pvm_tasks(0)[1]}
        pvm.pvm_notify(pvm.PvmTaskExit, 50, [child])
        pvm.pvm_kill(child)
        assert pvm.pvm_trecv(-1, 50, 10) > 0 and pvm.pvm_upkint(None, 1, 1)[0] == child
        others = [t for t in started if t != far and tids.host_of(t) != 1]
        r = vm.run(f"sig 9 {others[0]:x}; kill {others[1]:x}; kill {far:x}")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: not {far, *others} & _ps(vm), 10, "the killed tasks gone from ps -a")
        pvm.pvm_notify(pvm.PvmHostDelete, 61, [hosts["pvmh3"]])
        pids = ssh(lab, "pvmh3", f"pgrep -f -- '[-]vmid={vm.vmid}'").stdout.split()
        ssh(lab, "pvmh3", "kill -9 " + " ".join(pids))
        t = time.monotonic()
        assert pvm.pvm_trecv(-1, 61, 10) > 0 and pvm.pvm_upkint(None, 1, 1)[0] == hosts["pvmh3"]
        assert time.monotonic() - t < 3.0
        assert set(_conf(vm)) == set(hosts) - {"pvmh3"}
    finally:
        pvmmsg.S.reset()
        me.leave()
    ssh(lab, "pvmh3", "ipcrm -a; true")  # what the killed daemon could not remove


def test_host_whose_pvm_shmd_predates_net_option_gets_its_pvm_netd_apart(lab, pvm_env, tmp_path):
    """A host whose dx= is a pvm_shmd from before -net= (it refuses the option as unknown):
    the console starts it without, then its pvm_netd by a program start of its own, and
    a message still crosses to that host and back."""
    old = os.path.join(lab.dir, f"old-{pvm_env['vmid']}")
    os.mkdir(old)
    real = os.path.dirname(labmod.local_program("pvm_shmd"))
    for prog in ("pvm_netd", "pvm_shmd_stat", "pvm_spawn"):
        os.symlink(os.path.join(real, prog), os.path.join(old, prog))
    with open(os.path.join(old, "pvm_shmd"), "w") as f:
        f.write("#!/bin/sh\nfor w; do case $w in -net=*) echo \"pvm_shmd: unknown option '$w' "
                f"(pvm_shmd -help for usage)\" >&2; exit 2;; esac; done\nexec {real}/pvm_shmd \"$@\"\n")
    os.chmod(os.path.join(old, "pvm_shmd"), 0o755)
    hostfile, env = lab_vm_setup(lab, str(tmp_path), f"{lab.dir}/progs", "-maxpages=256 -maxsegs=2")
    with open(hostfile, "w") as f:
        f.write(f"* ep={lab.dir}/progs\npvmh2 dx={old}/pvm_shmd\n")
    vmid = pvm_env["vmid"]

    def run(cmds: str) -> subprocess.CompletedProcess:
        return subprocess.run([PVM, "--norc", hostfile, "-e", cmds], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path, env=env)
    try:
        r = run("conf; spawn -pvmh2 echo.py")
        assert r.returncode == 0 and "no network process" not in r.stdout + r.stderr, r.stderr + r.stdout
        netd = ssh(lab, "pvmh2", f"ps -C pvm_netd -o args= | grep -- '-vmid={vmid} '").stdout
        assert "/pvm_netd " in netd and "-net=" not in netd, netd  # the program, started apart
        far = int(re.findall(r"^t([0-9a-f]+)$", r.stdout, re.M)[0], 16)
        with shmd.join(vmid) as me:
            me.psend(far, 4, b"across", timeout=20)
            assert me.precv(far, 4, timeout=20).data == b"across"
    finally:
        run("halt")
        wait_for(lambda: host_procs(lab, "pvmh2", vmid, daemons=True) == [], 10, "pvmh2's processes to end")

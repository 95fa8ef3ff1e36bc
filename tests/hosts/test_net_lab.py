"""Messages between the hosts of a lab virtual machine through their pvm_netd: real
console, real sshd, a real pvm_shmd and pvm_netd on every host (each host its own
network, PID and IPC namespace), tasks on every host.

After each test the VM is halted and nothing of it may remain on any host.
"""
from __future__ import annotations

import os
import re
import subprocess
import time

import pytest
from conftest import ROOT
from consoles import PVM, vm_procs, wait_for  # noqa: F401
from lab_probe import host_procs, lab_vm_setup, running_lab, ssh, write_progs

import shmd
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


@pytest.fixture(scope="module")
def lab():
    with running_lab("w", 3) as lab:
        write_progs(lab, {"echo.py": ECHO})
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

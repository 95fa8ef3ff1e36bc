"""examples/pvm3 on a pvm-lab virtual machine: each example started with the console's
``spawn -pvmh1 -> PROG`` on a lab host (real sshd, its own PID and IPC namespace and
pvm_shmd), its workers spawned there by pvm_spawn, its own checks passed. And a group
spanning the console's host (the master, where the group server runs) and the lab host:
mcast, barrier, bcast and reduce across the two, a member killed -9 on the lab host
leaving its group."""
from __future__ import annotations

import os
import re
import subprocess

import pytest
from consoles import PVM, vm_procs, wait_for
from lab_probe import running_lab, write_progs
from pvm3_examples import EXAMPLES, RUNS

from pvmconsole import lab as labmod

pytestmark = pytest.mark.lab


# "span.py master N" on the master host, N "span.py worker" on the master and the lab
# host: all join group "span"; the master mcasts to the workers, which answer with their
# host; a barrier, a bcast, a sum and a max; then the master tells one worker of the lab
# host to die (it kills itself with SIGKILL) and waits for the group to shrink
SPAN = r'''
import os, signal, socket, sys, time
from shmd import pvm
me = pvm.pvm_mytid()
inst = pvm.pvm_joingroup("span")
if sys.argv[1] == "master":
    n = int(sys.argv[2])
    deadline = time.monotonic() + 30
    while pvm.pvm_gsize("span") < n + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [pvm.pvm_gettid("span", i) for i in range(n + 1) if i != inst]
    pvm.pvm_initsend(pvm.PvmDataDefault)
    pvm.pvm_pkstr("hi")
    pvm.pvm_pkint(inst, 1, 1)  # the root's instance
    pvm.pvm_mcast(workers + [me], 1)
    hosts = {}
    for _ in workers:
        pvm.pvm_recv(-1, 2)
        hosts[pvm.pvm_bufinfo(pvm.pvm_getrbuf())[2]] = pvm.pvm_upkstr()
    pvm.pvm_barrier("span", -1)
    pvm.pvm_initsend(pvm.PvmDataDefault)
    pvm.pvm_pkint(7, 1, 1)
    pvm.pvm_bcast("span", 3)
    total, top = [inst], [inst]
    pvm.pvm_reduce(pvm.PvmSum, total, 1, pvm.PVM_INT, 4, "span", inst)
    pvm.pvm_reduce(pvm.PvmMax, top, 1, pvm.PVM_INT, 5, "span", inst)
    pvm.pvm_barrier("span", -1)
    victim = next(t for t, h in hosts.items() if h == "pvmh1")
    pvm.pvm_initsend(pvm.PvmDataDefault)
    pvm.pvm_pkstr("die")
    pvm.pvm_send(victim, 9)
    t0 = time.monotonic()
    while pvm.pvm_gsize("span") > n and time.monotonic() - t0 < 20:
        time.sleep(0.05)
    left = time.monotonic() - t0
    ok = (sorted(set(hosts.values())) == sorted({"pvmh1", socket.gethostname()})
          and total == [sum(range(n + 1)) + 7 * n] and top == [n] and pvm.pvm_gsize("span") == n)
    pvm.pvm_initsend(pvm.PvmDataDefault)
    pvm.pvm_pkstr("bye")
    pvm.pvm_mcast([t for t in workers if t != victim], 9)
    print(f"span: {len(workers)} workers on {len(set(hosts.values()))} hosts, sum {total[0]}, max {top[0]}, "
          f"victim on pvmh1 gone after {left:.1f} s: {'OK' if ok else 'WRONG'}", flush=True)
else:
    pvm.pvm_recv(-1, 1)
    root = pvm.pvm_bufinfo(pvm.pvm_getrbuf())[2]
    word = pvm.pvm_upkstr()
    rinst = pvm.pvm_upkint(None, 1, 1)[0]
    pvm.pvm_initsend(pvm.PvmDataDefault)
    pvm.pvm_pkstr(socket.gethostname() if word == "hi" else "WRONG")
    pvm.pvm_send(root, 2)
    pvm.pvm_barrier("span", -1)
    pvm.pvm_recv(-1, 3)
    x = pvm.pvm_upkint(None, 1, 1)[0]
    pvm.pvm_reduce(pvm.PvmSum, [inst + x], 1, pvm.PVM_INT, 4, "span", rinst)
    pvm.pvm_reduce(pvm.PvmMax, [inst], 1, pvm.PVM_INT, 5, "span", rinst)
    pvm.pvm_barrier("span", -1)
    if pvm.pvm_trecv(root, 9, 30) and pvm.pvm_upkstr() == "die":
        os.kill(os.getpid(), signal.SIGKILL)  # killed -9 while a member
    pvm.pvm_exit()
'''


@pytest.fixture(scope="module")
def lab():
    with running_lab("q", 1) as lab:
        write_progs(lab, {"span.py": SPAN})
        yield lab


def _console(lab, tmp_path):
    """A function running the console with -e on a VM of this host and the lab's pvmh1."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(f"* ep={lab.dir}/progs\npvmh1 dx={labmod.local_program('pvm_shmd')}\n")
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "PVM_SSH_CONFIG": lab.ssh_config, "HOME": str(home),
           "PVM_SHMD_OPTS": "-maxpages=256 -maxsegs=2"}

    def run(cmds: str) -> subprocess.CompletedProcess:
        return subprocess.run([PVM, "--norc", "-k", str(hostfile), "-e", cmds], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path, env=env)
    return run


@pytest.mark.parametrize("prog, args, expect", RUNS)
def test_example_on_a_lab_host(lab, pvm_env, tmp_path, prog, args, expect):
    run = _console(lab, tmp_path)
    try:
        r = run(f"spawn -pvmh1 -> {os.path.join(EXAMPLES, prog)} {args}")
        assert r.returncode == 0, r.stdout + r.stderr
        lines = re.findall(r"^\[1:(t[0-9a-f]+)\] (.*)$", r.stdout, re.M)
        assert lines and all(int(t[1:], 16) >> 18 == 2 for t, _ in lines), r.stdout  # on pvmh1 (host 2)
        assert any(re.search(expect, text) for _, text in lines), r.stdout + r.stderr
        assert not prog.startswith("hello") or any(text.endswith(" from pvmh1") for _, text in lines), r.stdout
        assert not any("WRONG" in text or "Traceback" in text for _, text in lines), r.stdout
    finally:
        run("halt")
        wait_for(lambda: not vm_procs(pvm_env["vmid"]), 15, "the VM's local processes to end")


def test_group_across_the_master_and_a_lab_host(lab, pvm_env, tmp_path):
    """One group server for the VM (on the master): members on both hosts, pvm_mcast to
    tasks of both, barrier, bcast, reduce; one killed -9 on the lab host leaves the group."""
    run = _console(lab, tmp_path)
    try:
        r = run("spawn -> -. span.py master 4; spawn -> -. span.py worker; spawn -> -pvmh1 -3 span.py worker")
        assert r.returncode == 0, r.stdout + r.stderr
        lines = re.findall(r"^\[\d+:(t[0-9a-f]+)\] (.*)$", r.stdout, re.M)
        said = [text for t, text in lines if int(t[1:], 16) >> 18 == 1]  # the master's (host 1)
        assert any(re.fullmatch(r"span: 4 workers on 2 hosts, sum 38, max 4, victim on pvmh1 gone after \d+\.\d s: OK",
                                text) for text in said), r.stdout + r.stderr
        assert not any("Traceback" in text or "Error" in text for _, text in lines), r.stdout
    finally:
        run("halt")
        wait_for(lambda: not vm_procs(pvm_env["vmid"]), 15, "the VM's local processes to end")

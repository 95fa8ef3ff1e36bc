"""examples/pvm3 on a pvm-lab virtual machine: each example started with the console's
``spawn -pvmh1 -> PROG`` on a lab host (real sshd, its own PID and IPC namespace and
pvm_shmd), its workers spawned there by pvm_spawn, its own checks passed."""
from __future__ import annotations

import os
import re
import subprocess

import pytest
from consoles import PVM, vm_procs, wait_for
from lab_probe import running_lab
from pvm3_examples import EXAMPLES, RUNS

from pvmconsole import lab as labmod

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab():
    with running_lab("q", 1) as lab:
        yield lab


@pytest.mark.parametrize("prog, args, expect", RUNS)
def test_example_on_a_lab_host(lab, pvm_env, tmp_path, prog, args, expect):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(f"pvmh1 dx={labmod.local_program('pvm_shmd')}\n")
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "PVM_SSH_CONFIG": lab.ssh_config, "HOME": str(home),
           "PVM_SHMD_OPTS": "-maxpages=256 -maxsegs=2"}

    def run(cmds: str) -> subprocess.CompletedProcess:
        return subprocess.run([PVM, "--norc", "-k", str(hostfile), "-e", cmds], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path, env=env)

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

"""``view`` and ``trace`` with hosts over SSH: a lab of emulated hosts (real sshd, real
pvm_shmd on each), the console in the root namespace."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from lab_probe import running_lab

pytestmark = pytest.mark.lab  # real sshd servers, lab hosts or namespaces (root)

PVM = os.path.join(os.path.dirname(sys.executable), "pvm")


@pytest.fixture(scope="module")
def lab():
    with running_lab("v", 2, password="lab-pw-v") as lab:
        yield lab


def test_view_and_trace_reach_every_host_over_ssh(lab, tmp_path, pvm_env):
    env = dict(os.environ, PVM_SSH_CONFIG=lab.ssh_config, HOME=str(tmp_path))

    def run(cmds: str, *hostfile: str) -> subprocess.CompletedProcess:
        return subprocess.run([PVM, "--norc", *hostfile, "-e", cmds], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path, env=env)

    try:
        r = run("view; stat; trace on; trace off", lab.hostfile)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        names = [h.name for h in lab.hosts]
        assert any("3 hosts, 0 tasks" in ln for ln in lines), r.stdout  # the master and 2
        for name in names:
            view_row = next(ln for ln in lines if ln.startswith(name + " "))
            stat_row = next(ln.split() for ln in lines if ln.split()[:1] == [name]
                            and len(ln.split()) == 8)
            assert f"pid {stat_row[1]} " in view_row, (view_row, stat_row)
            assert f"0/{int(stat_row[4])}" in view_row  # no page used, as stat says
            # its clock, measured over SSH: these hosts share the kernel's clock, so the
            # offset is within the request's round trip (a second here, at the most)
            on = next(ln for ln in lines if ln.startswith(f"{name}: trace on, clock offset "))
            m = re.search(r"offset ([+-]\d+) us \(\+-(\d+)\)", on)
            assert m, on
            assert abs(int(m.group(1))) <= int(m.group(2)) + 1000, on  # one clock, really
        clocks = next(ln for ln in lines if ln.startswith("clock offsets (host - console): "))
        assert all(f"{name} " in clocks for name in names), clocks
    finally:
        run("halt")

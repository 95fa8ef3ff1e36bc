"""examples/pvm3: each program run from the console (``spawn -> PROG``) on a one-host
VM of its own, its relayed output checked (every example checks its own results and
prints OK or WRONG)."""
from __future__ import annotations

import os
import re
import subprocess

import pytest
from consoles import PVM, vm_procs, wait_for
from pvm3_examples import EXAMPLES, RUNS


@pytest.fixture
def vm(pvm_env, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PVM_SHMD_OPTS": "-maxpages=1024 -maxsegs=2"}

    def run(cmds: str) -> subprocess.CompletedProcess:
        return subprocess.run([PVM, "--norc", "-k", "-e", cmds], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path, env=env)

    yield run
    run("halt")
    wait_for(lambda: not vm_procs(pvm_env["vmid"]), 15, "the VM's processes to end")


def task_lines(out: str) -> list[str]:
    """The lines the spawned task wrote, as the console relays them ([1:tid] text)."""
    return [m.group(1) for m in re.finditer(r"^\[1:t[0-9a-f]+\] (.*)$", out, re.M)]


@pytest.mark.parametrize("prog, args, expect", RUNS)
def test_example_runs_from_the_console(vm, prog, args, expect):
    r = vm(f"spawn -> {os.path.join(EXAMPLES, prog)} {args}")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = task_lines(r.stdout)
    assert any(re.search(expect, ln) for ln in lines), r.stdout + r.stderr
    assert not any("WRONG" in ln or "Traceback" in ln for ln in lines), r.stdout
    assert "[1] finished" in r.stdout, r.stdout

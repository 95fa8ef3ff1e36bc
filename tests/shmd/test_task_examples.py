"""The examples run by hand against a running daemon: run each one and check it."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "examples", *args[:1]), *args[1:]],
                          capture_output=True, text=True, timeout=120, start_new_session=True)


def test_pingpong(daemon):
    r = run("pingpong.py", "--sizes", "0,100,65536,3000000", "--rounds", "20")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("ping t40")
    assert [ln.split()[0] for ln in lines[2:]] == ["0", "100", "65536", "3000000"]
    st = daemon.wait_idle()
    assert st["tasks"] == [] and st["counters"]["joined"] == 2


def test_master_worker(daemon):
    r = run("master_worker.py", "--workers", "3", "--blocks", "30", "--rows", "300")
    assert r.returncode == 0, r.stderr
    assert "30 blocks" in r.stdout and "all results correct" in r.stdout
    st = daemon.wait_idle()
    assert st["tasks"] == [] and st["counters"]["joined"] == 4


def test_examples_without_a_daemon_say_so(pvm_env):
    for name in ("pingpong.py", "master_worker.py"):
        r = run(name)
        assert r.returncode == 1 and "No pvm_shmd" in r.stderr

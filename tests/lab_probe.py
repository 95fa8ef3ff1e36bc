"""What every lab-using test shares: whether a lab can run here (skip with the reason when
not), private lab directories and names, a lab for a module, and the check that one is gone.

The decision is pvm-lab's own probe (pvmconsole.lab.probe: made once per process), so a
machine that refuses namespaces or mounts (a container, a chroot) skips every lab test with
the system's words instead of erroring in each; a lab that fails on a machine that passed
the probe is a real failure.
"""
from __future__ import annotations

import os
import secrets
import shutil
import string
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import need_root

from pvmconsole import lab as labmod


def need_lab() -> None:
    """Skip with the reason when the lab cannot be made here (root, programs, namespaces,
    mounts, sshd: pvm-lab's probe)."""
    need_root("the SSH lab")
    why = labmod.probe()
    if why:
        pytest.skip(f"the SSH lab can't run on this machine: {why}")


def lab_args(tag: str) -> tuple[str, str]:
    """A private directory and namespace name, so a test lab never meets a user's lab, nor
    another test run's (not by pid: runs in PID namespaces of their own are all pid 1)."""
    d = tempfile.mkdtemp(prefix=f"pvm-lab-{tag}-", dir="/run")
    alphabet = string.ascii_lowercase + string.digits
    return d, f"t{tag[:1]}" + "".join(secrets.choice(alphabet) for _ in range(7))  # 9 of 10


def ssh(lab: labmod.Lab, host: str, cmd: str) -> subprocess.CompletedProcess:
    """Real OpenSSH client with the lab's config."""
    return subprocess.run(["ssh", "-F", lab.ssh_config, "-o", "BatchMode=yes", host, cmd],
                          capture_output=True, text=True, timeout=20)


def lab_traces(lab: labmod.Lab) -> list[str]:
    """Everything of *lab* still visible from the root namespace."""
    out = []
    netns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    out += [f"netns {ns}" for ns in [lab.name] + [h.netns for h in lab.hosts] if ns in netns]
    if os.path.exists(f"/sys/class/net/{lab.root_if}"):
        out.append(f"interface {lab.root_if}")
    if os.path.exists(lab.dir):
        out.append(f"directory {lab.dir}")
    out += [f"process {h.pid}" for h in lab.hosts if os.path.exists(f"/proc/{h.pid}")]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if lab.dir.encode() in f.read():
                    out.append(f"process {pid} (lab command line)")
        except OSError:
            pass
    return out


@contextmanager
def running_lab(tag: str, n: int, **kw) -> Iterator[labmod.Lab]:
    """A lab of *n* hosts for a test module (skips when no lab can run here); torn down,
    and checked gone, afterwards."""
    need_lab()
    d, name = lab_args(tag)
    try:
        lab = labmod.up(n, d, name, **kw)
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)  # (up removes only a directory it made)
        raise
    try:
        yield lab
    finally:
        problems = labmod.down(d)
        assert problems == [] and lab_traces(lab) == []

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


def write_progs(lab: labmod.Lab, progs: dict[str, str]) -> str:
    """Test programs (name -> source) in the lab's directory, which its hosts share
    (their /tmp is private); returns that directory."""
    d = os.path.join(lab.dir, "progs")
    os.makedirs(d)
    for name, text in progs.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    return d


def host_procs(lab: labmod.Lab, host: str, vmid: str, daemons: bool = False) -> list[str]:
    """Live processes on a lab host whose environment carries our VM id (tasks, pvm_spawn);
    with *daemons*, also those started with -vmid=it (pvm_shmd, pvm_netd)."""
    r = ssh(lab, host, f"grep -l -a PVM_VMID={vmid} /proc/[0-9]*/environ 2>/dev/null | "
                       "while read f; do d=${f%/environ}; "
                       "grep -q '^State:.*[ZX]' $d/status || echo ${d#/proc/}; done; true")
    out = r.stdout
    if daemons:
        out += ssh(lab, host, f"pgrep -f -- '[-]vmid={vmid}'; true").stdout  # ([-]: not this shell)
    return sorted({p for p in out.split() if p.isdigit()})


def lab_vm_setup(lab: labmod.Lab, tmp: str, ep: str, shmd_opts: str) -> tuple[str, dict[str, str]]:
    """A hostfile naming every lab host (this checkout's pvm_shmd, programs found on *ep*)
    and the console's environment for it (the lab's ssh_config, a home of its own in *tmp*,
    $PVM_SHMD_OPTS *shmd_opts*): (hostfile path, environment)."""
    hostfile = os.path.join(tmp, "hostfile")
    dx = labmod.local_program("pvm_shmd")
    with open(hostfile, "w") as f:
        f.write(f"* ep={ep}\n" + "".join(f"{h.name} dx={dx}\n" for h in lab.hosts))
    home = os.path.join(tmp, "home")
    os.mkdir(home)
    return hostfile, {**os.environ, "PVM_SSH_CONFIG": lab.ssh_config, "HOME": home, "PVM_SHMD_OPTS": shmd_opts}

"""pvm-lab: emulated hosts with their own IPC, /tmp and PID space, reached over real sshd."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager

import pytest

from conftest import need_root
from pvmconsole import lab as labmod


def need_lab() -> None:
    """Skip with the reason when the lab cannot be made here."""
    need_root("the SSH lab")
    for prog in ("/usr/sbin/sshd", "ssh-keygen", "ip", "unshare"):
        if not shutil.which(prog):
            pytest.skip(f"the SSH lab needs {prog} (apt-get install openssh-server iproute2)")


def lab_args(tag: str) -> tuple[str, str]:
    """A private directory and namespace name, so a test lab never meets a user's lab."""
    d = tempfile.mkdtemp(prefix=f"pvm-lab-{tag}-", dir="/run")
    return d, f"t{tag}{os.getpid() % 100000}"


def ssh(lab: labmod.Lab, host: str, cmd: str) -> subprocess.CompletedProcess:
    """Real OpenSSH client with the lab's config."""
    return subprocess.run(["ssh", "-F", lab.ssh_config, "-o", "BatchMode=yes", host, cmd],
                          capture_output=True, text=True, timeout=20)


def root_shm_keys() -> set[int]:
    with open("/proc/sysvipc/shm") as f:
        next(f)
        return {int(line.split()[0]) for line in f}


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
def running_lab(tag: str, n: int, **kw):
    """A lab of *n* hosts for a test module; torn down, and checked gone, afterwards."""
    need_lab()
    d, name = lab_args(tag)
    lab = labmod.up(n, d, name, **kw)
    try:
        yield lab
    finally:
        problems = labmod.down(d)
        assert problems == [] and lab_traces(lab) == []


def test_lab_hosts_are_separate_and_down_leaves_nothing():
    need_lab()
    d, name = lab_args("a")
    lab = labmod.up(3, d, name)
    try:
        assert [h.name for h in lab.hosts] == ["pvmh1", "pvmh2", "pvmh3"]
        assert labmod.main(["--dir", d, "status"]) == 0
        assert [st for _, st in labmod.status(d)] == ["up"] * 3

        r = ssh(lab, "pvmh1", "hostname; echo $$; ipcmk -M 4096 -p 600 | tr -dc 0-9; echo; "
                              "touch /tmp/only-on-h1")
        assert r.returncode == 0, r.stderr
        hostname, shell_pid, shmid = r.stdout.split()
        assert hostname == "pvmh1"
        assert int(shell_pid) < 100, "host 1 has its own PID namespace"
        # The segment exists on host 1 ...
        assert shmid in ssh(lab, "pvmh1", "ipcs -m").stdout.split()
        # ... and nowhere else: not on host 2, not in the root namespace.
        r2 = ssh(lab, "pvmh2", "hostname; ipcs -m | awk 'NR>3 && NF' | wc -l; "
                               "ls -A /tmp | grep -c only-on-h1")
        assert r2.stdout.split() == ["pvmh2", "0", "0"], r2.stdout
        r1 = ssh(lab, "pvmh1", "ipcs -m | awk 'NR>3 && NF {print $1}'")
        key = int(r1.stdout.split()[0], 16)
        assert key not in root_shm_keys()
        assert not os.path.exists("/tmp/only-on-h1")
        # Names resolve inside hosts; the shared checkout is visible in every host.
        r3 = ssh(lab, "pvmh3", "getent hosts pvmh1; test -x " + labmod.local_program("pvm_shmd") + " && echo venv")
        assert r3.stdout.split() == [lab.hosts[0].addr, "pvmh1", "venv"], r3.stdout
        # Files for users: a hostfile naming every host with the venv's daemon.
        with open(lab.hostfile) as f:
            lines = [l for l in f if l.strip() and not l.startswith("#")]
        assert [l.split()[0] for l in lines] == ["pvmh1", "pvmh2", "pvmh3"]
        assert all(l.split()[1].startswith("dx=/") for l in lines)
        # A process left running on a host is ended by down.
        assert ssh(lab, "pvmh2", "setsid sleep 600 </dev/null >/dev/null 2>&1 &").returncode == 0
    finally:
        problems = labmod.down(d)
    assert problems == []
    assert lab_traces(lab) == []


def test_second_lab_same_dir_refused_and_bad_input():
    need_lab()
    d, name = lab_args("b")
    lab = labmod.up(1, d, name)
    try:
        with pytest.raises(labmod.LabError, match="already up"):
            labmod.up(1, d, name + "x")
        with pytest.raises(labmod.LabError, match="another lab"):
            labmod.up(1, d + "-other", name)
        assert not os.path.exists(d + "-other")
    finally:
        labmod.down(d)
    assert lab_traces(lab) == []
    with pytest.raises(labmod.LabError, match="bad lab name"):
        labmod.up(1, d, "Bad;name")
    with pytest.raises(labmod.LabError, match="bad host count"):
        labmod.up(0, d, name)
    with pytest.raises(labmod.LabError, match="no lab"):
        labmod.down(d)

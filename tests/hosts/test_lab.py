"""pvm-lab: emulated hosts with their own IPC, /tmp and PID space, reached over real sshd."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from lab_probe import lab_args, lab_traces, need_lab, running_lab, ssh  # noqa: F401 (re-exported)

from pvmconsole import lab as labmod

pytestmark = pytest.mark.lab  # real sshd servers, lab hosts or namespaces (root)


def root_shm_keys() -> set[int]:
    with open("/proc/sysvipc/shm") as f:
        next(f)
        return {int(line.split()[0]) for line in f}


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


# A machine without /etc/hosts, for real: a private mount namespace whose /etc is a copy of the
# machine's without it ($1 "missing"), or with a directory there ($1 "dir": a host's start must
# fail, saying why). The lab is made, used and removed in there (its namespaces are named
# in that mount namespace's /run/netns only).
_OTHER_ETC = r"""
set -e
etc=$(mktemp -d)
mount -t tmpfs pvm-other-etc "$etc"
cp -a /etc/. "$etc/"
rm -f "$etc/hosts"
if [ "$1" = dir ]; then mkdir "$etc/hosts"; fi
mount --bind "$etc" /etc
shift
exec "$@"
"""
_LAB_IN_THERE = """
import subprocess, sys
from pvmconsole import lab
d, name = sys.argv[1:3]
try:
    made = lab.up(2, d, name, password="pw-no-hosts")  # /etc/shadow is mounted in there too
except lab.LabError as e:
    print(f"up failed: {e}")
    sys.exit(0)
try:
    r = subprocess.run(["ssh", "-F", made.ssh_config, "-o", "BatchMode=yes", "pvmh2",
                        "getent hosts pvmh1; test -s /etc/passwd && echo passwd; "
                        "grep -c '^root:[$]6[$]' /etc/shadow"],
                       capture_output=True, text=True, timeout=20)
    print(r.stdout, end="")
    print(r.stderr, end="", file=sys.stderr)
finally:
    print("down:", lab.down(d))
"""


def test_lab_works_without_etc_hosts():
    need_lab()
    d, name = lab_args("e")
    os.rmdir(d)  # made (and removed) in there
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", _OTHER_ETC,
                        "other-etc", "missing", sys.executable, "-c", _LAB_IN_THERE, d, name],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and re.fullmatch(r"10\.77\.\d+\.11\s+pvmh1", lines[0]), r.stdout + r.stderr
    assert lines[1:] == ["passwd", "1", "down: []"], r.stdout + r.stderr
    assert not os.path.exists(d)
    netns = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    assert not [ns for ns in netns if ns == name or ns.startswith(name + "-")]


def test_up_says_why_a_host_did_not_start_not_only_its_last_line():
    """A host whose init fails (/etc/hosts is a directory: nothing can be mounted on it) makes
    `pvm-lab up` print the failing step's own words, before mount's hint about dmesg."""
    need_lab()
    d, name = lab_args("d")
    os.rmdir(d)
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", _OTHER_ETC,
                        "other-etc", "dir", labmod.local_program("pvm-lab"), "--dir", d, "up", "1",
                        "--name", name], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout) == (1, ""), r.stderr
    assert re.fullmatch(r"pvm-lab: pvmh1: sshd did not start; its start-up said: mount: /etc/hosts: "
                        r".*Not a directory.*\n", r.stderr), r.stderr
    assert not os.path.exists(d)
    netns = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    assert not [ns for ns in netns if ns == name or ns.startswith(name + "-")]

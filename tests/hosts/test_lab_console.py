"""The console on a lab of emulated hosts: real pvm, real sshd, real pvm_shmd on every host."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from consoles import wait_for
from lab_probe import running_lab, ssh

from pvmconsole import lab as labmod

pytestmark = pytest.mark.lab  # real sshd servers, lab hosts or namespaces (root)

PVM = os.path.join(os.path.dirname(sys.executable), "pvm")
PASSWORD = "lab-pw-2"


@pytest.fixture(scope="module")
def lab():
    with running_lab("c", 4, password=PASSWORD) as lab:
        yield lab


@pytest.fixture
def console(lab, tmp_path, pvm_env):
    """Run `pvm [hostfile] -e CMDS` in the root namespace against the lab."""
    env = dict(os.environ, PVM_SSH_CONFIG=lab.ssh_config, HOME=str(tmp_path))

    def run(cmds: str, hostfile: str | None = None, config: str | None = None) -> subprocess.CompletedProcess:
        e = dict(env, PVM_SSH_CONFIG=config) if config else env
        argv = [PVM, "--norc", *([hostfile] if hostfile else []), "-e", cmds]
        return subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd=tmp_path, env=e)

    yield run
    run("halt")  # never leave a VM behind, whatever the test did


def daemons(lab, host: str, vmid: str) -> list[str]:
    # (by name: the console's start forks pvm_netd from pvm_shmd, with pvm_shmd's command line)
    r = ssh(lab, host, f"ps -C pvm_shmd -o pid=,args= | grep -- '-vmid={vmid} ' || true")
    return r.stdout.splitlines()


def ipc_objects(lab, host: str) -> list[str]:
    r = ssh(lab, host, "ipcs -m -s -q | awk '$1 ~ /^0x/'")
    return r.stdout.splitlines()


def test_four_hosts_conf_stat_halt(lab, console, pvm_env):
    vmid = pvm_env["vmid"]
    t = time.monotonic()
    r = console("conf; stat", lab.hostfile)
    took = time.monotonic() - t
    assert r.returncode == 0, r.stderr
    names = [h.name for h in lab.hosts]
    conf = {ln.split()[0]: ln.split() for ln in r.stdout.splitlines() if ln.split()[:1] and ln.split()[0] in names}
    assert sorted(conf) == names, r.stdout
    assert "5 hosts, 1 data format" in r.stdout
    stat_rows = [ln for ln in r.stdout.splitlines() if ln.split()[:1] and ln.split()[0] in names
                 and "LINUX64" not in ln]
    assert len(stat_rows) == 4 and all(ln.split()[1].isdigit() for ln in stat_rows), r.stdout
    # One daemon per host, each in an IPC namespace of its own (and not the console's).
    ipc_ns = set()
    for h in names:
        found = daemons(lab, h, vmid)
        assert len(found) == 1, (h, found)
        pid = found[0].split()[0]
        ipc_ns.add(ssh(lab, h, f"readlink /proc/{pid}/ns/ipc").stdout.strip())
    assert len(ipc_ns) == 4 and os.readlink("/proc/self/ns/ipc") not in ipc_ns
    assert all(ipc_objects(lab, h) for h in names)
    print(f"start of 4 lab hosts + master through the console: {took:.2f} s")

    # reset restarts every daemon over the open connections; delete stops one host's.
    before = {h: daemons(lab, h, vmid) for h in names}
    r = console("reset; delete pvmh2; conf")
    assert r.returncode == 0, r.stderr
    assert daemons(lab, "pvmh2", vmid) == [] and ipc_objects(lab, "pvmh2") == []
    for h in ("pvmh1", "pvmh3", "pvmh4"):
        now = daemons(lab, h, vmid)
        assert len(now) == 1 and now != before[h], (h, before[h], now)

    r = console("halt")
    assert r.returncode == 0, r.stderr
    for h in names:
        assert daemons(lab, h, vmid) == [] and ipc_objects(lab, h) == [], h


def test_failures_are_one_line_per_host_and_the_rest_joins(lab, console, pvm_env, tmp_path):
    vmid = pvm_env["vmid"]
    dx = labmod.local_program("pvm_shmd")
    net = lab.subnet.rsplit(".", 1)[0]
    addr = {h.name: h.addr for h in lab.hosts}
    wrong_key = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong_key)], check=True)
    empty_kh = tmp_path / "empty_known_hosts"
    empty_kh.write_text("")
    common = f"    User root\n    UserKnownHostsFile {lab.known_hosts}\n    IdentityFile {lab.key}\n"
    cfg = tmp_path / "ssh_config"
    cfg.write_text(
        f"Host ghost\n    HostName {net}.250\n    ConnectTimeout 1\n{common}"
        f"Host closed\n    HostName {addr['pvmh1']}\n    Port 2222\n{common}"
        f"Host badkey\n    HostName {addr['pvmh2']}\n    User root\n    IdentityFile {wrong_key}\n"
        f"    IdentitiesOnly yes\n    UserKnownHostsFile {lab.known_hosts}\n"
        f"Host newkey\n    HostName {addr['pvmh3']}\n    User root\n    IdentityFile {lab.key}\n"
        f"    UserKnownHostsFile {empty_kh}\n"
        f"Host inj1 inj2\n    HostName {addr['pvmh3']}\n{common}"
        + open(lab.ssh_config).read())
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("\n".join([
        f"pvmh1 dx={dx}",
        "pvmh2 dx=/nonexistent/pvm_shmd",
        f"ghost dx={dx}",
        f"closed dx={dx}",
        f"badkey dx={dx}",
        f"newkey dx={dx}",
        # shell syntax in values that reach the host (only $NAME is expanded there)
        "pvmh3 dx=/bin/true;touch${IFS}/tmp/pwned",
        f"inj1 lo=root$(touch${{IFS}}/tmp/pwned) dx={dx}",
        f"inj2 wd=/tmp`touch${{IFS}}/tmp/pwned` dx={dx}",
        f"pvmh4 dx={dx}",
    ]) + "\n")
    # pvmh4 already runs a daemon of this VM id: its start must be refused (exit 3).
    pre = ssh(lab, "pvmh4", f"{dx} -vmid={vmid} -host=9 -name=pvmh4")
    assert pre.stdout.startswith("ddpro<"), pre.stderr
    try:
        t = time.monotonic()
        r = console("conf", str(hostfile), config=str(cfg))
        assert time.monotonic() - t < 30, "a dead host stalled the start"
        assert r.returncode == 0, r.stderr
        errs = r.stderr.splitlines()
        expect = {
            "pvmh2": "No such file",
            "ghost": "no answer from",
            "closed": "connection refused",
            "badkey": "authentication as root failed",
            "newkey": "not known",
            "pvmh3": "bad program",
            "inj1": "bad login",
            "inj2": "bad directory",
            "pvmh4": "Duplicate host",
        }
        for host, why in expect.items():
            mine = [ln for ln in errs if ln.startswith(f"pvm: {host}: ")]
            assert len(mine) == 1 and why in mine[0], (host, r.stderr)
        conf_hosts = [ln.split()[0] for ln in r.stdout.splitlines() if ln.split()[:1]
                      and ln.split()[0] in list(expect) + ["pvmh1"]]
        assert conf_hosts == ["pvmh1"], r.stdout
        # Nothing half-started on a failed host, nothing injected anywhere.
        assert daemons(lab, "pvmh2", vmid) == [] and daemons(lab, "pvmh3", vmid) == []
        assert len(daemons(lab, "pvmh4", vmid)) == 1  # only the one that was there before
        for h in ("pvmh1", "pvmh2", "pvmh3", "pvmh4"):
            assert "pwned" not in ssh(lab, h, "ls /tmp").stdout
        assert not os.path.exists("/tmp/pwned")
        assert console("halt").returncode == 0
        assert daemons(lab, "pvmh1", vmid) == [] and ipc_objects(lab, "pvmh1") == []
    finally:
        ssh(lab, "pvmh4", f"{os.path.dirname(dx)}/pvm_shmd_stat --stop -vmid={vmid}")
    assert daemons(lab, "pvmh4", vmid) == [] and ipc_objects(lab, "pvmh4") == []


def test_so_pw_asks_at_the_console_prompt(lab, tmp_path, pvm_env):
    pexpect = pytest.importorskip("pexpect")
    dx = labmod.local_program("pvm_shmd")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(f"pvmh1 so=pw dx={dx}\npvmh2 so=pw dx={dx}\n")
    env = dict(os.environ, PVM_SSH_CONFIG=lab.ssh_config, HOME=str(tmp_path))
    child = pexpect.spawn(PVM, ["--norc", str(hostfile), "-e", "conf; halt"], env=env,
                          cwd=str(tmp_path), timeout=60, encoding="utf-8")
    try:
        answers = {}
        for _ in range(2):
            child.expect(r"Password \((pvmh\d):root\): ")
            host = child.match.group(1)
            answers[host] = PASSWORD if host == "pvmh1" else "wrong"
            child.sendline(answers[host])
        child.expect(pexpect.EOF)
        out = child.before
    finally:
        child.close(force=True)
    assert "pvmh2: Can't start pvmd: pvmh2: authentication as root failed (tried password)" in out, out
    assert [ln.split()[0] for ln in out.splitlines() if ln.split()[:1] and ln.split()[0].startswith("pvmh")
            and "LINUX64" in ln] == ["pvmh1"], out
    assert daemons(lab, "pvmh1", pvm_env["vmid"]) == []  # halted


def test_host_dying_after_it_joined(lab, console, pvm_env, tmp_path):
    """Last in this module: it kills host 4."""
    vmid = pvm_env["vmid"]
    dx = labmod.local_program("pvm_shmd")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(f"pvmh3 dx={dx}\npvmh4 dx={dx}\n")
    assert console("conf", str(hostfile)).returncode == 0
    h4 = lab.hosts[3]
    pids = labmod._netns_pids(h4.netns)
    # (not check=True: killing the host's PID 1 takes every process of it with it, so a
    # later pid in the list, its pvm_netd, may be gone before kill reaches it)
    subprocess.run(["kill", "-KILL", *map(str, pids)], capture_output=True)
    wait_for(lambda: not labmod._netns_pids(h4.netns), 10, "host 4's processes to die")
    t = time.monotonic()
    r = console("stat; mstat pvmh3 pvmh4")
    assert time.monotonic() - t < 30
    rows: dict[str, str] = {}
    for ln in r.stdout.splitlines() + r.stderr.splitlines():
        if ln.split():
            rows.setdefault(ln.split()[0], ln)  # stat's row, not mstat's after it (the script goes on)
    assert "pvmh3" in rows and rows["pvmh3"].split()[1].isdigit(), r.stdout
    lines4 = [ln for ln in (r.stdout + r.stderr).splitlines()
              if "pvmh4" in ln and not ln.startswith("pvm> ")]  # not the echoed commands
    assert lines4 and all("connection refused" in ln or "Host failed" in ln or "pvmh4  " in ln
                          for ln in lines4), r.stdout + r.stderr
    r = console("halt")
    assert daemons(lab, "pvmh3", vmid) == [] and ipc_objects(lab, "pvmh3") == []

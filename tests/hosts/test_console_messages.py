"""Messages that say what failed, for which host, and what to do (issue #12, item 6): the
real console; where a host is needed, a real lab (real sshd, real pvm_shmd on the host)."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest
from lab_probe import lab_args, need_lab, running_lab, ssh

from pvmconsole import lab as labmod
from pvmconsole.vmtable import TableStore

pytestmark = pytest.mark.lab  # real sshd servers, lab hosts or namespaces (root)

PVM = os.path.join(os.path.dirname(sys.executable), "pvm")
DX = labmod.local_program("pvm_shmd")
STAT = os.path.join(os.path.dirname(DX), "pvm_shmd_stat")


def pvm(tmp_path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PVM, "--norc", *args], capture_output=True, text=True, timeout=90,
                          cwd=tmp_path, env=env)


@pytest.fixture
def env(pvm_env, tmp_path):
    """The console's environment: private PVM_TMP and VM id, a HOME without ~/.ssh, no
    PVM_SSH_CONFIG and no PVM_LAB_DIR unless a test sets them."""
    home = tmp_path / "home"
    home.mkdir()
    e = {k: v for k, v in os.environ.items() if k not in ("PVM_SSH_CONFIG", "PVM_LAB_DIR")}
    e.update(HOME=str(home), PVM_SHMD_OPTS="-maxpages=64 -maxsegs=2")
    return e


def test_missing_or_unreadable_hostfile_is_one_line_with_the_path_once(tmp_path, env):
    missing = str(tmp_path / "no-such-hostfile")
    r = pvm(tmp_path, env, missing, "-e", "conf")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == f"pvm: {missing}: No such file or directory\n"
    r = pvm(tmp_path, env, str(tmp_path), "-e", "conf")  # a directory
    assert (r.returncode, r.stderr) == (2, f"pvm: {tmp_path}: Is a directory\n")
    table = os.path.join(env["PVM_TMP"], f"pvm.{os.getuid()}", f"pvmd.{os.getuid()}.{env['PVM_VMID']}")
    assert not os.path.exists(table)  # nothing started


@pytest.fixture(scope="module")
def lab():
    with running_lab("m", 1) as lab:
        yield lab


def daemons(lab, vmid: str) -> list[str]:
    # (by name: the console's start forks pvm_netd from pvm_shmd, with pvm_shmd's command line)
    r = ssh(lab, "pvmh1", f"ps -C pvm_shmd -o pid=,args= | grep -- '-vmid={vmid} ' || true")
    return r.stdout.splitlines()


def test_unresolved_lab_host_hints_at_the_labs_ssh_config(lab, tmp_path, env):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(f"pvmh1 dx={DX}\n")
    # A lab is up (found through PVM_LAB_DIR, as pvm-lab finds it) but PVM_SSH_CONFIG is not set.
    r = pvm(tmp_path, dict(env, PVM_LAB_DIR=lab.dir), str(hostfile), "-e", "conf; halt")
    assert r.returncode == 0, r.stderr
    mine = [ln for ln in r.stderr.splitlines() if ln.startswith("pvm: pvmh1: ")]
    assert len(mine) == 1, r.stderr
    assert mine[0].startswith("pvm: pvmh1: No such host: pvmh1: cannot resolve pvmh1 ("), mine[0]
    assert mine[0].endswith(f"pvmh1 is a host of the pvm-lab in {lab.dir}, whose names only its "
                            f"ssh_config knows: set PVM_SSH_CONFIG={lab.ssh_config}"), mine[0]
    # No lab with that host: the general advice, no lab named.
    r = pvm(tmp_path, dict(env, PVM_LAB_DIR=str(tmp_path)), str(hostfile), "-e", "halt")
    mine = [ln for ln in r.stderr.splitlines() if ln.startswith("pvm: pvmh1: ")]
    assert len(mine) == 1 and mine[0].endswith(
        "check the name, or give its address (ip= in the hostfile, HostName in ssh_config)"), r.stderr
    assert "PVM_SSH_CONFIG" not in r.stderr


def _config_with(lab, tmp_path, known_hosts: str, extra: str = "") -> str:
    """The lab's ssh_config, its known_hosts replaced by *known_hosts* (+ *extra* lines)."""
    with open(lab.ssh_config) as f:
        text = f.read().replace(lab.known_hosts, known_hosts)
    path = tmp_path / "ssh_config"
    path.write_text(text + extra)
    return str(path)


def _break_console_channel(vmid: str, name: str) -> None:
    """Point the VM table's record of *name*'s pvm_netd at a port nobody listens on."""
    store = TableStore(vmid)
    with store.locked():
        t = store.load()
        assert t is not None
        rec = next(h for h in t.hosts if h.name == name)
        with socket.socket() as s:  # a port the OS just gave out and took back: closed
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        assert rec.net, rec
        rec.net = [rec.net[0], closed]
        store.save(t)


def test_delete_of_a_host_whose_key_became_unknown_or_changed_says_so(lab, tmp_path, env):
    vmid = env["PVM_VMID"]
    kh = tmp_path / "known_hosts"
    with open(lab.known_hosts) as f:
        good = f.read()
    kh.write_text(good)
    e = dict(env, PVM_SSH_CONFIG=_config_with(lab, tmp_path, str(kh)))
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(f"pvmh1 dx={DX}\n")
    try:
        r = pvm(tmp_path, e, str(hostfile), "-e", "conf")
        assert r.returncode == 0 and len(daemons(lab, vmid)) == 1, r.stderr
        addr = lab.hosts[0].addr
        # delete asks pvm_netd first (authenticated by the VM's keys, no SSH); with the
        # console's channel to it broken the console falls back to SSH, whose host-key
        # checks this test is about. Only the console's channel: pvm_netd itself keeps
        # beating to the master's, so the host is not counted down (and dropped from conf)
        _break_console_channel(vmid, "pvmh1")

        kh.write_text("")  # the host's key is not known any more
        t = time.monotonic()
        r = pvm(tmp_path, e, "-e", "delete pvmh1")
        # a quick look at the channel first ("alive", 1 s): not the stop's whole 33 s wait
        # for an answer that cannot come, before SSH
        assert time.monotonic() - t < 20
        assert r.returncode == 1
        assert "                   pvmh1  Permission denied" in r.stdout.splitlines(), r.stdout
        assert "Can't start pvmd" not in r.stderr
        err = r.stderr.strip()
        assert re.fullmatch(
            rf"-e:1: delete: pvmh1: could not stop its pvm_shmd: SSH refused: host key of "
            rf"{re.escape(addr)} not known \(ssh-ed25519 SHA256:\S+\); refused\. To accept it: ssh "
            rf"pvmh1 once, or set PVM_SSH_ACCEPT_NEW=1 \(checked: {re.escape(str(kh))}\); pvmh1 "
            rf"stays in the virtual machine: delete it again once SSH to it works", err), err
        assert len(daemons(lab, vmid)) == 1  # it was not stopped: it stays in the table
        assert "pvmh1" in pvm(tmp_path, e, "-e", "conf").stdout

        # A changed key (pvmh1 known with another key) is refused with the ssh-keygen -R advice.
        other = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                                str(tmp_path / "other")], capture_output=True, timeout=20)
        assert other.returncode == 0
        kind, blob = (tmp_path / "other.pub").read_text().split()[:2]
        kh.write_text(f"pvmh1,{addr} {kind} {blob}\n")
        r = pvm(tmp_path, e, "-e", "delete pvmh1")
        assert r.returncode == 1 and "Can't start pvmd" not in r.stderr
        assert r.stderr.startswith("-e:1: delete: pvmh1: could not stop its pvm_shmd: SSH refused: "
                                   f"HOST KEY CHANGED for {addr}: "), r.stderr
        assert f"(if the change is expected: ssh-keygen -R {addr}); pvmh1 stays in" in r.stderr

        kh.write_text(good)  # as the message says: fixed, delete again
        r = pvm(tmp_path, e, "-e", "delete pvmh1; conf")
        assert r.returncode == 0, r.stderr
        assert "                   pvmh1  deleted" in r.stdout.splitlines()
        assert daemons(lab, vmid) == []
    finally:
        kh.write_text(good)
        pvm(tmp_path, e, "-e", "halt")
        ssh(lab, "pvmh1", f"{STAT} --stop -vmid={vmid}")
    assert daemons(lab, vmid) == []


def test_halt_after_the_lab_is_gone_says_the_host_is_unreachable(tmp_path, env):
    """Two VMs on a lab of their own, then the lab is taken down: the one whose ssh_config
    is still there can't reach the host; the other's ssh_config went with the lab."""
    need_lab()
    d, name = lab_args("g")
    lab = labmod.up(1, d, name)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(f"pvmh1 dx={DX}\n")
    # (copies that outlive the lab; a short ConnectTimeout: the address is routed nowhere now)
    kh = tmp_path / "known_hosts"
    with open(lab.known_hosts) as f:
        kh.write_text(f.read())
    (tmp_path / "key").write_bytes(open(lab.key, "rb").read())
    os.chmod(tmp_path / "key", 0o600)
    kept = _config_with(lab, tmp_path, str(kh))
    with open(kept) as f:
        text = f.read().replace(lab.key, str(tmp_path / "key"))
    with open(kept, "w") as f:
        f.write("Host *\n    ConnectTimeout 2\n" + text)
    vm1 = dict(env, PVM_SSH_CONFIG=kept)
    vm2 = dict(env, PVM_SSH_CONFIG=lab.ssh_config, PVM_VMID=env["PVM_VMID"] + "b")
    vm3 = dict(env, PVM_SSH_CONFIG=kept, PVM_VMID=env["PVM_VMID"] + "c")
    try:
        for e in (vm1, vm2, vm3):
            r = pvm(tmp_path, e, str(hostfile), "-e", "conf")
            assert r.returncode == 0 and "pvmh1" in r.stdout, r.stderr
    finally:
        assert labmod.down(d) == []
    r = pvm(tmp_path, vm1, "-e", "halt")
    assert r.returncode == 1 and "Can't start pvmd" not in r.stderr, r.stderr
    assert r.stderr.startswith("-e:1: halt: pvmh1: could not stop its pvm_shmd: the host is "
                               "unreachable ("), r.stderr
    assert r.stderr.rstrip().endswith(
        f"); if its pvm_shmd still runs there, stop it there with pvm_shmd_stat --stop "
        f"-vmid={vm1['PVM_VMID']}"), r.stderr
    r = pvm(tmp_path, vm2, "-e", "halt")
    assert r.returncode == 1 and "Can't start pvmd" not in r.stderr, r.stderr
    assert r.stderr.startswith(
        f"-e:1: halt: pvmh1: could not stop its pvm_shmd: SSH can't be used: ssh config "
        f"{lab.ssh_config} not found (PVM_SSH_CONFIG names it; was it removed, with its "
        f"pvm-lab?): set PVM_SSH_CONFIG to an existing file, or unset it to use ~/.ssh/config; "
        f"if its pvm_shmd still runs there"), r.stderr
    # delete of an unreachable host: it is dropped, and the message says what was not done
    r = pvm(tmp_path, vm3, "-e", "delete pvmh1")
    assert r.returncode == 1 and "                   pvmh1  Host failed" in r.stdout.splitlines(), r.stdout
    assert r.stderr.startswith("-e:1: delete: pvmh1: could not stop its pvm_shmd: the host is "
                               "unreachable ("), r.stderr
    assert r.stderr.rstrip().endswith(
        f"); dropped from the virtual machine; if its pvm_shmd still runs there, stop it there "
        f"with pvm_shmd_stat --stop -vmid={vm3['PVM_VMID']}"), r.stderr
    r = pvm(tmp_path, vm3, "-e", "conf; halt")
    assert r.returncode == 0 and "1 host, 1 data format" in r.stdout, r.stdout + r.stderr
    for e in (vm1, vm2, vm3):  # halt went on: the master's daemon and the table are gone
        table = os.path.join(e["PVM_TMP"], f"pvm.{os.getuid()}", f"pvmd.{os.getuid()}.{e['PVM_VMID']}")
        assert not os.path.exists(table)

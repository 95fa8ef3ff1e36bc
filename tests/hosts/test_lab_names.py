"""No name look-up on the console's way to its hosts may hang on a name that does not resolve
(issue #12, item 5). The machine's name is made unresolvable for real: a UTS namespace with a
host name no file knows, and (in a private mount namespace) an /etc/resolv.conf naming a DNS
server on a loopback address that reads every query and never answers, so every look-up of
that name waits for the resolver's 5 s. Real console, real lab, real sshd, real daemons."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from lab_probe import running_lab

from pvmconsole import lab as labmod

pytestmark = pytest.mark.lab  # real sshd servers, lab hosts or namespaces (root)

PVM = os.path.join(os.path.dirname(sys.executable), "pvm")
DX = labmod.local_program("pvm_shmd")
STALL_MARGIN = 4.0  # a start may take this much longer than with a resolvable name, no more
UNRESOLVABLE = f"pvmunres{os.getpid()}"  # our UTS namespace's host name


@contextmanager
def silent_dns(tmp_path) -> Iterator[str]:
    """An /etc/resolv.conf (path yielded) whose name server never answers."""
    addr = f"127.77.{os.getpid() % 250 + 1}.53"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 53))
    s.settimeout(0.1)
    stop = threading.Event()

    def swallow() -> None:
        while not stop.is_set():
            try:
                s.recvfrom(4096)
            except OSError:
                pass

    t = threading.Thread(target=swallow, daemon=True)
    t.start()
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {addr}\noptions timeout:5 attempts:1\n")
    try:
        yield str(resolv)
    finally:
        stop.set()
        t.join(5)
        s.close()


def unresolvable(resolv: str, argv: list[str]) -> list[str]:
    """*argv* run where this machine's name does not resolve (see the module's doc)."""
    return ["unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c",
            'hostname "$1" && mount --bind "$2" /etc/resolv.conf && shift 2 && exec "$@"',
            "sh", UNRESOLVABLE, resolv, *argv]


@pytest.fixture(scope="module")
def lab():
    with running_lab("n", 2) as lab:
        yield lab


@pytest.fixture
def resolv(tmp_path):
    if not os.path.exists("/etc/resolv.conf"):
        pytest.skip("no /etc/resolv.conf to replace in a mount namespace")
    with silent_dns(tmp_path) as path:
        # The stall must be real here (no nss-myhostname, say), else this test proves nothing.
        r = subprocess.run(unresolvable(path, ["timeout", "1", "getent", "hosts", UNRESOLVABLE]),
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 124:
            pytest.skip(f"an unknown host name does not stall look-ups here (getent: exit "
                        f"{r.returncode} {r.stdout.strip()!r}), so there is nothing to bound")
        yield path


def test_name_lookups_on_the_start_path_are_bounded(lab, resolv, tmp_path):
    """is_local, paramiko's config look-up (%l, for every IdentityFile), a host whose own
    name does not resolve, each alone, where the local name does not resolve either."""
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host nowhere\n    HostName nowhere.{UNRESOLVABLE}.example\n    ConnectTimeout 1\n"
                   f"    IdentityFile {tmp_path}/id_%l\n")
    code = f"""
import time
t = time.monotonic()
from pvmconsole.hostlink import is_local
from pvmconsole.ssh import SshError, SshRunner
a = (is_local("pvmh1"), is_local("node.example.org"), is_local("{UNRESOLVABLE}"))
t1 = time.monotonic()
r = SshRunner("pvmh1", config={lab.ssh_config!r})
t2 = time.monotonic()
fq = is_local("{UNRESOLVABLE}.example.org")  # could be our FQDN: looked up, bounded
t3 = time.monotonic()
n = SshRunner("nowhere", config={str(cfg)!r})  # %l expanded where asked for: bounded too
try:
    n.run(["true"], timeout=30)
except SshError as e:
    print(repr(str(e)))
t4 = time.monotonic()
print(a, fq, n.settings["identityfile"], round(t1 - t, 2), round(t2 - t1, 2), round(t3 - t2, 2),
      round(t4 - t3, 2))
"""
    r = subprocess.run(unresolvable(resolv, [sys.executable, "-c", code]), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    said, last = r.stdout.splitlines()
    assert "nowhere: cannot resolve nowhere." in said and "no answer from the name server within 1 s" in said
    words = last.split()
    assert words[:5] == ["(False,", "False,", "True)", "False", f"['{tmp_path}/id_{UNRESOLVABLE}']"], r.stdout
    imports_and_names, runner, fqdn, nowhere = map(float, words[5:])
    assert runner < 1.0, f"SshRunner's config look-up took {runner} s"
    assert imports_and_names < 3.0, f"is_local of plain names took {imports_and_names} s (imports included)"
    assert fqdn < 2.0, f"the bounded FQDN look-up took {fqdn} s"
    assert nowhere < 2.5, f"an unresolvable host with ConnectTimeout 1 took {nowhere} s"


def test_start_after_halt_does_not_stall_when_the_local_name_does_not_resolve(lab, resolv, tmp_path,
                                                                              pvm_env):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{h.name} dx={DX}\n" for h in lab.hosts))
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, PVM_SSH_CONFIG=lab.ssh_config, HOME=str(home),
               PVM_SHMD_OPTS="-maxpages=64 -maxsegs=2")

    def console(wrap, *args: str) -> tuple[float, subprocess.CompletedProcess]:
        t = time.monotonic()
        r = subprocess.run(wrap([PVM, "--norc", *args]), capture_output=True, text=True,
                           timeout=300, cwd=tmp_path, env=env)
        return time.monotonic() - t, r

    def start_after_halt(wrap) -> float:
        try:
            _, r = console(wrap, str(hostfile), "-e", "conf")
            assert r.returncode == 0, r.stderr
            _, r = console(wrap, "-e", "halt")
            assert r.returncode == 0, r.stderr
            took, r = console(wrap, str(hostfile), "-e", "conf")
            assert r.returncode == 0 and "3 hosts" in r.stdout, r.stdout + r.stderr
            return took
        finally:
            console(wrap, "-e", "halt")

    plain = start_after_halt(lambda argv: argv)
    stalled = start_after_halt(lambda argv: unresolvable(resolv, argv))
    print(f"start of a 3-host lab VM after halt: {plain:.2f} s; with the local name "
          f"unresolvable: {stalled:.2f} s")
    assert stalled < plain + STALL_MARGIN, (
        f"the start took {stalled:.1f} s where the local name does not resolve, {plain:.1f} s "
        f"where it does: a name look-up waits for the name server")

"""add / delete / conf / stat / reset / halt over several hosts, with real daemons.

Until the SSH lab is wired in, each "remote" host is a real pvm_shmd on this
machine under its own VM id, reached through the same HostLink the console uses
(only the link factory differs: the seam SSH plugs into).
"""
from __future__ import annotations

import io
import os
import socket
import subprocess

import pytest

from pvmconsole import hostfile as hf
from pvmconsole.commands import full_registry
from pvmconsole.console import Console
from pvmconsole.hostlink import HostLink, is_local, link_for
from pvmconsole.runner import LocalRunner, local_program
from pvmconsole.vm import VirtualMachine
from shmd.errors import PvmError

ME = socket.gethostname()
NODES = ("node1", "node2", "node3")


def fake_remote(name, options, vmid):
    if is_local(name):
        return link_for(name, options, vmid)
    return HostLink(LocalRunner(name), f"{vmid}-{name}", local_program("pvm_shmd"),
                    local_program("pvm_shmd_stat"), wd=options.get("wd"))


@pytest.fixture
def cluster(pvm_env, monkeypatch):
    monkeypatch.setenv("PVM_SHMD_OPTS", "-maxpages=32 -maxsegs=2")
    vm = VirtualMachine(pvm_env["vmid"], link_factory=fake_remote)
    reg, problems = full_registry()
    assert problems == []
    con = Console(reg, vm, io.StringIO(), io.StringIO())
    yield vm, con
    vm.halt()
    for vmid in [pvm_env["vmid"], *(f"{pvm_env['vmid']}-{n}" for n in NODES)]:
        subprocess.run([local_program("pvm_shmd_stat"), "--stop", f"-vmid={vmid}"],
                       capture_output=True, timeout=60)


def run(con: Console, line: str) -> tuple[list[str], str | None]:
    con.out.seek(0)
    con.out.truncate()
    res = con.execute(line)
    return con.out.getvalue().splitlines(), res.error


def test_hosts_from_hostfile_then_add_delete_stat_reset_halt(cluster, pvm_env):
    vm, con = cluster
    hosts = hf.parse(f"{ME} sp=500\n* sp=3\nnode1\n&node2 sp=7 wd=/tmp\n", "hf")
    assert vm.open(hosts) is False
    out, err = run(con, "conf")
    assert err is None
    assert out == ["2 hosts, 1 data format",
                   "                    HOST     DTID     ARCH   SPEED       DSIG",
                   f"{ME:>24}    40000  LINUX64     500 0x00408c41",
                   "                   node1    80000  LINUX64       3 0x00408c41"]

    out, err = run(con, "add node2 'node3 sp=9' node1")
    assert out == ["2 successful", "                    HOST     DTID",
                   "                   node2    c0000", "                   node3   100000",
                   "                   node1 Duplicate host"]
    assert err == "add: node1: Duplicate host (already in the virtual machine)"
    t = vm.table()
    assert (t.host("node2").speed, t.host("node2").options["wd"]) == (7, "/tmp")  # from its & line
    assert t.host("node3").speed == 9  # own option over the defaults

    out, err = run(con, "stat")
    assert err is None and len(out) == 5 and out[0].split()[:3] == ["HOST", "PID", "SEGS"]
    assert [r.split()[0] for r in out[1:]] == [ME, "node1", "node2", "node3"]
    assert all(r.split()[3:6] == ["0", "64", "32"] for r in out[1:])

    node1 = vm.link(t.host("node1"))
    node1_pid = node1.stat()["pid"]
    out, err = run(con, "delete node1 nosuch")
    assert out == ["1 successful", "                    HOST  STATUS",
                   "                   node1  deleted", "                  nosuch  No such host"]
    assert err == "delete: nosuch: No such host"
    assert vm.table().host("node1") is None
    with pytest.raises(PvmError, match="Host failed"):
        node1.stat()
    assert not os.path.exists(f"/proc/{node1_pid}") or open(f"/proc/{node1_pid}/stat").read().split()[2] == "Z"

    out, err = run(con, "add node1")  # the freed index is reused
    assert err is None and out[2] == "                   node1    80000"

    before = {h.name: h.pid for h in vm.table().hosts}
    assert run(con, "reset") == ([], None)
    after = {h.name: h.pid for h in vm.table().hosts}
    assert before.keys() == after.keys() and all(before[n] != after[n] for n in before)
    assert run(con, f"mstat {ME} node1 node2 node3")[1] is None

    assert run(con, "halt")[1] is None
    assert not os.path.exists(vm.store.path)
    for n in NODES:
        r = subprocess.run([local_program("pvm_shmd_stat"), "--json", f"-vmid={pvm_env['vmid']}-{n}"],
                           capture_output=True, timeout=60)
        assert r.returncode == 1


def test_bad_add_argument_starts_nothing(cluster):
    vm, con = cluster
    vm.open(None)
    out, err = run(con, "add node1 'node2 sp=0'")
    assert out == [] and err == 'add: Bad parameter: add:2: speed must be 1..1000000 in "sp=0"'
    assert [h.name for h in vm.table().hosts] == [ME]

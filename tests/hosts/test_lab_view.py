"""``view`` and ``trace`` with hosts over SSH: a lab of emulated hosts (real sshd, real
pvm_shmd on each), the console in the root namespace."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from consoles import wait_for
from lab_probe import lab_vm_setup, running_lab, write_progs

import shmd
from shmd import trace

pytestmark = pytest.mark.lab  # real sshd servers, lab hosts or namespaces (root)

PVM = os.path.join(os.path.dirname(sys.executable), "pvm")


ECHO = """\
import shmd
me = shmd.join(name="echo")
print(f"echo t{me.tid:x}", flush=True)
for _ in range(3):
    m = me.precv(timeout=60)
    me.psend(m.src, m.tag, m.data, timeout=60)
me.precv(timeout=60)
"""


@pytest.fixture(scope="module")
def lab():
    with running_lab("v", 2, password="lab-pw-v") as lab:
        write_progs(lab, {"echo.py": ECHO})
        yield lab


def test_view_and_trace_reach_every_host_over_ssh(lab, tmp_path, pvm_env):
    env = dict(os.environ, PVM_SSH_CONFIG=lab.ssh_config, HOME=str(tmp_path))

    def run(cmds: str, *hostfile: str) -> subprocess.CompletedProcess:
        return subprocess.run([PVM, "--norc", *hostfile, "-e", cmds], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path, env=env)

    try:
        r = run("view; stat; trace on; trace off", lab.hostfile)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        names = [h.name for h in lab.hosts]
        assert any("3 hosts, 0 tasks" in ln for ln in lines), r.stdout  # the master and 2
        for name in names:
            view_row = next(ln for ln in lines if ln.startswith(name + " "))
            stat_row = next(ln.split() for ln in lines if ln.split()[:1] == [name]
                            and len(ln.split()) == 8)
            assert f"pid {stat_row[1]} " in view_row, (view_row, stat_row)
            assert f"0/{int(stat_row[4])}" in view_row  # no page used, as stat says
            # its clock, measured over SSH: these hosts share the kernel's clock, so the
            # offset is within the request's round trip (a second here, at the most)
            on = next(ln for ln in lines if ln.startswith(f"{name}: trace on, clock offset "))
            m = re.search(r"offset ([+-]\d+) us \(\+-(\d+)\)", on)
            assert m, on
            assert abs(int(m.group(1))) <= int(m.group(2)) + 1000, on  # one clock, really
        clocks = next(ln for ln in lines if ln.startswith("clock offsets (host - console): "))
        assert all(f"{name} " in clocks for name in names), clocks
    finally:
        run("halt")


def test_trace_across_hosts_goes_over_pvm_netd_on_aligned_clocks(lab, tmp_path, pvm_env, monkeypatch):
    """Each host's clock was measured over the channel to its pvm_netd when that started
    and is kept; a trace of messages between the hosts is taken over that channel (the
    program path broken here) and, on the aligned clocks, every message is received
    after it was sent."""
    from pvmconsole.commands.view import _on_hosts
    from pvmconsole.vm import VirtualMachine

    hostfile, env = lab_vm_setup(lab, str(tmp_path), f"{lab.dir}/progs", "-maxpages=64 -maxsegs=1")
    for k in ("PVM_SSH_CONFIG", "HOME"):
        monkeypatch.setenv(k, env[k])
    names = [h.name for h in lab.hosts]

    def run(cmds: str) -> subprocess.CompletedProcess:
        return subprocess.run([PVM, "--norc", hostfile, "-e", cmds], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path, env=env)

    v = VirtualMachine(pvm_env["vmid"])
    try:
        r = run("trace on; " + "; ".join(f"spawn -{n} echo.py" for n in names))
        assert r.returncode == 0, r.stderr + r.stdout
        tids = [int(t, 16) for t in re.findall(r"^t([0-9a-f]+)$", r.stdout, re.M)]
        assert len(tids) == 2, r.stdout
        clocks = {h.name: h.clock for h in v.table().hosts}
        for n in names:  # one kernel's clock: the offset within its uncertainty, ms or less
            off, within, _ = clocks[n]
            assert 0 < within < 0.1 and abs(off) <= within + 1e-3, (n, clocks[n])
        with shmd.join(pvm_env["vmid"], name="pinger") as me:  # the host traces: so do we
            for k in range(3):
                for t in tids:
                    me.psend(t, 5 + k, b"x" * (10 ** k), timeout=20)
                    assert me.precv(t, 5 + k, timeout=20).data == b"x" * (10 ** k)
            for t in tids:
                me.psend(t, 1, b"bye", timeout=20)
        for h in v.hosts():
            v.link(h).stat_program = "/nonexistent/pvm_shmd_stat"  # pvm_netd alone can answer

        def dumped() -> list | None:  # every host's events, once the echoes have left
            d = _on_hosts(v, "dump", refresh=True)
            gone = {e.owner for e in trace.events_of((h, x, 0.0) for h, x, _ in d)[0] if e.kind == trace.EXIT}
            return d if gone >= set(tids) else None

        dumps = wait_for(dumped, 20, "the echo tasks' exits in the trace")
        assert sorted(h for h, _, _ in dumps) == sorted([v.hosts()[0].name, *names])
        events, _ = trace.events_of((h, d, o[0]) for h, d, o in dumps)
        events, _ = trace.align(events, {h: o[1] for h, _, o in dumps})
        flows = [f for f in trace.flows(events)[0] if f.send.host != f.recv.host]
        assert len(flows) == 2 * (3 * 2 + 1), [(f.send.host, f.recv.host, f.send.tag) for f in flows]
        assert all(f.send.t < f.recv.t for f in flows)
        out = run("trace show").stdout.splitlines()
        head = next(ln for ln in out if ln.startswith("clocks (host - console): "))
        assert all(re.search(rf"{n} [+-]\d+ us \(\+-\d+\)", head) for n in names), head
        assert any(ln.startswith("utilization ") for ln in out), out
    finally:
        v.close()
        run("halt")

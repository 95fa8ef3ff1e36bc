"""Tasks across the hosts of a lab virtual machine: real console, real sshd, a real
pvm_shmd and real tasks on every host (each host its own PID and IPC namespace).

The test programs live in the lab directory (the hosts share it; their /tmp is private).
After each test the VM is halted and nothing of it may remain on any host.
"""
from __future__ import annotations

import os
import re
import subprocess
import time

import pytest
from conftest import ROOT
from consoles import PVM, TASK_PROG, Console, task_rows, vm_procs, wait_for  # noqa: F401
from lab_probe import host_procs, lab_vm_setup, running_lab, ssh, write_progs

from pvmconsole import lab as labmod

pytestmark = pytest.mark.lab  # real sshd servers, lab hosts or namespaces (root)

EXAMPLES = os.path.join(ROOT, "examples")
TICKER = """\
import sys, time
import shmd
me = shmd.join()
for i in range(int(sys.argv[1])):
    print(f"tick {i}", flush=True)
    time.sleep(0.2)
"""


@pytest.fixture(scope="module")
def lab():
    with running_lab("k", 3) as lab:
        write_progs(lab, {"task.py": TASK_PROG, "ticker.py": TICKER})
        yield lab


def ipc_objects(lab, host: str) -> list[str]:
    return [ln for ln in ssh(lab, host, "ipcs -m -s -q | awk '$1 ~ /^0x/'").stdout.splitlines()]


@pytest.fixture
def vm(lab, pvm_env, tmp_path):
    """A VM of the console's host + the lab's 3 hosts, tasks found on the lab's progs
    and examples directories; halted after, checked clean on every host."""
    hostfile, env = lab_vm_setup(lab, str(tmp_path), f"{lab.dir}/progs:{EXAMPLES}:/bin:/usr/bin",
                                 "-maxpages=64 -maxsegs=2")
    consoles: list[Console] = []

    class Vm:
        vmid, hosts = pvm_env["vmid"], [h.name for h in lab.hosts]
        hf = str(hostfile)

        @staticmethod
        def run(cmds: str, timeout: float = 90, hostfile: str | None = None) -> subprocess.CompletedProcess:
            return subprocess.run([PVM, "--norc", "-k", *([hostfile] if hostfile else []), "-e", cmds],
                                  capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env)

        @staticmethod
        def console(hostfile: str | None = None) -> Console:
            c = Console(env, str(tmp_path), hostfile)
            consoles.append(c)
            return c

    v = Vm()
    v.env = env  # type: ignore[attr-defined]
    yield v
    for c in consoles:
        if c.p.poll() is None:
            c.p.kill()
            c.p.wait(10)
    v.run("halt")
    wait_for(lambda: not vm_procs(v.vmid), 10, "local processes of the VM to end")
    for h in v.hosts:
        wait_for(lambda h=h: host_procs(lab, h, v.vmid) == [], 10, f"tasks on {h} to end")
        assert ipc_objects(lab, h) == [], h


def rows_by_host(lines: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in task_rows(lines):
        out.setdefault(r[0], []).append("t" + r[1])
    return out


def test_spawn_relay_ps_pstat_sig_kill_jobs_across_hosts(lab, vm):
    c = vm.console(vm.hf)
    out = c.cmd("spawn -> -4 task.py hold 30", timeout=60)
    assert out[:2] == ["[1]", "4 successful"], out
    tids = out[2:6]
    # one copy per host (round robin), each tid in its host's range: 4xxxx 8xxxx cxxxx 10xxxx
    assert sorted(int(t[1:], 16) >> 18 for t in tids) == [1, 2, 3, 4], tids
    for t in tids:
        c.seen(rf"^\[1:{t}\] ready {t} pid \d+ parent 40001 ")
        c.seen(rf"^\[1:{t}\] a line on stderr$")
    by_host = rows_by_host(c.cmd("ps -a"))
    assert sorted(by_host) == sorted(["vm" if False else next(iter(set(by_host) - set(vm.hosts)))] + vm.hosts)
    assert sorted(t for ts in by_host.values() for t in ts) == sorted(tids)
    t2 = next(t for t in tids if int(t[1:], 16) >> 18 == 3)  # the task on pvmh2 (index 3)
    t3 = next(t for t in tids if int(t[1:], 16) >> 18 == 4)  # on pvmh3
    assert rows_by_host(c.cmd("ps -npvmh2")) == {"pvmh2": [t2]}
    assert rows_by_host(c.cmd("ps -hc0000")) == {"pvmh2": [t2]}
    assert rows_by_host(c.cmd("ps")) .keys() == set(by_host) - set(vm.hosts)  # default: console's host
    longrows = task_rows(c.cmd("ps -al"))
    assert len(longrows) == 4 and all(r[2] == "(cons)" for r in longrows), longrows
    st = c.cmd("pstat " + " ".join(tids) + " t100fff")
    assert st == [f"t{int(t[1:], 16):8x}  run" for t in tids] + ["t  100fff  No such task"], st
    # pages held by the remote task, seen through stat
    stat_rows = {ln.split()[0]: ln.split() for ln in c.cmd("stat pvmh2")}
    assert int(stat_rows["pvmh2"][3]) > 0, stat_rows  # USED pages
    # sig reaches the remote task (its handler prints, the line comes back relayed)
    assert c.cmd(f"sig 10 {t2}") == []
    c.seen(rf"^\[1:{t2}\] got signal 10$")
    # kill a remote task: EOF, gone from ps, its pages reclaimed by its host's daemon
    assert c.cmd(f"kill {t3}") == []
    c.seen(rf"^\[1:{t3}\] EOF$")
    wait_for(lambda: t3 not in rows_by_host(c.cmd("ps -a")).get("pvmh3", []), 10, "t3 to leave ps")
    wait_for(lambda: int({ln.split()[0]: ln.split() for ln in c.cmd("stat pvmh3")}["pvmh3"][3]) == 0,
             10, "pvmh3's pages to be reclaimed")
    jobs = c.cmd("jobs")
    assert jobs == [" 1: " + " ".join(t for t in tids if t != t3)], jobs
    jl = c.cmd("jobs -l")
    assert len(task_rows(jl)) == 3 and "PTID" in jl[1], jl
    # kill -c t40001: every task the console spawned, on every host
    c.cmd("kill -c t40001")
    c.seen(r"^\[1\] finished$", 30)
    assert rows_by_host(c.cmd("ps -a")) == {} or wait_for(lambda: rows_by_host(c.cmd("ps -a")) == {}, 10, "ps -a empty")
    assert c.close() == 0


def test_one_host_failing_leaves_the_others(lab, vm, tmp_path):
    dx = labmod.local_program("pvm_shmd")
    progs = os.path.join(lab.dir, "progs")
    hf = tmp_path / "hf2"
    hf.write_text(f"* ep={progs}\n" + "".join(
        f"{h.name} dx={dx}" + (" ep=/nonexistent" if h.name == "pvmh2" else "") + "\n" for h in lab.hosts))
    r = vm.run("spawn -4 task.py plain 0; spawn -nohost task.py x 0; spawn -pvmh1 -2 nosuch; "
               "spawn -pvmh1:/nonexistent task.py x 0", hostfile=str(hf))
    lines = r.stdout.splitlines()
    i = lines.index("pvm> spawn -4 task.py plain 0")
    assert lines[i + 1] == "3 successful", r.stdout
    copies = lines[i + 2:i + 6]
    assert copies.count("No such file") == 1 and sum(bool(re.fullmatch(r"t[0-9a-f]+", x)) for x in copies) == 3, copies
    errs = r.stderr.splitlines()
    assert len(errs) == 4, r.stderr
    assert "spawn: No such file: task.py not found (path /nonexistent)" in errs[0]
    assert "spawn: No such host: nohost" in errs[1]
    assert "spawn: No such file: nosuch not found" in errs[2]
    assert "spawn: No such file: no directory /nonexistent" in errs[3]


def test_reset_and_halt_leave_nothing_on_any_host(lab, vm):
    r = vm.run("spawn -8 task.py noterm 300", hostfile=vm.hf)
    assert "8 successful" in r.stdout, r.stdout + r.stderr
    c = vm.console(vm.hf)
    assert c.cmd("spawn -> -4 ticker.py 1000")[:2] == ["[1]", "4 successful"]
    wait_for(lambda: sum(len(v) for v in rows_by_host(c.cmd("ps -a")).values()) >= 8, 30, "tasks up")
    for h in vm.hosts:
        assert host_procs(lab, h, vm.vmid), h
    t = time.monotonic()
    assert c.cmd("reset", timeout=60) == []
    c.seen(r"^\[1\] finished$", 15)  # the output job ended with its tasks
    assert time.monotonic() - t < 30
    for h in vm.hosts:
        wait_for(lambda h=h: host_procs(lab, h, vm.vmid) == [], 10, f"reset to kill the tasks on {h}")
    assert rows_by_host(c.cmd("ps -a")) == {}
    c.cmd("spawn -4 task.py plain 300")
    wait_for(lambda: sum(len(v) for v in rows_by_host(c.cmd("ps -a")).values()) == 4, 30, "new tasks up")
    c.send("halt")
    assert c.close() == 0
    wait_for(lambda: not vm_procs(vm.vmid), 10, "local tasks to end")
    for h in vm.hosts:
        wait_for(lambda h=h: host_procs(lab, h, vm.vmid) == [], 10, f"halt to kill the tasks on {h}")
        assert ipc_objects(lab, h) == [], h


def test_demo_from_a_batch(lab, vm):
    t = time.monotonic()
    r = vm.run("spawn -> -. spawn_demo.py master 3 200000; ps -a", hostfile=vm.hf, timeout=120)
    took = time.monotonic() - t
    assert r.returncode == 0, r.stderr + r.stdout
    out = r.stdout
    assert re.search(r"^\[1\]\n1 successful\nt4[0-9a-f]{4}$", out, re.M), out
    m = re.search(r"^\[1:(t4[0-9a-f]+)\] master t4[0-9a-f]+: 4 hosts, 3 workers each", out, re.M)
    assert m, out
    for h in vm.hosts:
        line = rf"^\[1:{m.group(1)}\] {h} \({h}, foreman t[0-9a-f]+, 3 workers\): sum [0-9.]+ ok$"
        assert re.search(line, out, re.M), out
    assert re.search(rf"^\[1:{m.group(1)}\] 4 of 4 hosts ok in", out, re.M), out
    assert out.index("4 of 4 hosts ok") < out.index(f"[1:{m.group(1)}] EOF") < out.index("[1] finished")
    print(f"demo from a batch: {took:.2f} s")


def test_demo_from_the_interactive_console(lab, vm):
    pexpect = pytest.importorskip("pexpect")
    from consoles import CPR_REQUEST, PROMPT

    env = {**vm.env, "TERM": "xterm", "COLUMNS": "120", "LINES": "40"}
    child = pexpect.spawn(PVM, ["--norc", vm.hf], env=env, encoding="utf-8", timeout=60,
                          dimensions=(40, 120))
    screen: list[str] = []

    def expect(text: str) -> None:
        """Wait for *text* (answering cursor-position requests), keeping what came."""
        while child.expect_exact([CPR_REQUEST, text]) == 0:
            screen.append(child.before + child.after)
            child.send("\x1b[1;1R")
        screen.append(child.before + child.after)

    def seen() -> str:
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", "".join(screen)).replace("\r", "")

    try:
        expect(PROMPT)
        child.sendline("spawn -> -pvmh1 ticker.py 15")
        expect("1 successful")
        expect("[1:t80001] tick 0")
        # type while the job's output arrives: output goes above the line being edited,
        # which is redrawn intact after each output line and runs when Enter comes
        for ch in "echo typed-while-output":
            child.send(ch)
            time.sleep(0.05)
        expect("[1:t80001] tick 8")
        child.send("\r")
        expect("[1] finished")
        text = seen()
        assert re.search(r"(?m)^pvm> echo typed-while-output\[1:t80001\] tick \d+$", text), text[-2000:]
        assert re.search(r"(?m)^\s*typed-while-output$", text), text[-2000:]  # the echo ran
        ticks = [int(n) for n in re.findall(r"\[1:t80001\] tick (\d+)", text)]
        assert sorted(set(ticks)) == list(range(15)), ticks
        assert text.index("[1:t80001] tick 14") < text.index("[1:t80001] EOF") < text.index("[1] finished")
        expect(PROMPT)
        child.sendline("spawn -> -. spawn_demo.py master 2 50000")
        expect("[2]")
        expect("4 of 4 hosts ok")
        expect("[2] finished")
        expect(PROMPT)
        child.sendline("ps -a")
        expect("HOST      TID   FLAG 0x COMMAND")
        expect(PROMPT)
        child.sendline("halt")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_hostfile_variables_are_the_remote_hosts(lab, vm, tmp_path):
    """`wd=$HOME` means the remote host's home (PVM's pvmd expanded it there), not the
    console's, and a `wd=` a host cannot enter is logged there, not fatal."""
    remote_home = ssh(lab, "pvmh1", 'echo "$HOME"').stdout.strip()
    assert remote_home and remote_home != vm.env["HOME"]
    dx = labmod.local_program("pvm_shmd")
    hf = tmp_path / "hf3"
    hf.write_text(f"* wd=$HOME ep=/bin:/usr/bin\npvmh1 dx={dx}\npvmh2 dx={dx} wd=/nonexistent/$HOME\n")
    r = vm.run("conf; spawn -> -pvmh1 pwd", hostfile=str(hf))
    assert r.returncode == 0, r.stderr
    assert "3 hosts, 1 data format" in r.stdout
    assert f"] {remote_home}" in r.stdout, r.stdout

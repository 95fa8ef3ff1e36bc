"""Tasks from the console on a one-host virtual machine: spawn, output relay (->, ->file,
->>file), ps, jobs, pstat, kill, sig, reset, halt, a hand-run task, bad input.

Real pvm, real pvm_shmd, real tasks. The machine-wide leak check of conftest is replaced
here by a check scoped to this test's VM id (other engineers run daemons on this box
at the same time): after every test no process carrying our PVM_VMID is left, and the
SysV objects our daemon made are gone.
"""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

import pytest
from consoles import JOB_LINE, PVM, TASK_PROG, Console, sysv_exist, sysv_ids, task_rows, vm_procs, wait_for  # noqa: F401

from pvmconsole.jobs import SpawnRequest, flag_string, parse_spawn, place, ps_header, ps_row
from pvmconsole.registry import CommandError
from pvmconsole.vmtable import HostRecord
from shmd.errors import PvmError


@pytest.fixture
def vm(pvm_env, tmp_path):
    """A one-host VM of our own; after the test: halted, no process of it, its IPC gone."""
    home = tmp_path / "home"
    home.mkdir()
    prog = tmp_path / "task.py"
    prog.write_text(TASK_PROG)
    env = {**os.environ, "HOME": str(home), "PVM_SHMD_OPTS": "-maxpages=64 -maxsegs=2"}
    consoles: list[Console] = []

    class Vm:
        tmp, vmid, task = str(tmp_path), pvm_env["vmid"], str(prog)
        ids: set = set()

        @staticmethod
        def run(cmds: str, timeout: float = 60) -> subprocess.CompletedProcess:
            return subprocess.run([PVM, "--norc", "-k", "-e", cmds], capture_output=True,
                                  text=True, timeout=timeout, cwd=tmp_path, env=env)

        @staticmethod
        def console() -> Console:
            c = Console(env, str(tmp_path))
            consoles.append(c)
            return c

        def snapshot(self) -> None:
            self.ids |= sysv_ids(pvm_env["state"], pvm_env["vmid"])

    v = Vm()
    v.env = env  # type: ignore[attr-defined]
    yield v
    v.snapshot()
    for c in consoles:
        if c.p.poll() is None:
            c.p.kill()
            c.p.wait(10)
    v.run("halt", timeout=60)
    try:
        left = wait_for(lambda: not vm_procs(v.vmid), 10, "the VM's processes to end") and []
    except AssertionError:
        left = vm_procs(v.vmid)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    assert not left, f"processes of the VM left running: {left}"
    assert not sysv_exist(v.ids), f"SysV objects left: {sysv_exist(v.ids)}"


# ---- unit: options, placement, formats ---------------------------------------------------------------
def _h(name: str, index: int, arch: str = "LINUX64", state: str = "running") -> HostRecord:
    return HostRecord(name=name, index=index, arch=arch, speed=1000, dsig=0, pid=1, state=state)


def test_spawn_options():
    r = parse_spawn(["-3", "-node2:/scratch", "->", "prog", "-x", "arg"])
    assert (r.count, r.host, r.wd, r.output, r.prog, r.args) == (3, "node2", "/scratch", "console", "prog",
                                                                ["-x", "arg"])
    r = parse_spawn(["-LINUX64", "->>log.txt", "p"])
    assert (r.arch, r.output, r.path, r.append) == ("LINUX64", "file", "log.txt", True)
    r = parse_spawn(["->out", "-:/tmp", "--host=10.0.0.5:/w", "p"])
    assert (r.output, r.path, r.append, r.wd, r.host) == ("file", "out", False, "/w", "10.0.0.5")
    r = parse_spawn(["-~node1", "p"])
    assert r.complement and r.host == "node1"
    with pytest.raises(CommandError, match="incorrect arg count"):
        parse_spawn(["-2", "->"])
    with pytest.raises(PvmError, match="Bad parameter"):
        parse_spawn(["-0", "p"])
    with pytest.raises(PvmError, match="Not implemented"):
        parse_spawn(["-?", "p"])
    with pytest.raises(CommandError, match="bad count"):
        parse_spawn(["-2x", "p"])


def test_placement_round_robin_host_arch_complement():
    hosts = [_h("a", 1), _h("b", 2, "SUN4"), _h("c", 3), _h("d", 4, state="failed")]
    names = lambda got: [h.name if isinstance(h, HostRecord) else f"E{h.code}" for h in got]  # noqa: E731
    assert names(place(SpawnRequest("p", [], count=5), hosts, 0)) == ["a", "b", "c", "a", "b"]
    assert names(place(SpawnRequest("p", [], count=2), hosts, 2)) == ["c", "a"]
    assert names(place(SpawnRequest("p", [], count=2, host="c"), hosts, 0)) == ["c", "c"]
    assert names(place(SpawnRequest("p", [], count=2, host="zz"), hosts, 0)) == ["E-6", "E-6"]
    assert names(place(SpawnRequest("p", [], count=2, arch="SUN4"), hosts, 0)) == ["b", "b"]
    assert names(place(SpawnRequest("p", [], count=1, arch="HPPA"), hosts, 0)) == ["E-6"]
    assert names(place(SpawnRequest("p", [], count=3, host="a", complement=True), hosts, 0)) == ["b", "c", "b"]
    assert names(place(SpawnRequest("p", [], count=1, host="."), hosts, 5)) == ["a"]


def test_ps_formats():
    assert flag_string(6) == "6/c,f" and flag_string(0) == "0" and flag_string(4) == "4/c"
    assert ps_header(False) == "                    HOST      TID   FLAG 0x COMMAND"
    assert ps_header(True) == "                    HOST      TID     PTID     PID   FLAG 0x COMMAND"
    t = {"tid": 0x80002, "ptid": 0x40001, "pid": 4242, "flags": 6, "name": "worker"}
    assert ps_row("node1", t, False) == "                   node1    80002     6/c,f worker"
    assert ps_row("node1", t, True) == "                   node1    80002   (cons)   4242     6/c,f worker"
    assert ps_row("node1", {**t, "ptid": None, "flags": 4}, True) == \
        "                   node1    80002        -   4242       4/c worker"


# ---- real tasks ---------------------------------------------------------------------------------------
def test_spawn_output_ps_jobs_pstat(vm):
    c = vm.console()
    out = c.cmd(f"spawn -> -3 -:{vm.tmp} {vm.task} relay 3")
    assert out[:2] == ["[1]", "3 successful"], out
    tids = [ln for ln in out[2:5]]
    assert all(re.fullmatch(r"t4[0-9a-f]{4}", t) for t in tids) and len(set(tids)) == 3, out
    for t in tids:
        c.seen(rf"^\[1:{t}\] ready {t} pid \d+ parent 40001 cwd {re.escape(vm.tmp)}$")
    ps = c.cmd("ps")
    assert ps[0] == "                    HOST      TID   FLAG 0x COMMAND", ps
    rows = task_rows(ps)
    assert sorted("t" + r[1] for r in rows) == sorted(tids) and all(r[2:] == ["6/c,f", "task.py"] for r in rows), ps
    longrows = task_rows(c.cmd("ps -l"))
    assert all(r[2] == "(cons)" and r[3].isdigit() for r in longrows), longrows
    jobs = c.cmd("jobs")
    assert [ln for ln in jobs if not ln.startswith("[")] == [" 1: " + " ".join(tids)], jobs
    jl = [ln for ln in c.cmd("jobs -l") if not ln.startswith("[")]
    assert jl[0] == " 1: " + " ".join(tids) and "PTID" in jl[1] and len(task_rows(jl)) == 3, jl
    st = [ln for ln in c.cmd(f"pstat {tids[0]} t4fff0") if not ln.startswith("[")]
    assert st == [f"t{int(tids[0][1:], 16):8x}  run", "t   4fff0  No such task"], st
    for t in tids:
        c.seen(rf"^\[1:{t}\] bye$", 15)
    c.seen(r"^\[1\] finished$", 15)
    # every task's EOF came before "finished", after its own output
    text = "\n".join(c.lines)
    for t in tids:
        assert text.index(f"[1:{t}] a line on stderr") < text.index(f"[1:{t}] EOF") < text.index("[1] finished")
    assert [ln for ln in c.cmd("jobs") if ln.strip()] == []
    # the tasks are gone from ps once they exit
    wait_for(lambda: task_rows(c.cmd("ps")) == [], 10, "finished tasks to leave ps")
    vm.snapshot()
    assert c.close() == 0


def test_output_to_file_and_append(vm, tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("old content\n")
    r = vm.run(f"spawn ->{out} -:{vm.tmp} {vm.task} first 0; spawn ->>{out} -2 -:{vm.tmp} {vm.task} second 0")
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert "old content" not in lines, lines  # ->file starts it afresh
    assert "[1] finished" in r.stdout and "[2] finished" in r.stdout, r.stdout
    ready = [ln for ln in lines if " ready " in ln]
    assert len(ready) == 3 and sum(ln.startswith("[1:") for ln in ready) == 1, lines
    assert sum(ln.endswith("] EOF") for ln in lines) == 3, lines
    assert not any(" ready " in ln for ln in r.stdout.splitlines()), r.stdout  # not on the console
    # append really appends: a later console adds to what is there; a new file is 0600
    new = tmp_path / "new.txt"
    r = vm.run(f"spawn ->>{out} -:{vm.tmp} {vm.task} third 0; spawn ->>{new} {vm.task} x 0")
    assert stat.S_IMODE(os.stat(new).st_mode) == 0o600
    assert r.returncode == 0, r.stderr
    again = out.read_text().splitlines()
    assert again[:len(lines)] == lines and sum(" ready " in ln for ln in again) == 4
    # an unwritable file: one error line, nothing spawned
    r = vm.run(f"spawn ->/nonexistent/dir/x {vm.task} x 0; ps")
    assert "spawn: /nonexistent/dir/x: No such file or directory" in r.stderr, r.stderr
    assert task_rows(r.stdout.split("pvm> ps", 1)[1].splitlines()) == []
    vm.snapshot()


def test_kill_sig_pstat_and_pages_reclaimed(vm):
    c = vm.console()
    out = c.cmd(f"spawn -> -2 -:{vm.tmp} {vm.task} hold 60")
    b, a = out[2], out[3]  # a (killed) is not t40001, the tid PVM gave the console
    for t in (a, b):
        c.seen(rf"^\[1:{t}\] ready ")
    vm.snapshot()
    used = json.loads([ln for ln in c.cmd("stat -j") if ln.startswith("{")][0])
    held = {t["tid"]: t["pages"] for t in used["tasks"]}
    assert held[int(a[1:], 16)] > 0 and held[int(b[1:], 16)] > 0, used
    # sig: the task's handler says so on its relayed output
    assert [ln for ln in c.cmd(f"sig 10 {a}") if not ln.startswith("[")] == []
    c.seen(rf"^\[1:{a}\] got signal 10$")
    # kill: one bad tid and one unknown tid don't keep the good one from dying
    lines = c.cmd(f"kill zz {a} t4fff0")
    assert any(re.search(r"stdin:\d+: kill: zz: Bad parameter; t4fff0: No such task", ln) for ln in lines), lines
    c.seen(rf"^\[1:{a}\] EOF$")
    wait_for(lambda: [r for r in task_rows(c.cmd("ps")) if "t" + r[1] == a] == [], 10, "killed task to leave ps")
    st = [ln for ln in c.cmd(f"pstat {a} {b}") if not ln.startswith("[")]
    assert st == [f"t{int(a[1:], 16):8x}  No such task", f"t{int(b[1:], 16):8x}  run"], st
    # PVM's console was t40001; here the daemon gives that tid to the first task
    # (see docs/tasks.md): a task with it is a task for pstat and kill
    # its pages went back to the daemon (b still holds its own)
    now = json.loads([ln for ln in c.cmd("stat -j") if ln.startswith("{")][0])
    assert {t["tid"] for t in now["tasks"]} == {int(b[1:], 16)}, now
    seg_used = sum(s["pages"] - s["free"] for s in now["segments"])
    assert seg_used == held[int(b[1:], 16)], now
    # sig with a bad number / bad tid: one line each, the task untouched
    lines = c.cmd(f"sig 99 {b}") + c.cmd(f"sig x {b}") + c.cmd("sig 15 qq")
    errs = [ln for ln in lines if ln.startswith("stdin:")]
    assert len(errs) == 3 and "Bad parameter" in errs[0] and "Bad parameter" in errs[2], errs
    # kill -c: the console's children (every task it spawned)
    c.cmd("kill -c t40001")
    c.seen(rf"^\[1:{b}\] EOF$")
    c.seen(r"^\[1\] finished$")
    assert c.close() == 1  # -k: the bad kill/sig lines above make the exit status 1


def test_reset_and_halt_kill_every_task(vm, tmp_path):
    script = tmp_path / "shell_task"
    script.write_text("#!/bin/sh\nsleep 300 &\nwait\n")
    script.chmod(0o755)
    r = vm.run(f"spawn -2 -:{vm.tmp} {vm.task} plain 300; spawn -:{vm.tmp} {vm.task} noterm 300; "
               f"spawn {script}; ps -l")
    assert r.returncode == 0, r.stderr
    rows = task_rows(r.stdout.split("pvm> ps -l", 1)[1].splitlines())
    assert len(rows) == 4, r.stdout
    pids = [int(row[3]) for row in rows]
    def daemon_pid() -> int:
        return json.loads([ln for ln in vm.run("stat -j").stdout.splitlines() if ln.startswith("{")][0])["pid"]

    daemon = daemon_pid()
    vm.snapshot()
    t = time.monotonic()
    r = vm.run("reset; ps")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t < 20
    gone = lambda: not [p for p in pids if os.path.exists(f"/proc/{p}") and  # noqa: E731
                        open(f"/proc/{p}/stat").read().split(") ")[1][0] not in "ZX"]
    wait_for(gone, 10, "reset to kill every task (the TERM-proof one and the shell's child too)")
    assert not vm_procs(vm.vmid) or all(any(d in open(f"/proc/{p}/cmdline").read() for d in ("pvm_shmd", "pvm_netd"))
                                        for p in vm_procs(vm.vmid))  # (the fresh daemon and network process)
    assert task_rows(r.stdout.split("pvm> ps", 1)[1].splitlines()) == []
    assert daemon_pid() != daemon
    # halt: tasks and daemon gone, nothing of the VM left (the fixture checks IPC too)
    r = vm.run(f"spawn -2 -:{vm.tmp} {vm.task} plain 300")
    assert r.returncode == 0, r.stderr
    vm.snapshot()
    assert vm.run("halt").returncode == 0
    wait_for(lambda: not vm_procs(vm.vmid), 10, "halt to leave nothing running")
    assert not sysv_exist(vm.ids)


def test_a_task_run_by_hand_is_in_ps_and_killable(vm):
    assert vm.run("conf").returncode == 0  # start the VM
    env = {**vm.env, "PVM_TMP": vm.tmp, "PVM_VMID": vm.vmid}
    p = subprocess.Popen([sys.executable, vm.task, "byhand", "60"], stdout=subprocess.PIPE,
                         text=True, env=env)
    try:
        line = p.stdout.readline()  # type: ignore[union-attr]
        m = re.match(r"ready (t[0-9a-f]+) pid (\d+) parent None", line)
        assert m, line
        tid = m.group(1)
        r = vm.run("ps -l; ps -x")
        rows = task_rows(r.stdout.splitlines())
        mine = [row for row in rows if "t" + row[1] == tid]
        assert mine[0][2:] == ["-", m.group(2), "4/c", "task.py"], r.stdout  # long: no PTID
        assert mine[1][2:] == ["4/c", "task.py"], r.stdout
        assert any(row[1] == "(cons)" for row in rows), r.stdout  # -x shows the console
        r = vm.run(f"kill {tid}")
        assert r.returncode == 0, r.stderr
        assert p.wait(10) == -signal.SIGTERM
        wait_for(lambda: tid[1:] not in vm.run("ps").stdout, 10, "the task to leave ps")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_bad_input_one_line_each(vm):
    r = vm.run(f"spawn -nosuch {vm.task}; spawn -0 {vm.task}; spawn nosuchprog; spawn -> ; "
               f"spawn -? x; spawn -HPPA {vm.task} x 0; pstat zz t40fff; kill -q t40002; "
               f"kill t40001; ps -q; ps -nnowhere; ps -hffff; jobs -x; spawn {vm.tmp} x")
    errs = r.stderr.splitlines()
    want = ["spawn: No such host: nosuch", "spawn: Bad parameter: count 0: at least one copy",
            "spawn: No such file: nosuchprog not found", "spawn: incorrect arg count",
            "spawn: Not implemented: -? (start under a debugger)",
            "spawn: No such host: no HPPA", "pstat: zz: Bad parameter",
            "kill: unknown flag -q", "kill: t40001: that's me.", "ps: unknown flag -q",
            "ps: unknown host nowhere", "ps: unknown host ffff", "jobs: unknown flag -x",
            "spawn: No such file"]
    assert len(errs) == len(want), r.stderr
    for e, w in zip(errs, want):
        assert w in e, (e, w)
    assert "0 successful\nNo such host\n" in r.stdout and "       zz  Bad parameter" in r.stdout
    assert "t   40fff  No such task" in r.stdout

"""The real `pvm` console driven in batches (stdin, -f, -e) against real pvm_shmd daemons."""
from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest
from conftest import sysv_objects
from consoles import ME, PVM, SHMD_STAT, TIMEOUT, alive, daemon_state, pvm, shm_ids, vm  # noqa: F401

from shmd import paths


def test_stdin_batch_starts_attaches_and_halts(vm):
    before = sysv_objects()
    r = pvm(input="conf\nid\nversion\nstat\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:7] == [
        "pvm> conf",
        "1 host, 1 data format",
        "                    HOST     DTID     ARCH   SPEED       DSIG",
        f"{ME:>24}    40000  LINUX64    1000 0x00408c41",
        "pvm> id", "t40001", "pvm> version",
    ]
    assert r.stdout.endswith("pvm> quit\n\npvmd still running.\n")  # EOF acts as quit
    st = daemon_state()
    row = next(line for line in r.stdout.splitlines() if line.startswith(f"{ME:>24} ") and "LINUX64" not in line)
    assert row.split() == [ME, str(st["pid"]), "2", "0", "128", "64", "0", "0"]
    assert os.path.exists(vm["table"]) and alive(st["pid"])

    again = pvm("--norc", "-e", "stat -j")  # a later console attaches to the same VM
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("pvmd already running.\npvm> stat -j\n")
    assert json.loads(again.stdout.splitlines()[2])["pid"] == st["pid"]

    h = pvm("-e", "halt")
    assert h.returncode == 0, h.stderr
    assert not alive(st["pid"]) and not os.path.exists(vm["table"])
    assert sysv_objects() - before == set()
    assert subprocess.run([SHMD_STAT, "--json"], capture_output=True, timeout=TIMEOUT).returncode == 1


def test_hostfile_master_line_and_f_script_stop_on_error(vm, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("# test VM\nlocalhost sp=1234\n* lo=nobody\n&later wd=/tmp\n")
    script = tmp_path / "script.pvm"
    script.write_text("conf\n# a comment\nmstat nosuch\necho not reached\n")
    r = pvm("-x", "-f", str(script), str(hosts))
    assert r.returncode == 1
    assert f"{ME:>24}    40000  LINUX64    1234 0x00408c41" in r.stdout.splitlines()
    assert r.stderr == f"{script}:3: mstat: nosuch: No such host\n"
    assert "not reached" not in r.stdout and "pvm> # a comment" in r.stdout
    assert "pvm> quit" not in r.stdout  # stopped there: not even the quit of end of input
    long = pvm("--stop-on-error", "-f", str(script))
    assert long.returncode == 1 and "not reached" not in long.stdout
    table = json.load(open(vm["table"]))
    assert table["known"] == {"later": {"lo": "nobody", "wd": "/tmp"}} and table["defaults"] == {"lo": "nobody"}


@pytest.mark.parametrize("opts", [(), ("-k",), ("--keep-going",)], ids=["default", "-k", "--keep-going"])
def test_every_line_runs_and_each_failure_is_reported(vm, opts):
    r = pvm(*opts, "-e", f"frob; conf x; delete {ME}; add localhost; delete nosuch; echo done")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "-e:1: frob: not found",
        "-e:2: conf: wrong #args",
        f"-e:3: delete: {ME}: Bad parameter (the master host can't be deleted (use halt))",
        "-e:4: add: localhost: Duplicate host (already in the virtual machine)",
        "-e:5: delete: nosuch: No such host",
    ]
    out = r.stdout.splitlines()
    assert out[out.index("pvm> add localhost") + 1:][:3] == [
        "0 successful", "                    HOST     DTID", "               localhost Duplicate host"]
    assert "done" in out and out[-2:] == ["", "pvmd still running."]  # and the quit at the end


def test_reset_replaces_daemons_and_their_ipc_objects(vm):
    assert pvm("-e", "quit").returncode == 0
    old = daemon_state()
    old_shm = {s["shmid"] for s in old["segments"]}
    assert old_shm <= shm_ids()
    r = pvm("--norc", "-e", "reset; mstat " + ME)
    assert r.returncode == 0, r.stderr
    assert f"{ME:>24}  ok" in r.stdout
    new = daemon_state()
    assert new["pid"] != old["pid"] and not alive(old["pid"])
    assert not old_shm & shm_ids()  # the old daemon's segments are gone
    assert json.load(open(vm["table"]))["hosts"][0]["pid"] == new["pid"]


def test_stale_table_is_detected_and_replaced(vm):
    assert pvm("-e", "quit").returncode == 0
    old = daemon_state()["pid"]
    subprocess.run([SHMD_STAT, "--stop"], capture_output=True, timeout=TIMEOUT, check=True)
    assert os.path.exists(vm["table"])  # left behind, naming a dead daemon
    r = pvm("-e", f"mstat {ME}")
    assert r.returncode == 0, r.stderr
    assert "stale virtual machine table" in r.stderr
    assert "pvmd already running." not in r.stdout and f"{ME:>24}  ok" in r.stdout
    assert daemon_state()["pid"] != old


def test_console_survives_daemon_death_mid_session_and_reset_heals(vm):
    p = subprocess.Popen([PVM], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        p.stdin.write(f"mstat {ME}\n")
        p.stdin.flush()
        assert p.stdout.readline() == f"pvm> mstat {ME}\n"
        assert p.stdout.readline() == f"{ME:>24}  ok\n"
        subprocess.run([SHMD_STAT, "--stop"], capture_output=True, timeout=TIMEOUT, check=True)
        out, err = p.communicate(f"mstat {ME}\nstat\nreset\nmstat {ME}\n", timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(TIMEOUT)
    assert p.returncode == 1  # everything ran, failures are in the exit status
    lines = out.splitlines()
    assert lines[:2] == [f"pvm> mstat {ME}", f"{ME:>24}  Host failed"]
    assert f"{ME:>24}  Host failed: No pvm_shmd" in lines  # stat's row for the dead host
    assert lines[lines.index("pvm> reset") + 1:lines.index("pvm> reset") + 3] == [
        f"pvm> mstat {ME}", f"{ME:>24}  ok"]
    assert err.splitlines()[0] == f"stdin:2: mstat: {ME}: Host failed (No pvm_shmd)"


def test_bad_hostfile_lines_are_dropped_and_the_rest_starts(vm, tmp_path):
    """As PVM: each bad line is named and dropped; the good ones are used."""
    hosts = tmp_path / "bad"
    hosts.write_text("localhost sp=1234\nnode1 sp=fast\n\n&node2 colour=blue\n&later wd=/tmp\n")
    r = pvm("-e", "conf", str(hosts))
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        f'{hosts}:2: speed must be 1..1000000 in "sp=fast"',
        f'{hosts}:4: unknown option "colour=blue"',
        f"{hosts}: 2 errors in hostfile (those lines dropped)",
    ]
    assert "1 host, 1 data format" in r.stdout and " 1234 " in r.stdout  # the master's own line
    table = json.load(open(vm["table"]))
    assert [h["name"] for h in table["hosts"]] == [ME] and set(table["known"]) == {"later"}


def test_missing_files_and_bad_usage(vm, tmp_path):
    r = pvm("-f", str(tmp_path / "nope"))
    assert r.returncode == 2 and "nope" in r.stderr and "No such file" in r.stderr
    assert pvm("--bogus").returncode == 2
    assert pvm(str(tmp_path / "nohosts")).returncode == 2
    assert not os.path.exists(vm["table"])


def test_two_consoles_at_once_make_one_vm(vm):
    results: list[subprocess.CompletedProcess] = []
    threads = [threading.Thread(target=lambda: results.append(pvm("--norc", "-e", "conf"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert sum(r.stdout.startswith("pvmd already running.") for r in results) == 1
    table = json.load(open(vm["table"]))
    assert [h["index"] for h in table["hosts"]] == [1]
    assert table["hosts"][0]["pid"] == daemon_state()["pid"]


def test_pvmrc_runs_first(vm):
    with open(os.path.join(vm["home"], ".pvmrc"), "w") as f:
        f.write("# my settings\nalias v version\nfrob\n")
    r = pvm("-e", "v")
    assert r.returncode == 0, r.stderr  # a bad .pvmrc line is reported but does not stop
    # echoed bare, as PVM echoed .pvmrc lines, comments too
    assert r.stdout.startswith("# my settings\nalias v version\nfrob\npvm> v\n3.4.6\n"), r.stdout
    assert r.stderr.endswith(".pvmrc:3: frob: not found\n")
    assert pvm("--norc", "-e", "v").returncode == 1


def test_wd_and_ep_are_expanded_on_the_host(vm, tmp_path, monkeypatch):
    """As PVM 3.4.6 (run beside ours on the same hostfile): ``$NAME`` in ``wd=``/``ep=``
    comes from the environment of the host's own programs, an undefined one is kept as
    written; the daemon works in ``wd=`` and spawned tasks start there."""
    work = tmp_path / "work"
    (work / "bin").mkdir(parents=True)
    prog = work / "bin" / "where"
    prog.write_text("#!/bin/sh\npwd\n")
    prog.chmod(0o755)
    monkeypatch.setenv("PVMX_WORK", str(work))
    hosts = tmp_path / "hosts"
    hosts.write_text(f"* wd=${{PVMX_WORK}} ep=$PVMX_UNDEFINED:$PVMX_WORK/bin\n{ME}\n")
    r = pvm("-e", "spawn -> where", str(hosts))
    assert r.returncode == 0, r.stderr
    assert f"] {work}" in r.stdout  # the task's pwd, relayed
    assert os.readlink(f"/proc/{daemon_state()['pid']}/cwd") == str(work)


def test_a_master_wd_that_is_not_there_is_logged_and_the_vm_starts(vm, tmp_path):
    """PVM logs the failed chdir and goes on; a `*` line's wd= applies to the master too."""
    hosts = tmp_path / "hosts"
    hosts.write_text(f"* wd=/nonexistent/$PVMX_UNDEFINED\n{ME}\n")
    r = pvm("-e", "conf", str(hosts))
    assert r.returncode == 0, r.stderr
    assert "1 host, 1 data format" in r.stdout and "Can't start" not in r.stdout + r.stderr
    with open(paths.log_path(vm["vmid"])) as f:
        assert "/nonexistent/$PVMX_UNDEFINED: No such file or directory" in f.read()

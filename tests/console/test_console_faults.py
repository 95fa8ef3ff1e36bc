"""Bad `setenv`/`export` input and huge values, against a real one-host VM: a one-line
error naming the bad word and a failing status, and nothing set at the prompt can keep
`ps`, `stat`, `spawn` or `halt` from working (issue #11, item 11)."""
from __future__ import annotations

import io
import os
import subprocess

import pytest
from consoles import ME, PVM, TIMEOUT, alive, daemon_state, pvm, vm  # noqa: F401 (vm: fixture)

from pvmconsole.batch import run_lines
from pvmconsole.commands import builtin_registry
from pvmconsole.commands.session import ENV_TOTAL_MAX, ENV_VAR_MAX
from pvmconsole.console import Console
from pvmconsole.vmtable import table_path


def table_exists(vm) -> bool:
    """The VM's host table, wherever this version keeps it (PVM_TMP, PVM_VMID are the test's)."""
    return os.path.exists(table_path(vm["vmid"]))


def run_script(tmp_path, lines: list[str], *opts: str) -> subprocess.CompletedProcess:
    """`pvm -f FILE`: lines too long for a command line (200 KB) go through a file."""
    script = tmp_path / "script.pvm"
    script.write_text("\n".join(lines) + "\n")
    return pvm("--norc", *opts, "-f", str(script))


@pytest.mark.parametrize("line,word", [
    ("setenv a=b c", "'a=b'"),
    ("setenv '' x", "''"),
    ("setenv 9lives x", "'9lives'"),
    ("setenv 'A B' x", "'A B'"),
    ("export OK a-b", "'a-b'"),
])
def test_bad_names_are_one_line_naming_the_word(line, word):
    c = Console(builtin_registry(), None, io.StringIO(), io.StringIO())
    status = run_lines(c, [line], "t")
    err = c.err.getvalue()
    assert status == 1
    assert len(err.splitlines()) == 1 and "internal error" not in err, err
    assert err.startswith(f"t:1: {line.split()[0]}: bad variable name {word}: "), err
    assert "OK" not in os.environ.get("PVM_EXPORT", "").split(":")  # nothing half-done


def test_bad_values_are_refused_and_nothing_is_set(monkeypatch):
    monkeypatch.delenv("ZZ_FAULT", raising=False)
    c = Console(builtin_registry(), None, io.StringIO(), io.StringIO())
    big = "x" * ENV_VAR_MAX
    status = run_lines(c, [f"setenv ZZ_FAULT {big}", "setenv ZZ_FAULT a\0b"], "t")
    errs = c.err.getvalue().splitlines()
    assert status == 1
    assert errs[0] == (f"t:1: setenv: value of ZZ_FAULT is too long: {ENV_VAR_MAX + 10} bytes "
                       f"with its name; at most {ENV_VAR_MAX} per variable")
    assert errs[1] == "t:2: setenv: value of ZZ_FAULT contains a NUL character"
    assert "ZZ_FAULT" not in os.environ


def test_a_bad_setenv_is_status_1_and_x_stops_there(vm):
    msg = "-e:1: setenv: bad variable name 'a=b': use letters, digits and '_', not starting with a digit\n"
    r = pvm("--norc", "-e", "setenv a=b c; echo reached")
    assert r.returncode == 1 and r.stderr == msg
    assert "pvm> echo reached\nreached\n" in r.stdout  # as PVM: the script goes on
    r = pvm("--norc", "-x", "-e", "setenv a=b c; echo not reached")
    assert r.returncode == 1 and r.stderr == msg
    assert "not reached" not in r.stdout
    assert pvm("--norc", "-e", "halt").returncode == 0


def test_huge_value_is_refused_and_ps_stat_spawn_halt_still_work(vm, tmp_path):
    """The review's case: a 200 KB value, then ps and halt (they failed with E2BIG)."""
    half = ENV_TOTAL_MAX // 2 - 64  # two of these fit the total, a third does not
    r = run_script(tmp_path, [
        "setenv BIG " + "x" * 200_000,
        f"setenv A1 {'y' * half}",
        f"setenv A2 {'z' * half}",
        f"setenv A3 {'w' * half}",
        # changes meant for tasks never reach the daemon's tools (a Python that can't start)
        "setenv PYTHONHOME /nonexistent",
        "export A1 A2",
        "ps -a",
        "stat",
        # the exported values reach the task; what was not exported does not
        "spawn -> /bin/sh -c 'echo len=${#A1}+${#A2} home=[$PYTHONHOME]'",
        "halt",
    ], "-k")
    errs = r.stderr.splitlines()
    assert r.returncode == 1  # the refused setenvs; everything else worked
    assert len(errs) == 2, r.stderr
    assert errs[0].startswith(f"{tmp_path}/script.pvm:1: setenv: value of BIG is too long: "
                              f"200005 bytes with its name; at most {ENV_VAR_MAX}")
    assert errs[1].startswith(f"{tmp_path}/script.pvm:4: setenv: no room for A3: ")
    assert f"at most {ENV_TOTAL_MAX} in all" in errs[1]
    assert "internal error" not in r.stderr and "Argument list too long" not in r.stdout
    out = r.stdout.splitlines()
    assert out[out.index("pvm> stat") + 2].split()[0] == ME  # stat's row for the host
    assert any(ln.endswith(f"len={half}+{half} home=[]") for ln in out), r.stdout
    assert not table_exists(vm)  # halt ran to the end
    assert subprocess.run([os.path.join(os.path.dirname(PVM), "pvm_shmd_stat"), "--json"],
                          capture_output=True, timeout=TIMEOUT).returncode == 1  # no daemon


def test_halt_works_whatever_was_set(vm, tmp_path):
    assert pvm("--norc", "-e", "quit").returncode == 0
    pid = daemon_state()["pid"]
    assert table_exists(vm)
    r = run_script(tmp_path, [
        "setenv PYTHONHOME /nonexistent",
        "setenv PATH /nonexistent",
        "setenv PVM_TMP /nonexistent",
        "setenv LD_PRELOAD /nonexistent.so",
        "halt",
    ])
    assert r.returncode == 0, r.stderr
    assert not alive(pid) and not table_exists(vm)

"""The interactive prompt through a real pseudo-terminal (pexpect) against a real pvm_shmd."""
from __future__ import annotations

import os
import socket
import subprocess

import pexpect
import pytest
from conftest import BIN
from consoles import CPR_REQUEST, PROMPT

PVM = os.path.join(BIN, "pvm")
SHMD_STAT = os.path.join(BIN, "pvm_shmd_stat")
ME = socket.gethostname()


@pytest.fixture
def term(pvm_env, tmp_path, monkeypatch):
    """`pvm` on a pty with a private HOME (.pvmrc, history); its VM halted after."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".pvmrc").write_text("alias ver version\n")
    env = {**os.environ, "HOME": str(home), "TERM": "xterm", "PVM_SHMD_OPTS": "-maxpages=64 -maxsegs=2",
           "COLUMNS": "120", "LINES": "40"}
    child = pexpect.spawn(PVM, env=env, encoding="utf-8", timeout=30, dimensions=(40, 120))
    child.home = home  # type: ignore[attr-defined]
    yield child
    if child.isalive():
        child.terminate(force=True)
    subprocess.run([PVM, "--norc", "-e", "halt"], env=env, capture_output=True, timeout=60)
    subprocess.run([SHMD_STAT, "--stop"], capture_output=True, timeout=60)


def expect(child: pexpect.spawn, text: str) -> None:
    """Wait for *text*, answering cursor-position requests as a terminal would
    (without an answer prompt_toolkit does not draw its bottom toolbar)."""
    while child.expect_exact([CPR_REQUEST, text]) == 0:
        child.send("\x1b[1;1R")


def command(child: pexpect.spawn, line: str) -> None:
    expect(child, PROMPT)
    child.sendline(line)


def test_prompt_commands_completion_ctrl_c_and_ctrl_d(term):
    expect(term, "alias ver version\r\n")  # .pvmrc ran first, echoed bare as PVM
    command(term, "conf")
    expect(term, "1 host, 1 data format")
    expect(term, f"{ME:>24}    40000  LINUX64")
    command(term, "ver")  # alias from .pvmrc
    expect(term, "3.4.6")
    command(term, "frob")
    expect(term, "frob: not found")
    # Tab completes a command name
    expect(term, PROMPT)
    term.send("vers\t")
    expect(term, "version")
    term.send("\r")
    expect(term, "3.4.6")
    # the command's syntax is shown while typing (bottom toolbar)
    expect(term, PROMPT)
    term.send("mstat ")
    expect(term, "Syntax:  mstat name ...")
    # Tab after a host command completes host names
    term.send("\t")
    expect(term, ME)
    term.send("\r")
    expect(term, f"{ME:>24}  ok")
    # Ctrl-C abandons the line being typed
    expect(term, PROMPT)
    term.send("echo abandoned")
    term.sendintr()
    expect(term, PROMPT)
    term.sendline("echo kept")
    expect(term, "kept")
    index = term.before.find("abandoned\r\n")
    assert index == -1
    # Ctrl-D quits, leaving the VM running
    expect(term, PROMPT)
    term.sendeof()
    expect(term, "pvmd still running.")
    term.expect(pexpect.EOF)
    term.close()
    assert term.exitstatus == 0
    history = (term.home / ".pvm_history").read_text()
    assert "conf" in history and "echo kept" in history
    # the VM outlives the console
    assert subprocess.run([SHMD_STAT, "--json"], capture_output=True, timeout=30).returncode == 0


def test_halt_from_the_prompt_leaves_nothing(term, pvm_env):
    command(term, "halt")
    term.expect(pexpect.EOF)
    term.close()
    assert term.exitstatus == 0
    assert subprocess.run([SHMD_STAT, "--json"], capture_output=True, timeout=30).returncode == 1
    assert not any(n.startswith("pvmd.") for n in os.listdir(pvm_env["state"]))

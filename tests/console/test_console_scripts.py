"""Scripts as PVM ran them (every line, failures named, status 1 at the end), PVM's own
example .pvmrc piped in, `setenv`'s PVM_ROOT/PVM_ARCH, and command files that are not
what they should be (each one line on stderr, never a traceback or a hang): against a
real one-host VM."""
from __future__ import annotations

import os
import subprocess
import sys

from consoles import ME, PVM, TIMEOUT, alive, daemon_state, pvm, vm  # noqa: F401

from pvmconsole.batch import MAX_SCRIPT
from shmd import handshake

# PVM 3.4's doc/example.pvmrc: not in the stored sources, so written from its description
# (pvm3-facts 3.7: the aliases, setenv PVM_EXPORT DISPLAY, `tm` trace lines, version, id),
# laid out so that its first `tm` line is line 26, where the issue saw it stop.
EXAMPLE_PVMRC = """\
#
# example .pvmrc file
#
# copy this file to $HOME/.pvmrc to have the console
# run these commands each time it starts.
#
# aliases for commonly used commands
#

alias ? help
alias h help
alias j jobs
alias t ps
alias tm trace
alias v version
alias print_environment spawn -> /bin/env

# export DISPLAY to spawned tasks (for X programs)
#

setenv PVM_EXPORT DISPLAY

# trace events for xpvm
# (names with or without pvm_)
#
tm addhosts delhosts halt
tm mcast send recv
tm spawn kill

# show the version and our tid
#
version
id
"""
TM_LINES = [26, 27, 28]


def test_pvm_example_pvmrc_piped_in_runs_every_line_and_leaves_the_vm_up(vm):
    lines = EXAMPLE_PVMRC.splitlines()
    assert [i for i, ln in enumerate(lines, 1) if ln.startswith("tm ")] == TM_LINES
    r = pvm("--norc", input=EXAMPLE_PVMRC)
    assert r.returncode == 0 and r.stderr == ""  # the `tm` lines set the trace mask, as in PVM
    out = r.stdout.splitlines()
    echoed = [ln[5:] for ln in out if ln.startswith("pvm> ")]
    assert echoed == lines + ["quit"]  # every line ran, then the quit of end of input
    assert out[out.index("pvm> version") + 1] == "3.4.6"
    assert out[out.index("pvm> id") + 1] == "t40001"
    assert out[-2:] == ["", "pvmd still running."]  # as PVM's: the VM is left up
    assert alive(daemon_state()["pid"])
    after = pvm("--norc", "-e", "mstat " + ME)
    assert after.returncode == 0 and f"{ME:>24}  ok" in after.stdout
    assert pvm("--norc", "-e", "halt").returncode == 0


def test_heredoc_that_adds_then_quits_runs_its_quit(vm):
    r = pvm("--norc", input="add localhost\nconf\nquit\n")
    assert r.returncode == 1 and r.stderr.startswith("stdin:1: add: localhost: Duplicate host")
    out = r.stdout.splitlines()
    assert "pvm> conf" in out and out[-3:] == ["pvm> quit", "", "pvmd still running."]
    assert out.count("pvm> quit") == 1  # the script's own quit ended it


def test_example_pvmrc_as_pvmrc_is_echoed_bare(vm):
    with open(os.path.join(vm["home"], ".pvmrc"), "w") as f:
        f.write(EXAMPLE_PVMRC)
    r = pvm("-e", "v")
    assert r.returncode == 0, r.stderr  # .pvmrc failures never make the status
    shown = EXAMPLE_PVMRC.replace("\nversion\nid\n", "\nversion\n3.4.6\nid\nt40001\n")
    assert r.stdout.startswith(shown + "pvm> v\n3.4.6\n"), r.stdout
    assert r.stderr == ""


def test_setenv_lists_pvm_root_and_pvm_arch(vm):
    env = {k: v for k, v in os.environ.items() if k not in ("PVM_ROOT", "PVM_ARCH")}
    r = subprocess.run([PVM, "--norc", "-e", "setenv; setenv PVM_ROOT; setenv PVM_ARCH"],
                       capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    root = sys.prefix
    assert f"PVM_ROOT={root}" in out and f"PVM_ARCH={handshake.arch()}" in out
    assert out[out.index("pvm> setenv PVM_ROOT") + 1] == root
    assert out[out.index("pvm> setenv PVM_ARCH") + 1] == handshake.arch()
    assert os.access(os.path.join(root, "bin", "pvm_shmd"), os.X_OK)  # what a script can use
    r = subprocess.run([PVM, "--norc", "-e", "setenv PVM_ROOT"], capture_output=True, text=True,
                       timeout=TIMEOUT, env={**env, "PVM_ROOT": "/opt/pvm3"})
    assert r.stdout.splitlines()[-4] == "/opt/pvm3"  # the environment's own wins


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, r
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert all(w in r.stderr for w in words), r.stderr
    assert r.stdout == ""


def test_dev_zero_is_refused_in_one_line(vm):
    one_line_error(pvm("--norc", "-f", "/dev/zero"), "/dev/zero", "not a regular file or a pipe")
    assert not os.path.exists(vm["table"])  # nothing started


def test_a_fifo_with_no_writer_is_refused_not_waited_for(vm, tmp_path):
    fifo = tmp_path / "cmds"
    os.mkfifo(fifo)
    one_line_error(pvm("--norc", "-f", str(fifo)), str(fifo), "no writer")


def test_a_fifo_with_a_writer_is_read(vm, tmp_path):
    fifo = tmp_path / "cmds"
    os.mkfifo(fifo)
    p = subprocess.Popen([PVM, "--norc", "-f", str(fifo)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    with open(fifo, "w") as w:  # blocks until the console has it open: it has a writer then
        w.write("echo from the pipe\n")
    out, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 0, err
    assert "pvm> echo from the pipe\nfrom the pipe\n" in out


def test_a_directory_and_a_too_big_file_are_refused(vm, tmp_path):
    one_line_error(pvm("--norc", "-f", str(tmp_path)), str(tmp_path), "Is a directory")
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(MAX_SCRIPT + 1)
    one_line_error(pvm("--norc", "-f", str(big)), str(big), "file too large (more than 16 MiB)")
    assert not os.path.exists(vm["table"])


def test_bom_and_nul_in_a_script(vm, tmp_path):
    script = tmp_path / "s.pvm"
    script.write_bytes(b"\xef\xbb\xbfecho first\nfr\x00ob\necho last\n")
    r = pvm("--norc", "-f", str(script))
    assert r.returncode == 1
    assert r.stdout.startswith("pvm> echo first\nfirst\n")
    assert r.stderr == f"{script}:2: fr\\x00ob: not found\n"
    assert "pvm> echo last\nlast\n" in r.stdout


def test_a_huge_line_on_stdin_is_one_error_not_memory_error(vm):
    r = subprocess.run(f"head -c {MAX_SCRIPT + 10} /dev/zero | {PVM} --norc", shell=True,
                       capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 1
    assert r.stderr.decode() == f"stdin:1: line longer than {MAX_SCRIPT} characters\n"
    assert r.stdout.endswith(b"pvm> quit\n\npvmd still running.\n")

"""Every console transcript in the README and docs/ runs, and prints what the doc shows.

A transcript is a fenced block whose first line is a shell command that runs the console
(``$ pvm ...``, ``$ ... | pvm``, ``$ ./dev run``) or a console prompt (``pvm> ...``).
It runs on a fresh one-host virtual machine; ``./dev run`` and prompt blocks get their
``pvm> `` lines as input (the scripted console echoes them the same way). The doc's
output is compared line by line with stdout then stderr, after two allowances: the
local host's name is shown as ``vm`` (the name of the machine the docs were made on),
and a ``...`` line in the doc stands for any lines. A prompt block that does not end in
``quit`` shows the session up to there: the quit at the end of input is left out. A pid (stat's PID column) is the one
value that differs run to run, and is compared as such.
"""
from __future__ import annotations

import glob
import os
import re
import socket
import subprocess

import pytest
from conftest import BIN, ROOT

DOCS = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
STAT_ROW = re.compile(r"^\s*\S+(\s+\d+){7}$")
RELAYED = re.compile(r"^\[\d+:(t[0-9a-f]+)\] ")  # a task's output line, as spawn -> shows it


def per_task(lines: list[str]) -> list[str]:
    """Each run of relayed output lines ordered by task, each task's lines in their own
    order: tasks run at once, so only the order within one task is the doc's to show."""
    out: list[str] = []
    run: list[str] = []
    for line in [*lines, ""]:
        m = RELAYED.match(line)
        if m:
            run.append(line)
            continue
        out += sorted(run, key=lambda ln: RELAYED.match(ln).group(1))  # type: ignore[union-attr]
        run = []
        out.append(line)
    return out[:-1]


def transcripts() -> list[tuple[str, int, list[str]]]:
    """(doc, line number, block lines) of every runnable transcript."""
    found = []
    for doc in DOCS:
        text = open(doc, encoding="utf-8").read()
        for m in re.finditer(r"^```\w*\n(.*?)^```", text, re.S | re.M):
            lines = m.group(1).rstrip("\n").splitlines()
            first = lines[0] if lines else ""
            runs_console = first.startswith("$ ") and (
                re.match(r"\$ (pvm|\./dev run)(\s|$)", first) or re.search(r"\|\s*pvm(\s|$)", first))
            if runs_console or first.startswith("pvm> "):
                found.append((os.path.relpath(doc, ROOT), text[:m.start()].count("\n") + 2, lines))
    return found


def normalize(line: str) -> str:
    me = socket.gethostname()
    if me != "vm":  # right-aligned tables keep their width
        line = re.sub(rf"(?<!\S)( *){re.escape(me)}(?=\s|$)",
                      lambda m: " " * max(0, len(m.group(1)) + len(me) - 2) + "vm", line)
    if STAT_ROW.match(line):  # stat's row: its PID is the one value that differs each run
        words = line.split()
        return " ".join([words[0], "<pid>", *words[2:]])
    return line.rstrip()


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line by line; a ``...`` line in *expected* takes any number of actual lines."""
    if not expected:
        return not actual
    if expected[0].strip() == "...":
        return any(matches(expected[1:], actual[k:]) for k in range(len(actual) + 1))
    return bool(actual) and normalize(expected[0]) == normalize(actual[0]) and \
        matches(expected[1:], actual[1:])


@pytest.mark.parametrize("doc,line,block", transcripts(),
                         ids=[f"{d}:{n}" for d, n, _ in transcripts()])
def test_a_doc_transcript_prints_what_it_shows(pvm_env, tmp_path, doc, line, block):
    first = block[0]
    if first.startswith("pvm> ") or first.startswith("$ ./dev run"):
        command, expected = "pvm", block[1:] if first.startswith("$") else block
        stdin = "".join(ln[5:] + "\n" for ln in block if ln.startswith("pvm> "))
    else:
        command, expected, stdin = first[2:], block[1:], None
    # the daemons' defaults, as a reader's console has them (segments of 16 MiB, halted after)
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"], "HOME": str(tmp_path)}
    env.pop("PVM_SHMD_OPTS", None)
    try:
        r = subprocess.run(["bash", "-c", command], input=stdin, capture_output=True, text=True,
                           timeout=90, env=env, cwd=str(tmp_path))
    finally:
        subprocess.run([os.path.join(BIN, "pvm"), "--norc", "-e", "halt"], capture_output=True,
                       timeout=90, env=env)
    actual = r.stdout.splitlines() + r.stderr.splitlines()
    if stdin is not None and "pvm> quit" not in block:
        # the doc stops before the end of input: leave out the quit it implies (its echo
        # may come before the jobs' last output, which quit waits for)
        actual = [ln for ln in actual if ln != "pvm> quit"]
        while actual[-2:] == ["", "pvmd still running."]:
            actual = actual[:-2]
    assert matches(per_task(expected), per_task(actual)), (
        f"{doc}:{line}: the transcript differs from what the console prints now\n--- doc\n"
        + "\n".join(expected) + "\n--- console\n" + "\n".join(actual))


def test_the_docs_have_transcripts_to_run():
    assert len(transcripts()) >= 4

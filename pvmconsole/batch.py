"""Scripted use: lines from a file, a pipe, ``-e`` or ``.pvmrc``.

Each line is echoed before it runs (after the prompt, so a transcript reads like
PVM's; ``.pvmrc`` lines bare, as PVM echoed them), then run. A failing line is
reported as ``SOURCE:LINE: message`` on stderr and, as in PVM, the script goes on;
the exit status is 1 at the end when any line failed. With *stop_on_error* the
first failing line ends the script. End of input acts as `quit`.

Command files are read through :func:`read_command_file`: at most
:data:`MAX_SCRIPT` bytes, never blocking on a FIFO nobody writes to.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TextIO

from pvmconsole.console import PROMPT, Console, printable
from pvmconsole.status import Exit
from pvmconsole.userfiles import MAX_BYTES, read_bytes

MAX_SCRIPT = MAX_BYTES  # bytes of a command file (-f, .pvmrc); characters of a stdin line
BOM = "\ufeff"


class ScriptError(Exception):
    """A command file that can't be used: one line, naming it."""


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def read_command_file(path: str) -> list[str]:
    """The lines of the command file *path* (userfiles.read_bytes: a regular file or a
    pipe with a writer, at most MAX_SCRIPT bytes); else a ScriptError naming it."""
    try:
        return _decode(read_bytes(path)).splitlines()
    except OSError as e:
        raise ScriptError(f"{e.filename or printable(path)}: {e.strerror}") from None


def stream_lines(f: TextIO, source: str, limit: int = MAX_SCRIPT) -> Iterator[str]:
    """Lines of a text stream as they come (stdin; the manual start-up of a host may
    have read from it already): each at most *limit* characters; a longer line ends
    the input with a ScriptError."""
    lineno = 0
    while True:
        data = f.readline(limit + 1)
        if not data:
            return
        lineno += 1
        if len(data) > limit and not data.endswith("\n"):
            raise ScriptError(f"{printable(source)}:{lineno}: line longer than {limit} characters")
        yield data


def run_lines(
    console: Console,
    lines: Iterable[str],
    source: str,
    *,
    stop_on_error: bool = False,
    quit_at_end: bool = True,
    echo: str = PROMPT,
) -> int | None:
    """Run *lines*, each echoed after *echo*; return the console's exit status, or
    None if the batch ended without ending the console (``quit_at_end=False``, as
    for .pvmrc)."""
    failed = False
    lineno = 0
    try:
        for lineno, raw in enumerate(lines, start=1):
            line = raw.rstrip("\r\n")
            if lineno == 1 and line.startswith(BOM):
                line = line[len(BOM):]
            console.out.write(echo + line + "\n")
            res = console.execute(line)
            if res.error is not None:
                console.out.flush()
                console.err.write(f"{printable(source)}:{lineno}: {res.error}\n")
                console.err.flush()
                failed = True
            if res.exit is not None:
                return Exit.FAILED if failed else res.exit
            if failed and stop_on_error:
                console.out.flush()
                return Exit.FAILED
    except ScriptError as e:
        console.out.flush()
        console.err.write(f"{e}\n")
        console.err.flush()
        failed = True
    if not quit_at_end:
        return None
    console.out.write(PROMPT + "quit\n")  # PVM: EOF prints "quit" and quits
    res = console.execute("quit")
    return Exit.FAILED if failed else (res.exit if res.exit is not None else Exit.OK)

"""Scripted use: lines from a file, a pipe, ``-e`` or ``.pvmrc``.

Each line is echoed after the prompt (so a transcript reads like PVM's), then
run. The first failing line stops the batch with ``SOURCE:LINE: message`` on
stderr unless *keep_going*. End of input acts as `quit`.
"""
from __future__ import annotations

from collections.abc import Iterable

from pvmconsole.console import PROMPT, Console
from pvmconsole.status import Exit


def run_lines(
    console: Console,
    lines: Iterable[str],
    source: str,
    *,
    keep_going: bool = False,
    quit_at_end: bool = True,
) -> int | None:
    """Run *lines*; return the console's exit status, or None if the batch ended
    without ending the console (``quit_at_end=False``, as for .pvmrc)."""
    failed = False
    for lineno, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        console.out.write(PROMPT + line + "\n")
        res = console.execute(line)
        if res.error is not None:
            console.err.write(f"{source}:{lineno}: {res.error}\n")
            console.err.flush()
            failed = True
        if res.exit is not None:
            return Exit.FAILED if failed else res.exit
        if failed and not keep_going:
            console.out.flush()
            return Exit.FAILED
    if not quit_at_end:
        return None
    console.out.write(PROMPT + "quit\n")  # PVM: EOF prints "quit" and quits
    res = console.execute("quit")
    return Exit.FAILED if failed else (res.exit if res.exit is not None else Exit.OK)

"""The console proper: one line in, words out of the tokenizer, aliases expanded,
arity checked against the registry, the handler run. It never dies of a bad line:
every failure becomes a LineResult with one message for stderr."""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from pvmconsole.registry import CommandError, Registry
from pvmconsole.tokenizer import TokenizeError, split
from shmd.errors import PvmError, PvmSysErr

if TYPE_CHECKING:
    from pvmconsole.vm import VirtualMachine

PROMPT = "pvm> "
VERSION = "3.4.6"  # the PVM version this console re-creates (what `version` prints)
MAX_ALIAS_DEPTH = 100  # deeper than this can only be a cycle


def printable(text: str) -> str:
    """*text* for a message: control characters (NUL, ESC, ...; C0, DEL and C1)
    written as ``\\xNN``, so a message is one line and shows what was there."""
    return "".join(f"\\x{ord(ch):02x}" if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 else ch
                   for ch in text)


class ExitConsole(Exception):
    """Raised by `quit`/`halt`: leave the console with this exit status."""

    def __init__(self, status: int = 0, message: str | None = None):
        super().__init__(status)
        self.status = status
        self.message = message  # what went wrong on the way out, if anything


@dataclass
class LineResult:
    """The outcome of one line: ok, or an error message; exit status if it ends the console."""

    error: str | None = None
    exit: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Console:
    """Console state: commands, aliases, the virtual machine and the output streams."""

    registry: Registry
    vm: VirtualMachine | None = None
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    #: Output jobs of `spawn ->` (pvmconsole.jobs.JobTable), made at the first spawn.
    jobs: Any = None
    #: `quit` (and end of a script) first waits for the output jobs to finish, so a
    #: script sees its tasks' output; the interactive console quits at once, as PVM.
    wait_jobs_on_quit: bool = True
    _out_lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def print(self, *lines: str) -> None:
        with self._out_lock:
            for line in lines:
                self.out.write(line + "\n")
            self.out.flush()

    def print_async(self, *lines: str) -> None:
        """Output that is not the answer to a command (job output, from a thread):
        whole lines, never mixed into another print (the interactive console shows
        them above the line being edited)."""
        try:
            self.print(*lines)
        except (OSError, ValueError):
            pass  # the terminal went away: nothing to show it on

    def machine(self) -> VirtualMachine:
        if self.vm is None:
            raise PvmError(PvmSysErr, "no virtual machine")
        return self.vm

    def expand_aliases(self, words: list[str]) -> list[str]:
        """PVM's alias expansion on the first word: repeated; an alias whose
        expansion starts with itself stops (``alias ps ps -a``); a cycle is an error."""
        seen: set[str] = set()
        while words and words[0] in self.aliases:
            name = words[0]
            if name in seen or len(seen) > MAX_ALIAS_DEPTH:
                raise CommandError("alias loop")
            seen.add(name)
            expansion = self.aliases[name]
            words = expansion + words[1:]
            if expansion and expansion[0] == name:
                break
        return words

    def expand_aliases_quiet(self, words: list[str]) -> list[str]:
        """Alias expansion for completion and hints: a loop just stops it."""
        try:
            return self.expand_aliases(words)
        except CommandError:
            return words

    def execute(self, line: str) -> LineResult:
        """Run one console line. An error message has its control characters
        escaped (a NUL or an escape sequence from the line is shown, not sent)."""
        res = self._execute(line)
        if res.error is not None:
            res.error = printable(res.error)
        return res

    def _execute(self, line: str) -> LineResult:
        try:
            words = self.expand_aliases(split(line))
        except (TokenizeError, CommandError) as e:
            return LineResult(str(e))
        if not words:
            return LineResult()
        name, args = words[0], words[1:]
        cmd = self.registry.get(name)
        if cmd is None:
            return LineResult(f"{name}: not found")
        if not cmd.arity_ok(len(words)):
            return LineResult(f"{name}: wrong #args")
        try:
            cmd.handler(self, args)
        except ExitConsole as e:
            return LineResult(f"{name}: {e.message}" if e.message else None, exit=e.status)
        except (CommandError, PvmError) as e:
            return LineResult(f"{name}: {e}")
        except Exception as e:  # a bug in a handler or plugin must not kill the console
            return LineResult(f"{name}: internal error: {type(e).__name__}: {e}")
        finally:
            self.out.flush()
        return LineResult()

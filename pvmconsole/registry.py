"""The one table of console commands (name, arity, help, handler).

Built-in commands (``pvmconsole/commands/``, one module per group) and plugins
register the same way: a plugin is an entry point in the ``pvm.commands`` group whose
object is an iterable of :class:`Command` (docs/console.md, "Plugins"). Arity counts
include the command word, as PVM's table did.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pvmconsole.console import Console

ENTRY_POINT_GROUP = "pvm.commands"

#: A handler gets the console and the words after the command name. It prints its
#: output to ``console.out`` and signals failure by raising CommandError/PvmError.
Handler = Callable[["Console", list[str]], None]

#: What a command's arguments are, for completion (Command.args_are).
HOSTS = "hosts"  # hosts of the virtual machine
KNOWN_HOSTS = "known hosts"  # the hostfile's hosts not in it yet (for `add`)


class CommandError(Exception):
    """A command failed; the message is printed (prefixed by the command name)."""


@dataclass(frozen=True)
class Command:
    """One console command."""

    name: str
    min_words: int  # including the command word
    max_words: int | None  # None = unbounded
    summary: str  # the one line shown by `help`
    syntax: tuple[str, ...]  # lines after the summary in `help <name>`
    handler: Handler = field(compare=False)
    hidden: bool = False  # left out of `help`'s list, as PVM's idump/tickle
    args_are: str = ""  # HOSTS, KNOWN_HOSTS or "" (nothing to complete)

    def arity_ok(self, nwords: int) -> bool:
        return nwords >= self.min_words and (self.max_words is None or nwords <= self.max_words)

    def help_lines(self) -> list[str]:
        return [f"{self.name:<12}{self.summary}", *self.syntax]


class Registry:
    """Command name -> Command. Later registrations of a name replace earlier ones
    only when ``replace=True``; otherwise a clash is an error, so a plugin cannot
    silently shadow a built-in."""

    def __init__(self, commands: Iterable[Command] = ()):
        self._commands: dict[str, Command] = {}
        self.origin: dict[str, str] = {}
        for c in commands:
            self.add(c)

    def add(self, command: Command, *, origin: str = "builtin", replace: bool = False) -> None:
        if command.name in self._commands and not replace:
            raise ValueError(
                f"command {command.name!r} from {origin} clashes with one from {self.origin[command.name]}"
            )
        self._commands[command.name] = command
        self.origin[command.name] = origin

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    def names(self, *, hidden: bool = False) -> list[str]:
        return sorted(n for n, c in self._commands.items() if hidden or not c.hidden)

    def __iter__(self) -> Iterator[Command]:
        return iter(self._commands[n] for n in self.names(hidden=True))

    def __contains__(self, name: str) -> bool:
        return name in self._commands

    def load_plugins(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Add the commands of every installed plugin; return problems as text
        (a broken plugin must not keep the console from starting)."""
        problems = []
        for ep in entry_points(group=group):
            try:
                commands = list(ep.load())
            except Exception as e:  # any failure inside third-party code
                problems.append(f"plugin {ep.name} ({ep.value}): {e}")
                continue
            for command in commands:
                try:
                    self.add(command, origin=f"plugin {ep.name}")
                except ValueError as e:  # a clash: that command is left out, the rest load
                    problems.append(str(e))
        return problems

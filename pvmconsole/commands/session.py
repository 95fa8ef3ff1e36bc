"""Commands about the console itself: help, id, version, echo, aliases, environment, quit."""
from __future__ import annotations

import os

from pvmconsole import formats
from pvmconsole.console import VERSION, Console, ExitConsole
from pvmconsole.registry import Command
from pvmconsole.vmtable import dtid

EXPORT_VAR = "PVM_EXPORT"
CONSOLE_TID = dtid(1) + 1  # PVM's console was the first task on the master: t40001


def do_help(c: Console, args: list[str]) -> None:
    if args:
        cmd = c.registry.get(args[0])
        if cmd is not None:  # PVM prints nothing for an unknown topic
            c.print(*cmd.help_lines())
        return
    c.print(*c.registry.get("help").help_lines())  # type: ignore[union-attr]
    c.print(*formats.help_list((n, c.registry.get(n).summary) for n in c.registry.names()))  # type: ignore[union-attr]


def do_id(c: Console, args: list[str]) -> None:
    c.print(f"t{CONSOLE_TID:x}")


def do_version(c: Console, args: list[str]) -> None:
    c.print(VERSION)


def do_echo(c: Console, args: list[str]) -> None:
    c.print(" ".join(args))


def do_alias(c: Console, args: list[str]) -> None:
    if len(args) <= 1:  # PVM: `alias` and `alias name` both list everything
        c.print(*(f"{n}\t{' '.join(w)}" for n, w in sorted(c.aliases.items())))
    else:
        c.aliases[args[0]] = args[1:]


def do_unalias(c: Console, args: list[str]) -> None:
    for name in args:
        c.aliases.pop(name, None)  # PVM is silent about names that are not aliases


def do_setenv(c: Console, args: list[str]) -> None:
    if not args:
        c.print(*(f"{k}={v}" for k, v in os.environ.items()))
    elif len(args) == 1:
        if args[0] in os.environ:
            c.print(os.environ[args[0]])
    else:
        os.environ[args[0]] = " ".join(args[1:])


def _exports() -> list[str]:
    return [n for n in os.environ.get(EXPORT_VAR, "").split(":") if n]


def do_export(c: Console, args: list[str]) -> None:
    names = _exports()
    if not args:
        c.print(f"{EXPORT_VAR}={':'.join(names)}")
        return
    for n in args:
        if n not in names:
            names.append(n)
    os.environ[EXPORT_VAR] = ":".join(names)


def do_unexport(c: Console, args: list[str]) -> None:
    os.environ[EXPORT_VAR] = ":".join(n for n in _exports() if n not in args)


def do_quit(c: Console, args: list[str]) -> None:
    c.print("", "pvmd still running.")
    raise ExitConsole(0)


COMMANDS = [
    Command("alias", 1, None, "Define/list command aliases",
            ("Syntax:  alias [name command args ...]",), do_alias),
    Command("echo", 1, None, "Echo arguments", ("Syntax:  echo [ arg ... ]",), do_echo),
    Command("export", 1, None, "Add environment variables to spawn export list",
            ("Syntax:  export [ varname ... ]",), do_export),
    Command("help", 1, 2, "Print helpful information about a command",
            ("Syntax:  help [ command ]",), do_help),
    Command("id", 1, 1, "Print console task id", ("Syntax:  id",), do_id),
    Command("quit", 1, 1, "Exit console", ("Syntax:  quit",), do_quit),
    Command("setenv", 1, None, "Display or set environment variables",
            ("Syntax:  setenv [ name [ value ] ]",), do_setenv),
    Command("unalias", 2, None, "Undefine command alias", ("Syntax:  unalias name ...",), do_unalias),
    Command("unexport", 1, None, "Remove environment variables from spawn export list",
            ("Syntax:  unexport [ varname ... ]",), do_unexport),
    Command("version", 1, 1, "Show libpvm version", ("Syntax:  version",), do_version),
]

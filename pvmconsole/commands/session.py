"""Commands about the console itself: help, id, version, echo, aliases, environment, quit."""
from __future__ import annotations

import os
import re
import sys

from pvmconsole import formats
from pvmconsole.console import VERSION, Console, ExitConsole
from pvmconsole.registry import Command, CommandError
from pvmconsole.runner import console_vars, set_console_var
from shmd import handshake, tids
from shmd.tids import CONSOLE_TID

EXPORT_VAR = "PVM_EXPORT"
# Bounds on what `setenv`/`export` may set, in bytes of "NAME=value". The kernel refuses
# any one environment string over MAX_ARG_STRLEN (128 KiB) with E2BIG, and over SSH the
# whole remote command, exported variables included, is one such string for the remote
# shell: 32 KiB a variable and 64 KiB for all the console set leave room for the rest.
ENV_VAR_MAX = 32 * 1024
ENV_TOTAL_MAX = 64 * 1024
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # what `env NAME=value` and every shell take


def _size(name: str, value: str) -> int:
    return len(os.fsencode(f"{name}={value}")) + 1  # + the NUL that ends it in envp


def check_env_name(name: str) -> str:
    """A variable name the console can pass to a task, else CommandError naming it."""
    if not _NAME_RE.fullmatch(name) or len(name) > ENV_VAR_MAX // 2:
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise CommandError(f"bad variable name {shown!r}: use letters, digits and '_', "
                           "not starting with a digit")
    return name


def set_checked(name: str, value: str) -> None:
    """Set *name* in the console's environment if it fits the bounds above; else
    CommandError naming the variable and the limit (nothing is changed)."""
    check_env_name(name)
    if "\0" in value:
        raise CommandError(f"value of {name} contains a NUL character")
    try:
        size = _size(name, value)
    except UnicodeEncodeError:
        raise CommandError(f"value of {name} is not valid text") from None
    if size > ENV_VAR_MAX:
        raise CommandError(f"value of {name} is too long: {size} bytes with its name; "
                           f"at most {ENV_VAR_MAX} per variable")
    total = size + sum(_size(n, os.environ[n]) for n in console_vars()
                       if n != name and n in os.environ)
    if total > ENV_TOTAL_MAX:
        raise CommandError(f"no room for {name}: the variables set in this console would take "
                           f"{total} bytes, at most {ENV_TOTAL_MAX} in all "
                           "(set some to \"\" to make room)")
    set_console_var(name, value)


def do_help(c: Console, args: list[str]) -> None:
    if args:
        cmd = c.registry.get(args[0])
        if cmd is not None:  # PVM prints nothing for an unknown topic
            c.print(*cmd.help_lines())
        return
    c.print(*c.registry.get("help").help_lines())  # type: ignore[union-attr]
    c.print(*formats.help_list((n, c.registry.get(n).summary) for n in c.registry.names()))  # type: ignore[union-attr]


def do_id(c: Console, args: list[str]) -> None:
    c.print(tids.fmt(CONSOLE_TID))


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


def pvm_root() -> str:
    """What the console shows as PVM_ROOT when the environment has none: the
    installation it runs from (its ``sys.prefix``, the virtual environment of a
    checkout), whose ``bin`` holds pvm, pvm_shmd, pvm_shmd_stat, pvm_spawn and ipcfree."""
    return sys.prefix


def shown_environ() -> dict[str, str]:
    """The console's environment as `setenv` shows it: PVM's console always had
    PVM_ROOT and PVM_ARCH (its start-up script set them); when ours lacks them they
    are shown with their values here (they are not set: `export` can't pass them)."""
    env = dict(os.environ)
    env.setdefault("PVM_ROOT", pvm_root())
    env.setdefault("PVM_ARCH", handshake.arch())
    return env


def do_setenv(c: Console, args: list[str]) -> None:
    if not args:
        c.print(*(f"{k}={v}" for k, v in shown_environ().items()))
    elif len(args) == 1:
        env = shown_environ()
        if args[0] in env:
            c.print(env[args[0]])
    else:
        set_checked(args[0], " ".join(args[1:]))


def _exports() -> list[str]:
    return [n for n in os.environ.get(EXPORT_VAR, "").split(":") if n]


def do_export(c: Console, args: list[str]) -> None:
    names = _exports()
    if not args:
        c.print(f"{EXPORT_VAR}={':'.join(names)}")
        return
    for n in args:
        check_env_name(n)  # all checked before any is added
    for n in args:
        if n not in names:
            names.append(n)
    set_checked(EXPORT_VAR, ":".join(names))


def do_unexport(c: Console, args: list[str]) -> None:
    set_console_var(EXPORT_VAR, ":".join(n for n in _exports() if n not in args))


def do_quit(c: Console, args: list[str]) -> None:
    if c.jobs is not None and c.wait_jobs_on_quit:
        c.jobs.wait_all()  # a script sees its tasks' output; Ctrl-C gives up waiting
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
            ("Syntax:  setenv [ name [ value ] ]",
             "Names: letters, digits and '_' (not starting with a digit); values are for the",
             f"tasks (see export): at most {ENV_VAR_MAX} bytes a variable, {ENV_TOTAL_MAX} in all."),
            do_setenv),
    Command("unalias", 2, None, "Undefine command alias", ("Syntax:  unalias name ...",), do_unalias),
    Command("unexport", 1, None, "Remove environment variables from spawn export list",
            ("Syntax:  unexport [ varname ... ]",), do_unexport),
    Command("version", 1, 1, "Show libpvm version", ("Syntax:  version",), do_version),
]

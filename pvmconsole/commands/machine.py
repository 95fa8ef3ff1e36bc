"""Commands on the whole virtual machine: reset and halt."""
from __future__ import annotations

from pvmconsole.commands.hosts import fail_if_any
from pvmconsole.console import Console, ExitConsole
from pvmconsole.registry import Command, CommandError


def do_reset(c: Console, args: list[str]) -> None:
    fail_if_any(c.machine().reset())


def do_halt(c: Console, args: list[str]) -> None:
    try:
        fail_if_any(c.machine().halt())
    except CommandError as e:  # a host that failed to stop is reported; we exit all the same
        raise ExitConsole(1, str(e)) from None
    raise ExitConsole(0)


COMMANDS = [
    Command("halt", 1, 1, "Stop pvmds", ("Syntax:  halt",
            "Kills every task and pvm_shmd, removes their IPC objects and the host table."),
            do_halt),
    Command("reset", 1, 1, "Kill all tasks, delete leftover mboxes",
            ("Syntax:  reset",
             "Kills every task and pvm_shmd (their IPC objects removed),",
             "then starts a fresh pvm_shmd on each host."), do_reset),
]

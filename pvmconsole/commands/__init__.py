"""Built-in console commands, one module per group."""
from __future__ import annotations

from pvmconsole.commands import daemons, hosts, machine, session, tasks, view
from pvmconsole.registry import Registry


def builtin_registry() -> Registry:
    """A fresh registry holding the built-in commands (no plugins)."""
    return Registry([*session.COMMANDS, *hosts.COMMANDS, *machine.COMMANDS, *tasks.COMMANDS,
                     *daemons.COMMANDS, *view.COMMANDS])


def full_registry() -> tuple[Registry, list[str]]:
    """Built-ins plus every installed plugin; returns (registry, plugin problems)."""
    reg = builtin_registry()
    return reg, reg.load_plugins()

"""Commands about the hosts of the virtual machine: add, delete, conf, mstat."""
from __future__ import annotations

from collections.abc import Sequence

from pvmconsole import formats
from pvmconsole.console import Console
from pvmconsole.registry import HOSTS, KNOWN_HOSTS, Command, CommandError
from pvmconsole.vm import Outcome
from shmd.errors import strerror


def fail_if_any(outcomes: Sequence[Outcome]) -> None:
    """After the table is printed: one stderr line naming each failed host."""
    bad = [o for o in outcomes if o.error is not None]
    if bad:
        raise CommandError("; ".join(
            f"{o.name}: {o.message}" if o.message else
            f"{o.name}: {strerror(o.error)}" + (f" ({o.detail})" if o.detail else "")  # type: ignore[arg-type]
            for o in bad))


def do_add(c: Console, args: list[str]) -> None:
    res = c.machine().add(args)
    c.print(*formats.add([(o.name, o.dtid, o.error) for o in res]))
    fail_if_any(res)


def do_delete(c: Console, args: list[str]) -> None:
    res = c.machine().delete(args)
    c.print(*formats.delete([(o.name, o.error) for o in res]))
    fail_if_any(res)


def do_conf(c: Console, args: list[str]) -> None:
    vm = c.machine()
    vm.prune()  # a host whose pvm_netd went silent is gone from the VM (as PVM's host table)
    hosts = vm.hosts()
    c.print(*formats.conf([(h.name, h.dtid, h.arch, h.speed, h.dsig) for h in hosts]))


def do_mstat(c: Console, args: list[str]) -> None:
    res = c.machine().mstat(args)
    c.print(*formats.mstat([(o.name, o.error) for o in res]))
    fail_if_any(res)


COMMANDS = [
    Command("add", 2, None, "Add hosts to virtual machine",
            ("Syntax:  add hostname ...",
             "  or     add 'hostname <option>=<value>...' ...",
             "(See docs/hostfile.md for valid host (file) options.)"), do_add,
            args_are=KNOWN_HOSTS),
    Command("conf", 1, 1, "List virtual machine configuration",
            ("Syntax:  conf", "Output fields:", "  HOST    host name",
             "  DTID    tid base of pvmd", "  ARCH    xhost architecture",
             "  SPEED   host relative speed", "  DSIG    data signature"), do_conf),
    Command("delete", 2, None, "Delete hosts from virtual machine",
            ("Syntax:  delete hostname ...",), do_delete, args_are=HOSTS),
    Command("mstat", 2, None, "Show status of hosts", ("Syntax:  mstat name ...",), do_mstat,
            args_are=HOSTS),
]

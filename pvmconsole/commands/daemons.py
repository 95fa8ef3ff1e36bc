"""Commands about the hosts' pvm_shmd daemons (PVM's console had none).

``stat [-j] [host ...]``: each host's daemon state, from ``pvm_shmd_stat --json``
run on that host.
"""
from __future__ import annotations

import json
from collections.abc import Mapping

from pvmconsole.console import Console
from pvmconsole.formats import HOST_W
from pvmconsole.registry import HOSTS, Command, CommandError
from shmd.errors import PvmError

HEADER = (f"{'HOST':>{HOST_W}} {'PID':>8} {'SEGS':>4} {'USED':>6} {'FREE':>6}"
          f" {'LARGEST':>7} {'TASKS':>5} {'MSGS':>5}")


def _ints(items: object, key: str) -> list[int]:
    return [int(x.get(key, 0)) for x in items if isinstance(x, dict)] if isinstance(items, list) else []


def row(name: str, state: Mapping[str, object]) -> str:
    """One table row: pages are summed over all segments, messages over all tasks."""
    pages, free = sum(_ints(state.get("segments"), "pages")), sum(_ints(state.get("segments"), "free"))
    largest = max(_ints(state.get("segments"), "largest_free"), default=0)
    nsegs = len(_ints(state.get("segments"), "pages"))
    waiting = _ints(state.get("tasks"), "waiting")
    return (f"{name:>{HOST_W}} {int(state.get('pid', 0)):8d} {nsegs:4d} {pages - free:6d}"  # type: ignore[call-overload]
            f" {free:6d} {largest:7d} {len(waiting):5d} {sum(waiting):5d}")


def do_stat(c: Console, args: list[str]) -> None:
    as_json = bool(args) and args[0] == "-j"
    names = args[1:] if as_json else args
    results = c.machine().stat(names)
    if not as_json:
        c.print(HEADER)
    failed = []
    for name, state in results:
        if isinstance(state, PvmError):
            failed.append(f"{name}: {state}")
            c.print(json.dumps({"name": name, "error": str(state)}) if as_json
                    else f"{name:>{HOST_W}}  {state}")
        else:
            c.print(json.dumps(state) if as_json else row(name, state))
    if failed:
        raise CommandError("; ".join(failed))


COMMANDS = [
    Command("stat", 1, None, "Show pvm_shmd state of hosts", (
        "Syntax:  stat [ -j ] [ hostname ... ]",
        "Options: -j  one JSON document per host (pvm_shmd_stat --json) instead of the table",
        "Output fields:",
        "  HOST    host name",
        "  PID     pid of the host's pvm_shmd",
        "  SEGS    shared memory segments",
        "  USED    pages in use",
        "  FREE    pages free",
        "  LARGEST largest run of free pages in one segment",
        "  TASKS   tasks joined",
        "  MSGS    messages waiting to be received",
    ), do_stat, args_are=HOSTS),
]

"""pvm_netd's answers to the console about clocks and traces (its ``Net.asks`` entries).

* ``clock``: this host's monotonic clock (the clock trace events are stamped with), read
  as the request is answered; the console times the round trip around it and takes
  the offset NTP's way (pvmconsole/view/clocks.py).
* ``trace`` with ``word`` on|off|MASK|dump|take: what ``pvm_shmd_stat --trace WORD``
  does, asked of this host's pvm_shmd on its control socket (no program started, no
  SSH round trip: a dump comes back on the console's open channel).
"""
from __future__ import annotations

import time

from . import control, stat

DUMP_TIMEOUT = 60.0  # seconds pvm_shmd may take to hand over a million events
SET_TIMEOUT = 5.0


def clock(req: dict) -> float:
    """This host's monotonic clock now (seconds)."""
    return time.monotonic()


def request_of(word: object) -> dict[str, object]:
    """The control request for trace *word* (on, off, a mask, dump, take: what
    ``pvm_shmd_stat --trace`` takes); ValueError naming a wrong one."""
    try:
        if not isinstance(word, str):
            raise ValueError(f"{str(word)[:20]!r}: not a word")
        return stat.trace_op(word)
    except ValueError as e:
        raise ValueError(f"trace {e}") from None


def trace_ask(vmid: str, req: dict) -> dict:
    """The trace request *req* ({"word": ...}) done by this host's pvm_shmd."""
    args = request_of(req.get("word"))
    return control.request("trace", vmid, timeout=DUMP_TIMEOUT if "dump" in args else SET_TIMEOUT,
                           **args)

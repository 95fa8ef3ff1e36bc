"""Where the view's samples come from: each host's daemon state, in parallel.

A host on this machine is asked on its daemon's control socket (``control.request``:
no process started, so sampling a few times a second costs next to nothing); any other
host through the console's link to it, as ``stat`` does (``pvm_shmd_stat --json`` over
the open SSH connection).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from pvmconsole.hostlink import STAT_TIMEOUT
from pvmconsole.runner import LocalRunner
from pvmconsole.view.model import Sample, sample
from pvmconsole.vm import VirtualMachine
from pvmconsole.vmtable import HostRecord
from shmd import control
from shmd.errors import PvmError

PARALLEL = 16  # hosts asked at once


def host_state(vm: VirtualMachine, h: HostRecord) -> tuple[str, dict | PvmError]:
    """(name, daemon state or the error) of host *h*. The state gets the host's clock
    offset under "clock_offset": the one kept in the VM table (clocks.py), else as
    measured by this request (see ``clock``)."""
    try:
        link = vm.link(h)
        local = isinstance(link.runner, LocalRunner)
        t0 = time.monotonic()
        st = (control.request("stat", vm.vmid or None, timeout=STAT_TIMEOUT) if local
              else link.stat())
        st["clock_offset"] = h.clock[:2] if len(h.clock) == 3 else clock(st, t0, time.monotonic(), local)
        return h.name, st
    except PvmError as e:
        return h.name, e


def clock(state: dict, t0: float, t1: float, local: bool) -> list[float]:
    """[offset, uncertainty] of a host's monotonic clock against ours (seconds): 0 for
    this machine (one clock); else its "clock" against the midpoint of our request
    sent at *t0* and answered at *t1*, good to half the round trip."""
    c = state.get("clock")
    if local or not isinstance(c, (int, float)):
        return [0.0, 0.0]
    return [c - (t0 + t1) / 2, (t1 - t0) / 2]


def poll(vm: VirtualMachine) -> Sample:
    """One round: every host's state."""
    hosts = vm.hosts()
    if len(hosts) <= 1:
        return sample([host_state(vm, h) for h in hosts])
    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(hosts))) as pool:
        return sample(list(pool.map(lambda h: host_state(vm, h), hosts)))

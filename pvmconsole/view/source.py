"""Where the view's samples come from: each host's daemon state, in parallel.

A host on this machine is asked on its daemon's control socket (``control.request``:
no process started, so sampling a few times a second costs next to nothing); any other
host through the console's link to it, as ``stat`` does (``pvm_shmd_stat --json`` over
the open SSH connection).
"""
from __future__ import annotations

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
    """(name, daemon state or the error) of host *h*."""
    try:
        link = vm.link(h)
        if isinstance(link.runner, LocalRunner):
            return h.name, control.request("stat", vm.vmid or None, timeout=STAT_TIMEOUT)
        return h.name, link.stat()
    except PvmError as e:
        return h.name, e


def poll(vm: VirtualMachine) -> Sample:
    """One round: every host's state."""
    hosts = vm.hosts()
    if len(hosts) <= 1:
        return sample([host_state(vm, h) for h in hosts])
    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(hosts))) as pool:
        return sample(list(pool.map(lambda h: host_state(vm, h), hosts)))

"""Each host's clock offset against the console's, measured over the control channel.

Trace events are stamped with each host's monotonic clock; to draw the events of
several hosts on one time axis the console needs each host's offset (its clock minus
ours). It is measured NTP's way over the console's open channel to the host's
pvm_netd (netlink.py, the ``clock`` request: shmd/traceask.py): *TRIES* round trips,
the shortest kept: offset = host clock - midpoint of our send and its answer, good to
half that round trip. A host on this machine shares our clock: offset 0, exactly.

It is measured when a host's pvm_netd starts (``at_start``, from vm.py) and kept in the
VM table (``HostRecord.clock``: [offset, uncertainty, when]), so every console of the VM
uses it; it is measured again when a trace is read (``current(refresh=True)``) and the
new value kept if it is as good or the old one is more than STALE seconds old (clocks
drift apart). A host without pvm_netd is measured on its stat request (older path).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import zmq

from pvmconsole.netlink import NetLink
from pvmconsole.runner import LocalRunner
from shmd.errors import PvmError

if TYPE_CHECKING:
    from pvmconsole.vm import VirtualMachine
    from pvmconsole.vmtable import HostRecord, VmTable

TRIES = 5  # round trips per measurement (the shortest one is kept)
STALE = 600.0  # seconds after which a kept offset is replaced even by a worse one
UNKNOWN = 1.0  # the uncertainty taken for a clock that could not be measured (seconds)


def measure(netd: NetLink, tries: int = TRIES) -> list[float] | None:
    """[offset, uncertainty, when (wall clock)] of the host behind *netd*: the best of
    *tries* round trips; None if it does not answer."""
    best: list[float] | None = None
    for _ in range(tries):
        t0 = time.monotonic()
        try:
            c = netd.ask("clock")
        except PvmError:
            break
        t1 = time.monotonic()
        if not isinstance(c, (int, float)):
            break
        if best is None or (t1 - t0) / 2 < best[1]:
            best = [c - (t0 + t1) / 2, (t1 - t0) / 2, time.time()]
    return best


def at_start(t: VmTable, rec: HostRecord, local: bool) -> list[float]:
    """The clock of host *rec* whose pvm_netd has just started ([] if it did not answer)."""
    if local:
        return [0.0, 0.0, time.time()]
    try:
        link = NetLink(str(rec.net[0]), int(rec.net[1]), t.netkeys, t.nettrusted)
        try:
            return measure(link) or []
        finally:
            link.close()
    except (zmq.ZMQError, ValueError, TypeError, IndexError):
        return []  # (not measured now: measured when first needed, clocks.current)


def _by_stat(vm: VirtualMachine, h: HostRecord) -> list[float] | None:
    """The older way, for a host without pvm_netd: its daemon's "clock" in its state."""
    best = None
    for _ in range(3):
        t0 = time.monotonic()
        try:
            c = vm.link(h).stat().get("clock")
        except PvmError:
            return best
        t1 = time.monotonic()
        if isinstance(c, (int, float)) and (best is None or (t1 - t0) / 2 < best[1]):
            best = [c - (t0 + t1) / 2, (t1 - t0) / 2, time.time()]
    return best


def better(new: list[float] | None, kept: list, now: float) -> bool:
    """Is *new* to replace *kept*: none kept, as good or better, or kept is stale."""
    if not new:
        return False
    return len(kept) != 3 or new[1] <= kept[1] or now - kept[2] > STALE


def current(vm: VirtualMachine, refresh: bool = False) -> dict[str, list[float]]:
    """Each host's [offset, uncertainty, when]: the kept one, measured now (and kept)
    when there is none, it is stale, or *refresh* finds a better one. A host that
    cannot be measured is left out."""
    out: dict[str, list[float]] = {}
    new: dict[str, tuple[list, list[float]]] = {}  # name -> (its pvm_netd, the new clock)
    now = time.time()
    for h in vm.hosts():
        link = vm.link(h)
        kept = list(h.clock) if len(h.clock) == 3 else []
        if isinstance(link.runner, LocalRunner):
            out[h.name] = kept or [0.0, 0.0, now]
            if not kept:
                new[h.name] = (h.net, out[h.name])
            continue
        if refresh or not kept or now - kept[2] > STALE:
            got = measure(link.netd) if link.netd is not None else _by_stat(vm, h)
            if better(got, kept, now):
                assert got is not None
                kept = got
                new[h.name] = (h.net, got)
        if kept:
            out[h.name] = kept
    if new:
        with vm.changing() as t:
            for h in t.hosts:
                if h.name in new and new[h.name][0] == h.net:  # (not a host added again since)
                    h.clock = new[h.name][1]
    return out


def words(name: str, c: list[float]) -> str:
    """How a host's clock is shown: ``name +12 us (+-40)``; ``name +0 us`` for ours
    (one clock); ``name unknown`` when it could not be measured."""
    if not c:
        return f"{name} unknown"
    return f"{name} {c[0] * 1e6:+.0f} us" + (f" (+-{c[1] * 1e6:.0f})" if c[1] else "")

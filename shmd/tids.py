"""PVM 3.4's task identifiers, in one place.

A tid is ``host index << 18 | local part``: bits 18-29 hold the host index (1 to
4095, ``TIDHOST``), bits 0-17 the local part (``TIDLOCAL``, handed out by that host's
pvm_shmd). A host's daemon is its dtid (local part 0): host 1's is t40000, its tasks
t40001, t40002, ... Tids are written in hex, ``t`` first (``fmt``); ``parse`` reads
that and bare hex (what pvm_spawn and the console exchange).
"""
from __future__ import annotations

from .errors import PvmBadParam, PvmError

HOST_SHIFT = 18  # dtid = host index << 18, as PVM
TIDLOCAL = (1 << HOST_SHIFT) - 1  # 0x3FFFF: the local part
MAX_HOSTS = 0xFFF  # 12 bits of host index
TIDHOST = MAX_HOSTS << HOST_SHIFT  # 0x3FFC0000: the host index's bits
MAX_TID = TIDHOST | TIDLOCAL  # 0x3FFFFFFF: the largest tid PVM's syntax allows


def dtid(host: int) -> int:
    """The tid of host *host*'s daemon (local part 0)."""
    return host << HOST_SHIFT


def host_of(tid: int) -> int:
    """The host index of *tid*."""
    return (tid & TIDHOST) >> HOST_SHIFT


def local_of(tid: int) -> int:
    """The local part of *tid*."""
    return tid & TIDLOCAL


def next_local(local: int) -> int:
    """The local part after *local* (any int >= 0), wrapping round: 1 to TIDLOCAL."""
    return local % TIDLOCAL + 1


CONSOLE_TID = dtid(1) + 1  # PVM's console was the first task on the master: t40001
NETD_LOCAL = TIDLOCAL  # the local part of a host's pvm_netd (t7ffff on host 1): never a task's


MASTER = 1  # the master host's index (the console's host; the VM's group server runs there)
GS_LOCAL = TIDLOCAL - 1  # the local part of a host's pvmgs (t7fffe on host 1): never a task's
GS_TID = dtid(MASTER) | GS_LOCAL  # the VM's group server: one tid every host reaches
RESERVED = {"net": NETD_LOCAL, "gs": GS_LOCAL}  # join role -> the local part kept for it


def is_netd(tid: int) -> bool:
    """True for the VM's own processes, which are not tasks the user sees (ps and the view
    leave them out, as PVM's ps left out its pvmds): a host's pvm_netd (PVM's pvmd role),
    and the group server (or another host's pvmgs watching its members), which pvm_shmd of
    the master starts by itself once the VM spans hosts."""
    return local_of(tid) in (NETD_LOCAL, GS_LOCAL)


def fmt(tid: int) -> str:
    """PVM's way to write a tid: ``t40001``."""
    return f"t{tid:x}"


def parse(word: str) -> int:
    """A tid in PVM's syntax (optional ``t``, then hex digits), 1 to MAX_TID;
    PvmError(PvmBadParam) otherwise."""
    w = word[1:] if word[:1] in ("t", "T") else word
    try:
        tid = int(w, 16)
    except ValueError:
        raise PvmError(PvmBadParam, f"bad tid {word!r}") from None
    if not 0 < tid <= MAX_TID:
        raise PvmError(PvmBadParam, f"bad tid {word!r}")
    return tid

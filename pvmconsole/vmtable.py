"""The virtual machine's host table and where it lives between consoles.

The table is JSON in ``pvmd.<uid>[.<vmid>]`` (PVM's file name for the master's socket
address: its existence means "a virtual machine is running") in the user's private
state directory ``$PVM_TMP/pvm.<uid>/`` (shmd/private.py): the table says which
programs the console runs, so it is read only from a file of ours that no one else
could have written or linked. Every change is made under an flock on a sibling
``.lock`` file and written with write-to-temp + rename, so two consoles at once never
see a torn file.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from shmd import private
from shmd.errors import PvmError, PvmOutOfRes, PvmSysErr
from shmd.paths import tmpfile
from shmd.tids import MAX_HOSTS, dtid

FORMAT = 1  # bump when the JSON layout changes incompatibly
LOCK_TIMEOUT = 60.0  # another console may be starting hosts under the lock

@dataclass
class HostRecord:
    """One host of the virtual machine."""

    name: str
    index: int
    arch: str
    speed: int
    dsig: int
    pid: int
    state: str = "running"  # running | failed (its daemon did not answer)
    options: dict[str, str] = field(default_factory=dict)
    net: list = field(default_factory=list)  # [address, port] of its pvm_netd; [] if none
    #: [offset, uncertainty, when] of its monotonic clock against the console's, measured
    #: over the channel to its pvm_netd when that started (pvmconsole/view/clocks.py)
    clock: list = field(default_factory=list)

    @property
    def dtid(self) -> int:
        return dtid(self.index)


@dataclass
class VmTable:
    """The hosts, plus the hostfile's remembered ``&`` entries and ``*`` defaults
    (they fill in later `add`s)."""

    vmid: str
    hosts: list[HostRecord] = field(default_factory=list)
    known: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> options
    defaults: dict[str, str] = field(default_factory=dict)
    hostfile: str = ""
    created: float = field(default_factory=time.time)
    #: the VM's CURVE key pair (Z85 public, secret) every pvm_netd of it holds; the table
    #: is a private file (0600 in the private directory), as the keys must be
    netkeys: list[str] = field(default_factory=list)
    #: $PVM_NET_TRUSTED=1 when the VM was made: its hosts' pvm_netd authenticate with the
    #: VM's secret (ZeroMQ PLAIN) and do not encrypt (a private network the user trusts)
    nettrusted: bool = False

    def host(self, name: str) -> HostRecord | None:
        return next((h for h in self.hosts if h.name == name), None)


    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VmTable:
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError("not a pvm-shmd host table (or another format version)")
        d.pop("format")
        d["hosts"] = [HostRecord(**h) for h in d.get("hosts", [])]
        return cls(**d)


def lowest_free_index(used: set[int]) -> int:
    """The lowest host index not in *used* (PVM reuses freed slots)."""
    for i in range(1, MAX_HOSTS + 1):
        if i not in used:
            return i
    raise PvmError(PvmOutOfRes, f"all {MAX_HOSTS} host indices in use")


def table_path(vmid: str) -> str:
    return tmpfile("pvmd", vmid)


class TableStore:
    """Load/save/remove the table of one VM id, under its lock."""

    def __init__(self, vmid: str):
        self.vmid = vmid
        self.path = table_path(vmid)
        self.lock_path = self.path + ".lock"

    @contextmanager
    def locked(self, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        """Hold the VM's lock (waiting at most *timeout* seconds for it)."""
        fd = private.open_file(self.lock_path, os.O_RDWR | os.O_CREAT)
        try:
            if not private.flock_within(fd, timeout):
                raise PvmError(PvmSysErr, f"{self.lock_path} stays locked by another console")
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def load(self) -> VmTable | None:
        """The stored table, None if there is none. A file that is not a table
        is an error (it is someone else's: we must not overwrite it blindly)."""
        text = private.read_text(self.path)  # UnsafeState: not a private file of ours
        if text is None:
            return None
        try:
            return VmTable.from_json(text)
        except (ValueError, TypeError, RecursionError) as e:
            raise PvmError(PvmSysErr, f"{self.path} is not a virtual machine table ({e})") from None

    def save(self, table: VmTable) -> None:
        # atomic: readers see the old or the new table
        private.write_atomic(self.path, table.to_json().encode())

    def remove(self) -> None:
        for p in (self.path, self.lock_path):
            private.unlink(p)

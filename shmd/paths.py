"""Where a virtual machine's files live and which SysV key its segment 0 has.

Everything is derived from the user and the VM id, as PVM did: an alien process
that knows only those two can find the daemon. The files keep PVM's names
(``pvmd.<uid>``, ``pvml.<uid>``, ...) inside the user's private state directory
``$PVM_TMP/pvm.<uid>/`` (see private.py), never loose in a shared directory.
"""
from __future__ import annotations

import os
import re
import zlib

from . import private

_VMID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")

#: High nibble of every segment-0 key this project uses (ipcfree finds them by it).
KEY_PREFIX = 0x5
KEY_PREFIX_MASK = 0xF0000000


def check_vmid(vmid: str) -> str:
    """Return *vmid* if it is usable in file names and keys, else raise ValueError."""
    if vmid and not _VMID_RE.match(vmid):
        raise ValueError(f"bad VM id {vmid!r}: use 1-32 of A-Z a-z 0-9 _ . -")
    return vmid


def current_vmid(vmid: str | None = None) -> str:
    """The VM id to use: the explicit one, else ``$PVM_VMID``, else none ('')."""
    return check_vmid(os.environ.get("PVM_VMID", "") if vmid is None else vmid)


def pvm_tmp() -> str:
    """``$PVM_TMP``, default /tmp: where the private state directory is made."""
    return private.base()


def suffix(vmid: str, uid: int | None = None) -> str:
    """PVM's file-name suffix: ``.<uid>`` then ``.<vmid>`` when a VM id is set."""
    uid = os.getuid() if uid is None else uid
    return f".{uid}.{vmid}" if vmid else f".{uid}"


def tmpfile(stem: str, vmid: str) -> str:
    """``$PVM_TMP/pvm.<uid>/<stem>.<uid>[.<vmid>]``; the directory is checked (and made)
    first: private.UnsafeState if it is not safely ours."""
    return os.path.join(private.directory(), stem + suffix(vmid))


_checked: dict[tuple[str, str, str], str] = {}  # (stem, vmid, $PVM_TMP) -> path


def tmpfile_once(stem: str, vmid: str) -> str:
    """tmpfile, its directory checked once per process, stem, VM and ``$PVM_TMP``: for
    paths used again and again (a route file at every message to another host, a spawn
    registry at every spawn); the walk up the ancestors cost 50-100 us each time. What
    was checked stays safe: no other user can rename entries in any of them. The file
    itself is still checked at each open (private.open_file)."""
    key = (stem, vmid, private.base())
    path = _checked.get(key)
    if path is None:
        path = _checked[key] = tmpfile(stem, vmid)
    return path


LOG_STEM = "pvml"  # the host's log: $PVM_TMP/pvm.<uid>/pvml.<uid>[.<vmid>]


def log_path(vmid: str) -> str:
    return tmpfile(LOG_STEM, vmid)


def daemon_files(vmid: str) -> dict[str, str]:
    """The daemon's own files: lock (pid, flock'ed), control socket, IPC registry."""
    base = tmpfile("pvm_shmd", vmid)
    return {"lock": base + ".pid", "sock": base + ".sock", "ipc": base + ".ipc"}


def seg0_key(vmid: str, uid: int | None = None) -> int:
    """The SysV key of segment 0 for (user, VM id).

    Layout: 4-bit project prefix, 16 bits of uid, 12 bits of VM id. Users with
    uid < 65536 never share a key; two VM ids of one user share one with chance
    1/4095, and then the segment's header (which records uid and VM id) makes
    the second daemon refuse with a clear error instead of attaching.
    """
    uid = os.getuid() if uid is None else uid
    if uid >= 1 << 16:
        uid = zlib.crc32(str(uid).encode()) & 0xFFFF
    vm = (zlib.crc32(vmid.encode()) % 0xFFF) + 1 if vmid else 0
    return (KEY_PREFIX << 28) | (uid << 12) | vm

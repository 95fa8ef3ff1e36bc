"""Every SysV object a daemon creates, created exclusively with mode 0600 at a key of its
own and remembered (in memory and in the registry file ``pvm_shmd.<uid>[.<vmid>].ipc`` of
the private state directory) so that an orderly exit removes all of them and the next
start can reclaim what a SIGKILL left.

An object's identity is (kind, id, key): no object of ours has key 0 (IPC_PRIVATE), which
every private object of every program shares, so a recorded (id, key) names one object of
ours and nothing else. An object is removed only when that identity still holds and the
kernel says this user created and owns it (ipc.row_owned).
"""
from __future__ import annotations

import errno
import json
import os
import random

import sysv_ipc

from . import ipc, layout, private
from .paths import KEY_PREFIX, KEY_PREFIX_MASK

MODE = 0o600
_KEY_TRIES = 64
COMPACT_SLACK = 64  # lines of removed objects the registry may hold past twice the live ones


class OutOfResources(Exception):
    """The kernel refused what the daemon needs (the message says what)."""


def random_key() -> int:
    """A key for a segment that is not segment 0: never 0 (IPC_PRIVATE), never in the
    segment-0 key range (ipcfree looks there), positive as an int32."""
    while True:
        key = random.randrange(1, 1 << 31)
        if key & KEY_PREFIX_MASK != KEY_PREFIX << 28:
            return key


class Resources:
    """The daemon's objects, in memory and in its registry file: a line per change
    (``[kind, id, key]`` made, ``["-", kind, id]`` removed), appended; rewritten whole,
    through a rename, only at the first write and when removed ones make up most of it.
    A rename over the file cost 1.3 ms here (ext4 starts writing out a file renamed over
    another: auto_da_alloc), and each task's semaphores made and removed (two a task
    then) were four of them: most of a join's cost. Not synced: SysV objects do not outlive the machine, and what a
    killed daemon wrote is in the page cache for the next start."""

    def __init__(self, registry_path: str):
        self.path = registry_path
        self.objects: dict[tuple[str, int], int] = {}  # (kind, id) -> key
        self.saved = False  # only a registry we wrote is ours to delete
        self._fd = -1  # the registry, open to append
        self._lines = 0  # lines in it

    def _rewrite(self) -> None:
        """The registry anew: a line per object we hold."""
        data = "".join(json.dumps([k, i, key]) + "\n" for (k, i), key in self.objects.items())
        private.write_atomic(self.path, data.encode(), sync=False)
        self.saved = True
        self._close()
        self._fd = private.open_file(self.path, os.O_WRONLY | os.O_APPEND)
        self._lines = len(self.objects)

    def _log(self, entry: list) -> None:
        """Record one change (self.objects already has it)."""
        if self._fd < 0 or self._lines > 2 * len(self.objects) + COMPACT_SLACK:
            self._rewrite()
            return
        os.write(self._fd, (json.dumps(entry) + "\n").encode())
        self._lines += 1

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _add(self, kind: str, iid: int, key: int) -> None:
        self.objects[(kind, iid)] = key
        self._log([kind, iid, key])

    def segment(self, key: int | None, size: int) -> sysv_ipc.SharedMemory:
        """A new zero-filled segment at *key* (None: a random key of its own), attached."""
        for _ in range(_KEY_TRIES if key is None else 1):
            k = random_key() if key is None else key
            try:
                iid = ipc.create_segment(k, size)
                break
            except OSError as e:
                if key is not None or e.errno != errno.EEXIST:
                    raise
        else:
            raise OutOfResources(f"no free segment key after {_KEY_TRIES} tries")
        self._add("shm", iid, k)
        return sysv_ipc.attach(iid)

    def semaphore(self, initial: int) -> sysv_ipc.Semaphore:
        sem = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, mode=MODE, initial_value=initial)
        self._add("sem", sem.id, sem.key)
        return sem

    def drop(self, kind: str, iid: int) -> None:
        """Remove one object of ours and forget it."""
        if (kind, iid) in self.objects:
            ipc.remove(kind, iid)
            del self.objects[(kind, iid)]
            self._log(["-", kind, iid])

    def remove_all(self) -> None:
        for kind, iid in list(self.objects):
            try:
                ipc.remove(kind, iid)
            except OSError:
                pass
        self.objects.clear()
        self._close()
        if self.saved:
            private.unlink(self.path)


def _registry(path: str) -> dict[tuple[str, int], int]:
    """The (kind, id) -> key entries of a registry file; damaged entries are skipped."""
    try:
        text = private.read_text(path)
    except (OSError, private.UnsafeState):
        return {}
    wanted: dict[tuple[str, int], int] = {}
    try:
        whole = json.loads(text or "[]")
    except (ValueError, RecursionError):
        whole = None
    # (a list of rows: the file as daemons before the line-per-change one wrote it)
    rows = whole if isinstance(whole, list) and all(isinstance(r, list) for r in whole) else None
    for line in rows if rows is not None else (text or "").splitlines():
        try:
            row = json.loads(line) if isinstance(line, str) else line
        except (ValueError, RecursionError):
            continue
        if not isinstance(row, list) or len(row) != 3:
            continue
        if row[0] == "-" and row[1] in ("shm", "sem") and type(row[2]) is int:
            wanted.pop((row[1], row[2]), None)
        elif row[0] in ("shm", "sem") and all(type(v) is int for v in row[1:]) and row[2]:
            wanted[(row[0], row[1])] = row[2]
    return wanted


def leftovers(registry_path: str, seg0: memoryview | None) -> set[tuple[str, int]]:
    """Objects a dead daemon of this VM left: those its registry names and those its
    segment 0 records (*seg0*, checked ours by the caller), kept only if each still
    exists with the key recorded for it and the kernel says we made and own it."""
    wanted = _registry(registry_path)
    if seg0 is not None:
        h = layout.header(seg0)
        for s in range(min(h["nsegs"], layout.MAXSEG)):
            e = layout.segent(seg0, s)
            wanted.setdefault(("shm", e["shmid"]), e["key"])
            wanted.setdefault(("sem", e["semid"]), e["semkey"])
        for i in range(layout.MAX_TASKS):
            t = layout.slot(seg0, i)
            if t["tid"]:
                wanted.setdefault(("sem", t["wake_id"]), t["wake_key"])
    found = set()
    for kind in ("shm", "sem"):
        for row in ipc.proc_table(kind):
            ident = (kind, row[ipc.ID_COLUMN[kind]])
            key = wanted.get(ident)
            if key and key & 0xFFFFFFFF == row["key"] & 0xFFFFFFFF and ipc.row_owned(row):
                found.add(ident)
    return found

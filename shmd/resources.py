"""Every SysV object a daemon creates, created exclusively with mode 0600 and remembered
(in memory and in the registry file ``pvm_shmd.<uid>[.<vmid>].ipc``) so that an orderly
exit removes all of them and the next start can reclaim what a SIGKILL left."""
from __future__ import annotations

import json
import os

import sysv_ipc

from . import ipc, layout

MODE = 0o600


class OutOfResources(Exception):
    """The kernel refused what the daemon needs (the message says what)."""


class Resources:
    def __init__(self, registry_path: str):
        self.path = registry_path
        self.objects: dict[tuple[str, int], int] = {}  # (kind, id) -> key
        self.saved = False  # only a registry we wrote is ours to delete

    def _save(self) -> None:
        tmp = self.path + ".new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, MODE)
        with os.fdopen(fd, "w") as f:
            json.dump([[k, i, key] for (k, i), key in self.objects.items()], f)
        os.replace(tmp, self.path)
        self.saved = True

    def _add(self, kind: str, iid: int, key: int) -> None:
        self.objects[(kind, iid)] = key
        self._save()

    def segment(self, key: int, size: int) -> sysv_ipc.SharedMemory:
        """A new zero-filled segment at *key* (0: IPC_PRIVATE), attached."""
        iid = ipc.create_segment(key, size)
        self._add("shm", iid, key)
        return sysv_ipc.attach(iid)

    def semaphore(self, initial: int) -> sysv_ipc.Semaphore:
        sem = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, mode=MODE, initial_value=initial)
        self._add("sem", sem.id, sem.key)
        return sem

    def drop(self, kind: str, iid: int) -> None:
        """Remove one object and forget it."""
        ipc.remove(kind, iid)
        self.objects.pop((kind, iid), None)
        self._save()

    def remove_all(self) -> None:
        for kind, iid in list(self.objects):
            try:
                ipc.remove(kind, iid)
            except OSError:
                pass
        self.objects.clear()
        if self.saved:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def leftovers(registry_path: str, seg0: memoryview | None) -> set[tuple[str, int]]:
    """Objects a dead daemon of this VM left: those its registry names and those its
    segment 0 records, kept only if they still exist, owned by this uid with the same key."""
    wanted: dict[tuple[str, int], int | None] = {}
    try:
        with open(registry_path) as f:
            for kind, iid, key in json.load(f):
                wanted[(kind, iid)] = key
    except (OSError, ValueError, TypeError):
        pass
    if seg0 is not None:
        h = layout.header(seg0)
        for s in range(min(h["nsegs"], layout.MAXSEG)):
            e = layout.segent(seg0, s)
            wanted.setdefault(("shm", e["shmid"]), e["key"])
            wanted.setdefault(("sem", e["semid"]), e["semkey"])
        for i in range(layout.MAX_TASKS):
            t = layout.slot(seg0, i)
            if t["tid"]:
                wanted.setdefault(("sem", t["lock_id"]), t["lock_key"])
                wanted.setdefault(("sem", t["wake_id"]), t["wake_key"])
    uid = os.getuid()
    found = set()
    for kind in ("shm", "sem"):
        for row in ipc.proc_table(kind):
            ident = (kind, row[ipc.ID_COLUMN[kind]])
            if ident in wanted and row["uid"] == uid and wanted[ident] in (None, row["key"]):
                found.add(ident)
    return found

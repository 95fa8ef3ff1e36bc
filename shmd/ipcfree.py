"""ipcfree: remove the SysV objects a SIGKILLed pvm_shmd left behind.

By default only this project's objects of the calling user: every segment 0 at a
pvm-shmd key (found in /proc/sysvipc/shm) and what it and the daemon's registry
file name. ``--all`` removes every SysV object the user owns (PVM's ipcfree).
``-n`` lists without removing. The resources of a live daemon are refused unless
``--force``.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

import sysv_ipc

from . import ipc, layout, paths
from .resources import leftovers

FLAG = {"shm": "-m", "sem": "-s", "msg": "-q"}


def project_objects(force: bool) -> tuple[set[tuple[str, int]], list[str]]:
    """(objects to remove, refusals) for this user's pvm-shmd virtual machines."""
    uid, found, refused = os.getuid(), set(), []
    seen_registries = set()
    for row in ipc.proc_table("shm"):
        key = row["key"] & 0xFFFFFFFF
        if row["uid"] != uid or key & paths.KEY_PREFIX_MASK != paths.KEY_PREFIX << 28:
            continue
        try:
            shm = sysv_ipc.attach(row["shmid"])
        except sysv_ipc.Error:
            continue
        buf = memoryview(shm)
        try:
            if bytes(buf[:8]) != layout.MAGIC:
                continue
            h = layout.header(buf)
            vmid, pid = h["vmid"], h["pid"]
            if ipc.alive(pid, h["start_ticks"]) and not force:
                refused.append(f"pvm_shmd pid {pid} (VM id {vmid or '-'}) is alive: stop it "
                               "with pvm_shmd_stat --stop, or use --force")
                continue
            reg = paths.daemon_files(vmid)["ipc"]
            seen_registries.add(reg)
            found |= leftovers(reg, buf) | {("shm", row["shmid"])}
        finally:
            buf.release()
            shm.detach()
    for reg in glob.glob(os.path.join(paths.pvm_tmp(), f"pvm_shmd.{uid}*.ipc")):
        if reg not in seen_registries:
            lockf = reg[:-4] + ".pid"
            if os.path.exists(lockf) and _locked(lockf) and not force:
                refused.append(f"{lockf} is held by a live pvm_shmd; use --force")
                continue
            found |= leftovers(reg, None)
    return found, refused


def _locked(path: str) -> bool:
    import fcntl

    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def all_objects() -> set[tuple[str, int]]:
    uid = os.getuid()
    return {(k, r[ipc.ID_COLUMN[k]]) for k in ("shm", "sem", "msg")
            for r in ipc.proc_table(k) if r["uid"] == uid}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ipcfree", description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="every SysV object you own")
    ap.add_argument("-n", "--dry-run", action="store_true", help="list, do not remove")
    ap.add_argument("-f", "--force", action="store_true", help="also a live daemon's objects")
    a = ap.parse_args(argv)
    refused: list[str] = []
    if a.all:
        objs = all_objects()
    else:
        objs, refused = project_objects(a.force)
    for r in refused:
        print(f"ipcfree: refusing: {r}", file=sys.stderr)
    if not objs:
        print("didn't find anything")
        return 1 if refused else 0
    words = " ".join(f"{FLAG[k]} {i}" for k, i in sorted(objs))
    if a.dry_run:
        print(f"would delete {words}")
        return 1 if refused else 0
    print(f"deleting {words}")
    for kind, iid in sorted(objs):
        try:
            ipc.remove(kind, iid)
        except OSError as e:
            print(f"ipcfree: {e}", file=sys.stderr)
    for reg in glob.glob(os.path.join(paths.pvm_tmp(), f"pvm_shmd.{os.getuid()}*.ipc")):
        lockf = reg[:-4] + ".pid"
        if not (os.path.exists(lockf) and _locked(lockf)):
            os.unlink(reg)
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())

"""ipcfree: remove the SysV objects a SIGKILLed pvm_shmd left behind.

By default only this project's objects of the calling user: every segment 0 at a
pvm-shmd key (found in /proc/sysvipc/shm) and what it and the daemon's registry
file name. ``--all`` removes every SysV object the user owns (PVM's ipcfree).
``-n`` lists without removing. ``--vmid ID`` limits it to one virtual machine.
The resources of a live daemon are refused (also with ``--all``) unless ``--force``.

Exit status: 0 done (or nothing found), 1 something was refused or could not be
removed, 2 usage.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

import sysv_ipc

from . import ipc, layout, paths, private
from .resources import leftovers

FLAG = {"shm": "-m", "sem": "-s", "msg": "-q"}


def project_objects(force: bool, vmid: str | None = None
                    ) -> tuple[set[tuple[str, int]], list[str], set[tuple[str, int]]]:
    """(objects to remove, refusals, a live daemon's objects) for this user's pvm-shmd
    virtual machines (only VM id *vmid* if given). Only objects this user created and
    owns (mode 0600) are considered, and only those a segment 0 of ours or a registry in
    our private directory names, with the key recorded for them."""
    uid, found, refused, live = os.getuid(), set(), [], set()
    seen_registries = set()
    for row in ipc.proc_table("shm"):
        key = row["key"] & 0xFFFFFFFF
        if key & paths.KEY_PREFIX_MASK != paths.KEY_PREFIX << 28 or not ipc.row_owned(row):
            continue
        try:
            shm = ipc.attach_owned(row["shmid"], "segment 0")
        except (sysv_ipc.Error, ipc.NotOurs):
            continue
        buf = memoryview(shm)
        try:
            if bytes(buf[:8]) != layout.MAGIC:
                continue  # unfinished or scribbled: its registry (below) names it if ours
            h = layout.header(buf)
            vm = h["vmid"]
            try:
                paths.check_vmid(vm)
            except ValueError:
                continue
            if h["uid"] != uid or (vmid is not None and vm != vmid):
                continue
            reg = paths.daemon_files(vm)["ipc"]
            seen_registries.add(reg)
            try:
                layout.check_geometry(buf)
                objs = leftovers(reg, buf) | {("shm", row["shmid"])}
            except layout.LayoutError:
                objs = leftovers(reg, None)  # damaged: only what the registry records
            if (ipc.alive(h["pid"], h["start_ticks"]) or _locked(reg[:-4] + ".pid")) \
                    and not force:
                refused.append(f"pvm_shmd pid {h['pid']} (VM id {vm or '-'}) is alive: stop it with "
                               "pvm_shmd_stat --stop, or use --force")
                live |= objs
                continue
            found |= objs
        finally:
            buf.release()
            shm.detach()
    regs = ([paths.daemon_files(vmid)["ipc"]] if vmid is not None else
            glob.glob(os.path.join(private.directory(), f"pvm_shmd.{uid}.*.ipc"))
            + glob.glob(os.path.join(private.directory(), f"pvm_shmd.{uid}.ipc")))
    for reg in regs:
        if reg not in seen_registries and os.path.lexists(reg):
            lockf = reg[:-4] + ".pid"
            if _locked(lockf) and not force:
                refused.append(f"{lockf} is held by a live pvm_shmd: stop it with "
                               "pvm_shmd_stat --stop, or use --force")
                live |= leftovers(reg, None)
                continue
            found |= leftovers(reg, None)
    return found, refused, live


def _locked(path: str) -> bool:
    """Does a live process hold the flock of our lock file *path*?"""
    return private.held(path) is not None


def all_objects() -> set[tuple[str, int]]:
    uid = os.getuid()
    return {(k, r[ipc.ID_COLUMN[k]]) for k in ("shm", "sem", "msg")
            for r in ipc.proc_table(k) if r["uid"] == uid}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ipcfree", description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="every SysV object you own")
    ap.add_argument("-n", "--dry-run", action="store_true", help="list, do not remove")
    ap.add_argument("-f", "--force", action="store_true", help="also a live daemon's objects")
    ap.add_argument("-vmid", "--vmid", default=None,
                    help="only this VM id's objects (default: every VM id of yours)")
    a = ap.parse_args(argv)
    if a.vmid is not None:
        try:
            paths.check_vmid(a.vmid)
        except ValueError as e:
            ap.error(str(e))
        if a.all:
            ap.error("--all and --vmid exclude each other")
    try:
        objs, refused, live = project_objects(a.force, a.vmid)
    except private.UnsafeState as e:
        print(f"ipcfree: {e}", file=sys.stderr)
        return 1
    if a.all:
        objs = all_objects() - live
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
    failed = False
    for kind, iid in sorted(objs):
        try:
            ipc.remove(kind, iid)
        except OSError as e:
            print(f"ipcfree: {e}", file=sys.stderr)
            failed = True
    # the files of a dead daemon: registry, stale lock (pid) file, socket
    pattern = (f"pvm_shmd.{os.getuid()}.{a.vmid}.pid" if a.vmid else
               f"pvm_shmd.{os.getuid()}.*.pid")
    lockfiles = glob.glob(os.path.join(private.directory(), pattern))
    if not a.vmid:
        lockfiles += glob.glob(os.path.join(private.directory(), f"pvm_shmd.{os.getuid()}.pid"))
    for lockf in lockfiles:
        if _locked(lockf):
            continue
        for f in (lockf[:-4] + ".ipc", lockf[:-4] + ".sock", lockf):
            private.unlink(f)
    return 1 if refused or failed else 0


if __name__ == "__main__":
    sys.exit(main())

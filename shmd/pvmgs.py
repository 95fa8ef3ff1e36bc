"""pvmgs: the group server, as PVM's: one task that holds the VM's dynamic groups.

Started by the first group call of any task (``start``; ``python -m shmd.pvmgs``), it
joins the daemon under the name ``pvmgs``, by which tasks find it in the task table,
and serves requests (JSON in a psend with tag REQ; the reply, tag REPLY, to the sender):

    join G -> inst            lowest free instance number (numbers are reused, as PVM's)
    leave G                   members {inst: tid} of G
    barrier G COUNT           replied once COUNT members (-1: all, as many as are left) have
                              come (COUNT may exceed the members so far: others may join)

Every SWEEP seconds it drops members whose task is gone (exited, killed, reaped by
the daemon) from their groups, and releases or fails the barriers they left: no
barrier waits for a dead task. It ends when its daemon stops (or on SIGTERM)."""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time

from . import layout, paths, private
from .errors import (
    PvmBadParam,
    PvmDupGroup,
    PvmError,
    PvmNoData,
    PvmNoGroup,
    PvmNoInst,
    PvmNotInGroup,
    PvmNullGroup,
)
from .task import Task, join

NAME = "pvmgs"
REQ, REPLY = 0x7FFFFFF0, 0x7FFFFFF1  # tags of the server's requests and replies
SWEEP = 0.1  # seconds between looks for dead members
START_TIMEOUT = 10.0


def server_tid(me: Task) -> int:
    """The tid of the group server joined to our daemon, 0 if none."""
    for s in range(layout.MAX_TASKS):
        t = layout.slot(me._buf, s)
        if t["tid"] and t["name"] == NAME:
            return t["tid"]
    return 0


def start(me: Task) -> int:
    """The group server's tid, starting one if there is none (under a lock: one only)."""
    tid = server_tid(me)
    if tid:
        return tid
    fd = private.open_file(paths.tmpfile("pvmgs", me.vmid), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        tid = server_tid(me)
        if tid:
            return tid
        env = dict(os.environ, PVM_VMID=me.vmid)
        env.pop("PVM_MYTID", None)  # its own task, not an adopted slot
        launcher = subprocess.Popen([sys.executable, "-m", "shmd.pvmgs", "--detach"], env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
        launcher.wait(START_TIMEOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not tid and time.monotonic() < deadline:
            time.sleep(0.01)
            tid = server_tid(me)
        if not tid:
            raise PvmError(PvmNoGroup, "the group server (pvmgs) did not start")
        return tid
    finally:
        os.close(fd)


class Groups:
    """The groups and the barriers in progress."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[int, int]] = {}  # name -> inst -> tid
        self.barriers: dict[str, tuple[int, list[int]]] = {}  # name -> (count, tids waiting)

    def members(self, g: str) -> dict[int, int]:
        m = self.groups.get(g)
        if m is None:
            raise PvmError(PvmNoGroup, f"no group {g!r}")
        return m

    def join(self, g: str, tid: int) -> int:
        m = self.groups.setdefault(g, {})
        if tid in m.values():
            raise PvmError(PvmDupGroup, f"t{tid:x} is already in {g!r}")
        inst = next(i for i in range(len(m) + 1) if i not in m)
        m[inst] = tid
        return inst

    def leave(self, g: str, tid: int) -> list[tuple[int, dict]]:
        m = self.members(g)
        inst = next((i for i, t in m.items() if t == tid), None)
        if inst is None:
            raise PvmError(PvmNotInGroup, f"t{tid:x} is not in {g!r}")
        del m[inst]
        if not m:
            del self.groups[g]
        return self.check_barrier(g, dropped=True)

    def barrier(self, g: str, tid: int, count: int) -> list[tuple[int, dict]]:
        m = self.members(g)
        if tid not in m.values():
            raise PvmError(PvmNotInGroup, f"t{tid:x} is not in {g!r}")
        if count != -1 and count < 1:
            raise PvmError(PvmBadParam, f"barrier count {count} for {len(m)} members of {g!r}")
        want, waiting = self.barriers.get(g, (count, []))
        if want != count:
            raise PvmError(PvmBadParam, f"barrier count {count} differs from {want} given by others")
        waiting.append(tid)
        self.barriers[g] = (count, waiting)
        return self.check_barrier(g)

    def check_barrier(self, g: str, dropped: bool = False) -> list[tuple[int, dict]]:
        """Replies due for *g*'s barrier: all released once enough came; or, when a
        member was just *dropped* (left or died), all failed if fewer members are left
        than the barrier wants (tasks yet to join could make up the count, but waiting
        for them might be for ever)."""
        if g not in self.barriers:
            return []
        count, waiting = self.barriers[g]
        m = self.groups.get(g, {})
        waiting = [t for t in waiting if t in m.values()]
        if not waiting:
            del self.barriers[g]
            return []
        if len(waiting) >= (len(m) if count == -1 else count):  # -1: all members, as they are now
            del self.barriers[g]
            return [(t, {"ok": True}) for t in waiting]
        if dropped and len(m) < count:
            del self.barriers[g]
            err = {"err": PvmNoInst, "detail": f"{g!r} has {len(m)} members left, the barrier wants {count}"}
            return [(t, err) for t in waiting]
        self.barriers[g] = (count, waiting)
        return []

    def forget(self, gone: set[int]) -> list[tuple[int, dict]]:
        """Drop the tasks in *gone* from every group: replies due to barriers."""
        out: list[tuple[int, dict]] = []
        for g in list(self.groups):
            m = self.groups[g]
            dead = [i for i, t in m.items() if t in gone]
            if not dead:
                continue
            for inst in dead:
                del m[inst]
            if not m:
                del self.groups[g]
            out += self.check_barrier(g, dropped=True)
        return out


def handle(groups: Groups, src: int, req: dict) -> list[tuple[int, dict]]:
    """The replies (to whom, what) to one request."""
    op, g = req.get("op"), req.get("group")
    if not isinstance(g, str) or not g:
        raise PvmError(PvmNullGroup, f"group name {g!r}")
    if op == "join":
        return [(src, {"inst": groups.join(g, src)})]
    if op == "leave":
        return [(src, {"ok": True})] + groups.leave(g, src)
    if op == "members":
        m = groups.groups.get(g, {})
        return [(src, {"members": {str(i): t for i, t in m.items()}})]
    if op == "barrier":
        count = req.get("count")
        if not isinstance(count, int):
            raise PvmError(PvmBadParam, f"barrier count {count!r}")
        return groups.barrier(g, src, count)
    raise PvmError(PvmBadParam, f"unknown group request {op!r}")


def serve(me: Task) -> None:
    from .pvmmsg import live_tids

    groups = Groups()
    next_sweep = time.monotonic() + SWEEP
    while True:
        replies: list[tuple[int, dict]] = []
        try:
            m = me.precv(-1, REQ, SWEEP)
        except PvmError as e:
            if e.code != PvmNoData:  # not a timeout: the daemon is gone
                return
            m = None
        if m is not None:
            try:
                req = json.loads(bytes(m.data))
                replies = handle(groups, m.src, req if isinstance(req, dict) else {})
            except PvmError as e:
                replies = [(m.src, {"err": e.code, "detail": e.detail or str(e)})]
            except ValueError:
                replies = [(m.src, {"err": PvmBadParam, "detail": "unreadable request"})]
        if time.monotonic() >= next_sweep:
            next_sweep = time.monotonic() + SWEEP
            members = {t for m_ in groups.groups.values() for t in m_.values()}
            gone = members - live_tids(me) if members else set()
            if gone:
                replies += groups.forget(gone)
        for tid, r in replies:
            try:
                me.psend(tid, REPLY, json.dumps(r).encode(), timeout=1.0)
            except PvmError:
                pass  # it died meanwhile: the sweep drops it


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--detach"]:  # the starter waits for this one; the server is not its child
        subprocess.Popen([sys.executable, "-m", "shmd.pvmgs"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        return 0
    try:
        me = join(name=NAME)
    except PvmError as e:
        print(f"pvmgs: {e}", file=sys.stderr)
        return 1
    try:
        if server_tid(me) != me.tid:
            return 0  # another one serves
        serve(me)
    except KeyboardInterrupt:
        pass
    finally:
        me.leave()
    return 0


if __name__ == "__main__":
    sys.exit(main())

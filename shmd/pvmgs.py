"""pvmgs: the group server, as PVM's: one task that holds the VM's dynamic groups.

One per virtual machine, on the master host, at the tid kept for it there
(``tids.GS_TID``, t7fffe): every task of every host sends it its requests (through
pvm_netd from another host), so a group spans hosts. pvm_shmd of the master starts it
once the VM spans hosts (``keep``); on a VM of one host the first group call starts it
(``start``). Either way ``python -m shmd.pvmgs``, to which pvm_shmd gives the kept tid
(join role "gs"); like pvm_netd it is not shown among the user's tasks (tids.is_netd).
Requests are JSON in a psend with tag REQ; the reply, tag REPLY, goes to the sender:

    ping                      {"ping": true} (a task of another host asks first, and again
                              while no answer comes: is it there yet?)
    join G -> inst            lowest free instance number (numbers are reused, as PVM's)
    leave G                   members {inst: tid} of G
    barrier G COUNT           replied once COUNT members (-1: all, as many as are left) have
                              come (COUNT may exceed the members so far: others may join)

On each other host that has members, a pvmgs of that host (its kept tid there, started
by the member's first group call) is the server's eyes: a member asks it to ``watch``
its tid, and it tells the server which watched tasks are ``gone`` (its host's task
table, every SWEEP seconds); the server believes such a report only from a host's
pvmgs and only about that host's tids. The server drops members whose task is gone
(exited, killed, reaped by the daemon; on the master host it reads the table itself;
on a host pvm_netd says is down, all of them) and releases or fails the barriers they
left: no barrier waits for a dead task. Each ends when its daemon stops (or on SIGTERM)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

from . import layout, paths, private, remote, tids
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
from .task import Task

NAME = "pvmgs"
REQ, REPLY = 0x7FFFFFF0, 0x7FFFFFF1  # tags of the server's requests and replies
SWEEP = 0.1  # seconds between looks for dead members
START_TIMEOUT = 10.0


def server_tid(me: Task) -> int:
    """The tid of this host's pvmgs (the VM's group server on the master host), 0 if none runs."""
    want = tids.dtid(tids.host_of(me.tid)) | tids.GS_LOCAL
    for s in range(layout.MAX_TASKS):
        if me._i[layout.slot_i(s) + layout.T_TID_I] & 0xFFFFFFFF == want:
            return want
    return 0


def start(me: Task) -> int:
    """The tid of this host's pvmgs, starting it if none runs (under a lock: one only)."""
    tid = server_tid(me)
    if tid:
        return tid
    fd = private.open_file(paths.tmpfile("pvmgs", me.vmid), os.O_RDWR | os.O_CREAT)
    try:
        # (its holder starts pvmgs within 2 START_TIMEOUTs or gives up)
        if not private.flock_within(fd, 2 * START_TIMEOUT + 1):
            raise PvmError(PvmNoGroup, "the group server (pvmgs) is being started by another task "
                                       f"that does not finish ({paths.tmpfile('pvmgs', me.vmid)} stays locked)")
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


KEEP_RETRY = 5.0  # keep: the least time between two starts (a server that cannot run is not retried in a loop)
_kept_at = -KEEP_RETRY


def keep(vmid: str, proc: subprocess.Popen | None, running: Callable[[], bool]) -> subprocess.Popen | None:
    """Called by pvm_shmd of the master host every tick: once the VM spans hosts (its
    pvm_netd's route file names another host), the VM's group server runs here, so that
    a task of any host finds it at tids.GS_TID (a task of another host cannot start a
    process on the master). Started again if it exits, at most every KEEP_RETRY seconds.
    *proc*: the one we started (reaped here); *running*: whether the kept tid is joined.
    Returns the process to pass next time."""
    global _kept_at
    if proc is not None and proc.poll() is None:
        return proc
    try:
        hosts = remote.route(vmid).get("hosts", {})
    except PvmError:
        return None  # no pvm_netd: one host, where the first group call starts it
    now = time.monotonic()
    if not any(h != str(tids.MASTER) for h in hosts) or now - _kept_at < KEEP_RETRY or running():
        return None
    _kept_at = now
    env = dict(os.environ, PVM_VMID=vmid)
    env.pop("PVM_MYTID", None)
    return subprocess.Popen([sys.executable, "-m", "shmd.pvmgs"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


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
    if op == "ping":
        return [(src, {"ping": True})]
    if op == "gone":  # a host's pvmgs: watched tasks of its host that are gone
        gone = req.get("tids")
        if tids.local_of(src) != tids.GS_LOCAL or not isinstance(gone, list):
            raise PvmError(PvmBadParam, "a gone report comes from a host's pvmgs, with a list of tids")
        return groups.forget({t for t in gone if isinstance(t, int) and tids.host_of(t) == tids.host_of(src)})
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


def down_hosts(me: Task) -> set[int]:
    """Hosts pvm_netd says are down (none without a pvm_netd: one host)."""
    try:
        up = remote.route(me.vmid).get("hosts", {})
    except PvmError:
        return set()
    return {int(h) for h, ok in up.items() if not ok and str(h).isdigit()}


def _gone(me: Task, watched: set[int]) -> set[int]:
    """Which of *watched* are gone: this host's by its task table, another host's when
    pvm_netd says that host is down (the rest its pvmgs reports)."""
    from .pvmmsg import live_tids

    if not watched:
        return set()
    here = tids.host_of(me.tid)
    live = live_tids(me)
    down = down_hosts(me) if any(tids.host_of(t) != here for t in watched) else set()
    return {t for t in watched if (tids.host_of(t) == here and t not in live) or tids.host_of(t) in down}


def _reply(me: Task, replies: list[tuple[int, dict]]) -> None:
    for tid, r in replies:
        try:
            me.psend(tid, REPLY, json.dumps(r).encode(), timeout=1.0)
        except PvmError:
            pass  # it died meanwhile: the sweep drops it


def _next(me: Task):
    """The next request; None after SWEEP seconds without one, False once the daemon is gone."""
    try:
        return me.precv(-1, REQ, SWEEP)
    except PvmError as e:
        return None if e.code == PvmNoData else False  # not a timeout: the daemon is gone


def serve(me: Task) -> None:
    """The VM's group server (on the master host)."""
    groups = Groups()
    next_sweep = time.monotonic() + SWEEP
    while True:
        replies: list[tuple[int, dict]] = []
        m = _next(me)
        if m is False:
            return
        if m is not None:
            try:
                req = remote.load_json(m.data)
                replies = handle(groups, m.src, req if isinstance(req, dict) else {})
            except PvmError as e:
                replies = [(m.src, {"err": e.code, "detail": e.detail or str(e)})]
            except ValueError:
                replies = [(m.src, {"err": PvmBadParam, "detail": "unreadable request"})]
        if time.monotonic() >= next_sweep:
            next_sweep = time.monotonic() + SWEEP
            gone = _gone(me, {t for m_ in groups.groups.values() for t in m_.values()})
            if gone:
                replies += groups.forget(gone)
        _reply(me, replies)


def watch(me: Task) -> None:
    """Another host's pvmgs: tells the server which of the tasks that asked to be
    watched (members of groups) are gone from this host's table."""
    watched: set[int] = set()
    here = tids.host_of(me.tid)
    next_sweep = time.monotonic() + SWEEP
    while True:
        m = _next(me)
        if m is False:
            return
        if m is not None:
            try:
                req = remote.load_json(m.data)
            except ValueError:
                req = None
            ok = isinstance(req, dict) and req.get("op") == "watch" and tids.host_of(m.src) == here
            if ok:
                watched.add(m.src)  # (a task asks for itself only: the src the daemon vouches for)
            _reply(me, [(m.src, {} if ok else {"err": PvmBadParam, "detail": "this host's pvmgs only watches"})])
        if time.monotonic() >= next_sweep:
            next_sweep = time.monotonic() + SWEEP
            gone = _gone(me, watched)
            if gone:
                try:
                    me.psend(tids.GS_TID, REQ, json.dumps({"op": "gone", "tids": sorted(gone)}).encode(),
                             timeout=1.0)
                    watched -= gone
                except PvmError:
                    pass  # the server's host is out of reach: told at the next sweep


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--detach"]:  # the starter waits for this one; the server is not its child
        subprocess.Popen([sys.executable, "-m", "shmd.pvmgs"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        return 0
    try:
        me = Task(name=NAME, spin=False, role="gs")
    except PvmError as e:
        print(f"pvmgs: {e}", file=sys.stderr)
        return 1
    try:
        if tids.local_of(me.tid) != tids.GS_LOCAL:
            return 0  # another one holds the tid kept for it
        (serve if tids.host_of(me.tid) == tids.MASTER else watch)(me)
    except KeyboardInterrupt:
        pass
    finally:
        me.leave()
    return 0


if __name__ == "__main__":
    sys.exit(main())

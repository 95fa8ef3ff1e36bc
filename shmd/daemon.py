"""pvm_shmd: the per-host shared-memory daemon.

It creates the segments, their page maps, semaphores and inbox locks, keeps the task table,
notices dead tasks and reclaims their pages, and answers joins and status requests
on a Unix socket. Tasks allocate and free pages themselves, under each segment's
semaphore, without asking it.

Signals: HUP clears the shared memory and every joined process (TERM, then KILL
after a grace period) and goes on fresh; TERM and INT remove every IPC object and
file and exit 0; USR1 reports the state to stdout (foreground) or the log.
Handlers only record the signal; the main loop acts.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import selectors
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import sysv_ipc

from . import calibrate, handshake, hostenv, ipc, layout, mutex, pagemap, paths, private, tids, trace, wake
from .clients import Client, Clients, error_reply
from .errors import PvmDenied, PvmExists, PvmOutOfRes
from .exits import DaemonExit
from .log import Log
from .options import USAGE, Options, UsageError, parse
from .resources import OutOfResources, Resources, leftovers

if TYPE_CHECKING:
    import subprocess

LOCK_TIMEOUT = 2.0  # longest the daemon waits for a page-map semaphore or an inbox lock
HUP_GRACE = 2.0  # seconds between TERM and KILL of a task on HUP
TICK = 0.2  # liveness-check period (seconds)
QUICK = 0.002  # re-check period for a task whose socket closed while it was still exiting
QUICK_FOR = 1.0  # ... for at most this long (then the TICK check takes over)
# While tracing, the task slots' trace rings are drained every drain_wait seconds: from
# TRACE_DRAIN, halved (down to TRACE_DRAIN_MIN) after a drain that found a ring over half
# full, doubled back after one that found every ring under an eighth full.
TRACE_DRAIN, TRACE_DRAIN_MIN = 0.01, 0.001
GONE_KEPT = 64  # tasks that left, kept (with their counters) for the console's view


class StartError(Exception):
    def __init__(self, status: int, msg: str):
        super().__init__(msg)
        self.status = status


class Daemon:
    def __init__(self, opts: Options, log: Log):
        self.o, self.log = opts, log
        self.files = paths.daemon_files(opts.vmid)
        self.res = Resources(self.files["ipc"])
        self.segs: list[sysv_ipc.SharedMemory] = []
        # segments whose pages are not populated yet: one per turn of the loop once we
        # are ready (8 segments of 16 MiB took 45 ms, the larger part of a start's CPU)
        self.unpopulated: list[sysv_ipc.SharedMemory] = []
        self.seg_locks: list[ipc.Lock] = []
        # segment 0 (bytes, int32 and int64 views), mapped by create()
        self.buf = self.m32 = self.m64 = memoryview(b"")
        self.mapped = False
        self.lock_fd = -1
        self.listener: socket.socket | None = None
        self.suspects: dict[int, tuple[int, float]] = {}  # slot -> (tid, re-check until)
        self.signals: list[int] = []
        self.sel = selectors.DefaultSelector()
        self.clients = Clients(self.sel, log, self.dispatch, self.client_gone,
                               allowed_uids=(os.getuid(), 0))
        self.dtid = tids.dtid(opts.host)
        self.running = True
        self.paths: dict | None = None  # the large-message paths measured (calibrate.py)
        self.paths_shown: tuple[float, dict | None, dict] | None = None  # (when, of, summary)
        self.tracer = trace.Collector()
        self.drain_wait = TRACE_DRAIN
        self.gs: subprocess.Popen | None = None  # the group server we started (pvmgs.keep), to reap
        self.gone: list[dict] = []  # the last GONE_KEPT tasks that left, newest last
        self.damage_seen: set[str] = set()

    # ---- start-up -------------------------------------------------------------------
    def take_lock(self) -> None:
        """One daemon per (user, VM id, host): an flock on the pid file. The kernel drops
        it when the holder dies, so a stale file never blocks a restart."""
        fd = private.open_file(self.files["lock"], os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = ""
            deadline = time.monotonic() + 1.0  # the holder may be between truncate and write
            while True:
                other = os.pread(fd, 32, 0).decode(errors="replace").strip()[:12]
                if other or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            os.close(fd)
            other = other or "?"
            raise StartError(DaemonExit.RUNNING, f"already running (pid {other})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.lock_fd = fd

    def reclaim(self) -> None:
        """Remove what a daemon of this VM killed with SIGKILL left behind; refuse a
        foreign segment at our key."""
        key = paths.seg0_key(self.o.vmid)
        seg0 = None
        try:
            shm = sysv_ipc.SharedMemory(key)
        except sysv_ipc.ExistentialError:
            shm = None
        except sysv_ipc.PermissionsError:
            raise StartError(DaemonExit.DENIED, f"segment key {key:#010x} is in use by another "
                                          "user; choose another VM id (-vmid=)") from None
        if shm is not None:
            try:
                ipc.check_owner(shm, f"segment key {key:#010x}")
            except ipc.NotOurs as e:  # never read, never removed: it is someone else's
                shm.detach()
                raise StartError(DaemonExit.DENIED, f"{e}; choose another VM id (-vmid=)") from None
            buf = memoryview(shm)
            try:
                layout.check(buf, os.getuid(), self.o.vmid)
            except layout.LayoutError as e:
                buf.release()
                shm.detach()
                if ("shm", shm.id) in leftovers(self.files["ipc"], None) and \
                        self._unfinished(shm.id):
                    # a daemon of ours was killed before it finished segment 0
                    found = leftovers(self.files["ipc"], None)
                    for kind, iid in sorted(found):
                        ipc.remove(kind, iid)
                    self.log(f"removed {len(found)} IPC objects of a pvm_shmd killed during "
                             "start-up: " + " ".join(f"{k}:{i}" for k, i in sorted(found)))
                    self._unlink_stale()
                    return
                raise StartError(DaemonExit.DENIED, f"segment key {key:#010x} (shmid {shm.id}) "
                                              f"is not ours: {e}; remove it (ipcrm -m "
                                              f"{shm.id}) or choose another VM id") from None
            h = layout.header(buf)
            if ipc.alive(h["pid"], h["start_ticks"]):
                pid = h["pid"]
                buf.release()
                shm.detach()
                raise StartError(DaemonExit.RUNNING, f"already running (pid {pid})")
            seg0 = buf
        found = leftovers(self.files["ipc"], seg0)
        if seg0 is not None:
            pid = layout.header(seg0)["pid"]
            found.add(("shm", shm.id))
            seg0.release()
            shm.detach()
            self.log(f"reclaiming leftovers of dead pvm_shmd pid {pid}")
        for kind, iid in sorted(found):
            ipc.remove(kind, iid)
        if found:
            self.log(f"removed {len(found)} leftover IPC objects: "
                     + " ".join(f"{k}:{i}" for k, i in sorted(found)))
        self._unlink_stale()

    def _unlink_stale(self) -> None:
        for f in (self.files["ipc"], self.files["sock"]):
            private.unlink(f)

    @staticmethod
    def _unfinished(shmid: int) -> bool:
        """Is segment *shmid* one nobody is attached to and whose creator is gone?"""
        for row in ipc.proc_table("shm"):
            if row["shmid"] == shmid:
                return row["nattch"] == 0 and ipc.process_start(row["cpid"]) is None
        return False

    def create(self) -> None:
        """Probe the segment size (halving on refusal), then make the segments, their
        semaphores and page maps."""
        o, ps = self.o, layout.pagesize()
        npages = o.maxpages
        key0 = paths.seg0_key(o.vmid)
        while True:
            geo = layout.Geometry(ps, npages, o.maxsegs)
            try:
                self.segs.append(self.res.segment(key0, geo.seg_size(0)))
                break
            except (sysv_ipc.Error, OSError) as e:
                if getattr(e, "errno", None) == errno.EEXIST:
                    raise StartError(DaemonExit.RUNNING, f"segment key {key0:#010x} appeared while "
                                     "starting: another pvm_shmd of this VM is starting") from None
                if getattr(e, "errno", None) in (errno.EACCES, errno.EPERM):
                    raise StartError(DaemonExit.DENIED, f"segment 0: {e}") from None
                self.log(f"shmget of {geo.seg_size(0)} bytes refused ({e}); halving")
                if npages == 1:
                    raise OutOfResources(f"cannot create segment 0 ({e}); see kernel.shmmax, "
                                         "shmall and shmmni") from None
                npages //= 2
        for i in range(1, o.maxsegs):
            try:
                self.segs.append(self.res.segment(None, geo.seg_size(i)))
            except (sysv_ipc.Error, OSError, ValueError, MemoryError) as e:
                self.log(f"segment {i} of {geo.seg_size(i)} bytes refused ({e})")
                break
        need = min(2, o.maxsegs)
        if len(self.segs) < need:
            raise OutOfResources(f"can create only {len(self.segs)} segment(s) of {npages} "
                                 f"pages; need at least {need} (see kernel.shmmni, shmall)")
        self.geo = geo = layout.Geometry(ps, npages, len(self.segs))
        try:
            for _ in self.segs:
                self.seg_locks.append(ipc.Lock(self.res.semaphore(1)))
        except (sysv_ipc.Error, OSError) as e:
            raise OutOfResources(f"cannot create semaphores ({e}); see kernel.sem") from None
        self.unpopulated = list(self.segs)  # (the page faults and zeroing: soon, not per message)
        self.buf = memoryview(self.segs[0])
        self.m32 = self.buf.cast("i")
        self.m64 = self.buf.cast("Q")
        self.mapped = True
        h = layout.header(self.buf)
        for name, value in (("version", layout.VERSION), ("uid", os.getuid()),
                            ("pid", os.getpid()), ("host", o.host), ("pagesize", ps),
                            ("nsegs", len(self.segs)), ("max_tasks", layout.MAX_TASKS),
                            ("ring", layout.RING), ("state", layout.STARTING),
                            ("start_ticks", ipc.process_start(os.getpid()) or 0),
                            ("maps_off", geo.maps_off), ("vmid", o.vmid),
                            ("sock", self.files["sock"]), ("started", time.time())):
            h[name] = value
        for i, (shm, lock) in enumerate(zip(self.segs, self.seg_locks)):
            entry = layout.segent(self.buf, i)
            for name, value in (("shmid", shm.id), ("key", shm.key), ("semid", lock.id),
                                ("semkey", lock.sem.key), ("npages", npages),
                                ("data_off", geo.data0_off if i == 0 else 0),
                                ("map_off", layout.map_off(i))):
                entry[name] = value
        self.clear_maps()
        for i in range(layout.MAX_TASKS):  # every slot's inbox lock, once (mutex.py says why)
            mutex.init(self.segs[0].address + layout.slot_off(i) + layout.T_LOCK_OFF)
        self.buf[:8] = layout.MAGIC  # last: only now may an alien process trust it

    @contextlib.contextmanager
    def trial_sems(self) -> Iterator[list[sysv_ipc.Semaphore]]:
        """Two semaphores of ours (in the registry: a successor removes them if we die)
        for measuring the wake-up kinds (wake.py), removed after."""
        sems = [self.res.semaphore(0) for _ in range(2)]
        try:
            yield sems
        finally:
            for s in sems:
                self.res.drop("sem", s.id)

    def clear_maps(self) -> None:
        for i in range(len(self.segs)):
            pagemap.init(self.m32, layout.map_i(i), self.geo.npages,
                         layout.rover_index(i))
            self.m32[layout.intent_i(i)] = 0  # (a plan of the maps before: void now)
            layout.segent(self.buf, i)["free"] = self.geo.npages

    def listen(self) -> None:
        path = self.files["sock"]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(path)
        finally:
            os.umask(old)
        s.listen(128)
        s.setblocking(False)
        self.listener = s
        self.clients.listen(s)

    def ready_line(self) -> str:
        return handshake.format_line(
            ip=self.o.name, mtu=self.geo.pagesize, dsig=handshake.DSIG, speed=handshake.SPEED,
            pid=os.getpid(), tid=f"{self.dtid:x}", segs=len(self.segs), pages=self.geo.npages)

    # ---- tasks ----------------------------------------------------------------------
    def slots(self, used: bool = False):
        """(index, Struct) of every task slot; *used*: only those whose tid word is set."""
        for i in layout.used_slots(self.m32) if used else range(layout.MAX_TASKS):
            yield i, layout.slot(self.buf, i)

    def join(self, client: Client, req: dict) -> dict:
        """Give the process at the other end (the kernel says which: SO_PEERCRED) a slot
        and a tid. A spawner may enrol its own child, named by "pid", never any other."""
        pid, name = client.pid, req.get("name", "")
        name = name[:31] if isinstance(name, str) else ""
        if "pid" in req and req["pid"] != pid:
            child = req["pid"]
            if type(child) is not int or ipc.parent_pid(child) != pid:
                return error_reply(f"pid {child!r} is not a child of the requesting process "
                                   f"{pid}: only a process itself or its parent may enrol it",
                                   PvmDenied)
            pid = child
        start = ipc.process_start(pid)
        if start is None:
            return error_reply(f"no such process {pid}")
        for i, t in self.slots(used=True):
            if t["tid"] and t["pid"] == pid and t["start_ticks"] == start:
                # a spawner enrolled this process for it: it adopts its slot
                client.slot = i
                if pid == client.pid:
                    t["conn"] = 1
                return {"tid": t["tid"], "slot": i,
                        "generation": layout.header(self.buf)["generation"]}
        free = next((i for i, t in self.slots() if not t["tid"]), None)
        if free is None:
            return error_reply("task table full", PvmOutOfRes)
        h = layout.header(self.buf)
        used = {tids.local_of(t["tid"]) for _, t in self.slots(used=True) if t["tid"]}
        local = h["next_local"] % tids.TIDLOCAL or 1  # bounded, whatever a scribble left there
        role = req.get("role")
        kept = tids.RESERVED.get(role) if isinstance(role, str) else None
        if kept is not None and kept not in used:
            local = kept  # pvm_netd, pvmgs: out of the tasks' sequence
        else:
            # t40001 is the console's tid on the master host (as in PVM): never a task's;
            # the RESERVED local parts are pvm_netd's and pvmgs's
            while local in used or local == 0 or local in tids.RESERVED.values() or (self.o.host == 1 and local == 1):
                local = tids.next_local(local)
            h["next_local"] = tids.next_local(local)
        tid = self.dtid | local
        try:
            wake = self.res.semaphore(0)
        except (sysv_ipc.Error, OSError) as e:
            return error_reply(f"cannot create a semaphore: {e}", PvmOutOfRes)
        t = layout.slot(self.buf, free)
        rv = layout.slot_off(free) + layout.RV_OFF
        # (not the inbox lock after them: made with the segment, never again)
        self.buf[rv:rv + layout.T_LOCK_OFF - layout.RV_OFF] = bytes(layout.T_LOCK_OFF - layout.RV_OFF)
        for k, v in (("pid", pid), ("start_ticks", start), ("name", name), ("head", 0),
                     ("tail", 0), ("posted", 0), ("consumed", 0), ("waiting", 0),
                     ("pending", 0), ("sending", 0), ("serial", (h["joined"] + 1) & 0x7FFFFFFF),
                     ("wake_key", wake.key), ("wake_id", wake.id),
                     ("conn", int(pid == client.pid)), ("state", layout.ACTIVE)):
            t[k] = v
        self.tracer.joined(self.m64, free)
        t["tid"] = tid  # last: a slot with a tid is complete
        h["joined"] = h["joined"] + 1
        client.slot = free
        self.log.debug(1, f"task t{tid:x} pid {pid} ({name}) joined, slot {free}")
        return {"tid": tid, "slot": free, "generation": h["generation"]}

    def inbox_lock(self, i: int) -> mutex.Mutex:
        """Slot *i*'s inbox lock."""
        return mutex.Mutex(self.segs[0].address + layout.slot_off(i) + layout.T_LOCK_OFF)

    def reap(self, i: int, why: str) -> None:
        """Free everything of the task in slot *i*: pages it holds, messages queued to
        it, its semaphores and slot."""
        t = layout.slot(self.buf, i)
        tid = t["tid"]
        if not tid:
            return
        lock = self.inbox_lock(i)
        try:
            locked = lock.acquire(LOCK_TIMEOUT)  # keep senders out while we empty the ring
        except mutex.Broken as err:
            self.note_damage(f"reaping t{tid:x}: its inbox lock: {err}")
            locked = False
        t["state"] = layout.FREE
        queued: dict[int, set[int]] = {}
        for seg, page in self.paged(i, t):
            queued.setdefault(seg, set()).add(page)
        live_refs = self.live_ring_refs(exclude=i)
        copying = self.run_in_copy(i)
        freed = 0
        for s in range(len(self.segs)):
            b = layout.map_i(s)
            got = self.seg_locks[s].acquire(LOCK_TIMEOUT)
            try:
                doomed = set(queued.get(s, ()))
                try:
                    if got and pagemap.finish(self.m32, s):  # it died in a map operation
                        self.log(f"t{tid:x} was killed changing segment {s}'s page map: "
                                 "its change finished")
                    runs = list(pagemap.runs(self.m32, b, self.geo.npages))
                except pagemap.Damaged as err:  # its pages stay; the slot is freed all the same
                    self.note_damage(f"reaping t{tid:x}: {err.detail}")
                    continue
                for p, _n, allocated, owner in runs:
                    if allocated and owner == tid and (s, p) not in live_refs:
                        if copying and copying[:2] == (s, p) and not self.m64[copying[3]]:
                            # its sender still writes into it: the run is the sender's
                            # now, which frees it when done (under this same lock)
                            pagemap.give(self.m32, b, p, copying[2])
                            continue
                        doomed.add(p)
                for p in doomed:
                    try:
                        n = pagemap.free(self.m32, b, self.geo.npages, p, layout.rover_index(s))
                    except pagemap.Damaged as err:
                        self.note_damage(f"reaping t{tid:x}: {err.detail}")
                        continue
                    freed += n
                    e = layout.segent(self.buf, s)
                    e["free"] = e["free"] + n
                    e["freed"] = e["freed"] + (1 if n else 0)
            finally:
                if got:
                    self.seg_locks[s].release()
        self.retire(i, t, why)
        t["tid"] = 0
        if locked:
            lock.release()
        try:
            self.res.drop("sem", t["wake_id"])
        except OSError:
            pass
        h = layout.header(self.buf)
        if why == "left":
            h["exited"] = h["exited"] + 1
        else:
            h["reaped"] = h["reaped"] + 1
        self.log(f"task t{tid:x} {why}; freed {freed} pages")

    def retire(self, i: int, t: layout.Struct, why: str) -> None:
        """Keep what the console's view and trace need of the task leaving slot *i*:
        its trace events, its counters (added to the host's), its last row."""
        tid = t["tid"]
        self.tracer.drain(self.buf, self.m64, i, tid, t["name"])
        h = layout.header(self.buf)
        row = layout.task_row(t)
        for k in layout.COUNTERS:
            h["gone_" + k] = (h["gone_" + k] + t[k]) & 0xFFFF_FFFF_FFFF_FFFF  # (wraps)
        self.gone = [*self.gone[-(GONE_KEPT - 1):], {**row, "state": "exited", "why": why,
                                                    "pages": 0, "waiting": 0}]

    def run_in_copy(self, i: int) -> tuple[int, int, int, int] | None:
        """(segment, page, sender tid, index of its DA word) of the run a live sender
        was handed for slot *i*'s zero-copy receive (see direct.py), else None."""
        r = layout.slot_q(i) + layout.T_RV_Q
        addr = self.m64[r + layout.RV_ADDR]
        if self.m64[r] != layout.RV_CLAIMED or not addr & layout.RV_PAGES:
            return None
        sender = self.m32[2 * (r + layout.RV_FROM)]
        if not any(t["tid"] == sender for _, t in self.slots(used=True)):
            return None  # gone too: the run is freed with the receiver's
        return (*layout.rv_run(addr), sender, r + layout.RV_DA)

    def live_ring_refs(self, exclude: int) -> set[tuple[int, int]]:
        """(segment, page) of every message waiting in a live task's inbox."""
        refs = set()
        for i, t in self.slots(used=True):
            if i == exclude or not t["tid"]:
                continue
            refs.update(self.paged(i, t))
        return refs

    def ring(self, i: int, t) -> list[int]:
        """Offsets of the descriptors queued in slot *i*'s inbox; [] (and one log line)
        if a faulty process damaged its counters."""
        try:
            return [d for _, d in layout.ring_entries(self.m32, i, t["head"], t["tail"])]
        except layout.LayoutError as e:
            self.note_damage(str(e))
            return []

    def paged(self, i: int, t) -> list[tuple[int, int]]:
        """(segment, page) of each paged message queued in slot *i*'s inbox; a descriptor
        naming no page of ours is damage (logged), never an index."""
        out = []
        for d in self.ring(i, t):
            seg, page = self.m32[(d + layout.D_SEG) // 4], self.m32[(d + layout.D_PAGE) // 4]
            if 0 <= seg < len(self.segs) and 0 <= page < self.geo.npages:
                out.append((seg, page))
            elif seg >= 0:
                self.note_damage(f"damaged descriptor in the inbox of slot {i}: "
                                 f"segment {seg}, page {page}")
        return out

    def note_damage(self, what: str) -> None:
        """Log a damaged structure once (a faulty process of ours scribbled on it)."""
        if what not in self.damage_seen and len(self.damage_seen) < 64:
            self.damage_seen.add(what)
            self.log(what)

    def check_tasks(self) -> None:
        for i, t in self.slots(used=True):
            if t["tid"] and not ipc.alive(t["pid"], t["start_ticks"]):
                self.reap(i, "exited without leaving (reaped)")

    # ---- status ---------------------------------------------------------------------
    def state(self) -> dict:
        h = layout.header(self.buf)
        segs: list[dict] = []
        held: dict[int, int] = {}
        for s in range(len(self.segs)):
            e, b = layout.segent(self.buf, s), layout.map_i(s)
            got = self.seg_locks[s].acquire(LOCK_TIMEOUT)
            damage = ""
            try:
                if got:
                    pagemap.finish(self.m32, s)  # a killed task's change, done whole
                runs = list(pagemap.runs(self.m32, b, self.geo.npages))
            except pagemap.Damaged as err:  # reported, not counted: no 198 million free pages
                runs, damage = [], err.detail or str(err)
                self.note_damage(damage)
            finally:
                if got:
                    self.seg_locks[s].release()
            free = sum(n for _, n, a, _ in runs if not a)
            for _, n, a, owner in runs:
                if a:
                    held[owner] = held.get(owner, 0) + n
            segs.append({"id": s, "shmid": e["shmid"], "semid": e["semid"],
                         "pages": self.geo.npages, "free": free,
                         "largest_free": max([n for _, n, a, _ in runs if not a] or [0]),
                         "allocated": e["allocated"], "freed": e["freed"],
                         **({"damaged": damage} if damage else {})})
        tasks = [{**layout.task_row(t), "pages": held.get(t["tid"], 0),
                  "waiting": t["pending"] + len(self.ring(i, t))}
                 for i, t in self.slots(used=True) if t["tid"]]
        totals = {k: h["gone_" + k] + sum(int(x[k]) for x in tasks) for k in layout.COUNTERS}
        return {"pid": os.getpid(), "tid": self.dtid, "host": self.o.host, "name": self.o.name,
                "vmid": self.o.vmid, "uptime": round(time.time() - h["started"], 3),
                "pagesize": self.geo.pagesize, "generation": h["generation"],
                "segments": segs, "tasks": tasks, "paths": self.paths_summary(),
                "counters": {"allocated": sum(s["allocated"] for s in segs),
                             "freed": sum(s["freed"] for s in segs), "joined": h["joined"],
                             "exited": h["exited"], "reaped": h["reaped"], "hups": h["hups"],
                             **totals},
                "exited_tasks": self.gone, "trace": h["trace"], "clock": time.monotonic(),
                "load": round(os.getloadavg()[0], 2)}

    def paths_summary(self) -> dict:
        """calibrate.summary of our measurement, made again at most once a second (it
        reads the online CPUs and judges the choice: two fifths of a stat's CPU here)."""
        now, kept = time.monotonic(), self.paths_shown
        if kept is None or kept[1] is not self.paths or now - kept[0] > 1.0:
            kept = self.paths_shown = (now, self.paths, calibrate.summary(self.paths))
        return kept[2]

    def report(self) -> None:
        """USR1: the internal state, human-readable, to stdout or the log."""
        st = self.state()
        lines = [f"pvm_shmd pid {st['pid']} tid t{st['tid']:x} vmid {st['vmid'] or '-'} "
                 f"up {st['uptime']:.0f} s, page size {st['pagesize']}"]
        for s in st["segments"]:
            lines.append(f"segment {s['id']} shmid {s['shmid']} semid {s['semid']}: "
                         f"{s['pages']} pages, {s['free']} free, largest free run "
                         f"{s['largest_free']}, {s['allocated']} allocated, {s['freed']} freed")
        for t in st["tasks"]:
            lines.append(f"task t{t['tid']:x} pid {t['pid']} {t['name'] or '-'}: "
                         f"{t['pages']} pages held, {t['waiting']} messages waiting")
        lines.append("counters: " + ", ".join(f"{k} {v}" for k, v in st["counters"].items()))
        lines += calibrate.lines(self.paths)
        if self.o.foreground:
            print("\n".join(lines), flush=True)
        else:
            self.log("\n".join(lines))

    # ---- signals and the loop -------------------------------------------------------
    def on_signal(self, signum, frame) -> None:
        self.signals.append(signum)  # only record; the loop acts

    def hup(self) -> None:
        """Clear the shared memory and every associated process, then go on fresh."""
        victims = [(i, t["pid"], t["start_ticks"]) for i, t in self.slots(used=True) if t["tid"]]
        for _, pid, start in victims:
            self._kill(pid, start, signal.SIGTERM)
        deadline = time.monotonic() + HUP_GRACE
        while time.monotonic() < deadline and any(ipc.alive(p, s) for _, p, s in victims):
            time.sleep(0.02)
        for _, pid, start in victims:
            self._kill(pid, start, signal.SIGKILL)
        for i, _, _ in victims:
            self.reap(i, "killed by HUP")
        for c in self.clients:
            self.clients.drop(c)
        self.suspects.clear()
        self.clear_maps()
        h = layout.header(self.buf)
        h["generation"] = h["generation"] + 1
        h["hups"] = h["hups"] + 1
        self.log(f"HUP: cleared shared memory and {len(victims)} task(s)")

    def _kill(self, pid: int, start: int, sig: int) -> None:
        if ipc.alive(pid, start) and pid != os.getpid():
            try:
                os.kill(pid, sig)
            except OSError as e:  # gone meanwhile, or not ours to kill
                if e.errno != errno.ESRCH:
                    self.log(f"cannot send {signal.Signals(sig).name} to pid {pid}: {e.strerror}")

    def handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.log(f"received {signal.Signals(sig).name}; removing IPC objects, exiting")
                self.running = False
            elif sig == signal.SIGHUP:
                self.hup()
            elif sig == signal.SIGUSR1:
                self.report()

    def client_gone(self, client: Client, reap: bool) -> None:
        """A connection closed: if it held a task whose process is dying, reap it."""
        if not self.mapped:
            return  # (shutting down: segment 0 is no longer ours to write)
        if client.slot is not None:
            t = layout.slot(self.buf, client.slot)
            if t["tid"] and t["pid"] == client.pid:
                t["conn"] = 0  # the task's own connection (ps's "c" flag) is gone
        if reap and client.slot is not None:
            i = client.slot
            t = layout.slot(self.buf, i)
            if t["tid"] and not ipc.alive(t["pid"], t["start_ticks"]):
                self.reap(i, "exited without leaving (reaped)")
            elif t["tid"]:
                # the kernel closes a dying process's files before it becomes a zombie:
                # watch it closely for a moment instead of waiting for the next TICK
                self.suspects[i] = (t["tid"], time.monotonic() + QUICK_FOR)

    def check_suspects(self) -> None:
        now = time.monotonic()
        for i, (tid, until) in list(self.suspects.items()):
            t = layout.slot(self.buf, i)
            if t["tid"] != tid:
                del self.suspects[i]
            elif not ipc.alive(t["pid"], t["start_ticks"]):
                del self.suspects[i]
                self.reap(i, "exited without leaving (reaped)")
            elif now > until:
                del self.suspects[i]

    def dispatch(self, client: Client, req: dict) -> dict:
        """One request (a dict with a str "op"); raising costs the request, not the daemon."""
        op = req["op"]
        if op == "join":
            if client.slot is not None:
                return error_reply("already joined", PvmExists)
            return self.join(client, req)
        if op == "leave":
            i, client.slot = client.slot, None
            if i is not None:
                self.reap(i, "left")
            return {"ok": True}
        if op == "stat":
            return self.state()
        if op == "ping":
            return {"pid": os.getpid()}
        if op == "trace":
            return self.trace_request(req)
        return error_reply(f"unknown request {op[:40]!r}")

    def trace_request(self, req: dict) -> dict:
        """trace: "set" MASK has every task of this host trace those events (0: none); "dump"
        returns the events so far ("clear": and forgets them)."""
        h = layout.header(self.buf)
        if "set" in req:
            if type(req["set"]) is not int or not 0 <= req["set"] <= trace.ALL:
                return error_reply(f"trace set {str(req['set'])[:20]!r}: a mask from 0 to "
                                   f"{trace.ALL} (trace.py)")
            h["trace"] = req["set"]
        self.drain_traces()
        if req.get("dump"):
            return {**self.tracer.dump(bool(req.get("clear"))), "trace": h["trace"]}
        return {"trace": h["trace"], "events": self.tracer.count, "lost": self.tracer.lost}

    def drain_traces(self) -> None:
        most = 0
        for i in self.tracer.pending(self.m64):  # (only the rings written since)
            t = layout.slot(self.buf, i)
            if t["tid"]:
                most = max(most, self.tracer.drain(self.buf, self.m64, i, t["tid"], t["name"]))
        if most > layout.TRACE_EVENTS // 2:
            self.drain_wait = max(self.drain_wait / 2, TRACE_DRAIN_MIN)
        elif most < layout.TRACE_EVENTS // 8:
            self.drain_wait = min(self.drain_wait * 2, TRACE_DRAIN)

    def loop(self) -> None:
        last = time.monotonic()
        while self.running:
            tracing = self.m32[layout.H_TRACE_I]
            wait = (0.0 if self.clients.busy or self.unpopulated else QUICK if self.suspects
                    else self.drain_wait if tracing else TICK)
            for key, mask in self.sel.select(wait):
                if key.data is self.clients:
                    self.clients.accept()
                elif key.data == "signal":
                    try:
                        os.read(key.fd, 512)
                    except OSError:
                        pass
                else:
                    self.clients.event(key.data, mask)
            self.guarded(self.clients.serve)
            self.guarded(self.handle_signals)
            if self.unpopulated and self.running:
                ipc.populate(self.unpopulated.pop())
            if self.suspects:
                self.guarded(self.check_suspects)
            if tracing:
                self.guarded(self.drain_traces)
            now = time.monotonic()
            self.clients.resume(now)
            if now - last >= TICK:
                last = now
                self.guarded(self.check_tasks)
                self.clients.expire(now)
                if self.o.host == tids.MASTER:
                    self.guarded(self.keep_group_server)

    def keep_group_server(self) -> None:
        """The master host of a VM that spans hosts runs its group server (pvmgs.keep)."""
        from . import pvmgs  # (here only: the task library is not the daemon's)

        self.gs = pvmgs.keep(self.o.vmid, self.gs,
                             lambda: any(t["tid"] == tids.GS_TID for _, t in self.slots(used=True)))

    def guarded(self, step) -> None:
        """Run one step of the loop; what a damaged structure makes it raise is logged
        (once per kind of damage) and the daemon goes on serving."""
        try:
            step()
        except Exception as e:
            self.note_damage(f"error in {step.__name__}: {type(e).__name__}: {e} (going on)")

    def shutdown(self) -> None:
        """Remove every IPC object and file made; safe to call at any stage."""
        if self.mapped:
            layout.header(self.buf)["state"] = layout.STOPPING
            self.m32.release()
            self.m64.release()
            self.buf.release()
            self.mapped = False
        for shm in self.segs:
            try:
                shm.detach()
            except sysv_ipc.Error:
                pass
        self.res.remove_all()
        if self.listener is not None:
            self.clients.close()
            private.unlink(self.files["sock"])
        if self.lock_fd >= 0:
            private.unlink(self.files["lock"])
            os.close(self.lock_fd)
            self.lock_fd = -1


class ReadyPipe:
    """The pipe a detached daemon reports its start on: one line, then closed. Once it is
    closed nothing more is written to its number (the fd may be a client's by then)."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def say(self, line: str) -> bool:
        """Write *line* and close; False if the pipe was closed already (or never open)."""
        if self.fd is None:
            return False
        try:
            os.write(self.fd, (line + "\n").encode())
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        return True


def run(opts: Options, ready: ReadyPipe) -> int:
    """Start up, say ready (on the *ready* pipe, or stdout), serve until TERM/INT."""
    try:
        log_path = paths.log_path(opts.vmid)
    except private.UnsafeState as e:
        log_path = f"(none: {e})"

    def say_failed(status: int, msg: str) -> int:
        """The one error line: to the starter waiting on the pipe, or to stderr."""
        line = f"pvm_shmd: {msg}"
        if not ready.say(f"error {int(status)} {line}"):
            print(line, file=sys.stderr)
        return status

    try:
        log = Log(log_path, f"[pvm_shmd {tids.fmt(tids.dtid(opts.host))}] ", echo=opts.foreground,
                  debug=opts.debug)
    except private.UnsafeState as e:
        return say_failed(DaemonExit.DENIED, f"cannot open log: {e}")
    except OSError as e:
        return say_failed(DaemonExit.DENIED, f"cannot open log {log_path}: {e.strerror}")

    moved = hostenv.enter(opts.wd)
    if moved:
        log(moved)  # PVM's pvmd logged a wd= it could not enter and went on where it was

    def fail(status: int, msg: str) -> int:
        log(f"cannot start: {msg}")
        return say_failed(status, msg)

    d = Daemon(opts, log)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, d.on_signal)
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w)
    d.sel.register(r, selectors.EVENT_READ, "signal")
    try:
        d.take_lock()
        d.reclaim()
        d.create()
        d.listen()
        # which way large messages go here and how sleepers are woken: measured once per
        # boot (<50 ms each), kept in a private file every task reads when it joins
        d.paths = calibrate.ensure(again_if_noisy=True, sems=d.trial_sems)
        layout.header(d.buf)["wake"] = wake.KINDS.index(calibrate.wake_choice(d.paths)[0])
        log(calibrate.lines(d.paths)[0])
        log(calibrate.lines(d.paths)[-1])
    except StartError as e:
        d.shutdown()
        return fail(e.status, str(e))
    except OutOfResources as e:
        d.shutdown()
        return fail(DaemonExit.RESOURCES, str(e))
    except private.UnsafeState as e:
        d.shutdown()
        return fail(DaemonExit.DENIED, str(e))
    except (PermissionError, sysv_ipc.PermissionsError) as e:
        d.shutdown()
        return fail(DaemonExit.DENIED, f"permission denied: {e}")
    except OSError as e:
        d.shutdown()
        return fail(DaemonExit.RESOURCES, f"{e.strerror or e}")
    layout.header(d.buf)["state"] = layout.READY
    line = d.ready_line()
    # (its CPU since the fork: what a host's start costs it; its pages are filled in after)
    log(f"ready: {line} (start-up CPU {time.process_time() * 1e3:.1f} ms)")
    if not ready.say(line):
        print(line, flush=True)
    try:
        d.handle_signals()  # a signal that came during start-up
        d.loop()
    finally:
        d.shutdown()
        log("exited")
        log.close()
    return DaemonExit.OK


def detach(opts: Options) -> int:
    """Fork the daemon into the background; return once it said ready (or failed)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        ready = ReadyPipe(w)
        try:
            status = run(opts, ready)
        except BaseException as e:  # the daemon must never leave a half-made state unreported
            status = DaemonExit.RESOURCES
            ready.say(f"error {int(status)} pvm_shmd: internal error: {e!r}")  # only if still open
            import traceback  # (here only: 2 ms of every start)
            try:
                Log(paths.log_path(opts.vmid), "[pvm_shmd] ")(traceback.format_exc())
            except (OSError, private.UnsafeState):
                pass
        os._exit(status)
    os.close(w)
    os.waitpid(pid, 0)
    data = b""
    deadline = time.monotonic() + 60
    while not data.endswith(b"\n") and time.monotonic() < deadline:
        readable, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(r)
    line = data.decode(errors="replace").strip()
    if line.startswith("ddpro<"):
        print(line, flush=True)
        return DaemonExit.OK
    if line.startswith("error "):
        _, word, msg = line.split(" ", 2)
        print(msg, file=sys.stderr)
        return int(word)
    print("pvm_shmd: daemon died during start-up (see " + paths.log_path(opts.vmid) + ")",
          file=sys.stderr)
    return DaemonExit.RESOURCES


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help", "-help"):
        print(USAGE)
        return DaemonExit.OK
    try:
        opts = parse(argv)
    except UsageError as e:
        print(f"pvm_shmd: {e} (pvm_shmd -help for usage)", file=sys.stderr)
        return DaemonExit.USAGE
    try:
        private.directory()  # made, or refused with the reason, before anything is opened
    except private.UnsafeState as e:
        print(f"pvm_shmd: {e}", file=sys.stderr)
        return DaemonExit.DENIED
    if opts.foreground:
        return run(opts, ReadyPipe(None))
    net = None
    if opts.net:  # pvm_netd's line (keys, peers) read and checked before anything starts
        from . import netd
        try:
            net = netd.parse_input(sys.stdin.readline(1 << 20))
        except ValueError as e:
            print(f"pvm_shmd: -net={opts.net}: {e}", file=sys.stderr)
            return DaemonExit.USAGE
    status = detach(opts)
    if status == DaemonExit.OK and net is not None:
        start_net(opts, net)
    return status


def start_net(opts: Options, got: tuple) -> None:
    """pvm_shmd -net=: this host's pvm_netd, forked from this starting process once the
    daemon is ready (one program start and one SSH exec for both). Its ready line on
    stdout, or why it did not start on stderr; the daemon runs either way."""
    from . import netd

    *keys, me, infos = got
    # what this host is, as its pvm_netd tells others: the daemon's ready line, unless
    # the console said otherwise (a hostfile's sp=)
    me = {"name": opts.name, "arch": handshake.arch(), "dsig": handshake.DSIG, "speed": handshake.SPEED, **me}
    line = netd.start(opts.vmid, opts.host, opts.net, (*keys, me, infos))
    if line.startswith("netd<"):
        print(line, flush=True)
    else:
        print(f"pvm_netd: {line or 'exited before it was ready'}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

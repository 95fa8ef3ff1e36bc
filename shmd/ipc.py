"""SysV IPC plumbing: timed semaphore operations, /proc/sysvipc, removal by id.

sysv_ipc does the creating, attaching and fast non-blocking operations. Its wheels
are built without semtimedop (``SEMAPHORE_TIMEOUT_SUPPORTED`` is False, a timeout is
then ignored and the call blocks forever), so timed waits call semtimedop through
ctypes: every blocking call here has a timeout.
"""
from __future__ import annotations

import ctypes
import errno
import os
import time

import sysv_ipc

from .errors import PvmDenied, PvmError

SEM_UNDO = 0x1000
IPC_NOWAIT = 0o4000
IPC_RMID = 0
MAX_WAIT = 3600.0
# how long a contended Lock is retried before its taker sleeps (seconds); not with one
# CPU, where the holder cannot run meanwhile
LOCK_SPIN = 20e-6 if len(os.sched_getaffinity(0)) > 1 else 0.0

def _load_libc() -> ctypes.CDLL:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)  # glibc: no ldconfig run needed
    except OSError:
        from ctypes.util import find_library

        return ctypes.CDLL(find_library("c"), use_errno=True)


_libc = _load_libc()


class _Sembuf(ctypes.Structure):
    _fields_ = [("sem_num", ctypes.c_ushort), ("sem_op", ctypes.c_short), ("sem_flg", ctypes.c_short)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
_libc.semctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
_libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_libc.msgctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_DOWN_UNDO = _Sembuf(0, -1, SEM_UNDO)
_DOWN = _Sembuf(0, -1, 0)
MADV_POPULATE_WRITE = 23


class Gone(Exception):
    """The semaphore was removed (its owner, the daemon, tore it down)."""


# semtimedop without argtypes: Waiter calls it with arguments built once (ctypes
# converting four arguments costs ~0.8 us a call, more than the system call itself).
_semtimedop = _libc["semtimedop"]
_semtimedop.restype = ctypes.c_int
_ONE = ctypes.c_size_t(1)


class Waiter:
    """Timed downs (semop -1, with or without SEM_UNDO) of one semaphore, as cheap per
    call as ctypes allows: what a receiver calls each time it sleeps, and a Lock when
    its holder keeps it. Not for use by two threads at once."""

    __slots__ = ("semid", "_args", "_ts")

    def __init__(self, semid: int, undo: bool = False):
        self.semid = semid
        self._ts = _Timespec()
        self._args = (ctypes.c_int(semid), ctypes.byref(_DOWN_UNDO if undo else _DOWN), _ONE,
                      ctypes.byref(self._ts))

    def down(self, timeout: float) -> bool:
        """True if acquired within *timeout* seconds ("for ever" is an hour at a time)."""
        timeout = min(timeout, MAX_WAIT)
        ts = self._ts
        ts.tv_sec = whole = int(timeout)
        ts.tv_nsec = int((timeout - whole) * 1e9)
        while True:
            if _semtimedop(*self._args) == 0:
                return True
            e = ctypes.get_errno()
            if e == errno.EAGAIN:
                return False
            if e == errno.EINTR:
                continue  # a signal: the caller's loop re-checks its state anyway
            if e in (errno.EIDRM, errno.EINVAL):
                raise Gone(f"semaphore {self.semid} removed")
            raise OSError(e, os.strerror(e))


def _make_fence():
    """A full memory barrier callable from Python for ~0.15 us (a semop costs 0.2-0.5):
    ``pthread_spin_trylock`` on a private word is an atomic exchange or lock cmpxchg,
    a full barrier on x86-64. Elsewhere None: callers use a semop instead."""
    if os.uname().machine not in ("x86_64", "AMD64"):
        return None
    word = ctypes.c_int(0)
    ref, xchg = ctypes.byref(word), _libc.pthread_spin_trylock

    def fence() -> None:
        xchg(ref)

    fence.word = word  # type: ignore[attr-defined,unused-ignore]  # kept alive with it
    return fence


fence = _make_fence()


def populate(shm: sysv_ipc.SharedMemory) -> None:
    """Map every page of an attached segment now (MADV_POPULATE_WRITE, Linux 5.14+),
    so that messages do not pay a page fault per page the first time through. A
    kernel without it is simply left to fault pages in as they are touched."""
    _libc.madvise(shm.address, shm.size, MADV_POPULATE_WRITE)


def nonblocking(sem: sysv_ipc.Semaphore) -> sysv_ipc.Semaphore:
    """Make acquire() raise BusyError instead of blocking (IPC_NOWAIT). Note that
    ``acquire(0)`` is no substitute: without semtimedop it blocks."""
    sem.block = False
    return sem


class Lock:
    """A binary semaphore used as a lock, taken and released with SEM_UNDO so that a
    process dying while holding it does not block the others."""

    __slots__ = ("sem", "id", "_waiters")

    def __init__(self, sem: sysv_ipc.Semaphore):
        sem.undo = True
        nonblocking(sem)
        self.sem, self.id = sem, sem.id
        # one Waiter per thread sleeping on it at once (pvm_netd's two threads share
        # its locks; a Waiter's timeout is its own): taken off and put back (atomic)
        self._waiters = [Waiter(sem.id, undo=True)]

    def acquire(self, timeout: float) -> bool:
        sem = self.sem
        try:
            sem.acquire()  # fast path, uncontended: no ctypes
            return True
        except sysv_ipc.BusyError:
            pass
        except sysv_ipc.ExistentialError:
            raise Gone(f"semaphore {self.id} removed") from None
        # Held: our locks are held a microsecond or two, so try again for a little
        # while before sleeping in the kernel (a wake-up there can cost tens of
        # microseconds on a VM: a sender and a receiver that met on a segment's lock
        # every few messages ran a 64 KiB stream at half speed).
        if LOCK_SPIN:
            clock = time.perf_counter
            end = clock() + LOCK_SPIN
            while clock() < end:
                try:
                    sem.acquire()
                    return True
                except sysv_ipc.BusyError:
                    pass
                except sysv_ipc.ExistentialError:
                    raise Gone(f"semaphore {self.id} removed") from None
        waiters = self._waiters
        try:
            w = waiters.pop()
        except IndexError:  # another thread of ours sleeps on it with the one we had
            w = Waiter(self.id, undo=True)
        try:
            return w.down(timeout)
        finally:
            waiters.append(w)

    def release(self) -> None:
        try:
            self.sem.release()
        except sysv_ipc.ExistentialError:
            pass  # removed while we held it (its task was reaped): nothing left to release


def create_segment(key: int, size: int) -> int:
    """shmget(IPC_CREAT|IPC_EXCL, mode 0600): the kernel zero-fills new segments, and
    sysv_ipc would memset every byte again (touching all the memory at start-up)."""
    iid = _libc.shmget(key, size, 0o1000 | 0o2000 | 0o600)
    if iid < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"shmget of {size} bytes: {os.strerror(e)}")
    return iid


class NotOurs(Gone, PvmError):
    """A SysV object found by key or id that this user did not make for itself: another
    user created it, owns it, or may open it. Never trusted, read or removed; to those
    who look for an object of ours it is as good as gone, to a program a PvmDenied."""

    def __init__(self, detail: str):
        PvmError.__init__(self, PvmDenied, detail)


def owned(uid: int, cuid: int, mode: int) -> bool:
    """Is an object with these owner, creator and mode ours alone?"""
    me = os.getuid()
    return uid == me and cuid == me and mode & 0o077 == 0


def check_owner(obj: sysv_ipc.SharedMemory | sysv_ipc.Semaphore, what: str) -> None:
    """Raise NotOurs unless *obj* is owned and was created by this uid, mode 0600: the
    header of a segment says what its writer wants, the kernel says who made it."""
    if not owned(obj.uid, obj.cuid, obj.mode):
        raise NotOurs(f"{what} (id {obj.id}, key {obj.key & 0xFFFFFFFF:#010x}) is owned by "
                      f"uid {obj.uid}, created by uid {obj.cuid}, mode {obj.mode & 0o777:04o}: "
                      f"not made by this user (uid {os.getuid()})")


def attach_owned(shmid: int, what: str) -> sysv_ipc.SharedMemory:
    """Attach segment *shmid* once it is known to be ours (NotOurs, else)."""
    shm = sysv_ipc.attach(shmid)
    try:
        check_owner(shm, what)
    except NotOurs:
        shm.detach()
        raise
    return shm


def open_sem(key: int, semid: int) -> sysv_ipc.Semaphore:
    """Open a semaphore by key and make sure it is still the object recorded as *semid*,
    and ours (NotOurs)."""
    sem = sysv_ipc.Semaphore(key)
    if sem.id != semid:
        raise Gone(f"semaphore key {key:#x} now names id {sem.id}, not {semid}")
    check_owner(sem, "semaphore")
    return sem


def proc_table(kind: str) -> list[dict[str, int]]:
    """Rows of /proc/sysvipc/<kind> (shm, sem, msg) as dicts of ints."""
    with open(f"/proc/sysvipc/{kind}") as f:
        names = f.readline().split()
        rows = []
        for line in f:
            cols = line.split()
            rows.append({n: int(c) for n, c in zip(names, cols)})
    return rows


ID_COLUMN = {"shm": "shmid", "sem": "semid", "msg": "msqid"}


def row_owned(row: dict[str, int]) -> bool:
    """Is the object of a proc_table row ours alone (owner, creator, mode)?"""
    return owned(row["uid"], row["cuid"], int(str(row["perms"]), 8))  # perms is octal there


def remove(kind: str, iid: int) -> bool:
    """IPC_RMID the object; False if it was already gone."""
    fn = {"shm": _libc.shmctl, "sem": _libc.semctl, "msg": _libc.msgctl}[kind]
    rc = fn(iid, 0, IPC_RMID) if kind == "sem" else fn(iid, IPC_RMID, None)
    if rc == 0:
        return True
    e = ctypes.get_errno()
    if e in (errno.EINVAL, errno.EIDRM):
        return False
    raise OSError(e, f"removing {kind} {iid}: {os.strerror(e)}")


def process_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of *pid*, None if there is no such
    process or it is a zombie: together (pid, start) name one process for its life."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()
    if rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])


def parent_pid(pid: int) -> int | None:
    """The parent of *pid* (None if there is no such live process)."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            data = f.read()
        rest = data[data.rindex(b")") + 2:].split()
    except (OSError, ValueError):
        return None
    return None if rest[0] in (b"Z", b"X") else int(rest[1])


def wait_children(pids: list[int], timeout: float) -> bool:
    """Wait for our child processes *pids* to exit, SIGKILLing those still running
    after *timeout* seconds (a stuck measuring side, say); True if all exited 0."""
    ok = True
    deadline = time.monotonic() + timeout
    for pid in pids:
        while True:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                ok = ok and os.waitstatus_to_exitcode(status) == 0
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                ok = False
                break
            time.sleep(0.0005)
    return ok


def alive(pid: int, start: int) -> bool:
    """Is the process that was *pid* with start time *start* still running?"""
    return pid > 0 and process_start(pid) == start

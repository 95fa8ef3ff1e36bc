"""The user's private state directory, and files opened in it without trusting anyone else.

Every file of a user's virtual machines (host table, daemon lock, control socket, IPC
registry, log, spawn registry) lives in ``$PVM_TMP/pvm.<uid>/`` (``$PVM_TMP`` defaults to
/tmp, as in PVM). The directory is created 0700 when missing and refused, with a one-line
error naming its owner and mode, when it is anyone else's, not a directory, a link, or
open to others: in a directory only its owner can write, no other user can plant, link,
lock or replace a file. Every path above it must be safe too (owned by root or the user,
not writable by others unless sticky, as /tmp is), or someone could swap the directory.

Files are opened with ``O_NOFOLLOW`` and checked after opening (a regular file, owned by
the user, no access for group or others), so a file that is not what we made is never
read, written or truncated.
"""
from __future__ import annotations

import errno
import fcntl
import os
import pwd
import stat
import time
from collections.abc import Iterator

from .errors import PvmDenied, PvmError

DIR_MODE = 0o700
FILE_MODE = 0o600
READ_LIMIT = 16 << 20  # no state file of ours is near this; a bigger one is not ours


class UnsafeState(PvmError):
    """A state directory or file that is not safely ours (the message says why)."""

    def __init__(self, detail: str):
        super().__init__(PvmDenied, detail)
        self.args = (detail,)

    def __str__(self) -> str:
        return self.args[0]


def _owner(st: os.stat_result) -> str:
    try:
        return f"{pwd.getpwuid(st.st_uid).pw_name} (uid {st.st_uid})"
    except KeyError:
        return f"uid {st.st_uid}"


def _describe(path: str, st: os.stat_result) -> str:
    kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a symbolic link"
            if stat.S_ISLNK(st.st_mode) else "a regular file" if stat.S_ISREG(st.st_mode)
            else "a special file")
    return f"{path} is {kind} owned by {_owner(st)} with mode {stat.S_IMODE(st.st_mode):04o}"


def base() -> str:
    """``$PVM_TMP``, default /tmp (made absolute: the daemon changes no directory, but a
    relative path would mean different places to different processes)."""
    return os.path.abspath(os.environ.get("PVM_TMP") or "/tmp")


def directory_path(uid: int | None = None) -> str:
    """Where the state directory of *uid* (default: ours) is; nothing is checked."""
    return os.path.join(base(), f"pvm.{os.getuid() if uid is None else uid}")


def _walk(path: str, look) -> Iterator[tuple[str, os.stat_result]]:
    """(prefix, look(prefix)) for /, then each directory of *path* down to itself; stops
    at the first that does not exist (it is made below, by us)."""
    parts = path.split(os.sep)
    for i in range(1, len(parts) + 1):
        p = os.sep.join(parts[:i]) or os.sep
        try:
            yield p, look(p)
        except FileNotFoundError:
            return


def _check_ancestors(path: str) -> None:
    """Refuse a path any of whose directories another user could rename entries in, or
    that goes through a link another user owns."""
    uid = os.getuid()
    for p, st in _walk(path, os.lstat):
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in (0, uid):
            raise UnsafeState(f"PVM_TMP {path}: {_describe(p, st)}: another user's link "
                              "is never followed; set PVM_TMP to a directory of yours")
    for p, st in _walk(os.path.realpath(path), os.stat):  # where the links lead, checked
        writable_by_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if st.st_uid not in (0, uid) or (writable_by_others and not st.st_mode & stat.S_ISVTX):
            raise UnsafeState(f"PVM_TMP {path}: {_describe(p, st)}: another user could replace "
                              "what is in it; set PVM_TMP to a directory of yours")


def _check_dir_fd(fd: int, path: str) -> None:
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise UnsafeState(f"{_describe(path, st)}; it must be a directory of yours with mode "
                          f"0700: remove it (or chmod 700 if it is yours), or set PVM_TMP")


def directory(create: bool = True) -> str:
    """The state directory, checked (and created 0700 when *create* and missing)."""
    path = directory_path()
    _check_ancestors(path)
    if create:
        try:
            os.makedirs(base(), mode=DIR_MODE, exist_ok=True)
        except OSError as e:
            raise UnsafeState(f"PVM_TMP {base()}: {e.strerror}") from None
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            pass
        except OSError as e:
            raise UnsafeState(f"{path}: {e.strerror}") from None
    try:  # FileNotFoundError (not made, create=False) is the caller's to handle
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeState(_describe(path, os.lstat(path)) + "; it must be a directory of "
                              "yours with mode 0700: remove it, or set PVM_TMP") from None
        raise UnsafeState(f"{path}: {e.strerror}") from None
    try:
        _check_dir_fd(fd, path)
    finally:
        os.close(fd)
    return path


def check_fd(fd: int, path: str) -> None:
    """Refuse an open file that is not a regular file of ours closed to everyone else."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise UnsafeState(f"{_describe(path, st)}: not a private file of yours; "
                          "it was not made by pvm-shmd: remove it")


def open_file(path: str, flags: int, mode: int = FILE_MODE) -> int:
    """``os.open`` without following a link, the result checked by :func:`check_fd`.
    A link at *path* raises UnsafeState (never followed, never removed)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeState(f"{path} is a symbolic link: never followed; remove it") from None
        raise
    try:
        check_fd(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_text(path: str, limit: int = READ_LIMIT) -> str | None:
    """The text of a private file, None if there is none."""
    try:
        fd = open_file(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnsafeState(f"{path} is larger than {limit} bytes: not a file pvm-shmd made")
    return data.decode("utf-8", errors="replace")


def write_atomic(path: str, data: bytes, sync: bool = True) -> None:
    """Replace *path* with *data*: written to a new file of ours beside it (O_EXCL: never
    an existing file or link), synced (unless not *sync*: what need not outlive the
    machine, only a killed process), then renamed over it."""
    tmp = f"{path}.{os.getpid()}.new"
    try:
        os.unlink(tmp)  # a leftover of ours from a killed writer with our pid
    except FileNotFoundError:
        pass
    fd = open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def held(path: str) -> str | None:
    """The first bytes (as text) of our file *path* while some process holds an flock
    on it (a daemon's lock file: the holder wrote its pid there); None when nobody
    does, or it is not a private file of ours."""
    try:
        fd = open_file(path, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, UnsafeState):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # we got it: nobody holds it (closing drops ours)
        except OSError:
            return os.pread(fd, 32, 0).decode(errors="replace").strip()
    finally:
        os.close(fd)


def unlink(path: str) -> None:
    """Remove *path* if it is there (a name in our own directory: whatever it is, it is
    ours to remove, and unlink never follows a link)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def flock_within(fd: int, timeout: float) -> bool:
    """Take an exclusive flock on *fd*, waiting at most *timeout* seconds; False if it
    stayed held that long (a blocking flock would wait for ever on a stuck holder)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)

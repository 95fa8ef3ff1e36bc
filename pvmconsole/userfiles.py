"""Files a user names to the console (a hostfile, a command file, ``.pvmrc``): read
without ever blocking on a FIFO nobody writes to, at most MAX_BYTES, and named in
messages with every unprintable character escaped. Failures are OSErrors carrying the
(escaped) path as ``filename`` and the reason as ``strerror``: one line for the caller.
"""
from __future__ import annotations

import errno
import os
import select
import stat
import time

MAX_BYTES = 16 * 1024 * 1024  # a hostfile larger than this is refused unread
PIPE_TIMEOUT = 10.0  # seconds to wait for a pipe's writer to finish


def escape(text: str) -> str:
    """*text* with every unprintable character (NUL, controls, a BOM, ...) written as
    its Python escape, so a message is one visible line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _refuse(code: int, why: str, path: str) -> OSError:
    return OSError(code, why, escape(path))


def read_bytes(path: str) -> bytes:
    """The file's bytes: a regular file up to MAX_BYTES, or a pipe that has a writer
    (read until it closes, within PIPE_TIMEOUT s). Never blocks on a FIFO without
    a writer; anything else (a directory, a device) is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise OSError(e.errno, e.strerror, escape(path)) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise _refuse(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if stat.S_ISREG(st.st_mode):
            if st.st_size > MAX_BYTES:
                raise _refuse(errno.EFBIG, f"file too large (more than {MAX_BYTES >> 20} MiB)", path)
            chunks = []
            size = 0
            while size <= MAX_BYTES:
                chunk = os.read(fd, MAX_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            if size > MAX_BYTES:  # it grew while we read
                raise _refuse(errno.EFBIG, f"file too large (more than {MAX_BYTES >> 20} MiB)", path)
            return b"".join(chunks)
        if not stat.S_ISFIFO(st.st_mode):
            raise _refuse(errno.EINVAL, "not a regular file or a pipe", path)
        return _read_pipe(fd, path)
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror, escape(path)) from None
        raise
    finally:
        os.close(fd)


def _read_pipe(fd: int, path: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    writer = False  # seen one: an empty pipe it closed is an empty hostfile
    deadline = time.monotonic() + PIPE_TIMEOUT
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:  # a writer, nothing written yet
            writer = True
            left = deadline - time.monotonic()
            if left <= 0:
                raise _refuse(errno.ETIMEDOUT,
                              f"pipe not closed by its writer within {PIPE_TIMEOUT:g} s", path) from None
            select.select([fd], [], [], min(left, 0.5))
            continue
        if not chunk:
            if not chunks and not writer:
                raise _refuse(errno.EPIPE, "a pipe with no writer (nothing to read)", path)
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BYTES:
            raise _refuse(errno.EFBIG, f"file too large (more than {MAX_BYTES >> 20} MiB)", path)

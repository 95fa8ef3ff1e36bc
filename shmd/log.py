"""The daemon's log: ``$PVM_TMP/pvm.<uid>/pvml.<uid>[.<vmid>]``, mode 0600, time-stamped, size-capped
(``PVMDLOGMAX`` characters, default 1,000,000, as PVM)."""
from __future__ import annotations

import os
import sys
import time

from . import private

DEFAULT_MAX = 1_000_000


class Log:
    """Appends time-stamped lines; in the foreground they also go to stderr."""

    def __init__(self, path: str | None, prefix: str, echo: bool = False, debug: int = 0):
        self.path, self.prefix, self.echo, self.debug_level = path, prefix, echo, debug
        self.written = 0
        self.truncated = False
        try:
            self.cap = int(os.environ.get("PVMDLOGMAX", DEFAULT_MAX))
        except ValueError:
            self.cap = DEFAULT_MAX
        self.fd = -1
        if path:
            # never through a link, never a file someone else made (private.open_file)
            self.fd = private.open_file(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            self.written = os.fstat(self.fd).st_size

    def __call__(self, msg: str) -> None:
        stamp = time.strftime("%m/%d %H:%M:%S")
        lines = "".join(f"{stamp} {self.prefix}{line}\n" for line in msg.splitlines() or [""])
        if self.echo:
            sys.stderr.write(lines)
            sys.stderr.flush()
        if self.fd < 0 or self.truncated:
            return
        if self.written + len(lines) > self.cap:
            lines = "*** logging truncated\n"
            self.truncated = True
        os.write(self.fd, lines.encode())
        self.written += len(lines)

    def debug(self, level: int, msg: str) -> None:
        if self.debug_level >= level:
            self(msg)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

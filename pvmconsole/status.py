"""Exit statuses of `pvm` (documented in docs/console.md)."""
from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0  # quit, halt or end of input, every command succeeded
    FAILED = 1  # a scripted command failed (any line: scripts go on; with -x the first stops)
    USAGE = 2  # bad arguments, unreadable or erroneous hostfile / command file
    NO_VM = 3  # the virtual machine could not be started or attached to

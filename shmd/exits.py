"""Exit statuses of the host-side programs, and what each means to the console: the one
contract between `pvm_shmd`/`pvm_shmd_stat`/`pvm_spawn` and whoever runs them (the console
runs them on every host, locally or over SSH, and reads nothing but these and one line
of stderr). Documented in docs/shmd.md and docs/tasks.md."""
from __future__ import annotations

from enum import IntEnum

from .errors import PvmCantStart, PvmDenied, PvmDupHost, PvmHostFail, PvmOutOfRes


class DaemonExit(IntEnum):
    """`pvm_shmd`."""

    OK = 0  # ready (detached: it runs), or it exited after TERM/INT
    USAGE = 2  # a bad option, value or PVM_VMID
    RUNNING = 3  # a daemon of this user, VM id and host runs already
    RESOURCES = 4  # the kernel refused segments or semaphores, or an internal error
    DENIED = 5  # a foreign segment at our key, or the private directory/log is not ours

    @property
    def pvm_code(self) -> int:
        """The PVM error a console reports for a start that ended so."""
        return {DaemonExit.RUNNING: PvmDupHost, DaemonExit.RESOURCES: PvmOutOfRes,
                DaemonExit.DENIED: PvmDenied}.get(self, PvmCantStart)


class StatExit(IntEnum):
    """`pvm_shmd_stat`."""

    OK = 0
    NO_DAEMON = 1  # no pvm_shmd of this user and VM id runs on this host
    USAGE = 2
    TIMEOUT = 3  # --stop: the daemon did not exit in time
    FAILED = 4  # a segment 0 that is not ours or is damaged, or the daemon did not answer

    @property
    def pvm_code(self) -> int:
        return PvmHostFail


class SpawnExit(IntEnum):
    """`pvm_spawn`."""

    OK = 0
    FAILED = 1  # some copies did not start, or tasks survived KILL
    USAGE = 2
    CANNOT_RUN = 126  # the shell's: pvm_spawn is there but cannot be run
    NOT_FOUND = 127  # the shell's: pvm_spawn itself is missing on the host


def daemon_exit(rc: int) -> DaemonExit | None:
    """The DaemonExit for a status, None for a status pvm_shmd never uses."""
    try:
        return DaemonExit(rc)
    except ValueError:
        return None

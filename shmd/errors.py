"""PVM 3.4 error codes and the exception that carries one.

The numbers and texts are PVM's own (pvm3.h, pvm_errlist), so console output and
programs ported from C see the values they expect.
"""
from __future__ import annotations

PvmOk = 0
PvmBadParam = -2
PvmMismatch = -3
PvmOverflow = -4
PvmNoData = -5
PvmNoHost = -6
PvmNoFile = -7
PvmDenied = -8
PvmNoMem = -10
PvmBadMsg = -12
PvmSysErr = -14
PvmNoBuf = -15
PvmNoSuchBuf = -16
PvmNullGroup = -17
PvmDupGroup = -18
PvmNoGroup = -19
PvmNotInGroup = -20
PvmNoInst = -21
PvmHostFail = -22
PvmNoParent = -23
PvmNotImpl = -24
PvmDSysErr = -25
PvmBadVersion = -26
PvmOutOfRes = -27
PvmDupHost = -28
PvmCantStart = -29
PvmAlready = -30
PvmNoTask = -31
PvmNotFound = -32
PvmExists = -33
PvmHostrFMaster = -34
PvmParentNotSet = -35
PvmIPLoopback = -36

MESSAGES: dict[int, str] = {
    PvmOk: "Ok",
    PvmBadParam: "Bad parameter",
    PvmMismatch: "Parameter mismatch",
    PvmOverflow: "Value too large",
    PvmNoData: "End of buffer",
    PvmNoHost: "No such host",
    PvmNoFile: "No such file",
    PvmDenied: "Permission denied",
    PvmNoMem: "Malloc failed",
    PvmBadMsg: "Can't decode message",
    PvmSysErr: "Can't contact local daemon",
    PvmNoBuf: "No current buffer",
    PvmNoSuchBuf: "No such buffer",
    PvmNullGroup: "Null group name",
    PvmDupGroup: "Already in group",
    PvmNoGroup: "No such group",
    PvmNotInGroup: "Not in group",
    PvmNoInst: "No such instance",
    PvmHostFail: "Host failed",
    PvmNoParent: "No parent task",
    PvmNotImpl: "Not implemented",
    PvmDSysErr: "Pvmd system error",
    PvmBadVersion: "Version mismatch",
    PvmOutOfRes: "Out of resources",
    PvmDupHost: "Duplicate host",
    PvmCantStart: "Can't start pvmd",
    PvmAlready: "Already in progress",
    PvmNoTask: "No such task",
    PvmNotFound: "Not Found",
    PvmExists: "Already Exists",
    PvmHostrFMaster: "Hoster must run on master host",
    PvmParentNotSet: "Spawning parent set PvmNoParent",
    PvmIPLoopback: "Master Host IP Address is Loopback! (See pvm3/Readme)",
}

NAMES: dict[int, str] = {
    v: k for k, v in globals().items() if k.startswith("Pvm") and isinstance(v, int)
}


def strerror(code: int) -> str:
    """PVM's text for an error code (as pvm_perror prints it)."""
    return MESSAGES.get(code, f"Unknown error {code}")


class PvmError(Exception):
    """An error that carries a PVM error code (``.code``) and its name (``.name``)."""

    def __init__(self, code: int, detail: str | None = None):
        self.code = code
        self.name = NAMES.get(code, str(code))
        self.detail = detail
        super().__init__(f"{strerror(code)}: {detail}" if detail else strerror(code))


class PvmTimeout(PvmError):
    """A blocking call ran out of time (PVM had no code for it; it reports PvmNoData)."""

    def __init__(self, detail: str = "timed out"):
        super().__init__(PvmNoData, detail)
        self.args = (f"Timed out: {detail}",)

    def __str__(self) -> str:
        return self.args[0]


class MemoryFull(PvmTimeout):
    """psend found no free pages (or pvm_netd no room for other hosts) before its
    timeout: a PvmTimeout (it timed out) whose code is PvmNoMem (what it waited for),
    as documented for memory full."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.code, self.name = PvmNoMem, "PvmNoMem"

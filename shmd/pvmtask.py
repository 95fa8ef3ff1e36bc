"""PVM's task and virtual-machine calls: pvm_mytid, pvm_parent, pvm_spawn, pvm_exit,
pvm_kill, pvm_config, pvm_tasks, pvm_tidtohost, pvm_perror, pvm_setopt/pvm_getopt.

Tasks are spawned on this host through shmd.spawner (as the console's ``spawn``); the
VM's table comes from this host's pvm_shmd (its ``stat``)."""
from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import NamedTuple

from . import control, spawner, tids
from .errors import (
    PvmBadParam,
    PvmError,
    PvmNoHost,
    PvmNoParent,
    PvmNoTask,
    PvmOk,
    strerror,
)
from .pvmmsg import S

__all__ = ["PvmTaskDefault", "PvmTaskHost", "PvmTaskArch", "PvmTaskDebug", "PvmTaskTrace", "PvmMppFront",
           "PvmHostCompl", "PvmNoSpawnParent", "PvmRoute", "PvmDebugMask", "PvmAutoErr", "PvmOutputTid",
           "PvmOutputCode", "PvmTraceTid", "PvmTraceCode", "PvmFragSize", "PvmResvTids", "PvmSelfOutputTid",
           "PvmSelfOutputCode", "PvmSelfTraceTid", "PvmSelfTraceCode", "PvmShowTids", "PvmPollType",
           "PvmPollTime", "PvmOutputContext", "PvmTraceContext", "PvmSelfOutputContext",
           "PvmSelfTraceContext", "PvmNoReset", "PvmDontRoute", "PvmAllowDirect", "PvmRouteDirect",
           "PvmHostInfo", "PvmTaskInfo", "pvm_mytid", "pvm_parent", "pvm_spawn", "pvm_exit", "pvm_kill",
           "pvm_config", "pvm_tasks", "pvm_tidtohost", "pvm_perror", "pvm_setopt", "pvm_getopt",
           "pvm_version", "pvm_archcode", "pvm_sendsig", "pvm_pstat", "pvm_mstat"]

# pvm_spawn flags (pvm3.h)
PvmTaskDefault, PvmTaskHost, PvmTaskArch, PvmTaskDebug, PvmTaskTrace = 0, 1, 2, 4, 8
PvmMppFront, PvmHostCompl, PvmNoSpawnParent = 16, 32, 64

# pvm_setopt options (pvm3.h) and PvmRoute's values
(PvmRoute, PvmDebugMask, PvmAutoErr, PvmOutputTid, PvmOutputCode, PvmTraceTid, PvmTraceCode,
 PvmFragSize, PvmResvTids, PvmSelfOutputTid, PvmSelfOutputCode, PvmSelfTraceTid, PvmSelfTraceCode,
 PvmShowTids, PvmPollType, PvmPollTime, PvmOutputContext, PvmTraceContext, PvmSelfOutputContext,
 PvmSelfTraceContext, PvmNoReset) = range(1, 22)
PvmDontRoute, PvmAllowDirect, PvmRouteDirect = 1, 2, 3

#: Options and their defaults. All are kept and returned; none changes how messages
#: travel (psend chooses its own path; errors are always raised). docs/pvm-api.md.
OPTIONS = {PvmRoute: PvmAllowDirect, PvmDebugMask: 0, PvmAutoErr: 1, PvmOutputTid: 0, PvmOutputCode: 0,
           PvmTraceTid: 0, PvmTraceCode: 0, PvmFragSize: 4096, PvmResvTids: 0, PvmSelfOutputTid: 0,
           PvmSelfOutputCode: 0, PvmSelfTraceTid: 0, PvmSelfTraceCode: 0, PvmShowTids: 1,
           PvmPollType: 0, PvmPollTime: 0, PvmOutputContext: 0, PvmTraceContext: 0,
           PvmSelfOutputContext: 0, PvmSelfTraceContext: 0, PvmNoReset: 0}

ARCH = spawner.ARCH
SPEED = 1000


class PvmHostInfo(NamedTuple):
    """One host of pvm_config (struct pvmhostinfo)."""

    hi_tid: int
    hi_name: str
    hi_arch: str
    hi_speed: int
    hi_dsig: int


class PvmTaskInfo(NamedTuple):
    """One task of pvm_tasks (struct pvmtaskinfo)."""

    ti_tid: int
    ti_ptid: int
    ti_host: int
    ti_flag: int
    ti_a_out: str
    ti_pid: int


_children: list[int] = []  # pids of the tasks we spawned (our children: reaped as they end)


def _reap() -> None:
    for pid in list(_children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _children.remove(pid)


def pvm_mytid() -> int:
    """This process's tid, enrolling it with the host's pvm_shmd on first use."""
    return S.me().tid


def pvm_parent() -> int:
    """The tid of the task that spawned us (the console's for ``spawn`` from it);
    PvmError(PvmNoParent) if we were not spawned."""
    S.me()
    try:
        ptid = int(os.environ.get("PVM_PARENT", "0"), 16)
    except ValueError:
        ptid = 0
    if ptid <= 0:
        raise PvmError(PvmNoParent, "this task was not spawned")
    return ptid


def pvm_exit() -> int:
    """Leave the virtual machine: buffers freed, messages still queued to us dropped."""
    t = S.task
    S.reset()
    if t is not None:
        t.leave()
    _reap()
    return PvmOk


def _hostname() -> str:
    import socket

    return socket.gethostname()


def pvm_spawn(task: str, argv: Sequence[str] | None = None, flag: int = PvmTaskDefault, where: str = "",
              ntask: int = 1) -> list[int]:
    """Start *ntask* copies of *task* with arguments *argv*; return one entry per copy:
    its tid, or a negative PVM error code (as PVM fills tids[]; numt is the count of
    tids > 0). On this host: PvmTaskHost with another host's name gives PvmNoHost
    for each copy. The copies' output goes to the host's log ($PVM_TMP/pvml.<uid>),
    as PVM's went to the pvmd's."""
    me = S.me()
    if not isinstance(task, str) or not task:
        raise PvmError(PvmBadParam, f"task {task!r} must be a program name")
    if not isinstance(ntask, int) or ntask < 1:
        raise PvmError(PvmBadParam, f"ntask {ntask!r} must be an int >= 1")
    if not isinstance(flag, int) or flag < 0:
        raise PvmError(PvmBadParam, f"flag {flag!r}")
    if isinstance(argv, (str, bytes)) or not isinstance(argv, (list, tuple, type(None))):
        raise PvmError(PvmBadParam, f"argv {argv!r} must be a list of arguments (or None)")
    args = [str(a) for a in (argv or ())]
    if flag & PvmTaskHost and where and where not in (_hostname(), "."):
        try:
            here = control.request("stat", me.vmid).get("name")
        except PvmError:
            here = None
        if where != here:
            return [PvmNoHost] * ntask
    if flag & PvmTaskArch and where and where != ARCH:
        return [PvmNoHost] * ntask
    ptid = 0 if flag & PvmNoSpawnParent else me.tid
    try:
        out: list = spawner.spawn(task, args, ntask, output="log", vmid=me.vmid, ptid=ptid)
    except PvmError as e:  # the program not found, not runnable, no such directory
        return [e.code] * ntask
    _reap()
    result = []
    for r in out:
        if isinstance(r, PvmError):
            result.append(r.code)
        else:
            result.append(r)
    try:
        pids = {t["tid"]: t["pid"] for t in control.request("stat", me.vmid).get("tasks", [])}
        _children.extend(pids[t] for t in result if t > 0 and t in pids)
    except PvmError:
        pass
    return result


def pvm_kill(tid: int) -> int:
    """Terminate task *tid* (SIGTERM, as PVM's pvmd sent). Not for ourselves: pvm_exit."""
    me = S.me()
    if not isinstance(tid, int) or isinstance(tid, bool) or tid <= 0:
        raise PvmError(PvmBadParam, f"tid {tid!r}")
    if tid == me.tid:
        raise PvmError(PvmBadParam, "pvm_kill of ourselves (use pvm_exit)")
    if tids.host_of(tid) != tids.host_of(me.tid):
        raise PvmError(PvmNoTask, f"t{tid:x} is on another host (not reachable from here yet)")
    (_, err), = spawner.signal_tids(me.vmid, signal.SIGTERM, [tid])
    if err is not None:
        raise err
    _reap()
    return PvmOk


def pvm_config() -> tuple[int, int, list[PvmHostInfo]]:
    """(nhost, narch, hosts) of the virtual machine as this host's daemon knows it."""
    me = S.me()
    st = control.request("stat", me.vmid)
    host = PvmHostInfo(tids.dtid(st.get("host", 1)), st.get("name") or _hostname(), ARCH, SPEED, 0)
    return 1, 1, [host]


def pvm_tasks(where: int = 0) -> tuple[int, list[PvmTaskInfo]]:
    """(ntask, tasks): 0 for every task, a host's daemon tid for its tasks, a task's tid
    for that task alone (PvmNoTask if there is none)."""
    me = S.me()
    if not isinstance(where, int) or where < 0:
        raise PvmError(PvmBadParam, f"where {where!r}")
    out = []
    for t in spawner.tasks(me.vmid):
        tid = t["tid"]
        host = tids.dtid(tids.host_of(tid))
        if where and where != tid and where != host:
            continue
        out.append(PvmTaskInfo(tid, t.get("ptid") or 0, host, t.get("flags", 0), t.get("name", ""),
                               t.get("pid", 0)))
    if where and where != tids.dtid(tids.host_of(where)) and not out:
        raise PvmError(PvmNoTask, f"t{where:x}")
    return len(out), out


def pvm_tidtohost(tid: int) -> int:
    """The daemon tid of the host *tid* runs on."""
    if not isinstance(tid, int) or tid <= 0:
        raise PvmError(PvmBadParam, f"tid {tid!r}")
    return tids.dtid(tids.host_of(tid))


def pvm_perror(msg: str, code: int | None = None, file=None) -> str:
    """PVM's ``libpvm [tid]: msg: text`` line for *code*, returned; also written to
    *file* if one is given (PVM printed it on stderr: pass sys.stderr)."""
    t = S.task
    tid = t.tid if t is not None and not t.closed else 0
    line = f"libpvm [{tids.fmt(tid)}]: {msg}: {strerror(code if code is not None else 0)}"
    if file is not None:
        print(line, file=file)
    return line


def pvm_setopt(what: int, val: int) -> int:
    """Set an option; return its previous value. Kept and read back by pvm_getopt;
    none changes behaviour here (see OPTIONS)."""
    if what not in OPTIONS:
        raise PvmError(PvmBadParam, f"option {what!r}")
    if not isinstance(val, int) or isinstance(val, bool):
        raise PvmError(PvmBadParam, f"value {val!r} of option {what} must be an int")
    if what == PvmRoute and val not in (PvmDontRoute, PvmAllowDirect, PvmRouteDirect):
        raise PvmError(PvmBadParam, f"PvmRoute value {val}")
    old = S.options.get(what, OPTIONS[what])
    S.options[what] = val
    return old


def pvm_getopt(what: int) -> int:
    if what not in OPTIONS:
        raise PvmError(PvmBadParam, f"option {what!r}")
    return S.options.get(what, OPTIONS[what])




def pvm_version() -> str:
    """The PVM version this library follows."""
    return "3.4.6"


def pvm_archcode(arch: str) -> int:
    """The data-format class of an architecture name (PVM's: LINUX64 is 16); 0 unknown."""
    return 16 if arch == ARCH else 0


def pvm_sendsig(tid: int, signum: int) -> int:
    """Send signal *signum* to task *tid* (on this host)."""
    me = S.me()
    if not isinstance(signum, int) or not 0 < signum < signal.NSIG:
        raise PvmError(PvmBadParam, f"signal {signum!r}")
    if not isinstance(tid, int) or tid <= 0:
        raise PvmError(PvmBadParam, f"tid {tid!r}")
    (_, err), = spawner.signal_tids(me.vmid, signum, [tid])
    if err is not None:
        raise err
    return PvmOk


def pvm_pstat(tid: int) -> int:
    """PvmOk if task *tid* is running, else PvmError(PvmNoTask)."""
    from .pvmmsg import live_tids

    me = S.me()
    if not isinstance(tid, int) or tid <= 0:
        raise PvmError(PvmBadParam, f"tid {tid!r}")
    if tid not in live_tids(me):
        raise PvmError(PvmNoTask, f"t{tid:x}")
    return PvmOk


def pvm_mstat(host: str) -> int:
    """PvmOk if *host* is this host (the one host this library reaches), else PvmNoHost."""
    me = S.me()
    if host in (_hostname(), control.request("stat", me.vmid).get("name")):
        return PvmOk
    raise PvmError(PvmNoHost, f"{host!r}")

"""PVM's task and virtual-machine calls: pvm_mytid, pvm_parent, pvm_spawn, pvm_exit,
pvm_kill, pvm_config, pvm_tasks, pvm_tidtohost, pvm_perror, pvm_setopt/pvm_getopt.

On a virtual machine the console started, every host runs a pvm_netd (shmd/netd.py),
which these calls ask (remote.ask): pvm_spawn places copies on any host (its host
spawns them), pvm_config lists every host that is up, pvm_tasks every host's tasks,
pvm_kill and pvm_sendsig reach tasks of other hosts, pvm_notify watches other hosts'
tasks and host deletes and adds. With no pvm_netd (a pvm_shmd started by hand) they
see this host alone: copies are spawned here through shmd.spawner, the table comes
from this host's pvm_shmd (its ``stat``)."""
from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import NamedTuple

from . import control, remote, spawner, tids
from .errors import (
    PvmBadParam,
    PvmError,
    PvmNoHost,
    PvmNoParent,
    PvmNoTask,
    PvmOk,
    strerror,
)
from .pvmmsg import PvmHostAdd, PvmNotifyCancel, S
from .spawner import (  # noqa: F401  (pvm3.h's spawn flags, exported below)
    PvmHostCompl,
    PvmMppFront,
    PvmNoSpawnParent,
    PvmTaskArch,
    PvmTaskDebug,
    PvmTaskDefault,
    PvmTaskHost,
    PvmTaskTrace,
)

__all__ = ["PvmTaskDefault", "PvmTaskHost", "PvmTaskArch", "PvmTaskDebug", "PvmTaskTrace", "PvmMppFront",
           "PvmHostCompl", "PvmNoSpawnParent", "PvmRoute", "PvmDebugMask", "PvmAutoErr", "PvmOutputTid",
           "PvmOutputCode", "PvmTraceTid", "PvmTraceCode", "PvmFragSize", "PvmResvTids", "PvmSelfOutputTid",
           "PvmSelfOutputCode", "PvmSelfTraceTid", "PvmSelfTraceCode", "PvmShowTids", "PvmPollType",
           "PvmPollTime", "PvmOutputContext", "PvmTraceContext", "PvmSelfOutputContext",
           "PvmSelfTraceContext", "PvmNoReset", "PvmDontRoute", "PvmAllowDirect", "PvmRouteDirect",
           "PvmHostInfo", "PvmTaskInfo", "pvm_mytid", "pvm_parent", "pvm_spawn", "pvm_exit", "pvm_kill",
           "pvm_config", "pvm_tasks", "pvm_tidtohost", "pvm_perror", "pvm_setopt", "pvm_getopt",
           "pvm_version", "pvm_archcode", "pvm_sendsig", "pvm_pstat", "pvm_mstat"]

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


def _netd(op: str, args: dict[str, object], timeout: float = remote.ASK_TIMEOUT) -> object:
    """This host's pvm_netd's answer to *op*; None if there is none (a daemon started
    by hand: this host alone)."""
    me = S.me()
    try:
        remote.route(me.vmid)
    except PvmError:
        return None
    return remote.ask(me, op, timeout, **args)


def exported_env() -> dict[str, str]:
    """The variables PVM_EXPORT names (colon-separated), for copies on any host (as PVM)."""
    names = [n for n in os.environ.get("PVM_EXPORT", "").split(":") if n]
    env = {n: os.environ[n] for n in names if n in os.environ}
    if env:
        env["PVM_EXPORT"] = ":".join(names)
    return env


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
    tids > 0). *flag* PvmTaskHost: on the host named *where* ("." is ours); PvmTaskArch:
    on hosts of architecture *where*; with PvmHostCompl: on every other; else round
    robin over every host of the VM (pvm_netd places them; with none, this host
    alone, and another host's name gives PvmNoHost). Each copy's parent is us (PvmNoSpawnParent:
    none); the program is looked for on its host's ep= path. Its output goes to its
    host's log ($PVM_TMP/pvml.<uid>), as PVM's went to the pvmd's."""
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
    if not isinstance(where, str):
        raise PvmError(PvmBadParam, f"where {where!r} must be a host name or an architecture")
    ptid = 0 if flag & PvmNoSpawnParent else me.tid
    got = _netd("spawn", {"prog": task, "args": args, "count": ntask, "flag": flag, "where": where, "ptid": ptid,
                          "env": exported_env()}, remote.SPAWN_TIMEOUT)
    if isinstance(got, list):
        return [c if isinstance(c := spawner.copy_result(r), int) else c.code for r in got]
    if flag & PvmTaskHost and where and where not in (_hostname(), "."):
        try:
            here = control.request("stat", me.vmid).get("name")
        except PvmError:
            here = None
        if where != here:
            return [PvmNoHost] * ntask
    if flag & PvmTaskArch and where and where != ARCH:
        return [PvmNoHost] * ntask
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
    _signal(me, signal.SIGTERM, tid)
    _reap()
    return PvmOk


def _signal(me, signum: int, tid: int) -> None:
    """*signum* to task *tid* of any host (another host's through pvm_netd)."""
    if tids.host_of(tid) != tids.host_of(me.tid):
        got = _netd("signal", {"signum": signum, "tids": [tid]})
        if not isinstance(got, list) or len(got) != 1:
            raise PvmError(PvmNoTask, f"t{tid:x} is on another host (no pvm_netd here to reach it)")
        code, why = int(got[0][1]), str(got[0][2])
        if code:
            raise PvmError(code, why or None)
        return
    (_, err), = spawner.signal_tids(me.vmid, signum, [tid])
    if err is not None:
        raise err


def pvm_config() -> tuple[int, int, list[PvmHostInfo]]:
    """(nhost, narch, hosts) of the virtual machine: every host that is up (as this
    host's pvm_netd counts them; with none, this host alone)."""
    me = S.me()
    got = _netd("config", {})
    if isinstance(got, dict):
        hosts = [PvmHostInfo(tids.dtid(h["host"]), h["name"], h["arch"], h["speed"], h["dsig"]) for h in got["up"]]
        return len(hosts), len({h.hi_arch for h in hosts}), hosts
    st = control.request("stat", me.vmid)
    host = PvmHostInfo(tids.dtid(st.get("host", 1)), st.get("name") or _hostname(), ARCH, SPEED, 0)
    return 1, 1, [host]


def pvm_tasks(where: int = 0) -> tuple[int, list[PvmTaskInfo]]:
    """(ntask, tasks): 0 for every task, a host's daemon tid for its tasks, a task's tid
    for that task alone (PvmNoTask if there is none)."""
    me = S.me()
    if not isinstance(where, int) or isinstance(where, bool) or where < 0:
        raise PvmError(PvmBadParam, f"where {where!r}")
    mine = where and tids.host_of(where) == tids.host_of(me.tid)
    got = None if mine else _netd("tasks", {"all": True})
    table = got if isinstance(got, list) else spawner.tasks(me.vmid)
    out = []
    for t in table:
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
    _signal(me, signum, tid)
    return PvmOk


def pvm_pstat(tid: int) -> int:
    """PvmOk if task *tid* (of any host) is running, else PvmError(PvmNoTask)."""
    from .pvmmsg import live_tids

    me = S.me()
    if not isinstance(tid, int) or tid <= 0:
        raise PvmError(PvmBadParam, f"tid {tid!r}")
    if tids.host_of(tid) != tids.host_of(me.tid):
        pvm_tasks(tid)  # (another host's, through pvm_netd: PvmNoTask if it is not there)
        return PvmOk
    if tid not in live_tids(me):
        raise PvmError(PvmNoTask, f"t{tid:x}")
    return PvmOk


def pvm_mstat(host: str) -> int:
    """PvmOk if *host* is a host of the virtual machine that is up, else PvmNoHost."""
    me = S.me()
    got = _netd("config", {})
    names = [h["name"] for h in got["up"]] if isinstance(got, dict) else [control.request("stat", me.vmid).get("name")]
    if host in names or host == _hostname():
        return PvmOk
    raise PvmError(PvmNoHost, f"{host!r}")


def notify_far(what: int, msgtag: int, tids_or_count: object) -> int:
    """pvm_notify's part pvm_netd keeps (pvmmsg.pvm_notify hands it over): PvmTaskExit
    of tasks of other hosts, PvmHostDelete of hosts (their dtids), PvmHostAdd
    (*tids_or_count*: how many times; -1 for ever, 0 stops). Delivered as ordinary
    messages with *msgtag* from the daemon's tid: the exited tid, the deleted host's
    dtid, or a count and the added dtids, packed as ints. With no pvm_netd (a daemon
    started by hand, this host alone) accepted and never fired."""
    base = what & ~PvmNotifyCancel
    args: dict[str, object] = {"what": base, "tag": msgtag, "cancel": bool(what & PvmNotifyCancel)}
    if base == PvmHostAdd:
        args["count"] = tids_or_count if isinstance(tids_or_count, int) and not isinstance(tids_or_count, bool) else -1
    else:
        ts = list(tids_or_count) if not isinstance(tids_or_count, (str, bytes)) else None  # type: ignore[call-overload]
        if ts is None or not all(isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in ts):
            raise PvmError(PvmBadParam, f"tids {tids_or_count!r} must be a list of tids")
        args["tids"] = ts
    _netd("notify", args)
    return PvmOk

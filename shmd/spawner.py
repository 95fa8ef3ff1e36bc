"""pvm_spawn: start tasks on this host, enrolled with its pvm_shmd; list and signal them.

The console runs this program on a host (directly, or over SSH) for `spawn`, `ps`,
`kill`, `sig`, `reset` and `halt`; a task can call :func:`spawn` to start tasks on
its own host. Each copy is forked, enrolled with the daemon (a ``join`` carrying the
child's pid, so the tid is in this host's range before the program runs), and only
then exec'd with ``PVM_MYTID``/``PVM_PARENT``/``PVM_VMID`` set; its own
``shmd.join()`` adopts the slot. A copy that dies is reaped by the daemon like any task.

    pvm_spawn [-vmid=ID] [--count=N] [--ep=PATH] [--wd=DIR] [--ptid=HEX] [--relay] -- PROG [ARG ...]
    pvm_spawn --tasks  [-vmid=ID]                  tasks as JSON (the daemon's table + ptid, flags)
    pvm_spawn --signal=N [-vmid=ID] TID ...        signal tasks by tid (hex, optional 't')
    pvm_spawn --kill [--grace=S] [-vmid=ID] PID ... TERM, then KILL after S seconds (reset/halt)

Spawn output, one line each on stdout:

    tid <hex>            a copy started as this task
    err <code> <text>    a copy could not be started (PVM error code, negative)
    spawned              end of the results
    out <hex> <text>     (--relay) a line the task wrote (stdout and stderr together)
    eof <hex>            (--relay) the task closed its output
    done                 (--relay) every task's output has ended

Without ``--relay`` tasks write to the host's log ($PVM_TMP/pvml.<uid>[.<vmid>]), as
PVM's tasks wrote to the pvmd log, and pvm_spawn exits as soon as all are started.
A program is searched on ``--ep`` (a colon list; default ``~/pvm3/bin/LINUX64`` then
``$PATH``) unless it contains a ``/``; relative names are taken from the working
directory (``--wd``, default ``$HOME``). A ``.py`` program is run by the Python that
runs pvm_spawn (the project's virtual environment), so it can import shmd and numpy.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import selectors
import signal
import sys
import time
from collections.abc import Sequence

from . import control, hostenv, layout, paths, private
from .errors import PvmBadParam, PvmDenied, PvmError, PvmNoFile, PvmNoTask, PvmSysErr, strerror
from .exits import SpawnExit
from .tids import CONSOLE_TID
from .tids import parse as parse_tid

ARCH = "LINUX64"
# pvm_spawn's flags (pvm3.h): shmd.pvmtask's, and pvm_netd's placement
PvmTaskDefault, PvmTaskHost, PvmTaskArch, PvmTaskDebug, PvmTaskTrace = 0, 1, 2, 4, 8
PvmMppFront, PvmHostCompl, PvmNoSpawnParent = 16, 32, 64
DEFAULT_EP = f"~/pvm3/bin/{ARCH}"
KILL_GRACE = 2.0
MAX_LINE = 65536
ENROLL_TIMEOUT = 10.0
COMPACT_BYTES = 32 << 10  # the spawn registry is rewritten with the live records past this size

# ps FLAG bits (PVM's TF_*)
F_SPAWNED = 0x2  # "f": child of pvmd
F_CONNECTED = 0x4  # "c": joined by itself


class Copy:
    """One started copy: its tid, pid and (with relay) the read end of its output."""

    def __init__(self, tid: int, pid: int, fd: int | None):
        self.tid, self.pid, self.fd = tid, pid, fd


# ---- program lookup ---------------------------------------------------------------------
def default_wd() -> str:
    return os.path.expanduser("~")


def search_path(ep: str | None) -> list[str]:
    if ep is None:
        ep = DEFAULT_EP + ":" + os.environ.get("PATH", "")
    # each directory as the host's pvmd saw it: $NAME from this host's environment
    return [hostenv.expand_path(d) or "." for d in ep.split(":")]


def resolve(prog: str, ep: str | None, wd: str) -> list[str]:
    """The argv prefix that runs *prog*: ``[path]``, or ``[python, path]`` for a .py.
    PvmError(PvmNoFile) when it is not found, PvmDenied when it can't be run."""
    if not prog:
        raise PvmError(PvmBadParam, "empty program name")
    if "/" in prog:
        cands = [os.path.join(wd, os.path.expanduser(prog))]
    else:
        cands = [os.path.join(wd, d, prog) for d in search_path(ep)]
    found = None
    for c in cands:
        if os.path.isfile(c):
            found = c
            break
    if found is None:
        where = cands[0] if "/" in prog else f"path {ep if ep is not None else DEFAULT_EP + ':$PATH'}"
        raise PvmError(PvmNoFile, f"{prog} not found ({where})")
    if found.endswith(".py"):
        if not os.access(found, os.R_OK):
            raise PvmError(PvmDenied, f"{found} is not readable")
        return [sys.executable, os.path.abspath(found)]
    if not os.access(found, os.X_OK):
        raise PvmError(PvmDenied, f"{found} is not executable")
    return [os.path.abspath(found)]


# ---- the spawn registry: who spawned which tid (for ps -l's PTID and kill -c) -------------
def registry_path(vmid: str) -> str:
    """The spawn registry of *vmid* (private; its directory checked once per process)."""
    return paths.tmpfile_once("pvmspawn", vmid)


def _parse_registry(text: str) -> dict[int, dict]:
    out = {}
    for line in text.splitlines():
        try:
            r = json.loads(line)
            out[int(r["tid"])] = r
        except (ValueError, KeyError, TypeError, RecursionError):
            continue
    return out


# path -> ((inode, mtime, size), its records): read again only once it changed (a
# pvm_netd reads it for every ps; spawns append to it)
_registries: dict[str, tuple[tuple[int, int, int], dict[int, dict]]] = {}


def load_registry(vmid: str) -> dict[int, dict]:
    """The spawn registry's records by tid (not to be changed: the same dict is given
    again while the file is the same)."""
    path = registry_path(vmid)
    try:
        fd = private.open_file(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return {}
    except (OSError, PvmError):
        return {}  # ps -l then shows no PTID: not worth failing for
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        kept = _registries.get(path)
        if kept is not None and kept[0] == key:
            return kept[1]
        data = f.read(private.READ_LIMIT + 1)
    if len(data) > private.READ_LIMIT:
        return {}
    reg = _parse_registry(data.decode("utf-8", errors="replace"))
    _registries[path] = (key, reg)
    return reg


def record(vmid: str, entries: Sequence[dict]) -> None:
    """Add *entries*: a line each, appended (a later line for a tid wins). Once the file
    holds COMPACT_BYTES or more, it is rewritten with the records of tids still in the
    daemon's table (a stale one misleads nobody: a record counts only for the pid it
    names, tasks()). Rewriting it at every spawn cost a pvm_netd up to a millisecond of
    CPU a spawn, most of a copy's share on a lab's shared CPUs."""
    path = registry_path(vmid)
    try:
        fd = private.open_file(path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
    except (OSError, PvmError):
        return  # ps -l then shows no PTID: not worth failing a spawn for
    with os.fdopen(fd, "r+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        lines = "".join(json.dumps(e) + "\n" for e in entries)
        if os.fstat(f.fileno()).st_size < COMPACT_BYTES:
            f.write(lines)
            return
        f.seek(0)
        keep = _parse_registry(f.read(private.READ_LIMIT))
        try:
            live = live_tids(vmid)
            keep = {t: r for t, r in keep.items() if t in live}
        except PvmError:
            pass
        f.truncate(0)  # (O_APPEND: what follows goes at the new end)
        f.write("".join(json.dumps(r) + "\n" for r in keep.values()) + lines)


def tasks(vmid: str, buf: memoryview | None = None) -> list[dict]:
    """The task table with each task's ptid (None if not spawned) and flags, read from
    segment 0 (*buf*, else attached and checked here): no request to pvm_shmd, which
    would build its whole state for it (0.6-0.8 ms a host, against 0.1). A slot that
    changes while it is read (a task leaving, another joining) is left out."""
    seg = None
    if buf is None:
        seg, buf = control.attach_seg0(vmid)
    words = None
    try:
        words = buf.cast("I")
        host = layout.header(buf)["host"]
        rows = []
        # only the slots in use are looked at further (a loop over all 128 cost ps -a
        # 50-100 us on each host)
        for i in layout.used_slots(words):
            if words[layout.slot_i(i) + layout.T_STATE_I] != layout.ACTIVE:
                continue
            t = layout.slot(buf, i)
            tid = t["tid"]
            row = layout.task_row(t)
            if t["tid"] == tid == row["tid"]:  # (still that task's slot, read after the rest)
                rows.append(row)
    finally:
        if words is not None:
            words.release()
        if seg is not None:
            buf.release()
            seg.detach()
    reg = load_registry(vmid)
    out = []
    for row in rows:
        r = reg.get(row["tid"])
        spawned = r is not None and r.get("pid") == row["pid"]
        flags = (F_SPAWNED if spawned else 0) | (F_CONNECTED if row["connected"] else 0)
        out.append({**row, "ptid": r.get("ptid") if r is not None and spawned else None,
                    "flags": flags, "host": host})
    return out


# ---- starting copies ----------------------------------------------------------------------
def _child(argv: list[str], env: dict, wd: str, go: int, exec_err: int, out: int | None) -> None:
    """In the forked child: wait for the tid, set up, exec. Never returns."""
    try:
        os.setsid()  # its own session: the console's Ctrl-C, a closed ssh channel don't reach it
        data = b""
        while True:
            chunk = os.read(go, 64)
            if not chunk:
                break
            data += chunk
        if not data:  # the spawner could not enroll it
            os._exit(0)
        env = dict(env, PVM_MYTID=data.decode().strip())
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        if out is not None:
            os.dup2(out, 1)
            os.dup2(out, 2)
        for s in (signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        os.chdir(wd)
        os.closerange(3, exec_err)
        os.closerange(exec_err + 1, 65536)
        os.execve(argv[0], argv, env)
    except OSError as e:
        try:
            os.write(exec_err, f"{e.errno} {e.strerror}".encode())
        except OSError:
            pass
    except BaseException:
        pass
    os._exit(127)


_EXEC_ERRORS = {errno.ENOENT: PvmNoFile, errno.EACCES: PvmDenied, errno.ENOTDIR: PvmNoFile,
                errno.ENOEXEC: PvmDenied, errno.EPERM: PvmDenied}


def start_copies(prog: str, args: Sequence[str], count: int, *, vmid: str, ep: str | None,
                 wd: str | None, ptid: int, output: str, env: dict[str, str] | None = None) -> list[Copy | PvmError]:
    """Start *count* copies; *output* is "relay" (a pipe each), "log" or "inherit";
    *env*: variables for the copies beyond ours (the spawner's PVM_EXPORT ones)."""
    if count < 1:
        raise PvmError(PvmBadParam, f"count {count} must be at least 1")
    wd = hostenv.expand_path(wd) if wd else default_wd()
    if not os.path.isdir(wd):
        raise PvmError(PvmNoFile, f"no directory {wd}")
    argv = resolve(prog, ep, wd) + list(args)
    name = os.path.basename(prog)[:31]
    sock = control.daemon_info(vmid)["sock"]
    env = {**os.environ, **(env or {}), "PVM_VMID": vmid, "PVM_PARENT": f"{ptid:x}"}
    log_fd = None
    if output == "log":
        log_fd = private.open_file(paths.tmpfile_once(paths.LOG_STEM, vmid), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    results: list[Copy | PvmError] = []
    try:
        for _ in range(count):
            results.append(_start_one(argv, env, wd, name, sock, output, log_fd))
    finally:
        if log_fd is not None:
            os.close(log_fd)
    started = [c for c in results if isinstance(c, Copy)]
    if started:
        record(vmid, [{"tid": c.tid, "pid": c.pid, "ptid": ptid} for c in started])
    return results


def live_tids(vmid: str) -> set[int]:
    """The tids joined to the daemon now, read from segment 0's task table (no request)."""
    shm, buf = control.attach_seg0(vmid)
    m32 = buf.cast("i")
    try:
        return layout.tids_in(m32)
    finally:
        m32.release()
        buf.release()
        shm.detach()


def _start_one(argv, env, wd, name, sock, output, log_fd) -> Copy | PvmError:
    go_r, go_w = os.pipe()
    ex_r, ex_w = os.pipe2(os.O_CLOEXEC)
    out_r = out_w = None
    if output == "relay":
        out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        os.close(ex_r)
        if out_r is not None:
            os.close(out_r)
        _child(argv, env, wd, go_r, ex_w, out_w if out_w is not None else log_fd)
    os.close(go_r)
    os.close(ex_w)
    if out_w is not None:
        os.close(out_w)
    try:  # (one join per connection: the daemon ties a connection to the task it enrolled)
        conn = control.Connection(sock, timeout=ENROLL_TIMEOUT)
        try:
            tid = conn.request("join", pid=pid, name=name)["tid"]
        finally:
            conn.close()
    except PvmError as e:
        os.close(go_w)  # EOF without a tid: the child exits
        os.close(ex_r)
        if out_r is not None:
            os.close(out_r)
        os.waitpid(pid, 0)
        return e
    os.write(go_w, f"{tid:x}".encode())
    os.close(go_w)
    err = b""
    while True:  # EOF once the exec succeeded (close-on-exec), else the error
        chunk = os.read(ex_r, 256)
        if not chunk:
            break
        err += chunk
    os.close(ex_r)
    if err:
        os.waitpid(pid, 0)  # the daemon reaps its slot: the pid is gone
        if out_r is not None:
            os.close(out_r)
        code, _, text = err.decode(errors="replace").partition(" ")
        return PvmError(_EXEC_ERRORS.get(int(code) if code.isdigit() else 0, PvmSysErr),
                        f"{argv[0]}: {text}")
    return Copy(tid, pid, out_r)


def spawn(prog: str, args: Sequence[str] = (), count: int = 1, *, ep: str | None = None,
          wd: str | None = None, output: str = "inherit", vmid: str | None = None,
          ptid: int | None = None, host: str | None = None, arch: str | None = None) -> list[int | PvmError]:
    """For tasks: start *count* copies of *prog* on this host (pvm_spawn's library form).

    Returns one entry per copy: its tid, or the PvmError saying why it failed. The
    copies write to our stdout/stderr (``output="inherit"``) or the host's log
    (``"log"``). They are our children: reap them (``os.wait()``) when they end; the
    daemon counts a zombie as dead either way.

    With *host* (a host's name, ``"."`` ours, ``"*"`` round robin over every host) or
    *arch* (the hosts of that architecture) the copies are placed and started by the
    hosts' pvm_netd, as ``shmd.pvm.pvm_spawn`` does (the calling task, joined, their
    parent; their hosts' ``ep=``/``wd=``; output to their hosts' logs; not our
    children): *ep*, *wd* and *output* do not apply."""
    if host is not None or arch is not None:
        return _spawn_anywhere(prog, args, count, host, arch, ptid)
    vmid = paths.current_vmid(vmid)
    if ptid is None:
        ptid = int(os.environ.get("PVM_MYTID", "0"), 16)
    out = start_copies(prog, args, count, vmid=vmid, ep=ep, wd=wd, ptid=ptid, output=output)
    return [c.tid if isinstance(c, Copy) else c for c in out]


def _spawn_anywhere(prog: str, args: Sequence[str], count: int, host: str | None, arch: str | None,
                    ptid: int | None) -> list[int | PvmError]:
    """spawn's copies on other hosts: through this host's pvm_netd (remote.ask)."""
    from . import remote
    from .task import current, join

    me = current() or join()
    flag = PvmTaskDefault if host == "*" else PvmTaskHost if host is not None else PvmTaskArch
    where = "" if host == "*" else host if host is not None else arch
    got = remote.ask(me, "spawn", remote.SPAWN_TIMEOUT, prog=prog, args=[str(a) for a in args], count=count,
                     flag=flag, where=where, ptid=me.tid if ptid is None else ptid)
    if not isinstance(got, list) or len(got) != count:
        raise PvmError(PvmSysErr, "pvm_netd: unreadable answer to spawn")
    return [copy_result(r) for r in got]


def copy_result(r: object) -> int | PvmError:
    """One copy in pvm_netd's answer to a spawn: its tid, or [code, why] as a PvmError."""
    if isinstance(r, int):
        return r
    if isinstance(r, list) and len(r) == 2 and isinstance(r[0], int):
        return PvmError(r[0], str(r[1]) or None)
    return PvmError(PvmSysErr, f"pvm_netd: unreadable copy {str(r)[:40]!r} in the answer to spawn")


# ---- relaying output ----------------------------------------------------------------------
class Sink:
    """Our stdout; once the reader went away (console quit, ssh channel closed) writes are
    dropped so the tasks' output is still drained and they never block."""

    def __init__(self, f=None):
        self.f = f or sys.stdout.buffer
        self.broken = False

    def line(self, text: str) -> None:
        if self.broken:
            return
        try:
            self.f.write(text.encode(errors="replace") + b"\n")
            self.f.flush()
        except OSError:
            self.broken = True


def relay(copies: Sequence[Copy], sink: Sink) -> None:
    """Pass the copies' output lines on, tagged with their tid, until every one ended."""
    sel = selectors.DefaultSelector()
    bufs: dict[int, bytes] = {}
    for c in copies:
        if c.fd is not None:
            sel.register(c.fd, selectors.EVENT_READ, c)
            bufs[c.fd] = b""
    while bufs:
        for key, _ in sel.select(1.0):
            c, fd = key.data, key.fd
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            buf = bufs[fd] + data
            *lines, rest = buf.split(b"\n")
            while len(rest) > MAX_LINE:  # a line without end: pass it on in pieces
                lines.append(rest[:MAX_LINE])
                rest = rest[MAX_LINE:]
            for ln in lines:
                sink.line(f"out {c.tid:x} {ln.decode(errors='replace')}")
            if data:
                bufs[fd] = rest
                continue
            if rest:
                sink.line(f"out {c.tid:x} {rest.decode(errors='replace')}")
            sink.line(f"eof {c.tid:x}")
            sel.unregister(fd)
            os.close(fd)
            del bufs[fd]
        reap_children()
    sink.line("done")


def reap_children() -> None:
    """Reap every child of ours that has ended (without waiting)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# ---- signals ------------------------------------------------------------------------------
def signal_tids(vmid: str, signum: int, tids: Sequence[int]) -> list[tuple[int, PvmError | None]]:
    table = {t["tid"]: t for t in control.request("stat", vmid).get("tasks", [])}
    out: list[tuple[int, PvmError | None]] = []
    for tid in tids:
        t = table.get(tid)
        if t is None:
            out.append((tid, PvmError(PvmNoTask, f"t{tid:x}")))
            continue
        try:
            os.kill(t["pid"], signum)
            out.append((tid, None))
        except ProcessLookupError:
            out.append((tid, PvmError(PvmNoTask, f"t{tid:x} exited")))
        except PermissionError:
            out.append((tid, PvmError(PvmDenied, f"t{tid:x} (pid {t['pid']})")))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2:][:1] not in (b"Z", b"X")


def kill_pids(pids: Sequence[int], grace: float = KILL_GRACE) -> list[int]:
    """TERM each pid (the whole process group of a task we spawned: its children go too),
    KILL what is left after *grace* seconds. Returns the pids that survived even that."""
    def send(pid: int, sig: int) -> None:
        try:
            if os.getsid(pid) == pid:  # a task pvm_spawn started (setsid): its group
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except OSError:
            pass

    pids = [p for p in pids if p > 1 and p != os.getpid()]
    for p in pids:
        send(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.02)
    left = [p for p in pids if _alive(p)]
    for p in left:
        send(p, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(_alive(p) for p in left):
        time.sleep(0.02)
    return [p for p in left if _alive(p)]


# ---- command line -----------------------------------------------------------------------------
def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def err_line(e: PvmError) -> str:
    detail = " ".join((e.detail or "").split())
    return f"err {e.code} {strerror(e.code)}" + (f" ({detail})" if detail else "")


def parse_err_line(line: str) -> PvmError:
    """The PvmError of an ``err <code> <text> (<detail>)`` line."""
    parts = line.split(" ", 2)
    try:
        code = int(parts[1])
    except (IndexError, ValueError):
        return PvmError(PvmSysErr, line)
    rest = parts[2] if len(parts) > 2 else ""
    detail = rest[len(strerror(code)):].strip() if rest.startswith(strerror(code)) else rest
    if detail.startswith("(") and detail.endswith(")"):
        detail = detail[1:-1]
    return PvmError(code, detail or None)


def main(argv: list[str] | None = None) -> int:
    import argparse  # (here: pvm_shmd -net= imports this module, and starts faster without it)

    ap = argparse.ArgumentParser(prog="pvm_spawn", description=__doc__.splitlines()[0])
    ap.add_argument("-vmid", "--vmid", default=None)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--ep", default=None)
    ap.add_argument("--wd", default=None)
    ap.add_argument("--ptid", default=f"{CONSOLE_TID:x}")
    ap.add_argument("--relay", action="store_true")
    ap.add_argument("--tasks", action="store_true")
    ap.add_argument("--signal", type=int, default=None)
    ap.add_argument("--kill", action="store_true")
    ap.add_argument("--grace", type=float, default=KILL_GRACE)
    ap.add_argument("words", nargs="*")
    a = ap.parse_args(argv)
    try:
        vmid = paths.current_vmid(a.vmid)
    except ValueError as e:
        print(f"pvm_spawn: {e}", file=sys.stderr)
        return SpawnExit.USAGE
    if a.kill:
        try:
            pids = [int(w) for w in a.words]
        except ValueError:
            print("pvm_spawn: --kill takes pids", file=sys.stderr)
            return SpawnExit.USAGE
        left = kill_pids(pids, a.grace)
        try:
            private.unlink(registry_path(vmid))  # reset/halt: every task is gone
        except (OSError, PvmError):
            pass
        if left:
            print(f"pvm_spawn: still alive after KILL: {left}", file=sys.stderr)
            return SpawnExit.FAILED
        return SpawnExit.OK
    if a.tasks:
        try:
            _say(json.dumps(tasks(vmid)))
        except PvmError as e:
            print(f"pvm_spawn: {e}", file=sys.stderr)
            return SpawnExit.FAILED
        return SpawnExit.OK
    if a.signal is not None:
        try:
            tids = [parse_tid(w) for w in a.words]
            if not 0 < a.signal < signal.NSIG:
                raise PvmError(PvmBadParam, f"bad signal number {a.signal}")
            for tid, err in signal_tids(vmid, a.signal, tids):
                _say(f"ok {tid:x}" if err is None else f"{err_line(err)}")
        except PvmError as e:
            _say(err_line(e))
            return SpawnExit.FAILED
        return SpawnExit.OK
    # spawn
    if not a.words:
        print("pvm_spawn: no program", file=sys.stderr)
        return SpawnExit.USAGE
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        ptid = int(a.ptid, 16)
        copies = start_copies(a.words[0], a.words[1:], a.count, vmid=vmid, ep=a.ep, wd=a.wd,
                              ptid=ptid, output="relay" if a.relay else "log")
    except PvmError as e:
        copies = [e] * max(a.count, 1)
    except ValueError as e:
        copies = [PvmError(PvmBadParam, str(e))] * max(a.count, 1)
    sink = Sink()
    for c in copies:
        sink.line(f"tid {c.tid:x}" if isinstance(c, Copy) else err_line(c))
    sink.line("spawned")
    if a.relay:
        relay([c for c in copies if isinstance(c, Copy)], sink)
    return SpawnExit.OK


if __name__ == "__main__":
    sys.exit(main())

"""The console's handle on one host's pvm_shmd: start, stat, stop, kill tasks.

Everything goes through a Runner (runner.py) running the daemon's own programs,
so a local host and one reached over SSH look the same. :func:`link_for` is the
one place that decides how a host is reached.
"""
from __future__ import annotations

import json
import os
import queue
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from pvmconsole.netlink import ASK_TIMEOUT, NetLink
from pvmconsole.runner import LineStream, LocalRunner, Runner, local_fqdn, local_program
from shmd import handshake, hostenv, tids
from shmd.errors import (
    PvmBadParam,
    PvmCantStart,
    PvmError,
    PvmHostFail,
)
from shmd.exits import DaemonExit, SpawnExit, StatExit, daemon_exit
from shmd.spawner import copy_result, err_line, parse_err_line
from shmd.wire import WIRE

DAEMON = "pvm_shmd"
STAT = "pvm_shmd_stat"
SPAWN = "pvm_spawn"
NETD = "pvm_netd"
ANYWHERE = "0.0.0.0"  # where a host not reached over SSH (the console's own) binds pvm_netd
SPAWN_TIMEOUT = 30.0  # starting pvm_spawn on the host (not the tasks' run time)
KILL_GRACE = 2.0  # reset/halt: TERM, then KILL what is still there after this
START_TIMEOUT = 30.0  # a daemon that is not up by then never will be
#: Seconds to wait for a host's pvm_shmd to start, instead of START_TIMEOUT (tests, slow hosts).
START_TIMEOUT_ENV = "PVM_START_TIMEOUT"
CLEANUP_TIMEOUT = 10.0  # stopping what a timed-out start left
MANUAL_TIMEOUT = 300.0  # so=ms: how long the console waits for the typed response
STAT_TIMEOUT = 10.0
STOP_TIMEOUT = 30.0
SPAWN_ASK_TIMEOUT = 30.0  # pvm_netd's answer to a spawn: every copy enrolled and exec'd
FRESH = 5.0  # a pvm_netd that answered this recently is asked a long request without a look first
#: Extra words for every pvm_shmd the console starts (e.g. "-maxpages=64 -maxsegs=2").
OPTS_ENV = "PVM_SHMD_OPTS"



def _wait_gone(pid: int, timeout: float) -> None:
    """Wait (at most *timeout* s) until process *pid* of this machine has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return  # ended; its parent (not us) reaps it
        except (OSError, IndexError):
            return
        time.sleep(0.005)


def users_tasks(tasks: list) -> list:
    """The tasks of a daemon's table but its pvm_netd (PVM's ps did not show pvmds)."""
    return [t for t in tasks if not (isinstance(t, dict) and isinstance(t.get("tid"), int)
                                     and tids.is_netd(t["tid"]))]


def netd_port(said: str, why: str) -> int:
    """The port in the ready line of a pvm_netd (``netd<PORT> pid<PID> wire<WIRE>``) in
    *said*, a start's output; PvmCantStart with *why* if there is none, or saying so if
    that pvm_netd is of another release (its hosts would not hear each other)."""
    w = handshake.fields(next((ln for ln in said.splitlines() if ln.startswith("netd<")), ""))
    port = w.get("netd")
    if not isinstance(port, str) or not port.isdigit():
        raise PvmError(PvmCantStart, why)
    if w.get("wire") != str(WIRE):
        raise PvmError(PvmCantStart, f"{NETD} of another release (wire {w.get('wire') or 1}, this console's "
                                     f"{WIRE}): every host of a VM needs the same pvm-shmd")
    return int(port)


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def start_timeout() -> float:
    """$PVM_START_TIMEOUT (seconds, > 0) if set, else START_TIMEOUT; PvmBadParam if unusable."""
    word = os.environ.get(START_TIMEOUT_ENV, "").strip()
    if not word:
        return START_TIMEOUT
    try:
        value = float(word)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise PvmError(PvmBadParam, f"{START_TIMEOUT_ENV}={word!r}: use seconds, more than 0 "
                                    "and at most 3600")
    return value


def net_line(keys: Sequence[str], peers: Sequence[Sequence[object]], trusted: bool,
             me: Mapping[str, object]) -> str:
    """What a host's pvm_netd reads on its stdin: the VM's keys, the other hosts'
    [index, address, port, {name, arch, speed, dsig}] and this host's own {name, ep, wd
    and what the console knows of arch, speed, dsig} (shmd.netd.parse_input)."""
    return json.dumps({"public": keys[0], "secret": keys[1], "peers": [list(p) for p in peers],
                       "trusted": trusted, "me": dict(me)})


class HostLink:
    """Runs pvm_shmd / pvm_shmd_stat for one VM on one host."""

    manual = False  # its daemon started by hand (so=ms: ManualLink)

    def __init__(self, runner: Runner, vmid: str, daemon: str, stat: str, wd: str | None = None):
        self.runner = runner
        self.vmid = vmid
        self.daemon = daemon
        self.stat_program = stat
        self.wd = wd  # the hostfile's wd=, as written: the daemon expands and enters it
        #: the open channel to the host's pvm_netd (netlink.py), when it runs: stat and
        #: tasks ask it first, and run the programs only when it does not answer
        self.netd: NetLink | None = None

    @property
    def host(self) -> str:
        return self.runner.host

    def _vm_args(self) -> list[str]:
        return [f"-vmid={self.vmid}"] if self.vmid else []

    def start_argv(self, index: int, name: str, extra: Sequence[str] = ()) -> list[str]:
        """The pvm_shmd command line that starts this host's daemon."""
        wd = [f"-wd={self.wd}"] if self.wd else []
        return [self.daemon, *self._vm_args(), f"-host={index}", f"-name={name}", *wd, *extra,
                *shlex.split(os.environ.get(OPTS_ENV, ""))]

    def start(self, index: int, name: str, extra: Sequence[str] = (),
              net: tuple[str, str] | None = None) -> dict[str, object]:
        """Start the host's daemon; return its parsed handshake line. *net*: (where its
        pvm_netd binds, pvm_netd's stdin line, net_line): pvm_shmd -net= starts pvm_netd
        too, in the same program start; the result's "netd" is then its port, or the
        PvmError saying why it did not start (the daemon runs either way)."""
        argv = self.start_argv(index, name, extra) + ([f"-net={net[0]}"] if net else [])
        timeout = start_timeout()
        r = self.runner.run(argv, timeout=timeout, input=net[1] + "\n" if net else None)
        if r.rc == 124:
            # The runner killed the starter's process group; the daemon it may have forked
            # is in a session of its own, so it is stopped by the VM's own means.
            said = [ln.strip() for ln in r.stderr.splitlines() if ln.strip()]
            why = said[-1] if said else f"{self.daemon} did not start within {timeout:g} s"
            raise PvmError(PvmCantStart, why + self._cleanup())
        if net and r.rc == DaemonExit.USAGE and "unknown option '-net=" in r.stderr:
            return self.start(index, name, extra)  # a pvm_shmd from before -net=: pvm_netd apart
        if r.rc != 0:
            status = daemon_exit(r.rc)
            raise PvmError(status.pvm_code if status is not None else PvmCantStart,
                           _first_line(r.stderr) or f"{self.daemon} exited {r.rc}")
        lines = r.stdout.splitlines()
        try:
            info = handshake.parse(next((ln for ln in lines if ln.startswith("ddpro")), ""))
        except ValueError as e:
            raise PvmError(PvmCantStart, str(e)) from None
        if net:
            try:
                info["netd"] = netd_port(r.stdout, _first_line(r.stderr) or f"{NETD} did not say it was ready")
            except PvmError as e:
                info["netd"] = e
        return info

    def _cleanup(self) -> str:
        """After a timed-out start: stop this VM's daemon on the host if one came up
        (a daemon of this VM that was there before would have refused to start twice,
        quickly: what runs now is ours). A few words for the error message."""
        try:
            r = self.runner.run([self.stat_program, "--stop", *self._vm_args()],
                                timeout=CLEANUP_TIMEOUT)
        except PvmError as e:
            return f"; could not check for a daemon left there: {e.detail or e}"
        if r.rc == 0:
            return "; the pvm_shmd it had started is stopped too"
        if r.rc == StatExit.NO_DAEMON:
            return ""  # nothing came up
        return (f"; a daemon may be left there ({_first_line(r.stderr) or f'exit {r.rc}'}): "
                f"stop it with {STAT} --stop")

    def stat(self, every: bool = False, asked: object = None) -> dict[str, object]:
        """The daemon's state (pvm_shmd_stat --json), its pvm_netd left out of the tasks
        unless *every*; PvmHostFail if it is not running. *asked*: what pvm_netd already
        answered (VirtualMachine.asked, for many hosts at once)."""
        state = asked if isinstance(asked, dict) else self._ask("stat")
        if isinstance(state, dict):
            if isinstance(state.get("tasks"), list) and not every:
                state["tasks"] = users_tasks(state["tasks"])
            return state
        r = self.runner.run([self.stat_program, "--json", *self._vm_args()], timeout=STAT_TIMEOUT)
        if r.rc != 0:
            raise PvmError(PvmHostFail, _first_line(r.stderr) or f"{self.stat_program} exited {r.rc}")
        try:
            state = json.loads(r.stdout)
        except ValueError:
            raise PvmError(PvmHostFail, f"unreadable state from {self.stat_program}") from None
        if not isinstance(state, dict):
            raise PvmError(PvmHostFail, f"unreadable state from {self.stat_program}")
        if isinstance(state.get("tasks"), list) and not every:
            state["tasks"] = users_tasks(state["tasks"])
        return state

    def _ask(self, op: str, timeout: float = ASK_TIMEOUT, **args: object) -> object:
        """*op* with *args* answered by the host's pvm_netd; None if there is none or it
        does not answer (then the programs from now on); the PvmError of a request it
        refused (bad arguments: it is still there)."""
        if self.netd is None:
            return None
        try:
            if timeout > ASK_TIMEOUT and time.monotonic() - self.netd.answered > FRESH:
                # a request that may take long (stop, spawn) waits all of it on a channel
                # nobody answers (pvm_netd gone, its port closed): first a quick look that
                # it answers at all. An error answer is an answer (its daemon has gone, or
                # a pvm_netd of an older release): the request itself says what follows.
                try:
                    self.netd.ask("alive")
                except PvmError as e:
                    if e.code == PvmHostFail:
                        raise
            return self.netd.ask(op, timeout, **args)
        except PvmError as e:
            if e.code != PvmHostFail:
                return e
            self.netd.close()
            self.netd = None  # gone or stuck: the programs from now on
            return None

    def stop_all(self) -> bool | None:
        """Kill the host's tasks and stop its daemon in one request to its pvm_netd
        (then gone too); None when there is no pvm_netd to ask (use stat, kill_tasks and
        stop). True if a daemon was stopped."""
        got = self._ask("stop", STOP_TIMEOUT + KILL_GRACE + ASK_TIMEOUT)
        if self.netd is not None:
            self.netd.close()
            self.netd = None
        if not isinstance(got, dict):
            return None if got is None or isinstance(got, PvmError) else bool(got)
        pid = got.get("pid")
        if isinstance(pid, int) and pid > 0 and isinstance(self.runner, LocalRunner):
            _wait_gone(pid, STOP_TIMEOUT)  # it ends after its answer: gone when we return
        return bool(got.get("stopped"))

    def stop(self) -> bool:
        """Stop the daemon and wait until its IPC objects are gone.
        True if one was stopped, False if none was running."""
        r = self.runner.run([self.stat_program, "--stop", *self._vm_args()], timeout=STOP_TIMEOUT)
        if r.rc == 0:
            return True
        if r.rc == StatExit.NO_DAEMON:
            return False
        raise PvmError(PvmHostFail, _first_line(r.stderr) or f"{self.stat_program} --stop exited {r.rc}")

    def _sibling(self, name: str) -> str:
        """Program *name* from the daemon's directory (as pvm_shmd_stat)."""
        return os.path.join(os.path.dirname(self.daemon), name) if "/" in self.daemon else name

    @property
    def spawn_program(self) -> str:
        return self._sibling(SPAWN)

    def net_addresses(self) -> tuple[str, str | None]:
        """(where this host's pvm_netd binds: the address the console reaches it at,
        the console's own address as the host sees it; None when it is this machine).
        Over SSH the connection is opened first, if it is not yet (its socket says)."""
        connect = getattr(self.runner, "connect", None)
        if connect is not None:
            connect(start_timeout())
        ends = getattr(self.runner, "addresses", lambda: None)()
        return ends if ends is not None else (ANYWHERE, None)

    def start_net(self, index: int, bind: str, line: str) -> int:
        """Start the host's pvm_netd (its daemon runs) with *line* (net_line) on its
        stdin; return the port it bound."""
        r = self.runner.run([self._sibling(NETD), *self._vm_args(), f"-host={index}", f"-bind={bind}"],
                            timeout=start_timeout(), input=line + "\n")
        return netd_port(r.stdout if r.rc == 0 else "", _first_line(r.stderr) or f"{NETD} exited {r.rc}")

    def kill_tasks(self, pids: list[int]) -> None:
        """TERM the given task pids on the host, KILL what is left after KILL_GRACE s
        (best effort: some may be gone). A task pvm_spawn started goes with its
        process group; pvm_spawn's record of who spawned what is dropped. Falls back
        to kill(1) where pvm_spawn is missing."""
        words = [str(int(p)) for p in pids]
        r = self.runner.run([self.spawn_program, "--kill", f"--grace={KILL_GRACE:g}",
                             *self._vm_args(), *words], timeout=STAT_TIMEOUT + KILL_GRACE)
        if r.rc in (SpawnExit.CANNOT_RUN, SpawnExit.NOT_FOUND) and words:
            self.runner.run(["kill", "-TERM", *words], timeout=STAT_TIMEOUT)

    def spawn(self, prog: str, args: Sequence[str], count: int, *, ptid: int, relay: bool,
              wd: str | None = None, ep: str | None = None,
              env: Mapping[str, str] | None = None) -> LineStream:
        """Start *count* copies of *prog* on the host through pvm_spawn; its output
        protocol (``tid``/``err`` lines, ``spawned``, then with *relay* the tasks'
        ``out``/``eof`` lines and ``done``) comes back on the stream. Without *relay*
        the host's pvm_netd starts them when it runs (no program start on the host)."""
        if not relay and self.netd is not None:
            got = self._ask("spawn", SPAWN_ASK_TIMEOUT, prog=prog, args=list(args), count=int(count), ptid=ptid,
                            here=True, wd=wd, ep=ep, env=dict(env or {}))
            if self.netd is not None:  # it answered: its copies, or why not (never started twice)
                if isinstance(got, list) and len(got) == count:
                    lines = [f"tid {c:x}" if isinstance(c := copy_result(r), int) else err_line(c) for r in got]
                else:
                    why = got if isinstance(got, PvmError) else PvmError(PvmHostFail, "pvm_netd: unreadable answer")
                    lines = [err_line(why)] * count
                data = "".join(ln + "\n" for ln in [*lines, "spawned"]).encode()
                return LineStream(iter([data, b""]).__next__, name=f"spawn on {self.host}")
        argv = [self.spawn_program, *self._vm_args(), f"--count={int(count)}", f"--ptid={ptid:x}"]
        if relay:
            argv.append("--relay")
        if wd:
            argv.append(f"--wd={wd}")
        if ep is not None:
            argv.append(f"--ep={ep}")
        argv += ["--", prog, *args]
        return self.runner.start(argv, timeout=SPAWN_TIMEOUT, env=env)

    def tasks(self, asked: object = None) -> list[dict[str, object]]:
        """The host's tasks (pvm_spawn --tasks): the daemon's table plus ptid and flags.
        *asked*: what pvm_netd already answered, as for stat."""
        got = asked if isinstance(asked, list) else self._ask("tasks")
        if isinstance(got, list):
            return users_tasks([t for t in got if isinstance(t, dict)])
        r = self.runner.run([self.spawn_program, "--tasks", *self._vm_args()], timeout=STAT_TIMEOUT)
        if r.rc != 0:
            raise PvmError(PvmHostFail, _first_line(r.stderr) or _first_line(r.stdout)
                           or f"{self.spawn_program} --tasks exited {r.rc}")
        try:
            tasks = json.loads(r.stdout)
        except ValueError:
            tasks = None
        if not isinstance(tasks, list):
            raise PvmError(PvmHostFail, f"unreadable task list from {self.spawn_program}")
        return users_tasks([t for t in tasks if isinstance(t, dict)])

    def signal(self, signum: int, tids: Sequence[int]) -> dict[int, PvmError | None]:
        """Send *signum* to tasks of this host by tid; per tid None or the error."""
        got = self._ask("signal", ASK_TIMEOUT, signum=int(signum), tids=list(tids))
        if isinstance(got, list):
            return {int(t): None if not code else PvmError(int(code), str(why) or None) for t, code, why in got}
        r = self.runner.run([self.spawn_program, f"--signal={int(signum)}", *self._vm_args(),
                             *(f"{t:x}" for t in tids)], timeout=STAT_TIMEOUT)
        out: dict[int, PvmError | None] = {}
        lines = r.stdout.splitlines()
        for line in lines:
            w = line.split(" ", 2)
            if w[0] == "ok" and len(w) > 1:
                out[int(w[1], 16)] = None
        errs = [ln for ln in lines if ln.startswith("err ")]
        for tid in tids:
            if tid not in out:
                if errs:
                    out[tid] = parse_err_line(errs.pop(0))
                else:
                    out[tid] = PvmError(PvmHostFail, _first_line(r.stderr)
                                        or f"{self.spawn_program} exited {r.rc}")
        return out

    def close(self) -> None:
        if self.netd is not None:
            self.netd.close()
        self.runner.close()


# -- so=ms: manual start-up ---------------------------------------------------------------
_dialogue_lock = threading.Lock()  # hosts start in parallel; one dialogue at a time
_pending_read: queue.Queue[str | None] | None = None  # a read that timed out, still waiting


def _read_response(timeout: float) -> str | None:
    """One line from the console's stdin (None at EOF), TimeoutError after *timeout* s.
    sys.stdin is read in a helper thread so a timeout can't hang the console; a read
    that timed out stays pending and its line is the answer to the next dialogue."""
    global _pending_read
    q = _pending_read
    if q is None:
        q = queue.Queue(maxsize=1)

        def reader(q: queue.Queue[str | None] = q) -> None:
            try:
                line = sys.stdin.readline()
            except (OSError, ValueError):
                line = ""
            q.put(line if line else None)

        threading.Thread(target=reader, name="so=ms response", daemon=True).start()
    try:
        line = q.get(timeout=timeout)
    except queue.Empty:
        _pending_read = q
        raise TimeoutError from None
    _pending_read = None
    return line


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def manual_dialogue(host: str, argv: Sequence[str], timeout: float = MANUAL_TIMEOUT,
                    err: Callable[[], object] = lambda: sys.stderr) -> dict[str, object]:
    """PVM's manual start-up: tell the user (stderr) what to run on *host*, read the
    daemon's ready line from stdin, parse it. PvmCantStart with a one-line reason
    for EOF, a timeout or a line that is not a ready line."""
    with _dialogue_lock:
        out = err()
        out.write(f'*** Manual startup ***\nLogin to "{host}" and type:\n{shlex.join(argv)}\n'  # type: ignore[attr-defined]
                  "Type response: ")
        out.flush()  # type: ignore[attr-defined]
        try:
            line = _read_response(timeout)
            if line is not None and not _stdin_is_tty():
                out.write("\n")  # type: ignore[attr-defined]  # (a terminal echoed it)
        except TimeoutError:
            out.write("\n")  # type: ignore[attr-defined]
            out.flush()  # type: ignore[attr-defined]
            raise PvmError(PvmCantStart, f"so=ms: no response within {timeout:g} s") from None
        if line is None:
            out.write("\n")  # type: ignore[attr-defined]
            out.flush()  # type: ignore[attr-defined]
            raise PvmError(PvmCantStart, "so=ms: end of input, no response")
        try:
            info = handshake.parse(line)
        except ValueError as e:
            raise PvmError(PvmCantStart, f"so=ms: {e}") from None
        out.write("Thanks\n")  # type: ignore[attr-defined]
        out.flush()  # type: ignore[attr-defined]
        return info


MANUAL_HINT = "started by hand (so=ms): stop it there with pvm_shmd_stat --stop"


class ManualRunner:
    """Runner for a so=ms host: later commands (stat, stop, spawn, ...) go over the
    transport the host would otherwise have (SSH, or local); where that fails the
    error says the daemon was started by hand."""

    def __init__(self, inner: Runner | None, host: str, why: str = ""):
        self.inner, self.host, self.why = inner, host, why

    def _unreachable(self, detail: str) -> PvmError:
        detail = detail.removeprefix(f"{self.host}: ")
        return PvmError(PvmHostFail, f"{MANUAL_HINT} ({detail})" if detail else MANUAL_HINT)

    def run(self, argv, *, timeout, input=None, cwd=None, env=None):
        if self.inner is None:
            raise self._unreachable(self.why)
        try:
            return self.inner.run(argv, timeout=timeout, input=input, cwd=cwd, env=env)
        except PvmError as e:
            raise self._unreachable(e.detail or str(e)) from None

    def start(self, argv, *, timeout, cwd=None, env=None) -> LineStream:
        if self.inner is None:
            raise self._unreachable(self.why)
        try:
            return self.inner.start(argv, timeout=timeout, cwd=cwd, env=env)
        except PvmError as e:
            raise self._unreachable(e.detail or str(e)) from None

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


class ManualLink(HostLink):
    """A host with so=ms: its daemon is started by the user (manual_dialogue)."""

    manual = True

    def start(self, index: int, name: str, extra: Sequence[str] = (),
              net: tuple[str, str] | None = None) -> dict[str, object]:
        return manual_dialogue(name, self.start_argv(index, name, extra))  # (no pvm_netd with it)


def is_local(name: str) -> bool:
    """True if *name* is this machine: a loopback name, its host name (short or as set), or
    its fully qualified name. Never waits on a name server for another host's name: only
    a dotted name that starts with our short name is compared with the FQDN, looked up
    once per process and given up after FQDN_TIMEOUT s (where the local name does not
    resolve, socket.getfqdn takes 5 s or more, each time)."""
    me = socket.gethostname()  # uname: no look-up
    short = me.split(".")[0]
    if name in ("localhost", "127.0.0.1", "::1", me, short):
        return True
    if "." not in name or name.split(".")[0] != short:
        return False
    return name == local_fqdn()


def link_for(name: str, options: Mapping[str, str], vmid: str) -> HostLink:
    """How the console reaches host *name*, from its hostfile options.

    Local hosts run programs directly; any other host goes over SSH (ssh.py),
    logging in as ``lo=`` at address ``ip=`` (else the name). ``dx=`` names the
    daemon program; pvm_shmd_stat is taken from the same directory; ``wd=`` is
    the daemon's working directory, which it enters itself (logging a failure and going
    on, as PVM's pvmd). ``so=ms`` (manual start-up): the user starts
    the daemon (ManualLink); later commands still try the usual transport.
    """
    dx = options.get("dx")
    manual = options.get("so") == "ms"
    if is_local(name):
        runner: Runner = LocalRunner(name)
        daemon = hostenv.expand_path(dx) if dx else local_program(DAEMON)  # this host's $NAMEs
    else:
        daemon = dx or DAEMON
        try:
            from pvmconsole.ssh import SshRunner, check_expandable, console_password
        except ImportError as e:
            if not manual:
                raise PvmError(PvmCantStart, f"no SSH transport to reach {name} ({e})") from None
            runner = ManualRunner(None, name, f"no SSH transport: {e}")
        else:
            runner = SshRunner(name, login=options.get("lo"), address=options.get("ip"),
                               password=console_password if options.get("so") == "pw" else None)
            if options.get("wd"):  # it reaches the host's programs: no shell syntax in it either
                check_expandable("directory", options["wd"])
    stat = os.path.join(os.path.dirname(daemon), STAT) if "/" in daemon else STAT
    if manual:
        if not isinstance(runner, ManualRunner):
            runner = ManualRunner(runner, name)
        return ManualLink(runner, vmid, daemon, stat, wd=options.get("wd"))
    return HostLink(runner, vmid, daemon, stat, wd=options.get("wd"))

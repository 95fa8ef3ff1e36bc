"""Run a program on a host of the virtual machine: the one seam between the console
and a host, local (subprocess) or remote (SSH, see ``ssh.py``)."""
from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

#: A program that ran past its timeout gets TERM, then KILL after this many seconds.
KILL_GRACE = 2.0
#: How long the console waits, at most once per process, for this machine's fully
#: qualified name (a host name no DNS server answers for would cost 5 s per look-up).
FQDN_TIMEOUT = 1.0

T = TypeVar("T")


# -- name look-ups that never hang the console -----------------------------------------------
# getaddrinfo and gethostbyaddr ignore socket timeouts: a name that no DNS server answers for
# holds the caller for the resolver's timeout (5 s, times its attempts), once per look-up.
# So every look-up on the console's way to a host runs in a thread of its own and is waited
# for with a deadline; one that does not come in time is given up (the thread ends on its own).

class LookupTimeout(TimeoutError):
    """A name look-up that did not finish within its time limit."""


def bounded(fn: Callable[[], T], timeout: float, what: str) -> T:
    """fn() run in a daemon thread: its result or its exception within *timeout* seconds,
    else LookupTimeout naming *what*. (A call stuck in the C resolver can't be interrupted;
    its thread finishes later by itself and its result is dropped.)"""
    box: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=run, name=f"look-up: {what}", daemon=True).start()
    if not done.wait(max(0.0, timeout)):
        raise LookupTimeout(f"{what}: no answer within {timeout:.3g} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def getaddrinfo(host: str, port: int, timeout: float) -> list[tuple]:
    """socket.getaddrinfo for a TCP connection to *host*, bounded by *timeout*
    (LookupTimeout). An address (10.77.0.11, ::1) is taken as is, without a thread."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        pass
    return bounded(lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout,
                   f"name look-up of {host}")


class _LocalFqdn:
    """socket.getfqdn() of this machine, looked up once per process in a background thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._deadline: float | None = None
        self._name: str | None = None

    def get(self, timeout: float) -> str | None:
        """The name; the first caller starts the look-up and every caller waits only until
        *timeout* s after that start. None when it did not come by then."""
        with self._lock:
            if self._deadline is None:
                self._deadline = time.monotonic() + timeout
                threading.Thread(target=self._look, name="look-up: local fqdn", daemon=True).start()
            deadline = self._deadline
        self._done.wait(max(0.0, deadline - time.monotonic()))
        return self._name

    def _look(self) -> None:
        try:
            self._name = socket.getfqdn()
        finally:
            self._done.set()


_LOCAL_FQDN = _LocalFqdn()


def local_fqdn(timeout: float = FQDN_TIMEOUT) -> str | None:
    """This machine's fully qualified name (socket.getfqdn), looked up once per process and
    waited for at most *timeout* s after the first call; None when it did not come in time
    (the local name does not resolve: each getfqdn would take 5 s or more)."""
    return _LOCAL_FQDN.get(timeout)


# -- the console's own environment changes --------------------------------------------------
# `setenv`, `export` and `unexport` change os.environ (the hostfile's $VAR expansion and
# spawn's PVM_EXPORT read it), but those values are meant for the tasks, not for the
# daemon's tools: the console runs pvm_shmd, pvm_shmd_stat and pvm_spawn --tasks/--kill
# with the environment it started with, so nothing set at the prompt (a 200 KB value,
# a changed PVM_TMP) can make `ps`, `stat` or `halt` fail.
_ORIGINAL: dict[str, str | None] = {}  # name -> its value before the console first changed it
_env_lock = threading.Lock()


def set_console_var(name: str, value: str | None) -> None:
    """Set (or with None remove) a variable of the console's environment, remembering
    its value from before, so :func:`tool_environ` can leave the change out."""
    with _env_lock:
        _ORIGINAL.setdefault(name, os.environ.get(name))
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def console_vars() -> list[str]:
    """The names the console changed (setenv, export, unexport), in order."""
    with _env_lock:
        return list(_ORIGINAL)


def tool_environ() -> dict[str, str]:
    """os.environ as it would be without the console's setenv/export changes: what the
    daemon's own programs run with."""
    with _env_lock:
        env = dict(os.environ)
        for name, before in _ORIGINAL.items():
            if before is None:
                env.pop(name, None)
            else:
                env[name] = before
        return env


@dataclass
class Result:
    """What a program run on a host gave back."""

    rc: int
    stdout: str
    stderr: str


class LineStream:
    """The output of a program still running on a host, line by line (what
    :meth:`Runner.start` returns). A thread drains it into a queue, so the program
    never blocks on a full pipe, even after :meth:`close` (then lines are dropped)."""

    def __init__(self, read: Callable[[], bytes], on_close: Callable[[], None] = lambda: None,
                 name: str = "stream"):
        self._read, self._on_close = read, on_close
        self._q: queue.Queue[str | None] = queue.Queue()
        self._eof = False
        self.closed = False
        self._thread = threading.Thread(target=self._pump, name=name, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        buf = b""
        while True:
            try:
                data = self._read()
            except (OSError, EOFError, ValueError):
                data = b""
            except Exception:  # a transport error (paramiko): the stream is over
                data = b""
            if not data:
                break
            if self.closed:
                continue
            buf += data
            *lines, buf = buf.split(b"\n")
            for ln in lines:
                self._q.put(ln.decode(errors="replace").rstrip("\r"))
        if buf and not self.closed:
            self._q.put(buf.decode(errors="replace"))
        self._q.put(None)

    def readline(self, timeout: float | None = None) -> str | None:
        """The next line (without its newline), None at the end of the output;
        TimeoutError if none came within *timeout* seconds."""
        if self._eof:
            return None
        try:
            line = self._q.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no output within {timeout:g} s") from None
        if line is None:
            self._eof = True
        return line

    def __iter__(self):
        while (line := self.readline()) is not None:
            yield line

    def close(self) -> None:
        """Stop listening (the program goes on; what it still writes is dropped)."""
        if not self.closed:
            self.closed = True
            self._on_close()


class Runner(Protocol):
    """Runs argv on one host. Implementations never build a shell string from
    argv without quoting every word (shlex.join). ``run`` gives rc 124 on timeout
    and has then stopped what it started (the program's process group: TERM, KILL
    after KILL_GRACE s), so a timed-out command leaves nothing running on the host."""

    host: str

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        input: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Result: ...

    def start(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> LineStream:
        """Start argv on the host and return its output (stdout and stderr merged) as
        it comes. *timeout* bounds starting it, not running it."""
        ...

    def close(self) -> None: ...


def local_program(name: str) -> str:
    """Path of one of this project's programs: beside the running interpreter
    (the virtual environment's bin), else on PATH, else the bare name."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(here, os.X_OK):
        return here
    return shutil.which(name) or name


def _not_started(argv: Sequence[str], cwd: str | None, e: OSError) -> str:
    """Why Popen failed, naming what was wrong: the directory to start in, or the program."""
    what = cwd if cwd and e.filename == cwd else argv[0]
    return f"{what}: {e.strerror or e}\n"


class LocalRunner:
    """Runs programs on this machine."""

    def __init__(self, host: str = "localhost"):
        self.host = host

    def run(self, argv, *, timeout, input=None, cwd=None, env=None) -> Result:
        """Run argv with the console's original environment (tool_environ) plus *env*.
        It gets a process group of its own, so a timeout stops the program and
        whatever it started in that group."""
        full_env = tool_environ()
        if env:
            full_env.update(env)
        try:
            p = subprocess.Popen(
                list(argv), stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                env=full_env, start_new_session=True)
        except OSError as e:  # ENOENT, E2BIG, EACCES, ENOEXEC...: one line, never a traceback
            return Result(127 if isinstance(e, FileNotFoundError) else 126, "", _not_started(argv, cwd, e))
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_group(p)
            return Result(124, "", f"{argv[0]}: timed out after {timeout:g} s; stopped it "
                                   "and what it started\n")
        except BaseException:  # Ctrl-C: the program must not outlive the command
            _stop_group(p)
            raise
        return Result(p.returncode, out, err)

    def start(self, argv, *, timeout, cwd=None, env=None) -> LineStream:
        """Start argv (pvm_spawn) as :meth:`run` would: the console's original
        environment plus *env* (what `export` names), as on a remote host."""
        full_env = tool_environ()
        if env:
            full_env.update(env)
        try:
            p = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, cwd=cwd, env=full_env,
                start_new_session=True,  # the console's Ctrl-C is not for it
            )
        except OSError as e:
            msg = _not_started(argv, cwd, e).encode()
            return LineStream(iter([msg, b""]).__next__, name=f"start {self.host}")
        fd = p.stdout.fileno()  # type: ignore[union-attr]

        def read() -> bytes:
            data = os.read(fd, 65536)
            if not data:
                p.stdout.close()  # type: ignore[union-attr]
                p.wait()  # no zombie left behind
            return data

        return LineStream(read, name=f"start {self.host}")

    def close(self) -> None:
        pass


def _stop_group(p: subprocess.Popen) -> None:
    """TERM the process group of *p* (its own session), KILL it after KILL_GRACE s,
    reap *p*. Its pgid is its pid (start_new_session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            break  # the whole group is gone
        deadline = time.monotonic() + KILL_GRACE
        while time.monotonic() < deadline:
            p.poll()
            try:
                os.killpg(p.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        else:
            continue
        break
    try:
        p.communicate(timeout=KILL_GRACE)  # close its pipes, reap it
    except (subprocess.TimeoutExpired, ValueError, OSError):
        pass

"""Run a program on a host of the virtual machine: the one seam between the console
and a host, local (subprocess) or remote (SSH, see ``ssh.py``)."""
from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence


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
    argv without quoting every word (shlex.join)."""

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


class LocalRunner:
    """Runs programs on this machine."""

    def __init__(self, host: str = "localhost"):
        self.host = host

    def run(self, argv, *, timeout, input=None, cwd=None, env=None) -> Result:
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        try:
            p = subprocess.run(
                list(argv), input=input, capture_output=True, text=True,
                timeout=timeout, cwd=cwd, env=full_env,
            )
        except FileNotFoundError:
            return Result(127, "", f"{argv[0]}: No such file or directory\n")
        except subprocess.TimeoutExpired:
            return Result(124, "", f"{argv[0]}: timed out after {timeout:g} s\n")
        return Result(p.returncode, p.stdout, p.stderr)

    def start(self, argv, *, timeout, cwd=None, env=None) -> LineStream:
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        try:
            p = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, cwd=cwd, env=full_env,
                start_new_session=True,  # the console's Ctrl-C is not for it
            )
        except OSError as e:
            msg = f"{argv[0]}: {e.strerror or e}\n".encode()
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

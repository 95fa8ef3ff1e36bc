"""Run a program on a host of the virtual machine: the one seam between the console
and a host, local (subprocess) or remote (SSH, see ``ssh.py``)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence


@dataclass
class Result:
    """What a program run on a host gave back."""

    rc: int
    stdout: str
    stderr: str


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

    def close(self) -> None:
        pass

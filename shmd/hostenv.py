"""Hostfile values as each PVM pvmd read them on its own host: ``$NAME`` and ``${NAME}``
expanded from this host's environment, an undefined one kept as written (PVM 3.4.6 logs
``$NOPE/sub: No such file or directory`` for ``wd=$NOPE/sub``). No shell is involved, so a
value can name a path but never run anything."""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

#: ``$NAME`` or ``${NAME}`` (the console's hostfile parser keeps them as written).
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def expand(value: str, environ: Mapping[str, str] | None = None) -> str:
    """*value* with each defined ``$NAME``/``${NAME}`` replaced from *environ* (default:
    this process's environment)."""
    env = os.environ if environ is None else environ

    def sub(m: re.Match[str]) -> str:
        return env.get(m.group(1) or m.group(2), m.group(0))

    return VARIABLE.sub(sub, value)


def expand_path(value: str) -> str:
    """A directory or program path from a hostfile value: variables, then ``~``."""
    return os.path.expanduser(expand(value))


def enter(wd: str | None) -> str | None:
    """chdir to the hostfile's ``wd=`` as PVM's pvmd did; return None, or the line to log
    when that failed (the daemon goes on where it is, as PVM's did)."""
    if not wd:
        return None
    path = expand_path(wd)
    try:
        os.chdir(path)
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    return None

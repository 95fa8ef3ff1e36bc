"""pvm_shmd's command line: the options its man page documents plus what a starter needs."""
from __future__ import annotations

import socket

from . import calibrate, paths, wake
from .errors import PvmError
from .layout import MAXPAGES, MAXSEG

USAGE = ("usage: pvm_shmd [-debug=N] [-maxsegs=N] [-maxpages=N] [-vmid=ID] [-host=N] "
         "[-name=HOST] [-wd=DIR] [-net=ADDR] [-foreground]")



class UsageError(Exception):
    """A bad command line; the message names the offending word."""


class Options:
    """pvm_shmd's options, each its default until parse sets it. (A plain class: the
    dataclasses module costs every daemon start 5 ms to import.)"""

    debug: int = 0
    maxsegs: int = MAXSEG
    maxpages: int = MAXPAGES
    vmid: str = ""
    host: int = 1
    name: str = ""
    wd: str = ""  # the hostfile's wd=, as written: expanded and entered by the daemon
    net: str = ""  # where this host's pvm_netd binds: started too, once the daemon is ready
    foreground: bool = False


_INT_BOUNDS = {"debug": (0, 0xFFFFFF), "maxsegs": (1, MAXSEG), "maxpages": (1, MAXPAGES),
               "host": (1, 4095)}


def parse(argv: list[str]) -> Options:
    """Parse ``-word=value`` options; raise UsageError naming the bad word."""
    o = Options()
    o.vmid = None  # type: ignore[assignment]  # (unless an option names it: $PVM_VMID)
    for word in argv:
        if word in ("-foreground", "-f"):
            o.foreground = True
            continue
        if not word.startswith("-") or "=" not in word:
            if not word.startswith("-"):
                raise UsageError(f"unexpected argument {word!r} (pvm_shmd takes no hostfile)")
            raise UsageError(f"unknown option {word!r}")
        name, value = word[1:].split("=", 1)
        if name in _INT_BOUNDS:
            try:
                n = int(value, 0)
            except ValueError:
                raise UsageError(f"{word!r}: {value!r} is not a number") from None
            lo, hi = _INT_BOUNDS[name]
            if not lo <= n <= hi:
                raise UsageError(f"{word!r}: must be between {lo} and {hi}")
            setattr(o, name, n)
        elif name in ("vmid", "id"):
            try:
                o.vmid = paths.check_vmid(value)
            except ValueError as e:
                raise UsageError(str(e)) from None
        elif name == "name":
            if not value or any(c.isspace() for c in value):
                raise UsageError(f"{word!r}: bad host name")
            o.name = value
        elif name == "wd":
            if not value or not value.isprintable():
                raise UsageError(f"{word!r}: bad directory")
            o.wd = value
        elif name == "net":
            if not value or not value.isprintable() or any(c.isspace() for c in value):
                raise UsageError(f"{word!r}: bad address")
            o.net = value
        else:
            raise UsageError(f"unknown option {word!r}")
    if o.vmid is None:
        try:
            o.vmid = paths.current_vmid()
        except ValueError as e:
            raise UsageError(f"PVM_VMID: {e}") from None
    try:
        calibrate.mode()
        wake.mode()
    except PvmError as e:
        raise UsageError(e.detail or str(e)) from None
    if o.net and o.foreground:
        raise UsageError("-net= starts pvm_netd beside a daemon in the background: not with -foreground")
    o.name = o.name or socket.gethostname()
    return o

"""The one line a pvm_shmd prints when every resource exists (PVM's ``ddpro<...>`` line).

Example::

    ddpro<2316> arch<LINUX64> ip<node1> mtu<4096> dsig<0x00408c41> speed<1000> pid<4242> tid<40000>
"""
from __future__ import annotations

import os
import re

PROTOCOL = 2316  # PVM 3.4's DDPROTOCOL
DSIG = 0x00408C41  # PVM's data signature of little-endian LP64 (x86-64 Linux)
SPEED = 1000  # the speed a daemon reports (PVM's default; a hostfile's sp= overrides it)
_FIELD = re.compile(r"(\w+)<([^<>]*)>")
_INT_FIELDS = ("ddpro", "mtu", "speed", "pid", "tid", "host", "segs", "pages")


def arch() -> str:
    """PVM's architecture name for this machine."""
    m = os.uname().machine
    return {"x86_64": "LINUX64", "aarch64": "LINUXARM64", "i686": "LINUX", "i386": "LINUX"}.get(
        m, "LINUX" + m.upper()
    )


def format_line(**fields: object) -> str:
    """Build the handshake line; ``ddpro`` and ``arch`` come first."""
    parts = {"ddpro": PROTOCOL, "arch": arch(), **fields}
    out = []
    for k, v in parts.items():
        if k == "dsig":
            v = f"0x{int(str(v), 0):08x}"
        out.append(f"{k}<{v}>")
    return " ".join(out)


def fields(line: str) -> dict[str, object]:
    """The ``name<value>`` fields of a line, as strings (pvm_netd's ready line)."""
    return dict(_FIELD.findall(line))


def parse(line: str) -> dict[str, object]:
    """Parse a handshake line; raise ValueError naming what is wrong."""
    line = line.strip()
    if not line.startswith("ddpro<"):
        raise ValueError(f"not a pvm_shmd handshake line: {line[:80]!r}")
    fields: dict[str, object] = dict(_FIELD.findall(line))
    for k in ("ddpro", "arch", "pid", "tid"):
        if k not in fields:
            raise ValueError(f"handshake line lacks {k}<>: {line[:80]!r}")
    try:
        for k in _INT_FIELDS:
            if k in fields:
                fields[k] = int(str(fields[k]), 16 if k == "tid" else 10)
        if "dsig" in fields:
            fields["dsig"] = int(str(fields["dsig"]), 0)
    except ValueError:
        raise ValueError(f"garbled handshake line: {line[:80]!r}") from None
    if fields["ddpro"] != PROTOCOL:
        raise ValueError(f"handshake protocol {fields['ddpro']} is not {PROTOCOL}")
    return fields

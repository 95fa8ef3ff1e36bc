"""Text layouts of console output, as PVM 3.4.6 printed them (plus `stat`)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from shmd.errors import strerror

HOST_W = 24  # every PVM table right-justifies the host name in 24 columns


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def conf(hosts: Sequence[tuple[str, int, str, int, int]]) -> list[str]:
    """`conf`: hosts as (name, dtid, arch, speed, dsig)."""
    nfmt = len({h[4] for h in hosts})
    lines = [f"{plural(len(hosts), 'host')}, {plural(nfmt, 'data format')}",
             f"{'HOST':>{HOST_W}} {'DTID':>8} {'ARCH':>8}{'SPEED':>8} {'DSIG':>10}"]
    for name, dtid, arch, speed, dsig in hosts:
        lines.append(f"{name:>{HOST_W}} {dtid:8x} {arch:>8}{speed:8d} 0x{dsig:08x}")
    return lines


def add(results: Sequence[tuple[str, int | None, int | None]]) -> list[str]:
    """`add`: per host (name, dtid or None, error code or None)."""
    ok = sum(1 for _, d, _e in results if d is not None)
    lines = [f"{ok} successful", f"{'HOST':>{HOST_W}} {'DTID':>8}"]
    for name, d, err in results:
        lines.append(f"{name:>{HOST_W}} {d:8x}" if d is not None
                     else f"{name:>{HOST_W}} {strerror(err or 0):>8}")
    return lines


def delete(results: Sequence[tuple[str, int | None]]) -> list[str]:
    """`delete`: per host (name, error code or None)."""
    ok = sum(1 for _, e in results if e is None)
    lines = [f"{ok} successful", f"{'HOST':>{HOST_W}}  STATUS"]
    for name, err in results:
        lines.append(f"{name:>{HOST_W}}  {'deleted' if err is None else strerror(err)}")
    return lines


def mstat(results: Sequence[tuple[str, int | None]]) -> list[str]:
    """`mstat`: per host (name, error code or None)."""
    return [f"{name:>{HOST_W}}  {'ok' if err is None else strerror(err)}" for name, err in results]


def help_list(entries: Iterable[tuple[str, str]]) -> list[str]:
    """`help` without a topic: "Commands are:" and one line per command."""
    return ["Commands are:", *(f"  {name:<12}{summary}" for name, summary in entries)]

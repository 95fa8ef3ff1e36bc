"""PVM hostfile parser: a pure function from text to host entries (no I/O, no DNS).

Syntax (PVM 3.4, see docs/hostfile.md): one host per line, options ``key=value``
after it; blank lines and ``#`` comments ignored; quotes and backslash as in the
console; ``&`` prefix = known but not started, ``$`` prefix = may overload a
host already in use; a ``*`` line sets the defaults for the lines after it and
for hosts added later (each ``*`` line replaces the previous defaults). ``$VAR``
and ``${VAR}`` in option values are expanded from the given environment.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pvmconsole.tokenizer import TokenizeError, split

#: Options a host line may carry (PVM's set).
OPTIONS = ("lo", "so", "dx", "ep", "sp", "bx", "wd", "ip", "id")
MAX_WORDS = 10  # PVM: "parsehost(): line too long"
MAX_LINES = 4095  # PVM: the line number is the provisional host index
SPEED_RANGE = (1, 1_000_000)
STARTUP_MODES = ("pw", "ms")

_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.:-]*[A-Za-z0-9_])?$")
_VMID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class HostEntry:
    """One host line, with the defaults in force at that line already applied."""

    name: str
    options: Mapping[str, str] = field(default_factory=dict)
    line: int = 0
    defer: bool = False  # '&': remembered, started only by a later `add`
    overload: bool = False  # '$': may share a host already in the machine

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.options.get(key, default)


@dataclass(frozen=True)
class Hostfile:
    """A parsed hostfile: its entries in file order and the last ``*`` defaults."""

    path: str
    entries: tuple[HostEntry, ...] = ()
    defaults: Mapping[str, str] = field(default_factory=dict)

    def entry(self, name: str) -> HostEntry | None:
        """The first entry for *name* (used to fill in later `add`s)."""
        return next((e for e in self.entries if e.name == name), None)


@dataclass(frozen=True)
class LineError:
    """One problem: file, line number, the offending word and what is wrong."""

    path: str
    line: int
    word: str
    message: str

    def __str__(self) -> str:
        return f'{self.path}:{self.line}: {self.message} "{self.word}"'


class HostfileError(ValueError):
    """All the problems of one hostfile; nothing may be started from it."""

    def __init__(self, path: str, errors: list[LineError]):
        self.path = path
        self.errors = errors
        n = len(errors)
        lines = [str(e) for e in errors]
        lines.append(f"{path}: {n} error{'s' if n != 1 else ''} in hostfile")
        super().__init__("\n".join(lines))


def _expand(value: str, env: Mapping[str, str]) -> tuple[str, str | None]:
    """Expand ``$VAR``/``${VAR}``; return (text, name of the first undefined var)."""
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in env:
            missing.append(name)
            return m.group(0)
        return env[name]

    out = _VAR.sub(sub, value)
    return out, (missing[0] if missing else None)


def _check_option(key: str, value: str) -> str | None:
    """Why *value* is not acceptable for option *key*, or None."""
    if key not in OPTIONS:
        return "unknown option"
    if value == "":
        return "empty value for option"
    if key == "sp":
        if not value.isdigit() or not SPEED_RANGE[0] <= int(value) <= SPEED_RANGE[1]:
            return f"speed must be {SPEED_RANGE[0]}..{SPEED_RANGE[1]} in"
    elif key == "so" and value not in STARTUP_MODES:
        return "startup option must be so=pw or so=ms in"
    elif key == "id" and not _VMID.match(value):
        return "bad virtual machine id (1-32 of A-Z a-z 0-9 _ . -) in"
    elif key == "ip" and not _HOSTNAME.match(value):
        return "bad address in"
    return None


def parse_line(
    text: str,
    *,
    defaults: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    path: str = "hostfile",
    lineno: int = 1,
) -> tuple[HostEntry | None, dict[str, str] | None, list[LineError]]:
    """Parse one line.

    Returns ``(entry, new_defaults, errors)``: a host line gives an entry, a
    ``*`` line gives new defaults, a blank/comment line gives neither.
    """
    env = {} if env is None else env
    errs: list[LineError] = []

    def err(word: str, message: str) -> None:
        errs.append(LineError(path, lineno, word, message))

    try:
        words = split(text, max_words=10_000)
    except TokenizeError as e:
        err(text.strip()[:60], str(e) + " in")
        return None, None, errs
    if not words:
        return None, None, errs
    if len(words) > MAX_WORDS:
        err(words[MAX_WORDS], f"line too long (more than {MAX_WORDS} words) at")
        return None, None, errs
    first = words[0]
    defer = overload = False
    name = first
    while name[:1] in ("&", "$"):
        defer |= name[0] == "&"
        overload |= name[0] == "$"
        name = name[1:]
    opts: dict[str, str] = {}
    for word in words[1:]:
        key, eq, raw = word.partition("=")
        if not eq:
            err(word, "unknown option")
            continue
        value, missing = _expand(raw, env)
        if missing is not None:
            err(word, f"undefined variable ${missing} in")
            continue
        why = _check_option(key, value)
        if why:
            err(word, why)
            continue
        opts[key] = value  # as in PVM, a repeated option: the last one wins
    if name == "*":
        if defer or overload:
            err(first, "a defaults line takes no & or $ prefix")
        return None, (opts if not errs else None), errs
    if not name:
        err(first, "missing host name")
    elif not _HOSTNAME.match(name):
        err(first, "bad host name")
    if errs:
        return None, None, errs
    merged = {**(defaults or {}), **opts}  # own options win over the defaults
    return HostEntry(name, merged, lineno, defer, overload), None, errs


def parse(text: str, path: str = "hostfile", env: Mapping[str, str] | None = None) -> Hostfile:
    """Parse a whole hostfile; raise HostfileError listing every problem."""
    defaults: dict[str, str] = {}
    entries: list[HostEntry] = []
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if lineno > MAX_LINES:
            errors.append(LineError(path, lineno, line.strip()[:60], f"too many lines (max {MAX_LINES}) at"))
            break
        entry, new_defaults, errs = parse_line(
            line, defaults=defaults, env=env, path=path, lineno=lineno
        )
        errors.extend(errs)
        if new_defaults is not None:
            defaults = new_defaults  # not cumulative: a '*' line replaces the defaults
        if entry is None:
            continue
        if entry.name in seen and not entry.overload:
            errors.append(LineError(path, lineno, entry.name,
                                    f"duplicate host (first on line {seen[entry.name]})"))
            continue
        seen.setdefault(entry.name, lineno)
        entries.append(entry)
    if errors:
        raise HostfileError(path, errors)
    return Hostfile(path, tuple(entries), dict(defaults))


def read(path: str, env: Mapping[str, str] | None = None) -> Hostfile:
    """Read and parse a hostfile. A file that can't be read raises its OSError (with
    ``filename`` and ``strerror``: ``HOSTFILE: No such file or directory``), not a
    HostfileError: it has no line to point at."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    return parse(text, path, env)

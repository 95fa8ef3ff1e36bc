"""PVM hostfile parser: text in, host entries and per-line problems out (no DNS).

Syntax (PVM 3.4.6, src/host.c; see docs/hostfile.md): one host per line, options
``key=value`` after it; blank lines and ``#`` comments ignored; a leading run of
``&`` (known but not started) and ``$`` (may overload a host already in use) before
the name, blanks allowed between them and the name; a ``*`` line sets the defaults
for the lines after it and for hosts added later (each ``*`` line replaces the
previous defaults); a repeated option keeps its first value; backslashes are kept
as written. ``$VAR`` and ``${VAR}`` in option values are kept as written too: each host
expands them from its own environment, as PVM's pvmds did (shmd/hostenv.py).

A bad line (unknown option, duplicate host, bad value) is dropped with one message
naming FILE:LINE, the reason and the word; the rest of the file is kept
(``Hostfile.problems``). ``strict=True`` (the default of :func:`parse` and
:func:`read`) raises HostfileError instead when there is any problem.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pvmconsole.tokenizer import TokenizeError, split
from pvmconsole.userfiles import MAX_BYTES, escape, read_bytes  # noqa: F401 (MAX_BYTES: the limit, named here too)

#: Options a host line may carry (PVM's set).
OPTIONS = ("lo", "so", "dx", "ep", "sp", "bx", "wd", "ip", "id")
MAX_WORDS = 10  # PVM: "parsehost(): line too long"
MAX_HOSTS = 4095  # PVM: the host-index space; only host lines count here
MAX_LINES = MAX_HOSTS  # the old name
MAX_PROBLEMS = 100  # problems listed one by one; the rest are counted
MAX_SHOWN = 200  # characters of an offending word shown in a message
SPEED_RANGE = (1, 1_000_000)
STARTUP_MODES = ("pw", "ms")
BOM = "\ufeff"

_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.:-]*[A-Za-z0-9_])?$")
_VMID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


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
class LineError:
    """One problem: file, line number, the offending word and what is wrong."""

    path: str
    line: int
    word: str
    message: str

    def __str__(self) -> str:
        word = self.word if len(self.word) <= MAX_SHOWN else self.word[:MAX_SHOWN] + "..."
        return f'{escape(self.path)}:{self.line}: {escape(self.message)} "{escape(word)}"'


@dataclass(frozen=True)
class Hostfile:
    """A parsed hostfile: its entries in file order, the last ``*`` defaults, and the
    problems of the lines that were dropped (at most MAX_PROBLEMS of them listed;
    ``dropped`` counts them all)."""

    path: str
    entries: tuple[HostEntry, ...] = ()
    defaults: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[LineError, ...] = ()
    dropped: int = 0

    def entry(self, name: str) -> HostEntry | None:
        """The first entry for *name* (used to fill in later `add`s)."""
        return next((e for e in self.entries if e.name == name), None)

    def report(self) -> list[str]:
        """The lines to print on stderr: one per problem, then a summary (none when
        the file had no problem)."""
        return _report(self.path, list(self.problems), self.dropped)


def _report(path: str, problems: list[LineError], total: int, dropped: bool = True) -> list[str]:
    if not total:
        return []
    lines = [str(p) for p in problems]
    if total > len(problems):
        lines.append(f"{escape(path)}: {total - len(problems)} more problems not listed")
    lines.append(f"{escape(path)}: {total} error{'s' if total != 1 else ''} in hostfile"
                 + (f" ({'that line' if total == 1 else 'those lines'} dropped)" if dropped else ""))
    return lines


class HostfileError(ValueError):
    """The problems of one hostfile, raised by strict parsing."""

    def __init__(self, path: str, errors: list[LineError], total: int | None = None):
        self.path = path
        self.errors = errors
        super().__init__("\n".join(_report(path, errors, len(errors) if total is None else total, False)))


def _check_option(key: str, value: str) -> str | None:
    """Why *value* is not acceptable for option *key*, or None."""
    if key not in OPTIONS:
        return "unknown option"
    if value == "":
        return "empty value for option"
    if not value.isprintable():
        return "control character in"
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


def split_line(line: str) -> list[str]:
    """Split a hostfile line into words: blanks separate; ``'...'`` and ``"..."``
    quote (the quotes removed); a word that starts with ``#`` ends the line; a
    backslash is an ordinary character (PVM kept it: ``dx=d:\\pvm3\\pvmd3.exe``).
    TokenizeError for an unmatched quote."""
    return split(line, max_words=None, escapes=False)


def parse_line(
    text: str,
    *,
    defaults: Mapping[str, str] | None = None,
    path: str = "hostfile",
    lineno: int = 1,
) -> tuple[HostEntry | None, dict[str, str] | None, list[LineError]]:
    """Parse one line.

    Returns ``(entry, new_defaults, errors)``: a host line gives an entry, a
    ``*`` line gives new defaults, a blank/comment line gives neither; a line
    with errors gives neither (it is dropped).
    """
    errs: list[LineError] = []

    def err(word: str, message: str) -> None:
        errs.append(LineError(path, lineno, word, message))

    body = text.lstrip()
    rest = body.lstrip("&$")  # PVM: the prefixes, then optional blanks, then the name
    prefix = body[:len(body) - len(rest)]
    defer, overload = "&" in prefix, "$" in prefix
    try:
        words = split_line(rest)
    except TokenizeError as e:
        err(body.strip()[:60], str(e) + " in")
        return None, None, errs
    if not words:
        if prefix:
            err(prefix, "missing host name")
        return None, None, errs
    if len(words) > MAX_WORDS:
        err(words[MAX_WORDS], f"line too long (more than {MAX_WORDS} words) at")
        return None, None, errs
    name = words[0]
    first = prefix + name
    opts: dict[str, str] = {}
    for word in words[1:]:
        key, eq, raw = word.partition("=")
        if not eq:
            err(word, "unknown option")
            continue
        if key in opts:
            continue  # as in PVM, a repeated option: the first one wins
        why = _check_option(key, raw)
        if why:
            err(word, why)
            continue
        opts[key] = raw
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


def parse(text: str, path: str = "hostfile", *, strict: bool = True) -> Hostfile:
    """Parse a whole hostfile. Each bad line is dropped and noted in ``problems``;
    with *strict* (the default) any problem raises HostfileError instead."""
    if text.startswith(BOM):
        text = text[1:]
    defaults: dict[str, str] = {}
    entries: list[HostEntry] = []
    problems: list[LineError] = []
    total = 0
    seen: dict[str, int] = {}
    hosts = 0

    def problem(e: LineError) -> None:
        nonlocal total
        total += 1
        if len(problems) < MAX_PROBLEMS:
            problems.append(e)

    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] == "#":
            continue
        entry, new_defaults, errs = parse_line(
            line, defaults=defaults, path=path, lineno=lineno
        )
        for e in errs:
            problem(e)
        if new_defaults is not None:
            defaults = new_defaults  # not cumulative: a '*' line replaces the defaults
        if entry is None:
            continue
        if hosts >= MAX_HOSTS:
            problem(LineError(path, lineno, entry.name,
                              f"too many hosts (more than {MAX_HOSTS}): this and later lines dropped at"))
            break
        hosts += 1
        if entry.name in seen and not entry.overload:
            problem(LineError(path, lineno, entry.name,
                              f"duplicate host (first on line {seen[entry.name]})"))
            continue
        seen.setdefault(entry.name, lineno)
        entries.append(entry)
    if strict and total:
        raise HostfileError(path, problems, total)
    return Hostfile(path, tuple(entries), dict(defaults), tuple(problems), total)


def read(path: str, *, strict: bool = True) -> Hostfile:
    """Read and parse a hostfile. A file that can't be read raises an OSError (with
    ``filename``, escaped, and ``strerror``: ``HOSTFILE: No such file or directory``),
    not a HostfileError: it has no line to point at."""
    text = read_bytes(path).decode("utf-8", errors="replace")
    return parse(text, path, strict=strict)

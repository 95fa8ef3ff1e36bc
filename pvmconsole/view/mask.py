"""The console's trace mask, as PVM's ``trace [+|-] name ...`` sets it: the events that
``trace on`` and ``spawn -@`` have tasks record. PVM's event names are all taken (with or
without ``pvm_``); those of calls this library has not are kept and record nothing."""
from __future__ import annotations

from collections.abc import Sequence

from shmd import trace

_names: dict[int, set[str]] = {}  # id(console) -> the names in its mask


def names(console: object) -> set[str]:
    """The console's mask (at first PVM's default, ``xpvm``: every event)."""
    return _names.setdefault(id(console), set(trace.PVM_EVENTS))


def bits(console: object) -> int:
    """The mask word of the events recorded (trace.py)."""
    return trace.mask_of(names(console))


def change(console: object, words: Sequence[str]) -> None:
    """``[+] name ...`` adds, ``- name ...`` removes, ``*`` is every event, ``xpvm`` the
    default set (every event too). ValueError naming the first unknown event: the mask
    is then left as it was."""
    add = True
    if words and words[0] in "+-":
        add, words = words[0] == "+", words[1:]
    chosen: set[str] = set()
    for w in words:
        n = w[4:] if w.startswith("pvm_") else w
        if n in ("*", "xpvm"):
            chosen |= set(trace.PVM_EVENTS)
        elif n in trace.PVM_EVENTS:
            chosen.add(n)
        else:
            raise ValueError(f'no such event "{w}"')
    mask = names(console)
    if add:
        mask |= chosen
    else:
        mask -= chosen


def lines(console: object, width: int = 76) -> list[str]:
    """The mask as PVM's event names (its TEV order), then what is recorded of it."""
    words = [n for n in trace.PVM_EVENTS if n in names(console)]
    out, line = [], "Trace mask:"
    for w in words or ["(none)"]:
        if len(line) + 1 + len(w) > width:
            out.append(line)
            line = "  "
        line += " " + w
    kinds = [trace.KINDS[k] for k in (trace.SPAWN, trace.EXIT, trace.PSEND, trace.PRECV_END)
             if bits(console) & trace.BIT[k]]
    return [*out, line, f"Recorded here: {' '.join(kinds) or 'nothing'}"]

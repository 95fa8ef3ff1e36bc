"""pvm_packf / pvm_unpackf: packing by a printf-like format, PVM's common letters.

A conversion is ``%[count][.stride][h|l]letter``: ``c`` byte, ``d``/``i`` int (``hd``
short, ``ld`` long), ``u`` uint (``hu`` ushort, ``lu`` ulong), ``f`` float (``lf``
double), ``x`` complex (``lx`` double complex), ``s`` string; ``*`` as count or stride
takes it from the arguments; ``%+`` (first) starts a new send buffer with the encoding
given as an argument. With a count the argument is a sequence of that many items;
without, one value. Anything else in the format (blanks, text) is skipped."""
from __future__ import annotations

import re
from typing import Any

from . import pvmbuf as b
from .errors import PvmBadParam, PvmError, PvmOk
from .pvmmsg import pvm_initsend, rbuf, sbuf

_CONV = re.compile(r"%(\+|(\*|\d+)?(?:\.(\*|\d+))?(h|l)?([cdiufxs%]))")
_TYPES = {("", "c"): b.PVM_BYTE, ("", "d"): b.PVM_INT, ("", "i"): b.PVM_INT, ("h", "d"): b.PVM_SHORT,
          ("h", "i"): b.PVM_SHORT, ("l", "d"): b.PVM_LONG, ("l", "i"): b.PVM_LONG, ("", "u"): b.PVM_UINT,
          ("h", "u"): b.PVM_USHORT, ("l", "u"): b.PVM_ULONG, ("", "f"): b.PVM_FLOAT, ("l", "f"): b.PVM_DOUBLE,
          ("", "x"): b.PVM_CPLX, ("l", "x"): b.PVM_DCPLX}


def _convs(fmt: str):
    if not isinstance(fmt, str):
        raise PvmError(PvmBadParam, f"format {fmt!r} is not a str")
    pos = 0
    for m in _CONV.finditer(fmt):
        if "%" in fmt[pos:m.start()]:
            bad = fmt[pos:m.start()]
            raise PvmError(PvmBadParam, f"format {fmt!r}: unknown conversion at {bad[bad.index('%'):][:4]!r}")
        pos = m.end()
        yield m
    if "%" in fmt[pos:]:
        raise PvmError(PvmBadParam, f"format {fmt!r}: unknown conversion at {fmt[pos:][fmt[pos:].index('%'):][:4]!r}")


def _number(spec: str | None, args: list, what: str, default: int | None) -> int | None:
    if spec is None:
        return default
    if spec == "*":
        if not args:
            raise PvmError(PvmBadParam, f"format wants a {what} (*) argument: too few arguments")
        n = args.pop(0)
        if not isinstance(n, int):
            raise PvmError(PvmBadParam, f"{what} {n!r} is not an int")
        return n
    return int(spec)


def _dtype(size: str | None, letter: str) -> int:
    t = _TYPES.get((size or "", letter))
    if t is None:
        raise PvmError(PvmBadParam, f"no conversion %{size}{letter}")
    return t


def pvm_packf(fmt: str, *args: Any) -> int:
    """Pack *args* as *fmt* says (see the module's text) into the active send buffer."""
    rest = list(args)
    for m in _convs(fmt):
        if m.group(1) == "+":
            if not rest:
                raise PvmError(PvmBadParam, "%+ wants an encoding argument")
            pvm_initsend(rest.pop(0))
            continue
        count, stride, size, letter = m.group(2), m.group(3), m.group(4), m.group(5)
        if letter == "%":
            continue
        n = _number(count, rest, "count", None)
        st = _number(stride, rest, "stride", 1)
        if not rest:
            raise PvmError(PvmBadParam, f"format {fmt!r}: too few arguments for {m.group(0)!r}")
        value = rest.pop(0)
        if letter == "s":
            sbuf().pkstr(value)
            continue
        sbuf().pack(_dtype(size, letter), value, 1 if n is None else n, st or 1)
    if rest:
        raise PvmError(PvmBadParam, f"format {fmt!r}: {len(rest)} arguments left over")
    return PvmOk


def pvm_unpackf(fmt: str, *args: Any) -> tuple:
    """Unpack from the active receive buffer as *fmt* says; return the values, in
    order: one value for a conversion without a count, a list (an array.array) with
    one. *args* give the counts and strides written ``*``."""
    rest = list(args)
    out: list[Any] = []
    for m in _convs(fmt):
        if m.group(1) == "+":
            raise PvmError(PvmBadParam, "%+ is for pvm_packf")
        count, stride, size, letter = m.group(2), m.group(3), m.group(4), m.group(5)
        if letter == "%":
            continue
        n = _number(count, rest, "count", None)
        st = _number(stride, rest, "stride", 1) or 1
        if letter == "s":
            out.append(rbuf().upkstr())
            continue
        t = _dtype(size, letter)
        if n is None:
            got = rbuf().unpack(t, None, 1, 1)
            out.append(got[0])
        elif st == 1:
            out.append(rbuf().unpack(t, None, n, 1))
        else:
            full: list[Any] = [0] * ((n - 1) * st + 1 if n else 0)
            rbuf().unpack(t, full, n, st)
            out.append(full)
    if rest:
        raise PvmError(PvmBadParam, f"format {fmt!r}: {len(rest)} arguments left over")
    return tuple(out)

"""PVM message buffers: packing and unpacking every datatype in three encodings.

A send buffer collects the packed data of one message; a receive buffer holds one
received message and a read position. The wire formats:

* ``PvmDataDefault`` (0): XDR (RFC 4506, big-endian), as PVM, so a message means the
  same on any host: byte arrays padded to 4 bytes per pack call, short and ushort as
  4-byte integers, int/uint/float 4 bytes, long/ulong as XDR hypers (8 bytes), double 8,
  complex numbers as pairs of floats or doubles, a string as its length (with the NUL)
  then the bytes, the NUL and padding to 4.
* ``PvmDataRaw`` (1): this host's native layout, no padding: fastest, one host (or
  hosts of one byte order) only.
* ``PvmDataInPlace`` (2): as Raw on the wire, but a contiguous buffer packed with
  stride 1 is referenced, not copied: its contents are read when the message is sent.

A packed message starts with a 16-byte header (``HEADER``: a magic, a version, the
wire encoding and the body's length) so that a receiver tells it apart from a
``psend``'s bare bytes, which are received as a Raw buffer (see docs/pvm-api.md).

Arrays go through whole-array operations (``array.array`` byte swaps, or numpy when
the data is a numpy array), never element by element in Python.
"""
from __future__ import annotations

import struct
import sys
from array import array
from typing import Any

from . import calibrate
from .errors import PvmBadParam, PvmError, PvmNoData, PvmNoMem

PvmDataDefault, PvmDataRaw, PvmDataInPlace = 0, 1, 2
ENCODINGS = {PvmDataDefault: "PvmDataDefault", PvmDataRaw: "PvmDataRaw", PvmDataInPlace: "PvmDataInPlace"}

PVM_STR, PVM_BYTE, PVM_SHORT, PVM_INT, PVM_FLOAT, PVM_CPLX, PVM_DOUBLE, PVM_DCPLX = range(8)
PVM_LONG, PVM_USHORT, PVM_UINT, PVM_ULONG = 8, 9, 10, 11

# The header of a packed message: magic, version, wire encoding (XDR or RAW), body bytes.
HEADER = struct.Struct("<6sBBQ")
MAGIC, VERSION = b"\x7fPVMpk", 1
XDR, RAW = PvmDataDefault, PvmDataRaw


class Kind:
    """How one PVM datatype is held in memory and on the wire."""

    __slots__ = ("code", "name", "tc", "per", "xdr_tc", "native", "np", "np_xdr")

    def __init__(self, code: int, name: str, tc: str, per: int, xdr_tc: str, np_native: str, np_xdr: str):
        self.code, self.name = code, name
        self.tc = tc  # array.array typecode of one component
        self.per = per  # components per item (2 for complex numbers)
        self.xdr_tc = xdr_tc  # typecode of one component on the XDR wire (before the swap)
        self.native = array(tc).itemsize * per  # bytes per item in memory (and Raw)
        self.np, self.np_xdr = np_native, np_xdr  # numpy dtypes: in memory, on the XDR wire

    @property
    def xdr(self) -> int:
        return array(self.xdr_tc).itemsize * self.per  # bytes per item in XDR


KINDS = {k.code: k for k in (
    Kind(PVM_BYTE, "byte", "B", 1, "B", "u1", "u1"),
    Kind(PVM_SHORT, "short", "h", 1, "i", "i2", ">i4"),
    Kind(PVM_USHORT, "ushort", "H", 1, "I", "u2", ">u4"),
    Kind(PVM_INT, "int", "i", 1, "i", "i4", ">i4"),
    Kind(PVM_UINT, "uint", "I", 1, "I", "u4", ">u4"),
    Kind(PVM_LONG, "long", "q", 1, "q", "i8", ">i8"),
    Kind(PVM_ULONG, "ulong", "Q", 1, "Q", "u8", ">u8"),
    Kind(PVM_FLOAT, "float", "f", 1, "f", "f4", ">f4"),
    Kind(PVM_DOUBLE, "double", "d", 1, "d", "f8", ">f8"),
    Kind(PVM_CPLX, "cplx", "f", 2, "f", "c8", ">c8"),
    Kind(PVM_DCPLX, "dcplx", "d", 2, "d", "c16", ">c16"),
)}
SWAP = sys.byteorder == "little"  # XDR is big-endian
_ZEROS = [bytes(n) for n in range(4)]  # XDR's padding of a byte array, by length
_BYTES = (bytes, bytearray)
_SAME = {"l": "q", "L": "Q"}  # memoryview formats that are the same type on LP64


def kind(datatype: int) -> Kind:
    try:
        return KINDS[datatype]
    except (KeyError, TypeError):
        raise PvmError(PvmBadParam, f"unknown datatype {datatype!r}") from None


def _arr(tc: str, data) -> array:
    """An array.array of typecode *tc* holding the bytes of *data* (one copy)."""
    a = array(tc)
    if isinstance(data, memoryview) and data.format != "B":  # frombytes takes bytes only
        data = data.cast("B") if data.c_contiguous else data.tobytes()
    a.frombytes(data)
    return a


def _np():
    """numpy, only if the program already imported it (we never import it ourselves)."""
    return sys.modules.get("numpy")


def _count(nitem, stride) -> None:
    if not isinstance(nitem, int) or isinstance(nitem, bool) or nitem < 0:
        raise PvmError(PvmBadParam, f"nitem {nitem!r} must be an int >= 0")
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise PvmError(PvmBadParam, f"stride {stride!r} must be an int >= 1")


def _span(nitem: int, stride: int) -> int:
    """Items of the source an array of *nitem* taken every *stride* covers."""
    return 0 if nitem == 0 else (nitem - 1) * stride + 1


def _short(what: str, have: int, nitem: int, stride: int) -> PvmError:
    return PvmError(PvmBadParam, f"{what} has {have} items; nitem {nitem} with stride {stride} "
                                 f"needs {_span(nitem, stride)}")


def _typed_view(mv: memoryview, k: Kind, writable: bool) -> memoryview | None:
    """*mv* as a flat view of *k*'s components, if its memory holds them (same type,
    or raw bytes read as C would); None if it holds another type."""
    fmt = mv.format.lstrip("@=<")
    fmt = _SAME.get(fmt, fmt)
    if writable and mv.readonly:
        raise PvmError(PvmBadParam, "the buffer to unpack into is read-only")
    if not mv.c_contiguous:
        if mv.ndim == 1 and fmt == k.tc and k.per == 1:
            return mv  # a strided 1-D view of the right type: slicing works on it
        raise PvmError(PvmBadParam, "the buffer is not contiguous")
    if fmt == k.tc or (k.per == 2 and fmt in ("Zf", "Zd") and fmt[1] == k.tc) or fmt in ("B", "b", "c"):
        b = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
        if b.nbytes % array(k.tc).itemsize:
            raise PvmError(PvmBadParam, f"a buffer of {b.nbytes} bytes does not hold whole {k.name}s")
        return b.cast(k.tc)  # type: ignore[call-overload]  # (a typecode from KINDS)
    return None


def source(values: Any, k: Kind, nitem: int, stride: int, copy: bool = True):
    """The *nitem* items of *values* (every *stride*-th) as native components: an
    array.array, a memoryview (copy=False and no stride: in place) or a numpy array."""
    _count(nitem, stride)
    need = _span(nitem, stride)
    np = _np()
    if np is not None and isinstance(values, np.ndarray):
        flat = values.reshape(-1)
        if flat.size < need:
            raise _short("the array", flat.size, nitem, stride)
        sel = flat[:need:stride]
        if sel.dtype != np.dtype(k.np):
            if not np.can_cast(sel.dtype, k.np, "same_kind"):
                raise PvmError(PvmBadParam, f"cannot pack a numpy {sel.dtype} array as {k.name}")
            sel = sel.astype(k.np)
        return sel
    if isinstance(values, (int, float, complex)) and not isinstance(values, bool):
        if nitem > 1:
            raise PvmError(PvmBadParam, f"a scalar is one item, not nitem {nitem}")
        values = [values][:nitem]
    if isinstance(values, str):
        if k.code != PVM_BYTE:
            raise PvmError(PvmBadParam, f"a str cannot be packed as {k.name} (pvm_pkstr packs strings)")
        values = values.encode()
    try:
        mv = memoryview(values)
    except TypeError:
        mv = None
    if mv is not None:
        tv = _typed_view(mv, k, False)
        if tv is not None:
            comps = len(tv) // k.per if tv.c_contiguous else len(tv)
            if comps < need:
                raise _short("the buffer", comps, nitem, stride)
            if stride == 1 and not copy and tv.c_contiguous:
                return tv[:nitem * k.per]
            if k.per == 1:
                out = _arr(k.tc, tv[:need:stride])
            else:
                out = _arr(k.tc, tv[:need * 2])
                out = _pairs(out, nitem, stride)
            return out
        values = mv.tolist()  # another element type: converted item by item, as C's casts would not
    try:
        seq = list(values[:need:stride]) if hasattr(values, "__getitem__") else list(values)[:need:stride]
    except TypeError:
        raise PvmError(PvmBadParam, f"cannot pack {type(values).__name__} as {k.name}") from None
    if len(seq) < nitem:
        raise _short(type(values).__name__, len(seq) * stride, nitem, stride)
    try:
        if k.per == 2:
            return array(k.tc, [p for c in seq for p in (complex(c).real, complex(c).imag)])
        return array(k.tc, seq)
    except (TypeError, OverflowError, ValueError) as e:
        if k.code == PVM_BYTE:
            try:
                return _arr("B", array("b", seq))  # signed bytes, as C's char
            except (TypeError, OverflowError, ValueError):
                pass
        raise PvmError(PvmBadParam, f"cannot pack {seq[:3]!r}... as {k.name}: {e}") from None


def _pairs(comps: array, nitem: int, stride: int) -> array:
    """Every *stride*-th pair of components (complex numbers) of *comps*."""
    mv = memoryview(comps)
    out = array(comps.typecode, bytes(nitem * 2 * comps.itemsize))
    ov = memoryview(out)
    ov[0::2] = mv[0:2 * _span(nitem, stride):2 * stride]
    ov[1::2] = mv[1:2 * _span(nitem, stride):2 * stride]
    return out


# pvm_recv offers a received buffer's memory to the next message, after a small one only
# its first SMALL_ROOM bytes: a precv_into buffer from calibrate's smallest direct size up
# is posted for direct delivery while the receive waits, which is for large messages
SMALL_ROOM = calibrate.FORCED_MIN - 1
SPARE_MAX = 64 << 20  # a freed send buffer up to this size is kept for the next one
_SPARE: list[bytearray] = []
_RSPARE: list[bytearray] = []  # a freed receive buffer's memory, for the next receive


def keep_room(room: bytearray) -> None:
    """Keep *room* (a received message's memory, no longer used) for the next receive,
    if it is the largest so far: its pages are already mapped."""
    if len(room) <= SPARE_MAX and (not _RSPARE or len(_RSPARE[0]) < len(room)):
        _RSPARE[:] = [room]


def receive_room(n: int) -> bytearray:
    """Memory for a received message of at least *n* bytes (a freed one reused)."""
    if _RSPARE and len(_RSPARE[0]) >= n:
        return _RSPARE.pop()
    return bytearray(max(n, 65536))


class Buffer:
    """One PVM message buffer (``bufid`` in the table of shmd.pvmmsg).

    A send buffer: ``pack``/``pkstr`` append, ``wire()`` gives the message to send.
    A receive buffer: ``unpack``/``upkstr`` read from ``pos`` on in ``body``."""

    def __init__(self, encoding: int, body: memoryview | None = None, src: int = -1, tag: int = -1,
                 wire_enc: int | None = None, keep: Any = None):
        if encoding not in ENCODINGS:
            raise PvmError(PvmBadParam, f"encoding {encoding!r} is not PvmDataDefault, PvmDataRaw "
                                        "or PvmDataInPlace")
        self.encoding = encoding
        self.src, self.tag = src, tag
        self.pos = 0
        self._keep = keep  # the memory the body is in (a bytearray to reuse, or a view to release)
        self._parts: list[Any] | None = [] if encoding == PvmDataInPlace and body is None else None
        self._whole: memoryview | None = None  # a view on all of _keep (a bytearray): pvm_recv refills it
        self._head: memoryview | None = None  # ... its first SMALL_ROOM bytes
        self._big = False  # the last message received into _keep was larger than SMALL_ROOM
        if body is None:  # a send buffer: the header's room first
            self.wire_enc = XDR if encoding == PvmDataDefault else RAW
            self._data = _SPARE.pop() if _SPARE else bytearray(HEADER.size + 240)
            self._n = HEADER.size
            self.body: memoryview | None = None
        else:
            self.wire_enc = RAW if wire_enc is None else wire_enc
            self._data = bytearray()  # (a receive buffer's memory is _keep's)
            self._n = 0
            self.body = body

    @classmethod
    def received(cls, src: int, tag: int, room: bytearray, n: int) -> Buffer:
        """A receive buffer on a message received into the first *n* bytes of *room*
        (our own memory, reused: kept with the buffer, handed back when it is freed).
        What ``Buffer(enc, parse(...)[1], src, tag, wire_enc=enc, keep=room)`` makes,
        in fewer steps: every message a pvm_recv takes is made here."""
        enc, start = body_at(room, n)
        b = cls.__new__(cls)
        b.encoding, b.wire_enc, b.src, b.tag, b.pos = enc, enc, src, tag, 0  # (XDR, RAW == Default, Raw)
        b._keep, b._parts, b._data, b._n = room, None, bytearray(), 0
        b._whole = memoryview(room)
        b._head = b._whole[:SMALL_ROOM]
        b._big = n > SMALL_ROOM
        b.body = b._whole[start:n]
        return b

    # ---- size and the message --------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        if self.body is not None:
            return self.body.nbytes
        if self._parts is not None:
            return sum(memoryview(p).nbytes for p in self._parts)
        return self._n - HEADER.size

    def wire(self) -> memoryview | bytes:
        """The message as sent: the header, then the body (InPlace: read now)."""
        if self.body is not None:
            raise PvmError(PvmBadParam, "a received buffer cannot be sent (pack a new one)")
        if self._parts is not None:
            body = b"".join(self._parts)
            return HEADER.pack(MAGIC, VERSION, RAW, len(body)) + body
        HEADER.pack_into(self._data, 0, MAGIC, VERSION, self.wire_enc, self._n - HEADER.size)
        return memoryview(self._data)[:self._n]

    def free(self) -> None:
        """Let go of the memory: parts referenced in place, a received view's pages."""
        self._parts = None
        if self.body is not None:
            self.body.release()
        self.body = None
        if self._whole is not None:
            self._head.release()  # type: ignore[union-attr]  # (made with _whole)
            self._whole.release()
            self._whole = self._head = None
        if self._data:
            if len(self._data) <= SPARE_MAX and not _SPARE:
                _SPARE.append(self._data)  # its pages stay mapped: the next message is packed at memory speed
            self._data = bytearray()
        keep, self._keep = self._keep, None
        if isinstance(keep, bytearray):
            keep_room(keep)
        elif keep is not None:
            keep.release()

    # ---- writing ---------------------------------------------------------------------------
    def _room(self, n: int) -> memoryview:
        """*n* bytes more at the end of the send buffer, to be written."""
        if self.body is not None:
            raise PvmError(PvmBadParam, "cannot pack into a received buffer (pvm_initsend first)")
        end = self._n + n
        if end > len(self._data):
            try:
                self._data.extend(bytes(max(end - len(self._data), len(self._data))))
            except MemoryError:
                raise PvmError(PvmNoMem, f"no memory for a {end}-byte message") from None
        self._n = end
        return memoryview(self._data)[end - n:end]

    def _put(self, data) -> None:
        if self._parts is not None:
            self._parts.append(data)
            return
        n = memoryview(data).nbytes
        with self._room(n) as r:
            r[:] = memoryview(data).cast("B")

    def reset(self, encoding: int) -> bool:
        """Empty this send buffer for a new message in *encoding* (its memory kept);
        False if it cannot be (a received buffer, an unknown encoding)."""
        if self.body is not None or encoding not in ENCODINGS:
            return False
        self.encoding, self.wire_enc, self._n = encoding, XDR if encoding == PvmDataDefault else RAW, HEADER.size
        self._parts = [] if encoding == PvmDataInPlace else None  # (the parts referenced are let go)
        return True

    def pack(self, datatype: int, values: Any, nitem: int = 1, stride: int = 1) -> None:
        if (datatype == PVM_BYTE and stride == 1 and type(values) in _BYTES and type(nitem) is int
                and 0 <= nitem <= len(values) and self.body is None):
            # the common pvm_pkbyte of bytes, without the general path's steps (no view
            # and no context manager: a slice store into the buffer's own bytearray)
            part = values if nitem == len(values) else memoryview(values)[:nitem]
            if self._parts is not None:
                self._parts.append(memoryview(values)[:nitem])  # InPlace: referenced, read at send
                return
            pad = -nitem % 4 if self.wire_enc == XDR else 0
            start = self._n
            end = start + nitem + pad
            d = self._data
            if end > len(d):
                self._room(nitem + pad)  # grows it (PvmNoMem if it cannot)
            d[start:start + nitem] = part
            if pad:
                d[end - pad:end] = _ZEROS[pad]  # (reused memory: the padding must be zeros)
            self._n = end
            return
        k = kind(datatype)
        src = source(values, k, nitem, stride, copy=False)  # a view is read before we return (InPlace: at send)
        np = _np()
        if np is not None and isinstance(src, np.ndarray):
            if self.wire_enc == XDR and k.code != PVM_BYTE:
                with self._room(nitem * k.xdr) as r:
                    np.frombuffer(r, dtype=k.np_xdr)[...] = src  # converts and swaps in one pass
                return
            if self._parts is None:
                with self._room(src.nbytes) as r:
                    np.frombuffer(r, dtype=k.np)[...] = src
            elif src.flags.c_contiguous and src.base is not None:
                self._parts.append(memoryview(src).cast("B"))  # a view on the caller's array: read at send
            else:
                self._parts.append(src.tobytes())
            if self.wire_enc == XDR:  # bytes: padded to 4
                self._pad(src.nbytes)
            return
        if self.wire_enc == RAW:
            self._put(src)
            return
        if k.code == PVM_BYTE:
            self._put(src)
            self._pad(memoryview(src).nbytes)
            return
        wire = array(k.xdr_tc, src) if k.xdr_tc != k.tc else _arr(k.tc, memoryview(src).cast("B"))
        if SWAP:
            wire.byteswap()
        self._put(wire)

    def _pad(self, n: int) -> None:
        if n % 4:
            self._put(bytes(-n % 4))

    def pkstr(self, s: str | bytes) -> None:
        if isinstance(s, str):
            b = s.encode("utf-8", "surrogateescape")
        elif isinstance(s, (bytes, bytearray)):
            b = bytes(s)
        else:
            raise PvmError(PvmBadParam, f"pvm_pkstr takes a str or bytes, not {type(s).__name__}")
        if b"\0" in b:
            raise PvmError(PvmBadParam, "a string to pack holds a NUL (C strings end there)")
        n = len(b) + 1
        if self.wire_enc == XDR:
            self._put(struct.pack(">i", n) + b + bytes(1 + (-n % 4)))
        else:
            self._put(struct.pack("=i", n) + b + b"\0")

    # ---- reading ---------------------------------------------------------------------------
    def _take(self, n: int, what: str) -> memoryview:
        if self.body is None:
            raise PvmError(PvmNoData, "not a received buffer (nothing to unpack)")
        if self.pos + n > self.body.nbytes:
            raise PvmError(PvmNoData, f"unpacking {what} ({n} bytes) past the end of the message "
                                      f"({self.body.nbytes - self.pos} of {self.body.nbytes} bytes left)")
        mv = self.body[self.pos:self.pos + n]
        self.pos += n
        return mv

    def unpack(self, datatype: int, target: Any, nitem: int = 1, stride: int = 1):
        """Read *nitem* items into *target* (every *stride*-th place); return *target*,
        or when it is None a new array.array (a list of complex for complex types)."""
        if (datatype == PVM_BYTE and stride == 1 and type(target) is bytearray and type(nitem) is int
                and 0 <= nitem <= len(target)):
            # the common pvm_upkbyte into a bytearray, without the general path's steps
            body, pos = self.body, self.pos
            end = pos + nitem + (-nitem % 4 if self.wire_enc == XDR else 0)
            if body is not None and end <= body.nbytes:
                target[:nitem] = body[pos:pos + nitem]
                self.pos = end
                return target
            self._take(end - pos, f"{nitem} bytes")  # raises PvmNoData, naming what is short
        k = kind(datatype)
        _count(nitem, stride)
        xdr = self.wire_enc == XDR
        n = nitem * (k.xdr if xdr else k.native)
        pad = -n % 4 if xdr and k.code == PVM_BYTE else 0
        start = self.pos
        raw = self._take(n + pad, f"{nitem} {k.name}")
        raw = raw[:n]
        np = _np()
        try:
            if np is not None and isinstance(target, np.ndarray):
                self._into_numpy(np, k, raw, target, nitem, stride, xdr)
                return target
            comps = self._decode(k, raw, xdr)
            if target is None:
                if k.per == 2:
                    return [complex(comps[2 * i], comps[2 * i + 1]) for i in range(nitem)]
                return comps
            self._store(k, comps, target, nitem, stride)
            return target
        except BaseException:
            self.pos = start  # nothing read: the same unpack may be retried
            raise

    @staticmethod
    def _decode(k: Kind, raw: memoryview, xdr: bool) -> array:
        if not xdr:
            return _arr(k.tc, raw)
        wire = _arr(k.xdr_tc, raw)
        if SWAP:
            wire.byteswap()
        return array(k.tc, wire) if k.xdr_tc != k.tc else wire

    @staticmethod
    def _into_numpy(np, k: Kind, raw: memoryview, target, nitem: int, stride: int, xdr: bool) -> None:
        if target.ndim != 1 and not target.flags.c_contiguous:
            raise PvmError(PvmBadParam, "the array to unpack into is not contiguous")
        if not target.flags.writeable:
            raise PvmError(PvmBadParam, "the array to unpack into is read-only")
        flat = target.reshape(-1)
        need = _span(nitem, stride)
        if flat.size < need:
            raise _short("the array", flat.size, nitem, stride)
        got = np.frombuffer(raw, dtype=k.np_xdr if xdr else k.np, count=nitem)
        dest = flat[:need:stride]
        if not np.can_cast(got.dtype, dest.dtype, "same_kind"):
            raise PvmError(PvmBadParam, f"cannot unpack {k.name} into a numpy {dest.dtype} array")
        dest[...] = got

    @staticmethod
    def _store(k: Kind, comps: array, target, nitem: int, stride: int) -> None:
        need = _span(nitem, stride)
        if isinstance(target, list):
            if len(target) < need:
                raise _short("the list", len(target), nitem, stride)
            if k.per == 2:
                target[:need:stride] = [complex(comps[2 * i], comps[2 * i + 1]) for i in range(nitem)]
            else:
                target[:need:stride] = comps.tolist()
            return
        try:
            mv = memoryview(target)
        except TypeError:
            raise PvmError(PvmBadParam, f"cannot unpack into {type(target).__name__} "
                                        "(a writable buffer or a list)") from None
        tv = _typed_view(mv, k, True)
        if tv is None:
            raise PvmError(PvmBadParam, f"cannot unpack {k.name} into a buffer of format {mv.format!r}")
        have = len(tv) // k.per if tv.c_contiguous else len(tv)
        if have < need:
            raise _short("the buffer", have, nitem, stride)
        cv = memoryview(comps)
        if k.per == 1:
            tv[:need:stride] = cv
        else:
            tv[0:2 * need:2 * stride] = cv[0::2]
            tv[1:2 * need:2 * stride] = cv[1::2]

    def upkstr(self) -> str:
        if self.body is None:
            raise PvmError(PvmNoData, "not a received buffer (nothing to unpack)")
        start = self.pos
        try:
            (n,) = struct.unpack(">i" if self.wire_enc == XDR else "=i", self._take(4, "a string's length"))
            if n < 1:
                raise PvmError(PvmNoData, f"a string's length {n} (not a string here)")
            pad = -n % 4 if self.wire_enc == XDR else 0
            b = self._take(n + pad, f"a string of {n - 1} bytes")
        except BaseException:
            self.pos = start
            raise
        return bytes(b[:n - 1]).decode("utf-8", "surrogateescape")


def body_at(data, n: int) -> tuple[int, int]:
    """(wire encoding, offset of the body) of a received message, the first *n* bytes
    of *data*: a packed one's header read and checked, anything else (a psend's
    bytes) Raw from offset 0."""
    if n >= HEADER.size:
        magic, version, enc, length = HEADER.unpack_from(data)
        if magic == MAGIC and version == VERSION and (enc == XDR or enc == RAW) and length == n - HEADER.size:
            return enc, HEADER.size
    return RAW, 0


def parse(data: memoryview) -> tuple[int, memoryview]:
    """(wire encoding, body) of a received message (see body_at)."""
    enc, start = body_at(data, data.nbytes)
    return enc, (data[start:] if start else data)

"""Message contents, checks and iteration counts shared by bench_ipc.py and _mpi_ipc.py.

Every message is a deterministic pseudo-random buffer of its size (the same in every
process, forked or started by mpirun). The first 16 bytes carry the sequence number and
the length (a message of 8..15 bytes carries only the sequence number). The receiver
of a stream checks length, sequence number and the CRC-32 of one 256-byte window whose
place changes with the sequence number (64 places, CRCs computed in advance): the
check costs the same small amount for every transport and catches stale, torn,
reordered or truncated messages.
"""
from __future__ import annotations

import random
import struct
import zlib

WINDOW = 256
_QQ = struct.Struct("<QQ")
_Q = struct.Struct("<Q")


class Payload:
    def __init__(self, size: int):
        self.size = size
        self.buf = bytearray(random.Random(size).randbytes(size))
        self.hdr = 16 if size >= 16 else 8 if size >= 8 else 0
        span = size - self.hdr - WINDOW
        if span > 0:
            self.offs = [self.hdr + (k * 40503 * 64) % span for k in range(64)]
            self.crcs = [zlib.crc32(self.buf[o:o + WINDOW]) for o in self.offs]
        else:
            self.offs = self.crcs = None

    def stamp(self, seq: int) -> None:
        if self.hdr == 16:
            _QQ.pack_into(self.buf, 0, seq, self.size)
        elif self.hdr == 8:
            _Q.pack_into(self.buf, 0, seq)

    def check_echo(self, data, seq: int) -> bool:
        """A ping-pong reply: right length and sequence number."""
        if len(data) != self.size:
            return False
        if self.hdr == 16:
            return _QQ.unpack_from(data, 0) == (seq, self.size)
        if self.hdr == 8:
            return _Q.unpack_from(data, 0)[0] == seq
        return True

    def verify(self, data, nbytes: int, seq: int) -> str | None:
        """A streamed message: None if it is message *seq*, else what is wrong."""
        if nbytes != self.size:
            return f"message {seq}: {nbytes} bytes, expected {self.size}"
        if self.hdr == 16:
            s, n = _QQ.unpack_from(data, 0)
            if s != seq or n != self.size:
                return f"message {seq}: header says seq {s} length {n}"
        if self.offs is not None:
            k = seq & 63
            o = self.offs[k]
            if zlib.crc32(data[o:o + WINDOW]) != self.crcs[k]:
                return f"message {seq}: CRC of bytes {o}..{o + WINDOW} differs"
        return None


def lat_iters(size: int, scale: float = 1.0) -> tuple[int, int]:
    """(timed round trips, warm-up round trips) for a ping-pong of *size* bytes."""
    iters = max(60, min(6000, int(2.4e8 / max(size, 65536))))
    iters = max(20, int(iters * scale))
    return iters, max(5, iters // 20)


def bw_count(size: int, scale: float = 1.0) -> tuple[int, int]:
    """(timed messages, warm-up messages) for a stream of *size*-byte messages."""
    n = max(24, min(6000, (384 << 20) // size))
    n = max(8, int(n * scale))
    # at least 6 warm-up messages: a fresh 16 MiB receive buffer takes a few to fault in
    return n, max(6, n // 20)

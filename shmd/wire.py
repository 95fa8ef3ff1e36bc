"""What travels between hosts: the frames of a message and of a request, and how a
ZeroMQ socket is made the VM's. Shared by pvm_netd (netd.py), its requesters (netask.py)
and the tasks that send to other hosts themselves (netsend.py).

ZeroMQ, and CURVE, which seals each frame apart, cost per frame, not per byte (three
frames cost 15-30 us more CPU than one, on each end, in a small CURVE round trip here):
so a whole message under BIG bytes is one frame (ONE: the kind byte, the NET header,
the body), as is a request to a pvm_netd and its answer (ASK or ANSWER, the request's
id, a space, the JSON). A chunk of a larger message is three frames: its kind (MSG, or
BIG_KIND for a chunk of BIG bytes or more, which the receiving pvm_netd takes without a
copy), the NET header (source, destination, tag, total length, this chunk's offset) and
the chunk, which goes to and from ZeroMQ uncopied when large. Every host of a VM speaks
the same WIRE: pvm_netd hears no peer of another (netd.py's hello).
"""
from __future__ import annotations

import struct

import zmq

NET = struct.Struct("<IIiQQ")  # on the wire: src, dest, tag, total, offset
BIG = 65536  # a chunk this large goes to and from zmq uncopied (below it, copying is cheaper)
MSG = b"m"  # a message chunk
BIG_KIND = b"M"  # a message chunk of BIG bytes or more (received without a copy)
ONE = b"s"  # a whole message under BIG bytes in one frame: this byte, the NET header, the body
ONE_HEAD = len(ONE) + NET.size  # where a ONE frame's body starts
ASK, ANSWER = b"q", b"r"  # a request to a pvm_netd and its answer, one frame each
WIRE = 2  # this release's frames: pvm_netd's hellos and ready line say it; one of another is not heard
ZAP_DOMAIN = "pvm"  # the domain pvm_netd's ZAP handler judges (every other is refused)
PLAIN_USER = b"pvm"  # a trusted network's PLAIN login: this name, the VM's secret key as password


_MORE, NOBLOCK = int(zmq.SNDMORE), int(zmq.NOBLOCK)  # (plain ints: see send_frames)


def send_frames(sock: zmq.Socket, frames: list, flags: int = 0, copy: bool = True) -> None:
    """``sock.send_multipart(frames, flags, copy=copy)`` at under half its cost: every
    frame sent with plain int flags (pyzmq's own combines its enum flags and checks each
    frame's type, frame by frame: 16.6 us against 6.3 for a four-frame answer here).
    ZeroMQ takes a message's frames whole or not at all: only the first send can raise
    zmq.Again, and then nothing was sent. Every frame must be bytes-like (ours are)."""
    send = sock.send
    more = flags | _MORE
    for f in frames[:-1]:
        send(f, more, copy=copy)
    send(frames[-1], flags, copy=copy)


def chunk_frames(src: int, dest: int, tag: int, total: int, off: int, body) -> list:
    """The frames of one chunk of a message (*body*, at *off* of *total* bytes): a whole
    message under BIG bytes as one ONE frame."""
    if off == 0 and len(body) == total < BIG:
        return [b"".join((ONE, NET.pack(src, dest, tag, total, 0), body))]
    return [BIG_KIND if len(body) >= BIG else MSG, NET.pack(src, dest, tag, total, off), body]


def chunk_length(frames: list) -> int:
    """How many bytes of its message the chunk *frames* (chunk_frames') carry."""
    return len(frames[2]) if len(frames) == 3 else len(frames[0]) - ONE_HEAD


def request(kind: bytes, rid: bytes, body: bytes) -> bytes:
    """The one frame of an ASK or ANSWER (*kind*): *rid* (digits), a space, *body* (JSON)."""
    return b"".join((kind, rid, b" ", body))


def split_request(frame: bytes) -> tuple[bytes, bytes]:
    """The (id, JSON) of an ASK or ANSWER *frame*."""
    rid, _, body = frame[1:].partition(b" ")
    return rid, body


def secure(sock: zmq.Socket, public: bytes, secret: bytes, trusted: bool, server: bool) -> None:
    """Set *sock* up as the VM's: CURVE with the VM's key pair (authenticated and
    encrypted), or with *trusted* (a private network the user trusts) ZeroMQ's PLAIN:
    authenticated by the VM's secret, not encrypted. Both are checked by pvm_netd's Zap."""
    if trusted:
        if server:
            sock.plain_server = True
        else:
            sock.plain_username, sock.plain_password = PLAIN_USER, secret
    elif server:
        sock.curve_server = True
        sock.curve_secretkey, sock.curve_publickey = secret, public
    else:
        sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = secret, public, public
    if server:
        sock.zap_domain = ZAP_DOMAIN.encode()

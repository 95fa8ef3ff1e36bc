"""pvm_shmd's connections: non-blocking, one JSON request per line, every one bounded.

No client can stall or kill the daemon: a request line is at most MAX_LINE bytes and
parsed so that nothing raises out of the loop (a ``[`` nested a thousand deep included);
replies wait in a per-client buffer, and a client that does not read them is not read
from until it does (nothing blocks on a socket); nor is one whose requests already read
and not yet served pass MAX_IN (so no client's buffers grow without bound); each turn of the loop serves at most
LINES_PER_TURN requests of a client, so reaping never waits behind a flood; connections
are capped by the file-descriptor limit, and an idle one that never joined is closed
after IDLE_TIMEOUT. Who a client is comes from the kernel (SO_PEERCRED), never from
what it says.
"""
from __future__ import annotations

import errno
import json
import resource
import selectors
import socket
import time
from collections.abc import Callable

from .control import peer_credentials
from .errors import PvmBadParam

MAX_LINE = 64 << 10  # a request longer than this is refused and its client dropped
MAX_OUT = 256 << 10  # replies waiting for a client that does not read them
MAX_IN = 256 << 10  # requests read and not served yet: more wait in the socket (the kernel's)
LINES_PER_TURN = 8  # requests of one client served per turn of the loop
IDLE_TIMEOUT = 30.0  # an idle connection without a task is closed after this (seconds)
FD_RESERVE = 64  # descriptors kept for the daemon itself (segments, log, semaphores)
ACCEPT_PAUSE = 0.05  # out of descriptors: stop accepting this long (no busy loop)


class BadRequest(Exception):
    """A request line that is not a JSON object with a string "op"."""


def parse_request(line: bytes) -> dict:
    """The request on *line*, or BadRequest saying why not (never anything else)."""
    try:
        req = json.loads(line)
    except (ValueError, RecursionError, MemoryError):
        raise BadRequest("bad request: not JSON") from None
    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
        raise BadRequest('bad request: not an object with an "op"')
    return req


def error_reply(msg: str, code: int = PvmBadParam) -> dict:
    return {"error": msg, "code": code}


class Client:
    """One connection: who is at the other end (from the kernel) and its buffers."""

    __slots__ = ("sock", "pid", "uid", "slot", "inbuf", "outbuf", "last")

    def __init__(self, sock: socket.socket, pid: int, uid: int, slot: int | None = None):
        self.sock, self.pid, self.uid = sock, pid, uid
        self.slot = slot  # the task slot this connection holds (joined)
        self.inbuf, self.outbuf = bytearray(), bytearray()
        self.last = time.monotonic()


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one (at most 65536); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard if hard != resource.RLIM_INFINITY else 65536, 65536)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


class Clients:
    """The listening socket and every connection, served from the daemon's loop."""

    def __init__(self, sel: selectors.BaseSelector, log: Callable[[str], None],
                 handle: Callable[[Client, dict], dict], dropped: Callable[[Client, bool], None],
                 allowed_uids: tuple[int, ...]):
        self.sel, self.log, self.handle, self.dropped = sel, log, handle, dropped
        self.allowed = allowed_uids
        self.all: dict[socket.socket, Client] = {}
        self.busy: set[Client] = set()  # complete request lines not yet served
        self.listener: socket.socket | None = None
        self.paused_until = 0.0
        self.max_clients = max(16, raise_fd_limit() - FD_RESERVE)

    def listen(self, sock: socket.socket) -> None:
        self.listener = sock
        self.sel.register(sock, selectors.EVENT_READ, self)

    def __iter__(self):
        return iter(list(self.all.values()))

    # ---- accepting --------------------------------------------------------------------
    def accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # the pending connection stays readable: without a pause the loop spins
                if not self._evict_idle():
                    self._pause()
            return
        try:
            pid, uid = peer_credentials(conn)
        except OSError:
            conn.close()
            return
        if uid not in self.allowed:  # the socket is 0600 in a 0700 directory: belt and braces
            self.log(f"refused a connection from uid {uid} (pid {pid})")
            conn.close()
            return
        if len(self.all) >= self.max_clients and not self._evict_idle():
            self.log(f"refused a connection from pid {pid}: {len(self.all)} connections open")
            conn.close()
            return
        conn.setblocking(False)
        c = Client(conn, pid, uid)
        self.all[conn] = c
        self.sel.register(conn, selectors.EVENT_READ, c)

    def _evict_idle(self) -> bool:
        """Close the longest-idle connection that holds no task; False if there is none."""
        idle = [c for c in self.all.values() if c.slot is None and not c.inbuf]
        if not idle:
            return False
        self.drop(min(idle, key=lambda c: c.last))
        return True

    def _pause(self) -> None:
        assert self.listener is not None
        self.sel.unregister(self.listener)
        self.paused_until = time.monotonic() + ACCEPT_PAUSE

    def resume(self, now: float) -> None:
        """Accept again after a pause (called every turn of the loop)."""
        if self.paused_until and now >= self.paused_until:
            assert self.listener is not None
            self.paused_until = 0.0
            self.sel.register(self.listener, selectors.EVENT_READ, self)

    # ---- serving ----------------------------------------------------------------------
    def event(self, c: Client, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(c)
        if mask & selectors.EVENT_READ and c.sock in self.all:
            self._read(c)

    def _read(self, c: Client) -> None:
        if len(c.inbuf) >= MAX_IN:
            # it sends faster than it is served: its lines are served first (the loop does not
            # sleep while a client is busy), then it is read again
            return
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.drop(c, reap=True)
            return
        c.last = time.monotonic()
        c.inbuf += data
        if b"\n" in data:
            self.busy.add(c)
        elif len(c.inbuf) > MAX_LINE:
            self.log(f"dropped pid {c.pid}: a request line over {MAX_LINE} bytes")
            self.drop(c, reap=True)

    def serve(self) -> None:
        """Serve up to LINES_PER_TURN requests of every client with some waiting."""
        for c in list(self.busy):
            for _ in range(LINES_PER_TURN):
                if c.sock not in self.all or len(c.outbuf) > MAX_OUT:
                    break  # gone, or not reading its replies: wait until it does
                nl = c.inbuf.find(b"\n")
                if nl < 0:
                    break
                line = bytes(c.inbuf[:nl])
                del c.inbuf[:nl + 1]
                if nl > MAX_LINE:
                    self.log(f"dropped pid {c.pid}: a request line over {MAX_LINE} bytes")
                    self.drop(c, reap=True)
                    break
                try:
                    reply = self.handle(c, parse_request(line))
                except BadRequest as e:
                    reply = error_reply(str(e))
                except Exception as e:  # a bug must cost one request, never the daemon
                    self.log(f"request from pid {c.pid} failed: {e!r}")
                    reply = error_reply(f"bad request: {type(e).__name__}: {e}")
                c.outbuf += json.dumps(reply).encode() + b"\n"
                self._flush(c)
            if c.sock not in self.all or b"\n" not in c.inbuf or len(c.outbuf) > MAX_OUT:
                self.busy.discard(c)

    def _flush(self, c: Client) -> None:
        if c.sock not in self.all:
            return
        try:
            while c.outbuf:
                n = c.sock.send(c.outbuf)
                del c.outbuf[:n]
        except BlockingIOError:
            pass
        except OSError:
            self.drop(c, reap=True)
            return
        # writable events only while replies wait; no reading while too many do
        want = ((selectors.EVENT_WRITE if c.outbuf else 0)
                | (selectors.EVENT_READ if len(c.outbuf) <= MAX_OUT else 0))
        if self.sel.get_key(c.sock).events != want:
            self.sel.modify(c.sock, want, c)
        if not c.outbuf and b"\n" in c.inbuf:
            self.busy.add(c)

    def expire(self, now: float) -> None:
        """Close connections that hold no task and were idle for IDLE_TIMEOUT."""
        for c in list(self.all.values()):
            if c.slot is None and now - c.last > IDLE_TIMEOUT:
                self.drop(c)

    def drop(self, c: Client, reap: bool = False) -> None:
        """Close *c*; the daemon hears of it (to reap its task when *reap*)."""
        if self.all.pop(c.sock, None) is None:
            return
        self.busy.discard(c)
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        self.dropped(c, reap)

    def close(self) -> None:
        for c in list(self.all.values()):
            self.drop(c)
        if self.listener is not None:
            self.listener.close()

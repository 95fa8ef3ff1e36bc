"""Peers for the message-passing tests (no tests here; the daemon they join comes from
daemons.py, through conftest's ``daemon`` fixture).

* ``Peer``: a child Python process that runs snippets sent to it over a pipe
  (``peer.call("me.psend(dest, 1, b'x')", dest=tid)``) and answers with their result:
  each peer is a separate process, hence a task of its own (pvm_shmd gives one tid per
  process). Every wait has a timeout; a peer that does not answer fails the test.

Run as a script, this file is the peer's side.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import zlib

HERE = os.path.abspath(__file__)
BIN = os.path.dirname(sys.executable)
ROOT = os.path.dirname(os.path.dirname(HERE))  # tests/peers.py: the checkout is two up


def payload(seed: int, size: int) -> bytes:
    """Deterministic bytes of *size* for message number *seed* (cheap for MiBs)."""
    if size == 0:
        return b""
    head = seed.to_bytes(8, "little")
    block = zlib.crc32(head).to_bytes(4, "little") * 256 + head
    reps = size // len(block) + 1
    return (block * reps)[:size]


def crc(data) -> int:
    return zlib.crc32(data)


# ---- peers -------------------------------------------------------------------------
class PeerError(Exception):
    def __init__(self, reply: dict):
        super().__init__(reply.get("error"))
        self.code = reply.get("code")
        self.type = reply.get("type")


class Peer:
    """A child process running snippets; ``me`` in them is its task once joined."""

    def __init__(self, join: bool = True, env: dict | None = None, timeout: float = 20):
        self.proc = subprocess.Popen([sys.executable, HERE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd=ROOT,
                                     start_new_session=True)
        self.buf = b""
        self.pending = 0
        self.tid = self.call("me = shmd.join(); result = me.tid", timeout=timeout) if join else None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, code: str, **names) -> None:
        """Send a snippet without waiting for its answer (see ``result``)."""
        msg = json.dumps({"code": code, "names": names}).encode() + b"\n"
        self.proc.stdin.write(msg)
        self.proc.stdin.flush()
        self.pending += 1

    def result(self, timeout: float = 20):
        """The answer to the oldest snippet started; raise PeerError for its exception."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"peer {self.pid} gave no answer within {timeout} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise EOFError(f"peer {self.pid} exited (status {self.proc.poll()})")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        self.pending -= 1
        reply = json.loads(line)
        if "error" in reply:
            raise PeerError(reply)
        return reply.get("result")

    def ready(self, timeout: float = 0.0) -> bool:
        """Has an answer arrived (without taking it)?"""
        if b"\n" in self.buf:
            return True
        ready, _, _ = select.select([self.proc.stdout.fileno()], [], [], timeout)
        return bool(ready)

    def call(self, code: str, timeout: float = 20, **names):
        self.start(code, **names)
        return self.result(timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except OSError:
                pass

    def wait(self, timeout: float = 10) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        """End the peer (leaving its task if it still can), whatever state it is in."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # EOF: the peer leaves and exits
            except OSError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
                self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class Peers:
    """Makes peers and ends all of them at teardown."""

    def __init__(self):
        self.all: list[Peer] = []

    def __call__(self, join: bool = True, **kw) -> Peer:
        p = Peer(join, **kw)
        self.all.append(p)
        return p

    def close(self) -> None:
        for p in self.all:
            p.kill()
        for p in self.all:
            p.close()


# ---- the peer's side ---------------------------------------------------------------
def agent() -> None:
    import traceback

    import shmd
    from shmd import pvm

    ns = {"shmd": shmd, "pvm": pvm, "payload": payload, "crc": crc, "os": os, "time": time,
          "signal": signal, "sys": sys}
    try:
        import numpy
        ns["np"] = numpy
    except ImportError:
        pass
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        req = json.loads(line)
        ns.update(req["names"])
        ns["result"] = None
        try:
            exec(req["code"], ns)
            reply = {"result": ns["result"]}
        except BaseException as e:  # noqa: BLE001 - everything goes back to the test
            reply = {"error": f"{type(e).__name__}: {e}", "type": type(e).__name__,
                     "code": getattr(e, "code", None), "tb": traceback.format_exc()}
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()
    me = ns.get("me")
    if me is not None:
        me.leave()


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    agent()

"""The console's open channel to a host's pvm_netd: requests answered in milliseconds.

A host's ``stat`` or task list used to cost a program start on the host (over SSH for a
remote one); with a pvm_netd running there the console asks it instead, on a ZeroMQ
DEALER socket with the VM's CURVE keys (the same authentication and encryption as the
messages between hosts), kept open for the console's life. Any failure (no answer
within the timeout, an error) raises PvmError(PvmHostFail); HostLink then falls back to
running the program, so nothing depends on the channel being there.
"""
from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Sequence

import zmq

from shmd.errors import PvmError, PvmHostFail
from shmd.netd import ANSWER, ASK, secure

ASK_TIMEOUT = 1.0  # seconds for an answer from a live pvm_netd (it answers in milliseconds)
_ids = itertools.count(1)


class NetLink:
    """Requests to one host's pvm_netd at *address*:*port*, keys the VM's (Z85 public, secret)."""

    def __init__(self, address: str, port: int, keys: Sequence[str], trusted: bool = False):
        self.where = f"tcp://{'127.0.0.1' if address in ('0.0.0.0', '::', '*') else address}:{port}"
        self.keys, self.trusted = keys, trusted
        self._lock = threading.Lock()
        self._sock: zmq.Socket | None = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            s: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
            s.linger = 0
            pub, sec = (k.encode("ascii") for k in self.keys)
            secure(s, pub, sec, self.trusted, server=False)
            s.connect(self.where)
            self._sock = s
        return self._sock

    def ask(self, op: str, timeout: float = ASK_TIMEOUT) -> object:
        """What the host's pvm_netd answers to *op* ("stat", "tasks", "stop")."""
        with self._lock:
            s = self._socket()
            rid = str(next(_ids)).encode()
            try:
                s.send_multipart([ASK, rid, json.dumps({"op": op}).encode()], flags=zmq.NOBLOCK)
                while s.poll(int(timeout * 1000)):
                    f = s.recv_multipart()
                    if len(f) == 3 and f[0] == ANSWER and f[1] == rid:  # (not a late answer)
                        got = json.loads(f[2])
                        if "ok" in got:
                            return got["ok"]
                        raise PvmError(PvmHostFail, f"pvm_netd: {got.get('error')}")
            except (zmq.ZMQError, ValueError, AttributeError) as e:
                self.close()
                raise PvmError(PvmHostFail, f"pvm_netd at {self.where}: {e}") from None
            self.close()  # a new socket next time: no answer of this one can come late there
            raise PvmError(PvmHostFail, f"pvm_netd at {self.where} did not answer within {timeout:g} s")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

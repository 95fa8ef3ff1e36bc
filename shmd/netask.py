"""Requests to a host's pvm_netd on an open ZeroMQ channel, answered in milliseconds.

The console asks each host's pvm_netd (stat, tasks, spawn, signal, stop: its
``Net.asks``) and a pvm_netd asks another's for its tasks' requests (spawn there, tasks
there, signal there, notify), on a DEALER socket with the VM's keys (CURVE: the same
authentication and encryption as the messages between hosts), kept open. Any failure
(no answer within the timeout, an error answer) gives PvmError(PvmHostFail).
"""
from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Sequence

import zmq

from .errors import PvmError, PvmHostFail
from .wire import ANSWER, ASK, NOBLOCK, request, secure, split_request

ASK_TIMEOUT = 1.0  # seconds for an answer from a live pvm_netd (it answers in milliseconds)
_ids = itertools.count(1)


class NetLink:
    """Requests to one host's pvm_netd at *address*:*port*, keys the VM's (Z85 public, secret)."""

    def __init__(self, address: str, port: int, keys: Sequence[str], trusted: bool = False):
        self.where = f"tcp://{'127.0.0.1' if address in ('0.0.0.0', '::', '*') else address}:{port}"
        self.keys, self.trusted = keys, trusted
        self._lock = threading.Lock()
        self._sock: zmq.Socket | None = None
        self.answered = float("-inf")  # when it last answered (monotonic seconds)

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            s: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
            s.linger = 0
            pub, sec = (k.encode("ascii") for k in self.keys)
            secure(s, pub, sec, self.trusted, server=False)
            s.connect(self.where)
            self._sock = s
        return self._sock

    def ask(self, op: str, timeout: float = ASK_TIMEOUT, **args: object) -> object:
        """What the host's pvm_netd answers to request *op* ("stat", "tasks", "spawn",
        "stop", ...; shmd/netd.py's Net.asks) with *args*."""
        got = ask_all([self], op, timeout, args)[0]
        if isinstance(got, PvmError):
            raise got
        return got

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None


def _answer(data: bytes) -> object:
    """The answer in an ANSWER's JSON *data*, or the PvmError it reports (with the
    request's own PVM code when it gives one, else PvmHostFail)."""
    try:
        got = json.loads(data)
        if "ok" in got:
            return got["ok"]
        code = got.get("code")
        return PvmError(code if isinstance(code, int) and code < 0 else PvmHostFail, f"pvm_netd: {got.get('error')}")
    except (ValueError, TypeError, KeyError, AttributeError):
        return PvmError(PvmHostFail, "pvm_netd: unreadable answer")


def ask_all(links: Sequence[NetLink], op: str, timeout: float = ASK_TIMEOUT,
            args: dict[str, object] | list[dict] | None = None) -> list[object]:
    """Each link's answer to *op* with *args* (a list: each link's own), or the PvmError
    in its place: every host asked at once,
    the answers awaited together (so nine hosts cost about what one does). A link that
    fails is closed: its next request opens a new socket (no late answer can come there)."""
    out: list[object] = [None] * len(links)
    each = args if isinstance(args, list) else None  # (else one request for all, made once)
    same = b"" if isinstance(args, list) else json.dumps({**(args or {}), "op": op}).encode()
    waiting: dict[int, bytes] = {}  # link number -> request id
    held: list[NetLink] = []
    poller = zmq.Poller()
    owner: dict[zmq.Socket, int] = {}
    try:
        for k, link in enumerate(links):
            if not link._lock.acquire(timeout=timeout):
                out[k] = PvmError(PvmHostFail, f"pvm_netd at {link.where}: its channel stays busy")
                continue
            held.append(link)
            rid = str(next(_ids)).encode()
            try:
                s = link._socket()
                req = same if each is None else json.dumps({**(each[k] or {}), "op": op}).encode()
                s.send(request(ASK, rid, req), NOBLOCK)
            except zmq.ZMQError as e:
                link.close()
                out[k] = PvmError(PvmHostFail, f"pvm_netd at {link.where}: {e}")
                continue
            waiting[k] = rid
            poller.register(s, zmq.POLLIN)
            owner[s] = k
        deadline = time.monotonic() + timeout
        while waiting and (left := deadline - time.monotonic()) > 0:
            for s, _ in poller.poll(int(left * 1000) + 1):
                k = owner[s]
                f = s.recv_multipart()
                if k in waiting and len(f) == 1 and f[0][:1] == ANSWER:
                    rid, data = split_request(f[0])
                    if rid != waiting[k]:
                        continue  # (a late answer to an earlier request)
                    del waiting[k]
                    out[k] = _answer(data)
                    links[k].answered = time.monotonic()
        for k in waiting:
            links[k].close()
            out[k] = PvmError(PvmHostFail, f"pvm_netd at {links[k].where} did not answer within {timeout:g} s")
    finally:
        for link in held:
            link._lock.release()
    return out

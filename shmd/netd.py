"""pvm_netd: a host's network process (PVM's pvmd role for messages between hosts).

    pvm_netd [-vmid=ID] -host=N -bind=ADDR      (keys and peers on stdin, one JSON line)

A task of this host's pvm_shmd (it joins as ``pvm_netd``) that forwards messages for
tids of other hosts and delivers incoming ones into the local shared pages with the
remote sender's tid as src (remote.py has the library's side). Transport: ZeroMQ
(pyzmq), authenticated and encrypted with CURVE: every host of a VM holds the VM's key
pair, made by the console and handed over stdin (never argv, never a file); a client
whose public key is not the VM's is refused by the ZAP handler before any message.

It binds ADDR on a port the OS picks, forks into the background and prints one line,
``netd<port> pid<pid>``, then the starting process exits 0 (1 and a one-line error if
it could not start). It exits when its pvm_shmd goes (TERM, delete, halt) or on TERM.

Two threads, each with its own sockets (a zmq socket and a Task are used from one
thread only; the Task's receive side and send side share no state they write):

* out: precv from local tasks (chunks with a remote.OUT header), send to the
  destination host's DEALER; heartbeats to every peer every BEAT seconds.
* in: the ROUTER every peer connects to; chunks assembled per (src, dest) and psent
  to the local receiver as src; hellos and heartbeats mark hosts up; a host not heard
  from for DEAD seconds is down (written to the route file: senders and receivers
  waiting on it get PvmHostFail).

Bounded memory: a DEALER holds at most HWM frames per peer; a full one blocks the out
thread, so pvm_netd's inbox fills and local senders wait (and time out) as for a full
local inbox. A receiver that does not receive blocks the in thread's psend, so the
peer's frames stay in its queue and in TCP, and its senders wait in turn.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable

import zmq
from zmq.utils import z85

from . import control, paths, private, remote, spawner, tids, traceask
from . import stat as statmod
from .errors import PvmError, PvmNoTask, PvmTimeout
from .task import Task

NET = struct.Struct("<IIiQQ")  # on the wire: src, dest, tag, total, offset
HELLO = struct.Struct("<IH")  # host index, port
BEAT = 0.3  # heartbeat period (seconds)
DEAD = 2.0  # a peer silent this long is down: PvmHostFail well within 3 s
HWM = 16  # frames queued per peer socket and direction (of up to remote.CHUNK bytes each)
SLICE = 0.2  # the longest either thread waits before looking round (seconds)
MSG, HELLO_KIND, BEAT_KIND, JOIN_KIND = b"m", b"h", b"b", b"j"
ASK, ANSWER = b"q", b"r"  # the console's requests (stat, tasks, stop) and their answers
KILL_GRACE = 2.0  # stop: TERM the host's tasks, KILL what is left after this (as the console)
STOP_TIMEOUT = 30.0  # stop: the longest wait for pvm_shmd to exit
MASTER = 1  # the master's pvm_netd tells every host of each other that joins
ZAP_DOMAIN = "pvm"  # the domain our ZAP handler judges (every other is refused)


PLAIN_USER = b"pvm"  # a trusted network's PLAIN login: this name, the VM's secret key as password


def secure(sock: zmq.Socket, public: bytes, secret: bytes, trusted: bool, server: bool) -> None:
    """Set *sock* up as the VM's: CURVE with the VM's key pair (authenticated and
    encrypted), or with *trusted* (a private network the user trusts) ZeroMQ's PLAIN:
    authenticated by the VM's secret, not encrypted. Both are checked by Zap."""
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


class Zap(threading.Thread):
    """ZeroMQ's authentication hook (ZAP, RFC 27, what zmq.auth implements too; this one
    spares its asyncio import, 60 ms of every host's start): a CURVE client passes if its
    public key is the VM's, a PLAIN one (trusted network) if its password is the VM's
    secret, on our domain; anything else is refused before any message."""

    def __init__(self, ctx: zmq.Context, public: bytes, secret: bytes, trusted: bool):
        super().__init__(name="zap", daemon=True)
        self.want = [b"PLAIN", PLAIN_USER, secret] if trusted else [b"CURVE", z85.decode(public)]
        self.sock: zmq.Socket = ctx.socket(zmq.REP)
        self.sock.linger = 0
        self.sock.bind("inproc://zeromq.zap.01")  # before any socket binds: none goes unchecked
        self.running = True

    def run(self) -> None:
        while self.running:
            if not self.sock.poll(int(SLICE * 1000)):
                continue
            f = self.sock.recv_multipart()
            ok = f[0] == b"1.0" and f[2] == ZAP_DOMAIN.encode() and f[5:] == self.want
            rid = f[1] if len(f) > 1 else b""
            self.sock.send_multipart([b"1.0", rid, b"200" if ok else b"400", b"OK" if ok else b"not this VM's key",
                                      b"", b""])

    def stop(self) -> None:
        self.running = False
        self.join(2 * SLICE + 1)
        self.sock.close(0)


class Net:
    """The network process of one host."""

    def __init__(self, vmid: str, host: int, bind: str, public: bytes, secret: bytes,
                 peers: list[tuple[int, str, int]], trusted: bool = False):
        self.vmid, self.host, self.public, self.secret = vmid, host, public, secret
        self.trusted = trusted
        self.task = Task(vmid, name=remote.NAME, spin=False, role="net")
        if tids.host_of(self.task.tid) != host:
            raise PvmError(PvmNoTask, f"pvm_shmd of VM {vmid!r} is host {tids.host_of(self.task.tid)}, not {host}")
        self.ctx = zmq.Context()
        self.auth = Zap(self.ctx, public, secret, trusted)
        self.auth.start()
        self.rx = self.ctx.socket(zmq.ROUTER)
        self.rx.linger = 0
        self.rx.rcvhwm = HWM
        secure(self.rx, public, secret, trusted, server=True)
        self.port = self.rx.bind_to_random_port(f"tcp://{bind}")
        self.addr = bind
        self.lock = threading.Lock()
        self.up: dict[int, bool] = {}  # host index -> up
        self.heard: dict[int, float] = {}
        self.where: dict[int, tuple[str, int]] = {}
        self.joined: list[tuple[int, str, int]] = []  # hosts the in thread heard of, for the out thread
        self.announce: list[tuple[int, str, int]] = []  # (master) new hosts to tell the others of
        for h, a, p in peers:
            if h != host:
                self.where[h] = (a, p)
                self.up[h] = True
                self.heard[h] = time.monotonic()
        self.running = True
        self.out_done = threading.Event()  # the out thread (the main one) left its loop
        # The console's requests by name: each handler takes the request (a dict) and
        # returns what goes back as JSON. A new request is one entry here.
        self.asks: dict[str, Callable[[dict], object]] = {
            "stat": lambda req: control.request("stat", self.vmid),
            "tasks": lambda req: spawner.tasks(self.vmid),
            "stop": self._ask_stop,
            "clock": traceask.clock,
            "trace": lambda req: traceask.trace_ask(self.vmid, req),
        }
        self.write_route()

    # ---- the route file ------------------------------------------------------------
    def write_route(self) -> None:
        with self.lock:
            hosts = {str(h): up for h, up in self.up.items()}
        data = json.dumps({"tid": self.task.tid, "pid": os.getpid(), "hosts": hosts}).encode()
        private.write_atomic(paths.tmpfile(remote.ROUTE_STEM, self.vmid), data)

    def mark(self, h: int, up: bool) -> None:
        with self.lock:
            changed = self.up.get(h) != up
            self.up[h] = up
        if changed:
            self.write_route()

    # ---- out: local tasks -> peers -----------------------------------------------------
    def _dealer(self, h: int) -> zmq.Socket:
        a, p = self.where[h]
        s = self.ctx.socket(zmq.DEALER)
        s.linger = 0
        s.sndhwm = HWM
        s.sndtimeo = int(SLICE * 1000)
        secure(s, self.public, self.secret, self.trusted, server=False)
        s.connect(f"tcp://{a}:{p}")
        s.send_multipart([HELLO_KIND, HELLO.pack(self.host, self.port), self.addr.encode()],
                         flags=zmq.NOBLOCK)
        return s

    def _connect_joined(self, out: dict[int, zmq.Socket]) -> None:
        """A DEALER to each host the in thread heard of (a hello or the master's notice)."""
        while self.joined:
            h, a, p = self.joined.pop(0)
            if h in out:
                out.pop(h).close()
            self.where[h] = (a, p)
            out[h] = self._dealer(h)

    def out_loop(self) -> None:
        out: dict[int, zmq.Socket] = {}
        for h in list(self.where):
            out[h] = self._dealer(h)
        last_beat = 0.0
        beat = [BEAT_KIND, HELLO.pack(self.host, self.port)]
        task = self.task
        while self.running:
            self._connect_joined(out)
            while self.announce:
                h, a, p = self.announce.pop()
                for k, s in out.items():
                    if k != h:
                        try:
                            s.send_multipart([JOIN_KIND, HELLO.pack(h, p), a.encode()], flags=zmq.NOBLOCK)
                        except zmq.Again:
                            pass  # that host is stuck: it does not need to know
            now = time.monotonic()
            if now - last_beat >= BEAT:
                last_beat = now
                for s in out.values():
                    try:
                        s.send_multipart(beat, flags=zmq.NOBLOCK)
                    except zmq.Again:
                        pass  # queue full: frames are on their way, which says as much
            try:
                m = task.precv(timeout=SLICE)
            except PvmTimeout:
                continue
            except PvmError:
                self.running = False  # pvm_shmd is gone (stopped, deleted, halted)
                return
            if len(m.data) < remote.OUT.size:
                continue
            dest, tag, total, off = remote.OUT.unpack_from(m.data)
            h = tids.host_of(dest)
            if h not in out:  # a host that just joined: the in thread marked it up after
                self._connect_joined(out)  # it queued it here, so it is here by now
            sock = out.get(h)
            if sock is None:
                continue  # no such host: dropped, as PVM drops a message to nowhere
            frame: list[bytes | memoryview] = [MSG, NET.pack(m.src, dest, tag, total, off),
                                               memoryview(m.data)[remote.OUT.size:]]
            while self.running:
                with self.lock:
                    up = self.up.get(h, False)
                if not up:
                    break  # host down: its messages go nowhere (senders see PvmHostFail)
                try:
                    sock.send_multipart(frame, copy=total < 65536)
                    break
                except zmq.Again:
                    continue

    # ---- in: peers -> local tasks ------------------------------------------------------
    def in_loop(self) -> None:
        rx = self.rx
        parts: dict[tuple[int, int], bytearray] = {}  # (src, dest) -> message being assembled
        hdrs: dict[int, dict[int, bytes]] = {}  # src -> its descriptor cache (sending.py)
        poller = zmq.Poller()
        poller.register(rx, zmq.POLLIN)
        while self.running:
            if not poller.poll(int(SLICE * 1000)):
                self._check_peers()  # idle: what we heard of each peer is up to date
                continue
            f = rx.recv_multipart(copy=False)
            if len(f) < 3:
                continue
            kind = f[1].bytes
            if kind in (HELLO_KIND, BEAT_KIND, JOIN_KIND) and len(f[2]) == HELLO.size:
                h, port = HELLO.unpack(f[2].bytes)
                if h == self.host or not 0 < h <= tids.MAX_HOSTS:
                    continue
                if kind != JOIN_KIND:  # (a join notice comes from the master, not from h)
                    self.heard[h] = time.monotonic()
                if kind != BEAT_KIND and len(f) >= 4:
                    addr = f[3].bytes.decode("ascii", "replace")
                    if addr in ("0.0.0.0", "::", "*"):  # bound everywhere (the console's host):
                        addr = self.where[h][0] if h in self.where else str(f[1].get("Peer-Address"))
                    if self.where.get(h) != (addr, port):
                        self.where[h] = (addr, port)
                        self.joined.append((h, addr, port))
                        if self.host == MASTER and kind == HELLO_KIND:
                            self.announce.append((h, addr, port))
                    self.heard.setdefault(h, time.monotonic())
                if h in self.up or kind != BEAT_KIND:
                    self.mark(h, True)
                continue
            if kind == ASK:
                rx.send_multipart([f[0], ANSWER, f[2].bytes, self.answer(f[3].bytes if len(f) > 3 else b"")])
                continue
            if kind != MSG or len(f) < 4 or len(f[2]) != NET.size:
                continue
            src, dest, tag, total, off = NET.unpack(f[2].bytes)
            self.heard[tids.host_of(src)] = time.monotonic()
            body = f[3].buffer
            key = (src, dest)
            if off == remote.ABORT:
                parts.pop(key, None)
                continue
            if off == 0:
                parts.pop(key, None)  # an unfinished one before it was given up
                if len(body) == total:
                    self._deliver(hdrs, src, dest, tag, body)
                    continue
                if total > 1 << 40:
                    continue
                parts[key] = bytearray(total)
            buf = parts.get(key)
            if buf is None or off + len(body) > len(buf):
                parts.pop(key, None)
                continue
            buf[off:off + len(body)] = body
            if off + len(body) == total:
                del parts[key]
                self._deliver(hdrs, src, dest, tag, buf)

    def answer(self, ask: bytes) -> bytes:
        """The console's request (JSON {"op": name, ...its arguments}) answered from this
        host, as JSON: {"ok": what the request's handler in self.asks returned} or {"error": ...}."""
        try:
            req = json.loads(ask)
            op = req.get("op") if isinstance(req, dict) else None
            handler = self.asks.get(op) if isinstance(op, str) else None
            if handler is None:
                raise ValueError(f"unknown request {str(op)[:40]!r}")
            return json.dumps({"ok": handler(req)}).encode()
        except (ValueError, TypeError, AttributeError, PvmError, OSError) as e:
            return json.dumps({"error": str(e)}).encode()

    def _ask_stop(self, req: dict) -> dict:
        """stop: this host's VM ended here; our pid too, as a console on this machine waits for our end."""
        return {"stopped": self.stop_host(), "pid": os.getpid()}

    def stop_host(self) -> bool:
        """The console's delete/halt/reset of this host, done here: kill its tasks, leave
        (the out thread stopped first: nothing of ours stays attached to the segments),
        stop pvm_shmd and wait for it; then this process ends. True if it stopped."""
        tasks = control.request("stat", self.vmid).get("tasks", [])
        spawner.kill_pids([int(t["pid"]) for t in tasks if t.get("pid") != os.getpid()], KILL_GRACE)
        self.running = False
        self.out_done.wait(2 * SLICE + 1)
        self.task.leave()
        return statmod.stop(self.vmid, STOP_TIMEOUT)

    def _deliver(self, hdrs: dict[int, dict[int, bytes]], src: int, dest: int, tag: int, data) -> None:
        """psend *data* to local *dest* as from *src*; dropped if *dest* is no task."""
        task = self.task
        task._src = src
        task._hdrs = hdrs.setdefault(src, {})
        if len(hdrs) > 4096:
            hdrs.clear()
        while self.running:
            try:
                task.psend(dest, tag, data, timeout=SLICE)
                return
            except PvmTimeout:
                continue  # the receiver is slow: our peer's frames wait meanwhile
            except PvmError:
                return  # no such task (any more): dropped, as PVM does

    def _check_peers(self) -> None:
        now = time.monotonic()
        for h, t in list(self.heard.items()):
            if now - t > DEAD and self.up.get(h):
                self.mark(h, False)

    def serve(self) -> None:
        t = threading.Thread(target=self.in_loop, name="in", daemon=True)
        t.start()
        try:
            self.out_loop()
        finally:
            self.out_done.set()
            self.running = False
            t.join(2 * SLICE + 1)
            self.close()

    def close(self) -> None:
        private.unlink(paths.tmpfile(remote.ROUTE_STEM, self.vmid))
        self.rx.close(1000)  # the answer to a stop may still be on its way
        self.auth.stop()
        self.ctx.destroy(0)
        self.task.leave()


def parse_input(line: str) -> tuple[bytes, bytes, list[tuple[int, str, int]], bool]:
    """The keys, peers and "trusted" pvm_netd reads from stdin; ValueError naming what is wrong."""
    try:
        d = json.loads(line)
        pub, sec = d["public"].encode("ascii"), d["secret"].encode("ascii")
        peers = [(int(h), str(a), int(p)) for h, a, p in d.get("peers", [])]
        trusted = d.get("trusted", False)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError("stdin: expected one JSON line with public, secret and peers") from None
    if len(pub) != 40 or len(sec) != 40:
        raise ValueError("stdin: keys must be 40 characters of Z85")
    if not isinstance(trusted, bool):
        raise ValueError("stdin: trusted must be true or false")
    return pub, sec, peers, trusted


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pvm_netd", prefix_chars="-", description="a host's network process")
    ap.add_argument("-vmid", default=None)
    ap.add_argument("-host", type=int, required=True)
    ap.add_argument("-bind", required=True)
    a = ap.parse_args(argv)
    try:
        vmid = paths.current_vmid(a.vmid)
        pub, sec, peers, trusted = parse_input(sys.stdin.readline(1 << 20))
    except ValueError as e:
        print(f"pvm_netd: {e}", file=sys.stderr)
        return 2
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        with os.fdopen(r) as f:
            line = f.readline()
        if not line.startswith("netd<"):
            print(f"pvm_netd: {line.strip() or 'exited before it was ready'}", file=sys.stderr)
            return 1
        print(line.strip(), flush=True)
        return 0
    os.close(r)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # only record; the loop acts
    try:
        net = Net(vmid, a.host, a.bind, pub, sec, peers, trusted)
    except (PvmError, zmq.ZMQError, OSError) as e:
        os.write(w, f"{e}\n".encode())
        os._exit(1)
    os.write(w, f"netd<{net.port}> pid<{os.getpid()}>\n".encode())
    os.close(w)
    def stopper() -> None:
        stop.wait()
        net.running = False

    threading.Thread(target=stopper, daemon=True).start()
    net.serve()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

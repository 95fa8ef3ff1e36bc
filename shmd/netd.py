"""pvm_netd: a host's network process (PVM's pvmd role for messages between hosts).

    pvm_netd [-vmid=ID] -host=N -bind=ADDR      (keys and peers on stdin, one JSON line)

A task of this host's pvm_shmd (it joins as ``pvm_netd``) that forwards messages for
tids of other hosts and delivers incoming ones into the local shared pages with the
remote sender's tid as src (remote.py has the library's side). Transport: ZeroMQ
(pyzmq), authenticated and encrypted with CURVE: every host of a VM holds the VM's key
pair, made by the console and handed over stdin (never argv; written only into the
route file, 0600, for this host's tasks that send to other hosts themselves); a client
whose public key is not the VM's is refused by the ZAP handler before any message.

It binds ADDR on a port the OS picks, forks into the background and prints one line,
``netd<port> pid<pid> wire<WIRE>``, then the starting process exits 0 (1 and a one-line error if
it could not start). It exits when its pvm_shmd goes (TERM, delete, halt) or on TERM.

Two threads, each with its own sockets (a zmq socket and a Task are used from one
thread only; the Task's receive side and send side share no state they write):

* out: precv from local tasks (chunks with a remote.OUT header: our own messages, and
  the tasks' with PVM_NET_DIRECT=0; a task sends to the far pvm_netd itself,
  netsend.py), send to the destination host's DEALER; heartbeats to every peer every
  BEAT seconds.
* in: the ROUTER every peer connects to; chunks assembled per (src, dest) and psent
  to the local receiver as src; hellos and heartbeats mark hosts up; a host not heard
  from for DEAD seconds is down (written to the route file: senders and receivers
  waiting on it get PvmHostFail).

Requests (``Net.asks``, by name): the console's and other pvm_netds' come as ASK
frames on the ROUTER, a local task's as a message with tag remote.REQ_TAG (remote.ask).
A quick one (stat, tasks of this host, config) is answered in the in thread; one that
waits (spawn, signals, a question to other hosts) runs in a small pool of threads, whose
answers go back through the in thread (the inproc POST socket: the in thread alone
psends, and the ROUTER is its own). Notifications (pvm_notify) are kept here: task exits
of this host's tasks (for requesters anywhere), and for this host's tasks host deletes,
host adds and exits of other hosts' tasks when their host goes down.

Bounded memory: a DEALER holds at most HWM frames per peer; what a full one does not
take waits in the out thread's backlog, and past HOLD bytes there pvm_netd raises its
slot's "held" word: local senders to other hosts wait (and time out) until it falls.
The out thread reads its inbox on meanwhile, so its pages are never held up by the
network: they are what the in thread delivers into. A receiver that does not receive
blocks the in thread's psend, so the peer's frames stay in its queue and in TCP, and
its senders wait in turn.
"""
from __future__ import annotations

import json
import mmap
import os
import queue
import signal
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import zmq
from zmq.utils import z85

from . import control, ipc, layout, paths, private, remote, spawner, tids, traceask
from . import stat as statmod
from .errors import PvmBadParam, PvmError, PvmHostFail, PvmNoHost, PvmNoTask, PvmSysErr, PvmTimeout
from .pvmbuf import HEADER, MAGIC, VERSION, XDR
from .task import Task
from .wire import (
    ANSWER,
    ASK,
    BIG_KIND,
    MSG,
    NET,
    NOBLOCK,
    ONE,
    ONE_HEAD,
    PLAIN_USER,
    WIRE,
    ZAP_DOMAIN,
    chunk_frames,
    chunk_length,
    request,
    secure,
    send_frames,
    split_request,
)

# a peer's hello, beat or join notice; one of another WIRE is not heard (its host is never
# up here, so nothing goes to it in frames it would drop)
HELLO = struct.Struct("<IHH")  # host index, port, WIRE
HELLO_KIND, BEAT_KIND, JOIN_KIND = b"h", b"b", b"j"
BEAT = 0.3  # heartbeat period (seconds)
DEAD = 2.0  # a peer silent this long is down: PvmHostFail well within 3 s
HWM = 16  # frames queued per peer socket and direction (of up to remote.CHUNK bytes each)
HOLD = 4 << 20  # bytes for other hosts held beyond those queues before senders wait
KEEP = 32 << 20  # the in thread keeps one assembly buffer of up to this many bytes for the next message
RETRY, RETRY_MAX = 1e-3, 0.02  # how soon a held frame is offered to its peer again (seconds)
SLICE = 0.2  # the longest either thread waits before looking round (seconds)
KILL_GRACE = 2.0  # stop: TERM the host's tasks, KILL what is left after this (as the console)
STOP_TIMEOUT = 30.0  # stop: the longest wait for pvm_shmd to exit
MASTER = 1  # the master's pvm_netd tells every host of each other that joins
POST = "inproc://pvm_netd-post"  # the pool's answers and notifications, for the in thread to send
WORKERS = 4  # threads for requests that wait (spawn, signals, asking other hosts)
PEER_TIMEOUT = 5.0  # a request to another host's pvm_netd (a spawn there: fork and exec)
POST_PATIENCE = 2.0  # the longest the in thread tries to hand on an answer or a notification
TASK_ASKS = ("stat", "tasks", "config", "spawn", "signal", "notify")  # what a task may ask (not stop)
SLOW = ("spawn", "signal", "notify", "tasks")  # run in the pool when they ask other hosts
PR_SET_NAME = 15  # prctl(2): the process's name
# pvm_notify's kinds (pvm3.h, as shmd.pvmmsg)
TASK_EXIT, HOST_DELETE, HOST_ADD = 1, 2, 3


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


class Pool:
    """A few threads for the requests that wait (concurrent.futures would cost every
    host's start 10-20 ms of imports)."""

    def __init__(self, n: int):
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._run, name=f"ask{k}", daemon=True) for k in range(n)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        while True:
            job = self.q.get()
            if job is None:
                return
            fn, args = job
            try:
                fn(*args)
            except (PvmError, zmq.ZMQError, OSError, ValueError):
                pass  # (each request answers its own errors; these come at shutdown)

    def submit(self, fn: Callable, *args: object) -> None:
        self.q.put((fn, args))

    def shutdown(self) -> None:
        for _ in self.threads:
            self.q.put(None)


class Net:
    """The network process of one host."""

    def __init__(self, vmid: str, host: int, bind: str, public: bytes, secret: bytes,
                 peers: list[tuple[int, str, int]], trusted: bool = False, me: dict | None = None,
                 infos: dict[int, dict] | None = None):
        self.vmid, self.host, self.public, self.secret = vmid, host, public, secret
        self.trusted = trusted
        me = me or {}
        #: each host's name, arch, speed, dsig (for pvm_config and spawn's placement):
        #: ours from the console, the others' from the console and from their hellos
        self.info: dict[int, dict] = dict(infos or {})
        self.ep: str | None = me.get("ep") if isinstance(me.get("ep"), str) else None
        self.wd: str | None = me.get("wd") if isinstance(me.get("wd"), str) else None
        self.task = Task(vmid, name=remote.NAME, spin=False, role="net")
        if tids.host_of(self.task.tid) != host:
            raise PvmError(PvmNoTask, f"pvm_shmd of VM {vmid!r} is host {tids.host_of(self.task.tid)}, not {host}")
        name = me.get("name") if isinstance(me.get("name"), str) and me.get("name") else None
        if name is None:  # (the console gives it: no request to the daemon at each start)
            name = str(control.request("stat", vmid).get("name") or f"host{host}")
        self.info[host] = _host_info(me, name)
        self.ctx = zmq.Context()
        self.auth = Zap(self.ctx, public, secret, trusted)
        self.auth.start()
        self.rx = self.ctx.socket(zmq.ROUTER)
        self.rx.linger = 0
        self.rx.rcvhwm = HWM
        secure(self.rx, public, secret, trusted, server=True)
        self.port = self.rx.bind_to_random_port(f"tcp://{bind}")
        self.addr = bind
        self.post_rx: zmq.Socket = self.ctx.socket(zmq.PULL)
        self.post_rx.bind(POST)
        self.post_tx: zmq.Socket = self.ctx.socket(zmq.PUSH)
        self.post_tx.connect(POST)
        self.post_lock = threading.Lock()
        self.pool = Pool(WORKERS)
        self.links: dict[int, object] = {}  # host -> netask.NetLink to its pvm_netd (the pool's)
        self.spawn_lock = threading.Lock()  # spawning and reaping our children (waitpid) apart
        self.cursor = 0  # default placement goes round the hosts from here
        # notifications: tid of this host -> [(requester, tag)]; host -> [(requester, tag)]
        # of this host's requesters for its delete; tid of another host -> [(requester,
        # tag)] of ours (told when that host goes down); requester -> [tag, count] host adds
        self.exits: dict[int, list[tuple[int, int]]] = {}
        self.deletes: dict[int, list[tuple[int, int]]] = {}
        self.far_exits: dict[int, list[tuple[int, int]]] = {}
        self.adds: dict[int, list[int]] = {}
        self.lock = threading.Lock()
        self.up: dict[int, bool] = {}  # host index -> up
        self.heard: dict[int, float] = {}
        self.where: dict[int, tuple[str, int]] = {}
        self.joined: list[tuple[int, str, int]] = []  # hosts the in thread heard of, for the out thread
        self.announce: list[tuple[int, str, int]] = []  # (master) new hosts to tell the others of
        for h, a, p in peers:
            if h in self.info:
                self.info[h] = _host_info(self.info[h], f"host{h}")
            if h != host:
                self.where[h] = (a, p)
                self.up[h] = True
                self.heard[h] = time.monotonic()
        self.running = True
        self.out_done = threading.Event()  # the out thread (the main one) left its loop
        # The console's requests by name: each handler takes the request (a dict) and
        # returns what goes back as JSON. A new request is one entry here.
        self.asks: dict[str, Callable[[dict], object]] = {
            "stat": lambda req: control.request_at(layout.header(self.task._buf)["sock"], "stat"),
            "tasks": self._ask_tasks,
            "stop": self._ask_stop,
            "clock": traceask.clock,
            "trace": lambda req: traceask.trace_ask(self.vmid, req),
            "config": self._ask_config,
            "alive": self._ask_alive,
            "spawn": self._ask_spawn,
            "signal": self._ask_signal,
            "notify": self._ask_notify,
        }
        self.write_route()

    # ---- the route file ------------------------------------------------------------
    def write_route(self) -> None:
        """The route file (remote.route): our tid, which hosts are up, and for the
        tasks' own route to them (netsend.py) where each host's pvm_netd listens and the
        VM's keys (the file is private, 0600, and checked so at each read)."""
        with self.lock:
            hosts = {str(h): up for h, up in self.up.items()}
            at = {str(h): list(a) for h, a in self.where.items()}
        data = json.dumps({"tid": self.task.tid, "pid": os.getpid(), "hosts": hosts, "at": at,
                           "keys": [self.public.decode(), self.secret.decode()],
                           "trusted": self.trusted}).encode()
        private.write_atomic(paths.tmpfile(remote.ROUTE_STEM, self.vmid), data)

    def mark(self, h: int, up: bool) -> None:
        with self.lock:
            changed = self.up.get(h) != up
            self.up[h] = up
        if changed:
            self.write_route()
            if up:
                self._host_added(h)
            else:
                self._host_gone(h)

    # ---- notifications (pvm_notify) -------------------------------------------------
    def notify(self, dest: int, tag: int, *ints: int) -> None:
        """A notification to task *dest*: a PVM packed message of *ints*, from the daemon
        of its host (as the library's own task-exit notes), with the requester's tag."""
        self.post(tids.dtid(tids.host_of(dest)), dest, tag,
                  HEADER.pack(MAGIC, VERSION, XDR, 4 * len(ints)) + struct.pack(f">{len(ints)}i", *ints))

    def _host_gone(self, h: int) -> None:
        """Host *h* went down: its delete to whoever asked here, the exits of its tasks
        watched from here; watches of its tasks on ours are dropped (nobody to tell)."""
        with self.lock:
            dels = self.deletes.pop(h, [])
            far = {t: self.far_exits.pop(t) for t in [t for t in self.far_exits if tids.host_of(t) == h]}
            for t, ws in list(self.exits.items()):
                self.exits[t] = [(r, g) for r, g in ws if tids.host_of(r) != h]
        for r, g in dels:
            self.notify(r, g, tids.dtid(h))
        for t, ws in far.items():
            for r, g in ws:
                self.notify(r, g, t)

    def _host_added(self, h: int) -> None:
        """Host *h* joined (or came back): PvmHostAdd to whoever asked here (count 1, its dtid)."""
        with self.lock:
            due = [(r, e[0]) for r, e in self.adds.items() if e[1] != 0]
            for e in self.adds.values():
                e[1] -= e[1] > 0
            self.adds = {r: e for r, e in self.adds.items() if e[1] != 0}
        for r, g in due:
            self.notify(r, g, 1, tids.dtid(h))

    def _told(self, dest: int, tag: int, note: bytes) -> None:
        """A notification (from a daemon's tid) came for our task *dest*: if it is the
        exit of a task of another host we watch for it, that watch is done (its host
        going down later must not tell it again)."""
        t = struct.unpack_from(">i", note, HEADER.size)[0]
        with self.lock:
            ws = [w for w in self.far_exits.get(t, []) if w != (dest, tag)]
            if ws:
                self.far_exits[t] = ws
            else:
                self.far_exits.pop(t, None)

    def _check_exits(self) -> None:
        """Tell the watchers of our tasks that have left (the in thread's round)."""
        if not self.exits:
            return
        from .pvmmsg import live_tids  # (imported only when someone watches)

        live = live_tids(self.task)
        with self.lock:
            gone = {t: self.exits.pop(t) for t in [t for t in self.exits if t not in live]}
        for t, ws in gone.items():
            for r, g in ws:
                self.notify(r, g, t)

    # ---- out: local tasks -> peers -----------------------------------------------------
    def _dealer(self, h: int) -> zmq.Socket:
        a, p = self.where[h]
        s = self.ctx.socket(zmq.DEALER)
        s.linger = 0
        s.sndhwm = HWM  # (every send on it is NOBLOCK: what a full queue refuses waits in the backlog)
        secure(s, self.public, self.secret, self.trusted, server=False)
        s.connect(f"tcp://{a}:{p}")
        s.send_multipart([HELLO_KIND, HELLO.pack(self.host, self.port, WIRE), self.addr.encode(),
                          json.dumps(self.info[self.host]).encode()], flags=zmq.NOBLOCK)
        return s

    def _connect_joined(self, out: dict[int, zmq.Socket]) -> None:
        """A DEALER to each host the in thread heard of (a hello or the master's notice)."""
        while self.joined:
            h, a, p = self.joined.pop(0)
            if h in out:
                out.pop(h).close()
            with self.lock:
                self.where[h] = (a, p)
            out[h] = self._dealer(h)

    def out_loop(self) -> None:
        out: dict[int, zmq.Socket] = {}
        for h in list(self.where):
            out[h] = self._dealer(h)
        # frames a peer's full queue did not take yet, per host in order, and their bytes:
        # our inbox is read on regardless, so its pages never wait on the network (they
        # are what our in thread delivers into: two hosts streaming to each other through
        # full pages would wait on each other for ever)
        backlog: dict[int, deque[list]] = {}
        held = 0
        last_beat = 0.0
        beat = [BEAT_KIND, HELLO.pack(self.host, self.port, WIRE)]
        task = self.task
        full_i = layout.slot_i(task._slot) + layout.T_HELD_I
        wait = RETRY
        while self.running:
            self._connect_joined(out)
            while self.announce:
                h, a, p = self.announce.pop()
                for k, s in out.items():
                    if k != h:
                        try:
                            s.send_multipart([JOIN_KIND, HELLO.pack(h, p, WIRE), a.encode(),
                                              json.dumps(self.info.get(h, {})).encode()], flags=zmq.NOBLOCK)
                        except zmq.Again:
                            pass  # that host is stuck: it does not need to know
            now = time.monotonic()
            if now - last_beat >= BEAT:
                last_beat = now
                for s in out.values():
                    try:
                        send_frames(s, beat, NOBLOCK)
                    except zmq.Again:
                        pass  # queue full: frames are on their way, which says as much
            if backlog:
                before = held
                held -= self._flush(out, backlog)
                # the peer's queue takes frames again: soon after; nothing moved: a
                # little later each time (a peer whose receiver is slow)
                wait = RETRY if held != before else min(2 * wait, RETRY_MAX)
            else:
                wait = SLICE
            task._i[full_i] = 1 if held > HOLD else 0
            try:
                m = task.precv(timeout=wait)
            except PvmTimeout:
                continue
            except PvmError:
                self.running = False  # pvm_shmd is gone (stopped, deleted, halted)
                return
            if m.tag == remote.REQ_TAG:  # a local task's request (remote.ask)
                self.pool.submit(self._task_request, m.src, bytes(m.data))
                continue
            if len(m.data) < remote.OUT.size:
                continue
            dest, tag, total, off = remote.OUT.unpack_from(m.data)
            h = tids.host_of(dest)
            if h not in out:  # a host that just joined: the in thread marked it up after
                self._connect_joined(out)  # it queued it here, so it is here by now
            if h not in out:
                continue  # no such host: dropped, as PVM drops a message to nowhere
            body = memoryview(m.data)[remote.OUT.size:]
            frames = backlog.get(h)
            if frames is None:
                frames = backlog[h] = deque()
            frames.append(chunk_frames(m.src, dest, tag, total, off, body))
            held += len(body)
            held -= self._flush(out, backlog, only=h)
            wait = RETRY

    def _flush(self, out: dict[int, zmq.Socket], backlog: dict[int, deque[list]],
               only: int | None = None) -> int:
        """Send what each peer's queue takes of *backlog* (of host *only*, if given), in
        order, without waiting; a host that is down loses its frames (its senders see
        PvmHostFail). The bytes that left the backlog."""
        gone = 0
        for h in [only] if only is not None else list(backlog):
            frames = backlog[h]
            with self.lock:
                up = self.up.get(h, False)
            while frames:
                f = frames[0]
                if up:
                    try:
                        big = f[0] == BIG_KIND
                        send_frames(out[h], f, NOBLOCK, copy=not big)
                    except zmq.Again:
                        break
                frames.popleft()
                gone += chunk_length(f)
            if not frames:
                del backlog[h]
        return gone

    # ---- in: peers -> local tasks ------------------------------------------------------
    def in_loop(self) -> None:
        rx = self.rx
        parts: dict[tuple[int, int], memoryview] = {}  # (src, dest) -> message being assembled
        spare: mmap.mmap | None = None  # the last assembly buffer (KEEP bytes at most), for the next
        hdrs: dict[int, dict[int, bytes]] = {}  # src -> its descriptor cache (sending.py)
        poller = zmq.Poller()
        poller.register(rx, zmq.POLLIN)
        poller.register(self.post_rx, zmq.POLLIN)
        next_round = time.monotonic() + SLICE
        woke = time.monotonic()  # when the last poll returned
        while self.running:
            busy = time.monotonic() - woke  # what the last frames took us
            ready = dict(poller.poll(int(SLICE * 1000)))
            now = woke = time.monotonic()
            if not ready or now >= next_round:
                next_round = now + SLICE
                # judged every round (with a few peers beating, a whole slice without a
                # frame is rare), but only with nothing unread and not right after we
                # were busy a while (the heartbeats that came meanwhile are still on
                # their way in)
                if not int(rx.getsockopt(zmq.EVENTS)) & zmq.POLLIN and busy < SLICE:
                    self._check_peers()
                self._check_exits()
                self._reap()
            if self.post_rx in ready:
                self._posted(hdrs)
            if rx not in ready:
                continue
            f = _frames(rx)
            if len(f) == 2:  # one frame: a whole small message, or a request
                one = f[1]
                if one[:1] != ONE or len(one) < ONE_HEAD:
                    if one[:1] == ASK:
                        self._asked(f[0], *split_request(one))
                    continue
                src, dest, tag, total, off = NET.unpack_from(one, 1)
                body = one[ONE_HEAD:]  # (bytes: psend's fast path takes bytes, not views)
            elif self._not_a_chunk(f):
                continue
            else:
                src, dest, tag, total, off = NET.unpack(f[2])
                body = f[3].buffer if isinstance(f[3], zmq.Frame) else f[3]
            self.heard[tids.host_of(src)] = now
            if not tids.local_of(src) and self.far_exits and total == off + len(body) == HEADER.size + 4:
                self._told(dest, tag, bytes(body))
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
                if spare is not None and total <= len(spare):
                    m, spare = spare, None
                else:
                    # anonymous memory the kernel zeroes page by page as chunks land: a
                    # bytearray of a GiB is zeroed at once, holding the GIL for seconds
                    # (our heartbeats stall and the peers count us as down)
                    m = mmap.mmap(-1, total)
                parts[key] = memoryview(m)[:total]
            buf = parts.get(key)
            if buf is None or off + len(body) > len(buf):
                parts.pop(key, None)
                continue
            buf[off:off + len(body)] = body
            if off + len(body) == total:
                del parts[key]
                self._deliver(hdrs, src, dest, tag, buf)
                done = buf.obj
                buf.release()
                # kept for the next message in pieces: a new buffer's first touch of each
                # page (a fault, the kernel zeroing it) made the copies into it run at
                # 1 GB/s, a tenth of memcpy's speed
                if isinstance(done, mmap.mmap) and len(done) <= KEEP and (spare is None or len(done) > len(spare)):
                    spare = done

    def _not_a_chunk(self, f: list) -> bool:
        """In thread: *f* (a ROUTER's frames, three at least) handled here, or dropped,
        if it is not a message chunk of three frames: a peer's hello, beat or join
        notice. False for a chunk (the caller takes it)."""
        if len(f) < 3:
            return True
        kind = f[1]
        if kind in (HELLO_KIND, BEAT_KIND, JOIN_KIND) and len(f[2]) == HELLO.size:
            h, port, wire = HELLO.unpack(bytes(f[2]))
            if h == self.host or not 0 < h <= tids.MAX_HOSTS or wire != WIRE:
                return True
            if kind != JOIN_KIND:  # (a join notice comes from the master, not from h)
                self.heard[h] = time.monotonic()
            if kind != BEAT_KIND and len(f) >= 4:
                addr = bytes(f[3]).decode("ascii", "replace")
                if addr in ("0.0.0.0", "::", "*"):  # bound everywhere (the console's host):
                    addr = self.where[h][0] if h in self.where else str(f[3].get("Peer-Address"))
                if len(f) >= 5 and kind != BEAT_KIND:
                    try:
                        info = remote.load_json(f[4])
                    except ValueError:
                        info = None
                    if isinstance(info, dict) and info:
                        self.info[h] = _host_info(info, f"host{h}")
                if self.where.get(h) != (addr, port):
                    with self.lock:
                        self.where[h] = (addr, port)
                    self.joined.append((h, addr, port))
                    self.write_route()  # (where the tasks' own route reaches it)
                    if self.host == MASTER and kind == HELLO_KIND:
                        self.announce.append((h, addr, port))
                self.heard.setdefault(h, time.monotonic())
            if h in self.up or kind != BEAT_KIND:
                self.mark(h, True)
            return True
        return kind not in (MSG, BIG_KIND) or len(f) != 4 or len(f[2]) != NET.size

    def answer(self, ask: object, allowed: Sequence[str] | None = None) -> dict:
        """A request (JSON {"op": name, ...its arguments}) answered from this host:
        {"ok": what the request's handler in self.asks returned} or {"error": ...,
        "code": PVM's code}. *allowed*: the requests this asker may make (None: all)."""
        try:
            req = remote.load_json(ask) if isinstance(ask, bytes) else ask
            op = req.get("op") if isinstance(req, dict) else None
            handler = self.asks.get(op) if isinstance(op, str) and (allowed is None or op in allowed) else None
            if handler is None or not isinstance(req, dict):
                raise PvmError(PvmBadParam, f"unknown request {str(op)[:40]!r}")
            return {"ok": handler(req)}
        except PvmError as e:
            return {"error": str(e), "code": e.code}
        except (ValueError, TypeError, AttributeError, KeyError, OSError) as e:
            return {"error": f"bad request: {e}", "code": PvmBadParam}

    def _asked(self, who: bytes, rid: bytes, ask: bytes) -> None:
        """An ASK from the console or another pvm_netd (in thread): a quick one answered
        at once, one that waits (SLOW, asking other hosts) by the pool, through POST."""
        try:
            req = remote.load_json(ask)
        except ValueError:
            req = None
        if isinstance(req, dict) and req.get("op") in SLOW and (req.get("op") != "tasks" or req.get("all")):
            def later() -> None:
                self.reply([who, request(ANSWER, rid, json.dumps(self.answer(req)).encode())])

            self.pool.submit(later)
            return
        out = self.answer(req if req is not None else ask)
        send_frames(self.rx, [who, request(ANSWER, rid, json.dumps(out).encode())])

    def _task_request(self, src: int, data: bytes) -> None:
        """A local task's request (pool): answered to it from our tid, tag REPLY_TAG."""
        rid = None
        try:
            req = remote.load_json(data)
            if not isinstance(req, dict):
                raise ValueError("not an object")
            rid = req.get("id")
            req["from"] = src  # the requester, as pvm_shmd's pages say, not as it claims
        except ValueError as e:
            req = {"op": None, "error": str(e)}
        out = self.answer(req, TASK_ASKS)
        self.post(self.task.tid, src, remote.REPLY_TAG, json.dumps({**out, "id": rid}).encode())

    # ---- handing things to the in thread -------------------------------------------
    def post(self, src: int, dest: int, tag: int, data: bytes) -> None:
        """psend *data* to *dest* (any host's task) as from *src*, by the in thread."""
        with self.post_lock:
            send_frames(self.post_tx, [b"d", NET.pack(src, dest, tag, len(data), 0), data])

    def reply(self, frames: list[bytes]) -> None:
        """Send *frames* on the ROUTER (an answer to an ASK), by the in thread."""
        with self.post_lock:
            send_frames(self.post_tx, [b"r", *frames])

    def _posted(self, hdrs: dict[int, dict[int, bytes]]) -> None:
        """What the other threads handed the in thread (post, reply), all of it."""
        while True:
            try:
                f = self.post_rx.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if f[0] == b"r":
                send_frames(self.rx, f[1:])
            elif f[0] == b"d" and len(f) == 3:
                src, dest, tag, _, _ = NET.unpack(f[1])
                self._deliver(hdrs, src, dest, tag, f[2], time.monotonic() + POST_PATIENCE)

    # ---- the requests ----------------------------------------------------------------
    def hosts_up(self) -> list[int]:
        """The hosts of the VM that are up, ours included, by index."""
        with self.lock:
            return sorted({self.host, *(h for h, up in self.up.items() if up)})

    def _link(self, h: int):
        """The pool's channel to host *h*'s pvm_netd (netask.NetLink), kept open."""
        from .netask import NetLink  # (netask imports this module)

        link = self.links.get(h)
        a, p = self.where[h]
        if link is None or getattr(link, "at", None) != (a, p):
            keys = (self.public.decode(), self.secret.decode())
            link = self.links[h] = NetLink(a, p, keys, self.trusted)
            link.at = (a, p)  # type: ignore[attr-defined]
        return link

    def _on_hosts(self, by_host: dict[int, dict], op: str, local: Callable[[dict], object]) -> dict[int, object]:
        """Request *op* with each host's arguments (host -> args) answered by that host:
        ours by *local*, the others' pvm_netds asked at once. A host that is down or
        does not answer gives its PvmError."""
        from .netask import ask_all

        out: dict[int, object] = {}
        far = []
        for h in by_host:
            if h == self.host:
                continue
            with self.lock:
                up = self.up.get(h)
            if up is None or h not in self.where:
                out[h] = PvmError(PvmNoHost, f"no host {h} in the virtual machine")
            elif not up:
                out[h] = PvmError(PvmHostFail, f"host {h} is down")
            else:
                far.append(h)
        for h, answer in zip(far, ask_all([self._link(h) for h in far], op, PEER_TIMEOUT, [by_host[h] for h in far])):
            out[h] = answer
        if self.host in by_host:
            try:
                out[self.host] = local(by_host[self.host])
            except PvmError as e:
                out[self.host] = e
        return out

    def _ask_tasks(self, req: dict) -> list[dict]:
        """This host's tasks; with "all", every host's (each task carries its host)."""
        def here(_: dict) -> list[dict]:  # (from our mapping of segment 0: pvm_shmd not asked)
            return spawner.tasks(self.vmid, self.task._buf)

        if not req.get("all"):
            return here(req)
        got = self._on_hosts({h: {} for h in self.hosts_up()}, "tasks", here)
        out: list[dict] = []
        for h in sorted(got):
            g = got[h]
            if isinstance(g, list):
                out += [t for t in g if isinstance(t, dict) and not tids.is_netd(int(t.get("tid", 0)))]
        return out

    def _ask_alive(self, req: dict) -> bool:
        """Is this host's pvm_shmd running, with the shared memory we joined (the
        console's mstat)? Read here, without a request to it: its pid and start time,
        the segment's generation and state, our slot (PvmSysErr if not)."""
        self.task._check_alive()
        return True

    def _ask_config(self, req: dict) -> dict:
        """The hosts up (each {"host", "name", "arch", "speed", "dsig"}) and those we count as down."""
        with self.lock:
            down = sorted(h for h, up in self.up.items() if not up)
        return {"up": [{"host": h, **self.info.get(h, _host_info({}, f"host{h}"))} for h in self.hosts_up()],
                "down": down}

    def place(self, flag: int, where: str, count: int) -> list[int]:
        """The host of each of *count* copies (pvm_spawn's *flag* and *where*): the named
        host (PvmTaskHost; "." is ours), round robin over the hosts of an architecture
        (PvmTaskArch) or over every host (default), ours first, then on from where the
        last spawn stopped; PvmHostCompl: every other one.
        PvmError(PvmNoHost) when no host fits."""
        up = self.hosts_up()
        name = {h: self.info.get(h, {}).get("name") for h in up}
        if flag & spawner.PvmTaskHost and where:
            fits = [h for h in up if (h == self.host if where == "." else name[h] == where)]
        elif flag & spawner.PvmTaskArch and where:
            fits = [h for h in up if self.info.get(h, {}).get("arch", spawner.ARCH) == where]
        else:
            fits = list(up)
        if flag & spawner.PvmHostCompl and where and flag & (spawner.PvmTaskHost | spawner.PvmTaskArch):
            fits = [h for h in up if h not in fits]
        if not fits:
            raise PvmError(PvmNoHost, f"no host {'but ' if flag & spawner.PvmHostCompl else ''}{where!r}")
        fits.sort(key=lambda h: (h < self.host, h))  # ours first: a first single copy stays here
        if len(fits) == 1:
            return fits * count
        with self.lock:
            start, self.cursor = self.cursor, self.cursor + count
        return [fits[(start + k) % len(fits)] for k in range(count)]

    def _spawn_here(self, req: dict) -> list:
        """Start req["count"] copies here (pvm_spawn's child, enrolled first): a tid
        each, or [code, why]. Our children: reaped by the in thread's round."""
        env = req.get("env") or {}
        if not isinstance(env, dict):
            raise PvmError(PvmBadParam, "env must be an object")
        args = req.get("args") or []
        if not isinstance(args, list):
            raise PvmError(PvmBadParam, "args must be a list")
        ep, wd = req.get("ep"), req.get("wd")
        count = int(req.get("count", 1))
        with self.spawn_lock:
            try:
                out = spawner.start_copies(str(req["prog"]), [str(a) for a in args], count,
                                           vmid=self.vmid, ep=ep if isinstance(ep, str) else self.ep,
                                           wd=wd if isinstance(wd, str) and wd else self.wd,
                                           ptid=int(req.get("ptid", 0)), output="log",
                                           env={str(k): str(v) for k, v in env.items()})
            except PvmError as e:  # the program not found, not runnable, no such directory
                return [[e.code, e.detail or ""]] * count
        return [c.tid if isinstance(c, spawner.Copy) else [c.code, c.detail or ""] for c in out]

    def _ask_spawn(self, req: dict) -> list:
        """pvm_spawn: req prog, args, count, flag, where, ptid (default: the requester),
        env, ep, wd; "here": on this host only. A tid or [code, why] per copy."""
        count = req.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= 4096:
            raise PvmError(PvmBadParam, f"count {count!r}")
        if not isinstance(req.get("prog"), str) or not req["prog"]:
            raise PvmError(PvmBadParam, "no program")
        req.setdefault("ptid", req.get("from", 0))
        if req.get("here"):
            return self._spawn_here(req)
        flag, where = int(req.get("flag", 0)), str(req.get("where") or "")
        try:
            hosts = self.place(flag, where, count)
        except PvmError as e:
            return [[e.code, e.detail or ""]] * count
        order: dict[int, list[int]] = {}
        for k, h in enumerate(hosts):
            order.setdefault(h, []).append(k)
        fields = {k: v for k, v in req.items() if k in ("prog", "args", "ptid", "env")}
        got = self._on_hosts({h: {**fields, "count": len(ks), "here": True} for h, ks in order.items()},
                             "spawn", lambda a: self._spawn_here({**a, "ep": req.get("ep"), "wd": req.get("wd")}))
        out: list = [None] * count
        for h, ks in order.items():
            g = got[h]
            each = g if isinstance(g, list) and len(g) == len(ks) else \
                [[g.code, g.detail or ""] if isinstance(g, PvmError) else [PvmSysErr, "bad answer"]] * len(ks)
            for k, r in zip(ks, each):
                out[k] = r
        return out

    def _ask_signal(self, req: dict) -> list:
        """Signal req["signum"] to req["tids"] on any host: [tid, 0 or code, why] each."""
        signum = req.get("signum")
        if not isinstance(signum, int) or not 0 < signum < signal.NSIG:
            raise PvmError(PvmBadParam, f"signal {signum!r}")
        want = req.get("tids")
        if not isinstance(want, list) or not all(isinstance(t, int) and 0 < t <= tids.MAX_TID for t in want):
            raise PvmError(PvmBadParam, "tids must be a list of tids")

        def here(a: dict) -> list:
            mine = [t for t in a["tids"] if not tids.is_netd(t)]
            res = dict(spawner.signal_tids(self.vmid, signum, mine)) if mine else {}
            out = []
            for t in a["tids"]:
                e = res.get(t, PvmError(PvmNoTask, tids.fmt(t)))
                out.append([t, 0, ""] if e is None else [t, e.code, e.detail or ""])
            return out

        by: dict[int, list[int]] = {}
        for t in want:
            by.setdefault(tids.host_of(t), []).append(t)
        got = self._on_hosts({h: {"signum": signum, "tids": ts} for h, ts in by.items()}, "signal", here)
        out: list[list] = []
        for h, ts in by.items():
            g = got[h]
            out += g if isinstance(g, list) else [[t, g.code if isinstance(g, PvmError) else PvmSysErr,
                                                   str(g)] for t in ts]
        return out

    def _ask_notify(self, req: dict) -> str:
        """pvm_notify for req["for"] (else the asking task): "what" (TASK_EXIT with
        "tids", HOST_DELETE with host "tids", HOST_ADD with "count"), "tag", "cancel"."""
        who = req.get("for", req.get("from"))
        what, tag = req.get("what"), req.get("tag")
        if not isinstance(who, int) or who <= 0 or not isinstance(tag, int) or tag < 0:
            raise PvmError(PvmBadParam, "notify needs a requester and a tag >= 0")
        cancel = bool(req.get("cancel"))
        if what == HOST_ADD:
            count = req.get("count", -1)
            if not isinstance(count, int):
                raise PvmError(PvmBadParam, f"count {count!r}")
            with self.lock:
                if cancel or count == 0:
                    self.adds.pop(who, None)
                else:
                    self.adds[who] = [tag, count]
            return "ok"
        ts = req.get("tids")
        if what not in (TASK_EXIT, HOST_DELETE) or not isinstance(ts, list) \
                or not all(isinstance(t, int) and 0 < t <= tids.MAX_TID for t in ts):
            raise PvmError(PvmBadParam, f"notify {what!r} needs a list of tids")
        ups = set(self.hosts_up())
        fire: list[int] = []
        far: dict[int, list[int]] = {}
        with self.lock:
            for t in ts:
                h = tids.host_of(t)
                book = self.deletes if what == HOST_DELETE else self.exits if h == self.host else self.far_exits
                key = h if what == HOST_DELETE else t
                if cancel:
                    book[key] = [w for w in book.get(key, []) if w != (who, tag)]
                    if not book[key]:
                        del book[key]
                elif h not in ups:
                    fire.append(tids.dtid(h) if what == HOST_DELETE else t)  # gone already: at once
                else:
                    book.setdefault(key, []).append((who, tag))
                    if what == TASK_EXIT and h != self.host:
                        far.setdefault(h, []).append(t)
        for t in fire:
            self.notify(who, tag, t)
        if far:  # the task's host watches it and tells the requester; we tell if that host dies
            got = self._on_hosts({h: {"what": TASK_EXIT, "tag": tag, "tids": ts2, "for": who, "cancel": cancel}
                                  for h, ts2 in far.items()}, "notify", lambda a: "ok")
            for h, g in got.items():
                if isinstance(g, PvmError):
                    for t in far[h]:
                        self.notify(who, tag, t)
        return "ok"

    def _reap(self) -> None:
        """Reap the tasks we spawned that have ended (the in thread's round)."""
        if self.spawn_lock.acquire(blocking=False):
            try:
                spawner.reap_children()
            finally:
                self.spawn_lock.release()

    def _ask_stop(self, req: dict) -> dict:
        """stop: this host's VM ended here; our pid too, as a console on this machine waits for our end."""
        return {"stopped": self.stop_host(), "pid": os.getpid()}

    def stop_host(self) -> bool:
        """The console's delete/halt/reset of this host, done here: kill its tasks, leave
        (the out thread stopped first: nothing of ours stays attached to the segments),
        stop pvm_shmd and wait for it; then this process ends. True if it stopped."""
        tasks = spawner.tasks(self.vmid, self.task._buf)
        spawner.kill_pids([int(t["pid"]) for t in tasks if t.get("pid") != os.getpid()], KILL_GRACE)
        self.running = False
        self.out_done.wait(2 * SLICE + 1)
        self.task.leave()
        return statmod.stop(self.vmid, STOP_TIMEOUT)

    def _deliver(self, hdrs: dict[int, dict[int, bytes]], src: int, dest: int, tag: int, data,
                 until: float | None = None) -> None:
        """psend *data* to *dest* as from *src* (a local task; one of another host goes
        out through ourselves, remote.send); dropped if *dest* is no task, or at
        *until* (monotonic; None: while we run)."""
        task = self.task
        task._src = src
        task._hdrs = hdrs.setdefault(src, {})
        if len(hdrs) > 4096:
            hdrs.clear()
        wait = SLICE
        while self.running and (until is None or time.monotonic() < until):
            try:
                task.psend(dest, tag, data, timeout=wait)
                return
            except PvmTimeout:
                # the receiver is slow (our peer's frames wait meanwhile), or the message
                # so large that its pieces take longer than that: twice as long next time
                wait = min(2 * wait, STOP_TIMEOUT)
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
        self.pool.shutdown()
        for link in self.links.values():
            link.close()  # type: ignore[attr-defined]
        self.post_tx.close(0)
        self.post_rx.close(0)
        self.rx.close(1000)  # the answer to a stop may still be on its way
        self.auth.stop()
        self.ctx.destroy(0)
        self.task.leave()


def _frames(sock: zmq.Socket) -> list:
    """One multipart message from *sock* (something is ready; a ROUTER's have two frames
    at least: the peer's identity, then what it sent). A small message's frames as bytes
    (zmq.Frame objects cost ~7 us a message here, the rcvmore attribute 16 us: on the
    critical path of every message); a large one's (BIG_KIND: its bytes go on to the
    assembly buffer or the receiver's pages uncopied) and every other kind's after the
    kind as zmq.Frames (a hello's carries the Peer-Address)."""
    f: list = [sock.recv(), sock.recv()]
    if sock.get(zmq.RCVMORE):
        f += sock.recv_multipart(copy=f[1] == MSG)
    return f


def _host_info(d: dict, name: str) -> dict:
    """A host's name, arch, speed and dsig from *d* (what the console or a hello says),
    with defaults: *name*, this library's arch, speed 1000, dsig 0."""
    def num(k: str, default: int) -> int:
        v = d.get(k)
        return v if isinstance(v, int) and not isinstance(v, bool) else default

    n, a = d.get("name"), d.get("arch")
    return {"name": n if isinstance(n, str) and n else name, "arch": a if isinstance(a, str) and a else spawner.ARCH,
            "speed": num("speed", 1000), "dsig": num("dsig", 0)}


def parse_input(line: str) -> tuple[bytes, bytes, list[tuple[int, str, int]], bool, dict, dict[int, dict]]:
    """The keys, peers, "trusted", this host's "me" (name, arch, speed, dsig, ep, wd) and
    the peers' infos pvm_netd reads from stdin; ValueError naming what is wrong."""
    try:
        d = json.loads(line)
        pub, sec = d["public"].encode("ascii"), d["secret"].encode("ascii")
        peers = [(int(p[0]), str(p[1]), int(p[2])) for p in d.get("peers", [])]
        infos = {int(p[0]): p[3] for p in d.get("peers", []) if len(p) > 3 and isinstance(p[3], dict)}
        trusted = d.get("trusted", False)
        me = d.get("me", {})
        if not isinstance(me, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        raise ValueError("stdin: expected one JSON line with public, secret and peers") from None
    if len(pub) != 40 or len(sec) != 40:
        raise ValueError("stdin: keys must be 40 characters of Z85")
    if not isinstance(trusted, bool):
        raise ValueError("stdin: trusted must be true or false")
    return pub, sec, peers, trusted, me, infos


def main(argv: list[str] | None = None) -> int:
    import argparse  # (here: pvm_shmd -net= imports this module, and starts faster without it)

    ap = argparse.ArgumentParser(prog="pvm_netd", prefix_chars="-", description="a host's network process")
    ap.add_argument("-vmid", default=None)
    ap.add_argument("-host", type=int, required=True)
    ap.add_argument("-bind", required=True)
    a = ap.parse_args(argv)
    try:
        vmid = paths.current_vmid(a.vmid)
        got = parse_input(sys.stdin.readline(1 << 20))
    except ValueError as e:
        print(f"pvm_netd: {e}", file=sys.stderr)
        return 2
    line = start(vmid, a.host, a.bind, got)
    if not line.startswith("netd<"):
        print(f"pvm_netd: {line or 'exited before it was ready'}", file=sys.stderr)
        return 1
    print(line, flush=True)
    return 0


def start(vmid: str, host: int, bind: str, got: tuple) -> str:
    """Fork this host's pvm_netd (in a session of its own, stdio on /dev/null) with
    *got*, what parse_input read; return its ready line ``netd<PORT> pid<PID> wire<WIRE>``, or
    why it did not start. (pvm_netd's main, and pvm_shmd -net= after its daemon is
    ready: one program start for both.)"""
    pub, sec, peers, trusted, me, infos = got
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        with os.fdopen(r) as f:
            return f.readline().strip()
    try:
        os.close(r)
        os.setsid()
        # its name (ps -e, top, pgrep pvm_netd) when forked by pvm_shmd -net=, whose
        # command line it keeps (what ps ax shows)
        ipc._libc.prctl(PR_SET_NAME, b"pvm_netd", 0, 0, 0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())  # only record; the loop acts
        try:
            net = Net(vmid, host, bind, pub, sec, peers, trusted, me, infos)
        except (PvmError, zmq.ZMQError, OSError) as e:
            os.write(w, f"{e}\n".encode())
            os._exit(1)
        os.write(w, f"netd<{net.port}> pid<{os.getpid()}> wire<{WIRE}>\n".encode())
        os.close(w)

        def stopper() -> None:
            stop.wait()
            net.running = False

        threading.Thread(target=stopper, daemon=True).start()
        net.serve()
    finally:
        os._exit(0)  # (never back into the caller's code: that is the parent's)


if __name__ == "__main__":
    sys.exit(main())

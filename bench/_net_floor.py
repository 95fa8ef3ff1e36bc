"""The transports' own floors between two processes: plain TCP, TLS (Python's ssl,
mutual, ECDSA P-256 certificates), pyzmq PAIR, pyzmq PAIR with CURVE.

    python bench/_net_floor.py [--host ADDR]

Ping-pong latency at 8 B (median of rounds, one-way = round trip / 2) and one-way
stream bandwidth at 1 MiB and 16 MiB (bytes acknowledged by the receiver / time).
Both ends run on this host, over ADDR (default 127.0.0.1). bench_net.py imports
``floors`` to print these rows beside ours, at its sizes.
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import socket
import ssl
import statistics
import struct
import tempfile
import time

import zmq

_LEN = struct.Struct("<Q")
SIZES_LAT = (8,)
SIZES_BW = (1 << 20, 16 << 20)


# ---- TLS certificates (what the console would make per VM) --------------------------
def make_certs(d: str) -> tuple[str, str]:
    """A self-signed ECDSA certificate and key in *d* (mode 0600), for both ends."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pvm-vm")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("pvm-vm")]), critical=False)
            .sign(key, hashes.SHA256()))
    cp, kp = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
    for p, b in ((cp, cert.public_bytes(serialization.Encoding.PEM)),
                 (kp, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))):
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b)
        os.close(fd)
    return cp, kp


def _tls_ctx(server: bool, cp: str, kp: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_cert_chain(cp, kp)
    ctx.load_verify_locations(cp)
    ctx.verify_mode = ssl.CERT_REQUIRED
    if not server:
        ctx.check_hostname = False
    return ctx


# ---- stream sockets (TCP, TLS): length-prefixed frames --------------------------------
def _recv_exact(s, n: int, buf: bytearray | None = None) -> memoryview:
    b = buf if buf is not None and len(buf) >= n else bytearray(n)
    mv = memoryview(b)[:n]
    got = 0
    while got < n:
        k = s.recv_into(mv[got:], n - got)
        if not k:
            raise ConnectionError("closed")
        got += k
    return mv


def _stream_server(kind: str, host: str, q, certs) -> None:
    ls = socket.create_server((host, 0))
    q.put(ls.getsockname()[1])
    c, _ = ls.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if kind == "tls":
        c = _tls_ctx(True, *certs).wrap_socket(c, server_side=True)
    buf = bytearray(16 << 20)
    while True:
        try:
            n = _LEN.unpack(_recv_exact(c, 8))[0]
        except ConnectionError:
            return
        mode, n = n >> 62, n & ((1 << 62) - 1)
        data = _recv_exact(c, n, buf)
        if mode == 0:  # echo
            c.sendall(_LEN.pack(n) + bytes(data) if n < 65536 else _LEN.pack(n))
            if n >= 65536:
                c.sendall(data)
        elif mode == 2:  # last of a stream: acknowledge
            c.sendall(_LEN.pack(0))


def _rounds(n: int) -> int:
    return 2000 if n <= 1024 else 200 if n <= 65536 else 30


def measure(pinger, pusher, sizes_lat, sizes_bw) -> dict:
    """The figures of one transport: ``lat{n}`` the median over rounds of the time of
    ``pinger(n)()`` (one round trip) / 2, in s; ``bw{n}`` bytes / time of a stream of
    ``pusher(n)(last)`` calls (one message each) ending with the one whose *last* is
    true, which returns when the receiver has it all, in B/s."""
    out = {}
    for n in sizes_lat:
        ping = pinger(n)
        rt = []
        for _ in range(_rounds(n)):
            t = time.perf_counter()
            ping()
            rt.append(time.perf_counter() - t)
        out[f"lat{n}"] = statistics.median(rt) / 2
    for n in sizes_bw:
        push = pusher(n)
        count = max(8, (256 << 20) // n)
        t = time.perf_counter()
        for k in range(count):
            push(k == count - 1)
        out[f"bw{n}"] = n * count / (time.perf_counter() - t)
    return out


def _stream_client(kind: str, host: str, port: int, certs, sizes_lat, sizes_bw) -> dict:
    c = socket.create_connection((host, port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if kind == "tls":
        c = _tls_ctx(False, *certs).wrap_socket(c, server_hostname="pvm-vm")
    def pinger(n: int):
        msg = _LEN.pack(n) + bytes(n)
        return lambda: (c.sendall(msg), _recv_exact(c, 8 + n))

    def pusher(n: int):
        data = bytes(n)

        def push(last: bool) -> None:
            c.sendall(_LEN.pack(n | ((2 if last else 1) << 62)))
            c.sendall(data)
            if last:
                _recv_exact(c, 8)
        return push

    out = measure(pinger, pusher, sizes_lat, sizes_bw)
    c.close()
    return out


# ---- zmq PAIR, with or without CURVE --------------------------------------------------
def _zmq_sock(ctx: zmq.Context, server: bool, keys) -> zmq.Socket:
    s = ctx.socket(zmq.PAIR)
    s.linger = 0
    if keys is not None:
        (spub, ssec), (cpub, csec) = keys
        if server:
            s.curve_secretkey, s.curve_publickey, s.curve_server = ssec, spub, True
        else:
            s.curve_secretkey, s.curve_publickey, s.curve_serverkey = csec, cpub, spub
    return s


def _zmq_server(host: str, q, keys) -> None:
    ctx = zmq.Context()
    s = _zmq_sock(ctx, True, keys)
    q.put(s.bind_to_random_port(f"tcp://{host}"))
    while True:
        m = s.recv(copy=False)
        kind = bytes(m.buffer[:1])
        if kind == b"e":
            s.send(m, copy=False)
        elif kind == b"l":
            s.send(b"k")
        elif kind == b"q":
            break
    s.close()
    ctx.term()


def _zmq_client(host: str, port: int, keys, sizes_lat, sizes_bw) -> dict:
    ctx = zmq.Context()
    s = _zmq_sock(ctx, False, keys)
    s.connect(f"tcp://{host}:{port}")
    def pinger(n: int):
        msg = b"e" + bytes(n - 1)
        return lambda: (s.send(msg), s.recv(copy=False))

    def pusher(n: int):
        data, end = b"s" + bytes(n - 1), b"l" + bytes(n - 1)

        def push(last: bool) -> None:
            s.send(end if last else data, copy=n < 65536)
            if last:
                s.recv()
        return push

    out = measure(pinger, pusher, sizes_lat, sizes_bw)
    s.send(b"q")
    s.close()
    ctx.term()
    return out


def enter_netns(name: str | None) -> None:
    """Move this process into network namespace *name* (``ip netns``'s /run/netns/NAME);
    None: stay."""
    if name is None:
        return
    import ctypes

    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000):  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


def _server(kind: str, host: str, q, certs, keys, ns: str | None) -> None:
    enter_netns(ns)
    if kind in ("tcp", "tls"):
        _stream_server(kind, host, q, certs)
    else:
        _zmq_server(host, q, keys if kind == "zmq-curve" else None)


def _client(kind: str, host: str, port: int, certs, keys, sizes_lat, sizes_bw, ns: str | None, q=None) -> dict:
    enter_netns(ns)
    if kind in ("tcp", "tls"):
        got = _stream_client(kind, host, port, certs, sizes_lat, sizes_bw)
    else:
        got = _zmq_client(host, port, keys if kind == "zmq-curve" else None, sizes_lat, sizes_bw)
    if q is not None:
        q.put(got)
    return got


def floors(host: str = "127.0.0.1", kinds=("tcp", "tls", "zmq", "zmq-curve"), sizes_lat=SIZES_LAT,
           sizes_bw=SIZES_BW, server_ns: str | None = None, client_ns: str | None = None) -> dict[str, dict]:
    """Each transport's figures (lat8 in s, bw* in B/s): the server in network namespace
    *server_ns*, the client in *client_ns* (None: this one), reaching it at *host*."""
    res = {}
    with tempfile.TemporaryDirectory() as d:
        certs = make_certs(d)
        keys = (zmq.curve_keypair(), zmq.curve_keypair())
        for kind in kinds:
            q: mp.Queue = mp.Queue()
            p = mp.Process(target=_server, args=(kind, host, q, certs, keys, server_ns))
            p.start()
            try:
                port = q.get(timeout=10)
                if client_ns is None:
                    res[kind] = _client(kind, host, port, certs, keys, sizes_lat, sizes_bw, None)
                else:  # (in a process of its own: this one stays where it is)
                    c = mp.Process(target=_client, args=(kind, host, port, certs, keys, sizes_lat, sizes_bw,
                                                         client_ns, q))
                    c.start()
                    res[kind] = q.get(timeout=600)
                    c.join(10)
            finally:
                p.join(10)
                if p.is_alive():
                    p.kill()
    return res


def row(name: str, r: dict) -> str:
    return (f"{name:<22} {r['lat8'] * 1e6:8.1f} us {r[f'bw{1 << 20}'] / 1e9:8.2f} GB/s"
            f" {r[f'bw{16 << 20}'] / 1e9:8.2f} GB/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    a = ap.parse_args()
    print(f"{'transport':<22} {'8 B one-way':>11} {'1 MiB':>13} {'16 MiB':>13}")
    for k, r in floors(a.host).items():
        print(row(k, r))


if __name__ == "__main__":
    main()

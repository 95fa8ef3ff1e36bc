"""Finding a host's pvm_shmd and talking to it over its control socket.

The daemon is found the way an alien process must find it: from the user and the
VM id alone (segment 0's key), never by trusting a file. Requests are one JSON
object per line on a Unix socket whose path is recorded in segment 0.
"""
from __future__ import annotations

import json
import os
import socket
import struct

import sysv_ipc

from . import ipc, layout, paths
from .errors import PvmDenied, PvmError, PvmSysErr


class NoDaemon(PvmError):
    """No pvm_shmd runs for this user and VM id on this host."""

    def __init__(self, detail: str = "No pvm_shmd"):
        super().__init__(PvmSysErr, detail)


def attach_seg0(vmid: str) -> tuple[sysv_ipc.SharedMemory, memoryview]:
    """Attach and check segment 0 of (this user, *vmid*); the caller detaches."""
    key = paths.seg0_key(vmid)
    try:
        shm = sysv_ipc.SharedMemory(key)
    except sysv_ipc.ExistentialError:
        raise NoDaemon() from None
    except sysv_ipc.PermissionsError:
        raise PvmError(PvmDenied, f"segment key {key:#010x} belongs to another user") from None
    try:
        ipc.check_owner(shm, f"segment 0 at key {key:#010x}")  # before a byte is believed
    except ipc.NotOurs as e:
        shm.detach()
        raise PvmError(PvmDenied, str(e)) from None
    buf = memoryview(shm)
    try:
        layout.check(buf, os.getuid(), vmid)
    except layout.LayoutError as e:
        buf.release()
        shm.detach()
        raise PvmError(PvmDenied, f"segment key {key:#010x}: {e}") from None
    return shm, buf


def daemon_info(vmid: str) -> dict:
    """Pid, state and socket path from segment 0, or NoDaemon."""
    shm, buf = attach_seg0(vmid)
    try:
        h = layout.header(buf)
        return {"pid": h["pid"], "state": h["state"], "sock": h["sock"],
                "start_ticks": h["start_ticks"], "host": h["host"]}
    finally:
        buf.release()
        shm.detach()


class Connection:
    """A line-oriented JSON connection to the daemon."""

    def __init__(self, path: str, timeout: float = 5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
            uid = peer_credentials(self.sock)[1]
        except OSError as e:
            self.sock.close()
            raise NoDaemon(f"No pvm_shmd ({path}: {e.strerror})") from None
        if uid != os.getuid():  # whoever listens there is not our daemon
            self.sock.close()
            raise PvmError(PvmDenied, f"{path}: the process listening is uid {uid}'s, not ours")
        self.rfile = self.sock.makefile("rb")

    def request(self, op: str, **args) -> dict:
        try:
            self.sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            line = self.rfile.readline()
        except OSError as e:
            raise NoDaemon(f"pvm_shmd did not answer: {e}") from None
        if not line:
            raise NoDaemon("pvm_shmd closed the connection")
        try:
            reply = json.loads(line)
        except ValueError:
            raise PvmError(PvmSysErr, f"unreadable reply from pvm_shmd: {line[:60]!r}") from None
        if not isinstance(reply, dict):
            raise PvmError(PvmSysErr, f"unreadable reply from pvm_shmd: {line[:60]!r}")
        if "error" in reply:
            code = reply.get("code")
            raise PvmError(code if isinstance(code, int) else PvmSysErr, str(reply["error"]))
        return reply

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket (SO_PEERCRED)."""
    pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                      struct.calcsize("3i")))
    return pid, uid


def connect(vmid: str | None = None, timeout: float = 5.0) -> Connection:
    vmid = paths.current_vmid(vmid)
    return Connection(daemon_info(vmid)["sock"], timeout)


def request(op: str, vmid: str | None = None, timeout: float = 5.0, **args) -> dict:
    """One request on a fresh connection."""
    return request_at(daemon_info(paths.current_vmid(vmid))["sock"], op, timeout, **args)


def request_at(path: str, op: str, timeout: float = 5.0, **args) -> dict:
    """One request on a fresh connection to the daemon's socket *path*, as segment 0
    says (one the caller holds, checked when it joined: attaching it again to find the
    path cost pvm_netd a third of a stat)."""
    c = Connection(path, timeout)
    try:
        return c.request(op, **args)
    finally:
        c.close()

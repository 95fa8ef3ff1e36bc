"""A second, hostile user on the same host, for the security tests (root only).

The user is a uid that no account, process, file of ours or SysV object has: "created"
for the test without touching /etc/passwd, so there is nothing to remove afterwards but
what it made (``cleanup``). Its actions run in a forked child that drops to that uid
(groups, gid, uid), so it needs to read nothing from the checkout or the virtual
environment: the modules it uses are already loaded (a checkout under a 0700
directory such as /root works).
"""
from __future__ import annotations

import json
import os
import pwd
import select
import shutil
import traceback
from collections.abc import Callable

import pytest

from shmd import ipc

TIMEOUT = 60.0


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("acting as a second user needs root (setuid); run the suite as root")


def free_uid() -> int:
    """A uid with no account, no process and no SysV object."""
    used = {r["uid"] for k in ("shm", "sem", "msg") for r in ipc.proc_table(k)}
    procs = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                procs.add(os.stat(f"/proc/{d}").st_uid)
            except OSError:
                pass
    for uid in range(54321, 60000):
        try:
            pwd.getpwuid(uid)
            continue
        except KeyError:
            pass
        if uid not in used and uid not in procs:
            return uid
    raise RuntimeError("no free uid")


class OtherUser:
    """Run functions as the hostile uid; remove what it made."""

    def __init__(self) -> None:
        self.uid = free_uid()
        self.dirs: list[str] = []

    def run(self, fn: Callable[..., object], *args, env: dict[str, str] | None = None):
        """``fn(*args)`` in a child running as the other user; its JSON-able result, or
        RuntimeError with the child's traceback."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            os.close(r)
            try:
                os.setgroups([])
                os.setgid(self.uid)
                os.setuid(self.uid)
                if env:
                    os.environ.update(env)
                out = {"ok": fn(*args)}
            except BaseException:
                out = {"error": traceback.format_exc()}
            os.write(w, json.dumps(out).encode())
            os._exit(0)
        os.close(w)
        data = b""
        while True:
            ready, _, _ = select.select([r], [], [], TIMEOUT)
            if not ready:
                os.kill(pid, 9)
                break
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
        os.close(r)
        os.waitpid(pid, 0)
        out = json.loads(data or b'{"error": "the child died"}')
        if "error" in out:
            raise RuntimeError(out["error"])
        return out["ok"]

    def mkdir(self, path: str, mode: int = 0o755) -> str:
        """A directory of the other user's (removed by cleanup)."""
        os.makedirs(path, exist_ok=True)
        os.chown(path, self.uid, self.uid)
        os.chmod(path, mode)
        self.dirs.append(path)
        return path

    def cleanup(self) -> None:
        """Remove every SysV object and planted directory of the other user's."""
        for kind in ("shm", "sem", "msg"):
            for row in ipc.proc_table(kind):
                if self.uid in (row["uid"], row["cuid"]):
                    ipc.remove(kind, row[ipc.ID_COLUMN[kind]])
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def other_user():
    need_root()
    u = OtherUser()
    yield u
    u.cleanup()

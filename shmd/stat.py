"""pvm_shmd_stat: kick the daemon into reporting its state, or print it as JSON.

    pvm_shmd_stat            USR1 to the daemon: it reports onto its stdout or its log
    pvm_shmd_stat --json     the state as JSON on our stdout (for scripts and the console)
    pvm_shmd_stat --stop     TERM to the daemon; wait until it has removed everything
    pvm_shmd_stat --trace on|off|MASK|dump|take
                             tracing of every task of the host on (MASK: of those events)
                             or off; its events so far as JSON (take: and forget them),
                             see shmd/trace.py
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

from . import control, ipc, paths, private, trace
from .errors import PvmError
from .exits import StatExit

TRACE_OPS: dict[str, dict[str, object]] = {"on": {"set": trace.ALL}, "off": {"set": 0},
                                           "dump": {"dump": True},
                                           "take": {"dump": True, "clear": True}}


def trace_op(word: str) -> dict[str, object]:
    """The request --trace WORD makes; ValueError naming a wrong one."""
    if word in TRACE_OPS:
        return TRACE_OPS[word]
    if word.isdigit() and int(word) <= trace.ALL:
        return {"set": int(word)}
    raise ValueError(f"{word!r}: on, off, a mask from 0 to {trace.ALL}, dump or take")


def find_daemon(vmid: str) -> tuple[int, int]:
    """(pid, start time) of the live pvm_shmd of *vmid*: from segment 0, or, when that is
    damaged, from the flock-held pid file in our private directory (so a scribbled
    header never makes a daemon unstoppable). NoDaemon or PvmError saying why not."""
    try:
        info = control.daemon_info(vmid)
        pid, start = info["pid"], info["start_ticks"]
        if ipc.alive(pid, start):
            return pid, start
        raise control.NoDaemon("No pvm_shmd (only leftovers of a dead one: run ipcfree)")
    except control.NoDaemon:
        raise
    except PvmError as damaged:
        pid = locked_pid(paths.daemon_files(vmid)["lock"])
        if pid is None:
            raise damaged from None
        return pid, ipc.process_start(pid) or 0


def locked_pid(path: str) -> int | None:
    """The pid in our daemon lock file *path* while a pvm_shmd of ours holds its flock."""
    text = private.held(path)
    if text is None or not text.isdigit():
        return None
    pid = int(text)
    try:  # a process of ours running pvm_shmd, not whatever number the file holds
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return None
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")[:3]
    except OSError:
        return None
    if not any(w.endswith(b"pvm_shmd") or w == b"shmd.daemon" for w in words):
        return None
    return pid


def stop(vmid: str, timeout: float) -> bool:
    """TERM the daemon of *vmid* and wait until it has exited (it removes every IPC
    object and file before it does)."""
    pid, start = find_daemon(vmid)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not ipc.alive(pid, start):
            return True
        time.sleep(0.02)
    return False


def main(argv: list[str] | None = None) -> int:
    import argparse  # (here: pvm_netd imports this module, and starts faster without it)

    def trace_arg(word: str) -> dict[str, object]:
        try:
            return trace_op(word)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    ap = argparse.ArgumentParser(prog="pvm_shmd_stat", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the state as JSON")
    ap.add_argument("--stop", action="store_true", help="stop the daemon (TERM) and wait")
    ap.add_argument("--trace", type=trace_arg, metavar="on|off|MASK|dump|take",
                    help="every task traces (on: all events, MASK: those), none, the events so far")
    ap.add_argument("-vmid", "--vmid", default=None, help="VM id (default $PVM_VMID)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    a = ap.parse_args(argv)
    try:
        vmid = paths.current_vmid(a.vmid)
        if a.stop:
            if not stop(vmid, a.timeout):
                print(f"pvm_shmd_stat: daemon did not exit within {a.timeout:g} s",
                      file=sys.stderr)
                return StatExit.TIMEOUT
        elif a.trace:
            print(json.dumps(control.request("trace", vmid, timeout=a.timeout, **a.trace)))
        elif a.json:
            print(json.dumps(control.request("stat", vmid, timeout=a.timeout), indent=1))
        else:
            os.kill(find_daemon(vmid)[0], signal.SIGUSR1)
    except ValueError as e:
        print(f"pvm_shmd_stat: {e}", file=sys.stderr)
        return StatExit.USAGE
    except control.NoDaemon as e:
        print(e.detail or "No pvm_shmd", file=sys.stderr)
        return StatExit.NO_DAEMON
    except PvmError as e:
        print(f"pvm_shmd_stat: {e}", file=sys.stderr)
        return StatExit.FAILED
    return StatExit.OK


if __name__ == "__main__":
    sys.exit(main())

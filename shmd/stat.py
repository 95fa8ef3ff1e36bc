"""pvm_shmd_stat: kick the daemon into reporting its state, or print it as JSON.

    pvm_shmd_stat            USR1 to the daemon: it reports onto its stdout or its log
    pvm_shmd_stat --json     the state as JSON on our stdout (for scripts and the console)
    pvm_shmd_stat --stop     TERM to the daemon; wait until it has removed everything
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from . import control, ipc, paths
from .errors import PvmError

EXIT_OK, EXIT_NODAEMON, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3


def stop(vmid: str, timeout: float) -> bool:
    """TERM the daemon of *vmid* and wait until its segment 0 is gone."""
    info = control.daemon_info(vmid)
    if not ipc.alive(info["pid"], info["start_ticks"]):
        raise control.NoDaemon("No pvm_shmd (only leftovers of a dead one: run ipcfree)")
    os.kill(info["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            control.daemon_info(vmid)
        except control.NoDaemon:
            if not ipc.alive(info["pid"], info["start_ticks"]):
                return True
        time.sleep(0.02)
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pvm_shmd_stat", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the state as JSON")
    ap.add_argument("--stop", action="store_true", help="stop the daemon (TERM) and wait")
    ap.add_argument("-vmid", "--vmid", default=None, help="VM id (default $PVM_VMID)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    a = ap.parse_args(argv)
    try:
        vmid = paths.current_vmid(a.vmid)
        if a.stop:
            if not stop(vmid, a.timeout):
                print(f"pvm_shmd_stat: daemon did not exit within {a.timeout:g} s",
                      file=sys.stderr)
                return EXIT_TIMEOUT
        elif a.json:
            print(json.dumps(control.request("stat", vmid, timeout=a.timeout), indent=1))
        else:
            info = control.daemon_info(vmid)
            if not ipc.alive(info["pid"], info["start_ticks"]):
                raise control.NoDaemon()
            os.kill(info["pid"], signal.SIGUSR1)
    except ValueError as e:
        print(f"pvm_shmd_stat: {e}", file=sys.stderr)
        return EXIT_USAGE
    except control.NoDaemon as e:
        print(e.detail or "No pvm_shmd", file=sys.stderr)
        return EXIT_NODAEMON
    except PvmError as e:
        print(f"pvm_shmd_stat: {e}", file=sys.stderr)
        return EXIT_NODAEMON
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

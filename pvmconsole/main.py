"""`pvm`: start or attach to the virtual machine, then read commands from the
terminal (interactive), a pipe or file on stdin, ``-f FILE`` or ``-e 'cmd; cmd'``.

Exit statuses: see status.py and docs/console.md.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Iterable, Sequence

from pvmconsole import hostfile as hf
from pvmconsole.batch import ScriptError, read_command_file, run_lines, stream_lines
from pvmconsole.commands import full_registry
from pvmconsole.console import Console, printable
from pvmconsole.hostlink import is_local
from pvmconsole.status import Exit
from pvmconsole.tokenizer import split_commands
from pvmconsole.vm import VirtualMachine
from shmd import private
from shmd.errors import PvmError, strerror
from shmd.paths import check_vmid

PROG = "pvm"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG, description="PVM console for the pvm-shmd virtual machine.",
        epilog="Exit status: 0 ok, 1 a scripted command failed (any line; -x: the first), 2 usage or hostfile error, "
               "3 the virtual machine could not be started. See docs/console.md.")
    p.add_argument("hostfile", nargs="?", help="hosts to start (ignored when a VM is running)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("-f", dest="file", metavar="FILE", help="run the commands in FILE")
    src.add_argument("-e", dest="commands", metavar="CMDS", help="run commands separated by ';'")
    p.add_argument("-x", "--stop-on-error", action="store_true",
                   help="in scripts, stop at the first failing command (by default every "
                        "line runs, as in PVM, and the exit status is 1 if any failed)")
    p.add_argument("-k", "--keep-going", action="store_true",
                   help="accepted for compatibility: going on is the default")
    p.add_argument("-d", dest="debug", metavar="MASK", default="0",
                   help="debug mask (hex 0x.., octal 0.. or decimal), given to each pvm_shmd")
    p.add_argument("-n", dest="name", metavar="HOSTNAME", help="name of the master host")
    p.add_argument("--norc", action="store_true", help="don't run $HOME/.pvmrc")
    src.add_argument("--view", action="store_true", help="run the view command, then quit")
    return p.parse_args(argv)


def rc_path() -> str:
    """PVM: $HOME/.pvmrc, or ./.pvmrc when HOME is unset."""
    home = os.environ.get("HOME")
    return os.path.join(home, ".pvmrc") if home else ".pvmrc"


def choose_vmid(hosts: hf.Hostfile | None) -> str:
    """``id=`` on the master's own hostfile line (or its ``*`` defaults), else $PVM_VMID."""
    if hosts is not None:
        own = next((e for e in hosts.entries if is_local(e.name)), None)
        vmid = (own.options if own else hosts.defaults).get("id")
        if vmid:
            return check_vmid(vmid)
    return check_vmid(os.environ.get("PVM_VMID", ""))


def say(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def script_lines(args: argparse.Namespace) -> tuple[Iterable[str], str] | None:
    """The scripted input and its name for messages, or None for interactive use."""
    if args.view:
        return ["view"], "--view"
    if args.commands is not None:
        return split_commands(args.commands), "-e"
    if args.file is not None:
        return read_command_file(args.file), args.file
    if not sys.stdin.isatty():
        if isinstance(sys.stdin, io.TextIOWrapper):
            sys.stdin.reconfigure(errors="replace")  # bad UTF-8 is a bad line, not a crash
        return stream_lines(sys.stdin, "stdin"), "stdin"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        # as PVM: a bad line is dropped with a message and the other hosts start
        hosts = hf.read(args.hostfile, strict=False) if args.hostfile else None
        for line in hosts.report() if hosts is not None else ():
            print(line, file=sys.stderr, flush=True)
        vmid = choose_vmid(hosts)
        script = script_lines(args)
    except hf.HostfileError as e:
        print(e, file=sys.stderr, flush=True)
        return Exit.USAGE
    except ScriptError as e:
        say(str(e))
        return Exit.USAGE
    except (OSError, ValueError) as e:
        name = getattr(e, "filename", None)
        say(printable(f"{name}: " if name else "") + printable(str(getattr(e, "strerror", None) or e)))
        return Exit.USAGE
    try:
        private.directory()  # every file of the VM lives there: made 0700, or refused
    except private.UnsafeState as e:
        say(str(e))
        return Exit.NO_VM
    os.environ["PVM_VMID"] = vmid  # the daemons and their tasks see the same VM id
    registry, problems = full_registry()
    for p in problems:
        say(f"warning: {p}")
    try:
        vm = VirtualMachine(vmid, master_name=args.name, debug=args.debug)
    except ValueError:
        say(f"bad debug mask {args.debug!r}")
        return Exit.USAGE
    try:
        attached = vm.open(hosts)
    except PvmError as e:
        say(f"Can't start pvmd: {strerror(e.code)}" + (f" ({e.detail})" if e.detail else ""))
        return Exit.NO_VM
    finally:
        for note in vm.notes:
            say(note)
        vm.notes.clear()
    console = Console(registry, vm)
    if attached:
        console.print("pvmd already running.")
    try:
        status = None
        if not args.norc and os.path.exists(rc_path()):
            try:
                rc = read_command_file(rc_path())
            except ScriptError as e:  # reported; the console goes on without it
                say(str(e))
                rc = []
            # PVM echoes .pvmrc lines bare (no prompt); a failing one never stops the console
            status = run_lines(console, rc, rc_path(), quit_at_end=False, echo="")
        if status is None:
            if script is None:
                from pvmconsole.interactive import run_interactive  # prompt_toolkit only for a tty
                status = run_interactive(console)
            else:
                lines, source = script
                status = run_lines(console, lines, source, stop_on_error=args.stop_on_error)
        return int(status) if status is not None else Exit.OK
    except KeyboardInterrupt:
        return Exit.FAILED
    finally:
        vm.close()


if __name__ == "__main__":
    sys.exit(main())

"""Interactive use (stdin is a terminal): prompt_toolkit with history, completion
and the current command's syntax in the bottom toolbar."""
from __future__ import annotations

import os
import sys

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory
from prompt_toolkit.patch_stdout import patch_stdout

from pvmconsole.console import PROMPT, Console
from pvmconsole.registry import HOSTS, KNOWN_HOSTS
from shmd.errors import PvmError


def history_path() -> str:
    return os.path.join(os.environ.get("HOME") or ".", ".pvm_history")


class ConsoleCompleter(Completer):
    """Command and alias names for the first word; host names after a command whose
    arguments are hosts (Command.args_are: the VM's hosts, or for `add` the hostfile's
    known hosts); file paths for words that look like paths."""

    def __init__(self, console: Console):
        self.console = console
        self.paths = PathCompleter(expanduser=True)

    def host_names(self, kind: str) -> list[str]:
        vm = self.console.vm
        if vm is None or kind not in (HOSTS, KNOWN_HOSTS):
            return []
        try:
            t = vm.table()
        except PvmError:
            return []
        if kind == KNOWN_HOSTS:
            return sorted(set(t.known) - {h.name for h in t.hosts})
        return [h.name for h in t.hosts]

    def get_completions(self, document: Document, complete_event: CompleteEvent):
        text = document.text_before_cursor
        words = text.split()
        current = "" if not words or text[-1:].isspace() else words[-1]
        if len(words) == 0 or (len(words) == 1 and current):
            choices = sorted(set(self.console.registry.names()) | set(self.console.aliases))
        elif current[:1] in ("/", ".", "~"):
            sub = Document(current, len(current))
            yield from self.paths.get_completions(sub, complete_event)
            return
        else:
            name = self.console.expand_aliases_quiet(words[:1])[:1]
            cmd = self.console.registry.get(name[0]) if name else None
            choices = self.host_names(cmd.args_are) if cmd is not None else []
        for c in choices:
            if c.startswith(current):
                yield Completion(c, start_position=-len(current))


def syntax_hint(console: Console, text: str) -> str:
    """The syntax lines of the command being typed (shown in the toolbar)."""
    words = console.expand_aliases_quiet(text.split()[:1])
    cmd = console.registry.get(words[0]) if words else None
    if cmd is None:
        return ""
    return "  ".join(line.strip() for line in cmd.syntax if line.lstrip().startswith(("Syntax", "or ")))


def run_interactive(console: Console, session: PromptSession | None = None) -> int:
    """Read-run loop; Ctrl-C abandons the line, Ctrl-D (EOF) quits."""
    if session is None:
        session = PromptSession(
            history=FileHistory(history_path()),
            completer=ConsoleCompleter(console),
            complete_while_typing=False,  # completion on Tab; typing never waits for it
            bottom_toolbar=lambda: syntax_hint(console, session.default_buffer.text),  # type: ignore[attr-defined]
        )
    # Job output (`spawn ->`) comes from threads while the user types: through
    # patch_stdout it is printed above the line being edited, which is redrawn intact.
    saved = console.out, console.err, console.wait_jobs_on_quit
    console.wait_jobs_on_quit = False  # as PVM: quitting drops the jobs' output
    try:
        with patch_stdout(raw=True):
            console.out, console.err = sys.stdout, sys.stderr
            if console.vm is not None:  # hosts slow to start say so while we wait
                console.vm.progress = console.print_async
            while True:
                try:
                    line = session.prompt(PROMPT)
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    console.print("quit")  # as PVM at end of input
                    line = "quit"
                res = console.execute(line)
                if res.error is not None:
                    with console._out_lock:
                        console.err.write(res.error + "\n")
                        console.err.flush()
                if res.exit is not None:
                    return res.exit
    finally:
        console.out, console.err, console.wait_jobs_on_quit = saved

"""The full-screen ``view`` (prompt_toolkit): hosts and tasks redrawn a few times a
second, ``q`` back to the prompt.

A thread samples the hosts (source.py: each host's daemon state) one round after another; the screen is redrawn
from the last two samples every REFRESH seconds, so a slow host never stalls the keys.
"""
from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

from prompt_toolkit.application import Application
from prompt_toolkit.filters import Condition
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.layout import Layout, Window
from prompt_toolkit.layout.controls import FormattedTextControl

from pvmconsole.view.model import Sample, Selection, frame, keep_best_clocks, selected
from pvmconsole.view.source import poll
from pvmconsole.vm import VirtualMachine
from shmd.errors import PvmError

REFRESH = 0.25  # seconds between redraws
ROUND_GAP = 0.2  # seconds between the end of one round of samples and the next
KEYS = "q quit  up/down select  tab hosts/tasks  k kill  / filter  esc clear"


class Sampler:
    """The hosts' states, sampled in a thread: the last two rounds."""

    def __init__(self, poll: Callable[[], Sample]):
        self.poll = poll
        self.now: Sample | None = None
        self.before: Sample | None = None
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="view-sampler", daemon=True)

    def _run(self) -> None:
        best: dict[str, list[float]] = {}
        while not self.stop.is_set():
            s = self.poll()
            keep_best_clocks(best, s)
            with self.lock:
                self.before, self.now = self.now, s
            self.stop.wait(ROUND_GAP)

    def last(self) -> tuple[Sample | None, Sample | None]:
        with self.lock:
            return self.now, self.before


def run(vm: VirtualMachine, title: Callable[[], str]) -> None:
    """The view, until the user types q."""
    sampler = Sampler(lambda: poll(vm))
    sel = Selection()
    mode: dict = {"filter": False, "note": ""}

    def text() -> str:
        now, before = sampler.last()
        size = app.output.get_size()
        if now is None:
            return f"{title()}  sampling the hosts ..."
        lines = frame(now, before, sel, height=size.rows - 1, title=title())
        foot = (f"filter: /{sel.filter}_  (enter keep, esc clear)" if mode["filter"]
                else mode["note"] or KEYS)
        return "\n".join(ln[:size.columns] for ln in lines) + "\n" * (
            max(size.rows - len(lines) - 1, 0)) + "\n" + foot[:size.columns]

    kb = KeyBindings()
    typing = Condition(lambda: bool(mode["filter"]))

    @kb.add("q", filter=~typing)
    @kb.add("c-c")
    def _quit(event: KeyPressEvent) -> None:
        event.app.exit()

    @kb.add("up")
    def _up(event: KeyPressEvent) -> None:
        if sel.on_hosts:
            sel.host = max(-1, sel.host - 1)  # -1: no host picked, every task shown
        else:
            sel.row = max(0, sel.row - 1)

    @kb.add("down")
    def _down(event: KeyPressEvent) -> None:
        if sel.on_hosts:
            sel.host += 1  # frame() keeps both in range
        else:
            sel.row += 1

    @kb.add("tab", filter=~typing)
    def _switch(event: KeyPressEvent) -> None:
        sel.on_hosts = not sel.on_hosts
        if sel.on_hosts and sel.host < 0:
            sel.host = 0

    @kb.add("/", filter=~typing)
    def _filter(event: KeyPressEvent) -> None:
        mode["filter"] = True

    @kb.add("enter", filter=typing)
    def _keep(event: KeyPressEvent) -> None:
        mode["filter"] = False

    @kb.add("escape")
    def _clear(event: KeyPressEvent) -> None:
        mode["filter"], sel.filter = False, ""
        sel.host, sel.on_hosts = -1, False

    @kb.add("backspace", filter=typing)
    def _back(event: KeyPressEvent) -> None:
        sel.filter = sel.filter[:-1]

    @kb.add("<any>", filter=typing)
    def _type(event: KeyPressEvent) -> None:
        ch = event.data
        if ch.isprintable() and len(sel.filter) < 40:
            sel.filter += ch

    @kb.add("k", filter=~typing)
    def _kill(event: KeyPressEvent) -> None:
        now, _ = sampler.last()
        got = selected(now, sel) if now is not None else None
        if got is None or got[1].get("state") == "exited":
            mode["note"] = "no live task selected"
            return
        host, t = got
        threading.Thread(target=_kill_task, args=(vm, host, int(t["tid"]), mode),
                         daemon=True).start()

    app: Application = Application(
        layout=Layout(Window(FormattedTextControl(text), wrap_lines=False)),
        key_bindings=kb, full_screen=True, refresh_interval=REFRESH)
    sampler.thread.start()
    try:
        app.run()
    finally:
        sampler.stop.set()
        sampler.thread.join(timeout=5)


def _kill_task(vm: VirtualMachine, host: str, tid: int, mode: dict) -> None:
    """Kill task *tid* on *host* (SIGTERM, as ``kill``); the outcome goes to the footer."""
    try:
        h = next(h for h in vm.hosts() if h.name == host)
        err = vm.link(h).signal(signal.SIGTERM, [tid]).get(tid)  # as `kill`
        mode["note"] = f"t{tid:x} killed" if err is None else f"t{tid:x}: {err}"
    except (PvmError, StopIteration) as e:
        mode["note"] = f"t{tid:x}: {e or 'host gone'}"
    mode["at"] = time.monotonic()

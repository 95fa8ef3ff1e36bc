"""``trace show`` on a terminal: the space-time diagram full screen, with zoom and scroll.

The diagram itself is ``shmd.trace.diagram`` (the same text ``trace show`` prints when
stdout is not a terminal); here only the window changes: ``+``/``-`` zoom in and out
around the middle, left/right move a quarter of the window in time, up/down move
through the tasks, ``m`` fits the window to the messages (first send to last receive),
``0`` shows everything again, ``q`` back to the prompt. The utilization view (tasks
computing, in overhead, waiting) stays under the diagram, on the same time axis.
"""
from __future__ import annotations

from collections.abc import Sequence

from prompt_toolkit.application import Application
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.layout import Layout, Window
from prompt_toolkit.layout.controls import FormattedTextControl

from shmd.trace import PRECV_END, PSEND, Event, diagram, use_lines

KEYS = "q quit  + - zoom  left right scroll time  up down scroll tasks  m messages  0 all"
LABEL = 30  # columns the task names take, about
USE_ROWS = 4  # rows of the utilization view under the diagram


class TimeWindow:
    """The part of the trace shown: seconds from the first event, and the first task row."""

    def __init__(self, span: float):
        self.span = max(span, 1e-9)
        self.start, self.end, self.row = 0.0, self.span, 0

    def zoom(self, factor: float) -> None:
        mid, half = (self.start + self.end) / 2, (self.end - self.start) * factor / 2
        half = min(max(half, 1e-7), self.span / 2)
        self.start, self.end = mid - half, mid + half
        self.scroll(0.0)

    def scroll(self, fraction: float) -> None:
        w = self.end - self.start
        self.start = min(max(self.start + w * fraction, 0.0), max(self.span - w, 0.0))
        self.end = self.start + w


def run(events: Sequence[Event], names: dict[int, str], head: Sequence[str] = ()) -> None:
    """The diagram under the lines *head* (the hosts' clocks), until the user types q."""
    win = TimeWindow(events[-1].t - events[0].t if events else 0.0)
    ntasks = len({e.owner for e in events})

    def text() -> str:
        size = app.output.get_size()
        width = max(20, size.columns - LABEL)
        lines = diagram(events, names, width, win.start, win.end)
        use = use_lines(events, names, width, win.start, win.end, USE_ROWS)  # fixed at the bottom
        rows = lines[1:][win.row:win.row + max(size.rows - 3 - len(head) - len(use), 1)]
        return "\n".join(ln[:size.columns] for ln in [*head, lines[0], *rows]) + "\n" * (
            max(size.rows - len(rows) - len(head) - len(use) - 2, 0)) + "\n" + "\n".join(
            ln[:size.columns] for ln in [*use, KEYS])

    kb = KeyBindings()

    @kb.add("q")
    @kb.add("c-c")
    def _quit(event: KeyPressEvent) -> None:
        event.app.exit()

    @kb.add("+")
    @kb.add("=")
    def _in(event: KeyPressEvent) -> None:
        win.zoom(0.5)

    @kb.add("-")
    def _out(event: KeyPressEvent) -> None:
        win.zoom(2.0)

    @kb.add("left")
    def _left(event: KeyPressEvent) -> None:
        win.scroll(-0.25)

    @kb.add("right")
    def _right(event: KeyPressEvent) -> None:
        win.scroll(0.25)

    @kb.add("up")
    def _up(event: KeyPressEvent) -> None:
        win.row = max(win.row - 2, 0)

    @kb.add("down")
    def _down(event: KeyPressEvent) -> None:
        win.row = min(win.row + 2, max(2 * ntasks - 2, 0))  # a task and its gap line

    @kb.add("m")
    def _messages(event: KeyPressEvent) -> None:
        sent = [e.t for e in events if e.kind in (PSEND, PRECV_END)]
        if sent:
            pad = (sent[-1] - sent[0]) * 0.02 + 1e-6
            win.start = max(sent[0] - events[0].t - pad, 0.0)
            win.end = min(sent[-1] - events[0].t + pad, win.span)

    @kb.add("0")
    def _all(event: KeyPressEvent) -> None:
        win.start, win.end, win.row = 0.0, win.span, 0

    app: Application = Application(layout=Layout(Window(FormattedTextControl(text))),
                                   key_bindings=kb, full_screen=True)
    app.run()

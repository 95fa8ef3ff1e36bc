"""The examples/pvm3 programs the console and lab tests run (no tests here): each with
its arguments and the line of its output that says its own check passed."""
from __future__ import annotations

import os

from conftest import ROOT

EXAMPLES = os.path.join(ROOT, "examples", "pvm3")

#: (program, arguments, a regular expression its relayed output must match)
RUNS = [
    ("hello.py", "", r"^from t[0-9a-f]+: hello, world from \S+$"),
    ("master_worker.py", "3 500", r"^OK: all results correct$"),
    ("ring.py", "4", r"token back after 4 tasks, sum 6 \(OK\)"),
    ("reduction.py", "3 20000", r"3 tasks, 20000 doubles: .* \(OK\)"),
    ("timing.py", "5", r"^OK: every echo came back whole$"),
]

"""The README's Python snippets run as written (extracted from README.md, not copied),
against a real daemon, and print what their comments say."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT
from daemons import shmd_vm  # noqa: F401

README = os.path.join(ROOT, "README.md")


def snippets() -> list[str]:
    with open(README, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_the_readme_has_python_snippets():
    assert snippets()


@pytest.mark.parametrize("n", range(len(snippets())))
def test_a_readme_snippet_runs(shmd_vm, n):
    vm = shmd_vm
    vm.start()
    code = snippets()[n]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=vm.env())
    assert r.returncode == 0, r.stderr
    # a `print(...)  # VALUE` line says what it prints
    expected = [m.group(1) for m in re.finditer(r"print\(.*\)\s+# (.+)$", code, re.M)]
    assert r.stdout.split() == expected or not expected, (r.stdout, expected)
    assert vm.stat()["tasks"] == []  # every task left

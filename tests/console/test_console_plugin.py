"""A command from outside this package, through the ``pvm.commands`` entry point: the
plugin of docs/console.md (its code and entry point taken from the doc itself) is
installed as a distribution of its own on the path, and a real console runs it."""
from __future__ import annotations

import os
import re
import subprocess

from conftest import BIN, ROOT

DOC = os.path.join(ROOT, "docs", "console.md")


def plugin_from_doc() -> tuple[str, str]:
    """(module code, entry-point line) of the doc's plugin example."""
    text = open(DOC, encoding="utf-8").read()
    section = text[text.index("## Plugins"):text.index("## Interactive use")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    toml = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    name, _, value = toml.splitlines()[-1].partition("=")
    return code, f"{name.strip()} = {value.strip().strip(chr(34))}"  # INI, as pip writes it


def install(where: str) -> None:
    """pvm_hello as an installed distribution: the module and a dist-info with its
    entry point (what pip writes), on a directory of its own."""
    code, entry = plugin_from_doc()
    os.makedirs(os.path.join(where, "pvm_hello-1.0.dist-info"))
    with open(os.path.join(where, "pvm_hello.py"), "w") as f:
        f.write(code)
    with open(os.path.join(where, "pvm_hello-1.0.dist-info", "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: pvm_hello\nVersion: 1.0\n")
    with open(os.path.join(where, "pvm_hello-1.0.dist-info", "entry_points.txt"), "w") as f:
        f.write(f"[pvm.commands]\n{entry}\n")


def console(script: str, env: dict) -> subprocess.CompletedProcess:
    """Run *script* in a real console, then halt whatever it started."""
    pvm = os.path.join(BIN, "pvm")
    try:
        return subprocess.run([pvm, "--norc", "-e", script], capture_output=True, text=True,
                              timeout=90, env=env)
    finally:
        subprocess.run([pvm, "--norc", "-e", "halt"], capture_output=True, timeout=90, env=env)


def test_a_plugin_from_outside_adds_a_command(pvm_env, tmp_path):
    install(str(tmp_path / "site"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "HOME": str(tmp_path),
           "PVM_SHMD_OPTS": "-maxpages=64 -maxsegs=2"}
    r = console("hello PVM users; help", env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "hello PVM users" in lines
    assert any(line.split()[:3] == ["hello", "Say", "hello"] for line in lines), r.stdout
    assert "warning" not in r.stderr


def test_without_the_plugin_there_is_no_such_command(pvm_env, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "PVM_SHMD_OPTS": "-maxpages=64 -maxsegs=2"}
    r = console("hello", env)
    assert r.returncode == 1 and "hello: not found" in r.stderr

"""Console pieces without daemons: tokenizer, registry, aliases, arity, formats, batch rules."""
from __future__ import annotations

import io
import time

import pytest

from pvmconsole import formats
from pvmconsole.batch import run_lines
from pvmconsole.commands import builtin_registry, full_registry
from pvmconsole.console import Console
from pvmconsole.registry import Command, CommandError, Registry
from pvmconsole.tokenizer import TokenizeError, split, split_commands


def make_console() -> Console:
    return Console(builtin_registry(), None, io.StringIO(), io.StringIO())


def run(c: Console, line: str) -> tuple[str, str | None]:
    c.out.seek(0)
    c.out.truncate()
    res = c.execute(line)
    return c.out.getvalue(), res.error


# -- tokenizer -----------------------------------------------------------------
@pytest.mark.parametrize("line,words", [
    ("echo a   b", ["echo", "a", "b"]),
    ('echo a   b "c d"', ["echo", "a", "b", "c d"]),
    ("echo a\\ b # c", ["echo", "a b"]),
    ('echo x#y "" z', ["echo", "x#y", "", "z"]),
    ("  # all comment", []),
    ("echo 'it''s'", ["echo", "its"]),
    ("add 'node lo=x so=pw'", ["add", "node lo=x so=pw"]),
])
def test_split(line, words):
    assert split(line) == words


@pytest.mark.parametrize("line,msg", [('echo "abc', 'unmatched "'), ("echo 'x", "unmatched '"),
                                      ("w " * 128, "command too long")])
def test_split_errors(line, msg):
    with pytest.raises(TokenizeError, match=msg):
        split(line)


def test_split_commands_respects_quotes():
    assert split_commands("conf; echo 'a;b' \"c;d\" e\\;f ;; id") == [
        "conf", "echo 'a;b' \"c;d\" e\\;f", "id"]


# -- registry --------------------------------------------------------------------
def test_every_command_declares_help_and_arity():
    reg, problems = full_registry()
    assert problems == []
    for cmd in reg:
        assert cmd.summary and cmd.syntax and cmd.syntax[0].startswith("Syntax:  " + cmd.name), cmd.name
        assert cmd.min_words >= 1 and (cmd.max_words is None or cmd.max_words >= cmd.min_words)


def test_every_command_of_the_package_is_a_builtin():
    reg, _ = full_registry()
    assert reg.origin["stat"] == "builtin" and "stat" in builtin_registry()
    assert {reg.origin[n] for n in reg.names(hidden=True)} == {"builtin"}


def test_plugin_clash_is_refused_and_third_party_commands_register():
    reg = builtin_registry()
    with pytest.raises(ValueError, match="clashes"):
        reg.add(Command("conf", 1, 1, "x", ("Syntax:  conf",), lambda c, a: None), origin="plugin x")
    seen = []
    reg.add(Command("hello", 1, 2, "Say hello", ("Syntax:  hello [name]",),
                    lambda c, a: seen.append(a)), origin="plugin thirdparty")
    c = Console(reg, None, io.StringIO(), io.StringIO())
    assert c.execute("hello world").ok and seen == [["world"]]
    assert c.execute("hello a b").error == "hello: wrong #args"


def test_broken_plugin_is_reported_not_fatal(monkeypatch):
    class EP:
        name, value = "broken", "nowhere:COMMANDS"

        def load(self):
            raise ImportError("No module named nowhere")

    monkeypatch.setattr("pvmconsole.registry.entry_points", lambda group: [EP()])
    problems = Registry().load_plugins()
    assert problems == ["plugin broken (nowhere:COMMANDS): No module named nowhere"]


# -- lines ---------------------------------------------------------------------------
def test_not_found_and_wrong_args():
    c = make_console()
    assert run(c, "frob") == ("", "frob: not found")
    assert run(c, "conf x") == ("", "conf: wrong #args")
    assert run(c, "help a b") == ("", "help: wrong #args")
    assert run(c, "unalias") == ("", "unalias: wrong #args")
    assert run(c, "mstat") == ("", "mstat: wrong #args")
    assert run(c, 'echo "x') == ("", 'unmatched "')
    assert run(c, "") == ("", None) and run(c, "   # comment") == ("", None)


def test_echo_id_version():
    c = make_console()
    assert run(c, 'echo a   b "c d"') == ("a b c d\n", None)
    assert run(c, "id") == ("t40001\n", None)
    assert run(c, "version") == ("3.4.6\n", None)


def test_aliases_expand_stop_at_self_and_detect_loops():
    c = make_console()
    run(c, "alias hh help id")
    run(c, "alias e echo -")
    run(c, "alias echo echo >")  # first word is itself: expansion stops there
    assert run(c, "alias") == ("e\techo -\necho\techo >\nhh\thelp id\n", None)
    assert run(c, "alias hh") == run(c, "alias")  # `alias name` lists too, as PVM
    assert run(c, "e x")[0] == "> - x\n"
    assert run(c, "hh")[0].startswith("id          Print console task id")
    run(c, "alias a1 a2")
    run(c, "alias a2 a1")
    assert run(c, "a1") == ("", "alias loop")
    run(c, "unalias a1 a2 nosuch")
    assert "a1" not in c.aliases and run(c, "a1") == ("", "a1: not found")


def test_help_formats():
    c = make_console()
    out, _ = run(c, "help")
    lines = out.splitlines()
    assert lines[:3] == ["help        Print helpful information about a command",
                         "Syntax:  help [ command ]", "Commands are:"]
    assert "  conf        List virtual machine configuration" in lines
    assert run(c, "help nosuch") == ("", None)
    assert run(c, "help delete")[0] == (
        "delete      Delete hosts from virtual machine\nSyntax:  delete hostname ...\n")


def test_setenv_export_unexport(monkeypatch):
    monkeypatch.delenv("PVM_EXPORT", raising=False)
    monkeypatch.delenv("ZZ_TEST", raising=False)
    c = make_console()
    assert run(c, "export")[0] == "PVM_EXPORT=\n"
    run(c, "export FOO BAR FOO")
    assert run(c, "export")[0] == "PVM_EXPORT=FOO:BAR\n"
    run(c, "unexport FOO")
    assert run(c, "export")[0] == "PVM_EXPORT=BAR\n"
    run(c, "setenv ZZ_TEST a  b")
    assert run(c, "setenv ZZ_TEST")[0] == "a b\n"
    assert "ZZ_TEST=a b" in run(c, "setenv")[0].splitlines()


def test_a_crashing_handler_does_not_kill_the_console():
    reg = builtin_registry()

    def boom(c, a):
        raise RuntimeError("kaboom")

    reg.add(Command("boom", 1, 1, "x", ("Syntax:  boom",), boom))
    c = Console(reg, None, io.StringIO(), io.StringIO())
    assert c.execute("boom").error == "boom: internal error: RuntimeError: kaboom"
    assert c.execute("conf").error == "conf: Can't contact local daemon: no virtual machine"
    assert run(c, "id")[0] == "t40001\n"


def test_batch_stop_on_error_stops_at_first_failure_with_file_and_line():
    c = make_console()
    status = run_lines(c, ["echo one", "frob", "echo never"], "script.pvm", stop_on_error=True)
    assert status == 1
    assert c.out.getvalue() == "pvm> echo one\none\npvm> frob\n"
    assert c.err.getvalue() == "script.pvm:2: frob: not found\n"


def test_batch_goes_on_by_default_and_eof_is_quit():
    c = make_console()
    status = run_lines(c, ["frob", "echo still", "conf x"], "s")
    assert status == 1
    assert c.out.getvalue().splitlines() == [
        "pvm> frob", "pvm> echo still", "still", "pvm> conf x", "pvm> quit", "",
        "pvmd still running."]
    assert c.err.getvalue().splitlines() == ["s:1: frob: not found", "s:3: conf: wrong #args"]


def test_batch_skips_a_bom_and_escapes_control_characters_in_messages():
    c = make_console()
    status = run_lines(c, ["\ufeffecho one", "fr\0ob\x1b[2J", "\ufeffecho two"], "s\x07")
    assert status == 1
    out = c.out.getvalue().splitlines()
    assert out[:2] == ["pvm> echo one", "one"]  # the BOM of the first line is not a command
    assert c.err.getvalue().splitlines() == [
        "s\\x07:2: fr\\x00ob\\x1b[2J: not found",  # one line, nothing raw
        "s\\x07:3: \ufeffecho: not found",  # only at the start of the input is it a BOM
    ]


def test_batch_echo_prefix_for_pvmrc_lines():
    c = make_console()
    assert run_lines(c, ["# settings", "", "echo hi"], "rc", quit_at_end=False, echo="") is None
    assert c.out.getvalue().splitlines() == ["# settings", "", "echo hi", "hi"]


def test_handler_errors_are_prefixed_with_the_command():
    reg = builtin_registry()

    def fails(c, a):
        raise CommandError("went wrong")

    reg.add(Command("f", 1, 1, "x", ("Syntax:  f",), fails))
    assert Console(reg, None, io.StringIO(), io.StringIO()).execute("f").error == "f: went wrong"


# -- formats (geometry as PVM 3.4.6 printed it) ------------------------------------
def test_conf_format_matches_pvm():
    assert formats.conf([("vm", 0x40000, "LINUX64", 1000, 0x00408C41)]) == [
        "1 host, 1 data format",
        "                    HOST     DTID     ARCH   SPEED       DSIG",
        "                      vm    40000  LINUX64    1000 0x00408c41",
    ]
    assert formats.conf([("a", 0x40000, "LINUX64", 1000, 1), ("b", 0x80000, "LINUX64", 1000, 2)])[0] == \
        "2 hosts, 2 data formats"


def test_add_delete_mstat_formats_match_pvm():
    assert formats.add([("nosuchhost", None, -36)]) == [
        "0 successful",
        "                    HOST     DTID",
        "              nosuchhost Master Host IP Address is Loopback! (See pvm3/Readme)",
    ]
    assert formats.add([("n1", 0x80000, None)])[2] == "                      n1    80000"
    assert formats.delete([("nosuch", -6)]) == [
        "0 successful", "                    HOST  STATUS", "                  nosuch  No such host"]
    assert formats.delete([("n1", None)])[2] == "                      n1  deleted"
    assert formats.mstat([("nosuch", -6), ("vm", None)]) == [
        "                  nosuch  No such host", "                      vm  ok"]


def test_plugin_clash_leaves_out_only_that_command(monkeypatch):
    ok = Command("fine", 1, 1, "x", ("Syntax:  fine",), lambda c, a: None)
    clash = Command("conf", 1, 1, "x", ("Syntax:  conf",), lambda c, a: None)

    class EP:
        name, value = "p", "p:COMMANDS"

        def load(self):
            return [clash, ok]

    monkeypatch.setattr("pvmconsole.registry.entry_points", lambda group: [EP()])
    reg = builtin_registry()
    problems = reg.load_plugins()
    assert problems == ["command 'conf' from plugin p clashes with one from builtin"]
    assert reg.origin["fine"] == "plugin p" and reg.origin["conf"] == "builtin"


def test_parallel_starts_report_progress_while_hosts_are_still_starting(monkeypatch):
    from pvmconsole import vm as vmmod

    monkeypatch.setattr(vmmod, "PROGRESS_EVERY", 0.05)
    seen: list[list[int]] = []
    out = vmmod._parallel(lambda x: time.sleep(x) or x, [0.0, 0.4, 0.0], progress=seen.append)
    assert out == [0.0, 0.4, 0.0]  # results in item order
    assert seen and all(waiting == [1] for waiting in seen)  # only the slow one is waited for


def test_a_program_that_cannot_start_is_named_rightly(tmp_path):
    """A missing directory to start in is named, not blamed on the program (it used to
    say `Can't start pvmd (.../pvm_shmd: No such file or directory)`)."""
    from pvmconsole.runner import LocalRunner
    gone = str(tmp_path / "gone")
    r = LocalRunner().run(["/bin/true"], timeout=5, cwd=gone)
    assert (r.rc, r.stderr) == (127, f"{gone}: No such file or directory\n")
    r = LocalRunner().run([gone], timeout=5)
    assert (r.rc, r.stderr) == (127, f"{gone}: No such file or directory\n")
    assert LocalRunner().start(["/bin/true"], timeout=5, cwd=gone).readline() == f"{gone}: No such file or directory"

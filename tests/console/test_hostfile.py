"""The hostfile parser: PVM's syntax, errors naming file/line/word, and no crash on any input."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from pvmconsole import hostfile as hf


def names(h: hf.Hostfile) -> list[str]:
    return [e.name for e in h.entries]


def errors_of(text: str) -> list[str]:
    with pytest.raises(hf.HostfileError) as ei:
        hf.parse(text, "hf")
    return [str(e) for e in ei.value.errors]


def test_comments_blank_lines_and_options():
    h = hf.parse("# a comment\n\n   \n  node1 lo=alice sp=2000   # trailing comment\nnode2\n", "hf")
    assert names(h) == ["node1", "node2"]
    assert h.entries[0].options == {"lo": "alice", "sp": "2000"}
    assert h.entries[0].line == 4 and h.entries[1].line == 5


def test_every_pvm_option_is_accepted():
    line = "n lo=u so=pw dx=/bin/d ep=/a:/b sp=1 bx=/bin/dbg wd=/w ip=n-ib id=vm1"
    e = hf.parse(line, "hf").entries[0]
    assert set(e.options) == set(hf.OPTIONS)


def test_prefixes_defer_and_overload():
    h = hf.parse("&later\n$twice\n&$both\n", "hf")
    assert [(e.name, e.defer, e.overload) for e in h.entries] == [
        ("later", True, False), ("twice", False, True), ("both", True, True)]


def test_defaults_apply_to_following_lines_and_are_not_cumulative():
    h = hf.parse("a\n* lo=x wd=/w\nb\nc lo=own\n* sp=5\nd\n", "hf")
    opts = {e.name: dict(e.options) for e in h.entries}
    assert opts["a"] == {}
    assert opts["b"] == {"lo": "x", "wd": "/w"}
    assert opts["c"] == {"lo": "own", "wd": "/w"}  # own option wins
    assert opts["d"] == {"sp": "5"}  # the second '*' replaced the first entirely
    assert h.defaults == {"sp": "5"}  # kept for later `add`s


def test_quoting_and_backslash():
    assert errors_of("'node 1' wd=x\n") == ['hf:1: bad host name "node 1"']
    assert names(hf.parse("'node1' \"lo\"=x\n", "hf")) == ["node1"]
    e = hf.parse('node1 wd="/my dir" ep=a\\b\n', "hf").entries[0]
    assert e.options == {"wd": "/my dir", "ep": "a\\b"}  # PVM kept backslashes as written


def test_variables_are_kept_for_the_host(monkeypatch):
    """The console never expands $VAR (the host does, from its own environment), whatever
    the console's environment holds."""
    monkeypatch.setenv("HOME", "/console-home")
    e = hf.parse("n wd=$HOME/x dx=${ROOT}/pvm_shmd\n", "hf").entries[0]
    assert e.options == {"wd": "$HOME/x", "dx": "${ROOT}/pvm_shmd"}


@pytest.mark.parametrize("text,expected", [
    ("node1 xx=1\n", 'hf:1: unknown option "xx=1"'),
    ("node1 justaword\n", 'hf:1: unknown option "justaword"'),
    ("\n\nnode1 sp=0\n", 'hf:3: speed must be 1..1000000 in "sp=0"'),
    ("node1 sp=fast\n", 'hf:1: speed must be 1..1000000 in "sp=fast"'),
    ("node1 so=rsh\n", 'hf:1: startup option must be so=pw or so=ms in "so=rsh"'),
    ("node1 lo=\n", 'hf:1: empty value for option "lo="'),
    ("node1 sp=$NOPE\n", 'hf:1: speed must be 1..1000000 in "sp=$NOPE"'),
    ("node1 lo=a\x01b\n", 'hf:1: control character in "lo=a\\x01b"'),
    ("node1 'lo=x\n", "hf:1: unmatched ' in \"node1 'lo=x\""),
    ("&\n", 'hf:1: missing host name "&"'),
    ("no/de\n", 'hf:1: bad host name "no/de"'),
    ("a\nb\na\n", 'hf:3: duplicate host (first on line 1) "a"'),
    ("n " + " ".join(f"lo={i}" for i in range(10)) + "\n", 'hf:1: line too long (more than 10 words) at "lo=9"'),
    ("&* lo=x\n", 'hf:1: a defaults line takes no & or $ prefix "&*"'),
    ("n id=bad/id\n", 'hf:1: bad virtual machine id (1-32 of A-Z a-z 0-9 _ . -) in "id=bad/id"'),
])
def test_errors_name_file_line_and_word(text, expected):
    assert errors_of(text) == [expected]


def test_every_error_is_reported_with_a_summary():
    with pytest.raises(hf.HostfileError) as ei:
        hf.parse("ok\nbad1 x=1\nbad2 sp=-1\n", "cluster.hosts")
    msg = str(ei.value)
    assert msg.splitlines() == [
        'cluster.hosts:2: unknown option "x=1"',
        'cluster.hosts:3: speed must be 1..1000000 in "sp=-1"',
        "cluster.hosts: 2 errors in hostfile",
    ]


def test_overloaded_duplicate_is_allowed():
    assert names(hf.parse("a\n$a\n", "hf")) == ["a", "a"]


def test_unreadable_file_is_the_system_error_not_a_line_error(tmp_path):
    """No line 0: a file that can't be read is its OSError, which the console reports as
    ``pvm: PATH: No such file or directory`` (tests/hosts/test_console_messages.py)."""
    missing = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError) as ei:
        hf.read(missing)
    assert (ei.value.filename, ei.value.strerror) == (missing, "No such file or directory")
    with pytest.raises(IsADirectoryError) as ei2:
        hf.read(str(tmp_path))
    assert ei2.value.filename == str(tmp_path)


def test_parse_line_for_add():
    entry, defaults, errs = hf.parse_line("* lo=x", path="add")
    assert entry is None and defaults == {"lo": "x"} and errs == []
    entry, defaults, errs = hf.parse_line("   # nothing", path="add")
    assert (entry, defaults, errs) == (None, None, [])
    entry, defaults, errs = hf.parse_line("node9 lo=bob", path="add")
    assert entry is not None and entry.name == "node9" and entry.options == {"lo": "bob"}


@pytest.mark.parametrize("name", ["localhost", "cluster"])
def test_shipped_examples_parse(name):
    h = hf.read(os.path.join(ROOT, "hostfiles", name))
    assert h.entries, name


def test_cluster_example_has_defaults_and_deferred_hosts():
    h = hf.read(os.path.join(ROOT, "hostfiles", "cluster"))
    deferred = [e.name for e in h.entries if e.defer]
    assert deferred == ["node4", "gpu1"]
    node1 = h.entry("node1")
    assert node1 is not None and node1.options["wd"] == "$HOME"  # node1's own home, there


# -- property-based: nothing crashes the parser --------------------------------
HOSTFILE_ALPHABET = st.sampled_from(list("ab1.-_ \t\n#&$*='\"\\=$x{}") + ["lo", "sp", "dx", "node"])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_no_input_crashes_the_parser(text):
    try:
        h = hf.parse(text, "hf")
    except hf.HostfileError as e:
        assert e.errors and all(err.line >= 0 for err in e.errors)
    else:
        assert all(e.name for e in h.entries)


@settings(max_examples=300, deadline=None)
@given(st.lists(HOSTFILE_ALPHABET, max_size=80).map("".join))
def test_no_hostfile_like_input_crashes_the_parser(text):
    try:
        h = hf.parse(text, "hf")
    except hf.HostfileError as e:
        assert all(str(err).startswith("hf:") for err in e.errors)
    else:
        for e in h.entries:
            assert set(e.options) <= set(hf.OPTIONS)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["lo", "wd", "ep", "dx"]),
                       st.text(alphabet="abc/_-.", min_size=1, max_size=10), max_size=4))
def test_options_round_trip(opts):
    line = "host1 " + " ".join(f"{k}={v}" for k, v in opts.items())
    assert hf.parse(line, "hf").entries[0].options == opts


# -- PVM 3.4.6's rules, table-driven (src/host.c readhostfile/parsehost, man pvmd3) -----------
# The example hostfile of the pvmd3(1) man page ("Host File Format"), as printed there.
MAN_PAGE_EXAMPLE = """\
# host file for testing on various platforms
fonebone
refuge
# installed in /usr/local here
sigi.cs dx=/usr/local/pvm3/lib/pvmd
# borrowed accts, "guest", don't trust fonebone
* lo=guest  so=pw
sn666.jrandom.com
cubie.misc.edu
# really painful one, must start it by hand and share a homedir
& igor.firewall.com  lo=guest2  so=ms  ep=bob/pvm3/bin/$PVM_ARCH
"""
GUEST = {"lo": "guest", "so": "pw"}

# (case, text, [(name, options, defer, overload)], defaults, [problems])
PVM_RULES = [
    ("man page: simple", "# my first host file\nthud\nfred\nwilma\nbarney\nbetty\n",
     [(n, {}, False, False) for n in ("thud", "fred", "wilma", "barney", "betty")], {}, []),
    ("man page: example, $PVM_ARCH kept as written for the host", MAN_PAGE_EXAMPLE,
     [("fonebone", {}, False, False), ("refuge", {}, False, False),
      ("sigi.cs", {"dx": "/usr/local/pvm3/lib/pvmd"}, False, False),
      ("sn666.jrandom.com", GUEST, False, False), ("cubie.misc.edu", GUEST, False, False),
      ("igor.firewall.com", {"lo": "guest2", "so": "ms", "ep": "bob/pvm3/bin/$PVM_ARCH"}, True, False)],
     GUEST, []),
    ("& then blanks then the name", "&   later lo=x\n", [("later", {"lo": "x"}, True, False)], {}, []),
    ("prefixes in any order, blanks after", " $& both\n&$both2\n",
     [("both", {}, True, True), ("both2", {}, True, True)], {}, []),
    ("a repeated option keeps the first value", "n lo=first lo=second sp=5 sp=fast\n",
     [("n", {"lo": "first", "sp": "5"}, False, False)], {}, []),
    ("defaults fill only what the line does not set", "* lo=d wd=/w\nn lo=own\n",
     [("n", {"lo": "own", "wd": "/w"}, False, False)], {"lo": "d", "wd": "/w"}, []),
    ("defaults are not cumulative", "* lo=a\n* sp=9\nn\n",
     [("n", {"sp": "9"}, False, False)], {"sp": "9"}, []),
    ("& hosts take the defaults too", "* lo=a\n&n\n", [("n", {"lo": "a"}, True, False)], {"lo": "a"}, []),
    ("backslashes kept as written", "w dx=d:\\pvm3\\lib\\win32\\pvmd3.exe\n",
     [("w", {"dx": "d:\\pvm3\\lib\\win32\\pvmd3.exe"}, False, False)], {}, []),
    ("$VAR and ${VAR} kept as written", "n wd=$SCRATCH/x ep=${HOME}/bin:$R_LIBS/rpvm/\n",
     [("n", {"wd": "$SCRATCH/x", "ep": "${HOME}/bin:$R_LIBS/rpvm/"}, False, False)], {}, []),
    ("an unknown option drops that line only", "a\nb colour=blue\nc\n",
     [("a", {}, False, False), ("c", {}, False, False)], {}, ['hf:2: unknown option "colour=blue"']),
    ("a duplicate host drops that line only", "a\nb\na lo=x\nc\n",
     [("a", {}, False, False), ("b", {}, False, False), ("c", {}, False, False)], {},
     ['hf:3: duplicate host (first on line 1) "a"']),
    ("atoi leniency (sp=fast is 0 in PVM): an error for that host", "a sp=fast\nb\n",
     [("b", {}, False, False)], {}, ['hf:1: speed must be 1..1000000 in "sp=fast"']),
    ("an unsafe value: that host refused, the rest kept", "a ip=x;reboot\nb\n",
     [("b", {}, False, False)], {}, ['hf:1: bad address in "ip=x;reboot"']),
    ("a bad * line is dropped, the previous defaults stay", "* lo=a\n* lo=b xx=1\nn\n",
     [("n", {"lo": "a"}, False, False)], {"lo": "a"}, ['hf:2: unknown option "xx=1"']),
]


@pytest.mark.parametrize("case,text,expected,defaults,problems", PVM_RULES, ids=[c[0] for c in PVM_RULES])
def test_pvm_rules(case, text, expected, defaults, problems):
    h = hf.parse(text, "hf", strict=False)
    got = [(e.name, dict(e.options), e.defer, e.overload) for e in h.entries]
    assert got == expected
    assert dict(h.defaults) == defaults
    assert [str(p) for p in h.problems] == problems
    assert h.dropped == len(problems)


def test_strict_parse_still_raises_for_any_problem():
    """The default (strict) keeps today's all-or-nothing for callers that don't print problems."""
    assert errors_of("a\nb colour=blue\n") == ['hf:2: unknown option "colour=blue"']
    h = hf.parse(MAN_PAGE_EXAMPLE, "hf")  # no problem at all: strict accepts it
    assert len(h.entries) == 6


def test_report_is_one_line_per_problem_and_a_summary():
    h = hf.parse("ok\nbad1 x=1\nbad2 sp=-1\n", "cluster", strict=False)
    assert names(h) == ["ok"]
    assert h.report() == ['cluster:2: unknown option "x=1"',
                          'cluster:3: speed must be 1..1000000 in "sp=-1"',
                          "cluster: 2 errors in hostfile (those lines dropped)"]
    assert hf.parse("ok\n", "cluster", strict=False).report() == []


def test_only_host_lines_count_toward_the_host_limit():
    comments = "# c\n\n* lo=x\n" * 2000
    hosts = "".join(f"h{i}\n" for i in range(hf.MAX_HOSTS))
    h = hf.parse(comments + hosts, "hf", strict=False)
    assert len(h.entries) == hf.MAX_HOSTS and not h.problems
    h = hf.parse(comments + hosts + "extra\nmore\n", "hf", strict=False)
    assert len(h.entries) == hf.MAX_HOSTS
    assert [str(p) for p in h.problems] == [
        f'hf:{6000 + hf.MAX_HOSTS + 1}: too many hosts (more than {hf.MAX_HOSTS}): '
        'this and later lines dropped at "extra"']


def test_many_bad_lines_are_counted_not_all_listed():
    h = hf.parse("bad x=1\n" * 500, "hf", strict=False)
    assert len(h.problems) == hf.MAX_PROBLEMS and h.dropped == 500
    assert h.report()[-2:] == [f"hf: {500 - hf.MAX_PROBLEMS} more problems not listed",
                               "hf: 500 errors in hostfile (those lines dropped)"]


# -- bad input: one line naming it, never a traceback or a hang ----------------------------
def read_error(path: str) -> str:
    with pytest.raises(OSError) as ei:
        hf.read(path)
    return f"{ei.value.filename}: {ei.value.strerror}"


def read_in_child(path: str) -> str:
    """hf.read(path) in a child with a time and memory limit (a parser that reads
    /dev/zero or waits on a FIFO fails this test instead of stalling the suite)."""
    code = ("import resource, sys\nfrom pvmconsole import hostfile\n"
            "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
            "try:\n    hostfile.read(sys.argv[1])\n"
            "except OSError as e:\n    print(f'{e.filename}: {e.strerror}')\n")
    try:
        r = subprocess.run([sys.executable, "-c", code, path], cwd=ROOT,
                           capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hf.read({path!r}) still running after 20 s")
    assert r.stderr == ""
    return r.stdout


def test_a_device_is_refused_unread():
    assert read_in_child("/dev/zero") == "/dev/zero: not a regular file or a pipe\n"


def test_a_file_over_16_mib_is_refused_unread(tmp_path):
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(hf.MAX_BYTES + 1)  # sparse: no disk used
    assert read_error(str(big)) == f"{big}: file too large (more than 16 MiB)"
    with open(big, "wb") as f:
        f.write(b"node1\n")
        f.truncate(hf.MAX_BYTES)  # at the cap: read (the NULs make one bad line)
    h = hf.read(str(big), strict=False)
    assert names(h) == ["node1"] and h.dropped == 1


def test_a_fifo_without_writer_is_one_line_not_a_hang(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert read_in_child(str(fifo)) == f"{fifo}: a pipe with no writer (nothing to read)\n"


def test_a_fifo_with_a_writer_is_read(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def writer():
        with open(fifo, "w") as f:  # blocks until the parser opens its end
            time.sleep(0.2)  # the parser waits for data, not only for the open
            f.write("* lo=x\nnode1\n")

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    time.sleep(0.2)  # the writer is blocked in open: the FIFO has a writer
    h = hf.read(str(fifo))
    t.join(5)
    assert [(e.name, dict(e.options)) for e in h.entries] == [("node1", {"lo": "x"})]


def test_a_utf8_bom_is_skipped(tmp_path):
    p = tmp_path / "bom"
    p.write_bytes(b"\xef\xbb\xbf* lo=x\nnode1\n")
    h = hf.read(str(p))
    assert h.defaults == {"lo": "x"} and names(h) == ["node1"]


def test_nul_and_control_characters_are_escaped_in_messages(tmp_path):
    p = tmp_path / "nul"
    p.write_bytes(b"no\x00de\nok\nx lo=\x1b[2J\n")
    h = hf.read(str(p), strict=False)
    assert names(h) == ["ok"]
    assert h.report()[:2] == [f'{p}:1: bad host name "no\\x00de"',
                              f'{p}:3: control character in "lo=\\x1b[2J"']
    assert all(line.isprintable() for line in h.report())


def test_a_path_with_control_characters_is_escaped(tmp_path):
    missing = str(tmp_path / "a\x1bb")
    assert read_error(missing) == f"{tmp_path}/a\\x1bb: No such file or directory"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_lenient_parse_never_raises_and_reports_one_visible_line_each(text):
    h = hf.parse(text, "hf", strict=False)
    assert all(e.name for e in h.entries)
    assert len(h.report()) == (len(h.problems) + 1 + (h.dropped > len(h.problems)) if h.dropped else 0)
    assert all(line.isprintable() for line in h.report())


def test_a_host_expands_its_own_variables():
    """shmd.hostenv: what each host's programs do with a hostfile value."""
    from shmd import hostenv
    env = {"HOME": "/h", "A": "x;$(reboot)"}
    assert hostenv.expand("$HOME/bin:${HOME}x:$NOPE/y:${NOPE}", env) == "/h/bin:/hx:$NOPE/y:${NOPE}"
    assert hostenv.expand("$A", env) == "x;$(reboot)"  # a value is text, never run


def test_a_remote_dx_variable_is_expanded_by_the_remote_shell_and_never_reparsed(tmp_path):
    """dx=$NAME/...: the one command word sshd hands to the login shell expands the
    variable and nothing else (a hostile value stays one word; no command runs)."""
    import subprocess

    from pvmconsole.ssh import remote_command
    prog = tmp_path / "bin dir"
    prog.mkdir()
    (prog / "show").write_text('#!/bin/sh\necho "$0|$1"\n')
    (prog / "show").chmod(0o755)
    witness = tmp_path / "ran"
    cmd = remote_command(["$PVMX_D/show", "a b"])
    env = {"PATH": "/usr/bin:/bin", "PVMX_D": str(prog)}
    r = subprocess.run(["/bin/sh", "-c", cmd], env=env, capture_output=True, text=True, timeout=10)
    assert r.stdout == f"{prog}/show|a b\n", (cmd, r.stderr)
    env["PVMX_D"] = f"$(touch {witness}); touch {witness}"
    r = subprocess.run(["/bin/sh", "-c", cmd], env=env, capture_output=True, text=True, timeout=10)
    assert r.returncode != 0 and not witness.exists()
    for bad in ("$X;reboot", "${X", "-$X", "$(id)"):
        with pytest.raises(Exception, match="bad program"):
            remote_command([bad])

"""The hostfile parser: PVM's syntax, errors naming file/line/word, and no crash on any input."""
from __future__ import annotations

import os

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from pvmconsole import hostfile as hf


def names(h: hf.Hostfile) -> list[str]:
    return [e.name for e in h.entries]


def errors_of(text: str, env: dict | None = None) -> list[str]:
    with pytest.raises(hf.HostfileError) as ei:
        hf.parse(text, "hf", env or {})
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
    e = hf.parse('node1 wd="/my dir" ep=a\\ b\n', "hf").entries[0]
    assert e.options == {"wd": "/my dir", "ep": "a b"}


def test_variable_expansion():
    e = hf.parse("n wd=$HOME/x dx=${ROOT}/pvm_shmd\n", "hf", {"HOME": "/h", "ROOT": "/r"}).entries[0]
    assert e.options == {"wd": "/h/x", "dx": "/r/pvm_shmd"}


@pytest.mark.parametrize("text,expected", [
    ("node1 xx=1\n", 'hf:1: unknown option "xx=1"'),
    ("node1 justaword\n", 'hf:1: unknown option "justaword"'),
    ("\n\nnode1 sp=0\n", 'hf:3: speed must be 1..1000000 in "sp=0"'),
    ("node1 sp=fast\n", 'hf:1: speed must be 1..1000000 in "sp=fast"'),
    ("node1 so=rsh\n", 'hf:1: startup option must be so=pw or so=ms in "so=rsh"'),
    ("node1 lo=\n", 'hf:1: empty value for option "lo="'),
    ("node1 lo=$NOPE\n", 'hf:1: undefined variable $NOPE in "lo=$NOPE"'),
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
    h = hf.read(os.path.join(ROOT, "hostfiles", name), {"HOME": "/home/u"})
    assert h.entries, name


def test_cluster_example_has_defaults_and_deferred_hosts():
    h = hf.read(os.path.join(ROOT, "hostfiles", "cluster"), {"HOME": "/home/u"})
    deferred = [e.name for e in h.entries if e.defer]
    assert deferred == ["node4", "gpu1"]
    node1 = h.entry("node1")
    assert node1 is not None and node1.options["wd"] == "/home/u"


# -- property-based: nothing crashes the parser --------------------------------
HOSTFILE_ALPHABET = st.sampled_from(list("ab1.-_ \t\n#&$*='\"\\=$x{}") + ["lo", "sp", "dx", "node"])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_no_input_crashes_the_parser(text):
    try:
        h = hf.parse(text, "hf", {"HOME": "/h"})
    except hf.HostfileError as e:
        assert e.errors and all(err.line >= 0 for err in e.errors)
    else:
        assert all(e.name for e in h.entries)


@settings(max_examples=300, deadline=None)
@given(st.lists(HOSTFILE_ALPHABET, max_size=80).map("".join))
def test_no_hostfile_like_input_crashes_the_parser(text):
    try:
        h = hf.parse(text, "hf", {"x": "1"})
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

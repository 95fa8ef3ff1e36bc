"""The large-message paths chosen by measurement (shmd/calibrate.py), and PVM_SHMD_PATH
forcing one: every path delivers messages intact; the forced ones go the way they say
(the daemon's page-allocation counter tells whether a message went through the pages);
a bad value is a one-line error naming it; the kept measurement is refused when it is
not ours or not well-formed, and measured again."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from daemons import PVM_SHMD, shmd_vm  # noqa: F401  (a fixture)
from peers import payload
from test_task_direct import allocations, later

import shmd
from shmd import calibrate, direct, wake
from shmd.errors import PvmBadParam, PvmError

MIB = 1 << 20  # in a segment of the test daemon (256 pages), and direct-sized


@pytest.fixture(params=["pages", "direct", "auto"])
def forced(request, monkeypatch, pvm_env):
    """PVM_SHMD_PATH for the daemon, the test's task and its peers."""
    monkeypatch.setenv(calibrate.ENV, request.param)
    return request.param


def test_each_path_delivers_intact_and_as_forced(forced, daemon, peers):
    p = peers()
    st = daemon.stat()["paths"]
    assert st["mode"] == forced
    assert (st["why"].startswith("measured") if forced == "auto"
            else st["why"] == f"forced by PVM_SHMD_PATH={forced}")
    with shmd.join(spin=True) as me:
        # precv_into a waiting buffer: direct when the path says so, else the pages
        buf = np.zeros(MIB + 100, "u1")
        before = allocations(daemon)
        got = later(lambda: me.precv_into(buf, timeout=20))
        p.call("me.psend(dest, 7, payload(1, size))", dest=me.tid, size=MIB)
        assert got() == (p.tid, 7, MIB)
        assert buf[:MIB].tobytes() == payload(1, MIB) and not buf[MIB:].any()
        goes_direct = direct.available() and me._paths.into_min <= MIB
        assert goes_direct == (forced == "direct" if forced != "auto" else
                               st["precv_into_direct_from"] in ("64 KiB", "256 KiB", "1 MiB"))
        assert (allocations(daemon) == before) == goes_direct
        # precv_view and precv, whichever way they go, get every byte
        view = later(lambda: me.precv_view(timeout=20))
        p.call("me.psend(dest, 8, payload(2, size))", dest=me.tid, size=MIB)
        v = view()
        assert (v.src, v.tag, v.data.tobytes()) == (p.tid, 8, payload(2, MIB))
        v.release()
        p.call("me.psend(dest, 9, payload(3, size))", dest=me.tid, size=300 << 10)
        m = me.precv(timeout=20)
        assert (m.src, m.tag, bytes(m.data)) == (p.tid, 9, payload(3, 300 << 10))


@pytest.mark.parametrize("env,value", [(calibrate.ENV, "fastest"), (wake.ENV, "carrier-pigeon")])
def test_a_bad_path_or_wake_value_is_one_line_naming_it(shmd_vm, monkeypatch, env, value):
    vm = shmd_vm
    monkeypatch.setenv(env, value)
    r = vm.run([PVM_SHMD])
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and f"{env}='{value}'" in r.stderr, r.stderr
    assert not vm.files()
    if env == wake.ENV:
        return  # (a task follows its daemon's kind: it does not read the variable)
    with pytest.raises(PvmError) as e:
        shmd.join()
    assert e.value.code == PvmBadParam and "PVM_SHMD_PATH='fastest'" in str(e.value)
    assert "\n" not in str(e.value)


def test_measurement_is_kept_and_a_bad_file_is_measured_again(pvm_env, monkeypatch):
    monkeypatch.delenv(calibrate.ENV, raising=False)
    m = calibrate.ensure()
    assert m["into_min"] in (*calibrate.SIZES, calibrate.NEVER)
    assert m["view_min"] in (*calibrate.SIZES, calibrate.NEVER)
    assert set(m["gbps"]) >= {"pages", "alone"} and all(
        x > 0 for v in m["gbps"].values() for x in v)
    path = calibrate.file_path()
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert calibrate.load() == m and calibrate.ensure() == m  # kept: not measured again
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})  # a pinned task (as a benchmark's) reads it too
    try:
        assert calibrate.load() == m
    finally:
        os.sched_setaffinity(0, cpus)
    for bad in ("not json", json.dumps({**m, "into_min": 12345}),
                json.dumps({**m, "gbps": {"pages": ["x"] * len(calibrate.SIZES)}}),
                json.dumps({**m, "boot": "another boot"})):
        with open(path, "w") as f:
            f.write(bad)
        assert calibrate.load() is None
        again = calibrate.ensure()
        assert again["when"] != m["when"] and calibrate.load() == again
        m = again
    # one made on a busy host serves tasks, but a starting daemon measures again, when
    # the host is not busy now (busy now, the new one would be as noisy: kept)
    with open(path, "w") as f:
        f.write(json.dumps({**m, "load": 99.0}))
    assert calibrate.ensure()["load"] == 99.0
    busy = calibrate.choice()  # not trusted: the former default, and says so
    assert (busy.into_min, busy.view_min) == (256 << 10, 256 << 10)
    assert "busy host (load average 99.00" in busy.why
    loadavg = os.getloadavg
    monkeypatch.setattr(os, "getloadavg", lambda: (float(len(calibrate._cpus())), 0.0, 0.0))
    assert calibrate.ensure(again_if_noisy=True)["load"] == 99.0
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert calibrate.ensure(again_if_noisy=True)["when"] != m["when"]
    monkeypatch.setattr(os, "getloadavg", loadavg)
    os.chmod(path, 0o644)  # open to others: not trusted, replaced by a private one
    assert calibrate.load() is None
    calibrate.ensure()
    assert os.stat(path).st_mode & 0o777 == 0o600 and calibrate.load() is not None

"""pvm_shmd with real daemons, real task processes and real SysV objects: start-up and
resources, the control structure, allocation from many processes, dead tasks, signals,
status, one daemon per host, VM ids side by side, foreign segments."""
from __future__ import annotations

import os
import re
import signal
import stat
import time

import pytest
import sysv_ipc
from conftest import ROOT
from daemons import (
    PVM_SHMD,
    STAT,
    exists,
    listed,
    objects_by_creator,
    pages_free,
    pages_total,
    perms,
    proc_alive,
    read_line,
    shmd_vm,
    sysv_rows,
    wait_for,
)
from other_user import other_user  # noqa: F401  (a fixture)

from shmd import control, ipc, layout, paths

assert shmd_vm  # the fixture, imported for pytest


def mode_of(kind: str, iid: int) -> int:
    col = ipc.ID_COLUMN[kind]
    return next(perms(r) for r in sysv_rows(kind) if r[col] == iid)


def all_objects_of(vm, vmid=None) -> set[tuple[str, int]]:
    from daemons import daemon_objects

    return daemon_objects(vmid or vm.vmid)


# ---- start-up, resources, control structure ---------------------------------------------

def test_detaches_and_says_ready_only_when_everything_exists(shmd_vm):
    vm = shmd_vm
    ready = vm.start()
    pid = ready["pid"]
    assert proc_alive(pid) and pid != os.getpid()
    assert ready["segs"] == 2 and ready["pages"] == 64 and ready["tid"] == 1 << 18
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    assert int(fields[3]) != os.getsid(0)  # detached: a session of its own
    # the ready line came after every resource: an alien process finds it all at once
    shm, buf = control.attach_seg0(vm.vmid)
    try:
        h = layout.header(buf)
        assert bytes(buf[:8]) == layout.MAGIC and h["version"] == layout.VERSION
        assert h["pid"] == pid and h["uid"] == os.getuid() and h["vmid"] == vm.vmid
        assert h["state"] == layout.READY and h["nsegs"] == 2
        assert shm.key == paths.seg0_key(vm.vmid)
        for i in range(2):
            e = layout.segent(buf, i)
            assert exists("shm", e["shmid"]) and exists("sem", e["semid"])
            assert e["npages"] == 64 and e["free"] == 64
            size = next(r["size"] for r in sysv_rows("shm") if r["shmid"] == e["shmid"])
            assert size >= e["data_off"] + 64 * h["pagesize"]
        assert layout.segent(buf, 0)["data_off"] > 0 and layout.segent(buf, 1)["data_off"] == 0
        assert os.path.exists(h["sock"])
    finally:
        buf.release()
        shm.detach()
    st = vm.stat()
    assert st["pid"] == pid and [s["id"] for s in st["segments"]] == [0, 1]
    assert pages_free(st) == pages_total(st) == 128
    assert all(s["largest_free"] == 64 for s in st["segments"])


def test_every_object_and_file_is_mode_0600(shmd_vm):
    vm = shmd_vm
    vm.start()
    t = vm.task()  # a joined task has its wake-up semaphore too (its inbox lock is in segment 0)
    objs = all_objects_of(vm)
    assert len([o for o in objs if o[0] == "shm"]) == 2
    assert len([o for o in objs if o[0] == "sem"]) == 2 + 1  # 2 page maps + 1 task's wake-up
    for kind, iid in objs:
        assert mode_of(kind, iid) & 0o777 == 0o600, f"{kind} {iid} mode {mode_of(kind, iid):o}"
    names = vm.files()
    assert any(n.startswith("pvml.") for n in names)
    for n in names:
        st = os.stat(os.path.join(vm.state, n))
        assert stat.S_IMODE(st.st_mode) == 0o600, f"{n} mode {stat.S_IMODE(st.st_mode):o}"
    t.do("leave")


def test_maxsegs_and_maxpages_and_debug_are_honoured(shmd_vm):
    vm = shmd_vm
    ready = vm.start("-maxsegs=3", "-maxpages=16", "-debug=1", small=False)
    assert ready["segs"] == 3 and ready["pages"] == 16
    st = vm.stat()
    assert [s["pages"] for s in st["segments"]] == [16, 16, 16]
    vm.task(name="dbg")
    log = open(paths.log_path(vm.vmid)).read()
    assert re.search(r"task t\w+ pid \d+ \(dbg\) joined", log), log  # -debug=1 chatter


def test_foreground_usr1_to_stdout_and_term_exit_0(shmd_vm):
    vm = shmd_vm
    p, ready = vm.start_fg()
    assert ready["pid"] == p.pid
    r = vm.run([STAT])
    assert r.returncode == 0, r.stderr
    lines = [read_line(p.stdout, 10).decode() for _ in range(4)]
    assert lines[0].startswith(f"pvm_shmd pid {p.pid} ")
    assert lines[1].startswith("segment 0 ") and "64 pages, 64 free" in lines[1]
    assert lines[3].startswith("counters: ")
    objs = all_objects_of(vm)
    p.send_signal(signal.SIGTERM)
    assert p.wait(15) == 0
    assert not any(exists(k, i) for k, i in objs)


# ---- many processes at once -------------------------------------------------------------

def test_many_processes_allocate_and_free_at_once(shmd_vm):
    vm = shmd_vm
    vm.start()
    kids = [vm.task(name=f"c{i}") for i in range(6)]
    for i, c in enumerate(kids):
        c.send("churn", seconds=1.5, seed=i, max=5, hold=3)
    allocs = [c.read(60)["allocs"] for c in kids]
    assert all(a > 20 for a in allocs), allocs
    st = vm.stat()
    assert pages_free(st) == 128, st["segments"]
    assert all(s["largest_free"] == 64 for s in st["segments"])  # merged back into one run
    assert st["counters"]["allocated"] == sum(allocs)
    assert st["counters"]["freed"] == sum(allocs)
    # holding: the daemon accounts each task's pages
    for c, n in zip(kids, (3, 5, 7, 2, 9, 4)):
        c.do("alloc", n=n)
    held = {t["tid"]: t["pages"] for t in vm.stat()["tasks"]}
    assert held == {c.tid: n for c, n in zip(kids, (3, 5, 7, 2, 9, 4))}
    assert pages_free(vm.stat()) == 128 - 30
    for c in kids:
        c.do("free_all")
    assert pages_free(vm.stat()) == 128


def test_library_allocates_and_frees_without_the_daemon(shmd_vm):
    """With the daemon stopped (SIGSTOP), tasks still allocate, send, receive and free."""
    vm = shmd_vm
    ready = vm.start()
    a, b = vm.task(name="a"), vm.task(name="b")
    os.kill(ready["pid"], signal.SIGSTOP)
    try:
        a.do("send", dest=b.tid, nbytes=20 * 4096 + 5, byte=9)
        r = b.do("recv", src=a.tid)
        assert r["n"] == 20 * 4096 + 5 and r["bytes"] == [9]
        a.do("alloc", n=30)
        a.do("free_all")
    finally:
        os.kill(ready["pid"], signal.SIGCONT)
    assert pages_free(vm.stat()) == 128


def test_sem_undo_releases_a_page_map_lock_held_by_a_killed_task(shmd_vm):
    vm = shmd_vm
    vm.start()
    holder = vm.task()
    assert holder.do("lockseg", seg=0)["ok"]
    shm, buf = control.attach_seg0(vm.vmid)
    e = layout.segent(buf, 0)
    lock = ipc.Lock(ipc.open_sem(e["semkey"], e["semid"]))
    buf.release()
    shm.detach()
    assert not lock.acquire(0.2), "the holder's lock was not held"
    holder.kill()
    holder.wait()
    assert lock.acquire(2.0), "SEM_UNDO did not release the dead holder's lock"
    lock.release()
    other = vm.task()
    other.do("alloc", n=4)  # allocation in the segment still works
    other.do("free_all")


# ---- dead processes ---------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV])
def test_killed_page_holder_is_reaped(shmd_vm, sig):
    """A task that allocated pages (a sender that never handed them over) dies by a
    signal without a word: the daemon frees its pages and its slot."""
    vm = shmd_vm
    vm.start()
    c = vm.task()
    c.do("alloc", n=10)
    c.do("alloc", n=50)
    st = vm.stat()
    assert pages_free(st) == 128 - 60
    assert [t["pages"] for t in st["tasks"]] == [60]
    t0 = time.monotonic()
    c.kill(sig)
    st = wait_for(lambda: (s := vm.stat()) and pages_free(s) == 128 and not s["tasks"] and s,
                  timeout=5, what="pages of the killed task to be freed")
    took = time.monotonic() - t0
    assert st["counters"]["reaped"] == 1 and st["counters"]["exited"] == 0
    assert c.wait(5) == -sig
    assert took < 2.0, f"reaping took {took:.3f} s"


def test_messages_queued_to_a_dead_receiver_are_freed(shmd_vm):
    vm = shmd_vm
    vm.start()
    snd, rcv = vm.task(name="snd"), vm.task(name="rcv")
    # two page runs, an inline message and a medium one (its bytes fill 16 descriptors)
    for n in (3 * 4096, 2000, 10 * 4096, 40):
        snd.do("send", dest=rcv.tid, nbytes=n)
    st = vm.stat()
    assert pages_free(st) == 128 - 13
    assert {t["tid"]: t["waiting"] for t in st["tasks"]}[rcv.tid] == 4
    rcv.kill()
    wait_for(lambda: pages_free(vm.stat()) == 128, timeout=5, what="queued pages freed")
    assert [t["tid"] for t in vm.stat()["tasks"]] == [snd.tid]
    r = snd.send("send", dest=rcv.tid, nbytes=10)
    assert "error" in snd.read() and r is None  # the receiver is gone: PvmNoTask


def test_sender_death_keeps_messages_already_handed_over(shmd_vm):
    """Pages a dead sender handed over (queued in a live inbox) survive it; pages it
    allocated but never handed over do not."""
    vm = shmd_vm
    vm.start()
    snd, rcv = vm.task(name="snd"), vm.task(name="rcv")
    snd.do("send", dest=rcv.tid, nbytes=8 * 4096, byte=5)
    snd.do("alloc", n=20)  # allocated, never handed over
    assert pages_free(vm.stat()) == 128 - 28
    snd.kill()
    wait_for(lambda: pages_free(vm.stat()) == 128 - 8, timeout=5, what="orphan pages freed")
    time.sleep(0.5)  # a few more liveness ticks: the queued message must stay
    assert pages_free(vm.stat()) == 128 - 8
    r = rcv.do("recv")
    assert r["n"] == 8 * 4096 and r["bytes"] == [5] and r["src"] == snd.tid
    assert pages_free(vm.stat()) == 128


def test_polite_leave_frees_and_counts_exited(shmd_vm):
    vm = shmd_vm
    vm.start()
    c = vm.task()
    c.do("alloc", n=7)
    c.do("leave")
    st = vm.stat()
    assert pages_free(st) == 128 and not st["tasks"]
    assert st["counters"]["exited"] == 1 and st["counters"]["reaped"] == 0


# ---- signals ----------------------------------------------------------------------------

def test_hup_clears_memory_and_tasks_and_goes_on(shmd_vm):
    vm = shmd_vm
    ready = vm.start()
    a, b, stubborn = vm.task(name="a"), vm.task(name="b"), vm.task(name="stubborn")
    stubborn.do("ignore_term")
    a.do("alloc", n=12)
    a.do("send", dest=b.tid, nbytes=5 * 4096)
    objs_before = all_objects_of(vm)
    assert pages_free(vm.stat()) == 128 - 17
    t0 = time.monotonic()
    os.kill(ready["pid"], signal.SIGHUP)
    assert a.wait(10) == -signal.SIGTERM and b.wait(10) == -signal.SIGTERM
    assert stubborn.wait(10) == -signal.SIGKILL  # TERM ignored: KILL after the grace period
    assert time.monotonic() - t0 >= 1.5
    st = wait_for(lambda: (s := vm.stat()) and s["generation"] == 1 and s, timeout=10,
                  what="HUP handled")
    assert st["pid"] == ready["pid"] and not st["tasks"] and pages_free(st) == 128
    assert st["counters"]["hups"] == 1
    assert all(s["largest_free"] == 64 for s in st["segments"])
    # task semaphores are gone; segments and page-map semaphores are kept
    after = all_objects_of(vm)
    assert after < objs_before and len(after) == 4
    c, d = vm.task(name="c"), vm.task(name="d")  # it goes on serving
    c.do("send", dest=d.tid, nbytes=3 * 4096, byte=1)
    assert d.do("recv")["bytes"] == [1]
    assert pages_free(vm.stat()) == 128


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_term_and_int_remove_everything_and_exit_0(shmd_vm, sig):
    vm = shmd_vm
    p, ready = vm.start_fg()
    c = vm.task()
    c.do("alloc", n=3)
    objs = all_objects_of(vm)
    assert len(objs) == 5  # 2 segments, 2 page-map semaphores, its wake-up
    files = set(vm.files())
    assert {f"pvm_shmd.{os.getuid()}.{vm.vmid}.{x}" for x in ("pid", "sock", "ipc")} <= files
    p.send_signal(sig)
    assert p.wait(15) == 0
    assert not [o for o in objs if exists(*o)]  # removed (segments the task has attached
    c.close()                                    # go away when it detaches)
    wait_for(lambda: not [o for o in objs if listed(*o)], timeout=5, what="last detach")
    # only the log stays (and the large-message paths measured on this host: calibrate.py)
    assert set(vm.files()) - {f"pvm_paths.{os.getuid()}"} == {f"pvml.{os.getuid()}.{vm.vmid}"}
    r = vm.run([STAT, "--json"])
    assert r.returncode == 1 and "No pvm_shmd" in r.stderr


def test_detached_daemon_term_removes_everything(shmd_vm):
    vm = shmd_vm
    ready = vm.start()
    objs = all_objects_of(vm)
    os.kill(ready["pid"], signal.SIGTERM)
    wait_for(lambda: not proc_alive(ready["pid"]), timeout=10, what="daemon exit")
    assert not [o for o in objs if exists(*o)] and not objects_by_creator(ready["pid"])
    assert "received SIGTERM" in open(paths.log_path(vm.vmid)).read()


def test_usr1_reports_into_the_log(shmd_vm):
    vm = shmd_vm
    ready = vm.start()
    c = vm.task(name="holder")
    c.do("alloc", n=6)
    r = vm.run([STAT])
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    log = paths.log_path(vm.vmid)
    assert log == os.path.join(vm.state, f"pvml.{os.getuid()}.{vm.vmid}")
    text = wait_for(lambda: (t := open(log).read()) and "counters:" in t and t, timeout=5,
                    what="USR1 report in the log")
    stamp = r"\d\d/\d\d \d\d:\d\d:\d\d \[pvm_shmd t40000\] "
    assert re.search(stamp + rf"pvm_shmd pid {ready['pid']} ", text)
    assert re.search(stamp + r"segment 0 shmid \d+ semid \d+: 64 pages, 58 free", text)
    assert re.search(stamp + rf"task t{c.tid:x} pid {c.pid} holder: 6 pages held", text)
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600


def test_log_is_size_capped(shmd_vm, monkeypatch):
    vm = shmd_vm
    monkeypatch.setenv("PVMDLOGMAX", "600")
    ready = vm.start()
    for _ in range(5):
        assert vm.run([STAT]).returncode == 0
        time.sleep(0.05)
    log = paths.log_path(vm.vmid)
    wait_for(lambda: "*** logging truncated" in open(log).read(), timeout=5, what="cap")
    assert os.path.getsize(log) <= 600 + 40
    assert proc_alive(ready["pid"])


def test_stat_json_fields(shmd_vm):
    vm = shmd_vm
    ready = vm.start()
    a, b = vm.task(name="a"), vm.task(name="b")
    a.do("send", dest=b.tid, nbytes=2 * 4096)
    a.do("send", dest=b.tid, nbytes=10)
    st = vm.stat()
    assert st["pid"] == ready["pid"] and st["uptime"] >= 0 and st["vmid"] == vm.vmid
    seg = st["segments"][0]
    assert {"id", "pages", "free", "largest_free"} <= set(seg)
    tasks = {t["tid"]: t for t in st["tasks"]}
    assert tasks[b.tid]["waiting"] == 2 and tasks[b.tid]["pid"] == b.pid
    assert tasks[a.tid]["pages"] == 2  # the sender holds them until the receiver takes them
    assert {"allocated", "freed", "joined", "exited", "reaped", "hups"} <= set(st["counters"])
    assert st["counters"]["joined"] == 2


def test_no_daemon(shmd_vm):
    vm = shmd_vm
    for argv in ([STAT], [STAT, "--json"]):
        r = vm.run(argv)
        assert r.returncode == 1 and r.stderr.strip() == "No pvm_shmd" and r.stdout == ""


# ---- one per host, leftovers ------------------------------------------------------------

def test_second_daemon_names_the_first_and_touches_nothing(shmd_vm):
    vm = shmd_vm
    ready = vm.start()
    c = vm.task()
    c.do("alloc", n=5)
    objs = all_objects_of(vm)
    files = {n: os.stat(os.path.join(vm.state, n)).st_ino for n in vm.files()
             if not n.startswith("pvml")}
    r = vm.run([PVM_SHMD, "-maxpages=64", "-maxsegs=2"])
    assert r.returncode == 3
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert f"pid {ready['pid']}" in r.stderr and "already running" in r.stderr
    assert all_objects_of(vm) == objs
    assert {n: os.stat(os.path.join(vm.state, n)).st_ino for n in vm.files()
            if not n.startswith("pvml")} == files
    st = vm.stat()
    assert st["pid"] == ready["pid"] and pages_free(st) == 123 and len(st["tasks"]) == 1
    # a second daemon with another PVM_TMP finds the first through segment 0
    other_tmp = os.path.join(vm.tmp, "other")
    os.mkdir(other_tmp)
    r = vm.run([PVM_SHMD, "-maxpages=64", "-maxsegs=2"], env={**vm.env(), "PVM_TMP": other_tmp})
    assert r.returncode == 3 and f"pid {ready['pid']}" in r.stderr
    assert all_objects_of(vm) == objs and vm.stat()["pid"] == ready["pid"]


def test_restart_after_sigkill_reclaims_leftovers(shmd_vm):
    vm = shmd_vm
    ready = vm.start()
    c = vm.task()
    c.do("alloc", n=5)
    old = all_objects_of(vm)
    assert len(old) == 5
    os.kill(ready["pid"], signal.SIGKILL)
    wait_for(lambda: not proc_alive(ready["pid"]), timeout=5, what="daemon death")
    c.close()
    assert all(exists(*o) for o in old)  # SIGKILL cannot be caught: all left behind
    lockfile = paths.daemon_files(vm.vmid)["lock"]
    assert open(lockfile).read().strip() == str(ready["pid"])  # stale lock file
    r = vm.run([STAT, "--json"])
    assert r.returncode == 1 and "No pvm_shmd" in r.stderr
    ready2 = vm.start()
    assert not [o for o in old if exists(*o)]
    new = all_objects_of(vm)
    assert len(new) == 4 and not new & old
    log = open(paths.log_path(vm.vmid)).read()
    assert f"reclaiming leftovers of dead pvm_shmd pid {ready['pid']}" in log
    assert vm.stat()["pid"] == ready2["pid"]


def test_restart_after_sigkill_during_startup_reclaims(shmd_vm):
    """A daemon killed after creating segment 0 but before marking it (no magic yet):
    its registry names the segment, so the next start removes it."""
    vm = shmd_vm
    import json
    import subprocess
    import sys

    key = paths.seg0_key(vm.vmid)
    code = ("import sys; from shmd import ipc; "
            f"print(ipc.create_segment({key}, 1 << 20))")
    shmid = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True, timeout=30).stdout)
    try:
        fd = os.open(paths.daemon_files(vm.vmid)["ipc"], os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump([["shm", shmid, key]], f)
        vm.start()
        assert not exists("shm", shmid)
    finally:
        ipc.remove("shm", shmid)


def test_two_vm_ids_side_by_side(shmd_vm):
    vm = shmd_vm
    used = {r["key"] & 0xFFFFFFFF for r in ipc.proc_table("shm")} | {paths.seg0_key(vm.vmid)}
    other = next(v for v in (vm.vmid + c for c in "bcdefghij") if paths.seg0_key(v) not in used)
    r1 = vm.start()
    r2 = vm.start(vmid=other)
    assert r1["pid"] != r2["pid"]
    assert paths.seg0_key(vm.vmid) != paths.seg0_key(other)
    o1, o2 = all_objects_of(vm), all_objects_of(vm, other)
    assert len(o1) == len(o2) == 4 and not o1 & o2
    a, b = vm.task(name="a"), vm.task(vmid=other, name="b")
    a.do("alloc", n=9)
    b.do("alloc", n=4)
    assert pages_free(vm.stat()) == 128 - 9 and pages_free(vm.stat(other)) == 128 - 4
    assert vm.stat()["pid"] == r1["pid"] and vm.stat(other)["pid"] == r2["pid"]
    r = vm.run([STAT, "--stop"], vmid=other)
    assert r.returncode == 0, r.stderr
    assert not [o for o in o2 if exists(*o)]
    b.close()
    wait_for(lambda: not [o for o in o2 if listed(*o)], timeout=5, what="last detach")
    assert pages_free(vm.stat()) == 128 - 9 and vm.stat()["pid"] == r1["pid"]


# ---- foreign segments, bad input, limits, permissions -----------------------------------

@pytest.fixture
def foreign(shmd_vm):
    """Make a segment at our VM's segment-0 key; removed after the test."""
    made = []

    def make(content: bytes) -> sysv_ipc.SharedMemory:
        shm = sysv_ipc.SharedMemory(paths.seg0_key(shmd_vm.vmid), sysv_ipc.IPC_CREX,
                                    mode=0o600, size=1 << 16)
        made.append(shm.id)
        shm.write(content)
        shm.detach()
        return shm

    yield make
    for iid in made:
        ipc.remove("shm", iid)


def _header(**over) -> bytes:
    buf = bytearray(4096)
    mv = memoryview(buf)
    h = layout.header(mv)
    vals = {"version": layout.VERSION, "uid": os.getuid(), "pid": 1, "vmid": "", **over}
    for k, v in vals.items():
        h[k] = v
    buf[:8] = layout.MAGIC
    return bytes(buf)


@pytest.mark.parametrize("what,content,needle", [
    ("garbage", b"not ours at all" * 100, "bad magic"),
    ("version", "V", "layout version 99"),
    ("vmid", "I", "VM id"),
])
def test_foreign_segment_at_our_key_is_refused_and_untouched(shmd_vm, foreign, what, content,
                                                            needle):
    vm = shmd_vm
    if content == "V":
        content = _header(version=99, vmid=vm.vmid)
    elif content == "I":
        content = _header(vmid="someone-else")  # a VM id whose key collides with ours
    shm = foreign(content)
    r = vm.run([PVM_SHMD, "-maxpages=64", "-maxsegs=2"])
    assert r.returncode == 5, r
    assert len(r.stderr.splitlines()) == 1 and needle in r.stderr
    assert f"{paths.seg0_key(vm.vmid):#010x}" in r.stderr and str(shm.id) in r.stderr
    again = sysv_ipc.attach(shm.id)
    try:
        assert again.read(len(content)) == content  # untouched
    finally:
        again.detach()
    assert [r for r in sysv_rows("shm") if r["shmid"] == shm.id][0]["nattch"] == 0
    assert not [n for n in vm.files() if not n.startswith("pvml")]
    # and an alien library process refuses it too
    with pytest.raises(Exception, match=needle):
        control.attach_seg0(vm.vmid)


@pytest.mark.parametrize("argv,needle", [
    (["-bogus=1"], "unknown option '-bogus=1'"),
    (["-bogus"], "unknown option '-bogus'"),
    (["-maxsegs=9"], "between 1 and 8"),
    (["-maxsegs=0"], "between 1 and 8"),
    (["-maxpages=4097"], "between 1 and 4096"),
    (["-maxpages=abc"], "is not a number"),
    (["-debug=-1"], "between 0 and"),
    (["-host=0"], "between 1 and 4095"),
    (["-vmid=a/b"], "bad VM id"),
    (["myhostfile"], "takes no hostfile"),
])
def test_bad_options_one_line_rc_2_nothing_made(shmd_vm, argv, needle):
    vm = shmd_vm
    r = vm.run([PVM_SHMD, *argv])
    assert r.returncode == 2
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1 and needle in r.stderr, r.stderr
    assert not vm.files()
    assert not all_objects_of(vm)


def test_bad_pvm_vmid_is_a_usage_error(shmd_vm):
    vm = shmd_vm
    r = vm.run([PVM_SHMD],
               env={**vm.env(), "PVM_VMID": "no spaces"})
    assert r.returncode == 2 and "PVM_VMID" in r.stderr and len(r.stderr.splitlines()) == 1


def test_malformed_requests_do_not_kill_the_daemon(shmd_vm):
    vm = shmd_vm
    ready = vm.start()
    c = control.connect(vm.vmid)
    try:
        for req in (b'{"op": "join", "pid": "x"}\n', b"[1]\n", b'"s"\n', b"{not json\n",
                    b'{"op": "join", "pid": 99999999999}\n', b'{"op": 5}\n',
                    b'{"op": "join", "pid": -3}\n'):
            c.sock.sendall(req)
            assert b'"error"' in c.rfile.readline()
    finally:
        c.close()
    assert proc_alive(ready["pid"]) and vm.stat()["pid"] == ready["pid"]


OS_LIMITS = r'''
import os, subprocess, sys
sysctl, value = sys.argv[1], sys.argv[2]
subprocess.run(["sysctl", "-qw", f"{sysctl}={value}"], check=True)
r = subprocess.run([sys.argv[3], "-maxpages=64", "-maxsegs=2"], capture_output=True, text=True,
                   timeout=60)
left = [l for k in ("shm", "sem") for l in open(f"/proc/sysvipc/{k}").read().splitlines()[1:]]
print(r.returncode); print(r.stderr.strip()); print(len(left))
'''


@pytest.mark.parametrize("sysctl,value", [("kernel.shmmni", "1"), ("kernel.shmall", "100")])
def test_os_limits_too_small_for_two_segments(shmd_vm, sysctl, value):
    """In a private IPC namespace (its limits are its own) the kernel allows one segment
    (shmmni=1) or too few pages for two (shmall): rc 4, one clear line, nothing left."""
    from conftest import need_namespace

    need_namespace("sysctl in an IPC namespace")
    import subprocess
    import sys

    daemon = PVM_SHMD
    r = subprocess.run(["unshare", "--ipc", sys.executable, "-c", OS_LIMITS, sysctl, value,
                        daemon], capture_output=True, text=True, timeout=120, env=shmd_vm.env())
    assert r.returncode == 0, r.stderr
    rc, msg, left = r.stdout.splitlines()
    assert rc == "4", msg
    assert msg.startswith("pvm_shmd: ") and "\n" not in msg
    assert "segment" in msg and ("shmmni" in msg or "shmall" in msg), msg
    assert left == "0", "objects left behind in the namespace"


def test_permission_denied_segment_of_another_user(shmd_vm, other_user, tmp_path):
    """A daemon of another user whose key is taken by a segment of ours (root's, mode
    0600) stops with status 5 and one line; so does one whose PVM_TMP it may not write.
    Run as that user in a forked child (tests/other_user.py): nothing of the checkout or
    the virtual environment need be readable by it (a checkout under /root works)."""
    import shutil
    import tempfile

    from shmd import daemon

    key = paths.seg0_key(shmd_vm.vmid, uid=other_user.uid)
    tmp = tempfile.mkdtemp(prefix="shmd-perm-")
    os.chmod(tmp, 0o1777)
    shm = sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=0o600, size=4096)  # root's
    shm.detach()

    def start_daemon(*extra: str) -> int:
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = daemon.main(["-maxpages=64", "-maxsegs=2", "-foreground", *extra])
        return rc, err.getvalue()

    try:
        env = {"PVM_TMP": tmp, "PVM_VMID": shmd_vm.vmid}
        rc, err = other_user.run(start_daemon, env=env)
        assert rc == 5, err  # in the foreground the log is echoed; the error is the last line
        assert err.splitlines()[-1].startswith("pvm_shmd: ") and "another user" in err, err
        assert exists("shm", shm.id)
        assert os.listdir(os.path.join(tmp, f"pvm.{other_user.uid}")) == \
            [f"pvml.{other_user.uid}.{shmd_vm.vmid}"]
        # and a PVM_TMP it may not write: rc 5 as well
        shutil.rmtree(os.path.join(tmp, f"pvm.{other_user.uid}"))
        os.chmod(tmp, 0o755)
        rc, err = other_user.run(start_daemon, "-vmid=" + shmd_vm.vmid + "p", env=env)
        assert rc == 5, err
        assert len(err.splitlines()) == 1 and "ermission denied" in err, err  # no log made
    finally:
        ipc.remove("shm", shm.id)
        shutil.rmtree(tmp)
    assert not [x for x in sysv_rows("shm") + sysv_rows("sem") if other_user.uid in
                (x["uid"], x["cuid"])]


def test_docs_cover_options_signals_statuses_layout():
    """docs/shmd.md documents every option, signal and exit status the code has."""
    doc = open(os.path.join(ROOT, "docs", "shmd.md")).read()
    for word in ("-debug=", "-maxsegs=", "-maxpages=", "-vmid=", "-host=", "-name=",
                 "-foreground", "SIGHUP", "SIGTERM", "SIGINT", "SIGUSR1", "ipcfree",
                 "--all", "--force", "MAXSEG", "MAXPAGES", "PVMDLOGMAX"):
        assert word in doc, word
    from shmd.exits import DaemonExit

    for rc in DaemonExit:
        assert re.search(rf"\|\s*{rc}\s*\|", doc), rc
    for name in layout.H:
        assert f"`{name}`" in doc, f"header field {name} not documented"

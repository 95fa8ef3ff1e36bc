"""Which way large messages go on this machine: chosen by measuring it, not by a constant.

A large message reaches its receiver one of three ways (see direct.py):

- **pages**: the sender copies into shared pages, the receiver copies out. In a stream
  the two copies overlap (two CPUs, each on its own message): a message costs about one
  copy, done by each side at once.
- **direct** (``precv_into``): both processes copy halves of the one message straight
  from the sender's buffer into the receiver's with ``process_vm_writev``/``readv``.
- **both into pages** (``precv_view``): the sender copies half into pages with memmove
  while the receiver copies the other half in with ``process_vm_readv``; the path it
  replaces is the sender copying the whole message alone (the view copies nothing).

Which is faster depends on the machine: on one Xeon VM two CPUs copying halves with
cross-memory attach beat two copies through pages (30 against 16 GB/s at 1 MiB); on an
EPYC KVM guest it was the other way round (22 against 37). So ``measure()`` times the
four patterns with two threads pinned to two CPUs (ctypes drops the GIL in each copy:
the two copy at once, as two processes do), at a few sizes, in well under 50 ms, and
picks from which size each of the two kinds of receive goes "direct": the smallest size
from which the direct pattern is faster at every size measured (else never).

The daemon measures at start when there is no figure of this boot and CPU set yet
(``ensure``) and keeps it in a private file (``$PVM_TMP/pvm.<uid>/pvm_paths.<uid>``);
every task reads it when it joins (``choice``), or measures and writes it if missing.
``PVM_SHMD_PATH`` forces a path for a process: ``pages`` (never direct), ``direct``
(direct from FORCED_MIN up, where cross-memory attach works) or ``auto`` (measured; the
default). ``pvm_shmd_stat`` shows the choice and the figures it was made from.

The same file keeps how fast each way of waking a sleeping receiver is here (wake.py:
a semaphore or a futex), measured by the daemon alone (it holds the semaphores the
measurement needs) and chosen by it for all its tasks (``wake_choice``).
"""
from __future__ import annotations

import ctypes
import json
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, NamedTuple

from . import direct, ipc, paths, private, wake
from .errors import PvmBadParam, PvmError
from .ipc import _libc

ENV = "PVM_SHMD_PATH"
MODES = ("pages", "direct", "auto")
SIZES = (64 << 10, 256 << 10, 1 << 20, 2 << 20)  # the sizes measured (bytes)
FORCED_MIN = SIZES[0]  # PVM_SHMD_PATH=direct: from this size up
# What a figure measured on a busy host gives way to: the fixed threshold used before
# the paths were measured (direct from 256 KiB, chosen on the Xeon VM of
# docs/performance.md). A busy host's figures are mostly other processes' doing.
UNTRUSTED_MIN = 256 << 10
NEVER = 1 << 62  # a threshold no message reaches
PAGES_SPAN = 4 << 20  # the "pages" messages go round (twice the L2 of a core here)
TRIAL_BYTES = 512 << 10  # each timed cell copies about this much (repeating its message)
TRIALS = 3  # cells are timed up to this many times, interleaved; the fastest counts
MIN_TRIALS = 2  # ... and at least this many (the first alone measured low: pages and
BUDGET = 0.04  # caches still cold); seconds: no further trial starts after this
FORMAT = 2  # of the file (2: with the wake-up figures)


class Choice(NamedTuple):
    """From which message size each receive goes direct (NEVER: not at all), and why."""

    into_min: int  # precv_into: both copy with process_vm_writev/readv, no pages
    view_min: int  # precv_view (spinning receiver): both copy into pages
    why: str  # "measured", "forced by PVM_SHMD_PATH=...", ...

    @property
    def least(self) -> int:
        """The smallest size a sender looks for a waiting receiver from."""
        return min(self.into_min, self.view_min)


def mode() -> str:
    """``$PVM_SHMD_PATH`` (default auto); PvmError(PvmBadParam) naming a bad value."""
    m = os.environ.get(ENV, "") or "auto"
    if m not in MODES:
        raise PvmError(PvmBadParam, f"{ENV}={m!r}: use one of {', '.join(MODES)}")
    return m


def file_path() -> str:
    """The private file the measurement is kept in (one per user and host, any VM)."""
    return paths.tmpfile("pvm_paths", "")


def _machine() -> dict:
    """What a measurement holds for: this boot, these CPUs (a new boot or a moved
    state directory measures again)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "?"
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"boot": boot, "cpu": model, "cpus": _cpus()}


def _cpus() -> list[int]:
    """The host's CPUs (not this process's affinity: a task pinned to one CPU, as a
    benchmark's are, reads the same measurement as its daemon)."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            out: list[int] = []
            for part in f.read().strip().split(","):
                lo, _, hi = part.partition("-")
                out += range(int(lo), int(hi or lo) + 1)
            return out
    except (OSError, ValueError):
        return list(range(os.cpu_count() or 1))


# ---- measuring -----------------------------------------------------------------------
def _work(kind: str, who: int, n: int, bufs: tuple[int, int, int], pids: list[int],
          k: int):
    """What side *who* (0: the sender, 1: the receiver) does for message number *k*
    of *n* bytes sent the *kind* way: a list of zero-argument ctypes calls (or none).
    Messages through pages go to runs further on each time, round PAGES_SPAN (the
    real pages are handed out by next fit: a stream writes cold memory, not the same
    cache-hot run), the receiver taking the message before ours out of them.
    """
    src, dst, base = bufs
    pages = base + (k * n) % (PAGES_SPAN - n) // 4096 * 4096
    prev = base + ((k - 1) * n) % (PAGES_SPAN - n) // 4096 * 4096
    chunk = direct.chunk_for(n)
    mm, cma = ctypes.memmove, direct._copy
    half = -(-n // chunk) // 2 * chunk if n > chunk else n  # the sender's front part
    if kind == "pages":  # the sender into pages, the receiver out of other pages
        return [partial(mm, pages, src, n)] if who == 0 else [partial(mm, dst, prev, n)]
    if kind == "alone":  # precv_view through the pages: the sender copies, nobody helps
        return [partial(mm, pages, src, n)] if who == 0 else []
    lo, hi = (0, half) if who == 0 else (half, n)
    out: list[Callable[[], object]] = []
    for o in range(lo, hi, chunk):
        ln = min(chunk, hi - o)
        if who == 1:  # the receiver reads the sender's buffer into its own memory
            to = (dst if kind == "direct" else pages) + o
            out.append(partial(cma, _libc.process_vm_readv, pids[0], to, src + o, ln))
        elif kind == "direct":  # the sender writes into the receiver's buffer
            out.append(partial(cma, _libc.process_vm_writev, pids[1], src + o, dst + o, ln))
        else:  # "both": the sender into the shared pages with memmove
            out.append(partial(mm, pages + o, src + o, ln))
    return out


def _cells(kinds) -> list[tuple[str, int]]:
    return [(k, n) for _ in range(TRIALS) for n in SIZES for k in kinds]


def _side(who: int, cells, bufs, pids, ctl: Any, times: Any, cpu: int, end: float) -> None:
    """A forked side's life: pin to *cpu*, then for each cell meet the other side
    (a spin on shared words, with a deadline) and time our copies. Past *end*
    (perf_counter, the same clock in every process) once MIN_TRIALS are done, the
    first side to see it stops both at that cell (``ctl[2]``: the cells done, + 1)."""
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        pass
    src, dst, pages = bufs
    ctypes.memset(src if who == 0 else dst, who + 2, SIZES[-1])  # our own pages, written
    clock = time.perf_counter
    give_up = clock() + 2.0
    first = MIN_TRIALS * len(cells) // TRIALS
    for c, (kind, n) in enumerate(cells):
        reps = max(1, TRIAL_BYTES // n)
        works = [_work(kind, who, n, bufs, pids, c * reps + k) for k in range(reps)]
        if c >= first and (ctl[2] or clock() > end):
            ctl[2] = c + 1  # (both sides may write it: the same number)
            return
        ctl[who] = c + 1
        while ctl[1 - who] < c + 1:
            if clock() > give_up or ctl[2]:
                return
        t0 = clock()
        for work in works:
            for f in work:
                f()
        t1 = clock()
        times[4 * c + 2 * who] = t0
        times[4 * c + 2 * who + 1] = t1 if works[0] else t0


def _run_sides(cells, bufs, end: float) -> list[float] | None:
    """Seconds per message of each cell, the two sides as two processes on two CPUs
    (as a sender and a receiver are), as many cells as there was time for before *end*
    (perf_counter; MIN_TRIALS in any case); None if they could not run."""
    import mmap

    shared = mmap.mmap(-1, 4096 + 32 * len(cells))
    views: list[Any] = [memoryview(shared)]
    views += [views[0][:24], views[0][4096:]]
    views += [views[1].cast("q"), views[2].cast("d")]
    ctl, times = views[3], views[4]
    cpus = _cpus()  # each side pins itself to one of the first two (where it may)
    pids = [0, 0]
    try:
        for who in (1, 0):  # the receiver first: the sender needs its pid
            try:
                pid = os.fork()
            except OSError:
                return None
            if pid == 0:
                code = 0
                try:
                    pids[0] = pids[0] or os.getpid()
                    _side(who, cells, bufs, pids, ctl, times, cpus[who % len(cpus)], end)
                except BaseException:
                    code = 1
                os._exit(code)
            pids[who] = pid
        ok = ipc.wait_children(pids, 5.0)
        done = ctl[2] - 1 if ctl[2] else len(cells)  # cells both sides timed
        if not ok or done < MIN_TRIALS * len(cells) // TRIALS or min(ctl[0], ctl[1]) < done:
            return None
        out = []
        for c, (_, n) in enumerate(cells[:done]):
            t = times[4 * c:4 * c + 4].tolist()
            out.append((max(t[1], t[3]) - min(t[0], t[2])) / max(1, TRIAL_BYTES // n))
        return out
    finally:
        for v in reversed(views):
            v.release()
        shared.close()


def measure(sems: Callable[[], AbstractContextManager[Any]] | None = None) -> dict:
    """Time the four patterns at SIZES on this machine; the figures (GB/s) and choice;
    with *sems* (a daemon: two semaphores of its own, removed after), the wake-up kinds
    too (``wake_us``: one-way microseconds per kind and trial; else {})."""
    import mmap

    started = time.perf_counter()
    busy = os.getloadavg()[0]
    big = SIZES[-1]
    cma = direct.available() and len(_cpus()) > 1
    kinds = ("pages", "direct", "alone", "both") if cma else ("pages", "alone")
    # the sender's buffer, the receiver's, and shared "pages"
    src, dst = (ctypes.create_string_buffer(big) for _ in range(2))
    pages = mmap.mmap(-1, PAGES_SPAN)
    pv = (ctypes.c_char * PAGES_SPAN).from_buffer(pages)
    try:
        ctypes.memset(pv, 1, PAGES_SPAN)
        cells = _cells(kinds)
        got = _run_sides(cells, (ctypes.addressof(src), ctypes.addressof(dst),
                                 ctypes.addressof(pv)), started + BUDGET)
    finally:
        del pv
        pages.close()
    into = view = NEVER
    gbps: dict[str, list[float]] = {}
    if got is not None:
        best = {k: [float("inf")] * len(SIZES) for k in kinds}
        for (k, n), t in zip(cells, got):  # (the cells there was time for)
            j = SIZES.index(n)
            best[k][j] = min(best[k][j], t)
        gbps = {k: [round(n / t / 1e9, 2) for n, t in zip(SIZES, v)] for k, v in best.items()}
        if cma:
            into = _crossover(best["direct"], best["pages"])
            view = _crossover(best["both"], best["alone"])
    return {"format": FORMAT, **_machine(), "when": time.time(),
            "ms": round((time.perf_counter() - started) * 1e3, 1), "cma": cma, "load": busy,
            "sizes": list(SIZES), "gbps": gbps, "into_min": into, "view_min": view,
            "wake_us": measure_wake(sems)}


def measure_wake(sems: Callable[[], AbstractContextManager[Any]] | None) -> dict[str, list[float]]:
    """One-way microseconds of each wake-up kind here ({} without *sems*)."""
    if sems is None:
        return {}
    with sems() as pair:
        return wake.measure(pair)


def _crossover(fast: list[float], slow: list[float]) -> int:
    """The smallest measured size from which *fast* (a direct pattern) takes less time
    at every size, and from which the two sides share the copy: a message of one
    chunk (direct.chunk_for) is copied by one side alone, with the rendezvous's cost
    on top, which these copies do not time."""
    at = NEVER
    for j in range(len(SIZES) - 1, -1, -1):
        n = SIZES[j]
        if fast[j] >= slow[j] or -(-n // direct.chunk_for(n)) < 2:
            break
        at = n
    return at


# ---- the file ------------------------------------------------------------------------
def load() -> dict | None:
    """The kept measurement if it is ours, well-formed and of this machine and boot."""
    try:
        text = private.read_text(file_path(), limit=1 << 16)
        m = json.loads(text) if text else None
    except (private.UnsafeState, ValueError, OSError):
        return None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        return None
    here = _machine()
    if any(m.get(k) != v for k, v in here.items()):
        return None
    for k in ("into_min", "view_min"):
        v = m.get(k)
        if type(v) is not int or not (v in SIZES or v == NEVER):
            return None
    g = m.get("gbps")
    num = (int, float)
    if (m.get("sizes") != list(SIZES) or not isinstance(g, dict) or not all(
            isinstance(v, list) and len(v) == len(SIZES) and all(type(x) in num for x in v)
            for v in g.values()) or not all(type(m.get(k)) in num for k in ("ms", "when", "load"))
            or type(m.get("cma")) is not bool):
        return None
    w = m.get("wake_us")
    if not isinstance(w, dict) or not all(k in wake.KINDS and isinstance(v, list) and v
                                          and all(type(x) in num for x in v) for k, v in w.items()):
        return None
    return m


def noisy(m: dict) -> bool:
    """Was *m* measured while the host had no CPU to spare (its figures are then
    mostly other processes' doing)?"""
    return m.get("load", 0) >= len(_cpus())


def busy_now() -> bool:
    """Is the host busy now, as noisy() judges a measurement's moment?"""
    return os.getloadavg()[0] >= len(_cpus())


def ensure(again_if_noisy: bool = False,
           sems: Callable[[], AbstractContextManager[Any]] | None = None) -> dict:
    """The measurement of this machine: the kept one, else measured now and kept.
    With *again_if_noisy* (a daemon starting), a kept one made on a busy host is
    measured again if the host is not busy now (else it is kept: measured now it would
    be as noisy, and several daemons starting at once, a VM's emulated hosts on one
    machine say, each spent CPU on it when it was scarcest: a lab of 8 hosts measured
    at every start, since starting it kept the load up); with *sems* (a daemon), one
    without wake-up figures too."""
    m = load()
    if m is None or (again_if_noisy and noisy(m) and not busy_now()):
        m = measure(sems)
        if not m["gbps"]:
            return m  # the two sides could not run: not kept, measured again next time
    elif sems is not None and not m["wake_us"]:  # measured by a task: no wake-up figures
        m = {**m, "wake_us": measure_wake(sems)}
        if not m["wake_us"]:
            return m
    else:
        return m
    try:
        private.write_atomic(file_path(), json.dumps(m).encode())
    except (OSError, private.UnsafeState):
        pass  # measured again next time
    return m


def choice(measured: dict | None = None) -> Choice:
    """What this process does with large messages (``$PVM_SHMD_PATH`` first)."""
    m = mode()
    if m == "pages":
        return Choice(NEVER, NEVER, f"forced by {ENV}=pages")
    if m == "direct":
        return Choice(FORCED_MIN, FORCED_MIN, f"forced by {ENV}=direct")
    got = measured or ensure()
    if noisy(got):
        return Choice(UNTRUSTED_MIN, UNTRUSTED_MIN,
                      f"measured on a busy host (load average {got['load']:.2f}, "
                      f"{len(_cpus())} CPUs): not trusted, the former default")
    return Choice(got["into_min"], got["view_min"], "measured")


def wake_choice(measured: dict | None) -> tuple[str, str]:
    """How a daemon's tasks sleep and are woken (a wake.KINDS name), and why
    (``$PVM_SHMD_WAKE`` first; else the semaphore, the kind used before it was
    measured, unless another kind was faster than it in every trial: a kind that wins
    only some of them is within this machine's noise, and the choice would flip from
    one daemon to the next)."""
    m = wake.mode()
    if m != "auto":
        return m, f"forced by {wake.ENV}={m}"
    got = {k: v for k, v in ((measured or {}).get("wake_us") or {}).items() if k in wake.available()}
    if not got:
        return "sem", "not measured: the semaphore"
    if measured is not None and noisy(measured):
        return "sem", (f"measured on a busy host (load average {measured['load']:.2f}): "
                       "not trusted, the semaphore")
    worst = {k: max(v) for k, v in got.items()}
    best = min(worst, key=lambda k: worst[k])
    if best != "sem" and "sem" in got and worst[best] < min(got["sem"]):
        return best, "measured: faster in every trial"
    return "sem", "measured: nothing faster in every trial, the semaphore"


def size_text(n: int) -> str:
    if n >= NEVER:
        return "never"
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def summary(measured: dict | None = None) -> dict:
    """What ``pvm_shmd_stat --json`` shows as "paths": the choice, and the figures."""
    import statistics  # (not at import: every task imports this module, few call this)

    m = measured or ensure()
    c = choice(m)
    kind, kwhy = wake_choice(m)
    return {"mode": mode(), "why": c.why,
            "wake": {"kind": kind, "why": kwhy, "mode": wake.mode(),
                     "one_way_us": {k: statistics.median(v)
                                    for k, v in (m.get("wake_us") or {}).items()},
                     "trials_us": m.get("wake_us") or {}},
            "precv_into_direct_from": size_text(c.into_min),
            "precv_view_both_from": size_text(c.view_min),
            "measured": {"ms": m["ms"], "sizes": [size_text(s) for s in m["sizes"]],
                         "load_average": m.get("load"),
                         "GB/s": m["gbps"], "cross_memory_attach": m["cma"],
                         "when": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                               time.gmtime(m["when"]))}}


def lines(measured: dict | None = None) -> list[str]:
    """The same, for a person (pvm_shmd's USR1 report, bench_ipc.py's header)."""
    s = summary(measured)
    g = s["measured"]["GB/s"]
    out = [f"large messages ({s['why']}): precv_into direct from {s['precv_into_direct_from']}"
           f", precv_view both-copy from {s['precv_view_both_from']}",
           f"measured in {s['measured']['ms']} ms at {s['measured']['when']} (load average "
           f"{s['measured']['load_average']:.2f}), GB/s at "
           + "/".join(s["measured"]["sizes"]) + ":"]
    names = {"pages": "two copies via pages", "direct": "direct (both CMA)",
             "alone": "into pages, sender alone", "both": "into pages, both copy"}
    for k, v in g.items():
        out.append(f"  {names.get(k, k):26} " + " ".join(f"{x:7.2f}" for x in v))
    w = s["wake"]
    out.append(f"sleeping receivers woken by {w['kind']} ({w['why']}); one-way us: "
               + (", ".join(f"{k} {v:.1f}" for k, v in w["one_way_us"].items()) or "none"))
    return out

"""Benchmark: the console's per-host commands on a pvm-lab, this checkout against another
(run by hand, root: it makes a lab of emulated hosts).

    .venv/bin/python bench/bench_console_lab.py [--hosts 8] [--runs 2] [--before /work/main/.venv/bin/python]

Brings a lab of HOSTS hosts up, then for each Python (--before's, then this checkout's)
runs, RUNS times, a VM of the console's host plus every lab host and times the calls the
commands make (``VirtualMachine``): start of all hosts, ``stat`` of one remote host and
of all, ``mstat`` of all, ``ps -a`` (every host's tasks), the console's ``spawn -8
/bin/true`` (placed round the hosts, every copy started), ``delete`` of the remote hosts
(each daemon gone), ``halt`` of what is left; each the median of 7 where it can be
repeated. Where Debian's PVM 3.4.6 is installed (``apt-get install pvm``), real PVM's
console also makes a VM of the lab's hosts RUNS times (master on the first; timed on that
host, ``echo conf | pvm HOSTFILE``: see _net_lab.pvm_start), for the start's row. The lab
is torn down at the end. Both sides print side by side.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def time_commands(lab_dir: str, vmid: str) -> None:
    """In the Python under test: one VM on the lab, the commands timed, printed."""
    from pvmconsole import hostfile as hf
    from pvmconsole import lab as labmod
    from pvmconsole.runner import local_program
    from pvmconsole.vm import VirtualMachine

    lab = labmod.Lab.load(lab_dir)
    tmp = tempfile.mkdtemp()
    os.chmod(tmp, 0o700)
    os.environ.update(PVM_TMP=tmp, PVM_VMID=vmid, PVM_SSH_CONFIG=lab.ssh_config, HOME=tmp,
                      PVM_SHMD_OPTS="-maxpages=256 -maxsegs=2")
    dx = local_program("pvm_shmd")
    vm = VirtualMachine(vmid)
    t = time.perf_counter()
    vm.open(hf.parse("".join(f"{h.name} dx={dx}\n" for h in lab.hosts), "hosts"))
    up = time.perf_counter() - t
    hosts = vm.hosts()
    try:
        _time_the_rest(vm, hosts, up)
    except BaseException:
        vm.halt()  # (a failed run leaves no daemon behind to clash with the next one's)
        raise


def _time_the_rest(vm, hosts: list, up: float) -> None:
    from pvmconsole.jobs import gather

    if len(hosts) < 2:
        raise SystemExit(f"only {len(hosts)} host(s) came up")

    def med(f) -> float:
        ts = []
        for _ in range(7):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    rows = {f"start ({len(hosts)} hosts)": up,
            "stat, 1 remote host": med(lambda: vm.stat([hosts[1].name])),
            f"stat, {len(hosts)} hosts": med(lambda: vm.stat()),
            f"mstat, {len(hosts)} hosts": med(lambda: vm.mstat([h.name for h in hosts])),
            f"ps -a, {len(hosts)} hosts": med(lambda: gather(vm, hosts))}

    class Console:  # what the console's spawn command uses of the console
        jobs = None
        machine = staticmethod(lambda: vm)
        print = print_async = staticmethod(lambda *lines: None)

    from pvmconsole.commands.tasks import do_spawn
    rows["spawn -8 /bin/true"] = med(lambda: do_spawn(Console(), ["-8", "/bin/true"]))  # type: ignore[arg-type]
    t = time.perf_counter()
    out = vm.delete([h.name for h in hosts[1:]])
    rows[f"delete {len(hosts) - 1} hosts"] = time.perf_counter() - t
    if any(o.error is not None for o in out):
        print(f"delete failed: {out}", file=sys.stderr)
    t = time.perf_counter()
    vm.halt()
    rows["halt (the master)"] = time.perf_counter() - t
    for k, v in rows.items():
        print(f"{k}\t{v * 1e3:.1f}")


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--time":
        time_commands(sys.argv[2], sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--before", default="/work/main/.venv/bin/python", help="the other checkout's Python")
    a = ap.parse_args()
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from lab_probe import running_lab

    sides = {"before": a.before, "this": sys.executable}
    got: dict[str, dict[str, list[float]]] = {}
    import _net_lab
    pvm_rows: list[float] = []
    with running_lab("b", a.hosts) as lab:
        for _ in range(a.runs if _net_lab.pvm_missing() is None else 0):
            pvm_rows.append(_net_lab.pvm_start(lab))
        for side, py in sides.items():
            for r in range(a.runs):
                p = subprocess.run([py, os.path.abspath(__file__), "--time", lab.dir, f"bc{r}{side[:2]}"],
                                   capture_output=True, text=True, timeout=600, cwd="/tmp",
                                   env={**os.environ, "PYTHONPATH": ""})
                if p.returncode:
                    print(f"{side}: {p.stderr.strip()[-500:]}", file=sys.stderr)
                    continue
                for line in p.stdout.splitlines():
                    k, v = line.split("\t")
                    got.setdefault(k, {}).setdefault(side, []).append(float(v))
    print(f"{'ms (each run)':<26}{'before':>24}{'this checkout':>24}")
    for k, by in got.items():
        cell = {s: " ".join(f"{v:.1f}" for v in by.get(s, [])) for s in sides}
        print(f"{k:<26}{cell['before']:>24}{cell['this']:>24}")
    if pvm_rows:
        print(f"real PVM 3.4.6: start of {a.hosts} lab hosts (its master on the first), ms: "
              + " ".join(f"{v * 1e3:.1f}" for v in pvm_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

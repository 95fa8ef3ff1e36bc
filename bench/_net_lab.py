"""bench_net.py --lab: the rows measured between two hosts of a pvm-lab (root).

Each lab host is a network, IPC, PID and UTS namespace with its own sshd; the two are
joined by veth pairs and a bridge. Everything a row runs on a host goes through the
lab's real ssh (its config, keys and known_hosts):

  ours           a VM made by this checkout's console (``pvm --norc HOSTFILE``) over both
                 lab hosts; host 2's echo task and host 1's pinging task started by ssh
  PVM 3.4.6      Debian's pvmd as master on host 1 (its PVM_RSH a wrapper of the lab's
                 ssh, its hostfile's dx= a wrapper that lets it run as root), pvm_bench.c
                 on host 1 spawning its echo copy on host 2 (PvmTaskHost), via the pvmds
                 and with PvmRouteDirect
  floors         _net_floor's transports, the server in host 2's network namespace, the
                 client in host 1's
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PVM_ROOT = "/usr/lib/pvm3"
PVM_ROUNDS = 200  # pvm_bench's ping-pongs per size (ours: _net_floor.measure's rounds)


def ssh_argv(lab, host: str, cmd: str) -> list[str]:
    return ["ssh", "-F", lab.ssh_config, "-o", "BatchMode=yes", host, cmd]


def ssh(lab, host: str, cmd: str, timeout: float = 120) -> str:
    """*cmd* on lab host *host*; its stdout (a failure raises with its stderr)."""
    r = subprocess.run(ssh_argv(lab, host, cmd), capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise SystemExit(f"{host}: {cmd.split()[0]}... exited {r.returncode}: {r.stderr.strip()[-400:]}")
    return r.stdout


# ---- ours ---------------------------------------------------------------------------------
class LabVm:
    """A VM of this checkout over the lab's hosts (the console's host, the root
    namespace, is its host 1 and takes no part in the rows)."""

    def __init__(self, lab, vmid: str, trusted: bool):
        self.lab, self.vmid = lab, vmid
        self.tmp = tempfile.mkdtemp(prefix="bench_net.")
        os.chmod(self.tmp, 0o700)
        self.hostfile = os.path.join(self.tmp, "hostfile")
        dx = os.path.join(os.path.dirname(sys.executable), "pvm_shmd")
        with open(self.hostfile, "w") as f:
            f.write("".join(f"{h.name} dx={dx}\n" for h in lab.hosts))
        self.env = {**os.environ, "PVM_SSH_CONFIG": lab.ssh_config, "HOME": self.tmp, "PVM_TMP": self.tmp,
                    "PVM_VMID": vmid, "PVM_NET_TRUSTED": "1" if trusted else "0"}
        self.console("conf")

    def console(self, cmds: str) -> str:
        pvm = os.path.join(os.path.dirname(sys.executable), "pvm")
        r = subprocess.run([pvm, "--norc", self.hostfile, "-e", cmds], capture_output=True, text=True,
                           timeout=120, cwd=self.tmp, env=self.env)
        if r.returncode:
            raise SystemExit(f"pvm -e {cmds}: {r.stderr.strip()[-400:]}")
        return r.stdout

    def close(self) -> None:
        try:
            self.console("halt")
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def ours(lab, name: str, trusted: bool, packed: bool, direct: bool, peer_src: str) -> dict[str, float]:
    """One run of row *name*: a VM made for it, host 2's echo, host 1's pinger."""
    h1, h2 = (h.name for h in lab.hosts[:2])
    vm = LabVm(lab, f"bn{os.getpid() % 1000}{name[5:6] or 'o'}", trusted)
    env = f"PVM_VMID={vm.vmid} PVM_NET_DIRECT={1 if direct else 0}"
    peer = None
    try:
        peer = subprocess.Popen(ssh_argv(lab, h2, f"{env} {shlex.quote(sys.executable)} -c {shlex.quote(peer_src)}"),
                                stdout=subprocess.PIPE, text=True)
        assert peer.stdout is not None
        tid = int(peer.stdout.readline())
        side = [sys.executable, os.path.join(HERE, "bench_net.py"), "--side", str(tid)]
        side += ["--packed"] if packed else []
        return json.loads(ssh(lab, h1, f"{env} " + " ".join(map(shlex.quote, side)), timeout=600))
    finally:
        if peer is not None:
            try:
                peer.wait(30)  # (it ends at the pinger's tag 9)
            except subprocess.TimeoutExpired:
                peer.kill()
        vm.close()


# ---- real PVM 3.4.6 -------------------------------------------------------------------------
def pvm_missing() -> str | None:
    """Why real PVM cannot run here, or None."""
    if not os.path.exists(os.path.join(PVM_ROOT, "lib", "pvmd")) or not os.path.exists("/usr/include/pvm3.h"):
        return "no PVM 3.4.6 (apt-get install pvm pvm-dev)"
    if not shutil.which("cc"):
        return "no C compiler"
    return None


def pvm_setup(lab, hosts: list[str]) -> tuple[str, str]:
    """Real PVM's files in the lab's directory (seen at the same path by every host): a
    PVM_RSH wrapper of the lab's ssh, a pvmd wrapper that lets it run as root, a hostfile
    of *hosts* (the first the master's). (what a shell command on a lab host starts with
    to run PVM's programs, the hostfile's path)"""
    d = os.path.join(lab.dir, "pvm")
    os.makedirs(d, exist_ok=True)
    rsh, pvmd = os.path.join(d, "rsh"), os.path.join(d, "pvmd")
    for path, text in ((rsh, f'#!/bin/sh\nexec ssh -F {shlex.quote(lab.ssh_config)} -o BatchMode=yes "$@"\n'),
                       (pvmd, f'#!/bin/sh\nexport PVM_ALLOW_ROOT=1 PVM_ROOT={PVM_ROOT}\n'
                              f'exec {PVM_ROOT}/lib/pvmd "$@"\n')):
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
    hostfile = os.path.join(d, f"hostfile{len(hosts)}")
    with open(hostfile, "w") as f:
        f.write(f"* dx={pvmd}\n" + "".join(h + "\n" for h in hosts))
    return f"export PVM_ROOT={PVM_ROOT} PVM_ALLOW_ROOT=1 PVM_RSH={shlex.quote(rsh)}; cd /tmp;", hostfile


def pvm_halt(lab, host: str, env: str) -> None:
    """Halt the real PVM whose master runs on *host* (halt ends its console too, by
    SIGTERM: its status says nothing)."""
    subprocess.run(ssh_argv(lab, host, f"{env} echo halt | {PVM_ROOT}/lib/pvm"), capture_output=True, timeout=60)


def pvm_start(lab) -> float:
    """Seconds real PVM's console takes, on lab host 1, to make a VM of every lab host
    (``echo conf | pvm HOSTFILE``, timed there; every host checked in conf, then halted)."""
    names = [h.name for h in lab.hosts]
    env, hostfile = pvm_setup(lab, names)
    script = (f"{env} t=$(date +%s%N); echo conf | {PVM_ROOT}/lib/pvm {shlex.quote(hostfile)}; "
              "echo elapsed $(( $(date +%s%N) - t ))")
    try:
        out = ssh(lab, names[0], script)
    finally:
        pvm_halt(lab, names[0], env)
    missing = [n for n in names if n not in out]
    if missing:
        raise SystemExit(f"PVM: {' '.join(missing)} not in the VM: {out[-400:]}")
    return int(out.split("elapsed ")[-1].split()[0]) / 1e9


def real_pvm(lab) -> dict[str, dict[str, float]]:
    """Real PVM between lab hosts 1 and 2: {"PVM via pvmds": figures, "PVM direct": figures}
    (latency: half the median round trip, pvm_bench's "med" lines)."""
    h1, h2 = (h.name for h in lab.hosts[:2])
    env, hostfile = pvm_setup(lab, [h1, h2])
    exe = os.path.join(lab.dir, "pvm", "pvm_bench")
    subprocess.run(["cc", "-O2", "-o", exe, os.path.join(HERE, "pvm_bench.c"), "-lpvm3"], check=True)
    master = subprocess.Popen(ssh_argv(lab, h1, f"{env} exec {PVM_ROOT}/lib/pvmd {shlex.quote(hostfile)}"),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out: dict[str, dict[str, float]] = {}
    try:
        assert master.stdout is not None
        master.stdout.readline()  # its socket's path: up
        deadline = time.monotonic() + 30
        while h2 not in ssh(lab, h1, f"{env} echo conf | {PVM_ROOT}/lib/pvm"):
            if time.monotonic() > deadline:
                raise SystemExit(f"PVM: {h2} never joined the master's VM")
            time.sleep(0.2)
        for name, direct in (("PVM via pvmds", 0), ("PVM direct", 1)):
            got: dict[str, float] = {}
            for line in ssh(lab, h1, f"{env} {shlex.quote(exe)} {PVM_ROUNDS} {direct} {h2}", timeout=600).splitlines():
                kind, size, val = line.split()
                if kind in ("med", "bw"):
                    got[f"{'lat' if kind == 'med' else 'bw'}{size}"] = float(val)
            out[name] = got
    finally:
        pvm_halt(lab, h1, env)
        try:
            master.wait(10)
        except subprocess.TimeoutExpired:
            master.kill()
    return out

"""pvm-lab: N emulated hosts on this machine, reachable over real SSH.

Each host is a network namespace with its own address, its own SysV IPC, UTS,
mount (private /tmp, /dev/shm, /run) and PID namespace, and a real OpenSSH
server as PID 1. The filesystem (checkout, virtual environment) is shared, so a
hostfile line ``pvmh1 dx=<venv>/bin/pvm_shmd`` starts a real daemon in a real
separate "host". Root is needed.

Network shape (why: the console runs in the root namespace and must reach the
hosts with a plain TCP socket, so ``ssh -F <dir>/ssh_config pvmh1`` and paramiko
both work without wrappers)::

    root ns: pvl-<lab> 10.77.S.1/24 --veth-- [lab ns <lab>: bridge br0] --veth-- eth0 10.77.S.(10+i) [host ns <lab>-hI]

The subnet 10.77.S.0/24 is picked free at ``up`` (S=0 unless in use), so a test
lab never collides with a user's lab. Teardown kills every process in each
host namespace, deletes the namespaces (the veths and bridge go with them) and
removes the lab directory: nothing remains.
"""
from __future__ import annotations

import argparse
import fcntl
import functools
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

from .runner import local_program

DEFAULT_DIR = "/run/pvm-lab"
DEFAULT_NAME = "pvmlab"
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")  # root veth "pvl-<name>" must fit IFNAMSIZ (15)
MAX_HOSTS = 200
STEP_TIMEOUT = 10.0  # every ip/ssh-keygen call
READY_TIMEOUT = 10.0  # sshd of every host listening
IPC_SYSCTLS = ("msgmax", "msgmnb", "msgmni", "sem", "shmall", "shmmax", "shmmni")

# Runs as PID 1 of a fresh host (inside unshare). Why each step:
#  - the lab dir and the project (checkout, virtual environment) are parked on a private
#    /mnt and moved back after the tmpfs mounts, because they may live under /tmp or
#    /run, which the host gets private copies of (a CI checkout under /tmp, say);
#  - IPC limits start at kernel defaults in a new IPC namespace: copy the machine's;
#  - the lab's hosts file is bind-mounted on /etc/hosts so host names resolve inside every
#    host. A machine without /etc/hosts (a chroot, a minimal container) has no file to mount
#    on, and /etc is shared with the machine: the host then gets a private /etc on a tmpfs,
#    made of links to the real entries (bind-mounted at /run/pvmlab-etc, on the host's own
#    /run) plus the hosts file itself; with --password a private /etc/shadow gives root that
#    password in the hosts only;
#  - sshd execs in place, so it is PID 1: it reaps orphans and killing it ends the host.
# Arguments: host name, N, N directories to carry (the lab dir first), IPC limits.
_INIT = r"""
set -e
hn=$1; n=$2; shift 2
mount -t tmpfs -o mode=700 pvmlab-park /mnt
i=0
while [ "$i" -lt "$n" ]; do
    mkdir "/mnt/$i"; mount --bind "$1" "/mnt/$i"; eval "carry_$i=\$1"; i=$((i+1)); shift
done
dir=$carry_0
mount -t tmpfs -o mode=1777 pvmlab-tmp /tmp
mount -t tmpfs -o mode=1777 pvmlab-shm /dev/shm
mount -t tmpfs -o mode=755 pvmlab-run /run
mkdir -p /run/sshd
i=0
while [ "$i" -lt "$n" ]; do
    eval "d=\$carry_$i"; mkdir -p "$d"; mount --move "/mnt/$i" "$d"; i=$((i+1))
done
umount /mnt
if [ -e /etc/hosts ]; then
    mount --bind "$dir/hosts" /etc/hosts
else
    mkdir /run/pvmlab-etc
    mount --bind /etc /run/pvmlab-etc
    mount -t tmpfs -o mode=755 pvmlab-etc /etc
    for f in /run/pvmlab-etc/* /run/pvmlab-etc/.[!.]*; do
        b=${f##*/}
        if [ -L "$f" ]; then cp -P "$f" "/etc/$b"  # a link as is: relative ones stay right
        elif [ -e "$f" ]; then ln -s "$f" "/etc/$b"; fi
    done
    rm -f /etc/hosts  # (a dangling link: never write through it)
    cp "$dir/hosts" /etc/hosts
fi
if [ -f "$dir/shadow" ]; then mount --bind "$dir/shadow" /etc/shadow; fi
for kv in "$@"; do echo "${kv#*=}" > "/proc/sys/kernel/${kv%%=*}"; done
hostname "$hn"
exec /usr/sbin/sshd -D -e -f "$dir/$hn/sshd_config"
"""
_PRIVATE_ROOTS = ("/tmp", "/dev/shm", "/run")  # each host gets its own of these


def _carried(lab_dir: str) -> list[str]:
    """Directories a host must still see under its private /tmp, /dev/shm and /run:
    the lab dir, and the project's checkout and virtual environment when they live there."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = [lab_dir]
    for d in (here, sys.prefix):
        d = os.path.realpath(d)
        if d.startswith(tuple(r + "/" for r in _PRIVATE_ROOTS)) and not any(
                d == c or d.startswith(c + "/") for c in out):
            out.append(d)
    return out


class LabError(Exception):
    """A lab step failed; the message is one line: what failed and, after a colon, its
    cause in the failing program's own words (``cause``: all of them, as it said them)."""

    def __init__(self, message: str, cause: str = ""):
        self.cause = cause.strip()
        said = _one_line(self.cause)
        super().__init__(f"{message}: {said}" if said else message)


def _one_line(text: str, limit: int = 600) -> str:
    """Every non-empty line of *text*, joined by '; ' (the cause is rarely only the last
    line: ``mount: /etc/hosts: mount point does not exist`` comes before mount's hint
    about dmesg), cut to *limit* characters from the end."""
    said = "; ".join(ln.strip() for ln in text.splitlines() if ln.strip())
    return said if len(said) <= limit else "..." + said[-limit:]


@dataclass
class LabHost:
    name: str  # host name inside the lab (pvmhI), also the ssh_config alias
    netns: str
    addr: str
    pid: int = 0  # unshare process in the root PID namespace


@dataclass
class Lab:
    name: str
    dir: str
    subnet: str  # e.g. 10.77.0.0/24
    root_if: str
    hosts: list[LabHost] = field(default_factory=list)

    @property
    def ssh_config(self) -> str:
        return os.path.join(self.dir, "ssh_config")

    @property
    def known_hosts(self) -> str:
        return os.path.join(self.dir, "known_hosts")

    @property
    def key(self) -> str:
        return os.path.join(self.dir, "id_ed25519")

    @property
    def hostfile(self) -> str:
        return os.path.join(self.dir, "hostfile")

    def save(self) -> None:
        tmp = os.path.join(self.dir, "lab.json.tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(self), f, indent=1)
        os.replace(tmp, os.path.join(self.dir, "lab.json"))

    @classmethod
    def load(cls, dir: str) -> Lab:
        try:
            with open(os.path.join(dir, "lab.json")) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise LabError(f"no lab in {dir} (pvm-lab up N --dir {dir})") from None
        d["hosts"] = [LabHost(**h) for h in d["hosts"]]
        return cls(**d)


def _sh(argv: list[str], input: str | None = None) -> str:
    """Run one setup command; a failure is a LabError naming it, with all it said."""
    try:
        p = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=STEP_TIMEOUT)
    except FileNotFoundError:
        raise LabError(f"{argv[0]}: not installed") from None
    except subprocess.TimeoutExpired as e:
        said = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise LabError(f"{' '.join(argv)}: timed out after {STEP_TIMEOUT:g} s", said) from None
    if p.returncode:
        raise LabError(f"{' '.join(argv[:6])} (exit {p.returncode})",
                       (p.stderr or p.stdout).strip() or "no output")
    return p.stdout


def _pick_subnet() -> ipaddress.IPv4Network:
    """The first 10.77.S.0/24 that no address or route of the root namespace touches."""
    used = _sh(["ip", "-4", "-o", "addr", "show"]) + _sh(["ip", "-4", "route", "show"])
    for s in range(256):
        net = ipaddress.IPv4Network(f"10.77.{s}.0/24")
        if f"10.77.{s}." not in used and "10.77.0.0/16" not in used:
            return net
    raise LabError("no free subnet in 10.77.0.0/16")


def _strict_modes_ok(path: str) -> bool:
    """sshd's StrictModes refuses keys under a group/world-writable directory (e.g. /tmp)."""
    path = os.path.realpath(path)
    while True:
        st = os.stat(path)
        if st.st_uid != 0 or st.st_mode & 0o022:
            return False
        if path == "/":
            return True
        path = os.path.dirname(path)


def _sshd_config(lab: Lab, h: LabHost, strict: bool, password: bool) -> str:
    d = lab.dir
    return "\n".join([
        f"# pvm-lab {lab.name}: host {h.name}",
        f"ListenAddress {h.addr}",
        "Port 22",
        f"HostKey {d}/{h.name}/ssh_host_ed25519_key",
        f"AuthorizedKeysFile {d}/authorized_keys",
        f"PermitRootLogin {'yes' if password else 'prohibit-password'}",
        f"PasswordAuthentication {'yes' if password else 'no'}",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "UseDNS no",
        f"StrictModes {'yes' if strict else 'no'}",
        "PidFile none",
        "MaxStartups 200",
        "MaxSessions 64",
        # bash skips ~/.bashrc for ssh commands when SHLVL is set (saves 100+ ms per exec)
        "SetEnv SHLVL=1",
        "Subsystem sftp internal-sftp",
        "",
    ])


def _write(path: str, text: str, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _write_shadow(lab: Lab, password: str) -> None:
    """A copy of /etc/shadow where root has *password*, bind-mounted in the hosts only."""
    hashed = _sh(["openssl", "passwd", "-6", "-stdin"], password + "\n").strip()
    with open("/etc/shadow") as f:
        lines = f.read().splitlines()
    out = [":".join([c[0], hashed, *c[2:]]) if c[0] == "root" else ":".join(c)
           for c in (l.split(":") for l in lines)]
    _write(os.path.join(lab.dir, "shadow"), "\n".join(out) + "\n", 0o600)


def _write_files(lab: Lab, daemon: str, password: str | None) -> None:
    """Keys, sshd configs, known_hosts, ssh_config, /etc/hosts and hostfile."""
    d = lab.dir
    _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"pvm-lab-{lab.name}", "-f", lab.key])
    shutil.copyfile(lab.key + ".pub", os.path.join(d, "authorized_keys"))
    os.chmod(os.path.join(d, "authorized_keys"), 0o600)
    strict = _strict_modes_ok(d)
    known, etc_hosts = [], ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost"]
    for h in lab.hosts:
        hd = os.path.join(d, h.name)
        os.mkdir(hd, 0o755)
        key = os.path.join(hd, "ssh_host_ed25519_key")
        _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", h.name, "-f", key])
        with open(key + ".pub") as f:
            kind, blob = f.read().split()[:2]
        known.append(f"{h.name},{h.addr} {kind} {blob}")
        etc_hosts.append(f"{h.addr}\t{h.name}")
        _write(os.path.join(hd, "sshd_config"), _sshd_config(lab, h, strict, password is not None))
    if password is not None:
        _write_shadow(lab, password)
    _write(lab.known_hosts, "\n".join(known) + "\n")
    _write(os.path.join(d, "hosts"), "\n".join(etc_hosts) + "\n")
    names = " ".join(h.name for h in lab.hosts)
    cfg = [f"# pvm-lab {lab.name}: {len(lab.hosts)} emulated hosts.",
           f"# ssh -F {lab.ssh_config} {lab.hosts[0].name}   or   export PVM_SSH_CONFIG={lab.ssh_config}"]
    for h in lab.hosts:
        cfg += [f"Host {h.name}", f"    HostName {h.addr}"]
    cfg += [f"Host {names}", "    User root", "    Port 22", f"    IdentityFile {lab.key}",
            "    IdentitiesOnly yes", f"    UserKnownHostsFile {lab.known_hosts}",
            "    StrictHostKeyChecking yes", ""]
    _write(lab.ssh_config, "\n".join(cfg))
    hf = [f"# pvm-lab {lab.name}: {len(lab.hosts)} emulated hosts; the console reaches them with",
          f"#   PVM_SSH_CONFIG={lab.ssh_config}"]
    hf += [f"{h.name} dx={daemon}" for h in lab.hosts]
    _write(lab.hostfile, "\n".join(hf) + "\n")


def _ipc_limits() -> list[str]:
    out = []
    for k in IPC_SYSCTLS:
        with open(f"/proc/sys/kernel/{k}") as f:
            out.append(f"{k}={' '.join(f.read().split())}")
    return out


def _start_host(lab: Lab, h: LabHost, limits: list[str]) -> None:
    """Start the host's init (then sshd) in its namespaces, detached from us."""
    carry = _carried(lab.dir)
    log = open(os.path.join(lab.dir, h.name, "sshd.log"), "ab")
    try:
        p = subprocess.Popen(
            ["ip", "netns", "exec", h.netns,
             "unshare", "--ipc", "--uts", "--mount", "--propagation", "private",
             "--pid", "--fork", "--kill-child", "--mount-proc",
             "/bin/sh", "-c", _INIT, "pvm-lab-init", h.name, str(len(carry)), *carry, *limits],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            close_fds=True, start_new_session=True,  # pitfall: leaked fds deadlock later starts
        )
    finally:
        log.close()
    h.pid = p.pid
    p.returncode = 0  # we never wait for it here; silence Popen's "still running" warning


def _wait_ready(lab: Lab, deadline: float) -> None:
    """Until every sshd accepts a TCP connection; a dead host is an error with its log."""
    pending = list(lab.hosts)
    while pending:
        for h in list(pending):
            try:
                with socket.create_connection((h.addr, 22), timeout=0.5):
                    pending.remove(h)
                    continue
            except OSError:
                pass
            if not _alive(h.pid):
                # (the log goes with the lab directory when up() cleans up: all it said)
                raise LabError(f"{h.name}: sshd did not start; its start-up said", _log_text(lab, h))
        if pending and time.monotonic() > deadline:
            raise LabError(f"{pending[0].name}: sshd not listening after {READY_TIMEOUT:g} s; "
                           f"its log ends", _log_text(lab, pending[0], 8))
        if pending:
            time.sleep(0.02)


def _log_path(lab: Lab, h: LabHost) -> str:
    return os.path.join(lab.dir, h.name, "sshd.log")


def _log_text(lab: Lab, h: LabHost, last: int = 0) -> str:
    """What the host's init and sshd wrote (its last *last* lines if > 0): the init's
    first failing step stops it, so its error is there, before any later hint."""
    try:
        with open(_log_path(lab, h), errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError as e:
        return f"(no log: {e.strerror})"
    return "\n".join(lines[-last:] if last else lines) or "(no output)"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def up(n: int, dir: str = DEFAULT_DIR, name: str = DEFAULT_NAME, daemon: str | None = None,
       password: str | None = None) -> Lab:
    """Create *n* emulated hosts; on any failure tear down what was made and raise LabError.
    With *password*, root may also log in with it (to try ``so=pw``)."""
    if os.geteuid() != 0:
        raise LabError("pvm-lab needs root (it creates network, IPC, mount and PID namespaces)")
    if not 1 <= n <= MAX_HOSTS:
        raise LabError(f"bad host count {n}: use 1..{MAX_HOSTS}")
    if not _NAME_RE.fullmatch(name):
        raise LabError(f"bad lab name {name!r}: use a-z then up to 9 of a-z 0-9")
    if not os.path.exists("/usr/sbin/sshd"):
        raise LabError("/usr/sbin/sshd missing: apt-get install -y openssh-server")
    dir = os.path.abspath(dir)
    if dir == "/mnt" or dir.startswith("/mnt/"):
        raise LabError(f"bad lab directory {dir}: /mnt is used while a host starts")
    if os.path.exists(os.path.join(dir, "lab.json")):
        raise LabError(f"a lab is already up in {dir} (pvm-lab down --dir {dir})")
    if os.path.exists(f"/run/netns/{name}") or any(
            ns.startswith(f"{name}-h") for ns in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else ())):
        raise LabError(f"network namespace {name} exists: another lab named {name} is up "
                       f"(pvm-lab down, or --name)")
    daemon = daemon or local_program("pvm_shmd")
    made_dir = not os.path.exists(dir)
    try:
        os.makedirs(dir, mode=0o755, exist_ok=True)
        # Serialise subnet choice between concurrent ups; /run itself is the lock so none is left.
        lockfd = os.open("/run", os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise _os_error(e, dir) from None
    lab = None
    try:
        fcntl.flock(lockfd, fcntl.LOCK_EX)
        net = _pick_subnet()
        base = net.network_address
        lab = Lab(name=name, dir=dir, subnet=str(net), root_if=f"pvl-{name}")
        lab.hosts = [LabHost(f"pvmh{i}", f"{name}-h{i}", str(base + 10 + i)) for i in range(1, n + 1)]
        lab.save()  # first, so `down` can clean up a half-made lab
        _sh(["ip", "netns", "add", name])
        _sh(["ip", "-n", name, "-b", "-"], "link set lo up\nlink add br0 type bridge\nlink set br0 up\n")
        _sh(["ip", "link", "add", lab.root_if, "type", "veth", "peer", "name", "up0", "netns", name])
        _sh(["ip", "-b", "-"], f"addr add {base + 1}/24 dev {lab.root_if}\nlink set {lab.root_if} up\n")
        fcntl.flock(lockfd, fcntl.LOCK_UN)
        br = ["link set up0 master br0 up"]
        for i, h in enumerate(lab.hosts, 1):
            _sh(["ip", "netns", "add", h.netns])
            br += [f"link add v{i} type veth peer name eth0 netns {h.netns}", f"link set v{i} master br0 up"]
        _sh(["ip", "-n", name, "-b", "-"], "\n".join(br) + "\n")
        for h in lab.hosts:
            _sh(["ip", "-n", h.netns, "-b", "-"],
                f"link set lo up\naddr add {h.addr}/24 dev eth0\nlink set eth0 up\n")
        _write_files(lab, daemon, password)
        limits = _ipc_limits()
        for h in lab.hosts:
            _start_host(lab, h, limits)
        lab.save()
        _wait_ready(lab, time.monotonic() + READY_TIMEOUT)
        return lab
    except BaseException as e:
        if lab is not None:
            down(dir, _remove_dir=made_dir)
        elif made_dir:
            shutil.rmtree(dir, ignore_errors=True)
        if isinstance(e, OSError):  # a file of the lab, or a program we could not run
            raise _os_error(e, dir) from None
        raise
    finally:
        os.close(lockfd)


def _os_error(e: OSError, what: str) -> LabError:
    """An OSError of a lab step as a LabError: the file (or *what*) and the system's words."""
    return LabError(str(e.filename or what), e.strerror or str(e))


# -- what this machine allows -----------------------------------------------------------------
PROBE_TIMEOUT = 10.0  # the probe host's whole life: namespaces, mounts, sshd answering
# The probe host's init: the kinds of step a lab host's init takes (tmpfs and bind mounts of a
# directory and of a file in a private mount namespace, a host name in its UTS namespace),
# then a real sshd on 127.0.0.1 of the probe's network namespace, asked for its host key.
# Why its own script and not the lab's: a bug in the lab's init must fail the lab's tests,
# not make them skip. Arguments: the probe directory.
_PROBE_INIT = r"""
set -e
mount -t tmpfs -o mode=700 pvmlab-probe /mnt
mkdir /mnt/d
mount --bind "$1" /mnt/d
d=/mnt/d
mount -t tmpfs -o mode=755 pvmlab-probe-run /run
mkdir -p /run/sshd
: > "$d/target"
mount --bind "$d/hosts" "$d/target"
grep -q pvm-lab-probe "$d/target"
hostname pvm-lab-probe
/usr/sbin/sshd -D -e -f "$d/sshd_config" &
i=0
while [ $i -lt 50 ]; do
    if ssh-keyscan -T 1 -t ed25519 127.0.0.1 2>/dev/null | grep -q ssh-ed25519; then
        echo pvm-lab-probe-ok; exit 0
    fi
    kill -0 $! 2>/dev/null || { echo "sshd exited" >&2; exit 1; }
    sleep 0.1; i=$((i+1))
done
echo "sshd did not answer on 127.0.0.1:22 within 5 s" >&2
exit 1
"""
_PROBE_PROGRAMS = {"/usr/sbin/sshd": "openssh-server", "ssh-keygen": "openssh-client",
                   "ssh-keyscan": "openssh-client", "ssh": "openssh-client", "ip": "iproute2",
                   "unshare": "util-linux"}


@functools.lru_cache(maxsize=1)
def probe() -> str | None:
    """None when this machine can run a lab, else why not, in one line (the failing step and
    the system's own words). Done once per process (cached): as root, it makes a network
    namespace, enters it (``ip -n``: ``mount --make-rslave /``, which a chroot refuses),
    starts a host's namespaces (IPC, UTS, mount, PID) with tmpfs and bind mounts in them, and
    a real sshd there that must answer; everything is removed after."""
    return _probe()


def _probe() -> str | None:
    if os.geteuid() != 0:
        return "pvm-lab needs root (it creates network, IPC, mount and PID namespaces)"
    for prog, pkg in _PROBE_PROGRAMS.items():
        if not shutil.which(prog):
            return f"{prog} is missing (apt-get install -y {pkg})"
    # (not by pid alone: processes in PID namespaces of their own all have pid 1)
    ns = f"pvmprobe{os.getpid()}-{secrets.token_hex(4)}"
    d = tempfile.mkdtemp(prefix="pvm-lab-probe-")
    made_ns = False
    try:
        try:
            _sh(["ip", "netns", "add", ns])
            made_ns = True
        except LabError as e:
            return f"cannot make a network namespace: {e}"
        try:
            _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        except LabError as e:
            return f"cannot enter a network namespace (/ must be a mount point, as it is not in a chroot): {e}"
        key = os.path.join(d, "key")
        try:
            _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pvm-lab-probe", "-f", key])
        except LabError as e:
            return str(e)
        _write(os.path.join(d, "hosts"), "127.0.0.1\tpvm-lab-probe\n")
        _write(os.path.join(d, "sshd_config"), "\n".join([
            "ListenAddress 127.0.0.1", "Port 22", "HostKey /mnt/d/key", "UsePAM no",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PidFile none", ""]))
        try:
            p = subprocess.run(
                ["ip", "netns", "exec", ns,
                 "unshare", "--ipc", "--uts", "--mount", "--propagation", "private",
                 "--pid", "--fork", "--kill-child", "--mount-proc",
                 "/bin/sh", "-c", _PROBE_INIT, "pvm-lab-probe", d],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                start_new_session=True)
        except subprocess.TimeoutExpired:
            return f"a probe host (namespaces, mounts, sshd) did not finish within {PROBE_TIMEOUT:g} s"
        if "pvm-lab-probe-ok" not in p.stdout:
            said = _one_line(p.stderr or p.stdout) or f"exit {p.returncode}"
            return f"cannot start a host (namespaces, tmpfs and bind mounts, sshd): {said}"
        return None
    finally:
        if made_ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=STEP_TIMEOUT)
        shutil.rmtree(d, ignore_errors=True)


def lab_with_host(host: str) -> Lab | None:
    """The lab that is up (in $PVM_LAB_DIR, else the default directory) and has a host named
    *host*, else None: for the console's hint when such a name does not resolve. Reads
    files only; never fails."""
    for d in dict.fromkeys(filter(None, (os.environ.get("PVM_LAB_DIR"), DEFAULT_DIR))):
        try:
            lab = Lab.load(d)
        except (LabError, OSError, ValueError, TypeError, KeyError):
            continue
        if any(h.name == host for h in lab.hosts) and os.path.exists(f"/run/netns/{lab.name}"):
            return lab
    return None


def _netns_pids(ns: str) -> list[int]:
    try:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                             timeout=STEP_TIMEOUT).stdout
    except subprocess.TimeoutExpired:
        return []
    return [int(p) for p in out.split() if p.isdigit()]


def down(dir: str = DEFAULT_DIR, *, _remove_dir: bool = True) -> list[str]:
    """Tear the lab in *dir* down completely; return problems (empty when clean)."""
    dir = os.path.abspath(dir)
    lab = Lab.load(dir)
    problems: list[str] = []
    killed: dict[int, str] = {}
    for h in lab.hosts:
        if not os.path.exists(f"/run/netns/{h.netns}"):
            continue
        # Every process in the host's netns: sshd (PID 1 of its PID namespace, so its death
        # takes the whole host with it), daemons started over ssh, anything a user started.
        # The host's unshare is spared: it reaps sshd and exits by itself (else sshd's zombie
        # would wait for init); it is killed below if it lingers.
        for pid in _netns_pids(h.netns):
            if pid == h.pid:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                killed[pid] = h.name
            except ProcessLookupError:
                pass
        if h.pid and _alive(h.pid):
            killed[h.pid] = h.name
    # Wait until every killed process is dead. We reap our own children (a lab made in this
    # process); a zombie of someone else's (init's, after `pvm-lab up` exited) holds nothing —
    # its namespaces are already released — and init may be slow to reap it.
    deadline = time.monotonic() + 5
    while killed and time.monotonic() < deadline:
        for pid in list(killed):
            _reap(pid)
            if not _alive(pid):
                del killed[pid]
        if killed:
            time.sleep(0.01)
        if killed and time.monotonic() > deadline - 3:  # a lingering unshare
            for pid in killed:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    for h in lab.hosts:  # our zombie children of hosts that died before down
        if h.pid:
            _reap(h.pid)
    problems += [f"{name}: pid {pid} did not exit" for pid, name in killed.items()]
    for ns in [h.netns for h in lab.hosts] + [lab.name]:
        if os.path.exists(f"/run/netns/{ns}"):
            r = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True,
                               timeout=STEP_TIMEOUT)
            if r.returncode:
                problems.append(f"netns {ns}: {r.stderr.strip()}")
    # The root veth dies with the lab namespace; delete it explicitly if that failed.
    if os.path.exists(f"/sys/class/net/{lab.root_if}"):
        subprocess.run(["ip", "link", "del", lab.root_if], capture_output=True, timeout=STEP_TIMEOUT)
    if _remove_dir:
        shutil.rmtree(dir, ignore_errors=True)
    else:
        os.unlink(os.path.join(dir, "lab.json"))
    return problems


def _reap(pid: int) -> None:
    """Collect the exit status if *pid* is our child (tests start labs in-process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


def status(dir: str = DEFAULT_DIR) -> list[tuple[LabHost, str]]:
    """(host, 'up' | reason) for every host of the lab in *dir*."""
    lab = Lab.load(dir)
    out = []
    for h in lab.hosts:
        if not os.path.exists(f"/run/netns/{h.netns}"):
            out.append((h, "down: no namespace"))
        elif not _alive(h.pid):
            out.append((h, "down: sshd not running"))
        else:
            try:
                with socket.create_connection((h.addr, 22), timeout=1):
                    out.append((h, "up"))
            except OSError as e:
                out.append((h, f"down: {e.strerror or e}"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pvm-lab",
                                 description="Emulated hosts for a multi-host PVM on one machine (root).")
    ap.add_argument("--dir", default=os.environ.get("PVM_LAB_DIR", DEFAULT_DIR),
                    help=f"lab directory (default $PVM_LAB_DIR or {DEFAULT_DIR})")
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="create N hosts")
    u.add_argument("n", type=int)
    u.add_argument("--name", default=DEFAULT_NAME, help="namespace prefix (default %(default)s)")
    u.add_argument("--dx", help="daemon program for the hostfile (default: this venv's pvm_shmd)")
    u.add_argument("--password", help="also let root log in with this password (to try so=pw)")
    sub.add_parser("down", help="remove every host and file of the lab")
    sub.add_parser("status", help="show the hosts")
    sub.add_parser("probe", help="check that this machine can run a lab (namespaces, mounts, sshd)")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "up":
            t0 = time.monotonic()
            lab = up(a.n, a.dir, a.name, a.dx, a.password)
            print(f"pvm-lab: {a.n} hosts up in {time.monotonic() - t0:.2f} s, subnet {lab.subnet}")
            for h in lab.hosts:
                print(f"  {h.name}  {h.addr}")
            print(f"  ssh:      ssh -F {lab.ssh_config} {lab.hosts[0].name}")
            print(f"  console:  PVM_SSH_CONFIG={lab.ssh_config} pvm {lab.hostfile}")
            print(f"  remove:   pvm-lab down{'' if a.dir == DEFAULT_DIR else ' --dir ' + a.dir}")
        elif a.cmd == "down":
            problems = down(a.dir)
            for p in problems:
                print(f"pvm-lab: {p}", file=sys.stderr)
            if problems:
                return 1
            print("pvm-lab: down")
        elif a.cmd == "probe":
            t0 = time.monotonic()
            why = probe()
            if why:
                print(f"pvm-lab: no lab possible here: {why}", file=sys.stderr)
                return 1
            print(f"pvm-lab: this machine can run a lab (checked in {time.monotonic() - t0:.2f} s)")
        else:
            lab = Lab.load(a.dir)
            print(f"pvm-lab {lab.name}: {len(lab.hosts)} hosts, subnet {lab.subnet}, dir {lab.dir}")
            for h, st in status(a.dir):
                print(f"  {h.name}  {h.addr}  {st}")
    except LabError as e:
        print(f"pvm-lab: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

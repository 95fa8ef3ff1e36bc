"""pvm-lab's probe of what the machine allows (issue #12, item 3): where namespaces or mounts
don't work, lab tests skip with the system's reason and `pvm-lab up` says the cause.

The refusing machine is real: a chroot whose / is not a mount point (in a private mount
namespace), where `ip -n` fails on ``mount --make-rslave /`` exactly as in a chroot or
some containers."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, need_root

from pvmconsole import lab as labmod

pytestmark = pytest.mark.lab  # real sshd servers, lab hosts or namespaces (root)

BIN = os.path.dirname(sys.executable)
MAKE_RSLAVE = '"mount --make-rslave /" failed: Invalid argument'

# chroot.sh DIR... -- CMD...: CMD in a chroot whose / is a plain directory of a tmpfs (not a
# mount point), with the machine's /usr, /etc, /dev, /proc, /sys and each DIR bound in, and
# its own /tmp and /run. Run in a private mount namespace: everything goes with it.
_CHROOT = r"""
set -e
r=$(mktemp -d)
mount -t tmpfs pvmchroot "$r"
mkdir "$r/root"
for d in /usr /etc /dev /proc /sys; do mkdir -p "$r/root$d"; mount --rbind "$d" "$r/root$d"; done
while [ "$1" != "--" ]; do mkdir -p "$r/root$1"; mount --rbind "$1" "$r/root$1"; shift; done
shift
for l in bin sbin lib lib64; do if [ -L "/$l" ]; then ln -s "$(readlink "/$l")" "$r/root/$l"; fi; done
mkdir -p "$r/root/tmp" "$r/root/run"
mount -t tmpfs pvmchroot-tmp "$r/root/tmp"
mount -t tmpfs pvmchroot-run "$r/root/run"
exec chroot "$r/root" "$@"
"""


def in_chroot(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """*argv* in such a chroot, with the checkout and the interpreter's installation bound
    in; its own mount, IPC and PID namespaces (a nested pytest's leak check sees only its
    own objects)."""
    keep = sorted({ROOT, os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)})
    keep = [d for d in keep if not any(d != k and d.startswith(k + "/") for k in keep)]
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--ipc", "--pid", "--fork",
         "--mount-proc", "sh", "-c", _CHROOT, "chroot.sh", *keep, "--", *argv],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture
def chroot():
    need_root("a chroot in a mount namespace")
    if labmod.probe() is not None:
        pytest.skip(f"this machine refuses the lab already: {labmod.probe()}")
    return in_chroot


def test_probe_and_up_in_a_chroot_say_why_in_the_systems_words(chroot):
    r = chroot([os.path.join(BIN, "pvm-lab"), "probe"])
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith("pvm-lab: no lab possible here: cannot enter a network namespace "
                               "(/ must be a mount point, as it is not in a chroot): ip -n pvmprobe")
    assert r.stderr.rstrip().endswith(MAKE_RSLAVE), r.stderr
    r = chroot([os.path.join(BIN, "pvm-lab"), "--dir", "/run/pvm-lab-chroot", "up", "1", "--name", "chk"])
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr == f"pvm-lab: ip -n chk -b - (exit 255): {MAKE_RSLAVE}\n"


def test_lab_tests_skip_with_the_reason_where_the_lab_cannot_run(chroot):
    """Every lab-using module goes through lab_probe.need_lab: in the chroot, skips (with the
    probe's reason), no errors, no failures."""
    modules = [os.path.join(ROOT, "tests", "hosts", m)
               for m in ("test_lab.py", "test_ssh.py", "test_console_messages.py")]
    r = chroot([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *modules],
               timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    summary = out.strip().splitlines()[-1]
    m = re.fullmatch(r"(\d+) passed, (\d+) skipped in [\d.]+s", summary)
    assert m and int(m.group(2)) >= 15, out  # nothing failed or errored: the lab tests skipped
    skips = [ln for ln in out.splitlines() if ln.startswith("SKIPPED")]
    counted = sum(int(re.match(r"SKIPPED \[(\d+)\]", ln).group(1)) for ln in skips)  # type: ignore[union-attr]
    assert counted == int(m.group(2)) and all(
        "the SSH lab can't run on this machine: cannot enter a network namespace" in ln
        and ln.endswith(MAKE_RSLAVE) for ln in skips), out


def test_probe_reports_the_failing_step_with_its_own_words(tmp_path, monkeypatch):
    """The probe's decision for one failing command (a stand-in `ip` that refuses to make a
    namespace, as in a container without CAP_SYS_ADMIN): the reason is the step and its
    stderr. (The real refusals are the chroot tests above.)"""
    need_root("the lab probe")
    fake = tmp_path / "ip"
    fake.write_text("#!/bin/sh\necho 'mount --make-shared /run/netns failed: Operation not permitted' >&2\n"
                    "echo 'second line' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    why = labmod._probe()
    assert re.fullmatch(rf"cannot make a network namespace: ip netns add pvmprobe{os.getpid()}-[0-9a-f]{{8}} "
                        r"\(exit 1\): mount --make-shared /run/netns failed: Operation not permitted; "
                        r"second line", why or ""), why


def test_probe_cli_agrees_with_the_probe_and_leaves_nothing(tmp_path):
    need_root("the lab probe")
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    r = subprocess.run([os.path.join(BIN, "pvm-lab"), "probe"], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, TMPDIR=str(tmp_path)))
    why = labmod.probe()
    if why is None:
        assert r.returncode == 0 and r.stdout.startswith("pvm-lab: this machine can run a lab"), r.stderr
    else:
        assert r.returncode == 1 and r.stderr == f"pvm-lab: no lab possible here: {why}\n"
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert not {ns for ns in after - before if ns.startswith("pvmprobe")}
    assert os.listdir(tmp_path) == []  # its directory (keys, sshd_config) removed

"""SshRunner against the lab: real sshd, real paramiko, real failures."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from lab_probe import running_lab, ssh

from pvmconsole import lab as labmod
from pvmconsole.ssh import SshError, SshRunner, remote_command
from shmd.errors import PvmBadParam, PvmCantStart, PvmHostFail, PvmNoHost

pytestmark = pytest.mark.lab  # real sshd servers, lab hosts or namespaces (root)


@pytest.fixture(scope="module")
def lab():
    with running_lab("s", 4, password="lab-pw-1") as lab:
        yield lab


@pytest.fixture
def runners(lab):
    made: list[SshRunner] = []

    def make(host="pvmh1", **kw) -> SshRunner:
        kw.setdefault("config", lab.ssh_config)
        r = SshRunner(host, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def write_config(lab, tmp_path, extra: str) -> str:
    """The lab's ssh_config with *extra* blocks first (first value wins, as in ssh)."""
    path = tmp_path / "ssh_config"
    with open(lab.ssh_config) as f:
        path.write_text(extra + "\n" + f.read())
    return str(path)


def test_run_returns_status_output_input_cwd_env(runners):
    r = runners()
    res = r.run(["sh", "-c", 'hostname; pwd; echo "$X"; cat; echo oops >&2; exit 7'],
                timeout=10, input="from stdin\n", cwd="/tmp", env={"X": "a b;c"})
    assert res.rc == 7
    assert res.stdout.split("\n")[:4] == ["pvmh1", "/tmp", "a b;c", "from stdin"]
    assert res.stderr == "oops\n"


def test_connection_is_reused_and_reopened_when_the_host_drops_it(runners):
    r = runners("pvmh2")
    assert r.run(["true"], timeout=10).rc == 0
    t1 = r._client.get_transport()
    assert r.run(["true"], timeout=10).rc == 0
    assert r._client.get_transport() is t1 and r.connects == 1
    # The host drops the connection: kill this session's sshd process from inside it.
    with pytest.raises(SshError, match="connection lost"):
        r.run(["sh", "-c", "kill -KILL $PPID"], timeout=10)
    deadline = time.monotonic() + 5
    while r.connected() and time.monotonic() < deadline:
        time.sleep(0.01)
    res = r.run(["hostname"], timeout=10)
    assert (res.rc, res.stdout, r.connects) == (0, "pvmh2\n", 2)


def test_timeout_gives_rc_124_in_time(runners):
    r = runners()
    t = time.monotonic()
    res = r.run(["sleep", "30"], timeout=0.5)
    assert res.rc == 124 and "timed out" in res.stderr
    assert time.monotonic() - t < 2
    r.run(["pkill", "-x", "sleep"], timeout=10)


def test_unknown_host_refused_then_accepted_explicitly(lab, runners, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    with pytest.raises(SshError) as e:
        runners("pvmh3", known_hosts=str(kh)).run(["true"], timeout=10)
    assert e.value.code == PvmCantStart
    msg = str(e.value)
    assert "pvmh3: host key of 10.77" in msg and "not known" in msg and "PVM_SSH_ACCEPT_NEW=1" in msg
    assert "\n" not in msg
    # Explicit accept-new records the key; afterwards the default (refusing) policy connects.
    assert runners("pvmh3", known_hosts=str(kh), accept_new=True).run(["true"], timeout=10).rc == 0
    assert lab.hosts[2].addr in kh.read_text()
    assert runners("pvmh3", known_hosts=str(kh)).run(["true"], timeout=10).rc == 0


def test_changed_host_key_always_refused(lab, runners, tmp_path):
    with open(lab.known_hosts) as f:
        lines = f.read().splitlines()
    h1_addr = lab.hosts[0].addr
    # pvmh1's entry now carries pvmh2's key: the host key "changed".
    forged = [f"pvmh1,{h1_addr} " + " ".join(lines[1].split()[1:])] + lines[1:]
    kh = tmp_path / "known_hosts"
    kh.write_text("\n".join(forged) + "\n")
    for accept_new in (False, True):
        with pytest.raises(SshError) as e:
            runners("pvmh1", known_hosts=str(kh), accept_new=accept_new).run(["true"], timeout=10)
        assert e.value.code == PvmCantStart
        assert "HOST KEY CHANGED" in str(e.value) and "ssh-keygen -R" in str(e.value)
    assert kh.read_text() == "\n".join(forged) + "\n"


def test_wrong_key_refused(lab, runners, tmp_path):
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    # IdentityFile accumulates across blocks (as in ssh), so a config of its own:
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host pvmh1\n    HostName {lab.hosts[0].addr}\n    User root\n"
                   f"    IdentityFile {key}\n    IdentitiesOnly yes\n"
                   f"    UserKnownHostsFile {lab.known_hosts}\n")
    cfg = str(cfg)
    r = runners("pvmh1", config=cfg)
    assert r.settings["identityfile"][0] == str(key)
    with pytest.raises(SshError) as e:
        r.run(["true"], timeout=10)
    assert e.value.code == PvmCantStart
    assert "authentication as root failed" in str(e.value) and str(key) in str(e.value)


def test_password_so_pw(lab, runners):
    asked = []

    def prompt(host, user):
        asked.append((host, user))
        return "lab-pw-1"

    r = runners("pvmh4", password=prompt)
    assert r.run(["hostname"], timeout=10).stdout == "pvmh4\n"
    r._client.close()  # a reconnect reuses the password: asked once
    assert r.run(["true"], timeout=10).rc == 0
    assert asked == [("pvmh4", "root")]
    with pytest.raises(SshError) as e:
        runners("pvmh4", password="wrong").run(["true"], timeout=10)
    assert "authentication as root failed (tried password)" in str(e.value)


def test_unreachable_refused_unresolvable(lab, runners, tmp_path):
    net = lab.subnet.rsplit(".", 1)[0]
    cfg = write_config(lab, tmp_path, f"Host ghost\n    HostName {net}.250\n"
                                      f"Host closed\n    HostName {lab.hosts[0].addr}\n    Port 2222\n")
    t = time.monotonic()
    with pytest.raises(SshError) as e:
        runners("ghost", config=cfg, connect_timeout=1.0).run(["true"], timeout=10)
    assert time.monotonic() - t < 4
    assert e.value.code == PvmCantStart and str(e.value).startswith("Can't start pvmd: ghost: ")
    with pytest.raises(SshError) as e:
        runners("closed", config=cfg).run(["true"], timeout=10)
    assert "connection refused" in str(e.value)
    with pytest.raises(SshError) as e:
        runners("no-such-host.invalid", config=cfg).run(["true"], timeout=10)
    assert e.value.code == PvmNoHost and "cannot resolve" in str(e.value)


def test_dead_host_does_not_stall_the_others(lab, runners, tmp_path):
    net = lab.subnet.rsplit(".", 1)[0]
    cfg = write_config(lab, tmp_path, f"Host ghost\n    HostName {net}.251\n")
    hosts = ["ghost", "pvmh1", "pvmh2", "pvmh3"]
    done: dict[str, float] = {}
    t0 = time.monotonic()

    def one(h):
        try:
            return runners(h, config=cfg, connect_timeout=2.0).run(["hostname"], timeout=10).stdout
        except SshError as e:
            return str(e)
        finally:
            done[h] = time.monotonic() - t0

    with ThreadPoolExecutor(5) as ex:
        out = dict(zip(hosts, ex.map(one, hosts)))
    assert [out[h] for h in hosts[1:]] == ["pvmh1\n", "pvmh2\n", "pvmh3\n"]
    assert "ghost" in out["ghost"]
    assert max(done[h] for h in hosts[1:]) < 1.5 <= done["ghost"] < 4


def test_proxyjump_through_another_host(lab, runners, tmp_path):
    cfg = write_config(lab, tmp_path, f"Host via1-pvmh2\n    HostName {lab.hosts[1].addr}\n"
                                      f"    ProxyJump pvmh1\n    User root\n"
                                      f"    IdentityFile {lab.key}\n    UserKnownHostsFile {lab.known_hosts}\n")
    r = runners("via1-pvmh2", config=cfg)
    res = r.run(["sh", "-c", "hostname; echo $SSH_CLIENT"], timeout=10)
    assert res.stdout.split()[:2] == ["pvmh2", lab.hosts[0].addr]  # came from pvmh1


def test_host_dying_after_join_is_host_fail(lab, runners):
    r = runners("pvmh4", password="lab-pw-1")
    assert r.run(["true"], timeout=10).rc == 0
    # Kill the host's sshd (PID 1 of that host): the connection and the host's processes end.
    pid1 = [p for p in labmod._netns_pids(lab.hosts[3].netns)]
    subprocess.run(["ip", "netns", "exec", lab.hosts[3].netns, "kill", "-KILL", *map(str, pid1)])
    with pytest.raises(SshError) as e:
        r.run(["true"], timeout=5)
    assert e.value.code == PvmHostFail and str(e.value).count("\n") == 0
    assert [st for _, st in labmod.status(lab.dir)][3].startswith("down")


INJECTIONS_HOST = ["pvmh1;touch /tmp/pwned-h", "pvmh1 touch", "-oProxyCommand=touch /tmp/pwned-h",
                   "$(touch /tmp/pwned-h)", "pvmh1`touch /tmp/pwned-h`", "pvmh1|x", "pvmh1\n"]
INJECTIONS_LOGIN = ["root$(id)", "root;touch /tmp/pwned-l", "-lroot", "ro ot", "`id`"]
INJECTIONS_PATH = ["/bin/true;touch /tmp/pwned-p", "/bin/true`touch /tmp/pwned-p`",
                   "$(touch /tmp/pwned-p)", "/bin/true && touch /tmp/pwned-p", "-x", "a\nb", "/tmp/a|b"]


def test_injection_attempts_fail_as_bad_values_and_create_nothing(lab, runners):
    for host in INJECTIONS_HOST:
        with pytest.raises(SshError) as e:
            runners(host)
        assert e.value.code == PvmBadParam and "bad host name" in str(e.value)
    for login in INJECTIONS_LOGIN:
        with pytest.raises(SshError) as e:
            runners("pvmh1", login=login)
        assert e.value.code == PvmBadParam and "bad login" in str(e.value)
    r = runners("pvmh1")
    for p in INJECTIONS_PATH:
        with pytest.raises(SshError) as e:
            r.run([p, "-maxsegs=1"], timeout=10)
        assert e.value.code == PvmBadParam and "bad program" in str(e.value)
        with pytest.raises(SshError) as e:
            r.run(["/bin/true"], timeout=10, cwd=p)
        assert e.value.code == PvmBadParam and "bad directory" in str(e.value)
    assert r.connects == 0, "bad values are refused before any connection"
    # Arguments are data, never code: quoted words reach the program unchanged.
    res = r.run(["printf", "%s\\n", "$(touch /tmp/pwned-a)", "`id`", "a;b"], timeout=10)
    assert res.stdout.splitlines() == ["$(touch /tmp/pwned-a)", "`id`", "a;b"]
    for h in lab.hosts[:3]:
        assert "pwned" not in ssh(lab, h.name, "ls -A /tmp").stdout
    assert not [f for f in os.listdir("/tmp") if f.startswith("pwned")]


def test_remote_command_quoting():
    assert remote_command(["/v/bin/pvm_shmd", "-name=a b"], cwd="~/run") == \
        "cd -- run && exec /v/bin/pvm_shmd '-name=a b'"
    assert remote_command(["~/bin/pvm_shmd"]) == "exec bin/pvm_shmd"
    with pytest.raises(SshError):
        remote_command(["x"], env={"A;B": "1"})


def bare_config(lab, tmp_path) -> str:
    """Alias, address, user and known_hosts only: the key must come from elsewhere."""
    cfg = tmp_path / "bare_config"
    cfg.write_text(f"Host pvmh1\n    HostName {lab.hosts[0].addr}\n    User root\n"
                   f"    UserKnownHostsFile {lab.known_hosts}\n")
    return str(cfg)


def test_key_from_home_ssh(lab, runners, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    shutil.copy(lab.key, home / ".ssh" / "id_ed25519")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    assert runners("pvmh1", config=bare_config(lab, tmp_path)).run(["hostname"], timeout=10).stdout == "pvmh1\n"
    (home / ".ssh" / "id_ed25519").unlink()
    with pytest.raises(SshError, match="authentication as root failed"):
        runners("pvmh1", config=bare_config(lab, tmp_path)).run(["true"], timeout=10)


def test_key_from_agent(lab, runners, tmp_path, monkeypatch):
    if not shutil.which("ssh-agent"):
        pytest.skip("ssh-agent not installed")
    sock = str(tmp_path / "agent.sock")
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.01)
        env = dict(os.environ, SSH_AUTH_SOCK=sock)
        subprocess.run(["ssh-add", "-q", lab.key], env=env, check=True, timeout=10,
                       capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh keys: only the agent can help
        assert runners("pvmh1", config=bare_config(lab, tmp_path)).run(["hostname"], timeout=10).stdout == "pvmh1\n"
    finally:
        agent.terminate()
        agent.wait(timeout=10)

"""SshRunner: run a program on a remote host over SSH (paramiko), as PVM's master did with rsh.

What users expect of ``ssh`` holds here too:

- ``~/.ssh/config`` (or the file named by ``$PVM_SSH_CONFIG``, as ``ssh -F``): host aliases,
  HostName, User, Port, IdentityFile, IdentitiesOnly, UserKnownHostsFile, StrictHostKeyChecking,
  ProxyCommand and ProxyJump;
- keys from the agent, from ``~/.ssh`` and from IdentityFile; a password (``so=pw``) asked for
  at the console prompt;
- host keys checked against the known_hosts files (user's and ``/etc/ssh/ssh_known_hosts``):
  an unknown host is refused unless accept-new was asked for (``$PVM_SSH_ACCEPT_NEW=1`` or
  ``StrictHostKeyChecking accept-new``), a changed key is always refused.

One connection per host is opened lazily and reused by every later command; a dropped one is
re-opened once, transparently, when a command could not even be started on it. Every
blocking step has a timeout. The remote command line is built with shlex only, and host
names, logins, programs and directories that could smuggle in shell syntax are refused.
"""
from __future__ import annotations

import getpass
import logging
import os
import re
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import paramiko

from pvmconsole.runner import LineStream, LookupTimeout, Result, bounded, getaddrinfo, local_fqdn
from shmd import hostenv
from shmd.errors import PvmBadParam, PvmCantStart, PvmError, PvmHostFail, PvmNoHost

CONNECT_TIMEOUT = 10.0  # TCP connect and key exchange
AUTH_TIMEOUT = 15.0  # all authentication attempts together
OPEN_TIMEOUT = 10.0  # opening a session on an open connection
CONFIG_ENV = "PVM_SSH_CONFIG"  # an ssh_config used instead of ~/.ssh/config (like ssh -F)
ACCEPT_NEW_ENV = "PVM_SSH_ACCEPT_NEW"  # "1": add unknown host keys to known_hosts
USER_CONFIG = "~/.ssh/config"
SYSTEM_CONFIG = "/etc/ssh/ssh_config"
USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")

_HOST_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,252}$|^[0-9A-Fa-f:.]+(%[A-Za-z0-9]+)?$")
_LOGIN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,31}$")
_PATH_RE = re.compile(r"^[A-Za-z0-9_./+,:@%=~][A-Za-z0-9_./+,:@%=~-]*$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_JUMPS = 5
#: sshd runs the command as ``$SHELL -c COMMAND``: one argument, which the kernel refuses
#: (E2BIG) over MAX_ARG_STRLEN (128 KiB, its NUL included).
MAX_COMMAND = 128 * 1024 - 1
KILL_GRACE = 2.0  # a timed-out command's process group: TERM, then KILL after this
KILL_TIMEOUT = KILL_GRACE + 8.0  # the whole remote kill, connection included
# The first line a tracked command writes on stderr: the remote shell's pid, which `exec`
# hands on to the program. sshd makes every session's command a session (and process
# group) leader, so this is also the group a timed-out command is killed by.
_PID_MARK = "pvm-console-pid:"
# (at the start of a line, not necessarily the first: a login shell's rc file may write first)
_PID_RE = re.compile(r"^" + re.escape(_PID_MARK) + r"(\d+)\n", re.MULTILINE)
# Run on the host with the group's id: TERM, up to KILL_GRACE s for it to go, then KILL;
# exit 0 only when the group is gone (or was already). `kill -s SIG -- -PGID` is the form
# every sh takes (dash refuses `kill -TERM -- -PGID`).
_KILL_GROUP = """\
if ! out=$(kill -s TERM -- -{pgid} 2>&1); then
    case $out in *"o such process"*) exit 0 ;; esac
    echo "$out" >&2; exit 1
fi
i=0
while [ $i -lt {polls} ] && kill -s 0 -- -{pgid} 2>/dev/null; do sleep 0.1; i=$((i+1)); done
kill -s KILL -- -{pgid} 2>/dev/null && sleep 0.1
if kill -s 0 -- -{pgid} 2>/dev/null; then echo "process group {pgid} survived KILL" >&2; exit 1; fi
exit 0
"""

# paramiko logs transport errors itself; the console reports them once, as one line.
#: The end of a "connection lost" message: what happened and what comes next.
_LOST = "the host or its sshd went away; the next command connects again"

_log = logging.getLogger("paramiko")
if not os.environ.get("PVM_SSH_DEBUG"):
    _log.setLevel(logging.CRITICAL)


#: What an SshError was about (its ``kind``), for callers that must tell "the host can't be
#: reached" from "it refused us": a stop that fails for the first does not for the second.
UNREACHABLE = "unreachable"  # no address, no answer, refused, handshake failed, connection lost
HOSTKEY = "hostkey"  # the host's key is unknown or changed: refused
AUTH = "auth"  # the host answered but would not let us log in
CONFIG = "config"  # our side: an ssh_config that can't be used


class SshError(PvmError):
    """A per-host SSH failure; ``str()`` is one line naming the host and the reason.
    ``kind``: UNREACHABLE, HOSTKEY, AUTH, CONFIG, or "" (a bad value, refused before any
    connection)."""

    def __init__(self, code: int, detail: str | None = None, kind: str = ""):
        super().__init__(code, detail)
        self.kind = kind


def _bad(what: str, value: object, why: str) -> SshError:
    return SshError(PvmBadParam, f"bad {what} {value!r}: {why}")


def check_host(name: str) -> str:
    """A host name or address usable on an ssh command line, else SshError(PvmBadParam)."""
    if not isinstance(name, str) or not _HOST_RE.fullmatch(name):
        raise _bad("host name", name, "use letters, digits, '.', '_', '-' (no leading '-')")
    return name


def check_login(login: str) -> str:
    if not isinstance(login, str) or not _LOGIN_RE.fullmatch(login):
        raise _bad("login", login, "use letters, digits, '.', '_', '-' (no leading '-')")
    return login


def check_path(what: str, path: str) -> str:
    """A remote program or directory: no shell syntax, no leading '-', so it can't be a
    command or an option even where some tool re-parses it."""
    if not isinstance(path, str) or not _PATH_RE.fullmatch(path) or "~" in path[1:]:
        raise _bad(what, path, "no spaces, quotes, '$', '`', ';', '&', '|', '<', '>', "
                               "'*', '?', '!' or a leading '-'")
    return path


def check_expandable(what: str, path: str) -> list[str]:
    """A hostfile path the remote host expands (``dx=``, ``wd=``): a plain path around
    ``$NAME``/``${NAME}`` and nothing else, else SshError(PvmBadParam) naming it.
    Returns its parts: literal, name, literal, ... (names at odd places)."""
    parts = hostenv.VARIABLE.split(path)  # literal, {name}, name, literal, ...
    literals, names = parts[0::3], [a or b for a, b in zip(parts[1::3], parts[2::3])]
    if not names:
        check_path(what, path)
        return [path]
    try:
        check_path(what, "x".join(literals))  # the text around them
    except PvmError:
        raise _bad(what, path, "only $NAME or ${NAME} and a plain path (no spaces, quotes, '`', "
                               "';', '&', '|', '<', '>', '*', '?', '!' or a leading '-')") from None
    out = [literals[0]]
    for name, literal in zip(names, literals[1:]):
        out += [name, literal]
    return out


def _remote_program(path: str) -> str:
    """The program word of a remote command, quoted. A hostfile's ``dx=`` may hold
    ``$NAME``/``${NAME}``, which PVM's remote shell expanded on that host: each becomes
    ``"${NAME}"`` (its value is substituted and never re-parsed: no word splitting, no
    globbing, no command), the rest single-quoted as any word."""
    parts = check_expandable("program", path)
    words = [shlex.quote(_remote_path(parts[0])) if parts[0] else ""]
    for name, literal in zip(parts[1::2], parts[2::2]):
        words.append(f'"${{{name}}}"' + (shlex.quote(literal) if literal else ""))
    return "".join(words)


def _remote_path(path: str) -> str:
    """``~/x`` -> ``x``: ssh commands start in the home directory, and a quoted ``~``
    would not be expanded by the remote shell."""
    if path == "~":
        return "."
    return path[2:] or "." if path.startswith("~/") else path


def remote_command(argv: Sequence[str], cwd: str | None = None,
                   env: Mapping[str, str] | None = None) -> str:
    """The one string sshd hands to the login shell; every word quoted by shlex."""
    if not argv:
        raise _bad("command", list(argv), "empty")
    program = _remote_program(argv[0])
    words: list[str] = []
    if cwd:
        words += ["cd", "--", shlex.quote(_remote_path(check_path("directory", cwd))), "&&"]
    words.append("exec")
    if env:
        words.append("env")
        for k, v in env.items():
            if not _ENV_RE.fullmatch(k):
                raise _bad("environment name", k, "use letters, digits and '_'")
            words.append(shlex.quote(f"{k}={v}"))
    words.append(" ".join([program, shlex.join(argv[1:])]) if argv[1:] else program)
    return " ".join(words)


_prompt_lock = threading.Lock()


def console_password(host: str, user: str) -> str:
    """Ask for a password on the console's terminal (PVM's rexec prompt), one prompt at a
    time. Without a terminal it fails: reading stdin would eat a command script."""
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        raise SshError(PvmCantStart, f"{host}: so=pw needs a terminal to ask for the password",
                       AUTH) from None
    with _prompt_lock:
        try:
            return getpass.getpass(f"Password ({host}:{user}): ")
        except (EOFError, KeyboardInterrupt):
            raise SshError(PvmCantStart, f"{host}: no password given", AUTH) from None


def _fp(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}" if hasattr(key, "fingerprint") else key.get_name()


class _Refuse(paramiko.MissingHostKeyPolicy):
    """Unknown host: refuse, saying how to accept it."""

    def __init__(self, alias: str, files: list[str]):
        self.alias, self.files = alias, files

    def missing_host_key(self, client, hostname, key):
        raise SshError(PvmCantStart, (
            f"{self.alias}: host key of {hostname} not known ({_fp(key)}); refused. "
            f"To accept it: ssh {self.alias} once, or set {ACCEPT_NEW_ENV}=1 "
            f"(checked: {', '.join(self.files) or 'no known_hosts file'})"), HOSTKEY)


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """Unknown host: record its key in the user's known_hosts (never replaces a key)."""

    def __init__(self, path: str):
        self.path = path

    def missing_host_key(self, client, hostname, key):
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)


def _connect_any(infos: list[tuple], timeout: float) -> socket.socket:
    """A TCP connection to the first address of *infos* that takes it (as
    socket.create_connection, which would look the name up again, unbounded), all
    within *timeout* s; the last error if none does."""
    deadline = time.monotonic() + timeout
    last: OSError = OSError("no address")
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            sock.connect(addr)
            return sock
        except OSError as e:
            sock.close()
            last = e
            if time.monotonic() >= deadline:
                break
    raise last


CANONICAL_TIMEOUT = 2.0  # CanonicalizeHostname: all the CanonicalDomains looked up together


class _SshConfig(paramiko.SSHConfig):
    """paramiko's SSHConfig without its unbounded local look-ups. paramiko expands ``%l``
    (this host's FQDN, socket.getfqdn) for every IdentityFile and ControlPath value, used or
    not: 5 s or more each where the local name does not resolve. Here ``%l`` is expanded only
    where a value has it, with local_fqdn (looked up once, bounded), and CanonicalizeHostname's
    look-ups get CANONICAL_TIMEOUT s in all."""

    def _allowed_tokens(self, key):
        return [t for t in super()._allowed_tokens(key) if t != "%l"]

    def _tokenize(self, config, target_hostname, key, value):
        if isinstance(value, str) and "%l" in value and "%l" in super()._allowed_tokens(key):
            value = value.replace("%l", local_fqdn() or socket.gethostname())
        return super()._tokenize(config, target_hostname, key, value)

    def canonicalize(self, hostname, options, domains):
        parent = super().canonicalize
        try:
            return bounded(lambda: parent(hostname, options, domains), CANONICAL_TIMEOUT,
                           f"canonicalizing {hostname}")
        except LookupTimeout:
            if options.get("canonicalizefallbacklocal", "yes") == "yes":
                return hostname
            raise paramiko.config.CouldNotCanonicalize(hostname) from None


class SshRunner:
    """Runs argv on one remote host over one reused SSH connection (the Runner protocol)."""

    def __init__(
        self,
        host: str,
        *,
        login: str | None = None,
        address: str | None = None,
        port: int | None = None,
        password: str | Callable[[str, str], str] | None = None,
        config: str | None = None,
        known_hosts: str | None = None,
        accept_new: bool | None = None,
        proxy_jump: str | None = None,
        connect_timeout: float | None = None,
        auth_timeout: float = AUTH_TIMEOUT,
        _depth: int = 0,
    ):
        """*host*: the name as written (an ssh_config alias works); *address*: PVM's ``ip=``,
        used instead of the name; *password*: a string, or ``f(host, user)`` asked once
        (so=pw); *config*: an ssh_config file (default ``$PVM_SSH_CONFIG``, else
        ~/.ssh/config and /etc/ssh/ssh_config)."""
        self.host = check_host(host)
        self.login = check_login(login) if login else None
        self.address = check_host(address) if address else None
        if port is not None and not (isinstance(port, int) and 0 < port < 65536):
            raise _bad("port", port, "use 1..65535")
        self.port = port
        self._password = password
        self._config_files = [config] if config else (
            [os.environ[CONFIG_ENV]] if os.environ.get(CONFIG_ENV) else [USER_CONFIG, SYSTEM_CONFIG])
        self._known_hosts = known_hosts
        self._accept_new = accept_new
        self._proxy_jump = proxy_jump
        self.connect_timeout = connect_timeout
        self.auth_timeout = auth_timeout
        self._depth = _depth
        self._lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None
        self._jump: SshRunner | None = None
        self._ever_connected = False
        #: Number of connections opened so far (reuse keeps it at 1).
        self.connects = 0
        self.settings = self._resolve()

    # -- configuration -------------------------------------------------------------
    def _resolve(self) -> dict:
        """HostName, port, user, keys, proxy and known_hosts for this host, as ssh would
        (no name look-up here that could block: see _SshConfig)."""
        cfg = _SshConfig()
        for path in self._config_files:
            path = os.path.expanduser(path)
            try:
                with open(path) as f:
                    cfg.parse(f)
            except FileNotFoundError:
                if path == os.path.expanduser(os.environ.get(CONFIG_ENV, "")):
                    raise SshError(PvmCantStart, (
                        f"{self.host}: ssh config {path} not found ({CONFIG_ENV} names it; was "
                        f"it removed, with its pvm-lab?): set {CONFIG_ENV} to an existing file, "
                        f"or unset it to use ~/.ssh/config"), CONFIG) from None
            except Exception as e:  # a syntax error in someone's ssh_config
                raise SshError(PvmCantStart, f"{self.host}: bad ssh config {path}: {e}", CONFIG) from None
        try:
            c = cfg.lookup(self.address or self.host)
        except Exception as e:
            raise SshError(PvmCantStart, f"{self.host}: ssh config lookup failed: {e}", CONFIG) from None
        hostname = check_host(c.get("hostname", self.address or self.host))
        user = self.login or c.get("user") or getpass.getuser()
        check_login(user)
        try:
            port = self.port or int(c.get("port", 22))
        except ValueError:
            raise _bad("Port in ssh config for", self.host, c.get("port")) from None
        if self.connect_timeout is None:  # an explicit timeout wins, then ssh_config's
            try:
                self.connect_timeout = float(c.get("connecttimeout", CONNECT_TIMEOUT))
            except ValueError:
                raise _bad("ConnectTimeout in ssh config for", self.host, c["connecttimeout"]) from None
        only = str(c.get("identitiesonly", "no")).lower() == "yes"
        strict = str(c.get("stricthostkeychecking", "yes")).lower()
        user_kh = ([self._known_hosts] if self._known_hosts else
                   c.get("userknownhostsfile", "").split() or list(USER_KNOWN_HOSTS))
        global_kh = c.get("globalknownhostsfile", "").split() or list(GLOBAL_KNOWN_HOSTS)
        accept_new = self._accept_new
        if accept_new is None:
            accept_new = os.environ.get(ACCEPT_NEW_ENV) == "1" or strict in ("accept-new", "no", "off")
        jump = self._proxy_jump if self._proxy_jump is not None else c.get("proxyjump")
        if jump and jump.lower() == "none":
            jump = None
        proxy_cmd = c.get("proxycommand")
        if proxy_cmd and proxy_cmd.lower() == "none":
            proxy_cmd = None
        return {
            "hostname": hostname, "port": port, "user": user,
            "identityfile": [os.path.expanduser(p) for p in c.get("identityfile", [])],
            "identitiesonly": only, "accept_new": bool(accept_new),
            "user_known_hosts": [os.path.expanduser(p) for p in user_kh],
            "global_known_hosts": [os.path.expanduser(p) for p in global_kh],
            "proxyjump": jump, "proxycommand": proxy_cmd,
        }

    def _name_hint(self) -> str:
        """What to do about a name that does not resolve: for a host of a pvm-lab that is up,
        while the lab's ssh_config is not the one in use, set PVM_SSH_CONFIG to it."""
        from pvmconsole.lab import lab_with_host  # (the lab is optional; it only reads files)

        lab = lab_with_host(self.host)
        used = {os.path.realpath(os.path.expanduser(p)) for p in self._config_files}
        if lab is not None and os.path.realpath(lab.ssh_config) not in used:
            return (f"{self.host} is a host of the pvm-lab in {lab.dir}, whose names only its "
                    f"ssh_config knows: set {CONFIG_ENV}={lab.ssh_config}")
        return ("check the name, or give its address (ip= in the hostfile, HostName in "
                "ssh_config)")

    # -- connection ------------------------------------------------------------------
    def _where(self) -> str:
        s = self.settings
        return f"{s['hostname']}:{s['port']}"

    def _connect_limit(self) -> float:
        """ConnectTimeout as settled by the ssh config (the default before it is read)."""
        return CONNECT_TIMEOUT if self.connect_timeout is None else self.connect_timeout

    def _open_socket(self, deadline: float):
        """TCP (with TCP_NODELAY: paramiko doesn't set it, ~40 ms per round trip), a
        ProxyCommand, or a channel through the ProxyJump host."""
        s = self.settings
        left = max(0.1, min(self._connect_limit(), deadline - time.monotonic()))
        if s["proxycommand"]:
            try:
                return paramiko.ProxyCommand(s["proxycommand"])
            except Exception as e:
                raise SshError(PvmCantStart, f"{self.host}: ProxyCommand failed: {e}", UNREACHABLE) from None
        if s["proxyjump"]:
            return self._jump_channel(s["proxyjump"], deadline)
        # The name look-up is bounded too (getaddrinfo ignores socket timeouts: a name no DNS
        # server answers for would hold us for the resolver's 5 s or more).
        began = time.monotonic()
        try:
            infos = getaddrinfo(s["hostname"], s["port"], left)
        except LookupTimeout:
            raise SshError(PvmNoHost, (
                f"{self.host}: cannot resolve {s['hostname']}: no answer from the name server within "
                f"{left:.3g} s: " + self._name_hint()), UNREACHABLE) from None
        except (socket.gaierror, UnicodeError) as e:
            why = getattr(e, "strerror", None) or str(e)
            raise SshError(PvmNoHost, f"{self.host}: cannot resolve {s['hostname']} ({why}): "
                                         + self._name_hint(), UNREACHABLE) from None
        left = max(0.1, left - (time.monotonic() - began))
        try:
            sock = _connect_any(infos, left)
        except TimeoutError:
            raise SshError(PvmCantStart, f"{self.host}: no answer from {self._where()} "
                                         f"within {left:.3g} s (host down, or a firewall dropping "
                                         f"the connection?)", UNREACHABLE) from None
        except ConnectionRefusedError:
            raise SshError(PvmCantStart, f"{self.host}: connection refused by {self._where()} "
                                         f"(no sshd there?)", UNREACHABLE) from None
        except OSError as e:
            raise SshError(PvmCantStart, f"{self.host}: cannot reach {self._where()}: "
                                         f"{e.strerror or e} (check its address and the network)",
                           UNREACHABLE) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _jump_channel(self, spec: str, deadline: float):
        if self._depth >= _MAX_JUMPS:
            raise SshError(PvmCantStart, f"{self.host}: more than {_MAX_JUMPS} ProxyJump hops (a loop?)",
                           CONFIG)
        hops = spec.split(",")
        m = re.match(r"^(?:([^@]+)@)?([^:@]+)(?::(\d+))?$", hops[-1].strip())
        if not m:
            raise _bad("ProxyJump", spec, "use [user@]host[:port][,...]")
        user, host, port = m.group(1), m.group(2), m.group(3)
        self._jump = SshRunner(
            host, login=user, port=int(port) if port else None, password=None,
            config=self._config_files[0] if len(self._config_files) == 1 else None,
            accept_new=self._accept_new, proxy_jump=",".join(hops[:-1]) or None,
            connect_timeout=self.connect_timeout, auth_timeout=self.auth_timeout,
            _depth=self._depth + 1)
        t = self._jump._transport(deadline)
        s = self.settings
        try:
            return t.open_channel("direct-tcpip", (s["hostname"], s["port"]), ("127.0.0.1", 0),
                                  timeout=max(0.1, deadline - time.monotonic()))
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise SshError(PvmCantStart, f"{self.host}: jump host {host} cannot reach "
                                         f"{self._where()}: {e}", UNREACHABLE) from None

    def _connect(self, deadline: float) -> paramiko.SSHClient:
        s = self.settings
        client = paramiko.SSHClient()
        checked = []
        for path in s["global_known_hosts"] + s["user_known_hosts"]:
            if os.path.exists(path):
                try:
                    client.load_system_host_keys(path)  # read-only: we never rewrite them
                except Exception as e:
                    raise SshError(PvmCantStart, f"{self.host}: unreadable known_hosts {path}: {e}",
                                   CONFIG) from None
                checked.append(path)
        if s["accept_new"]:
            client.set_missing_host_key_policy(_AcceptNew(s["user_known_hosts"][0]))
        else:
            client.set_missing_host_key_policy(_Refuse(self.host, checked))
        password = None
        if self._password is not None:
            password = self._password if isinstance(self._password, str) else self._password(self.host, s["user"])
            self._password = password  # asked once; reconnects reuse it
        sock = self._open_socket(deadline)
        left = max(0.1, min(self._connect_limit(), deadline - time.monotonic()))
        began = time.monotonic()
        try:
            client.connect(
                s["hostname"], port=s["port"], username=s["user"], sock=sock,
                timeout=left, banner_timeout=left, auth_timeout=self.auth_timeout,
                channel_timeout=OPEN_TIMEOUT,
                password=password,
                key_filename=(s["identityfile"] or None) if password is None else None,
                # so=pw means the password, as PVM's rexec; else keys as ssh would try them
                allow_agent=password is None and not s["identitiesonly"],
                look_for_keys=password is None and not s["identitiesonly"],
            )
        except SshError:
            client.close()
            raise
        except paramiko.BadHostKeyException as e:
            client.close()
            raise SshError(PvmCantStart, (
                f"{self.host}: HOST KEY CHANGED for {e.hostname}: got {_fp(e.key)}, known_hosts "
                f"has {_fp(e.expected_key)}; refused (if the change is expected: "
                f"ssh-keygen -R {e.hostname})"), HOSTKEY) from None
        except paramiko.AuthenticationException as e:
            client.close()
            how = "password" if password is not None else "keys from " + (
                ", ".join(s["identityfile"]) if s["identitiesonly"] else "agent, ~/.ssh"
                + (", " + ", ".join(s["identityfile"]) if s["identityfile"] else ""))
            fix = ("check the password" if password is not None else
                   f"put your public key in ~{s['user']}/.ssh/authorized_keys on {self.host} "
                   f"(ssh-copy-id), or name the key with IdentityFile")
            raise SshError(PvmCantStart, f"{self.host}: authentication as {s['user']} failed "
                                         f"(tried {how}): {str(e).rstrip('.')}; {fix}", AUTH) from None
        except (paramiko.SSHException, EOFError, OSError) as e:
            why = str(e) or type(e).__name__
            if "No authentication methods" in why:
                client.close()
                raise SshError(PvmCantStart, f"{self.host}: authentication as {s['user']} failed: no key "
                                             f"(agent, ~/.ssh, IdentityFile) and no password", AUTH) from None
            err = self._handshake_error(e, client.get_transport(), left, time.monotonic() - began)
            client.close()
            raise err from None
        self.connects += 1
        self._ever_connected = True
        return client

    def _handshake_error(self, e: BaseException, t: paramiko.Transport | None, limit: float,
                         elapsed: float) -> SshError:
        """One line for a connection that failed between TCP and authentication, in words
        (paramiko's own texts: "No existing session", "...banner[Errno 104] ..."), naming
        the host, the stage, and what to look at."""
        where, port = self._where(), self.settings["port"]
        banner = bool(t is not None and t.remote_version)
        kex = bool(t is not None and t.initial_kex_done)
        stage = ("SSH banner exchange" if not banner else
                 "SSH key exchange" if not kex else "SSH session set-up")
        causes: list[BaseException] = []
        c: BaseException | None = e
        while c is not None and len(causes) < 8:  # paramiko wraps the socket error it met
            causes.append(c)
            c = c.__cause__ or c.__context__
        if any(isinstance(c, ConnectionResetError) for c in causes):
            return SshError(PvmCantStart, (
                f"{self.host}: connection reset by peer ({where}) during the {stage}: sshd there "
                f"dropped the connection (its MaxStartups, a tcp_wrappers or firewall rule, or "
                f"not an sshd on port {port}); its log on {self.host} says why"), UNREACHABLE)
        timed_out = any(isinstance(c, (socket.timeout, TimeoutError)) for c in causes)
        if timed_out or (not kex and elapsed >= 0.9 * limit):
            what = "no SSH banner came" if not banner else "the key exchange did not finish"
            return SshError(PvmCantStart, (
                f"{self.host}: SSH handshake with {where} timed out after {round(limit, 1):g} s: {what} "
                f"(the host accepted the TCP connection but no sshd answered: is it hung or "
                f"overloaded, or is something else listening on port {port}? For a slow host "
                f"raise ConnectTimeout in its ssh_config entry)"), UNREACHABLE)
        if any(isinstance(c, EOFError) for c in causes) or (t is not None and not t.is_active()
                                                            and not banner):
            return SshError(PvmCantStart, (
                f"{self.host}: {where} closed the connection during the {stage} (not an sshd on "
                f"port {port}, or sshd refused us: MaxStartups, tcp_wrappers; its log on "
                f"{self.host} says why)"), UNREACHABLE)
        why = str(e) or type(e).__name__
        return SshError(PvmCantStart, f"{self.host}: SSH handshake with {where} failed during "
                                      f"the {stage}: {why}", UNREACHABLE)

    def _transport(self, deadline: float) -> paramiko.Transport:
        """The open connection, (re)connecting if there is none or it died."""
        with self._lock:
            t = self._client.get_transport() if self._client else None
            if t is None or not t.is_active():
                self._drop_locked()
                self._client = self._connect(deadline)
                t = self._client.get_transport()
            return t

    def _drop_locked(self) -> None:
        if self._client:
            self._client.close()
            self._client = None
        if self._jump:
            self._jump.close()
            self._jump = None

    def connect(self, timeout: float) -> None:
        """Open the connection now if there is none (SshError as run would give): what
        addresses() reads."""
        self._transport(time.monotonic() + timeout)

    def connected(self) -> bool:
        t = self._client.get_transport() if self._client else None
        return bool(t and t.is_active())

    def addresses(self) -> tuple[str, str] | None:
        """(the host's address, ours as it sees us) on the open connection; None if
        there is none or it goes through a jump host (no socket of ours to ask)."""
        t = self._client.get_transport() if self._client else None
        sock = getattr(t, "sock", None)
        try:
            return sock.getpeername()[0], sock.getsockname()[0]  # type: ignore[union-attr]
        except (AttributeError, OSError, IndexError, TypeError):
            return None

    def _open_channel(self, deadline: float) -> paramiko.Channel:
        """A new session channel on the (re)used connection. A connection that fails
        before the command started is re-opened once: nothing ran yet, so it is safe."""
        for attempt in (1, 2):
            try:
                t = self._transport(deadline)
            except SshError as e:
                if self._ever_connected and e.code == PvmCantStart:
                    raise SshError(PvmHostFail, e.detail, e.kind) from None
                raise
            try:
                return t.open_session(timeout=max(0.1, min(OPEN_TIMEOUT, deadline - time.monotonic())))
            except (paramiko.SSHException, EOFError, OSError) as e:
                with self._lock:
                    self._drop_locked()
                if attempt == 2 or time.monotonic() >= deadline:
                    raise SshError(PvmHostFail, f"{self.host}: connection lost ("
                                                f"{e or type(e).__name__}): {_LOST}", UNREACHABLE) from None
        raise AssertionError("unreachable")

    # -- Runner protocol ------------------------------------------------------------------
    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        input: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        """Run argv on the host; rc 124 on timeout, after the program's process group was
        killed there (TERM, KILL after KILL_GRACE s), so nothing it started keeps running.
        Connection failures raise SshError (PvmCantStart before the host was ever reached,
        PvmHostFail after)."""
        command = self._command(argv, cwd, env)  # refuses bad values before any network
        deadline = time.monotonic() + timeout
        ch = self._open_channel(deadline)
        return self._exec(ch, f"echo {_PID_MARK}$$ >&2; {command}", input, deadline, timeout,
                          argv[0], track=True)

    def _command(self, argv: Sequence[str], cwd: str | None, env: Mapping[str, str] | None) -> str:
        """remote_command, refused when the remote shell could not take it (E2BIG)."""
        command = remote_command(argv, cwd, env)
        size = len(command.encode(errors="surrogateescape")) + 64  # + the pid line's prefix
        if size > MAX_COMMAND:
            raise SshError(PvmBadParam, (
                f"{self.host}: the command line for {argv[0]} would be {size} bytes, over the "
                f"{MAX_COMMAND} the remote shell takes (MAX_ARG_STRLEN): export fewer or shorter "
                f"variables"))
        return command

    def _kill_group(self, pgid: int) -> str:
        """Kill process group *pgid* on the host (what a timed-out command started); a
        few words on how it went, for the timeout message."""
        script = _KILL_GROUP.format(pgid=int(pgid), polls=int(KILL_GRACE * 10))
        try:
            deadline = time.monotonic() + KILL_TIMEOUT
            ch = self._open_channel(deadline)
            r = self._exec(ch, remote_command(["sh", "-c", script]), None, deadline, KILL_TIMEOUT,
                           "kill", track=False)
        except SshError as e:
            return f"; it may still run there (could not kill it: {e.detail or e})"
        if r.rc != 0:
            return f"; it may still run there (kill exited {r.rc}: {' '.join(r.stderr.split())[:200]})"
        return "; stopped it and what it started there"

    def start(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> LineStream:
        """Start argv on the host on a channel of its own (other commands go on over the
        same connection) and return its merged stdout/stderr line by line. *timeout*
        bounds connecting and starting; closing the stream closes the channel."""
        command = self._command(argv, cwd, env)
        deadline = time.monotonic() + timeout
        ch = self._open_channel(deadline)
        ch.set_combine_stderr(True)
        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), ch.get_transport().close)
        watchdog.daemon = True
        watchdog.start()
        try:
            ch.exec_command(command)
            ch.shutdown_write()
        except (paramiko.SSHException, EOFError, OSError) as e:
            with self._lock:
                self._drop_locked()
            raise SshError(PvmHostFail, f"{self.host}: connection lost starting {argv[0]}: {e}",
                           UNREACHABLE) from None
        finally:
            watchdog.cancel()
        ch.settimeout(None)

        def read() -> bytes:
            return ch.recv(65536)

        return LineStream(read, on_close=ch.close, name=f"start {self.host}")

    def _exec(self, ch: paramiko.Channel, command: str, input: str | None,
              deadline: float, timeout: float, prog: str, *, track: bool) -> Result:
        """Run *command* on *ch*. With *track*, the command's first stderr line is its
        pid (see run): taken off stderr, and used to kill its group on a timeout."""
        # exec_command waits for sshd's answer without a timeout: a watchdog closes the
        # connection if it never comes (the host is then gone anyway).
        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), ch.get_transport().close)
        watchdog.daemon = True
        watchdog.start()
        try:
            ch.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as e:
            with self._lock:
                self._drop_locked()
            raise SshError(PvmHostFail, f"{self.host}: connection lost starting "
                                        f"{prog}: {e}", UNREACHABLE) from None
        finally:
            watchdog.cancel()
        out, err = bytearray(), bytearray()
        try:
            try:
                if input:
                    ch.settimeout(max(0.1, deadline - time.monotonic()))
                    ch.sendall(input.encode())
                ch.shutdown_write()  # remote stdin: EOF, so nothing waits for us
            except (OSError, paramiko.SSHException):
                # the command ended before it read its input (a dx= that does not exist:
                # the shell's "No such file" and 127): what it said and its status say
                # why; a connection that died instead is found out below
                if not (ch.closed or ch.eof_received or ch.exit_status_ready()):
                    raise
            ch.settimeout(0.0)
            while True:
                got = False
                while ch.recv_ready():
                    out += ch.recv(65536)
                    got = True
                while ch.recv_stderr_ready():
                    err += ch.recv_stderr(65536)
                    got = True
                if ch.exit_status_ready() and ch.eof_received and not got:
                    break
                if ch.closed and not (ch.recv_ready() or ch.recv_stderr_ready()):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    ch.close()  # sshd does not kill a command whose channel closes: we do
                    text = err.decode(errors="replace")
                    m = _PID_RE.search(text) if track else None
                    if m:
                        err = bytearray((text[:m.start()] + text[m.end():]).encode())
                        done = self._kill_group(int(m.group(1)))
                    elif track:
                        done = "; it may still run there (its pid never came)"
                    else:
                        done = ""
                    return Result(124, out.decode(errors="replace"), err.decode(errors="replace")
                                  + f"{self.host}: {prog} timed out after {timeout:g} s{done}\n")
                if not got:
                    if ch.eof_received:
                        ch.status_event.wait(min(left, 0.05))
                    else:
                        select.select([ch], [], [], min(left, 0.05))
            rc = ch.recv_exit_status() if ch.exit_status_ready() else -1
        except (TimeoutError, paramiko.SSHException, EOFError, OSError) as e:
            with self._lock:
                self._drop_locked()
            raise SshError(PvmHostFail, f"{self.host}: connection lost ({e or type(e).__name__}): "
                                        f"{_LOST}", UNREACHABLE) from None
        finally:
            ch.close()
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        if track:
            m = _PID_RE.search(stderr)
            stderr = stderr[:m.start()] + stderr[m.end():] if m else stderr
        if rc == -1:
            t = self._client.get_transport() if self._client else None
            if t is not None and t.is_active():
                # sshd sent exit-signal (paramiko keeps only exit-status): the program was
                # killed by a signal; ssh(1) reports that as 255 too.
                return Result(255, stdout, stderr + f"{self.host}: {prog} "
                                                     f"was killed by a signal\n")
            with self._lock:
                self._drop_locked()
            raise SshError(PvmHostFail, f"{self.host}: connection lost (no exit status): {_LOST}",
                           UNREACHABLE)
        return Result(rc, stdout, stderr)

    def close(self) -> None:
        with self._lock:
            self._drop_locked()

    def __repr__(self) -> str:
        return f"SshRunner({self.host!r} -> {self.settings['user']}@{self._where()})"

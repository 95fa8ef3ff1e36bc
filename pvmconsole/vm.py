"""The virtual machine as the console drives it: start or attach, add, delete,
mstat, stat, reset and halt, over the host table (vmtable.py) and one HostLink
per host (hostlink.py)."""
from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass

import zmq

from pvmconsole import hostfile as hf
from pvmconsole.hostlink import MANUAL_HINT, HostLink, is_local, link_for, net_line
from pvmconsole.netlink import NetLink, ask_all
from pvmconsole.runner import LocalRunner
from pvmconsole.view import clocks
from pvmconsole.vmtable import HostRecord, TableStore, VmTable, lowest_free_index
from shmd.errors import (
    PvmBadParam,
    PvmDenied,
    PvmDupHost,
    PvmError,
    PvmHostFail,
    PvmNoHost,
    PvmSysErr,
)

PARALLEL_STARTS = 5  # PVM started up to 5 hosts at once (RSHNPLL)
PROGRESS_EVERY = 1.0  # seconds between progress lines while hosts are starting
MASTER = 1  # the console's own host has index 1 (dtid 40000)

LinkFactory = Callable[[str, Mapping[str, str], str], HostLink]


@dataclass
class Outcome:
    """What happened to one host in a multi-host operation."""

    name: str
    error: int | None = None  # PVM error code, None = success
    detail: str = ""  # why, for stderr
    dtid: int | None = None
    #: the whole stderr message after "NAME: ", when PVM's error name would mislead
    #: (a stop that could not reach the host is no "Can't start pvmd")
    message: str = ""


def _attempt(name: str, fn: Callable[[], object]) -> Outcome:
    try:
        fn()
        return Outcome(name)
    except PvmError as e:
        return Outcome(name, e.code, e.detail or "")


# SshError kinds (ssh.py; not imported: the console runs without paramiko too)
_UNREACHABLE = ("unreachable",)
_REFUSED = {"hostkey": "SSH refused", "auth": "SSH refused", "config": "SSH can't be used"}


def _stop_failure(name: str, e: PvmError, *, unreachable: str, refused: str) -> Outcome:
    """The outcome of a stop (delete, halt) that failed with *e*. When SSH could not reach
    *name* (Host failed) or was refused there (host key unknown or changed, login refused,
    ssh_config unusable: Permission denied, with SSH's own what-to-do), the message says
    the stop failed and why, then *unreachable* or *refused*: what became of the host."""
    kind = getattr(e, "kind", "")
    detail = (e.detail or str(e)).removeprefix(f"{name}: ")
    if kind in _UNREACHABLE:
        return Outcome(name, PvmHostFail, e.detail or "", message=(
            f"could not stop its pvm_shmd: the host is unreachable ({detail}); {unreachable}"))
    if kind in _REFUSED:
        return Outcome(name, PvmDenied, e.detail or "", message=(
            f"could not stop its pvm_shmd: {_REFUSED[kind]}: {detail}; {refused}"))
    return Outcome(name, e.code, e.detail or "")


def _by_hand(o: Outcome) -> bool:
    """A so=ms host whose daemon the console could not reach to stop it."""
    return o.error == PvmHostFail and MANUAL_HINT in o.detail


def _parallel(fn: Callable, items: Sequence, progress: Callable[[list[int]], None] | None = None
              ) -> list:
    """fn over items, up to PARALLEL_STARTS at once, results in item order. While any
    is still running, *progress* gets the indexes of those not done, every
    PROGRESS_EVERY seconds."""
    if len(items) <= 1 and progress is None:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=max(1, min(PARALLEL_STARTS, len(items)))) as pool:
        futures = [pool.submit(fn, i) for i in items]
        while progress is not None:
            _, pending = wait(futures, timeout=PROGRESS_EVERY)
            if not pending:
                break
            progress([k for k, f in enumerate(futures) if not f.done()])
        return [f.result() for f in futures]


#: "1" when a VM is made: its hosts' pvm_netd do not encrypt (a trusted private network);
#: they still authenticate every connection with the VM's secret
TRUSTED_ENV = "PVM_NET_TRUSTED"


def _info(h: HostRecord) -> dict[str, object]:
    """What a host's pvm_netd tells its tasks of host *h* (pvm_config, spawn's placement)."""
    return {"name": h.name, "arch": h.arch, "speed": h.speed, "dsig": h.dsig}


class VirtualMachine:
    """One virtual machine (VM id) seen from a console."""

    def __init__(self, vmid: str, *, master_name: str | None = None, debug: str = "0",
                 link_factory: LinkFactory = link_for):
        self.vmid = vmid
        #: called with a line of progress while `add` waits for hosts (interactive only)
        self.progress: Callable[[str], None] | None = None
        self.master_name = master_name or socket.gethostname()
        mask = int(debug, 0)  # PVM's -d: hex 0x.., octal 0.. or decimal
        self.daemon_args = [f"-debug={mask}"] if mask else []
        self.store = TableStore(vmid)
        self.link_factory = link_factory
        self._links: dict[str, HostLink] = {}
        self._netkeys: list[str] | None = None  # the VM's keys, read from the table once
        self._nettrusted = False
        self._net_given: dict[str, tuple] = {}  # host -> the pvm_netd already given its link
        #: host -> (its options, its link being connected): see _reach
        self._reaching: dict[str, tuple[dict[str, str], Future[HostLink]]] = {}
        self.notes: list[str] = []  # things worth telling the user (stderr)

    # -- plumbing ---------------------------------------------------------------
    def link(self, host: HostRecord) -> HostLink:
        if host.name not in self._links:
            self._links[host.name] = self.link_factory(host.name, host.options, self.vmid)
        link = self._links[host.name]
        if link.netd is None and len(host.net) == 2 and (host.net[0], host.net[1]) != self._net_given.get(host.name):
            if self._netkeys is None:
                t = self.store.load()
                self._netkeys, self._nettrusted = (t.netkeys, t.nettrusted) if t is not None else ([], False)
            if self._netkeys:
                link.netd = NetLink(str(host.net[0]), int(host.net[1]), self._netkeys, self._nettrusted)
                self._net_given[host.name] = (host.net[0], host.net[1])  # once per pvm_netd
        return link

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()

    def table(self) -> VmTable:
        """The current table (another console may have changed it)."""
        t = self.store.load()
        if t is None:
            raise PvmError(PvmSysErr, "the virtual machine is gone (halted by another console?)")
        return t

    @contextmanager
    def changing(self) -> Iterator[VmTable]:
        """Load the table under the lock, let the caller change it, save it."""
        with self.store.locked():
            t = self.table()
            yield t
            self.store.save(t)

    def hosts(self, names: Sequence[str] = ()) -> list[HostRecord]:
        """Hosts by name (all when none given); PvmNoHost for an unknown one."""
        t = self.table()
        if not names:
            return list(t.hosts)
        out = []
        for n in names:
            h = t.host(n)
            if h is None:
                raise PvmError(PvmNoHost, n)
            out.append(h)
        return out

    def _start_host(self, name: str, index: int, options: Mapping[str, str], t: VmTable | None = None) -> HostRecord:
        """Start host *name*'s daemon as host *index*. With table *t* (a VM that has its
        keys), its pvm_netd too: by the same program start where the link can
        (pvm_shmd -net=), else by its own (_start_nets)."""
        early = self._reaching.pop(name, None)
        link: HostLink = early[1].result() if early is not None and early[0] == dict(options) else \
            self.link_factory(name, options, self.vmid)
        self._links[name] = link
        net = None
        if t is not None and t.netkeys and not link.manual:
            bind, me = link.net_addresses()
            own = {"name": name, "ep": options.get("ep"), "wd": options.get("wd"),
                   **({"speed": int(options["sp"])} if options.get("sp") else {})}  # (the rest: the daemon's)
            net = (bind, net_line(t.netkeys, self._peers(t, index, me), t.nettrusted, own))
        info = link.start(index, name, self.daemon_args, net=net)
        sp = options.get("sp")
        rec = HostRecord(
            name=name, index=index, arch=str(info.get("arch", "?")),
            speed=int(sp) if sp else int(info.get("speed", 1000)),  # type: ignore[call-overload]
            dsig=int(info.get("dsig", 0)), pid=int(info["pid"]),  # type: ignore[call-overload]
            options=dict(options),
        )
        if t is None:
            return rec
        got = info.get("netd")
        if net is not None and isinstance(got, int):
            rec.net = [net[0], got]
            rec.clock = clocks.at_start(t, rec, isinstance(link.runner, LocalRunner))
        elif isinstance(got, PvmError):
            self._no_net(name, got)
        else:
            self._start_nets(t, [rec])
        return rec

    def _reach(self, pool: ThreadPoolExecutor, entries: Sequence[hf.HostEntry]) -> None:
        """Open the SSH connections of *entries* in *pool* while the master starts: they
        do not need it (their start does: the master's pvm_netd is in its line), and a
        connection costs the console 50-100 ms of key exchange and authentication, on top
        of importing paramiko for the first one. _start_host takes each link (or the
        error that its connection gave, which its start would have given too)."""
        def open_link(name: str, options: Mapping[str, str]) -> HostLink:
            link = self.link_factory(name, options, self.vmid)
            try:
                if not link.manual:
                    link.net_addresses()  # (connects)
            except BaseException:
                link.close()
                raise
            return link

        for e in entries:
            if e.name not in self._reaching and not is_local(e.name):
                self._reaching[e.name] = (dict(e.options), pool.submit(open_link, e.name, e.options))

    def _unreached(self) -> None:
        """Close the links _reach opened that no start took (the master failed)."""
        for _, f in self._reaching.values():
            if f.cancel():
                continue
            try:
                f.result().close()
            except PvmError:
                pass
        self._reaching.clear()

    def _no_net(self, name: str, e: PvmError) -> None:
        self.notes.append(f"{name}: no network process, its tasks reach only tasks of their host ({e})")

    @staticmethod
    def _peers(t: VmTable, index: int, me: str | None) -> list[list[object]]:
        """The hosts of *t* with a pvm_netd but host *index*, as its pvm_netd is told them;
        the master at *me*, its address as that host sees it (None: as recorded)."""
        return [[h.index, me if h.index == MASTER and me is not None else h.net[0], h.net[1], _info(h)]
                for h in t.hosts if h.net and h.index != index]

    def _start_nets(self, t: VmTable, recs: Sequence[HostRecord]) -> None:
        """Start the pvm_netd of each of *recs* (their daemons run; the master's first,
        the others in parallel: each is told the hosts already in *t*, and the master's
        pvm_netd tells every host of every other that joins). A host whose pvm_netd does
        not start stays in the VM: its tasks reach only tasks of their own host."""
        if not t.netkeys:
            return  # a table from before pvm_netd: its hosts have none
        def one(r: HostRecord) -> Outcome:
            return _attempt(r.name, lambda: self._start_net(t, r))

        first = [r for r in recs if r.index == MASTER]
        for batch in (first, [r for r in recs if r.index != MASTER]):
            for o in _parallel(one, batch):
                if o.error is not None:
                    self._no_net(o.name, PvmError(o.error, o.detail))

    def _start_net(self, t: VmTable, rec: HostRecord) -> None:
        link = self.link(rec)
        bind, me = link.net_addresses()
        own = {**_info(rec), "ep": rec.options.get("ep"), "wd": rec.options.get("wd")}
        rec.net = [bind, link.start_net(rec.index, bind, net_line(t.netkeys, self._peers(t, rec.index, me),
                                                                  t.nettrusted, own))]
        rec.clock = clocks.at_start(t, rec, isinstance(link.runner, LocalRunner))

    def prune(self) -> list[str]:
        """Drop the hosts the master's pvm_netd counts as down (their pvm_netd silent
        for netd.DEAD s: PVM's host table drops a host that failed); their names. Nothing
        is dropped when the master has no pvm_netd or it does not answer."""
        t = self.table()
        master = next((h for h in t.hosts if h.index == MASTER), None)
        if master is None or not any(h.net for h in t.hosts if h.index != MASTER):
            return []
        link = self.link(master)
        if link.netd is None:
            return []
        try:
            got = link.netd.ask("config")
        except PvmError:
            return []
        down = set(got.get("down", [])) if isinstance(got, dict) else set()
        dead = [h.name for h in t.hosts if h.index in down and h.index != MASTER and h.net]
        if dead:
            with self.changing() as t:
                t.hosts = [h for h in t.hosts if h.name not in dead]
            for n in dead:
                self._drop_link(n)
        return dead

    # -- start / attach -----------------------------------------------------------
    def open(self, hosts: hf.Hostfile | None) -> bool:
        """Attach to the running VM, or start one (master + the hostfile's hosts).
        Returns True when attached to an already running VM."""
        with self.store.locked():
            t = self.store.load()
            if t is not None:
                if self._alive(t):
                    if hosts is not None:
                        self.notes.append(f"virtual machine already running; hostfile {hosts.path} ignored")
                    return True
                self._clear_stale(t)
            self._create(hosts)
            return False

    def _alive(self, t: VmTable) -> bool:
        master = next((h for h in t.hosts if h.index == MASTER), None)
        if master is None:
            return False
        try:
            state = self.link(master).stat()
        except PvmError:
            return False
        master.pid = int(state.get("pid", master.pid))  # type: ignore[call-overload]
        return True

    def _clear_stale(self, t: VmTable) -> None:
        """A table whose master daemon is dead: stop what is left of it, drop it."""
        self.notes.append(f"stale virtual machine table {self.store.path} (its pvm_shmd is gone): replaced")
        for h in t.hosts:
            try:
                self.link(h).stop()
            except PvmError:
                pass  # that host is unreachable or already clean
        self.close()
        os.unlink(self.store.path)

    def _create(self, hosts: hf.Hostfile | None) -> None:
        entries = list(hosts.entries) if hosts else []
        me = self.master_name
        own = next((e for e in entries if is_local(e.name)), None)  # the master's own line
        master_opts = dict(own.options if own else (hosts.defaults if hosts else {}))
        if master_opts.get("so") == "ms":  # as PVM: the master starts itself, in the foreground
            del master_opts["so"]
            if own is not None:
                self.notes.append(f"{me}: so=ms ignored for the master host")
        t = VmTable(self.vmid, hosts=[], hostfile=hosts.path if hosts else "",
                    defaults=dict(hosts.defaults) if hosts else {},
                    known={e.name: dict(e.options) for e in entries if e is not own},
                    netkeys=[k.decode("ascii") for k in zmq.curve_keypair()],
                    nettrusted=os.environ.get(TRUSTED_ENV, "") == "1")
        self._netkeys, self._nettrusted = t.netkeys, t.nettrusted
        todo = [e for e in entries if e is not own and not e.defer]
        with ThreadPoolExecutor(max_workers=PARALLEL_STARTS) as pool:
            self._reach(pool, todo)
            try:
                try:
                    master = self._start_host(me, MASTER, master_opts, t)  # and its pvm_netd
                except PvmError as e:
                    if e.code != PvmDupHost:
                        raise
                    # a daemon of this VM id without a table: stale, never trusted
                    self.notes.append(f"stale pvm_shmd for this virtual machine on {me}: replaced")
                    self._links[me].stop()
                    master = self._start_host(me, MASTER, master_opts, t)
                t.hosts.append(master)
                self.store.save(t)  # the master is up: the VM exists even if other hosts fail
                for o in self._add_entries(t, todo):
                    if o.error is not None:
                        self.notes.append(f"{o.name}: {PvmError(o.error, o.detail)}")
            finally:
                self._unreached()
        self.store.save(t)

    # -- add / delete -------------------------------------------------------------
    def _add_entries(self, t: VmTable, entries: Sequence[hf.HostEntry]) -> list[Outcome]:
        """Start the given hosts into table *t* (in parallel); the caller saves."""
        plan: list[tuple[hf.HostEntry, int | None, Outcome | None]] = []
        taken = {h.name for h in t.hosts}
        local_taken = any(is_local(h.name) for h in t.hosts)
        used = {h.index for h in t.hosts}
        for e in entries:
            if e.name in taken or (is_local(e.name) and local_taken):
                plan.append((e, None, Outcome(e.name, PvmDupHost, "already in the virtual machine")))
                continue
            taken.add(e.name)
            local_taken |= is_local(e.name)
            index = lowest_free_index(used)
            used.add(index)
            plan.append((e, index, None))

        def start(item: tuple[hf.HostEntry, int | None, Outcome | None]) -> tuple[Outcome, HostRecord | None]:
            e, index, done = item
            if done is not None:
                return done, None
            assert index is not None
            try:
                rec = self._start_host(e.name, index, e.options, t)  # its pvm_netd too: at once,
            except PvmError as err:  # overlapping the other hosts' starts
                return Outcome(e.name, err.code, err.detail or ""), None
            return Outcome(e.name, dtid=rec.dtid), rec

        def report(waiting: list[int]) -> None:
            if self.progress is not None:
                names = " ".join(plan[k][0].name for k in waiting)
                self.progress(f"add: {len(plan) - len(waiting)} of {len(plan)} host(s) done, "
                              f"still starting: {names}")

        results = _parallel(start, plan, report if self.progress is not None else None)
        for _, rec in results:
            if rec is not None:
                t.hosts.append(rec)
        t.hosts.sort(key=lambda h: h.index)
        return [o for o, _ in results]

    def add(self, specs: Sequence[str]) -> list[Outcome]:
        """`add`: each spec is a host line; unset options come from the hostfile's
        entry of that name, else from its last ``*`` defaults."""
        parsed: list[hf.HostEntry] = []
        errors: list[hf.LineError] = []
        for i, spec in enumerate(specs, start=1):
            entry, defaults, errs = hf.parse_line(spec, path="add", lineno=i)
            if defaults is not None:
                errs = errs + [hf.LineError("add", i, spec, "defaults (*) can't be added")]
            elif entry is None and not errs:
                errs = [hf.LineError("add", i, spec, "missing host name")]
            errors.extend(errs)
            if entry is not None:
                parsed.append(entry)
        if errors:  # nothing half-made: a bad spec starts nothing
            raise PvmError(PvmBadParam, "; ".join(str(e) for e in errors))
        with self.changing() as t:
            full = [hf.HostEntry(e.name, {**t.known.get(e.name, t.defaults), **e.options},
                                 e.line, False, e.overload) for e in parsed]
            return self._add_entries(t, full)

    def delete(self, names: Sequence[str]) -> list[Outcome]:
        """`delete`: stop each host's daemon and drop it from the table. The
        master can't be deleted (PVM: Bad parameter); use `halt`."""
        out = []
        with self.changing() as t:
            # the hosts are stopped in parallel (each its own SSH connection or pvm_netd)
            todo = list({h.name: h for n in names if (h := t.host(n)) is not None and h.index != MASTER}.values())

            def stop(h: HostRecord) -> PvmError | None:
                try:
                    self._stop_host(h)
                    return None
                except PvmError as e:
                    return e

            failed = dict(zip((h.name for h in todo), _parallel(stop, todo)))
            for n in names:
                h = t.host(n)
                if h is None:
                    out.append(Outcome(n, PvmNoHost))
                    continue
                if h.index == MASTER:
                    out.append(Outcome(n, PvmBadParam, "the master host can't be deleted (use halt)"))
                    continue
                o = Outcome(n)
                e = failed.get(n)
                if e is not None:
                    o = _stop_failure(
                        n, e, unreachable="dropped from the virtual machine; if its pvm_shmd still "
                                          f"runs there, stop it there with {self._stop_command()}",
                        refused=f"{n} stays in the virtual machine: delete it again once SSH to "
                                f"it works")
                # a host without a daemon, or unreachable, is dropped as well; one that refused
                # us keeps its place (its daemon may run: a later delete can stop it)
                if o.error is None or o.error == PvmHostFail:
                    t.hosts.remove(h)
                    self._drop_link(n)
                    if not (_by_hand(o) or o.message):
                        o = Outcome(n)  # (no daemon there: deleted; a hand-started or
                        #                  unreachable one is dropped with its message)
                out.append(o)
        return out

    def _drop_link(self, name: str) -> None:
        link = self._links.pop(name, None)
        if link is not None:
            link.close()

    # -- state ------------------------------------------------------------------
    def asked(self, hosts: Sequence[HostRecord], op: str) -> dict[str, object]:
        """What the pvm_netd of each of *hosts* answers to *op* ("stat", "tasks"), all
        asked at once (netlink.ask_all), by host name; a host without one, or whose
        pvm_netd fails (its link then runs the programs), is left out."""
        links = [(h.name, self.link(h)) for h in hosts]
        links = [(n, link) for n, link in links if link.netd is not None]
        out: dict[str, object] = {}
        for (n, link), got in zip(links, ask_all([link.netd for _, link in links if link.netd], op)):
            if isinstance(got, PvmError):
                link.netd = None
            else:
                out[n] = got
        return out

    def mstat(self, names: Sequence[str]) -> list[Outcome]:
        """Each named host's state: ok if its pvm_netd says its pvm_shmd runs (a look at
        the shared memory there, no request to the daemon), else from its daemon's state
        over SSH (PvmHostFail if it is not running); PvmNoHost if not in the VM."""
        t = self.table()
        hosts = {n: h for n in names if (h := t.host(n)) is not None}
        pre = self.asked(list(hosts.values()), "alive")

        def stat(h: HostRecord) -> Outcome:
            if pre.get(h.name) is True:
                return Outcome(h.name)
            return _attempt(h.name, lambda: self.link(h).stat())

        return [Outcome(n, PvmNoHost) if (h := hosts.get(n)) is None else stat(h) for n in names]

    def stat(self, names: Sequence[str] = ()) -> list[tuple[str, dict | PvmError]]:
        """Each host's daemon state (pvm_shmd_stat --json), or the error."""
        hosts = self.hosts(names)
        pre = self.asked(hosts, "stat")

        def one(h: HostRecord) -> tuple[str, dict | PvmError]:
            try:
                return h.name, self.link(h).stat(asked=pre.get(h.name))
            except PvmError as e:
                return h.name, e

        # the hosts whose pvm_netd answered need no thread; the others run programs in parallel
        rest = dict(_parallel(one, [h for h in hosts if h.name not in pre]))
        return [one(h) if h.name in pre else (h.name, rest[h.name]) for h in hosts]

    # -- reset / halt -------------------------------------------------------------
    def _stop_host(self, h: HostRecord) -> None:
        """Kill the host's joined tasks and its pvm_netd, then stop its daemon (IPC
        objects removed: none is still attached once they are gone)."""
        link = self.link(h)
        stopped = link.stop_all()
        if stopped is not None:
            if not stopped:
                raise PvmError(PvmHostFail, f"the pvm_shmd of {h.name} did not stop")
            return
        try:
            tasks = link.stat(every=True).get("tasks", [])
        except PvmError as e:
            if getattr(e, "kind", ""):  # SSH could not reach the host or was refused: so
                raise  # would every later step (and each would wait for it again)
            tasks = []  # no daemon: nothing joined to kill
        pids = [int(x["pid"]) for x in tasks if isinstance(x, dict) and x.get("pid")]  # type: ignore[attr-defined]
        link.kill_tasks(pids)
        if not link.stop():
            raise PvmError(PvmHostFail, f"no pvm_shmd was running on {h.name}")

    def reset(self) -> list[Outcome]:
        """Kill every task and daemon, then start a fresh daemon on every host."""
        with self.changing() as t:
            def one(h: HostRecord) -> Outcome:
                try:
                    try:
                        self._stop_host(h)
                    except PvmError as e:
                        if e.code != PvmHostFail or MANUAL_HINT in (e.detail or ""):
                            raise  # (a hand-started daemon we can't reach: no new dialogue)
                    fresh = self._start_host(h.name, h.index, h.options)
                    h.pid, h.arch, h.dsig, h.state = fresh.pid, fresh.arch, fresh.dsig, "running"
                    h.net = []
                    return Outcome(h.name, dtid=h.dtid)
                except PvmError as e:
                    h.state = "failed"
                    return Outcome(h.name, e.code, e.detail or "")
            out = _parallel(one, list(t.hosts))
            self._start_nets(t, [h for h in t.hosts if h.state == "running"])
            return out

    def halt(self) -> list[Outcome]:
        """Kill every task and daemon, remove every IPC object and the table."""
        with self.store.locked():
            t = self.store.load()
            hosts = t.hosts if t else []
            out = _parallel(lambda h: self._halt_host(h), hosts)
            self.store.remove()
        self.close()
        # a host whose daemon was already gone is no failure; one we could not reach is
        return [o for o in out if o.error not in (None, PvmHostFail) or _by_hand(o) or o.message]

    def _halt_host(self, h: HostRecord) -> Outcome:
        try:
            self._stop_host(h)
            return Outcome(h.name)
        except PvmError as e:
            then = f"if its pvm_shmd still runs there, stop it there with {self._stop_command()}"
            return _stop_failure(h.name, e, unreachable=then, refused=then)

    def _stop_command(self) -> str:
        """What stops this VM's daemon on a host, for messages."""
        return "pvm_shmd_stat --stop" + (f" -vmid={self.vmid}" if self.vmid else "")


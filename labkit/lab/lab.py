"""The running lab: three namespaces, two veth pairs, a backend server.

``Lab`` realizes a :class:`~labkit.core.topology.Topology`.  Every step that
creates something registers its undo step first (kernel selftest style), and
``close()`` runs them in reverse, also after an exception or Ctrl-C.  Each
resource is recorded in the run's state file so ``labkit clean`` can remove
it after a SIGKILL.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Callable, ClassVar, Sequence

from labkit.core.errors import LabkitError
from labkit.core.topology import Topology, new_run_id
from labkit.host import netns
from labkit.host.state import RunState, remove_path

log = logging.getLogger(__name__)

NEIGH_PERMANENT = 0x80


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT/SIGTERM while tearing down, so a second Ctrl-C cannot leave
    half a lab behind; the held signal is re-raised afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {s: signal.signal(s, lambda n, f: got.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if got:
            signal.raise_signal(got[0])


class Lab:
    """Build with ``with Lab(...) as lab:``; everything is gone after the block."""
    #: labs this process began to build, and those it then took down completely (the
    #: CLI says "the lab was torn down" on a Ctrl-C only when the two agree)
    opened: ClassVar[int] = 0
    torn_down: ClassVar[int] = 0

    def __init__(self, *, endpoint_cidr: str, ports: Sequence[int] = (80,),
                 topology: Topology | None = None, server: bool = True) -> None:
        self.topo = topology or Topology(new_run_id())
        self.endpoint_cidr = str(ipaddress.ip_network(endpoint_cidr))
        self.ports = tuple(ports)
        self.want_server = server
        self.state = RunState(self.topo.run_id)
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self.macs: dict[str, str] = {}
        self.server: subprocess.Popen | None = None
        self.tmpdir: str | None = None
        self.workdir: str | None = None
        self._closed = False

    # -- roles -------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.topo.run_id

    @property
    def client(self) -> str:
        return self.topo.client_ns

    @property
    def node(self) -> str:
        return self.topo.node_ns

    @property
    def backend(self) -> str:
        return self.topo.backend_ns

    # -- undo stack --------------------------------------------------------
    def defer(self, what: str, fn: Callable[[], None]) -> None:
        """Register an undo step; steps run in reverse order at close()."""
        self._undo.append((what, fn))

    def run(self, ns: str, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        return netns.run(ns, argv, **kw)

    def mkdtemp(self, tag: str) -> str:
        """A new directory inside the run's private work directory (removed at close())."""
        assert self.workdir is not None, "the lab is open"
        d = tempfile.mkdtemp(prefix=f"{tag}-", dir=self.workdir)
        self.defer(f"remove {d}", lambda: remove_path(d))
        return d

    def _make_workdir(self) -> None:
        """The run's work directory: ``labkit-<run id>-<random>`` in the temp
        dir, made by ``mkdtemp`` (an unpredictable name, created exclusively,
        0700), so no other user can plant or read anything in it; every temp
        directory and mount point of the run lives inside."""
        self.workdir = tempfile.mkdtemp(prefix=f"labkit-{self.run_id}-")
        self.state.add("paths", self.workdir)
        wd = self.workdir

        def remove() -> None:
            remove_path(wd)
            self.state.discard("paths", wd)
        self.defer(f"remove {wd}", remove)

    # -- build -------------------------------------------------------------
    def __enter__(self) -> "Lab":
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        Lab.opened += 1
        netns.require_root()
        netns.require_tool("ip", "iproute2")
        netns.require_tool("sysctl", "procps")
        self.state.acquire()   # the run's lock, held until close(): `labkit clean` leaves it alone
        self._make_workdir()
        t = self.topo
        for ns in t.namespaces:
            self.state.add("namespaces", ns)

            def delete(ns: str = ns) -> None:
                netns.remove(ns)
                self.state.discard("namespaces", ns)
            self.defer(f"delete namespace {ns}", delete)
            netns.create(ns)
        self.tmpdir = self.mkdtemp("run")
        for ns in t.namespaces:
            # no IPv6 chatter (router solicitations, DAD) on the tap
            netns.sysctl(ns, {"net.ipv6.conf.all.disable_ipv6": 1,
                              "net.ipv6.conf.default.disable_ipv6": 1})
        # the client's own sockets (keepalive, HTTP) take ports above the ones
        # SYN probes use (10000-60999), so a probe never meets their conntrack entry
        netns.sysctl(t.client_ns, {"net.ipv4.ip_local_port_range": "61000 65535"})
        self._loopbacks()
        self._wire()
        netns.sysctl(t.backend_ns, {"net.core.somaxconn": 65535,
                                    "net.ipv4.tcp_max_syn_backlog": 65535,
                                    "net.ipv4.conf.all.rp_filter": 0,
                                    "net.ipv4.ip_nonlocal_bind": 1})
        if self.want_server:
            self.start_server()

    def _wire(self) -> None:
        """Links, addresses, routes and neighbours of all three namespaces,
        and the node's sysctls."""
        t = self.topo
        netns.netlink(t.node_ns, self._links_node)
        netns.netlink(t.client_ns, self._config_client)
        netns.netlink(t.backend_ns, self._config_backend)
        netns.netlink(t.node_ns, self._config_node)
        self._peer_neighbours()
        netns.sysctl(t.node_ns, {"net.ipv6.conf.all.disable_ipv6": 1,
                                 "net.ipv6.conf.default.disable_ipv6": 1,
                                 "net.ipv4.ip_forward": 1,
                                 "net.ipv4.conf.all.rp_filter": 0,
                                 "net.ipv4.conf.default.rp_filter": 0})

    def reset_node(self) -> None:
        """Give the node a brand-new namespace (and new veths).

        Netfilter state a mode leaves behind (a legacy table's hooks, conntrack
        enabled by NAT) lives until its namespace dies; a fresh node per
        programming block keeps every mode's measurement free of the others'.
        Client and backend namespaces, and the backend server, stay.
        """
        t = self.topo

        def unlink(ipr):
            for ifname in (t.node_client_if, t.node_backend_if):
                idx = ipr.link_lookup(ifname=ifname)
                if idx:
                    ipr.link("del", index=idx[0])
        netns.netlink(t.node_ns, unlink)  # veth pairs die with their node end, synchronously
        netns.remove(t.node_ns)
        netns.create(t.node_ns)
        self._wire()

    def _links_node(self, ipr) -> None:
        t = self.topo
        ipr.link("add", ifname=t.node_client_if, kind="veth",
                 peer={"ifname": t.client_if, "net_ns_fd": t.client_ns})
        ipr.link("add", ifname=t.node_backend_if, kind="veth",
                 peer={"ifname": t.backend_if, "net_ns_fd": t.backend_ns})

    def _up(self, ipr, ifname: str, addr: str | None, plen: int | None) -> int:
        idx = ipr.link_lookup(ifname=ifname)[0]
        if addr:
            ipr.addr("add", index=idx, address=addr, prefixlen=plen)
        ipr.link("set", index=idx, state="up")
        self.macs[ifname] = ipr.get_links(idx)[0].get("address")
        return idx

    def _config_client(self, ipr) -> None:
        t = self.topo
        self._up(ipr, t.client_if, t.client_ip, t.prefixlen_client)
        ipr.route("add", dst="0.0.0.0/0", gateway=t.node_client_ip)

    def _config_backend(self, ipr) -> None:
        t = self.topo
        self._up(ipr, t.backend_if, t.backend_ip, t.prefixlen_backend)
        ipr.route("add", dst="0.0.0.0/0", gateway=t.node_backend_ip)

    def _loopbacks(self) -> None:
        netns.netlink(self.client, lambda ipr: self._up(ipr, "lo", None, None))

        def backend(ipr):
            lo = self._up(ipr, "lo", None, None)
            # AnyIP: the backend answers for every endpoint address
            ipr.route("add", dst=self.endpoint_cidr, type="local", table=255, oif=lo, scope=254)
        netns.netlink(self.backend, backend)

    def _config_node(self, ipr) -> None:
        t = self.topo
        self._up(ipr, "lo", None, None)
        n0 = self._up(ipr, t.node_client_if, t.node_client_ip, t.prefixlen_client)
        n1 = self._up(ipr, t.node_backend_if, t.node_backend_ip, t.prefixlen_backend)
        ipr.route("add", dst=self.endpoint_cidr, gateway=t.backend_ip)
        # static neighbours: no ARP in the measured path
        ipr.neigh("add", dst=t.client_ip, lladdr=self.macs[t.client_if], ifindex=n0, state=NEIGH_PERMANENT)
        ipr.neigh("add", dst=t.backend_ip, lladdr=self.macs[t.backend_if], ifindex=n1, state=NEIGH_PERMANENT)

    def _peer_neighbours(self) -> None:
        t = self.topo
        for ns, ifname, ip, mac in ((t.client_ns, t.client_if, t.node_client_ip, self.macs[t.node_client_if]),
                                    (t.backend_ns, t.backend_if, t.node_backend_ip, self.macs[t.node_backend_if])):
            def add(ipr, ifname=ifname, ip=ip, mac=mac):
                idx = ipr.link_lookup(ifname=ifname)[0]
                ipr.neigh("add", dst=ip, lladdr=mac, ifindex=idx, state=NEIGH_PERMANENT)
            netns.netlink(ns, add)

    def start_server(self) -> None:
        self.server = self.spawn(self.backend, [sys.executable, "-m", "labkit.lab.server",
                                                "--ports", ",".join(map(str, self.ports))],
                                 ready="ready")

    # -- processes ---------------------------------------------------------
    def spawn(self, ns: str, argv: Sequence[str], *, ready: str | None = None,
              timeout: float = 90.0, **popen) -> subprocess.Popen:
        """Start a process inside ``ns``; it is killed at close().

        With ``ready``, wait until the process prints that word on stdout.
        """
        popen.setdefault("stdout", subprocess.PIPE if ready else subprocess.DEVNULL)
        popen.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], start_new_session=True,
                                text=True, **popen)
        self.state.add_pid(proc.pid)

        def stop(proc=proc):
            netns.kill_pids([proc.pid])
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
            for s in (proc.stdout, proc.stderr, proc.stdin):
                if s:
                    s.close()
            self.state.discard_pid(proc.pid)
        self.defer(f"stop {argv[0]} in {ns}", stop)
        if ready:
            out = proc.stdout
            assert out is not None, "spawn(ready=...) reads the process's stdout: leave it piped"
            sel = selectors.DefaultSelector()
            sel.register(out, selectors.EVENT_READ)
            line = ""
            if sel.select(timeout):
                line = out.readline()
            sel.close()
            if ready not in line:
                proc.kill()
                err = proc.stderr.read() if proc.stderr is not None and proc.poll() is not None else ""
                raise LabkitError(f"{' '.join(argv[:3])} in {ns} did not start: "
                                  f"{(err or line or 'no output').strip().splitlines()[-1:]}")
        return proc

    # -- teardown ----------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with _signals_held():
            self._unwind()

    def _unwind(self) -> None:
        errors = []
        while self._undo:
            what, fn = self._undo.pop()
            try:
                fn()
            except Exception as exc:  # keep tearing down
                errors.append(f"{what}: {exc}")
                log.warning("teardown step failed: %s: %s", what, exc)
        if not errors:
            self.state.drop()
            Lab.torn_down += 1
        else:
            raise LabkitError("teardown incomplete (run `labkit clean`): " + "; ".join(errors))

"""kube-proxy's IPVS layout.

Layout (after kube-proxy ``pkg/proxy/ipvs``; our own code)::

    kube-ipvs0 (dummy, left down)   every VIP bound as VIP/32: the kernel adds a
                                    `local` route per VIP, so packets to it reach
                                    LOCAL_IN, where IPVS takes them
    IPVS                            one virtual service per VIP:port, scheduler rr,
                                    every endpoint a real server with masquerade
                                    (NAT) forwarding, weight 1
    ipsets                          KUBE-CLUSTER-IP (hash:ip,port: VIP,tcp:port),
                                    KUBE-IPVS-IPS (hash:ip: addresses on kube-ipvs0),
                                    and the sets kube-proxy's always-present rules
                                    match against (empty here)
    iptables nat                    KUBE-SERVICES: mark off-cluster traffic to a
                                    cluster IP for masquerade (one set match), ACCEPT;
                                    KUBE-POSTROUTING: MASQUERADE what was marked
    iptables filter                 KUBE-IPVS-FILTER, KUBE-FORWARD, firewall chains
    sysctls (node ns)               net.ipv4.vs.conntrack=1 (so netfilter NAT sees
                                    IPVS flows), expire_nodest_conn=1,
                                    expire_quiescent_template=1, ip_forward=1

The virtual service is found by a hash lookup (``ip_vs_service_find``): the
cost of a new connection does not grow with the number of services.  Every
match in the iptables part is a single ipset lookup.

Deviations from kube-proxy, all datapath-neutral: the ipsets' ``maxelem`` is
raised above kube-proxy's 65536 when a catalog needs more entries; sets and
rules for features the catalog has no use for (NodePorts, load balancers,
hairpin endpoints, session affinity) are left out where kube-proxy itself
leaves them out for empty sets.  The iptables part goes through the nf_tables
backend (``iptables-nft``), the default of current distributions and of
kube-proxy's iptables wrapper on a fresh node.

``render`` returns one text with a section per loader, each introduced by a
``#: <loader>`` line; ``load`` feeds each section to its loader in order.
"""
from __future__ import annotations

import gzip
import os
import shutil
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from labkit.core.catalog import ServiceCatalog
from labkit.core.errors import LabkitError
from labkit.core.modes import IPVS_SCHEDULERS as SCHEDULERS
from labkit.datapaths.base import Datapath, ProgramResult

if TYPE_CHECKING:  # pragma: no cover
    from labkit.core.catalog import ServiceCatalog
    from labkit.lab.lab import Lab

DUMMY_DEVICE = "kube-ipvs0"
SCHEDULER = "rr"
MASQ_MARK = "0x4000"
IPSET_DEFAULT_MAXELEM = 65536
IPSET_HASHSIZE = 1024
IPTABLES_BACKEND = "nft"

CLUSTER_IP_SET = "KUBE-CLUSTER-IP"
IPVS_IPS_SET = "KUBE-IPVS-IPS"
CLUSTER_IP_COMMENT = "Kubernetes service cluster ip + port for masquerade purpose"
#: sets that kube-proxy's filter rules reference even when they are empty
EMPTY_SETS = (("KUBE-LOAD-BALANCER", "hash:ip,port"),
              ("KUBE-EXTERNAL-IP", "hash:ip,port"),
              ("KUBE-EXTERNAL-IP-LOCAL", "hash:ip,port"),
              ("KUBE-HEALTH-CHECK-NODE-PORT", "bitmap:port"))
HEALTH_CHECK_COMMENT = "Kubernetes health check node port"

#: what kube-proxy's IPVS proxier sets at start (conn_reuse_mode is left
#: alone on kernels >= 5.9; strictARP is off by default)
SYSCTLS = {
    "net.ipv4.vs.conntrack": 1,
    "net.ipv4.vs.expire_nodest_conn": 1,
    "net.ipv4.vs.expire_quiescent_template": 1,
    "net.ipv4.ip_forward": 1,
}

#: schedulers labkit offers: :data:`labkit.core.modes.IPVS_SCHEDULERS` (kube-proxy's
#: default is rr); sh and mh hash the source address *and port* (flags sh-port,
#: mh-port), so every fresh probe tuple is a new draw
SCHEDULER_FLAGS = {"sh": "sh-port", "mh": "mh-port"}
#: iptables backends for the helper rules, in the order tried; "none" when the kernel
#: has neither NAT table (user-mode Linux 7.2): IPVS then runs without them
BACKENDS = ("nft", "legacy")


def section_order(backend: str = IPTABLES_BACKEND) -> tuple[str, ...]:
    tail = (f"iptables-{backend}-restore",) if backend != "none" else ()
    return ("sysctl", "ipset restore", "ip -batch", "ipvsadm -R", *tail)


SECTION_ORDER = section_order()


# ---- rendering (pure) ------------------------------------------------------
def render_sysctl() -> str:
    return "".join(f"{k} = {v}\n" for k, v in SYSCTLS.items())


def _maxelem(n: int) -> int:
    m = IPSET_DEFAULT_MAXELEM
    while m < n:
        m *= 2
    return m


def render_ipset(catalog: "ServiceCatalog") -> str:
    """ipset restore input: the cluster IP sets, filled, and the empty ones."""
    n_ports = len(catalog.ports)
    lines = [f"create {CLUSTER_IP_SET} hash:ip,port family inet hashsize {IPSET_HASHSIZE} "
             f"maxelem {_maxelem(catalog.services * n_ports)}",
             f"create {IPVS_IPS_SET} hash:ip family inet hashsize {IPSET_HASHSIZE} "
             f"maxelem {_maxelem(catalog.services)}"]
    for name, kind in EMPTY_SETS:
        if kind == "bitmap:port":
            lines.append(f"create {name} bitmap:port range 0-65535")
        else:
            lines.append(f"create {name} {kind} family inet hashsize {IPSET_HASHSIZE} "
                         f"maxelem {IPSET_DEFAULT_MAXELEM}")
    for i in range(catalog.services):
        vip = catalog.vip(i)
        for port in catalog.ports:
            lines.append(f"add {CLUSTER_IP_SET} {vip},tcp:{port}")
        lines.append(f"add {IPVS_IPS_SET} {vip}")
    return "\n".join(lines) + "\n"


def render_addresses(catalog: "ServiceCatalog") -> str:
    """`ip -batch` input: the dummy device (left down, as kube-proxy does)
    and every VIP bound to it as a /32."""
    lines = [f"link add {DUMMY_DEVICE} type dummy"]
    lines += [f"addr add {catalog.vip(i)}/32 dev {DUMMY_DEVICE}" for i in range(catalog.services)]
    return "\n".join(lines) + "\n"


def _sched(scheduler: str) -> str:
    flags = SCHEDULER_FLAGS.get(scheduler)
    return f"-s {scheduler}" + (f" -b {flags}" if flags else "")


def render_ipvsadm(catalog: "ServiceCatalog", scheduler: str = SCHEDULER) -> str:
    """`ipvsadm -R` input: a virtual service per VIP:port, real servers in
    masquerade mode with weight 1."""
    lines: list[str] = []
    for i in range(catalog.services):
        vip = catalog.vip(i)
        eps = catalog.endpoints_of(i)
        for port in catalog.ports:
            vs = f"{vip}:{port}"
            lines.append(f"-A -t {vs} {_sched(scheduler)}")
            lines += [f"-a -t {vs} -r {ep}:{port} -m -w 1" for ep in eps]
    return "".join(f"{ln}\n" for ln in lines)


def render_iptables_ipvs(catalog: "ServiceCatalog") -> str:
    """iptables-restore input: kube-proxy IPVS mode's nat and filter rules."""
    cluster_cidr = str(catalog.endpoint_net)
    c = f'"{CLUSTER_IP_COMMENT}"'
    nat = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        ":KUBE-SERVICES - [0:0]", ":KUBE-POSTROUTING - [0:0]", ":KUBE-NODE-PORT - [0:0]",
        ":KUBE-LOAD-BALANCER - [0:0]", ":KUBE-MARK-MASQ - [0:0]",
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN",
    ]
    if catalog.services:
        nat.append(f"-A KUBE-SERVICES -m comment --comment {c} -m set --match-set {CLUSTER_IP_SET} "
                   f"dst,dst ! -s {cluster_cidr} -j KUBE-MARK-MASQ")
    nat += [
        "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
        "-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ",
    ]
    if catalog.services:
        nat.append(f"-A KUBE-SERVICES -m set --match-set {CLUSTER_IP_SET} dst,dst -j ACCEPT")
    nat += [
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
        "COMMIT",
    ]
    filt = [
        "*filter",
        ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
        ":KUBE-FORWARD - [0:0]", ":KUBE-NODE-PORT - [0:0]", ":KUBE-PROXY-FIREWALL - [0:0]",
        ":KUBE-SOURCE-RANGES-FIREWALL - [0:0]", ":KUBE-IPVS-FILTER - [0:0]",
        ":KUBE-IPVS-OUT-FILTER - [0:0]",
        '-A INPUT -m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT',
        '-A INPUT -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL',
        '-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER',
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        '-A FORWARD -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL',
        '-A OUTPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-OUT-FILTER',
        "-A KUBE-SOURCE-RANGES-FIREWALL -j DROP",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" '
        f"-m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f'-A KUBE-NODE-PORT -m comment --comment "{HEALTH_CHECK_COMMENT}" '
        "-m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT",
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN",
        f"-A KUBE-IPVS-FILTER -m set --match-set {CLUSTER_IP_SET} dst,dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP dst,dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW "
        f"-m set --match-set {IPVS_IPS_SET} dst -j REJECT",
        "COMMIT",
    ]
    return "\n".join(nat + filt) + "\n"


def render_ipvs(catalog: "ServiceCatalog", backend: str = IPTABLES_BACKEND, scheduler: str = SCHEDULER) -> str:
    """Everything the IPVS mode loads, one ``#: <loader>`` section each; the
    helper rules go through ``iptables-<backend>-restore`` (none with "none")."""
    parts = {
        "sysctl": render_sysctl(),
        "ipset restore": render_ipset(catalog),
        "ip -batch": render_addresses(catalog),
        "ipvsadm -R": render_ipvsadm(catalog, scheduler),
        f"iptables-{backend}-restore": render_iptables_ipvs(catalog),
    }
    return "".join(f"#: {name}\n{parts[name]}" for name in section_order(backend))


#: lines a line-by-line loader (ipset restore, ip -batch, ipvsadm -R) gets per process
CHUNK_LINES = 10_000


def chunks(body: str, n: int = CHUNK_LINES) -> list[str]:
    """``body`` in pieces of at most ``n`` whole lines (pure; "" stays one piece).

    One loader process per piece: in user-mode Linux each page a guest process
    touches is a mapping of the host's UML process, and a process reaching the
    host's ``vm.max_map_count`` (65,530 by default) dies with SIGSEGV: one
    ``ip -batch`` of 100,000 VIPs did (docs/uml.md).  Each line of these loaders
    is its own change, so the pieces load exactly what the whole would."""
    lines = body.splitlines(keepends=True)
    if len(lines) <= n:
        return [body]
    return ["".join(lines[i:i + n]) for i in range(0, len(lines), n)]


def split_sections(text: str) -> dict[str, str]:
    """Inverse of the section framing of :func:`render_ipvs` (pure)."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines(keepends=True):
        if line.startswith("#: "):
            current = out.setdefault(line[3:].strip(), [])
        elif current is None:
            if line.strip():
                raise LabkitError(f"IPVS text starts without a '#: <loader>' section line: {line!r}")
        else:
            current.append(line)
    return {k: "".join(v) for k, v in out.items()}


def render_ipvs_add(catalog: "ServiceCatalog", i: int, scheduler: str = SCHEDULER) -> str:
    """The changes that add service ``i`` of ``catalog`` to a loaded IPVS
    datapath, one ``#: <loader>`` section each, in the order to apply them:
    set entries, the VIP on the dummy device, the virtual service and its
    real servers last (pure)."""
    vip = catalog.vip(i)
    ipset = [f"add {CLUSTER_IP_SET} {vip},tcp:{port}" for port in catalog.ports]
    ipset.append(f"add {IPVS_IPS_SET} {vip}")
    ipvs = []
    for port in catalog.ports:
        ipvs.append(f"-A -t {vip}:{port} {_sched(scheduler)}")
        ipvs += [f"-a -t {vip}:{port} -r {ep}:{port} -m -w 1" for ep in catalog.endpoints_of(i)]
    return ("#: ipset restore\n" + "".join(f"{ln}\n" for ln in ipset)
            + f"#: ip -batch\naddr add {vip}/32 dev {DUMMY_DEVICE}\n"
            + "#: ipvsadm -R\n" + "".join(f"{ln}\n" for ln in ipvs))


def render_ipvs_remove(catalog: "ServiceCatalog", i: int) -> str:
    """The reverse of :func:`render_ipvs_add`: the virtual service first
    (its real servers go with it), then the VIP, then the set entries (pure)."""
    vip = catalog.vip(i)
    ipset = [f"del {CLUSTER_IP_SET} {vip},tcp:{port}" for port in catalog.ports]
    ipset.append(f"del {IPVS_IPS_SET} {vip}")
    return ("#: ipvsadm -R\n" + "".join(f"-D -t {vip}:{port}\n" for port in catalog.ports)
            + f"#: ip -batch\naddr del {vip}/32 dev {DUMMY_DEVICE}\n"
            + "#: ipset restore\n" + "".join(f"{ln}\n" for ln in ipset))


def render_ipvs_change_endpoints(old: "ServiceCatalog", new: "ServiceCatalog") -> str:
    """The ``ipvsadm -R`` changes that take a loaded IPVS datapath from
    ``old`` to ``new``, two catalogs of the same services and ports whose
    endpoints differ (a rollout): per changed service and port, the new real
    servers added first, then the old ones deleted (kube-proxy's IPVS proxier
    adds new endpoints before it removes stale ones; its graceful deletion,
    weight 0 until a server's connections drain, is not modelled: a lab
    change has no connections to drain); the sets, the VIPs and the iptables
    rules do not change (pure)."""
    if (old.services, old.ports) != (new.services, new.ports):
        raise ValueError("an endpoint change keeps services and ports; "
                         f"got {old.services} x {old.ports} -> {new.services} x {new.ports}")
    lines: list[str] = []
    for i in sorted(old.rolled ^ new.rolled):
        was, now = old.endpoints_of(i), new.endpoints_of(i)
        for port in new.ports:
            vs = f"{new.vip(i)}:{port}"
            lines += [f"-a -t {vs} -r {ep}:{port} -m -w 1" for ep in now if ep not in was]
            lines += [f"-d -t {vs} -r {ep}:{port}" for ep in was if ep not in now]
    return "#: ipvsadm -R\n" + "".join(f"{ln}\n" for ln in lines)


EMPTY_TABLES = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                ":POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
                "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")


# ---- host kernel support ---------------------------------------------------
def _kernel_config(release: str) -> str | None:
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return f.read()
    except OSError:
        pass
    try:
        with open(f"/boot/config-{release}") as f:
            return f.read()
    except OSError:
        return None


def host_ipvs_missing() -> str | None:
    """None when the running kernel has IPVS (built in, loaded, or as a
    module), else what is missing, e.g. "CONFIG_IP_VS unset, no module"."""
    if os.path.exists("/proc/net/ip_vs"):
        return None
    release = os.uname().release
    config = _kernel_config(release) or ""
    if "CONFIG_IP_VS=y" in config:
        return None
    # a guest kernel's modules live in labkit's cache (labkit.guests.uml sets this)
    moddir = f"{os.environ.get('LABKIT_MODULES_ROOT', '')}/lib/modules/{release}"
    for index in ("modules.dep", "modules.builtin"):
        try:
            with open(os.path.join(moddir, index)) as f:
                if "/ip_vs.ko" in f.read():
                    return None
        except OSError:
            continue
    if not config:
        what = "no kernel config to read"
    elif "CONFIG_IP_VS=m" in config:
        what = "CONFIG_IP_VS=m but no ip_vs module installed"
    else:
        what = "CONFIG_IP_VS unset"
    return f"{what}, no module"


# ---- the mode --------------------------------------------------------------
class Ipvs(Datapath):
    name = "ipvs"
    # `labkit bench program` in the VM kernel: (the loaders' peak, an upper bound, +
    # kernel-held) / endpoints, +25%; figures and derivation: docs/experiments.md,
    # "Memory per endpoint"
    mem_per_endpoint = 3_900
    summary = ("kube-proxy IPVS mode: VIPs on the kube-ipvs0 dummy device, one rr virtual "
               "service per VIP:port with NAT forwarding; ipset-matched iptables masquerade")
    needs = ("CONFIG_IP_VS, CONFIG_IP_VS_RR, CONFIG_IP_VS_NFCT, CONFIG_DUMMY, CONFIG_IP_SET "
             "(hash:ip, hash:ip,port, bitmap:port), CONFIG_NETFILTER_XT_SET, nf_tables with xt compat")
    lookup = "hash lookup of the virtual service (ip_vs_service_find): O(1)"

    TOOLS = (("ipvsadm", "ipvsadm"), ("ipset", "ipset"), ("ip", "iproute2"), ("sysctl", "procps"))

    def __init__(self, lab: "Lab", scheduler: str = SCHEDULER) -> None:
        super().__init__(lab)
        if scheduler not in SCHEDULERS:
            raise LabkitError(f"unknown IPVS scheduler {scheduler!r}; choose from {', '.join(SCHEDULERS)}")
        self.scheduler = scheduler
        self.backend: str | None = None   # chosen in setup: what the node's kernel supports
        self._saved_sysctls: dict[str, str] | None = None
        self._loaded = False

    def pick_backend(self) -> str:
        """The iptables backend for the helper rules, as kube-proxy's iptables
        wrapper picks one: the first whose nat table the running kernel has
        ("none" when neither: the helper rules are left out, see docs/vm.md)."""
        for backend in BACKENDS:
            tool = f"iptables-{backend}"
            if not shutil.which(tool):
                continue
            cp = self._run([tool, "-t", "nat", "-N", "LABKIT-PROBE"], check=False)
            if cp.returncode == 0:
                self._run([tool, "-t", "nat", "-X", "LABKIT-PROBE"], check=False)
                return backend
        return "none"

    @property
    def variant(self) -> str:
        return f"scheduler {self.scheduler}; helper rules: " + (
            f"iptables-{self.backend}" if self.backend != "none" else "none (the kernel has no NAT table)")

    @classmethod
    def unavailable(cls, lab: "Lab | None" = None) -> str | None:
        for tool, pkg in cls.TOOLS:
            if not shutil.which(tool):
                return f"{tool} not found (Debian package {pkg}; `sudo make setup` installs it)"
        missing = host_ipvs_missing()
        if missing:
            return f"host kernel has no IP_VS ({missing})"
        if lab is not None:
            probe = cls(lab)
            try:
                probe.setup(ServiceCatalog(services=1, endpoints=2, ports=lab.ports[:1] or (80,)))
            except LabkitError as exc:
                return f"the kernel refused the IPVS datapath: {exc} ({cls.needs})"
            finally:
                try:
                    probe.teardown()
                except LabkitError:
                    pass
        return None

    @staticmethod
    def render(catalog: "ServiceCatalog") -> str:
        return render_ipvs(catalog)

    # ---- kernel ----------------------------------------------------------
    def _run(self, argv, **kw):
        return self.lab.run(self.lab.node, argv, **kw)

    def render_for(self, catalog: "ServiceCatalog") -> str:
        return render_ipvs(catalog, self.backend or IPTABLES_BACKEND, self.scheduler)

    def load(self, text: str) -> None:
        sections = split_sections(text)
        order = section_order(self.backend or IPTABLES_BACKEND)
        unknown = set(sections) - set(order)
        if unknown:
            raise LabkitError(f"IPVS text has unknown sections: {sorted(unknown)}")
        if self._loaded:
            self.clear()
        self._loaded = True
        settings = dict(line.split(" = ", 1) for line in sections.get("sysctl", "").splitlines() if line)
        if settings:
            if self._saved_sysctls is None:
                cp = self._run(["sysctl", "-n", *settings], check=False)
                values = cp.stdout.split("\n")
                if cp.returncode != 0 or len(values) < len(settings):
                    raise LabkitError(f"cannot read IPVS sysctls in {self.lab.node} "
                                      f"(is ip_vs loaded?): {cp.stderr.strip()}")
                self._saved_sysctls = dict(zip(settings, values))
            self._run(["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())])
        loaders = {"ipset restore": ["ipset", "restore"],
                   "ip -batch": ["ip", "-batch", "-"],
                   "ipvsadm -R": ["ipvsadm", "-R"],
                   **{f"iptables-{b}-restore": [f"iptables-{b}-restore"] for b in BACKENDS}}
        for name in order[1:]:
            if name in sections:
                self._load(name, loaders[name], sections[name])

    # ---- control-plane operations: one service in place ---------------------
    update_kind = "partial"
    change_loader = program_loader = "ipset, ip, ipvsadm"
    update = ("ipset add/del, the VIP on kube-ipvs0, ipvsadm -A/-a (-D to remove): only the "
              "changed service, as kube-proxy's IPVS proxier applies its diff; new endpoints: "
              "ipvsadm -a of the new real servers, then -d of the old ones")
    changes_endpoints = True

    def add_service(self, loader: str = "") -> ProgramResult:
        self.loader_of(loader)
        return self._apply_one(self._resized(+1), render_ipvs_add, self._loaded_catalog().services)

    def remove_service(self, loader: str = "") -> ProgramResult:
        self.loader_of(loader)
        return self._apply_one(self._resized(-1), render_ipvs_remove, self._loaded_catalog().services - 1)

    def change_endpoints(self, services: Iterable[int], loader: str = "") -> ProgramResult:
        self.loader_of(loader)
        old, new = self._loaded_catalog(), self._rolled(services)
        return self._apply(new, lambda: render_ipvs_change_endpoints(old, new))

    def _apply_one(self, catalog: "ServiceCatalog", renderer, i: int) -> ProgramResult:
        return self._apply(catalog, lambda: renderer(catalog, i, self.scheduler) if renderer is render_ipvs_add
                           else renderer(self._loaded_catalog(), i))

    def _apply(self, catalog: "ServiceCatalog", render: Callable[[], str]) -> ProgramResult:
        """Render a change (timed apart) and send its sections, each to its loader, in order."""
        t0 = time.perf_counter()
        text = render()
        t1 = time.perf_counter()
        loaders = {"ipset restore": ["ipset", "restore"], "ip -batch": ["ip", "-batch", "-"],
                   "ipvsadm -R": ["ipvsadm", "-R"]}
        for name, body in split_sections(text).items():  # in the text's order
            self._load(name, loaders[name], body)
        t2 = time.perf_counter()
        self.catalog = catalog
        return ProgramResult(render_s=t1 - t0, load_s=t2 - t1)

    def _load(self, name: str, argv: list[str], body: str) -> None:
        """Send one section to its loader; the line-by-line loaders (every one but
        iptables-restore, whose input is one transaction) in chunks of
        :data:`CHUNK_LINES` lines, one process each (see :func:`chunks`)."""
        parts = [body] if name.startswith("iptables-") else chunks(body)
        for part in parts:
            self._run(argv, input=part, timeout=3600)

    def _ensure_module(self) -> None:
        """ipvsadm loads ip_vs itself; sysctl needs it loaded first."""
        if not os.path.exists("/proc/net/ip_vs") and shutil.which("modprobe"):
            self._run(["modprobe", "ip_vs"], check=False)

    def setup(self, catalog: "ServiceCatalog") -> ProgramResult:
        self._ensure_module()
        if self.backend is None:
            self.backend = self.pick_backend()
        return super().setup(catalog)

    def clear(self) -> None:
        """Undo load(): iptables first (they reference the sets), then the
        sets, the virtual services, the dummy device, the sysctls."""
        errors = []

        def step(argv, **kw):
            cp = self._run(argv, check=False, **kw)
            if cp.returncode != 0:
                errors.append(f"`{' '.join(argv[:2])}`: {cp.stderr.strip()[-200:]}")
        if self.backend not in (None, "none"):
            step([f"iptables-{self.backend}-restore"], input=EMPTY_TABLES)
        if self.backend == "nft" and shutil.which("nft"):
            for table in ("nat", "filter"):
                self._run(["nft", "delete", "table", "ip", table], check=False)
        for name in (CLUSTER_IP_SET, IPVS_IPS_SET, *(n for n, _ in EMPTY_SETS)):
            cp = self._run(["ipset", "destroy", name], check=False)
            if cp.returncode != 0 and "does not exist" not in cp.stderr:
                errors.append(f"`ipset destroy {name}`: {cp.stderr.strip()}")
        step(["ipvsadm", "-C"])
        cp = self._run(["ip", "link", "del", DUMMY_DEVICE], check=False)
        if cp.returncode != 0 and "Cannot find device" not in cp.stderr:
            errors.append(f"`ip link del {DUMMY_DEVICE}`: {cp.stderr.strip()}")
        if self._saved_sysctls:
            step(["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in self._saved_sysctls.items())])
            self._saved_sysctls = None
        self._loaded = False
        if errors:
            raise LabkitError("IPVS teardown incomplete: " + "; ".join(errors))

    def describe(self) -> dict:
        out = {"iptables_backend": self.backend, "vip_device": f"{DUMMY_DEVICE} (dummy)",
               "scheduler": self.scheduler, "forwarding": "masquerade (NAT)",
               "sysctls": dict(SYSCTLS)}
        tools = [("ipvsadm_version", ["ipvsadm", "--version"]), ("ipset_version", ["ipset", "--version"])]
        if self.backend not in (None, "none"):
            tools.append(("iptables_version", [f"iptables-{self.backend}", "--version"]))
        for key, argv in tools:
            cp = self._run(argv, check=False)
            out[key] = (cp.stdout or cp.stderr).strip().splitlines()[0] if (cp.stdout or cp.stderr).strip() else ""
        cp = self._run(["cat", "/proc/net/ip_vs"], check=False)
        if cp.returncode == 0 and cp.stdout:
            out["ip_vs"] = cp.stdout.splitlines()[0]
        return out

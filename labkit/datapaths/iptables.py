"""kube-proxy's iptables layout, for the legacy (x_tables) and nft backends.

Layout (after kube-proxy ``pkg/proxy/iptables``; our own code)::

    PREROUTING/OUTPUT -> KUBE-SERVICES
    KUBE-SERVICES   one rule per service port: -d VIP/32 -p tcp --dport P -j KUBE-SVC-<hash>
                    last rule: addrtype LOCAL -> KUBE-NODEPORTS
    KUBE-SVC-<hash> ! -s <cluster CIDR> -> KUBE-MARK-MASQ, then one rule per
                    endpoint: -m statistic --mode random --probability 1/n,
                    1/(n-1), ... (the last unconditional) -j KUBE-SEP-<hash>
    KUBE-SEP-<hash> -s EP -> KUBE-MARK-MASQ; -j DNAT --to-destination EP:P
    POSTROUTING -> KUBE-POSTROUTING: masquerade what KUBE-MARK-MASQ marked

A new connection to the last service walks every KUBE-SERVICES rule: the
O(services) cost this lab measures.  Above 1,000 endpoints kube-proxy drops
the per-endpoint comments ("large cluster mode"); so do we.
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from labkit.core.catalog import ServiceCatalog
from labkit.core.errors import LabkitError
from labkit.datapaths.base import Datapath, ProgramResult

if TYPE_CHECKING:  # pragma: no cover
    from labkit.core.catalog import ServiceCatalog
    from labkit.lab.lab import Lab

LARGE_CLUSTER_ENDPOINTS = 1000
MASQ_MARK = "0x4000"


def _kube_services_lines(catalog: "ServiceCatalog", i: int) -> list[str]:
    """Service ``i``'s rules in KUBE-SERVICES, one per port (a partial sync
    rewrites these for every service; the rest only for changed ones)."""
    name, vip = catalog.name(i), catalog.vip(i)
    return [f'-A KUBE-SERVICES -m comment --comment "{name}:p{port} cluster IP" -m tcp -p tcp '
            f"-d {vip}/32 --dport {port} -j KUBE-SVC-{catalog.chain_id(i, port)}" for port in catalog.ports]


def _service_lines(catalog: "ServiceCatalog", i: int, large: bool) -> tuple[list[str], list[str], list[str]]:
    """Service ``i``'s part of the nat table: its chain declarations, its
    KUBE-SERVICES rules and the rules of its KUBE-SVC/KUBE-SEP chains."""
    chains: list[str] = []
    services = _kube_services_lines(catalog, i)
    rules: list[str] = []
    n = catalog.endpoints
    cluster_cidr = str(catalog.endpoint_net)
    name = catalog.name(i)
    vip = catalog.vip(i)
    eps = catalog.endpoints_of(i)
    for port in catalog.ports:
        svc = f"KUBE-SVC-{catalog.chain_id(i, port)}"
        comment = f'-m comment --comment "{name}:p{port} cluster IP"'
        chains.append(f":{svc} - [0:0]")
        rules.append(f"-A {svc} {comment} -m tcp -p tcp -d {vip}/32 --dport {port} "
                     f"! -s {cluster_cidr} -j KUBE-MARK-MASQ")
        for j, ep in enumerate(eps):
            sep = f"KUBE-SEP-{catalog.endpoint_chain_id(i, j, port)}"
            chains.append(f":{sep} - [0:0]")
            epc = "" if large else f'-m comment --comment "{name}:p{port} -> {ep}:{port}" '
            if j < n - 1:
                rules.append(f"-A {svc} {epc}-m statistic --mode random "
                             f"--probability {1.0 / (n - j):0.10f} -j {sep}")
            else:
                rules.append(f"-A {svc} {epc}-j {sep}")
            sc = "" if large else f'-m comment --comment "{name}:p{port}" '
            rules.append(f"-A {sep} {sc}-s {ep}/32 -j KUBE-MARK-MASQ")
            rules.append(f"-A {sep} {sc}-m tcp -p tcp -j DNAT --to-destination {ep}:{port}")
    return chains, services, rules


NODEPORTS_RULE = ('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this '
                  'must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')


def _large(catalog: "ServiceCatalog") -> bool:
    return catalog.total_endpoints > LARGE_CLUSTER_ENDPOINTS


def render_iptables(catalog: "ServiceCatalog") -> str:
    """The nat table for ``catalog`` in iptables-restore format (pure)."""
    large = _large(catalog)
    chains = [":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
              ":POSTROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]",
              ":KUBE-POSTROUTING - [0:0]", ":KUBE-MARK-MASQ - [0:0]"]
    head = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
    ]
    services: list[str] = []
    rules: list[str] = []
    for i in range(catalog.services):
        c, sv, r = _service_lines(catalog, i, large)
        chains += c
        services += sv
        rules += r
    services.append(NODEPORTS_RULE)
    return "\n".join(["*nat", *chains, *head, *services, *rules, "COMMIT", ""])


def render_iptables_partial(old: "ServiceCatalog", new: "ServiceCatalog") -> str | None:
    """The minimal update from the loaded table of ``old`` to the one of
    ``new``, for ``iptables-restore --noflush`` (pure), the way kube-proxy's
    iptables proxier writes a partial sync (``MinimizeIPTablesRestore``, on by
    default since Kubernetes 1.27): KUBE-SERVICES is declared (which flushes
    it under ``--noflush``) and rewritten whole; of the per-service chains
    only those of services that appear or whose endpoints changed are declared
    and filled, and the chains that go (a removed service's, a replaced
    endpoint's) are declared (emptied) and deleted with ``-X`` after every
    rule; every other chain is left as it is.  None when the change is not one
    of service count and replaced endpoints (endpoints per service, ports,
    CIDRs or kube-proxy's large-cluster mode differ): then only a full sync
    is right."""
    same = ("endpoints", "ports", "service_cidr", "endpoint_cidr", "namespace")
    if any(getattr(old, f) != getattr(new, f) for f in same) or _large(old) != _large(new):
        return None
    large = _large(new)
    keep = min(old.services, new.services)
    changed = {i for i in old.rolled ^ new.rolled if i < keep}
    declare: list[str] = [":KUBE-SERVICES - [0:0]"]
    services: list[str] = []
    rules: list[str] = []
    gone: list[str] = []
    for i in range(new.services):
        if i >= keep or i in changed:
            c, sv, r = _service_lines(new, i, large)
            declare += c
            rules += r
        else:                      # unchanged: only its KUBE-SERVICES rules, rewritten
            sv = _kube_services_lines(new, i)
        services += sv
    for i in sorted(changed):   # the old endpoints' chains (the service chains stay)
        now = set(_service_lines(new, i, large)[0])
        gone += [d for d in _service_lines(old, i, large)[0] if d not in now]
    for i in range(keep, old.services):
        gone += _service_lines(old, i, large)[0]
    declare += gone
    services.append(NODEPORTS_RULE)
    delete = [f"-X {d[1:].split(' ', 1)[0]}" for d in gone]
    return "\n".join(["*nat", *declare, *services, *rules, *delete, "COMMIT", ""])


EMPTY_NAT = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" \
            ":POSTROUTING ACCEPT [0:0]\nCOMMIT\n"


class _Iptables(Datapath):
    backend: ClassVar[str]
    lookup = "linear walk of KUBE-SERVICES: O(services)"

    @classmethod
    def restore_cmd(cls) -> str:
        return f"iptables-{cls.backend}-restore"

    @classmethod
    def unavailable(cls, lab: "Lab | None" = None) -> str | None:
        tool = cls.restore_cmd()
        if not shutil.which(tool):
            return f"{tool} not found (Debian package iptables; `sudo make setup` installs it)"
        if lab is not None:
            try:
                lab.run(lab.node, [tool], input=render_iptables_probe(), timeout=30)
                lab.run(lab.node, [tool], input=EMPTY_NAT, timeout=30)
            except LabkitError as exc:
                return f"the kernel refused a {cls.backend} nat table: {exc} ({cls.needs})"
        return None

    @staticmethod
    def render(catalog: "ServiceCatalog") -> str:
        return render_iptables(catalog)

    def load(self, text: str) -> None:
        self.lab.run(self.lab.node, [self.restore_cmd()], input=text, timeout=3600)

    # ---- control plane: kube-proxy's partial sync ------------------------------
    update = ("partial sync (kube-proxy's MinimizeIPTablesRestore): KUBE-SERVICES rewritten, only "
              "the changed service's chains written or deleted, iptables-restore --noflush")
    full_sync = True
    update_kind = "partial"
    changes_endpoints = True

    def add_service(self, loader: str = "") -> ProgramResult:
        self.loader_of(loader)
        return self.partial_sync(self._resized(+1))

    def remove_service(self, loader: str = "") -> ProgramResult:
        self.loader_of(loader)
        return self.partial_sync(self._resized(-1))

    def change_endpoints(self, services: Iterable[int], loader: str = "") -> ProgramResult:
        self.loader_of(loader)
        return self.partial_sync(self._rolled(services))

    def partial_sync(self, catalog: "ServiceCatalog") -> ProgramResult:
        """Change the loaded table to ``catalog`` with a partial sync; a full
        sync when the change is not one of service count alone."""
        t0 = time.perf_counter()
        text = render_iptables_partial(self._loaded_catalog(), catalog)
        if text is None:
            return self.resync(catalog)
        t1 = time.perf_counter()
        self.lab.run(self.lab.node, [self.restore_cmd(), "--noflush"], input=text, timeout=3600)
        t2 = time.perf_counter()
        self.catalog = catalog
        return ProgramResult(render_s=t1 - t0, load_s=t2 - t1)

    def describe(self) -> dict:
        cp = self.lab.run(self.lab.node, [f"iptables-{self.backend}", "--version"], check=False)
        return {"iptables_version": cp.stdout.strip()}


def render_iptables_probe() -> str:
    """A one-service table that exercises every match and target we use."""
    return render_iptables(ServiceCatalog(services=1, endpoints=2))


class IptablesLegacy(_Iptables):
    name = "iptables-legacy"
    # `labkit bench program` at 30,000 x 10: (iptables-legacy-restore's peak + kernel-held)
    # / endpoints, +25%; figures and derivation: docs/experiments.md, "Memory per endpoint"
    mem_per_endpoint = 6_200
    backend = "legacy"
    change_loader = program_loader = "iptables-legacy-restore"
    summary = "kube-proxy iptables mode on the legacy x_tables backend"
    needs = "CONFIG_IP_NF_NAT, CONFIG_NETFILTER_XT_MATCH_STATISTIC/COMMENT/ADDRTYPE/MARK"

    def clear(self) -> None:
        # legacy tables cannot be deleted, only emptied
        self.lab.run(self.lab.node, [self.restore_cmd()], input=EMPTY_NAT)


class IptablesNft(_Iptables):
    name = "iptables-nft"
    # `labkit bench program` at 30,000 x 10: (iptables-nft-restore's peak + kernel-held)
    # / endpoints, +25%; figures and derivation: docs/experiments.md, "Memory per endpoint"
    mem_per_endpoint = 10_900
    backend = "nft"
    change_loader = program_loader = "iptables-nft-restore"
    summary = "kube-proxy iptables mode on the nf_tables backend (iptables-nft, xt compat matches)"
    needs = "CONFIG_NF_TABLES, CONFIG_NFT_COMPAT, CONFIG_NF_NAT, xt statistic/comment/addrtype/mark"

    def clear(self) -> None:
        self.lab.run(self.lab.node, [self.restore_cmd()], input=EMPTY_NAT)
        if shutil.which("nft"):
            self.lab.run(self.lab.node, ["nft", "delete", "table", "ip", "nat"], check=False)

"""kube-proxy's nftables layout (``pkg/proxy/nftables``), rendered for ``nft -f``.

Layout (after kube-proxy; our own code)::

    table ip kube-proxy
      nat-prerouting / nat-output (type nat, priority dstnat) -> jump services
      services          ip daddr . meta l4proto . th dport vmap @service-ips
                        fib daddr type local ... vmap @service-nodeports
      map service-ips   VIP . tcp . port : goto service-<hash>-<ns>/<svc>/tcp/p<port>
      service-...       ip daddr VIP tcp dport P ip saddr != <cluster CIDR> jump mark-for-masquerade
                        pick one endpoint, uniformly at random (see below)
      endpoint-...      ip saddr EP jump mark-for-masquerade; meta l4proto tcp dnat to EP:P
      mark-for-masquerade  mark set mark or 0x4000
      nat-postrouting (priority srcnat) -> masquerading: masquerade what was marked

A new connection finds its service with one hash lookup in ``service-ips``:
O(1) in the number of services.

Endpoint choice.  kube-proxy writes ``numgen random mod N vmap { 0 : goto
endpoint-..., ... }`` in each service chain: one *anonymous* set per
service.  On kernel 6.18 every anonymous set costs the kernel a walk of
the whole pending transaction (``__nft_set_trans_bind``) and of the table's
set list (name allocation), so loading N services in one transaction is
O(N^2).  The default rendering (``select="rules"``) therefore picks the
endpoint with N rules, ``numgen random mod (N-j) == 0 goto endpoint-j`` for
j < N-1 and an unconditional ``goto`` last: uniform, like kube-proxy's vmap,
with no set per service, and loads in linear time.  ``select="vmap"``
renders kube-proxy's exact form, for comparison.  docs/nftables.md has the
measurements ("Programming speed") and the profile that found the
quadratic term ("Why kube-proxy's literal layout is quadratic here").

Left out, as in our iptables renderer: the filter-table chains (firewall and
no-endpoint checks), session affinity, external/LoadBalancer IPs.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import resource
import shutil
import socket
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from labkit.core.catalog import ServiceCatalog
from labkit.core.errors import LabkitError
from labkit.datapaths.base import Datapath, ProgramResult
from labkit.datapaths.iptables import MASQ_MARK
from labkit.host import nfnetlink
from labkit.lab.lab import Lab

if TYPE_CHECKING:  # pragma: no cover
    from labkit.lab.lab import Lab

TABLE = "kube-proxy"
PROBE_TABLE = "labkit-probe"
SELECT_MODES = ("rules", "vmap", "named", "shared")


def _ip(n: int) -> str:
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_B32_PAIRS = [a + b for a in _B32 for b in _B32]  # 10 bits -> 2 characters


def _hash8(name: str, port: int) -> str:
    """``chain_hash(name, port)[:8]`` (the first 40 bits in base32), without
    the slow pure-Python base64 module: it runs a million times at 100k x 10."""
    v = int.from_bytes(hashlib.sha256(f"{name}:{port}/tcp".encode()).digest()[:5], "big")
    p = _B32_PAIRS
    return p[v >> 30] + p[(v >> 20) & 1023] + p[(v >> 10) & 1023] + p[v & 1023]


def service_chain(name: str, port: int) -> str:
    """kube-proxy's service chain name: service-<hash8>-<ns>/<svc>/tcp/p<port>."""
    return f"service-{_hash8(name, port)}-{name}/tcp/p{port}"


def endpoint_chain(name: str, ep: str, port: int) -> str:
    """kube-proxy's endpoint chain name: endpoint-<hash8>-<ns>/<svc>/tcp/p<port>__<ip>/<port>."""
    return f"endpoint-{_hash8(f'{name}@{ep}', port)}-{name}/tcp/p{port}__{ep}/{port}"


def _pick(chains: list[str], select: str, named: str = "") -> list[str]:
    """Rules of a service chain that send a new connection to one of ``chains``."""
    n = len(chains)
    if select == "vmap":
        arms = ", ".join(f"{j} : goto {c}" for j, c in enumerate(chains))
        return [f"numgen random mod {n} vmap {{ {arms} }}"]
    if select == "named":
        return [f"numgen random mod {n} vmap @{named}"]
    if select == "shared":
        return [f"ip daddr . th dport . numgen random mod {n} vmap @service-endpoints"]
    # P(endpoint j) = 1/(n-j) given that none before was taken: 1/n each
    return [f"numgen random mod {n - j} == 0 goto {c}" for j, c in enumerate(chains[:-1])] \
        + [f"goto {chains[-1]}"]


def render_nftables(catalog: ServiceCatalog, *, select: str = "rules", table: str = TABLE) -> str:
    """The whole ``table ip <table>`` for ``catalog`` as ``nft -f`` input (pure).

    The text first deletes any previous table of that name, in the same
    transaction, so loading it replaces the datapath atomically.

    ``select``: how a service chain picks its endpoint.  "rules" (default)
    and "vmap" (kube-proxy's literal form) are described in the module
    docstring; "named" (one named map per service) and "shared" (one map
    keyed by VIP . port . slot for all services) exist only for the
    programming-speed experiments in docs/nftables.md.
    """
    if select not in SELECT_MODES:
        raise ValueError(f"select must be one of {SELECT_MODES}, got {select!r}")
    mark = MASQ_MARK
    n = catalog.endpoints
    cluster_cidr = str(catalog.endpoint_net)
    elements: list[str] = []
    shared: list[str] = []
    chains: list[str] = []
    for i in range(catalog.services):
        name = catalog.name(i)
        vip = _ip(catalog.vip_int(i))
        eps = [_ip(catalog.endpoint_int(i, j)) for j in range(n)]
        for port in catalog.ports:
            svc = service_chain(name, port)
            elements.append(f"\t\t\t{vip} . tcp . {port} : goto {svc},")
            epcs = [endpoint_chain(name, ep, port) for ep in eps]
            named = f"endpoints-{i}-{port}"
            if select == "named":
                arms = ", ".join(f"{j} : goto {c}" for j, c in enumerate(epcs))
                chains.append(f"\tmap {named} {{\n\t\ttypeof numgen random mod {n} : verdict\n"
                              f"\t\telements = {{ {arms} }}\n\t}}\n")
            elif select == "shared":
                shared += [f"\t\t\t{vip} . {port} . {j} : goto {c}," for j, c in enumerate(epcs)]
            body = [f"ip daddr {vip} tcp dport {port} ip saddr != {cluster_cidr} jump mark-for-masquerade",
                    *_pick(epcs, select, named)]
            chains.append(f"\tchain {svc} {{\n" + "".join(f"\t\t{r}\n" for r in body) + "\t}\n")
            for ep, epc in zip(eps, epcs):
                chains.append(f"\tchain {epc} {{\n"
                              f"\t\tip saddr {ep} jump mark-for-masquerade\n"
                              f"\t\tmeta l4proto tcp dnat to {ep}:{port}\n"
                              "\t}\n")
    if select == "shared":
        chains.insert(0, f"\tmap service-endpoints {{\n"
                         f"\t\ttypeof ip daddr . th dport . numgen random mod {n} : verdict\n"
                         + ("\t\telements = {\n" + "\n".join(shared) + "\n\t\t}\n" if shared else "")
                         + "\t}\n")
    svc_elems = "\t\telements = {\n" + "\n".join(elements) + "\n\t\t}\n" if elements else ""
    head = (
        f"table ip {table} {{}}\n"
        f"delete table ip {table}\n"
        f"table ip {table} {{\n"
        '\tcomment "rules for kube-proxy"\n'
        "\tmap service-ips {\n"
        "\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n"
        '\t\tcomment "ClusterIP, ExternalIP and LoadBalancer IP traffic"\n'
        f"{svc_elems}"
        "\t}\n"
        "\tmap service-nodeports {\n"
        "\t\ttype inet_proto . inet_service : verdict\n"
        '\t\tcomment "NodePort traffic"\n'
        "\t}\n"
        "\tchain nat-prerouting {\n"
        "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        "\t\tjump services\n"
        "\t}\n"
        "\tchain nat-output {\n"
        # -100 is dstnat; nft 1.0.6 accepts the name only with hook prerouting
        "\t\ttype nat hook output priority -100; policy accept;\n"
        "\t\tjump services\n"
        "\t}\n"
        "\tchain nat-postrouting {\n"
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        "\t\tjump masquerading\n"
        "\t}\n"
        "\tchain services {\n"
        "\t\tip daddr . meta l4proto . th dport vmap @service-ips\n"
        "\t\tfib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports\n"
        "\t}\n"
        "\tchain mark-for-masquerade {\n"
        f"\t\tmark set mark or {mark}\n"
        "\t}\n"
        "\tchain masquerading {\n"
        f"\t\tmark and {mark} == 0 return\n"
        f"\t\tmark set mark xor {mark}\n"
        "\t\tmasquerade fully-random\n"
        "\t}\n"
    )
    return head + "".join(chains) + "}\n"


def _one_service(catalog: ServiceCatalog, i: int, port: int, select: str):
    """(service-ips element, service chain, endpoint chains, chain blocks) of
    service ``i`` on ``port``, formatted exactly as :func:`render_nftables` does."""
    if select not in ("rules", "vmap"):
        raise ValueError(f"one-service updates support select rules or vmap, got {select!r}")
    name = catalog.name(i)
    vip = _ip(catalog.vip_int(i))
    eps = [_ip(catalog.endpoint_int(i, j)) for j in range(catalog.endpoints)]
    svc = service_chain(name, port)
    epcs = [endpoint_chain(name, ep, port) for ep in eps]
    body = [f"ip daddr {vip} tcp dport {port} ip saddr != {catalog.endpoint_net} jump mark-for-masquerade",
            *_pick(epcs, select)]
    blocks = [f"\tchain {svc} {{\n" + "".join(f"\t\t{r}\n" for r in body) + "\t}\n"]
    for ep, epc in zip(eps, epcs):
        blocks.append(f"\tchain {epc} {{\n"
                      f"\t\tip saddr {ep} jump mark-for-masquerade\n"
                      f"\t\tmeta l4proto tcp dnat to {ep}:{port}\n"
                      "\t}\n")
    return f"{vip} . tcp . {port}", svc, epcs, blocks


def render_add_service(catalog: ServiceCatalog, i: int, *, select: str = "rules",
                       table: str = TABLE) -> str:
    """``nft -f`` input that adds service ``i`` of ``catalog`` to a loaded table
    in one transaction: its endpoint and service chains (the table block
    syntax adds to the existing table), then its ``service-ips`` element.
    This is kube-proxy's nftables partial sync for one new service (pure)."""
    parts, elems = [], []
    for port in catalog.ports:
        key, svc, _epcs, blocks = _one_service(catalog, i, port, select)
        parts += blocks[1:] + blocks[:1]   # endpoint chains before the chain that jumps to them
        elems.append(f"{key} : goto {svc}")
    return (f"table ip {table} {{\n" + "".join(parts) + "}\n"
            + f"add element ip {table} service-ips {{ {', '.join(elems)} }}\n")


def render_remove_service(catalog: ServiceCatalog, i: int, *, select: str = "rules",
                          table: str = TABLE) -> str:
    """``nft -f`` input that removes service ``i`` of ``catalog`` from a loaded
    table in one transaction: its ``service-ips`` element first (nothing jumps
    to its chains any more), then its service and endpoint chains (pure)."""
    keys, lines = [], []
    for port in catalog.ports:
        key, svc, epcs, _blocks = _one_service(catalog, i, port, select)
        keys.append(key)
        for chain in (svc, *epcs):
            lines += [f"flush chain ip {table} {chain}", f"delete chain ip {table} {chain}"]
    return f"delete element ip {table} service-ips {{ {', '.join(keys)} }}\n" + "".join(f"{ln}\n" for ln in lines)


def render_change_endpoints(old: ServiceCatalog, new: ServiceCatalog, *, select: str = "rules",
                            table: str = TABLE) -> str:
    """``nft -f`` input that moves the services whose endpoints differ
    between ``old`` and ``new`` (:attr:`ServiceCatalog.rolled`) to their new
    endpoints in one transaction (pure): the new endpoint chains, each
    service chain flushed and refilled to pick among them, then the old
    endpoint chains flushed and deleted.  The ``service-ips`` element is
    unchanged (the service chain keeps its name), as in kube-proxy's partial
    sync of an endpoint change."""
    if (old.services, old.endpoints, old.ports) != (new.services, new.endpoints, new.ports):
        raise ValueError("an endpoint change keeps services, endpoints per service and ports")
    flush, parts, gone = [], [], []
    for i in sorted(old.rolled ^ new.rolled):
        for port in new.ports:
            _key, svc, epcs, blocks = _one_service(new, i, port, select)
            _k, _s, stale, _b = _one_service(old, i, port, select)
            flush.append(f"flush chain ip {table} {svc}")
            parts += blocks[1:] + blocks[:1]
            gone += [c for c in stale if c not in epcs]
    lines = flush + ([f"table ip {table} {{\n" + "".join(parts) + "}"] if parts else [])
    for chain in gone:
        lines += [f"flush chain ip {table} {chain}", f"delete chain ip {table} {chain}"]
    return "".join(f"{ln}\n" for ln in lines)


def delete_table(ns: str, name: str, family: int = socket.AF_INET) -> bool:
    """Delete nftables table ``name`` in namespace ``ns`` with one netlink
    batch; False if there was none.

    ``nft delete table`` first dumps the whole ruleset into its cache, which
    grows faster than the table (the kernel restarts the chain dump from the
    top for every reply buffer); the kernel's own deletion of the table is a
    small fraction of that.  Timings: docs/nftables.md, "Where it differs
    from kube-proxy", item 5.
    """
    try:
        nfnetlink.transact(ns, [nfnetlink.delete_table(name)], family, timeout=3600)
    except nfnetlink.TransactionError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise LabkitError(f"deleting nftables table {name} in {ns}: {os.strerror(exc.errno)}") from None
    return True


# ---- one service's change as nf_tables messages (pure) -------------------------
MASQ_CHAIN = "mark-for-masquerade"
_TCP = bytes([socket.IPPROTO_TCP])


def _a(addr: int) -> bytes:
    return addr.to_bytes(4, "big")


def _service_key(vip: int, port: int) -> bytes:
    """``service-ips`` key ``VIP . tcp . port``: each field padded to 4 bytes."""
    return _a(vip) + _TCP + b"\0\0\0" + port.to_bytes(2, "big") + b"\0\0"


def _chain_messages(catalog: ServiceCatalog, i: int, port: int, table: str = TABLE) -> list[nfnetlink.Message]:
    """The chains of service ``i`` on ``port`` and their rules, the same rules
    :func:`render_nftables` writes with ``select="rules"``, as messages:
    endpoint chains first, then the service chain that jumps to them."""
    nl = nfnetlink
    name, n = catalog.name(i), catalog.endpoints
    eps = [catalog.endpoint_int(i, j) for j in range(n)]
    epcs = [endpoint_chain(name, _ip(ep), port) for ep in eps]
    svc = service_chain(name, port)
    msgs: list[nl.Message] = []
    for ep, epc in zip(eps, epcs):
        msgs += [nl.new_chain(table, epc),
                 nl.new_rule(table, epc, [nl.payload(nl.BASE_NETWORK, 12, 4), nl.cmp(_a(ep)),
                                          nl.verdict(nl.NFT_JUMP, MASQ_CHAIN)]),
                 nl.new_rule(table, epc, [nl.meta(nl.META_L4PROTO), nl.cmp(_TCP),
                                          nl.immediate(_a(ep), nl.REG_1),
                                          nl.immediate(port.to_bytes(2, "big"), nl.REG_2),
                                          nl.dnat_ipv4()])]
    msgs.append(nl.new_chain(table, svc))
    net = catalog.endpoint_net
    msgs.append(nl.new_rule(table, svc, [
        nl.payload(nl.BASE_NETWORK, 16, 4), nl.cmp(_a(catalog.vip_int(i))),
        nl.meta(nl.META_L4PROTO), nl.cmp(_TCP),
        nl.payload(nl.BASE_TRANSPORT, 2, 2), nl.cmp(port.to_bytes(2, "big")),
        nl.payload(nl.BASE_NETWORK, 12, 4), nl.bitwise(net.netmask.packed, b"\0" * 4),
        nl.cmp(net.network_address.packed, nl.CMP_NEQ), nl.verdict(nl.NFT_JUMP, MASQ_CHAIN)]))
    for j, epc in enumerate(epcs[:-1]):   # P(endpoint j) = 1/(n-j) given none before: 1/n each
        msgs.append(nl.new_rule(table, svc, [nl.numgen_random(n - j), nl.cmp(b"\0" * 4),
                                             nl.verdict(nl.NFT_GOTO, epc)]))
    msgs.append(nl.new_rule(table, svc, [nl.verdict(nl.NFT_GOTO, epcs[-1])]))
    return msgs


def _chains_of(catalog: ServiceCatalog, i: int, port: int) -> tuple[str, list[str]]:
    name = catalog.name(i)
    return service_chain(name, port), [endpoint_chain(name, catalog.endpoint(i, j), port)
                                       for j in range(catalog.endpoints)]


def _drop(table: str, chains: Iterable[str]) -> list[nfnetlink.Message]:
    out: list[nfnetlink.Message] = []
    for c in chains:
        out += [nfnetlink.flush_chain(table, c), nfnetlink.delete_chain(table, c)]
    return out


def messages_add_service(catalog: ServiceCatalog, i: int, table: str = TABLE) -> list[nfnetlink.Message]:
    """Service ``i`` of ``catalog`` added to a loaded table (what
    :func:`render_add_service` does, as one nf_tables batch; pure)."""
    msgs: list[nfnetlink.Message] = []
    elems = []
    for port in catalog.ports:
        msgs += _chain_messages(catalog, i, port, table)
        elems.append((_service_key(catalog.vip_int(i), port), nfnetlink.NFT_GOTO,
                      service_chain(catalog.name(i), port)))
    return msgs + [nfnetlink.add_elements(table, "service-ips", elems)]


def messages_remove_service(catalog: ServiceCatalog, i: int, table: str = TABLE) -> list[nfnetlink.Message]:
    """Service ``i`` of ``catalog`` removed: its element, then its chains (pure)."""
    keys = [_service_key(catalog.vip_int(i), port) for port in catalog.ports]
    msgs = [nfnetlink.delete_elements(table, "service-ips", keys)]
    for port in catalog.ports:
        svc, epcs = _chains_of(catalog, i, port)
        msgs += _drop(table, [svc, *epcs])
    return msgs


def messages_change_endpoints(old: ServiceCatalog, new: ServiceCatalog,
                              table: str = TABLE) -> list[nfnetlink.Message]:
    """What :func:`render_change_endpoints` does, as one batch (pure)."""
    if (old.services, old.endpoints, old.ports) != (new.services, new.endpoints, new.ports):
        raise ValueError("an endpoint change keeps services, endpoints per service and ports")
    msgs: list[nfnetlink.Message] = []
    gone: list[str] = []
    for i in sorted(old.rolled ^ new.rolled):
        for port in new.ports:
            svc, epcs = _chains_of(new, i, port)
            _svc, stale = _chains_of(old, i, port)
            fresh = [m for m in _chain_messages(new, i, port, table) if m != nfnetlink.new_chain(table, svc)]
            msgs += [nfnetlink.flush_chain(table, svc), *fresh]
            gone += [c for c in stale if c not in epcs]
    return msgs + _drop(table, gone)


class Nftables(Datapath):
    name = "nftables"
    # `labkit bench program` at 30,000 x 10: (nft's peak + kernel-held) / endpoints,
    # +25%; figures and derivation: docs/experiments.md, "Memory per endpoint"
    mem_per_endpoint = 17_800
    summary = "kube-proxy nftables mode: one service-ips verdict-map lookup, per-service and per-endpoint chains"
    needs = "CONFIG_NF_TABLES, CONFIG_NFT_NAT, CONFIG_NFT_MASQ, CONFIG_NFT_NUMGEN, CONFIG_NFT_FIB_IPV4"
    lookup = "one verdict-map (hash) lookup in service-ips: O(1) in services"
    #: how a service chain picks its endpoint (see the module docstring)
    select = "rules"

    @classmethod
    def unavailable(cls, lab: "Lab | None" = None) -> str | None:
        if not shutil.which("nft"):
            return "nft not found (Debian package nftables; `sudo make setup` installs it)"
        if lab is not None:
            probe = render_nftables(ServiceCatalog(services=1, endpoints=2), select=cls.select,
                                    table=PROBE_TABLE)
            try:
                lab.run(lab.node, ["nft", "-f", "-"], input=probe, timeout=60)
            except LabkitError as exc:
                return f"the kernel refused a kube-proxy nftables table: {exc} (needs {cls.needs})"
            finally:
                lab.run(lab.node, ["nft", "delete", "table", "ip", PROBE_TABLE], check=False)
        return None

    @staticmethod
    def render(catalog: ServiceCatalog) -> str:
        return render_nftables(catalog, select=Nftables.select)

    def load(self, text: str) -> None:
        self.lab.run(self.lab.node, ["nft", "-f", "-"], input=text, timeout=3600)

    # control-plane operations: one service in place, in one nf_tables transaction
    update_kind = "partial"
    update = ("one nf_tables transaction (loader netlink: one batch, nothing read back; loader nft: "
              "nft -f, which first reads every chain back): add/delete the service's chains and its "
              "service-ips element; new endpoints: their chains added, the service chain refilled, "
              "the old ones deleted")
    changes_endpoints = True
    #: how a change reaches the kernel (the ``loader`` argument of a change):
    #: "netlink" (one batch, nothing read back; the default) or "nft" (``nft -f``
    #: of the same change, as kube-proxy sends it); the netlink path encodes
    #: select="rules" only
    change_loader = "netlink"
    CHANGE_LOADERS = ("netlink", "nft")
    program_loader = "nft"

    def add_service(self, loader: str = "") -> ProgramResult:
        new, i = self._resized(+1), self._loaded_catalog().services
        return self._change(new, loader, lambda: messages_add_service(new, i),
                            lambda: render_add_service(new, i, select=self.select))

    def remove_service(self, loader: str = "") -> ProgramResult:
        old = self._loaded_catalog()
        return self._change(self._resized(-1), loader, lambda: messages_remove_service(old, old.services - 1),
                            lambda: render_remove_service(old, old.services - 1, select=self.select))

    def change_endpoints(self, services: Iterable[int], loader: str = "") -> ProgramResult:
        old, new = self._loaded_catalog(), self._rolled(services)
        return self._change(new, loader, lambda: messages_change_endpoints(old, new),
                            lambda: render_change_endpoints(old, new, select=self.select))

    def _change(self, catalog: ServiceCatalog, loader: str, messages, text) -> ProgramResult:
        netlink = self.loader_of(loader) == "netlink" and self.select == "rules"
        if self.select not in ("rules", "vmap"):
            return self.resync(catalog)
        t0 = time.perf_counter()
        out = messages() if netlink else text()
        t1 = time.perf_counter()
        if netlink:
            nfnetlink.transact(self.lab.node, out, timeout=3600)
        else:
            self.lab.run(self.lab.node, ["nft", "-f", "-"], input=out, timeout=3600)
        t2 = time.perf_counter()
        self.catalog = catalog
        return ProgramResult(render_s=t1 - t0, load_s=t2 - t1)

    def tables(self) -> list[str]:
        """``family name`` of every nftables table in the node namespace (slow while
        a large table is loaded: nft 1.0.6 then dumps every rule)."""
        cp = self.lab.run(self.lab.node, ["nft", "list", "tables"])
        return [ln.split(None, 1)[1] for ln in cp.stdout.splitlines() if ln.startswith("table ")]

    def clear(self) -> None:
        delete_table(self.lab.node, TABLE)

    def describe(self) -> dict:
        cp = self.lab.run(self.lab.node, ["nft", "--version"], check=False)
        return {"nft_version": cp.stdout.strip(), "nft_table": f"ip {TABLE}",
                "nft_endpoint_select": self.select}


# ---- programming-speed benchmark ---------------------------------------------

def bench(services: int, endpoints: int, select: str = "rules", repeat: int = 1) -> list[dict]:
    """Render + ``nft -f`` a catalog in a fresh lab's node namespace, ``repeat``
    times; returns one record per run (seconds)."""
    cat = ServiceCatalog(services=services, endpoints=endpoints)
    out = []
    with Lab(endpoint_cidr=cat.endpoint_cidr, server=False) as lab:
        dp = Nftables(lab)
        for _ in range(repeat):
            t0 = time.perf_counter()
            text = render_nftables(cat, select=select)
            t1 = time.perf_counter()
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            dp.load(text)
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t2 = time.perf_counter()
            dp.teardown()
            t3 = time.perf_counter()
            # CPU time of nft (user + kernel): steadier than wall time on a shared machine
            cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
            out.append({"services": services, "endpoints": endpoints, "select": select,
                        "render_s": round(t1 - t0, 3), "load_s": round(t2 - t1, 3),
                        "program_s": round(t2 - t0, 3), "nft_cpu_s": round(cpu, 3),
                        "nft_maxrss_mb": round(ru1.ru_maxrss / 1024), "delete_s": round(t3 - t2, 3),
                        "text_mb": round(len(text) / 1e6, 1)})
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -c 'import labkit.datapaths.nftables as m; m.main()' --services 10000``"""
    ap = argparse.ArgumentParser(prog="labkit.datapaths.nftables.main",
                                 description="Time render + nft -f of the nftables datapath in a lab.")
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--select", choices=SELECT_MODES, default="rules")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args(argv)
    for rec in bench(args.services, args.endpoints, args.select, args.repeat):
        print(json.dumps(rec), flush=True)
    return 0


"""An eBPF service datapath in the style of Cilium's ``bpf/lib/lb.h``.

Layout (the C side is ``labkit/datapaths/bpf/lb.c`` and ``lb.h``; our own code)::

    lb_services  hash   (VIP, port, proto, slot 0) -> backend count
                        (VIP, port, proto, slot s) -> backend id, s = 1..count
    lb_backends  array  backend id -> (address, port)
    lb_ct        LRU    5-tuple + direction -> NAT target, expiry
    lb_stats     per-CPU counters (new flows, replies, redirects, ...)

``ebpf``: tc clsact ingress programs on the node's veths (``n0``: DNAT of
client traffic to a service, ``n1``: reverse NAT of backend replies), which
route the rewritten packet themselves (``bpf_fib_lookup`` + ``bpf_redirect``)
so netfilter never sees it.  ``ebpf-xdp``: the same lookups as XDP programs.
See docs/ebpf.md for the hooks and why.

Here: the map layout and :func:`render_maps` (pure, unit-tested), which
turns a catalog into the maps' exact bytes, and the datapath classes.  The
kernel-facing half is :mod:`labkit.host.bpf` (the ``bpf()`` system call,
bpffs, clang and bpftool): ``setup`` compiles ``lb.c`` once per lab,
creates maps sized to the catalog, loads the programs with bpftool, fills
the maps with ``BPF_MAP_UPDATE_BATCH`` and attaches.  Everything is
pinned under a private bpffs instance for the run, recorded in the run's
state before it is made, and removed by ``clear`` / at lab close.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
import tempfile
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from labkit.core.catalog import ServiceCatalog
from labkit.core.errors import LabkitError
from labkit.datapaths.base import Datapath, ProgramResult
from labkit.host import bpf, netns
from labkit.host.state import remove_path

if TYPE_CHECKING:  # pragma: no cover
    from labkit.lab.lab import Lab

# ---- map layouts: byte for byte as in labkit/datapaths/bpf/lb.h -----------------------
SVC_KEY = np.dtype([("addr", ">u4"), ("port", ">u2"), ("slot", "=u2"), ("proto", "u1"),
                    ("pad", "V3")])
SVC_VAL = np.dtype([("backend_id", "=u4"), ("count", "=u2"), ("flags", "=u2")])
BACKEND = np.dtype([("addr", ">u4"), ("port", ">u2"), ("proto", "u1"), ("pad", "V1")])
CT_KEY = struct.Struct("=4s4sHHBB2x")          # saddr daddr sport dport (network order) proto dir
CT_VAL = struct.Struct("=Q4sHBxI4x")           # expires nat_addr nat_port closing backend_id
assert (SVC_KEY.itemsize, SVC_VAL.itemsize, BACKEND.itemsize) == (12, 8, 8)
assert (CT_KEY.size, CT_VAL.size) == (16, 24)

IPPROTO_TCP = 6
CT_FORWARD, CT_REPLY = 0, 1
CT_ENTRIES = 262_144   # LRU: two entries per flow
STATS = ("new", "established", "reply", "redirect", "redirect_neigh", "stack", "no_backend", "error")
MAPS = ("lb_services", "lb_backends", "lb_ct", "lb_stats")
PIN = "@PIN@"          # placeholder for the pin directory in rendered text


# ---- pure rendering ----------------------------------------------------------
@dataclass(frozen=True)
class MapEntries:
    """The exact contents of the service and backend maps for a catalog."""
    service_keys: np.ndarray    # SVC_KEY
    service_values: np.ndarray  # SVC_VAL
    backend_ids: np.ndarray     # uint32, host order
    backends: np.ndarray        # BACKEND

    @property
    def service_max(self) -> int:
        return max(1, len(self.service_keys))

    @property
    def backend_max(self) -> int:
        return int(self.backend_ids.max()) + 1 if len(self.backend_ids) else 1


def render_maps(catalog: "ServiceCatalog", first: int = 0) -> MapEntries:
    """Map entries for ``catalog`` (pure, vectorized); with ``first``, only
    those of services ``first`` .. N-1 (one service in place: add_service).

    Service ``i``, port index ``k``: slot 0 holds the endpoint count E, slot
    ``s`` (1..E) the backend id ``1 + ((i * E) + s - 1) * P + k``; backend id
    0 is never used.  Backend ``(i, j, k)`` is endpoint ``j`` of service
    ``i`` on port ``ports[k]``.
    """
    return _entries(catalog, np.arange(first, max(first, catalog.services), dtype=np.uint64))


def render_backends(catalog: "ServiceCatalog", services: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """(backend ids, backends) of ``services`` (pure): what a change of their
    endpoints rewrites.  The ids of a service never change, only the
    addresses behind them (:attr:`ServiceCatalog.rolled`)."""
    e = _entries(catalog, np.asarray(sorted(services), dtype=np.uint64))
    return e.backend_ids, e.backends


def _entries(catalog: "ServiceCatalog", idx: np.ndarray) -> MapEntries:
    e, p = catalog.endpoints, len(catalog.ports)
    s = len(idx)
    ports = np.asarray(catalog.ports, dtype=np.uint32)
    i = idx[:, None, None]
    k = np.arange(p, dtype=np.uint64)[None, :, None]
    slot = np.arange(e + 1, dtype=np.uint64)[None, None, :]

    keys = np.zeros((s, p, e + 1), SVC_KEY)
    keys["addr"] = catalog.vip_int(0) + i if s else 0
    keys["port"] = ports[None, :, None]
    keys["slot"] = slot
    keys["proto"] = IPPROTO_TCP
    vals = np.zeros((s, p, e + 1), SVC_VAL)
    vals["count"][:, :, 0] = e
    vals["backend_id"][:, :, 1:] = (1 + (i * e + slot[:, :, 1:] - 1) * p + k)

    j = np.arange(e, dtype=np.uint64)[None, :, None]
    k2 = np.arange(p, dtype=np.uint64)[None, None, :]
    # a service whose endpoints were replaced has them shifted (ServiceCatalog.rolled)
    rolled = np.fromiter(catalog.rolled, dtype=np.uint64, count=len(catalog.rolled))
    shift = (np.isin(idx, rolled).astype(np.uint64) * catalog.roll_offset)[:, None, None]
    backends = np.zeros((s, e, p), BACKEND)
    base = int(catalog.endpoint_net.network_address) + 1   # endpoint (0, 0) before any shift
    backends["addr"] = base + i * e + j + shift if s else 0
    backends["port"] = ports[None, None, :]
    backends["proto"] = IPPROTO_TCP
    ids = (1 + (i * e + j) * p + k2).astype(np.uint32)
    return MapEntries(keys.ravel(), vals.ravel(), ids.ravel(), backends.ravel())


def spare_entries(catalog: "ServiceCatalog") -> tuple[int, int]:
    """(service-map keys, backend ids) one more service of ``catalog`` needs."""
    p = len(catalog.ports)
    return (catalog.endpoints + 1) * p, catalog.endpoints * p


def _hex(b: bytes) -> str:
    return " ".join(f"{x:02x}" for x in b)


def render_batch(catalog: "ServiceCatalog") -> str:
    """The same map entries as ``bpftool batch`` commands (pure).

    Map paths start with the ``@PIN@`` placeholder, which :meth:`Ebpf.load`
    replaces with the pin directory.
    """
    m = render_maps(catalog)
    svc = f"map update pinned {PIN}/lb_services"
    out = []
    per = catalog.endpoints + 1
    for n in range(0, len(m.service_keys), per):
        k0 = m.service_keys[n]
        vip = ipaddress.IPv4Address(int(k0["addr"]))
        out.append(f"# {catalog.name(n // per // len(catalog.ports))} {vip}:{int(k0['port'])}/tcp: "
                   f"{int(m.service_values[n]['count'])} backends")
        for x in range(n, n + per):
            out.append(f"{svc} key hex {_hex(m.service_keys[x].tobytes())} "
                       f"value hex {_hex(m.service_values[x].tobytes())}")
    for bid, be in zip(m.backend_ids, m.backends):
        out.append(f"map update pinned {PIN}/lb_backends key hex {_hex(bid.tobytes())} "
                   f"value hex {_hex(be.tobytes())}")
    return "\n".join(out) + "\n"


def source_path() -> str:
    return str(resources.files("labkit.datapaths") / "bpf" / "lb.c")


# ---- per-lab resources: the compiled object and the run's bpffs ---------------------
@dataclass
class _LabBpf:
    obj: str
    clang: str
    pin_root: str


_per_lab: "weakref.WeakKeyDictionary[Lab, _LabBpf]" = weakref.WeakKeyDictionary()


def _mount_bpffs(lab: "Lab") -> str:
    """A private bpffs instance for this run; unmounting it drops every pin.

    The mount point is a directory the lab has just made inside its private
    (0700, unpredictably named) work directory, so it cannot be a path someone
    else planted; it is recorded as this run's mount before mounting, and only
    that mount point is unmounted again."""
    path = lab.mkdtemp("bpffs")
    lab.state.add("mounts", path)

    def remove() -> None:
        remove_path(path)  # unmounts first, never through a symlink
        lab.state.discard("mounts", path)
    lab.defer(f"unmount bpffs {path}", remove)
    bpf.mount_bpffs(path)
    return path


def _lab_bpf(lab: "Lab") -> _LabBpf:
    ctx = _per_lab.get(lab)
    if ctx is None:
        obj, clang = bpf.compile_object(lab.mkdtemp("bpf"), source_path())
        ctx = _per_lab[lab] = _LabBpf(obj, clang, _mount_bpffs(lab))
    return ctx


@dataclass(frozen=True)
class CtEntry:
    """One connection-tracking entry, addresses as strings, ports as ints."""
    saddr: str
    daddr: str
    sport: int
    dport: int
    proto: int
    reply: bool
    nat_addr: str
    nat_port: int
    backend_id: int
    closing: bool


# ---- the datapaths ---------------------------------------------------------------
class Ebpf(Datapath):
    name = "ebpf"
    # an estimate, not a measurement: two hash-map elements per endpoint (slot and
    # backend) with the kernel's overhead; the measured change was within the noise
    # (docs/experiments.md, "Memory per endpoint")
    mem_per_endpoint = 256
    summary = ("Cilium-style eBPF load balancer: tc programs on the node's veths, hash-map "
               "service lookup, CT map, redirect past netfilter")
    needs = ("clang (-target bpf), bpftool, libbpf-dev, linux-libc-dev; kernel BPF syscall, "
             "bpffs, tc clsact + cls_bpf, bpf_fib_lookup and bpf_redirect_neigh (5.10+)")
    lookup = "hash-map lookup in tc ingress, before netfilter: O(1)"
    #: interface -> program, in the node namespace
    programs: ClassVar[dict[str, str]] = {"n0": "lb_from_client", "n1": "lb_from_backend"}

    def __init__(self, lab: "Lab") -> None:
        super().__init__(lab)
        self._fds: dict[str, int] = {}
        self._pin_dir: str | None = None
        self._attached = False
        self._entries: dict[str, int] = {}
        self._timing: dict[str, float] = {}
        self._deferred = False

    # -- availability ---------------------------------------------------------
    @classmethod
    def unavailable(cls, lab: "Lab | None" = None) -> str | None:
        if os.geteuid() != 0:
            return "needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"
        try:
            bpf.toolchain()
            if lab is not None:
                dp = cls(lab)
                try:
                    dp.setup(ServiceCatalog(services=1, endpoints=2, endpoint_cidr=lab.endpoint_cidr))
                finally:
                    dp.teardown()
        except LabkitError as exc:
            return str(exc)
        return None

    # -- rendering (pure) -----------------------------------------------------
    @staticmethod
    def render(catalog: "ServiceCatalog") -> str:
        """bpftool batch text; ``setup`` writes the same bytes with the batch syscall."""
        return render_batch(catalog)

    # -- kernel -------------------------------------------------------------------
    def setup(self, catalog: "ServiceCatalog") -> ProgramResult:
        self.clear()
        t0 = time.perf_counter()
        entries = render_maps(catalog)
        t1 = time.perf_counter()
        try:
            self._prepare(entries, catalog)
            t_fill = time.perf_counter()
            bpf.map_update_batch(self._fds["lb_services"], entries.service_keys, entries.service_values)
            bpf.map_update_batch(self._fds["lb_backends"], entries.backend_ids, entries.backends)
            t_attach = time.perf_counter()
            self._attach()
        except BaseException as exc:
            self.clear()
            if isinstance(exc, OSError):
                raise LabkitError(f"{self.name}: programming the maps failed: {exc}") from None
            raise
        self._entries = {"lb_services": len(entries.service_keys), "lb_backends": len(entries.backends)}
        t2 = time.perf_counter()
        self._timing.update(render_s=t1 - t0, fill_s=t_attach - t_fill, attach_s=t2 - t_attach)
        self.catalog = catalog
        return ProgramResult(render_s=t1 - t0, load_s=t2 - t1)

    def load(self, text: str) -> None:
        """Apply ``render`` text with ``bpftool batch`` (slow; for inspection and
        tests) to maps created by ``prepare`` / ``setup``, then attach."""
        if self._pin_dir is None:
            raise LabkitError("ebpf: load() fills maps made by prepare(); call prepare(catalog) first")
        bpf.batch(text.replace(PIN, self._pin_dir))
        self._attach()

    # -- control-plane operations: one service in place ------------------------
    update_kind = "partial"
    update = ("map updates in place: backends, then the service's slots with slot 0 (the "
              "count) last, as Cilium orders them; removal in reverse; new endpoints: "
              "the backends' entries rewritten")
    changes_endpoints = True
    change_loader = program_loader = "bpf()"

    def add_service(self, loader: str = "") -> ProgramResult:
        self.loader_of(loader)
        new, old = self._resized(+1), self._loaded_catalog()
        t0 = time.perf_counter()
        e = render_maps(new, first=old.services)
        master = e.service_keys["slot"] == 0
        t1 = time.perf_counter()
        try:
            bpf.map_update_batch(self._fds["lb_backends"], e.backend_ids, e.backends)
            bpf.map_update_batch(self._fds["lb_services"], e.service_keys[~master], e.service_values[~master])
            bpf.map_update_batch(self._fds["lb_services"], e.service_keys[master], e.service_values[master])
        except OSError as exc:
            raise LabkitError(f"{self.name}: adding a service to the maps failed: {exc}") from None
        t2 = time.perf_counter()
        self._entries = {"lb_services": self._entries.get("lb_services", 0) + len(e.service_keys),
                         "lb_backends": self._entries.get("lb_backends", 0) + len(e.backends)}
        self.catalog = new
        return ProgramResult(render_s=t1 - t0, load_s=t2 - t1)

    def change_endpoints(self, services: Iterable[int], loader: str = "") -> ProgramResult:
        """New addresses behind the services' backend ids, one batch update
        of the backends map (the service map does not change)."""
        self.loader_of(loader)
        new = self._rolled(services)
        t0 = time.perf_counter()
        ids, backends = render_backends(new, services)
        t1 = time.perf_counter()
        try:
            bpf.map_update_batch(self._fds["lb_backends"], ids, backends)
        except OSError as exc:
            raise LabkitError(f"{self.name}: changing endpoints in the maps failed: {exc}") from None
        t2 = time.perf_counter()
        self.catalog = new
        return ProgramResult(render_s=t1 - t0, load_s=t2 - t1)

    def remove_service(self, loader: str = "") -> ProgramResult:
        self.loader_of(loader)
        new, old = self._resized(-1), self._loaded_catalog()
        t0 = time.perf_counter()
        e = render_maps(old, first=new.services)
        master = e.service_keys["slot"] == 0
        t1 = time.perf_counter()
        try:
            bpf.map_delete(self._fds["lb_services"], e.service_keys[master])
            bpf.map_delete(self._fds["lb_services"], e.service_keys[~master])
            # an array map cannot delete: clear the backends instead
            bpf.map_update_batch(self._fds["lb_backends"], e.backend_ids, np.zeros_like(e.backends))
        except OSError as exc:
            raise LabkitError(f"{self.name}: removing a service from the maps failed: {exc}") from None
        t2 = time.perf_counter()
        self._entries = {"lb_services": self._entries.get("lb_services", 0) - len(e.service_keys),
                         "lb_backends": self._entries.get("lb_backends", 0) - len(e.backends)}
        self.catalog = new
        return ProgramResult(render_s=t1 - t0, load_s=t2 - t1)

    def prepare(self, catalog: "ServiceCatalog") -> None:
        """Maps sized for ``catalog`` and programs loaded, but empty and detached."""
        self.clear()
        try:
            self._prepare(render_maps(catalog), catalog)
        except BaseException as exc:
            self.clear()
            if isinstance(exc, OSError):
                raise LabkitError(f"{self.name}: loading failed: {exc}") from None
            raise
        self.catalog = catalog

    def _prepare(self, entries: MapEntries, catalog: "ServiceCatalog") -> None:
        ctx = _lab_bpf(self.lab)
        if not self._deferred:  # the lab's close undoes a setup nobody tore down
            self.lab.defer(f"clear {self.name} datapath", self.clear)
            self._deferred = True
        self._pin_dir = pin = tempfile.mkdtemp(prefix=f"{self.name}-", dir=ctx.pin_root)
        # room for one more service, so add_service can change the maps in place
        spare_keys, spare_ids = spare_entries(catalog)
        sizes = {"lb_services": (bpf.BPF_MAP_TYPE_HASH, 12, 8, entries.service_max + spare_keys),
                 "lb_backends": (bpf.BPF_MAP_TYPE_ARRAY, 4, 8, entries.backend_max + spare_ids),
                 "lb_ct": (bpf.BPF_MAP_TYPE_LRU_HASH, 16, 24, CT_ENTRIES),
                 "lb_stats": (bpf.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, len(STATS))}
        t_maps = time.perf_counter()
        try:
            for m, (kind, ks, vs, n) in sizes.items():
                self._fds[m] = bpf.map_create(kind, ks, vs, n, m)
                bpf.obj_pin(self._fds[m], f"{pin}/{m}")
        except OSError as exc:
            raise LabkitError(f"cannot create BPF map {m} ({n:,} entries): {exc}") from None
        t_load = time.perf_counter()
        bpf.load_programs(ctx.obj, f"{pin}/prog", MAPS, pin)
        for prog in self._all_programs():
            self._fds[prog] = bpf.obj_get(f"{pin}/prog/{prog}")
        self._timing = {"maps_s": t_load - t_maps, "load_s": time.perf_counter() - t_load}

    def _all_programs(self) -> list[str]:
        return list(self.programs.values())

    def _attach(self) -> None:
        if self._attached:
            return
        progs = {ifname: (self._fds[p], p) for ifname, p in self.programs.items()}

        def attach(ipr) -> None:
            for ifname, (fd, prog) in progs.items():
                idx = ipr.link_lookup(ifname=ifname)[0]
                ipr.tc("add", "clsact", idx)
                ipr.tc("add-filter", "bpf", idx, ":1", fd=fd, name=prog, parent="ffff:fff2",
                       classid=1, direct_action=True)
        self._attached = True  # before: a half-done attach is undone by clear()
        try:
            netns.netlink(self.lab.node, attach)
        except Exception as exc:
            raise LabkitError(f"cannot attach the tc programs in {self.lab.node}: {exc}") from None

    def _detach(self) -> None:
        def detach(ipr) -> None:
            for ifname in self.programs:
                idx = ipr.link_lookup(ifname=ifname)
                if idx:
                    try:
                        ipr.tc("del", "clsact", idx[0])
                    except Exception:  # noqa: BLE001 - already gone
                        pass
        if self.lab.node in netns.list_namespaces():
            netns.netlink(self.lab.node, detach)

    def clear(self) -> None:
        if self._attached:
            self._detach()
            self._attached = False
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._pin_dir is not None:
            remove_path(self._pin_dir)
            self._pin_dir = None
        self._entries = {}

    # -- observation -------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Packet counters of the programs, summed over CPUs."""
        fd = self._fds.get("lb_stats")
        if fd is None:
            return {}
        ncpu = bpf.possible_cpus()
        out = {}
        for key, val in bpf.map_items(fd, 4, 8 * ncpu):
            (n,) = struct.unpack("=I", key)
            if n < len(STATS):
                out[STATS[n]] = sum(struct.unpack(f"={ncpu}Q", val))
        return out

    def path_counters(self) -> dict[str, int] | None:
        st = self.stats()
        if not st:
            return None
        return {"stack": st.get("stack", 0) + st.get("error", 0),
                "redirected": st.get("redirect", 0) + st.get("redirect_neigh", 0)}

    def map_dump(self, name: str) -> list[tuple[bytes, bytes]]:
        """(key, value) bytes of one of the maps (small maps: one syscall pair per entry)."""
        sizes = {"lb_services": (12, 8), "lb_backends": (4, 8), "lb_ct": (CT_KEY.size, CT_VAL.size)}
        if name not in sizes or name not in self._fds:
            raise LabkitError(f"no map {name!r} loaded (maps: {', '.join(sizes)})")
        return list(bpf.map_items(self._fds[name], *sizes[name]))

    def program_ids(self) -> dict[str, int]:
        """Kernel ids of the attached programs, by program name."""
        return {p: bpf.obj_id(self._fds[p]) for p in self._all_programs() if p in self._fds}

    def ct_entries(self) -> list[CtEntry]:
        """The connection-tracking map, both directions."""
        fd = self._fds.get("lb_ct")
        if fd is None:
            return []
        out = []
        for k, v in bpf.map_items(fd, CT_KEY.size, CT_VAL.size):
            sa, da, sp, dp, proto, d = CT_KEY.unpack(k)
            _exp, na, np_, closing, bid = CT_VAL.unpack(v)
            out.append(CtEntry(socket.inet_ntoa(sa), socket.inet_ntoa(da), socket.ntohs(sp),
                               socket.ntohs(dp), proto, d == CT_REPLY, socket.inet_ntoa(na),
                               socket.ntohs(np_), bid, bool(closing)))
        return out

    def describe(self) -> dict:
        ctx = _per_lab.get(self.lab)
        return {"clang_version": ctx.clang if ctx else bpf.tool_version(["clang", "--version"]),
                "bpftool_version": bpf.tool_version(["bpftool", "version"]),
                "hooks": {ifname: f"{self._hook_name()} {prog}" for ifname, prog in self.programs.items()},
                "pin_dir": self._pin_dir,
                "map_entries": dict(self._entries),
                "setup_seconds": {k: round(v, 4) for k, v in self._timing.items()},
                "stats": self.stats()}

    def _hook_name(self) -> str:
        return "tc clsact ingress"


XDP_FLAGS_DRV_MODE = 1 << 2


class EbpfXdp(Ebpf):
    name = "ebpf-xdp"
    summary = ("the ebpf mode's lookups as XDP programs on the node's veths (native veth XDP, "
               "XDP_REDIRECT between them)")
    needs = Ebpf.needs + "; native XDP on veth (4.19+); ethtool (Debian package ethtool)"
    lookup = "hash-map lookup in XDP, before the skb is built: O(1)"
    programs: ClassVar[dict[str, str]] = {"n0": "lb_xdp_from_client", "n1": "lb_xdp_from_backend"}
    #: the peers of redirect targets: (role, ifname); see docs/ebpf.md
    peers: ClassVar[tuple[tuple[str, str], ...]] = (("client", "c0"), ("backend", "b0"))
    peer_program = "lb_xdp_pass"

    def _all_programs(self) -> list[str]:
        return [*self.programs.values(), self.peer_program]

    def _peer_ns(self, role: str) -> str:
        return getattr(self.lab, role)

    @staticmethod
    def _set_xdp(ns: str, links: dict[str, int]) -> None:
        def apply(ipr) -> None:
            for ifname, fd in links.items():
                idx = ipr.link_lookup(ifname=ifname)
                if not idx:
                    if fd < 0:
                        continue
                    raise LabkitError(f"no interface {ifname} in {ns}")
                ipr.link("set", index=idx[0], xdp={"attrs": [["IFLA_XDP_FD", fd],
                                                             ["IFLA_XDP_FLAGS", XDP_FLAGS_DRV_MODE]]})
        if ns not in netns.list_namespaces() and all(fd < 0 for fd in links.values()):
            return  # detaching from a namespace that is gone
        netns.netlink(ns, apply)

    def _tx_csum(self, ns: str, ifname: str, on: bool) -> None:
        """Checksum offload on a peer's transmit side (see docs/ebpf.md: an XDP
        program cannot finish a CHECKSUM_PARTIAL packet, and a redirected
        frame loses that state)."""
        self.lab.run(ns, [netns.require_tool("ethtool", "ethtool"), "-K", ifname,
                          "tx", "on" if on else "off"], check=on is False)

    def _attach(self) -> None:
        if self._attached:
            return
        self._attached = True
        try:
            for role, ifname in self.peers:
                self._tx_csum(self._peer_ns(role), ifname, False)
                self._set_xdp(self._peer_ns(role), {ifname: self._fds[self.peer_program]})
            self._set_xdp(self.lab.node, {ifname: self._fds[p] for ifname, p in self.programs.items()})
        except LabkitError:
            raise
        except Exception as exc:
            raise LabkitError(f"cannot attach the XDP programs (native mode on veth): {exc}") from None

    def _detach(self) -> None:
        for ns, links in ((self.lab.node, dict.fromkeys(self.programs, -1)),
                          *((self._peer_ns(role), {ifname: -1}) for role, ifname in self.peers)):
            try:
                self._set_xdp(ns, links)
            except Exception:  # noqa: BLE001 - link or namespace already gone
                pass
        for role, ifname in self.peers:
            if self._peer_ns(role) in netns.list_namespaces():
                self._tx_csum(self._peer_ns(role), ifname, True)

    def _hook_name(self) -> str:
        return "XDP (native)"


__all__ = ["Ebpf", "EbpfXdp", "render_maps", "render_batch", "MapEntries", "CtEntry", "source_path"]

"""The service catalog: N services x E endpoints x ports, as plain data.

Pure and deterministic: the same parameters and seed always give the same
catalog, so renderers built on it can be unit-tested without a kernel.

Addresses are computed, never stored: service ``i`` has the VIP
``service_cidr[1 + i]`` and its endpoint ``j`` the address
``endpoint_cidr[1 + i * E + j]``.  A catalog of 100,000 x 10 therefore costs
no memory until a renderer walks it.  A service in ``rolled`` has had its
endpoints replaced (a rollout: new pods, new addresses): its endpoint ``j`` is
the same address shifted by half the endpoint range.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass, field

from labkit.core.errors import UsageError
from labkit.core.validate import short

DEFAULT_SERVICE_CIDR = "10.96.0.0/12"   # Kubernetes' default service range
DEFAULT_ENDPOINT_CIDR = "10.128.0.0/9"  # room for 8M endpoints ("pod" IPs)
DEFAULT_PORTS = (80,)
MAX_SERVICES = 1_000_000
MAX_ENDPOINTS = 1_000


def _net(value: str, what: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        why = f" ({exc})" if len(str(exc)) <= 100 else ""
        raise UsageError(f"{what} {short(value)} is not an IPv4 network in CIDR form{why}") from None
    if net.version != 4:
        raise UsageError(f"{what} {short(value)}: only IPv4 is supported")
    return net


def chain_hash(name: str, port: int, proto: str = "tcp") -> str:
    """A 16-character base32 digest of a service port, for chain names.

    Same idea as kube-proxy's chain names (a hash keeps them unique and
    within iptables' 28-character limit); our own encoding.
    """
    digest = hashlib.sha256(f"{name}:{port}/{proto}".encode()).digest()
    return base64.b32encode(digest).decode()[:16]


@dataclass(frozen=True)
class ServiceCatalog:
    services: int
    endpoints: int = 10
    ports: tuple[int, ...] = DEFAULT_PORTS
    service_cidr: str = DEFAULT_SERVICE_CIDR
    endpoint_cidr: str = DEFAULT_ENDPOINT_CIDR
    namespace: str = "default"
    #: services whose endpoints were replaced once (see the module docstring)
    rolled: frozenset[int] = frozenset()
    _svc_net: ipaddress.IPv4Network = field(init=False, repr=False, compare=False)
    _ep_net: ipaddress.IPv4Network = field(init=False, repr=False, compare=False)
    _roll: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for what, val in (("services", self.services), ("endpoints", self.endpoints)):
            if isinstance(val, bool) or not isinstance(val, int):
                raise UsageError(f"{what} must be a whole number, got {short(val)}")
        if self.services < 0:
            raise UsageError(f"services must be >= 0, got {self.services}")
        if self.services > MAX_SERVICES:
            raise UsageError(f"services must be <= {MAX_SERVICES:,}, got {self.services:,}")
        if not 1 <= self.endpoints <= MAX_ENDPOINTS:
            raise UsageError(f"endpoints per service must be 1..{MAX_ENDPOINTS}, got {self.endpoints}")
        ports = tuple(self.ports)
        if not ports:
            raise UsageError("at least one service port is needed")
        for p in ports:
            if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
                raise UsageError(f"port {short(p)} is not in 1..65535")
        if len(set(ports)) != len(ports):
            raise UsageError(f"ports repeat: {short(ports)}")
        object.__setattr__(self, "ports", ports)
        svc = _net(self.service_cidr, "service CIDR")
        ep = _net(self.endpoint_cidr, "endpoint CIDR")
        if svc.overlaps(ep):
            raise UsageError(f"service CIDR {svc} overlaps endpoint CIDR {ep}")
        # usable: skip the network address; keep the last one free for the
        # "none" target (an address that is no service and no endpoint).
        if self.services > svc.num_addresses - 2:
            raise UsageError(
                f"service CIDR {svc} holds {svc.num_addresses - 2:,} VIPs, "
                f"too small for {self.services:,} services")
        need = self.services * self.endpoints
        if need > ep.num_addresses - 3:
            raise UsageError(
                f"endpoint CIDR {ep} holds {ep.num_addresses - 3:,} endpoints, "
                f"too small for {self.services:,} x {self.endpoints} = {need:,}")
        rolled = frozenset(self.rolled)
        bad = [i for i in rolled if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.services]
        if bad:
            raise UsageError(f"rolled services {sorted(bad)} are not in 0..{self.services - 1}")
        if rolled and need > ep.num_addresses // 2 - 3:
            raise UsageError(f"endpoint CIDR {ep} has no room for replaced endpoints of "
                             f"{self.services:,} x {self.endpoints} (half of it is needed)")
        object.__setattr__(self, "rolled", rolled)
        object.__setattr__(self, "_svc_net", svc)
        object.__setattr__(self, "_ep_net", ep)
        object.__setattr__(self, "_roll", ep.num_addresses // 2)

    # -- addresses -------------------------------------------------------
    @property
    def service_net(self) -> ipaddress.IPv4Network:
        return self._svc_net

    @property
    def endpoint_net(self) -> ipaddress.IPv4Network:
        return self._ep_net

    def vip_int(self, i: int) -> int:
        return int(self._svc_net.network_address) + 1 + i

    def vip(self, i: int) -> str:
        self._check(i)
        return str(ipaddress.IPv4Address(self.vip_int(i)))

    @property
    def roll_offset(self) -> int:
        """How far a replaced endpoint's address lies from the original's."""
        return self._roll

    def endpoint_int(self, i: int, j: int) -> int:
        shift = self._roll if self.rolled and i in self.rolled else 0
        return int(self._ep_net.network_address) + 1 + i * self.endpoints + j + shift

    def endpoint(self, i: int, j: int) -> str:
        self._check(i)
        if not 0 <= j < self.endpoints:
            raise IndexError(f"endpoint {j} of {self.endpoints}")
        return str(ipaddress.IPv4Address(self.endpoint_int(i, j)))

    def endpoints_of(self, i: int) -> list[str]:
        return [self.endpoint(i, j) for j in range(self.endpoints)]

    def service_of_endpoint(self, addr: str) -> tuple[int, int] | None:
        """(service, endpoint index) that owns ``addr``, or None."""
        off = int(ipaddress.IPv4Address(addr)) - int(self._ep_net.network_address) - 1
        shifted = self.rolled and off >= self._roll
        if shifted:
            off -= self._roll
        if off < 0 or off >= self.services * self.endpoints:
            return None
        i, j = divmod(off, self.endpoints)
        return (i, j) if (i in self.rolled) == bool(shifted) else None

    @property
    def none_address(self) -> str:
        """Inside the endpoint range, owned by the backend, and no service's VIP
        or endpoint: traffic to it walks the whole service table and matches
        nothing."""
        return str(self._ep_net.broadcast_address - 1)

    def name(self, i: int) -> str:
        return f"{self.namespace}/svc-{i:06d}"

    def chain_id(self, i: int, port: int) -> str:
        return chain_hash(self.name(i), port)

    def endpoint_chain_id(self, i: int, j: int, port: int) -> str:
        return chain_hash(f"{self.name(i)}@{self.endpoint(i, j)}", port)

    def _check(self, i: int) -> None:
        if not 0 <= i < self.services:
            raise IndexError(f"service {i} of {self.services}")

    def target_index(self, target: str) -> int | None:
        """Service index of a fixed target position (None for random/none)."""
        if self.services == 0 or target in ("random", "none"):
            return None
        return {"first": 0, "middle": self.services // 2, "last": self.services - 1}[target]

    @property
    def total_endpoints(self) -> int:
        return self.services * self.endpoints

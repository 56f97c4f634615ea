"""The lab's topology as plain data (no kernel calls here).

::

      client ns                 node ns ("Kubernetes node")               backend ns
   +-------------+   veth   +-------------------------------+   veth   +-----------------+
   | probes,     |  c0 - n0 | datapath under test:          |  n1 - b0 | servers on      |
   | clients     |----------| iptables / nftables / IPVS /  |----------| 0.0.0.0:<ports> |
   | 172.30.0.2  |          | eBPF     172.30.0.1 172.30.1.1|          | 172.30.1.2      |
   +-------------+          +-------------------------------+          | local <endpoint |
     default via node           ip_forward=1                          |  CIDR> dev lo   |
                                <endpoint CIDR> via backend            +-----------------+

The backend owns the whole endpoint range through an AnyIP ``local`` route,
so one namespace answers for every endpoint of every service.
"""
from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass

from labkit.core.errors import UsageError

PREFIX = "lk"  # every labkit namespace is named lk-<run>-<role>
RUN_ID_RE = re.compile(r"^[a-z0-9]{6}$")
NS_RE = re.compile(rf"^{PREFIX}-([a-z0-9]{{6}})-(cl|nd|be)$")


def new_run_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(6))


@dataclass(frozen=True)
class Topology:
    run_id: str
    client_net: str = "172.30.0.0/24"
    backend_net: str = "172.30.1.0/24"

    def __post_init__(self) -> None:
        if not RUN_ID_RE.match(self.run_id):
            raise UsageError(f"run id {self.run_id!r} must be 6 lowercase letters or digits")
        a = ipaddress.ip_network(self.client_net)
        b = ipaddress.ip_network(self.backend_net)
        if a.overlaps(b):
            raise UsageError(f"client link {a} overlaps backend link {b}")
        if a.num_addresses < 4 or b.num_addresses < 4:
            raise UsageError("link networks need at least a /30")

    # namespaces
    @property
    def client_ns(self) -> str:
        return f"{PREFIX}-{self.run_id}-cl"

    @property
    def node_ns(self) -> str:
        return f"{PREFIX}-{self.run_id}-nd"

    @property
    def backend_ns(self) -> str:
        return f"{PREFIX}-{self.run_id}-be"

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.client_ns, self.node_ns, self.backend_ns)

    # interfaces (names are per namespace, so they can be fixed)
    client_if = "c0"        # in client ns, towards node
    node_client_if = "n0"   # in node ns, towards client
    node_backend_if = "n1"  # in node ns, towards backend
    backend_if = "b0"       # in backend ns, towards node

    # addresses
    def _host(self, net: str, k: int) -> str:
        return str(ipaddress.ip_network(net)[k])

    @property
    def prefixlen_client(self) -> int:
        return ipaddress.ip_network(self.client_net).prefixlen

    @property
    def prefixlen_backend(self) -> int:
        return ipaddress.ip_network(self.backend_net).prefixlen

    @property
    def node_client_ip(self) -> str:
        return self._host(self.client_net, 1)

    @property
    def client_ip(self) -> str:
        return self._host(self.client_net, 2)

    @property
    def node_backend_ip(self) -> str:
        return self._host(self.backend_net, 1)

    @property
    def backend_ip(self) -> str:
        return self._host(self.backend_net, 2)

    def check_against(self, *nets: ipaddress.IPv4Network) -> None:
        """The link networks must not overlap the service or endpoint ranges."""
        for link in (self.client_net, self.backend_net):
            ln = ipaddress.ip_network(link)
            for n in nets:
                if ln.overlaps(n):
                    raise UsageError(f"lab link network {ln} overlaps {n}")

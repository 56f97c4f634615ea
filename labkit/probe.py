"""First-packet probes: a crafted TCP SYN to a service, timed to its SYN-ACK.

Method (DESIGN.md section 4):

* Each probe is a TCP SYN for a fresh 5-tuple (new source port, random
  sequence number), so the node's conntrack misses and the datapath's full
  service lookup runs.  Frames are crafted with scapy *before* the timed loop
  and sent as prebuilt bytes from one reused scapy L2 socket.
* Both timestamps come from the kernel at the same tap: a separate packet
  socket on the client's veth (``SO_TIMESTAMPNS``) sees the outgoing SYN
  (``PACKET_OUTGOING``) and the incoming SYN-ACK.  Python's own delays are not
  in the figure; timestamps stay integer nanoseconds.
* Probes run one at a time: the next SYN leaves only after the previous one
  was answered or timed out, so probes never queue behind each other.
* A tap in the backend namespace records which endpoint address each SYN
  reached after DNAT (matched by the SYN's sequence number, which NAT keeps),
  so every answer can be checked against the service's endpoints.
"""
from __future__ import annotations

import random
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from . import netns
from .errors import LabkitError

if TYPE_CHECKING:  # pragma: no cover
    from .catalog import ServiceCatalog
    from .lab import Lab

ETH_P_IP = 0x0800
ETH_P_ALL = 0x0003
PACKET_HOST = 0
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
TCP_SYN, TCP_RST, TCP_ACK = 0x02, 0x04, 0x10
CMSG_SPACE = socket.CMSG_SPACE(16)
SPORT_LO, SPORT_HI = 10000, 60999
RCVBUF = 16 << 20


@dataclass(frozen=True)
class Probe:
    """One crafted SYN: where it goes and how to recognize its answer."""
    service: int        # catalog index, -1 for the none target
    dst: str
    dport: int
    sport: int
    seq: int
    frame: bytes = field(repr=False)


@dataclass
class ProbeOutcome:
    probe: Probe
    rtt_ns: int | None = None
    error: str = ""          # '' | timeout | rst | wrong-source | bad-ack | no-tx-stamp
    endpoint: str = ""       # address the SYN reached in the backend ('' unknown)


def _ts_ns(ancdata) -> int | None:
    for level, typ, data in ancdata:
        if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack_from("qq", data)
            return sec * 1_000_000_000 + nsec
    return None


def parse_tcp(frame: bytes):
    """(src, dst, sport, dport, seq, ack, flags) of an Ethernet/IPv4/TCP frame, else None."""
    if len(frame) < 54 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    if frame[23] != 6 or len(frame) < 14 + ihl + 14:
        return None
    src = socket.inet_ntoa(frame[26:30])
    dst = socket.inet_ntoa(frame[30:34])
    o = 14 + ihl
    sport, dport, seq, ack = struct.unpack_from("!HHII", frame, o)
    return src, dst, sport, dport, seq, ack, frame[o + 13]


def open_tap(ns: str, ifname: str) -> socket.socket:
    """A packet socket on ``ifname`` inside ``ns`` with kernel rx/tx timestamps."""
    with netns.entered(ns):
        netns.require_inside(ns, "open a probe socket")
        # ETH_P_ALL: only "all protocols" taps see outgoing frames
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        # SO_RCVBUFFORCE (root) is not capped by net.core.rmem_max (212 KiB on stock kernels)
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.bind((ifname, ETH_P_ALL))
    return s


def drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while True:
            sock.recv(65535)
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)


class SynProber:
    """Sends SYN probes from the lab's client namespace and times them.

    Use as a context manager; sockets close on exit.  Open a new prober after
    the lab's node namespace is rebuilt (the veth is new).
    """

    def __init__(self, lab: "Lab", *, timeout: float = 0.5, seed: int = 0,
                 tap_backend: bool = True) -> None:
        self.lab = lab
        self.timeout = timeout
        self.rng = random.Random(seed)
        self.tap_backend = tap_backend
        self._sport = SPORT_LO + self.rng.randrange(SPORT_HI - SPORT_LO)
        self.sender = None
        self.tap = None
        self.btap = None

    # -- sockets -----------------------------------------------------------
    def __enter__(self) -> "SynProber":
        import scapy.arch  # noqa: F401  (sets conf.L2socket for this platform)
        import scapy.layers.l2  # noqa: F401  (registers Ethernet for the socket)
        from scapy.config import conf
        t = self.lab.topo
        with netns.entered(self.lab.client):
            netns.require_inside(self.lab.client)
            self.sender = conf.L2socket(iface=t.client_if, promisc=False)
        self.tap = open_tap(self.lab.client, t.client_if)
        if self.tap_backend:
            self.btap = open_tap(self.lab.backend, t.backend_if)
        return self

    def __exit__(self, *exc) -> None:
        for s in (self.sender, self.tap, self.btap):
            if s is not None:
                s.close()
        self.sender = self.tap = self.btap = None

    # -- crafting ----------------------------------------------------------
    def next_sport(self) -> int:
        p = self._sport
        self._sport = SPORT_LO if p >= SPORT_HI else p + 1
        return p

    def craft(self, service: int, dst: str, dport: int) -> Probe:
        from scapy.layers.inet import IP, TCP
        from scapy.layers.l2 import Ether
        t = self.lab.topo
        sport = self.next_sport()
        seq = self.rng.getrandbits(32)
        pkt = (Ether(src=self.lab.macs[t.client_if], dst=self.lab.macs[t.node_client_if])
               / IP(src=t.client_ip, dst=dst, ttl=64, id=self.rng.getrandbits(16))
               / TCP(sport=sport, dport=dport, flags="S", seq=seq, window=64240,
                     options=[("MSS", 1460)]))
        return Probe(service, dst, dport, sport, seq, bytes(pkt))

    def craft_for(self, catalog: "ServiceCatalog", target: str, n: int) -> list[Probe]:
        """``n`` probes aimed at ``target`` (first|middle|last|random|none).

        With 0 services every target aims at the none address: there is no
        VIP, and the figure is the datapath's cost with an empty table.
        """
        port = catalog.ports[0]
        out = []
        fixed = catalog.target_index(target)
        for _ in range(n):
            if target == "none" or catalog.services == 0:
                out.append(self.craft(-1, catalog.none_address, port))
                continue
            i = fixed if fixed is not None else self.rng.randrange(catalog.services)
            out.append(self.craft(i, catalog.vip(i), port))
        return out

    # -- timing ------------------------------------------------------------
    def run(self, probes: Sequence[Probe]) -> list[ProbeOutcome]:
        if self.sender is None:
            raise LabkitError("SynProber used outside its `with` block")
        drain(self.tap)
        if self.btap is not None:
            drain(self.btap)
        out = [self._one(p) for p in probes]
        if self.btap is not None:
            self._match_backend(out)
        return out

    def _one(self, p: Probe) -> ProbeOutcome:
        tap = self.tap
        res = ProbeOutcome(p)
        t_out = t_in = None
        self.sender.outs.send(p.frame)
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            tap.settimeout(left)
            try:
                data, anc, _flags, addr = tap.recvmsg(128, CMSG_SPACE)
            except (socket.timeout, BlockingIOError):
                break
            h = parse_tcp(data)
            if h is None:
                continue
            src, dst, sport, dport, seq, ack, flags = h
            if addr[2] == PACKET_OUTGOING:
                if sport == p.sport and seq == p.seq and flags & TCP_SYN:
                    t_out = _ts_ns(anc)
                continue
            if dport != p.sport or addr[2] != PACKET_HOST:
                continue
            if flags & TCP_RST:
                res.error = "rst"
                break
            if flags & (TCP_SYN | TCP_ACK) == (TCP_SYN | TCP_ACK):
                t_in = _ts_ns(anc)
                if src != p.dst or sport != p.dport:
                    res.error = "wrong-source"
                elif ack != (p.seq + 1) & 0xFFFFFFFF:
                    res.error = "bad-ack"
                break
        if t_in is None:
            res.error = res.error or "timeout"
        elif t_out is None:
            res.error = res.error or "no-tx-stamp"
        else:
            res.rtt_ns = t_in - t_out
        return res

    def _match_backend(self, outcomes: list[ProbeOutcome]) -> None:
        """Which endpoint address did each SYN reach?  Matched by sequence number."""
        by_seq = {o.probe.seq: o for o in outcomes}
        self.btap.setblocking(False)
        try:
            while True:
                data, _anc, _f, addr = self.btap.recvmsg(128, CMSG_SPACE)
                if addr[2] == PACKET_OUTGOING:
                    continue
                h = parse_tcp(data)
                if h is None or h[6] & (TCP_SYN | TCP_ACK) != TCP_SYN:
                    continue
                o = by_seq.get(h[4])
                if o is not None:
                    o.endpoint = f"{h[1]}:{h[3]}"
        except BlockingIOError:
            pass
        finally:
            self.btap.setblocking(True)

    # -- capacity ----------------------------------------------------------
    def send_rate(self, frames: Sequence[bytes], seconds: float = 2.0) -> float:
        """Prebuilt frames sent per second, back to back, by the reused socket."""
        send = self.sender.outs.send
        n = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while True:
            for f in frames:
                send(f)
            n += len(frames)
            now = time.perf_counter()
            if now >= end:
                return n / (now - t0)


#: probe kinds by name, as used in ``--probe-kinds`` and the ``probe`` column.
#: Each is a context manager with ``craft_for(catalog, target, n)`` and
#: ``run(probes) -> list[ProbeOutcome]``.
PROBERS: dict[str, type] = {"syn": SynProber}

# more kinds live in their own modules, which add themselves to PROBERS when
# imported: keepalive and reuse-<k> (labkit/keepalive.py), http-new and
# http-keepalive (labkit/http_probe.py)
from . import keepalive, http_probe  # noqa: E402,F401  (after the names they import from here)

"""First-packet probes: a crafted TCP SYN to a service, timed to its SYN-ACK.

Method:

* Each probe is a TCP SYN for a fresh 5-tuple (new source port, random
  sequence number), so the node's conntrack misses and the datapath's full
  service lookup runs.  Frames are crafted with scapy *before* the timed loop
  (scapy builds one frame per destination; each probe's id, port and sequence
  number are written into a copy, checksums by scapy's ``checksum``: the same
  bytes, ``tests/test_sweep.py`` checks) and sent as prebuilt bytes from one
  reused scapy L2 socket.
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
from typing import TYPE_CHECKING, ClassVar, Sequence

from labkit.core.errors import LabkitError
from labkit.host import netns
from labkit.probes.base import (
    CMSG_SPACE,
    PACKET_HOST,
    PACKET_OUTGOING,
    SPORT_HI,
    SPORT_LO,
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    Probe,
    ProbeOutcome,
    drain,
    open_tap,
    parse_segment,
    ts_ns,
)

if TYPE_CHECKING:  # pragma: no cover
    from scapy.supersocket import SuperSocket

    from labkit.core.catalog import ServiceCatalog
    from labkit.lab.lab import Lab

#: the backend tap is read after every this many probes, while probing: its socket
#: buffer (RCVBUF) holds a limited number of SYNs, and SYNs beyond it would be lost
#: and their probes judged "unseen at backend"
BACKEND_DRAIN_EVERY = 1000
#: header lengths of a probe frame: Ethernet, IPv4 without options (TCP follows)
_ETH, _IP = 14, 20

class SynProber:
    """Sends SYN probes from the lab's client namespace and times them.

    Use as a context manager; sockets close on exit.  Open a new prober after
    the lab's node namespace is rebuilt (the veth is new).
    """

    kind: ClassVar[str] = "syn"
    new_connection_per_probe: ClassVar[bool] = True
    pacing_supported: ClassVar[bool] = True

    def __init__(self, lab: "Lab", *, timeout: float = 0.5, seed: int = 0,
                 tap_backend: bool = True) -> None:
        self.lab = lab
        self.timeout = timeout
        self.rng = random.Random(seed)
        self.tap_backend = tap_backend
        self._sport = SPORT_LO + self.rng.randrange(SPORT_HI - SPORT_LO)
        self.sender: SuperSocket | None = None
        self.tap: socket.socket | None = None
        self.btap: socket.socket | None = None
        self._templates: dict[tuple[str, str, str, int], bytes] = {}

    # -- sockets -----------------------------------------------------------
    def __enter__(self) -> "SynProber":
        # scapy is imported when probing starts (a slow import, not needed to render or analyse)
        import scapy.arch  # noqa: F401, PLC0415  (sets conf.L2socket for this platform)
        import scapy.layers.l2  # noqa: F401, PLC0415  (registers Ethernet for the socket)
        from scapy.config import conf  # noqa: PLC0415
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
        sport = self.next_sport()
        seq = self.rng.getrandbits(32)
        ip_id = self.rng.getrandbits(16)
        return Probe(service, dst, dport, sport, seq, self.frame(dst, dport, sport, seq, ip_id))

    def scapy_frame(self, dst: str, dport: int, sport: int, seq: int, ip_id: int) -> bytes:
        """The SYN frame as scapy builds it (Ethernet, IPv4, TCP with an MSS option)."""
        from scapy.layers.inet import IP, TCP  # noqa: PLC0415  (heavy: see __enter__)
        from scapy.layers.l2 import Ether  # noqa: PLC0415
        t = self.lab.topo
        return bytes(Ether(src=self.lab.macs[t.client_if], dst=self.lab.macs[t.node_client_if])
                     / IP(src=t.client_ip, dst=dst, ttl=64, id=ip_id)
                     / TCP(sport=sport, dport=dport, flags="S", seq=seq, window=64240,
                           options=[("MSS", 1460)]))

    def frame(self, dst: str, dport: int, sport: int, seq: int, ip_id: int) -> bytes:
        """:meth:`scapy_frame`, byte for byte, at a fraction of its cost: scapy builds
        one frame per destination (and the node's MAC, new with every node), then
        each probe's IP id, source port and sequence number are written into a copy
        and both checksums recomputed with scapy's own ``checksum`` (a full build
        took 0.7 ms a probe here, and the default run sends about 200,000)."""
        from scapy.utils import checksum  # noqa: PLC0415  (heavy: see __enter__)
        t = self.lab.topo
        key = (self.lab.macs[t.client_if], self.lab.macs[t.node_client_if], dst, dport)
        tpl = self._templates.get(key)
        if tpl is None:
            tpl = self._templates[key] = self.scapy_frame(dst, dport, 0, 0, 0)
        f = bytearray(tpl)
        ip, tcp = _ETH, _ETH + _IP
        struct.pack_into("!H", f, ip + 4, ip_id)
        struct.pack_into("!H", f, ip + 10, 0)
        struct.pack_into("!H", f, ip + 10, checksum(bytes(f[ip:tcp])))
        struct.pack_into("!HHI", f, tcp, sport, dport, seq)
        struct.pack_into("!H", f, tcp + 16, 0)
        segment = bytes(f[tcp:])
        pseudo = bytes(f[ip + 12:ip + 20]) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(segment))
        struct.pack_into("!H", f, tcp + 16, checksum(pseudo + segment))
        return bytes(f)

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
    def _out(self) -> socket.socket:
        """The socket the prebuilt frames leave on (scapy's L2 socket's)."""
        if self.sender is None:
            raise LabkitError("SynProber used outside its `with` block")
        outs = self.sender.outs
        assert outs is not None, "scapy's L2 socket sends on its own packet socket"
        return outs

    def run(self, probes: Sequence[Probe]) -> list[ProbeOutcome]:
        outs = self._out()
        tap = self.tap
        assert tap is not None, "opened with the sender in __enter__"
        drain(tap)
        if self.btap is not None:
            drain(self.btap)
        out: list[ProbeOutcome] = []
        by_seq: dict[int, ProbeOutcome] = {}
        for k, p in enumerate(probes, 1):
            o = self._one(outs, tap, p)
            out.append(o)
            by_seq[p.seq] = o
            if self.btap is not None and k % BACKEND_DRAIN_EVERY == 0:
                self._match_backend(self.btap, by_seq)  # before the tap's buffer fills
        if self.btap is not None:
            self._match_backend(self.btap, by_seq)
        return out

    def _one(self, outs: socket.socket, tap: socket.socket, p: Probe) -> ProbeOutcome:
        res = ProbeOutcome(p)
        t_out = t_in = None
        outs.send(p.frame)
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
            h = parse_segment(data)
            if h is None:
                continue
            src, sport, dport, seq, ack, flags = h.src, h.sport, h.dport, h.seq, h.ack, h.flags
            if addr[2] == PACKET_OUTGOING:
                if sport == p.sport and seq == p.seq and flags & TCP_SYN:
                    t_out = ts_ns(anc)
                continue
            if dport != p.sport or addr[2] != PACKET_HOST:
                continue
            if flags & TCP_RST:
                res.error = "rst"
                break
            if flags & (TCP_SYN | TCP_ACK) == (TCP_SYN | TCP_ACK):
                t_in = ts_ns(anc)
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

    @staticmethod
    def _match_backend(btap: socket.socket, by_seq: dict[int, ProbeOutcome]) -> None:
        """Which endpoint address did each SYN reach?  Reads what the backend
        tap holds, matched to the outcomes by sequence number."""
        btap.setblocking(False)
        try:
            while True:
                data, _anc, _f, addr = btap.recvmsg(128, CMSG_SPACE)
                if addr[2] == PACKET_OUTGOING:
                    continue
                h = parse_segment(data)
                if h is None or h.flags & (TCP_SYN | TCP_ACK) != TCP_SYN:
                    continue
                o = by_seq.get(h.seq)
                if o is not None:
                    o.endpoint = f"{h.dst}:{h.dport}"
        except BlockingIOError:
            pass
        finally:
            btap.setblocking(True)

    # -- capacity ----------------------------------------------------------
    def send_rate(self, frames: Sequence[bytes], seconds: float = 2.0) -> float:
        """Prebuilt frames sent per second, back to back, by the reused socket."""
        send = self._out().send
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

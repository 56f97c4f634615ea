"""What every probe kind shares: the probe and outcome records, the kernel
timestamp of a tapped frame, one TCP segment parser, the tap sockets, and the
:class:`Prober` protocol every kind implements.

Timing method (every kind): both timestamps of a round trip are the kernel's
``SO_TIMESTAMPNS`` stamps of two frames seen by one packet socket on the
client's veth, so Python's own delays are never in a figure.
"""
from __future__ import annotations

import random
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Iterator, Protocol, Self, Sequence, TypeVar

from labkit.host import netns

if TYPE_CHECKING:  # pragma: no cover
    from labkit.core.catalog import ServiceCatalog
    from labkit.lab.lab import Lab

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


class ProbeRecord(Protocol):
    """What every kind's probe record has (:class:`Probe`, and the
    connection and HTTP kinds' own records): the service it aims at and the
    address it is sent to."""

    @property
    def service(self) -> int:
        """Catalog index, -1 for the none target."""
        ...

    @property
    def dst(self) -> str: ...


#: the probe record type of one kind (what its ``craft_for`` makes and its ``run`` takes)
P = TypeVar("P", bound=ProbeRecord)


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
    probe: ProbeRecord
    rtt_ns: int | None = None
    error: str = ""          # '' | timeout | rst | wrong-source | bad-ack | no-tx-stamp
    endpoint: str = ""       # address the SYN reached in the backend ('' unknown)


def ts_ns(ancdata) -> int | None:
    for level, typ, data in ancdata:
        if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack_from("qq", data)
            return sec * 1_000_000_000 + nsec
    return None


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


@dataclass(frozen=True)
class Segment:
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes


def parse_segment(frame: bytes) -> Segment | None:
    """An Ethernet/IPv4/TCP frame's addresses, ports, flags and payload (pure).

    The payload ends where the IP datagram ends (Ethernet padding is not
    payload)."""
    if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return None
    ihl = (frame[14] & 0x0F) * 4
    total = struct.unpack_from("!H", frame, 16)[0]
    o = 14 + ihl
    if len(frame) < o + 20:
        return None
    sport, dport, seq, ack = struct.unpack_from("!HHII", frame, o)
    doff = (frame[o + 12] >> 4) * 4
    return Segment(socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34]), sport, dport,
                   seq, ack, frame[o + 13], frame[o + doff:14 + total])


class Prober(Protocol[P]):
    """A probe kind.  Used as a context manager (sockets, connections and
    helper processes live inside the ``with`` block); ``craft_for`` builds
    ``n`` probes aimed at a target before the timed loop, ``run`` times them.

    ``P`` is the kind's probe record: ``run`` takes the records its own
    ``craft_for`` made.
    """
    #: the name in ``--probe-kinds`` and the ``probe`` column
    kind: ClassVar[str]
    #: True when ``run`` sends its probes one by one in the order it iterates them
    #: (so :class:`Paced` can space them); False for kinds that hand a batch to a tool
    pacing_supported: ClassVar[bool]
    #: True when each probe is a new connection (its DNAT choice is a fresh
    #: draw, so the endpoint spread can be judged); False for requests that
    #: reuse one connection
    new_connection_per_probe: ClassVar[bool]

    def __init__(self, lab: "Lab", *, timeout: float = 0.5, seed: int = 0) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: object) -> None: ...
    def craft_for(self, catalog: "ServiceCatalog", target: str, n: int) -> Sequence[P]: ...
    def run(self, probes: Sequence[P]) -> list[ProbeOutcome]: ...


class Paced(Sequence[P]):
    """Probes handed out at the arrival times of a Poisson process of ``rate``
    per second: each one after an exponential gap (mean 1/rate) from the
    previous one's scheduled time, the way first packets of independent
    clients arrive.  The gap is slept by the consumer's iteration, outside the
    timed exchange (the round trip comes from kernel timestamps).  When a probe
    overruns its gap the next one goes at once and the schedule restarts from
    then, so a slow answer never causes a catch-up burst.

    ``rate`` 0 means back to back: no gaps at all."""

    def __init__(self, probes: Sequence[P], rate: float, seed: int = 0) -> None:
        self.probes = probes
        self.rate = float(rate)
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.probes)

    def __getitem__(self, i):  # indexing is not paced
        return self.probes[i]

    def gaps(self) -> list[float]:
        """The gaps in seconds (drawn once per call from the seed)."""
        rng = random.Random(self.rng.random())
        return [rng.expovariate(self.rate) if self.rate > 0 else 0.0 for _ in self.probes]

    def __iter__(self) -> Iterator[P]:
        if self.rate <= 0:
            yield from self.probes
            return
        due = time.monotonic()
        for p, gap in zip(self.probes, self.gaps()):
            due += gap
            left = due - time.monotonic()
            if left > 0:
                time.sleep(left)
            else:
                due = time.monotonic()  # late: the next gap counts from now
            yield p

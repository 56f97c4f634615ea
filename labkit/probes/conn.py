"""Established-connection probes: request/response on open TCP connections.

Two probe kinds, timed on the wire like the SYN probes (kernel
``SO_TIMESTAMPNS`` stamps of both frames, taken on the client's veth):

``keepalive``
    Each probe is one request (a unique 64-byte token) on a TCP connection
    to the service that is *already open*; the backend's echo server
    (:mod:`labkit.lab.server`) sends the same bytes back.  The RTT is from the
    outgoing data segment to the incoming one that carries the token back.
    The connection was opened (and its service lookup done) before the timed
    requests, so each request only meets the node's connection tracking (or
    the eBPF CT map): no new conntrack entry per request.

    Connections: one per target service, opened in ``craft_for`` and kept
    for the prober's life (the sweep's warm-up requests warm the same
    connection).  With the ``random`` target the requests go, in random
    order, to connections to up to :data:`RANDOM_SERVICES` distinct random
    services: an established flow costs the same whatever its service (a hash
    lookup in the conntrack table), and a few connections keep the number of
    open sockets small.  With 0 services, or target ``none``, the connection
    goes to the catalog's none address (no service: no DNAT).

``reuse-<k>`` (k = 1, 2, 3, 5, 10, 30, 100)
    Each probe is a *new* connection carrying k requests, then closed.  Its
    figure is the mean cost of one request when a connection carries k of
    them: ``(handshake RTT + sum of the k request RTTs) / k``, all measured on
    the wire (handshake: outgoing SYN to incoming SYN-ACK).  The client's own
    think time between frames is left out, as in every other labkit figure.
    k = 100 is nginx's default ``keepalive_requests``.

Client and server share one CPU, at real-time priority.  A request's round
trip includes the echo server's turn in user space, and on a shared machine
that turn depends on whatever else runs: left to the scheduler, the server
is woken either on the prober's CPU or on another one (a wake-up across
CPUs, much slower), and under load points mix the two at random.  While
probes run, the probing thread and the echo server are pinned to one CPU and
run at SCHED_FIFO priority 1 (:func:`labkit.host.wire.isolated`; both restored
afterwards), so no other task gets between them and every request takes the
same path; pinning alone, without real-time priority, still lets other
tenants' load move the medians.  Real-time wake-ups add a fixed cost per
round trip; the offset is the same for every mode and service count, so
penalties, which are differences, keep it out.  The measurements behind this
choice are in docs/experiments.md, section 1.

The echo server answers the first connection of its life more slowly per
request than every later one (seen on the backend's veth: the extra time is
inside the server's turn; cause not found; docs/experiments.md, section 1,
has the figure).  Before its first probes in a lab, a prober therefore opens
and closes one connection that is not measured.

Connections are closed with a RST (``SO_LINGER`` 0): the client's 4,536 own
ports (61000-65535, see :mod:`labkit.lab`) never sit in TIME_WAIT, and the
close is never timed.  A backend tap records which endpoint address every
token reached, so each request is checked against its service's endpoints
like a SYN probe.
"""
from __future__ import annotations

import contextlib
import ipaddress
import random
import socket
import struct
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Self, Sequence

from labkit.core.errors import LabkitError
from labkit.host import netns
from labkit.host.wire import PACKET_IGNORE_OUTGOING, SNAPLEN, SOL_PACKET, isolated
from labkit.probes.base import (
    CMSG_SPACE,
    PACKET_HOST,
    PACKET_OUTGOING,
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    ProbeOutcome,
    Prober,
    Segment,
    drain,
    open_tap,
    parse_segment,
    ts_ns,
)

if TYPE_CHECKING:  # pragma: no cover
    from labkit.core.catalog import ServiceCatalog
    from labkit.lab.lab import Lab

TOKEN_BYTES = 64
RANDOM_SERVICES = 16
REUSE_COUNTS = (1, 2, 3, 5, 10, 30, 100)
_primed: "weakref.WeakSet[Lab]" = weakref.WeakSet()


def make_token(prefix: bytes, n: int, size: int = TOKEN_BYTES) -> bytes:
    """A request payload unique within a prober: prefix, counter, padding."""
    head = prefix + struct.pack("!Q", n)
    return head + b"." * (size - len(head))


@dataclass(frozen=True)
class ConnProbe:
    """One keepalive request (``requests`` == 0) or one reuse connection."""
    service: int        # catalog index, -1 for the none address
    dst: str
    dport: int
    requests: int = 0   # reuse-k: requests on the new connection


@dataclass
class Conn:
    """An open connection from the client namespace."""
    service: int
    dst: str
    dport: int
    sock: socket.socket | None = None
    sport: int = 0
    handshake_ns: int | None = None
    error: str = ""


class _ConnProber:
    """Shared machinery: taps, connections, one timed request."""

    #: set by each concrete kind
    kind: ClassVar[str]
    #: each probe is one request on a reused connection: the endpoint spread
    #: of the DNAT choice cannot be judged from these probes
    new_connection_per_probe: ClassVar[bool] = False
    pacing_supported: ClassVar[bool] = True
    #: run client and server at SCHED_FIFO while probing (see the module docstring)
    realtime = True

    def __init__(self, lab: "Lab", *, timeout: float = 0.5, seed: int = 0,
                 tap_backend: bool = True) -> None:
        self.lab = lab
        self.timeout = timeout
        self.rng = random.Random(seed)
        self.tap_backend = tap_backend
        self.prefix = b"LK" + self.rng.getrandbits(32).to_bytes(4, "big")
        self._n = 0
        self.tap: socket.socket | None = None
        self.btap: socket.socket | None = None
        self._by_token: dict[bytes, ProbeOutcome] = {}

    def __enter__(self) -> Self:
        t = self.lab.topo
        if self.lab not in _primed:
            self._prime()
            _primed.add(self.lab)
        self.tap = open_tap(self.lab.client, t.client_if)
        if self.tap_backend:
            self.btap = open_tap(self.lab.backend, t.backend_if)
            self.btap.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        return self

    def __exit__(self, *exc) -> None:
        self.close_all()
        for s in (self.tap, self.btap):
            if s is not None:
                s.close()
        self.tap = self.btap = None

    def close_all(self) -> None:
        pass

    def _prime(self) -> None:
        """One unmeasured connection to the backend (see the module docstring)."""
        addr = str(ipaddress.ip_network(self.lab.endpoint_cidr).broadcast_address - 1)
        with netns.entered(self.lab.client):
            netns.require_inside(self.lab.client, "open a probe connection")
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with s:
            s.settimeout(max(self.timeout, 1.0))
            with contextlib.suppress(OSError):
                s.connect((addr, self.lab.ports[0]))

    # -- connections -----------------------------------------------------
    def _target(self, catalog: "ServiceCatalog", target: str) -> tuple[int, str]:
        if target == "none" or catalog.services == 0:
            return -1, catalog.none_address
        fixed = catalog.target_index(target)
        i = fixed if fixed is not None else self.rng.randrange(catalog.services)
        return i, catalog.vip(i)

    def open(self, service: int, dst: str, dport: int) -> Conn:
        """Connect from the client namespace; time the handshake on the tap."""
        c = Conn(service, dst, dport)
        with netns.entered(self.lab.client):
            netns.require_inside(self.lab.client, "open a probe connection")
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        s.settimeout(self.timeout)
        c.sock = s
        try:
            s.connect((dst, dport))
        except socket.timeout:
            c.error = "timeout"
        except ConnectionRefusedError:
            c.error = "rst"
        except OSError as exc:
            c.error = f"connect: {exc.strerror or exc}"
        try:
            c.sport = s.getsockname()[1]
        except OSError:
            c.sport = 0
        if not c.error:
            c.handshake_ns, err = self._handshake(c)
            c.error = err
        return c

    def _handshake(self, c: Conn) -> tuple[int | None, str]:
        t_syn = t_ack = None
        deadline = time.monotonic() + self.timeout
        while t_ack is None:
            got = self._next_frame(deadline)
            if got is None:
                break
            seg, anc, pkttype = got
            if pkttype == PACKET_OUTGOING:
                if seg.sport == c.sport and seg.flags & (TCP_SYN | TCP_ACK) == TCP_SYN and t_syn is None:
                    t_syn = ts_ns(anc)
            elif pkttype == PACKET_HOST and seg.dport == c.sport \
                    and seg.flags & (TCP_SYN | TCP_ACK) == (TCP_SYN | TCP_ACK):
                if seg.src != c.dst or seg.sport != c.dport:
                    return None, "wrong-source"
                t_ack = ts_ns(anc)
        if t_syn is None or t_ack is None:
            return None, "no-tx-stamp" if t_ack is not None else "handshake-unseen"
        return t_ack - t_syn, ""

    def _client_tap(self) -> socket.socket:
        if self.tap is None:
            raise LabkitError(f"{type(self).__name__} used outside its `with` block")
        return self.tap

    def _next_frame(self, deadline: float) -> tuple[Segment, list[tuple[int, int, bytes]], int] | None:
        """The next TCP frame on the client tap: (segment, ancdata, packet type), or None at the deadline."""
        tap = self._client_tap()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            tap.settimeout(left)
            try:
                data, anc, _flags, addr = tap.recvmsg(SNAPLEN, CMSG_SPACE)
            except (socket.timeout, BlockingIOError):
                return None
            seg = parse_segment(data)
            if seg is not None:
                return seg, anc, addr[2]

    def new_token(self) -> bytes:
        self._n += 1
        return make_token(self.prefix, self._n)

    def exchange(self, c: Conn, token: bytes) -> tuple[int | None, str]:
        """Send one request on ``c`` and time it: outgoing data segment to the
        incoming segment that carries the same bytes back."""
        if c.error:
            return None, c.error
        sock = c.sock
        assert sock is not None, "a connection without an error has its socket until close()"
        try:
            sock.sendall(token)
        except OSError as exc:
            c.error = "rst" if isinstance(exc, ConnectionResetError) else f"send: {exc.strerror or exc}"
            return None, c.error
        t_out = t_in = None
        err = ""
        deadline = time.monotonic() + self.timeout
        while t_in is None:
            got = self._next_frame(deadline)
            if got is None:
                break
            seg, anc, pkttype = got
            if pkttype == PACKET_OUTGOING:
                if seg.sport == c.sport and seg.payload == token and t_out is None:
                    t_out = ts_ns(anc)
            elif pkttype == PACKET_HOST and seg.dport == c.sport:
                if seg.flags & TCP_RST:
                    err = "rst"
                    break
                if seg.payload == token:
                    t_in = ts_ns(anc)
                    if seg.src != c.dst or seg.sport != c.dport:
                        err = "wrong-source"
        # the bytes must come back through the socket too (and be consumed)
        echo = b""
        if not err:
            try:
                while len(echo) < len(token):
                    chunk = sock.recv(len(token) - len(echo))
                    if not chunk:
                        break
                    echo += chunk
            except OSError:
                pass
            if echo != token:
                err = "timeout" if t_in is None else "bad-echo"
        if err:
            c.error = err
            return None, err
        if t_in is None:
            c.error = "timeout"
            return None, "timeout"
        if t_out is None:
            return None, "no-tx-stamp"
        return t_in - t_out, ""

    @staticmethod
    def close(c: Conn) -> None:
        if c.sock is not None:
            c.sock.close()
            c.sock = None

    # -- endpoint check --------------------------------------------------
    def _match_backend(self) -> None:
        """Which endpoint did each token reach?  Read the backend tap so far."""
        if self.btap is None:
            return
        self.btap.setblocking(False)
        try:
            while True:
                data = self.btap.recv(SNAPLEN)
                seg = parse_segment(data)
                if seg is None or not seg.payload:
                    continue
                o = self._by_token.pop(seg.payload, None)
                if o is not None and not o.endpoint:
                    o.endpoint = f"{seg.dst}:{seg.dport}"
        except BlockingIOError:
            pass
        finally:
            self.btap.setblocking(True)

    def server_pids(self) -> list[int]:
        """Processes that answer the requests (pinned with the prober)."""
        srv = getattr(self.lab, "server", None)
        return [srv.pid] if srv is not None and srv.poll() is None else []

    def _start(self) -> None:
        drain(self._client_tap())
        if self.btap is not None:
            drain(self.btap)
        self._by_token.clear()


class KeepaliveProber(_ConnProber):
    """Requests on already open connections (probe kind ``keepalive``)."""

    kind = "keepalive"

    def __init__(self, lab: "Lab", **kw) -> None:
        super().__init__(lab, **kw)
        self.conns: dict[tuple[str, int], Conn] = {}
        self._random: dict[int, list[tuple[int, str]]] = {}

    def close_all(self) -> None:
        for c in self.conns.values():
            self.close(c)
        self.conns.clear()

    def _conn(self, service: int, dst: str, dport: int) -> Conn:
        c = self.conns.get((dst, dport))
        if c is None:
            c = self.conns[(dst, dport)] = self.open(service, dst, dport)
        return c

    def craft_for(self, catalog: "ServiceCatalog", target: str, n: int) -> list[ConnProbe]:
        """``n`` requests aimed at ``target``; opens the connections they use."""
        port = catalog.ports[0]
        if target == "random" and catalog.services > 0:
            pool = self._random.get(id(catalog))
            if pool is None:
                k = min(RANDOM_SERVICES, catalog.services)
                pool = [(i, catalog.vip(i)) for i in self.rng.sample(range(catalog.services), k)]
                self._random[id(catalog)] = pool
            picks = [self.rng.choice(pool) for _ in range(n)]
        else:
            picks = [self._target(catalog, target)] * n
        for i, dst in dict.fromkeys(picks):
            self._conn(i, dst, port)
        return [ConnProbe(i, dst, port) for i, dst in picks]

    def run(self, probes: Sequence[ConnProbe]) -> list[ProbeOutcome]:
        self._start()
        with isolated(self.server_pids(), self.realtime):
            return [self._one(p) for p in probes]

    def _one(self, p: ConnProbe) -> ProbeOutcome:
        c = self._conn(p.service, p.dst, p.dport)
        o = ProbeOutcome(p)
        token = self.new_token()
        o.rtt_ns, o.error = self.exchange(c, token)
        if self.btap is not None:
            self._by_token[token] = o
            self._match_backend()
        return o


class ReuseProber(_ConnProber):
    """New connections carrying ``requests`` requests each (probe kinds ``reuse-<k>``)."""

    new_connection_per_probe = True
    requests = 1

    def craft_for(self, catalog: "ServiceCatalog", target: str, n: int) -> list[ConnProbe]:
        port = catalog.ports[0]
        return [ConnProbe(*self._target(catalog, target), port, self.requests) for _ in range(n)]

    def run(self, probes: Sequence[ConnProbe]) -> list[ProbeOutcome]:
        self._start()
        out = []
        with isolated(self.server_pids(), self.realtime):
            for p in probes:
                o = ProbeOutcome(p)
                o.rtt_ns, o.error = self.connection(p, o)
                out.append(o)
        return out

    def connection(self, p: ConnProbe, o: ProbeOutcome | None = None) -> tuple[int | None, str]:
        """Open, ``p.requests`` timed requests, close; the mean per-request
        cost in ns (handshake included), or None and the error."""
        c = self.open(p.service, p.dst, p.dport)
        try:
            total = c.handshake_ns
            err = c.error
            for _ in range(p.requests):
                if err:
                    break
                token = self.new_token()
                if o is not None and self.btap is not None:
                    self._by_token[token] = o
                rtt, err = self.exchange(c, token)
                if rtt is not None:
                    assert total is not None, "a request is only timed after a timed handshake"
                    total += rtt
        finally:
            self.close(c)
        self._match_backend()
        if err or total is None:
            return None, err or "timeout"
        return round(total / p.requests), ""


def _reuse_class(k: int) -> type[ReuseProber]:
    return type(f"Reuse{k}Prober", (ReuseProber,), {
        "requests": k, "kind": f"reuse-{k}",
        "__doc__": f"New connections carrying {k} request(s) each; figure: mean per-request cost."})


#: probe kinds of this module (registered in :data:`labkit.probes.PROBERS`)
KINDS: dict[str, type[Prober[ConnProbe]]] = {"keepalive": KeepaliveProber,
                                             **{f"reuse-{k}": _reuse_class(k) for k in REUSE_COUNTS}}

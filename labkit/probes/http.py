"""A real client and server as a cross-check: ApacheBench (``ab``) in the
client namespace, nginx in the backend namespace, through the same datapath.

Probe kinds ``http-new`` (a new TCP connection per request, ``ab`` without
keepalive) and ``http-keepalive`` (``ab -k``: one connection carries up to
100 requests, nginx's default ``keepalive_requests``).  Rows land in
samples.parquet like every other kind: one row per request, ``rtt_us`` its
latency.

**These are client-side, user-space timings**, unlike the kernel-timestamped
SYN and keepalive probes: ``ab`` takes ``apr_time_now()`` (gettimeofday,
microseconds) before ``connect()`` and after the response has been read, so a
figure includes ab's own system calls and nginx's turn, and for ``http-new``
the TCP handshake.  ab reports per-request times only as percentiles
(``-e``: 101 values, microsecond resolution); ab computes them as
``stats[(int)(0.5 + n * i / 100)]`` of its sorted times, so for n <= 100
requests they are every request's latency, exactly.  The prober therefore
runs ab in batches of at most 100 requests (:data:`BATCH`) and keeps every
value; within a batch the rows hold the latencies in ascending order (ab
sorts them), so per row the latency and the endpoint (below) need not belong
to the same request; per batch both lists are complete and exact.

Endpoints.  nginx listens on :data:`NGINX_PORT` inside the backend namespace,
started once per lab with its own configuration, pid and log files in a lab
temp dir (``daemon off``, one process; never the system service).  The echo
server keeps the service port; while an HTTP prober is open, one nftables
rule in the *backend* namespace (``tcp dport <service port> dnat to ip daddr
:<NGINX_PORT>``) hands the service port to nginx, keeping the endpoint
address.  This adds the backend's conntrack and NAT work, the same for every
mode, to the HTTP figures only.  A packet tap on the backend's veth records
the endpoint address of every SYN that arrives (before that rule), so each
request is checked against its service's endpoints as the SYN probes are.

Targets: ``last``/``first``/``middle``/``none`` as for SYN probes; with
``random`` each batch of up to 100 requests goes to one service drawn at
random (ab takes one URL).  ab and nginx share one CPU while a batch runs
(see :mod:`labkit.probes.conn`).
"""
from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Self, Sequence

from labkit.core.errors import LabkitError, Unavailable
from labkit.host import netns
from labkit.host.debcache import find_tool
from labkit.host.wire import PACKET_IGNORE_OUTGOING, SNAPLEN, SOL_PACKET, isolated
from labkit.probes.base import TCP_ACK, TCP_SYN, ProbeOutcome, Prober, drain, open_tap, parse_segment

if TYPE_CHECKING:  # pragma: no cover
    from labkit.core.catalog import ServiceCatalog
    from labkit.lab.lab import Lab

NGINX_PORT = 8080
KEEPALIVE_REQUESTS = 100       # nginx's default keepalive_requests
BATCH = 100                    # ab -e gives every latency exactly for n <= 100
REDIRECT_TABLE = "labkit-http"


# ---- pure ---------------------------------------------------------------------
def render_nginx_conf(workdir: str, port: int = NGINX_PORT,
                      keepalive_requests: int = KEEPALIVE_REQUESTS) -> str:
    """nginx.conf for one foreground process whose every file is in ``workdir``."""
    d = workdir.rstrip("/")
    return (
        "daemon off;\n"
        "master_process off;\n"
        "worker_processes 1;\n"
        f"pid {d}/nginx.pid;\n"
        f"error_log {d}/error.log warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        "    access_log off;\n"
        f"    client_body_temp_path {d}/body;\n"
        f"    proxy_temp_path {d}/proxy;\n"
        f"    fastcgi_temp_path {d}/fastcgi;\n"
        f"    uwsgi_temp_path {d}/uwsgi;\n"
        f"    scgi_temp_path {d}/scgi;\n"
        f"    keepalive_requests {keepalive_requests};\n"
        "    server {\n"
        f"        listen {port};\n"
        '        location / { return 200 "ok\\n"; }\n'
        "    }\n"
        "}\n")


def render_redirect(ports: Sequence[int], to_port: int = NGINX_PORT,
                    table: str = REDIRECT_TABLE) -> str:
    """``nft -f`` input for the backend: the service ports go to nginx,
    the destination address (the endpoint) is kept."""
    p = ", ".join(str(x) for x in ports)
    return (f"table ip {table} {{\n"
            "\tchain prerouting {\n"
            "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
            f"\t\ttcp dport {{ {p} }} dnat to ip daddr:{to_port}\n"
            "\t}\n"
            "}\n")


def ab_latencies(csv_text: str, n: int) -> list[float]:
    """Every request's latency in microseconds, ascending, from ab's ``-e``
    file of a run of ``n`` <= 100 requests (ab prints its sorted time
    ``stats[(int)(0.5 + n*i/100)]`` for i = 1..99, ``stats[0]`` for 0 and
    ``stats[n-1]`` for 100; indices >= n are past its array and dropped)."""
    if not 1 <= n <= BATCH:
        raise ValueError(f"n must be 1..{BATCH}, got {n}")
    out: list[float | None] = [None] * n
    for line in csv_text.splitlines()[1:]:
        if not line.strip():
            continue
        pct_s, ms_s = line.split(",", 1)
        pct = int(pct_s)
        idx = 0 if pct == 0 else n - 1 if pct == 100 else int(0.5 + n * pct / 100.0)
        if idx < n:
            out[idx] = round(float(ms_s) * 1000.0, 3)
    if any(v is None for v in out):
        raise LabkitError(f"ab's percentile file does not hold all {n} requests")
    return out  # type: ignore[return-value]


_AB_FIELDS = {"complete": r"^Complete requests:\s+(\d+)", "failed": r"^Failed requests:\s+(\d+)",
              "non2xx": r"^Non-2xx responses:\s+(\d+)", "keepalive": r"^Keep-Alive requests:\s+(\d+)"}


def ab_counts(stdout: str) -> dict[str, int]:
    """Request counts from ab's report (0 for lines it leaves out)."""
    out = {}
    for k, rx in _AB_FIELDS.items():
        m = re.search(rx, stdout, re.M)
        out[k] = int(m.group(1)) if m else 0
    return out


# ---- nginx, once per lab ---------------------------------------------------------
@dataclass
class Nginx:
    proc: subprocess.Popen[str]
    workdir: str
    pid: int


_servers: "weakref.WeakKeyDictionary[Lab, Nginx]" = weakref.WeakKeyDictionary()


def nginx_for(lab: "Lab", timeout: float = 10.0) -> Nginx:
    """nginx in the lab's backend namespace (started on first use, stopped
    when the lab closes)."""
    srv = _servers.get(lab)
    if srv is not None and srv.proc.poll() is None:
        return srv
    exe = find_tool("nginx")
    d = lab.mkdtemp("nginx")
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(render_nginx_conf(d))
    proc = lab.spawn(lab.backend, [exe, "-p", d + "/", "-e", os.path.join(d, "error.log"), "-c", conf])
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise LabkitError(f"nginx did not start in {lab.backend}: {_tail(os.path.join(d, 'error.log'))}")
        with netns.entered(lab.backend):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with s:
            s.settimeout(0.5)
            try:
                s.connect(("127.0.0.1", NGINX_PORT))
                break
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise LabkitError(f"nginx in {lab.backend} is not listening on {NGINX_PORT} after {timeout:.0f} s")
        time.sleep(0.05)
    srv = _servers[lab] = Nginx(proc, d, proc.pid)
    return srv


def _tail(path: str) -> str:
    try:
        with open(path) as f:
            return " | ".join(f.read().strip().splitlines()[-3:]) or "no error output"
    except OSError:
        return "no error log"


# ---- the probers -------------------------------------------------------------------
@dataclass(frozen=True)
class HttpProbe:
    service: int      # catalog index, -1 for the none address
    dst: str
    dport: int


class _HttpProber:
    keepalive = False
    kind: ClassVar[str] = ""
    new_connection_per_probe: ClassVar[bool]
    pacing_supported: ClassVar[bool] = False  # ab sends each batch itself

    def __init__(self, lab: "Lab", *, timeout: float = 0.5, seed: int = 0) -> None:
        self.lab = lab
        self.timeout = timeout
        self.rng = random.Random(seed)
        self.btap: socket.socket | None = None
        self.nginx: Nginx | None = None
        self.workdir: str | None = None
        self._redirect = False

    @staticmethod
    def unavailable() -> str | None:
        try:
            for tool, pkg in (("ab", "apache2-utils"), ("nft", "nftables")):
                netns.require_tool(tool, pkg)
            find_tool("nginx")
        except Unavailable as exc:
            return str(exc)
        return None

    def __enter__(self) -> Self:
        why = self.unavailable()
        if why:
            raise Unavailable(f"probe kind {self.kind}: {why}")
        self.nginx = nginx_for(self.lab)
        self.workdir = self.nginx.workdir
        self.lab.run(self.lab.backend, ["nft", "-f", "-"], input=render_redirect(self.lab.ports))
        self._redirect = True
        self.btap = open_tap(self.lab.backend, self.lab.topo.backend_if)
        self.btap.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        return self

    def __exit__(self, *exc) -> None:
        if self.btap is not None:
            self.btap.close()
            self.btap = None
        if self._redirect and self.lab.backend in netns.list_namespaces():
            self.lab.run(self.lab.backend, ["nft", "delete", "table", "ip", REDIRECT_TABLE], check=False)
        self._redirect = False

    def craft_for(self, catalog: "ServiceCatalog", target: str, n: int) -> list[HttpProbe]:
        port = catalog.ports[0]
        out: list[HttpProbe] = []
        fixed = catalog.target_index(target)
        while len(out) < n:
            k = min(BATCH, n - len(out))
            if target == "none" or catalog.services == 0:
                i, dst = -1, catalog.none_address
            else:
                i = fixed if fixed is not None else self.rng.randrange(catalog.services)
                dst = catalog.vip(i)
            out += [HttpProbe(i, dst, port)] * k
        return out

    def run(self, probes: Sequence[HttpProbe]) -> list[ProbeOutcome]:
        if self.btap is None:
            raise LabkitError(f"{type(self).__name__} used outside its `with` block")
        out: list[ProbeOutcome] = []
        i = 0
        while i < len(probes):
            j = i + 1
            while j < len(probes) and j - i < BATCH and probes[j] == probes[i]:
                j += 1
            out += self._batch(probes[i:j])
            i = j
        return out

    def _batch(self, probes: Sequence[HttpProbe]) -> list[ProbeOutcome]:
        btap, nginx, workdir = self.btap, self.nginx, self.workdir
        assert btap is not None and nginx is not None and workdir is not None, "set in __enter__ (run checks)"
        p, n = probes[0], len(probes)
        csv = os.path.join(workdir, f"ab-{os.getpid()}.csv")
        if os.path.exists(csv):
            os.unlink(csv)
        argv = ["ab", "-q", "-n", str(n), "-c", "1", "-s", str(max(1, round(self.timeout * 4))),
                "-e", csv, *(["-k"] if self.keepalive else []), f"http://{p.dst}:{p.dport}/"]
        drain(btap)
        with isolated([nginx.pid]):   # ab inherits the thread's CPU and policy
            cp = self.lab.run(self.lab.client, argv, check=False, timeout=60 + n * self.timeout * 4)
        syns = self._syns()
        outs = [ProbeOutcome(q) for q in probes]
        counts = ab_counts(cp.stdout)
        err = ""
        if cp.returncode != 0 or not os.path.exists(csv):
            tail = (cp.stderr or cp.stdout).strip().splitlines()[-1:] or ["no output"]
            err = f"ab: {tail[0][:80]}"
        elif counts["complete"] != n or counts["failed"] or counts["non2xx"]:
            err = f"ab: {counts['complete']} complete, {counts['failed']} failed, {counts['non2xx']} non-2xx"
        if err:
            for o in outs:
                o.error = err
            return outs
        with open(csv) as f:
            lat = ab_latencies(f.read(), n)
        # endpoints: one SYN per request (http-new) or per connection (keepalive)
        eps = syns if not self.keepalive else syns[:1] * n
        for k, o in enumerate(outs):
            o.rtt_ns = int(round(lat[k] * 1000))
            o.endpoint = eps[k] if k < len(eps) else ""
        return outs  # a request whose SYN went unseen keeps endpoint "" (check_samples flags it)

    def _syns(self) -> list[str]:
        """Endpoint addresses of the SYNs that reached the backend since the
        batch began, in order, one per connection (retransmissions dropped)."""
        btap = self.btap
        assert btap is not None, "called by _batch, inside the with block"
        seen, out = set(), []
        btap.setblocking(False)
        try:
            while True:
                seg = parse_segment(btap.recv(SNAPLEN))
                if seg is None or seg.flags & (TCP_SYN | TCP_ACK) != TCP_SYN:
                    continue
                key = (seg.src, seg.sport, seg.seq)
                if key not in seen:
                    seen.add(key)
                    out.append(f"{seg.dst}:{seg.dport}")
        except BlockingIOError:
            pass
        finally:
            btap.setblocking(True)
        return out


class HttpNewProber(_HttpProber):
    """``ab`` without keepalive: every request opens a new connection."""
    kind = "http-new"
    keepalive = False
    new_connection_per_probe = True


class HttpKeepaliveProber(_HttpProber):
    """``ab -k``: up to 100 requests per connection (nginx's default)."""
    kind = "http-keepalive"
    keepalive = True
    new_connection_per_probe = False


KINDS: dict[str, type[Prober[HttpProbe]]] = {"http-new": HttpNewProber, "http-keepalive": HttpKeepaliveProber}

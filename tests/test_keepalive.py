"""Keepalive and reuse-<k> probes: parsing (pure) and real requests through a
real datapath in lab namespaces (root)."""
from __future__ import annotations

import os
import re

import pytest
from conftest import need_tool

from labkit.core.catalog import ServiceCatalog
from labkit.datapaths import IptablesNft
from labkit.host.wire import isolated
from labkit.probes import PROBERS
from labkit.probes.base import parse_segment
from labkit.probes.conn import (
    KINDS,
    RANDOM_SERVICES,
    REUSE_COUNTS,
    TOKEN_BYTES,
    ConnProbe,
    KeepaliveProber,
    make_token,
)
from labkit.runs.params import SweepParams


# ---- pure -------------------------------------------------------------------
def _frame(payload: bytes, pad: int = 0, flags: str = "PA") -> bytes:
    from scapy.layers.inet import IP, TCP  # noqa: PLC0415  (slow import)
    from scapy.layers.l2 import Ether  # noqa: PLC0415
    pkt = Ether() / IP(src="172.30.0.2", dst="10.96.0.5") / TCP(sport=61001, dport=80, seq=7,
                                                                flags=flags) / payload
    return bytes(pkt) + b"\0" * pad


def test_parse_segment_payload_ends_with_the_ip_datagram():
    s = parse_segment(_frame(b"hello", pad=20))
    assert (s.src, s.dst, s.sport, s.dport, s.seq) == ("172.30.0.2", "10.96.0.5", 61001, 80, 7)
    assert s.payload == b"hello"
    assert s.flags == 0x18
    assert parse_segment(_frame(b"", flags="S")).payload == b""
    assert parse_segment(b"\0" * 60) is None


def test_tokens_are_unique_and_fixed_size():
    toks = {make_token(b"LKabcd", n) for n in range(1000)}
    assert len(toks) == 1000 and {len(t) for t in toks} == {TOKEN_BYTES}


def test_kinds_are_registered_and_accepted_by_the_parameters():
    assert set(KINDS) == {"keepalive", *(f"reuse-{k}" for k in REUSE_COUNTS)}
    assert all(PROBERS[k] is cls for k, cls in KINDS.items())
    assert PROBERS["reuse-100"].requests == 100
    p = SweepParams(probe_kinds="syn,keepalive,reuse-1,reuse-100")
    assert p.probe_kinds == ["syn", "keepalive", "reuse-1", "reuse-100"]
    # reuse opens a new connection per probe: the endpoint spread is judged;
    # keepalive sends many probes over one connection: it is not
    assert PROBERS["reuse-5"].new_connection_per_probe and not KeepaliveProber.new_connection_per_probe


# ---- real kernel ----------------------------------------------------------------
def _ct_count(lab) -> int:
    return int(lab.run(lab.node, ["conntrack", "-C"]).stdout.strip())


def _ct_entries(lab, vip: str) -> list[str]:
    """Conntrack entries to ``vip``, without their (changing) timeout field."""
    cp = lab.run(lab.node, ["conntrack", "-L", "-p", "tcp", "--orig-dst", vip], check=False)
    return [re.sub(r"^tcp\s+6\s+\d+\s+", "", ln) for ln in cp.stdout.splitlines() if ln.startswith("tcp")]


@pytest.mark.root
def test_keepalive_requests_reuse_one_established_connection(lab):
    """Answered, timed on the wire, DNATed to an endpoint of the service, and
    on one established connection: the node's conntrack table gains no entry
    while the requests run."""
    need_tool("conntrack")
    cat = ServiceCatalog(20, 4)
    dp = IptablesNft(lab)
    lab.defer("iptables teardown", dp.teardown)
    dp.setup(cat)
    vip = cat.vip(19)
    with PROBERS["keepalive"](lab, timeout=1.0, seed=3) as pr:
        probes = pr.craft_for(cat, "last", 200)       # opens the connection
        assert {(p.service, p.dst) for p in probes} == {(19, vip)}
        before, entries_before = _ct_count(lab), _ct_entries(lab, vip)
        out = pr.run(probes)
        after, entries_after = _ct_count(lab), _ct_entries(lab, vip)
        (conn,) = pr.conns.values()
    assert [o.error for o in out] == [""] * 200
    rtts = [o.rtt_ns for o in out]
    assert all(0 < r < 1e9 for r in rtts)               # kernel stamps, less than the timeout
    assert len(set(rtts)) > 10                          # measured, not a constant
    # every request reached the same endpoint of service 19 (one connection)
    eps = {o.endpoint for o in out}
    assert len(eps) == 1 and eps.pop().split(":")[0] in cat.endpoints_of(19)
    # no new conntrack entry per request: the table is unchanged, and holds
    # exactly one ESTABLISHED flow to the VIP, from the prober's source port
    assert after == before
    assert entries_after == entries_before and len(entries_after) == 1, entries_after
    assert entries_after[0].startswith("ESTABLISHED ") and f"sport={conn.sport} " in entries_after[0]
    assert re.search(rf"dst={re.escape(vip)} .*dport=80 ", entries_after[0])


@pytest.mark.root
def test_keepalive_random_and_none_targets(lab):
    need_tool("conntrack")
    cat = ServiceCatalog(40, 2)
    dp = IptablesNft(lab)
    lab.defer("iptables teardown", dp.teardown)
    dp.setup(cat)
    with PROBERS["keepalive"](lab, timeout=1.0, seed=5) as pr:
        probes = pr.craft_for(cat, "random", 100)
        services = {p.service for p in probes}
        assert 1 < len(services) <= RANDOM_SERVICES
        before = _ct_count(lab)
        out = pr.run(probes)
        assert _ct_count(lab) == before
        assert all(o.rtt_ns and cat.service_of_endpoint(o.endpoint.split(":")[0])[0] == o.probe.service
                   for o in out)
        none = pr.run(pr.craft_for(cat, "none", 20))
    assert all(o.rtt_ns and o.endpoint == f"{cat.none_address}:80" for o in none)


@pytest.mark.root
def test_reuse_probes_open_one_connection_each(lab):
    need_tool("conntrack")
    cat = ServiceCatalog(10, 3)
    dp = IptablesNft(lab)
    lab.defer("iptables teardown", dp.teardown)
    dp.setup(cat)
    with PROBERS["reuse-5"](lab, timeout=1.0, seed=7) as pr:
        before = _ct_count(lab)
        out = pr.run(pr.craft_for(cat, "last", 12))
        assert _ct_count(lab) == before + 12           # a new flow per probe
    assert [o.error for o in out] == [""] * 12
    assert all(o.rtt_ns > 0 for o in out)
    assert {o.endpoint.split(":")[0] for o in out} <= set(cat.endpoints_of(9))


@pytest.mark.root
def test_reuse_figure_is_handshake_plus_requests_over_k(lab):
    """The reuse figure is the mean of the handshake and the k request RTTs
    over k, each taken on the wire: check it against the parts."""
    cat = ServiceCatalog(0)
    with PROBERS["reuse-10"](lab, timeout=1.0, seed=9) as pr:
        pr._start()
        c = pr.open(-1, cat.none_address, 80)
        parts = [c.handshake_ns] + [pr.exchange(c, pr.new_token())[0] for _ in range(10)]
        pr.close(c)
        assert all(p and p > 0 for p in parts)
        rtt, err = pr.connection(ConnProbe(-1, cat.none_address, 80, 10))
    assert err == "" and rtt > 0
    # same order of magnitude as the parts measured by hand (both are real)
    assert sum(parts) / 10 / 20 < rtt < sum(parts) / 10 * 20


@pytest.mark.root
def test_probing_restores_affinity_and_policy(lab):
    """Client and server run pinned at SCHED_FIFO only while probes run."""

    srv = lab.server.pid
    before = [(os.sched_getaffinity(p), os.sched_getscheduler(p)) for p in (0, srv)]
    with isolated([srv]) as cpu:
        assert os.sched_getaffinity(0) == os.sched_getaffinity(srv) == {cpu}
        assert os.sched_getscheduler(0) == os.sched_getscheduler(srv) == os.SCHED_FIFO
    cat = ServiceCatalog(0)
    with PROBERS["keepalive"](lab, seed=1) as pr:
        assert all(o.rtt_ns for o in pr.run(pr.craft_for(cat, "last", 10)))
    with PROBERS["reuse-2"](lab, seed=1) as pr:
        assert all(o.rtt_ns for o in pr.run(pr.craft_for(cat, "last", 3)))
    assert [(os.sched_getaffinity(p), os.sched_getscheduler(p)) for p in (0, srv)] == before

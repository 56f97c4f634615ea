"""The nftables datapath: pure renderer (no root) and the real kernel path (root)."""
from __future__ import annotations

import collections
import re
import shutil
import socket
import time
from fractions import Fraction

import pytest
from scipy.stats import chisquare

from labkit.core.catalog import ServiceCatalog, chain_hash
from labkit.datapaths import MODES
from labkit.datapaths import nftables as nft
from labkit.host import netns
from labkit.lab.lab import Lab

HAVE_NFT = shutil.which("nft") is not None

EXPECTED_2x2 = """\
table ip kube-proxy {}
delete table ip kube-proxy
table ip kube-proxy {
	comment "rules for kube-proxy"
	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		comment "ClusterIP, ExternalIP and LoadBalancer IP traffic"
		elements = {
			10.96.0.1 . tcp . 80 : goto service-4F4R4ALL-default/svc-000000/tcp/p80,
			10.96.0.2 . tcp . 80 : goto service-XVWREJXS-default/svc-000001/tcp/p80,
		}
	}
	map service-nodeports {
		type inet_proto . inet_service : verdict
		comment "NodePort traffic"
	}
	chain nat-prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		jump services
	}
	chain nat-output {
		type nat hook output priority -100; policy accept;
		jump services
	}
	chain nat-postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		jump masquerading
	}
	chain services {
		ip daddr . meta l4proto . th dport vmap @service-ips
		fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
	}
	chain mark-for-masquerade {
		mark set mark or 0x4000
	}
	chain masquerading {
		mark and 0x4000 == 0 return
		mark set mark xor 0x4000
		masquerade fully-random
	}
	chain service-4F4R4ALL-default/svc-000000/tcp/p80 {
		ip daddr 10.96.0.1 tcp dport 80 ip saddr != 10.128.0.0/9 jump mark-for-masquerade
		numgen random mod 2 == 0 goto endpoint-EZBA32LM-default/svc-000000/tcp/p80__10.128.0.1/80
		goto endpoint-O6VPBDTH-default/svc-000000/tcp/p80__10.128.0.2/80
	}
	chain endpoint-EZBA32LM-default/svc-000000/tcp/p80__10.128.0.1/80 {
		ip saddr 10.128.0.1 jump mark-for-masquerade
		meta l4proto tcp dnat to 10.128.0.1:80
	}
	chain endpoint-O6VPBDTH-default/svc-000000/tcp/p80__10.128.0.2/80 {
		ip saddr 10.128.0.2 jump mark-for-masquerade
		meta l4proto tcp dnat to 10.128.0.2:80
	}
	chain service-XVWREJXS-default/svc-000001/tcp/p80 {
		ip daddr 10.96.0.2 tcp dport 80 ip saddr != 10.128.0.0/9 jump mark-for-masquerade
		numgen random mod 2 == 0 goto endpoint-5DFNXWDA-default/svc-000001/tcp/p80__10.128.0.3/80
		goto endpoint-K2WG2B6C-default/svc-000001/tcp/p80__10.128.0.4/80
	}
	chain endpoint-5DFNXWDA-default/svc-000001/tcp/p80__10.128.0.3/80 {
		ip saddr 10.128.0.3 jump mark-for-masquerade
		meta l4proto tcp dnat to 10.128.0.3:80
	}
	chain endpoint-K2WG2B6C-default/svc-000001/tcp/p80__10.128.0.4/80 {
		ip saddr 10.128.0.4 jump mark-for-masquerade
		meta l4proto tcp dnat to 10.128.0.4:80
	}
}
"""


# ---- pure rendering -------------------------------------------------------------
def test_mode_registered():
    assert MODES["nftables"] is nft.Nftables


def test_render_exact_small_catalog():
    cat = ServiceCatalog(services=2, endpoints=2)
    assert nft.Nftables.render(cat) == EXPECTED_2x2
    assert nft.render_nftables(cat) == EXPECTED_2x2


def test_render_vmap_is_kube_proxy_literal():
    text = nft.render_nftables(ServiceCatalog(services=1, endpoints=3, ports=(80, 443)), select="vmap")
    svc = [ln.strip() for ln in text.splitlines() if "numgen" in ln]
    assert svc == [
        "numgen random mod 3 vmap { "
        "0 : goto endpoint-EZBA32LM-default/svc-000000/tcp/p80__10.128.0.1/80, "
        "1 : goto endpoint-O6VPBDTH-default/svc-000000/tcp/p80__10.128.0.2/80, "
        "2 : goto endpoint-PN5VTXTP-default/svc-000000/tcp/p80__10.128.0.3/80 }",
        "numgen random mod 3 vmap { "
        "0 : goto endpoint-VMKEI4M2-default/svc-000000/tcp/p443__10.128.0.1/443, "
        "1 : goto endpoint-QSFDRNXQ-default/svc-000000/tcp/p443__10.128.0.2/443, "
        "2 : goto endpoint-SJIUJUF2-default/svc-000000/tcp/p443__10.128.0.3/443 }",
    ]
    with pytest.raises(ValueError):
        nft.render_nftables(ServiceCatalog(services=1), select="anonymous")


def test_chain_names_use_catalog_hashes():
    cat = ServiceCatalog(services=300, endpoints=3, ports=(80, 8443))
    for i in (0, 123, 299):
        for port in cat.ports:
            assert nft.service_chain(cat.name(i), port) == \
                f"service-{cat.chain_id(i, port)[:8]}-{cat.name(i)}/tcp/p{port}"
            for j in range(cat.endpoints):
                ep = cat.endpoint(i, j)
                assert nft.endpoint_chain(cat.name(i), ep, port) == \
                    f"endpoint-{cat.endpoint_chain_id(i, j, port)[:8]}-{cat.name(i)}/tcp/p{port}__{ep}/{port}"
    assert all(nft._hash8(f"n{k}", k) == chain_hash(f"n{k}", k)[:8] for k in range(2000))


def _parse(text: str) -> tuple[dict[str, list[str]], dict[tuple[str, int], str]]:
    """chains -> rules, and (vip, port) -> service chain from service-ips."""
    chains: dict[str, list[str]] = {}
    cur = None
    for ln in text.splitlines():
        m = re.match(r"^\tchain (\S+) \{$", ln)
        if m:
            cur = chains.setdefault(m.group(1), [])
        elif ln == "\t}":
            cur = None
        elif cur is not None:
            cur.append(ln.strip())
    elems = {(m.group(1), int(m.group(2))): m.group(3)
             for m in re.finditer(r"^\t\t\t(\S+) \. tcp \. (\d+) : goto (\S+),$", text, re.M)}
    return chains, elems


def test_render_structure_matches_catalog():
    cat = ServiceCatalog(services=200, endpoints=5, ports=(80, 443))
    chains, elems = _parse(nft.render_nftables(cat))
    fixed = {"nat-prerouting", "nat-output", "nat-postrouting", "services",
             "mark-for-masquerade", "masquerading"}
    assert len(chains) == len(fixed) + 200 * 2 * (1 + 5)
    assert len(elems) == 200 * 2
    for i in range(cat.services):
        for port in cat.ports:
            svc = elems[(cat.vip(i), port)]
            rules = chains[svc]
            assert rules[0] == f"ip daddr {cat.vip(i)} tcp dport {port} ip saddr != 10.128.0.0/9 " \
                               "jump mark-for-masquerade"
            targets = [r.rsplit("goto ", 1)[1] for r in rules[1:]]
            mods = [int(re.search(r"mod (\d+) ", r).group(1)) for r in rules[1:-1]]
            assert mods == [5, 4, 3, 2]
            # each endpoint chain DNATs to an endpoint of this service, each endpoint once
            dnat = [chains[t][1] for t in targets]
            assert dnat == [f"meta l4proto tcp dnat to {ep}:{port}" for ep in cat.endpoints_of(i)]
            assert [chains[t][0] for t in targets] == \
                [f"ip saddr {ep} jump mark-for-masquerade" for ep in cat.endpoints_of(i)]


def test_cascade_is_uniform():
    """numgen mod n, n-1, ..., 2 then unconditional: each endpoint 1/n exactly."""
    for n in (1, 2, 3, 7, 10, 64):
        rules = nft._pick([f"ep{j}" for j in range(n)], "rules")
        assert len(rules) == n
        left, probs = Fraction(1), []
        for r in rules:
            m = re.match(r"numgen random mod (\d+) == 0 goto ep\d+$", r)
            p = Fraction(1, int(m.group(1))) if m else Fraction(1)
            probs.append(left * p)
            left -= left * p
        assert probs == [Fraction(1, n)] * n and left == 0


def test_empty_catalog_renders_no_elements():
    text = nft.render_nftables(ServiceCatalog(services=0))
    assert "elements" not in text and "chain services {" in text


def test_unavailable_names_missing_nft(monkeypatch):
    monkeypatch.setattr(nft.shutil, "which", lambda name: None)
    why = nft.Nftables.unavailable(None)
    assert "nft" in why and "nftables" in why


# ---- real kernel (root) ------------------------------------------------------------
#: root tests: skipped without root, with the reason, by conftest (the one way they are marked)
root = pytest.mark.root


needs_nft = pytest.mark.skipif(not HAVE_NFT, reason="nft not installed (Debian package nftables)")
needs_conntrack = pytest.mark.skipif(shutil.which("conntrack") is None,
                                     reason="conntrack not installed (Debian package conntrack)")


def _lab(cat):
    return Lab(endpoint_cidr=cat.endpoint_cidr, ports=cat.ports)


def _echo(lab, addr: str, port: int, sport: int) -> None:
    """One TCP exchange from the client namespace, from a fixed source port."""
    with netns.entered(lab.client):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(5)
        s.bind((lab.topo.client_ip, sport))
        s.connect((addr, port))
        msg = f"hello {sport}".encode()
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            chunk = s.recv(64)
            assert chunk, "connection closed before the echo"
            got += chunk
        assert got == msg
    finally:
        s.close()


def _conntrack(lab, dst: str) -> dict[int, tuple[str, str]]:
    """client source port -> (reply src, reply dst) for connections to ``dst``."""
    cp = lab.run(lab.node, ["conntrack", "-L", "-p", "tcp", "--orig-dst", dst])
    out = {}
    for ln in cp.stdout.splitlines():
        src = re.findall(r"src=(\S+)", ln)
        dsts = re.findall(r"dst=(\S+)", ln)
        sport = re.findall(r"sport=(\d+)", ln)
        if len(src) == 2 and len(dsts) == 2:
            out[int(sport[0])] = (src[1], dsts[1])
    return out


@pytest.fixture(scope="module")
def programmed():
    if not HAVE_NFT:
        pytest.skip("nft not installed (Debian package nftables)")
    cat = ServiceCatalog(services=50, endpoints=4)
    with _lab(cat) as lab:
        why = nft.Nftables.unavailable(lab)
        if why:
            pytest.skip(why)
        dp = nft.Nftables(lab)
        res = dp.setup(cat)
        assert res.load_s > 0
        yield lab, dp, cat
        dp.teardown()


@root
@needs_nft
def test_unavailable_probe_leaves_nothing(programmed):
    lab, dp, _ = programmed
    assert nft.Nftables.unavailable(lab) is None
    assert "ip labkit-probe" not in dp.tables()
    assert dp.tables().count("ip kube-proxy") == 1


@root
@needs_nft
@needs_conntrack
def test_dnat_reaches_endpoint_of_the_right_service(programmed):
    lab, _, cat = programmed
    node_ip = lab.topo.node_backend_ip
    for n, i in enumerate((0, 1, 17, 25, 49)):
        sport = 31000 + n
        _echo(lab, cat.vip(i), 80, sport)
        seen = _conntrack(lab, cat.vip(i))
        ep, reply_dst = seen[sport]
        assert ep in cat.endpoints_of(i), f"{cat.vip(i)} went to {ep}, not an endpoint of service {i}"
        # the client is outside the cluster CIDR: marked and masqueraded to the node
        assert reply_dst == node_ip


@root
@needs_nft
@needs_conntrack
def test_spread_across_endpoints_is_even(programmed):
    lab, _, cat = programmed
    i, conns = 33, 200
    for k in range(conns):
        _echo(lab, cat.vip(i), 80, 32000 + k)
    seen = _conntrack(lab, cat.vip(i))
    eps = [seen[32000 + k][0] for k in range(conns)]
    counts = collections.Counter(eps)
    assert set(counts) == set(cat.endpoints_of(i)), counts
    p = chisquare([counts[e] for e in cat.endpoints_of(i)]).pvalue
    assert p > 0.001, f"endpoint choice not uniform: {counts} (p={p:.2g})"


@root
@needs_nft
@needs_conntrack
def test_none_target_passes_untouched(programmed):
    lab, _, cat = programmed
    _echo(lab, cat.none_address, 80, 33000)
    reply_src, reply_dst = _conntrack(lab, cat.none_address)[33000]
    assert reply_src == cat.none_address          # no DNAT
    assert reply_dst == lab.topo.client_ip        # no masquerade


@root
@needs_nft
@needs_conntrack
def test_reload_replaces_and_teardown_removes():
    cat = ServiceCatalog(services=5, endpoints=2)
    with _lab(cat) as lab:
        dp = nft.Nftables(lab)
        dp.setup(ServiceCatalog(services=3, endpoints=3))
        dp.setup(cat)  # replaces the first table in one transaction
        assert dp.tables() == ["ip kube-proxy"]
        chains = lab.run(lab.node, ["nft", "list", "table", "ip", "kube-proxy"]).stdout
        assert chains.count("chain service-") == 5 and chains.count("chain endpoint-") == 10
        _echo(lab, cat.vip(4), 80, 34000)
        assert _conntrack(lab, cat.vip(4))[34000][0] in cat.endpoints_of(4)
        dp.teardown()
        assert dp.tables() == []
        dp.teardown()  # idempotent


@root
@needs_nft
@needs_conntrack
@pytest.mark.slow
def test_10k_services_program_and_route():
    """10,000 x 10 loads in one nft transaction and the last service works."""
    cat = ServiceCatalog(services=10_000, endpoints=10)
    with _lab(cat) as lab:
        dp = nft.Nftables(lab)
        res = dp.setup(cat)
        print(f"\n10k x 10: render {res.render_s:.2f} s, nft -f {res.load_s:.2f} s")
        _echo(lab, cat.vip(9_999), 80, 35000)
        assert _conntrack(lab, cat.vip(9_999))[35000][0] in cat.endpoints_of(9_999)
        t = time.perf_counter()
        dp.teardown()
        print(f"delete table {time.perf_counter() - t:.2f} s")
        assert dp.tables() == []

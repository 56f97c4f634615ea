"""kube-proxy iptables layout: exact rule text (no root), and the real kernel (root)."""

import numpy as np
import pytest
from scipy.stats import chisquare

from labkit.core.catalog import ServiceCatalog
from labkit.datapaths.iptables import IptablesLegacy, IptablesNft, render_iptables, render_iptables_partial
from labkit.probes.syn import SynProber

EXPECTED_1x2 = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-{svc} - [0:0]
:KUBE-SEP-{sep0} - [0:0]
:KUBE-SEP-{sep1} - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -m comment --comment "default/svc-000000:p80 cluster IP" -m tcp -p tcp -d 10.96.0.1/32 --dport 80 -j KUBE-SVC-{svc}
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-{svc} -m comment --comment "default/svc-000000:p80 cluster IP" -m tcp -p tcp -d 10.96.0.1/32 --dport 80 ! -s 10.128.0.0/9 -j KUBE-MARK-MASQ
-A KUBE-SVC-{svc} -m comment --comment "default/svc-000000:p80 -> 10.128.0.1:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-{sep0}
-A KUBE-SEP-{sep0} -m comment --comment "default/svc-000000:p80" -s 10.128.0.1/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-{sep0} -m comment --comment "default/svc-000000:p80" -m tcp -p tcp -j DNAT --to-destination 10.128.0.1:80
-A KUBE-SVC-{svc} -m comment --comment "default/svc-000000:p80 -> 10.128.0.2:80" -j KUBE-SEP-{sep1}
-A KUBE-SEP-{sep1} -m comment --comment "default/svc-000000:p80" -s 10.128.0.2/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-{sep1} -m comment --comment "default/svc-000000:p80" -m tcp -p tcp -j DNAT --to-destination 10.128.0.2:80
COMMIT
"""


def test_exact_rules_for_one_service_two_endpoints():
    c = ServiceCatalog(1, 2)
    want = EXPECTED_1x2.format(svc=c.chain_id(0, 80), sep0=c.endpoint_chain_id(0, 0, 80),
                               sep1=c.endpoint_chain_id(0, 1, 80))
    assert render_iptables(c) == want


def test_probabilities_pick_endpoints_evenly():
    c = ServiceCatalog(1, 4)
    probs = [float(line.split("--probability ")[1].split()[0])
             for line in render_iptables(c).splitlines() if "--probability" in line]
    assert probs == [0.25, pytest.approx(1 / 3), 0.5]  # and the 4th rule is unconditional
    # P(endpoint j) = prod(1-p_k, k<j) * p_j = 1/4 for every j
    left, shares = 1.0, []
    for p in probs + [1.0]:
        shares.append(left * p)
        left *= 1 - p
    assert shares == pytest.approx([0.25] * 4)


def test_one_kube_services_rule_per_service_port_in_catalog_order():
    c = ServiceCatalog(5, 3, ports=(80, 443))
    rules = [l for l in render_iptables(c).splitlines() if l.startswith("-A KUBE-SERVICES")]
    assert len(rules) == 5 * 2 + 1 and "KUBE-NODEPORTS" in rules[-1]
    assert "10.96.0.1/32 --dport 80" in rules[0] and "10.96.0.5/32 --dport 443" in rules[-2]


def test_large_cluster_mode_drops_endpoint_comments():
    big = render_iptables(ServiceCatalog(101, 10))  # 1,010 endpoints > 1,000
    sep_rules = [l for l in big.splitlines() if l.startswith("-A KUBE-SEP-")]
    assert sep_rules and not any("comment" in l for l in sep_rules)
    small = render_iptables(ServiceCatalog(100, 10))
    assert all("comment" in l for l in small.splitlines() if l.startswith("-A KUBE-SEP-"))


def test_empty_catalog_keeps_the_hooks():
    text = render_iptables(ServiceCatalog(0, 10))
    assert "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES" in text
    assert "KUBE-SVC" not in text


# --- partial sync (kube-proxy's MinimizeIPTablesRestore), pure -----------------

def test_partial_add_text_exact():
    """1 -> 2 services: KUBE-SERVICES declared and rewritten whole, only the new
    service's chains declared and filled; service 0's chains not mentioned."""
    old, new = ServiceCatalog(1, 2), ServiceCatalog(2, 2)
    full = render_iptables(new).splitlines()
    svc1 = f"KUBE-SVC-{new.chain_id(1, 80)}"
    seps1 = [f"KUBE-SEP-{new.endpoint_chain_id(1, j, 80)}" for j in range(2)]
    want = (["*nat", ":KUBE-SERVICES - [0:0]", f":{svc1} - [0:0]", *(f":{c} - [0:0]" for c in seps1)]
            + [ln for ln in full if ln.startswith("-A KUBE-SERVICES ")]
            + [ln for ln in full if ln.startswith((f"-A {svc1} ", *(f"-A {c} " for c in seps1)))]
            + ["COMMIT", ""])
    assert render_iptables_partial(old, new) == "\n".join(want)
    text = render_iptables_partial(old, new)
    assert new.chain_id(0, 80) not in text.replace(f"-j KUBE-SVC-{new.chain_id(0, 80)}", "")
    ks = [ln for ln in text.splitlines() if ln.startswith("-A KUBE-SERVICES ")]
    assert ks[-1].endswith("-j KUBE-NODEPORTS") and len(ks) == 3


def test_partial_remove_declares_then_deletes_the_stale_chains():
    old, new = ServiceCatalog(3, 2, ports=(80, 8080)), ServiceCatalog(2, 2, ports=(80, 8080))
    lines = render_iptables_partial(old, new).splitlines()
    stale = [f"KUBE-SVC-{old.chain_id(2, p)}" for p in (80, 8080)] + \
        [f"KUBE-SEP-{old.endpoint_chain_id(2, j, p)}" for p in (80, 8080) for j in range(2)]
    assert lines[0] == "*nat" and lines[1] == ":KUBE-SERVICES - [0:0]" and lines[-1] == "COMMIT"
    assert sorted(ln[1:].split()[0] for ln in lines if ln.startswith(":KUBE-S") and "SERVICES" not in ln) \
        == sorted(stale)
    assert sorted(ln.split()[1] for ln in lines if ln.startswith("-X ")) == sorted(stale)
    # deletions come after every rule, and no rule is written to a stale chain
    assert min(i for i, ln in enumerate(lines) if ln.startswith("-X ")) > \
        max(i for i, ln in enumerate(lines) if ln.startswith("-A "))
    assert not any(ln.startswith(tuple(f"-A {c} " for c in stale)) for ln in lines)
    assert [ln for ln in lines if ln.startswith("-A KUBE-SERVICES ")] == \
        [ln for ln in render_iptables(new).splitlines() if ln.startswith("-A KUBE-SERVICES ")]


def test_partial_endpoint_change_rewrites_one_service_and_deletes_its_old_endpoint_chains():
    old, new = ServiceCatalog(3, 2), ServiceCatalog(3, 2, rolled={1})
    lines = render_iptables_partial(old, new).splitlines()
    svc = f"KUBE-SVC-{new.chain_id(1, 80)}"
    fresh = [f"KUBE-SEP-{new.endpoint_chain_id(1, j, 80)}" for j in range(2)]
    stale = [f"KUBE-SEP-{old.endpoint_chain_id(1, j, 80)}" for j in range(2)]
    assert set(fresh).isdisjoint(stale)
    declared = [ln[1:].split()[0] for ln in lines if ln.startswith(":")]
    assert declared == ["KUBE-SERVICES", svc, *fresh, *stale]
    assert [ln.split()[1] for ln in lines if ln.startswith("-X ")] == stale
    full = render_iptables(new).splitlines()
    # the changed service's rules are the full render's, byte for byte; no other service's
    assert [ln for ln in lines if ln.startswith(("-A KUBE-SVC", "-A KUBE-SEP"))] == \
        [ln for ln in full if ln.startswith((f"-A {svc} ", *(f"-A {c} " for c in fresh)))]
    assert f"{new.endpoint(1, 0)}:80" in "\n".join(lines) and f"{old.endpoint(1, 0)}:80" not in "\n".join(lines)
    # and back again
    back = render_iptables_partial(new, old).splitlines()
    assert [ln.split()[1] for ln in back if ln.startswith("-X ")] == fresh


def test_partial_is_none_when_more_than_the_service_count_changes():
    assert render_iptables_partial(ServiceCatalog(3, 2), ServiceCatalog(3, 3)) is None
    assert render_iptables_partial(ServiceCatalog(3, 2), ServiceCatalog(4, 2, ports=(80, 81))) is None
    # 100 x 10 = 1,000 endpoints is not large-cluster mode, 101 x 10 is: every comment changes
    assert render_iptables_partial(ServiceCatalog(100, 10), ServiceCatalog(101, 10)) is None
    assert render_iptables_partial(ServiceCatalog(101, 10), ServiceCatalog(102, 10)) is not None


# --- real kernel ------------------------------------------------------------

def _nat_state(lab, backend) -> dict[str, list[str]]:
    """The node's nat table as {chain: its rules in order} (no counters)."""
    save = lab.run(lab.node, [f"iptables-{backend}-save", "-t", "nat"]).stdout
    chains: dict[str, list[str]] = {}
    for ln in save.splitlines():
        if ln.startswith(":"):
            chains.setdefault(ln[1:].split()[0], [])
        elif ln.startswith("-A "):
            chains.setdefault(ln.split()[1], []).append(ln)
    return chains


@pytest.mark.root
@pytest.mark.parametrize("cls", [IptablesLegacy, IptablesNft])
def test_kernel_partial_sync_leaves_the_table_a_full_sync_would(lab, cls):
    """Partial add then partial remove, through iptables-restore --noflush: the
    kernel's table equals, chain by chain and rule by rule, the one a full load
    of the same catalog gives; the new service answers, the removed one not."""
    why = cls.unavailable(lab)
    if why:
        pytest.skip(f"{cls.name}: {why}")
    small, big = ServiceCatalog(120, 10), ServiceCatalog(121, 10)
    dp = cls(lab)
    want = {}
    try:
        for cat in (small, big):
            dp.setup(cat)
            want[cat.services] = _nat_state(lab, cls.backend)
            dp.teardown()
        dp.setup(small)
        prog = dp.add_service()
        assert dp.catalog == big and prog.load_s > 0
        assert _nat_state(lab, cls.backend) == want[121]
        with SynProber(lab, seed=5) as pr:
            out = pr.run([pr.craft(120, big.vip(120), 80) for _ in range(20)])
        assert all(o.rtt_ns for o in out), {o.error for o in out}
        assert {big.service_of_endpoint(o.endpoint.split(":")[0])[0] for o in out} == {120}
        dp.remove_service()
        assert _nat_state(lab, cls.backend) == want[120]
        with SynProber(lab, timeout=0.3, seed=6) as pr:
            gone = pr.run([pr.craft(120, big.vip(120), 80)])
        assert gone[0].rtt_ns is None
        # a rollout of service 119: its new endpoints answer, the table is a full load's
        rolled = ServiceCatalog(120, 10, rolled={119})
        dp.change_endpoints([119])
        assert dp.catalog == rolled
        now = _nat_state(lab, cls.backend)
        dp.teardown()
        dp.setup(rolled)
        assert now == _nat_state(lab, cls.backend)
        with SynProber(lab, seed=8) as pr:
            out = pr.run([pr.craft(119, rolled.vip(119), 80) for _ in range(20)])
        assert {rolled.service_of_endpoint(o.endpoint.split(":")[0]) is not None for o in out} == {True}
        assert {o.endpoint.split(":")[0] for o in out} <= set(rolled.endpoints_of(119))
        dp.change_endpoints([119])
        assert _nat_state(lab, cls.backend) == want[120]
    finally:
        dp.teardown()


@pytest.mark.root
@pytest.mark.parametrize("cls", [IptablesLegacy, IptablesNft])
def test_kernel_dnat_to_right_service_and_even_spread(lab, cls):
    why = cls.unavailable(lab)
    if why:
        pytest.skip(f"{cls.name}: {why}")
    cat = ServiceCatalog(1000, 10)
    dp = cls(lab)
    dp.setup(cat)
    try:
        with SynProber(lab, seed=7) as pr:
            out = pr.run(pr.craft_for(cat, "last", 400))
    finally:
        dp.teardown()
    assert all(o.error == "" and o.rtt_ns and o.rtt_ns > 0 for o in out), \
        {o.error for o in out}
    eps = cat.endpoints_of(999)
    seen = [o.endpoint.split(":")[0] for o in out]
    assert set(seen) <= set(eps), "DNAT must pick an endpoint of the probed service"
    counts = np.array([seen.count(e) for e in eps])
    assert chisquare(counts).pvalue > 1e-4, counts
    # teardown emptied the nat table
    save = lab.run(lab.node, [f"iptables-{cls.backend}-save", "-t", "nat"], check=False).stdout
    assert "KUBE-" not in save


@pytest.mark.root
def test_kernel_none_target_walks_and_passes(lab):
    cat = ServiceCatalog(50, 2)
    dp = IptablesNft(lab)
    dp.setup(cat)
    try:
        with SynProber(lab, seed=3) as pr:
            out = pr.run(pr.craft_for(cat, "none", 50))
    finally:
        dp.teardown()
    assert all(o.error == "" for o in out)
    assert {o.endpoint for o in out} == {f"{cat.none_address}:80"}

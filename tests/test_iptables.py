"""kube-proxy iptables layout: exact rule text (no root), and the real kernel (root)."""

import numpy as np
import pytest
from scipy.stats import chisquare

from labkit.core.catalog import ServiceCatalog
from labkit.datapaths.iptables import IptablesLegacy, IptablesNft, render_iptables
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


# --- real kernel ------------------------------------------------------------

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

import pytest

from labkit.core.catalog import ServiceCatalog, chain_hash
from labkit.core.errors import UsageError


def test_addresses_are_computed_and_disjoint():
    c = ServiceCatalog(3, 2)
    assert [c.vip(i) for i in range(3)] == ["10.96.0.1", "10.96.0.2", "10.96.0.3"]
    assert c.endpoints_of(0) == ["10.128.0.1", "10.128.0.2"]
    assert c.endpoints_of(2) == ["10.128.0.5", "10.128.0.6"]
    assert c.service_of_endpoint("10.128.0.6") == (2, 1)
    assert c.service_of_endpoint("10.128.0.7") is None
    assert c.none_address == "10.255.255.254"
    assert c.service_of_endpoint(c.none_address) is None


def test_defaults_hold_100k_services_of_10_endpoints():
    c = ServiceCatalog(100_000, 10)
    assert c.vip(99_999) == "10.97.134.160"
    assert c.endpoint(99_999, 9) == "10.143.66.64"


def test_targets():
    c = ServiceCatalog(10, 1)
    assert [c.target_index(t) for t in ("first", "middle", "last")] == [0, 5, 9]
    assert c.target_index("random") is None and c.target_index("none") is None
    assert ServiceCatalog(0, 1).target_index("last") is None


def test_chain_names_are_stable_and_short():
    assert chain_hash("default/svc-000000", 80) == chain_hash("default/svc-000000", 80)
    assert chain_hash("default/svc-000000", 80) != chain_hash("default/svc-000000", 81)
    assert len("KUBE-SVC-" + chain_hash("x", 1)) <= 28  # iptables' chain name limit


@pytest.mark.parametrize("kw, msg", [
    (dict(services=-1), "services must be >= 0"),
    (dict(services=1, endpoints=0), "endpoints per service must be 1..1000"),
    (dict(services="5"), "must be a whole number"),
    (dict(services=True), "must be a whole number"),
    (dict(services=10, service_cidr="10.96.0.0/29"), "too small for 10 services"),
    (dict(services=10, endpoints=10, endpoint_cidr="10.128.0.0/26"), "too small for 10 x 10"),
    (dict(services=1, service_cidr="10.0.0.0/8", endpoint_cidr="10.128.0.0/9"), "overlaps"),
    (dict(services=1, service_cidr="10.96.0.1/12"), "not an IPv4 network"),
    (dict(services=1, service_cidr="fd00::/64"), "only IPv4"),
    (dict(services=1, ports=(0,)), "not in 1..65535"),
    (dict(services=1, ports=(80, 80)), "ports repeat"),
    (dict(services=1, ports=()), "at least one service port"),
])
def test_validation_messages(kw, msg):
    with pytest.raises(UsageError, match=msg):
        ServiceCatalog(**kw)


def test_rolled_services_get_new_endpoints_owned_only_by_them():
    c, r = ServiceCatalog(3, 2), ServiceCatalog(3, 2, rolled={1})
    assert r.endpoints_of(0) == c.endpoints_of(0) and r.endpoints_of(2) == c.endpoints_of(2)
    assert set(r.endpoints_of(1)).isdisjoint(c.endpoints_of(1))
    assert [r.service_of_endpoint(a) for a in r.endpoints_of(1)] == [(1, 0), (1, 1)]
    assert r.service_of_endpoint(c.endpoint(1, 0)) is None   # the old pod no longer belongs to it
    assert c.service_of_endpoint(r.endpoint(1, 0)) is None
    assert r.none_address not in r.endpoints_of(1) and r != c
    with pytest.raises(UsageError, match="rolled"):
        ServiceCatalog(3, 2, rolled={3})

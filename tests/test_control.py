"""Control-plane operations: one-service renderers (pure), add/remove on the
real kernel for every mode, the control.parquet table of sweeps and of
`labkit control`."""
from __future__ import annotations

import ipaddress
import os

import numpy as np
import pandas as pd
import pytest

from labkit.analysis import control as control_analysis
from labkit.core.catalog import ServiceCatalog
from labkit.core.errors import UsageError
from labkit.datapaths import MODES, Datapath
from labkit.datapaths.ebpf import render_backends, render_maps, spare_entries
from labkit.datapaths.ipvs import render_ipvs, render_ipvs_add, render_ipvs_change_endpoints, render_ipvs_remove
from labkit.datapaths.nftables import (
    endpoint_chain,
    messages_remove_service,
    render_add_service,
    render_change_endpoints,
    render_nftables,
    render_remove_service,
    service_chain,
)
from labkit.host import nfnetlink
from labkit.lab.lab import Lab
from labkit.probes.syn import SynProber
from labkit.rundir import schema
from labkit.runs import control
from labkit.runs.params import SweepParams
from labkit.runs.sweep import run_sweep

CAT = ServiceCatalog(3, 2)


# ---- pure -------------------------------------------------------------------
class _Recorder(Datapath):
    """A datapath that only records what it is asked to load (tests the base defaults)."""
    name = "recorder"
    summary = "test"

    @classmethod
    def unavailable(cls, lab=None):
        return None

    @staticmethod
    def render(catalog):
        return f"{catalog.services} services"

    def load(self, text):
        self.loaded.append(text)

    def clear(self):
        self.loaded.append("clear")


def test_default_add_remove_rerender_the_whole_catalog():
    dp = _Recorder(lab=None)
    dp.loaded = []
    dp.setup(CAT)
    add = dp.add_service()
    assert dp.catalog.services == 4 and dp.loaded[-1] == "4 services"
    rem = dp.remove_service()
    assert dp.catalog == CAT and dp.loaded == ["3 services", "4 services", "3 services"]
    assert add.program_s >= 0 and rem.program_s >= 0
    assert "full re-render" in Datapath.update and Datapath.update_kind == "full"


def test_a_change_names_its_loader_or_is_refused():
    """A change takes its loader as an argument: "" or the mode's own for a mode
    with one, any of CHANGE_LOADERS for nftables; anything else is one line."""
    dp = _Recorder(lab=None)
    dp.loaded = []
    dp.setup(CAT)
    assert dp.loader_of("") == dp.loader_of(dp.change_loader) == dp.change_loader
    dp.add_service(loader=dp.change_loader)
    assert dp.catalog.services == 4
    with pytest.raises(UsageError, match="recorder: no change loader 'nft'; it has restore"):
        dp.remove_service(loader="nft")
    assert dp.catalog.services == 4 and len(dp.loaded) == 2     # refused before anything was sent
    nft = MODES["nftables"](lab=None)
    assert [nft.loader_of(lo) for lo in ("", "netlink", "nft")] == ["netlink", "netlink", "nft"]
    with pytest.raises(UsageError, match="nftables: no change loader 'ipvsadm'; it has netlink, nft"):
        nft.loader_of("ipvsadm")


def test_kind_of_tables_written_before_schema_4():
    """Old control tables have no kind: program and full re-renders are full."""
    old = pd.DataFrame(dict(op=["program", "add", "add"], mode=["a", "a", "b"], services=[1, 1, 1],
                            seconds=[1.0, 1.0, 1.0], verified=[None, True, True],
                            update=["full re-render and reload (kube-proxy iptables full sync)"] * 2
                            + ["one nft transaction"]))
    assert list(control_analysis.with_kind(old)["kind"]) == ["full", "full", "partial"]
    assert set(control_analysis.summary(old)["kind"]) == {"full", "partial"}


def test_nftables_add_text_matches_the_full_render():
    big = ServiceCatalog(4, 2, ports=(80, 8080))
    text = render_add_service(big, 3)
    full = render_nftables(big)
    head, tail = text.split("}\nadd element ", 1)
    assert head.startswith("table ip kube-proxy {\n")
    # every chain block of the incremental text is, byte for byte, in the full table
    blocks = ["\tchain " + b for b in head.split("\tchain ")[1:]]
    assert len(blocks) == 2 * (1 + 2)
    assert all(b in full for b in blocks)
    # and none is in the table of the first 3 services
    assert not any(b in render_nftables(ServiceCatalog(3, 2, ports=(80, 8080))) for b in blocks)
    s80, s8080 = (service_chain(big.name(3), p) for p in (80, 8080))
    assert tail == (f"ip kube-proxy service-ips {{ 10.96.0.4 . tcp . 80 : goto {s80}, "
                    f"10.96.0.4 . tcp . 8080 : goto {s8080} }}\n")
    # endpoint chains come before the service chain that jumps to them
    assert head.index(f"chain {s80} ") > head.index(f"chain {endpoint_chain(big.name(3), '10.128.0.7', 80)} ")


def test_nftables_remove_text_exact():
    one = ServiceCatalog(1, 1)
    svc = service_chain(one.name(0), 80)
    ep = endpoint_chain(one.name(0), "10.128.0.1", 80)
    assert render_remove_service(one, 0) == (
        "delete element ip kube-proxy service-ips { 10.96.0.1 . tcp . 80 }\n"
        f"flush chain ip kube-proxy {svc}\ndelete chain ip kube-proxy {svc}\n"
        f"flush chain ip kube-proxy {ep}\ndelete chain ip kube-proxy {ep}\n")


def test_nftables_endpoint_change_text_exact():
    old, new = ServiceCatalog(2, 1), ServiceCatalog(2, 1, rolled={1})
    svc = service_chain(old.name(1), 80)
    was, now = (endpoint_chain(old.name(1), c.endpoint(1, 0), 80) for c in (old, new))
    assert was != now and new.endpoint(1, 0) != old.endpoint(1, 0)
    assert render_change_endpoints(old, new) == (
        f"flush chain ip kube-proxy {svc}\n"
        "table ip kube-proxy {\n"
        f"\tchain {now} {{\n\t\tip saddr {new.endpoint(1, 0)} jump mark-for-masquerade\n"
        f"\t\tmeta l4proto tcp dnat to {new.endpoint(1, 0)}:80\n\t}}\n"
        f"\tchain {svc} {{\n\t\tip daddr 10.96.0.2 tcp dport 80 ip saddr != {new.endpoint_net} "
        "jump mark-for-masquerade\n"
        f"\t\tgoto {now}\n\t}}\n"
        "}\n"
        f"flush chain ip kube-proxy {was}\ndelete chain ip kube-proxy {was}\n")
    # the chains it writes are, byte for byte, the full render's of the new catalog
    text, full = render_change_endpoints(old, new), render_nftables(new)
    assert all("\tchain " + b in full for b in text.split("\tchain ")[1:-1])
    # nothing changed, nothing sent; and back again deletes the new chain
    assert render_change_endpoints(old, old) == ""
    assert render_change_endpoints(new, old).endswith(f"delete chain ip kube-proxy {now}\n")
    with pytest.raises(ValueError, match="keeps services"):
        render_change_endpoints(old, ServiceCatalog(3, 1))


def test_ipvs_add_remove_text_exact():
    assert render_ipvs_add(CAT, 2) == (
        "#: ipset restore\nadd KUBE-CLUSTER-IP 10.96.0.3,tcp:80\nadd KUBE-IPVS-IPS 10.96.0.3\n"
        "#: ip -batch\naddr add 10.96.0.3/32 dev kube-ipvs0\n"
        "#: ipvsadm -R\n-A -t 10.96.0.3:80 -s rr\n-a -t 10.96.0.3:80 -r 10.128.0.5:80 -m -w 1\n"
        "-a -t 10.96.0.3:80 -r 10.128.0.6:80 -m -w 1\n")
    assert render_ipvs_remove(CAT, 2) == (
        "#: ipvsadm -R\n-D -t 10.96.0.3:80\n#: ip -batch\naddr del 10.96.0.3/32 dev kube-ipvs0\n"
        "#: ipset restore\ndel KUBE-CLUSTER-IP 10.96.0.3,tcp:80\ndel KUBE-IPVS-IPS 10.96.0.3\n")
    # the added lines are the full render's lines for that service
    full = render_ipvs(CAT)
    for ln in render_ipvs_add(CAT, 2).splitlines():
        if not ln.startswith("#:"):
            assert ln in full


def test_ipvs_endpoint_change_text_exact():
    """A rollout of service 2: new real servers first, then the old ones deleted; a
    second change puts the originals back; a full render of the new catalog has
    exactly the real servers the change leaves."""
    new = ServiceCatalog(3, 2, rolled={2})
    text = render_ipvs_change_endpoints(CAT, new)
    added = [f"-a -t 10.96.0.3:80 -r {ep}:80 -m -w 1" for ep in new.endpoints_of(2)]
    assert text == ("#: ipvsadm -R\n" + "".join(f"{ln}\n" for ln in added)
                    + "-d -t 10.96.0.3:80 -r 10.128.0.5:80\n-d -t 10.96.0.3:80 -r 10.128.0.6:80\n")
    assert set(new.endpoints_of(2)).isdisjoint(CAT.endpoints_of(2))
    back = render_ipvs_change_endpoints(new, CAT)
    assert "-a -t 10.96.0.3:80 -r 10.128.0.5:80 -m -w 1" in back and f"-d -t 10.96.0.3:80 -r {new.endpoints_of(2)[0]}:80" in back
    # applying the change to the full render's real servers gives the new full render's
    servers = {ln for ln in render_ipvs(CAT).splitlines() if ln.startswith("-a ")}
    for ln in text.splitlines()[1:]:
        servers = servers | {ln} if ln.startswith("-a ") else servers - {ln.replace("-d ", "-a ") + " -m -w 1"}
    assert servers == {ln for ln in render_ipvs(new).splitlines() if ln.startswith("-a ")}
    assert render_ipvs_change_endpoints(CAT, CAT) == "#: ipvsadm -R\n"
    with pytest.raises(ValueError, match="keeps services"):
        render_ipvs_change_endpoints(CAT, ServiceCatalog(4, 2))


def test_ebpf_entries_of_one_service_are_a_slice_of_the_full_maps():
    cat = ServiceCatalog(5, 3, ports=(80, 443))
    full, tail = render_maps(cat), render_maps(cat, first=4)
    per_svc, per_be = 2 * 4, 2 * 3
    assert tail.service_keys.tobytes() == full.service_keys[-per_svc:].tobytes()
    assert tail.service_values.tobytes() == full.service_values[-per_svc:].tobytes()
    assert np.array_equal(tail.backend_ids, full.backend_ids[-per_be:])
    assert tail.backends.tobytes() == full.backends[-per_be:].tobytes()
    assert spare_entries(cat) == (per_svc, per_be)
    assert len(render_maps(cat, first=5).service_keys) == 0


def test_ebpf_backends_of_replaced_endpoints_keep_their_ids():
    cat, new = ServiceCatalog(5, 2, ports=(80, 81)), ServiceCatalog(5, 2, ports=(80, 81), rolled={0, 3})
    full = render_maps(cat)
    ids, backends = render_backends(new, [0, 3])
    # the same ids as the full maps' for those services, new addresses behind them
    want = [b for b, be in zip(full.backend_ids, full.backends)
            if cat.service_of_endpoint(str(ipaddress.IPv4Address(int(be["addr"]))))[0] in (0, 3)]
    assert sorted(ids.tolist()) == sorted(int(b) for b in want)
    addrs = {str(ipaddress.IPv4Address(int(a))) for a in backends["addr"]}
    assert addrs == set(new.endpoints_of(0)) | set(new.endpoints_of(3))
    assert set(backends["port"]) == {80, 81}
    # a full render of the changed catalog agrees
    again = render_maps(new)
    by_id = dict(zip(again.backend_ids.tolist(), again.backends["addr"].tolist()))
    assert all(by_id[int(i)] == int(a) for i, a in zip(ids, backends["addr"]))


def test_summary_and_slopes_of_a_table():
    rows = []
    for n, s in ((0, 0.01), (1000, 1.01), (2000, 2.01)):
        for op in control_analysis.OPS:
            rows.append(dict(mode="m", op=op, services=n, seconds=s, verified=None if op == "program" else True))
    df = pd.DataFrame(rows)
    s = control_analysis.summary(df)
    assert list(s["op"].unique()) == list(control_analysis.OPS)
    assert (s["failed_checks"] == 0).all() and (s["count"] == 1).all()
    sl = control_analysis.slopes(df)
    assert np.allclose(sl["ms_per_1000_services"], 1000.0) and np.allclose(sl["intercept_s"], 0.01)
    assert set(sl["chosen"]) == {"linear"}


# ---- real kernel ----------------------------------------------------------------
def _mode_ready(mode: str) -> None:
    why = MODES[mode].unavailable()
    if why:
        where = "; tests/test_ipvs.py::test_ipvs_in_uml runs it in user-mode Linux" if mode == "ipvs" else ""
        pytest.skip(f"{mode}: {why}{where}")


@pytest.mark.root
@pytest.mark.parametrize("mode", list(MODES))
def test_add_and_remove_one_service_real_kernel(mode):
    """Program 30 services, add one (its VIP answers from its endpoints),
    remove it (its VIP no longer answers); the others keep working."""
    _mode_ready(mode)
    cat = ServiceCatalog(30, 3)
    with Lab(endpoint_cidr=cat.endpoint_cidr) as lab:
        dp = MODES[mode](lab)
        lab.defer(f"{mode} teardown", dp.teardown)
        dp.setup(cat)
        rows = control.measure_ops(lab, dp, seed=1, full=True)
        loaders = max(1, len(dp.CHANGE_LOADERS))   # nftables: over netlink, then through nft -f
        paths = loaders + dp.full_sync
        ops = ["add", "remove"] + (["endpoints", "burst"] if dp.changes_endpoints else [])
        assert [r["op"] for r in rows] == ops * paths
        assert [r["kind"] for r in rows] == ["partial"] * len(ops) * loaders + ["full"] * len(ops) * dp.full_sync
        assert [r["loader"] for r in rows][::len(ops)] == \
            [*(dp.CHANGE_LOADERS or [dp.change_loader]), *[dp.program_loader] * dp.full_sync]
        assert [r["services"] for r in rows] == [30] * len(ops) * paths
        assert [r["services_before"] for r in rows] == [30, 31, 30, 30][:len(ops)] * paths
        assert [r["changed"] for r in rows] == [1, 1, 1, 30][:len(ops)] * paths   # burst: min(100, N)
        assert all(r["verified"] for r in rows), rows
        assert all(r["seconds"] > 0 and r["seconds"] == r["render_s"] + r["load_s"] for r in rows)
        assert dp.catalog == cat
        with SynProber(lab, timeout=0.5, seed=2) as pr:
            out = pr.run([pr.craft(i, cat.vip(i), 80) for i in (0, 29) for _ in range(5)])
        assert all(o.rtt_ns for o in out), [o.error for o in out]
        assert all(cat.service_of_endpoint(o.endpoint.split(":")[0])[0] == o.probe.service for o in out)
        # twice in a row: the state after add+remove is a clean base
        assert all(r["verified"] for r in control.measure_ops(lab, dp, seed=3))


def _nft_chains(lab: Lab) -> list[str]:
    """The kube-proxy table's chain blocks and service-ips elements, sorted
    (creation order differs between a change in place and a fresh load)."""
    text = lab.run(lab.node, ["nft", "list", "table", "ip", "kube-proxy"]).stdout.rstrip()
    assert text.endswith("}")
    text = text[:-1]   # the table's closing brace: every chain block then ends alike
    return sorted(b.strip() for b in text.split("\tchain ")[1:]) + \
        sorted(text.split("elements = {", 1)[1].split("}", 1)[0].replace("\n", " ").split(","))


@pytest.mark.root
@pytest.mark.parametrize("loader", ["netlink", "nft"])
def test_nftables_changes_leave_the_table_a_full_load_would(loader):
    """Add, remove and endpoint changes in place, over netlink or through
    ``nft -f``: the table nft lists afterwards is the one a full load of the
    new catalog gives (the netlink batch encodes the same rules)."""
    _mode_ready("nftables")
    cat = ServiceCatalog(12, 3, ports=(80, 8080))
    grown = ServiceCatalog(13, 3, ports=(80, 8080))
    rolled = ServiceCatalog(12, 3, ports=(80, 8080), rolled={2, 7, 11})
    with Lab(endpoint_cidr=cat.endpoint_cidr) as lab:
        dp = MODES["nftables"](lab)
        lab.defer("nftables teardown", dp.teardown)
        want = {}
        for c in (cat, grown, rolled):
            dp.setup(c)
            want[c] = _nft_chains(lab)
        dp.setup(cat)
        dp.add_service(loader=loader)
        assert dp.catalog == grown and _nft_chains(lab) == want[grown]
        dp.remove_service(loader=loader)
        assert dp.catalog == cat and _nft_chains(lab) == want[cat]
        dp.change_endpoints([2, 7, 11], loader=loader)
        assert dp.catalog == rolled and _nft_chains(lab) == want[rolled]
        with SynProber(lab, timeout=0.5, seed=4) as pr:
            out = pr.run([pr.craft(7, cat.vip(7), port) for port in (80, 8080) for _ in range(8)])
        assert {o.endpoint.split(":")[0] for o in out} <= set(rolled.endpoints_of(7)), out
        dp.change_endpoints([2, 7, 11], loader=loader)
        assert dp.catalog == cat and _nft_chains(lab) == want[cat]


@pytest.mark.root
def test_nftables_refused_change_changes_nothing():
    """A batch the kernel refuses (a service that is not there) is applied
    not at all, and the error names the message."""
    _mode_ready("nftables")
    cat = ServiceCatalog(3, 2)
    with Lab(endpoint_cidr=cat.endpoint_cidr, server=False) as lab:
        dp = MODES["nftables"](lab)
        lab.defer("nftables teardown", dp.teardown)
        dp.setup(cat)
        before = _nft_chains(lab)
        # removes service 1 (exists), then service 5 (does not): all or nothing
        msgs = messages_remove_service(cat, 1) + messages_remove_service(ServiceCatalog(6, 2), 5)
        with pytest.raises(nfnetlink.TransactionError, match="delete element"):
            nfnetlink.transact(lab.node, msgs)
        assert _nft_chains(lab) == before


@pytest.mark.root
def test_labkit_control_writes_the_table(tmp_path):
    _mode_ready("nftables")
    _mode_ready("iptables-nft")
    out = control.run_control(["iptables-nft", "nftables"], [0, 50], str(tmp_path / "ctl"),
                              endpoints=2, progress=False)
    df = pd.read_parquet(os.path.join(out, schema.CONTROL))
    assert set(schema.CONTROL_COLUMNS) <= set(df.columns)
    # program, add, remove; at 50 services also an endpoint change and a burst;
    # iptables-nft every change again as a full sync, nftables through nft -f besides netlink
    assert len(df) == 2 * ((1 + 2 * 2) + (1 + 4 * 2))
    assert dict(df.groupby("mode").size()) == {"iptables-nft": 14, "nftables": 14}
    assert set(df.loc[df["mode"] == "nftables", "loader"]) == {"nft", "netlink"}
    assert set(df.loc[df["op"].isin(["endpoints", "burst"]), "services"]) == {50}
    assert set(df.loc[df["op"] == "burst", "changed"]) == {50}
    assert set(df.loc[df["mode"] == "iptables-nft", "kind"]) == {"full", "partial"}
    assert set(df.loc[df["mode"] == "nftables", "kind"]) == {"full", "partial"}  # program is full
    assert (df["seconds"] > 0).all()
    assert df.loc[df["op"] != "program", "verified"].astype(bool).all()
    meta = pd.read_json(os.path.join(out, schema.CONTROL_META), typ="series")
    assert meta["complete"] and meta["experiment"] == "control"
    with pytest.raises(Exception, match="already holds"):
        control.run_control(["nftables"], [0], out, progress=False)


@pytest.mark.root
def test_sweep_writes_control_rows_per_block_and_valid_keepalive_points(tmp_path):
    """The issue's done-when command in small: syn and keepalive probes, and
    control.parquet with one row per block and operation."""
    _mode_ready("nftables")
    p = SweepParams(modes=["iptables-nft", "nftables"], services=[0, 30], targets=["last"],
                    probe_kinds=["syn", "keepalive"], probes=40, warmup=5, rounds=1, endpoints=3)
    out = run_sweep(p, str(tmp_path / "run"), progress=False)
    pts = pd.read_parquet(os.path.join(out, "points.parquet"))
    assert set(pts["probe"]) == {"syn", "keepalive"} and pts["valid"].all(), pts["reason"].tolist()
    ctl = pd.read_parquet(os.path.join(out, schema.CONTROL))
    assert len(ctl) == 4 * 3 and sorted(ctl["op"].value_counts().unique()) == [4]
    assert set(ctl["block"]) == set(pts["block"])
    assert ctl.loc[ctl["op"] != "program", "verified"].astype(bool).all()
    # the program row repeats the block's programming time from points.parquet
    prog = ctl[ctl["op"] == "program"].set_index("block")["seconds"]
    per_block = pts.drop_duplicates("block").set_index("block")["program_s"]
    assert np.allclose(prog.sort_index(), per_block.sort_index())

"""The nginx/ab cross-check: configuration and ab parsing (pure), and real
HTTP requests through a real datapath between lab namespaces (root)."""
from __future__ import annotations

import os
import random

import pandas as pd
import pytest
from conftest import need_tool

from labkit.core.catalog import ServiceCatalog
from labkit.datapaths import IptablesNft, Nftables
from labkit.host import netns
from labkit.host.debcache import find_tool
from labkit.lab.lab import Lab
from labkit.probes import PROBERS
from labkit.probes.http import (
    BATCH,
    KINDS,
    NGINX_PORT,
    REDIRECT_TABLE,
    ab_counts,
    ab_latencies,
    render_nginx_conf,
    render_redirect,
)
from labkit.runs.params import SweepParams
from labkit.runs.sweep import run_sweep


# ---- pure -------------------------------------------------------------------
def _ab_csv(sorted_ms: list[float]) -> str:
    """What ab's -e writes for these sorted times (its own indexing, including
    the reads past the end of its array, which hold garbage)."""
    n = len(sorted_ms)
    lines = ["Percentage served,Time in ms"]
    for i in range(101):
        idx = 0 if i == 0 else n - 1 if i == 100 else int(0.5 + n * i / 100.0)
        lines.append(f"{i},{sorted_ms[idx] if idx < n else 7311156825131345.0:.3f}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("n", [1, 2, 3, 7, 37, 64, 99, 100])
def test_ab_percentiles_give_every_request_for_up_to_100(n):
    rng = random.Random(n)
    times = sorted(round(rng.uniform(0.02, 2.0), 3) for _ in range(n))
    assert ab_latencies(_ab_csv(times), n) == [round(t * 1000, 3) for t in times]


def test_ab_percentiles_refuse_more_than_a_batch_or_a_short_file():
    with pytest.raises(ValueError):
        ab_latencies(_ab_csv([0.1] * 10), BATCH + 1)
    with pytest.raises(Exception, match="does not hold"):
        ab_latencies("Percentage served,Time in ms\n0,0.100\n", 5)


def test_ab_counts():
    out = ("Concurrency Level:      1\nComplete requests:      100\nFailed requests:        2\n"
           "Non-2xx responses:      3\nKeep-Alive requests:    99\n")
    assert ab_counts(out) == {"complete": 100, "failed": 2, "non2xx": 3, "keepalive": 99}
    assert ab_counts("Complete requests:      5\n") == {"complete": 5, "failed": 0, "non2xx": 0,
                                                         "keepalive": 0}


def test_nginx_config_keeps_every_file_in_its_directory():
    conf = render_nginx_conf("/tmp/x/")
    assert "daemon off;" in conf and "master_process off;" in conf
    assert f"listen {NGINX_PORT};" in conf and "keepalive_requests 100;" in conf
    paths = [w.rstrip(";") for w in conf.split() if w.startswith("/") and w != "/"]
    assert paths and all(p.startswith("/tmp/x/") for p in paths)
    assert "include" not in conf and "user " not in conf   # nothing from /etc/nginx


def test_redirect_rule_keeps_the_endpoint_address():
    assert render_redirect([80, 443]) == (
        f"table ip {REDIRECT_TABLE} {{\n\tchain prerouting {{\n"
        "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        f"\t\ttcp dport {{ 80, 443 }} dnat to ip daddr:{NGINX_PORT}\n\t}}\n}}\n")


def test_kinds_registered():
    assert {k: PROBERS[k] for k in KINDS} == KINDS
    assert PROBERS["http-new"].new_connection_per_probe
    assert not PROBERS["http-keepalive"].new_connection_per_probe


# ---- real kernel ----------------------------------------------------------------
def _tools():
    for tool in ("ab", "nginx", "nft"):
        need_tool(tool)


def _nginx_pids() -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().strip() == "nginx":
                        out.append(int(d))
            except OSError:
                pass
    return out


@pytest.mark.root
def test_http_new_and_keepalive_through_iptables(lab):
    _tools()
    cat = ServiceCatalog(12, 4)
    dp = IptablesNft(lab)
    lab.defer("iptables teardown", dp.teardown)
    dp.setup(cat)
    before = set(_nginx_pids())
    with PROBERS["http-new"](lab, timeout=1.0, seed=1) as pr:
        out = pr.run(pr.craft_for(cat, "last", 150))
        nginx = pr.nginx
        # nginx runs in the backend namespace, and only there
        assert nginx.pid in netns.ns_pids(lab.backend)
        assert set(_nginx_pids()) - before == {nginx.pid}
        # its files are in the lab's temp dir
        assert os.path.exists(os.path.join(nginx.workdir, "nginx.pid"))
        cp = lab.run(lab.backend, [find_tool("nginx"), "-t", "-p", nginx.workdir + "/", "-e",
                                   os.path.join(nginx.workdir, "error.log"),
                                   "-c", os.path.join(nginx.workdir, "nginx.conf")], check=False)
        assert "syntax is ok" in cp.stderr
    assert [o.error for o in out] == [""] * 150
    assert all(o.rtt_ns > 0 for o in out)
    # one SYN per request reached an endpoint of the service, and DNAT spread them
    eps = [o.endpoint.split(":")[0] for o in out]
    assert set(eps) <= set(cat.endpoints_of(11)) and len(set(eps)) == 4
    assert all(o.endpoint.endswith(":80") for o in out)      # seen before the backend's rule
    rtts = [o.rtt_ns for o in out]
    assert rtts[:100] == sorted(rtts[:100])                  # ab reports a batch sorted

    with PROBERS["http-keepalive"](lab, timeout=1.0, seed=2) as pr:
        ka = pr.run(pr.craft_for(cat, "last", 150))
    assert [o.error for o in ka] == [""] * 150
    assert len({o.endpoint for o in ka[:100]}) == 1 and len({o.endpoint for o in ka[100:]}) == 1
    # on established connections a request is cheaper than with a handshake
    med = lambda xs: sorted(x.rtt_ns for x in xs)[len(xs) // 2]  # noqa: E731
    assert med(ka) < med(out)

    # the prober took its rule out of the backend; the echo server has port 80 back
    tables = lab.run(lab.backend, ["nft", "list", "tables"]).stdout
    assert REDIRECT_TABLE not in tables
    with PROBERS["keepalive"](lab, timeout=1.0, seed=3) as pr:
        echo = pr.run(pr.craft_for(cat, "last", 5))
    assert all(o.rtt_ns for o in echo)


@pytest.mark.root
def test_nginx_is_gone_after_the_lab(tmp_path):
    _tools()
    cat = ServiceCatalog(0)
    with Lab(endpoint_cidr=cat.endpoint_cidr) as lab:
        with PROBERS["http-new"](lab, timeout=1.0) as pr:
            out = pr.run(pr.craft_for(cat, "none", 20))
            pid, workdir = pr.nginx.pid, pr.workdir
    assert all(o.rtt_ns and o.endpoint == f"{cat.none_address}:80" for o in out)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/comm").read().strip() != "nginx"
    assert not os.path.exists(workdir)


@pytest.mark.root
def test_sweep_with_http_kinds(tmp_path):
    _tools()
    if Nftables.unavailable():
        pytest.skip(Nftables.unavailable())
    p = SweepParams(modes=["nftables"], services=[0, 20], targets=["last", "random"],
                    probe_kinds=["syn", "http-new", "http-keepalive"], probes=60, warmup=5,
                    rounds=1, endpoints=3)
    out = run_sweep(p, str(tmp_path / "run"), progress=False)
    pts = pd.read_parquet(os.path.join(out, "points.parquet"))
    smp = pd.read_parquet(os.path.join(out, "samples.parquet"))
    assert set(pts["probe"]) == {"syn", "http-new", "http-keepalive"}
    assert pts["valid"].all(), pts[["probe", "target", "reason"]].to_string()
    assert smp.groupby("point_id").size().eq(60).all()
    assert smp.loc[smp["probe"] != "syn", "rtt_us"].gt(0).all()

"""The estimate before a run (`sweep --dry-run`, `params FILE`): the points a
plan has, and its duration from rates measured on a finished sweep (no root)."""
import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest

from labkit import cli
from labkit.host import debcache
from labkit.rundir import schema
from labkit.rundir.store import read_table
from labkit.runs import estimate as est
from labkit.runs.params import SweepParams
from labkit.runs.sweep import Sweep

REF = os.path.join(os.path.dirname(__file__), "..", "data", "reference")


def _run(name):
    d = os.path.join(REF, name)
    with open(os.path.join(d, schema.META)) as f:
        meta = json.load(f)
    p = SweepParams.from_dict({k: v for k, v in meta["params"].items() if k in SweepParams.__dataclass_fields__})
    return d, meta, p


@pytest.mark.parametrize("name", ["host-6.18", "experiments-6.18", "budget-6.18"])
def test_a_runs_own_rates_predict_its_duration_and_points(name):
    d, meta, p = _run(name)
    pts = read_table(os.path.join(d, schema.POINTS))
    r = est.rates_of(pts, meta["started"], d)
    e = est.estimate(p, {"host": r})
    actual = meta["finished"] - meta["started"]
    assert e.points == len(pts) and not e.assumed
    assert abs(e.seconds / actual - 1) < 0.10, (e.seconds, actual)


def test_each_mode_is_planned_in_the_kernel_it_runs_in():
    p = SweepParams.from_dict({"modes": ["iptables-legacy", "ipvs", "ebpf"], "kernel": "host+uml"})
    assert est.kernels_of(p, host_lacks=["ipvs"]) == {"iptables-legacy": ["host", "uml"], "ipvs": ["uml"],
                                                       "ebpf": ["host"]}
    auto = SweepParams.from_dict({"modes": ["iptables-legacy", "ipvs"], "kernel": "auto"})
    assert set(sum(est.kernels_of(auto, host_lacks=["ipvs"]).values(), [])) == {"uml"}
    assert set(sum(est.kernels_of(auto).values(), [])) == {"host"}


def test_the_estimate_counts_the_blocks_and_points_of_the_plan_with_end_rounds():
    """end_rounds: the estimate's blocks and points are the plan's (Sweep.blocks, units)."""
    d, meta, _ = _run("budget-6.18")
    r = est.rates_of(read_table(os.path.join(d, schema.POINTS)), meta["started"], d)
    p = SweepParams.from_dict({"modes": ["iptables-legacy", "ebpf"], "services": [1, 100, 1000], "rounds": 2,
                               "probe_kinds": ["syn", "http-new"], "kind_modes": {"http-new": ["iptables-legacy"]},
                               "end_rounds": {"iptables-legacy": 4}, "end_kinds": ["http-new"]})
    sweep = Sweep(p)
    e = est.estimate(p, {"host": r})
    assert e.blocks == len(sweep.blocks()) == 2 * 6 + 2 * 2
    assert e.points == sum(sweep.units(b) for b in sweep.blocks())
    plain = est.estimate(SweepParams.from_dict({**p.to_dict(), "end_rounds": {}, "end_kinds": []}), {"host": r})
    assert e.seconds > plain.seconds


def test_a_missing_rate_is_assumed_out_loud():
    d, meta, _ = _run("budget-6.18")
    r = est.rates_of(read_table(os.path.join(d, schema.POINTS)), meta["started"], d)
    p = SweepParams.from_dict({"modes": ["nftables"], "services": [1, 100], "pacing": [0, 1000]})
    e = est.estimate(p, {"host": r})
    assert any("nftables in host: no block rate, the median of ebpf, iptables-legacy, iptables-nft" in a
               for a in e.assumed)
    assert any("syn@1000 in host: no probe rate, 1/pacing" in a for a in e.assumed)
    assert "assumed: " in e.text()


def test_dry_run_prints_the_estimate_and_measures_nothing(tmp_path):
    cp = subprocess.run([sys.executable, "-m", "labkit", "sweep", "--dry-run", "--modes", "nftables",
                         "--services", "1,1000", "--rounds", "2", "--targets", "last"],
                        capture_output=True, text=True, cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.startswith("4 points in 4 blocks") and "estimated" in cp.stdout
    assert os.listdir(tmp_path) == []


def test_a_host_and_uml_runs_rates_per_kernel_predict_its_duration():
    d, meta, p = _run("default-6.18")
    pts = est._with_kernel(read_table(os.path.join(d, schema.POINTS)), meta)
    assert set(pts["kernel"]) == {"host", "uml"}
    rates = {k: est.rates_of(pts, meta["started"], d, k) for k in ("host", "uml")}
    e = est.estimate(p, rates)
    # the settle rounds are not planned: their time (and the claims' analysis before them) aside
    settle = meta.get("settle") or {}
    settled = {b.block for b in Sweep(p).settle_blocks(settle)}
    actual = meta["finished"] - meta["started"] - sum(settle.get("round_s") or []) - (settle.get("analysis_s") or 0)
    planned = pts[(pts["remeasure_of"] < 0) & ~pts["block"].isin(settled)]
    assert e.points == len(planned) and not e.assumed
    # the re-measured blocks are not planned, so the estimate may fall short by their time
    assert -0.15 < e.seconds / actual - 1 < 0.10, (e.seconds, actual)


def test_save_rates_keeps_each_kernel_of_a_host_and_uml_run_and_no_smoke_run(tmp_path, monkeypatch):
    monkeypatch.setenv(est.RATES_DIR_ENV, str(tmp_path / "rates"))
    d, meta, _ = _run("default-6.18")
    written = est.save_rates(d, meta)
    assert sorted(os.path.basename(f) for f in written) == ["host.json", "uml.json"]
    r, src = est.load_rates("uml")
    assert r is not None and "ipvs" in r.block and "this machine's last uml sweep" in src
    small = tmp_path / "small"
    small.mkdir()
    pts = read_table(os.path.join(d, schema.POINTS)).head(est.MIN_POINTS - 1)
    pts.to_parquet(small / schema.POINTS)
    assert est.save_rates(str(small), meta) == []
    assert (tmp_path / "rates" / "uml.json").is_file()   # where $LABKIT_RATES_DIR says


def test_a_sweep_measured_in_user_mode_linux_keeps_its_rates_as_umls(tmp_path, monkeypatch):
    """`sweep --kernel uml` runs in the guest; the host process keeps the
    rates, from the run's meta (which names the guest), and the guest keeps none."""
    monkeypatch.setenv(est.RATES_DIR_ENV, str(tmp_path / "rates"))
    d, _, _ = _run("uml-7.2.13")
    run = tmp_path / "run"
    run.mkdir()
    for name in (schema.META, schema.POINTS):
        (run / name).write_bytes(open(os.path.join(d, name), "rb").read())
    cli._keep_rates(str(run), None)
    assert sorted(os.listdir(tmp_path / "rates")) == ["uml.json"]
    r, _ = est.load_rates("uml")
    assert r is not None and r.endpoints == 10 and set(r.block) >= {"ipvs", "nftables"}


def test_the_suite_keeps_its_rates_out_of_the_users_cache():
    """conftest points $LABKIT_RATES_DIR at the suite's own directory: a test's
    small sweep never becomes the estimate of the user's next run."""
    assert est.rates_file("host").parent != debcache.cache_base() / "rates"


def test_programming_scales_with_the_endpoints_a_plan_has():
    """Rates measured at 10 endpoints per service (the dense UML reference)
    predict the 10,000-service IPVS block of a 1-endpoint run
    (ipvs-tables-7.2.13, the same kernel on this machine) within 25%: the
    per-service part scales by the loader's lines per service."""
    d, meta, _ = _run("uml-7.2.13")
    r = est.rates_of(read_table(os.path.join(d, schema.POINTS)), meta["started"], d)
    assert r.endpoints == 10
    d1, meta1, _ = _run("ipvs-tables-7.2.13")
    blocks = est.block_gaps(read_table(os.path.join(d1, schema.POINTS)), meta1["resumed"]).dropna()
    measured = blocks.loc[blocks["services"] == 10_000, "outside"]
    assert len(measured) >= 2
    a, b = r.block["ipvs"]
    unscaled = a + b * 10_000
    scaled = a + b * 10_000 * est.endpoint_scale("ipvs", 1, 10)
    for m in measured:
        assert abs(scaled / m - 1) < 0.25, (scaled, m)
        assert abs(unscaled / m - 1) > 0.5   # without the scale it is far off
    # the factor is the loader's lines: IPVS at 1 endpoint has fewer than at 10, and
    # an unknown or equal count changes nothing
    assert est.lines_per_service("ipvs", 1) < est.lines_per_service("ipvs", 10)
    assert est.endpoint_scale("ipvs", 10, 0) == est.endpoint_scale("ipvs", 10, 10) == 1.0
    p = SweepParams.from_dict({"modes": ["ipvs"], "services": [10_000], "endpoints": 1, "rounds": 1,
                               "targets": ["last"], "kernel": "uml"})
    e1, e10 = (est.estimate(q, {"uml": r}) for q in (p, SweepParams.from_dict({**p.to_dict(), "endpoints": 10})))
    assert e1.seconds < e10.seconds and not e1.assumed


def test_the_gap_of_an_interruption_is_not_a_blocks_programming_time():
    d, meta, _ = _run("host-6.18")
    pts = read_table(os.path.join(d, schema.POINTS))
    whole = est.rates_of(pts, meta["started"], d)
    # the same run stopped before its middle block and resumed a day later
    first = pts.groupby("block")["started"].min().sort_values()
    cut = float(first.iloc[len(first) // 2])
    late = pts["started"] >= cut
    moved = pts.assign(started=pts["started"] + late * 86400.0, finished=pts["finished"] + late * 86400.0)
    assert est.rates_of(moved, meta["started"], d).block != whole.block   # the day counted as programming
    kept = est.rates_of(moved, meta["started"], d, resumed=[cut + 86400.0 - 1])
    for mode, (a, b) in whole.block.items():
        assert kept.block[mode] == pytest.approx([a, b], rel=0.25, abs=0.05), mode


def test_block_gaps_are_the_time_between_blocks_and_none_across_a_resume():
    pts = pd.DataFrame({"block": [0, 0, 1, 2], "mode": ["nftables"] * 4, "services": [1, 1, 10, 100],
                        "started": [0.0, 1.0, 5.0, 100.0], "finished": [0.5, 2.0, 6.0, 101.0]})
    g = est.block_gaps(pts)
    assert list(g.index) == [0, 1, 2] and math.isnan(g["outside"].iloc[0])
    assert list(g["outside"].iloc[1:]) == [3.0, 94.0]
    assert math.isnan(est.block_gaps(pts, resumed=[50.0]).loc[2, "outside"])   # the interruption's
    assert est.block_gaps(pts, resumed=[50.0]).loc[1, "outside"] == 3.0

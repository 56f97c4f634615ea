"""Report sections of the keepalive/reuse/HTTP/CPU/control experiments on
synthetic run directories in the exact schemas (no root): each section
appears only with its data, and its numbers recover known truths."""
from __future__ import annotations

import json
import os

import nbformat
import numpy as np
import pandas as pd
import papermill as pm
import pytest

from labkit.analysis import analyze
from labkit.analysis import control as control_analysis
from labkit.analysis import experiments as exp_stats
from labkit.report import experiments
from labkit.rundir import schema

CPU_COLS = list(schema.CPU_COLUMNS)

# true p50-ish curves (us) per (mode, probe) before Gamma noise
TRUTH = {
    ("iptables-nft", "syn"): lambda n: 10 + 0.017 * n,
    ("nftables", "syn"): lambda n: 10 + 0.0005 * n,
    ("iptables-nft", "keepalive"): lambda n: 24 + 0.0005 * n,
    ("nftables", "keepalive"): lambda n: 24 + 0.0005 * n,
    ("iptables-nft", "reuse-100"): lambda n: 25 + 0.0005 * n,   # 1% of 25 us = 0.25 us at n = 500
    ("nftables", "reuse-100"): lambda n: 25 + 0.0 * n,
}
NOISE_SCALE = 0.05


def make_run(out, services=(1, 1000, 2000, 3000), rounds=2, probes=400, seed=3):
    rng = np.random.default_rng(seed)
    os.makedirs(out, exist_ok=True)
    samples, points, pid, block = [], [], 0, 0
    for r in range(rounds):
        for mode in ("iptables-nft", "nftables"):
            for n in services:
                for probe in ("syn", "keepalive", "reuse-100"):
                    rtt = TRUTH[(mode, probe)](float(n)) + rng.gamma(2.0, NOISE_SCALE, probes) - 2 * NOISE_SCALE
                    samples.append(pd.DataFrame({
                        "run_id": "x", "point_id": pid, "mode": mode, "kernel": "6.18", "services": n,
                        "endpoints": 10, "target": "last", "probe": probe, "round": r,
                        "seq": np.arange(probes), "service": max(n - 1, -1), "dst": "10.96.0.1",
                        "rtt_us": rtt, "ok": True, "error": "", "endpoint": "10.128.0.1:80"}))
                    q = np.percentile(rtt, [50, 90, 99])
                    points.append({
                        "run_id": "x", "point_id": pid, "block": block, "mode": mode, "kernel": "6.18",
                        "services": n, "endpoints": 10, "target": "last", "probe": probe, "round": r,
                        "render_s": 0.0, "load_s": 0.1, "program_s": 0.1, "sent": probes,
                        "answered": probes, "lost": 0, "valid": True, "reason": "", "p50_us": q[0],
                        "p90_us": q[1], "p99_us": q[2], "mean_us": rtt.mean(), "min_us": rtt.min(),
                        "started": 1.8e9 + pid, "finished": 1.8e9 + pid + 1})
                    pid += 1
                block += 1
    pd.concat(samples).to_parquet(os.path.join(out, "samples.parquet"), index=False)
    pd.DataFrame(points).to_parquet(os.path.join(out, "points.parquet"), index=False)
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({"run_id": "x", "params": {"modes": ["iptables-nft", "nftables"]}, "kernel": "6.18",
                   "complete": True, "started": 1.8e9, "finished": 1.8e9 + pid}, f)
    return str(out)


def make_cpu(out, rounds=3, seed=4):
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(rounds):
        for mode, slope in (("iptables-nft", 0.02), ("nftables", 0.0)):
            for n in (0, 1000, 3000, 10000):
                base = 45 + rng.normal(0, 1)
                ex = 3 + slope * n + rng.normal(0, 0.5)
                rows.append(dict(zip(CPU_COLS, [
                    "x", r, r, mode, "6.18", n, 10, "last", 1000.0, 5.0, 5000, 5000, 5.0,
                    int((base + ex) * 5000 * 1e3), base + ex, base, ex, "thread", True, "", 0.0, 0.0, 0.0,
                    1.8e9])))
    pd.DataFrame(rows, columns=CPU_COLS).to_parquet(os.path.join(out, schema.CPU), index=False)


def make_control(out):
    rows = []
    for mode, per in (("iptables-nft", 1e-3), ("nftables", 2e-5)):
        for n in (0, 1000, 10000):
            for op in control_analysis.OPS:
                s = 0.01 + (1e-3 if op == "program" else per) * n
                rows.append(dict(run_id="x", block=0, mode=mode, kernel="6.18", services=n, endpoints=10,
                                 round=0, op=op, seconds=s, render_s=0.0, load_s=s, services_before=n,
                                 verified=None if op == "program" else True, check="", update="u",
                                 started=1.8e9))
    pd.DataFrame(rows, columns=list(schema.CONTROL_COLUMNS)).to_parquet(os.path.join(out, schema.CONTROL), index=False)


def _titles(secs):
    return [s.title for s in secs]


def test_sections_appear_only_with_their_data(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert experiments.sections(str(empty)) == []
    make_cpu(str(empty))
    assert _titles(experiments.sections(str(empty), n_boot=50)) == ["CPU per new connection"]
    make_control(str(empty))
    assert _titles(experiments.sections(str(empty), n_boot=50)) == [
        "CPU per new connection", "Control plane: programming and changing services"]
    run = make_run(tmp_path / "run")
    an = analyze(run, n_boot=100)
    assert _titles(experiments.sections(run, an, n_boot=50)) == [
        "Established connections (keepalive)", "Requests per connection"]


def test_penalties_recover_the_truth(tmp_path):
    run = make_run(tmp_path / "run")
    an = analyze(run, n_boot=200)
    t = exp_stats.penalty_table(an, ["syn", "keepalive"]).set_index(["mode", "probe"])
    assert t.loc[("iptables-nft", "syn"), "penalty_us"] == pytest.approx(0.017 * 3000, abs=1.0)
    assert t.loc[("iptables-nft", "keepalive"), "penalty_us"] == pytest.approx(1.5, abs=0.5)
    lo, hi = t.loc[("iptables-nft", "syn"), ["penalty_lo", "penalty_hi"]]
    assert lo < 0.017 * 3000 + 1 and hi > 0.017 * 3000 - 1


def test_one_percent_keepalive_budget(tmp_path):
    run = make_run(tmp_path / "run")
    an = analyze(run, n_boot=200)
    b = exp_stats.keepalive_budget(an, "reuse-100")
    own = b[(b["mode_a"] == "iptables-nft") & (b["mode_b"] == "(itself)")].iloc[0]
    assert own["n_star"] == pytest.approx(500, rel=0.3)
    assert own["ci_low"] < 500 * 1.3 and own["ci_high"] > 500 * 0.7
    vs = b[(b["mode_a"] == "iptables-nft") & (b["mode_b"] == "nftables")].iloc[0]
    assert vs["n_star"] == pytest.approx(500, rel=0.3)
    flat = b[(b["mode_a"] == "nftables") & (b["mode_b"] == "(itself)")].iloc[0]
    assert np.isnan(flat["n_star"]) and "never exceeds" in flat["finding"]


def test_cpu_fits_find_the_slope(tmp_path):
    make_cpu(str(tmp_path))
    ca = exp_stats.analyze_cpu(pd.read_parquet(tmp_path / schema.CPU), n_boot=200)
    f = ca.fits.set_index("mode")
    assert f.loc["iptables-nft", "slope_ns_per_service"] == pytest.approx(20.0, abs=1.0)
    assert abs(f.loc["nftables", "slope_ns_per_service"]) < 1.0
    assert len(ca.crossover) == 1


def test_experiments_notebook_is_thin_and_clean():
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "notebooks", "experiments.ipynb")
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert all(len(c.source.splitlines()) <= 12 for c in code)


@pytest.mark.slow
def test_experiments_notebook_runs_with_papermill(tmp_path):
    d = str(tmp_path / "d")
    os.makedirs(d)
    make_cpu(d)
    make_control(d)
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "notebooks", "experiments.ipynb")
    out = str(tmp_path / "out.ipynb")
    pm.execute_notebook(path, out, parameters={"run_dir": d, "n_boot": 50}, kernel_name="python3",
                        progress_bar=False, log_output=False)
    text = open(out).read()
    assert "CPU per new connection" in text and "Control plane" in text

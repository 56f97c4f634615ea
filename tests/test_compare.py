"""labkit compare: one report across runs, each analysed on its own (no root)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from test_report import make_run

from labkit.analysis import analyze, load_run
from labkit.core.errors import UsageError
from labkit.report.compare import Side, build_compare, verdict_table


def _shifted(src: str, dst: str, mode: str, by_us: float, kernel: str, per_service_us: float = 0.0) -> str:
    """A copy of run src whose `mode` is `by_us` (plus `per_service_us` per
    service) slower, measured on `kernel`."""
    shutil.copytree(src, dst)
    smp = pd.read_parquet(os.path.join(dst, "samples.parquet"))
    pts = pd.read_parquet(os.path.join(dst, "points.parquet"))
    m = smp["mode"] == mode
    smp.loc[m, "rtt_us"] += by_us + per_service_us * smp.loc[m, "services"]
    m = pts["mode"] == mode
    for col in ("p50_us", "p90_us", "p99_us", "mean_us", "min_us"):
        pts.loc[m, col] += by_us + per_service_us * pts.loc[m, "services"]
    smp["kernel"] = pts["kernel"] = kernel
    smp.to_parquet(os.path.join(dst, "samples.parquet"), index=False)
    pts.to_parquet(os.path.join(dst, "points.parquet"), index=False)
    meta = json.load(open(os.path.join(dst, "meta.json")))
    meta["kernel"] = kernel
    json.dump(meta, open(os.path.join(dst, "meta.json"), "w"))
    return dst


def test_compare_two_runs_finds_the_difference(tmp_path):
    a = make_run(tmp_path / "before", rounds=3, invalid_point=-1)
    b = _shifted(a, str(tmp_path / "after"), "nftables", 5.0, "6.19.0-test")
    cp = subprocess.run([sys.executable, "-m", "labkit", "compare", a, b, "--out-dir", str(tmp_path / "cmp")],
                        capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    t = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    p50 = t[t["statistic"] == "p50"].set_index("mode")
    nft = p50.loc["nftables"]
    assert np.allclose(nft["diff_us"], 5.0, atol=0.05), nft["diff_us"]
    assert ((nft["diff_low"] < 5.0) & (5.0 < nft["diff_high"])).all()
    same = p50.loc["iptables-nft"]
    assert np.allclose(same["diff_us"], 0.0, atol=1e-6)           # identical data: no difference
    assert set(t["services"]) <= {1, 300, 1000, 2500, 5000, 10000}   # only counts both measured
    body = open(tmp_path / "cmp" / "compare.html", encoding="utf-8").read()
    assert "6.19.0-test" in body and "data:image/png;base64," in body
    # the verdicts side by side, and how many agree; the noise gauge of each run
    assert "<h2>Verdicts</h2>" in body and "deciding claim rows have the same verdict" in body
    assert "load not recorded" in body


def test_compare_sets_the_rises_side_by_side_on_every_target(tmp_path):
    """Two kernels differ in level and in growth: a level shift leaves the
    difference of the rises at 0 (its interval covers 0), a rise of 2 ns per
    service shows as +20 us at 10,000 services, on every target both runs measured."""
    a = make_run(tmp_path / "before", rounds=3, invalid_point=-1)
    b = _shifted(a, str(tmp_path / "level"), "nftables", 5.0, "6.19.0-test")
    c = _shifted(a, str(tmp_path / "rise"), "nftables", 0.0, "6.19.0-test", per_service_us=0.002)
    for other, want in ((b, 0.0), (c, 20.0)):
        out = tmp_path / f"cmp-{os.path.basename(other)}"
        build_compare([a, other], str(out), n_boot=50)
        t = pd.read_csv(out / "compare.csv")
        nft = t[(t["mode"] == "nftables") & (t["statistic"] == "p50")]
        assert set(nft["target"]) == set(pd.read_parquet(os.path.join(a, "points.parquet"))["target"])
        top = nft[nft["services"] == 10000]
        assert np.allclose(top["rise_diff_us"], want, atol=0.5), top["rise_diff_us"]
        assert ((top["rise_diff_low"] <= want + 0.5) & (want - 0.5 <= top["rise_diff_high"])).all()
        assert nft[nft["services"] == nft["services"].min()]["rise_us"].isna().all()   # no rise at the base


def test_verdicts_of_two_runs_are_set_side_by_side(tmp_path):
    a = make_run(tmp_path / "a", rounds=3, invalid_point=-1)
    an = analyze(load_run(a), n_boot=50)
    other = analyze(load_run(a), n_boot=50)
    other.claims = other.claims.copy()
    first = other.claims.index[other.claims["role"] == "decides"][0]
    other.claims.loc[first, "verdict"] = "flipped"
    t = verdict_table([Side("a", an), Side("b", other)])
    assert len(t) == int((an.claims["role"] == "decides").sum())
    assert int((~t["agree"]).sum()) == 1 and set(t.loc[~t["agree"], "b"]) == {"flipped"}


def test_compare_needs_two_runs(tmp_path):
    a = make_run(tmp_path / "one", rounds=2)
    with pytest.raises(UsageError, match="at least two"):
        build_compare([a], str(tmp_path / "c"))

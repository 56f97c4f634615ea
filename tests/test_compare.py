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


def _shifted(src: str, dst: str, mode: str, by_us: float, kernel: str) -> str:
    """A copy of run src whose `mode` is `by_us` slower, measured on `kernel`."""
    shutil.copytree(src, dst)
    smp = pd.read_parquet(os.path.join(dst, "samples.parquet"))
    pts = pd.read_parquet(os.path.join(dst, "points.parquet"))
    smp.loc[smp["mode"] == mode, "rtt_us"] += by_us
    for col in ("p50_us", "p90_us", "p99_us", "mean_us", "min_us"):
        pts.loc[pts["mode"] == mode, col] += by_us
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

"""build_report on a synthetic run directory in the sweep's exact schema (no root)."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import nbformat
import numpy as np
import pandas as pd
import papermill as pm
import pytest

from labkit.analysis import analyze, load_run
from labkit.analysis.claims import SEED_PACING
from labkit.core.errors import UsageError
from labkit.report import build as report
from labkit.report import verdicts
from labkit.report.experiments import _first_sentence, _fold_summary
from labkit.report.sections import fold, ipvs_item
from labkit.rundir.store import sha256_file

# true first-packet curves (us) before probe noise; Gamma(2, 2 us) noise on top
TRUTH = {
    "iptables-nft": lambda n: 35 + 0.016 * n,
    "nftables": lambda n: 42 + 0.0 * n,
    "iptables-legacy": lambda n: 36 + 0.010 * np.maximum(n - 3000, 0),
    "ipvs": lambda n: 40 + 0.002 * n,
}


def make_run(out, modes=("iptables-nft", "nftables", "iptables-legacy"),
             services=(0, 1, 300, 1000, 2500, 5000, 10000), targets=("last", "random"), rounds=2,
             probes=300, seed=7, invalid_point=5):
    """Write samples.parquet, points.parquet and meta.json as labkit's sweep does."""
    rng = np.random.default_rng(seed)
    os.makedirs(out, exist_ok=True)
    samples, points = [], []
    pid = block = 0
    for r in range(rounds):
        for mode in modes:
            for n in services:
                for t in targets:
                    rtt = TRUTH[mode](float(n)) + rng.gamma(2.0, 2.0, probes)
                    error = np.full(probes, "", dtype=object)
                    valid, reason = True, ""
                    if pid == invalid_point:
                        rtt[:12] = np.nan
                        error[:12] = "timeout"
                        valid, reason = False, "12 of 300 probes unanswered (timeout 12)"
                    svc = -1 if t == "none" else max(n - 1, 0)
                    samples.append(pd.DataFrame({
                        "run_id": "syn001", "point_id": pid, "mode": mode, "kernel": "6.18.0-test",
                        "services": n, "endpoints": 10, "target": t, "probe": "syn", "round": r,
                        "seq": np.arange(probes), "service": svc, "dst": "10.96.0.10",
                        "rtt_us": rtt, "ok": ~np.isnan(rtt), "error": error.astype(str),
                        "endpoint": np.where(np.isnan(rtt), "", "10.128.0.12:80")}))
                    a = rtt[~np.isnan(rtt)]
                    q = np.percentile(a, [50, 90, 99])
                    points.append({
                        "run_id": "syn001", "point_id": pid, "block": block, "mode": mode,
                        "kernel": "6.18.0-test", "services": n, "endpoints": 10, "target": t,
                        "probe": "syn", "round": r, "render_s": 1e-6 * n, "load_s": 0.05 + 2e-5 * n,
                        "program_s": 0.05 + 2.1e-5 * n, "sent": probes, "answered": len(a),
                        "lost": probes - len(a), "valid": valid, "reason": reason,
                        "p50_us": q[0], "p90_us": q[1], "p99_us": q[2], "mean_us": a.mean(),
                        "min_us": a.min(), "started": 1.8e9 + pid, "finished": 1.8e9 + pid + 0.5})
                    pid += 1
                block += 1
    pd.concat(samples, ignore_index=True).to_parquet(os.path.join(out, "samples.parquet"), index=False)
    pd.DataFrame(points).to_parquet(os.path.join(out, "points.parquet"), index=False)
    meta = {"run_id": "syn001",
            "params": {"modes": list(modes), "services": list(services), "endpoints": 10,
                       "targets": list(targets), "probes": probes, "rounds": rounds, "seed": 1,
                       "kernel": "auto", "probe_kinds": ["syn"]},
            "command": "python -m labkit sweep --modes iptables-nft,nftables --out runs/syn001",
            "kernel": "6.18.0-test", "host": {"hostname": "test", "cpus": 2},
            "labkit_version": "0.1.0", "git_revision": "0123456789ab",
            "tools": {"nft": "nftables v1.0.6"}, "packages": {"scapy": "2.6.1"},
            "started": 1.8e9, "finished": 1.8e9 + pid, "n_points": pid, "complete": True}
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f)
    return str(out)


def test_report_from_a_synthetic_run(tmp_path):
    run = make_run(tmp_path / "run")
    t0 = time.monotonic()
    path = report.build_report(run)
    elapsed = time.monotonic() - t0
    assert elapsed < 60, f"report took {elapsed:.0f} s for 60 points x 300 probes"
    assert path == os.path.join(run, "report.html")
    body = open(path, encoding="utf-8").read()
    assert body.count('<img src="data:image/png;base64,') >= 4
    assert report.self_contained(body)
    assert "12 of 300 probes unanswered" in body            # invalid point and its reason
    assert sha256_file(os.path.join(run, "samples.parquet")) in body
    assert "python -m labkit sweep --modes iptables-nft,nftables" in body
    assert "kubernetes.io/blog/2025/02/28/nftables-kube-proxy" in body and "published" in body
    assert "6.18.0-test" in body

    cx = pd.read_csv(os.path.join(run, "crossover.csv"))
    for col in ("mode_a", "mode_b", "statistic", "kind", "n_star", "ci_low", "ci_high", "finding"):
        assert col in cx.columns
    assert set(cx["kind"]) == {"fit", "budget-abs", "budget-rel"}
    fit = cx[(cx["kind"] == "fit") & np.isfinite(cx["n_star"])]
    assert len(fit) >= 1
    # every located crossover's interval holds its own estimate
    located = cx[np.isfinite(cx["ci_low"])]
    assert len(located) and ((located["ci_low"] <= located["n_star"]) & (located["n_star"] <= located["ci_high"])).all()
    main = fit[(fit["mode_a"] == "iptables-nft") & (fit["mode_b"] == "nftables")
               & (fit["statistic"] == "p50") & (fit["target"] == "last")].iloc[0]
    assert main["n_star"] == pytest.approx(7 / 0.016, rel=0.2)   # true crossing: 437.5 services
    assert main["ci_low"] <= main["n_star"] <= main["ci_high"]
    assert cx["finding"].str.len().min() > 20

    claims = pd.read_csv(os.path.join(run, "claims.csv"))
    # back to back only: the seed's load (paced) decides, so the SYN verdicts are open and the
    # back-to-back figures stand beside them
    dec = claims[(claims["role"] == "decides") & (claims["probe"] == "syn")]
    assert len(dec) and (dec["verdict"] == "not measured here").all()
    by = claims[(claims["role"] == "beside") & (claims["target"] == "last")].set_index(["claim", "mode"])
    assert by.loc[("o-n", "iptables-nft"), "verdict"] == "holds"
    assert by.loc[("o-1", "nftables"), "verdict"] == "holds"
    assert claims.loc[(claims["claim"] == "o-1") & (claims["mode"] == "ipvs"), "verdict"].item() == "not measured here"
    assert "seed's claim" in body and "The answer" in body

    s = pd.read_csv(os.path.join(run, "summary.csv"))
    legacy = s[(s["mode"] == "iptables-legacy") & (s["statistic"] == "p50") & (s["target"] == "last")]
    assert legacy["model"].iloc[0] in ("hinge", "segmented")   # not a straight line
    assert os.path.exists(os.path.join(run, "analysis.ipynb"))


def test_report_into_another_directory_leaves_the_run_untouched(tmp_path):
    run = make_run(tmp_path / "ref", modes=("iptables-nft", "nftables"), rounds=1, probes=150,
                   targets=("last",), invalid_point=-1)
    before = {f: (os.path.getmtime(os.path.join(run, f)), sha256_file(os.path.join(run, f)))
              for f in os.listdir(run)}
    out = tmp_path / "out"
    path = report.build_report(run, out_dir=str(out), budget_us=5.0, budget_frac=0.2, n_boot=200)
    assert path == os.path.join(str(out), "report.html")
    after = {f: (os.path.getmtime(os.path.join(run, f)), sha256_file(os.path.join(run, f)))
             for f in os.listdir(run)}
    assert before == after
    cx = pd.read_csv(out / "crossover.csv")
    assert set(cx.loc[cx["kind"] == "budget-abs", "budget_us"]) == {5.0}
    assert "All points are valid" in open(path, encoding="utf-8").read()


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(UsageError, match="not a labkit run"):
        report.build_report(str(tmp_path))


def test_a_control_run_gets_its_figures_and_tables(tmp_path):
    """`labkit report` on a control run (the committed reference) builds the
    experiments notebook's control-plane section, not "not a labkit run"."""
    run = os.path.join(os.path.dirname(__file__), "..", "data", "reference", "control-host-6.18", "partial")
    path = report.build_report(run, out_dir=str(tmp_path), n_boot=50, screenshot=False)
    text = open(path, encoding="utf-8").read()
    assert "Control plane: programming and changing services" in text and "<img" in text
    assert not os.path.exists(tmp_path / "crossover.csv")


def test_a_bench_run_and_a_compare_of_a_control_run_are_refused_naming_the_command(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "bench.json").write_text("{}")
    with pytest.raises(UsageError, match=r"bench run: `labkit bench` prints its figures"):
        report.build_report(str(tmp_path / "bench"))
    run = os.path.join(os.path.dirname(__file__), "..", "data", "reference", "control-host-6.18", "partial")
    cp = subprocess.run([sys.executable, "-m", "labkit", "compare", run, str(tmp_path / "bench"),
                         "--out", str(tmp_path / "cmp")], capture_output=True, text=True)
    assert cp.returncode == 2 and len(cp.stderr.strip().splitlines()) == 1
    assert "is a control run; compare takes sweep runs (`labkit report" in cp.stderr


def test_stored_notebook_is_thin_and_clean():
    nb = nbformat.read(report.default_notebook(), as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert all(len(c.source.splitlines()) <= 12 for c in code)


def test_analysis_notebook_without_run_dir_says_to_set_it(tmp_path):
    """An empty run_dir is not "notebooks is not a labkit run": the notebook
    says to set it and lists the runs it can see."""
    run = make_run(tmp_path / "runs" / "mine", modes=("iptables-nft", "nftables"), services=(1, 1000),
                   targets=("last",), rounds=1, probes=50)
    with pytest.raises(pm.PapermillExecutionError, match=r"set run_dir.*runs found: .*mine"):
        pm.execute_notebook(report.default_notebook(), str(tmp_path / "out.ipynb"), parameters={},
                            cwd=str(tmp_path), progress_bar=False, kernel_name=report.KERNEL)
    assert os.path.isdir(run) and not os.path.exists(os.path.join(run, "crossover.csv"))


@pytest.mark.root
def test_a_user_reports_on_a_run_made_by_root(nobody_python):
    """A run made as root (0755 directory, 0644 files) is reported on by
    another user: into a directory of theirs; without one, one line that says
    to pass --out."""
    base = tempfile.mkdtemp(prefix="lk-report-")
    try:
        os.chmod(base, 0o755)
        run = os.path.join(base, "run")
        make_run(run, modes=("iptables-nft", "nftables"), services=(1, 1000, 5000), rounds=2)
        for dirpath, _dirs, files in os.walk(run):
            os.chmod(dirpath, 0o755)
            for f in files:
                os.chmod(os.path.join(dirpath, f), 0o644)
        home = os.path.join(base, "home")
        os.makedirs(home)
        shutil.chown(home, "nobody")

        def as_nobody(*args):
            return subprocess.run(["runuser", "-m", "-u", "nobody", "--", nobody_python, "-m", "labkit", *args],
                                  capture_output=True, text=True, timeout=600, cwd=home,
                                  env={"PATH": os.environ["PATH"], "HOME": home})
        cp = as_nobody("report", run)
        assert cp.returncode == 2 and "--out" in cp.stderr, cp.stderr
        assert len(cp.stderr.strip().splitlines()) == 1, cp.stderr
        cp = as_nobody("report", run, "--out", os.path.join(home, "out"))
        assert cp.returncode == 0, cp.stderr[-2000:]
        assert os.path.getsize(os.path.join(home, "out", "report.html")) > 10_000
        assert not os.path.exists(os.path.join(run, "report.html"))
    finally:
        shutil.rmtree(base, ignore_errors=True)



def test_fold_closes_tables_lists_and_figures_and_leaves_a_note_open():
    folded = fold("<table><tr><td>1</td></tr></table>", "the <table>").data
    assert folded.startswith('<details class="lk-fold"><summary>the &lt;table&gt;</summary><table>')
    assert folded.endswith("</table></details>")
    assert fold("<ul><li>a</li></ul>", "x").data.startswith("<details")
    assert fold('<p class="lk-note">All points are valid.</p>', "x").data == \
        '<p class="lk-note">All points are valid.</p>'
    assert fold("", "x").data == ""
    assert _first_sentence("A <b>x. y</b> is. The rest. More.") == ("A <b>x. y</b> is.", "The rest. More.")
    assert _first_sentence("One only.") == ("One only.", "")
    assert _fold_summary("<h4>Slopes, <i>ns</i> &amp; more</h4><table></table>") == "Slopes, ns & more"
    assert _fold_summary("<table></table>") == "the table"


def test_the_answer_says_where_ipvs_beats_each_iptables_backend(tmp_path):
    """Issue 25: the first screen's list names where IPVS beats each iptables backend
    (curves crossing, with an interval) and what moving from IPVS to nftables changes.
    Synthetic truth: IPVS (40 us + 2 ns/service) meets iptables-nft (35 + 16 ns) at
    357 services and iptables-legacy (flat to 3,000, then 10 ns) near 3,500;
    nftables (42, flat) is faster above 1,000."""
    run = make_run(tmp_path / "run", modes=("iptables-legacy", "iptables-nft", "nftables", "ipvs"),
                   services=(1, 200, 300, 450, 700, 1000, 1500, 2250, 3350, 5000, 7500, 10000), rounds=3,
                   probes=200, targets=("last",), invalid_point=-1)
    an = analyze(load_run(run), n_boot=50)
    item = ipvs_item(an, SEED_PACING)           # the run is back to back only: that pacing is used
    assert item.startswith("<b>Where IPVS beats iptables</b>") and "back to back" in item, item
    m = re.search(r"IPVS beats iptables-nft from ([\d,]+) \[([\d,]+), ([\d,]+)\]", item)
    assert m and int(m.group(2).replace(",", "")) <= 357 <= int(m.group(3).replace(",", "")), item
    assert re.search(r"IPVS beats iptables-legacy from [\d,]+", item), item
    assert "moving from IPVS to nftables" in item
    assert item in verdicts.answer(an).data
    assert "not located" not in item.split("iptables-legacy")[0], item   # 300 -> 450: located


def test_the_answer_says_when_an_ipvs_crossing_lies_in_an_unmeasured_stretch(tmp_path):
    """A crossing between measured counts too far apart (here 1 and 1,000: IPVS meets
    iptables-nft at 357 services) is said on the first screen not to be located,
    naming the counts around it, not only given as a figure with an interval."""
    run = make_run(tmp_path / "run", modes=("iptables-nft", "nftables", "ipvs"),
                   services=(1, 1000, 5000), rounds=3, probes=200, targets=("last",), invalid_point=-1)
    an = analyze(load_run(run), n_boot=50)
    item = ipvs_item(an, SEED_PACING)
    assert re.search(r"IPVS beats iptables-nft from [\d,]+( \[[\d,]+, [\d,]+\])? \(between the measured 1 "
                     r"and 1,000: not located\)", item), item

"""The noise gauge: load samples from /proc (no root) and what the report says of them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from labkit.analysis import noise
from labkit.host import load


def test_a_busy_process_outside_the_run_is_seen_and_named():
    # a spinner outside this process's tree: started by a shell that exits at once (reparented)
    out = subprocess.run(["sh", "-c", f"{sys.executable} -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True)
    pid = int(out.stdout.strip())
    try:
        g = load.Gauge(interval=60)
        g.start()
        time.sleep(1.0)
        row = g.sample()
        g.stop()
    finally:
        os.kill(pid, signal.SIGKILL)
    assert row["others_pct"] > 30, row
    assert any(f"({pid})" in b for b in row["busiest"]), row
    assert 0 <= row["steal_pct"] <= 100 * row["cores"] and row["load1"] >= 0


def test_the_runs_own_children_are_not_others():
    g = load.Gauge(interval=60)
    g.start()
    mine = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<1.2: pass"])
    time.sleep(1.0)
    row = g.sample()
    mine.wait()
    g.stop()
    assert not any(f"({mine.pid})" in b for b in row["busiest"]), row
    assert row["ours_pct"] > 30, row


def test_the_gauge_samples_in_the_background_and_hands_each_sample_over():
    seen: list[int] = []
    with load.Gauge(interval=0.2, on_sample=lambda s: seen.append(len(s))) as g:
        time.sleep(0.9)
    assert len(g.samples) >= 2 and seen == list(range(1, len(seen) + 1))


def _samples(others: float, steal: float = 0.0, n: int = 10) -> list[dict]:
    return [{"time": i * 5.0, "seconds": 5.0, "load1": 1.0, "cores": 2, "busy_pct": 100.0, "steal_pct": steal,
             "ours_pct": 95.0, "others_pct": others + (40 if i == 3 else 0), "busiest": ["pytest (42) 80%"]}
            for i in range(n)]


def _points(per_round: list[float], mode: str = "iptables-legacy") -> pd.DataFrame:
    rows = [{"mode": mode, "kernel": "host", "services": n, "probe": "syn", "pacing": 0.0, "target": "last",
             "round": r, "valid": True, "p50_us": v * (1 + n / 1e4)} for r, v in enumerate(per_round)
            for n in (1, 1000)]
    rows += [{"mode": "nftables", "kernel": "uml", "services": 1, "probe": "syn", "pacing": 0.0, "target": "last",
              "round": 0, "valid": True, "p50_us": 99.0}]
    return pd.DataFrame(rows)


def test_a_quiet_run_gets_no_warning_and_a_busy_one_one_line_naming_the_busiest():
    quiet = noise.lines(noise.summarize(_samples(3.0)), 1.05, None)
    assert not any(x.startswith("Warning") for x in quiet)
    busy = noise.lines(noise.summarize(_samples(80.0)), 1.05, None)
    warn = [x for x in busy if x.startswith("Warning")]
    assert len(warn) == 1 and "80% of a CPU" in warn[0] and "pytest (42)" in warn[0]
    stolen = noise.lines(noise.summarize(_samples(0.0, steal=12.0)), 1.0, None)
    assert "stole 12%" in stolen[0]


def test_drift_of_the_reference_point_warns_on_its_own():
    pts = _points([10.0, 10.5, 20.0])
    assert noise.drift(pts) == 2.0
    out = noise.lines(noise.summarize(_samples(2.0)), noise.drift(pts), None)
    assert out[0].startswith("Warning") and "2.00x apart" in out[0]


def test_the_speed_against_the_reference_compares_the_same_point():
    here, there = _points([22.0, 22.0, 22.0]), _points([10.0, 10.0, 10.0])
    mode, n, a, b = noise.speed_ratio(here, there)
    assert (mode, n) == ("iptables-legacy", 1) and np.isclose(a / b, 2.2)
    text = " ".join(noise.lines(None, 1.0, (mode, n, a, b)))
    assert "2.2x slower than" in text and "not recorded" in text
    assert "Another CPU" not in text
    # the CPU each run ran on: named where both are recorded and differ
    two = " ".join(noise.lines(noise.summarize(_samples(1.0)), 1.0, (mode, n, a, b), cpus=("AMD EPYC", "Intel Xeon")))
    assert "2 CPUs, AMD EPYC)" in two and "Another CPU: AMD EPYC here, Intel Xeon there" in two
    same = " ".join(noise.lines(None, 1.0, (mode, n, a, b), cpus=("AMD EPYC", "AMD EPYC")))
    older = " ".join(noise.lines(None, 1.0, (mode, n, a, b), cpus=("AMD EPYC", "")))
    assert "Another CPU" not in same + older
    assert noise.cpu_of({"host": {"cpu_model": "AMD EPYC"}}) == "AMD EPYC" and noise.cpu_of({"host": {}}) == ""
    assert noise.cpu_of(None) == ""
    # no common point: nothing said
    assert noise.speed_ratio(here, _points([10.0], mode="nftables")) is None


def test_load_json_is_read_back_and_a_missing_one_is_empty(tmp_path):
    assert noise.read_load(str(tmp_path)) == []
    (tmp_path / "load.json").write_text(json.dumps({"interval_s": 5, "samples": _samples(1.0, n=5)}))
    s = noise.summarize(noise.read_load(str(tmp_path)))
    assert s is not None and s.samples == 5 and s.cores == 2 and s.others_max == 41.0
    assert os.path.exists(tmp_path / "load.json")


def _paced(spread: float, rounds: int = 4, seed: int = 0) -> pd.DataFrame:
    """Paced SYN points of two modes at three counts and two targets, each cell's
    rounds scattered by ``spread`` around its level (a uniform grid of +-spread)."""
    rows: list[dict] = []
    for mode in ("iptables-legacy", "nftables"):
        for n in (1, 1000, 10000):
            for target in ("last", "random"):
                level = 10.0 + n / 1000
                for r, f in enumerate(np.linspace(-spread, spread, rounds)):
                    rows.append({"mode": mode, "kernel": "host", "services": n, "probe": "syn", "pacing": 1000.0,
                                 "target": target, "round": r, "valid": True, "p50_us": level * (1 + f),
                                 "block": len(rows), "remeasure_of": -1})
    return pd.DataFrame(rows)


def test_the_paced_spread_is_each_cells_relative_mad_over_its_rounds():
    # rounds at -30%, -10%, +10%, +30% of the level: deviations 10, 10, 30, 30%: their median 20%
    p = _paced(0.3)
    assert noise.paced_spread(p) == pytest.approx(0.2)
    # back-to-back points, a guest's, and cells of fewer than 3 rounds do not count
    b2b = p.assign(pacing=0.0, p50_us=p["p50_us"] * 3)
    guest = _paced(0.9).assign(kernel="uml")
    two = _paced(0.9, rounds=2).assign(mode="ebpf")
    assert noise.paced_spread(pd.concat([p, b2b, guest, two])) == pytest.approx(0.2)
    # an invalid point (a re-measured block's old one, as read_points reads it) does not count
    old = p.index[(p["round"] == 3) & (p["services"] == 1) & (p["mode"] == "nftables") & (p["target"] == "last")]
    again = p.loc[old].assign(block=999, remeasure_of=int(p.loc[old[0], "block"]))
    p2 = p.copy()
    p2.loc[old, ["p50_us", "valid"]] = [1e6, False]
    assert noise.paced_spread(pd.concat([p2, again])) == pytest.approx(0.2)
    assert np.isnan(noise.paced_spread(p.assign(pacing=0.0)))


def test_paced_probes_that_spread_more_than_the_reference_warn_even_when_the_load_gauge_is_quiet():
    quiet = noise.summarize(_samples(1.0))
    calm = noise.lines(quiet, 1.05, None, "the reference run", (0.065, 0.06))
    assert not any(x.startswith("Warning") for x in calm)
    assert "Paced probes (SYN at 1,000/s) spread 6.5% between rounds here" in " ".join(calm)
    assert "the reference run: 6.0%." in " ".join(calm)
    slow = noise.lines(quiet, 1.05, None, "the reference run", (0.136, 0.067))
    warn = [x for x in slow if x.startswith("Warning")]
    assert len(warn) == 1 and "spread 13.6% between rounds here, 2.0x the reference run's 6.7%" in warn[0]
    assert "the load gauge does not see it: other processes 1% of a CPU, steal 0.0%" in warn[0]
    assert not any("Paced" in x for x in noise.lines(quiet, 1.05, None))   # not measured: nothing said

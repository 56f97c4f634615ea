"""Settle rounds (labkit.runs.settle, labkit.analysis.settle): the pure parts
without root (the blocks, the cells, the expected time, the claims that ask
for them, the report's section, and the one-look procedure's error rate on
data with a known answer); on the real kernel, the runner measuring them
within its budget, and a resumed run finishing an interrupted one."""
import json
import os
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from synth import point_rows, write_run

from labkit.analysis.analyze import analyze
from labkit.analysis.claims import FLAT_US
from labkit.analysis.intervals import interval
from labkit.analysis.run import load_run
from labkit.analysis.settle import SETTLED_CLAIMS, open_cells, unsettled
from labkit.core.errors import UsageError
from labkit.report import sections
from labkit.runs.blocks import Block, new_remeasures, settle_blocks
from labkit.runs.estimate import estimate
from labkit.runs.params import FILE_ONLY, SweepParams
from labkit.runs.runner import Runner
from labkit.runs.settle import RoundClock, cells_of, round_seconds, segment_overheads
from labkit.runs.sweep import Sweep, run_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = SweepParams.from_yaml(os.path.join(ROOT, "params", "default.yaml"))


# --- the blocks ----------------------------------------------------------------

def test_settle_blocks_are_the_ends_of_each_cell_per_round_one_kernel_after_the_other():
    cells = [("ipvs", "uml", ("syn",)), ("iptables-nft", "host", ("reuse-3", "reuse-1")),
             ("ebpf", "host", ("syn",))]
    ends = {"host": (1, 10000), "uml": (1, 5000)}
    bl = settle_blocks(cells, ends, 3, 6, 1000, seed=5, targets=("last", "random"))
    assert len(bl) == 3 * 3 * 2 and all(b.settle and b.remeasure_of < 0 for b in bl)
    assert len({b.block for b in bl}) == len(bl) and min(b.block for b in bl) >= 1000
    for i in range(3):
        r = [b for b in bl if b.round == 6 + i]
        assert [b.kernel for b in r] == ["host"] * 4 + ["uml"] * 2   # one guest boot a round
        assert sorted((b.mode, b.services) for b in r if b.kernel == "uml") == [("ipvs", 1), ("ipvs", 5000)]
        assert {b.kinds for b in r if b.mode == "iptables-nft"} == {("reuse-3", "reuse-1")}
        assert all(sorted(b.targets) == ["last", "random"] for b in r)
    # deterministic, and the first rounds are the same blocks whatever the number of rounds
    assert settle_blocks(cells, ends, 3, 6, 1000, seed=5, targets=("last", "random")) == bl
    assert settle_blocks(cells, ends, 2, 6, 1000, seed=5, targets=("last", "random")) == bl[:12]


def test_a_cell_with_counts_is_measured_there_and_shares_a_block_with_its_modes_other_cell():
    """The 1,000-5,000 claim's cell (http-new at 1, 1,000 and 5,000) beside
    amortization's (reuse-3 and http-new at the ends): one block per mode and
    count, their kinds together; ids unique; cells without counts keep the
    ids they had before counts existed."""
    cells = [("iptables-legacy", "host", ("reuse-3", "http-new"), ()),
             ("iptables-legacy", "host", ("http-new",), (1, 1000, 5000)), ("ipvs", "uml", ("syn",))]
    ends = {"host": (1, 10000), "uml": (1, 5000)}
    bl = settle_blocks(cells, ends, 2, 6, 1000, seed=5, targets=("last",))
    assert len({b.block for b in bl}) == len(bl) == 2 * (4 + 2)
    r = {(b.mode, b.services): b.kinds for b in bl if b.round == 6}
    assert r == {("iptables-legacy", 1): ("reuse-3", "http-new"), ("iptables-legacy", 10000): ("reuse-3", "http-new"),
                 ("iptables-legacy", 1000): ("http-new",), ("iptables-legacy", 5000): ("http-new",),
                 ("ipvs", 1): ("syn",), ("ipvs", 5000): ("syn",)}
    old = [("ipvs", "uml", ("syn",)), ("ebpf", "host", ("syn",))]
    ids = {(b.round, b.mode, b.services): b.block for b in settle_blocks(old, ends, 2, 6, 1000, seed=5)}
    assert ids == {(6 + i, m, n): 1000 + 4 * i + 2 * j + e for i in range(2)
                   for j, (m, k, _) in enumerate(old) for e, n in enumerate(ends[k])}


def test_the_default_runs_settle_ids_follow_the_planned_and_re_measured_ones():
    sw = Sweep(DEFAULT)
    sw.place({m: None for m in DEFAULT.modes} | {"ipvs": "no IPVS in this kernel"})
    planned = sw.blocks()
    remeasured = {e["block"] for e in new_remeasures(planned, [b.block for b in planned], [])}
    cells = [{"mode": m, "kernel": k, "kinds": ["syn"], "rows": []}
             for m, ks in sw.p.kernels_by_mode.items() for k in ks]
    settled = sw.settle_blocks({"cells": cells, "rounds": DEFAULT.settle_rounds})
    ids = {b.block for b in settled}
    assert len(ids) == len(settled) == DEFAULT.settle_rounds * 2 * len(cells)
    assert not ids & ({b.block for b in planned} | remeasured)
    assert {b.round for b in settled} == set(range(DEFAULT.max_rounds, DEFAULT.max_rounds + DEFAULT.settle_rounds))
    assert {(b.kernel, b.services) for b in settled} == {("host", 1), ("host", 10000), ("uml", 1), ("uml", 5000)}
    assert sw.settle_blocks({"cells": cells, "rounds": 0}) == [] and sw.settle_blocks({}) == []
    # a cell with counts: at the kernel's smallest and those of its counts the kernel measures
    span = [{"mode": "iptables-nft", "kernel": "host", "kinds": ["http-new"], "counts": [1000, 4000], "rows": []},
            {"mode": "ipvs", "kernel": "uml", "kinds": ["syn"], "counts": [7500], "rows": []}]   # uml: 1-5,000
    got = sw.settle_blocks({"cells": span, "rounds": 1})
    assert sorted((b.mode, b.kernel, b.services, b.kinds) for b in got) == [
        ("iptables-nft", "host", 1, ("http-new",)), ("iptables-nft", "host", 1000, ("http-new",))]
    assert not {b.block for b in got} & ({b.block for b in planned} | remeasured)
    # every settle block has its kernel for the rates (estimate's _with_kernel)
    meta = {"remeasured": [], "settle": {"cells": cells, "rounds": 1}}
    assert all(sw.kernel_of(meta)[b.block] == b.kernel for b in settled[:2 * len(cells)])


# --- the cells -------------------------------------------------------------------

def test_cells_are_what_the_run_measures_merged_per_mode_and_kernel():
    p = DEFAULT
    where = {"iptables-nft": ["host", "uml"], "ipvs": ["uml"], "ebpf": ["host", "uml"]}
    found = [
        {"mode": "iptables-nft", "kernel": "host", "kinds": ["reuse-3", "reuse-1", "http-new"], "rows": ["a"]},
        {"mode": "iptables-nft", "kernel": "host", "kinds": ["reuse-10", "reuse-1", "http-new"], "rows": ["b"]},
        {"mode": "iptables-nft", "kernel": "uml", "kinds": ["reuse-3"], "rows": ["c"]},   # not measured there
        {"mode": "ipvs", "kernel": "host", "kinds": ["syn"], "rows": ["d"]},               # not in that kernel
        {"mode": "ipvs", "kernel": "uml", "kinds": ["syn"], "rows": ["e"]},
        {"mode": "nftables", "kernel": "host", "kinds": ["syn"], "rows": ["f"]},           # not in the run
    ]
    cells = cells_of(found, p.kinds_for, where, two_kernels=True)
    assert cells == [
        {"mode": "iptables-nft", "kernel": "host", "kinds": ["http-new", "reuse-1", "reuse-3", "reuse-10"],
         "rows": ["a", "b"]},
        {"mode": "ipvs", "kernel": "uml", "kinds": ["syn"], "rows": ["e"]}]
    one = cells_of(found[:2], p.kinds_for, {"iptables-nft": [""]}, two_kernels=False)
    assert [(c["mode"], c["kernel"]) for c in one] == [("iptables-nft", "")]
    # a cell read at other counts stays apart from the mode's cell at the ends, and keeps them
    span = {"mode": "iptables-nft", "kernel": "host", "kinds": ["http-new"], "counts": [5000, 1000], "rows": ["g"]}
    both = cells_of([found[0], span], p.kinds_for, where, two_kernels=True)
    assert [c.get("counts") for c in both] == [None, [1000, 5000]] and both[1]["rows"] == ["g"]


def _claims(rows):
    cols = dict(claim="", mode="", versus="", kernel="host", target="last", probe="syn", pacing=1000.0,
                verdict="inconclusive", role="decides", k=np.nan)
    return pd.DataFrame([cols | r for r in rows])


def test_open_cells_name_the_kinds_each_open_row_rests_on():
    c = _claims([
        dict(claim="o-1", mode="ipvs", kernel="uml"),
        dict(claim="o-1", mode="ebpf", verdict="holds"),                       # decided
        dict(claim="o-n", mode="iptables-nft", role="beside"),                 # does not decide
        dict(claim="1k-5k", mode="iptables-legacy", probe="http-new"),         # read at 1,000 and 5,000
        dict(claim="ebpf-beats", mode="ebpf", versus="ipvs", kernel="uml", target="random"),
        dict(claim="keepalive", mode="iptables-legacy", probe="reuse-10", k=10.0, pacing=1000.0),
    ])
    cells = open_cells(c, ["syn", "http-new", "reuse-1", "reuse-10"])
    assert [(x["mode"], x["kernel"], x["kinds"], x.get("counts")) for x in cells] == [
        ("ipvs", "uml", ["syn"], None), ("iptables-legacy", "host", ["http-new"], [1000, 5000]),
        ("ebpf", "uml", ["syn"], None), ("ipvs", "uml", ["syn"], None),
        ("iptables-legacy", "host", ["reuse-10", "reuse-1", "http-new"], None)]
    assert cells[0]["rows"] == ["O(1): ipvs (uml), last target"]
    assert cells[1]["rows"] == ["1,000-5,000: iptables-legacy (host), last target"]
    assert cells[2]["rows"] == ["eBPF beats: ebpf vs ipvs (uml), random target"]
    assert cells[4]["rows"] == ["amortization, k = 10: iptables-legacy (host), last target"]
    # without reuse-1, amortization's new connection is the SYN's
    assert open_cells(c.iloc[[5]], ["syn", "http-new", "reuse-10"])[0]["kinds"] == ["reuse-10", "syn", "http-new"]
    # the 1,000-5,000 row at the ends of the span still open, as the analysis says
    assert open_cells(c.iloc[[3]], ["syn", "http-new"], lambda r: [1000])[0]["counts"] == [1000]
    assert set(SETTLED_CLAIMS) == {"o-n", "o-1", "ebpf-beats", "keepalive", "1k-5k"}


# --- the expected time -------------------------------------------------------------

def _pts(rows):
    return pd.DataFrame([dict(zip(["block", "mode", "services", "probe", "started", "finished", "program_s"], r))
                         for r in rows])


def test_round_seconds_from_the_runs_own_blocks_and_its_guest_segments():
    pts = _pts([
        (1, "nft", 10000, "syn", 100.0, 101.0, 5.0), (1, "nft", 10000, "http-new", 103.0, 104.0, 5.0),
        (2, "nft", 10000, "syn", 200.0, 203.0, 7.0), (2, "nft", 10000, "http-new", 203.0, 204.0, 7.0),
        (3, "ipvs", 1, "syn", 300.0, 302.0, 1.0)])
    where = {1: "host", 2: "host", 3: "uml"}
    b = [Block(9, 4, "nft", 10000, ("last",), "host", kinds=("http-new",), settle=True)]
    # http-new: 1 s of probes + 2 s before it in block 1, 1 s in block 2: median 2 s, + programming 6 s
    assert round_seconds(b, pts, where) == pytest.approx(2.0 + 6.0 + 1.5)
    u = [Block(10, 4, "ipvs", 1, ("last",), "uml", kinds=("syn",), settle=True)]
    assert round_seconds(u, pts, where, [4.0]) == pytest.approx(2.0 + 1.0 + 1.5 + 4.0)
    unknown = [Block(11, 4, "ebpf", 1, ("last",), "host", settle=True)]
    assert round_seconds(b + unknown, pts, where) == pytest.approx(2 * (2.0 + 6.0 + 1.5))
    # the guests' wall time minus their blocks' spans, per guest
    guests = [{"backend": "uml", "command_s": 10.0}]
    assert segment_overheads(pts, where, guests) == [pytest.approx(8.0)]
    assert segment_overheads(pts, where, []) == []


# --- parameters and the estimate ---------------------------------------------------------

def test_settle_parameters_are_checked_and_file_only():
    assert {"settle_minutes", "settle_rounds"} <= set(FILE_ONLY)
    assert SweepParams().settle_minutes == 0 and DEFAULT.settle_minutes > 0
    for bad in ({"settle_minutes": -1}, {"settle_minutes": "soon"}, {"settle_rounds": 0}):
        with pytest.raises(UsageError, match=next(iter(bad))):
            SweepParams.from_dict(bad)
    text = estimate(DEFAULT, {}).text()
    assert f"then up to {DEFAULT.settle_rounds} settle round(s)" in text and "within 22 min" in text
    assert "settle" not in estimate(SweepParams(), {}).text()
    # the default's rounds beyond its 4 are late rounds, their time said apart
    e = estimate(DEFAULT, {})
    assert e.late == "rounds 5-6 of nftables, ipvs, ebpf" and 0 < e.late_seconds < e.seconds / 3
    assert f"of which {e.late} (" in text and "(late rounds)" in text
    assert estimate(SweepParams.from_dict({**DEFAULT.to_dict(), "settle_minutes": 0}), {}).late == ""


# --- the claims that ask for them, and the report --------------------------------------------

def _ipvs_run(out, settle=None, end_rounds=0, seed=4, late=None):
    """ipvs SYN probes at 1, 100 and 1,000 services, last target, paced; its
    rise exactly FLAT_US with a round-to-round spread of several us (O(1)
    inconclusive); ``end_rounds`` more rounds at 1 and 1,000 only."""
    rng = np.random.default_rng(seed)
    samples, points, pid = [], [], 0
    for r in range(3 + end_rounds):
        shift = rng.normal(0, 3.0)
        for n in ([1, 100, 1000] if r < 3 else [1, 1000]):
            rtt = 20 + FLAT_US * (n - 1) / 999 + shift * n / 1000 + rng.gamma(4.0, 0.5, 200)
            smp, pt = point_rows(rtt, run_id="s", point_id=pid, block=pid, mode="ipvs", kernel="6.18.0-test",
                                 services=n, target="last", probe="syn", pacing=1000.0, round=r)
            samples.append(smp)
            points.append(pt)
            pid += 1
    meta = {"run_id": "s", "params": {"modes": ["ipvs"], "probe_kinds": ["syn"]}, "kernel": "6.18.0-test"}
    if settle is not None:
        meta["settle"] = settle
    if late is not None:
        meta["late"] = late
    return write_run(out, samples, points, meta)


def test_unsettled_names_the_open_o1_row_and_the_report_says_what_settled_it(tmp_path):
    cells = unsettled(_ipvs_run(tmp_path / "open"))
    assert cells == [{"mode": "ipvs", "kernel": "host", "kinds": ["syn"], "rows": ["O(1): ipvs (host), last target"]}]
    settle = {"cells": [{"mode": "ipvs", "kernel": "", "kinds": ["syn"], "rows": cells[0]["rows"]}],
              "rounds": 2, "most": 6, "budget_s": 1320.0, "decided_at_s": 1000.0, "analysis_s": 6.0,
              "round_s": [50.0, 52.0], "stopped": "round 3 would take about 52 s, 20 s of the budget were left"}
    an = analyze(load_run(_ipvs_run(tmp_path / "settled", settle, end_rounds=2)), stats=("p50",))
    html = sections.settle_rounds(an).data
    assert "16.7 min into the run, 1 claim row(s) were inconclusive; 2 settle round(s) of at most 6" in html
    assert "O(1): ipvs (host), last target" in html and "20 s of the budget were left" in html
    assert an.end_rounds_by_mode() == {"ipvs": (5, ["syn"])}
    assert "5 at the smallest and largest counts for ipvs's syn" in sections._interval_text(an)
    plain = analyze(load_run(_ipvs_run(tmp_path / "plain")), stats=("p50",))
    assert "No settle rounds" in sections.settle_rounds(plain).data
    late = analyze(load_run(_ipvs_run(tmp_path / "late", settle | {"rounds": 0, "round_s": []})),
                   stats=("p50",))
    text = sections.settle_rounds(late).data
    assert "1 claim row(s) were inconclusive, but no settle round fitted within 22 min" in text
    assert "claim rows it would settle" in text and "Late rounds" not in text


def test_the_report_says_which_late_rounds_ran_and_why_the_others_did_not(tmp_path):
    stop = "round 6 would take about 96 s, 41 s of the 22 min budget were left"
    late = {"first": 4, "budget_s": 1320.0, "rounds": [4], "round_s": [88.4], "stopped": stop, "disturbed": []}
    an = analyze(load_run(_ipvs_run(tmp_path / "late", late=late)), stats=("p50",))
    text = sections.settle_rounds(an).data
    assert "Late rounds (the planned rounds beyond 4" in text and "within 22 min from the run&#x27;s start" in text
    assert "run: round 5 (88 s); the rest were not run: " + stop in text and "No settle rounds" in text
    both = analyze(load_run(_ipvs_run(tmp_path / "both", late=late | {"rounds": [4, 5], "round_s": [88.4, 90.1],
                                                                       "stopped": "every late round ran"})),
                   stats=("p50",))
    assert "run: rounds 5, 6 (88 s, 90 s); every one ran." in sections.settle_rounds(both).data
    given = analyze(load_run(_ipvs_run(tmp_path / "given", late=late | {"budget_s": 1224.0, "end_by": True})),
                    stats=("p50",))
    assert "within 20.4 min from the run&#x27;s start (the end it was given: --end-by)" in \
        sections.settle_rounds(given).data


def _http_run(out, settle=None, settle_rounds=0, seed=3):
    """iptables-legacy's http-new, back to back, last target, at 1, 1,000, 3,000
    and 5,000 services in 4 rounds (``settle_rounds`` more at 1 and 1,000):
    40 us at 1 service, its penalty at 1,000 exactly the 10% budget (4 us)
    with a round-to-round spread of a few us there, 20 us at 5,000."""
    rng = np.random.default_rng(seed)
    rise = {1: 0.0, 1000: 4.0, 3000: 12.0, 5000: 20.0}
    samples, points, pid = [], [], 0
    for r in range(4 + settle_rounds):
        for n in (rise if r < 4 else [1, 1000]):
            shift = rng.normal(0, 2.0) if n == 1000 else rng.normal(0, 0.3)
            rtt = 40 + rise[n] + shift + rng.gamma(4.0, 0.25, 200)
            smp, pt = point_rows(rtt, run_id="h", point_id=pid, block=pid, mode="iptables-legacy",
                                 kernel="6.18.0-test", services=n, target="last", probe="http-new", pacing=0.0,
                                 round=r)
            samples.append(smp)
            points.append(pt)
            pid += 1
    meta = {"run_id": "h", "params": {"modes": ["iptables-legacy"], "probe_kinds": ["http-new"]},
            "kernel": "6.18.0-test"}
    if settle is not None:
        meta["settle"] = settle
    return write_run(out, samples, points, meta)


def test_an_open_1k_5k_row_is_settled_at_1000_services_where_it_straddles_and_the_report_says_so(tmp_path):
    """The 1,000-5,000 row of a run whose penalty at 1,000 services lies on
    the budget is inconclusive; its cell is http-new at 1,000 (5,000, clear
    of the budget, is left out); the rounds those blocks add are named in the
    interval text and the settle section."""
    cells = unsettled(_http_run(tmp_path / "open"))
    assert cells == [{"mode": "iptables-legacy", "kernel": "host", "kinds": ["http-new"], "counts": [1000],
                      "rows": ["1,000-5,000: iptables-legacy (host), last target"]}]
    settle = {"cells": [dict(cells[0], kernel="")], "rounds": 3, "most": 6, "budget_s": 1320.0,
              "decided_at_s": 900.0, "analysis_s": 5.0, "round_s": [20.0, 20.0, 21.0], "stopped": "every settle round ran"}
    an = analyze(load_run(_http_run(tmp_path / "settled", settle, settle_rounds=3)), stats=("p50",))
    assert an.counted_rounds_by_mode() == {"iptables-legacy": (7, [1, 1000], ["http-new"])}
    assert an.end_rounds_by_mode() == {}
    assert "7 at 1 and 1,000 services for iptables-legacy's http-new" in sections._interval_text(an)
    html = sections.settle_rounds(an).data
    assert "the smallest, 1,000" in html and "1,000-5,000: iptables-legacy (host), last target" in html


# --- the one-look procedure, on data with a known answer ----------------------------------------

def _verdict(d, line):
    lo, hi = interval(d.mean(), _jackknife(d), "rounds", 0.95)
    return "holds" if hi < line else "does not hold" if lo > line else "inconclusive"


def _jackknife(d):
    return np.array([np.delete(d, i).mean() for i in range(len(d))])


def _procedure(rng, truth, n_runs, planned=4, settle=2, sd=1.0, line=0.0):
    """Per simulated run, the verdict of a figure measured in ``planned``
    rounds, and (one look) with ``settle`` more rounds when that was inconclusive."""
    out = []
    for _ in range(n_runs):
        d = rng.normal(truth, sd, planned + settle)
        first = _verdict(d[:planned], line)
        out.append((first, first if first != "inconclusive" else _verdict(d, line)))
    return out


def test_one_look_settle_rounds_keep_a_row_on_its_line_mostly_inconclusive_and_decide_those_off_it():
    """A figure whose truth lies on its line: without settle rounds a 95%
    interval decides it (either way) in 5% of runs; one look with 2 more
    rounds adds at most the second look's 5% (the union bound): measured,
    within 10%.  A figure 1.5 standard deviations of a round off its line:
    settle rounds decide it in more runs, so two runs agree more often."""
    rng = np.random.default_rng(11)
    on = _procedure(rng, 0.0, 4000)
    decided_before = np.mean([a != "inconclusive" for a, _ in on])
    decided_after = np.mean([b != "inconclusive" for _, b in on])
    assert decided_before == pytest.approx(0.05, abs=0.015)
    assert decided_before < decided_after <= 0.10
    off = _procedure(rng, -1.5, 4000)
    before = np.array([a for a, _ in off])
    after = np.array([b for _, b in off])
    assert (after == "does not hold").mean() < 0.005
    agree = lambda v: np.mean(v[::2] == v[1::2])   # noqa: E731  (pairs of runs)
    assert (after == "holds").mean() > (before == "holds").mean() + 0.15
    assert agree(after) > agree(before) + 0.05


# --- on the real kernel -------------------------------------------------------------------------

def _params(tmp_path, **over):
    p = {"modes": ["nftables", "ebpf"], "services": [1, 50, 200], "targets": ["last"], "probes": 20,
         "warmup": 2, "rounds": 2, "probe_kinds": ["syn"], "pacing": [0], "kernel": "host",
         "settle_minutes": 10, "settle_rounds": 2} | over
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(p))
    return SweepParams.from_yaml(str(f))


NFT = [{"mode": "nftables", "kernel": "host", "kinds": ["syn"], "rows": ["O(1): nftables (host), last target"]}]


@pytest.mark.root
def test_settle_rounds_measure_the_open_cells_at_their_ends_and_a_resume_finishes_them(tmp_path):
    """On the real kernel: the planned rounds, then two settle rounds of
    nftables at 1 and 200 services (SYN only, no control-plane operations),
    recorded in the meta file; a run whose last settle round was cut short
    measures it on --resume without asking the claims again."""
    out = tmp_path / "run"
    asked = []
    run_sweep(_params(tmp_path), str(out), progress=False,
              settle_with=lambda d: asked.append(d) or [dict(c) for c in NFT])
    meta = json.loads((out / "meta.json").read_text())
    s = meta["settle"]
    assert asked == [str(out)] and meta["complete"]
    assert s["rounds"] == 2 and s["stopped"] == "every settle round ran" and len(s["round_s"]) == 2
    assert s["cells"] == [{"mode": "nftables", "kernel": "", "kinds": ["syn"], "rows": NFT[0]["rows"]}]
    pts = pd.read_parquet(out / "points.parquet")
    ctl = pd.read_parquet(out / "control.parquet")
    assert pts["valid"].all(), pts["reason"].tolist()
    extra = pts[pts["round"] >= 2]
    assert sorted(zip(extra["round"], extra["services"])) == [(2, 1), (2, 200), (3, 1), (3, 200)]
    assert set(extra["mode"]) == {"nftables"} and set(extra["probe"]) == {"syn"}
    assert set(ctl["round"]) == {0, 1}
    # cut short in its last settle round: those blocks not done, their rows dropped on resume
    last = set(extra.loc[extra["round"] == 3, "block"])
    meta["blocks_done"] = [b for b in meta["blocks_done"] if b not in last]
    meta["complete"] = False
    (out / "meta.json").write_text(json.dumps(meta))
    run_sweep(None, str(out), resume=True, progress=False, settle_with=lambda d: pytest.fail("asked again"))
    again = json.loads((out / "meta.json").read_text())
    pts2 = pd.read_parquet(out / "points.parquet")
    assert again["complete"] and again["settle"]["rounds"] == 2
    assert len(pts2) == len(pts) and len(pts2[pts2["round"] == 3]) == 2


@pytest.mark.root
def test_a_settle_cell_with_counts_is_measured_at_the_smallest_and_those_counts(tmp_path):
    """On the real kernel: a cell naming its counts (as the 1,000-5,000
    claim's does) is measured at the smallest count and those, not at the
    largest."""
    out = tmp_path / "run"
    cell = dict(NFT[0], counts=[50], rows=["1,000-5,000: nftables (host), last target"])
    run_sweep(_params(tmp_path, settle_rounds=1), str(out), progress=False, settle_with=lambda d: [dict(cell)])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] and meta["settle"]["rounds"] == 1
    assert meta["settle"]["cells"] == [dict(cell, kernel="")]
    extra = pd.read_parquet(out / "points.parquet").query("round >= 2")
    assert sorted(zip(extra["round"], extra["services"])) == [(2, 1), (2, 50)] and extra["valid"].all()


@pytest.mark.root
def test_settle_rounds_stop_at_the_budget_and_say_so(tmp_path):
    """A budget the planned rounds already spent: no settle round, the reason
    in the meta file; no open claim, or an analysis that fails: none either,
    and the run completes."""
    out = tmp_path / "late"
    run_sweep(_params(tmp_path, settle_minutes=0.001), str(out), progress=False,
              settle_with=lambda d: [dict(c) for c in NFT])
    s = json.loads((out / "meta.json").read_text())["settle"]
    assert s["rounds"] == 0 and "min budget were left" in s["stopped"], s
    assert set(pd.read_parquet(out / "points.parquet")["round"]) == {0, 1}
    out2 = tmp_path / "none"
    run_sweep(_params(tmp_path), str(out2), progress=False, settle_with=lambda d: [])
    s2 = json.loads((out2 / "meta.json").read_text())["settle"]
    assert s2["rounds"] == 0 and s2["stopped"] == "no open claim to settle"
    # an analysis that fails costs the settle rounds, never the run
    out3 = tmp_path / "failed"

    def broken(d):
        raise ValueError("no curve")
    run_sweep(_params(tmp_path), str(out3), progress=False, settle_with=broken)
    m3 = json.loads((out3 / "meta.json").read_text())
    assert m3["complete"] and m3["settle"]["rounds"] == 0
    assert m3["settle"]["stopped"] == "the claims could not be put to the run: no curve"


@pytest.mark.root
def test_the_settle_record_survives_a_guest_segment_reading_the_meta_file_back(tmp_path, monkeypatch):
    """A settle round with blocks in user-mode Linux reads the meta file back
    into a new dict after the guest's segment (Runner._elsewhere); the record
    of the rounds goes on in it (seen once: a default run's meta kept
    ``rounds`` 1 with no ``round_s`` and no ``stopped``).  Here every block
    batch is followed by that read-back, on the host's real kernel."""
    real = Runner._blocks

    def then_read_back(self, *a, **kw):
        real(self, *a, **kw)
        self.meta = json.loads(json.dumps(self.meta))   # what read_meta hands back: a new dict

    monkeypatch.setattr(Runner, "_blocks", then_read_back)
    out = tmp_path / "run"
    run_sweep(_params(tmp_path), str(out), progress=False, settle_with=lambda d: [dict(c) for c in NFT])
    s = json.loads((out / "meta.json").read_text())["settle"]
    assert s["rounds"] == 2 and len(s["round_s"]) == 2 and s["stopped"] == "every settle round ran"
    assert s["disturbed"] == [] or all(isinstance(b, int) for b in s["disturbed"])


@pytest.mark.root
def test_late_rounds_run_while_they_fit_and_a_run_late_skips_them_also_on_resume(tmp_path):
    """On the real kernel: a round beyond ``rounds`` (here nftables' third,
    of ``mode_rounds``) runs after the planned rounds when it is expected to
    end within ``settle_minutes``, recorded in the meta file's ``late``; with
    a budget the planned rounds already spent it is not run, the reason
    recorded, and a resumed run does not run it either."""
    out = tmp_path / "fits"
    run_sweep(_params(tmp_path, mode_rounds={"nftables": 3}), str(out), progress=False, settle_with=lambda d: [])
    meta = json.loads((out / "meta.json").read_text())
    late = meta["late"]
    assert meta["complete"] and late["first"] == 2 and late["rounds"] == [2], late
    assert late["stopped"] == "every late round ran" and len(late["round_s"]) == 1
    assert late["disturbed"] == [] or all(isinstance(b, int) for b in late["disturbed"])
    pts = pd.read_parquet(out / "points.parquet")
    third = pts[pts["round"] == 2]
    assert set(third["mode"]) == {"nftables"} and sorted(third["services"]) == [1, 50, 200]
    assert third["started"].min() > pts.loc[pts["round"] < 2, "finished"].max()   # after the planned rounds
    assert pts["valid"].all(), pts["reason"].tolist()

    # an end given (make report's aim: --end-by) that comes before the budget, already past
    out2 = tmp_path / "late"
    run_sweep(_params(tmp_path, mode_rounds={"nftables": 3}), str(out2), progress=False,
              settle_with=lambda d: [], end_by=time.time())
    meta2 = json.loads((out2 / "meta.json").read_text())
    assert meta2["complete"] and meta2["late"]["rounds"] == [] and meta2["late"]["end_by"] is True
    assert meta2["late"]["budget_s"] < 600 and meta2["end_by"] < meta2["finished"]
    assert meta2["late"]["stopped"].startswith("round 3 would take about "), meta2["late"]
    assert set(pd.read_parquet(out2 / "points.parquet")["round"]) == {0, 1}
    meta2["complete"] = False
    (out2 / "meta.json").write_text(json.dumps(meta2))
    run_sweep(None, str(out2), resume=True, progress=False, settle_with=lambda d: [])
    again = json.loads((out2 / "meta.json").read_text())
    assert again["complete"] and again["late"]["rounds"] == []
    assert set(pd.read_parquet(out2 / "points.parquet")["round"]) == {0, 1}


def test_the_round_clock_scales_by_the_last_rounds_measured_over_estimated_time():
    """Three extra rounds of one estimate, each measured at twice it: the
    second and the third are expected at twice it.  (The runner once divided
    by the scaled expectation, so the third was expected at the bare
    estimate again.)  Rounds of other estimates take the same scale."""
    clock = RoundClock()
    assert clock.expect(100.0) == 100.0
    clock.took(100.0, 200.0)
    assert clock.expect(100.0) == pytest.approx(200.0)
    clock.took(100.0, 200.0)
    assert clock.expect(100.0) == pytest.approx(200.0) and clock.expect(50.0) == pytest.approx(100.0)
    clock.took(50.0, 25.0)   # a quicker round: the scale follows it
    assert clock.expect(100.0) == pytest.approx(50.0)
    clock.took(0.0, 10.0)    # no estimate: nothing to scale by, the scale stays
    assert clock.expect(100.0) == pytest.approx(50.0)

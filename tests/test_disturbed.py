"""Disturbed blocks (pure, no root): the rule on data with a known answer, the
runner's re-measurement plan, and the analysis using the re-measurement."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from labkit.analysis import analyze, load_run
from labkit.analysis.curves import CurveKey
from labkit.core.disturbed import allowed, disturbed, flag_cells
from labkit.rundir import schema, store
from labkit.runs.blocks import Block, new_remeasures, remeasure_blocks
from labkit.runs.params import SweepParams
from labkit.runs.runner import Runner, Tables
from labkit.runs.sweep import Sweep, run_sweep, summary_text

# --- the rule ------------------------------------------------------------------------


def test_the_host_reference_example_is_flagged_and_its_peers_are_not():
    # host-6.18, ebpf at 2,000 services, last target: round 1 against the other four
    rounds = [3.749, 20.192, 4.026, 3.387, 3.647]
    flags = [disturbed(rounds[:i] + rounds[i + 1:], v) for i, v in enumerate(rounds)]
    assert flags == [False, True, False, False, False]


def test_what_cannot_be_judged_is_not_flagged():
    assert not disturbed([4.0], 40.0)                 # one other round: nothing to compare with
    assert not disturbed([4.0, float("nan")], 40.0)   # a round without a p50 does not count
    assert not disturbed([4.0, 4.2], float("nan"))
    assert allowed([4.0]) is None


def test_the_allowance_has_an_absolute_and_a_relative_floor():
    # identical rounds have no spread: a few microseconds are still no disturbance
    assert not disturbed([1.5, 1.5, 1.5], 3.4) and disturbed([1.5, 1.5, 1.5], 3.6)
    # at 100 us the factor 2 rules: 190 is drift, 210 and 45 are not
    assert not disturbed([100.0] * 4, 190.0) and disturbed([100.0] * 4, 210.0) and disturbed([100.0] * 4, 45.0)
    # a wide cell allows more: 5 robust standard deviations
    lo, hi = allowed([80.0, 100.0, 120.0, 140.0])
    assert hi > 2 * 110.0 and lo < 110.0 / 2


def _lognormal_rounds(rng, cells, rounds, sd):
    truth = np.exp(rng.uniform(np.log(3.0), np.log(300.0), cells))   # 3 us to 300 us
    return truth[:, None] * np.exp(rng.normal(0.0, sd, (cells, rounds)))


@pytest.mark.parametrize("rounds", [3, 5])
def test_false_alarms_without_disturbance(rounds):
    """No disturbance: round-to-round scatter log-normal around the truth.  At
    10 % (more than the reference host runs' 3-8 %) no point in 200,000 (five
    rounds) or 60,000 (three) is flagged; at 25 % (user-mode Linux) at most 1.5 %."""
    rng = np.random.default_rng(7)
    for sd, most, n in ((0.10, 0.0, 200_000 if rounds == 5 else 60_000), (0.25, 0.015, 60_000)):
        v = _lognormal_rounds(rng, n // rounds, rounds, sd)
        flags = [disturbed(np.delete(row, i), row[i]) for row in v for i in range(rounds)]
        assert np.mean(flags) <= most, (sd, np.mean(flags))
    assert sd == 0.25 and np.mean(flags) > 0   # the rate is measured, not zero by construction


def test_a_planted_disturbance_is_found():
    """One block per cell slowed by a known factor, the others at 10 % scatter:
    5.4x (the host-6.18 block) is found in every cell, 3x in at least 99 %; the
    undisturbed rounds of the same cells are not flagged."""
    rng = np.random.default_rng(8)
    v = _lognormal_rounds(rng, 5000, 5, 0.10)
    for factor, least in ((5.4, 1.0), (3.0, 0.99)):
        w = v.copy()
        w[:, 2] *= factor
        found = np.mean([disturbed(np.delete(row, 2), row[2]) for row in w])
        peers = np.mean([disturbed(np.delete(row, i), row[i]) for row in w for i in (0, 1, 3, 4)])
        assert found >= least and peers == 0.0, (factor, found, peers)


def test_flag_cells_judges_each_cell_by_its_own_rounds():
    cells = ["a"] * 4 + ["b"] * 4
    p50 = [4.0, 4.1, 3.9, 19.0, 19.0, 20.0, 21.0, 20.5]   # b sits at 20 us: not disturbed
    assert flag_cells(cells, p50).tolist() == [False, False, False, True] + [False] * 4


# --- the plan -------------------------------------------------------------------------


def test_a_remeasurement_gets_an_id_after_every_planned_one_once_only():
    planned = [Block(i, i // 2, "ebpf", (1, 10)[i % 2], ("last",)) for i in range(6)]
    new = new_remeasures(planned, {3}, [])
    assert new == [{"block": 9, "of": 3}]
    assert new_remeasures(planned, {3}, new) == []                         # never twice
    assert new_remeasures(planned, {1, 3}, new) == [{"block": 7, "of": 1}]  # same flags, same ids
    (b,) = remeasure_blocks(planned, new)
    assert (b.block, b.round, b.mode, b.services, b.targets, b.remeasure_of) == (9, 1, "ebpf", 10, ("last",), 3)


# --- a synthetic sweep: planned blocks, a planted disturbance, the runner's re-measurement

LEVEL, SLOPE = 4.0, 0.002        # us, us per service: the truth of the synthetic curve
COUNTS, ROUNDS, PROBES = (1, 100, 300, 1000), 4, 300


class FakeSweep(Sweep):
    """A sweep whose blocks write synthetic rows (schema columns, written by
    :meth:`Sweep._record`'s tables) instead of probing: p50 = LEVEL + SLOPE x n
    plus gamma noise; the block ``slow`` (first time only) 5x slower."""

    def __init__(self, params, slow: int, slow_again: bool = False):
        super().__init__(params)
        self.slow, self.slow_again, self.rng = slow, slow_again, np.random.default_rng(3)

    def run_block(self, ctx):
        b = ctx.block
        factor = 5.0 if b.block == self.slow or (self.slow_again and b.remeasure_of == self.slow) else 1.0
        for t in b.targets:
            pid = (b.block * len(self.p.targets) + self.p.targets.index(t))
            rtt = factor * (LEVEL + SLOPE * b.services) + self.rng.gamma(2.0, 0.05, PROBES)
            ident = ctx.ident()
            ctx.tables.add(schema.SAMPLES, pd.DataFrame({
                **ident, "point_id": pid, "endpoints": 10, "target": t, "probe": "syn", "pacing": 0.0,
                "seq": np.arange(PROBES), "service": b.services - 1, "dst": "10.96.0.1", "rtt_us": rtt,
                "ok": True, "error": "", "endpoint": "10.128.0.1:80"})[schema.columns(schema.SAMPLES)])
            q = np.percentile(rtt, [50, 90, 99])
            ctx.tables.add(schema.POINTS, [{
                **ident, "point_id": pid, "endpoints": 10, "target": t, "probe": "syn", "pacing": 0.0,
                "render_s": 0.0, "load_s": 0.1, "program_s": 0.1, "sent": PROBES, "answered": PROBES,
                "lost": 0, "valid": True, "reason": "", "p50_us": q[0], "p90_us": q[1], "p99_us": q[2],
                "mean_us": rtt.mean(), "min_us": rtt.min(), "ct_new": -1, "variant": "", "stack_pkts": -1,
                "redirected_pkts": -1, "started": 1.8e9 + pid, "finished": 1.8e9 + pid + 1,
                "disturbed": False}])


def _sweep(out, slow_again=False, late_round=None):
    """Run a FakeSweep the way the runner does (planned blocks, then
    :meth:`Runner._plan_remeasure`, the re-measurements, :meth:`Runner._recheck`),
    into ``out``; returns (runner, the disturbed planned block).  With
    ``late_round``, that round's blocks are late rounds': measured after the
    re-measurements are planned and not judged with them."""
    p = SweepParams(modes=["ebpf"], services=list(COUNTS), targets=["last", "random"], rounds=ROUNDS, probes=PROBES)
    probe = Sweep(p).blocks()
    slow = next(b.block for b in probe if b.round == 1 and b.services == 300)
    os.makedirs(out)
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    runner = Runner(FakeSweep(p, slow, slow_again), None, progress=False)
    runner.tables = Tables(str(out), schema.KINDS["sweep"].tables, fd=fd)
    runner.meta = {"run_id": "x", "params": p.to_dict(), "blocks_done": [], "kernel_release": "6.18"}

    def run(blocks):
        for b in blocks:
            runner.exp.run_block(SimpleNamespace(block=b, tables=runner.tables, ident=lambda b=b: {
                "run_id": "x", "block": b.block, "round": b.round, "mode": b.mode, "kernel_release": "6.18",
                "services": b.services, "remeasure_of": b.remeasure_of}))
            runner.meta["blocks_done"].append(b.block)

    blocks = runner.exp.blocks()
    late = [b for b in blocks if b.round == late_round]
    run([b for b in blocks if b not in late])
    again = runner._plan_remeasure(blocks, {b.block for b in late})
    run(again + late)
    runner._recheck(blocks + again)
    runner.tables.flush_all()
    store.write_json(schema.META, {**runner.meta, "complete": True}, dir_fd=fd)
    os.close(fd)
    return runner, slow


def test_the_runner_measures_a_disturbed_block_again_and_keeps_both(tmp_path):
    runner, slow = _sweep(tmp_path / "run")
    entries = runner.meta["remeasured"]
    assert [(e["of"], e["still_disturbed"]) for e in entries] == [(slow, False)]
    new = entries[0]["block"]
    assert new in runner.meta["blocks_done"] and new not in {b.block for b in runner.exp.blocks()}
    pts = store.read_table(str(tmp_path / "run" / schema.POINTS))
    old_rows, new_rows = pts[pts["block"] == slow], pts[pts["block"] == new]
    assert len(old_rows) == len(new_rows) == 2                      # both kept
    assert old_rows["disturbed"].all() and not new_rows["disturbed"].any()
    assert (new_rows["remeasure_of"] == slow).all() and (new_rows["round"] == 1).all()
    assert not pts.loc[~pts["block"].isin([slow]), "disturbed"].any()   # no other block flagged
    # the printed summary counts the re-measurement, not the disturbed block
    text = summary_text(pts)
    assert "1 disturbed block(s) measured again" in text and pts.loc[pts["block"] == slow, "p50_us"].min() > 4 * LEVEL
    # a second look (as on a resume) plans nothing new
    runner.tables.fd = os.open(tmp_path / "run", os.O_RDONLY | os.O_DIRECTORY)
    assert runner._plan_remeasure(runner.exp.blocks()) == []
    os.close(runner.tables.fd)
    assert json.load(open(tmp_path / "run" / schema.META))["remeasured"][0]["of"] == slow


def test_a_remeasurement_before_the_late_rounds_takes_an_id_after_theirs_too(tmp_path):
    """Re-measurements are planned before the late rounds run (a default run
    on 2026-12-08 gave one the id of a late round's block, and its guest
    segment was asked for a host block): the id follows every planned one,
    the late rounds' included, and the late blocks are not judged then."""
    runner, slow = _sweep(tmp_path / "run", late_round=ROUNDS - 1)
    (e,) = runner.meta["remeasured"]
    planned = {b.block for b in runner.exp.blocks()}
    assert e["of"] == slow and e["block"] not in planned and e["block"] == max(planned) + 1 + slow
    late = {b.block for b in runner.exp.blocks() if b.round == ROUNDS - 1}
    assert late <= set(runner.meta["blocks_done"])


def test_a_remeasurement_outside_too_is_flagged_and_not_measured_a_third_time(tmp_path):
    runner, slow = _sweep(tmp_path / "run", slow_again=True)
    (e,) = runner.meta["remeasured"]
    assert e["of"] == slow and e["still_disturbed"] is True
    pts = store.read_table(str(tmp_path / "run" / schema.POINTS))
    assert pts.loc[pts["block"].isin([slow, e["block"]]), "disturbed"].all()
    an = analyze(str(tmp_path / "run"), n_boot=50)
    assert set(an.remeasured["status"]) == {"re-measured, outside again (both kept, flagged)"}


def test_the_analysis_fits_the_remeasurement_and_lists_it(tmp_path):
    """The fits see one block per cell and round, the re-measurement in the
    disturbed block's place: the flat level and slope are the truth's, and the
    old points are shown as not used, with the reason."""
    runner, slow = _sweep(tmp_path / "run")
    new = runner.meta["remeasured"][0]["block"]
    run = load_run(str(tmp_path / "run"))
    old = run.points[run.points["block"] == slow]
    assert not old["valid"].any() and old["reason"].str.startswith(f"disturbed: re-measured as block {new}").all()
    an = analyze(run, n_boot=50)
    c = an.curves[CurveKey("ebpf", "host", "last", "syn", 0.0, "p50")]
    ids = set(c.point_ids.tolist())
    last = run.points["target"] == "last"
    assert set(run.points.loc[(run.points["block"] == new) & last, "point_id"]) <= ids
    assert not set(old["point_id"]) & ids
    assert len(c.x) == len(COUNTS) * ROUNDS                         # one observation per count and round
    noise = float(np.median(np.random.default_rng(0).gamma(2.0, 0.05, 100_000)))
    assert c.predict([1000])[0] == pytest.approx(LEVEL + SLOPE * 1000 + noise, abs=0.05)
    r = an.remeasured
    assert list(r["status"]) == ["re-measured"] * 2 and set(r["target"]) == {"last", "random"}
    assert (r["services"] == 300).all() and (r["round"] == 1).all() and (r["remeasured_as"] == new).all()
    assert (r["old_p50_us"] > 4 * LEVEL).all() and (r["new_p50_us"] < 2 * LEVEL).all()


def test_an_older_run_is_flagged_by_the_same_rule_and_kept_in_its_fits(tmp_path):
    """A run without the flag (before it existed): the disturbed block is listed,
    not re-measured, and stays in the fits, as it always did."""
    runner, slow = _sweep(tmp_path / "run")
    new = runner.meta["remeasured"][0]["block"]
    d = tmp_path / "run"
    for name in (schema.POINTS, schema.SAMPLES):
        df = store.read_table(str(d / name))
        df = df[df["block"] != new].drop(columns=[c for c in ("disturbed", "remeasure_of") if c in df.columns])
        df.to_parquet(d / name, index=False)
    run = load_run(str(d))
    assert run.points["valid"].all()
    an = analyze(run, n_boot=50)
    c = an.curves[CurveKey("ebpf", "host", "last", "syn", 0.0, "p50")]
    last = run.points["target"] == "last"
    assert set(run.points.loc[(run.points["block"] == slow) & last, "point_id"]) <= set(c.point_ids.tolist())
    assert list(an.remeasured["status"]) == ["flagged, not re-measured (an older run)"] * 2
    assert an.remeasured["new_p50_us"].isna().all()


# --- real packets (root): the runner's loop, a kill during the re-measurement, resume

class FlagOnce(Sweep):
    """A real sweep in which block :attr:`target` is taken as disturbed (a real
    disturbance cannot be planted on demand); with :attr:`boom` the
    re-measurement fails mid-run, as a kill would."""
    target: int = -1
    boom: bool = False

    def mark_disturbed(self, tables, use, judge):
        flagged = super().mark_disturbed(tables, use, judge)
        if self.target in judge:
            pts = tables.frame(schema.POINTS)
            pts.loc[pts["block"] == self.target, "disturbed"] = True
            tables.replace(schema.POINTS, pts)
            flagged |= {self.target}
        return flagged

    def run_block(self, ctx):
        if self.boom and ctx.block.remeasure_of >= 0:
            raise RuntimeError("injected fault in the re-measurement")
        super().run_block(ctx)


@pytest.mark.root
def test_a_real_sweep_measures_a_flagged_block_again_and_resumes_into_it(tmp_path):
    p = SweepParams(modes=["nftables"], services=[1, 50], targets=["last"], probes=30, rounds=3, warmup=2)
    FlagOnce.target = next(b.block for b in Sweep(p).blocks() if b.round == 1 and b.services == 50)
    FlagOnce.boom = True
    out = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="injected"):
        Runner(FlagOnce(p), out, progress=False).run()
    meta = json.load(open(os.path.join(out, schema.META)))
    (e,) = meta["remeasured"]
    assert e["of"] == FlagOnce.target and e["block"] not in meta["blocks_done"] and not meta["complete"]
    assert len(meta["blocks_done"]) == 6
    FlagOnce.boom = False
    Runner(FlagOnce(p), out, resume=True, progress=False).run()
    meta = json.load(open(os.path.join(out, schema.META)))
    assert meta["complete"] and meta["remeasured"] == [{**e, "still_disturbed": False}]
    assert e["block"] in meta["blocks_done"] and len(meta["blocks_done"]) == 7
    pts = pd.read_parquet(os.path.join(out, schema.POINTS))
    new = pts[pts["block"] == e["block"]]
    assert len(new) == 1 and new["valid"].all() and (new["round"] == 1).all() and (new["remeasure_of"] == e["of"]).all()
    assert pts.loc[pts["block"] == e["of"], "disturbed"].all() and len(pts) == 7
    an = analyze(out, n_boot=50)
    c = an.curves[CurveKey("nftables", "host", "last", "syn", 0.0, "p50")]
    assert int(new["point_id"].iloc[0]) in c.point_ids and len(c.x) == 6
    # and a plain sweep of real packets still completes
    run_sweep(p, str(tmp_path / "plain"), progress=False)
    assert json.load(open(tmp_path / "plain" / schema.META))["complete"]

"""Fits and crossovers only where measured (no root): weights from the measured
spread, the model chosen with rounds as clusters, bends only between measured
counts with two on each side, crossovers on unmeasured stretches said to be so,
budget rows inside the round-to-round spread dropped, and the sweep grids."""
import collections

import numpy as np
import pytest
import yaml
from test_report import make_run

from labkit.analysis import analyze
from labkit.analysis.analyze import SPREAD_SDS, round_spread
from labkit.analysis.crossover import budget_row, crossing_row
from labkit.analysis.curves import CurveKey, cell_means, fit_curve
from labkit.analysis.models import (
    RISE_ROUNDS,
    SummaryLine,
    _fixed_knot,
    _knot_range,
    fit_batch,
    fit_models,
    select_by_rounds,
    spread_weights,
    variance_weights,
)
from labkit.report import sections

COUNTS = np.array([1, 10, 30, 100, 300, 1000, 2000, 5000, 10000], float)
BENDS = {"hinge", "segmented"}


def _key(mode: str) -> CurveKey:
    return CurveKey(mode, "host", "last", "syn", 0.0, "p50")


def _rounds(rng, truth, rounds, sd, offset_sd=0.0, counts=COUNTS):
    """One observation per count and round: truth + a round's offset + noise of sd(n)."""
    x = np.tile(counts, rounds)
    r = np.repeat(np.arange(rounds), len(counts))
    y = truth(x) + rng.normal(0, offset_sd, rounds)[r] + rng.normal(0, 1, len(x)) * sd(x)
    return x, y, r


# --- weights --------------------------------------------------------------------

def _cells(x_counts, var, mean=lambda n: 5 + 0.004 * n):
    """Three observations per count, mean on a line, variance exactly ``var``."""
    d = np.sqrt(np.asarray(var, float))
    x = np.repeat(np.asarray(x_counts, float), 3)
    y = mean(x) + (np.array([-1.0, 0.0, 1.0])[None, :] * d[:, None]).ravel()
    return x, y


def test_spread_weights_follow_the_variance_function_with_a_median_floor():
    counts = np.array([1.0, 10, 100, 1000, 10000])
    var = 0.01 * (1 + counts)            # log variance linear in log(1 + count)
    x, y = _cells(counts, var)
    w = spread_weights(x, y)
    expect = np.repeat(1 / np.maximum(var, var[2]), 3)   # floored at the median (count 100)
    np.testing.assert_allclose(w, expect / expect.mean(), rtol=1e-9)
    # a cell whose rounds happen to agree takes the variance function's value, not 0
    var0 = var.copy()
    var0[3] = 0.0
    np.testing.assert_allclose(spread_weights(*_cells(counts, var0)), w, rtol=1e-9)
    np.testing.assert_allclose(spread_weights([1.0, 2, 3], [5.0, 6, 7]), 1.0)   # one observation per cell
    np.testing.assert_allclose(variance_weights([0.0, 0.0]), 1.0)


def test_weighted_fit_is_exact_on_a_line():
    x, y = _cells([1.0, 1000, 2000, 5000, 10000], [0.01, 0.01, 0.1, 1.0, 900.0])
    theta, _ = fit_batch("linear", x, y[None, :], w=spread_weights(x, y))
    assert theta[0][1] == pytest.approx(0.004, rel=1e-9) and theta[0][0] == pytest.approx(5, abs=1e-9)


@pytest.mark.parametrize("rounds", [3, 5])
def test_weighted_slope_interval_covers_the_truth_on_heteroscedastic_data(rounds):
    """200 synthetic curves whose spread grows with the count (sd 0.16 us at 1
    service to 11 us at 10,000, like iptables-legacy's), slope 5 ns/service:
    the 95% delete-one-round interval of the weighted slope covers the truth in
    90-99% of them, and the weighted slope errs less than the equal-weights one."""
    rng = np.random.default_rng(100 + rounds)
    truth, draws, hits = 0.005, 200, 0
    err_w, err_eq = [], []
    for _ in range(draws):
        x, y, r = _rounds(rng, lambda n: 5 + truth * n, rounds, lambda n: 0.16 + 0.0011 * n)
        c = fit_curve(_key("a"), x, y, rounds=r, all_rounds=list(range(rounds)))
        b = c.fits["linear"].params()["b"]
        lo, hi = c.ci(b, c.boot["linear"][:, 1])
        assert lo <= b <= hi
        hits += lo <= truth <= hi
        err_w.append(abs(b - truth))
        err_eq.append(abs(fit_batch("linear", x, y[None, :])[0][0][1] - truth))
    assert 0.90 <= hits / draws <= 0.99, f"coverage {hits / draws:.3f} with {rounds} rounds"
    assert np.median(err_w) < 0.8 * np.median(err_eq)


def test_weights_estimated_from_equal_spreads_keep_the_slope_interval_nominal():
    """Equal spread at every count (the weights are then pure estimation noise)
    and a drift per round: the 95% interval of the slope still covers the
    truth (2 ns/service) in 90-99% of 200 runs of 3 rounds."""
    rng = np.random.default_rng(41)
    counts = np.array([1, 300, 1000, 2000, 5000, 10000], float)
    hits, draws = 0, 200
    for _ in range(draws):
        x, y, r = _rounds(rng, lambda n: 10 + 0.002 * n, 3, lambda n: 0.3 + 0 * n, 0.5, counts)
        c = fit_curve(_key("a"), x, y, rounds=r, all_rounds=[0, 1, 2])
        b = c.fits["linear"].params()["b"]
        lo, hi = c.ci(b, c.boot["linear"][:, 1])
        hits += lo <= 0.002 <= hi
    assert 0.90 <= hits / draws <= 0.99, hits / draws


def test_the_measured_curve_is_each_counts_mean_with_delete_one_round_replicates():
    """Hand-computed: counts 1 and 10 in rounds 0-2 (10 lacks round 2).  The
    means are 2 and 20; without round 0 they are 2.5 and 30, without round 1
    1.5 and 10, without round 2 2 and 20 (10 was not measured there); between
    the counts the curve is straight; with bootstrap replicates the means are
    the replicates' own."""
    x = np.array([1, 1, 1, 10, 10], float)
    y = np.array([1.0, 3.0, 2.0, 10.0, 30.0])
    r = np.array([0, 1, 2, 0, 1])
    counts, mean, reps = cell_means(x, y, r, [0, 1, 2])
    assert counts.tolist() == [1, 10] and mean.tolist() == [2, 20]
    assert reps.tolist() == [[2.5, 30], [1.5, 10], [2, 20]]
    c = fit_curve(_key("a"), x, y, rounds=r, all_rounds=[0, 1, 2])
    assert c.measured([1, 5.5, 10]).tolist() == [2, 11, 20]
    assert c.boot_measured([5.5]).ravel().tolist() == [16.25, 5.75, 11]
    _, mean_b, reps_b = cell_means(x, y, Yb=np.array([y, y + 1]))
    assert mean_b.tolist() == [2, 20] and reps_b.tolist() == [[2, 20], [3, 21]]


# --- model choice with rounds as clusters ----------------------------------------

def _choices(rng, truth, rounds, n=100, offset_sd=2.0):
    out = collections.Counter()
    for _ in range(n):
        x, y, r = _rounds(rng, truth, rounds, lambda n: 0.3 + 0.0003 * n, offset_sd)
        fits = fit_models(x, y, w=spread_weights(x, y))
        out[select_by_rounds(fits, x, y, r)[0]] += 1
    return out


@pytest.mark.parametrize("rounds", [3, 5])
def test_a_line_with_round_offsets_is_not_fitted_with_a_bend(rounds):
    """A straight line (5 ns/service), each round shifted by its own offset (sd
    2 us, far above the point noise) and noise growing with the count: the
    choice by rounds takes the line, a bend in at most 10% of 100 curves."""
    got = _choices(np.random.default_rng(7 + rounds), lambda n: 10 + 0.005 * n, rounds)
    assert sum(got[m] for m in BENDS) <= 10, got
    assert got["linear"] >= 85, got


@pytest.mark.parametrize("rounds", [3, 5])
def test_a_flat_curve_with_round_offsets_is_reported_flat(rounds):
    got = _choices(np.random.default_rng(17 + rounds), lambda n: 14 + 0 * n, rounds)
    assert got["constant"] >= 85, got


@pytest.mark.parametrize("rounds", [3, 5])
def test_a_clear_rise_with_an_outlier_is_not_reported_flat(rounds):
    """A request's cost rising 6 ns/service (88 to 150 us over 10,000 services),
    one point of one round 40 us off (as in a measured http-new curve whose
    rounds' cross-validated errors the outlier dominated): the line is chosen
    in at least 90 of 100 curves, never the constant more than 5 times."""
    rng = np.random.default_rng(37 + rounds)
    counts = np.array([1, 1000, 1500, 2250, 3350, 5000, 7500, 10000], float)
    got = collections.Counter()
    for _ in range(100):
        x, y, r = _rounds(rng, lambda n: 88 + 0.006 * n, rounds, lambda n: 2.0 + 0.0005 * n, 1.0, counts)
        y[(r == 0) & (x == 1500)] += 40.0
        fits = fit_models(x, y, w=spread_weights(x, y))
        got[select_by_rounds(fits, x, y, r)[0]] += 1
    assert got["constant"] <= 5 and got["linear"] + sum(got[m] for m in BENDS) >= 90, got


@pytest.mark.parametrize("rounds", [3, 5])
def test_a_real_bend_is_chosen(rounds):
    """1 ns/service, then 21 from 3,000 services: a bend is chosen in at least
    95 of 100 curves, despite round offsets."""
    got = _choices(np.random.default_rng(27 + rounds),
                   lambda n: 10 + 0.001 * n + 0.02 * np.maximum(n - 3000, 0), rounds)
    assert sum(got[m] for m in BENDS) >= 95, got


@pytest.mark.parametrize("rounds", [3, 5])
def test_a_jump_between_two_counts_is_fitted_with_a_bend_not_a_line(rounds):
    """A request at 38 us rising 5 ns/service to 5,000 services, then a jump
    to 200 us at 7,500 and 350 at 10,000 (iptables-legacy's http-new on a
    Xeon host), its spread growing with the count and the jump's size
    varying from round to round (sd 10%): a bend predicts every left-out
    round several times better than the line, though by very different
    factors.  A bend is chosen in at least 90 of 100 curves, and the chosen
    model starts within 5 us of the 38 us measured at 1 service (the line
    started at -2.3 us)."""
    rng = np.random.default_rng(61 + rounds)
    counts = np.array([1, 1000, 1500, 2250, 3350, 5000, 7500, 10000], float)
    got, starts = collections.Counter(), []
    for _ in range(100):
        x, y, r = _rounds(rng, lambda n: np.interp(n, [1, 5000, 7500, 10000], [38, 63, 200, 350]), rounds,
                          lambda n: 0.5 + 0.0008 * n, 1.0, counts)
        y = np.where(x > 5000, 63 + (y - 63) * rng.normal(1, 0.1, rounds)[r], y)
        c = fit_curve(_key("a"), x, y, rounds=r, all_rounds=list(range(rounds)))
        got[c.chosen] += 1
        starts.append(float(c.predict([1.0])[0]))
    assert sum(got[m] for m in BENDS) >= 90, got
    assert np.median(np.abs(np.array(starts) - 38)) < 5, np.median(starts)


# --- bends only between measured counts ------------------------------------------

UML_COUNTS = np.array([1, 100, 147, 215, 316, 464, 681, 1000, 1468, 2154, 3162, 4642, 6813, 10000], float)


def _slowed_round(rng, truth, rounds, slow=3.0):
    """Round 2 on a machine that slowed down: each of its points up to ``1 + slow``
    times the truth (as iptables-legacy's paced curve in data/reference/uml-7.2.13,
    203 us at 4,642 services in round 2 against 48-58 us in rounds 0-1)."""
    x = np.tile(UML_COUNTS, rounds)
    r = np.repeat(np.arange(rounds), len(UML_COUNTS))
    y = truth(x) * (1 + slow * (r == 2) * rng.uniform(0, 1, len(x))) + rng.normal(0, 1, len(x)) * (3 + 0.002 * x)
    return x, y, r


def test_the_rise_rule_holds_where_aicc_chooses_and_needs_two_rounds():
    """Where the rounds cannot score the models (here: one round), AICc chooses;
    a rising summary line still turns a constant into the line.  A curve of
    one round has no spread, so its line never counts as rising."""
    rng = np.random.default_rng(5)
    x = np.tile(UML_COUNTS, 1)
    y = 25 + rng.normal(0, 3, len(x))
    r = np.zeros(len(x), int)
    fits = fit_models(x, y)
    assert select_by_rounds(fits, x, y, r)[0] == "constant"
    one = SummaryLine.of(x, y, r, [0, 1, 2])
    assert not one.rises
    rising = SummaryLine(one.fit, one.reps, rises=True)
    assert select_by_rounds(fits, x, y, r, line=rising)[:2] == ("linear", RISE_ROUNDS)


@pytest.mark.parametrize("rounds", [3, 4, 5])
def test_a_curve_reported_flat_never_rises_by_its_own_line(rounds):
    """A slowed round scatters the rounds' own slopes, so the cross-validated
    choice can keep the constant while the straight line's rise over the range
    (the O(n) claim's instrument) is clear: :func:`fit_curve` then takes the
    line.  Over 100 rising and 100 flat curves, none is reported flat with a
    rise whose interval excludes 0; with 5 rounds the rise (25 to 105 us) is
    reported rising in at least 85; a flat curve stays flat in at least 85."""
    rng = np.random.default_rng(53 + rounds)
    got = {"rising": collections.Counter(), "flat": collections.Counter()}
    for name, truth in (("rising", lambda n: 25 + 0.008 * n), ("flat", lambda n: 25 + 0 * n)):
        for _ in range(100):
            x, y, r = _slowed_round(rng, truth, rounds)
            c = fit_curve(_key("a"), x, y, rounds=r, all_rounds=list(range(rounds)))
            got[name][c.chosen] += 1
            if c.criterion == RISE_ROUNDS:   # the line's rise decided: the rounds alone kept it flat
                assert select_by_rounds(c.fits, x, y, r)[0] == "constant"
            if c.chosen == "constant":
                lo, hi = c.ci(c.fits["linear"].params()["b"], c.boot["linear"][:, 1])
                assert lo <= 0 <= hi, (name, lo, hi)
            else:
                assert c.criterion != RISE_ROUNDS or c.chosen == "linear"
    assert got["flat"]["constant"] >= 85, got
    if rounds == 5:
        assert got["rising"]["constant"] <= 15, got


def test_a_knot_with_one_count_beyond_it_is_not_identified():
    """With one measured count beyond the knot, every knot in that gap fits
    equally well (the fit error is flat): no bend may sit there."""
    u = COUNTS / COUNTS.max()
    y = np.where(COUNTS < 10000, 5 + 0.004 * COUNTS, 180.0)[None, :]
    ks = np.linspace(5000, 9900, 50) / COUNTS.max()
    rss = _fixed_knot("hinge", u, np.repeat(y, len(ks), 0), ks, np.ones(len(u)))[1]
    assert np.ptp(rss) < 1e-9 * rss.mean()
    for model in ("hinge", "segmented"):
        assert _knot_range(model, np.unique(COUNTS)) == (10.0, 5000.0)


def test_a_jump_between_the_last_two_counts_is_named_by_its_gap():
    """iptables-legacy-like: a few ns/service, then a jump to ~180 us at 10,000:
    the bend lies between measured counts with two on each side, and it is
    described by the gap it lies in, never as a point inside it."""
    rng = np.random.default_rng(3)
    x, y, r = _rounds(rng, lambda n: np.where(n < 10000, 5.6 + 0.0036 * n + 0.004 * np.maximum(n - 2000, 0),
                                              180.0), 5, lambda n: 0.2 + 0.001 * n)
    c = fit_curve(_key("iptables-legacy"), x, y, rounds=r, all_rounds=list(range(5)))
    assert c.chosen in BENDS
    k = c.knots()[0]
    assert 10 <= k <= 5000
    gap = c.fit.knot_gap()
    text = c.fit.describe()
    if gap is not None:
        assert gap[0] < k < gap[1] and f"between {gap[0]:,.0f} and {gap[1]:,.0f} services" in text
        assert f"{k:,.0f}" not in text
    # its last straight piece is the line through 5,000 and 10,000 only
    assert c.straight_support(5000, 10000) == 2


def test_a_crossover_on_a_two_count_piece_is_located_only_to_its_gap():
    """A curve that jumps between 5,000 and 10,000 crosses a steady line there:
    the crossing is reported as lying between 5,000 and 10,000, unresolved; the
    steady line's crossing with a flat curve at 500 is located."""
    rng = np.random.default_rng(11)
    rounds = list(range(5))
    x, y, r = _rounds(rng, lambda n: np.where(n <= 5000, 5 + 0.004 * n, 5 + 0.004 * n + 0.03 * (n - 5000)), 5,
                      lambda n: 0.2 + 0.0002 * n)
    jump = fit_curve(_key("legacy"), x, y, rounds=r, all_rounds=rounds)
    x, y, r = _rounds(rng, lambda n: 6 + 0.01 * n, 5, lambda n: 0.2 + 0.0002 * n)
    line = fit_curve(_key("nft"), x, y, rounds=r, all_rounds=rounds)
    x, y, r = _rounds(rng, lambda n: 11 + 0 * n, 5, lambda n: 0.2 + 0 * n)
    flat = fit_curve(_key("nftables"), x, y, rounds=r, all_rounds=rounds)
    assert jump.chosen in BENDS and line.chosen == "linear" and flat.chosen == "constant"
    row = crossing_row(jump, line)
    assert 5000 < row["n_star"] < 10000 and row["resolved"] is False
    assert "cross between the measured counts 5,000 and 10,000" in row["finding"]
    assert "unmeasured stretch" in row["finding"]
    ok = crossing_row(line, flat)
    assert ok["resolved"] is True and 300 < ok["n_star"] < 1000
    assert ok["ci_low"] <= 500 <= ok["ci_high"]
    b = budget_row(jump, flat, 100.0, "budget-abs", "100 us")   # beyond 5,000: on the jump's two-count piece
    assert b["resolved"] is False and "between the measured counts 5,000 and 10,000" in b["finding"]


# --- budget rows inside the round-to-round spread ---------------------------------

def test_round_spread_is_the_sd_of_the_per_round_difference_at_the_smallest_count():
    x = np.tile([1.0, 100, 1000], 3)
    r = np.repeat([0, 1, 2], 3)
    ya = 10 + 0.01 * x + np.array([0.0, 1.0, 2.0])[r]   # per-round offsets 0, 1, 2
    yb = 5 + 0 * x
    pa, pb = np.arange(9), np.arange(9, 18)
    rounds_of = {int(p): int(v) for p, v in zip(np.concatenate([pa, pb]), np.concatenate([r, r]))}
    ca = fit_curve(_key("a"), x, ya, point_ids=pa, rounds=r, all_rounds=[0, 1, 2])
    cb = fit_curve(_key("b"), x, yb, point_ids=pb, rounds=r, all_rounds=[0, 1, 2])
    assert round_spread(ca, cb, rounds_of) == pytest.approx(1.0)   # sd of 5, 6, 7
    assert np.isnan(round_spread(ca, cb, {}))                      # no rounds: not judged


def test_budget_rows_inside_the_spread_are_dropped_and_counted(tmp_path):
    run = make_run(tmp_path / "run", rounds=3, targets=("last",))
    big = analyze(run, budget_us=10.0, budget_frac=0.10, stats=("p50",))
    tiny = analyze(run, budget_us=1e-3, budget_frac=1e-4, stats=("p50",))
    n_budget = int((big.crossover["kind"] != "fit").sum())
    assert n_budget == 6 * 2          # 6 ordered pairs of 3 modes, absolute and relative
    assert big.checks["budget_rows_dropped"] == 0
    kept = big.crossover[big.crossover["kind"] != "fit"]
    assert (kept["budget_us"] > SPREAD_SDS * kept["spread_us"]).all() and kept["spread_us"].gt(0).all()
    assert tiny.checks["budget_rows_dropped"] == n_budget
    assert set(tiny.crossover["kind"]) == {"fit"}
    assert "round-to-round spread" in tiny.checks["budget_rows_dropped_why"]
    note = str(sections.findings(tiny).data)
    assert note.count(f"{n_budget} budget rows are not published") == 1
    assert "not published" not in str(sections.findings(big).data)


# --- the sweep grids ---------------------------------------------------------------

@pytest.mark.parametrize("name, above", [("default", 0), ("full", 1)])
def test_grids_are_at_most_1_5x_apart_from_1000_to_10000(name, above):
    counts = yaml.safe_load(open(f"params/{name}.yaml"))["services"]
    mid = [c for c in counts if 1000 <= c <= 10000]
    assert mid[0] == 1000 and mid[-1] == 10000
    assert max(b / a for a, b in zip(mid, mid[1:])) <= 1.5
    beyond = [c for c in counts if c > 10000]
    assert not above or beyond[0] <= 15000

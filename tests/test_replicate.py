"""The agreement of a verdict (labkit.analysis.replicate): how often a second
run like this one reaches it, put to simulated runs with a known answer."""
import math

import numpy as np
import pytest
from scipy import stats

from labkit.analysis.replicate import FRAGILE, Side, agreement, line_sides, verdict_of


def _run(rng, truth, sd, rounds):
    """One run's estimate of ``truth`` from ``rounds`` rounds of normal noise:
    the mean with its t interval (as the jackknife over rounds gives a mean's)."""
    x = truth + sd * rng.standard_normal(rounds)
    m, se = x.mean(), x.std(ddof=1) / math.sqrt(rounds)
    q = stats.t.ppf(0.975, rounds - 1)
    return m, m - q * se, m + q * se


def _verdict(lo, hi, line):
    return verdict_of([hi < line], [lo > line])


def test_far_from_the_line_a_second_run_agrees_and_at_the_line_half_the_time():
    far = line_sides(-10.0, -11.0, -9.0, 5.0, 3, holds_above=False)
    assert agreement("holds", *far) > 0.99
    assert agreement("inconclusive", *far) < 0.01
    # an interval that ends at the line: a second run lands on either side about equally
    at = line_sides(3.0, 1.0, 4.999, 5.0, 3, holds_above=False)
    assert 0.35 < agreement("holds", *at) < 0.65
    # the same figures, the same answer (a fixed seed)
    assert agreement("holds", *at) == agreement("holds", *at)
    assert math.isnan(agreement("holds", [Side(math.nan, 0.0, 1.0, 5.0, False)], []))
    assert math.isnan(agreement("not measured here", *far))


def test_a_verdict_on_two_figures_needs_both_sides():
    """The 1,000-5,000 claim's shape: holds when the first end lies below 0
    and the second above; both far from 0 agree, one end at 0 about half."""
    lo_end, hi_end = Side(-5.0, -6.0, -4.0, 0.0, False, 3), Side(20.0, 18.0, 22.0, 0.0, True, 3)
    fails = [lo_end._replace(above=True), hi_end._replace(above=False)]
    assert agreement("holds", [lo_end, hi_end], fails) > 0.95
    near = lo_end._replace(est=-1.0, lo=-2.0, hi=-0.001)
    assert 0.3 < agreement("holds", [near, hi_end], [near._replace(above=True), fails[1]]) < 0.7


@pytest.mark.parametrize("rounds", [4, 6])
def test_pairs_of_simulated_runs_agree_about_as_often_as_predicted(rounds):
    """Known answer: rows with a true rise anywhere from well below to well
    above the line and noise from quiet to loud (log-uniform), each measured
    by two independent runs of ``rounds`` rounds.  The predicted agreement of
    the first run's verdict matches how often the second run's verdict is the
    same: over all rows within 0.04, and within 0.08 in each band of
    prediction; verdicts it calls near the line (under FRAGILE) do repeat
    less often than the others."""
    rng = np.random.default_rng(7)
    line, pred, same = 5.0, [], []
    for _ in range(1500):
        truth, sd = rng.uniform(-10, 20), math.exp(rng.uniform(math.log(0.5), math.log(20)))
        a, b = _run(rng, truth, sd, rounds), _run(rng, truth, sd, rounds)
        va, vb = _verdict(a[1], a[2], line), _verdict(b[1], b[2], line)
        pred.append(agreement(va, *line_sides(*a, line, rounds - 1, holds_above=False), draws=1000))
        same.append(va == vb)
    p, s = np.array(pred), np.array(same)
    assert abs(p.mean() - s.mean()) < 0.04, (p.mean(), s.mean())
    for lo, hi in ((0.0, FRAGILE), (FRAGILE, 0.95), (0.95, 1.01)):
        band = (p >= lo) & (p < hi)
        assert band.sum() > 50 and abs(p[band].mean() - s[band].mean()) < 0.08, (lo, hi, p[band].mean(),
                                                                                  s[band].mean())
    assert s[p < FRAGILE].mean() < s[p >= FRAGILE].mean()

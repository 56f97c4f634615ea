"""Interval arithmetic shared by the fits, the claims and the experiments:
percentile and delete-one-round jackknife intervals, and whether an estimate
lies between measured counts close enough to rest on them.  Pure numpy/scipy."""
from __future__ import annotations

import numpy as np
from scipy.stats import t as student_t

#: a crossover is located only between measured counts at most this far apart
#: (300 -> 1,000 is 3.3); one in a wider gap rests on an unmeasured stretch
MAX_BRACKET = 3.5


def percentile_ci(values: np.ndarray, level: float = 0.95, axis: int = 0):
    a = (1 - level) / 2
    return np.nanquantile(values, [a, 1 - a], axis=axis)


def rests_on(reps: np.ndarray, est) -> np.ndarray:
    """Which delete-one-round replicates (axis 0) differ from the estimate
    ``est``, column by column: the rounds it rests on.  A curve measured in
    fewer rounds than its run (``mode_rounds``, settle rounds) has, for each
    round it lacks, a replicate that is its whole estimate
    (:func:`labkit.analysis.models.round_refits`, ``cell_means``), and so
    has every figure computed from it.  A column with fewer than two such
    rounds keeps them all."""
    reps = np.asarray(reps, dtype=float)
    whole = np.isclose(reps, np.broadcast_to(np.asarray(est, dtype=float), reps.shape[1:]), rtol=1e-9, atol=0.0)
    return np.where((~whole).sum(axis=0) >= 2, ~whole, True)


def jackknife_se(reps: np.ndarray, est=None) -> np.ndarray:
    """Standard error of an estimate from its delete-one-group replicates
    (axis 0): sqrt((R - 1) / R * sum((theta_(-r) - mean)^2)).  With ``est``,
    over the rounds it rests on (:func:`rests_on`): counted, the replicates
    of the rounds it lacks add nothing to the sum but raise (R - 1) / R, so
    a 4-round curve in a run of 11 rounds would get a 1.10x wider interval
    (sqrt((10/11) / (3/4)))."""
    reps = np.asarray(reps, dtype=float)
    return _jackknife_se(reps, np.ones(reps.shape, dtype=bool) if est is None else rests_on(reps, est))


def _jackknife_se(reps: np.ndarray, use: np.ndarray) -> np.ndarray:
    """:func:`jackknife_se` over the replicates ``use`` marks, column by column."""
    m = use.sum(axis=0)
    mean = np.where(use, reps, 0.0).sum(axis=0) / m
    dev = np.where(use, reps - mean, 0.0)
    return np.sqrt((m - 1) / m * (dev ** 2).sum(axis=0))


def interval(est, reps, method: str, level: float = 0.95, df: float | None = None):
    """(low, high) of an estimate from its replicates (axis 0).

    ``rounds``: the replicates are delete-one-round fits: estimate plus or
    minus Student's t times the jackknife standard error over the rounds the
    estimate rests on (:func:`jackknife_se`), with ``df`` degrees of freedom
    (default: those rounds - 1; a curve measured in fewer rounds than the run
    has passes its own rounds - 1, and a figure of several curves the fewest
    of theirs).  Otherwise bootstrap replicates: the percentile interval,
    widened where needed to contain the estimate."""
    est = np.asarray(est, dtype=float)
    reps = np.asarray(reps, dtype=float)
    if method == "rounds":
        use = rests_on(reps, est)
        dof = use.sum(axis=0) - 1 if df is None else df
        half = student_t.ppf(0.5 + level / 2, dof) * _jackknife_se(reps, use)
        return est - half, est + half
    lo, hi = percentile_ci(reps, level)
    return np.minimum(lo, est), np.maximum(hi, est)


def bracket(n: float, counts: np.ndarray) -> tuple[float, float]:
    """The measured counts around ``n`` (both ``n`` when it was measured)."""
    c = np.unique(np.asarray(counts, dtype=float))
    i = int(np.searchsorted(c, n))
    if i < len(c) and c[i] == n:
        return float(n), float(n)
    return float(c[max(i - 1, 0)]), float(c[min(i, len(c) - 1)])


def resolved(lo: float, hi: float) -> bool:
    """Whether the measured counts ``lo`` and ``hi`` around an estimate are
    close enough (:data:`MAX_BRACKET`) to locate it (a Python bool, also for
    numpy inputs)."""
    return bool(lo > 0 and hi / lo <= MAX_BRACKET) if lo != hi else True

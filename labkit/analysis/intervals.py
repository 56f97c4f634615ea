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


def jackknife_se(reps: np.ndarray) -> np.ndarray:
    """Standard error of an estimate from its delete-one-group replicates
    (axis 0): sqrt((R - 1) / R * sum((theta_(-r) - mean)^2))."""
    reps = np.asarray(reps, dtype=float)
    R = reps.shape[0]
    return np.sqrt((R - 1) / R * ((reps - reps.mean(axis=0)) ** 2).sum(axis=0))


def interval(est, reps, method: str, level: float = 0.95, df: float | None = None):
    """(low, high) of an estimate from its replicates (axis 0).

    ``rounds``: the replicates are delete-one-round fits: estimate plus or
    minus Student's t times the jackknife standard error, with ``df``
    degrees of freedom (default: replicates - 1; a curve measured in fewer
    rounds than the run has, whose replicate for a round it lacks is its
    whole estimate, passes its own rounds - 1, and a figure of several
    curves the fewest of theirs).  Otherwise bootstrap replicates: the
    percentile interval, widened where needed to contain the estimate."""
    est = np.asarray(est, dtype=float)
    reps = np.asarray(reps, dtype=float)
    if method == "rounds":
        dof = reps.shape[0] - 1 if df is None else df
        half = student_t.ppf(0.5 + level / 2, dof) * jackknife_se(reps)
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

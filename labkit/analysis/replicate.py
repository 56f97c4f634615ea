"""Would a second run reach the same verdict?  The *agreement* of a claims row.

Every verdict of :mod:`labkit.analysis.claims` compares intervals with lines:
it *holds* when each of its ``holds`` sides passes (an interval wholly above,
or wholly below, a line), *does not hold* when one of its ``fails`` sides
passes, and is *inconclusive* otherwise.  A verdict whose interval ends near
its line is one a second run may not repeat: near the line, a run's noise
decides.  :func:`agreement` estimates how often a second run like this one
(same design, same noise) reaches the same verdict:

* each side's estimate has a standard error ``s``: the interval's half-width
  over its multiplier (Student's t with the interval's degrees of freedom,
  else the normal quantile);
* a second run draws, per side, the true noise ``sigma`` from what ``s``
  allows (``s * sqrt(df / chi2(df))``: with 4 rounds ``s`` itself is
  uncertain), its estimate from ``est + sqrt(2) * sigma * Z`` (this run's
  error and the second run's), and its interval's half-widths as this
  run's, scaled by ``sigma / s * sqrt(chi2(df) / df)`` (its own
  estimate of the noise);
* the share of :data:`DRAWS` such second runs whose verdict is this one
  (fixed seed: the same data give the same figure).

Sides are drawn independently (a verdict on two figures, as the
1,000-5,000 claim's two ends, treats them as independent).  What it does on
data with a known answer (``tests/test_replicate.py``): pairs of simulated
runs of 4 rounds agree about as often as it predicts, and on the reference
runs (``docs/results.md``, "Would a second run agree") verdicts it puts at
95% or more matched another run's of the same machine 97% of the time,
those under :data:`FRAGILE` 58% of the time: it ranks them well and is
somewhat optimistic near the line, where a second run in a noisier hour
loses the verdict more often than a run of the same noise would.  Pure.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
from scipy import stats

#: second runs drawn per verdict
DRAWS = 4000
#: below this agreement a verdict is called near its line (the report marks it)
FRAGILE = 0.8


class Side(NamedTuple):
    """One comparison of a verdict: the interval [lo, hi] of ``est`` lies
    wholly ``above`` (else below) ``line``; ``df``: the interval's degrees of
    freedom (None: normal)."""
    est: float
    lo: float
    hi: float
    line: float
    above: bool
    df: float | None = None


def verdict_of(holds: Sequence[bool], fails: Sequence[bool]) -> str:
    """The verdict of sides that passed (True) or not."""
    return "holds" if holds and all(holds) else "does not hold" if any(fails) else "inconclusive"


def passes(s: Side) -> bool:
    """Whether a side's interval lies wholly on its side of the line."""
    return s.lo > s.line if s.above else s.hi < s.line


def decide(holds: Sequence[Side], fails: Sequence[Side], level: float = 0.95) -> tuple[str, float]:
    """The verdict of ``holds`` and ``fails`` sides and its :func:`agreement`:
    the one rule every claim's verdict is reached by, so the second runs
    simulated are judged exactly as this run is."""
    verdict = verdict_of([passes(s) for s in holds], [passes(s) for s in fails])
    return verdict, agreement(verdict, holds, fails, level)


def agreement(verdict: str, holds: Sequence[Side], fails: Sequence[Side], level: float = 0.95,
              draws: int = DRAWS, seed: int = 0) -> float:
    """The share of simulated second runs that reach ``verdict`` (module
    docstring); NaN when a side's figures are not finite or the verdict is
    none of the three."""
    sides = [*holds, *fails]
    if verdict not in ("holds", "does not hold", "inconclusive") or not sides or not all(
            math.isfinite(v) for s in sides for v in (s.est, s.lo, s.hi, s.line)):
        return math.nan
    rng = np.random.default_rng(seed)
    passed = []
    for s in sides:
        df = s.df if s.df is not None and s.df > 0 else None
        q = float(stats.t.ppf((1 + level) / 2, df)) if df else float(stats.norm.ppf((1 + level) / 2))
        down, up = max(s.est - s.lo, 0.0), max(s.hi - s.est, 0.0)
        se = (down + up) / 2 / q
        if df:
            sigma = np.sqrt(df / rng.chisquare(df, draws))      # true noise over this run's estimate of it
            width = sigma * np.sqrt(rng.chisquare(df, draws) / df)   # the second run's estimate of it
        else:
            sigma = width = np.ones(draws)
        est = s.est + math.sqrt(2.0) * se * sigma * rng.standard_normal(draws)
        passed.append(est - down * width > s.line if s.above else est + up * width < s.line)
    h = np.all(passed[:len(holds)], axis=0) if holds else np.zeros(draws, dtype=bool)
    f = np.any(passed[len(holds):], axis=0) if fails else np.zeros(draws, dtype=bool)
    got = np.where(h, "holds", np.where(f, "does not hold", "inconclusive"))
    return float(np.mean(got == verdict))


def line_sides(est: float, lo: float, hi: float, line: float, df: float | None,
               holds_above: bool) -> tuple[list[Side], list[Side]]:
    """The sides of a verdict on one figure against one line: holds when its
    interval lies above the line (``holds_above``) or below it, does not hold
    on the other side."""
    return ([Side(est, lo, hi, line, holds_above, df)], [Side(est, lo, hi, line, not holds_above, df)])

"""Penalties, budgets and amortization of one series, each on one instrument.

Pure: :class:`~labkit.analysis.curves.Curve` objects in, figures with
intervals out (:mod:`~labkit.analysis.claims` turns them into verdicts).
Every figure here is of *one* series and *one* probe kind, never a
difference of two instruments:

* a **penalty** is a mode's own rise over its value at its smallest count
  (1 service in a default sweep), ``c(n) - c(xmin)``, on one curve;
* a **budget** is a stated fraction of a request's cost at the smallest
  count, read from a curve of the same series (``http-new`` in the claims);
* both are read from the *measured* curve (each count's mean over the
  rounds, straight between measured counts:
  :meth:`~labkit.analysis.curves.Curve.measured`), never from a fitted
  model: a curve with a jump that the rounds cannot confirm as a bend stays
  a straight line, whose value at 1 service can lie below zero (a Xeon
  host's legacy http-new: -2.3 us against 37-38 us measured) and whose rise
  at 1,000 services can be six times the measured one;
* the **crossing** is the smallest count at which the penalty reaches the
  budget (:func:`penalty_crossings`, for any list of fractions);
* **amortization** (:func:`amortization`): a ``reuse-<k>`` probe's figure is
  already the mean cost of one request on a connection carrying k requests
  (``(handshake + k request RTTs) / k``, :mod:`labkit.probes.conn`), so its
  per-request penalty is its own rise; a connection amortizes the
  new-connection penalty when that is at most 1/k of the new-connection
  penalty (``reuse-1``'s where measured, else the SYN's) plus a margin
  (the budget's fraction of a request).

Replicates of two curves of one run are paired by index (delete-one-round
fits share the run's rounds); intervals come from
:func:`labkit.analysis.intervals.interval` and always hold their estimate.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd

from labkit.analysis.crossover import first_exceed
from labkit.analysis.curves import Curve, joint_df
from labkit.analysis.intervals import bracket, interval, resolved
from labkit.analysis.replicate import Side, decide, passes, verdict_of

#: the budget fractions of the crossing-against-fraction figure
FRACTIONS = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
#: the seed's "1,000 to 5,000 services"
SPAN = (1000.0, 5000.0)
CROSSING_COLUMNS = ["fraction", "budget_us", "budget_lo", "budget_hi", "n_star", "ci_low", "ci_high",
                    "boot_frac", "bracket_lo", "bracket_hi", "resolved"]


class Est(NamedTuple):
    """An estimate, its interval and its replicates."""
    value: float
    lo: float
    hi: float
    reps: np.ndarray
    #: degrees of freedom of a delete-one-round interval (None: bootstrap, or the replicates')
    df: float | None = None


def _est(c: Curve, value: float, reps: np.ndarray, level: float, df: float | None = None) -> Est:
    dof = c.df if df is None else df
    lo, hi = interval(value, reps, c.method, level, dof)
    return Est(float(value), float(lo), float(hi), np.asarray(reps, dtype=float), dof)


def rise(c: Curve, n: float, level: float = 0.95) -> Est:
    """The penalty: ``c(n) - c(xmin)`` on the measured curve
    (:meth:`~labkit.analysis.curves.Curve.measured`: each count's mean over
    its rounds, straight between measured counts), with its replicates.  No
    model: a shape the rounds cannot confirm (a jump between two counts that
    the rounds-as-clusters choice keeps a straight line) would move the rise
    at every count, and the line's value at 1 service can lie below zero."""
    p = c.measured([c.xmin, n])
    b = c.boot_measured([c.xmin, n])
    return _est(c, p[1] - p[0], b[:, 1] - b[:, 0], level, c.df_at([c.xmin, n]))


def line_rise(c: Curve, level: float = 0.95, x0: float | None = None, x: float | None = None) -> Est | None:
    """The straight line's rise from ``x0`` to ``x`` (default: the curve's
    smallest and largest counts), with the line's replicates, so the two ends
    share each round's drift: the O(n) and O(1) claims' instrument, and what
    ``compare`` sets side by side.  A curve chosen flat still has such a rise,
    with an interval.  None when the curve has no straight-line fit."""
    if "linear" not in c.fits or "linear" not in c.boot:
        return None
    ends = [c.xmin if x0 is None else x0, c.xmax if x is None else x]
    p = c.predict(ends, "linear")
    b = c.boot_predict(ends, "linear")
    return _est(c, p[1] - p[0], b[:, 1] - b[:, 0], level)


def base(c: Curve, level: float = 0.95) -> Est:
    """The curve's measured value at its smallest count (its mean over the rounds)."""
    return _est(c, float(c.measured([c.xmin])[0]), c.boot_measured([c.xmin])[:, 0], level, c.df_at([c.xmin]))


def combine(c: Curve, a: Est, b: Est, wa: float, wb: float, level: float = 0.95) -> Est:
    """``wa * a + wb * b`` with paired replicates (the shorter set decides),
    with the fewer degrees of freedom of the two."""
    B = min(len(a.reps), len(b.reps))
    dfs = [d for d in (a.df, b.df) if d is not None]
    return _est(c, wa * a.value + wb * b.value, wa * a.reps[:B] + wb * b.reps[:B], level,
                min(dfs) if dfs else None)


def _located(c: Curve, n_star: float, reps: np.ndarray, level: float,
             df: float | None = None) -> tuple[float, float, float]:
    """(ci_low, ci_high, fraction of replicates that found it).  Delete-one-round
    replicates: an interval only when every one finds it, clipped to the
    measured range; bootstrap: the interval of those that found it."""
    found = ~np.isnan(reps)
    frac = float(found.mean()) if len(reps) else math.nan
    if not np.isfinite(n_star) or not found.any() or (c.method == "rounds" and not found.all()):
        return math.nan, math.nan, frac
    lo, hi = interval(n_star, reps[found], c.method, level, c.df if df is None else df)
    if c.method == "rounds":
        lo, hi = max(lo, c.xmin), min(hi, c.xmax)
    return float(lo), float(hi), frac


def penalty_crossings(pen: Curve, budget_of: Curve, fractions: Sequence[float] = FRACTIONS,
                      level: float = 0.95) -> pd.DataFrame:
    """Where ``pen``'s own rise first reaches ``fraction`` of ``budget_of``'s
    value at its smallest count, per fraction (:data:`CROSSING_COLUMNS`).

    ``n_star`` is NaN where the penalty never reaches the budget in
    ``pen``'s measured range; ``resolved`` says whether the measured counts
    around it are close enough for it to rest on them
    (:data:`labkit.analysis.intervals.MAX_BRACKET`).  The penalty is read
    from the measured curve (:func:`rise`), straight between measured
    counts, so the crossing between two of them is where that straight
    piece reaches the budget."""
    x = pen.cells
    p, bp = pen.measured(x), pen.boot_measured(x)
    b0 = base(budget_of, level)
    B = min(len(bp), len(b0.reps))
    rows = []
    for f in fractions:
        n_star = float(first_exceed(x, p - p[0] - f * b0.value))
        reps = first_exceed(x, bp[:B] - bp[:B, :1] - f * b0.reps[:B, None])
        lo, hi, frac = _located(pen, n_star, np.asarray(reps, dtype=float), level, joint_df(pen, budget_of))
        bl, bh = bracket(n_star, pen.x) if np.isfinite(n_star) else (math.nan, math.nan)
        rows.append(dict(fraction=float(f), budget_us=f * b0.value, budget_lo=f * b0.lo, budget_hi=f * b0.hi,
                         n_star=n_star, ci_low=lo, ci_high=hi, boot_frac=frac, bracket_lo=bl, bracket_hi=bh,
                         resolved=resolved(bl, bh) if np.isfinite(n_star) else math.nan))
    return pd.DataFrame(rows, columns=CROSSING_COLUMNS)


def span_excess(pen: Curve, budget_of: Curve, fraction: float, span: tuple[float, float] = SPAN,
                level: float = 0.95) -> tuple[Est, Est] | None:
    """The penalty minus the budget at both ends of ``span`` (None when
    ``pen`` does not cover it): the seed's claim holds when the first is
    below 0 and the second above."""
    if pen.xmin > span[0] or pen.xmax < span[1]:
        return None
    b0 = base(budget_of, level)
    return tuple(combine(pen, rise(pen, n, level), b0, 1.0, -fraction, level)   # type: ignore[return-value]
                 for n in span)


def _side(e: Est, line: float, above: bool) -> Side:
    return Side(e.value, e.lo, e.hi, line, above, e.df)


def span_sides(e_lo: Est, e_hi: Est) -> tuple[list[Side], list[Side]]:
    """The sides of the 1,000-5,000 verdict (:func:`labkit.analysis.replicate.decide`):
    holds when the penalty is below the budget at the span's start and above
    it at its end (both intervals clear of 0); does not hold when it is
    clearly above at the start or clearly below at the end."""
    return ([_side(e_lo, 0.0, False), _side(e_hi, 0.0, True)], [_side(e_lo, 0.0, True), _side(e_hi, 0.0, False)])


def span_verdict(e_lo: Est, e_hi: Est) -> str:
    """The 1,000-5,000 verdict of the span's two ends (:func:`span_sides`)."""
    holds, fails = span_sides(e_lo, e_hi)
    return verdict_of([passes(s) for s in holds], [passes(s) for s in fails])


AMORTIZATION_COLUMNS = ["k", "n", "penalty_us", "penalty_lo", "penalty_hi", "base_us", "expected_us",
                        "expected_lo", "expected_hi", "excess_us", "excess_lo", "excess_hi", "new_us",
                        "margin_us", "margin_lo", "margin_hi", "over_us", "over_lo", "over_hi", "verdict",
                        "agreement"]


def amortization(reuse: dict[int, Curve], new: Curve, level: float = 0.95,
                 margin_of: Curve | None = None, fraction: float = 0.1) -> pd.DataFrame:
    """Per k: the per-request penalty of ``reuse-<k>`` (its own rise from its
    smallest to the largest count all curves share), against 1/k of the
    new-connection penalty of ``new`` over the same counts
    (:data:`AMORTIZATION_COLUMNS`).

    The *excess* is the per-request penalty minus 1/k of the new-connection
    penalty (0: amortized exactly); the *margin* is ``fraction`` of a
    request's cost at the smallest count, read from ``margin_of`` (the
    claims pass the mode's ``http-new``: the same budget as the 1,000-5,000
    claim's; default ``new``), the amount of excess that goes unnoticed.
    Verdict per k, on the excess minus the margin (``over``), as O(1) is
    judged against its flat line: *holds* when its interval lies below 0 and
    the per-request penalty's interval lies under the whole new-connection
    penalty (the data tell amortization from none); *does not hold* when it
    lies above 0; else *inconclusive*.  A per-request penalty near 1/k plus
    the margin is inconclusive in every run that cannot tell the sides
    apart, not *holds* in a noisy run and *does not hold* in a quiet one."""
    curves = [new, *reuse.values()]
    n = min(c.xmax for c in curves)
    p_new = rise(new, n, level)
    m = base(margin_of if margin_of is not None else new, level)
    m = Est(fraction * m.value, fraction * m.lo, fraction * m.hi, fraction * m.reps, m.df)
    rows = []
    for k, c in sorted(reuse.items()):
        if c is new:
            continue
        pk = rise(c, n, level)
        exp = _est(new, p_new.value / k, p_new.reps / k, level, p_new.df)
        ex = combine(c, pk, p_new, 1.0, -1.0 / k, level)
        over = combine(c, ex, m, 1.0, -1.0, level)
        verdict, agree = decide([_side(over, 0.0, False), _side(pk, p_new.value, False)],
                                [_side(over, 0.0, True)], level)
        rows.append(dict(k=int(k), n=n, penalty_us=pk.value, penalty_lo=pk.lo, penalty_hi=pk.hi,
                         base_us=float(c.predict([c.xmin])[0]), expected_us=exp.value, expected_lo=exp.lo,
                         expected_hi=exp.hi, excess_us=ex.value, excess_lo=ex.lo, excess_hi=ex.hi,
                         new_us=p_new.value, margin_us=m.value, margin_lo=m.lo, margin_hi=m.hi,
                         over_us=over.value, over_lo=over.lo, over_hi=over.hi, verdict=verdict, agreement=agree))
    return pd.DataFrame(rows, columns=AMORTIZATION_COLUMNS)

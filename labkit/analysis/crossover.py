"""Crossovers between two fitted curves of one group (target, probe kind,
pacing, statistic): where they cross (kind ``fit``) and where one exceeds the
other by a budget (``budget-abs``, ``budget-rel``), each with its interval
from the curves' paired replicates and a sentence (``finding``).

Pure: array functions and :class:`~labkit.analysis.curves.Curve` pairs in,
one row (a dict of :data:`CROSSOVER_COLUMNS`) out.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from scipy.optimize import brentq

from labkit.analysis.curves import Curve, joint_df
from labkit.analysis.intervals import bracket, interval, resolved
from labkit.analysis.run import probe_label

CROSSOVER_COLUMNS = ["mode_a", "mode_b", "kernel", "target", "probe", "pacing", "statistic", "kind",
                     "budget_us", "spread_us", "n_star", "ci_low", "ci_high", "boot_frac", "n_crossings",
                     "faster_below", "faster_above", "model_a", "model_b", "range_lo", "range_hi", "diff_lo_us",
                     "diff_hi_us", "method", "bracket_lo", "bracket_hi", "resolved", "baseline", "finding"]
NUMERIC_CROSSOVER_COLUMNS = ("pacing", "budget_us", "spread_us", "n_star", "ci_low", "ci_high", "boot_frac",
                             "n_crossings", "range_lo", "range_hi", "diff_lo_us", "diff_hi_us", "bracket_lo",
                             "bracket_hi")


def first_crossing(x: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where ``d`` (..., G) sampled at x (G,) first changes sign.

    Returns (x*, index of the bracketing interval, number of sign changes);
    x* is NaN where d never changes sign.  Linear interpolation inside the
    interval (exact for piecewise-linear curves whose knots are in x)."""
    d = np.asarray(d, dtype=float)
    a, b = d[..., :-1], d[..., 1:]
    change = (a != 0) & (np.sign(b) != np.sign(a))
    count = change.sum(axis=-1)
    i = np.argmax(change, axis=-1)
    has = change.any(axis=-1)
    da = np.take_along_axis(d, i[..., None], -1)[..., 0]
    db = np.take_along_axis(d, (i + 1)[..., None], -1)[..., 0]
    x0, x1 = x[i], x[i + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        xs = x0 + (x1 - x0) * da / (da - db)
    return np.where(has, xs, np.nan), i, count


def first_exceed(x: np.ndarray, e: np.ndarray) -> np.ndarray:
    """The smallest x at which ``e`` (..., G) reaches 0 or more (NaN if never);
    x[0] where it already does at the start."""
    e = np.asarray(e, dtype=float)
    a, b = e[..., :-1], e[..., 1:]
    up = (a < 0) & (b >= 0)
    i = np.argmax(up, axis=-1)
    has = up.any(axis=-1)
    ea = np.take_along_axis(e, i[..., None], -1)[..., 0]
    eb = np.take_along_axis(e, (i + 1)[..., None], -1)[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        xs = x[i] + (x[i + 1] - x[i]) * ea / (ea - eb)
    out = np.where(has, xs, np.nan)
    return np.where(e[..., 0] >= 0, x[0], out)


GRID_POINTS = 2001


def _grid(lo: float, hi: float, extra: Iterable[float] = ()) -> np.ndarray:
    g = np.concatenate([np.linspace(lo, hi, GRID_POINTS), [v for v in extra if lo < v < hi]])
    return np.unique(g)


def _on_grid(ca: Curve, cb: Curve, lo: float, hi: float, grid: "Grid | None"):
    """x in [lo, hi], the point-estimate difference and the bootstrap
    differences of two curves there."""
    if grid is None:
        x = _grid(lo, hi, ca.knots() + cb.knots())
        pa, pb, ba, bb = ca.predict(x), cb.predict(x), ca.boot_predict(x), cb.boot_predict(x)
    else:
        m = slice(np.searchsorted(grid.x, lo, "left"), np.searchsorted(grid.x, hi, "right"))
        x = grid.x[m]
        (pa, ba), (pb, bb) = grid.of(ca), grid.of(cb)
        pa, pb, ba, bb = pa[m], pb[m], ba[:, m], bb[:, m]
    B = min(len(ba), len(bb))
    d = pa - pb
    # rounding of the weighted fits: curves equal at a count (p50s on one clock step) stay equal
    d = np.where(np.abs(d) <= 1e-12 * np.maximum(np.abs(pa), np.abs(pb)), 0.0, d)
    return x, d, ba[:B] - bb[:B]


class Grid:
    """Service counts shared by the curves of one comparison group (their
    ranges' ends and knots included), with each curve's predictions there
    computed once."""

    def __init__(self, curves: list[Curve]):
        lo = min(c.xmin for c in curves)
        hi = max(c.xmax for c in curves)
        extra = [v for c in curves for v in (c.xmin, c.xmax, *c.knots())]
        self.x = np.unique(np.concatenate([np.linspace(lo, hi, GRID_POINTS), extra]))
        self._pred: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def of(self, c: Curve) -> tuple[np.ndarray, np.ndarray]:
        if c.key not in self._pred:
            self._pred[c.key] = (c.predict(self.x), c.boot_predict(self.x))
        return self._pred[c.key]


def _refine_root(f, x0: float, x1: float, guess: float) -> float:
    try:
        if f(x0) * f(x1) < 0:
            return float(brentq(f, x0, x1, xtol=1e-6))
    except ValueError:
        pass
    return float(guess)


def _fmt_n(v: float) -> str:
    return f"{v:,.0f}"


def _services(v: float) -> str:
    """``1 service``, ``1,000 services``."""
    return f"{_fmt_n(v)} service" + ("" if _fmt_n(v) == "1" else "s")


def _located(ca: Curve, cb: Curve, n_star: float, reps: np.ndarray, lo: float, hi: float,
             level: float) -> tuple[float, float, float, str]:
    """(ci_low, ci_high, fraction of replicates that found it, note) of a
    crossover estimate from its replicates (NaN where a replicate found none).

    Delete-one-round replicates: located only when every one finds it (else
    the interval is not defined); the interval is clipped to the measured
    range.  Bootstrap replicates: the interval of those that found it."""
    found = ~np.isnan(reps)
    frac = float(np.mean(found)) if len(reps) else math.nan
    if ca.method == "rounds" and cb.method == "rounds":
        if not found.all():
            return (math.nan, math.nan, frac,
                    f"not located: {int(found.sum())} of {len(reps)} leave-one-round-out fits find it")
        cl, ch = interval(n_star, reps, "rounds", level, joint_df(ca, cb))
        return float(max(cl, lo)), float(min(ch, hi)), frac, ""
    if not found.any():
        return math.nan, math.nan, frac, ""
    cl, ch = interval(n_star, reps[found], "bootstrap", level)
    note = f"{frac:.0%} of bootstrap fits" if frac < 0.995 else ""
    return float(cl), float(ch), frac, note


#: a straight piece of a fitted curve rests on measurements across a gap only
#: with at least this many measured counts on it (two: the line between them)
MIN_PIECE_COUNTS = 3


def _resolution(row: dict, ca: Curve, cb: Curve) -> str:
    """Which measured counts bracket the estimate, and whether it rests on
    measurements: the counts close enough (:data:`MAX_BRACKET`), and both
    fitted curves straight across that gap on a piece with at least
    :data:`MIN_PIECE_COUNTS` measured counts (a bend inside the gap, or a
    piece through two counts only, puts the crossing on a fitted stretch
    where nothing was measured).  Returns the reason it does not ("" if it
    does or was measured at a count)."""
    if np.isnan(row["n_star"]):
        return ""
    bl, bh = bracket(row["n_star"], np.union1d(ca.x, cb.x))
    ok = resolved(bl, bh)
    why = "" if ok else "too far apart to locate it"
    if ok and bl != bh:
        for c in (ca, cb):
            support = c.straight_support(bl, bh)
            if support < MIN_PIECE_COUNTS:
                why = (f"where {c.label}'s fitted curve bends" if support == 0 else
                       f"where {c.label}'s fitted curve is the straight line through {support} measured counts")
                ok = False
                break
    row.update(bracket_lo=bl, bracket_hi=bh, resolved=ok)
    return why


def _ci_text(row: dict, level: float, note: str) -> str:
    if np.isnan(row["ci_low"]):
        return f" ({note})" if note else ""
    txt = f" ({level:.0%} CI {_fmt_n(row['ci_low'])}\u2013{_fmt_n(row['ci_high'])}"
    return txt + (f", {note})" if note else ")")


def _where(row: dict, prep: str, why: str, level: float, note: str) -> str:
    """"at 1,234 services (95% CI ...)"; where the estimate rests on an
    unmeasured stretch, the measured counts around it, and the fitted point
    only as the fits' reading."""
    at = f"{_fmt_n(row['n_star'])} services"
    ci = _ci_text(row, level, note)   # " (95% CI a-b, note)" or ""
    if row.get("resolved") is not False:
        return f"{prep} {at}{ci}"
    return (f"between the measured counts {_fmt_n(row['bracket_lo'])} and {_fmt_n(row['bracket_hi'])}, "
            f"{why}: an unmeasured stretch, located only to that gap (the fits read {at}"
            + (f"; {ci[2:-1]})" if ci else ")"))


def crossing_row(ca: Curve, cb: Curve, level: float = 0.95, grid: Grid | None = None) -> dict:
    """Where the fitted curves of two series cross (kind "fit")."""
    lo, hi = max(ca.xmin, cb.xmin), min(ca.xmax, cb.xmax)
    row = _row_base(ca, cb, "fit", lo, hi)
    if not hi > lo:
        row["finding"] = _no_range(ca, cb, lo, hi)
        return row
    x, d, db = _on_grid(ca, cb, lo, hi, grid)
    row.update(diff_lo_us=float(d[0]), diff_hi_us=float(d[-1]))
    xs, i, count = first_crossing(x, d)
    span = float(np.ptp(d))
    scale = max(1.0, float(np.abs(d).max()))
    who = f"{ca.stat} of {ca.label} vs {cb.label} ({ca.key.target} target, {_probe(ca)})"
    rng_txt = f"{_fmt_n(lo)}\u2013{_fmt_n(hi)} services"
    bx, _, _ = first_crossing(x, db)
    frac = float(np.mean(~np.isnan(bx)))
    row["boot_frac"] = frac
    if float(np.abs(d).max()) < 1e-9:
        row["finding"] = f"{who}: the fitted curves coincide over {rng_txt}; no crossing is defined."
        return row
    if not np.isnan(xs):
        f = lambda t: float(ca.predict([t])[0] - cb.predict([t])[0])  # noqa: E731
        n_star = _refine_root(f, float(x[i]), float(x[i + 1]), float(xs))
        below, above = (ca, cb) if d[0] < 0 else (cb, ca)
        row.update(n_star=n_star, n_crossings=int(count), faster_below=below.key.mode,
                   faster_above=above.key.mode)
        cl, ch, frac, note = _located(ca, cb, n_star, bx, lo, hi, level)
        row.update(ci_low=cl, ci_high=ch, boot_frac=frac)
        why = _resolution(row, ca, cb)
        txt = f"{who}: the curves cross " + _where(row, "at", why, level, note)
        txt += f": below it {below.label} is faster, above it {above.label}."
        if count > 1:
            txt += f" The fitted curves change order {count} times; the first is given."
        row["finding"] = txt
        return row
    # no sign change: the side of the largest gap (d may touch 0 at an end: p50s that
    # fall on the same clock step)
    win = ca if d[int(np.argmax(np.abs(d)))] < 0 else cb
    winner = win.label
    gap = np.abs(d)
    row.update(n_crossings=0, faster_below=win.key.mode, faster_above=win.key.mode)
    if span < 1e-9 * scale:
        txt = (f"{who}: the fitted curves are parallel, {gap[0]:.1f} us apart; no crossing. "
               f"{winner} is faster throughout {rng_txt}.")
    else:
        txt = (f"{who}: no crossing in the measured range ({rng_txt}); {winner} is faster "
               f"throughout, by {gap.min():.1f} to {gap.max():.1f} us.")
    if frac >= 0.05:
        what = "leave-one-round-out" if ca.method == "rounds" else "bootstrap"
        txt += f" ({frac:.0%} of {what} fits do cross.)"
    row["finding"] = txt
    return row


def budget_row(ca: Curve, cb: Curve, budget_us: float, kind: str, budget_text: str,
               level: float = 0.95, grid: Grid | None = None) -> dict:
    """The smallest service count at which ``ca`` exceeds ``cb`` by ``budget_us``."""
    lo, hi = max(ca.xmin, cb.xmin), min(ca.xmax, cb.xmax)
    row = _row_base(ca, cb, kind, lo, hi)
    row["budget_us"] = float(budget_us)
    if not hi > lo or not np.isfinite(budget_us):
        row["finding"] = _no_range(ca, cb, lo, hi) if not hi > lo else \
            f"{ca.label} vs {cb.label}: no baseline for the budget, no budget crossover."
        return row
    x, d, db = _on_grid(ca, cb, lo, hi, grid)
    row.update(diff_lo_us=float(d[0]), diff_hi_us=float(d[-1]))
    n_star = float(first_exceed(x, d - budget_us))
    bx = first_exceed(x, db - budget_us)
    frac = float(np.mean(~np.isnan(bx)))
    row["boot_frac"] = frac
    who = f"{ca.stat}, {ca.key.target} target, {_probe(ca)}"
    if np.isnan(n_star):
        row["finding"] = (f"{ca.label} never exceeds {cb.label} by {budget_text} in "
                          f"{_fmt_n(lo)}\u2013{_fmt_n(hi)} services ({who}).")
        if frac >= 0.05:
            what = "leave-one-round-out" if ca.method == "rounds" else "bootstrap"
            row["finding"] += f" ({frac:.0%} of {what} fits do.)"
        return row
    if d[0] < budget_us:
        i = int(np.argmax((d[:-1] - budget_us < 0) & (d[1:] - budget_us >= 0)))
        f = lambda t: float(ca.predict([t])[0] - cb.predict([t])[0] - budget_us)  # noqa: E731
        n_star = _refine_root(f, float(x[i]), float(x[i + 1]), n_star)
    row["n_star"] = n_star
    at_start = d[0] >= budget_us
    cl, ch, frac, note = _located(ca, cb, n_star, bx, lo, hi, level)
    row.update(ci_low=cl, ci_high=ch, boot_frac=frac)
    why = _resolution(row, ca, cb)
    txt = f"{ca.label} exceeds {cb.label} by {budget_text} "
    if at_start:
        txt += f"already at {_services(lo)}, the smallest measured count"
        if (np.isfinite(ch) and ch > lo) or note:
            txt += _ci_text(row, level, note)
    else:
        txt += _where(row, "from", why, level, note)
    row["finding"] = txt + f" ({who})."
    return row


def _no_range(ca: Curve, cb: Curve, lo: float, hi: float) -> str:
    if lo == hi:
        return (f"{ca.label} vs {cb.label} ({ca.stat}, {ca.key.target} target): measured at one "
                f"common service count only ({_fmt_n(lo)}); no crossover can be located.")
    return (f"{ca.label} vs {cb.label} ({ca.stat}, {ca.key.target} target): the measured ranges of "
            "service counts do not overlap; no crossover can be located.")


def _row_base(ca: Curve, cb: Curve, kind: str, lo: float, hi: float) -> dict:
    k = ca.key
    return dict(mode_a=k.mode, mode_b=cb.key.mode, kernel=k.kernel, target=k.target, probe=k.probe,
                pacing=k.pacing, statistic=k.statistic, kind=kind, budget_us=np.nan, spread_us=np.nan, n_star=np.nan,
                ci_low=np.nan, ci_high=np.nan, boot_frac=np.nan, n_crossings=np.nan, faster_below="",
                faster_above="", model_a=ca.chosen, model_b=cb.chosen, range_lo=lo, range_hi=hi,
                diff_lo_us=np.nan, diff_hi_us=np.nan, method=ca.method, bracket_lo=np.nan,
                bracket_hi=np.nan, resolved=np.nan, baseline="", finding="")


def _probe(c: Curve) -> str:
    return probe_label(c.key.probe, c.key.pacing)

"""The whole analysis of a run directory, composed: load it
(:mod:`~labkit.analysis.run`), fit every curve (:mod:`~labkit.analysis.curves`
with the models of :mod:`~labkit.analysis.models`), locate the crossovers
(:mod:`~labkit.analysis.crossover`) and put the seed's claims to it
(:mod:`~labkit.analysis.claims`).

Pure: reads the files of a run, computes, returns an
:class:`~labkit.analysis.result.Analysis`.  Nothing here touches the kernel
or writes outside the directory it is given.

Intervals treat *rounds* as the independent units (``resample="rounds"``,
the default): every block of a round is programmed and probed once, rounds
follow each other in time, so whatever drifts (the machine, its caches, a
neighbour's load) is shared within a round and differs between rounds.  The
curve is refitted with each round left out in turn (the delete-one-round
jackknife); a statistic's standard error is the jackknife's, and its
interval the estimate plus or minus Student's t with (rounds - 1) degrees of
freedom times that error.  Every interval therefore contains its estimate,
and with few rounds it is as wide as few rounds warrant (t = 4.30 for 3
rounds, 2.78 for 5).  A crossover is located only when every left-out fit
crosses too.  Coverage measured on synthetic curves with a known slope and
crossover is in docs/experiments.md ("Intervals") and checked by
tests/test_analysis.py.

With one round there is nothing to learn drift from: the bootstrap over the
probes within each point is used (``resample="probes"``, or
``"hierarchical"``, which also redraws the points of each count), and the
report says that its intervals cover probe noise only.  Percentile
intervals, widened where needed to contain the estimate.

The curves start at one service: every point with services does DNAT and
masquerade for the probed service.  The 0-service points (an empty table:
no service, no NAT) are a separate reference, never a curve's first point,
except for the ``none`` target, which matches no service at any count.
Tail statistics use only points with enough answered probes to support
them (:data:`~labkit.analysis.curves.MIN_TAIL_PROBES`).  Curves are compared
only within one kernel (a run over two kernels relates them in
:mod:`~labkit.analysis.kernels`).
"""
from __future__ import annotations

import math
from itertools import combinations, permutations
from typing import Iterable

import numpy as np
import pandas as pd

from labkit.analysis.claims import claims
from labkit.analysis.crossover import CROSSOVER_COLUMNS, NUMERIC_CROSSOVER_COLUMNS, Grid, budget_row, crossing_row
from labkit.analysis.curves import (
    KEY_COLUMNS,
    MIN_TAIL_PROBES,
    STATS,
    Curve,
    CurveKey,
    bootstrap_cells,
    fit_curve,
    point_table,
)
from labkit.analysis.intervals import MAX_BRACKET
from labkit.analysis.models import MODELS
from labkit.analysis.result import Analysis
from labkit.analysis.run import Run, Series, load_run, probe_label
from labkit.core.errors import UsageError

RESAMPLE = ("rounds", "hierarchical", "probes")
#: a budget within this many standard deviations of the round-to-round
#: difference (about 95% of single rounds' differences fall inside) is inside
#: the spread: not published
SPREAD_SDS = 2.0
BASELINE_COLUMNS = ["mode", "kernel", "target", "probe", "pacing", "baseline_us", "baseline"]


def analyze(run: Run | str, *, budget_us: float = 10.0, budget_frac: float = 0.10,
            n_boot: int = 1000, level: float = 0.95, seed: int = 0, criterion: str = "rounds",
            resample: str = "rounds", stats: Iterable[str] = tuple(STATS)) -> Analysis:
    """Fit every curve (:class:`~labkit.analysis.curves.CurveKey`), find its
    intervals (delete-one-round jackknife, or the bootstrap with one round),
    the crossovers between every pair of series of one kernel, and the
    seed's claims.  ``criterion``: ``rounds`` chooses each curve's model with
    the rounds as clusters (AICc with one round); ``aicc``, ``aic``, ``bic``
    count every point as independent (:func:`~labkit.analysis.curves.fit_curve`)."""
    if isinstance(run, str):
        run = load_run(run)
    stats = {s: STATS[s] for s in stats}
    if n_boot < 10:
        raise UsageError(f"n_boot must be at least 10, got {n_boot}")
    if resample not in RESAMPLE:
        raise UsageError(f"resample must be one of {', '.join(RESAMPLE)}, got {resample!r}")
    pts, rtts = point_table(run)
    all_rounds = sorted(int(r) for r in pts["round"].unique())
    jack = resample == "rounds" and len(all_rounds) >= 2
    method = "rounds" if jack else (resample if resample != "rounds" else "probes")
    curves, skipped = fit_curves(run, pts, rtts, stats, criterion, all_rounds if jack else None,
                                 method, np.random.default_rng(seed), n_boot)
    summary, fits = curve_tables(curves, pts, level)
    crossover, baselines, dropped = crossovers(run, curves, pts, rtts, budget_us, budget_frac, level)
    # consistency of our per-point statistics with the sweep's
    both = pts[["p50", "p50_us"]].dropna()
    checks = {"max_abs_p50_diff_us": float((both["p50"] - both["p50_us"]).abs().max()) if len(both) else 0.0,
              "points": int(len(pts)), "points_used": int(pts["used"].sum()),
              "points_invalid": int((~pts["valid"]).sum()), **dropped}
    settings = dict(budget_us=budget_us, budget_frac=budget_frac, n_boot=n_boot, level=level,
                    seed=seed, criterion=criterion, resample=method, stats=list(stats),
                    models=list(MODELS), rounds=len(all_rounds), min_tail_probes=MIN_TAIL_PROBES,
                    max_bracket=MAX_BRACKET)
    an = Analysis(run, pts, curves, summary, fits, crossover, baselines, settings, checks,
                  empty=_empty_table(pts, rtts), skipped=skipped)
    an.claims = claims(an)
    return an


def fit_curves(run: Run, pts: pd.DataFrame, rtts: dict[int, np.ndarray], stats: dict[str, float],
               criterion: str, all_rounds: list[int] | None, method: str, rng: np.random.Generator,
               n_boot: int) -> tuple[dict[CurveKey, Curve], list[str]]:
    """Every curve with two or more counts: delete-one-round refits with
    ``all_rounds``, else bootstrap replicates (``method``) drawn from ``rng``.
    Also says which curves were skipped, and why."""
    # curves start at one service (NATed like every other point); the empty table is a
    # reference of its own, except for the none target (no NAT at any count)
    used = pts[pts["used"] & ((pts["services"] > 0) | (pts["target"] == "none"))]
    curves: dict[CurveKey, Curve] = {}
    skipped: list[str] = []
    for (mode, kernel, target, probe, pacing), g in used.groupby(KEY_COLUMNS, sort=True):
        g = g.sort_values(["services", "round"])
        label = run.label(Series(mode, kernel))
        for s in stats:
            key = CurveKey(mode, kernel, target, probe, float(pacing), s)
            gs = g[g["n_answered"] >= MIN_TAIL_PROBES.get(s, 1)]
            if len(gs) < len(g):
                skipped.append(f"{s} of {label} ({key.target} target, {probe_label(key.probe, key.pacing)}): "
                               f"{len(g) - len(gs)} of {len(g)} points have fewer than {MIN_TAIL_PROBES[s]} "
                               "answered probes")
            if gs["services"].nunique() < 2:
                continue
            pids = gs["point_id"].astype(int).to_numpy()
            # a curve measured in one round only (an interrupted run) has no rounds to
            # delete: its interval is the probes' bootstrap (probe noise only)
            if all_rounds is not None and gs["round"].nunique() >= 2:
                curves[key] = fit_curve(key, gs["services"].to_numpy(float), gs[s].to_numpy(float),
                                        point_ids=pids, criterion=criterion, rounds=gs["round"].to_numpy(int),
                                        all_rounds=all_rounds, label=label)
                continue
            cells = [(float(n), [rtts[int(p)] for p in gg["point_id"]])
                     for n, gg in gs.groupby("services", sort=True)]
            x, obs, boot = bootstrap_cells(cells, n_boot, rng, method if all_rounds is None else "probes",
                                           {s: stats[s]})
            curves[key] = fit_curve(key, x, obs[s], boot[s], pids, criterion, label=label)
    return curves, skipped


def curve_tables(curves: dict[CurveKey, Curve], pts: pd.DataFrame, level: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The summary (one row per curve) and the fits (one row per model fitted)."""
    srows, frows = [], []
    for c in curves.values():
        srows.append(_summary_row(c, pts, level))
        for m, f in c.fits.items():
            frows.append(dict(**c.key._asdict(), model=m, chosen=m == c.chosen, n_obs=f.n,
                              n_params=f.spec.n_params, rss=f.rss, aic=f.aic, aicc=f.aicc, bic=f.bic,
                              criterion=c.criterion, delta=c.deltas.get(m, math.nan), weight=c.weights[m],
                              curve=f.describe(), **{f"param_{k}": v for k, v in f.params().items()}))
    return pd.DataFrame(srows), pd.DataFrame(frows)


def crossovers(run: Run, curves: dict[CurveKey, Curve], pts: pd.DataFrame, rtts: dict[int, np.ndarray],
               budget_us: float, budget_frac: float,
               level: float) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int | str]]:
    """Where the curves of every pair of series of one kernel cross, and where
    one exceeds the other by the absolute and the relative budget; and the
    baseline each relative budget is a fraction of.

    A budget row is published only when its budget exceeds :data:`SPREAD_SDS`
    times the round-to-round spread of the pair (:func:`round_spread`, in the
    row as ``spread_us``): a smaller budget is inside the band in which single
    rounds' differences scatter, and whether and where the difference exceeds
    it is the noise's answer.  Such rows are
    dropped; the third value counts them (``budget_rows_dropped`` and
    ``budget_rows_dropped_why``, for the report's one note)."""
    order = {s: i for i, s in enumerate(run.series_order)}
    rounds_of = dict(zip(pts["point_id"].astype(int), pts["round"].astype(int)))
    crows, brows = [], []
    n_dropped = 0
    for group in sorted({k.group for k in curves}):
        present = sorted({k.series for k in curves if k.group == group}, key=order.__getitem__)
        if len(present) < 2:
            continue
        target, probe, pacing, stat = group
        of = {s: curves[CurveKey(s.mode, s.kernel, target, probe, pacing, stat)] for s in present}
        grid = Grid(list(of.values()))
        for a, b in _same_kernel(combinations(present, 2)):
            crows.append(crossing_row(of[a], of[b], level, grid))
        for a, b in _same_kernel(permutations(present, 2)):
            ca, cb = of[a], of[b]
            spread = round_spread(ca, cb, rounds_of)
            base, how = _budget_baseline(pts, rtts, cb, curves)
            brows.append(dict(zip(BASELINE_COLUMNS, (b.mode, b.kernel, target, probe, pacing, base, how))))
            rel = budget_frac * base
            for budget, kind, text in ((budget_us, "budget-abs", f"{budget_us:g} us"),
                                       (rel, "budget-rel", f"{budget_frac:.0%} of {cb.label}'s {how} ({rel:.1f} us)")):
                if budget <= SPREAD_SDS * spread:   # inside the round-to-round spread (NaN: one round, kept)
                    n_dropped += 1
                    continue
                crows.append(budget_row(ca, cb, budget, kind, text, level, grid))
                crows[-1]["spread_us"] = spread
                if kind == "budget-rel":
                    crows[-1]["baseline"] = how
        del grid
    crossover = pd.DataFrame(crows, columns=CROSSOVER_COLUMNS)
    if not len(crossover):   # a run of one mode: numbers stay numbers in an empty table too
        crossover = crossover.astype({c: float for c in NUMERIC_CROSSOVER_COLUMNS})
    baselines = pd.DataFrame(brows, columns=BASELINE_COLUMNS).drop_duplicates()
    why = (f"their budget is inside the round-to-round spread: at most {SPREAD_SDS:g} standard deviations "
           "across rounds of the per-round difference of the two series at their smallest common count")
    return crossover, baselines, {"budget_rows_dropped": n_dropped, "budget_rows_dropped_why": why}


def round_spread(ca: Curve, cb: Curve, rounds_of: dict[int, int]) -> float:
    """The round-to-round spread of the difference of two curves: the
    standard deviation across rounds (ddof 1) of ``ca - cb`` per round at
    their smallest common measured count.  NaN with fewer than two rounds
    measured by both there (or curves without point ids)."""
    common = np.intersect1d(ca.x, cb.x)
    if not len(common) or not len(ca.point_ids) or not len(cb.point_ids):
        return math.nan
    n0 = common.min()

    def per_round(c: Curve) -> dict[int, float]:
        at = c.x == n0
        return {rounds_of[int(p)]: float(v) for p, v in zip(c.point_ids[at], c.y[at]) if int(p) in rounds_of}

    va, vb = per_round(ca), per_round(cb)
    both = sorted(set(va) & set(vb))
    if len(both) < 2:
        return math.nan
    return float(np.std([va[r] - vb[r] for r in both], ddof=1))


def _same_kernel(pairs: Iterable[tuple[Series, Series]]) -> list[tuple[Series, Series]]:
    return [(a, b) for a, b in pairs if a.kernel == b.kernel]


def _budget_baseline(pts: pd.DataFrame, rtts: dict[int, np.ndarray], cb: Curve,
                     curves: dict[CurveKey, Curve]) -> tuple[float, str]:
    """What one request costs on ``cb``'s path, for the relative budget: the
    median of its series' ``http-new`` requests (a real client and server
    over a new connection, back to back) at its smallest count with services,
    where the run has them; else the fitted p50 of its curve at its smallest
    count."""
    k = cb.key
    http = pts[pts["used"] & (pts["mode"] == k.mode) & (pts["kernel"] == k.kernel) & (pts["probe"] == "http-new")
               & (pts["pacing"] == 0) & (pts["services"] > 0)]
    if len(http):
        n = http["services"].min()
        sub = http[http["services"] == n]
        same = sub[sub["target"] == k.target]
        sub = same if len(same) else sub
        return (float(np.median(np.concatenate([rtts[int(p)] for p in sub["point_id"]]))),
                f"http-new request at {n:,} services")
    c = curves.get(k._replace(statistic="p50"))
    if c is not None:
        return float(c.predict([c.xmin])[0]), f"p50 at {c.xmin:,.0f} services"
    return math.nan, "no baseline"


EMPTY_COLUMNS = ["mode", "kernel", "probe", "pacing", "points", "probes", "p50_us", "p99_us",
                 "p50_round_min", "p50_round_max"]


def _empty_table(pts: pd.DataFrame, rtts: dict[int, np.ndarray]) -> pd.DataFrame:
    """The 0-service reference per series and probe kind: pooled probes of the
    points with an empty table (every target there probes the none address)."""
    rows = []
    z = pts[pts["used"] & (pts["services"] == 0)]
    for (mode, kernel, probe, pacing), g in z.groupby(["mode", "kernel", "probe", "pacing"], sort=True):
        r = np.concatenate([rtts[int(p)] for p in g["point_id"]])
        per_round = g.groupby("round")["p50"].median()
        rows.append(dict(mode=mode, kernel=kernel, probe=probe, pacing=pacing, points=len(g), probes=len(r),
                         p50_us=float(np.median(r)), p99_us=float(np.percentile(r, 99)),
                         p50_round_min=float(per_round.min()), p50_round_max=float(per_round.max())))
    return pd.DataFrame(rows, columns=EMPTY_COLUMNS)


def _summary_row(c: Curve, pts: pd.DataFrame, level: float) -> dict:
    k = c.key
    sub = pts[(pts["mode"] == k.mode) & (pts["kernel"] == k.kernel) & (pts["target"] == k.target)
              & (pts["probe"] == k.probe) & (pts["pacing"] == k.pacing)]
    row = dict(**k._asdict(), n_points=int(sub["used"].sum()), n_invalid=int((~sub["used"]).sum()),
               services_min=c.xmin, services_max=c.xmax, model=c.chosen, curve=c.fit.describe(),
               criterion=c.criterion, weight=c.weights[c.chosen])
    base = c.predict([c.xmin])[0]
    blo, bhi = c.band([c.xmin], level)
    row["method"] = c.method
    row.update(baseline_us=float(base), baseline_lo=float(blo[0]), baseline_hi=float(bhi[0]))
    if "linear" in c.fits:
        b = c.fits["linear"].params()["b"] * 1e3
        lo, hi = c.ci(b, c.boot["linear"][:, 1] * 1e3, level)
        row.update(slope_ns=b, slope_lo=float(lo), slope_hi=float(hi))
        row["linear_delta"] = c.deltas.get("linear", math.nan) - c.deltas.get(c.chosen, math.nan)
    else:
        row.update(slope_ns=np.nan, slope_lo=np.nan, slope_hi=np.nan, linear_delta=np.nan)
    p = c.fit.params()
    th = c.boot[c.chosen]
    names = MODELS[c.chosen].params
    for name, col in (("knot", "k"), ("slope_after_ns", "b2" if "b2" in p else "b")):
        if col in p and c.chosen in ("hinge", "segmented"):
            j = names.index(col)
            mul = 1e3 if col != "k" else 1.0
            lo, hi = c.ci(p[col] * mul, th[:, j] * mul, level)
            row.update({name: p[col] * mul, f"{name}_lo": float(lo), f"{name}_hi": float(hi)})
        else:
            row.update({name: np.nan, f"{name}_lo": np.nan, f"{name}_hi": np.nan})
    # a knot strictly between two measured counts is located only to that gap
    gap = c.fit.knot_gap()
    row.update(knot_gap_lo=gap[0] if gap else np.nan, knot_gap_hi=gap[1] if gap else np.nan)
    if gap:
        row.update(knot=np.nan, knot_lo=np.nan, knot_hi=np.nan)
    return row

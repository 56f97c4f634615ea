"""Statistics of the connection-reuse, HTTP and CPU experiments (pure).

What these experiments add to :mod:`labkit.analysis.curves`' curves: penalties
of each probe kind (differences of per-count means, with intervals over
rounds), the budget relative to a request's own latency, and
fits of the CPU table.  The report renders them
(:mod:`labkit.report.experiments`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd

from labkit.analysis import cpu
from labkit.analysis.budget import penalty_crossings
from labkit.analysis.crossover import CROSSOVER_COLUMNS, budget_row, crossing_row
from labkit.analysis.curves import STATS, Curve, CurveKey, bootstrap_cells, fit_curve
from labkit.analysis.intervals import interval
from labkit.analysis.result import Analysis

REUSE_KINDS = ["reuse-1", "reuse-2", "reuse-3", "reuse-5", "reuse-10", "reuse-30", "reuse-100"]
HTTP_KINDS = ["http-new", "http-keepalive"]
KIND_ORDER = ["syn", "keepalive", *REUSE_KINDS, *HTTP_KINDS]
KEEPALIVE_BUDGET = 0.01   # "1% of a keepalive request's latency"


def kind_order(kinds: Iterable[str]) -> list[str]:
    kinds = list(dict.fromkeys(kinds))
    return [k for k in KIND_ORDER if k in kinds] + sorted(k for k in kinds if k not in KIND_ORDER)


def ci_text(v: float, lo: float, hi: float, fmt: str = "{:,.1f}") -> str:
    if v is None or not np.isfinite(v):
        return ""
    s = fmt.format(v)
    if np.isfinite(lo) and np.isfinite(hi):
        s += f" [{fmt.format(lo)}, {fmt.format(hi)}]"
    return s


# ---------------------------------------------------------------------------
# penalties from fitted curves

def penalty_table(an: Analysis, probes: Iterable[str], target: str | None = None,
                  stat: str = "p50", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per mode and probe kind: the mean over rounds of the points' ``stat``
    at the smallest and at the largest measured service count, their
    difference (the penalty) and its interval.  With two or more rounds
    measured at both counts the rounds are the units: Student's t over the
    per-round differences; with one round, the bootstrap of probes within
    points (:func:`labkit.analysis.curves.bootstrap_cells`)."""
    target = target or an.headline_target
    level = an.settings["level"]
    q = {stat: STATS[stat]}
    rng = np.random.default_rng(seed)
    pts = an.points[an.points["used"] & (an.points["target"] == target)]
    smp = an.run.samples[an.run.samples["rtt_us"].notna()]
    by_point = {int(k): g.to_numpy(dtype=float) for k, g in smp.groupby("point_id")["rtt_us"]}
    rows = []
    for series in an.series:
        for probe in kind_order(probes):
            sub = pts[(pts["mode"] == series.mode) & (pts["kernel"] == series.kernel) & (pts["probe"] == probe)
                      & (pts["pacing"] == 0)]
            if target != "none":   # from 1 service: the empty table is another path (no NAT)
                sub = sub[sub["services"] > 0]
            counts = sorted(sub["services"].unique())
            if len(counts) < 2:
                continue
            r0 = sub[sub["services"] == counts[0]].groupby("round")[stat].mean()
            r1 = sub[sub["services"] == counts[-1]].groupby("round")[stat].mean()
            both = r0.index.intersection(r1.index)
            if len(both) >= 2:
                d = (r1[both] - r0[both]).to_numpy(dtype=float)
                v0, v1 = float(r0.mean()), float(r1.mean())
                reps = np.array([np.delete(d, i).mean() for i in range(len(d))])  # delete-one-round means
                lo, hi = interval(d.mean(), reps, "rounds", level)
                rows.append(dict(mode=series.mode, kernel=series.kernel, probe=probe, target=target, statistic=stat,
                                 services_lo=int(counts[0]), services_hi=int(counts[-1]),
                                 value_lo_us=v0, value_hi_us=v1, penalty_us=v1 - v0,
                                 penalty_lo=float(lo), penalty_hi=float(hi),
                                 penalty_pct=(v1 - v0) / v0 * 100 if v0 > 0 else math.nan,
                                 points=f"{len(r0)}, {len(r1)}", method="rounds"))
                continue
            ends = []
            for n in (counts[0], counts[-1]):
                ids = [int(i) for i in sub.loc[sub["services"] == n].sort_values("round")["point_id"]
                       if int(i) in by_point]
                _, obs, boot = bootstrap_cells([(float(n), [by_point[i] for i in ids])],
                                               n_boot, rng, "hierarchical", q)
                ends.append((float(obs[stat].mean()), boot[stat].mean(axis=1), len(ids)))
            (v0, b0, k0), (v1, b1, k1) = ends
            lo, hi = interval(v1 - v0, b1 - b0, "bootstrap", level)
            rows.append(dict(mode=series.mode, kernel=series.kernel, probe=probe, target=target, statistic=stat,
                             services_lo=int(counts[0]), services_hi=int(counts[-1]),
                             value_lo_us=v0, value_hi_us=v1, penalty_us=v1 - v0,
                             penalty_lo=float(lo), penalty_hi=float(hi),
                             penalty_pct=(v1 - v0) / v0 * 100 if v0 > 0 else math.nan,
                             points=f"{k0}, {k1}", method="bootstrap"))
    return pd.DataFrame(rows)


def own_budget(c: Curve, frac: float, level: float = 0.95) -> dict:
    """The smallest service count at which curve ``c`` exceeds its own value
    at its smallest count by ``frac`` of that value (NaN if never in range),
    with its interval (:func:`labkit.analysis.budget.penalty_crossings` of
    the curve against itself)."""
    r = penalty_crossings(c, c, [frac], level).iloc[0]
    return dict(n_star=float(r["n_star"]), ci_low=float(r["ci_low"]), ci_high=float(r["ci_high"]),
                boot_frac=float(r["boot_frac"]), budget_us=float(r["budget_us"]),
                baseline_us=float(c.predict([c.xmin])[0]))


def keepalive_budget(an: Analysis, probe: str, frac: float = KEEPALIVE_BUDGET,
                     target: str | None = None, stat: str = "p50") -> pd.DataFrame:
    """Where does a mode's penalty exceed ``frac`` of a request's latency?

    Two readings: against each other mode (the budget is ``frac`` of that
    mode's value at its smallest count: :func:`labkit.analysis.crossover.budget_row`),
    and against the mode's own value at its smallest count."""
    target = target or an.headline_target
    level = an.settings["level"]
    curves = {s: c for s in an.series if (c := an.curve(s, target, (probe, 0.0), stat)) is not None}
    rows = []
    for a, ca in curves.items():
        r = own_budget(ca, frac, level)
        txt = f"{frac:.0%} of its own {stat} at {ca.xmin:,.0f} services ({r['budget_us']:.2f} us)"
        if np.isfinite(r["n_star"]):
            finding = f"{ca.label} exceeds {txt} from {r['n_star']:,.0f} services"
            if np.isfinite(r["ci_low"]):
                finding += f" ({level:.0%} CI {r['ci_low']:,.0f}\u2013{r['ci_high']:,.0f})"
        else:
            finding = f"{ca.label} never exceeds {txt} in {ca.xmin:,.0f}\u2013{ca.xmax:,.0f} services"
        rows.append(dict(mode_a=a.mode, mode_b="(itself)", kernel=a.kernel, probe=probe, target=target,
                         statistic=stat, budget_us=r["budget_us"], n_star=r["n_star"], ci_low=r["ci_low"],
                         ci_high=r["ci_high"], boot_frac=r["boot_frac"], finding=finding + f" ({probe})."))
        for b, cb in curves.items():
            if b == a or b.kernel != a.kernel:
                continue
            base = float(cb.predict([cb.xmin])[0])
            row = budget_row(ca, cb, frac * base, "budget-rel",
                             f"{frac:.0%} of {cb.label}'s {stat} at {cb.xmin:,.0f} services "
                             f"({frac * base:.2f} us)", level)
            rows.append({k: row.get(k) for k in ("mode_a", "mode_b", "kernel", "probe", "target", "statistic",
                                                  "budget_us", "n_star", "ci_low", "ci_high",
                                                  "boot_frac", "finding")})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------
# curves of per-row tables (CPU)

def row_curve(key: CurveKey, x: np.ndarray, y: np.ndarray, n_boot: int,
              rng: np.random.Generator, rounds: np.ndarray | None = None) -> Curve:
    """Fit :mod:`labkit.analysis` models to one observation per row: with
    ``rounds`` (two or more), delete-one-round refits; else a bootstrap that
    redraws the rows within each service count."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if rounds is not None and len(np.unique(rounds)) >= 2:
        return fit_curve(key, x, y, rounds=np.asarray(rounds),
                                  all_rounds=sorted(int(r) for r in np.unique(rounds)))
    Yb = np.empty((n_boot, len(x)))
    for n in np.unique(x):
        idx = np.flatnonzero(x == n)
        Yb[:, idx] = y[idx][rng.integers(0, len(idx), size=(n_boot, len(idx)))]
    return fit_curve(key, x, y, Yb)


@dataclass
class CpuAnalysis:
    table: pd.DataFrame
    summary: pd.DataFrame
    curves: dict = field(default_factory=dict)
    fits: pd.DataFrame | None = None
    crossover: pd.DataFrame | None = None


def analyze_cpu(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> CpuAnalysis:
    """Fits of the datapath's excess CPU per connection against services,
    per mode and target, and where two modes' fitted curves cross."""
    rng = np.random.default_rng(seed)
    v = df[df["valid"]]
    curves = {}
    for (mode, target), g in v.groupby(["mode", "target"], sort=True):
        if g["services"].nunique() < 2:
            continue
        curves[(mode, target)] = row_curve(CurveKey(mode, "", target, "cpu", 0.0, "excess"), g["services"].to_numpy(),
                                           g["excess_us"].to_numpy(), n_boot, rng,
                                           g["round"].to_numpy() if "round" in g else None)
    fits = []
    for (mode, target), c in curves.items():
        lin = c.fits.get("linear")
        lo = hi = math.nan
        if lin is not None and "linear" in c.boot:
            lo, hi = c.ci(lin.params()["b"] * 1e3, c.boot["linear"][:, 1] * 1e3, level)
        fits.append(dict(mode=mode, target=target, model=c.chosen, curve=c.fit.describe(),
                         slope_ns_per_service=lin.params()["b"] * 1e3 if lin else math.nan,
                         slope_lo=float(lo), slope_hi=float(hi), rows=len(c.x)))
    cross = []
    for target in sorted({t for _, t in curves}):
        modes = [m for m, t in curves if t == target]
        for i, a in enumerate(modes):
            for b in modes[i + 1:]:
                cross.append(crossing_row(curves[(a, target)], curves[(b, target)], level))
    return CpuAnalysis(df, cpu.summary(df), curves, pd.DataFrame(fits),
                       pd.DataFrame(cross, columns=CROSSOVER_COLUMNS))



"""Curves: one statistic of one series against the service count, fitted.

The unit of observation is a *point* (one mode, kernel, service count,
target, probe kind, pacing and round): its statistic (p50, p90, p99 of the
probes' RTT) is one observation of the curve ``statistic(services)`` it
belongs to, keyed by a :class:`CurveKey`.  :func:`fit_curve` fits the models
of :mod:`labkit.analysis.models`, chooses one and refits the replicates
(delete-one-round, or bootstrap replicates from :func:`bootstrap_cells`).
Each observation weighs by its count's measured spread: the variance
function of the cells' variances across rounds
(:func:`~labkit.analysis.models.spread_weights`, recomputed inside each
delete-one-round refit), or with one round the variance of its bootstrap
replicates.

Beside the fits every curve keeps its *measured* form (:meth:`Curve.measured`):
each count's mean over its rounds, straight between measured counts, with the
same kind of replicates (each round left out in turn, or the bootstrap's).  It
assumes no shape, so what rests on it (a penalty, a budget, where one reaches
the other: :mod:`labkit.analysis.budget`) cannot move with a model the rounds
do not confirm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from labkit.analysis.intervals import interval
from labkit.analysis.models import (
    Fit,
    SummaryLine,
    fit_batch,
    fit_models,
    predict,
    round_refits,
    select_by_rounds,
    select_model,
    spread_weights,
    variance_weights,
)
from labkit.analysis.run import Run, Series
from labkit.core.errors import UsageError

STATS: dict[str, float] = {"p50": 50.0, "p90": 90.0, "p99": 99.0}
#: answered probes a point needs for a statistic to be estimated from it: at
#: least five probes beyond the quantile (p99 from 300 probes would be about
#: the 3rd-largest value, an outlier's figure)
MIN_TAIL_PROBES: dict[str, int] = {"p50": 1, "p90": 50, "p99": 500}
#: the columns of a point that say which curve it belongs to (with the statistic)
KEY_COLUMNS = ["mode", "kernel", "target", "probe", "pacing"]


class CurveKey(NamedTuple):
    """Which curve: a mode in a kernel (``host``, ``uml``, ``vm``), probed at
    a target with a probe kind at a pacing (probes per second, 0 back to
    back), one statistic.  Tables carry these as columns."""
    mode: str
    kernel: str
    target: str
    probe: str
    pacing: float
    statistic: str

    @property
    def series(self) -> Series:
        return Series(self.mode, self.kernel)

    @property
    def group(self) -> tuple[str, str, float, str]:
        """(target, probe, pacing, statistic): the curves compared with each other."""
        return (self.target, self.probe, self.pacing, self.statistic)


def point_table(run: Run) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """Per point: its statistics recomputed from the samples (answered probes),
    whether it is used in fits, and why not.  Also returns each point's
    answered RTTs (for the bootstrap)."""
    s = run.samples[run.samples["rtt_us"].notna()].sort_values(["point_id", "seq"])
    pid = s["point_id"].to_numpy()
    rtt = s["rtt_us"].to_numpy(dtype=float)
    cut = np.flatnonzero(np.diff(pid)) + 1
    rtts = {int(p[0]): r for p, r in zip(np.split(pid, cut), np.split(rtt, cut)) if len(p)}
    pts = run.points.copy()
    pts["n_answered"] = [len(rtts.get(int(p), ())) for p in pts["point_id"]]
    for name, q in STATS.items():
        pts[name] = [float(np.percentile(rtts[int(p)], q)) if int(p) in rtts else np.nan
                     for p in pts["point_id"]]
    pts["used"] = pts["valid"] & (pts["n_answered"] > 0)
    pts["excluded"] = np.where(pts["valid"], np.where(pts["used"], "", "no answered probes"),
                               pts["reason"].where(pts["reason"] != "", "marked invalid"))
    return pts.sort_values([*KEY_COLUMNS, "services", "round"]).reset_index(drop=True), rtts


def bootstrap_cells(cells: list[tuple[float, list[np.ndarray]]], n_boot: int,
                    rng: np.random.Generator, resample: str = "hierarchical",
                    stats: dict[str, float] = STATS):
    """Observations and bootstrap replicates of one curve.

    ``cells``: per service count, the answered RTTs of each of its points.
    Returns x (N,), observed {stat: (N,)} and replicates {stat: (B, N)}; one
    observation per point.  ``resample``: "probes" redraws probes within each
    point; "hierarchical" first redraws the points of each count (rounds),
    then probes within each drawn point.
    """
    if resample not in ("probes", "hierarchical"):
        raise UsageError(f"resample must be probes or hierarchical, got {resample!r}")
    q = np.array(list(stats.values())) / 100.0
    xs, obs, boot = [], [], []
    for n_services, arrays in cells:
        R = len(arrays)
        for r in range(R):
            xs.append(n_services)
            obs.append(np.quantile(arrays[r], q))
            if resample == "hierarchical" and R > 1:
                pick = rng.integers(0, R, size=n_boot)
            else:
                pick = np.full(n_boot, r)
            col = np.empty((n_boot, len(q)))
            for src in np.unique(pick):
                rows = np.flatnonzero(pick == src)
                a = arrays[src]
                idx = rng.integers(0, len(a), size=(len(rows), len(a)))
                col[rows] = np.quantile(a[idx], q, axis=1).T
            boot.append(col)
    x = np.array(xs, dtype=float)
    obs_a = np.array(obs)
    boot_a = np.stack(boot, axis=1)  # (B, N, S)
    names = list(stats)
    return x, {s: obs_a[:, i] for i, s in enumerate(names)}, {s: boot_a[:, :, i] for i, s in enumerate(names)}


@dataclass
class Curve:
    """One statistic of one series against service count, fitted.  ``label``
    names its series in sentences (:meth:`labkit.analysis.run.Run.label`)."""
    key: CurveKey
    label: str
    x: np.ndarray
    y: np.ndarray
    point_ids: np.ndarray
    fits: dict[str, Fit]
    chosen: str
    criterion: str
    weights: dict[str, float]
    #: replicates, model -> theta (R or B, p): delete-one-round fits (method
    #: "rounds", one row per round of the run) or bootstrap fits
    boot: dict[str, np.ndarray] = field(default_factory=dict)
    method: str = "rounds"
    rounds: np.ndarray = field(default_factory=lambda: np.array([]))
    #: per model: how much worse than the best it scored, in the criterion's
    #: units (AICc points, or standard errors of leave-one-round-out error)
    deltas: dict[str, float] = field(default_factory=dict)
    #: each observation's weight in the fits (1/var of its count's cell)
    w: np.ndarray = field(default_factory=lambda: np.array([]))
    #: the measured curve (:func:`cell_means`): the distinct counts, each one's
    #: mean over its observations, and the replicates of those means (R or B, counts)
    cells: np.ndarray = field(default_factory=lambda: np.array([]))
    cell_mean: np.ndarray = field(default_factory=lambda: np.array([]))
    cell_reps: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    #: per measured count (``cells``), the rounds it was measured in (empty with
    #: bootstrap replicates): more at the ends than in the middle with ``end_rounds``
    cell_rounds: np.ndarray = field(default_factory=lambda: np.array([], dtype=int))

    @property
    def n_rounds(self) -> int:
        """The rounds every count of this curve was measured in (0 with bootstrap
        replicates): fewer than ``rounds`` (the run's) when its mode has fewer
        (``mode_rounds``), or a count lost a round."""
        return int(self.cell_rounds.min()) if len(self.cell_rounds) else 0

    @property
    def df(self) -> float | None:
        """Degrees of freedom of its delete-one-round intervals: the rounds of
        its count measured in fewest - 1 (None with bootstrap replicates)."""
        if self.method != "rounds":
            return None
        return float(self.n_rounds - 1)

    def df_at(self, x) -> float | None:
        """Degrees of freedom of a figure read from the measured curve at ``x``
        alone (:meth:`measured`): the rounds of the fewest-measured count it
        rests on (each x's own count, else the two around it) - 1.  A rise from
        the smallest to the largest count of a curve with ``end_rounds`` has
        the end rounds' (None with bootstrap replicates)."""
        if self.method != "rounds":
            return None
        if not len(self.cell_rounds):
            return self.df
        xs = np.asarray(x, dtype=float).ravel()
        last = len(self.cells) - 1   # the counts at or below and at or above each x
        lo = np.clip(np.searchsorted(self.cells, xs, "right") - 1, 0, last)
        hi = np.clip(np.searchsorted(self.cells, xs, "left"), 0, last)
        return float(np.concatenate([self.cell_rounds[lo], self.cell_rounds[hi]]).min() - 1)

    @property
    def stat(self) -> str:
        return self.key.statistic

    @property
    def fit(self) -> Fit:
        return self.fits[self.chosen]

    @property
    def xmin(self) -> float:
        return float(self.x.min())

    @property
    def xmax(self) -> float:
        return float(self.x.max())

    def knots(self) -> list[float]:
        p = self.fit.params()
        return [p["k"]] if "k" in p else []

    def straight_support(self, lo: float, hi: float) -> int:
        """How many distinct measured counts the chosen fit's straight piece
        over [lo, hi] rests on (0 when a bend lies strictly inside it).  A
        piece through two counts only is the line between them: what lies
        between is not measured."""
        counts = np.unique(self.x)
        ks = self.knots()
        if any(lo < k < hi for k in ks):
            return 0
        left = max([k for k in ks if k <= lo], default=-math.inf)
        right = min([k for k in ks if k >= hi], default=math.inf)
        return int(((counts >= left) & (counts <= right)).sum())

    def predict(self, x, model: str | None = None) -> np.ndarray:
        return self.fits[model or self.chosen].predict(x)

    def boot_predict(self, x, model: str | None = None) -> np.ndarray:
        m = model or self.chosen
        return predict(m, self.boot[m], np.asarray(x, dtype=float))

    def _require_cells(self) -> None:
        if not len(self.cells):
            raise UsageError(f"curve {self.label}: no measured means (made by fit_curve)")

    def measured(self, x) -> np.ndarray:
        """The measured curve at ``x``: each count's mean, straight between
        measured counts (no model; clamped to the ends outside them)."""
        self._require_cells()
        return np.interp(np.asarray(x, dtype=float), self.cells, self.cell_mean)

    def boot_measured(self, x) -> np.ndarray:
        """Replicates of :meth:`measured` (R or B, len(x)), of the same kind as
        the fits' (``method``)."""
        self._require_cells()
        xs = np.asarray(x, dtype=float)
        return np.array([np.interp(xs, self.cells, r) for r in self.cell_reps]).reshape(len(self.cell_reps), len(xs))

    def band(self, x, level: float = 0.95, model: str | None = None):
        return interval(self.predict(x, model), self.boot_predict(x, model), self.method, level, self.df)

    def ci(self, est, reps, level: float = 0.95):
        """Interval of a statistic of this curve from its replicates."""
        return interval(est, reps, self.method, level, self.df)


def joint_df(*curves: Curve) -> float | None:
    """Degrees of freedom of a figure read from several curves of one run (their
    replicates paired by round): the fewest of theirs (None with bootstrap
    replicates)."""
    dfs = [c.df for c in curves if c.df is not None]
    return min(dfs) if dfs else None


def rounds_per_count(x, rounds) -> np.ndarray:
    """Per distinct count of ``x`` (ascending), how many distinct rounds
    measured it.  Pure."""
    pairs = np.unique(np.column_stack([np.asarray(x, dtype=float), np.asarray(rounds, dtype=float)]), axis=0)
    _, n = np.unique(pairs[:, 0], return_counts=True)
    return n.astype(int)


def cell_means(x, y, rounds=None, all_rounds=None, Yb=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The measured curve of observations ``(x, y)``: (distinct counts, each
    one's mean, replicates of the means).  Replicates, as the fits' are: with
    ``rounds`` (each observation's round) and ``all_rounds``, one per round of
    the run, the means without that round (a count measured in that round
    only keeps its mean; a round the curve lacks leaves every mean whole);
    else the means of the bootstrap replicates ``Yb`` (B, N).  Pure."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    counts, idx = np.unique(x, return_inverse=True)
    onehot = np.zeros((len(x), len(counts)))
    onehot[np.arange(len(x)), idx] = 1.0

    def means(vals: np.ndarray, keep: np.ndarray) -> np.ndarray:
        n = keep @ onehot
        with np.errstate(invalid="ignore", divide="ignore"):
            return (vals * keep) @ onehot / np.where(n > 0, n, np.nan)

    full = means(y, np.ones(len(x)))
    if rounds is not None and all_rounds is not None:
        r_obs = np.asarray(rounds)
        reps = [means(y, (r_obs != r).astype(float)) for r in all_rounds]
        reps_a = np.array([np.where(np.isfinite(m), m, full) for m in reps])
    elif Yb is not None:
        reps_a = np.atleast_2d(np.asarray(Yb, dtype=float)) @ onehot / onehot.sum(axis=0)
    else:
        raise UsageError("cell_means: rounds or bootstrap replicates are needed")
    return counts, full, reps_a.reshape(-1, len(counts))


def fit_curve(key: CurveKey, x, y, Yb=None, point_ids=None, criterion: str = "rounds",
              rounds=None, all_rounds=None, label: str | None = None) -> Curve:
    """Fit all eligible models (weighted by each count's spread) and choose
    one; then the replicates of the chosen one and of the linear one (for
    the summary slope: beside another chosen model it is the equal-weight
    line, a summary of a curve it does not describe, which weights would
    bend towards the quiet small counts).  ``criterion``: ``rounds`` (the default) chooses with
    the rounds as clusters (:func:`~labkit.analysis.models.select_by_rounds`)
    when there are rounds, else by AICc; ``aicc``, ``aic`` or ``bic`` choose
    by that criterion, every observation counted as independent.

    With ``rounds`` (each observation's round) and ``all_rounds`` (the run's,
    at least two): delete-one-round refits, one per round of the run (a round
    the curve lacks leaves it whole).  Otherwise ``Yb`` (B, N): bootstrap
    replicates of the observations, each refitted.  ``label``: the series'
    name in sentences (default: the mode)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    jack = rounds is not None and all_rounds is not None and len(all_rounds) >= 2
    if not jack and Yb is None:
        raise UsageError("fit_curve: bootstrap replicates or rounds are needed")
    w = spread_weights(x, y) if jack else variance_weights(np.var(np.atleast_2d(Yb), axis=0, ddof=1))
    fits = fit_models(x, y, w=w)
    line: SummaryLine | None = None   # the equal-weight line and its refits, when rounds choose
    if "linear" not in fits and len(np.unique(x)) == 2:
        # two observations: nothing to choose from; the line through them
        # describes the data (a constant would claim "flat" without evidence)
        theta, rss = fit_batch("linear", x, y[None, :], w=w)
        fits["linear"] = Fit("linear", theta[0], float(rss[0]), len(x), tuple(np.unique(x)))
        chosen, used, weights = "linear", "none", {m: math.nan for m in fits}
        deltas = dict(weights)
    elif jack and criterion == "rounds":   # rounds as clusters
        line = SummaryLine.of(x, y, rounds, all_rounds) if "linear" in fits else None
        chosen, used, weights, deltas = select_by_rounds(fits, x, y, rounds, line=line)
    else:   # one round: AICc of the weighted fit
        chosen, used, weights = select_model(fits, "aicc" if criterion == "rounds" else criterion)
        best = getattr(fits[chosen], used)
        deltas = {m: getattr(f, used) - best if not math.isnan(weights[m]) else math.nan
                  for m, f in fits.items()}
    if chosen != "linear" and "linear" in fits:
        # the line beside another chosen model summarizes a curve it does not describe:
        # weighted, it would follow the quiet small counts (a jump at the noisy top end
        # all but ignored), so the summary line weighs every point the same
        fits["linear"] = line.fit if line is not None else fit_models(x, y, ("linear",))["linear"]
    c = Curve(key, label if label is not None else key.mode, x=x, y=y,
              point_ids=np.asarray(point_ids if point_ids is not None else []),
              fits=fits, chosen=chosen, criterion=used, weights=weights,
              method="rounds" if jack else "bootstrap",
              rounds=np.asarray(all_rounds if jack else []), deltas=deltas, w=w)
    c.cells, c.cell_mean, c.cell_reps = cell_means(x, y, rounds if jack else None, all_rounds if jack else None,
                                                   None if jack else Yb)
    if jack:
        c.cell_rounds = rounds_per_count(x, rounds)
    for m in {chosen, "linear"} & set(fits):
        weighted = m == chosen
        if jack and not weighted and line is not None:
            c.boot[m] = line.reps   # refitted once, for the model choice
        elif jack:
            c.boot[m] = round_refits(m, x, y, fits[m], np.asarray(rounds), all_rounds, weighted)
        else:
            c.boot[m] = fit_batch(m, x, Yb, w=w if weighted else None)[0]
    return c

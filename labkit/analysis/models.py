"""The models fitted to a curve, each a continuous piecewise-linear function
of the service count n:

  constant    a
  linear      a + b n
  hinge       a + b (n - k)+                     flat, then linear from the knot k
  segmented   a + b1 min(n, k) + b2 (n - k)+     two slopes, joined at the knot k

Weighted least squares (Gaussian errors, variance known up to a factor):
each observation weighs 1/var of its service count, the variance function
fitted to the cells' variances across rounds (log variance linear in
log(1 + count)), floored at its median (:func:`spread_weights`).  The knot is profiled over a grid of candidate
knots and refined (scipy's bounded scalar minimizer for the estimate, a
vectorized golden-section search for replicates).  A bend (hinge or
segmented) sits between measured counts with at least two distinct counts on
each side (:func:`_knot_range`): a knot with one count beyond it is not
identified (any knot in that gap fits as well).  Inside a gap between two
measured counts the knot is a model's extrapolation, so :func:`describe`
names the gap ("a bend between 5,000 and 10,000 services"), never a point
in it.

The model is chosen with the rounds as clusters by :func:`select_by_rounds`
(leave-one-round-out prediction of each round's shape; a more complex model
only when the rounds agree that it predicts better, a paired t-test over
them); with one round, by AICc on the weighted fit (:func:`select_model`;
AIC when AICc is undefined for a candidate).
Pure array functions: no run, no curve identity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.stats import t as student_t

from labkit.analysis.intervals import bracket, interval
from labkit.core.errors import UsageError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    params: tuple[str, ...]
    min_distinct: int  # distinct service counts needed

    @property
    def n_params(self) -> int:
        return len(self.params)


MODELS: dict[str, ModelSpec] = {m.name: m for m in [
    ModelSpec("constant", ("a",), 1),
    ModelSpec("linear", ("a", "b"), 2),
    ModelSpec("hinge", ("a", "b", "k"), 3),
    ModelSpec("segmented", ("a", "b1", "b2", "k"), 4),
]}


def predict(model: str, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Values of ``model`` with parameters ``theta`` (shape (p,) or (B, p)) at
    service counts ``x`` (shape (G,)); result (G,) or (B, G)."""
    theta = np.asarray(theta, dtype=float)
    x = np.asarray(x, dtype=float)
    t = theta[..., None, :] if theta.ndim > 1 else theta
    col = (lambda i: t[..., i]) if theta.ndim == 1 else (lambda i: t[..., :, i])
    if model == "constant":
        out = col(0) + 0.0 * x
    elif model == "linear":
        out = col(0) + col(1) * x
    elif model == "hinge":
        out = col(0) + col(1) * np.maximum(x - col(2), 0.0)
    elif model == "segmented":
        k = col(3)
        out = col(0) + col(1) * np.minimum(x, k) + col(2) * np.maximum(x - k, 0.0)
    else:
        raise ValueError(f"unknown model {model!r}")
    return out


def _knot_range(model: str, distinct: np.ndarray) -> tuple[float, float]:
    """Where a bend may sit: between the second and the second-to-last
    distinct measured count, so that each side of it keeps at least two
    measured counts (hinge and segmented alike)."""
    return distinct[1], distinct[-2]


def spread_weights(x, y) -> np.ndarray:
    """Per observation, 1/var of its count's cell, normalized to mean 1.

    The cells' variances (across their observations, ddof 1) come from a few
    rounds each, so each is noisy by a factor of two or more; the weights use
    the variance *function* instead: log variance against log(1 + count),
    a straight line fitted to the cells (every cell with two observations
    and a positive variance).  The spread growing with the count (0.16 us at
    10 services to 11 us at 10,000 on host-6.18's iptables-legacy) is kept,
    a cell whose few rounds happen to agree or disagree is not singled out,
    and leaving a round out moves the weights little.  Equal weights when
    fewer than two cells have a positive variance."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    counts, inv = np.unique(x, return_inverse=True)
    var = np.full(len(counts), np.nan)
    for i in range(len(counts)):
        yi = y[inv == i]
        if len(yi) >= 2:
            var[i] = float(np.var(yi, ddof=1))
    ok = np.isfinite(var) & (var > 0)
    if ok.sum() < 2:
        return np.ones(len(x))
    lx = np.log1p(counts)
    slope, icept = np.polyfit(lx[ok], np.log(var[ok]), 1) if np.ptp(lx[ok]) > 0 else (0.0, np.log(var[ok]).mean())
    return variance_weights(np.exp(icept + slope * lx)[inv])


def variance_weights(var) -> np.ndarray:
    """1/var normalized to mean 1, each variance floored at the median of the
    finite ones (NaN: the median); equal weights when none is positive."""
    var = np.asarray(var, dtype=float)
    ok = np.isfinite(var)
    floor = float(np.median(var[ok])) if ok.any() else 0.0
    if not floor > 0:
        return np.ones(len(var))
    w = 1.0 / np.maximum(np.where(ok, var, floor), floor)
    return w / w.mean()


def _fixed_knot(model: str, u: np.ndarray, Y: np.ndarray, k: np.ndarray, w: np.ndarray):
    """Weighted least squares of ``model`` with its knot fixed at ``k`` (B,),
    for every row of Y (B, N) at once, weights w (N,).  Scaled units.
    Returns theta (B, p), weighted rss (B,)."""
    ws = w.sum()
    ym = Y @ w / ws
    yc = Y - ym[:, None]
    h = np.maximum(u[None, :] - k[:, None], 0.0)
    hm = h @ w / ws
    hc = h - hm[:, None]
    shh = (hc * hc) @ w
    shy = (hc * yc) @ w
    tiny = 1e-12 * len(u)
    if model == "hinge":
        b = np.where(shh > tiny, shy / np.where(shh > tiny, shh, 1.0), 0.0)
        a = ym - b * hm
        fitted = a[:, None] + b[:, None] * h
        theta = np.stack([a, b, k], axis=1)
    else:
        m = np.minimum(u[None, :], k[:, None])
        mm = m @ w / ws
        mc = m - mm[:, None]
        smm = (mc * mc) @ w
        smh = (mc * hc) @ w
        smy = (mc * yc) @ w
        det = smm * shh - smh * smh
        ok = det > tiny * tiny
        d = np.where(ok, det, 1.0)
        b1 = np.where(ok, (shh * smy - smh * shy) / d, 0.0)
        b2 = np.where(ok, (smm * shy - smh * smy) / d, 0.0)
        # degenerate knots (not reached inside the allowed range): one straight line
        line_m = ~ok & (smm > tiny)
        line_h = ~ok & ~(smm > tiny) & (shh > tiny)
        b1 = np.where(line_m, smy / np.where(smm > tiny, smm, 1.0), b1)
        b2 = np.where(line_m, b1, b2)
        b2 = np.where(line_h, shy / np.where(shh > tiny, shh, 1.0), b2)
        b1 = np.where(line_h, b2, b1)
        a = ym - b1 * mm - b2 * hm
        fitted = a[:, None] + b1[:, None] * m + b2[:, None] * h
        theta = np.stack([a, b1, b2, k], axis=1)
    rss = ((Y - fitted) ** 2) @ w
    return theta, rss


GRID_KNOTS = 129
GOLDEN_STEPS = 50


def _fit_scaled(model: str, u: np.ndarray, Y: np.ndarray, use_scipy: bool, w: np.ndarray):
    """Fit ``model`` to every row of Y (B, N) in scaled units u in [0, 1],
    weights w (N,)."""
    B, N = Y.shape
    if model == "constant":
        a = Y @ w / w.sum()
        return a[:, None], ((Y - a[:, None]) ** 2) @ w
    if model == "linear":
        um = u @ w / w.sum()
        uc = u - um
        ym = Y @ w / w.sum()
        b = (Y - ym[:, None]) @ (w * uc) / ((w * uc) @ uc)
        a = ym - b * um
        return np.stack([a, b], axis=1), ((Y - a[:, None] - b[:, None] * u) ** 2) @ w
    distinct = np.unique(u)
    lo, hi = _knot_range(model, distinct)
    grid = np.unique(np.concatenate([np.linspace(lo, hi, GRID_KNOTS),
                                     distinct[(distinct >= lo) & (distinct <= hi)]]))
    rss_grid = np.empty((len(grid), B))
    step = max(1, int(4e6 // (B * N)))  # knots per vectorized chunk
    for i in range(0, len(grid), step):
        g = grid[i:i + step]
        rss_grid[i:i + len(g)] = _fixed_knot(model, u, np.tile(Y, (len(g), 1)),
                                             np.repeat(g, B), w)[1].reshape(len(g), B)
    best = rss_grid.argmin(axis=0)
    k_best = grid[best]
    a_ = grid[np.maximum(best - 1, 0)]
    b_ = grid[np.minimum(best + 1, len(grid) - 1)]
    if use_scipy:
        ks = k_best.copy()
        for j in range(B):
            if b_[j] > a_[j]:
                r = minimize_scalar(lambda kk, j=j: _fixed_knot(model, u, Y[j:j + 1], np.array([kk]), w)[1][0],
                                    bounds=(a_[j], b_[j]), method="bounded",
                                    options={"xatol": 1e-9})
                ks[j] = r.x
    else:  # vectorized golden-section search inside each replicate's bracket
        gr = (math.sqrt(5.0) - 1.0) / 2.0
        c = b_ - gr * (b_ - a_)
        d = a_ + gr * (b_ - a_)
        fc = _fixed_knot(model, u, Y, c, w)[1]
        fd = _fixed_knot(model, u, Y, d, w)[1]
        for _ in range(GOLDEN_STEPS):
            left = fc < fd
            a_ = np.where(left, a_, c)
            b_ = np.where(left, d, b_)
            new = np.where(left, b_ - gr * (b_ - a_), a_ + gr * (b_ - a_))
            fnew = _fixed_knot(model, u, Y, new, w)[1]
            c, d, fc, fd = (np.where(left, new, d), np.where(left, c, new),
                            np.where(left, fnew, fd), np.where(left, fc, fnew))
        ks = np.where(fc < fd, c, d)
    theta, rss = _fixed_knot(model, u, Y, ks, w)
    # keep the grid's knot where the local search did not improve on it
    worse = rss > rss_grid[best, np.arange(B)]
    if worse.any():
        t2, r2 = _fixed_knot(model, u, Y, k_best, w)
        theta[worse], rss[worse] = t2[worse], r2[worse]
    return theta, rss


def fit_batch(model: str, x: np.ndarray, Y: np.ndarray, use_scipy: bool = False, w=None):
    """Fit ``model`` to every row of Y (B, N) observed at service counts x (N,),
    weights ``w`` (N,; default equal, normalized to mean 1).
    Returns theta (B, p) in microseconds and services, and the weighted rss (B,)."""
    x = np.asarray(x, dtype=float)
    Y = np.atleast_2d(np.asarray(Y, dtype=float))
    w = np.ones(len(x)) if w is None else np.asarray(w, dtype=float) / np.mean(w)
    scale = float(x.max()) if x.max() > 0 else 1.0
    theta, rss = _fit_scaled(model, x / scale, Y, use_scipy, w)
    theta = theta.copy()
    for i, p in enumerate(MODELS[model].params):
        if p in ("b", "b1", "b2"):
            theta[:, i] /= scale
        elif p == "k":
            theta[:, i] *= scale
    return theta, rss


@dataclass
class Fit:
    """One model fitted to one curve's observations (``rss`` weighted; the
    criteria treat the weights as known up to one variance factor, so their
    differences between models are those of a weighted Gaussian fit).
    ``counts``: the distinct measured service counts, so that a knot is
    described by the measured counts around it."""
    model: str
    theta: np.ndarray
    rss: float
    n: int
    counts: tuple[float, ...] = ()

    @property
    def spec(self) -> ModelSpec:
        return MODELS[self.model]

    @property
    def k(self) -> int:  # parameters counted by the criteria (mean function + variance)
        return self.spec.n_params + 1

    def _loglik(self) -> float:
        rss = max(self.rss, 1e-12 * self.n)
        return -0.5 * self.n * (math.log(2 * math.pi * rss / self.n) + 1.0)

    @property
    def aic(self) -> float:
        return -2 * self._loglik() + 2 * self.k

    @property
    def aicc(self) -> float:
        den = self.n - self.k - 1
        return self.aic + 2 * self.k * (self.k + 1) / den if den > 0 else math.nan

    @property
    def bic(self) -> float:
        return -2 * self._loglik() + self.k * math.log(self.n)

    def params(self) -> dict[str, float]:
        return dict(zip(self.spec.params, map(float, self.theta)))

    def predict(self, x) -> np.ndarray:
        return predict(self.model, self.theta, np.asarray(x, dtype=float))

    def describe(self) -> str:
        return describe(self.model, self.params(), self.counts)

    def knot_gap(self) -> tuple[float, float] | None:
        """The measured counts around the knot when it lies strictly between
        two of them (where it is not measured, only extrapolated); None for a
        model without a knot or a knot at a measured count."""
        return knot_gap(self.params().get("k", math.nan), self.counts)


def knot_gap(k: float, counts) -> tuple[float, float] | None:
    """(lower, upper) measured counts around the knot ``k`` when it is inside
    a gap between them (more than half a service from either); else None."""
    if not np.isfinite(k) or not len(counts):
        return None
    c = np.asarray(counts, dtype=float)
    if np.min(np.abs(c - k)) <= 0.5:
        return None
    return bracket(k, c)


def _knot_text(k: float, counts) -> str:
    gap = knot_gap(k, counts)
    if gap is None:
        return f"{k:,.0f} services"
    return f"a bend between {gap[0]:,.0f} and {gap[1]:,.0f} services"


def describe(model: str, p: dict[str, float], counts=()) -> str:
    """The fitted curve in words, slopes in ns per service; a knot inside a
    gap between the measured ``counts`` is named by that gap, never as a
    point in it."""
    if model == "constant":
        return f"flat at {p['a']:.1f} us"
    if model == "linear":
        return f"{p['a']:.1f} us {_signed(p['b'] * 1e3)} ns/service"
    if model == "hinge":
        return f"flat at {p['a']:.1f} us up to {_knot_text(p['k'], counts)}, then {p['b'] * 1e3:+.2f} ns/service"
    return (f"{p['a']:.1f} us {_signed(p['b1'] * 1e3)} ns/service up to {_knot_text(p['k'], counts)}, "
            f"then {p['b2'] * 1e3:.2f} ns/service")


def _signed(v: float) -> str:
    return f"+ {v:.2f}" if v >= 0 else f"- {-v:.2f}"


def eligible(model: str, x: np.ndarray) -> bool:
    """Enough distinct counts to define the model and at least one residual
    degree of freedom."""
    spec = MODELS[model]
    return len(np.unique(x)) >= spec.min_distinct and len(x) >= spec.n_params + 1


def fit_models(x, y, models: Iterable[str] = MODELS, w=None) -> dict[str, Fit]:
    """Point estimates of every eligible model (knots refined with scipy),
    weights ``w`` (default equal; :func:`spread_weights` for a curve)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    counts = tuple(float(v) for v in np.unique(x))
    out = {}
    for m in models:
        if eligible(m, x):
            theta, rss = fit_batch(m, x, y[None, :], use_scipy=True, w=w)
            out[m] = Fit(m, theta[0], float(rss[0]), len(x), counts)
    return out


def select_model(fits: dict[str, Fit], criterion: str = "aicc") -> tuple[str, str, dict[str, float]]:
    """(chosen model, criterion used, weights; NaN for models not compared).

    With AICc only models for which it is defined compete (at least two
    observations more than parameters), so a knot is never claimed from a
    handful of points.  If fewer than two models qualify, constant and linear
    are compared by AIC."""
    if criterion not in ("aicc", "aic", "bic"):
        raise UsageError(f"criterion must be aicc, aic or bic, got {criterion!r}")
    used, cands = criterion, dict(fits)
    if criterion == "aicc":
        cands = {m: f for m, f in fits.items() if not math.isnan(f.aicc)}
        if len(cands) < 2:
            used = "aic"
            cands = {m: f for m, f in fits.items() if m in ("constant", "linear")}
    score = {m: getattr(f, used) for m, f in cands.items()}
    best = min(score.values())
    w = {m: math.exp(-0.5 * (s - best)) for m, s in score.items()}
    tot = sum(w.values())
    order = list(MODELS)
    chosen = min(score, key=lambda m: (score[m], order.index(m)))
    return chosen, used, {m: w[m] / tot if m in w else math.nan for m in fits}


#: the criterion named in tables when the model is chosen with rounds as clusters
CV_ROUNDS = "cv-rounds"
#: a bend predicting every left-out round at least this many times better (mean
#: squared error) than the model chosen so far is kept without the t-test
BEND_GAIN = 2.0
#: ... and when the line replaces a constant so chosen because its rise is
#: significant (:class:`SummaryLine`)
RISE_ROUNDS = "rise-rounds"


def round_refits(model: str, x: np.ndarray, y: np.ndarray, fit: Fit, r_obs: np.ndarray, all_rounds,
                 weighted: bool = True) -> np.ndarray:
    """Model ``model`` refitted with each round of the run left out in turn
    (with ``weighted``, its weights recomputed from the rounds kept: the whole
    estimator is repeated); a round the curve lacks leaves ``fit`` whole."""
    reps = []
    for r in all_rounds:
        keep = r_obs != r
        if keep.all() or not eligible(model, x[keep]):
            reps.append(fit.theta)
        else:
            w = spread_weights(x[keep], y[keep]) if weighted else None
            reps.append(fit_batch(model, x[keep], y[keep][None, :], use_scipy=True, w=w)[0][0])
    return np.array(reps)


@dataclass(frozen=True)
class SummaryLine:
    """The equal-weight straight line of a curve and its delete-one-round
    refits.  Beside another chosen model it summarizes the curve's rise (a
    weighted line would follow the quiet small counts); its slope's interval
    is the O(n) claim's instrument, and :func:`select_by_rounds` never keeps
    a curve flat whose line ``rises``."""
    fit: Fit
    reps: np.ndarray
    rises: bool

    @classmethod
    def of(cls, x, y, rounds, all_rounds, level: float = 0.95) -> "SummaryLine":
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        line = fit_models(x, y, ("linear",))["linear"]
        reps = round_refits("linear", x, y, line, np.asarray(rounds), all_rounds, weighted=False)
        # degrees of freedom from the curve's own rounds (a mode of mode_rounds has more
        # than the run's other modes; a round a curve lacks leaves its refit whole)
        own = len(np.unique(np.asarray(rounds)))
        lo, hi = interval(line.params()["b"], reps[:, 1], "rounds", level, max(own - 1, 1))
        # a curve measured in one round has no round-to-round spread: its refits are all
        # the one fit, the interval has no width, and it can show no rise
        several = own >= 2
        return cls(line, reps, bool(several and (lo > 0 or hi < 0)))


def round_cv_errors(x, y, rounds, models: Iterable[str]) -> dict[str, np.ndarray]:
    """Per model, one error per round: the model fitted to the other rounds,
    the weighted mean squared error of its prediction of the left-out round's
    observations, after removing that round's own weighted mean residual (a
    round's level is its drift, which no model predicts: the models differ in
    shape, and the shape is what is scored).  Weights: the whole curve's
    :func:`spread_weights` (the same for every model and fold: a fold's own
    variances, from one or two rounds, would be noise).  NaN where a model
    cannot be fitted without that round."""
    x, y, rounds = (np.asarray(v, dtype=float) for v in (x, y, rounds))
    w_all = spread_weights(x, y)
    errs: dict[str, list[float]] = {m: [] for m in models}
    for r in np.unique(rounds):
        test = rounds == r
        train = ~test
        wt = w_all[train]
        for m in errs:
            if not train.any() or not eligible(m, x[train]):
                errs[m].append(math.nan)
                continue
            theta = fit_batch(m, x[train], y[train][None, :], w=wt)[0][0]
            resid = y[test] - predict(m, theta, x[test])
            resid -= np.average(resid, weights=w_all[test])   # the round's own level: drift, no model's
            errs[m].append(float(np.average(resid ** 2, weights=w_all[test])))
    return {m: np.array(e) for m, e in errs.items()}


def select_by_rounds(fits: dict[str, Fit], x, y, rounds, level: float = 0.95,
                     line: SummaryLine | None = None) -> tuple[str, str, dict[str, float], dict[str, float]]:
    """(chosen model, criterion, weights, deltas), the rounds as clusters.

    A round's points share its drift (the machine, its caches, a neighbour),
    so they are one cluster, not independent observations: every model is
    fitted with one round left out in turn and scored on predicting that
    round (:func:`round_cv_errors`).  Forward selection: start from the
    constant; take the line if the rounds' own slopes (:func:`round_slopes`)
    differ from 0 in a two-sided t-test at ``level`` (rounds - 1 degrees of
    freedom), or if its log error is lower than the constant's in a one-sided
    paired t-test over the rounds; then a bend (hinge or segmented, the
    lower of those that pass) if it beats the model chosen so far the same
    way.  A shape is kept only when it predicts unseen rounds better in a way
    the rounds agree on; log errors make the test scale-free (a round with
    large errors for every model does not decide it).  The two bends are
    tried at once, each at ``1 - (1 - level) / 2`` (Bonferroni); a bend that
    predicts *every* left-out round at least :data:`BEND_GAIN` times better
    is kept too.  A jump between two counts, which a bend only approximates,
    gains very unevenly from round to round: iptables-legacy's http-new on a
    Xeon host (38 us to 65 us at 5,000 services, 200 us at 7,500) predicted
    its rounds 4x, 17x and 57x better with a bend, a t of 3.8 over 3 rounds
    against the 4.3 asked, and its line started at -2.3 us.  ``deltas``: each
    model's mean log error ratio to the chosen one (0.1: about 10% larger
    error).  Akaike weights are not defined (NaN).  With fewer than two
    rounds, or fewer than two models that every fold can fit,
    :func:`select_model` (AICc) decides.

    ``line``, the curve's equal-weight line: a curve this choice would keep
    flat while that line's rise is significant (``line.rises``, the O(n)
    claim's instrument) gets the line, criterion :data:`RISE_ROUNDS`.  A
    round that scatters the rounds' own slopes (a slowed machine) can keep
    the cross-validated choice at the constant while the rise over the
    measured range is clear; the curve is never reported flat then."""
    errs = round_cv_errors(x, y, rounds, list(fits)) if len(np.unique(rounds)) >= 2 else {}
    cands = {m: e for m, e in errs.items() if len(e) >= 2 and np.isfinite(e).all()}
    if len(cands) < 2 or "constant" not in cands:
        chosen, by, weights = select_model(fits)
        used = by
        if chosen == "constant" and "linear" in fits and line is not None and line.rises:
            chosen, used = "linear", RISE_ROUNDS   # the rule holds on this path too
        best = getattr(fits[chosen], by)
        return chosen, used, weights, {m: getattr(f, by) - best if not math.isnan(weights[m]) else math.nan
                                       for m, f in fits.items()}
    tiny = 1e-12 * max(float(np.mean(e)) for e in cands.values()) + 1e-300
    logs = {m: np.log(np.maximum(e, tiny)) for m, e in cands.items()}
    df = len(logs["constant"]) - 1
    chosen = "constant"
    # the line against the constant: the rounds' own slopes agree on a slope other than 0
    slopes = round_slopes(x, y, rounds)
    if "linear" in logs and len(slopes) >= 2 and \
            abs(_paired_t(slopes)) > float(student_t.ppf(1 - (1 - level) / 2, len(slopes) - 1)):
        chosen = "linear"
    for step, gain in ((("linear",), math.inf), (("hinge", "segmented"), BEND_GAIN)):
        tried = [m for m in step if m in logs and m != chosen]
        crit = float(student_t.ppf(1 - (1 - level) / max(len(tried), 1), df))   # Bonferroni over a step's models
        better = [m for m in tried if _paired_t(logs[chosen] - logs[m]) > crit
                  or bool(np.all(logs[chosen] - logs[m] > math.log(gain)))]
        if better:
            chosen = min(better, key=lambda m: float(logs[m].mean()))
    used = CV_ROUNDS
    if chosen == "constant" and "linear" in fits and line is not None and line.rises:
        chosen, used = "linear", RISE_ROUNDS
    deltas = {m: float((logs[m] - logs[chosen]).mean()) if m in logs and chosen in logs else math.nan
              for m in fits}
    return chosen, used, {m: math.nan for m in fits}, deltas


def _paired_t(d: np.ndarray) -> float:
    """Student's t of the mean of paired differences (inf when they agree exactly and are positive)."""
    se = float(np.std(d, ddof=1) / math.sqrt(len(d)))
    return float(d.mean() / se) if se > 0 else (math.inf if d.mean() > 0 else 0.0)


def round_slopes(x, y, rounds) -> np.ndarray:
    """Each round's own least-squares slope of y on x (rounds with at least
    two counts): the rounds as clusters, one slope each."""
    x, y, rounds = (np.asarray(a) for a in (x, y, rounds))
    out = []
    for r in np.unique(rounds):
        m = rounds == r
        if len(np.unique(x[m])) >= 2:
            out.append(float(np.polyfit(x[m].astype(float), y[m].astype(float), 1)[0]))
    return np.asarray(out)

"""The models fitted to a curve, each a continuous piecewise-linear function
of the service count n:

  constant    a
  linear      a + b n
  hinge       a + b (n - k)+                     flat, then linear from the knot k
  segmented   a + b1 min(n, k) + b2 (n - k)+     two slopes, joined at the knot k

Least squares (Gaussian errors, unknown variance); the knot is profiled over
a grid of candidate knots and refined (scipy's bounded scalar minimizer for
the estimate, a vectorized golden-section search for replicates).  The
model is chosen by AICc (AIC when AICc is undefined for a candidate).
Pure array functions: no run, no curve identity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy.optimize import minimize_scalar

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
    # hinge: anywhere in the measured range (at the ends it is linear or flat);
    # segmented: each segment keeps at least two distinct counts
    return (distinct[0], distinct[-1]) if model == "hinge" else (distinct[1], distinct[-2])


def _fixed_knot(model: str, u: np.ndarray, Y: np.ndarray, k: np.ndarray):
    """Least squares of ``model`` with its knot fixed at ``k`` (B,), for every
    row of Y (B, N) at once.  Scaled units.  Returns theta (B, p), rss (B,)."""
    ym = Y.mean(axis=1)
    yc = Y - ym[:, None]
    h = np.maximum(u[None, :] - k[:, None], 0.0)
    hm = h.mean(axis=1)
    hc = h - hm[:, None]
    shh = (hc * hc).sum(axis=1)
    shy = (hc * yc).sum(axis=1)
    tiny = 1e-12 * len(u)
    if model == "hinge":
        b = np.where(shh > tiny, shy / np.where(shh > tiny, shh, 1.0), 0.0)
        a = ym - b * hm
        fitted = a[:, None] + b[:, None] * h
        theta = np.stack([a, b, k], axis=1)
    else:
        m = np.minimum(u[None, :], k[:, None])
        mm = m.mean(axis=1)
        mc = m - mm[:, None]
        smm = (mc * mc).sum(axis=1)
        smh = (mc * hc).sum(axis=1)
        smy = (mc * yc).sum(axis=1)
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
    rss = ((Y - fitted) ** 2).sum(axis=1)
    return theta, rss


GRID_KNOTS = 129
GOLDEN_STEPS = 50


def _fit_scaled(model: str, u: np.ndarray, Y: np.ndarray, use_scipy: bool):
    """Fit ``model`` to every row of Y (B, N) in scaled units u in [0, 1]."""
    B, N = Y.shape
    if model == "constant":
        a = Y.mean(axis=1)
        return a[:, None], ((Y - a[:, None]) ** 2).sum(axis=1)
    if model == "linear":
        um = u.mean()
        uc = u - um
        ym = Y.mean(axis=1)
        b = (Y - ym[:, None]) @ uc / (uc @ uc)
        a = ym - b * um
        return np.stack([a, b], axis=1), ((Y - a[:, None] - b[:, None] * u) ** 2).sum(axis=1)
    distinct = np.unique(u)
    lo, hi = _knot_range(model, distinct)
    grid = np.unique(np.concatenate([np.linspace(lo, hi, GRID_KNOTS),
                                     distinct[(distinct >= lo) & (distinct <= hi)]]))
    rss_grid = np.empty((len(grid), B))
    step = max(1, int(4e6 // (B * N)))  # knots per vectorized chunk
    for i in range(0, len(grid), step):
        g = grid[i:i + step]
        rss_grid[i:i + len(g)] = _fixed_knot(model, u, np.tile(Y, (len(g), 1)),
                                             np.repeat(g, B))[1].reshape(len(g), B)
    best = rss_grid.argmin(axis=0)
    k_best = grid[best]
    a_ = grid[np.maximum(best - 1, 0)]
    b_ = grid[np.minimum(best + 1, len(grid) - 1)]
    if use_scipy:
        ks = k_best.copy()
        for j in range(B):
            if b_[j] > a_[j]:
                r = minimize_scalar(lambda kk, j=j: _fixed_knot(model, u, Y[j:j + 1], np.array([kk]))[1][0],
                                    bounds=(a_[j], b_[j]), method="bounded",
                                    options={"xatol": 1e-9})
                ks[j] = r.x
    else:  # vectorized golden-section search inside each replicate's bracket
        gr = (math.sqrt(5.0) - 1.0) / 2.0
        c = b_ - gr * (b_ - a_)
        d = a_ + gr * (b_ - a_)
        fc = _fixed_knot(model, u, Y, c)[1]
        fd = _fixed_knot(model, u, Y, d)[1]
        for _ in range(GOLDEN_STEPS):
            left = fc < fd
            a_ = np.where(left, a_, c)
            b_ = np.where(left, d, b_)
            new = np.where(left, b_ - gr * (b_ - a_), a_ + gr * (b_ - a_))
            fnew = _fixed_knot(model, u, Y, new)[1]
            c, d, fc, fd = (np.where(left, new, d), np.where(left, c, new),
                            np.where(left, fnew, fd), np.where(left, fc, fnew))
        ks = np.where(fc < fd, c, d)
    theta, rss = _fixed_knot(model, u, Y, ks)
    # keep the grid's knot where the local search did not improve on it
    worse = rss > rss_grid[best, np.arange(B)]
    if worse.any():
        t2, r2 = _fixed_knot(model, u, Y, k_best)
        theta[worse], rss[worse] = t2[worse], r2[worse]
    return theta, rss


def fit_batch(model: str, x: np.ndarray, Y: np.ndarray, use_scipy: bool = False):
    """Fit ``model`` to every row of Y (B, N) observed at service counts x (N,).
    Returns theta (B, p) in microseconds and services, and rss (B,)."""
    x = np.asarray(x, dtype=float)
    Y = np.atleast_2d(np.asarray(Y, dtype=float))
    scale = float(x.max()) if x.max() > 0 else 1.0
    theta, rss = _fit_scaled(model, x / scale, Y, use_scipy)
    theta = theta.copy()
    for i, p in enumerate(MODELS[model].params):
        if p in ("b", "b1", "b2"):
            theta[:, i] /= scale
        elif p == "k":
            theta[:, i] *= scale
    return theta, rss


@dataclass
class Fit:
    """One model fitted to one curve's observations."""
    model: str
    theta: np.ndarray
    rss: float
    n: int

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
        return describe(self.model, self.params())


def describe(model: str, p: dict[str, float]) -> str:
    """The fitted curve in words, slopes in ns per service."""
    if model == "constant":
        return f"flat at {p['a']:.1f} us"
    if model == "linear":
        return f"{p['a']:.1f} us {_signed(p['b'] * 1e3)} ns/service"
    if model == "hinge":
        return f"flat at {p['a']:.1f} us up to {p['k']:,.0f} services, then {p['b'] * 1e3:+.2f} ns/service"
    return (f"{p['a']:.1f} us {_signed(p['b1'] * 1e3)} ns/service up to {p['k']:,.0f} services, "
            f"then {p['b2'] * 1e3:.2f} ns/service")


def _signed(v: float) -> str:
    return f"+ {v:.2f}" if v >= 0 else f"- {-v:.2f}"


def eligible(model: str, x: np.ndarray) -> bool:
    """Enough distinct counts to define the model and at least one residual
    degree of freedom."""
    spec = MODELS[model]
    return len(np.unique(x)) >= spec.min_distinct and len(x) >= spec.n_params + 1


def fit_models(x, y, models: Iterable[str] = MODELS) -> dict[str, Fit]:
    """Point estimates of every eligible model (knots refined with scipy)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    out = {}
    for m in models:
        if eligible(m, x):
            theta, rss = fit_batch(m, x, y[None, :], use_scipy=True)
            out[m] = Fit(m, theta[0], float(rss[0]), len(x))
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

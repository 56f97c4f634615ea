"""Analysis of a run directory: per-point statistics, fitted curves, intervals
(over rounds: the delete-one-round jackknife; one-round runs: a bootstrap)
and crossover points.

Pure: reads the files of a run, computes, returns tables.  Nothing here
touches the kernel or writes outside the directory it is given.

The unit of observation is a *point* (one mode, service count, target, probe
kind and round): its statistic (p50, p90, p99 of the probes' RTT) is one
observation of the curve ``statistic(services)`` of its mode.  Curves are
fitted with four models, each a continuous piecewise-linear function of the
service count n:

  constant    a
  linear      a + b n
  hinge       a + b (n - k)+                     flat, then linear from the knot k
  segmented   a + b1 min(n, k) + b2 (n - k)+     two slopes, joined at the knot k

Least squares (Gaussian errors, unknown variance); the knot is profiled over
a grid of candidate knots and refined (scipy's bounded scalar minimizer for
the estimate, a vectorized golden-section search for bootstrap replicates).
The model is chosen by AICc (AIC when AICc is undefined for a candidate).

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
them (:data:`MIN_TAIL_PROBES`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from itertools import combinations, permutations
from typing import Iterable

import numpy as np
import pandas as pd
from scipy.optimize import brentq, minimize_scalar

from labkit.analysis import claims as claims_mod
from labkit.analysis.intervals import MAX_BRACKET, bracket, interval, jackknife_se, percentile_ci, resolved
from labkit.core.errors import UsageError
from labkit.core.modes import CALIBRATORS, INTERPRETED_TAG, interpreted
from labkit.rundir import schema
from labkit.rundir.store import read_json, read_table, sha256_file

STATS: dict[str, float] = {"p50": 50.0, "p90": 90.0, "p99": 99.0}
#: answered probes a point needs for a statistic to be estimated from it: at
#: least five probes beyond the quantile (p99 from 300 probes would be about
#: the 3rd-largest value, an outlier's figure)
MIN_TAIL_PROBES: dict[str, int] = {"p50": 1, "p90": 50, "p99": 500}
RESAMPLE = ("rounds", "hierarchical", "probes")
TARGET_ORDER = ("last", "random", "middle", "first", "none")
#: the columns the analysis needs: all but those added since schema 1 (a run of
#: schema 1, like the reference runs, lacks them)
LATER_COLUMNS = {"block", "ct_new", "variant", "pacing", "stack_pkts", "redirected_pkts"}
SAMPLE_COLUMNS = [c for c in schema.SAMPLE_COLUMNS if c not in LATER_COLUMNS]
POINT_COLUMNS = [c for c in schema.POINT_COLUMNS if c not in LATER_COLUMNS]
RAW_FILES = (schema.META, schema.SAMPLES, schema.POINTS)
OUTPUT_FILES = schema.OUTPUT_FILES


# ---------------------------------------------------------------------------
# loading

@dataclass
class Run:
    """A run directory as read from disk.  ``files`` lists the raw data files
    with their sizes and sha256 checksums (taken when loaded)."""
    path: str
    meta: dict
    samples: pd.DataFrame
    points: pd.DataFrame
    files: pd.DataFrame
    series_order: list[str]

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id", ""))


def _need_columns(df: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise UsageError(f"{what} lacks column(s) {', '.join(missing)}")


def _table(run_dir: str, name: str) -> pd.DataFrame:
    path = os.path.join(run_dir, name)
    try:
        return read_table(path)
    except PermissionError:
        raise UsageError(f"{path} cannot be read (permission denied)") from None
    except Exception as exc:  # pyarrow raises several kinds for a damaged file
        raise UsageError(f"{path} is not a readable parquet table ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'damaged'})") from None


def find_runs(*bases: str) -> list[str]:
    """Run directories (holding a meta.json) directly under each of ``bases``
    and one level down (runs/, data/reference/), sorted."""
    found = set()
    for base in bases:
        for sub in ("", "runs", os.path.join("data", "reference")):
            d = os.path.join(base, sub)
            if os.path.isdir(d):
                for name in os.listdir(d):
                    if os.path.isfile(os.path.join(d, name, schema.META)):
                        found.add(os.path.relpath(os.path.join(d, name)))
    return sorted(found)


def require_run_dir(run_dir: str | None) -> str:
    """``run_dir`` itself, or a UsageError that says to set it and lists the
    runs it can see (from the working directory and its parent)."""
    if run_dir:
        return run_dir
    runs = find_runs(os.getcwd(), os.path.dirname(os.getcwd()))
    listing = ("; runs found: " + ", ".join(runs[:20]) + (" ..." if len(runs) > 20 else "")) if runs \
        else "; no run directories found under ., runs/ or data/reference/"
    raise UsageError("set run_dir to a run directory (papermill -p run_dir DIR, or edit the "
                     "parameters cell)" + listing)


def load_run(run_dir: str) -> Run:
    """Read ``samples.parquet``, ``points.parquet`` and ``meta.json`` of a run
    directory, check their schema, checksum them.  Raises UsageError on a
    directory that is not a run."""
    run_dir = os.path.abspath(run_dir)
    if not os.path.isdir(run_dir):
        raise UsageError(f"{run_dir} is not a directory")
    for name in RAW_FILES:
        if not os.path.isfile(os.path.join(run_dir, name)):
            raise UsageError(f"{run_dir} is not a labkit run: {name} is missing")
    try:
        meta = read_json(os.path.join(run_dir, schema.META))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{run_dir}/{schema.META} is not valid JSON: {exc}") from None
    except PermissionError:
        raise UsageError(f"{run_dir}/{schema.META} cannot be read (permission denied)") from None
    if not isinstance(meta, dict):
        raise UsageError(f"{run_dir}/{schema.META} is not a labkit meta file (it holds a "
                         f"{type(meta).__name__})")
    samples = _table(run_dir, schema.SAMPLES)
    points = _table(run_dir, schema.POINTS)
    _need_columns(samples, SAMPLE_COLUMNS, "samples.parquet")
    _need_columns(points, POINT_COLUMNS, "points.parquet")
    if not len(points):
        raise UsageError(f"{run_dir} holds no measured points yet")
    samples = samples.astype({"point_id": "int64", "services": "int64", "rtt_us": "float64"})
    points = points.astype({"point_id": "int64", "services": "int64", "valid": "bool"})
    points["reason"] = points["reason"].fillna("").astype(str)
    for df in (samples, points):
        # paced probes are curves of their own: "syn @1000/s" beside back-to-back "syn"
        pacing = df["pacing"].astype(float) if "pacing" in df.columns else pd.Series(0.0, index=df.index)
        df["pacing"] = pacing
        df["probe"] = df["probe"].astype(str) + np.where(
            pacing > 0, " @" + pacing.map("{:g}".format) + "/s", "")
    # one curve per mode; if a run mixes kernels, one per (mode, kernel); a mode that ran
    # in the BPF interpreter (eBPF in user-mode Linux: no JIT) says so in its name, so
    # every table and figure of it does
    several = points["kernel"].nunique() > 1
    uml = uml_releases({**meta, "guests": [*(meta.get("guests") or []), _guest_facts(run_dir)]})
    def series_name(m: str, k: str) -> str:
        tags = ([k] if several else []) + ([INTERPRETED_TAG] if interpreted(m, "uml" if k in uml else "") else [])
        return m + (f" [{', '.join(tags)}]" if tags else "")
    names = {(m, k): series_name(m, k) for m, k in points[["mode", "kernel"]].astype(str).drop_duplicates().itertuples(
        index=False)}
    for df in (samples, points):   # one name per (mode, kernel), mapped onto the rows
        key = pd.MultiIndex.from_frame(df[["mode", "kernel"]].astype(str))
        df["series"] = pd.Series(names).reindex(key).to_numpy()
    wanted = list((meta.get("params") or {}).get("modes") or [])
    present = list(dict.fromkeys(points.sort_values("point_id")["series"]))
    order = [s for m in wanted for s in present if s == m or s.startswith(m + " [")]
    order += sorted(s for s in present if s not in order)
    files = []
    for name in sorted(os.listdir(run_dir)):
        p = os.path.join(run_dir, name)
        if os.path.isfile(p) and name not in OUTPUT_FILES and not name.startswith("."):
            files.append({"file": name, "bytes": os.path.getsize(p), "sha256": sha256_file(p)})
    return Run(run_dir, meta, samples, points, pd.DataFrame(files), order)


def _guest_facts(run_dir: str) -> dict:
    """``guest.json`` of a run (written before its guest boots), or {}."""
    try:
        facts = read_json(os.path.join(run_dir, schema.GUEST_FACTS))
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}


def uml_releases(meta: dict) -> set[str]:
    """The kernel releases of the user-mode Linux guests a run was measured in."""
    guests = [g for g in [meta.get("guest"), *(meta.get("guests") or [])] if isinstance(g, dict)]
    return {str(g.get("kernel_release")) for g in guests if g.get("backend") == "uml"}


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
    return pts.sort_values(["series", "target", "probe", "services", "round"]).reset_index(drop=True), rtts


# ---------------------------------------------------------------------------
# models

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


# ---------------------------------------------------------------------------
# bootstrap

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
    """One statistic of one series (mode) against service count, fitted."""
    series: str
    target: str
    probe: str
    stat: str
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

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.series, self.target, self.probe, self.stat)

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

    def predict(self, x, model: str | None = None) -> np.ndarray:
        return self.fits[model or self.chosen].predict(x)

    def boot_predict(self, x, model: str | None = None) -> np.ndarray:
        m = model or self.chosen
        return predict(m, self.boot[m], np.asarray(x, dtype=float))

    def band(self, x, level: float = 0.95, model: str | None = None):
        return interval(self.predict(x, model), self.boot_predict(x, model), self.method, level)

    def ci(self, est, reps, level: float = 0.95):
        """Interval of a statistic of this curve from its replicates."""
        return interval(est, reps, self.method, level)


def fit_curve(key: tuple[str, str, str, str], x, y, Yb=None, point_ids=None,
              criterion: str = "aicc", rounds=None, all_rounds=None) -> Curve:
    """Fit all eligible models and choose one; then the replicates of the
    chosen one and of the linear one (for the summary slope).

    With ``rounds`` (each observation's round) and ``all_rounds`` (the run's,
    at least two): delete-one-round refits, one per round of the run (a round
    the curve lacks leaves it whole).  Otherwise ``Yb`` (B, N): bootstrap
    replicates of the observations, each refitted."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    fits = fit_models(x, y)
    if "linear" not in fits and len(np.unique(x)) == 2:
        # two observations: nothing to choose from; the line through them
        # describes the data (a constant would claim "flat" without evidence)
        theta, rss = fit_batch("linear", x, y[None, :])
        fits["linear"] = Fit("linear", theta[0], float(rss[0]), len(x))
        chosen, used, weights = "linear", "none", {m: math.nan for m in fits}
    else:
        chosen, used, weights = select_model(fits, criterion)
    jack = rounds is not None and all_rounds is not None and len(all_rounds) >= 2
    c = Curve(*key, x=x, y=y, point_ids=np.asarray(point_ids if point_ids is not None else []),
              fits=fits, chosen=chosen, criterion=used, weights=weights,
              method="rounds" if jack else "bootstrap",
              rounds=np.asarray(all_rounds if jack else []))
    for m in {chosen, "linear"} & set(fits):
        if jack:
            r_obs = np.asarray(rounds)
            reps = []
            for r in all_rounds:
                keep = r_obs != r
                if keep.all() or not eligible(m, x[keep]):
                    reps.append(fits[m].theta)
                else:
                    reps.append(fit_batch(m, x[keep], y[keep][None, :], use_scipy=True)[0][0])
            c.boot[m] = np.array(reps)
        else:
            if Yb is None:
                raise UsageError("fit_curve: bootstrap replicates or rounds are needed")
            c.boot[m] = fit_batch(m, x, Yb)[0]
    return c


# ---------------------------------------------------------------------------
# crossovers (pure array functions)

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
    return x, pa - pb, ba[:B] - bb[:B]


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
        cl, ch = interval(n_star, reps, "rounds", level)
        return float(max(cl, lo)), float(min(ch, hi)), frac, ""
    if not found.any():
        return math.nan, math.nan, frac, ""
    cl, ch = interval(n_star, reps[found], "bootstrap", level)
    note = f"{frac:.0%} of bootstrap fits" if frac < 0.995 else ""
    return float(cl), float(ch), frac, note


def _resolution(row: dict, ca: Curve, cb: Curve) -> None:
    """Which measured counts bracket the estimate, and whether they are close
    enough (:data:`MAX_BRACKET`) for it to rest on measurements."""
    if np.isnan(row["n_star"]):
        return
    bl, bh = bracket(row["n_star"], np.union1d(ca.x, cb.x))
    row.update(bracket_lo=bl, bracket_hi=bh, resolved=resolved(bl, bh))


def _ci_text(row: dict, level: float, note: str) -> str:
    if np.isnan(row["ci_low"]):
        return f" ({note})" if note else ""
    txt = f" ({level:.0%} CI {_fmt_n(row['ci_low'])}\u2013{_fmt_n(row['ci_high'])}"
    return txt + (f", {note})" if note else ")")


def _res_text(row: dict) -> str:
    if row.get("resolved") is False:
        return (f" It lies between the measured counts {_fmt_n(row['bracket_lo'])} and "
                f"{_fmt_n(row['bracket_hi'])}, too far apart to locate it (an unmeasured stretch).")
    return ""


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
    who = f"{ca.stat} of {ca.series} vs {cb.series} ({ca.target} target, {ca.probe})"
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
        below, above = (ca.series, cb.series) if d[0] < 0 else (cb.series, ca.series)
        row.update(n_star=n_star, n_crossings=int(count), faster_below=below, faster_above=above)
        cl, ch, frac, note = _located(ca, cb, n_star, bx, lo, hi, level)
        row.update(ci_low=cl, ci_high=ch, boot_frac=frac)
        _resolution(row, ca, cb)
        txt = f"{who}: the curves cross at {_fmt_n(n_star)} services" + _ci_text(row, level, note)
        txt += f": below it {below} is faster, above it {above}."
        if count > 1:
            txt += f" The fitted curves change order {count} times; the first is given."
        row["finding"] = txt + _res_text(row)
        return row
    # no sign change: the side of the largest gap (d may touch 0 at an end: p50s that
    # fall on the same clock step)
    winner = ca.series if d[int(np.argmax(np.abs(d)))] < 0 else cb.series
    gap = np.abs(d)
    row.update(n_crossings=0, faster_below=winner, faster_above=winner)
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
            f"{ca.series} vs {cb.series}: no baseline for the budget, no budget crossover."
        return row
    x, d, db = _on_grid(ca, cb, lo, hi, grid)
    row.update(diff_lo_us=float(d[0]), diff_hi_us=float(d[-1]))
    n_star = float(first_exceed(x, d - budget_us))
    bx = first_exceed(x, db - budget_us)
    frac = float(np.mean(~np.isnan(bx)))
    row["boot_frac"] = frac
    who = f"{ca.stat}, {ca.target} target, {ca.probe}"
    if np.isnan(n_star):
        row["finding"] = (f"{ca.series} never exceeds {cb.series} by {budget_text} in "
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
    _resolution(row, ca, cb)
    txt = (f"{ca.series} exceeds {cb.series} by {budget_text} "
           + (f"already at {_fmt_n(lo)} services, the smallest measured count" if at_start
              else f"from {_fmt_n(n_star)} services"))
    if not at_start or (np.isfinite(ch) and ch > lo) or note:
        txt += _ci_text(row, level, note)
    row["finding"] = txt + f" ({who})." + _res_text(row)
    return row


def _no_range(ca: Curve, cb: Curve, lo: float, hi: float) -> str:
    if lo == hi:
        return (f"{ca.series} vs {cb.series} ({ca.stat}, {ca.target} target): measured at one "
                f"common service count only ({_fmt_n(lo)}); no crossover can be located.")
    return (f"{ca.series} vs {cb.series} ({ca.stat}, {ca.target} target): the measured ranges of "
            "service counts do not overlap; no crossover can be located.")


def _row_base(ca: Curve, cb: Curve, kind: str, lo: float, hi: float) -> dict:
    return dict(mode_a=ca.series, mode_b=cb.series, target=ca.target, probe=ca.probe,
                statistic=ca.stat, kind=kind, budget_us=np.nan, n_star=np.nan, ci_low=np.nan,
                ci_high=np.nan, boot_frac=np.nan, n_crossings=np.nan, faster_below="",
                faster_above="", model_a=ca.chosen, model_b=cb.chosen, range_lo=lo, range_hi=hi,
                diff_lo_us=np.nan, diff_hi_us=np.nan, method=ca.method, bracket_lo=np.nan,
                bracket_hi=np.nan, resolved=np.nan, baseline="", finding="")


# ---------------------------------------------------------------------------
# the whole analysis

CROSSOVER_COLUMNS = ["mode_a", "mode_b", "target", "probe", "statistic", "kind", "budget_us",
                     "n_star", "ci_low", "ci_high", "boot_frac", "n_crossings", "faster_below",
                     "faster_above", "model_a", "model_b", "range_lo", "range_hi", "diff_lo_us",
                     "diff_hi_us", "method", "bracket_lo", "bracket_hi", "resolved", "baseline", "finding"]
NUMERIC_CROSSOVER_COLUMNS = ("budget_us", "n_star", "ci_low", "ci_high", "boot_frac", "n_crossings", "range_lo",
                             "range_hi", "diff_lo_us", "diff_hi_us", "bracket_lo", "bracket_hi")


@dataclass
class Analysis:
    run: Run
    points: pd.DataFrame
    curves: dict[tuple[str, str, str, str], Curve]
    summary: pd.DataFrame
    fits: pd.DataFrame
    crossover: pd.DataFrame
    baselines: pd.DataFrame
    settings: dict
    checks: dict
    #: per series and probe: the 0-service points (empty table, no NAT)
    empty: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: the seed's claims with verdicts (filled by labkit.analysis.claims)
    claims: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: curves not fitted, and why (a tail statistic with too few probes)
    skipped: list[str] = field(default_factory=list)

    @property
    def series(self) -> list[str]:
        have = {k[0] for k in self.curves}
        return [s for s in self.run.series_order if s in have]

    @property
    def targets(self) -> list[str]:
        have = list(dict.fromkeys(self.points["target"]))
        return [t for t in TARGET_ORDER if t in have] + sorted(t for t in have if t not in TARGET_ORDER)

    @property
    def probes(self) -> list[str]:
        have = list(dict.fromkeys(self.points["probe"]))
        return (["syn"] if "syn" in have else []) + sorted(p for p in have if p != "syn")

    @property
    def headline_probe(self) -> str:
        """The probe kind the headline uses: back-to-back SYNs when measured."""
        return self.probes[0]

    @property
    def headline_target(self) -> str:
        with_curves = {k[1] for k in self.curves}
        return next((t for t in self.targets if t in with_curves), self.targets[0])

    def write(self, out_dir: str) -> dict[str, str]:
        """Write crossover.csv, fits.csv and summary.csv into ``out_dir``."""
        os.makedirs(out_dir, exist_ok=True)
        paths = {}
        for name, df in (("crossover.csv", self.crossover), ("fits.csv", self.fits),
                         ("summary.csv", self.summary), ("claims.csv", self.claims)):
            p = os.path.join(out_dir, name)
            tmp = p + ".tmp"
            df.to_csv(tmp, index=False, float_format="%.6g")
            os.replace(tmp, p)
            paths[name] = p
        return paths

    def headline_findings(self, stats: Iterable[str] = ("p50", "p99"),
                          budget_stats: Iterable[str] = ("p50",)) -> list[str]:
        """One sentence per finding for the summary, for the headline target:
        every fitted-curve comparison of ``stats``, and every budget crossover
        of ``budget_stats`` that occurs inside the measured range."""
        cx = self.crossover
        cx = cx[(cx["target"] == self.headline_target) & (cx["probe"] == self.headline_probe)
                & (cx["resolved"] != False)]  # noqa: E712  (NaN: no estimate to resolve)
        fit = cx[(cx["kind"] == "fit") & cx["statistic"].isin(list(stats))]
        # a relative budget is a finding only when it is a fraction of a measured request
        bud = cx[(cx["kind"] != "fit") & cx["statistic"].isin(list(budget_stats))
                 & (cx["n_star"] > cx["range_lo"])
                 & ((cx["kind"] == "budget-abs") | cx["baseline"].astype(str).str.startswith("http-new"))]
        return list(fit["finding"]) + list(bud["finding"])


def _budget_baseline(pts: pd.DataFrame, rtts: dict[int, np.ndarray], series: str, target: str,
                     probe: str, curves: dict) -> tuple[float, str]:
    """What one request costs on ``series``' path, for the relative budget:
    the median of its ``http-new`` requests (a real client and server over a
    new connection) at its smallest count with services, where the run has
    them; else the fitted p50 of the curve itself at its smallest count."""
    http = pts[pts["used"] & (pts["series"] == series) & (pts["probe"] == "http-new") & (pts["services"] > 0)]
    if len(http):
        n = http["services"].min()
        sub = http[http["services"] == n]
        same = sub[sub["target"] == target]
        sub = same if len(same) else sub
        return (float(np.median(np.concatenate([rtts[int(p)] for p in sub["point_id"]]))),
                f"http-new request at {n:,} services")
    c = curves.get((series, target, probe, "p50"))
    if c is not None:
        return float(c.predict([c.xmin])[0]), f"p50 at {c.xmin:,.0f} services"
    return math.nan, "no baseline"


def _empty_table(pts: pd.DataFrame, rtts: dict[int, np.ndarray]) -> pd.DataFrame:
    """The 0-service reference per series and probe kind: pooled probes of the
    points with an empty table (every target there probes the none address)."""
    rows = []
    z = pts[pts["used"] & (pts["services"] == 0)]
    for (series, probe), g in z.groupby(["series", "probe"], sort=True):
        r = np.concatenate([rtts[int(p)] for p in g["point_id"]])
        per_round = g.groupby("round")["p50"].median()
        rows.append(dict(mode=series, probe=probe, points=len(g), probes=len(r),
                         p50_us=float(np.median(r)), p99_us=float(np.percentile(r, 99)),
                         p50_round_min=float(per_round.min()), p50_round_max=float(per_round.max())))
    return pd.DataFrame(rows, columns=["mode", "probe", "points", "probes", "p50_us", "p99_us",
                                       "p50_round_min", "p50_round_max"])


def analyze(run: Run | str, *, budget_us: float = 10.0, budget_frac: float = 0.10,
            n_boot: int = 1000, level: float = 0.95, seed: int = 0, criterion: str = "aicc",
            resample: str = "rounds", stats: Iterable[str] = tuple(STATS)) -> Analysis:
    """Fit every (series, target, probe, statistic) curve, find its intervals
    (delete-one-round jackknife, or the bootstrap with one round) and the
    crossovers between every pair of series."""
    if isinstance(run, str):
        run = load_run(run)
    stats = {s: STATS[s] for s in stats}
    if n_boot < 10:
        raise UsageError(f"n_boot must be at least 10, got {n_boot}")
    if resample not in RESAMPLE:
        raise UsageError(f"resample must be one of {', '.join(RESAMPLE)}, got {resample!r}")
    rng = np.random.default_rng(seed)
    pts, rtts = point_table(run)
    # curves start at one service (NATed like every other point); the empty table is a
    # reference of its own, except for the none target (no NAT at any count)
    used = pts[pts["used"] & ((pts["services"] > 0) | (pts["target"] == "none"))]
    all_rounds = sorted(int(r) for r in pts["round"].unique())
    jack = resample == "rounds" and len(all_rounds) >= 2
    method = "rounds" if jack else (resample if resample != "rounds" else "probes")
    curves: dict[tuple, Curve] = {}
    skipped: list[str] = []
    for (series, target, probe), g in used.groupby(["series", "target", "probe"], sort=True):
        g = g.sort_values(["services", "round"])
        for s in stats:
            gs = g[g["n_answered"] >= MIN_TAIL_PROBES.get(s, 1)]
            if len(gs) < len(g):
                skipped.append(f"{s} of {series} ({target} target, {probe}): {len(g) - len(gs)} of "
                               f"{len(g)} points have fewer than {MIN_TAIL_PROBES[s]} answered probes")
            if gs["services"].nunique() < 2:
                continue
            key = (series, target, probe, s)
            pids = gs["point_id"].astype(int).to_numpy()
            if jack:
                curves[key] = fit_curve(key, gs["services"].to_numpy(float), gs[s].to_numpy(float),
                                        point_ids=pids, criterion=criterion,
                                        rounds=gs["round"].to_numpy(int), all_rounds=all_rounds)
                continue
            cells = [(float(n), [rtts[int(p)] for p in gg["point_id"]])
                     for n, gg in gs.groupby("services", sort=True)]
            x, obs, boot = bootstrap_cells(cells, n_boot, rng, method, {s: stats[s]})
            curves[key] = fit_curve(key, x, obs[s], boot[s], pids, criterion)
    # summary and fit tables
    srows, frows = [], []
    for c in curves.values():
        srows.append(_summary_row(c, pts, level))
        best = getattr(c.fits[c.chosen], c.criterion, math.nan)
        for m, f in c.fits.items():
            frows.append(dict(mode=c.series, target=c.target, probe=c.probe, statistic=c.stat,
                              model=m, chosen=m == c.chosen, n_obs=f.n, n_params=f.spec.n_params,
                              rss=f.rss, aic=f.aic, aicc=f.aicc, bic=f.bic, criterion=c.criterion,
                              delta=(getattr(f, c.criterion, math.nan) - best) if not math.isnan(c.weights[m])
                              else math.nan, weight=c.weights[m],
                              curve=f.describe(), **{f"param_{k}": v for k, v in f.params().items()}))
    order = {s: i for i, s in enumerate(run.series_order)}
    summary = pd.DataFrame(srows)
    fits = pd.DataFrame(frows)
    # crossovers: only between series measured in one kernel (a run over two kernels
    # relates them by the modes that ran in both: see kernel_ratios)
    kernel_of = dict(zip(pts["series"], pts["kernel"]))
    crows, brows = [], []
    groups = sorted({k[1:] for k in curves})
    for target, probe, stat in groups:
        present = sorted({k[0] for k in curves if k[1:] == (target, probe, stat)}, key=order.__getitem__)
        if len(present) < 2:
            continue
        grid = Grid([curves[(s, target, probe, stat)] for s in present])
        for a, b in _same_kernel(combinations(present, 2), kernel_of):
            crows.append(crossing_row(curves[(a, target, probe, stat)], curves[(b, target, probe, stat)],
                                      level, grid))
        for a, b in _same_kernel(permutations(present, 2), kernel_of):
            ca, cb = curves[(a, target, probe, stat)], curves[(b, target, probe, stat)]
            crows.append(budget_row(ca, cb, budget_us, "budget-abs", f"{budget_us:g} us", level, grid))
            base, how = _budget_baseline(pts, rtts, b, target, probe, curves)
            brows.append(dict(mode=b, target=target, probe=probe, baseline_us=base, baseline=how))
            rel = budget_frac * base
            crows.append(budget_row(ca, cb, rel, "budget-rel",
                                    f"{budget_frac:.0%} of {b}'s {how} ({rel:.1f} us)", level, grid))
            crows[-1]["baseline"] = how
        del grid
    crossover = pd.DataFrame(crows, columns=CROSSOVER_COLUMNS)
    if not len(crossover):   # a run of one mode: numbers stay numbers in an empty table too
        crossover = crossover.astype({c: float for c in NUMERIC_CROSSOVER_COLUMNS})
    baselines = pd.DataFrame(brows).drop_duplicates() if brows else pd.DataFrame(
        columns=["mode", "target", "probe", "baseline_us", "baseline"])
    # consistency of our per-point statistics with the sweep's
    both = pts[["p50", "p50_us"]].dropna()
    checks = {"max_abs_p50_diff_us": float((both["p50"] - both["p50_us"]).abs().max()) if len(both) else 0.0,
              "points": int(len(pts)), "points_used": int(pts["used"].sum()),
              "points_invalid": int((~pts["valid"]).sum())}
    settings = dict(budget_us=budget_us, budget_frac=budget_frac, n_boot=n_boot, level=level,
                    seed=seed, criterion=criterion, resample=method, stats=list(stats),
                    models=list(MODELS), rounds=len(all_rounds), min_tail_probes=MIN_TAIL_PROBES,
                    max_bracket=MAX_BRACKET)
    an = Analysis(run, pts, curves, summary, fits, crossover, baselines, settings, checks,
                  empty=_empty_table(pts, rtts), skipped=skipped)
    an.claims = claims_mod.claims(an)
    return an


def _same_kernel(pairs: Iterable[tuple[str, str]], kernel_of: dict) -> list[tuple[str, str]]:
    return [(a, b) for a, b in pairs if kernel_of.get(a) == kernel_of.get(b)]


RATIO_COLUMNS = ["mode", "measure", "target", "probe", "stat", "kernel", "other_kernel", "services",
                 "ratio", "ci_lo", "ci_hi"]


def _by_mode(an: "Analysis") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in an.series:
        out.setdefault(name.split(" [")[0], []).append(name)
    return out


def kernel_ratios(an: "Analysis", level: float = 0.95) -> pd.DataFrame:
    """How a guest kernel's figures relate to the host's, through the modes
    that run natively in both (:data:`CALIBRATORS`, never eBPF): per such
    mode, the ratio of its fitted latency in the other kernel to the host's
    at the smallest and the largest count both measured (``measure``
    "level"), and the ratio of its per-service slopes (straight-line fits,
    "slope"), each with an interval from the two curves' paired replicates
    (the same round left out of both, or bootstrap draws in a one-round
    run).  Never a fit across kernels."""
    rows = []
    kernel_of = dict(zip(an.points["series"], an.points["kernel"]))
    host = str(an.run.meta.get("kernel", ""))   # the run's own kernel: the reference
    for mode, names in _by_mode(an).items():
        if len(names) < 2 or mode not in CALIBRATORS:
            continue
        ref = next((n for n in names if kernel_of.get(n) == host), names[0])
        for other in (n for n in names if n != ref):
            for (s, target, probe, stat), c in an.curves.items():
                if s != ref or (other, target, probe, stat) not in an.curves:
                    continue
                o = an.curves[(other, target, probe, stat)]
                ident = {"mode": mode, "target": target, "probe": probe, "stat": stat,
                         "kernel": kernel_of.get(ref), "other_kernel": kernel_of.get(other)}
                lo_x, hi_x = max(c.xmin, o.xmin), min(c.xmax, o.xmax)
                for x in sorted({lo_x, hi_x}):
                    r = float(o.predict([x])[0] / c.predict([x])[0])
                    rb = o.boot_predict([x])[:, 0] / c.boot_predict([x])[:, 0]
                    lo, hi = interval(r, rb, c.method, level)
                    rows.append({**ident, "measure": "level", "services": x, "ratio": r,
                                 "ci_lo": float(lo), "ci_hi": float(hi)})
                if "linear" in c.fits and "linear" in o.fits:
                    bc, bo = c.fits["linear"].params()["b"], o.fits["linear"].params()["b"]
                    if bc > 0:
                        with np.errstate(divide="ignore", invalid="ignore"):
                            rb = o.boot["linear"][:, 1] / c.boot["linear"][:, 1]
                        lo, hi = interval(bo / bc, rb, c.method, level)
                        rows.append({**ident, "measure": "slope", "services": hi_x, "ratio": bo / bc,
                                     "ci_lo": float(lo), "ci_hi": float(hi)})
    return pd.DataFrame(rows, columns=RATIO_COLUMNS)


def cross_kernel_growth(an: "Analysis", level: float = 0.95) -> pd.DataFrame:
    """Modes measured in different kernels of one run (IPVS in user-mode Linux,
    eBPF on the host), compared by growth only: each one's fitted rise from
    its smallest count to the largest count both measured, with its interval.
    Levels are never compared across kernels."""
    kernel_of = dict(zip(an.points["series"], an.points["kernel"]))
    if len(set(kernel_of.values())) < 2:
        return pd.DataFrame(columns=["series", "kernel", "target", "probe", "stat", "from", "to",
                                     "rise_us", "ci_lo", "ci_hi"])
    rows = []
    groups = sorted({k[1:] for k in an.curves})
    for target, probe, stat in groups:
        cs = [c for k, c in an.curves.items() if k[1:] == (target, probe, stat)]
        if len({kernel_of.get(c.series) for c in cs}) < 2:
            continue
        top = min(c.xmax for c in cs)
        for c in cs:
            x0 = c.xmin
            rise = float(c.predict([top])[0] - c.predict([x0])[0])
            rb = c.boot_predict([top])[:, 0] - c.boot_predict([x0])[:, 0]
            lo, hi = interval(rise, rb, c.method, level)
            rows.append({"series": c.series, "kernel": kernel_of.get(c.series), "target": target,
                         "probe": probe, "stat": stat, "from": x0, "to": top, "rise_us": rise,
                         "ci_lo": float(lo), "ci_hi": float(hi)})
    return pd.DataFrame(rows)


def _summary_row(c: Curve, pts: pd.DataFrame, level: float) -> dict:
    sub = pts[(pts["series"] == c.series) & (pts["target"] == c.target) & (pts["probe"] == c.probe)]
    row = dict(mode=c.series, target=c.target, probe=c.probe, statistic=c.stat,
               n_points=int(sub["used"].sum()), n_invalid=int((~sub["used"]).sum()),
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
        row["linear_delta"] = (getattr(c.fits["linear"], c.criterion, math.nan)
                               - getattr(c.fit, c.criterion, math.nan))
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
    return row


__all__ = ["MAX_BRACKET", "bracket", "interval", "jackknife_se", "percentile_ci", "resolved"]

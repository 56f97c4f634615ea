"""A run over two kernels (``--kernel host+uml``): how they relate, never a
fit across them.  :func:`kernel_ratios` relates the kernels through the modes
that run natively in both; :func:`cross_kernel_growth` compares the other
modes by their rise only.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from labkit.analysis.curves import Curve, joint_df
from labkit.analysis.intervals import interval
from labkit.analysis.result import Analysis
from labkit.core.modes import CALIBRATORS

RATIO_COLUMNS = ["mode", "measure", "target", "probe", "pacing", "stat", "kernel", "other_kernel", "release",
                 "other_release", "services", "ratio", "ci_lo", "ci_hi"]
GROWTH_COLUMNS = ["mode", "kernel", "target", "probe", "pacing", "stat", "from", "to", "rise_us", "ci_lo",
                  "ci_hi"]


def kernel_ratios(an: Analysis, level: float = 0.95) -> pd.DataFrame:
    """How a guest kernel's figures relate to the host's, through the modes
    that run natively in both (:data:`~labkit.core.modes.CALIBRATORS`, never
    eBPF): per such mode, the ratio of its fitted latency in the other kernel
    to the host's at the smallest and the largest count both measured
    (``measure`` "level"), and the ratio of its per-service slopes
    (straight-line fits, "slope"), each with an interval from the two curves'
    paired replicates (the same round left out of both, or bootstrap draws in
    a one-round run).  Never a fit across kernels."""
    rows: list[dict] = []
    for mode in dict.fromkeys(s.mode for s in an.series if s.mode in CALIBRATORS):
        kernels = [s.kernel for s in an.series if s.mode == mode]
        ref = "host" if "host" in kernels else kernels[0]
        for other in (k for k in kernels if k != ref):
            for key, c in an.curves.items():
                o = an.curves.get(key._replace(kernel=other))
                if key.series != (mode, ref) or o is None:
                    continue
                ident = {"mode": mode, "target": key.target, "probe": key.probe, "pacing": key.pacing,
                         "stat": key.statistic, "kernel": ref, "other_kernel": other,
                         "release": an.run.releases.get(ref, ""), "other_release": an.run.releases.get(other, "")}
                rows += [{**ident, **r} for r in _ratios(c, o, level)]
    return pd.DataFrame(rows, columns=RATIO_COLUMNS)


def _ratios(c: Curve, o: Curve, level: float) -> list[dict]:
    rows = []
    lo_x, hi_x = max(c.xmin, o.xmin), min(c.xmax, o.xmax)
    for x in sorted({lo_x, hi_x}):
        r = float(o.predict([x])[0] / c.predict([x])[0])
        rb = o.boot_predict([x])[:, 0] / c.boot_predict([x])[:, 0]
        lo, hi = interval(r, rb, c.method, level, joint_df(c, o))
        rows.append({"measure": "level", "services": x, "ratio": r, "ci_lo": float(lo), "ci_hi": float(hi)})
    if "linear" in c.fits and "linear" in o.fits:
        bc, bo = c.fits["linear"].params()["b"], o.fits["linear"].params()["b"]
        if bc > 0:
            with np.errstate(divide="ignore", invalid="ignore"):
                rb = o.boot["linear"][:, 1] / c.boot["linear"][:, 1]
            lo, hi = interval(bo / bc, rb, c.method, level, joint_df(c, o))
            rows.append({"measure": "slope", "services": hi_x, "ratio": bo / bc,
                         "ci_lo": float(lo), "ci_hi": float(hi)})
    return rows


def cross_kernel_growth(an: Analysis, level: float = 0.95) -> pd.DataFrame:
    """Modes measured in different kernels of one run (IPVS in user-mode Linux,
    eBPF on the host), compared by growth only: each one's fitted rise from
    its smallest count to the largest count both measured, with its interval.
    Levels are never compared across kernels."""
    rows: list[dict] = []
    if len({k.kernel for k in an.curves}) < 2:
        return pd.DataFrame(rows, columns=GROWTH_COLUMNS)
    for group in sorted({k.group for k in an.curves}):
        cs = [c for k, c in an.curves.items() if k.group == group]
        if len({c.key.kernel for c in cs}) < 2:
            continue
        top = min(c.xmax for c in cs)
        for c in cs:
            x0 = c.xmin
            rise = float(c.predict([top])[0] - c.predict([x0])[0])
            rb = c.boot_predict([top])[:, 0] - c.boot_predict([x0])[:, 0]
            lo, hi = interval(rise, rb, c.method, level, c.df)
            k = c.key
            rows.append({"mode": k.mode, "kernel": k.kernel, "target": k.target, "probe": k.probe,
                         "pacing": k.pacing, "stat": k.statistic, "from": x0, "to": top, "rise_us": rise,
                         "ci_lo": float(lo), "ci_hi": float(hi)})
    return pd.DataFrame(rows, columns=GROWTH_COLUMNS)

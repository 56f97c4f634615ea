"""Where IPVS beats each iptables backend, and what moving from IPVS to
nftables changes, in words: the one phrasing the report's answer, its IPVS
section and ``docs/anchors.md`` share.  Pure: reads rows of a run's
``crossover.csv`` (:func:`labkit.analysis.analyze.crossovers`).

Kubernetes deprecated IPVS mode in 1.35 and points its users to nftables, so
every statement on IPVS comes with what moving to nftables changes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from labkit.analysis.intervals import resolved
from labkit.core import modes

#: the modes IPVS is set against: the iptables backends, then nftables (where IPVS users are sent)
BACKENDS = ("iptables-legacy", "iptables-nft")
MOVE_TO = "nftables"


def pacing_words(pacing: float) -> str:
    return f"paced at {pacing:,.0f}/s" if pacing > 0 else "back to back"


def mode_name(mode: str) -> str:
    return modes.get(mode).label if mode in modes.NAMES else mode


def located_text(r: pd.Series) -> str:
    """``N [lo, hi] services`` and where it lies among the measured counts:
    located when they are close enough (:func:`labkit.analysis.intervals.resolved`),
    else said not to be."""
    txt = f"{r['n_star']:,.0f}"
    if np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"]):
        txt += f" [{r['ci_low']:,.0f}, {r['ci_high']:,.0f}]"
    txt += " services"
    lo, hi, located = bracket_of(r)
    if located:
        txt += f" (located between the measured {lo:,.0f} and {hi:,.0f})"
    elif located is False:
        txt += f" (not located: the measured counts around it, {lo:,.0f} and {hi:,.0f}, are {hi / lo:,.1f}x apart)"
    return txt


def bracket_of(r: pd.Series) -> tuple[float, float, bool | None]:
    """The measured counts around a crossing and whether they locate it
    (:func:`labkit.analysis.intervals.resolved`, the rule of ``crossover.csv``'s
    ``resolved``); None when the row has no bracket."""
    lo, hi = r.get("bracket_lo", np.nan), r.get("bracket_hi", np.nan)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo > 0):
        return lo, hi, None
    return lo, hi, resolved(lo, hi)


def unlocated(lo: float, hi: float) -> str:
    """How a figure between measured counts too far apart is said on the first screen."""
    return f"between the measured {lo:,.0f} and {hi:,.0f}: not located"


def ipvs_rows(cx: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``crossover.csv`` that set IPVS against each iptables backend
    and nftables, p50, in one kernel: where the curves cross, and where the other
    mode costs the absolute budget more than IPVS."""
    if not len(cx):
        return cx
    a, b = cx["mode_a"], cx["mode_b"]
    others = (*BACKENDS, MOVE_TO)
    pair = ((a == "ipvs") & b.isin(others)) | ((b == "ipvs") & a.isin(others))
    keep = pair & (cx["statistic"] == "p50") & (
        (cx["kind"] == "fit") | ((cx["kind"] == "budget-abs") & (b == "ipvs")))
    return cx[keep]


def ipvs_phrases(g: pd.DataFrame, budget: float | None = None, short: bool = False) -> list[str]:
    """The phrases for one target and pacing of :func:`ipvs_rows`: where IPVS
    beats each iptables backend (with ``budget``, also where the backend costs
    that many microseconds more), then what moving from IPVS to nftables
    changes.  ``short``: crossings as ``N [lo, hi]``, and where they lie among
    the measured counts only when these are too far apart to locate them (a
    headline never rests on an unmeasured stretch unsaid)."""
    def at(r: pd.Series) -> str:
        if short:
            ci = (f" [{r['ci_low']:,.0f}, {r['ci_high']:,.0f}]"
                  if np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"]) else "")
            lo, hi, located = bracket_of(r)
            gap = f" ({unlocated(lo, hi)})" if located is False else ""
            return f"{r['n_star']:,.0f}{ci}{gap}"
        return located_text(r)
    parts = []
    for other in BACKENDS:
        fit = g[(g["kind"] == "fit") & ((g["mode_a"] == other) | (g["mode_b"] == other))]
        bud = g[(g["kind"] == "budget-abs") & (g["mode_a"] == other)]
        if not len(fit):
            continue
        f = fit.iloc[0]
        if not (np.isfinite(f["diff_lo_us"]) and np.isfinite(f["diff_hi_us"])):
            parts.append(str(f["finding"]))   # no common range: the crossover's own sentence
            continue
        # the fitted difference (a - b) at the largest common count says who is faster there
        ipvs_wins_at_end = (f["diff_hi_us"] < 0) == (f["mode_a"] == "ipvs")
        if np.isfinite(f["n_star"]) and ipvs_wins_at_end:
            txt = f"IPVS beats {other} from {at(f)}"
        elif np.isfinite(f["n_star"]):
            txt = f"{other} is faster than IPVS above {at(f)}"
        elif ipvs_wins_at_end:
            txt = f"IPVS is faster than {other} throughout"
        else:
            txt = f"{other} is faster than IPVS throughout"
        if budget is not None and ipvs_wins_at_end and len(bud) and np.isfinite(bud.iloc[0]["n_star"]):
            txt += f"; {other} costs {budget:g} us more than IPVS from {located_text(bud.iloc[0])}"
        elif budget is not None and ipvs_wins_at_end and len(bud):
            txt += f"; {other} never costs {budget:g} us more than IPVS here"
        parts.append(txt)
    is_nft = (g["mode_a"] == MOVE_TO) | (g["mode_b"] == MOVE_TO)
    nft = g[(g["kind"] == "fit") & is_nft]
    if len(nft):
        f = nft.iloc[0]
        if not (np.isfinite(f["diff_lo_us"]) and np.isfinite(f["diff_hi_us"])):
            parts.append(f"moving from IPVS to nftables: {f['finding']}")
        elif np.isfinite(f["n_star"]):
            parts.append(f"moving from IPVS to nftables: the curves cross at {at(f)}, "
                         f"{mode_name(str(f['faster_above']))} faster above")
        else:
            lo, hi = sorted([abs(f["diff_lo_us"]), abs(f["diff_hi_us"])])
            by = f"{lo:.1f} us" if f"{lo:.1f}" == f"{hi:.1f}" else f"{lo:.1f} to {hi:.1f} us"
            parts.append(f"moving from IPVS to nftables: {mode_name(str(f['faster_below']))} is faster "
                         f"throughout, by {by}")
    return parts

"""The seed article's claims, put to the run's data: one row per claim (and
mode or pair), with a verdict, the number behind it and its interval.

Pure: reads a finished :class:`~labkit.analysis.fit.Analysis` (which calls
:func:`claims` at the end of ``analyze``; this module imports no other of
the analysis but its interval arithmetic).  The claims of the seed article
("Exotic networking patterns for load balancing", see docs/anchors.md):

``o-n``
    iptables' rule walk is O(n): latency grows with the service count.
``o-1``
    IPVS (and nftables' maps, eBPF's hash maps) are O(1): latency does not
    grow with the service count.
``1k-5k``
    iptables is practically unnoticeable below about 1,000 services and
    fails "the latency sniff test" from 1,000 to 5,000 services, "in the face
    of network I/O overhead".  Put to the data as: the iptables penalty (over
    the fastest O(1) mode of the run) first exceeds a budget of
    ``budget_frac`` of one request between 1,000 and 5,000 services.  The row
    also gives the penalty at 1,000 and at 5,000 services: the claim holds
    for exactly the budgets between those two figures.
``keepalive``
    keepalive connections amortize the O(n) penalty (conntrack skips the
    rule walk for established connections).
``ebpf-beats``
    eBPF beats both iptables and IPVS.

Every figure is of the headline curves (``last`` target: the service the
iptables walk reaches last, p50, the headline probe kind).  Verdicts:
``holds``, ``does not hold``, ``inconclusive`` (the interval straddles the
line) and ``not measured here`` (the run lacks what the claim needs).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from labkit.analysis.intervals import interval

#: "does not grow": less than this many microseconds from 1 service to the largest count
FLAT_US = 5.0
O1_MODES = ("ipvs", "nftables", "ebpf", "ebpf-xdp")
IPTABLES_MODES = ("iptables-legacy", "iptables-nft")
CLAIM_COLUMNS = ["claim", "statement", "mode", "versus", "verdict", "value", "ci_low", "ci_high",
                 "unit", "evidence", "kernel", "target", "probe", "statistic"]
STATEMENTS = {
    "o-n": "iptables' rule walk is O(n): latency grows with the number of services",
    "o-1": "IPVS (and hash-based datapaths) are O(1): latency stays constant with the number of services",
    "1k-5k": "iptables is unnoticeable below about 1,000 services and hurts from 1,000 to 5,000",
    "keepalive": "keepalive connections amortize iptables' O(n) penalty",
    "ebpf-beats": "eBPF beats both iptables and IPVS",
}


def _mode(series: str) -> str:
    return series.split(" [")[0]


def _growth(c: Any, level: float) -> tuple[float, float, float]:
    """The rise of the straight-line fit from the curve's smallest to its largest
    count, with its interval.  (The line, not the chosen model: a curve chosen
    flat would claim a rise of exactly zero, with no interval.)"""
    span = c.xmax - c.xmin
    if "linear" not in c.fits:
        return math.nan, math.nan, math.nan
    est = float(c.fits["linear"].params()["b"] * span)
    lo, hi = interval(est, c.boot["linear"][:, 1] * span, c.method, level)
    return est, float(lo), float(hi)


def _diff_at(ca: Any, cb: Any, n: float, level: float) -> tuple[float, float, float]:
    """ca - cb at n services (the replicates of both are paired by round)."""
    est = float(ca.predict([n])[0] - cb.predict([n])[0])
    B = min(len(ca.boot[ca.chosen]), len(cb.boot[cb.chosen]))
    reps = ca.boot_predict([n])[:B, 0] - cb.boot_predict([n])[:B, 0]
    lo, hi = interval(est, reps, ca.method, level)
    return est, float(lo), float(hi)


def claims(an: Any) -> pd.DataFrame:
    level = float(an.settings.get("level", 0.95))
    target, probe, stat = "last", an.headline_probe, "p50"
    kernel_of = dict(zip(an.points["series"], an.points["kernel"]))
    curves = {s: an.curves[(s, target, probe, stat)] for s in an.series
              if (s, target, probe, stat) in an.curves}
    rows: list[dict] = []

    def add(claim: str, **kw) -> None:
        base = dict(claim=claim, statement=STATEMENTS[claim], mode="", versus="", verdict="not measured here",
                    value=math.nan, ci_low=math.nan, ci_high=math.nan, unit="", evidence="",
                    kernel="", target=target, probe=probe, statistic=stat)
        base.update(kw)
        if base["mode"] and not base["kernel"]:
            base["kernel"] = str(kernel_of.get(base["mode"], ""))
        rows.append(base)

    ipt = [s for s in curves if _mode(s) in IPTABLES_MODES]
    o1 = [s for s in curves if _mode(s) in O1_MODES]
    # -- O(n) and O(1) ---------------------------------------------------------------
    for s in ipt + o1:
        c = curves[s]
        g, lo, hi = _growth(c, level)
        span = f"{c.xmin:,.0f} to {c.xmax:,.0f} services"
        ev = (f"the straight-line fit of p50 rises {g:+.1f} us [{lo:+.1f}, {hi:+.1f}] from {span} "
              f"(chosen model: {c.fit.describe()})")
        if s in ipt:
            verdict = "holds" if lo > FLAT_US else "does not hold" if hi < FLAT_US else "inconclusive"
            add("o-n", mode=s, verdict=verdict, value=g, ci_low=lo, ci_high=hi, unit="us", evidence=ev)
        else:
            verdict = "holds" if hi < FLAT_US else "does not hold" if lo > FLAT_US else "inconclusive"
            ev += f"; O(1) means less than {FLAT_US:g} us over the range"
            nft = [o for o in o1 if _mode(o) == "nftables" and kernel_of.get(o) == kernel_of.get(s)]
            if _mode(s) == "ipvs" and nft:
                # Kubernetes deprecated IPVS mode (1.35) and points its users to nftables
                gn, lon, hin = _growth(curves[nft[0]], level)
                ev += (f"; moving to nftables (Kubernetes' advice since IPVS mode was deprecated in 1.35): "
                       f"nftables in the same kernel rises {gn:+.1f} us [{lon:+.1f}, {hin:+.1f}]")
            add("o-1", mode=s, verdict=verdict, value=g, ci_low=lo, ci_high=hi, unit="us", evidence=ev)
    if not any(_mode(s) == "ipvs" for s in curves):
        add("o-1", mode="ipvs", evidence="IPVS is not in this run (this host's kernel has no IP_VS; "
                                         "`--kernel uml` measures it in user-mode Linux)")
    if not ipt:
        add("o-n", evidence="no iptables mode in this run")
    # -- 1,000 to 5,000 ----------------------------------------------------------------
    cx = an.crossover
    for s in ipt:
        same = [o for o in o1 if kernel_of.get(o) == kernel_of.get(s)]
        if not same:
            add("1k-5k", mode=s, evidence="no O(1) mode measured in the same kernel")
            continue
        ca = curves[s]
        # the fastest O(1) mode: the lowest fitted p50 at the largest common count
        best = min(same, key=lambda o: float(curves[o].predict([min(ca.xmax, curves[o].xmax)])[0]))
        cb = curves[best]
        if min(ca.xmax, cb.xmax) < 5000 or max(ca.xmin, cb.xmin) > 1000:
            add("1k-5k", mode=s, versus=best, evidence="the run does not cover 1,000 to 5,000 services")
            continue
        d1, d1lo, d1hi = _diff_at(ca, cb, 1000, level)
        d5, d5lo, d5hi = _diff_at(ca, cb, 5000, level)
        rel = cx[(cx["kind"] == "budget-rel") & (cx["mode_a"] == s) & (cx["mode_b"] == best)
                 & (cx["target"] == target) & (cx["probe"] == probe) & (cx["statistic"] == stat)]
        ev = (f"penalty over {best}: {d1:.1f} us [{d1lo:.1f}, {d1hi:.1f}] at 1,000 services, "
              f"{d5:.1f} us [{d5lo:.1f}, {d5hi:.1f}] at 5,000: the claim holds for budgets between "
              f"{max(d1hi, 0):.1f} and {d5lo:.1f} us")
        if not len(rel) or not np.isfinite(rel["budget_us"].iloc[0]):
            add("1k-5k", mode=s, versus=best, evidence=ev + "; no relative budget")
            continue
        r = rel.iloc[0]
        if not str(r["baseline"]).startswith("http-new"):
            add("1k-5k", mode=s, versus=best, evidence=ev + "; what a request costs is not measured in this "
                "run (`--probe-kinds syn,http-new` measures it), so the verdict is left open")
            continue
        budget = float(r["budget_us"])
        frac = an.settings.get("budget_frac", 0.1)
        ev += f"; budget {frac:.0%} of {best}'s {r['baseline']} = {budget:.1f} us"
        if d1hi < budget < d5lo:
            verdict = "holds"
        elif budget < d1lo or budget > d5hi:
            verdict = "does not hold"
        else:
            verdict = "inconclusive"
        ev += (f"; the penalty exceeds it from {r['n_star']:,.0f} services" if np.isfinite(r["n_star"])
               else "; the penalty never exceeds it in the measured range")
        add("1k-5k", mode=s, versus=best, verdict=verdict, value=float(r["n_star"]), ci_low=float(r["ci_low"]),
            ci_high=float(r["ci_high"]), unit="services", evidence=ev)
    # -- keepalive ----------------------------------------------------------------------
    kept = False
    for s in ipt:
        k = an.curves.get((s, target, "keepalive", stat))
        if k is None:
            continue
        kept = True
        g_syn, lo_syn, _ = _growth(curves[s], level)
        g_k, lo_k, hi_k = _growth(k, level)
        verdict = "holds" if hi_k < FLAT_US and lo_syn > FLAT_US else \
            "does not hold" if lo_k > FLAT_US else "inconclusive"
        add("keepalive", mode=s, verdict=verdict, value=g_k, ci_low=lo_k, ci_high=hi_k, unit="us",
            evidence=f"a request on an established connection rises {g_k:+.1f} us [{lo_k:+.1f}, {hi_k:+.1f}] "
                     f"from {k.xmin:,.0f} to {k.xmax:,.0f} services; a new connection's SYN {g_syn:+.1f} us")
    if not kept:
        add("keepalive", evidence="no keepalive probes in this run (`--probe-kinds syn,keepalive`)")
    # -- eBPF beats both ----------------------------------------------------------------
    ebpf = [s for s in curves if _mode(s) == "ebpf"]
    for e in ebpf:
        for o in [s for s in curves if _mode(s) in (*IPTABLES_MODES, "ipvs")]:
            if kernel_of.get(o) != kernel_of.get(e):
                continue
            ce, co = curves[e], curves[o]
            n = min(ce.xmax, co.xmax)
            d, lo, hi = _diff_at(co, ce, n, level)
            verdict = "holds" if lo > 0 else "does not hold" if hi < 0 else "inconclusive"
            add("ebpf-beats", mode=e, versus=o, verdict=verdict, value=d, ci_low=lo, ci_high=hi, unit="us",
                evidence=f"{o} minus {e} at {n:,.0f} services: {d:+.1f} us [{lo:+.1f}, {hi:+.1f}]")
        if not any(_mode(s) == "ipvs" and kernel_of.get(s) == kernel_of.get(e) for s in curves):
            add("ebpf-beats", mode=e, versus="ipvs",
                evidence="IPVS is not measured in this kernel (`--kernel host+uml` or `uml` measures it)")
    if not ebpf:
        add("ebpf-beats", evidence="no ebpf mode in this run")
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def pacing_effect(an: Any) -> pd.DataFrame:
    """How the probe pacing moves the curves: per mode and target, the fitted
    p50 at the smallest count and the linear slope, back to back and paced."""
    level = float(an.settings.get("level", 0.95))
    rows = []
    for (s, target, probe, stat), c in an.curves.items():
        if stat != "p50" or "@" not in probe:
            continue
        base = (s, target, probe.split(" @")[0], stat)
        if base not in an.curves:
            continue
        b2b = an.curves[base]
        row = dict(mode=s, target=target, paced=probe, back_to_back=base[2])
        for name, cur in (("b2b", b2b), ("paced", c)):
            v = float(cur.predict([cur.xmin])[0])
            lo, hi = cur.band([cur.xmin], level)
            row.update({f"{name}_base_us": v, f"{name}_base_lo": float(lo[0]), f"{name}_base_hi": float(hi[0])})
            if "linear" in cur.fits:
                b = cur.fits["linear"].params()["b"] * 1e3
                lo, hi = cur.ci(b, cur.boot["linear"][:, 1] * 1e3, level)
                row.update({f"{name}_slope_ns": b, f"{name}_slope_lo": float(lo), f"{name}_slope_hi": float(hi)})
        rows.append(row)
    return pd.DataFrame(rows)

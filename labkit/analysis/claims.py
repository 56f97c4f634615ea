"""The seed article's claims, put to the run's data: one row per claim (and
mode or pair), with a verdict, the number behind it and its interval.

Pure: reads a finished :class:`~labkit.analysis.result.Analysis` (whose
crossovers are located; :func:`labkit.analysis.analyze.analyze` calls
:func:`claims` last).  Rows name a series by its ``mode`` and ``kernel``
(host, uml, vm); sentences by its label.  The claims of the seed article
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

import numpy as np
import pandas as pd

from labkit.analysis.curves import Curve
from labkit.analysis.intervals import interval
from labkit.analysis.result import Analysis
from labkit.analysis.run import Series, probe_label
from labkit.core import modes

#: "does not grow": less than this many microseconds from 1 service to the largest count
FLAT_US = 5.0
#: the modes the seed calls O(1) and the iptables backends, from the one table of modes
O1_MODES = modes.with_lookup(modes.CONSTANT)
IPTABLES_MODES = modes.of_family("iptables")
CLAIM_COLUMNS = ["claim", "statement", "mode", "versus", "verdict", "value", "ci_low", "ci_high",
                 "unit", "evidence", "kernel", "target", "probe", "pacing", "statistic"]
STATEMENTS = {
    "o-n": "iptables' rule walk is O(n): latency grows with the number of services",
    "o-1": "IPVS (and hash-based datapaths) are O(1): latency stays constant with the number of services",
    "1k-5k": "iptables is unnoticeable below about 1,000 services and hurts from 1,000 to 5,000",
    "keepalive": "keepalive connections amortize iptables' O(n) penalty",
    "ebpf-beats": "eBPF beats both iptables and IPVS",
}


def _growth(c: Curve, level: float) -> tuple[float, float, float]:
    """The rise of the straight-line fit from the curve's smallest to its largest
    count, with its interval.  (The line, not the chosen model: a curve chosen
    flat would claim a rise of exactly zero, with no interval.)"""
    span = c.xmax - c.xmin
    if "linear" not in c.fits:
        return math.nan, math.nan, math.nan
    est = float(c.fits["linear"].params()["b"] * span)
    lo, hi = interval(est, c.boot["linear"][:, 1] * span, c.method, level)
    return est, float(lo), float(hi)


def _diff_at(ca: Curve, cb: Curve, n: float, level: float) -> tuple[float, float, float]:
    """ca - cb at n services (the replicates of both are paired by round)."""
    est = float(ca.predict([n])[0] - cb.predict([n])[0])
    B = min(len(ca.boot[ca.chosen]), len(cb.boot[cb.chosen]))
    reps = ca.boot_predict([n])[:B, 0] - cb.boot_predict([n])[:B, 0]
    lo, hi = interval(est, reps, ca.method, level)
    return est, float(lo), float(hi)


class _Claims:
    """The rows of claims.csv, and what every claim reads: the headline
    curves of each series (``last`` target, headline probe, p50)."""

    def __init__(self, an: Analysis):
        self.an = an
        self.level = float(an.settings.get("level", 0.95))
        self.target, self.probe, self.stat = "last", an.headline_probe, "p50"
        self.curves = {s: c for s in an.series
                       if (c := an.curve(s, self.target, self.probe, self.stat)) is not None}
        self.rows: list[dict] = []

    def add(self, claim: str, mode: Series | None = None, versus: Series | None = None, **kw) -> None:
        self.rows.append(dict(claim=claim, statement=STATEMENTS[claim], mode=mode.mode if mode else "",
                              versus=versus.mode if versus else "", verdict="not measured here",
                              value=math.nan, ci_low=math.nan, ci_high=math.nan, unit="", evidence="",
                              kernel=mode.kernel if mode else "", target=self.target, probe=self.probe[0],
                              pacing=self.probe[1], statistic=self.stat) | kw)

    def of(self, modes: tuple[str, ...]) -> list[Series]:
        return [s for s in self.curves if s.mode in modes]


def claims(an: Analysis) -> pd.DataFrame:
    """One row per claim of the seed (and mode or pair): :data:`CLAIM_COLUMNS`."""
    cl = _Claims(an)
    _growth_claims(cl)
    _budget_claims(cl)
    _keepalive_claims(cl)
    _ebpf_claims(cl)
    return pd.DataFrame(cl.rows, columns=CLAIM_COLUMNS)


def _growth_claims(cl: _Claims) -> None:
    """O(n) and O(1)."""
    ipt, o1 = cl.of(IPTABLES_MODES), cl.of(O1_MODES)
    for s in ipt + o1:
        c = cl.curves[s]
        g, lo, hi = _growth(c, cl.level)
        span = f"{c.xmin:,.0f} to {c.xmax:,.0f} services"
        ev = (f"the straight-line fit of p50 rises {g:+.1f} us [{lo:+.1f}, {hi:+.1f}] from {span} "
              f"(chosen model: {c.fit.describe()})")
        if s in ipt:
            verdict = "holds" if lo > FLAT_US else "does not hold" if hi < FLAT_US else "inconclusive"
            cl.add("o-n", mode=s, verdict=verdict, value=g, ci_low=lo, ci_high=hi, unit="us", evidence=ev)
        else:
            verdict = "holds" if hi < FLAT_US else "does not hold" if lo > FLAT_US else "inconclusive"
            ev += f"; O(1) means less than {FLAT_US:g} us over the range"
            nft = [o for o in o1 if o.mode == "nftables" and o.kernel == s.kernel]
            if s.mode == "ipvs" and nft:
                # Kubernetes deprecated IPVS mode (1.35) and points its users to nftables
                gn, lon, hin = _growth(cl.curves[nft[0]], cl.level)
                ev += (f"; moving to nftables (Kubernetes' advice since IPVS mode was deprecated in 1.35): "
                       f"nftables in the same kernel rises {gn:+.1f} us [{lon:+.1f}, {hin:+.1f}]")
            cl.add("o-1", mode=s, verdict=verdict, value=g, ci_low=lo, ci_high=hi, unit="us", evidence=ev)
    if not cl.of(("ipvs",)):
        cl.add("o-1", mode=Series("ipvs", ""), evidence="IPVS is not in this run (this host's kernel has no IP_VS; "
                                                        "`--kernel uml` measures it in user-mode Linux)")
    if not ipt:
        cl.add("o-n", evidence="no iptables mode in this run")


def _budget_claims(cl: _Claims) -> None:
    """1,000 to 5,000: the iptables penalty over the fastest O(1) mode of its kernel."""
    cx, level, label = cl.an.crossover, cl.level, cl.an.label
    for s in cl.of(IPTABLES_MODES):
        same = [o for o in cl.of(O1_MODES) if o.kernel == s.kernel]
        if not same:
            cl.add("1k-5k", mode=s, evidence="no O(1) mode measured in the same kernel")
            continue
        ca = cl.curves[s]
        # the fastest O(1) mode: the lowest fitted p50 at the largest common count
        best = min(same, key=lambda o: float(cl.curves[o].predict([min(ca.xmax, cl.curves[o].xmax)])[0]))
        cb = cl.curves[best]
        if min(ca.xmax, cb.xmax) < 5000 or max(ca.xmin, cb.xmin) > 1000:
            cl.add("1k-5k", mode=s, versus=best, evidence="the run does not cover 1,000 to 5,000 services")
            continue
        d1, d1lo, d1hi = _diff_at(ca, cb, 1000, level)
        d5, d5lo, d5hi = _diff_at(ca, cb, 5000, level)
        rel = cx[(cx["kind"] == "budget-rel") & (cx["mode_a"] == s.mode) & (cx["mode_b"] == best.mode)
                 & (cx["kernel"] == s.kernel) & (cx["target"] == cl.target) & (cx["probe"] == cl.probe[0])
                 & (cx["pacing"] == cl.probe[1]) & (cx["statistic"] == cl.stat)]
        ev = (f"penalty over {label(best)}: {d1:.1f} us [{d1lo:.1f}, {d1hi:.1f}] at 1,000 services, "
              f"{d5:.1f} us [{d5lo:.1f}, {d5hi:.1f}] at 5,000: the claim holds for budgets between "
              f"{max(d1hi, 0):.1f} and {d5lo:.1f} us")
        if not len(rel) or not np.isfinite(rel["budget_us"].iloc[0]):
            cl.add("1k-5k", mode=s, versus=best, evidence=ev + "; no relative budget")
            continue
        r = rel.iloc[0]
        if not str(r["baseline"]).startswith("http-new"):
            cl.add("1k-5k", mode=s, versus=best, evidence=ev + "; what a request costs is not measured in this "
                   "run (`--probe-kinds syn,http-new` measures it), so the verdict is left open")
            continue
        budget = float(r["budget_us"])
        frac = cl.an.settings.get("budget_frac", 0.1)
        ev += f"; budget {frac:.0%} of {label(best)}'s {r['baseline']} = {budget:.1f} us"
        if d1hi < budget < d5lo:
            verdict = "holds"
        elif budget < d1lo or budget > d5hi:
            verdict = "does not hold"
        else:
            verdict = "inconclusive"
        ev += (f"; the penalty exceeds it from {r['n_star']:,.0f} services" if np.isfinite(r["n_star"])
               else "; the penalty never exceeds it in the measured range")
        cl.add("1k-5k", mode=s, versus=best, verdict=verdict, value=float(r["n_star"]),
               ci_low=float(r["ci_low"]), ci_high=float(r["ci_high"]), unit="services", evidence=ev)


def _keepalive_claims(cl: _Claims) -> None:
    """Keepalive connections amortize the O(n) penalty."""
    kept = False
    for s in cl.of(IPTABLES_MODES):
        k = cl.an.curve(s, cl.target, ("keepalive", 0.0), cl.stat)
        if k is None:
            continue
        kept = True
        g_syn, lo_syn, _ = _growth(cl.curves[s], cl.level)
        g_k, lo_k, hi_k = _growth(k, cl.level)
        verdict = "holds" if hi_k < FLAT_US and lo_syn > FLAT_US else \
            "does not hold" if lo_k > FLAT_US else "inconclusive"
        cl.add("keepalive", mode=s, verdict=verdict, value=g_k, ci_low=lo_k, ci_high=hi_k, unit="us",
               evidence=f"a request on an established connection rises {g_k:+.1f} us [{lo_k:+.1f}, {hi_k:+.1f}] "
                        f"from {k.xmin:,.0f} to {k.xmax:,.0f} services; a new connection's SYN {g_syn:+.1f} us")
    if not kept:
        cl.add("keepalive", evidence="no keepalive probes in this run (`--probe-kinds syn,keepalive`)")


def _ebpf_claims(cl: _Claims) -> None:
    """eBPF beats both iptables and IPVS, in one kernel."""
    ebpf = cl.of(("ebpf",))
    for e in ebpf:
        for o in cl.of((*IPTABLES_MODES, "ipvs")):
            if o.kernel != e.kernel:
                continue
            ce, co = cl.curves[e], cl.curves[o]
            n = min(ce.xmax, co.xmax)
            d, lo, hi = _diff_at(co, ce, n, cl.level)
            verdict = "holds" if lo > 0 else "does not hold" if hi < 0 else "inconclusive"
            cl.add("ebpf-beats", mode=e, versus=o, verdict=verdict, value=d, ci_low=lo, ci_high=hi, unit="us",
                   evidence=f"{cl.an.label(o)} minus {cl.an.label(e)} at {n:,.0f} services: "
                            f"{d:+.1f} us [{lo:+.1f}, {hi:+.1f}]")
        if not any(s.mode == "ipvs" and s.kernel == e.kernel for s in cl.curves):
            cl.add("ebpf-beats", mode=e, versus=Series("ipvs", e.kernel),
                   evidence="IPVS is not measured in this kernel (`--kernel host+uml` or `uml` measures it)")
    if not ebpf:
        cl.add("ebpf-beats", evidence="no ebpf mode in this run")


def pacing_effect(an: Analysis) -> pd.DataFrame:
    """How the probe pacing moves the curves: per mode and target, the fitted
    p50 at the smallest count and the linear slope, back to back and paced."""
    level = float(an.settings.get("level", 0.95))
    rows = []
    for key, c in an.curves.items():
        b2b = an.curves.get(key._replace(pacing=0.0))
        if key.statistic != "p50" or key.pacing <= 0 or b2b is None:
            continue
        row: dict[str, object] = dict(mode=key.mode, kernel=key.kernel, target=key.target,
                                      paced=probe_label(key.probe, key.pacing), back_to_back=key.probe)
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

"""The seed article's claims, put to the run's data: one row per claim,
mode (or pair), target and instrument, with a verdict, the number behind it
and its interval (``claims.csv``).

Pure: reads a finished :class:`~labkit.analysis.result.Analysis` (whose
curves are fitted; :func:`labkit.analysis.analyze.analyze` calls
:func:`claims` last).  The claims of the seed article ("Exotic networking
patterns for load balancing", see docs/anchors.md):

``o-n``
    iptables' rule walk is O(n): latency grows with the service count.
``o-1``
    IPVS (and nftables' maps, eBPF's hash maps) are O(1): latency does not
    grow with the service count.
``1k-5k``
    iptables is practically unnoticeable below about 1,000 services and
    fails "the latency sniff test" from 1,000 to 5,000 services.  Put to
    the data as: the mode's own rise over its value at 1 service (its
    *penalty*) first reaches a budget of ``budget_frac`` (default 10%) of
    its own ``http-new`` request at 1 service between 1,000 and 5,000
    services.  Penalty and budget are of one instrument (``http-new``);
    the SYN probes' own rise against the same budget is shown beside it.
    Both are read from the measured curve (each count's mean over the
    rounds, no model: :mod:`labkit.analysis.budget`).
``keepalive``
    connections that carry several requests amortize the O(n) penalty:
    for each k, the per-request penalty of ``reuse-<k>`` is at most 1/k of
    the new-connection penalty (``reuse-1``'s, else the SYN's) plus a margin,
    the 1,000-5,000 claim's budget (``budget_frac`` of the mode's
    ``http-new`` request at 1 service): *holds* when the excess over 1/k
    minus the margin has its interval below 0 and the per-request penalty's
    interval lies under the whole new-connection penalty, *does not hold*
    when that interval lies above 0 (:func:`labkit.analysis.budget.amortization`).  The row's figure is the
    excess over 1/k (0: amortized exactly), the margin in its evidence.
``ebpf-beats``
    eBPF beats both iptables and IPVS.

Each verdict has one instrument, named in the row (``probe``, ``pacing``,
``target``, ``statistic``, and in words ``instrument``), and ``role`` says
whether the row ``decides`` or is shown ``beside`` (what another instrument
of the run says; it never decides).  A mode measured in two kernels is
decided where it runs best, the first of :data:`KERNEL_KINDS` (the host,
natively; a pair where both run): its rows in a guest kernel are beside,
there to relate that kernel to the host (IPVS, measured only in a guest,
decides there, and so does eBPF against IPVS).  The seed's load decides: probes paced
at :data:`SEED_PACING` per second; back to back (hot caches, the best case)
is shown beside it.  ``http-new`` is measured back to back only (ab sends
its own batches), so it decides back to back.  O(n), O(1) and eBPF's claim
are judged on both targets (``last``: the service iptables' walk reaches
last; ``random``: any service, whose entry may be cold).  Statistic: p50.
Verdicts: ``holds``, ``does not hold``, ``inconclusive`` (the interval
straddles the line) and ``not measured here`` (the run lacks the deciding
measurement: the row names it and the option that measures it).  Each
judged row's ``agreement`` is how often a second run like this one would
reach the same verdict (:func:`labkit.analysis.replicate.agreement`; the
report marks a verdict under :data:`~labkit.analysis.replicate.FRAGILE`).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pandas as pd

from labkit.analysis import budget, replicate
from labkit.analysis.curves import Curve, joint_df
from labkit.analysis.intervals import interval
from labkit.analysis.result import Analysis
from labkit.analysis.run import Series, probe_label
from labkit.core import modes
from labkit.core.kernel_kinds import KERNEL_KINDS

#: "does not grow": less than this many microseconds from 1 service to the largest count
FLAT_US = 5.0
#: the seed's load: probes per second (Poisson gaps)
SEED_PACING = 1000.0
#: probe kinds measured back to back only (labkit.probes: ``pacing_supported`` False)
UNPACED_KINDS = ("http-new", "http-keepalive")
#: the targets every growth claim is judged on
CLAIM_TARGETS = ("last", "random")
#: the O(1) modes and the iptables backends, from the one table of modes
O1_MODES = modes.with_lookup(modes.CONSTANT)
IPTABLES_MODES = modes.of_family("iptables")
CLAIM_COLUMNS = ["claim", "statement", "mode", "versus", "verdict", "value", "ci_low", "ci_high",
                 "unit", "evidence", "kernel", "target", "probe", "pacing", "statistic",
                 "role", "instrument", "k", "agreement"]
STATEMENTS = {
    "o-n": "iptables' rule walk is O(n): latency grows with the number of services",
    "o-1": "IPVS (and hash-based datapaths) are O(1): latency stays constant with the number of services",
    "1k-5k": "iptables is unnoticeable below about 1,000 services and hurts from 1,000 to 5,000",
    "keepalive": "connections that carry several requests amortize iptables' O(n) penalty",
    "ebpf-beats": "eBPF beats both iptables and IPVS",
}
#: said of a row beside because its mode (or pair) is decided in another kernel
DECIDED_ELSEWHERE = "beside: decided where the mode runs best, {kernel}"
COLD_ENTRY = ("to the last service it stays flat, so the lookup itself does not lengthen: a random "
              "service's entry is cold in the caches (a working-set effect, not a longer lookup)")
#: what a judge returns for one pacing: row fields (verdict, value, ...), one per row
Judged = list[dict]


def instrument(probe: str, pacing: float, target: str, stat: str = "p50") -> str:
    """The instrument in words: "syn @1000/s (the seed's load), last target, p50"."""
    how = ("the seed's load" if pacing == SEED_PACING else "paced") if pacing > 0 else "back to back"
    return f"{probe_label(probe, pacing)} ({how}), {target} target, {stat}"


def _growth(c: Curve, level: float) -> tuple[float, float, float, float | None]:
    """The rise of the straight-line fit from the curve's smallest to its largest
    count, with its interval and degrees of freedom (:func:`labkit.analysis.budget.line_rise`; the line,
    not the chosen model: a curve chosen flat would claim a rise of exactly
    zero, with no interval)."""
    r = budget.line_rise(c, level)
    return (r.value, r.lo, r.hi, r.df) if r is not None else (math.nan, math.nan, math.nan, None)


def _line_verdict(est: float, lo: float, hi: float, line: float, df: float | None, holds_above: bool,
                  level: float) -> dict:
    """A verdict on one figure against one line (holds when its interval lies
    above it, ``holds_above``, or below), and its agreement
    (:func:`labkit.analysis.replicate.decide`)."""
    verdict, agree = replicate.decide(*replicate.line_sides(est, lo, hi, line, df, holds_above), level=level)
    return dict(verdict=verdict, agreement=agree)


def _diff_at(ca: Curve, cb: Curve, n: float, level: float) -> tuple[float, float, float, float | None]:
    """ca - cb at n services on the measured curves (each count's mean over the
    rounds; the replicates of both are paired by round), not the fitted models:
    at a measured count the means are what was measured, where a line the
    rounds kept through a jump can miss them by tens of microseconds.  Also
    the interval's degrees of freedom."""
    est = float(ca.measured([n])[0] - cb.measured([n])[0])
    ra, rb = ca.boot_measured([n])[:, 0], cb.boot_measured([n])[:, 0]
    B = min(len(ra), len(rb))
    df = joint_df(ca, cb)
    lo, hi = interval(est, ra[:B] - rb[:B], ca.method, level, df)
    return est, float(lo), float(hi), df


class _Claims:
    """The rows of claims.csv, and the run's curves by instrument."""

    def __init__(self, an: Analysis):
        self.an = an
        self.level = float(an.settings.get("level", 0.95))
        self.frac = float(an.settings.get("budget_frac", 0.1))
        self.stat = "p50"
        self.rows: list[dict] = []
        have = set(an.targets)
        self.targets = [t for t in CLAIM_TARGETS if t in have]

    def curve(self, s: Series, target: str, probe: str, pacing: float) -> Curve | None:
        return self.an.curve(s, target, (probe, pacing), self.stat)

    def of(self, names: tuple[str, ...], target: str | None = None, probe: str | None = None) -> list[Series]:
        """The run's series of ``names`` (with a curve of ``probe`` at ``target``, if given)."""
        keys = [k for k in self.an.curves if k.mode in names and (target is None or k.target == target)
                and (probe is None or k.probe == probe)]
        have = {k.series for k in keys}
        return [s for s in self.an.series if s in have]

    def elsewhere(self, s: Series, target: str, probe: str, pacing: float) -> bool:
        """Whether the run measures ``probe`` for ``s``'s mode in another kernel
        (a host+uml run measures the request probes on the host only): then
        ``s`` lacking it is the run's plan, not a claim left open."""
        return any(o.mode == s.mode and o != s and self.curve(o, target, probe, pacing) is not None
                   for o in self.an.series)

    def deciding_kernel(self, *names: str, target: str | None = None, probe: str | None = None) -> str:
        """The kernel that decides a claim about ``names`` (one mode, or a
        pair): the first of :data:`KERNEL_KINDS` in which the run measures
        all of them with the instrument (a curve of ``probe`` at ``target``),
        else the first in which it measures all of them at all, else (a pair
        no kernel measures together) the first mode's ("" when none)."""
        def first(series: list[Series]) -> str:
            have = [{s.kernel for s in series if s.mode == n} for n in names]
            common = set.intersection(*have) if have else set()
            rank = {k: i for i, k in enumerate(KERNEL_KINDS)}
            ranked = sorted(common, key=lambda k: (rank.get(k, len(rank)), k))
            return ranked[0] if ranked else ""
        return (first(self.of(names, target, probe)) or first(list(self.an.series))
                or (self.deciding_kernel(names[0]) if len(names) > 1 else ""))

    def decided_elsewhere(self, s: Series, versus: Series | None = None, target: str | None = None,
                          probe: str | None = None) -> str:
        """The kernel that decides ``s``'s claim (with ``versus``) when it is not
        ``s``'s own, else "" (:meth:`deciding_kernel`)."""
        k = self.deciding_kernel(s.mode, *((versus.mode,) if versus else ()), target=target, probe=probe)
        return "" if k in ("", s.kernel) else k

    def add(self, claim: str, mode: Series | None = None, versus: Series | None = None, **kw) -> None:
        """One row: ``kw`` sets any column; ``instrument`` follows from probe, pacing and target.
        A row of a kernel that does not decide its claim (:meth:`decided_elsewhere`)
        stands beside, saying so, and its open "not measured here" rows are left
        to the kernel that decides."""
        row: dict[str, Any] = dict(claim=claim, statement=STATEMENTS[claim], mode=mode.mode if mode else "",
                                   versus=versus.mode if versus else "", verdict="not measured here",
                                   value=math.nan, ci_low=math.nan, ci_high=math.nan, unit="", evidence="",
                                   kernel=mode.kernel if mode else "", target="", probe="", pacing=math.nan,
                                   statistic=self.stat, role="decides", k=math.nan, agreement=math.nan) | kw
        row["instrument"] = instrument(row["probe"], row["pacing"], row["target"], self.stat) if row["probe"] else ""
        decider = self.decided_elsewhere(mode, versus, row["target"] or None, row["probe"] or None) if mode else ""
        if decider:
            # another kernel decides this claim: what this kernel lacks is said there, once;
            # what it measured stands beside, saying so
            if row["role"] == "decides" and row["verdict"] == "not measured here":
                return
            row["role"] = "beside"
            row["evidence"] = f"{row['evidence']}; " + DECIDED_ELSEWHERE.format(kernel=decider)
        self.rows.append(row)

    def judged(self, claim: str, s: Series, target: str, probe: str, judge: Callable[[float], Judged],
               versus: Series | None = None, missing: str = "") -> None:
        """The rows of one claim for one series (or pair) and target: decided
        at the seed's load (back to back for a kind measured only so), back
        to back beside; a missing deciding measurement is named with the
        option that measures it (``missing``: what to say when neither
        pacing is measured)."""
        pacings = (0.0,) if probe in UNPACED_KINDS else (SEED_PACING, 0.0)
        got = {pacing: judge(pacing) for pacing in pacings}
        for i, pacing in enumerate(pacings):
            base = dict(target=target, probe=probe, pacing=pacing, role="decides" if i == 0 else "beside")
            for fields in got[pacing]:
                self.add(claim, s, versus, **(base | fields))
            if i == 0 and not got[pacing]:
                # one open verdict per row measured beside it (per k for reuse-k), or one
                ks = sorted({f["k"] for rows in got.values() for f in rows if "k" in f}) or [math.nan]
                for k in ks:
                    kind = probe if math.isnan(k) else f"reuse-{k:g}"
                    what = missing or (
                        f"{kind} to the {target} target is not measured in this run" if not any(got.values())
                        else f"{probe_label(kind, pacing)} to the {target} target (the seed's load) is not measured "
                             f"in this run (`--pacing 0,{SEED_PACING:g}` measures it); back to back is beside")
                    self.add(claim, s, versus, **(base | dict(probe=kind, k=k)), evidence=what)


def claims(an: Analysis) -> pd.DataFrame:
    """One row per claim of the seed, mode (or pair), target and instrument: :data:`CLAIM_COLUMNS`."""
    cl = _Claims(an)
    _growth_claims(cl)
    _budget_claims(cl)
    _keepalive_claims(cl)
    _ebpf_claims(cl)
    df = pd.DataFrame(cl.rows, columns=CLAIM_COLUMNS)
    return _explain_targets(df)


def _growth_judge(cl: _Claims, s: Series, target: str, o1: bool) -> Callable[[float], Judged]:
    def judge(pacing: float) -> Judged:
        c = cl.curve(s, target, "syn", pacing)
        if c is None:
            return []
        g, lo, hi, df = _growth(c, cl.level)
        judged = _line_verdict(g, lo, hi, FLAT_US, df, not o1, cl.level)
        ev = (f"{probe_label('syn', pacing)}, {target} target: the straight-line fit of p50 rises {g:+.1f} us "
              f"[{lo:+.1f}, {hi:+.1f}] from {c.xmin:,.0f} to {c.xmax:,.0f} services (chosen model: "
              f"{c.fit.describe()}); {'O(1)' if o1 else 'O(n)'} means "
              f"{'less' if o1 else 'more'} than {FLAT_US:g} us over the range")
        return [dict(judged, value=g, ci_low=lo, ci_high=hi, unit="us", evidence=ev)]
    return judge


def _growth_claims(cl: _Claims) -> None:
    """O(n) and O(1), on both targets."""
    for claim, names, o1 in (("o-n", IPTABLES_MODES, False), ("o-1", O1_MODES, True)):
        series = cl.of(names, probe="syn")
        for s in series:
            for target in CLAIM_TARGETS:
                miss = "" if target in cl.targets else (f"no {target} target in this run "
                                                        f"(`--targets {','.join(CLAIM_TARGETS)}`)")
                cl.judged(claim, s, target, "syn", _growth_judge(cl, s, target, o1), missing=miss)
        if claim == "o-1" and not any(s.mode == "ipvs" for s in series):
            cl.add("o-1", Series("ipvs", ""), evidence="IPVS is not in this run (this host's kernel has no IP_VS; "
                                                       "`--kernel uml` measures it in user-mode Linux)")
        if claim == "o-n" and not series:
            cl.add("o-n", evidence="no iptables mode in this run")


def _explain_targets(df: pd.DataFrame) -> pd.DataFrame:
    """An O(1) mode that rises to a random service (same instrument otherwise):
    say that the random target breaks it, and why where the last service
    stays flat (the lookup itself does not lengthen)."""
    o1 = df[(df["claim"] == "o-1") & (df["target"] == "random") & (df["verdict"] == "does not hold")]
    for i, r in o1.iterrows():
        last = df[(df["claim"] == "o-1") & (df["mode"] == r["mode"]) & (df["kernel"] == r["kernel"])
                  & (df["target"] == "last") & (df["pacing"] == r["pacing"]) & (df["role"] == r["role"])]
        verdict = last["verdict"].iloc[0] if len(last) else "not measured here"
        why = (f": {COLD_ENTRY}" if verdict == "holds" else
               f" (to the last service: {verdict}, so whether the lookup itself lengthens is not settled)"
               if verdict != "does not hold" else "")
        if why:
            df.loc[i, "evidence"] = f"{r['evidence']}; the random target breaks it{why}"
    return df


def _budget_claims(cl: _Claims) -> None:
    """1,000 to 5,000: the mode's own penalty against a fraction of its own
    http-new request, decided on http-new; the SYNs' own rise beside."""
    for target in cl.targets:
        for s in cl.of(IPTABLES_MODES, target=target):
            http = cl.curve(s, target, "http-new", 0.0)
            if http is None and cl.elsewhere(s, target, "http-new", 0.0):
                continue
            if http is None:
                cl.add("1k-5k", s, target=target, probe="http-new", pacing=0.0,
                       evidence=f"what a request costs (http-new to the {target} target) is not measured in this "
                                "run (`--probe-kinds syn,http-new` measures it); the SYNs' penalty is beside")
                for pacing in (SEED_PACING, 0.0):
                    syn = cl.curve(s, target, "syn", pacing)
                    if syn is not None:
                        cl.add("1k-5k", s, target=target, probe="syn", pacing=pacing, role="beside",
                               **_span_only(cl, syn))
                continue
            cl.add("1k-5k", s, target=target, probe="http-new", pacing=0.0, **_budget_row(cl, http, http))
            for pacing in (SEED_PACING, 0.0):
                syn = cl.curve(s, target, "syn", pacing)
                if syn is not None:
                    cl.add("1k-5k", s, target=target, probe="syn", pacing=pacing, role="beside",
                           **_budget_row(cl, syn, http))


def _budget_row(cl: _Claims, pen: Curve, http: Curve) -> dict:
    """The verdict, crossing and evidence of ``pen``'s own penalty against
    ``budget_frac`` of ``http``'s request at its smallest count."""
    frac, level = cl.frac, cl.level
    cx = budget.penalty_crossings(pen, http, [frac], level).iloc[0]
    own = f"{pen.key.probe} penalty (its own rise over {pen.xmin:,.0f} service{'s' * (pen.xmin != 1)})"
    ev = (f"{own}; budget {frac:.0%} of its http-new request at {http.xmin:,.0f} service"
          f"{'s' * (http.xmin != 1)} = {cx['budget_us']:.1f} us [{cx['budget_lo']:.1f}, {cx['budget_hi']:.1f}]")
    ends = budget.span_excess(pen, http, frac, budget.SPAN, level)
    verdict, agree = "not measured here", math.nan
    if ends is None:
        ev += f"; the run does not cover {budget.SPAN[0]:,.0f} to {budget.SPAN[1]:,.0f} services"
    else:
        verdict, agree = replicate.decide(*budget.span_sides(*ends), level=level)
        ev += "; penalty minus budget " + ", ".join(
            f"{e.value:+.1f} us [{e.lo:+.1f}, {e.hi:+.1f}] at {n:,.0f}" for e, n in zip(ends, budget.SPAN))
    if np.isfinite(cx["n_star"]):
        ev += f"; it reaches the budget at {cx['n_star']:,.0f} services"
        if cx["resolved"] is False:
            ev += (f" (between the measured {cx['bracket_lo']:,.0f} and {cx['bracket_hi']:,.0f}, too far apart to "
                   "locate it)")
        return dict(verdict=verdict, value=cx["n_star"], ci_low=cx["ci_low"], ci_high=cx["ci_high"],
                    unit="services", evidence=ev, agreement=agree)
    top = budget.rise(pen, pen.xmax, level)
    ev += f"; it never reaches the budget up to {pen.xmax:,.0f} services (the figure: its penalty there)"
    return dict(verdict=verdict, value=top.value, ci_low=top.lo, ci_high=top.hi, unit="us", evidence=ev,
                agreement=agree)


def _span_only(cl: _Claims, syn: Curve) -> dict:
    """Without a request's cost: the SYNs' own penalty at 1,000 and 5,000."""
    if syn.xmin > budget.SPAN[0] or syn.xmax < budget.SPAN[1]:
        return dict(evidence=f"the run does not cover {budget.SPAN[0]:,.0f} to {budget.SPAN[1]:,.0f} services")
    a, b = (budget.rise(syn, n, cl.level) for n in budget.SPAN)
    return dict(verdict="not measured here", value=a.value, ci_low=a.lo, ci_high=a.hi, unit="us",
                evidence=f"no budget: the syn penalty (own rise) is {a.value:.1f} us [{a.lo:.1f}, {a.hi:.1f}] at "
                         f"1,000 services and {b.value:.1f} us [{b.lo:.1f}, {b.hi:.1f}] at 5,000: the claim would "
                         f"hold for budgets between {max(a.hi, 0):.1f} and {b.lo:.1f} us")


REUSE = "reuse-"


def reuse_curves(cl: _Claims, s: Series, target: str, pacing: float) -> dict[int, Curve]:
    out = {}
    for key, c in cl.an.curves.items():
        if (key.series == s and key.target == target and key.pacing == pacing and key.statistic == cl.stat
                and key.probe.startswith(REUSE) and key.probe[len(REUSE):].isdigit()):
            out[int(key.probe[len(REUSE):])] = c
    return dict(sorted(out.items()))


def _amortization(cl: _Claims, s: Series, target: str, pacing: float) -> pd.DataFrame:
    """:func:`labkit.analysis.budget.amortization` of one series, target and
    pacing (empty without a reuse-k beyond the new connection), with a
    ``new`` column naming the new-connection instrument: reuse-1, else syn."""
    reuse = reuse_curves(cl, s, target, pacing)
    new = reuse.get(1) or cl.curve(s, target, "syn", pacing)
    if new is None or not [k for k in reuse if reuse[k] is not new]:
        return pd.DataFrame(columns=["new", "margin_of", *budget.AMORTIZATION_COLUMNS])
    src = "reuse-1" if 1 in reuse else "syn"
    http = cl.curve(s, target, "http-new", 0.0)
    return budget.amortization(reuse, new, cl.level, new if http is None else http, cl.frac).assign(
        new=src, margin_of=src if http is None else "http-new")


def _keepalive_claims(cl: _Claims) -> None:
    """Amortization, per k: decided on reuse-k at the seed's load."""
    any_reuse = any(k.probe.startswith(REUSE) for k in cl.an.curves)
    for target in cl.targets:
        for s in cl.of(IPTABLES_MODES):
            def judge(pacing: float, s: Series = s, target: str = target) -> Judged:
                t = _amortization(cl, s, target, pacing)
                return [dict(verdict=r["verdict"], agreement=r["agreement"], value=r["excess_us"],
                             ci_low=r["excess_lo"], ci_high=r["excess_hi"], unit="us", k=r["k"],
                             probe=f"reuse-{r['k']}", evidence=_amortization_text(r, pacing)) for _, r in t.iterrows()]
            if not reuse_curves(cl, s, target, SEED_PACING) and not reuse_curves(cl, s, target, 0.0):
                if not any_reuse and target == cl.targets[0]:   # said once, not per target
                    _no_reuse(cl, s, target)
                continue
            cl.judged("keepalive", s, target, "reuse-k", judge)


def amortization_table(an: Analysis) -> pd.DataFrame:
    """Per iptables mode, target and pacing, per k: the per-request penalty of
    reuse-k against 1/k of the new-connection penalty (the report's figure
    of the keepalive claim)."""
    cl = _Claims(an)
    parts = [_amortization(cl, s, t, p).assign(mode=s.mode, kernel=s.kernel, target=t, pacing=p)
             for t in cl.targets for s in cl.of(IPTABLES_MODES) for p in (SEED_PACING, 0.0)]
    parts = [x for x in parts if len(x)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def budget_fractions(an: Analysis, fractions=budget.FRACTIONS) -> pd.DataFrame:
    """The crossing of the 1,000-5,000 claim as a function of the budget
    fraction: per iptables mode and target with http-new, the http-new
    penalty (``role`` decides) and the SYNs' (beside), each against the
    fraction of the mode's http-new request at its smallest count
    (:data:`labkit.analysis.budget.CROSSING_COLUMNS` and identity columns)."""
    cl = _Claims(an)
    parts = []
    for target in cl.targets:
        for s in cl.of(IPTABLES_MODES, target=target, probe="http-new"):
            http = cl.curve(s, target, "http-new", 0.0)
            assert http is not None
            first = "beside" if cl.decided_elsewhere(s, target=target, probe="http-new") else "decides"
            for probe, pacing, role in (("http-new", 0.0, first), ("syn", SEED_PACING, "beside"),
                                        ("syn", 0.0, "beside")):
                c = http if probe == "http-new" else cl.curve(s, target, probe, pacing)
                if c is not None:
                    parts.append(budget.penalty_crossings(c, http, fractions, cl.level).assign(
                        mode=s.mode, kernel=s.kernel, target=target, probe=probe, pacing=pacing, role=role))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _amortization_text(r: pd.Series, pacing: float) -> str:
    pct = r["penalty_us"] / r["base_us"] * 100 if r["base_us"] > 0 else math.nan
    name = probe_label(f"reuse-{r['k']}", pacing)
    return (f"{name}: per-request penalty at "
            f"{r['n']:,.0f} services {r['penalty_us']:+.1f} us [{r['penalty_lo']:+.1f}, {r['penalty_hi']:+.1f}] "
            f"({pct:+.0f}% of its value at 1 service), against 1/{r['k']} of the new-connection ({r['new']}) "
            f"penalty {r['new_us']:+.1f} us: {r['expected_us']:.1f} us; excess {r['excess_us']:+.1f} us "
            f"[{r['excess_lo']:+.1f}, {r['excess_hi']:+.1f}]; margin {r['margin_us']:.1f} us (the budget: "
            f"{r['margin_of']} at 1 service); excess minus margin {r['over_us']:+.1f} us "
            f"[{r['over_lo']:+.1f}, {r['over_hi']:+.1f}]: amortized means below 0")


def _no_reuse(cl: _Claims, s: Series, target: str) -> None:
    """No reuse-k at all: say so; the keepalive probe's rise (the mechanism, not
    the amortization) beside where measured."""
    cl.add("keepalive", s, target=target, probe="reuse-k", pacing=SEED_PACING,
           evidence=f"no reuse-k probes in this run (`--probe-kinds syn,reuse-1,reuse-3,reuse-10,reuse-30 "
                    f"--pacing 0,{SEED_PACING:g}`)")
    for pacing in (SEED_PACING, 0.0):
        k = cl.curve(s, target, "keepalive", pacing)
        if k is not None:
            g, lo, hi, df = _growth(k, cl.level)
            cl.add("keepalive", s, target=target, probe="keepalive", pacing=pacing, role="beside",
                   **_line_verdict(g, lo, hi, FLAT_US, df, False, cl.level), value=g, ci_low=lo, ci_high=hi, unit="us",
                   evidence=f"the mechanism only: a request on an already open connection rises {g:+.1f} us "
                            f"[{lo:+.1f}, {hi:+.1f}] from {k.xmin:,.0f} to {k.xmax:,.0f} services")


def _ebpf_claims(cl: _Claims) -> None:
    """eBPF beats both iptables and IPVS, in one kernel, per target."""
    ebpf = cl.of(("ebpf",))
    for e in ebpf:
        for target in cl.targets:
            for o in cl.of((*IPTABLES_MODES, "ipvs"), target=target):
                if o.kernel != e.kernel:
                    continue

                def judge(pacing: float, e: Series = e, o: Series = o, target: str = target) -> Judged:
                    ce, co = cl.curve(e, target, "syn", pacing), cl.curve(o, target, "syn", pacing)
                    if ce is None or co is None:
                        return []
                    n = min(ce.xmax, co.xmax)
                    d, lo, hi, df = _diff_at(co, ce, n, cl.level)
                    return [dict(_line_verdict(d, lo, hi, 0.0, df, True, cl.level), value=d, ci_low=lo, ci_high=hi,
                                 unit="us",
                                 evidence=f"{probe_label('syn', pacing)}, {target} target: {cl.an.label(o)} minus "
                                          f"{cl.an.label(e)} at {n:,.0f} services: {d:+.1f} us [{lo:+.1f}, {hi:+.1f}]")]
                cl.judged("ebpf-beats", e, target, "syn", judge, versus=o)
        if not any(s.mode == "ipvs" and s.kernel == x.kernel for s in cl.of(("ipvs",)) for x in ebpf):
            cl.add("ebpf-beats", e, Series("ipvs", e.kernel),
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

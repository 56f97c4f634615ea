"""The report's first screen, as HTML for notebooks/analysis.ipynb: the
answer (``answer``), the seed's claims with this run's verdicts
(``claims_table``, from ``claims.csv``) and the 1,000-5,000 crossing against
the budget fraction (``budget_table``; its figure is
:func:`labkit.report.plots.budget_fractions`).  Each verdict is shown with
the instrument that decides it (the seed's load where the run has it) and,
in brackets, what the run's other instruments say; no statistics here."""
from __future__ import annotations

import html

import numpy as np
import pandas as pd

from labkit.analysis import Analysis
from labkit.analysis.claims import COLD_ENTRY, FLAT_US, SEED_PACING, budget_fractions
from labkit.analysis.intervals import bracket, resolved
from labkit.analysis.ipvs_answer import unlocated
from labkit.analysis.replicate import FRAGILE
from labkit.analysis.run import Series, probe_label
from labkit.report.markup import details
from labkit.report.sections import _ci, _html, ipvs_item, table_html

VERDICT_MARK = {"holds": "\u2714 holds", "does not hold": "\u2718 does not hold",
                "inconclusive": "? inconclusive", "not measured here": "\u2013 not measured here"}


CLAIM_NAMES = {"o-n": "O(n)", "o-1": "O(1)", "1k-5k": "hurts from 1,000\u20135,000",
               "keepalive": "reuse amortizes", "ebpf-beats": "eBPF beats iptables and IPVS"}


def _figure(r) -> str:
    """A claims row's figure with its interval and unit ("" when it has none)."""
    if not np.isfinite(r["value"]):
        return ""
    fmt = "{:,.0f}" if r["unit"] == "services" else "{:+,.1f}"
    return _ci(r["value"], r["ci_low"], r["ci_high"], fmt) + f" {r['unit']}"


def _fragile(r) -> bool:
    """Whether a row's verdict is near its line: a second run like this one
    would repeat it less often than :data:`~labkit.analysis.replicate.FRAGILE`."""
    a = r.get("agreement", np.nan)
    return bool(np.isfinite(a) and a < FRAGILE)


def _agreement(r) -> str:
    a = r.get("agreement", np.nan)
    return f"{a:.0%}" if np.isfinite(a) else ""


def _shown(an: Analysis) -> pd.DataFrame:
    """claims.csv with the series' labels, the probe kind kept bare (the pacing is its own column)."""
    return an.shown(an.claims, "mode", "versus").assign(probe=an.claims["probe"])


def _short_instrument(probe: str, pacing: float) -> str:
    return probe_label(probe, pacing) if pacing > 0 else f"{probe} b2b"


def _cell(rows: pd.DataFrame) -> str:
    """One claim, mode and target: the deciding verdict and figure, then each
    figure beside it (another instrument of the run, which decides nothing)."""
    dec = rows[rows["role"] == "decides"]
    beside = rows[rows["role"] == "beside"]
    parts = [f"{VERDICT_MARK.get(r['verdict'], r['verdict'])} {_figure(r)}".strip()
             + (f" (near its line: a second run repeats it ~{_agreement(r)})" if _fragile(r) else "")
             for _, r in dec.iterrows()]
    if not len(beside) and len(dec) and (dec["verdict"] == "not measured here").all():
        parts[-1] += f": {dec['evidence'].iloc[0]}"
    for _, r in beside.iterrows():
        mark = VERDICT_MARK.get(r["verdict"], r["verdict"]).split(" ")[0]
        parts.append(f"({_short_instrument(r['probe'], r['pacing'])}: {mark} {_figure(r)})")
    return " ".join(parts)


def _claim_groups(c: pd.DataFrame):
    """The claims rows grouped by claim, mode, versus and k (in the table's order)."""
    keys = ["claim", "mode", "versus", "kernel", "k"]
    c = c.assign(k=c["k"].fillna(0))
    return c.groupby(keys, sort=False, dropna=False)


def claims_table(an: Analysis):
    """The seed's claims with this run's verdicts (claims.csv): one line per
    claim and mode (and k), a column per target; each cell the deciding
    verdict and figure, what the other instruments say in brackets; the
    instrument that decides in the last column.  Every row of claims.csv,
    with its evidence, in a collapsed table below."""
    c = _shown(an)
    if not len(c):
        return _html('<p class="lk-note">no claims could be evaluated</p>')
    level = f"{an.settings['level']:.0%}"
    targets = [t for t in ("last", "random") if (c["target"] == t).any()]
    lines = []
    for (claim, mode, versus, _, k), g in _claim_groups(c):
        dec = g[g["role"] == "decides"]
        line = {"seed's claim": CLAIM_NAMES.get(claim, claim),
                "mode": (f"{mode} vs {versus}" if versus else mode) + (f", k = {k:.0f}" if k else "")}
        for t in targets:
            # a row of no target (a mode the run lacks) speaks in the first column
            line[f"{t} target [{level} CI]"] = _cell(g[g["target"] == t] if (g["target"] != "").any()
                                                     or t != targets[0] else g)
        if not targets:
            line["verdict"] = _cell(g)
        first = dec[dec["instrument"] != ""]
        line["decided on"] = (_short_instrument(first["probe"].iloc[0], first["pacing"].iloc[0])
                              if len(first) else "" if len(dec) else "beside: decided where it runs best")
        lines.append(line)
    out = pd.DataFrame(lines)
    out["seed's claim"] = [t if i == 0 or t != p else "" for i, (t, p) in
                           enumerate(zip(out["seed's claim"], [""] + list(out["seed's claim"][:-1])))]
    every = pd.DataFrame({"claim": c["claim"],
                          "mode": [f"{m} vs {v}" if v else m for m, v in zip(c["mode"], c["versus"])],
                          "target": c["target"], "instrument": c["instrument"], "role": c["role"],
                          "verdict": c["verdict"], f"figure [{level} CI]": [_figure(r) for _, r in c.iterrows()],
                          "a second run agrees": [_agreement(r) for _, r in c.iterrows()],
                          "evidence": c["evidence"]})
    return _html(table_html(out, cls="lk lk-claims")
                 + details(f"how each verdict was reached: the {len(c)} rows of claims.csv, with their evidence",
                           table_html(every)))


def _decided(c: pd.DataFrame, claim: str) -> pd.DataFrame:
    return c[(c["claim"] == claim) & (c["role"] == "decides")]


def _pacing_sentence(c: pd.DataFrame) -> str:
    syn = c[(c["probe"] == "syn") & (c["role"] == "decides")]
    if (syn["verdict"] != "not measured here").any():
        return (f"At the seed's load (SYN probes paced at {SEED_PACING:,.0f}/s; back to back, the best case, "
                "is in the table):")
    return (f"This run has no probes at the seed's load (paced at {SEED_PACING:,.0f}/s; `--pacing "
            f"0,{SEED_PACING:g}`): its SYN verdicts are open. Back to back (b2b: hot caches, the best case), "
            "deciding nothing:")


def _mark(verdict: str) -> str:
    return VERDICT_MARK.get(verdict, verdict).split(" ")[0]


def _per_target(g: pd.DataFrame) -> str:
    """"last \u2714 +27.0, random \u2718 +3.1 us" for one claim and mode (the
    intervals are in the claims table); where the seed's load is not
    measured, the back-to-back figure, marked b2b."""
    out = []
    unit = ""
    for t in ("last", "random"):
        rows = g[g["target"] == t]
        dec = rows[rows["role"] == "decides"]
        if not len(dec):
            continue
        r = dec.iloc[0]
        b = rows[(rows["role"] == "beside") & (rows["probe"] == r["probe"]) & rows["value"].notna()]
        use, tag = ((b.iloc[0], "b2b") if r["verdict"] == "not measured here" and len(b)
                    else (r, _mark(r["verdict"]) + "*" * _fragile(r)))
        if np.isfinite(use["value"]):
            out.append(f"{t} {tag} {use['value']:+,.1f}")
            unit = use["unit"]
        else:
            out.append(f"{t} {tag}")
    return ", ".join(out) + (f" {unit}" if unit else "")


def _hurts_from(r, counts: np.ndarray | None = None) -> str:
    """One iptables backend's 1,000-5,000 row in words: from how many services
    its own penalty costs more than the budget, and the claim's verdict.  A
    crossing between measured ``counts`` too far apart to locate it (the
    default grid's 1 and 1,000) is said not to be located, naming them."""
    note = ""
    if r["unit"] == "services" and np.isfinite(r["value"]):
        where = f"from {_figure(r)}"
        lo, hi = bracket(r["value"], counts) if counts is not None and len(counts) else (np.nan, np.nan)
        if np.isfinite(lo) and not resolved(lo, hi):
            note = f"{unlocated(lo, hi)}; "
    elif np.isfinite(r["value"]):
        where = f"not within the measured range (its penalty at the largest count: {_figure(r)})"
    else:
        where = "not located"
    return f"{r['mode']} {where} ({note}1,000\u20135,000: {_mark(r['verdict'])}{'*' * _fragile(r)} {r['verdict']})"


def _measured_counts(an: Analysis, i) -> np.ndarray | None:
    """The counts the curve behind claims row ``i`` (by index) measured."""
    raw = an.claims.loc[i]
    c = an.curve(Series(raw["mode"], raw["kernel"]), raw["target"], (raw["probe"], float(raw["pacing"])), "p50")
    return None if c is None else c.x


def _budget_items(an: Analysis, c: pd.DataFrame, frac: float) -> list[str]:
    """Where each iptables backend starts to hurt, per target, decided on
    http-new; or what is missing."""
    k = _decided(c, "1k-5k")
    http = k[(k["probe"] == "http-new") & (k["verdict"] != "not measured here")]
    if not len(http):
        return ["<b>Where iptables starts to hurt</b>: not measured here (no http-new requests to set the "
                "budget: <code>--probe-kinds syn,http-new</code>)."] if len(k) else []
    out = []
    for target, g in http.groupby("target", sort=False):
        out.append(f"<b>Where iptables starts to hurt</b> ({html.escape(target)} target; where a backend's own "
                   f"rise on a new request, http-new, exceeds {frac:.0%} of that request at 1 service): "
                   + "; ".join(html.escape(_hurts_from(r, _measured_counts(an, i))) for i, r in g.iterrows())
                   + ".")
    return out


def answer(an: Analysis):
    """The answer as a short list, from the claims (figures with intervals
    and the instruments in the claims table below it): where each iptables
    backend starts to hurt, then each growth verdict on both targets at the
    seed's load, eBPF's claim, where IPVS beats iptables (and what moving to
    nftables changes) and amortization."""
    c = _shown(an)
    if not len(c):
        return _html('<p class="lk-note">Too few modes or counts for an answer.</p>')
    items = _budget_items(an, c, an.settings["budget_frac"])
    for claim, what in (("o-n", "O(n)"), ("o-1", "O(1)"), ("ebpf-beats", "eBPF beats")):
        g = c[c["claim"] == claim]
        keys = list(dict.fromkeys(zip(g["mode"], g["versus"].fillna(""))))
        per = [f"{m}{f' vs {v}' if v else ''}: {t}" for m, v in keys
               if (t := _per_target(g[(g["mode"] == m) & (g["versus"].fillna("") == v)]))]
        if not per:
            continue
        how = {"o-n": "the first packet's rise over the range", "o-1": f"under {FLAT_US:g} us of rise",
               "ebpf-beats": "its lead at the largest common count"}[claim]
        items.append(f"<b>{what}</b> ({how}): " + html.escape("; ".join(per)) + ".")
        if claim == "o-1" and _decided(c, claim)["evidence"].str.contains(COLD_ENTRY, regex=False).any():
            items.append("Where the random target breaks O(1): " + html.escape(COLD_ENTRY) + ".")
    ipvs = ipvs_item(an, SEED_PACING)
    if ipvs:
        items.append(ipvs)
    a = _decided(c, "keepalive")
    a = a[a["k"].notna()]
    if len(a):
        byk: dict[tuple[str, str], list[str]] = {}
        for _, r in a.iterrows():
            byk.setdefault((r["mode"], r["target"]), []).append(
                f"k = {r['k']:.0f} {_mark(r['verdict'])}{'*' * _fragile(r)}")
        items.append("<b>Reuse amortizes</b> (per-request penalty at most 1/k of a new connection's "
                     "plus the budget): "
                     + html.escape("; ".join(f"{m} ({t}): {', '.join(v)}" for (m, t), v in byk.items())) + ".")
    level = f"{an.settings['level']:.0%}"
    return _html(f'<p class="lk-answer">{html.escape(_pacing_sentence(c))}</p><ul class="lk-answer">'
                 + "".join(f"<li>{x}</li>" for x in items)
                 + f'</ul><p class="lk-note">(\u2714 holds, \u2718 does not hold, ? inconclusive; * near its line: '
                 f"a second run like this one would repeat that verdict less than {FRAGILE:.0%} of the time; {level} "
                 "intervals, each verdict's chance to repeat and how it was reached: the claims table.)</p>")


def budget_table(an: Analysis, table: pd.DataFrame | None = None):
    """The 1,000-5,000 crossing against the budget fraction (the figure's
    numbers; ``table``: :func:`labkit.analysis.claims.budget_fractions` of ``an``)."""
    t = budget_fractions(an) if table is None else table
    if not len(t):
        return _html('<p class="lk-note">No http-new requests in this run (`--probe-kinds syn,http-new`): '
                     "no budget, no crossing against it.</p>")
    t = an.shown(t)
    level = f"{an.settings['level']:.0%}"
    t = t.assign(col=[f"{m}, {p} ({'decides' if r == 'decides' else 'beside'})"
                      for m, p, r in zip(t["mode"], t["probe"], t["role"])],
                 cell=[_ci(v, lo, hi, "{:,.0f}") if np.isfinite(v) else "beyond the range"
                       for v, lo, hi in zip(t["n_star"], t["ci_low"], t["ci_high"])])
    w = t.pivot_table(index="fraction", columns="col", values="cell", aggfunc="first", sort=False).reset_index()
    w["fraction"] = [f"{f:.0%}" for f in w["fraction"]]
    return _html(details(f"the crossing against the budget fraction (services, {level} CI)", table_html(w)))

"""The sections of the published report, as HTML for notebooks/analysis.ipynb
(``header``, ``ipvs_answer``, ``summary_table``...; the answer and the claims table, the
first screen, are :mod:`labkit.report.verdicts`'):
each renders one piece from an :class:`labkit.analysis.Analysis` and holds no
statistics of its own.  :mod:`labkit.report.build` runs the notebook and
writes the HTML."""
from __future__ import annotations

import datetime as dt
import html
import os

import numpy as np
import pandas as pd
from IPython.display import HTML

from labkit.analysis import Analysis, anchors, noise
from labkit.analysis.claims import pacing_effect
from labkit.analysis.ipvs_answer import ipvs_phrases, ipvs_rows, pacing_words
from labkit.analysis.kernels import cross_kernel_growth, kernel_ratios
from labkit.analysis.result import at_probe
from labkit.analysis.run import Series, probe_label
from labkit.core import topology
from labkit.core.modes import CALIBRATORS
from labkit.report.markup import details


def _html(s: str):
    return HTML(s)


def fold(body, summary: str):
    """``body`` (HTML, or an object with ``.data`` such as IPython's HTML) under a
    one-line ``summary`` in a ``<details>`` element: closed on the page and in
    print, one click away in the browser and in JupyterLab.  A body with no
    table, list or figure (a one-line note such as "All points are valid.") is
    shown as it is: there is nothing to fold."""
    text = str(getattr(body, "data", body) or "")
    if not any(tag in text for tag in ("<table", "<img", "<li")):
        return _html(text)
    return _html(details(summary, text))


def table_html(df: pd.DataFrame, floatfmt: str = "{:,.2f}", cls: str = "lk") -> str:
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else floatfmt.format(v)
        return html.escape(str(v))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    labels = [html.escape(str(c), quote=True) for c in df.columns]   # for the stacked narrow layout
    rows = "".join("<tr>" + "".join(f'<td data-label="{k}">{cell(v)}</td>' for k, v in zip(labels, r))
                   + "</tr>" for r in df.itertuples(index=False))
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _ci(v, lo, hi, fmt="{:,.1f}") -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    s = fmt.format(v)
    if not (np.isnan(lo) or np.isnan(hi)):
        s += f" [{fmt.format(lo)}, {fmt.format(hi)}]"
    return s


def _crit(c: str) -> str:
    return {"aicc": "AICc", "aic": "AIC", "bic": "BIC", "none": "none (two points)"}.get(c, c)


def _when(t) -> str:
    try:
        return dt.datetime.fromtimestamp(float(t), dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError):
        return "unknown"


def header(an: Analysis):
    m = an.run.meta
    c = an.checks
    complete = "complete" if m.get("complete") else "INCOMPLETE (the sweep stopped early)"
    rows = [("run", m.get("run_id", "")), ("kernel", m.get("kernel_release", "")),
            ("modes", ", ".join(map(an.label, an.series))), ("targets", ", ".join(an.targets)),
            ("probe kinds", ", ".join(probe_label(*p) for p in an.probes)),
            ("measured", f"{_when(m.get('started'))} to {_when(m.get('finished'))}, {complete}"),
            ("points", f"{c['points']} measured, {c['points_used']} used in fits, "
                       f"{c['points_invalid']} invalid (shown, not fitted)"),
            ("headline", f"{an.headline_target} target, {_headline_probe(an)} probes"),
            ("budgets", f"{an.settings['budget_us']:g} us, and {an.settings['budget_frac']:.0%} of what one "
                        "request costs on the other mode's path (its http-new median where the run has "
                        "it, else its own p50 at the smallest count)"),
            ("intervals", _interval_text(an))]
    df = pd.DataFrame(rows, columns=["", ""])
    return _html(table_html(df))


def noise_note(an: Analysis, reference: str = noise.REFERENCE_RUN):
    """The noise gauge (:mod:`labkit.analysis.noise`): one warning line when
    the run was disturbed, then the machine's load and its speed against the
    reference run (not against itself)."""
    load = noise.summarize(noise.read_load(an.run.path))
    ref = None
    if os.path.realpath(reference) != os.path.realpath(an.run.path):
        ref = noise.read_points(reference)
    speed = noise.speed_ratio(an.run.points, ref) if ref is not None else None
    paced = (noise.paced_spread(an.run.points), noise.paced_spread(ref) if ref is not None else float("nan"))
    cpus = (noise.cpu_of(an.run.meta), noise.cpu_of(noise.read_meta(reference)) if ref is not None else "")
    lines = noise.lines(load, noise.drift(an.run.points), speed,
                        f"the reference run data/reference/{os.path.basename(reference)}", paced, cpus)
    warn = [x for x in lines if x.startswith("Warning")]
    rest = [x for x in lines if not x.startswith("Warning")]
    return _html("".join(f'<p class="lk-warn">{html.escape(x)}</p>' for x in warn)
                 + f'<p class="lk-note">{html.escape(" ".join(rest))}</p>')


def rounds_by_count(an: Analysis) -> str | None:
    """The modes' rounds where they differ (``mode_rounds``): "4 for
    iptables-legacy, iptables-nft; 6 for ebpf, ...", and the end rounds
    (``end_rounds``, settle rounds): "6 at the smallest and largest counts
    for iptables-legacy's http-new, reuse-1 ...", "9 at 1 and 1,000 services
    for iptables-nft's http-new"; None where every mode and count has the
    same."""
    by: dict[int, set[str]] = {}
    for mode, n in an.rounds_by_mode().items():
        by.setdefault(n, set()).add(mode)
    ends, counted = an.end_rounds_by_mode(), an.counted_rounds_by_mode()
    if len(by) < 2 and not ends and not counted:
        return None
    parts = [f"{n} for {', '.join(sorted(ms))}" for n, ms in sorted(by.items())]
    grouped: dict[tuple[int, tuple[str, ...]], list[str]] = {}
    for mode, (n, kinds) in sorted(ends.items()):
        grouped.setdefault((n, tuple(kinds)), []).append(mode)
    parts += [f"{n} at the smallest and largest counts for {', '.join(ms)}'s {', '.join(kinds)}"
              for (n, kinds), ms in grouped.items()]
    at: dict[tuple[int, tuple[int, ...], tuple[str, ...]], list[str]] = {}
    for mode, (n, counts, kinds) in sorted(counted.items()):
        at.setdefault((n, tuple(counts), tuple(kinds)), []).append(mode)
    parts += [f"{n} at {_counts_words(counts)} services for {', '.join(ms)}'s {', '.join(kinds)}"
              for (n, counts, kinds), ms in at.items()]
    return "; ".join(parts)


def _counts_words(counts) -> str:
    """1, 1,000 and 5,000."""
    w = [f"{int(n):,}" for n in counts]
    return " and ".join([", ".join(w[:-1]), w[-1]]) if len(w) > 1 else "".join(w)


def _interval_text(an: Analysis) -> str:
    level = f"{an.settings['level']:.0%}"
    r = an.settings.get("rounds", 0)
    if an.settings["resample"] == "rounds":
        each = rounds_by_count(an)
        if each:   # mode_rounds, end_rounds: some modes or counts measured in more rounds than others
            return (f"{level}, rounds as the independent units: delete-one-round jackknife over each curve's "
                    f"rounds ({each}), Student's t with its rounds - 1 degrees of freedom (a figure of two "
                    "curves: the fewer; of a curve's counts: the fewest of theirs)")
        return (f"{level}, rounds as the independent units: delete-one-round jackknife over {r} rounds, "
                f"Student's t with {r - 1} degrees of freedom")
    return (f"{level} percentile bootstrap, {an.settings['n_boot']} replicates "
            f"({an.settings['resample']}): one round, so they cover probe noise only, not drift")


def _headline_probe(an: Analysis) -> str:
    return probe_label(*an.headline_probe)


def ipvs_item(an: Analysis, pacing: float) -> str:
    """The answer's one line on IPVS (HTML, or "" when the run has no IPVS beside an
    iptables mode): per target at ``pacing`` (the seed's load; back to back when the
    run has only that), where IPVS beats each iptables backend, p50 curves crossing
    with intervals, and what moving from IPVS to nftables changes."""
    rows = ipvs_rows(an.crossover)
    if not len(rows):
        return ""
    if not (rows["pacing"] == pacing).any():
        pacing = float(rows["pacing"].min())
    rows = rows[rows["pacing"] == pacing]
    level = f"{an.settings['level']:.0%}"
    per = []
    for (target, _), g in rows.groupby(["target", "probe"], sort=False):
        parts = ipvs_phrases(g, short=True)
        if parts:
            per.append(f"{target} target: " + "; ".join(parts))
    if not per:
        return ""
    kernels = sorted(set(rows["kernel"].dropna().astype(str)))
    where = f"in one kernel ({', '.join(kernels)})" if len(set(an.points["kernel"])) > 1 and kernels \
        else "in one kernel"
    return (f"<b>Where IPVS beats iptables</b> (p50 curves crossing, {level} intervals, "
            f"{html.escape(pacing_words(pacing))}, {html.escape(where)}; the budget and the other pacing "
            "below the claims table): " + html.escape(". ".join(per)) + ".")


def ipvs_answer(an: Analysis):
    """Where IPVS beats each iptables backend (curve crossing, and the absolute
    budget), per target and pacing, with intervals; and what moving from IPVS
    to nftables changes (Kubernetes deprecated IPVS in 1.35 and points to
    nftables).  Empty when the run has no IPVS beside an iptables mode."""
    rows = ipvs_rows(an.crossover)
    if not len(rows):
        return _html("")
    level = f"{an.settings['level']:.0%}"
    items = []
    for (target, _, pacing), g in rows.groupby(["target", "probe", "pacing"], sort=False):
        where = f"{target} target, {pacing_words(pacing)}"
        parts = ipvs_phrases(g, an.settings["budget_us"])
        if parts:
            items.append(f"<li><b>{html.escape(where)}</b>: " + "; ".join(html.escape(p) for p in parts) + ".</li>")
    if not items:
        return _html("")
    note = (f'<span class="lk-note">(p50 of the first packet, one kernel, {level} intervals. Kubernetes '
            "deprecated IPVS mode in 1.35 and points its users to nftables, which is why each line also "
            "says what moving from IPVS to nftables changes.)</span>")
    return _html("<p class=\"lk-answer\">Where IPVS beats iptables:</p><ul class=\"lk-answer\">"
                 + "".join(items) + "</ul>" + note)


def measured_table(an: Analysis, stats=("p50", "p99")):
    """Measured medians over rounds per mode and service count (headline target and probe)."""
    p = an.points[an.points["used"] & (an.points["target"] == an.headline_target)
                  & at_probe(an.points, an.headline_probe)]
    if not len(p):
        return _html('<p class="lk-note">no valid points</p>')
    p = p.assign(series=an.run.labels(p))
    order = {an.label(m): i for i, m in enumerate(an.series)}
    parts = []
    for stat in stats:
        t = p.pivot_table(index="services", columns="series", values=stat, aggfunc="median")
        t = t[sorted(t.columns, key=lambda c: order.get(c, 99))]
        t.insert(0, "services", [f"{int(n):,}" + (" (empty table)" if n == 0 else "") for n in t.index])
        parts.append(f"<h4>{stat} \u00b5s, median over rounds ({an.headline_target} target, "
                     f"{_headline_probe(an)})</h4>" + table_html(t.reset_index(drop=True), "{:,.1f}"))
    return _html("".join(parts))


def empty_table(an: Analysis):
    """The 0-service reference per mode: an empty table, no NAT."""
    e = an.shown(an.empty)
    if not len(e):
        return _html('<p class="lk-note">no 0-service points in this run</p>')
    s = an.shown(an.summary[(an.summary["target"] == an.headline_target) & (an.summary["statistic"] == "p50")
                            & at_probe(an.summary, an.headline_probe)]).set_index("mode")
    out = pd.DataFrame({
        "mode": e["mode"], "probe": e["probe"], "points": e["points"], "probes": e["probes"],
        "p50 \u00b5s, empty table": e["p50_us"], "per-round p50 range": [
            f"{a:.2f}\u2013{b:.2f}" for a, b in zip(e["p50_round_min"], e["p50_round_max"])],
        "p50 \u00b5s at the curve's first count (fit)": [
            _ci(s.loc[m, "baseline_us"], s.loc[m, "baseline_lo"], s.loc[m, "baseline_hi"], "{:,.2f}")
            if m in s.index and p == _headline_probe(an) else "" for m, p in zip(e["mode"], e["probe"])]})
    return _html(table_html(out))


def pacing_table(an: Analysis):
    """Back to back against paced probes: baseline and slope of each."""
    p = pacing_effect(an)
    p = an.shown(p) if len(p) else p
    if not len(p):
        return _html('<p class="lk-note">one pacing only in this run (`--pacing 0,1000` measures both)</p>')
    level = f"{an.settings['level']:.0%}"
    out = pd.DataFrame({
        "mode": p["mode"], "target": p["target"], "paced": p["paced"],
        f"p50 at first count, back to back [{level}]": [
            _ci(v, lo, hi, "{:,.2f}") for v, lo, hi in zip(p["b2b_base_us"], p["b2b_base_lo"], p["b2b_base_hi"])],
        f"p50 at first count, paced [{level}]": [
            _ci(v, lo, hi, "{:,.2f}") for v, lo, hi in zip(p["paced_base_us"], p["paced_base_lo"], p["paced_base_hi"])],
        "slope ns/svc, back to back": [
            _ci(v, lo, hi, "{:,.2f}") for v, lo, hi in zip(p.get("b2b_slope_ns", []), p.get("b2b_slope_lo", []),
                                                           p.get("b2b_slope_hi", []))],
        "slope ns/svc, paced": [
            _ci(v, lo, hi, "{:,.2f}") for v, lo, hi in zip(p.get("paced_slope_ns", []),
                                                           p.get("paced_slope_lo", []), p.get("paced_slope_hi", []))]})
    return _html(table_html(out))


def summary_table(an: Analysis, stats=("p50", "p99"), target: str | None = None):
    target = target or an.headline_target
    s = an.shown(an.summary[(an.summary["target"] == target) & an.summary["statistic"].isin(stats)])
    order = {an.label(m): i for i, m in enumerate(an.series)}
    s = s.sort_values(["probe", "statistic", "mode"], key=lambda c: c.map(order) if c.name == "mode" else c)
    level = f"{an.settings['level']:.0%}"
    out = pd.DataFrame({
        "mode": s["mode"], "probe": s["probe"], "statistic": s["statistic"],
        f"baseline \u00b5s at {int(s['services_min'].min()):,} svc [{level} CI]": [
            _ci(v, lo, hi) for v, lo, hi in zip(s["baseline_us"], s["baseline_lo"], s["baseline_hi"])],
        f"slope ns/service, linear fit [{level} CI]": [
            _ci(v, lo, hi, "{:,.2f}") for v, lo, hi in zip(s["slope_ns"], s["slope_lo"], s["slope_hi"])],
        "chosen model": s["model"], "fitted curve": s["curve"],
        "knot, services [CI]": [_ci(v, lo, hi, "{:,.0f}") for v, lo, hi in zip(s["knot"], s["knot_lo"], s["knot_hi"])],
        "linear fit worse by": [f"{v:.1f} {_crit(c)}" if np.isfinite(v) and v > 0 else ""
                                for v, c in zip(s["linear_delta"], s["criterion"])],
        "points (invalid)": [f"{a} ({b})" for a, b in zip(s["n_points"], s["n_invalid"])],
    })
    return _html(table_html(out))


def crossover_table(an: Analysis, target: str | None = None, stats=("p50", "p99"),
                    kinds=("fit", "budget-abs", "budget-rel"), only_found_budgets: bool = True,
                    collapsed: bool = False):
    target = target or an.headline_target
    cx = an.crossover[(an.crossover["target"] == target) & an.crossover["statistic"].isin(stats)
                      & an.crossover["kind"].isin(kinds) & at_probe(an.crossover, an.headline_probe)]
    if only_found_budgets:
        cx = cx[(cx["kind"] == "fit") | (cx["n_star"] > cx["range_lo"])]
    body = _crossover_html(an.shown(cx, "mode_a", "mode_b"), an.settings["level"])
    if collapsed:
        body = details(f"the table behind these findings ({len(cx)} rows, {target} target, "
                       f"{_headline_probe(an)})", body)
    return _html(body)


def _crossover_html(cx: pd.DataFrame, level: float) -> str:
    if not len(cx):
        return '<p class="lk-note">none</p>'
    out = pd.DataFrame({
        "mode a": cx["mode_a"], "mode b": cx["mode_b"], "target": cx["target"], "probe": cx["probe"],
        "statistic": cx["statistic"], "kind": cx["kind"],
        "budget \u00b5s": cx["budget_us"],
        f"n* services [{level:.0%} CI]": [_ci(v, lo, hi, "{:,.0f}") if np.isfinite(v) else "no crossing"
                                          for v, lo, hi in zip(cx["n_star"], cx["ci_low"], cx["ci_high"])],
        "replicates crossing": [f"{v:.0%}" if np.isfinite(v) else "" for v in cx["boot_frac"]],
        "between measured counts": [
            "" if not np.isfinite(lo)
            else f"{lo:,.0f}\u2013{hi:,.0f}" + ("" if ok is not False else " (too far apart)")
            for lo, hi, ok in zip(cx.get("bracket_lo", []), cx.get("bracket_hi", []), cx.get("resolved", []))],
        "finding": cx["finding"]})
    return table_html(out, "{:,.1f}")


def all_crossovers(an: Analysis):
    n = len(an.crossover)
    body = _crossover_html(an.shown(an.crossover, "mode_a", "mode_b"), an.settings["level"])
    return _html(details(f"all {n} rows of crossover.csv (every target, statistic and ordered pair)", body))


def findings(an: Analysis):
    items = an.headline_findings()
    if not items:
        return _html('<p class="lk-note">Only one mode was measured: no crossovers.</p>')
    return _html("<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in items) + "</ul>" + _dropped_note(an))


def _dropped_note(an: Analysis) -> str:
    """The one note on budget rows left out of crossover.csv (analysis.analyze.crossovers)."""
    n = int(an.checks.get("budget_rows_dropped", 0))
    return (f'<p class="lk-note">{n} budget rows are not published: '
            f'{html.escape(str(an.checks.get("budget_rows_dropped_why", "")))}.</p>' if n else "")


def fits_table(an: Analysis, target: str | None = None):
    target = target or an.headline_target
    f = an.shown(an.fits[an.fits["target"] == target])
    order = {an.label(m): i for i, m in enumerate(an.series)}
    f = f.assign(_o=f["mode"].map(order)).sort_values(["probe", "_o", "statistic"], kind="stable")
    out = pd.DataFrame({"mode": f["mode"], "probe": f["probe"], "statistic": f["statistic"],
                        "model": f["model"] + np.where(f["chosen"], " \u2714", ""),
                        "observations": f["n_obs"], "criterion": f["criterion"].map(_crit),
                        "\u0394 criterion": f["delta"], "weight": f["weight"], "fitted curve": f["curve"]})
    return _html(table_html(out))


def invalid_points(an: Analysis):
    bad = an.shown(an.points[~an.points["used"]])
    if not len(bad):
        return _html('<p class="lk-note">All points are valid.</p>')
    out = pd.DataFrame({"point": bad["point_id"], "mode": bad["mode"], "services": bad["services"],
                        "target": bad["target"], "probe": bad["probe"], "round": bad["round"],
                        "sent": bad["sent"], "answered": bad["answered"], "p50 \u00b5s": bad["p50"],
                        "reason": bad["excluded"]})
    return _html(table_html(out))


def remeasured_blocks(an: Analysis):
    """The disturbed points (:mod:`labkit.core.disturbed`): each old p50 beside
    its re-measurement's, or flagged only; or a line saying there were none."""
    r = an.shown(an.remeasured)
    if not len(r):
        return _html('<p class="lk-note">No block was disturbed: every point lies within what its '
                     "other rounds allow.</p>")
    out = pd.DataFrame({"mode": r["mode"], "services": r["services"], "round": r["round"],
                        "target": r["target"], "probe": r["probe"], "block": r["block"],
                        "re-measured as": r["remeasured_as"].map(lambda b: str(b) if b >= 0 else "\u2013"),
                        "old p50 \u00b5s": r["old_p50_us"], "new p50 \u00b5s": r["new_p50_us"],
                        "status": r["status"]})
    kept = int(r["status"].str.startswith("flagged").sum())
    note = (f'<p class="lk-note">{kept} flagged point(s) were not re-measured and stay in the fits.</p>'
            if kept else "")
    return _html(table_html(out) + note)


def settle_rounds(an: Analysis):
    """What the settle rounds (:mod:`labkit.runs.settle`) measured and why:
    the claim rows still open after the planned rounds, the cells they rest
    on, the rounds run and why they stopped; or a line saying there were none."""
    s, late = an.settle(), late_rounds_text(an)
    if not s:
        return _html(late + '<p class="lk-note">No settle rounds: this run had no time budget for them '
                     "(<code>settle_minutes</code>).</p>")
    cells = [c for c in s.get("cells") or [] if isinstance(c, dict)]
    when = f"{float(s.get('decided_at_s') or 0) / 60:.1f} min into the run"
    if not cells:
        return _html(late + f'<p class="lk-note">No settle rounds were needed: {when}, no claim row was '
                     "inconclusive.</p>")
    n = int(s.get("rounds") or 0)
    took = ", ".join(f"{x:.0f} s" for x in s.get("round_s") or [])
    rows = len({r for c in cells for r in c.get("rows", [])})
    budget = _budget_words(s)
    if n:
        head = (f"{when}, {rows} claim row(s) were inconclusive; {n} settle round(s) of at most "
                f"{int(s.get('most') or 0)} measured what they rest on at the counts they are read at, "
                f"within {budget}{f' ({took})' if took else ''}; stopped: {s.get('stopped') or 'interrupted'}. "
                "The rows were chosen once, from the planned rounds; how many rounds ran depended on time "
                "only. Every figure uses all rounds.")
    else:
        head = (f"{when}, {rows} claim row(s) were inconclusive, but no settle round fitted within {budget} "
                f"({s.get('stopped') or 'interrupted'}): they stay as the planned rounds decide them.")
    out = pd.DataFrame({"mode": [an.label(Series(c["mode"], c["kernel"])) if c["kernel"] else c["mode"]
                                 for c in cells],
                        "probe kinds": [", ".join(c["kinds"]) for c in cells],
                        "services": [f"the smallest, {_counts_words(c['counts'])}" if c.get("counts")
                                     else "the smallest and the largest" for c in cells],
                        "claim rows it settles" if n else "claim rows it would settle":
                            ["; ".join(c.get("rows", [])) for c in cells]})
    return _html(late + f'<p class="lk-note">{html.escape(head)}</p>' + table_html(out))


def late_rounds_text(an: Analysis) -> str:
    """One paragraph (HTML) on the late rounds: the planned rounds beyond
    ``rounds`` that ran only while each fitted the sweep's budget; which ran,
    and why the others did not; "" for a run without them."""
    rec = an.late()
    if not rec:
        return ""
    first, ran = int(rec.get("first") or 0), [int(r) + 1 for r in rec.get("rounds") or []]
    budget = _budget_words(rec)
    took = ", ".join(f"{x:.0f} s" for x in rec.get("round_s") or [])
    what = (f"rounds {', '.join(map(str, ran))} ({took})" if len(ran) > 1 else
            f"round {ran[0]} ({took})" if ran else "none")
    stopped = str(rec.get("stopped") or "interrupted")
    text = (f"Late rounds (the planned rounds beyond {first}, of the modes measured in more rounds; each runs "
            f"only if it is expected to end within {budget}): run: {what}; ")
    text += ("every one ran." if stopped == "every late round ran" else
             f"the rest were not run: {stopped}. The intervals of those modes take the rounds they have "
             "(the interval text above names each curve's rounds).")
    return f'<p class="lk-note">{html.escape(text)}</p>'


def _budget_words(rec: dict) -> str:
    """"22 min from the run's start", or, when the end the sweep was given
    (``--end-by``: ``make report``'s aim) came first, "20.4 min from the
    run's start (the end it was given: --end-by)"."""
    m = float(rec.get("budget_s") or 0) / 60
    if rec.get("end_by"):
        return f"{m:.1f} min from the run's start (the end it was given: --end-by)"
    return f"{m:.0f} min from the run's start"


def published_tables(an: Analysis, target: str | None = None):
    """Published figures beside ours: the sources, their slopes and ours."""
    target = target or an.headline_target
    parts = ["<h4>Sources</h4>"]
    src = pd.DataFrame([{"key": s.key, "source": s.cite(), "setup": s.setup}
                        for s in anchors.SOURCES.values()])
    parts.append(table_html(src))
    parts.append("<h4>First-packet slopes, ns per service: published (between the published "
                 "points) and ours (linear fit, chosen model)</h4>")
    rows = []
    for stat in ("p50", "p99"):
        for _, r in anchors.segment_slopes("k8s-nft", stat).iterrows():
            rows.append({"who": "published: Kubernetes blog 2025 (chart)", "series": r["series"],
                         "statistic": stat, "range, services": f"{r['from_services']:,}\u2013{r['to_services']:,}",
                         "slope ns/service": f"{r['slope']:.1f}", "curve": ""})
        s = an.shown(an.summary[(an.summary["target"] == target) & (an.summary["statistic"] == stat)])
        for _, r in s.iterrows():
            rows.append({"who": f"ours (target {target}, {r['probe']})", "series": r["mode"],
                         "statistic": stat,
                         "range, services": f"{r['services_min']:,.0f}\u2013{r['services_max']:,.0f}",
                         "slope ns/service": _ci(r["slope_ns"], r["slope_lo"], r["slope_hi"], "{:.1f}"),
                         "curve": f"{r['model']}: {r['curve']}"})
    parts.append(table_html(pd.DataFrame(rows)))
    t = anchors.table()
    t = t.assign(services=t["services"].astype("object").where(t["services"].notna(), ""))
    parts.append(details(f"All {len(t)} published figures (tidy, from labkit/analysis/anchors.py)",
                         table_html(t[["source", "series", "metric", "unit", "services", "value", "low",
                                       "high", "reading", "note"]], "{:,.4g}")))
    parts.append("<h4>Published statements</h4><ul>" + "".join(
        f"<li>{html.escape(txt)} <span class='lk-note'>({html.escape(anchors.SOURCES[k].cite())})</span></li>"
        for k, txt in anchors.CLAIMS) + "</ul>")
    return _html("".join(parts))


def kernels_table(an: Analysis, stats=("p50",)):
    """A run over two kernels: how the other kernel's figures relate to the
    host's, through the modes that run natively in both
    (``analysis.kernels.kernel_ratios``: level and per-service slope ratios, never
    eBPF), and the growth of every mode side by side
    (``analysis.kernels.cross_kernel_growth``: rises, never levels, across kernels)."""
    k = kernel_ratios(an, an.settings["level"])
    k = k[k["stat"].isin(stats)]
    level = f"{an.settings['level']:.0%}"
    if not len(k):
        return _html('<p class="lk-note">One kernel, or no mode measured natively in both '
                     f'({", ".join(CALIBRATORS)}): nothing relates the kernels.</p>')
    out = pd.DataFrame({"mode": k["mode"], "measure": k["measure"], "target": k["target"],
                        "pacing": [pacing_words(float(v)) for v in k["pacing"]],
                        "statistic": k["stat"], "kernels": k["other_release"] + " / " + k["release"],
                        "services": [f"{v:,.0f}" if m == "level" else "per service"
                                     for v, m in zip(k["services"], k["measure"])],
                        f"ratio [{level} CI]": [_ci(v, lo, hi, "{:,.2f}")
                                               for v, lo, hi in zip(k["ratio"], k["ci_lo"], k["ci_hi"])]})
    note = ('<p class="lk-note">Only modes whose code runs natively in both kernels relate them '
            f'({", ".join(CALIBRATORS)}). eBPF never does: user-mode Linux has no BPF JIT (arch um), '
            'so eBPF is interpreted there and its ratio would measure the interpreter.</p>')
    g = cross_kernel_growth(an, an.settings["level"])
    g = g[g["stat"].isin(stats)] if len(g) else g
    growth = ""
    if len(g):
        gt = pd.DataFrame({"series": an.shown(g)["mode"], "target": g["target"],
                           "pacing": [pacing_words(float(v)) for v in g["pacing"]], "statistic": g["stat"],
                           "from": g["from"].map(lambda v: f"{v:,.0f}"), "to": g["to"].map(lambda v: f"{v:,.0f}"),
                           f"rise, us [{level} CI]": [_ci(v, lo, hi, "{:+,.1f}") for v, lo, hi in
                                                      zip(g["rise_us"], g["ci_lo"], g["ci_hi"])]})
        growth = ('<p>Across kernels, modes are compared by growth (the rise over their smallest '
                  'count), never by level:</p>' + table_html(gt))
    return _html(table_html(out) + note + growth)


def programming_table(an: Analysis):
    b = an.shown(an.points.drop_duplicates(["mode", "kernel", "block"]))
    g = b.groupby(["mode", "services"])[["render_s", "load_s", "program_s"]].median().reset_index()
    return _html(table_html(g.rename(columns={"render_s": "render s (median)",
                                              "load_s": "load s (median)",
                                              "program_s": "total s (median)"}), "{:,.3f}"))


def methods(an: Analysis):
    m = an.run.meta
    doc = topology.__doc__ or ""
    diagram = doc.split("::", 1)[1] if "::" in doc else doc
    diagram = "\n".join(line for line in diagram.strip("\n").splitlines()
                        if line.startswith("   ") or not line.strip()).rstrip()
    parts = [f'<h4>Topology</h4><pre class="lk">{html.escape(diagram)}</pre>']
    kv = lambda d: pd.DataFrame(sorted((str(k), str(v)) for k, v in (d or {}).items()),  # noqa: E731
                                columns=["name", "value"])
    parts.append(f"<h4>Kernel</h4><p>{html.escape(str(m.get('kernel_release', 'unknown')))} (kernels in the "
                 f"data: {html.escape(', '.join(sorted(an.points['kernel_release'].unique())))})</p>")
    parts.append("<h4>Sweep parameters (meta.json)</h4>" + table_html(kv(m.get("params"))))
    a = dict(an.settings)
    a["models"] = ", ".join(a["models"])
    a["stats"] = ", ".join(a["stats"])
    parts.append("<h4>Analysis parameters</h4>" + table_html(kv(a)))
    parts.append("<h4>Tools</h4>" + table_html(kv(m.get("tools"))))
    parts.append("<h4>Python packages</h4>" + table_html(kv(m.get("packages"))))
    host = dict(m.get("host") or {})
    host.update(labkit_version=m.get("labkit_version", ""), git_revision=m.get("git_revision", ""))
    parts.append("<h4>Host and code</h4>" + table_html(kv(host)))
    c = an.checks
    parts.append(f"<p class='lk-note'>Check: per-point p50 recomputed from samples.parquet differs "
                 f"from points.parquet by at most {c['max_abs_p50_diff_us']:.3g} \u00b5s.</p>")
    return _html("".join(parts))


def reproduce(an: Analysis):
    m = an.run.meta
    path = an.run.path.rstrip("/")
    parts = path.split(os.sep)
    # as typed from the repository: data/reference/<name> or runs/<name>, else the full path
    for anchor in ("data", "runs"):
        if anchor in parts:
            path = os.path.join(*parts[len(parts) - 1 - parts[::-1].index(anchor):])
            break
    cmd = m.get("command") or "(not recorded)"
    s = an.settings
    rep = f"python -m labkit report {path}"
    if path.startswith(os.path.join("data", "reference")):
        # committed data stay as they are; the report goes under the clone's runs/ (git-ignored,
        # the reader's own), never a predictable path in a shared directory such as /tmp
        rep += f" --out runs/{os.path.basename(path)}-report"
    extra = []
    if s["budget_us"] != 10.0:
        extra.append(f"--budget-us {s['budget_us']:g}")
    if s["budget_frac"] != 0.10:
        extra.append(f"--budget-frac {s['budget_frac']:g}")
    rep = " ".join([rep] + extra)
    return _html(f"<p>Measure (as root, on a fresh clone at revision "
                 f"<code>{html.escape(str(m.get('git_revision', 'unknown')))}</code>):</p>"
                 f'<pre class="lk">{html.escape(cmd)}</pre>'
                 f"<p>Rebuild this report from the data (no root needed):</p>"
                 f'<pre class="lk">{html.escape(rep)}</pre>')


def raw_files(an: Analysis):
    f = an.run.files
    return _html(table_html(f.rename(columns={"bytes": "bytes"}), "{:,.0f}")
                 + "<p class='lk-note'>Verify with <code>sha256sum</code>; the raw files are never "
                   "modified by the analysis.</p>")

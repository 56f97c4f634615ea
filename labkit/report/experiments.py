"""Report sections for the connection-reuse, HTTP, CPU and control-plane
experiments.  Each section appears only when its data is in the run
directory:

* established connections: probe kind ``keepalive`` in samples.parquet;
* requests per connection: kinds ``reuse-<k>``;
* a real client and server: kinds ``http-new`` / ``http-keepalive``;
* CPU per new connection: ``cpu.parquet`` (``python -m labkit cpu``);
* control plane: ``control.parquet`` (every sweep; ``python -m labkit control``).

The statistics are :mod:`labkit.analysis.experiments` (penalties, the 1%
keepalive budget, fits of the CPU table) and :mod:`labkit.analysis.control`;
this module renders them.  Pure: reads, computes, returns tables and figures.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Iterable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import HTML, display

from labkit.analysis import Analysis, anchors, control, cpu
from labkit.analysis.experiments import (
    HTTP_KINDS,
    KEEPALIVE_BUDGET,
    REUSE_KINDS,
    CpuAnalysis,
    analyze_cpu,
    ci_text,
    keepalive_budget,
    kind_order,
    penalty_table,
)
from labkit.analysis.run import Series
from labkit.core import modes
from labkit.report.markup import details
from labkit.report.plots import mode_color, show
from labkit.report.sections import fold, table_html


def control_published() -> pd.DataFrame:
    """The published kube-proxy control-plane figures (docs/anchors.md)."""
    t = anchors.table("k8s-issues")
    return t[["series", "metric", "services", "value", "low", "high", "note"]]


# ---------------------------------------------------------------------------
# figures

def _palette(names: Iterable[str]) -> dict:
    """Probe kinds' colours (no table of them: the order they come in)."""
    names = list(dict.fromkeys(names))
    return dict(zip(names, sns.color_palette("colorblind", max(len(names), 3))))


def _mode_palette(names: Iterable[str]) -> dict:
    """Each mode's one fixed colour, the same as in every other figure."""
    return {m: mode_color(Series(str(m), "")) for m in dict.fromkeys(names)}


def kinds_figure(an: Analysis, probes: Iterable[str], target: str | None = None, stat: str = "p50"):
    """One panel per mode: ``stat`` against services for each probe kind
    (points: measured; lines: chosen fits)."""
    target = target or an.headline_target
    probes = kind_order(probes)
    pal = _palette(probes)
    fig, axes = plt.subplots(1, len(an.series), figsize=(4.6 * len(an.series), 3.6), squeeze=False,
                             sharey=True)
    pts = an.points[an.points["used"] & (an.points["target"] == target) & (an.points["pacing"] == 0)]
    for ax, series in zip(axes[0], an.series):
        for probe in probes:
            sub = pts[(pts["mode"] == series.mode) & (pts["kernel"] == series.kernel) & (pts["probe"] == probe)]
            ax.scatter(sub["services"], sub[stat], s=14, color=pal[probe], alpha=0.7)
            c = an.curve(series, target, (probe, 0.0), stat)
            if c is not None:
                x = np.linspace(c.xmin, c.xmax, 200)
                ax.plot(x, c.predict(x), color=pal[probe], lw=1.6, label=probe)
        ax.set_title(f"{an.label(series)}: {stat}, target {target}")
        ax.set_xlabel("services")
        ax.set_ylabel(f"{stat} latency (\u00b5s)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def reuse_figure(an: Analysis, target: str | None = None, stat: str = "p50"):
    """Mean per-request latency against requests per connection, one line
    per service count, one panel per mode."""
    target = target or an.headline_target
    pts = an.points[an.points["used"] & (an.points["target"] == target) & (an.points["pacing"] == 0)
                    & an.points["probe"].isin(REUSE_KINDS)].copy()
    pts["k"] = pts["probe"].str.split("-").str[1].astype(int)
    counts = sorted(pts["services"].unique())
    colors = dict(zip(counts, sns.color_palette("viridis", len(counts))))
    fig, axes = plt.subplots(1, len(an.series), figsize=(4.6 * len(an.series), 3.6), squeeze=False,
                             sharey=True)
    for ax, series in zip(axes[0], an.series):
        sub = pts[(pts["mode"] == series.mode) & (pts["kernel"] == series.kernel)]
        for n in counts:
            g = sub[sub["services"] == n].groupby("k")[stat].median()
            if len(g):
                ax.plot(g.index, g.values, marker="o", color=colors[n], label=f"{n:,} services")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{an.label(series)}, target {target}")
        ax.set_xlabel("requests per connection")
        ax.set_ylabel(f"per-request latency, {stat} (\u00b5s)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def cpu_figure(ca: CpuAnalysis, level: float = 0.95):
    v = ca.table
    targets = sorted(v["target"].unique())
    pal = _mode_palette(v["mode"])
    fig, axes = plt.subplots(1, len(targets), figsize=(5.2 * len(targets), 3.8), squeeze=False)
    for ax, target in zip(axes[0], targets):
        for mode, g in v[v["target"] == target].groupby("mode", sort=False):
            ok = g[g["valid"]]
            ax.scatter(ok["services"], ok["excess_us"], s=16, color=pal[mode], alpha=0.75)
            bad = g[~g["valid"]]
            if len(bad):
                ax.scatter(bad["services"], bad["excess_us"], marker="x", color="#d62728", s=30)
            c = ca.curves.get((mode, target))
            if c is not None:
                x = np.linspace(c.xmin, c.xmax, 200)
                lo, hi = c.band(x, level)
                ax.fill_between(x, lo, hi, color=pal[mode], alpha=0.2, linewidth=0)
                ax.plot(x, c.predict(x), color=pal[mode], lw=1.7, label=f"{mode} ({c.chosen})")
        ax.set_title(f"datapath CPU per new connection, target {target}")
        ax.set_xlabel("services")
        ax.set_ylabel("CPU \u00b5s per connection, above no datapath")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def control_figure(df: pd.DataFrame):
    pal = _mode_palette(df["mode"])
    ops = [o for o in control.OPS if o in set(df["op"])]
    cols = min(3, len(ops))
    rows = -(-len(ops) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.8 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(ops):]:
        ax.set_visible(False)
    for ax, op in zip(axes.flat, ops):
        d = control.with_kind(df[df["op"] == op])
        two = op != "program" and d.groupby("mode")["kind"].nunique().max() > 1
        for (mode, kind, loader), g in d.groupby(["mode", "kind", "loader"], sort=False):
            m = g.groupby("services")["seconds"].median()
            x = np.maximum(m.index.to_numpy(dtype=float), 1)
            # dashed: a full sync beside partial ones; dotted: a mode's second loader
            own = modes.get(mode).change_loader if mode in modes.NAMES else loader
            other = loader != "" and loader != own
            style = ":" if other and kind != "full" else "--" if two and kind == "full" else "-"
            what = ", ".join(w for w in (kind, loader if other else "") if w)
            ax.plot(x, m.values, marker="o", color=pal[mode], ls=style,
                    label=f"{mode} ({what})" if op != "program" else mode)
            ax.scatter(np.maximum(g["services"], 1), g["seconds"], s=8, color=pal[mode], alpha=0.4)
        pub = anchors.table("k8s-issues")
        marks = {"program": ("restore_s", "full_sync_s"), "add": ("add_one_s",)}.get(op, ())
        p = pub[pub["services"].notna() & pub["metric"].isin(marks)]
        if len(p):
            ax.errorbar(p["services"].astype(float), p["value"],
                        yerr=[p["value"] - p["low"], p["high"] - p["value"]], fmt="s", mfc="none",
                        color="0.4", capsize=3, label="published (kube-proxy)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{op}: seconds (median; 0 drawn at 1)")
        ax.set_xlabel("services")
        ax.set_ylabel("seconds")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# sections (HTML and figures, for the notebooks)

@dataclass
class Section:
    title: str
    intro: str
    parts: list = field(default_factory=list)   # HTML strings and matplotlib figures


def _table(df: pd.DataFrame, fmt: str = "{:,.2f}") -> str:
    return table_html(df, fmt)


def _penalty_html(an: Analysis, t: pd.DataFrame, level: float) -> str:
    if not len(t):
        return '<p class="lk-note">too few service counts for a penalty</p>'
    t = an.shown(t)
    st = t["statistic"].iloc[0]
    out = pd.DataFrame({
        "mode": t["mode"], "probe": t["probe"], "target": t["target"],
        "services": [f"{a:,}\u2192{b:,}" for a, b in zip(t["services_lo"], t["services_hi"])],
        f"{st} \u00b5s (mean over rounds)": [f"{a:,.1f} \u2192 {b:,.1f}"
                                            for a, b in zip(t["value_lo_us"], t["value_hi_us"])],
        f"penalty \u00b5s [{level:.0%} CI]": [ci_text(v, lo, hi) for v, lo, hi in
                                              zip(t["penalty_us"], t["penalty_lo"], t["penalty_hi"])],
        "penalty %": t["penalty_pct"], "points": t["points"]})
    return _table(out, "{:,.1f}")


def _budget_html(an: Analysis, t: pd.DataFrame) -> str:
    t = an.shown(t, "mode_a", "mode_b")
    out = pd.DataFrame({"mode": t["mode_a"], "against": t["mode_b"], "probe": t["probe"],
                        "budget \u00b5s": t["budget_us"],
                        "n* services [CI]": [ci_text(v, lo, hi, "{:,.0f}") if np.isfinite(v) else "not reached"
                                             for v, lo, hi in zip(t["n_star"].astype(float),
                                                                  t["ci_low"].astype(float),
                                                                  t["ci_high"].astype(float))],
                        "replicates reaching it": [f"{v:.0%}" if np.isfinite(v) else ""
                                                       for v in t["boot_frac"].astype(float)],
                        "finding": t["finding"]})
    return _table(out, "{:,.2f}")


def sections(run_dir: str, an: Analysis | None = None, *, n_boot: int = 1000, seed: int = 0) -> list[Section]:
    """The sections whose data exists in ``run_dir``, in report order."""
    out: list[Section] = []
    level = an.settings["level"] if an is not None else 0.95
    probes = set(an.points["probe"][an.points["pacing"] == 0]) if an is not None else set()
    if an is not None and "keepalive" in probes:
        kinds = [k for k in ("syn", "keepalive", *HTTP_KINDS, "reuse-100") if k in probes]
        s = Section("Established connections (keepalive)", (
            "A <code>keepalive</code> probe is one request (64 bytes, echoed by the backend) on a TCP "
            "connection that is already open, timed on the wire like the SYN probes. Only the first "
            "packet of a connection walks the service table; later packets match the node's "
            "connection tracking (or the eBPF CT map). <b>Penalty</b>: p50 at the largest measured "
            "count minus p50 at the smallest with services (means over rounds), per mode and probe "
            "kind, with an interval over rounds (Student's t of the per-round differences). It starts "
            "at one service, never at 0: with an empty table the probes aim at an address that is no "
            "service (no DNAT, no masquerade), another path."))
        s.parts.append(_penalty_html(an, penalty_table(an, kinds, n_boot=n_boot, seed=seed), level))
        s.parts.append(kinds_figure(an, kinds))
        out.append(s)
    reuse = [k for k in REUSE_KINDS if k in probes]
    if an is not None and reuse:
        s = Section("Requests per connection", (
            "Each <code>reuse-k</code> probe opens a new connection, sends k requests on it and "
            "closes it; its figure is the mean cost of one request, (handshake + the k request round "
            "trips) / k, all timed on the wire. The service lookup is paid once per connection, so "
            "its share falls as 1/k. k = 100 is nginx's default <code>keepalive_requests</code>."))
        s.parts.append(_penalty_html(an, penalty_table(an, reuse, n_boot=n_boot, seed=seed), level))
        s.parts.append(reuse_figure(an))
        budgets = [keepalive_budget(an, k) for k in ("reuse-100", "keepalive") if k in probes]
        if budgets:
            s.parts.append(f"<h4>Where does a mode's penalty exceed {KEEPALIVE_BUDGET:.0%} of a "
                           "keepalive request's latency?</h4>" + _budget_html(an, pd.concat(budgets)))
        claims = [t for k, t in anchors.CLAIMS if k == "tigera"]
        s.parts.append("<p class='lk-note'>Published (Tigera, different setup): " +
                       html.escape(claims[0] if claims else "") + "</p>")
        out.append(s)
    http = [k for k in HTTP_KINDS if k in probes]
    if an is not None and http:
        kinds = [k for k in ("syn", "http-new", "keepalive", "http-keepalive") if k in probes]
        s = Section("A real client and server (nginx and ab)", (
            "<code>http-new</code>: ApacheBench in the client namespace, one new connection per "
            "request; <code>http-keepalive</code>: <code>ab -k</code>, up to 100 requests per "
            "connection; nginx in the backend namespace. These are <b>user-space timings</b> taken by "
            "ab (connect, request, response read), so they include ab's and nginx's own work; the "
            "SYN and keepalive probes are kernel timestamps on the wire. Compare penalties (growth "
            "with services), not absolute values."))
        s.parts.append(_penalty_html(an, penalty_table(an, kinds, n_boot=n_boot, seed=seed), level))
        summ = an.summary[(an.summary["probe"].isin(kinds)) & (an.summary["pacing"] == 0)
                          & (an.summary["statistic"] == "p50") & (an.summary["target"] == an.headline_target)]
        summ = an.shown(summ)
        if len(summ):
            s.parts.append("<h4>Slopes of a straight-line fit, ns per service (p50)</h4>" + _table(pd.DataFrame({
                "mode": summ["mode"], "probe": summ["probe"],
                "slope ns/service [CI]": [ci_text(v, lo, hi, "{:,.2f}") for v, lo, hi in
                                          zip(summ["slope_ns"], summ["slope_lo"], summ["slope_hi"])]})))
        out.append(s)
    cdf = cpu.load(run_dir)
    if cdf is not None and len(cdf):
        ca = analyze_cpu(cdf, n_boot=n_boot, seed=seed, level=level)
        rate = float(cdf["rate"].iloc[0])
        s = Section("CPU per new connection", (
            f"New connections (SYNs for fresh 5-tuples) at {rate:,.0f}/s from a pinned thread in the "
            "client namespace; its CPU time (the node's softirq work runs in its context with veth on "
            "this kernel: see <code>labkit/runs/cpu.py</code>) divided by the connections, minus the same "
            "with no datapath in the node, measured in the same block. <b>excess cores</b> = excess "
            "\u00d7 rate. Red crosses: rows whose rate was not reached or whose SYNs went unanswered."))
        sm = ca.summary.copy()
        names = {"cpu_us": "CPU \u00b5s/conn", "baseline_us": "no datapath \u00b5s/conn",
                 "excess_us": "excess \u00b5s/conn", "excess_min": "min", "excess_max": "max",
                 "excess_cores": f"excess cores at {rate:,.0f}/s"}
        s.parts.append(_table(sm.rename(columns=names), "{:,.3f}"))
        s.parts.append(cpu_figure(ca, level))
        if ca.fits is not None and len(ca.fits):
            s.parts.append("<h4>Fits of the excess against services</h4>" + _table(ca.fits, "{:,.3f}"))
        if ca.crossover is not None and len(ca.crossover):
            s.parts.append("<h4>Crossovers</h4><ul>" + "".join(
                f"<li>{html.escape(str(t))}</li>" for t in ca.crossover["finding"]) + "</ul>")
        tig = anchors.table("tigera", "cpu")
        if len(tig):
            d = tig.groupby("series")["value"].agg(lambda v: v.iloc[-1] - v.iloc[0])
            s.parts.append("<p class='lk-note'>Published (Tigera, whole client node at 1,000 requests/s, "
                           "10 to 10,000 services, chart): CPU grew by " + ", ".join(
                               f"{v:.2f} cores ({k})" for k, v in d.items()) + ". Ours is the node's datapath "
                           "work alone.</p>")
        out.append(s)
    ctl = control.load(run_dir)
    if ctl is not None and len(ctl):
        s = Section("Control plane: programming and changing services", (
            "<b>program</b>: render and load N services into a fresh node; <b>add</b> / "
            "<b>remove</b>: one service when N exist. iptables modes write a partial sync, as "
            "kube-proxy's iptables proxier does (<code>iptables-restore --noflush</code> of "
            "KUBE-SERVICES and the changed service's chains); <code>labkit control</code> also times "
            "the same change as a full sync (the whole table re-rendered and restored, dashed); "
            "nftables changes one service in one nf_tables transaction, sent as one netlink batch "
            "(and, dotted, through <code>nft -f</code> as kube-proxy sends it: Debian 12's nft first "
            "reads every chain back); IPVS applies only that service's ipset, address and ipvsadm "
            "changes; eBPF updates map entries in place. <b>endpoints</b>: one service's endpoints "
            "replaced (a rollout), <b>burst</b>: the last 100 services' in one sync. Each change is "
            "checked with a SYN to the VIP. Grey squares: kube-proxy's published figures."))
        s.parts.append(control_figure(ctl))
        sm = control.summary(ctl)
        s.parts.append(_table(sm.rename(columns={"median": "median s", "min": "min s", "max": "max s",
                                                 "count": "n"}), "{:,.4f}"))
        sl = control.slopes(ctl)
        if len(sl):
            s.parts.append("<h4>Straight-line slopes, milliseconds per 1,000 services</h4>" + _table(sl, "{:,.2f}"))
        upd = control.with_kind(ctl[ctl["op"] != "program"]).drop_duplicates(["mode", "kind", "loader"])[
            ["mode", "kind", "loader", "update"]]
        s.parts.append("<h4>How each mode changes one service</h4>" + _table(upd))
        pub = control_published()
        s.parts.append("<h4>Published kube-proxy figures</h4>" + _table(pub, "{:,.2f}") + "<ul>" + "".join(
            f"<li>{html.escape(t)}</li>" for k, t in anchors.CLAIMS if k == "k8s-issues") + "</ul>")
        out.append(s)
    return out


def display_sections(run_dir: str, an: Analysis | None = None, **kw) -> int:
    """Display every section that has data (in a notebook); returns how many."""
    secs = sections(run_dir, an, **kw)
    for s in secs:
        first, rest = _first_sentence(s.intro)
        display(HTML(f"<h2>{html.escape(s.title)}</h2><p>{first}</p>"
                     + (details("How it is measured", f"<p>{rest}</p>") if rest else "")))
        for p in s.parts:
            if isinstance(p, str):
                display(fold(p, _fold_summary(p)))
            else:
                show(p)
    return len(secs)


def _first_sentence(intro: str) -> tuple[str, str]:
    """An intro's first sentence and the rest: split at the first ". " that lies
    outside every tag and element (``<b>x. y</b>`` is never cut)."""
    depth = 0
    for m in re.finditer(r"<(/?)[^>]*>|\. ", intro):
        if m.group(0) == ". ":
            if depth == 0:
                return intro[:m.start() + 1], intro[m.end():]
        elif not m.group(0).endswith("/>"):
            depth += -1 if m.group(1) else 1
    return intro, ""


def _fold_summary(part: str) -> str:
    """A folded table's one line: its own ``<h4>`` title, else "the table"."""
    m = re.match(r"\s*<h4>(.*?)</h4>", part, re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", m.group(1))) if m else "the table"

"""Figures for an :class:`labkit.analysis.Analysis`.  Each function returns a
matplotlib Figure; nothing is saved or shown here (``show`` displays one in a
notebook and closes it)."""
from __future__ import annotations

import base64
import html
import io

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import seaborn as sns
from IPython.display import HTML, display
from matplotlib.artist import Artist

from labkit.analysis import Analysis, anchors
from labkit.analysis.curves import CurveKey
from labkit.analysis.result import Probe, at_probe
from labkit.analysis.run import Series, probe_label
from labkit.core.modes import COLORS
from labkit.report.markup import details

PANEL = (4.4, 3.4)
INVALID = dict(marker="x", color="#d62728", s=40, linewidths=1.5, zorder=5)


#: one colour per mode in every figure of every report: the table of modes' (colour-blind
#: safe, Okabe-Ito), and grey for the "none" target's series
MODE_COLORS: dict[str, str] = {**COLORS, "none": "#777777"}


def mode_color(series: Series, others: list[Series] | None = None) -> tuple:
    """The mode's fixed colour; the same mode in a second kernel (``others``
    lists the series drawn together) gets a darker shade of it."""
    mode = series.mode
    base = MODE_COLORS.get(mode)
    if base is None:
        extra = sorted({o.mode for o in others or []} - set(MODE_COLORS))
        i = extra.index(mode) if mode in extra else 0
        return tuple(sns.color_palette("dark", max(len(extra), 3))[i])
    rgb = np.array(mcolors.to_rgb(base))
    same = [o for o in (others or [series]) if o.mode == mode]
    k = same.index(series) if series in same else 0
    return tuple(rgb * (0.6 ** k))


def palette(an: Analysis) -> dict[str, tuple]:
    """Each series' colour, by its label (the name figures show)."""
    names = an.run.series_order
    return {an.label(n): mode_color(n, names) for n in names}


def services_axis(ax, xs) -> None:
    """Service counts on a log axis (symmetric-log when 0 is among them)."""
    xs = np.asarray(list(xs), dtype=float)
    if len(xs) and xs.min() <= 0:
        ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)
    else:
        ax.set_xscale("log")
    ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(mticker.NullFormatter())


def _ylabel(probe: str) -> str:
    return "first-packet RTT (\u00b5s)" if probe == "syn" else f"{probe} RTT (\u00b5s)"


def curves(an: Analysis, target: str | None = None, probe: Probe = ("syn", 0.0),
           stats: list[str] | None = None) -> plt.Figure:
    """Per-point statistics against service count, one panel per statistic,
    with each mode's chosen fitted curve and its interval band.  Invalid
    points are drawn as red crosses and are not part of any fit."""
    target = target or an.headline_target
    stats = stats or an.settings["stats"]
    level = an.settings["level"]
    pal = palette(an)
    fig, axes = plt.subplots(1, len(stats), figsize=(PANEL[0] * len(stats), PANEL[1]), squeeze=False)
    pts = an.points[(an.points["target"] == target) & at_probe(an.points, probe)]
    pts = pts.assign(series=an.run.labels(pts))
    if target != "none":   # the empty table is no point of these curves (see the report's reference table)
        pts = pts[pts["services"] > 0]
    legend: dict[str, Artist] = {}
    for ax, stat in zip(axes[0], stats):
        used = pts[pts["used"]]
        sns.scatterplot(data=used, x="services", y=stat, hue="series", palette=pal, ax=ax,
                        s=22, alpha=0.75, legend=False, edgecolor="none")
        bad = pts[~pts["used"] & pts[stat].notna()]
        if len(bad):
            ax.scatter(bad["services"], bad[stat], label="invalid point (not fitted)", **INVALID)
        for s in an.series:
            c, series = an.curve(s, target, probe, stat), an.label(s)
            if c is None:
                continue
            x = np.unique(np.concatenate([np.linspace(c.xmin, c.xmax, 300), c.knots()]))
            lo, hi = c.band(x, level)
            y = c.predict(x)
            ax.fill_between(x, lo, hi, color=pal[series], alpha=0.22, linewidth=0)
            legend.setdefault(series, ax.plot(x, y, color=pal[series], lw=1.8)[0])
        if len(bad):
            legend.setdefault("invalid point (not fitted)", ax.collections[-1])
        ax.set_title(f"{stat}, target {target}, {probe_label(*probe)}", fontsize=10)
        services_axis(ax, pts["services"])
        ax.set_xlabel("services (log scale)")
        ax.set_ylabel(_ylabel(probe_label(*probe)))
        # the data set the range, not a runaway band
        top = used[stat].max() if len(used) else 1.0
        ax.set_ylim(0, max(top * 1.08, 1.0))
        ax.grid(alpha=0.3, which="both")
        if stat not in {k.statistic for k in an.curves if k.target == target and (k.probe, k.pacing) == probe}:
            need = an.settings.get("min_tail_probes", {}).get(stat)
            ax.text(0.5, 0.5, f"not fitted: {stat} needs {need} answered probes per point" if need else
                    "not fitted", transform=ax.transAxes, ha="center", fontsize=8, color="0.35")
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=min(len(legend), 6),
                   frameon=False, bbox_to_anchor=(0.5, 1.0), fontsize=9)
    what = "delete-one-round jackknife" if an.settings.get("resample") == "rounds" else "bootstrap"
    fig.text(0.99, -0.02, f"lines: chosen model; bands: {level:.0%} interval ({what})",
             ha="right", va="top", fontsize=8, color="0.35")
    fig.tight_layout()
    return fig


SEED_BAND = (1000, 5000)


def headline(an: Analysis) -> plt.Figure:
    """The answer in one figure: p50 and p99 of the headline curves against
    service count, every mode, log-log so the flat modes stay readable; the
    seed's 1,000-5,000 band shaded; where two fitted curves cross (located,
    between close measured counts) marked with its interval."""
    target, probe, level = an.headline_target, an.headline_probe, an.settings["level"]
    pal = palette(an)
    stats = [s for s in ("p50", "p99") if s in an.settings["stats"]]
    fig, axes = plt.subplots(1, len(stats), figsize=(6.2 * len(stats), 3.6), squeeze=False)
    pts = an.points[an.points["used"] & (an.points["target"] == target) & at_probe(an.points, probe)
                    & (an.points["services"] > 0)]
    pts = pts.assign(series=an.run.labels(pts))
    legend: dict[str, Artist] = {}
    for ax, stat in zip(axes[0], stats):
        ax.axvspan(*SEED_BAND, color="0.85", alpha=0.6, lw=0, zorder=0)
        ax.text(np.sqrt(SEED_BAND[0] * SEED_BAND[1]), 0.98, "seed: iptables hurts\nfrom 1,000\u20135,000",
                transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=7.5, color="0.3")
        tops: list[float] = []
        lows: list[float] = []
        for s in an.series:
            c, series = an.curve(s, target, probe, stat), an.label(s)
            med = pts[pts["series"] == series].groupby("services")[stat].median()
            if c is None or not len(med):
                continue
            x = np.unique(np.geomspace(max(c.xmin, 1), c.xmax, 300))
            lo, hi = c.band(x, level)
            ax.fill_between(x, np.maximum(lo, 1e-3), hi, color=pal[series], alpha=0.18, linewidth=0)
            ax.plot(x, c.predict(x), color=pal[series], lw=1.6)
            legend.setdefault(series, ax.plot(med.index, med.values, "o", ms=4, color=pal[series])[0])
            tops.append(float(med.max()))
            lows.append(float(med[med > 0].min()) if (med > 0).any() else np.nan)
        cx = an.crossover
        located = np.isfinite(cx["ci_low"].astype(float))
        cx = cx[(cx["kind"] == "fit") & (cx["statistic"] == stat) & (cx["target"] == target)
                & at_probe(cx, probe) & located & (cx["resolved"] == True)]  # noqa: E712
        for _, r in cx.iterrows():
            c = an.curves[CurveKey(r["mode_a"], r["kernel"], target, probe[0], probe[1], stat)]
            y = float(c.predict([r["n_star"]])[0])
            h = ax.errorbar([r["n_star"]], [y], xerr=[[r["n_star"] - r["ci_low"]], [r["ci_high"] - r["n_star"]]],
                            fmt="D", ms=5, color="black", mfc="white", capsize=3, zorder=6)
            legend.setdefault("curves cross (95% interval)", h)
        services_axis(ax, [1])
        ax.set_yscale("log")
        # 1-2-5 ticks: a curve spanning less than a decade still gets labels
        ax.yaxis.set_major_locator(mticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(mticker.NullFormatter())
        if len(pts):
            ax.set_xlim(max(pts["services"].min(), 1) / 1.4, pts["services"].max() * 1.4)
        if tops and np.isfinite(np.nanmin(lows)):
            # the axis spans the measured medians: a band whose lower edge runs to 0 (a wide
            # interval at a sparse end) is cut at the frame, not allowed to stretch the axis
            ax.set_ylim(np.nanmin(lows) / 2, max(tops) * 2)
        if not tops:
            need = an.settings.get("min_tail_probes", {}).get(stat)
            ax.text(0.5, 0.5, f"not estimated: {stat} needs {need} answered probes per point" if need
                    else "no curves", transform=ax.transAxes, ha="center", fontsize=9, color="0.35")
        ax.set_title(f"{stat}: first packet of a new connection, {target} service", fontsize=10)
        ax.set_xlabel("services (log scale)")
        ax.set_ylabel("RTT (\u00b5s, log scale)")
        ax.grid(alpha=0.3, which="both")
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=min(len(legend), 7),
               frameon=False, bbox_to_anchor=(0.5, 1.0), fontsize=9)
    what = "delete-one-round jackknife" if an.settings.get("resample") == "rounds" else "bootstrap"
    fig.text(0.99, -0.02, f"dots: median over rounds; lines: fitted model; bands: {level:.0%} interval ({what})",
             ha="right", va="top", fontsize=8, color="0.35")
    fig.tight_layout()
    return fig


def ecdfs(an: Analysis, target: str | None = None, probe: Probe = ("syn", 0.0)) -> plt.Figure:
    """Per-point ECDFs of the probes' RTT: one panel per mode, one line per
    point, coloured by service count; invalid points dashed."""
    target = target or an.headline_target
    pts = an.points[(an.points["target"] == target) & at_probe(an.points, probe)]
    pts = pts.assign(series=an.run.labels(pts))
    series = [an.label(s) for s in an.run.series_order if an.label(s) in set(pts["series"])]
    counts = sorted(pts["services"].unique())
    colors = dict(zip(counts, sns.color_palette("viridis", len(counts))))
    smp = an.run.samples
    smp = smp[smp["point_id"].isin(pts["point_id"]) & smp["rtt_us"].notna()]
    by_point = dict(tuple(smp.groupby("point_id")["rtt_us"]))
    fig, axes = plt.subplots(1, len(series), figsize=(PANEL[0] * len(series), PANEL[1]),
                             squeeze=False, sharex=True)
    for ax, s in zip(axes[0], series):
        for _, p in pts[pts["series"] == s].sort_values(["services", "round"]).iterrows():
            r = by_point.get(p["point_id"])
            if r is None or not len(r):
                continue
            sns.ecdfplot(x=r.to_numpy(), ax=ax, color=colors[p["services"]], lw=1,
                         ls="-" if p["used"] else "--", alpha=0.85)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(mticker.FuncFormatter(
            lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))
        ax.set_title(f"{s}, target {target}")
        ax.set_xlabel(_ylabel(probe_label(*probe)))
        ax.set_ylabel("fraction of probes")
        ax.grid(alpha=0.3, which="both")
    handles = [plt.Line2D([], [], color=colors[n], lw=2) for n in counts]
    labels = [f"{n:,} services" for n in counts]
    if (~pts["used"]).any():
        handles.append(plt.Line2D([], [], color="0.3", ls="--"))
        labels.append("invalid point")
    lo, hi = axes[0][0].get_xlim()
    if hi / max(lo, 1e-9) > 30:   # more than about a decade and a half: the 2s and 5s would collide
        for ax in axes[0]:
            ax.xaxis.set_minor_formatter(mticker.NullFormatter())
    fig.tight_layout()
    # below the panels (above them it sat on the panel titles)
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    return fig


def published(an: Analysis, target: str | None = None, probe: Probe = ("syn", 0.0)) -> plt.Figure:
    """Our fitted p50/p99 curves (solid, with bands, measured range only)
    beside the published first-packet figures (hollow markers, dashed), each
    labelled with its source."""
    target = target or an.headline_target
    level = an.settings["level"]
    pal = palette(an)
    stats = [s for s in ("p50", "p99") if s in an.settings["stats"]]
    fig, axes = plt.subplots(1, len(stats), figsize=(PANEL[0] * 1.25 * len(stats), PANEL[1] * 1.2),
                             squeeze=False)
    pub_colors = {"iptables": "#7f7f7f", "nftables": "#bcbd22", "none": "#17becf",
                  "iptables-nft": "#8c564b", "iptables-legacy": "#e377c2"}
    for ax, stat in zip(axes[0], stats):
        for s in an.series:
            c, series = an.curve(s, target, probe, stat), an.label(s)
            if c is None:
                continue
            x = np.linspace(c.xmin, c.xmax, 300)
            lo, hi = c.band(x, level)
            ax.fill_between(x, lo, hi, color=pal[series], alpha=0.2, linewidth=0)
            ax.plot(x, c.predict(x), color=pal[series], lw=1.8, label=f"ours: {series}")
        k8s = anchors.table("k8s-nft", stat)
        for series, g in k8s.groupby("series"):
            ax.plot(g["services"].astype(float), g["value"], ls="--", marker="o", mfc="none",
                    color=pub_colors.get(series, "0.5"),
                    label=f"published: {series}, Kubernetes blog 2025 (chart)")
        if stat == "p50":
            mine = anchors.table("this-machine", "p50")
            for series, g in mine.groupby("series"):
                yerr = np.vstack([g["value"] - g["low"], g["high"] - g["value"]])
                ax.errorbar(g["services"].astype(float), g["value"], yerr=yerr, ls=":", marker="D",
                            mfc="none", capsize=3, color=pub_colors.get(series, "0.5"),
                            label=f"earlier notes: {series}, this kind of machine")
        ax.set_title(f"{stat} first-packet RTT, ours (target {target}) and published")
        ax.set_xlabel("services")
        ax.set_ylabel("RTT (\u00b5s)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def programming(an: Analysis) -> plt.Figure:
    """Time to load each mode's rules (one value per block) against service
    count, with the published iptables-restore figure."""
    pal = palette(an)
    blocks = an.points.drop_duplicates(["mode", "kernel", "block"])
    blocks = blocks.assign(series=an.run.labels(blocks))
    fig, ax = plt.subplots(figsize=(PANEL[0] * 1.4, PANEL[1]))
    sns.lineplot(data=blocks, x="services", y="load_s", hue="series", palette=pal, marker="o",
                 hue_order=[an.label(s) for s in an.run.series_order if an.label(s) in set(blocks["series"])],
                 estimator="median", errorbar=None, ax=ax)
    pub = anchors.table("k8s-issues", "restore_s").dropna(subset=["services"])
    for _, r in pub.iterrows():
        ax.errorbar([float(r["services"])], [r["value"]], yerr=[[r["value"] - r["low"]], [r["high"] - r["value"]]],
                    marker="s", mfc="none", color="0.4", capsize=3, ls="none",
                    label="published: iptables-restore, kubernetes issues (2016)")
    ax.set_yscale("log")
    ax.set_xlabel("services")
    ax.set_ylabel("load time (s)")
    ax.set_title("rule programming time (median per count)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def overlaps(fig: plt.Figure) -> list[str]:
    """What collides in a drawn figure, by the bounding boxes matplotlib laid
    out (a figure is an image in the report, so the browser cannot see
    inside it): a legend over a title or a tick label, and two tick labels
    of one axis over each other.  Empty when nothing does."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()   # type: ignore[attr-defined]

    def box(a):
        return a.get_window_extent(r)

    def ticks(axis) -> list:
        # the ticks matplotlib draws: those inside the view limits (get_ticklabels also
        # returns labels of ticks beyond them, never drawn)
        drawn = axis._update_ticks()
        return [lab for t in drawn for lab in (t.label1, t.label2) if lab.get_visible() and lab.get_text()]

    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    titles = [t for ax in fig.axes for t in (ax.title, getattr(ax, "_left_title", ax.title),
                                              getattr(ax, "_right_title", ax.title)) if t.get_text()]
    sup = getattr(fig, "_suptitle", None)
    if sup is not None and sup.get_text():
        titles.append(sup)
    labels = [t for ax in fig.axes for axis in (ax.xaxis, ax.yaxis) for t in ticks(axis)]
    out = []
    for lg in legends:
        lb = box(lg)
        out += [f"legend over title {t.get_text()!r}" for t in titles if lb.overlaps(box(t))]
        out += [f"legend over tick label {t.get_text()!r}" for t in labels if lb.overlaps(box(t))]
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            tl = ticks(axis)
            bs = [box(t).shrunk(0.95, 0.95) for t in tl]
            out += [f"tick labels {tl[i].get_text()!r} and {tl[j].get_text()!r} collide"
                    for i in range(len(tl)) for j in range(i + 1, len(tl)) if bs[i].overlaps(bs[j])]
    return out


def show_collapsed(figs, summary: str, open_first: bool = True) -> None:
    """Figures in one collapsed block (``<details>``): the report prints and
    opens short, a reader unfolds what they want; the first figure stays
    visible above the block when ``open_first``.  ``figs``: figures (each
    freed once drawn)."""
    parts = []
    for i, fig in enumerate(figs):
        alt = "; ".join(t for t in (ax.get_title() for ax in fig.axes) if t) or "figure"
        if i == 0 and open_first:
            show(fig)
            continue
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight", dpi=fig.dpi)
        plt.close(fig)
        parts.append(f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" '
                     f'alt="{html.escape(alt)}" style="max-width:100%">')
    if parts:
        display(HTML(details(f"{summary} ({len(parts)} figures)", "".join(parts))))


def show(fig: plt.Figure) -> None:
    """Display a figure in a notebook once (its panel titles as alt text), then free it."""
    alt = "; ".join(t for t in (ax.get_title() for ax in fig.axes) if t) or "figure"
    display(fig, metadata={"image/png": {"alt": alt}})
    plt.close(fig)


def budget_fractions(an: Analysis, table) -> plt.Figure:
    """The 1,000-5,000 claim's crossing against the budget fraction
    (:func:`labkit.analysis.claims.budget_fractions`): per iptables mode, where
    its own penalty reaches the fraction of its http-new request (solid:
    http-new, which decides; dashed: the SYNs' penalty, beside), with
    intervals; the seed's 1,000-5,000 shaded, the report's fraction marked."""
    targets = list(dict.fromkeys(table["target"]))
    fig, axes = plt.subplots(1, len(targets), figsize=(5.2 * len(targets), 3.0), squeeze=False)
    pal = palette(an)
    styles = {("http-new", 0.0): ("-", "o"), ("syn", 0.0): ("--", "s"), ("syn", 1000.0): (":", "^")}
    for ax, target in zip(axes[0], targets):
        ax.axhspan(*SEED_BAND, color="0.85", alpha=0.6, lw=0, zorder=0)
        ax.axvline(an.settings["budget_frac"] * 100, color="0.4", lw=0.8, ls="--")
        for (mode, kernel, probe, pacing, role), g in table[table["target"] == target].groupby(
                ["mode", "kernel", "probe", "pacing", "role"], sort=False):
            label = an.label(Series(mode, kernel))
            ls, marker = styles.get((probe, float(pacing)), ("-.", "x"))
            g = g[np.isfinite(g["n_star"])]
            yerr = np.array([g["n_star"] - g["ci_low"], g["ci_high"] - g["n_star"]])
            ax.errorbar(g["fraction"] * 100, g["n_star"], yerr=np.where(np.isfinite(yerr), yerr, 0), ls=ls,
                        marker=marker, ms=3.5, capsize=2, color=pal.get(label), lw=1.2,
                        label=f"{label}, {probe_label(probe, pacing)} ({role})")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}%"))
        ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        _log_x_panel(ax, f"{target} target: crossing against the budget",
                     "budget: fraction of the mode's own http-new request at 1 service",
                     "services where the penalty reaches it")
    fig.tight_layout()
    return fig


def _log_x_panel(ax, title: str, xlabel: str, ylabel: str) -> None:
    """A small panel's log x axis, labels, title, grid and legend."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


def amortization(an: Analysis, table) -> plt.Figure:
    """The keepalive claim: per-request penalty of reuse-k against k (at the
    largest count all its curves share), with 1/k of the new-connection
    penalty and the margin above it (the band the claim allows), one panel
    per target and pacing."""
    groups = list(dict.fromkeys(zip(table["target"], table["pacing"])))
    log_y = bool((table["penalty_us"] > 0).all())   # log-log: 1/k a straight line, the margin visible at large k
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.6), squeeze=False)
    pal = palette(an)
    for ax, (target, pacing) in zip(axes[0], groups):
        for (mode, kernel), g in table[(table["target"] == target) & (table["pacing"] == pacing)].groupby(
                ["mode", "kernel"], sort=False):
            label, g = an.label(Series(mode, kernel)), g.sort_values("k")
            ax.errorbar(g["k"], g["penalty_us"], yerr=[g["penalty_us"] - g["penalty_lo"],
                                                       g["penalty_hi"] - g["penalty_us"]],
                        marker="o", ms=4, capsize=2, color=pal.get(label), lw=1.2, label=f"{label}: per request")
            k = np.geomspace(1, max(float(g["k"].max()), 2), 50)
            ax.plot(k, g["new_us"].iloc[0] / k, ls="--", color=pal.get(label), lw=0.9,
                    label=f"{label}: new connection / k ({g['new'].iloc[0]})")
            ax.fill_between(k, g["new_us"].iloc[0] / k, g["new_us"].iloc[0] / k + g["margin_us"].iloc[0],
                            color=pal.get(label), alpha=0.15, lw=0,   # what the claim lets pass
                            label=f"{label}: + margin (the budget)")
        _log_x_panel(ax, f"{target} target, {probe_label('reuse-k', pacing)}", "requests per connection, k",
                     "penalty per request (\u00b5s)")
        if log_y:
            ax.set_yscale("log")
    # one legend under the panels (the same series in each), off the data
    handles: dict[str, Artist] = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    return fig

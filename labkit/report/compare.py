"""One report across runs: ``labkit compare RUN_A RUN_B ...`` (two kernels,
two machines, before and after a change).

Each run is analysed on its own (:func:`labkit.analysis.analyze`); no
curve is ever fitted across runs.  For every mode measured in the first run
and another, at every service count both measured, the fitted p50 and p99 of
every target both measured (headline probe kind), their difference (other
minus first) and ratio; and each curve's rise (its straight line's, as the
O(n) claim measures it) from the smallest count both measured, and the
difference of the rises: growth, the one thing two
kernels or machines can be compared on when their levels differ.
Intervals: the runs are independent, so the difference's standard error
is the root sum of squares of the two curves' standard errors (each from
its own interval: the delete-one-round jackknife's t, or the bootstrap's
normal equivalent with one round), with Welch-Satterthwaite degrees of
freedom.  Writes ``compare.html`` (self-contained: tables and one
figure) and ``compare.csv``.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import norm
from scipy.stats import t as student_t

from labkit.analysis import Analysis, analyze, load_run, noise
from labkit.analysis.budget import line_rise
from labkit.analysis.curves import Curve
from labkit.analysis.run import probe_label
from labkit.core.errors import UsageError
from labkit.report.plots import mode_color, services_axis
from labkit.report.sections import rounds_by_count, table_html
from labkit.rundir import safepath, store

COLUMNS = ["mode", "target", "statistic", "services", "run", "other_run", "value_us", "ci_low", "ci_high",
           "other_us", "other_low", "other_high", "diff_us", "diff_low", "diff_high", "ratio", "df",
           "rise_us", "rise_low", "rise_high", "other_rise_us", "other_rise_low", "other_rise_high",
           "rise_diff_us", "rise_diff_low", "rise_diff_high"]


@dataclass
class Side:
    label: str
    an: Analysis

    @property
    def kernel(self) -> str:
        return str(self.an.run.meta.get("kernel_release", ""))


def _label(an: Analysis, used: set[str]) -> str:
    base = f"{os.path.basename(an.run.path.rstrip('/'))} ({an.run.meta.get('kernel_release', '?')})"
    label, k = base, 2
    while label in used:
        label, k = f"{base} #{k}", k + 1
    used.add(label)
    return label


def _se_df(c, x: float, level: float, x0: float | None = None) -> tuple[float, float, float, float, float]:
    """(value, standard error, degrees of freedom, low, high) of a fitted curve at x; with
    ``x0``, of its straight line's rise from x0 to x (the O(n) claim's
    instrument, :func:`labkit.analysis.budget.line_rise`; NaN for a curve
    with no straight-line fit)."""
    if x0 is None:
        v = float(c.predict([x])[0])
        lo, hi = c.band([x], level)
    else:
        r = line_rise(c, level, x0, x)
        if r is None:
            return math.nan, math.nan, math.nan, math.nan, math.nan
        v, lo, hi = r.value, r.lo, r.hi
    lo, hi = float(np.ravel(lo)[0]), float(np.ravel(hi)[0])
    if c.method == "rounds":
        df = c.df
        assert df is not None   # a delete-one-round curve always has its rounds
        return v, (hi - lo) / 2 / student_t.ppf(0.5 + level / 2, df), df, lo, hi
    return v, (hi - lo) / 2 / norm.ppf(0.5 + level / 2), math.inf, lo, hi


def _welch(se_a: float, df_a: float, se_b: float, df_b: float) -> float:
    num = (se_a ** 2 + se_b ** 2) ** 2
    den = sum(s ** 4 / d for s, d in ((se_a, df_a), (se_b, df_b)) if math.isfinite(d) and d > 0)
    return num / den if den > 0 else math.inf


def compare_table(sides: list[Side], stats=("p50", "p99")) -> pd.DataFrame:
    first = sides[0]
    level = float(first.an.settings["level"])
    rows = []
    for other in sides[1:]:
        for key, ca in first.an.curves.items():
            if key.statistic not in stats or (key.probe, key.pacing) != first.an.headline_probe:
                continue
            for key2, cb in other.an.curves.items():
                if key2._replace(kernel=key.kernel) == key:   # the same mode, in any kernel
                    rows += _rows(first, other, ca, cb, level)
    return pd.DataFrame(rows, columns=COLUMNS)


def _difference(a: tuple[float, ...], b: tuple[float, ...], level: float) -> tuple[float, float, float, float]:
    """(b - a, low, high, df) of two independent estimates (value, se, df, ...: :func:`_se_df`)."""
    df = _welch(a[1], a[2], b[1], b[2])
    q = student_t.ppf(0.5 + level / 2, df) if math.isfinite(df) else norm.ppf(0.5 + level / 2)
    d, half = b[0] - a[0], q * math.hypot(a[1], b[1])
    return d, d - half, d + half, df


def _rows(first: Side, other: Side, ca: Curve, cb: Curve, level: float) -> list[dict]:
    rows = []
    counts = sorted(set(ca.x) & set(cb.x))
    for n in counts:
        a, b = _se_df(ca, n, level), _se_df(cb, n, level)
        d, dlo, dhi, df = _difference(a, b, level)
        label = ca.label if cb.label == ca.label else f"{ca.label} vs {cb.label}"
        row = dict(mode=label, target=ca.key.target, statistic=ca.stat, services=n, run=first.label,
                   other_run=other.label, value_us=a[0], ci_low=a[3], ci_high=a[4],
                   other_us=b[0], other_low=b[3], other_high=b[4], diff_us=d,
                   diff_low=dlo, diff_high=dhi, ratio=b[0] / a[0] if a[0] > 0 else math.nan, df=df)
        if n > counts[0]:   # the rise from the smallest common count, and its difference
            ra, rb = _se_df(ca, n, level, counts[0]), _se_df(cb, n, level, counts[0])
            rd, rlo, rhi, _ = _difference(ra, rb, level)
            row.update(rise_us=ra[0], rise_low=ra[3], rise_high=ra[4], other_rise_us=rb[0],
                       other_rise_low=rb[3], other_rise_high=rb[4], rise_diff_us=rd, rise_diff_low=rlo,
                       rise_diff_high=rhi)
        rows.append(row)
    return rows


def _figure(sides: list[Side]) -> str:
    fig, ax = plt.subplots(figsize=(9, 4.2))
    styles = ["-", "--", ":", "-."]
    an0 = sides[0].an
    names = sorted({k.series for s in sides for k in s.an.curves})
    for i, side in enumerate(sides):
        for key, c in side.an.curves.items():
            if key.statistic != "p50" or key.target != an0.headline_target \
                    or (key.probe, key.pacing) != an0.headline_probe:
                continue
            x = np.unique(np.geomspace(max(c.xmin, 1), c.xmax, 200))
            ax.plot(x, c.predict(x), styles[i % len(styles)], color=mode_color(key.series, names), lw=1.6,
                    label=f"{c.label}, {side.label}")
    services_axis(ax, [1])
    ax.set_yscale("log")
    ax.set_xlabel("services (log scale)")
    ax.set_ylabel("p50 first-packet RTT (\u00b5s, log scale)")
    ax.set_title(f"p50, {an0.headline_target} target: one line per mode and run (line style: run)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


VERDICT_KEYS = ["claim", "mode", "versus", "kernel", "target", "probe", "pacing", "k"]


def verdict_table(sides: list[Side]) -> pd.DataFrame:
    """The deciding verdict of every claim row in each run, side by side, and
    whether the runs agree (``agree``): the stability of the answer across
    runs (two default runs on one machine should agree on every verdict)."""
    parts = []
    for s in sides:
        c = s.an.claims
        c = c[c["role"] == "decides"].copy()
        c["k"] = c["k"].fillna(0)
        c["versus"] = c["versus"].fillna("")
        parts.append(c.set_index(VERDICT_KEYS)["verdict"].rename(s.label))
    if not parts:
        return pd.DataFrame()
    t = pd.concat(parts, axis=1).reset_index()
    runs = [s.label for s in sides]
    t["agree"] = t[runs].nunique(axis=1, dropna=False) == 1
    return t


def _noise(side: Side, first: Side) -> str:
    """A run's noise gauge in a few words: its machine's load while measuring,
    its reference point's drift, and its speed against the first run's
    (:mod:`labkit.analysis.noise`)."""
    load = noise.summarize(noise.read_load(side.an.run.path))
    parts = ["load not recorded" if load is None else
             f"others {load.others_median:.0f}% of a CPU, steal {load.steal_median:.1f}%"
             + (" (disturbed)" if load.disturbed else "")]
    d = noise.drift(side.an.run.points)
    if np.isfinite(d):
        parts.append(f"drift {d:.2f}x")
    if side is not first:
        sp = noise.speed_ratio(side.an.run.points, first.an.run.points)
        if sp is not None:
            parts.append(f"reference point {sp[2] / sp[3]:.2f}x the first run's ({sp[0]}, {sp[1]:,} svc)")
    return "; ".join(parts)


def _fmt(v, lo, hi, f="{:,.1f}") -> str:
    if not np.isfinite(v):
        return ""
    return f.format(v) + (f" [{f.format(lo)}, {f.format(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else "")


def build_compare(run_dirs: list[str], out_dir: str, n_boot: int = 1000, seed: int = 0) -> str:
    """compare.html and compare.csv in ``out_dir`` for two or more runs; returns the HTML path."""
    if len(run_dirs) < 2:
        raise UsageError("compare needs at least two run directories")
    out_dir = safepath.check(out_dir, "--out")   # before the analysis: a refused path costs nothing
    used: set[str] = set()
    sides = []
    for d in run_dirs:
        an = analyze(load_run(d), n_boot=n_boot, seed=seed)
        sides.append(Side(_label(an, used), an))
    table = compare_table(sides)
    csv_text = table.to_csv(index=False, float_format="%.6g")
    level = f"{sides[0].an.settings['level']:.0%}"
    probe = html.escape(probe_label(*sides[0].an.headline_probe))
    runs = pd.DataFrame([{"run": s.label, "directory": s.an.run.path, "run id": s.an.run.run_id,
                          "kernel": s.kernel, "host": (s.an.run.meta.get("host") or {}).get("hostname", ""),
                          "modes": ", ".join(map(s.an.label, s.an.series)), "intervals": s.an.settings["resample"],
                          "rounds": rounds_by_count(s.an) or s.an.settings.get("rounds", ""),
                          "noise": _noise(s, sides[0])} for s in sides])
    shown = pd.DataFrame({
        "mode": table["mode"], "target": table["target"], "statistic": table["statistic"],
        "services": table["services"].map("{:,.0f}".format),
        "runs": [f"{b} vs {a}" for a, b in zip(table["run"], table["other_run"])],
        f"first run \u00b5s [{level}]": [_fmt(*r) for r in zip(table["value_us"], table["ci_low"], table["ci_high"])],
        f"other run \u00b5s [{level}]": [_fmt(*r) for r in zip(table["other_us"], table["other_low"],
                                                               table["other_high"])],
        f"difference \u00b5s [{level}]": [_fmt(*r, "{:+,.1f}") for r in zip(table["diff_us"], table["diff_low"],
                                                                       table["diff_high"])],
        "ratio": table["ratio"],
        "rise from the smallest count, first / other run \u00b5s": [
            "" if not np.isfinite(x) else f"{x:+,.1f} / {y:+,.1f}"
            for x, y in zip(table["rise_us"], table["other_rise_us"])],
        f"difference of the rises \u00b5s [{level}]": [
            _fmt(*r, "{:+,.1f}") for r in zip(table["rise_diff_us"], table["rise_diff_low"], table["rise_diff_high"])],
        }) if len(table) else pd.DataFrame()
    body = (table_html(shown, "{:,.2f}") if len(shown) else
            '<p class="lk-note">no mode was measured in the first run and another at a common count</p>')
    verdicts = verdict_table(sides)
    if len(verdicts):
        differ = verdicts[~verdicts["agree"]]
        shown_v = verdicts.assign(k=verdicts["k"].map(lambda k: f"{k:g}" if k else ""))
        body = (f"<h2>Verdicts</h2><p>{int(verdicts['agree'].sum())} of {len(verdicts)} deciding claim rows "
                f"have the same verdict in every run"
                + (f"; they differ in {len(differ)}: the rows marked agree = False.</p>" if len(differ) else ".</p>")
                + table_html(shown_v.drop(columns=["probe"])) + "<h2>Differences</h2>" + body)
    else:
        body = "<h2>Differences</h2>" + body
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>labkit compare</title>
<style>body {{ font-family: sans-serif; max-width: 1250px; margin: auto; padding: 0 12px; }}
table.lk {{ border-collapse: collapse; font-size: 12px; margin: 6px 0 14px 0; }}
table.lk th, table.lk td {{ border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }}
table.lk th {{ background: #f3f3f3; }} .lk-note {{ color: #555; font-size: 12px; }}
img {{ max-width: 100%; }}</style></head><body>
<h1>labkit compare: {len(sides)} runs</h1>
<p>Every run is analysed on its own; no curve is fitted across runs. For each mode measured in the first
run and another: its fitted latency at every service count both measured (every target, {probe} probes),
the difference (other minus first) with a {level} interval (independent runs: Welch-Satterthwaite), and
each curve's rise from the smallest common count with the difference of the rises: where the runs' levels
differ (two kernels, two machines), compare the rises. The interval covers each run's round-to-round
noise only: what differs between the runs' machines or days beyond the change you made (a neighbour's load,
CPU frequency, caches) is in the difference too, so a small difference between runs made at different times is
weak evidence; compare like with like (same machine, same grid, interleaved where you can).</p>
{table_html(runs)}
<img src="data:image/png;base64,{_figure(sides)}" alt="p50 of every mode in every run">
{body}
<p class="lk-note">Also in compare.csv. Built by
<code>python -m labkit compare {html.escape(' '.join(run_dirs))} --out {html.escape(out_dir)}</code>.</p>
</body></html>"""
    # written relative to the directory held open: a symbolic link planted there under any
    # name (compare.csv, compare.html.tmp, ...) is never written through
    with safepath.open_dir(out_dir, "--out") as held:
        store.atomic_write_at(held.fd, "compare.csv", csv_text.encode("utf-8"))
        store.atomic_write_at(held.fd, "compare.html", page.encode("utf-8"))
    return os.path.join(out_dir, "compare.html")

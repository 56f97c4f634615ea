"""What a sweep's settle rounds measure (:mod:`labkit.runs.settle`): the
claims still open after the planned rounds, and the cells they rest on.

:func:`unsettled` analyses a run directory so far (the planned rounds and
their re-measurements) and puts the seed's claims to it; :func:`open_cells`
(pure) turns each claim row that decides and is *inconclusive* into the
cells it rests on, each measured at its kernel's smallest count and at the
counts its figure is read at:

* O(n), O(1): the mode's probe kind, at the largest count (the line's rise
  is pinned by its ends);
* eBPF against a datapath: both modes' probe kind, at the largest count they
  share (their smallest comes along: the blocks measure both ends);
* amortization at k: ``reuse-k``, the new-connection kind (``reuse-1``,
  else ``syn``) and ``http-new`` (the margin: a request at 1 service), at
  the largest count;
* 1,000-5,000: ``http-new`` (penalty and budget), at the ends of the span
  (:data:`labkit.analysis.budget.SPAN`) whose penalty minus budget still
  straddles 0 (a cell's ``counts``; without an analysis, both).
"""
from __future__ import annotations

from typing import Any, Callable

import pandas as pd

from labkit.analysis import budget
from labkit.analysis.analyze import analyze
from labkit.analysis.result import Analysis
from labkit.analysis.run import Series, load_run

#: the claims settle rounds measure more of
SETTLED_CLAIMS = ("o-n", "o-1", "ebpf-beats", "keepalive", "1k-5k")
#: what a claim's row is called in the settle cells' ``rows``
CLAIM_NAMES = {"o-n": "O(n)", "o-1": "O(1)", "ebpf-beats": "eBPF beats", "keepalive": "amortization",
               "1k-5k": "1,000-5,000"}
#: a 1,000-5,000 row -> the span's counts still open (:func:`span_open`)
SpanCounts = Callable[[pd.Series], list[int]]


def row_name(r: pd.Series) -> str:
    """A claim row in words: "O(1) ipvs (uml), random target"."""
    who = f"{r['mode']} vs {r['versus']}" if isinstance(r.get("versus"), str) and r["versus"] else r["mode"]
    k = f", k = {int(r['k'])}" if pd.notna(r.get("k")) else ""
    return f"{CLAIM_NAMES.get(r['claim'], r['claim'])}{k}: {who} ({r['kernel']}), {r['target']} target"


def _both_ends(_: pd.Series) -> list[int]:
    return [int(n) for n in budget.SPAN]


def open_cells(claims: pd.DataFrame, probe_kinds: list[str],
               span_counts: SpanCounts = _both_ends) -> list[dict[str, Any]]:
    """The cells (``{mode, kernel, kinds, rows}``, and ``counts`` where a
    cell is measured at counts other than the largest) the inconclusive
    deciding rows of :data:`SETTLED_CLAIMS` rest on, one per row and mode, in
    the rows' order (pure; :func:`labkit.runs.settle.cells_of` merges them).
    ``probe_kinds``: the run's, for amortization's new-connection kind;
    ``span_counts``: the counts a 1,000-5,000 row is still open at
    (default: both ends of the span)."""
    new = "reuse-1" if "reuse-1" in probe_kinds else "syn"
    rows = claims[(claims["role"] == "decides") & (claims["verdict"] == "inconclusive")
                  & claims["claim"].isin(SETTLED_CLAIMS)]
    out: list[dict[str, Any]] = []
    for _, r in rows.iterrows():
        if r["claim"] == "1k-5k":
            out.append({"mode": r["mode"], "kernel": r["kernel"], "kinds": [r["probe"]],
                        "counts": span_counts(r), "rows": [row_name(r)]})
            continue
        kinds = [r["probe"], new, "http-new"] if r["claim"] == "keepalive" else [r["probe"]]
        modes = [r["mode"]] + ([r["versus"]] if r["claim"] == "ebpf-beats" and isinstance(r["versus"], str)
                               and r["versus"] else [])
        out += [{"mode": m, "kernel": r["kernel"], "kinds": kinds, "rows": [row_name(r)]} for m in modes]
    return out


def span_open(an: Analysis) -> SpanCounts:
    """For a 1,000-5,000 row of ``an``: the ends of the span where its
    penalty minus budget still straddles 0 (where more rounds can decide
    it; both when the row's curve does not cover the span)."""
    level, frac = float(an.settings.get("level", 0.95)), float(an.settings.get("budget_frac", 0.1))

    def counts(r: pd.Series) -> list[int]:
        c = an.curve(Series(r["mode"], r["kernel"]), r["target"], (r["probe"], float(r["pacing"])),
                     str(r.get("statistic") or "p50"))
        ends = budget.span_excess(c, c, frac, budget.SPAN, level) if c is not None else None
        if ends is None:
            return _both_ends(r)
        return [int(n) for n, e in zip(budget.SPAN, ends) if e.lo <= 0 <= e.hi] or _both_ends(r)
    return counts


def unsettled(run_dir: str) -> list[dict[str, Any]]:
    """The cells of the claims the run in ``run_dir`` leaves open so far
    (:func:`open_cells` of its analysis; every setting the report's default)."""
    run = load_run(run_dir)
    an = analyze(run)
    kinds = list((run.meta.get("params") or {}).get("probe_kinds") or [])
    return open_cells(an.claims, kinds, span_open(an))

"""What a sweep's settle rounds measure (:mod:`labkit.runs.settle`): the
claims still open after the planned rounds, and the cells they rest on.

:func:`unsettled` analyses a run directory so far (the planned rounds and
their re-measurements) and puts the seed's claims to it; :func:`open_cells`
(pure) turns each claim row that decides and is *inconclusive*, and whose
figure is read at a mode's smallest and largest counts, into the cells it
rests on:

* O(n), O(1): the mode's probe kind (the line's rise is pinned by its ends);
* eBPF against a datapath: both modes' probe kind, at the largest count they
  share (their smallest comes along: the blocks measure both ends);
* amortization at k: ``reuse-k``, the new-connection kind (``reuse-1``,
  else ``syn``) and ``http-new`` (the margin: a request at 1 service).

The 1,000-5,000 claim is read at 1,000 and 5,000 services: more rounds at the
ends would not narrow it, so it is left as the planned rounds decide it.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from labkit.analysis.analyze import analyze
from labkit.analysis.run import load_run

#: the claims whose figures are read at a mode's smallest and largest counts
SETTLED_CLAIMS = ("o-n", "o-1", "ebpf-beats", "keepalive")
#: what a claim's row is called in the settle cells' ``rows``
CLAIM_NAMES = {"o-n": "O(n)", "o-1": "O(1)", "ebpf-beats": "eBPF beats", "keepalive": "amortization"}


def row_name(r: pd.Series) -> str:
    """A claim row in words: "O(1) ipvs (uml), random target"."""
    who = f"{r['mode']} vs {r['versus']}" if isinstance(r.get("versus"), str) and r["versus"] else r["mode"]
    k = f", k = {int(r['k'])}" if pd.notna(r.get("k")) else ""
    return f"{CLAIM_NAMES.get(r['claim'], r['claim'])}{k}: {who} ({r['kernel']}), {r['target']} target"


def open_cells(claims: pd.DataFrame, probe_kinds: list[str]) -> list[dict[str, Any]]:
    """The cells (``{mode, kernel, kinds, rows}``) the inconclusive deciding
    rows of :data:`SETTLED_CLAIMS` rest on, one per row and mode, in the
    rows' order (pure; :func:`labkit.runs.settle.cells_of` merges them).
    ``probe_kinds``: the run's, for amortization's new-connection kind."""
    new = "reuse-1" if "reuse-1" in probe_kinds else "syn"
    rows = claims[(claims["role"] == "decides") & (claims["verdict"] == "inconclusive")
                  & claims["claim"].isin(SETTLED_CLAIMS)]
    out = []
    for _, r in rows.iterrows():
        kinds = [r["probe"], new, "http-new"] if r["claim"] == "keepalive" else [r["probe"]]
        modes = [r["mode"]] + ([r["versus"]] if r["claim"] == "ebpf-beats" and isinstance(r["versus"], str)
                               and r["versus"] else [])
        out += [{"mode": m, "kernel": r["kernel"], "kinds": kinds, "rows": [row_name(r)]} for m in modes]
    return out


def unsettled(run_dir: str) -> list[dict[str, Any]]:
    """The cells of the claims the run in ``run_dir`` leaves open so far
    (:func:`open_cells` of its analysis; every setting the report's default)."""
    run = load_run(run_dir)
    an = analyze(run)
    kinds = list((run.meta.get("params") or {}).get("probe_kinds") or [])
    return open_cells(an.claims, kinds)

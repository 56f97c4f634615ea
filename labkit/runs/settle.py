"""Settle rounds: the sweep's leftover time spent on the claims it left open.

A sweep with ``settle_minutes`` > 0 runs its planned blocks (and the
re-measurements of disturbed ones, and the late rounds that fit its budget:
:mod:`labkit.runs.runner`) first.  Then, once, the claims are put to
what it measured (the caller's ``settle_with``: the CLI and the sweep
notebook pass :func:`labkit.analysis.settle.unsettled`, the analysis of the
run directory so far), and every claim row that decides and is still
*inconclusive* names the *cells* it rests on: mode, kernel, probe kinds and
the counts its figure is read at besides the smallest (the largest for O(n),
O(1), eBPF against a datapath and amortization; 1,000 and/or 5,000 for the
1,000-5,000 claim).  Those cells are measured at those counts in more rounds
(*settle rounds*, :func:`labkit.runs.blocks.settle_blocks`), one round after
another, while the next round is expected to end within the sweep's budget
(``settle_minutes`` from the run's start) and up to ``settle_rounds``.

One look only: the cells are chosen once, from the planned rounds, and how
many settle rounds run depends on the time they take, never on what they
measure; the report analyses all rounds together.  The decision, its cells
and the rounds run are in the meta file (``settle``) before a round runs, so
a resumed run measures the same blocks.

This module is pure: the cells, and the expected seconds of a round from
what the run measured so far (:func:`round_seconds`).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from labkit.runs.blocks import Block
from labkit.runs.timing import block_gaps, point_seconds

#: a block's time outside its probes besides programming (a fresh node, teardown), seconds
BLOCK_OVERHEAD_S = 1.5
#: a guest segment's start and end (boot, interpreter, lab) when the run has no measure of it, seconds
SEGMENT_S = 20.0


def cells_of(found: Iterable[Mapping[str, Any]], kinds_for: Any, kernels_of: Mapping[str, Sequence[str]],
             two_kernels: bool) -> list[dict[str, Any]]:
    """The settle cells of ``found`` (each ``{mode, kernel, kinds, rows}``,
    and ``counts`` for a cell read at counts other than the largest: what
    the claims name), as the run can measure them: a mode the run has in
    that kernel (``kernels_of``: mode -> its kernels; a one-kernel run's
    cells take kernel ""), its kinds among ``kinds_for(mode, kernel)`` (in
    their order); cells of one mode, kernel and counts merged, the rows they
    settle kept.  Pure."""
    out: dict[tuple[str, str, tuple[int, ...]], dict[str, Any]] = {}
    for c in found:
        mode, kernel = str(c["mode"]), str(c["kernel"]) if two_kernels else ""
        if mode not in kernels_of or (two_kernels and kernel not in kernels_of[mode]):
            continue
        have = kinds_for(mode, kernel)
        want = [k for k in have if k in set(c["kinds"])]
        if not want:
            continue
        counts = tuple(sorted({int(n) for n in c.get("counts") or ()}))
        cell = out.setdefault((mode, kernel, counts), {"mode": mode, "kernel": kernel, "kinds": [], "rows": []}
                              | ({"counts": list(counts)} if counts else {}))
        cell["kinds"] = [k for k in have if k in set(cell["kinds"]) | set(want)]
        cell["rows"] += [r for r in c.get("rows", []) if r not in cell["rows"]]
    return list(out.values())


def round_seconds(blocks: Sequence[Block], points: pd.DataFrame, kernel_of: Mapping[int, str],
                  segment_s: Sequence[float] = ()) -> float:
    """The seconds a settle round of ``blocks`` is expected to take, from the
    run's own points (pure): per block, the median over the rounds that
    measured its mode and count in its kernel of its programming time and
    the time of its kinds' points (each point's probes and what precedes it
    in its block), plus
    :data:`BLOCK_OVERHEAD_S`; a round with blocks in a guest adds one
    segment's start and end: the median of ``segment_s`` (each guest
    segment's wall time minus what its blocks measured), else
    :data:`SEGMENT_S`.  A block nothing matches costs the median block."""
    p = points.dropna(subset=["started", "finished"])
    p = p.assign(kernel=p["block"].map(kernel_of).fillna(""), dur=point_seconds(p))
    costs, unknown = [], 0
    for b in blocks:
        m = p[(p["mode"] == b.mode) & (p["services"] == b.services) & (p["kernel"] == b.kernel)]
        if b.kinds:
            m = m[m["probe"].isin(b.kinds)]
        if not len(m):
            unknown += 1
            continue
        per = m.groupby("block").agg(probe=("dur", "sum"), program=("program_s", "first"))
        costs.append(float(np.median(per["probe"] + per["program"].fillna(0.0))) + BLOCK_OVERHEAD_S)
    total = sum(costs) + unknown * (float(np.median(costs)) if costs else 10.0)
    if any(b.kernel not in ("", "host") for b in blocks):
        seg = [s for s in segment_s if math.isfinite(s) and s > 0]
        total += float(np.median(seg)) if seg else SEGMENT_S
    return total


def segment_overheads(points: pd.DataFrame, kernel_of: Mapping[int, str], guests: Sequence[Mapping[str, Any]],
                      kernel: str = "uml") -> list[float]:
    """A guest segment's start and end, seconds (pure): the guests' wall time
    (``command_s`` of the meta file's ``guests`` of ``kernel``) minus the
    spans of the runs of consecutive ``kernel`` blocks (first to last probe,
    in the order measured), over the number of guests: one mean, or empty
    when the run has no guest segment."""
    walls = [float(g.get("command_s") or math.nan) for g in guests if g.get("backend") == kernel]
    walls = [w for w in walls if math.isfinite(w)]
    spans = block_gaps(points)
    if not len(spans) or not walls:
        return []
    inside = 0.0
    start: float | None = None
    end = 0.0
    for (first, last), b in zip(spans[["first", "last"]].itertuples(index=False, name=None), spans.index):
        if kernel_of.get(int(b), "") == kernel:
            start = first if start is None else start
            end = last
        elif start is not None:
            inside, start = inside + end - start, None
    if start is not None:
        inside += end - start
    return [max(sum(walls) - inside, 0.0) / len(walls)]


class RoundClock:
    """How long the next extra round (late or settle) is expected to take:
    its estimate from the run's own blocks (:func:`round_seconds`), scaled by
    how the last round run compared with *its* estimate (1 before any ran).
    The scale is the last round's measured over estimated seconds, never
    over the scaled expectation: dividing by that would undo the scale every
    second round (expected 2x, measured 2x: the next taken as 1x).  Pure."""

    def __init__(self) -> None:
        self.scale = 1.0

    def expect(self, estimate: float) -> float:
        """The seconds a round estimated at ``estimate`` is expected to take."""
        return estimate * self.scale

    def took(self, estimate: float, seconds: float) -> None:
        """A round estimated at ``estimate`` took ``seconds``."""
        if estimate > 0 and seconds > 0:
            self.scale = seconds / estimate

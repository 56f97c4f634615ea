"""The time a run's points and blocks took, from its points table (pure):
what the estimate's rates (:mod:`labkit.runs.estimate`) and a settle
round's expected time (:mod:`labkit.runs.settle`) are made of."""
from __future__ import annotations

import math
from typing import Collection

import pandas as pd


def point_seconds(points: pd.DataFrame, first: float = 0.0) -> pd.Series:
    """Each point's time (pure): its probes (``started`` to ``finished``) and
    what precedes it in its block (the prober's start, warmup, the previous
    point's checks); a block's first point has ``first`` for what precedes
    it.  ``points`` with both times set."""
    p = points.sort_values("started")
    gap = (p["started"] - p.groupby("block")["finished"].shift()).clip(lower=0).fillna(first)
    return (p["finished"] - p["started"] + gap).reindex(points.index)


def block_gaps(points: pd.DataFrame, resumed: Collection[float] = ()) -> pd.DataFrame:
    """One row per block of a points table, in the order measured (pure):
    ``mode``, ``services``, its first and last probe times, and ``outside``,
    the time from the previous block's last point to this block's first
    (teardown, a fresh node, programming); NaN for the first block and for a
    block a resume (``resumed``: the run meta's times) precedes, whose gap is
    the interruption's."""
    p = points.dropna(subset=["started", "finished"])
    blocks = p.groupby("block").agg(mode=("mode", "first"), services=("services", "first"),
                                    first=("started", "min"), last=("finished", "max"),
                                    ).sort_values("first")
    blocks = blocks.assign(outside=(blocks["first"] - blocks["last"].shift()).clip(lower=0))
    for t in resumed:
        blocks.loc[(blocks["last"].shift() < t) & (blocks["first"] >= t), "outside"] = math.nan
    return blocks

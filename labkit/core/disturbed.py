"""Disturbed blocks: is a point's p50 outside what the other rounds of its cell allow?

A *cell* is one mode in one kernel at one service count, target, probe kind and
pacing; a sweep measures it once per round, each time in a block of its own.
A block that a neighbour's load, a page-cache flush or a timer storm slowed
shows a p50 far from the cell's other rounds (host-6.18: eBPF at 2,000
services, round 1, 20.2 us against 3.4-4.0 in the other four).  The rule
(:func:`disturbed`), pure and the same for the sweep (which measures a
flagged block once more, :mod:`labkit.runs.runner`) and the analysis (which
lists what was re-measured):

* at least :data:`MIN_OTHERS` other rounds with a p50, else nothing is judged;
* ``med`` = their median, ``s`` = 1.4826 x their median absolute deviation
  (the standard deviation of normal noise);
* flagged when the p50 lies outside ``med`` +- an allowance, the largest of
  :data:`K_MAD` x ``s`` (the cell's own spread), :data:`FLOOR_US` (timer
  and scheduling granularity: a few microseconds are never a disturbance)
  and a factor :data:`RATIO` in either direction (above ``med * RATIO`` or
  below ``med / RATIO``): round-to-round drift of a shared machine moves
  a p50 by tens of percent, a disturbance by multiples.

What it does on data with a known answer (``tests/test_disturbed.py``):
with no disturbance, five rounds whose p50s scatter log-normally around the
truth, the false-alarm rate per point is 0 in 200,000 at 10 % scatter (the
reference host runs scatter 3-8 %) and under 1 % at 25 % (user-mode Linux's
scatter); a planted block at 5.4x its cell (the host-6.18 example) is found
every time at 10 % scatter, and at 3x in at least 99 % of cells.  On the
reference runs it flags 12 of 1,500 points of host-6.18 (the eBPF block
above among them), none of budget-6.18 or experiments-6.18.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

#: other rounds a point needs before it is judged
MIN_OTHERS = 2
#: allowance in robust standard deviations of the other rounds
K_MAD = 5.0
#: allowance never below this many microseconds
FLOOR_US = 2.0
#: allowance never below this factor (either direction) of the other rounds' median
RATIO = 2.0
#: MAD -> standard deviation of normal noise
MAD_SCALE = 1.4826


def allowed(others: Iterable[float]) -> tuple[float, float] | None:
    """The range of p50s the other rounds ``others`` (NaN ignored) allow: (low,
    high) in microseconds, or None when fewer than :data:`MIN_OTHERS` have one."""
    o = np.asarray([v for v in others if np.isfinite(v)], dtype=float)
    if len(o) < MIN_OTHERS:
        return None
    med = float(np.median(o))
    s = MAD_SCALE * float(np.median(np.abs(o - med)))
    up = max(K_MAD * s, FLOOR_US, (RATIO - 1.0) * med)
    down = max(K_MAD * s, FLOOR_US, (1.0 - 1.0 / RATIO) * med)
    return med - down, med + up


def disturbed(others: Iterable[float], p50: float) -> bool:
    """Whether ``p50`` lies outside what the cell's other rounds ``others``
    allow (:func:`allowed`); False when it cannot be judged (no p50, too few
    other rounds)."""
    if not np.isfinite(p50):
        return False
    lim = allowed(others)
    return lim is not None and not (lim[0] <= p50 <= lim[1])


def flag_cells(cells: Iterable[object], p50s: Iterable[float]) -> np.ndarray:
    """For rows given as (cell, p50) -- one row per cell and round -- whether
    each is :func:`disturbed` against the other rows of its cell."""
    keys = list(cells)
    vals = np.asarray(list(p50s), dtype=float)
    groups: dict[object, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    out = np.zeros(len(keys), dtype=bool)
    for idx in groups.values():
        for j, i in enumerate(idx):
            out[i] = disturbed(vals[idx[:j] + idx[j + 1:]], vals[i])
    return out

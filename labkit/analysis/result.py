"""The :class:`Analysis` of a run: its points, fitted curves (keyed by
:class:`~labkit.analysis.curves.CurveKey`) and tables, as
:func:`labkit.analysis.analyze.analyze` composes them.  Readers of a finished
analysis (:mod:`~labkit.analysis.claims`, :mod:`~labkit.analysis.kernels`,
the report) take it from here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable

import pandas as pd

from labkit.analysis.curves import Curve, CurveKey
from labkit.analysis.run import Run, Series, probe_label
from labkit.rundir.store import atomic_write_bytes

TARGET_ORDER = ("last", "random", "middle", "first", "none")
#: a probe kind and its pacing (probes per second, 0 back to back)
Probe = tuple[str, float]


def at_probe(df: pd.DataFrame, probe: Probe) -> pd.Series:
    """Which rows of ``df`` (with probe and pacing columns) are of ``probe``."""
    return (df["probe"] == probe[0]) & (df["pacing"] == probe[1])


@dataclass
class Analysis:
    run: Run
    points: pd.DataFrame
    curves: dict[CurveKey, Curve]
    summary: pd.DataFrame
    fits: pd.DataFrame
    crossover: pd.DataFrame
    baselines: pd.DataFrame
    settings: dict
    checks: dict
    #: per series and probe: the 0-service points (empty table, no NAT)
    empty: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: the seed's claims with verdicts (:func:`labkit.analysis.claims.claims`)
    claims: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: curves not fitted, and why (a tail statistic with too few probes)
    skipped: list[str] = field(default_factory=list)

    @property
    def remeasured(self) -> pd.DataFrame:
        """Disturbed points: re-measured in the same round (the fits use the
        re-measurement), or flagged only (:attr:`labkit.analysis.run.Run.remeasured`)."""
        return self.run.remeasured

    @property
    def series(self) -> list[Series]:
        have = {k.series for k in self.curves}
        return [s for s in self.run.series_order if s in have]

    def rounds_by_mode(self) -> dict[str, int]:
        """Per mode, the most rounds any of its curves was measured in (delete-one-round
        curves only; a curve that lost a round to invalid points keeps its mode's count)."""
        out: dict[str, int] = {}
        for k, c in self.curves.items():
            if c.method == "rounds" and c.n_rounds:
                out[k.mode] = max(out.get(k.mode, 0), c.n_rounds)
        return out

    def end_rounds_by_mode(self) -> dict[str, tuple[int, list[str]]]:
        """Per mode of the run's ``end_rounds`` whose curves of its ``end_kinds``
        have more rounds at their smallest and largest counts than at every
        count: those rounds and the probe kinds."""
        params = self.run.meta.get("params") or {}
        modes, end_kinds = set(params.get("end_rounds") or {}), list(params.get("end_kinds") or ())
        for cell in self.settled_cells():   # settle rounds, too, measure some modes' ends only
            if cell.get("counts"):   # read at other counts: counted_rounds_by_mode
                continue
            modes.add(cell["mode"])
            end_kinds += [x for x in cell["kinds"] if x not in end_kinds]
        out: dict[str, tuple[int, list[str]]] = {}
        for k, c in self.curves.items():
            n = _more_rounds_at(c, [0, len(c.cells) - 1])
            if n and k.mode in modes and k.probe in end_kinds:
                was, kinds = out.get(k.mode, (0, []))
                out[k.mode] = (max(was, n), [x for x in end_kinds if x in kinds or x == k.probe])
        return out

    def counted_rounds_by_mode(self) -> dict[str, tuple[int, list[int], list[str]]]:
        """Per mode whose settle cells name their counts (the 1,000-5,000
        claim's), and whose curves of those kinds have more rounds at those
        counts (and the smallest) than at every count: those rounds, the
        counts and the probe kinds."""
        out: dict[str, tuple[int, list[int], list[str]]] = {}
        for cell in self.settled_cells():
            want = {float(n) for n in cell.get("counts") or ()}
            for k, c in self.curves.items():
                if not want or k.mode != cell["mode"] or cell["kernel"] not in ("", k.kernel) \
                        or k.probe not in cell["kinds"]:
                    continue
                at = [i for i, x in enumerate(c.cells) if i == 0 or float(x) in want]
                n = _more_rounds_at(c, at)
                if n:
                    was, counts, kinds = out.get(k.mode, (0, [], []))
                    out[k.mode] = (max(was, n), sorted({*counts, *(int(c.cells[i]) for i in at)}),
                                   [*kinds, *([k.probe] if k.probe not in kinds else [])])
        return out

    def settle(self) -> dict:
        """The run's settle rounds as its meta file records them
        (:mod:`labkit.runs.settle`: ``cells``, ``rounds``, ``stopped``, ...); {} without."""
        s = self.run.meta.get("settle")
        return s if isinstance(s, dict) else {}

    def late(self) -> dict:
        """The run's late rounds (the rounds beyond ``rounds``, run only while
        each fitted the sweep's budget) as its meta file records them
        (``first``, ``rounds``, ``round_s``, ``stopped``, ...); {} without."""
        s = self.run.meta.get("late")
        return s if isinstance(s, dict) else {}

    def settled_cells(self) -> list[dict]:
        """The cells settle rounds measured ({mode, kernel, kinds, rows}, and
        ``counts`` where read at counts other than the largest); [] when none ran."""
        s = self.settle()
        return [c for c in s.get("cells") or [] if isinstance(c, dict)] if int(s.get("rounds") or 0) else []

    def label(self, s: Series) -> str:
        return self.run.label(s)

    def shown(self, df: pd.DataFrame, *mode_columns: str) -> pd.DataFrame:
        """``df`` for a reader: each of ``mode_columns`` (default ``mode``, with
        ``kernel`` beside it) as its series' label (a mode the run did not
        measure in that kernel stays a bare mode), ``probe`` with its pacing
        ("syn @1000/s").  Words for tables and sentences, never parsed back."""
        out = df.copy()
        known = set(self.run.series_order)
        for col in mode_columns or ("mode",):   # "" and "(itself)" stay as they are
            out[col] = [self.label(Series(m, k)) if (m, k) in known else m for m, k in zip(df[col], df["kernel"])]
        if "pacing" in df.columns:
            out["probe"] = [probe_label(p, r) for p, r in zip(df["probe"], df["pacing"])]
        return out

    def curve(self, s: Series, target: str, probe: Probe, stat: str) -> Curve | None:
        return self.curves.get(CurveKey(s.mode, s.kernel, target, probe[0], probe[1], stat))

    @property
    def targets(self) -> list[str]:
        have = list(dict.fromkeys(self.points["target"]))
        return [t for t in TARGET_ORDER if t in have] + sorted(t for t in have if t not in TARGET_ORDER)

    @property
    def probes(self) -> list[Probe]:
        have = list(dict.fromkeys(zip(self.points["probe"], self.points["pacing"])))
        syn = ("syn", 0.0)
        return ([syn] if syn in have else []) + sorted(p for p in have if p != syn)

    @property
    def headline_probe(self) -> Probe:
        """The probe kind the headline uses: back-to-back SYNs when measured."""
        return self.probes[0]

    @property
    def headline_target(self) -> str:
        with_curves = {k.target for k in self.curves}
        return next((t for t in self.targets if t in with_curves), self.targets[0])

    def write(self, out_dir: str) -> dict[str, str]:
        """Write crossover.csv, fits.csv, summary.csv and claims.csv into ``out_dir``."""
        os.makedirs(out_dir, exist_ok=True)
        paths = {}
        for name, df in (("crossover.csv", self.crossover), ("fits.csv", self.fits),
                         ("summary.csv", self.summary), ("claims.csv", self.claims)):
            p = os.path.join(out_dir, name)
            atomic_write_bytes(p, df.to_csv(index=False, float_format="%.6g").encode())
            paths[name] = p
        return paths

    def headline_findings(self, stats: Iterable[str] = ("p50", "p99"),
                          budget_stats: Iterable[str] = ("p50",)) -> list[str]:
        """One sentence per finding for the summary, for the headline target:
        every fitted-curve comparison of ``stats``, and every budget crossover
        of ``budget_stats`` that occurs inside the measured range."""
        cx = self.crossover
        cx = cx[(cx["target"] == self.headline_target) & at_probe(cx, self.headline_probe)
                & (cx["resolved"] != False)]  # noqa: E712  (NaN: no estimate to resolve)
        fit = cx[(cx["kind"] == "fit") & cx["statistic"].isin(list(stats))]
        # a relative budget is a finding only when it is a fraction of a measured request
        bud = cx[(cx["kind"] != "fit") & cx["statistic"].isin(list(budget_stats))
                 & (cx["n_star"] > cx["range_lo"])
                 & ((cx["kind"] == "budget-abs") | cx["baseline"].astype(str).str.startswith("http-new"))]
        return list(fit["finding"]) + list(bud["finding"])


def _more_rounds_at(c: Curve, at: list[int]) -> int:
    """The fewest rounds among the counts ``at`` (indexes) of a delete-one-round
    curve of three counts or more, when that is more than the curve's own
    (its fewest-measured count's: end and settle rounds measure some counts
    only); else 0."""
    if c.method != "rounds" or len(c.cell_rounds) < 3 or len(at) < 2:
        return 0
    n = int(c.cell_rounds[at].min())
    return n if n > c.n_rounds else 0

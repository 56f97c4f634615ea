"""The noise gauge read back: was the machine busy while the run measured,
and how fast is it against the reference run (pure but for reading files).

Two gauges:

* the machine's load, sampled every few seconds by the run
  (``load.json``, :mod:`labkit.host.load`): the CPU other processes used,
  CPU steal, the load average;
* a fixed reference point measured again in every round: the first
  calibrator mode (iptables-legacy, else iptables-nft, else nftables) on the
  host at the run's smallest count above 0, SYN probes back to back to the
  last target, p50.  Its spread over rounds is the run's drift; against the
  same point of a reference run it says how fast this machine is;
* the spread between rounds of the probes paced at the seed's load (SYN at
  1,000/s on the host, every mode, count and target): the median over those
  cells of each cell's median absolute deviation over its rounds, relative
  to its median.  A paced probe finds the CPU idle, so it pays for waking
  it; on a virtual machine whose host is busy that wake-up varies, and the
  load gauge does not see it (the guest's CPUs are idle, nothing is stolen).
  Measured on this machine: 5.6-7.7% in six quiet default runs, 10.1-13.6%
  in five slow runs (docs/results.md); in the slow default run of 14:13 the
  O(1) and amortization rows' intervals were 2.5-5.7x as wide.  Above
  :data:`PACED_SPREAD` times the reference run's the report warns.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from labkit.analysis import anchors
from labkit.analysis.claims import SEED_PACING
from labkit.analysis.run import kernel_names, use_remeasured
from labkit.core.modes import CALIBRATORS
from labkit.rundir import schema

#: the run a report compares this machine's speed with: the committed default reference run
REFERENCE_RUN = anchors.REFERENCE_RUN

#: the run is called disturbed when other processes used this much of one CPU (median over samples) ...
OTHERS_PCT = 25.0
#: ... or the hypervisor stole this much (median), ...
STEAL_PCT = 5.0
#: ... or the reference point's rounds lie further apart than this ratio
DRIFT = 1.5
#: the reference point's instrument
REF_PROBE, REF_PACING, REF_TARGET = "syn", 0.0, "last"
#: the paced probes' round-to-round spread (:func:`paced_spread`) is called disturbed at this many
#: times the reference run's
PACED_SPREAD = 1.5
#: the pacing of the paced spread: the seed's load
PACED = SEED_PACING


@dataclass(frozen=True)
class Load:
    """The load samples of one run, summarized."""
    samples: int
    seconds: float
    others_median: float     # % of one CPU used by processes outside the run
    others_max: float
    busiest: list[str]       # at the sample of most other use
    steal_median: float      # % of one CPU stolen
    load1_median: float
    cores: int

    @property
    def disturbed(self) -> bool:
        return self.others_median > OTHERS_PCT or self.steal_median > STEAL_PCT


def read_load(run_dir: str) -> list[dict]:
    """The samples of ``run_dir``'s ``load.json`` ([] without one: a run of an
    older labkit, or none taken)."""
    try:
        with open(os.path.join(run_dir, schema.LOAD), "rb") as f:
            data = json.loads(f.read(16 << 20))
    except (OSError, ValueError):
        return []
    samples = data.get("samples") if isinstance(data, dict) else None
    return [s for s in samples if isinstance(s, dict)] if isinstance(samples, list) else []


def cpu_of(meta: dict | None) -> str:
    """The CPU model a run's meta file records (``host.cpu_model``), "" for a
    run recorded before labkit kept it."""
    host = (meta or {}).get("host")
    return str(host.get("cpu_model") or "") if isinstance(host, dict) else ""


def read_meta(run_dir: str) -> dict | None:
    """A run's meta file, None when it is not there."""
    try:
        with open(os.path.join(run_dir, schema.META), "rb") as f:
            return dict(json.loads(f.read(16 << 20)))
    except (OSError, ValueError):
        return None


def read_points(run_dir: str) -> pd.DataFrame | None:
    """A run's points with the kernel each ran in (host, uml, vm), a
    disturbed block's read as invalid where it was re-measured (as
    :func:`labkit.analysis.run.load_run` reads them), for :func:`speed_ratio`
    and :func:`paced_spread`; None when the run is not there."""
    meta = read_meta(run_dir)
    if meta is None:
        return None
    try:
        points = pd.read_parquet(os.path.join(run_dir, schema.POINTS))
    except (OSError, ValueError):
        return None
    col = "kernel_release" if "kernel_release" in points.columns else "kernel"
    where = kernel_names(meta, run_dir, points[col].astype(str).unique())
    points = points.assign(kernel=points[col].astype(str).map(where))
    return use_remeasured(points)[0] if "remeasure_of" in points.columns else points   # older: as they are


def summarize(samples: list[dict]) -> Load | None:
    """The samples summarized (None without any)."""
    df = pd.DataFrame(samples)
    need = {"others_pct", "steal_pct", "load1", "seconds"}
    if not len(df) or not need <= set(df.columns):
        return None
    worst = df.loc[df["others_pct"].idxmax()]
    busiest = worst.get("busiest")
    return Load(samples=len(df), seconds=float(df["seconds"].sum()),
                others_median=float(df["others_pct"].median()), others_max=float(df["others_pct"].max()),
                busiest=list(busiest) if isinstance(busiest, list) else [],
                steal_median=float(df["steal_pct"].median()), load1_median=float(df["load1"].median()),
                cores=int(df["cores"].max()) if "cores" in df.columns else 0)


def reference_rounds(points: pd.DataFrame) -> tuple[str, int, pd.Series] | None:
    """The reference point of a run's valid points (a loaded run's: with a
    ``kernel`` column): (mode, count, p50 per round), or None when the run
    has no such point."""
    p = points[points["valid"].astype(bool) & (points["probe"] == REF_PROBE) & (points["pacing"] == REF_PACING)
               & (points["target"] == REF_TARGET) & (points["services"] > 0)]
    if "kernel" in p.columns:
        p = p[p["kernel"] == "host"]
    for mode in CALIBRATORS:
        m = p[p["mode"] == mode]
        if len(m):
            n = int(m["services"].min())
            per = m[m["services"] == n].groupby("round")["p50_us"].median()
            return mode, n, per
    return None


def drift(points: pd.DataFrame) -> float:
    """The reference point's largest over smallest round (nan with fewer than two rounds)."""
    ref = reference_rounds(points)
    if ref is None or len(ref[2]) < 2 or ref[2].min() <= 0:
        return float("nan")
    return float(ref[2].max() / ref[2].min())


def paced_spread(points: pd.DataFrame, pacing: float = PACED, least_rounds: int = 3) -> float:
    """The round-to-round spread of SYN probes at ``pacing`` on the host
    (pure): per cell (mode, count, target) of at least ``least_rounds``
    rounds, the median absolute deviation of its rounds' p50 over their
    median; the median over the cells (nan with none).  Valid points only:
    a run read as :func:`read_points` or ``load_run`` reads it has a
    re-measured block's old points invalid."""
    p = points[points["valid"].astype(bool) & (points["probe"] == REF_PROBE) & (points["pacing"] == pacing)
               & (points["services"] > 0)]
    if "kernel" in p.columns:
        p = p[p["kernel"] == "host"]
    per = p.groupby(["mode", "services", "target", "round"])["p50_us"].median()
    rel = []
    for _, r in per.groupby(level=["mode", "services", "target"]):
        v = r.to_numpy(dtype=float)
        if len(v) >= least_rounds and np.median(v) > 0:
            rel.append(float(np.median(np.abs(v - np.median(v))) / np.median(v)))
    return float(np.median(rel)) if rel else float("nan")


def speed_ratio(points: pd.DataFrame, reference: pd.DataFrame) -> tuple[str, int, float, float] | None:
    """This run's reference point against the same point (mode, count) of a
    reference run's points: (mode, count, this run's median p50, the
    reference's); None when either lacks it."""
    mine = reference_rounds(points)
    if mine is None:
        return None
    mode, n, per = mine
    p = reference
    if "kernel" in p.columns:
        p = p[p["kernel"] == "host"]
    theirs = p[p["valid"].astype(bool) & (p["mode"] == mode) & (p["services"] == n) & (p["probe"] == REF_PROBE)
               & (p["pacing"] == REF_PACING) & (p["target"] == REF_TARGET)]["p50_us"]
    if not len(theirs):
        return None
    return mode, n, float(per.median()), float(np.median(theirs))


def lines(load: Load | None, drift_ratio: float, speed: tuple[str, int, float, float] | None,
          reference_name: str = "the reference run", paced: tuple[float, float] | None = None,
          cpus: tuple[str, str] = ("", "")) -> list[str]:
    """What the report says of the run's noise: one warning line when it was
    disturbed, a second when its paced probes spread more than
    :data:`PACED_SPREAD` times the reference run's (``paced``: this run's
    :func:`paced_spread` and the reference's), then the facts (pure);
    ``cpus``: this run's CPU model and the reference's ("" where not
    recorded): a speed against a run on another CPU says so."""
    out = []
    busy = load is not None and load.disturbed
    drifted = np.isfinite(drift_ratio) and drift_ratio > DRIFT
    if busy or drifted:
        why = []
        if busy and load is not None:
            named = f"; busiest: {', '.join(load.busiest)}" if load.busiest else ""
            stole = f"the hypervisor stole {load.steal_median:.0f}% of a CPU"
            why.append(f"other processes used {load.others_median:.0f}% of a CPU (median{named})"
                       if load.others_median > OTHERS_PCT else stole)
        if drifted:
            why.append(f"the reference point's rounds lie {drift_ratio:.2f}x apart")
        out.append("Warning: this run was disturbed: " + "; ".join(why) + ". Its intervals are wider and its "
                   "levels higher than a quiet run's; measure again on a quiet machine to compare levels.")
    spread_here, spread_ref = paced if paced is not None else (float("nan"), float("nan"))
    if np.isfinite(spread_here) and np.isfinite(spread_ref) and spread_ref > 0 \
            and spread_here > PACED_SPREAD * spread_ref:
        unseen = (f" (the load gauge does not see it: other processes {load.others_median:.0f}% of a CPU, steal "
                  f"{load.steal_median:.1f}%)" if load is not None and not load.disturbed else "")
        out.append(f"Warning: the paced probes (SYN at {PACED:,.0f}/s) spread {spread_here:.1%} between rounds "
                   f"here, {spread_here / spread_ref:.1f}x {reference_name}'s {spread_ref:.1%}: a paced probe "
                   f"finds the CPU idle, and waking it took longer at times while this run measured{unseen}. "
                   "The paced rows' intervals are wider, and verdicts a quieter hour decides may stay "
                   "inconclusive here: measure again in a quieter hour to decide them.")
    if load is not None:
        model = f", {cpus[0]}" if cpus[0] else ""
        out.append(f"Machine load while measuring ({load.samples} samples over {load.seconds / 60:.0f} min, "
                   f"{load.cores} CPUs{model}): other processes {load.others_median:.0f}% of a CPU (median; at most "
                   f"{load.others_max:.0f}%), steal {load.steal_median:.1f}%, load average {load.load1_median:.2f}.")
    else:
        out.append("Machine load while measuring: not recorded (a run of an older labkit).")
    if speed is not None:
        mode, n, here, there = speed
        r = here / there if there > 0 else float("nan")
        how = (f"{r:.1f}x slower than" if r > 1.1 else f"{1 / r:.1f}x faster than" if r < 1 / 1.1
               else "about as fast as")
        out.append(f"Against {reference_name}: {mode} at {n:,} service{'s' * (n != 1)} (SYN back to back, last "
                   f"target, p50) is {here:.1f} us here and {there:.1f} us there: this machine is {how} "
                   "the reference run's" + (f" (round-to-round drift here {drift_ratio:.2f}x)."
                                            if np.isfinite(drift_ratio) else ".")
                   + (f" Another CPU: {cpus[0]} here, {cpus[1]} there; compare verdicts, not levels."
                      if all(cpus) and cpus[0] != cpus[1] else ""))
    if np.isfinite(spread_here):
        out.append(f"Paced probes (SYN at {PACED:,.0f}/s) spread {spread_here:.1%} between rounds here (median over "
                   "cells of the rounds' median absolute deviation)"
                   + (f"; {reference_name}: {spread_ref:.1%}." if np.isfinite(spread_ref) else "."))
    return out

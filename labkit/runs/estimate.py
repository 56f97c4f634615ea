"""How many points a sweep has and how long it will take, before it runs
(``labkit sweep --dry-run``, ``labkit params FILE``).

The duration is predicted from rates measured on a finished sweep
(:func:`rates_of`): per probe kind and pacing, the seconds a point costs per
probe (its probes and what precedes it in the block); per mode, the seconds a block spends
outside its points (programming the datapath, a fresh node namespace,
teardown) as a straight line in the service count; and the run's start-up.
A plan with another number of endpoints per service than the measured sweep
scales the per-service part by the lines the mode's loader is given per
service (:func:`lines_per_service`, from the datapath's own pure renderer):
programming time follows the size of the ruleset, not the service count.
After every complete single-kernel sweep labkit keeps its rates in the cache
(``<cache>/rates/<kernel>.json``, :func:`save_rates`), so the estimate comes
from this machine's last sweep in that kernel; without one it comes from the
reference run committed for that kernel (``data/reference``), and says so.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Collection

import numpy as np
import pandas as pd

from labkit import datapaths
from labkit.core import modes
from labkit.core.catalog import ServiceCatalog
from labkit.core.files import atomic_write_bytes
from labkit.host import debcache
from labkit.rundir import schema
from labkit.rundir.store import read_table
from labkit.runs.params import SweepParams
from labkit.runs.sweep import Sweep, pacings
from labkit.runs.timing import block_gaps as block_gaps  # tests and callers take it from here
from labkit.runs.timing import point_seconds

ROOT = Path(__file__).resolve().parents[2]
#: where each kernel's rates come from when this machine has measured none
REFERENCE = {"host": ROOT / "data" / "reference" / "default-6.18",
             "uml": ROOT / "data" / "reference" / "default-6.18"}


@dataclass(frozen=True)
class Rates:
    """Seconds, measured on one sweep (``source``)."""
    source: str
    per_probe: dict[str, float]       # "kind@pacing" -> seconds per probe sent
    block: dict[str, list[float]]     # mode -> [seconds, seconds per service] outside the points
    start_s: float                    # start of the run to its first point
    endpoints: int = 0                # endpoints per service of that sweep (0: not recorded)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "per_probe": self.per_probe,
                "block": self.block, "start_s": self.start_s, "endpoints": self.endpoints}


def _key(kind: str, pacing: float) -> str:
    return f"{kind}@{float(pacing):g}"


def rates_of(points: pd.DataFrame, started: float, source: str, kernel: str | None = None,
             resumed: Collection[float] = ()) -> Rates:
    """The rates of one finished sweep's points table (pure); with ``kernel``,
    of its points in that kernel only (a host+uml run: what precedes each
    point and block is still taken from the whole run).  ``resumed``: the
    times the run was resumed (its meta's); a block a resume precedes has no
    time outside its points (the gap is the interruption's)."""
    p = points.dropna(subset=["started", "finished"]).sort_values("started")
    p = p.assign(dur=p["finished"] - p["started"], key=[_key(k, v) for k, v in zip(p["probe"], p["pacing"])])
    # a point's cost per probe sent; a kind only ever first in its blocks has its probes' time only
    cost = point_seconds(p, first=math.nan) / p["sent"].clip(lower=1)
    blocks = block_gaps(p, resumed)
    if kernel is not None and "kernel" in p.columns:
        p = p[p["kernel"] == kernel]
        cost = cost[p.index]
        blocks = blocks[blocks.index.isin(p["block"])]
    per_probe = {k: float(np.nanmedian(cost[g.index])) if cost[g.index].notna().any()
                 else float(np.median(g["dur"] / g["sent"].clip(lower=1))) for k, g in p.groupby("key")}
    block: dict[str, list[float]] = {}
    for mode, g in blocks.dropna(subset=["outside"]).groupby("mode"):
        x, y = g["services"].to_numpy(float), g["outside"].to_numpy(float)
        if len(np.unique(x)) >= 2:
            b, a = np.polyfit(x, y, 1)
            block[str(mode)] = [float(max(a, 0.0)), float(max(b, 0.0))]
        else:
            block[str(mode)] = [float(np.median(y)), 0.0]
    start = float(blocks["first"].iloc[0] - started) if len(blocks) and math.isfinite(started) \
        and kernel in (None, "host") else 0.0
    eps = p["endpoints"].dropna().unique() if "endpoints" in p.columns else []
    return Rates(source, per_probe, block, max(start, 0.0), int(eps[0]) if len(eps) == 1 else 0)


@lru_cache(maxsize=None)
def lines_per_service(mode: str, endpoints: int) -> float:
    """Lines (rules, map entries, ipvsadm and ipset lines) the mode's loader
    is given per service at ``endpoints`` endpoints each: the difference of
    its rendered load for 20 and for 10 services, over 10 (pure)."""
    render = datapaths.get(mode).render
    return (len(render(ServiceCatalog(20, endpoints)).splitlines())
            - len(render(ServiceCatalog(10, endpoints)).splitlines())) / 10


def endpoint_scale(mode: str, want: int, had: int) -> float:
    """The factor on a mode's per-service programming time measured at ``had``
    endpoints per service, for a plan with ``want`` (1 if either is unknown)."""
    if not had or not want or want == had:
        return 1.0
    return lines_per_service(mode, want) / lines_per_service(mode, had)


def _kernel_of_run(meta: dict) -> str:
    guests = [g for g in [meta.get("guest"), *(meta.get("guests") or [])] if isinstance(g, dict)]
    kinds = {str(g.get("backend")) for g in guests}
    return next(iter(kinds)) if len(kinds) == 1 else ("host" if not kinds else "")


#: where rates are kept instead of ``<cache>/rates`` (the test suite points it at its
#: own directory: its small sweeps must not become the estimate of the user's next run)
RATES_DIR_ENV = "LABKIT_RATES_DIR"


def rates_file(kernel: str) -> Path:
    base = os.environ.get(RATES_DIR_ENV)
    return (Path(base) if base else debcache.cache_base() / "rates") / f"{kernel}.json"


#: a complete sweep of fewer points than this (a smoke test's) keeps no rates
MIN_POINTS = 100


def save_rates(run_dir: str, meta: dict) -> list[Path]:
    """Keep a complete sweep's rates for the next estimate, per kernel it ran
    in (a host+uml run: both); a smoke run of fewer than :data:`MIN_POINTS`
    points keeps none.  The written files."""
    params = meta.get("params") or {}
    kernels = ["host", "uml"] if params.get("kernel") == "host+uml" else [_kernel_of_run(meta)]
    if not meta.get("complete") or not all(k in ("host", "uml", "vm") for k in kernels):
        return []
    pts = read_table(os.path.join(run_dir, schema.POINTS))
    if len(pts) < MIN_POINTS:
        return []
    if len(kernels) > 1:
        pts = _with_kernel(pts, meta)
    out = []
    for kernel in kernels:
        r = rates_of(pts, float(meta.get("started") or math.nan), os.path.abspath(run_dir),
                     kernel if len(kernels) > 1 else None, _resumed(meta))
        f = rates_file(kernel)
        f.parent.mkdir(parents=True, exist_ok=True)
        body = r.to_dict() | {"host": socket.gethostname(), "saved": time.time()}
        atomic_write_bytes(str(f), json.dumps(body, indent=1).encode())
        out.append(f)
    return out


def _resumed(meta: dict) -> list[float]:
    return [float(t) for t in meta.get("resumed") or [] if isinstance(t, (int, float))]


def _with_kernel(pts: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """A host+uml run's points with each block's kernel (host, uml), from the
    run's plan (a re-measurement: its block's)."""
    where = Sweep(SweepParams.from_dict(dict(meta.get("params") or {}))).kernel_of(meta)
    return pts.assign(kernel=pts["block"].map(where))


def load_rates(kernel: str) -> tuple[Rates | None, str]:
    """This machine's last rates in ``kernel``, else the reference run's; and
    where they come from, in words."""
    f = rates_file(kernel)
    try:
        d = json.loads(f.read_text())
        if d.get("host") == socket.gethostname():
            return Rates(d["source"], d["per_probe"], d["block"], d["start_s"], int(d.get("endpoints") or 0)), \
                f"this machine's last {kernel} sweep ({d['source']})"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    ref = REFERENCE.get(kernel)
    if ref is None or not (ref / schema.POINTS).is_file():
        return None, f"no measured rates for {kernel}"
    meta = json.loads((ref / schema.META).read_text())
    pts = read_table(str(ref / schema.POINTS))
    mixed = (meta.get("params") or {}).get("kernel") == "host+uml"
    r = rates_of(_with_kernel(pts, meta) if mixed else pts, float(meta.get("started") or math.nan), str(ref),
                 kernel if mixed else None, _resumed(meta))
    return r, (f"the reference run {ref.relative_to(ROOT)} (another machine or day: run one sweep here "
               "for this machine's rates)")


def kernels_of(p: SweepParams, host_lacks: Collection[str] = ()) -> dict[str, list[str]]:
    """Each mode -> the kernels a sweep of ``p`` measures it in, given the modes
    this host cannot run (pure)."""
    if p.kernel == "host+uml" and p.kernels_by_mode:
        return {m: list(ks) for m, ks in p.kernels_by_mode.items()}
    if p.kernel == "host+uml":
        return {m: (["host", "uml"] if m in modes.CALIBRATORS else
                    ["uml"] if m in host_lacks else ["host"]) for m in p.modes}
    kernel = p.kernel if p.kernel in ("uml", "vm") else \
        "uml" if p.kernel == "auto" and any(m in host_lacks for m in p.modes) else "host"
    return {m: [kernel] for m in p.modes}


@dataclass(frozen=True)
class Estimate:
    points: int
    blocks: int
    probes: int
    seconds: float
    sources: dict[str, str]
    assumed: list[str]
    #: the settle rounds' budget (``settle_minutes``, minutes from the start; 0: none) and most rounds
    settle_minutes: float = 0.0
    settle_rounds: int = 0
    #: the late rounds (beyond ``rounds``, with ``settle_minutes``): what they are, and their seconds
    late: str = ""
    late_seconds: float = 0.0

    def text(self) -> str:
        m, s = divmod(round(self.seconds), 60)
        lines = [f"{self.points:,} points in {self.blocks:,} blocks, {self.probes:,} probes; "
                 f"estimated {m} min {s:02d} s"]
        if self.settle_minutes and self.late:
            lines.append(f"  of which {self.late} ({self.late_seconds / 60:.1f} min) only while each round is "
                         f"expected to end within {self.settle_minutes:g} min of the start (late rounds)")
        if self.settle_minutes:
            lines.append(f"  then up to {self.settle_rounds} settle round(s) for the claims left open, while "
                         f"each is expected to end within {self.settle_minutes:g} min of the start")
        lines += [f"  {k} rates from {v}" for k, v in self.sources.items()]
        lines += [f"  assumed: {a}" for a in self.assumed]
        return "\n".join(lines)


def estimate(p: SweepParams, rates: dict[str, Rates | None], sources: dict[str, str] | None = None,
             host_lacks: Collection[str] = ()) -> Estimate:
    """Points, probes and seconds of a sweep of ``p`` with ``rates`` per kernel (pure)."""
    where = kernels_of(p, host_lacks)
    points = probes = blocks = 0
    seconds = late_s = 0.0
    assumed: list[str] = []
    used = sorted({k for ks in where.values() for k in ks})
    for kernel in used:
        r = rates.get(kernel)
        seconds += r.start_s if r else 0.0
    for mode, kernels in where.items():
        for kernel in kernels:
            r = rates.get(kernel)
            here = kernel if p.kernel == "host+uml" else ""
            counts = p.services_in(here)
            end_kinds = p.end_kinds_for(mode, here)   # end_rounds: more rounds at the two ends, of these kinds
            for n in counts:
                end = bool(end_kinds) and n in (counts[0], counts[-1])
                rounds = p.end_rounds_of(mode) if end else p.rounds_of(mode)
                blocks += rounds
                a, b = (r.block.get(mode) if r else None) or _other_modes(r, mode, kernel, assumed)
                if r and not r.endpoints:
                    _assume(assumed, f"{kernel} rates: their endpoints per service are not recorded, "
                                     "so programming is not scaled to the plan's", None)
                per_block = a + b * n * endpoint_scale(mode, p.endpoints, r.endpoints if r else 0)
                seconds += rounds * per_block
                late_s += max(rounds - p.rounds, 0) * per_block
                for kind in p.kinds_for(mode, here):
                    kind_rounds = rounds if kind in end_kinds else p.rounds_of(mode)
                    for pace in pacings(p, kind):
                        key = _key(kind, pace)
                        per = (r.per_probe.get(key) if r else None) or _assume(
                            assumed, f"{key} in {kernel}: no probe rate, "
                            f"{'1/pacing' if pace else '1 ms'} a probe", 1 / pace if pace else 1e-3)
                        k = len(p.targets) * kind_rounds
                        points += k
                        probes += k * (p.probes + p.warmup)
                        seconds += k * p.probes * per
                        late_s += len(p.targets) * max(kind_rounds - p.rounds, 0) * p.probes * per
    more = [m for m in p.modes if p.end_rounds_of(m) > p.rounds]
    late = "" if not (p.settle_minutes and more) else (
        f"round{'s' if p.max_rounds > p.rounds + 1 else ''} {p.rounds + 1}"
        f"{f'-{p.max_rounds}' if p.max_rounds > p.rounds + 1 else ''} of {', '.join(more)}")
    return Estimate(points, blocks, probes, seconds, sources or {}, sorted(set(assumed)),
                    p.settle_minutes, p.settle_rounds, late, late_s if late else 0.0)


def _other_modes(r: Rates | None, mode: str, kernel: str, assumed: list[str]) -> list[float]:
    """A block rate for a mode the rates' sweep did not measure: the median of
    the modes it did, else 2 s + 0.5 ms per service; said in ``assumed``."""
    if r and r.block:
        a, b = np.median(np.array(list(r.block.values())), axis=0)
        return _assume(assumed, f"{mode} in {kernel}: no block rate, the median of "
                                f"{', '.join(sorted(r.block))}'s", [float(a), float(b)])
    return _assume(assumed, f"{mode} in {kernel}: no block rate, 2 s + 0.5 ms/service", [2.0, 5e-4])


def _assume(assumed: list[str], what: str, value: Any) -> Any:
    assumed.append(what)
    return value


def estimate_for(p: SweepParams) -> Estimate:
    """:func:`estimate` with the rates :func:`load_rates` finds and the modes
    this host lacks (its tools and kernel features, as the runner asks)."""
    lacks = [m for m in p.modes if datapaths.get(m).unavailable(None)]
    kernels = sorted({k for ks in kernels_of(p, lacks).values() for k in ks})
    found = {k: load_rates(k) for k in kernels}
    return estimate(p, {k: v[0] for k, v in found.items()}, {k: v[1] for k, v in found.items()}, lacks)

"""Benchmarks with recorded figures (README): programming time and probe
send capacity.

``bench program`` runs through the experiment runner (one block per mode and
repetition, a fresh node each, ``bench.parquet`` when ``--out`` is given, so
it resumes like every run); :func:`summarize_program` turns its rows into one
line per mode with medians and spreads.  ``bench send`` is one short
measurement of the probe socket and needs no runner.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import pandas as pd

from labkit.core.catalog import ServiceCatalog
from labkit.core.validate import names, number, whole
from labkit.datapaths import MODES
from labkit.kernel import netns
from labkit.kernel.limits import mem_available
from labkit.lab.lab import Lab
from labkit.probes.syn import SynProber
from labkit.rundir import schema
from labkit.runs.runner import Block, BlockContext, Experiment, plan


@dataclass(frozen=True)
class BenchParams:
    modes: list[str]
    services: int
    endpoints: int = 10
    repeat: int = 3
    seed: int = 1


class BenchProgram(Experiment):
    """Seconds (and memory) to program ``services`` x ``endpoints`` from
    scratch, ``repeat`` times per mode."""
    kind = "bench"

    def __init__(self, modes: Any, services: Any, endpoints: Any = 10, repeat: Any = 3,
                 seed: Any = 1) -> None:
        self.p = BenchParams(names(modes, "modes", tuple(MODES)), whole(services, "services", 0, 1_000_000),
                             whole(endpoints, "endpoints", 1, 1000), whole(repeat, "repeat", 1, 100),
                             whole(seed, "seed", 0, 2**32 - 1))

    def params_dict(self) -> dict[str, Any]:
        return asdict(self.p)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "BenchProgram":
        return cls(**dict(meta["params"]))

    def blocks(self) -> list[Block]:
        return plan(self.p.modes, [self.p.services], self.p.repeat, self.p.seed)

    def largest_catalog(self) -> ServiceCatalog:
        return ServiceCatalog(self.p.services, self.p.endpoints)

    def lab_options(self) -> dict[str, Any]:
        return {**super().lab_options(), "server": False}

    def run_block(self, ctx: BlockContext) -> None:
        cat = self.largest_catalog()
        dp = ctx.mode(ctx.lab)
        before = mem_available() or 0
        t0 = time.time()
        with netns.peak_memory() as pm:
            r = dp.setup(cat)
        held = (before - (mem_available() or 0)) / 2**20
        dp.teardown()
        ctx.tables.add(schema.BENCH, [{
            **ctx.ident(), "endpoints": cat.endpoints, "render_s": r.render_s, "load_s": r.load_s,
            "program_s": r.program_s,
            # the largest resident set of the mode's loader commands
            # (iptables-restore, nft, ipvsadm, bpftool)
            "loader_peak_mb": pm.mb,
            # MemAvailable drop while the catalog is loaded: the kernel's rules and
            # maps (machine-wide, so noisy on a shared host)
            "held_mb": held, "started": t0}])
        ctx.bar.update(1)


def summarize_program(df: pd.DataFrame) -> list[dict]:
    """One row per mode: median, min and max seconds, median render time,
    largest loader peak and median held memory (pure)."""
    rows = []
    for mode, g in df.groupby("mode", sort=False):
        times = g["program_s"].tolist()
        rows.append({"bench": "program", "mode": mode, "services": int(g["services"].iloc[0]),
                     "endpoints": int(g["endpoints"].iloc[0]), "repeat": len(g),
                     "median_s": round(statistics.median(times), 3),
                     "min_s": round(min(times), 3), "max_s": round(max(times), 3),
                     "render_median_s": round(statistics.median(g["render_s"]), 3),
                     "loader_peak_mb": round(max(g["loader_peak_mb"])),
                     "held_mb": round(statistics.median(g["held_mb"]))})
    return rows


def bench_send(seconds: float = 2.0, repeat: int = 5) -> dict:
    """Prebuilt SYN frames per second from one reused socket (client ns)."""
    seconds = number(seconds, "seconds", 0.1, 600)
    repeat = whole(repeat, "repeat", 1, 100)
    netns.require_root()
    cat = ServiceCatalog(0, 1)
    with Lab(endpoint_cidr=cat.endpoint_cidr) as lab:
        with SynProber(lab, tap_backend=False) as pr:
            frames = [p.frame for p in pr.craft_for(cat, "none", 256)]
            rates = [pr.send_rate(frames, seconds / repeat) for _ in range(repeat)]
    return {"bench": "send", "frames": len(frames), "repeat": repeat,
            "median_pps": round(statistics.median(rates)), "min_pps": round(min(rates)),
            "max_pps": round(max(rates))}

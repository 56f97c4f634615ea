"""Benchmarks with recorded figures (README): programming time and probe
send capacity.  Each runs in its own lab and reports medians and spreads."""
from __future__ import annotations

import statistics

from . import datapaths
from .catalog import ServiceCatalog
from .lab import Lab
from .probe import SynProber


def bench_program(modes: list[str], services: int, endpoints: int, repeat: int = 3) -> list[dict]:
    """Seconds to program ``services`` x ``endpoints`` from scratch, per mode."""
    cat = ServiceCatalog(services, endpoints)
    rows = []
    with Lab(endpoint_cidr=cat.endpoint_cidr, server=False) as lab:
        for mode in modes:
            cls = datapaths.get(mode)
            times, renders = [], []
            for _ in range(repeat):
                lab.reset_node()
                dp = cls(lab)
                r = dp.setup(cat)
                dp.teardown()
                times.append(r.program_s)
                renders.append(r.render_s)
            rows.append({"bench": "program", "mode": mode, "services": services,
                         "endpoints": endpoints, "repeat": repeat,
                         "median_s": round(statistics.median(times), 3),
                         "min_s": round(min(times), 3), "max_s": round(max(times), 3),
                         "render_median_s": round(statistics.median(renders), 3)})
    return rows


def bench_send(seconds: float = 2.0, repeat: int = 5) -> dict:
    """Prebuilt SYN frames per second from one reused socket (client ns)."""
    cat = ServiceCatalog(0, 1)
    with Lab(endpoint_cidr=cat.endpoint_cidr) as lab:
        with SynProber(lab, tap_backend=False) as pr:
            frames = [p.frame for p in pr.craft_for(cat, "none", 256)]
            rates = [pr.send_rate(frames, seconds / repeat) for _ in range(repeat)]
    return {"bench": "send", "frames": len(frames), "repeat": repeat,
            "median_pps": round(statistics.median(rates)), "min_pps": round(min(rates)),
            "max_pps": round(max(rates))}

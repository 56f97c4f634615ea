"""Benchmarks with recorded figures (README): programming time and probe
send capacity.  Each runs in its own lab and reports medians and spreads."""
from __future__ import annotations

import statistics

from . import datapaths, netns
from .catalog import ServiceCatalog
from .lab import Lab
from .limits import mem_available
from .probe import SynProber


def bench_program(modes: list[str], services: int, endpoints: int, repeat: int = 3) -> list[dict]:
    """Seconds to program ``services`` x ``endpoints`` from scratch, per mode."""
    cat = ServiceCatalog(services, endpoints)
    classes = datapaths.preflight(modes, services, endpoints)
    rows = []
    with Lab(endpoint_cidr=cat.endpoint_cidr, server=False) as lab:
        for mode in modes:
            cls = classes[mode]
            times, renders, peaks, held = [], [], [], []
            for _ in range(repeat):
                lab.reset_node()
                dp = cls(lab)
                before = mem_available() or 0
                with netns.peak_memory() as pm:
                    r = dp.setup(cat)
                held.append((before - (mem_available() or 0)) / 2**20)
                dp.teardown()
                times.append(r.program_s)
                renders.append(r.render_s)
                peaks.append(pm.mb)
            rows.append({"bench": "program", "mode": mode, "services": services,
                         "endpoints": endpoints, "repeat": repeat,
                         "median_s": round(statistics.median(times), 3),
                         "min_s": round(min(times), 3), "max_s": round(max(times), 3),
                         "render_median_s": round(statistics.median(renders), 3),
                         # the largest resident set of the mode's loader commands
                         # (iptables-restore, nft, ipvsadm, bpftool)
                         "loader_peak_mb": round(max(peaks)),
                         # MemAvailable drop while the catalog is loaded: the kernel's
                         # rules and maps (machine-wide, so noisy on a shared host)
                         "held_mb": round(statistics.median(held))})
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

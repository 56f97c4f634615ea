"""Benchmarks with recorded figures (README): programming time, probe
send capacity, and where the time of one nftables change goes.

``bench program`` runs through the experiment runner (one block per mode and
repetition, a fresh node each, ``bench.parquet`` when ``--out`` is given, so
it resumes like every run); :func:`summarize_program` turns its rows into one
line per mode with medians and spreads.  ``bench send`` is one short
measurement of the probe socket and needs no runner; so is ``bench
nft-change``, a profile of one nftables change at a given size.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import pandas as pd

from labkit.core.catalog import ServiceCatalog
from labkit.core.modes import NAMES as MODE_NAMES
from labkit.core.validate import names, number, whole
from labkit.datapaths import nftables
from labkit.host import netns, nfnetlink
from labkit.host.limits import mem_available
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
        self.p = BenchParams(names(modes, "modes", MODE_NAMES), whole(services, "services", 0, 1_000_000),
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

    def lab_options(self, largest: ServiceCatalog) -> dict[str, Any]:
        return {**super().lab_options(largest), "server": False}

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


def _strace_split(summary: str) -> dict[str, float]:
    """Seconds in, and calls of, recvmsg (reading the table back) and sendmsg
    (the batch and the kernel's commit) from ``strace -c -w`` output (pure).
    Seconds keep strace's microseconds: a small table's sendmsg takes ~0.1 ms."""
    out = {"recvmsg": 0.0, "sendmsg": 0.0, "recvmsg_calls": 0.0, "sendmsg_calls": 0.0}
    for line in summary.splitlines():
        f = line.split()
        if len(f) >= 5 and f[-1] in ("recvmsg", "sendmsg"):
            out[f[-1]] = float(f[1])
            out[f"{f[-1]}_calls"] = float(f[3])
    return out


def bench_nft_change(services: int = 10_000, endpoints: int = 10, repeat: int = 3) -> list[dict]:
    """Where the time of one nftables change goes, at ``services`` loaded:
    add one service, remove it, replace one service's endpoints, and, for
    the kernel's share alone, add an empty chain and a chain with one jump
    rule; each ``repeat`` times, through ``nft -f`` under ``strace -c``
    (seconds reading the ruleset back, ``recvmsg``, against sending the batch
    and the kernel's commit, ``sendmsg``) and as labkit's one netlink batch.
    One row per operation and loader, medians (docs/nftables.md has a run)."""
    services = whole(services, "services", 1, 1_000_000)
    endpoints = whole(endpoints, "endpoints", 1, 1000)
    repeat = whole(repeat, "repeat", 1, 100)
    netns.require_root()
    strace = netns.require_tool("strace", "strace")
    cat = ServiceCatalog(services, endpoints)
    with Lab(endpoint_cidr=ServiceCatalog(services + 1, endpoints).endpoint_cidr, server=False) as lab:
        dp = nftables.Nftables(lab)
        lab.defer("nftables teardown", dp.teardown)
        dp.setup(cat)
        ops = {"add": (lambda: nftables.render_add_service(dp._resized(+1), services),
                       lambda: nftables.messages_add_service(dp._resized(+1), services)),
               "remove": (lambda: nftables.render_remove_service(dp._resized(+1), services),
                          lambda: nftables.messages_remove_service(dp._resized(+1), services)),
               "endpoints": (lambda: nftables.render_change_endpoints(cat, dp._rolled([services - 1])),
                             lambda: nftables.messages_change_endpoints(cat, dp._rolled([services - 1])))}
        # the kernel's share alone: an empty chain (no jump: nothing to validate), and the
        # same chain with one rule that jumps (the commit validates the whole table)
        probe = "labkit-bench-probe"
        jump = [nfnetlink.new_chain(nftables.TABLE, probe),
                nfnetlink.new_rule(nftables.TABLE, probe, [nfnetlink.verdict(nfnetlink.NFT_JUMP,
                                                                              nftables.MASQ_CHAIN)])]
        ops["empty chain"] = (lambda: f"add chain ip {nftables.TABLE} {probe}\n", lambda: jump[:1])
        ops["chain with a jump"] = (
            lambda: f"add chain ip {nftables.TABLE} {probe} {{ jump {nftables.MASQ_CHAIN}; }}\n",
            lambda: jump)

        def drop() -> list[nfnetlink.Message]:
            return [nfnetlink.flush_chain(nftables.TABLE, probe), nfnetlink.delete_chain(nftables.TABLE, probe)]

        back = {"endpoints": lambda: nftables.messages_change_endpoints(dp._rolled([services - 1]), cat),
                "empty chain": drop, "chain with a jump": drop}
        rows = []
        for loader in ("nft", "netlink"):
            times: dict[str, list[dict]] = {op: [] for op in ops}
            for _ in range(repeat):
                for op, (text, msgs) in ops.items():
                    t0 = time.perf_counter()
                    if loader == "nft":
                        cp = lab.run(lab.node, [strace, "-c", "-w", "-e", "trace=sendmsg,recvmsg",
                                                "nft", "-f", "-"], input=text(), timeout=3600)
                        split = _strace_split(cp.stderr)
                    else:
                        nfnetlink.transact(lab.node, msgs(), timeout=3600)
                        split = {}
                    times[op].append({"seconds": time.perf_counter() - t0, **split})
                    if op in back:   # the original endpoints back, untimed
                        nfnetlink.transact(lab.node, back[op](), timeout=3600)
            for op, ts in times.items():
                med = {k: round(statistics.median(t[k] for t in ts), 6) for k in ts[0]}
                rows.append({"bench": "nft-change", "services": services, "endpoints": endpoints,
                             "op": op, "loader": loader, "repeat": repeat,
                             "median_s": med.pop("seconds"),
                             "min_s": round(min(t["seconds"] for t in ts), 6),
                             "max_s": round(max(t["seconds"] for t in ts), 6),
                             **{(k if k.endswith("_calls") else f"{k}_s"): v for k, v in med.items()}})
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

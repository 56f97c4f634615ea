"""The sweep: modes x service counts x targets x rounds, measured and stored.

Order.  A *block* is one programming of one mode at one service count in one
round; its points are the targets, probed in a shuffled order.  Blocks run in
a randomized order within each round, so slow drift of a shared machine
spreads over all modes and counts instead of biasing one.

Isolation.  Every block gets a fresh node namespace, so no netfilter state
of an earlier mode (a legacy table's hooks, enabled conntrack) is measured
with a later one.

Durability.  After every point the tables are rewritten atomically, so a
sweep that stops keeps everything it measured and ``--resume`` continues it.
"""
from __future__ import annotations

import getpass
import os
import platform
import random
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from . import __version__, datapaths, netns, store
from .catalog import ServiceCatalog
from .errors import Unavailable, UsageError
from .params import SweepParams, check_out_dir

SPREAD_P_MIN = 1e-3  # below this the endpoint spread is called uneven


@dataclass(frozen=True)
class Block:
    block: int
    round: int
    mode: str
    services: int
    targets: tuple[str, ...]


def plan(p: SweepParams) -> list[Block]:
    """Blocks in execution order: rounds in sequence, (mode, count) shuffled
    within each round, targets shuffled within each block.  Pure and
    deterministic from the seed."""
    rng = random.Random(p.seed)
    out = []
    for r in range(p.rounds):
        cells = []
        for m, mode in enumerate(p.modes):
            for s, n in enumerate(p.services):
                bid = (r * len(p.modes) + m) * len(p.services) + s
                cells.append((bid, mode, n))
        rng.shuffle(cells)
        for bid, mode, n in cells:
            targets = list(p.targets)
            rng.shuffle(targets)
            out.append(Block(bid, r, mode, n, tuple(targets)))
    return out


def point_id(p: SweepParams, block: Block, target: str, kind: str = "syn") -> int:
    return (block.block * len(p.targets) + p.targets.index(target)) * len(p.probe_kinds) \
        + p.probe_kinds.index(kind)


# ---------------------------------------------------------------------------
# validity (pure)

def check_samples(df: pd.DataFrame, catalog: ServiceCatalog) -> pd.DataFrame:
    """Per probe: did the SYN reach an endpoint of the service it was sent to?

    Sets ``error`` to ``wrong-endpoint`` or ``unseen-at-backend`` where the
    backend tap disagrees, and ``ok`` to answered-and-correct.
    """
    df = df.copy()
    answered = df["rtt_us"].notna() & (df["error"] == "")
    port = str(catalog.ports[0])
    ep_ip = df["endpoint"].str.split(":").str[0]
    ep_port = df["endpoint"].str.split(":").str[1]
    expect_none = df["service"] < 0
    right = pd.Series(False, index=df.index)
    right[expect_none] = ep_ip[expect_none] == catalog.none_address
    vip = ~expect_none
    if vip.any():
        owner = ep_ip[vip].map(lambda a: catalog.service_of_endpoint(a) if a else None)
        right[vip] = [o is not None and o[0] == s for o, s in zip(owner, df.loc[vip, "service"])]
    right &= ep_port == port
    unseen = answered & (df["endpoint"] == "")
    wrong = answered & ~unseen & ~right
    df.loc[unseen, "error"] = "unseen-at-backend"
    df.loc[wrong, "error"] = "wrong-endpoint"
    df["ok"] = answered & right
    return df


def endpoint_spread_p(df: pd.DataFrame, catalog: ServiceCatalog) -> float | None:
    """Chi-square p-value that one service's endpoints were chosen evenly, or
    None when it does not apply: fewer than 5 probes per endpoint, or probes
    spread over many services (``random`` target), where a round-robin
    scheduler (IPVS ``rr``) starts every service at the same endpoint and so
    is deterministic per service, not uniform across them."""
    from scipy.stats import chisquare
    if catalog.endpoints < 2:
        return None
    vip = df[(df["service"] >= 0) & df["ok"]]
    if vip["service"].nunique() != 1:
        return None
    idx = vip["endpoint"].str.split(":").str[0].map(lambda a: catalog.service_of_endpoint(a)[1])
    if len(idx) < 5 * catalog.endpoints:
        return None
    counts = np.bincount(idx.to_numpy(dtype=int), minlength=catalog.endpoints)
    return float(chisquare(counts).pvalue)


def judge_point(df: pd.DataFrame, catalog: ServiceCatalog,
                ct_new: int | None = None, spread: bool = True) -> tuple[bool, str]:
    """(valid, reason) for one point's checked samples.

    ``ct_new``: new conntrack entries the node made during the point.  Where
    the datapath uses conntrack at all (> 0), every answered SYN must have made
    one: fewer means some probes hit an existing entry and skipped the lookup.
    ``spread``: judge the endpoint spread (False for probe kinds that send many
    probes over one connection, which stays on one endpoint by design).
    """
    reasons = []
    n = len(df)
    lost = int(df["rtt_us"].isna().sum())
    if lost:
        kinds = df.loc[df["rtt_us"].isna(), "error"].value_counts()
        reasons.append(f"{lost} of {n} probes unanswered ({', '.join(f'{k} {v}' for k, v in kinds.items())})")
    for err, text in (("wrong-source", "answered from the wrong address"),
                      ("bad-ack", "answered with a wrong ack"),
                      ("wrong-endpoint", "DNAT to an endpoint of another service"),
                      ("unseen-at-backend", "answered but never seen at the backend")):
        k = int((df["error"] == err).sum())
        if k:
            reasons.append(f"{k} probes {text}")
    answered = int(df["rtt_us"].notna().sum())
    if ct_new and ct_new < answered:
        reasons.append(f"{answered - ct_new} probes hit existing conntrack entries "
                       f"({ct_new} new entries for {answered} answered SYNs)")
    p = endpoint_spread_p(df, catalog) if spread else None
    if p is not None and p < SPREAD_P_MIN:
        reasons.append(f"uneven endpoint spread (chi-square p={p:.1e})")
    return (not reasons, "; ".join(reasons))


def summarize(rtt_us: np.ndarray) -> dict[str, float]:
    r = rtt_us[~np.isnan(rtt_us)]
    if not len(r):
        return {k: float("nan") for k in ("p50_us", "p90_us", "p99_us", "mean_us", "min_us")}
    q = np.percentile(r, [50, 90, 99])
    return {"p50_us": q[0], "p90_us": q[1], "p99_us": q[2], "mean_us": float(r.mean()),
            "min_us": float(r.min())}


# ---------------------------------------------------------------------------
# environment facts for meta.json

def _version(cmd: Sequence[str]) -> str:
    try:
        cp = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
        return (cp.stdout or cp.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not found"


def environment() -> dict:
    tools = {
        "iproute2": ["ip", "-V"], "iptables-legacy": ["iptables-legacy", "--version"],
        "iptables-nft": ["iptables-nft", "--version"], "nft": ["nft", "--version"],
        "clang": ["clang", "--version"], "bpftool": ["bpftool", "version"],
        "ipvsadm": ["ipvsadm", "--version"],
    }
    pkgs = {}
    for name in ("scapy", "pyroute2", "pandas", "pyarrow", "numpy", "scipy", "seaborn", "papermill"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = "not installed"
    # labkit.vm passes the host's revision: git over 9p under emulation is slow
    rev = os.environ.get("LABKIT_GIT_REVISION", "unknown")
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        if rev == "unknown":
            cp = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty", "--abbrev=12"],
                                capture_output=True, text=True, timeout=10)
            if cp.returncode == 0:
                rev = cp.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {
        "kernel": platform.release(),
        "host": {"hostname": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(),
                 "python": platform.python_version(), "user": getpass.getuser()},
        "labkit_version": __version__,
        "git_revision": rev,
        "tools": {k: _version(v) for k, v in tools.items()},
        "packages": pkgs,
    }


# ---------------------------------------------------------------------------
# the runner

SAMPLE_COLS = ["run_id", "point_id", "mode", "kernel", "services", "endpoints", "target", "probe",
               "round", "seq", "service", "dst", "rtt_us", "ok", "error", "endpoint"]


class Sweep:
    """A sweep writing into ``out``.  ``run()`` measures what is not there yet."""

    def __init__(self, params: SweepParams, out: str, *, resume: bool = False,
                 command: str | None = None, progress: bool = True,
                 on_point: Callable[[dict], None] | None = None) -> None:
        self.out = check_out_dir(out, resume)
        if resume:
            meta = store.read_json(os.path.join(self.out, store.META))
            stored = SweepParams.from_dict(meta["params"])
            if params is not None and params.validated().to_dict() != stored.to_dict():
                raise UsageError(f"--resume: parameters differ from the run in {self.out}; "
                                 "resume with the stored ones (omit the sweep options)")
            self.params = stored
            self.meta = meta
        else:
            self.params = params.validated()
            self.meta = None
        self.resume = resume
        self.command = command or "python -m labkit sweep " + " ".join(map(shlex.quote, sys.argv[1:]))
        self.progress = progress
        self.on_point = on_point
        self.samples: list[pd.DataFrame] = []
        self.points: list[dict] = []

    # -- files ---------------------------------------------------------------
    def _path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def _load_existing(self) -> set[int]:
        if not self.resume or not os.path.exists(self._path(store.POINTS)):
            return set()
        pts = store.read_table(self._path(store.POINTS))
        smp = store.read_table(self._path(store.SAMPLES))
        done = set(int(x) for x in pts["point_id"])
        # keep only samples of completed points (a kill between the two writes)
        smp = smp[smp["point_id"].isin(done)]
        self.points = pts.to_dict("records")
        self.samples = [smp] if len(smp) else []
        return done

    def _flush(self) -> None:
        smp = pd.concat(self.samples, ignore_index=True) if self.samples else \
            pd.DataFrame(columns=SAMPLE_COLS)
        store.write_table(self._path(store.SAMPLES), smp)
        store.write_table(self._path(store.POINTS), pd.DataFrame(self.points))

    def _write_meta(self, **extra) -> None:
        self.meta.update(extra)
        store.write_json(self._path(store.META), self.meta)

    # -- run -------------------------------------------------------------------
    def run(self) -> str:
        p = self.params
        netns.require_root()
        classes = datapaths.preflight(p.modes, max(p.services), p.endpoints, len(p.ports))
        os.makedirs(self.out, exist_ok=True)
        done = self._load_existing()
        if self.meta is None:
            from .topology import new_run_id
            self.meta = {"run_id": new_run_id(), "params": p.to_dict(), "command": self.command,
                         "started": time.time(), "finished": None, "complete": False,
                         **environment()}
        else:
            self.meta.setdefault("resumed", []).append(time.time())
        self._write_meta()
        # control-plane timings, one row per block and operation (labkit/control.py)
        from .control import ControlLog
        self.control = ControlLog(self.out, self.meta["run_id"], self.meta["kernel"], self.resume)
        blocks = plan(p)
        todo = {(b.block, t) for b in blocks for t in b.targets
                if any(point_id(p, b, t, k) not in done for k in p.probe_kinds)}
        from tqdm.auto import tqdm
        bar = tqdm(total=len(blocks) * len(p.targets) * len(p.probe_kinds), initial=len(done),
                   unit="point", desc="sweep", disable=not self.progress, dynamic_ncols=True)
        from .lab import Lab
        try:
            with Lab(endpoint_cidr=p.endpoint_cidr, ports=p.ports) as lab:
                checked: set[str] = set()
                for b in blocks:
                    targets = [t for t in b.targets if (b.block, t) in todo]
                    if not targets:
                        continue
                    bar.set_postfix_str(f"{b.mode} {b.services:,} svc r{b.round}")
                    self._block(lab, classes[b.mode], b, targets, checked, done, bar)
        finally:
            bar.close()
        self._write_meta(finished=time.time(), complete=True, n_points=len(self.points))
        return self.out

    def _block(self, lab, cls, b: Block, targets: list[str], checked: set[str], done: set[int],
               bar) -> None:
        from .probe import PROBERS
        p = self.params
        lab.reset_node()
        if cls.name not in checked:
            why = cls.unavailable(lab)
            if why:
                raise Unavailable(f"mode {cls.name} cannot run here: {why}")
            checked.add(cls.name)
            lab.reset_node()
        catalog = p.catalog(b.services, p)
        dp = cls(lab)
        prog = dp.setup(catalog)
        try:
            for kind in p.probe_kinds:
                seed = (p.seed * 1_000_003 + b.block) * 7 + p.probe_kinds.index(kind)
                with PROBERS[kind](lab, timeout=p.timeout, seed=seed) as prober:
                    for t in targets:
                        pid = point_id(p, b, t, kind)
                        if pid in done:
                            continue
                        if p.warmup:
                            prober.run(prober.craft_for(catalog, t, p.warmup))
                        probes = prober.craft_for(catalog, t, p.probes)
                        ct0 = netns.conntrack_entries(lab.node)
                        started = time.time()
                        outcomes = prober.run(probes)
                        finished = time.time()
                        ct1 = netns.conntrack_entries(lab.node)
                        # entries die 10 s after the client's RST: judge short points only
                        inserts = None if ct0 is None or ct1 is None or finished - started > 8 \
                            else ct1 - ct0
                        self._record(b, t, kind, pid, catalog, outcomes, prog, started, finished,
                                     ct_new=inserts)
                        bar.update(1)
            # control plane (labkit/control.py): add one service, remove it, timed
            self.control.record(b.block, b.round, catalog, dp, prog, lab)
        finally:
            dp.teardown()

    def _record(self, b: Block, target: str, kind: str, pid: int, catalog: ServiceCatalog, outcomes,
                prog, started: float, finished: float, ct_new: int | None = None) -> None:
        p = self.params
        kernel = self.meta["kernel"]
        n = len(outcomes)
        df = pd.DataFrame({
            "run_id": self.meta["run_id"], "point_id": pid, "mode": b.mode, "kernel": kernel,
            "services": b.services, "endpoints": p.endpoints, "target": target, "probe": kind,
            "round": b.round, "seq": np.arange(n),
            "service": [o.probe.service for o in outcomes],
            "dst": [o.probe.dst for o in outcomes],
            "rtt_us": np.array([o.rtt_ns / 1000.0 if o.rtt_ns is not None else np.nan
                                for o in outcomes]),
            "ok": False,
            "error": [o.error for o in outcomes],
            "endpoint": [o.endpoint for o in outcomes],
        })
        df = check_samples(df, catalog)
        from .probe import PROBERS
        valid, reason = judge_point(df, catalog, ct_new if kind == "syn" else None,
                                    spread=getattr(PROBERS[kind], "new_connection_per_probe", True))
        answered = int(df["rtt_us"].notna().sum())
        point = {
            "run_id": self.meta["run_id"], "point_id": pid, "block": b.block, "mode": b.mode,
            "kernel": kernel, "services": b.services, "endpoints": p.endpoints, "target": target,
            "probe": kind, "round": b.round, "render_s": prog.render_s, "load_s": prog.load_s,
            "program_s": prog.program_s, "sent": n, "answered": answered, "lost": n - answered,
            "valid": valid, "reason": reason, **summarize(df["rtt_us"].to_numpy()),
            "ct_new": -1 if ct_new is None else ct_new,
            "started": started, "finished": finished,
        }
        self.samples.append(df[SAMPLE_COLS])
        self.points.append(point)
        self._flush()
        if self.on_point:
            self.on_point(point)


def run_sweep(params: SweepParams | None, out: str, **kw) -> str:
    """Measure ``params`` into directory ``out``; returns ``out``."""
    return Sweep(params, out, **kw).run()

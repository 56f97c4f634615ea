"""The sweep: modes x service counts x targets x rounds, measured and stored.

Order.  A *block* is one programming of one mode at one service count in one
round; its points are the targets (times the probe kinds), probed in a
shuffled order.  Blocks run in a randomized order within each round
(:func:`labkit.runs.runner.plan`), so slow drift of a shared machine spreads
over all modes and counts instead of biasing one.

Isolation.  Every block gets a fresh node namespace, so no netfilter state
of an earlier mode (a legacy table's hooks, enabled conntrack) is measured
with a later one.

Durability.  After every block the tables are rewritten atomically; a block
is done when the runner records it, and ``--resume`` measures the blocks
that are not (see :mod:`labkit.runs.runner`).

After its probes every block also times the control plane (add one service,
remove it: :mod:`labkit.runs.control`) into ``control.parquet``.

Disturbed blocks.  Once the planned blocks (late rounds aside) are done, :meth:`Sweep.mark_disturbed`
flags each valid point whose p50 lies outside what its cell's other rounds
allow (cell: mode, kernel release, count, target, probe kind, pacing; the
rule of :mod:`labkit.core.disturbed`); the runner measures each such block
once more in its round and the re-measurement is judged the same way
(``disturbed`` and ``remeasure_of`` in ``points.parquet``).

Late rounds.  With ``settle_minutes``, the rounds beyond ``rounds`` (of
``mode_rounds`` and ``end_rounds``) run after that, each only while it is
expected to end within the budget (:meth:`Sweep.late_rounds`; the runner's
``late``), so a slow hour costs the cheap modes' extra rounds, not the
budget.

Settle rounds.  With ``settle_minutes``, the claims still open after that are
given more rounds at the counts they are read at, within the sweep's time
budget (:mod:`labkit.runs.settle`; the claims' analysis comes from the caller,
``settle_with``: this layer does not import the analysis).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.special import chdtrc

from labkit.core import modes as table
from labkit.core.catalog import ServiceCatalog
from labkit.core.disturbed import flag_cells
from labkit.core.errors import UsageError
from labkit.core.modes import CALIBRATORS
from labkit.host import netns
from labkit.probes import PROBERS
from labkit.probes.base import Paced
from labkit.rundir import schema
from labkit.runs.blocks import settle_blocks
from labkit.runs.control import measure_ops, program_row
from labkit.runs.params import SweepParams
from labkit.runs.runner import Block, BlockContext, Experiment, Runner, Tables, plan
from labkit.runs.settle import cells_of, round_seconds, segment_overheads

log = logging.getLogger(__name__)

#: below this the endpoint spread is called uneven.  Per point, so set for a run: a default run
#: judges about 2,000-2,700 points, and at 1e-3 a fair spread was called uneven 0-2 times a run
#: (the reference runs; once a root test's point in CI), each time a good point lost.  At 1e-6 that
#: is about once in 400 runs.  What it is there for still shows: half the endpoints never chosen
#: gives p ~ 1e-23 at 120 probes over 10, and one endpoint chosen 3x as often as the others is
#: flagged in about a third of a cell's points (1e-3: 72%), every round, on every count.
SPREAD_P_MIN = 1e-6
CT_JUDGE_MAX_S = 8.0  # conntrack entries die 10 s after the client's RST: judge shorter points only
#: the columns of a point that name its cell (measured once per round)
CELL_COLUMNS = ["mode", "kernel_release", "services", "target", "probe", "pacing"]


def point_id(p: SweepParams, block: Block, target: str, kind: str = "syn", pacing: float = 0.0) -> int:
    return ((block.block * len(p.targets) + p.targets.index(target)) * len(p.probe_kinds)
            + p.probe_kinds.index(kind)) * len(p.pacing) + p.pacing.index(pacing)


def pacings(p: SweepParams, kind: str) -> list[float]:
    """The pacings a probe kind is measured at: all of them, or only back to
    back for kinds that hand a batch to a tool (HTTP's ab)."""
    return list(p.pacing) if PROBERS[kind].pacing_supported else [v for v in p.pacing if v == 0][:1]


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
    if catalog.endpoints < 2:
        return None
    vip = df[(df["service"] >= 0) & df["ok"]]
    if vip["service"].nunique() != 1:
        return None
    def index(addr: str) -> int:
        owner = catalog.service_of_endpoint(addr)
        assert owner is not None, "ok probes reached an endpoint of their service"
        return owner[1]
    idx = vip["endpoint"].str.split(":").str[0].map(index)
    if len(idx) < 5 * catalog.endpoints:
        return None
    counts = np.bincount(idx.to_numpy(dtype=int), minlength=catalog.endpoints)
    return uniform_p(counts)


def uniform_p(counts: np.ndarray) -> float:
    """Pearson's chi-square test that ``counts`` are equally likely: the
    p-value of ``scipy.stats.chisquare(counts)``, from the chi-square
    survival function (``scipy.special.chdtrc``).  scipy.stats itself is
    not imported here: in user-mode Linux, where every sweep segment starts
    a fresh interpreter over hostfs, ``import labkit.cli`` took 16.0 s with
    it and 7.7 s without (``python -X importtime``, one boot each)."""
    counts = np.asarray(counts, dtype=float)
    expected = counts.sum() / len(counts)
    stat = float(((counts - expected) ** 2 / expected).sum())
    return float(chdtrc(len(counts) - 1, stat))


def judge_point(df: pd.DataFrame, catalog: ServiceCatalog,
                ct_new: int | None = None, spread: bool = True,
                path: Mapping[str, int] | None = None) -> tuple[bool, str]:
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
    if path is not None:
        if path.get("stack", 0) > 0:
            reasons.append(f"{path['stack']} service packets fell back to the kernel's stack")
        served = int((df["rtt_us"].notna() & (df["service"] >= 0)).sum())
        if served and path.get("redirected", 0) < served:
            reasons.append(f"{path.get('redirected', 0)} packets forwarded by the program for "
                           f"{served} answered service probes")
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
# the experiment

class Sweep(Experiment):
    """First-packet (and other probe kinds') latency per mode, count and target."""
    kind = "sweep"
    unit = "point"

    def __init__(self, params: SweepParams, on_point: Callable[[dict], None] | None = None,
                 settle_with: Callable[[str], list[dict[str, Any]]] | None = None) -> None:
        self.p = params
        self.on_point = on_point
        #: the run directory so far -> what its open claims rest on ({mode, kernel, kinds,
        #: rows}: :func:`labkit.analysis.settle.unsettled`); None: no settle rounds
        self.settle_with = settle_with

    def place(self, lacking: Mapping[str, str | None]) -> None:
        """A host+uml run: the kernels each mode is measured in (once; stored
        with the parameters, so a resumed run plans the same blocks)."""
        if self.p.kernel == "host+uml" and not self.p.kernels_by_mode:
            self.p = dataclasses.replace(self.p, kernels_by_mode=kernels_by_mode(self.p.modes, lacking))

    where_keys = frozenset({"kernel"})
    planned_keys = frozenset({"kernels_by_mode"})

    def params_dict(self) -> dict[str, Any]:
        return self.p.to_dict()

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "Sweep":
        return cls(SweepParams.from_dict(dict(meta["params"])))

    def blocks(self) -> list[Block]:
        p = self.p
        if not p.kernels_by_mode:
            return plan(p.modes, p.services, p.rounds, p.seed, p.targets, {m: p.rounds_of(m) for m in p.modes},
                        self._ends(p.modes, ""))
        # two kernels: per round, the host's blocks, then user-mode Linux's (one boot
        # per round); the same targets, the counts of each kernel (uml_services),
        # shuffled within each part; a round beyond ``rounds`` has the modes of
        # ``mode_rounds`` only, and the end blocks of ``end_rounds``
        out: list[Block] = []
        kernels = ("host", "uml")
        for r in range(p.max_rounds):
            for ki, kernel in enumerate(kernels):
                here = [m for m in p.modes if kernel in p.kernels_by_mode.get(m, [])]
                full = [m for m in here if p.rounds_of(m) > r]
                ends = {m: e for m, e in self._ends(here, kernel).items()
                        if p.rounds_of(m) <= r < p.end_rounds_of(m)}
                if not full and not ends:
                    continue
                for b in plan([m for m in here if m in full or m in ends], p.services_in(kernel), 1,
                              p.seed * 1009 + r * 2 + ki, p.targets, {m: 0 for m in ends},
                              {m: (1, e[1]) for m, e in ends.items()}):
                    m, s_ = p.modes.index(b.mode), p.services.index(b.services)
                    bid = ((r * len(kernels) + ki) * len(p.modes) + m) * len(p.services) + s_
                    out.append(Block(bid, r, b.mode, b.services, b.targets, kernel, kinds=b.kinds))
        return out

    def _ends(self, modes: list[str], kernel: str) -> dict[str, tuple[int, tuple[str, ...]]]:
        """The end rounds of ``modes`` in ``kernel``: mode -> (rounds, probe kinds),
        for the modes that have some there."""
        p = self.p
        kinds = {m: tuple(p.end_kinds_for(m, kernel)) for m in modes}
        return {m: (p.end_rounds_of(m), k) for m, k in kinds.items() if k}

    def largest_catalog(self) -> ServiceCatalog:
        return self.p.catalog(max(self.p.services))

    def late_rounds(self) -> tuple[int, float] | None:
        """The rounds beyond ``rounds`` (of ``mode_rounds`` and ``end_rounds``)
        are late rounds when the sweep has a time budget (``settle_minutes``):
        each runs only if it is expected to end within it."""
        p = self.p
        if p.settle_minutes <= 0 or p.max_rounds <= p.rounds:
            return None
        return p.rounds, p.settle_minutes * 60.0

    def settle_budget(self) -> tuple[float, int]:
        p = self.p
        if p.settle_minutes <= 0:
            return 0.0, 0
        if self.settle_with is None:
            log.warning("settle_minutes is set, but this sweep was started without the claims' analysis "
                        "(settle_with): no settle rounds")
            return 0.0, 0
        return p.settle_minutes * 60.0, p.settle_rounds

    def settle_cells(self, run_dir: str) -> list[dict[str, Any]]:
        if self.settle_with is None:
            return []
        p = self.p
        two = bool(p.kernels_by_mode)
        where = p.kernels_by_mode if two else {m: [""] for m in p.modes}
        return cells_of(self.settle_with(run_dir), p.kinds_for, where, two)

    def settle_blocks(self, settle: Mapping[str, Any]) -> list[Block]:
        found = [c for c in settle.get("cells") or [] if isinstance(c, dict)]
        rounds = int(settle.get("rounds") or 0)
        if not found or rounds <= 0:
            return []
        p, planned = self.p, self.blocks()
        base = 2 * (max(b.block for b in planned) + 1)   # after the planned ids and their re-measurements'
        ends, have = {}, {}
        for kernel in {str(c["kernel"]) for c in found}:
            have[kernel] = [n for n in p.services_in(kernel) if n > 0] or p.services_in(kernel)
            ends[kernel] = (min(have[kernel]), max(have[kernel]))
        cells = []
        for c in found:   # a cell's counts (the 1,000-5,000 claim's) those its kernel measures, its smallest first
            k, want = str(c["kernel"]), {int(x) for x in c.get("counts") or ()}
            at = tuple(n for n in have[k] if n in want and n != ends[k][0])
            if want and not at:
                continue
            cells.append((str(c["mode"]), k, tuple(c["kinds"]), (ends[k][0], *at) if want else ()))
        return settle_blocks(cells, ends, rounds, p.max_rounds, base, p.seed * 7919 + 17, p.targets)

    def settle_seconds(self, blocks: Sequence[Block], tables: Tables, meta: Mapping[str, Any]) -> float:
        pts = tables.frame(schema.POINTS)
        where = self.kernel_of(meta)
        guests = [g for g in meta.get("guests") or [] if isinstance(g, dict)]
        return round_seconds(blocks, pts, where, segment_overheads(pts, where, guests))

    def kernel_of(self, meta: Mapping[str, Any]) -> dict[int, str]:
        """Each block id of the run -> its kernel ("" in a one-kernel run): the
        plan's, a re-measurement's its block's, a settle round's its own."""
        where = {b.block: b.kernel for b in self.blocks()}
        where |= {int(e["block"]): where.get(int(e["of"]), "") for e in meta.get("remeasured") or []}
        where |= {b.block: b.kernel for b in self.settle_blocks(meta.get("settle") or {})}
        return where

    def units(self, block: Block) -> int:
        return len(block.targets) * sum(len(pacings(self.p, k))
                                        for k in self.p.block_kinds(block.mode, block.kernel, block.kinds))

    def mark_disturbed(self, tables: Tables, use: set[int], judge: set[int]) -> set[int]:
        """Flag (column ``disturbed``) the valid points of blocks ``judge`` whose
        p50 lies outside what the other rounds of their cell allow, among the
        valid points of blocks ``use``; return the judged blocks so flagged."""
        pts = disturbed_column(tables.frame(schema.POINTS))
        mine = pts.index[pts["block"].isin(judge)]
        pts.loc[mine, "disturbed"] = False
        peers = pts[pts["block"].isin(use) & pts["valid"].astype(bool)]
        if len(peers):
            flags = flag_cells(peers[CELL_COLUMNS].itertuples(index=False, name=None), peers["p50_us"])
            hit = peers.index[flags & peers["block"].isin(judge).to_numpy()]
            pts.loc[hit, "disturbed"] = True
        tables.replace(schema.POINTS, pts)
        return set(int(b) for b in pts.loc[pts["disturbed"] & pts["block"].isin(judge), "block"])

    def run_block(self, ctx: BlockContext) -> None:
        p, b = self.p, ctx.block
        catalog = p.catalog(b.services)
        dp = ctx.mode(ctx.lab, **{kw: getattr(p, name) for name, kw in table.get(b.mode).options})
        t0 = time.time()
        prog = dp.setup(catalog)
        try:
            for kind in p.block_kinds(b.mode, b.kernel, b.kinds):
                seed = (p.seed * 1_000_003 + b.block) * 7 + p.probe_kinds.index(kind)
                with PROBERS[kind](ctx.lab, timeout=p.timeout, seed=seed) as prober:
                    for t in b.targets:
                        if p.warmup:
                            prober.run(prober.craft_for(catalog, t, p.warmup))
                        for k, pace in enumerate(pacings(p, kind)):
                            probes = Paced(prober.craft_for(catalog, t, p.probes), pace, seed + k)
                            ct0 = netns.conntrack_entries(ctx.lab.node)
                            c0 = dp.path_counters()
                            started = time.time()
                            outcomes = prober.run(probes)
                            finished = time.time()
                            c1 = dp.path_counters()
                            ct1 = netns.conntrack_entries(ctx.lab.node)
                            inserts = None if ct0 is None or ct1 is None \
                                or finished - started > CT_JUDGE_MAX_S else ct1 - ct0
                            path = None if c0 is None or c1 is None else {k_: c1[k_] - c0[k_] for k_ in c1}
                            self._record(ctx, t, kind, catalog, outcomes, prog, started, finished,
                                         ct_new=inserts, variant=dp.variant, pacing=pace, path=path)
                            ctx.bar.update(1)
            if b.kinds:   # an end round's block: its probe kinds only (the control plane has its rounds)
                return
            # control plane: this block's programming, then add one service and remove it
            ident = {**ctx.ident(), "endpoints": catalog.endpoints}
            ctx.tables.add(schema.CONTROL, [{**program_row(catalog.services, prog, t0, dp.program_loader), **ident}])
            measure_ops(ctx.lab, dp, seed=b.block,
                        each=lambda row: ctx.tables.add(schema.CONTROL, [{**row, **ident}]))
        finally:
            dp.teardown()

    def _record(self, ctx: BlockContext, target: str, kind: str, catalog: ServiceCatalog,
                outcomes: list, prog: Any, started: float, finished: float,
                ct_new: int | None = None, variant: str = "", pacing: float = 0.0,
                path: dict[str, int] | None = None) -> None:
        p, b = self.p, ctx.block
        n = len(outcomes)
        pid = point_id(p, b, target, kind, pacing)
        df = pd.DataFrame({
            **ctx.ident(), "point_id": pid, "endpoints": p.endpoints, "target": target,
            "probe": kind, "pacing": pacing, "seq": np.arange(n),
            "service": [o.probe.service for o in outcomes],
            "dst": [o.probe.dst for o in outcomes],
            "rtt_us": np.array([o.rtt_ns / 1000.0 if o.rtt_ns is not None else np.nan
                                for o in outcomes]),
            "ok": False,
            "error": [o.error for o in outcomes],
            "endpoint": [o.endpoint for o in outcomes],
        })
        df = check_samples(df, catalog)
        valid, reason = judge_point(df, catalog, ct_new if kind == "syn" else None,
                                    spread=PROBERS[kind].new_connection_per_probe, path=path)
        answered = int(df["rtt_us"].notna().sum())
        point = {
            **ctx.ident(), "point_id": pid, "endpoints": p.endpoints, "target": target,
            "probe": kind, "pacing": pacing, "render_s": prog.render_s, "load_s": prog.load_s,
            "program_s": prog.program_s, "sent": n, "answered": answered, "lost": n - answered,
            "valid": valid, "reason": reason, **summarize(df["rtt_us"].to_numpy()),
            "ct_new": -1 if ct_new is None else ct_new, "variant": variant,
            "stack_pkts": -1 if path is None else path["stack"],
            "redirected_pkts": -1 if path is None else path["redirected"],
            "started": started, "finished": finished, "disturbed": False,
        }
        ctx.tables.add(schema.SAMPLES, df[schema.columns(schema.SAMPLES)])
        ctx.tables.add(schema.POINTS, [point])
        if self.on_point:
            self.on_point(point)


def disturbed_column(points: pd.DataFrame) -> pd.DataFrame:
    """``points`` (a copy) with ``disturbed`` and ``remeasure_of`` filled in
    where a run resumed from an older labkit's lacks them (False, -1)."""
    out = points.copy()
    for col, none in (("disturbed", False), ("remeasure_of", -1)):
        have = out[col] if col in out.columns else pd.Series(none, index=out.index)
        out[col] = have.astype(object).where(have.notna(), none).astype(type(none))
    return out


def summary_text(points: pd.DataFrame, stat: str = "p50_us") -> str:
    """What a sweep prints when it ends: per target, the median over rounds
    of each point's ``stat`` (valid back-to-back points of the first probe
    kind, else those at the run's slowest pacing; a disturbed
    block's re-measurement in its place) by mode and service count, and how
    many points were invalid."""
    if not len(points):
        return "no points measured"
    p = points
    if "remeasure_of" in p.columns:   # a disturbed block counts by its re-measurement
        p = p[~p["block"].isin(p["remeasure_of"])]
    how = ""
    if "pacing" in p.columns:   # back to back, else the slowest pacing the run has
        rate = 0.0 if (p["pacing"] == 0).any() else float(p["pacing"].min())
        p = p[p["pacing"] == rate]
        how = f" at {rate:,.0f}/s" if rate else ""
    p = p[p["probe"] == p["probe"].iloc[0]]
    lines = []
    order = list(table.NAMES)
    for target in [t for t in ("last", "random", "middle", "first", "none") if t in set(p["target"])]:
        v = p[(p["target"] == target) & p["valid"]]
        if not len(v):
            continue
        # one column per mode, and per kernel where the run measured in two (host+uml)
        two = "kernel_release" in v.columns and v["kernel_release"].nunique() > 1
        v = v.assign(column=[f"{m} [{str(r).split('-')[0]}]" for m, r in zip(v["mode"], v["kernel_release"])]
                     if two else v["mode"])
        t = v.pivot_table(index="services", columns="column", values=stat, aggfunc="median")
        t = t[sorted(t.columns, key=lambda m: (order.index(m.split(" ")[0]) if m.split(" ")[0] in order
                                               else len(order), m))]
        lines.append(f"{stat.replace('_us', '')} us, median over rounds, target {target}, "
                     f"{p['probe'].iloc[0]} probes{how}:")
        lines.append(t.to_string(float_format=lambda x: f"{x:.1f}"))
        lines.append("")
    bad = int((~points["valid"]).sum())
    lines.append(f"{len(points)} points, {bad} invalid" + (" (see reason in points.parquet)" if bad else ""))
    again = points.loc[points["remeasure_of"] >= 0, "block"].nunique() if "remeasure_of" in points.columns else 0
    if again:
        lines.append(f"{again} disturbed block(s) measured again (disturbed, remeasure_of in points.parquet)")
    return "\n".join(lines)


def kernels_by_mode(modes: list[str], lacking: Mapping[str, str | None]) -> dict[str, list[str]]:
    """For a run on the host and in user-mode Linux: the kernels each mode is
    measured in, from why the host cannot run it (``lacking``, None: it can)
    and the table of modes.  A calibrator (a mode whose code runs natively in
    both: ``core.modes.CALIBRATORS``) is measured in both, to relate them; any
    other mode on the host where it runs there, else in user-mode Linux."""
    out = {}
    for m in modes:
        on_host = not lacking[m]
        in_uml = not table.get(m).cannot_run_in("uml")
        if m in CALIBRATORS and on_host and in_uml:
            out[m] = ["host", "uml"]
        elif on_host or in_uml:
            out[m] = ["host" if on_host else "uml"]
        else:
            raise UsageError(f"mode {m} runs neither on this host nor in user-mode Linux")
    return out


def run_sweep(params: SweepParams | None, out: str, *, resume: bool = False,
              command: str | None = None, progress: bool = True,
              on_point: Callable[[dict], None] | None = None, only: set[int] | None = None,
              settle_with: Callable[[str], list[dict[str, Any]]] | None = None,
              end_by: float | None = None) -> str:
    """Measure ``params`` into directory ``out`` (or, with ``resume``, continue
    the run there with its stored parameters; ``params`` must then be None or
    equal to them); returns ``out``.  ``settle_with``: what the run's open
    claims rest on (:func:`labkit.analysis.settle.unsettled`), for the settle
    rounds of ``settle_minutes``; ``end_by``: the time (seconds since the
    epoch) the late and settle rounds must also be expected to end by."""
    runner = Runner(Sweep if params is None else Sweep(params), out, resume=resume, command=command,
                    progress=progress, only=only, end_by=end_by)
    assert isinstance(runner.exp, Sweep)
    runner.exp.on_point = on_point
    runner.exp.settle_with = settle_with
    result = runner.run()
    assert result is not None
    return result

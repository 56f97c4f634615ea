"""Control-plane cost: seconds to program N services, and to add and to
remove one service when N exist.

Operations, per mode (see ``Datapath.add_service`` / ``remove_service``):

``program``  render and load the whole catalog of N services into a fresh
             node namespace (``Datapath.setup``).
``add``      add service N (the catalog grows to N+1).  iptables modes:
             full re-render and ``iptables-restore`` of the whole table, as
             kube-proxy's iptables full sync does; nftables: one ``nft -f``
             transaction with the service's chains and its ``service-ips``
             element; IPVS: ipset, VIP and ``ipvsadm`` changes for that
             service; eBPF: map updates in place.
``remove``   remove that service again (back to N).

Each operation is checked: after ``add`` a SYN to the new VIP must be
answered by one of its endpoints, after ``remove`` it must go unanswered
(``verified``).  Times are wall-clock seconds of render (pure Python) plus
load (the kernel's loader or the bpf() calls), as kube-proxy would spend
them; they include the loader's own work, such as ``nft`` reading the table
back from the kernel.

During a sweep every block (one mode programmed at one count) adds three
rows to ``control.parquet`` after its probes; ``python -m labkit control``
measures programming alone, up to 100,000 services, without probes.
"""
from __future__ import annotations

import os
import random
import shlex
import sys
import time
from typing import Sequence

import pandas as pd

from . import datapaths, store
from .catalog import ServiceCatalog
from .errors import Unavailable, UsageError

CONTROL = "control.parquet"
CONTROL_META = "control.json"
OPS = ("program", "add", "remove")
COLUMNS = ["run_id", "block", "mode", "kernel", "services", "endpoints", "round", "op", "seconds",
           "render_s", "load_s", "services_before", "verified", "check", "update", "started"]
VERIFY_TIMEOUT = 0.3


def _row(op: str, services: int, before: int, prog, verified: bool | None, check: str,
         started: float) -> dict:
    return {"op": op, "services": services, "services_before": before,
            "seconds": prog.render_s + prog.load_s,
            "render_s": prog.render_s, "load_s": prog.load_s,
            "verified": verified, "check": check, "started": started}


def _answered(lab, catalog: ServiceCatalog, i: int, vip: str, seed: int) -> tuple[bool, str]:
    """Send one SYN to ``vip`` from the client: answered from the VIP by an
    endpoint of service ``i``?  (answered, what happened)."""
    from .probe import SynProber
    with SynProber(lab, timeout=VERIFY_TIMEOUT, seed=seed) as pr:
        o = pr.run([pr.craft(i, vip, catalog.ports[0])])[0]
    if o.rtt_ns is None:
        return False, o.error or "timeout"
    owner = catalog.service_of_endpoint(o.endpoint.split(":")[0]) if o.endpoint else None
    if owner is None or owner[0] != i:
        return True, f"answered via {o.endpoint or 'an unseen endpoint'}"
    return True, "ok"


def measure_ops(lab, dp, seed: int = 0, verify: bool = True, each=None) -> list[dict]:
    """Add one service to the loaded datapath ``dp`` of N services and remove
    it again; one row per operation.  ``services`` is N for both,
    ``services_before`` the count each operation found (N, then N+1).
    ``each(row)`` is called as soon as a row is measured."""
    rows = []
    n = dp.catalog.services
    t = time.time()
    prog = dp.add_service()
    verified, check = None, ""
    if verify:
        ok, what = _answered(lab, dp.catalog, n, dp.catalog.vip(n), seed)
        verified, check = ok and what == "ok", f"new VIP: {what}"
    rows.append(_row("add", n, n, prog, verified, check, t))
    if each:
        each(rows[-1])
    vip = dp.catalog.vip(n)
    grown = dp.catalog
    t = time.time()
    prog = dp.remove_service()
    if verify:
        ok, what = _answered(lab, grown, n, vip, seed + 1)
        verified, check = not ok, ("removed VIP: still answered" if ok else "removed VIP: no answer")
    rows.append(_row("remove", n, n + 1, prog, verified, check, t))
    if each:
        each(rows[-1])
    return rows


class ControlLog:
    """``control.parquet`` of a run directory, rewritten atomically per block."""

    def __init__(self, out: str, run_id: str, kernel: str, resume: bool = False) -> None:
        self.path = os.path.join(out, CONTROL)
        self.run_id, self.kernel = run_id, kernel
        self.rows: list[dict] = []
        if resume and os.path.exists(self.path):
            self.rows = store.read_table(self.path).to_dict("records")

    def record(self, block: int, round_: int, catalog: ServiceCatalog, dp, prog, lab,
               started: float | None = None, verify: bool = True) -> list[dict]:
        """The block's ``program`` row (from ``prog``), written at once, then
        its measured ``add`` and ``remove`` rows (written as each is done:
        at 100,000 iptables services one operation takes half an hour, and
        an interrupted run keeps what it measured)."""
        ident = dict(run_id=self.run_id, block=block, mode=dp.name, kernel=self.kernel,
                     endpoints=catalog.endpoints, round=round_, update=type(dp).update)
        rows = [{**_row("program", catalog.services, 0, prog, None, "", started or time.time()), **ident}]
        self.rows = [r for r in self.rows if r["block"] != block] + rows  # a resumed block replaces
        self.flush()
        for r in measure_ops(lab, dp, seed=block, verify=verify, each=self._append(ident)):
            rows.append(r)
        return rows

    def _append(self, ident: dict):
        def add(row: dict) -> None:
            row.update(ident)
            self.rows.append(row)
            self.flush()
        return add

    def flush(self) -> None:
        df = pd.DataFrame(self.rows, columns=COLUMNS)
        store.write_table(self.path, df.astype({"verified": "object"}))


# ---------------------------------------------------------------------------
# standalone: programming only, up to 100,000 services

def run_control(modes: Sequence[str], services: Sequence[int], out: str, *, endpoints: int = 10,
                rounds: int = 1, seed: int = 1, verify: bool = True, command: str | None = None,
                progress: bool = True) -> str:
    """For every round, mode and count (shuffled within a round), in a fresh
    node namespace: program from scratch, add one service, remove it.
    Writes ``out/control.parquet`` and ``out/control.json``; returns ``out``."""
    from . import netns
    from .lab import Lab
    from .sweep import environment
    from .topology import new_run_id
    netns.require_root()
    out = os.path.abspath(out)
    if os.path.exists(os.path.join(out, CONTROL)):
        raise UsageError(f"{out} already holds {CONTROL}; choose another --out")
    classes = datapaths.preflight(modes, max(services) + 1, endpoints)
    largest = ServiceCatalog(max(services) + 1, endpoints)
    os.makedirs(out, exist_ok=True)
    rng = random.Random(seed)
    cells = []
    for r in range(rounds):
        cs = [(r, m, n) for m in modes for n in services]
        rng.shuffle(cs)
        cells += cs
    meta = {"run_id": new_run_id(), "experiment": "control",
            "params": {"modes": list(modes), "services": list(services), "endpoints": endpoints,
                       "rounds": rounds, "seed": seed, "verify": verify},
            "command": command or "python -m labkit control " + " ".join(map(shlex.quote, sys.argv[1:])),
            "started": time.time(), "finished": None, "complete": False, **environment()}
    store.write_json(os.path.join(out, CONTROL_META), meta)
    log = ControlLog(out, meta["run_id"], meta["kernel"])
    from tqdm.auto import tqdm
    with Lab(endpoint_cidr=largest.endpoint_cidr, ports=largest.ports) as lab, \
            tqdm(total=len(cells), unit="block", desc="control", disable=not progress) as bar:
        checked: set[str] = set()
        for block, (r, mode, n) in enumerate(cells):
            bar.set_postfix_str(f"{mode} {n:,} svc r{r}")
            lab.reset_node()
            cls = classes[mode]
            if mode not in checked:
                why = cls.unavailable(lab)
                if why:
                    raise Unavailable(f"mode {mode} cannot run here: {why}")
                checked.add(mode)
                lab.reset_node()
            cat = ServiceCatalog(n, endpoints)
            dp = cls(lab)
            t = time.time()
            prog = dp.setup(cat)
            try:
                log.record(block, r, cat, dp, prog, lab, started=t, verify=verify)
            finally:
                dp.teardown()
            bar.update(1)
    meta.update(finished=time.time(), complete=True, n_rows=len(log.rows))
    store.write_json(os.path.join(out, CONTROL_META), meta)
    return out


# ---------------------------------------------------------------------------
# analysis (pure)

def load(run_dir: str) -> pd.DataFrame | None:
    p = os.path.join(run_dir, CONTROL)
    return store.read_table(p) if os.path.exists(p) else None


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Median, min and max seconds per mode, operation and service count,
    and how many operations failed their check."""
    g = df.groupby(["mode", "op", "services"], sort=True)
    out = g["seconds"].agg(["median", "min", "max", "count"]).reset_index()
    bad = g["verified"].apply(lambda v: int((v == False).sum()))  # noqa: E712 (None = unchecked)
    out["failed_checks"] = bad.to_numpy()
    out["op"] = pd.Categorical(out["op"], OPS, ordered=True)
    return out.sort_values(["op", "mode", "services"]).reset_index(drop=True)


def slopes(df: pd.DataFrame) -> pd.DataFrame:
    """Per mode and operation: a straight line through the seconds against
    the service count (least squares), in milliseconds per 1,000 services,
    and the chosen model of :func:`labkit.analysis.fit_models`."""
    from .analysis import fit_models, select_model
    rows = []
    for (mode, op), g in df.groupby(["mode", "op"], sort=True):
        x = g["services"].to_numpy(dtype=float)
        y = g["seconds"].to_numpy(dtype=float)
        if len(set(x)) < 2:
            continue
        fits = fit_models(x, y, ("constant", "linear"))
        chosen, _, _ = select_model(fits, "aic") if len(fits) > 1 else ("linear", "", {})
        p = fits["linear"].params()
        rows.append({"mode": mode, "op": op, "ms_per_1000_services": p["b"] * 1e6,
                     "intercept_s": p["a"], "chosen": chosen, "points": len(x),
                     "services_max": int(x.max())})
    return pd.DataFrame(rows)

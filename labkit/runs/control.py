"""Control-plane cost: seconds to program N services, and to add and to
remove one service when N exist.

Operations, per mode (see ``Datapath.add_service`` / ``remove_service``):

``program``  render and load the whole catalog of N services into a fresh
             node namespace (``Datapath.setup``).
``add``      add service N (the catalog grows to N+1).  iptables modes: a
             partial sync, as kube-proxy's iptables proxier writes one
             (``iptables-restore --noflush`` of KUBE-SERVICES and the new
             service's chains); ``labkit control`` then also times the same
             change as a full sync (re-render and restore the whole table,
             ``kind`` "full"), which kube-proxy still does now and then;
             nftables: one ``nft -f``
             transaction with the service's chains and its ``service-ips``
             element; IPVS: ipset, VIP and ``ipvsadm`` changes for that
             service; eBPF: map updates in place.
``remove``   remove that service again (back to N).
``endpoints`` (``labkit control``, modes with ``changes_endpoints``)
             replace the endpoints of service N-1 with new addresses, the
             most frequent change in a cluster (a rollout); iptables: a
             partial sync of that service's chains; nftables: one ``nft``
             transaction (new endpoint chains, the service chain refilled,
             the old ones deleted); eBPF: the backends' map entries
             rewritten.  Put back afterwards, untimed.
``burst``    the same for the last ``min(100, N)`` services in one sync (a
             rollout of many deployments at once).

Each operation is checked: after ``add`` a SYN to the new VIP must be
answered by one of its endpoints, after ``remove`` it must go unanswered,
after ``endpoints`` and ``burst`` a changed service must be answered by one
of its new endpoints (``verified``).  Times are wall-clock seconds of render (pure Python) plus
load (the kernel's loader or the bpf() calls), as kube-proxy would spend
them; they include the loader's own work, such as ``nft`` reading the table
back from the kernel.

During a sweep every block (one mode programmed at one count) adds three
rows to ``control.parquet`` after its probes; ``python -m labkit control``
(:class:`Control`) measures programming alone, up to 100,000 services,
without probes.  Summaries and fits of the table: :mod:`labkit.analysis.control`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Callable, Mapping, Sequence

from labkit.core.catalog import ServiceCatalog
from labkit.core.errors import UsageError
from labkit.core.modes import NAMES as MODE_NAMES
from labkit.core.validate import names, short, split, whole
from labkit.lab.lab import Lab
from labkit.probes.syn import SynProber
from labkit.rundir import schema
from labkit.runs.runner import Block, BlockContext, Experiment, Runner, plan

OPS = ("program", "add", "remove", "endpoints", "burst")
#: services whose endpoints a ``burst`` replaces in one sync
BURST = 100
#: how long a check waits for an answer that should come (a lab SYN answers in 10-300 us)
VERIFY_TIMEOUT = 0.3
#: how long a removed service's VIP must stay silent to pass its check
SILENT_TIMEOUT = 0.15
#: how a full sync changes a datapath (``update`` of "full" rows)
FULL_UPDATE = "full re-render and reload of the whole catalog (kube-proxy's full sync)"


def _row(op: str, services: int, before: int, prog: Any, verified: bool | None, check: str,
         started: float, kind: str = "full") -> dict:
    return {"op": op, "kind": kind, "services": services, "services_before": before,
            "changed": services if op == "program" else 1,
            "seconds": prog.render_s + prog.load_s,
            "render_s": prog.render_s, "load_s": prog.load_s,
            "verified": verified, "check": check, "started": started}


def program_row(services: int, prog: Any, started: float, loader: str = "") -> dict:
    """The ``program`` row of a block that loaded ``services`` from scratch."""
    return {**_row("program", services, 0, prog, None, "", started), "update": FULL_UPDATE,
            "loader": loader}


def _answered(lab: Lab, catalog: ServiceCatalog, i: int, vip: str, seed: int,
              timeout: float = VERIFY_TIMEOUT) -> tuple[bool, str]:
    """Send one SYN to ``vip`` from the client: answered from the VIP by an
    endpoint of service ``i`` within ``timeout`` s?  (answered, what happened)."""
    with SynProber(lab, timeout=timeout, seed=seed) as pr:
        o = pr.run([pr.craft(i, vip, catalog.ports[0])])[0]
    if o.rtt_ns is None:
        return False, o.error or "timeout"
    owner = catalog.service_of_endpoint(o.endpoint.split(":")[0]) if o.endpoint else None
    if owner is None or owner[0] != i:
        return True, f"answered via {o.endpoint or 'an unseen endpoint'}"
    return True, "ok"


def measure_ops(lab: Lab, dp: Any, seed: int = 0, verify: bool = True,
                each: Callable[[dict], None] | None = None, full: bool = False) -> list[dict]:
    """Add one service to the loaded datapath ``dp`` of N services and remove
    it again, the mode's own way (``kind`` its ``update_kind``); with ``full``
    and a mode that can (``changes_endpoints``), also replace the endpoints
    of service N-1 (op ``endpoints``) and of the last ``min(BURST, N)``
    services in one sync (op ``burst``), each put back afterwards, untimed;
    with ``full`` and a mode that has more than one way to send a change
    (``CHANGE_LOADERS``: nftables over netlink and through ``nft -f``), the
    same operations again with each (``loader``); with ``full`` and a mode
    that also has a full sync (``full_sync``: the iptables modes), then the
    same operations again as full syncs (``kind`` "full").  One row per operation.  ``services`` is N for all,
    ``services_before`` the count each operation found (N, then N+1 for
    remove).  ``each(row)`` is called as soon as a row is measured."""
    Op = Callable[[], Any]
    Change = Callable[[list[int]], Any]
    own = dp.change_loader
    loaders = [own] + [lo for lo in (dp.CHANGE_LOADERS if full else ()) if lo != own]
    # (kind, update, loader, add, remove, change)
    paths: list[tuple[str, str, str, Op, Op, Change]] = [
        (dp.update_kind, type(dp).update, lo, partial(dp.add_service, loader=lo),
         partial(dp.remove_service, loader=lo), partial(dp.change_endpoints, loader=lo))
        for lo in loaders]
    if full and dp.full_sync:
        paths.append(("full", FULL_UPDATE, dp.program_loader, lambda: dp.resync(dp._resized(+1)),
                      lambda: dp.resync(dp._resized(-1)), lambda s: dp.resync(dp._rolled(s))))
    rollout = full and dp.changes_endpoints
    rows: list[dict] = []

    def keep(row: dict) -> None:
        rows.append(row)
        if each is not None:
            each(row)

    n = dp.catalog.services
    for k, (kind, update, loader, add, remove, change) in enumerate(paths):
        t = time.time()
        prog = add()
        verified, check = None, ""
        grown = dp.catalog
        if verify:
            vip = grown.vip(n)
            ok, what = _answered(lab, grown, n, vip, seed + 2 * k)
            verified, check = ok and what == "ok", f"new VIP: {what}"
        keep({**_row("add", n, n, prog, verified, check, t, kind), "update": update, "loader": loader})
        t = time.time()
        prog = remove()
        if verify:
            ok, what = _answered(lab, grown, n, vip, seed + 2 * k + 1, SILENT_TIMEOUT)
            verified, check = not ok, ("removed VIP: still answered" if ok else "removed VIP: no answer")
        keep({**_row("remove", n, n + 1, prog, verified, check, t, kind), "update": update,
              "loader": loader})
        if not (rollout and n > 0):
            continue
        for op, changed in (("endpoints", [n - 1]), ("burst", list(range(max(0, n - BURST), n)))):
            t = time.time()
            prog = change(changed)
            if verify:   # answered by one of the new endpoints (the old ones no longer own it)
                i = changed[0]
                ok, what = _answered(lab, dp.catalog, i, dp.catalog.vip(i), seed + 2 * k + 7)
                verified, check = ok and what == "ok", f"replaced endpoints: {what}"
            keep({**_row(op, n, n, prog, verified, check, t, kind), "update": update,
                  "loader": loader, "changed": len(changed)})
            change(changed)    # the original endpoints back: the next operations start from the catalog
    return rows


@dataclass(frozen=True)
class ControlParams:
    modes: list[str]
    services: list[int]
    endpoints: int = 10
    rounds: int = 1
    seed: int = 1
    verify: bool = True

    @classmethod
    def validated(cls, modes: Any, services: Any, endpoints: Any = 10, rounds: Any = 1,
                  seed: Any = 1, verify: bool = True) -> "ControlParams":
        given = [whole(v, "services", 0, 1_000_000) for v in split(services, "services")]
        if not given:
            raise UsageError("services: at least one count is needed")
        if len(set(given)) != len(given):
            raise UsageError(f"services: a count is given twice in {short(given)}")
        svc = sorted(given)
        return cls(names(modes, "modes", MODE_NAMES), svc, whole(endpoints, "endpoints", 1, 1000),
                   whole(rounds, "rounds", 1, 100), whole(seed, "seed", 0, 2**32 - 1), bool(verify))


class Control(Experiment):
    """For every round, mode and count (shuffled within a round), in a fresh
    node namespace: program from scratch, add one service, remove it."""
    kind = "control"

    def __init__(self, modes: Any, services: Any, *, endpoints: Any = 10, rounds: Any = 1,
                 seed: Any = 1, verify: bool = True) -> None:
        self.p = ControlParams.validated(modes, services, endpoints, rounds, seed, verify)

    def params_dict(self) -> dict[str, Any]:
        return asdict(self.p)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "Control":
        return cls(**dict(meta["params"]))

    def blocks(self) -> list[Block]:
        p = self.p
        return plan(p.modes, p.services, p.rounds, p.seed)

    def largest_catalog(self) -> ServiceCatalog:
        # add_service grows the largest catalog by one
        return ServiceCatalog(max(self.p.services) + 1, self.p.endpoints)

    def lab_options(self, largest: ServiceCatalog) -> dict[str, Any]:
        return {**super().lab_options(largest), "server": self.p.verify}

    def run_block(self, ctx: BlockContext) -> None:
        cat = ServiceCatalog(ctx.block.services, self.p.endpoints)
        dp = ctx.mode(ctx.lab)
        ident = {**ctx.ident(), "endpoints": cat.endpoints}
        t = time.time()
        prog = dp.setup(cat)
        try:
            ctx.tables.add(schema.CONTROL, [{**program_row(cat.services, prog, t, dp.program_loader), **ident}])
            measure_ops(ctx.lab, dp, seed=ctx.block.block, verify=self.p.verify, full=True,
                        each=lambda row: ctx.tables.add(schema.CONTROL, [{**row, **ident}]))
        finally:
            dp.teardown()
        ctx.bar.update(1)


def run_control(modes: Sequence[str], services: Sequence[int], out: str, *, endpoints: int = 10,
                rounds: int = 1, seed: int = 1, verify: bool = True, command: str | None = None,
                progress: bool = True) -> str:
    """``labkit control`` as a function: writes ``out/control.parquet`` and
    ``out/control.json``; returns ``out``."""
    exp = Control(modes, services, endpoints=endpoints, rounds=rounds, seed=seed, verify=verify)
    result = Runner(exp, out, command=command, progress=progress).run()
    assert result is not None
    return result

"""The run directory's schema, written once: file names, table columns (with
what each means), and the schema version recorded in every meta file.

A run directory holds the tables of one or more run *kinds* (a sweep, the
control-plane experiment, the CPU experiment, a programming benchmark).  Each
kind owns one meta file and the tables listed for it; two kinds may share a
directory (``labkit cpu --out`` a sweep's directory) but never a table.
Writers (:mod:`labkit.runs`) and readers (:mod:`labkit.analysis`) both take
names and columns from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from labkit.core.files import TMP_PREFIX as TMP_PREFIX  # temporary files before the rename
from labkit.core.validate import short

#: bumped when a column changes meaning or a file changes name (6: ``kernel`` -> ``kernel_release``,
#: column and meta key; readers rename an older run's)
SCHEMA_VERSION = 6

SAMPLES = "samples.parquet"
POINTS = "points.parquet"
CONTROL = "control.parquet"
CPU = "cpu.parquet"
BENCH = "bench.parquet"
META = "meta.json"
CONTROL_META = "control.json"
CPU_META = "cpu.json"
BENCH_META = "bench.json"
VM_FACTS = "vm.json"        # written by labkit before the UML backend; read for old runs
GUEST_FACTS = "guest.json"  # the other kernel a run was measured in (VM or user-mode Linux)
#: the noise gauge's samples (labkit.host.load): the machine's load while the run measured
LOAD = "load.json"
#: the run lock inside a run directory: flocked by the run writing there, holds its PID
LOCK = ".labkit.lock"

# -- columns: name -> meaning ---------------------------------------------------------

_IDENT = {
    "run_id": "the run's id (also in its namespace names lk-<run id>-*)",
    "block": "index of the programming block: one mode at one service count in one round",
    "mode": "datapath mode (labkit doctor lists them)",
    "kernel_release": "kernel release the block ran on (platform.release() where it ran; "
                      "named kernel before schema 6)",
    "services": "services in the catalog",
    "endpoints": "endpoints per service",
    "round": "repetition (rounds interleave every block)",
    "remeasure_of": "the block this block measures again, in the same round, because a point of it "
                    "was disturbed (-1: a planned block); missing before it existed (read as -1)",
}

SAMPLE_COLUMNS: dict[str, str] = {
    "run_id": _IDENT["run_id"],
    "point_id": "the point (block x target x probe kind) the probe belongs to",
    "block": _IDENT["block"], "mode": _IDENT["mode"], "kernel_release": _IDENT["kernel_release"],
    "services": _IDENT["services"],
    "endpoints": _IDENT["endpoints"],
    "target": "first | middle | last | random | none",
    "probe": "probe kind (syn, keepalive, reuse-k, http-new, http-keepalive)",
    "round": _IDENT["round"],
    "pacing": "probes per second the point's probes were sent at, Poisson gaps (0: back to back, "
              "each as soon as the previous one was answered)",
    "seq": "probe's position within its point",
    "service": "catalog index of the probed service, -1 for the none address",
    "dst": "destination address of the probe",
    "rtt_us": "round trip in microseconds from two kernel timestamps; NaN when unanswered",
    "ok": "answered, from the probed address, by an endpoint of the right service",
    "error": "why not ok ('' when ok): timeout, rst, wrong-source, bad-ack, wrong-endpoint, "
             "unseen-at-backend, no-tx-stamp",
    "endpoint": "address:port the probe reached in the backend ('' when not seen)",
}

POINT_COLUMNS: dict[str, str] = {
    "run_id": _IDENT["run_id"],
    "point_id": SAMPLE_COLUMNS["point_id"],
    "block": _IDENT["block"], "mode": _IDENT["mode"], "kernel_release": _IDENT["kernel_release"],
    "services": _IDENT["services"], "endpoints": _IDENT["endpoints"],
    "target": SAMPLE_COLUMNS["target"], "probe": SAMPLE_COLUMNS["probe"], "round": _IDENT["round"],
    "pacing": SAMPLE_COLUMNS["pacing"],
    "render_s": "seconds to render the catalog (pure Python)",
    "load_s": "seconds the kernel's loader took to apply it",
    "program_s": "render_s + load_s",
    "sent": "probes sent", "answered": "probes answered", "lost": "sent - answered",
    "valid": "every check passed (reason says which failed)",
    "reason": "why the point is invalid ('' when valid)",
    "p50_us": "median rtt_us of answered probes", "p90_us": "90th percentile",
    "p99_us": "99th percentile", "mean_us": "mean", "min_us": "minimum",
    "ct_new": "new conntrack entries the node made during the point (-1: not judged)",
    "stack_pkts": "packets of matched services the eBPF program handed to the kernel's stack "
                  "during the point (-1: the mode has no such counter); > 0 makes the point invalid",
    "redirected_pkts": "packets the eBPF program forwarded itself during the point (-1: no counter)",
    "variant": "the mode's choices for this block ('' if none): IPVS scheduler and helper-rule backend",
    "started": "Unix time the point's probes started", "finished": "Unix time they ended",
    "remeasure_of": _IDENT["remeasure_of"],
    "disturbed": "the point's p50 lies outside what the other rounds of its cell allow "
                 "(labkit.core.disturbed); set on a planned block's points when the block is "
                 "re-measured, on a re-measurement's when it is outside too; missing before it "
                 "existed (read as False)",
}

CONTROL_COLUMNS: dict[str, str] = {
    "run_id": _IDENT["run_id"], "block": _IDENT["block"], "mode": _IDENT["mode"],
    "kernel_release": _IDENT["kernel_release"], "services": "services loaded before the operation (N)",
    "endpoints": _IDENT["endpoints"], "round": _IDENT["round"],
    "op": "program (from scratch) | add (one service) | remove (that service) | "
          "endpoints (one service's endpoints replaced) | burst (the last min(100, N) services' "
          "endpoints replaced in one sync); endpoints and burst from schema 5, labkit control",
    "kind": "full (the whole catalog rendered and loaded) | partial (only what changed); "
            "missing before schema 4 (read as the mode's update text says)",
    "seconds": "render_s + load_s of the operation",
    "render_s": POINT_COLUMNS["render_s"], "load_s": POINT_COLUMNS["load_s"],
    "services_before": "services the operation found",
    "changed": "services the operation changed: N for program, 1 for add, remove and endpoints, "
               "min(100, N) for burst; missing before schema 5",
    "verified": "a SYN afterwards confirmed the change (None: not checked)",
    "check": "what the verifying SYN saw",
    "update": "how the mode applies one change",
    "loader": "what sent it to the kernel: iptables-*-restore, nft, netlink (one nf_tables batch "
              "of labkit's), bpf(), ipset/ip/ipvsadm; missing before schema 5",
    "started": "Unix time the operation started",
    "remeasure_of": _IDENT["remeasure_of"],
}

CPU_COLUMNS: dict[str, str] = {
    "run_id": _IDENT["run_id"], "block": _IDENT["block"], "round": _IDENT["round"],
    "mode": _IDENT["mode"], "kernel_release": _IDENT["kernel_release"], "services": _IDENT["services"],
    "endpoints": _IDENT["endpoints"], "target": SAMPLE_COLUMNS["target"],
    "rate": "new connections per second", "seconds": "seconds of sending",
    "sent": "SYNs sent", "answered": "SYN-ACKs seen on the client's veth",
    "wall_s": "seconds the sending took",
    "thread_cpu_ns": "CPU time of the sending thread (softirq work included)",
    "cpu_us": "thread_cpu_ns per SYN, microseconds",
    "baseline_us": "cpu_us of the same block before the datapath was loaded",
    "excess_us": "cpu_us - baseline_us: what the datapath costs per new connection",
    "method": "thread | thread+cpu-softirq (see labkit.runs.cpu)",
    "valid": POINT_COLUMNS["valid"], "reason": POINT_COLUMNS["reason"],
    "machine_softirq_s": "machine-wide softirq seconds meanwhile (cross-check)",
    "machine_system_s": "machine-wide system seconds meanwhile (cross-check)",
    "ksoftirqd_ms": "CPU time of the ksoftirqd threads meanwhile",
    "started": "Unix time the measurement started",
}

BENCH_COLUMNS: dict[str, str] = {
    "run_id": _IDENT["run_id"], "block": _IDENT["block"], "round": "repetition",
    "mode": _IDENT["mode"], "kernel_release": _IDENT["kernel_release"], "services": _IDENT["services"],
    "endpoints": _IDENT["endpoints"],
    "render_s": POINT_COLUMNS["render_s"], "load_s": POINT_COLUMNS["load_s"],
    "program_s": POINT_COLUMNS["program_s"],
    "loader_peak_mb": "largest resident set of the mode's loader commands, MB",
    "held_mb": "drop of MemAvailable while the catalog is loaded, MB (machine-wide: noisy)",
    "started": "Unix time the programming started",
}


@dataclass(frozen=True)
class RunKind:
    """One kind of run: its meta file and the tables it owns (name -> columns)."""
    name: str
    meta: str
    tables: dict[str, dict[str, str]]


KINDS: dict[str, RunKind] = {
    "sweep": RunKind("sweep", META, {SAMPLES: SAMPLE_COLUMNS, POINTS: POINT_COLUMNS,
                                     CONTROL: CONTROL_COLUMNS}),
    "control": RunKind("control", CONTROL_META, {CONTROL: CONTROL_COLUMNS}),
    "cpu": RunKind("cpu", CPU_META, {CPU: CPU_COLUMNS}),
    "bench": RunKind("bench", BENCH_META, {BENCH: BENCH_COLUMNS}),
}

#: what the report and the analysis notebook write beside the data
OUTPUT_FILES = frozenset({"report.html", "report.png", "crossover.csv", "fits.csv", "summary.csv",
                          "analysis.ipynb", "sweep.ipynb", "claims.csv"})
#: every file name a run directory may hold
KNOWN_FILES = frozenset({VM_FACTS, GUEST_FACTS, LOAD, LOCK, *OUTPUT_FILES,
                         *(k.meta for k in KINDS.values()),
                         *(t for k in KINDS.values() for t in k.tables)})


def columns(table: str) -> list[str]:
    """The column names of ``table`` (a file name), in order."""
    for kind in KINDS.values():
        if table in kind.tables:
            return list(kind.tables[table])
    raise KeyError(table)


# -- the meta file --------------------------------------------------------------------

#: meta fields and the types they must have when present (None allowed where listed)
_META_TYPES: dict[str, tuple[type, ...]] = {
    "schema_version": (int,), "kind": (str,), "experiment": (str,), "run_id": (str,), "command": (str,),
    "kernel": (str,), "kernel_release": (str,), "labkit_version": (str,), "git_revision": (str,), "bpf_jit": (str,),
    "started": (int, float, type(None)), "finished": (int, float, type(None)), "complete": (bool,),
    "host": (dict,), "tools": (dict,), "packages": (dict,), "n_rows": (dict,), "guest": (dict,),
    "vm": (dict,), "n_points": (int,), "blocks_done": (list,), "resumed": (list,), "guests": (list,),
    "remeasured": (list,),
}
_TYPE_WORDS = {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
               dict: "a mapping", list: "a list", type(None): "null"}
#: the largest block number a plan makes (rounds x modes x counts, far below)
MAX_BLOCK = 10**9


def _is(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):   # JSON true is no number
        return bool in types
    return isinstance(value, types)


def meta_problem(meta: Any, kind: str, *, resume: bool = False) -> str | None:
    """What makes ``meta`` (a parsed meta file of a ``kind`` run) unusable, in
    words naming the field and quoting a short prefix of its value; None when
    it is a valid meta file.  Pure.  Fields labkit never wrote may be missing
    (older runs); a field that is present must have its type.  With ``resume``
    the parameters and the list of blocks done must be there too.  Callers say
    "<path> is not a valid labkit run: <problem>"."""
    name = KINDS[kind].meta
    if not isinstance(meta, dict):
        return f"{name} is not a labkit meta file (it holds a {type(meta).__name__})"
    params = meta.get("params")
    if (resume or "params" in meta) and not isinstance(params, dict):
        return f"{name} has no params mapping"
    params = params if isinstance(params, dict) else {}
    for key, types in _META_TYPES.items():
        if key in meta and not _is(meta[key], types):
            words = " or ".join(dict.fromkeys(_TYPE_WORDS[t] for t in types))
            return f"{name}: {key} must be {words}, got {short(meta[key])}"
    if "kind" in meta and meta["kind"] != kind:
        return f"{name} is the meta file of a {short(meta['kind'])} run, not of a {kind} run"
    for key in ("blocks_done",):
        if key in meta and not all(_is(b, (int,)) and 0 <= b < MAX_BLOCK for b in meta[key]):
            return f"{name}: {key} must be a list of block numbers, got {short(meta[key])}"
    if "resumed" in meta and not all(_is(t, (int, float)) for t in meta["resumed"]):
        return f"{name}: resumed must be a list of times, got {short(meta['resumed'])}"
    if "remeasured" in meta and not all(isinstance(e, dict) and all(
            _is(e.get(k), (int,)) and 0 <= e[k] < MAX_BLOCK for k in ("block", "of")) for e in meta["remeasured"]):
        return f"{name}: remeasured must be a list of {{block, of}} block numbers, got {short(meta['remeasured'])}"
    if "guests" in meta and not all(isinstance(g, dict) for g in meta["guests"]):
        return f"{name}: guests must be a list of mappings, got {short(meta['guests'])}"
    modes = params.get("modes")
    if "modes" in params and not (isinstance(modes, list) and modes and all(isinstance(m, str) for m in modes)):
        return f"{name}: params.modes must be a list of mode names, got {short(modes)}"
    services = params.get("services")
    if "services" in params and not (_is(services, (int,)) or (
            isinstance(services, list) and all(_is(n, (int,)) for n in services))):
        return f"{name}: params.services must be a list of whole numbers, got {short(services)}"
    if resume and "blocks_done" not in meta:
        return f"{name} has no blocks_done: it was not written by a labkit that can resume it"
    return None

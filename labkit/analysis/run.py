"""Loading a run directory (pure: reads files, never writes).

:func:`load_run` reads ``meta.json``, ``samples.parquet`` and
``points.parquet``, checks their columns and checksums the raw files.  Each
row keeps its identity in columns: ``mode``, ``kernel`` (where it ran:
``host``, ``uml`` or ``vm``, from the guests the run records), the kernel
release (``kernel_release``), ``probe`` (the kind) and ``pacing`` (probes per
second, 0 back to back).  Runs of schema 5 and older name the release
``kernel`` (column and meta key); the loader renames it.  A figure's or a
sentence's name for a series is :meth:`Run.label`, derived from the identity
and never parsed back.

Disturbed blocks (:mod:`labkit.core.disturbed`).  A sweep measures a block
with a point outside what its cell's other rounds allow once more, in the
same round (``remeasure_of``), and flags the point (``disturbed``).  The
loader puts the re-measurement in the old block's place: the old block's
points are read as invalid ("disturbed: re-measured as block N"), so fits,
jackknife and bootstrap see one block per cell and round, the new one.
:attr:`Run.remeasured` lists what was re-measured.  A run older than the flag
cannot have re-measured anything: the same rule flags its points, listed
"flagged, not re-measured (an older run)" and kept in the fits, so an older
run's figures are what they were.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple

import pandas as pd

from labkit.core.disturbed import flag_cells
from labkit.core.errors import UsageError
from labkit.core.modes import INTERPRETED_TAG, interpreted
from labkit.rundir import schema
from labkit.rundir.store import read_json, read_table, sha256_file

#: the columns the analysis needs: all but those added since schema 1 (a run of
#: schema 1, like the reference runs, lacks them); the release is checked after
#: the rename of schema 5's ``kernel``
LATER_COLUMNS = {"block", "ct_new", "variant", "pacing", "stack_pkts", "redirected_pkts", "kernel_release",
                 "remeasure_of", "disturbed"}
SAMPLE_COLUMNS = [c for c in schema.SAMPLE_COLUMNS if c not in LATER_COLUMNS]
POINT_COLUMNS = [c for c in schema.POINT_COLUMNS if c not in LATER_COLUMNS]
RAW_FILES = (schema.META, schema.SAMPLES, schema.POINTS)
OUTPUT_FILES = schema.OUTPUT_FILES
#: the kernels a guest backend names (anything else ran on the host)
GUEST_KERNELS = ("uml", "vm")
#: a point's cell: measured once per round (the disturbance rule compares its rounds)
CELL_COLUMNS = ["mode", "kernel_release", "services", "target", "probe", "pacing"]
#: :attr:`Run.remeasured`: one row per disturbed point
REMEASURED_COLUMNS = ["mode", "kernel", "services", "round", "target", "probe", "pacing", "block",
                      "remeasured_as", "old_p50_us", "new_p50_us", "status"]


class Series(NamedTuple):
    """One mode in one kernel: the curves of a run are drawn per series."""
    mode: str
    kernel: str


def series_label(mode: str, kernel: str, tag: str = "") -> str:
    """The name of a series in tables, figures and sentences: the mode, a
    short kernel tag where a run mixes kernels (``tag``: host, uml, vm), and
    :data:`~labkit.core.modes.INTERPRETED_TAG` where eBPF ran in the BPF
    interpreter: "ebpf [uml, interpreted]".  Never parsed back."""
    tags = ([tag] if tag else []) + ([INTERPRETED_TAG] if interpreted(mode, kernel) else [])
    return mode + (f" [{', '.join(tags)}]" if tags else "")


def probe_label(probe: str, pacing: float) -> str:
    """A probe kind and its pacing in words: "syn", "syn @1000/s"."""
    return probe + (f" @{pacing:g}/s" if pacing > 0 else "")


@dataclass
class Run:
    """A run directory as read from disk.  ``files`` lists the raw data files
    with their sizes and sha256 checksums (taken when loaded).
    ``releases``: each kernel's release; ``series_order``: the run's modes in
    the order its parameters list them."""
    path: str
    meta: dict
    samples: pd.DataFrame
    points: pd.DataFrame
    files: pd.DataFrame
    series_order: list[Series]
    releases: dict[str, str] = field(default_factory=dict)
    #: disturbed points: re-measured, or flagged only (:func:`remeasured_table`)
    remeasured: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=REMEASURED_COLUMNS))

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id", ""))

    def label(self, s: Series) -> str:
        """:func:`series_label` of ``s`` (the kernel, host or uml, only when the run mixes kernels)."""
        return series_label(s.mode, s.kernel, s.kernel if len(self.releases) > 1 else "")

    def labels(self, df: pd.DataFrame) -> pd.Series:
        """The label of each row of ``df`` (with mode and kernel columns)."""
        names = {s: self.label(Series(*s)) for s in df[["mode", "kernel"]].drop_duplicates().itertuples(index=False)}
        key = pd.MultiIndex.from_frame(df[["mode", "kernel"]].astype(str))
        return pd.Series(pd.Series(names).reindex(key).to_numpy(), index=df.index, dtype=object)


def _need_columns(df: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise UsageError(f"{what} lacks column(s) {', '.join(missing)}")


def _table(run_dir: str, name: str) -> pd.DataFrame:
    path = os.path.join(run_dir, name)
    try:
        df = read_table(path)
    except PermissionError:
        raise UsageError(f"{path} cannot be read (permission denied)") from None
    except Exception as exc:  # pyarrow raises several kinds for a damaged file
        raise UsageError(f"{path} is not a readable parquet table ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'damaged'})") from None
    if "kernel" in df.columns:   # schema 5 and older (a run resumed since holds both)
        old = df.pop("kernel")
        df["kernel_release"] = df["kernel_release"].fillna(old) if "kernel_release" in df.columns else old
    _need_columns(df, ["kernel_release"], name)
    return df


def find_runs(*bases: str) -> list[str]:
    """Run directories (holding a meta.json) directly under each of ``bases``
    and one level down (runs/, data/reference/), sorted."""
    found = set()
    for base in bases:
        for sub in ("", "runs", os.path.join("data", "reference")):
            d = os.path.join(base, sub)
            if os.path.isdir(d):
                for name in os.listdir(d):
                    if os.path.isfile(os.path.join(d, name, schema.META)):
                        found.add(os.path.relpath(os.path.join(d, name)))
    return sorted(found)


def require_run_dir(run_dir: str | None) -> str:
    """``run_dir`` itself, or a UsageError that says to set it and lists the
    runs it can see (from the working directory and its parent)."""
    if run_dir:
        return run_dir
    runs = find_runs(os.getcwd(), os.path.dirname(os.getcwd()))
    listing = ("; runs found: " + ", ".join(runs[:20]) + (" ..." if len(runs) > 20 else "")) if runs \
        else "; no run directories found under ., runs/ or data/reference/"
    raise UsageError("set run_dir to a run directory (papermill -p run_dir DIR, or edit the "
                     "parameters cell)" + listing)


def _read_meta(run_dir: str) -> dict:
    try:
        meta = read_json(os.path.join(run_dir, schema.META))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{run_dir}/{schema.META} is not valid JSON: {exc}") from None
    except PermissionError:
        raise UsageError(f"{run_dir}/{schema.META} cannot be read (permission denied)") from None
    if not isinstance(meta, dict):
        raise UsageError(f"{run_dir}/{schema.META} is not a labkit meta file (it holds a "
                         f"{type(meta).__name__})")
    if "kernel_release" not in meta and "kernel" in meta:   # schema 5 and older
        meta["kernel_release"] = meta.pop("kernel")
    return meta


def runs_inside(d: str) -> list[str]:
    """The names of the run directories (of any kind) directly inside ``d``."""
    metas = {k.meta for k in schema.KINDS.values()}
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return []
    return [n for n in names if any(os.path.isfile(os.path.join(d, n, m)) for m in metas)]


def load_run(run_dir: str) -> Run:
    """Read ``samples.parquet``, ``points.parquet`` and ``meta.json`` of a run
    directory, check their schema, checksum them.  Raises UsageError on a
    directory that is not a run."""
    run_dir = os.path.abspath(run_dir)
    if not os.path.isdir(run_dir):
        raise UsageError(f"{run_dir} is not a directory")
    for name in RAW_FILES:
        if not os.path.isfile(os.path.join(run_dir, name)):
            inside = runs_inside(run_dir)
            raise UsageError(f"{run_dir} is not a labkit run: {name} is missing" + (
                f"; it holds the runs {', '.join(inside[:6])}{', ...' if len(inside) > 6 else ''}: "
                "name one of them" if inside else ""))
    meta = _read_meta(run_dir)
    samples = _table(run_dir, schema.SAMPLES)
    points = _table(run_dir, schema.POINTS)
    _need_columns(samples, SAMPLE_COLUMNS, "samples.parquet")
    _need_columns(points, POINT_COLUMNS, "points.parquet")
    if not len(points):
        raise UsageError(f"{run_dir} holds no measured points yet")
    samples = samples.astype({"point_id": "int64", "services": "int64", "rtt_us": "float64"})
    points = points.astype({"point_id": "int64", "services": "int64", "valid": "bool"})
    points["reason"] = points["reason"].fillna("").astype(str)
    kernel_of = kernel_names(meta, run_dir, points["kernel_release"].astype(str).unique())
    for df in (samples, points):
        # paced probes are curves of their own: "syn" at 1000/s beside back-to-back "syn"
        df["pacing"] = df["pacing"].astype(float) if "pacing" in df.columns else 0.0
        df["probe"] = df["probe"].astype(str)
        df["kernel_release"] = df["kernel_release"].astype(str)
        df["kernel"] = df["kernel_release"].map(kernel_of)
    releases = {k: r for r, k in kernel_of.items()}
    points, remeasured = use_remeasured(points)
    return Run(run_dir, meta, samples, points, _files(run_dir), _series_order(meta, points), releases,
               remeasured)


def use_remeasured(points: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``points`` with each re-measured block's points read as invalid (the
    re-measurement takes their place), and :func:`remeasured_table`.  A run
    without the ``disturbed`` column (older than the flag) is flagged here by
    the same rule, its points left as they are."""
    pts = points.copy()
    older, blockless = "disturbed" not in pts.columns, "block" not in pts.columns
    if blockless:   # schema 1 had no blocks: each point stands alone here
        pts["block"] = -1 - pts["point_id"]
    if older:
        pts["disturbed"] = False
        ok = pts["valid"] & pts["p50_us"].notna()
        cells = pts.loc[ok, CELL_COLUMNS].astype(str).itertuples(index=False, name=None)
        pts.loc[ok, "disturbed"] = flag_cells(cells, pts.loc[ok, "p50_us"].astype(float))
    pts["disturbed"] = pts["disturbed"].astype(object).where(pts["disturbed"].notna(), False).astype(bool)
    of = pts["remeasure_of"] if "remeasure_of" in pts.columns else pd.Series(-1, index=pts.index)
    pts["remeasure_of"] = of.fillna(-1).astype("int64")
    again = pts[pts["remeasure_of"] >= 0].groupby("remeasure_of")["block"].first()
    gone = pts["block"].isin(again.index)
    why = "disturbed: re-measured as block " + pts.loc[gone, "block"].map(again).astype(int).astype(str)
    pts.loc[gone, "reason"] = why + pts.loc[gone, "reason"].where(pts.loc[gone, "reason"] == "",
                                                                  "; " + pts.loc[gone, "reason"])
    pts.loc[gone, "valid"] = False
    table = remeasured_table(pts, again, older)
    return (pts.drop(columns="block") if blockless else pts), table


def remeasured_table(pts: pd.DataFrame, again: pd.Series, older: bool) -> pd.DataFrame:
    """One row per disturbed point (:data:`REMEASURED_COLUMNS`): a planned
    point flagged, beside the same point of its block's re-measurement
    (``again``: old block -> new block), or a re-measurement's point flagged
    itself; ``status`` says which."""
    key = ["block", "target", "probe", "pacing"]
    new = pts[pts["remeasure_of"] >= 0].set_index(["remeasure_of", "target", "probe", "pacing"])
    rows = []
    for k, r in pts[pts["disturbed"] | pts["block"].isin(again.index)].set_index(key).iterrows():
        if r["remeasure_of"] >= 0:
            continue
        twin = new.loc[k] if k in new.index else None
        if not r["disturbed"] and (twin is None or not bool(twin["disturbed"])):
            continue   # re-measured with its block, inside both times
        status = ("flagged, not re-measured (an older run)" if older else "flagged, not re-measured"
                  if twin is None else "re-measured" if not bool(twin["disturbed"]) else
                  "re-measured, outside again (both kept, flagged)" if r["disturbed"] else
                  "re-measured with its block, outside there")
        rows.append(dict(mode=r["mode"], kernel=r["kernel"], services=int(r["services"]), round=int(r["round"]),
                         target=k[1], probe=k[2], pacing=float(k[3]), block=int(k[0]),
                         remeasured_as=int(again[k[0]]) if k[0] in again.index else -1,
                         old_p50_us=float(r["p50_us"]),
                         new_p50_us=float(twin["p50_us"]) if twin is not None else float("nan"), status=status))
    return pd.DataFrame(rows, columns=REMEASURED_COLUMNS).sort_values(
        ["mode", "kernel", "services", "round", "target", "probe", "pacing"], ignore_index=True)


def kernel_names(meta: dict, run_dir: str, releases) -> dict[str, str]:
    """Each kernel release of a run -> where it ran: ``uml`` or ``vm`` for the
    release of a guest the run records (meta file, ``guest.json``), else ``host``."""
    guests = [g for g in [meta.get("guest"), *(meta.get("guests") or []), _guest_facts(run_dir)]
              if isinstance(g, dict)]
    # an older run's meta file records its guest under the backend's name ("vm": {...})
    guests += [{**meta[b], "backend": b} for b in GUEST_KERNELS if isinstance(meta.get(b), dict)]
    backend = {str(g.get("kernel_release")): str(g["backend"]) for g in guests
               if g.get("backend") in GUEST_KERNELS}
    return {str(r): backend.get(str(r), "host") for r in releases}


def _series_order(meta: dict, points: pd.DataFrame) -> list[Series]:
    """The modes the parameters list, in that order (each in the order its
    kernels were first measured), then any other, by label."""
    wanted = list((meta.get("params") or {}).get("modes") or [])
    present = [Series(*s) for s in points.sort_values("point_id")[["mode", "kernel"]].astype(str)
               .drop_duplicates().itertuples(index=False)]
    order = [s for m in wanted for s in present if s.mode == m]
    several = len({s.kernel for s in present}) > 1
    rest = [s for s in present if s not in order]
    return order + sorted(rest, key=lambda s: series_label(s.mode, s.kernel, s.kernel if several else ""))


def _files(run_dir: str) -> pd.DataFrame:
    files = []
    for name in sorted(os.listdir(run_dir)):
        p = os.path.join(run_dir, name)
        if os.path.isfile(p) and name not in OUTPUT_FILES and not name.startswith("."):
            files.append({"file": name, "bytes": os.path.getsize(p), "sha256": sha256_file(p)})
    return pd.DataFrame(files)


def _guest_facts(run_dir: str) -> dict:
    """``guest.json`` of a run (written before its guest boots), or {}."""
    try:
        facts = read_json(os.path.join(run_dir, schema.GUEST_FACTS))
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}

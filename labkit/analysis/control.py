"""The control-plane table (``control.parquet``): summaries and fits (pure)."""
from __future__ import annotations

import os

import pandas as pd

from labkit.analysis.models import fit_models, select_model
from labkit.rundir import schema
from labkit.rundir.store import read_table as _read

OPS = ("program", "add", "remove", "endpoints", "burst")


KINDS = ("full", "partial")


def with_kind(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``kind`` column (full | partial) and a ``loader`` column.
    Tables of schema < 4 have no kind: ``program`` is full, and a change is
    full when its ``update`` text says it re-rendered and reloaded everything
    (the only full path then); tables of schema < 5 no loader (read as '')."""
    if "loader" not in df.columns or df["loader"].isna().any():
        df = df.assign(loader=df["loader"].astype(object).where(df["loader"].notna(), "")
                       if "loader" in df.columns else "")
    if "kind" in df.columns and df["kind"].notna().all():
        return df
    out = df.copy()
    full = (out["op"] == "program") | out.get("update", pd.Series("", index=out.index)).fillna("") \
        .str.startswith("full re-render")
    guess = full.map({True: "full", False: "partial"})
    if "kind" in out.columns:   # a column of missing values reads as float: compare as objects
        out["kind"] = out["kind"].astype(object).where(out["kind"].notna(), guess)
    else:
        out["kind"] = guess
    return out


def load(run_dir: str) -> pd.DataFrame | None:
    p = os.path.join(run_dir, schema.CONTROL)
    return with_kind(_read(p)) if os.path.exists(p) else None


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Median, min and max seconds per mode, operation, kind (full |
    partial), loader and service count, and how many operations failed
    their check."""
    df = with_kind(df)
    g = df.groupby(["mode", "op", "kind", "loader", "services"], sort=True)
    out = g["seconds"].agg(["median", "min", "max", "count"]).reset_index()
    bad = g["verified"].apply(lambda v: int((v == False).sum()))  # noqa: E712 (None = unchecked)
    out["failed_checks"] = bad.to_numpy()
    out["op"] = pd.Categorical(out["op"], OPS, ordered=True)
    return out.sort_values(["op", "mode", "kind", "loader", "services"]).reset_index(drop=True)


def slopes(df: pd.DataFrame) -> pd.DataFrame:
    """Per mode and operation: a straight line through the seconds against
    the service count (least squares), in milliseconds per 1,000 services,
    and the chosen model of :func:`labkit.analysis.models.fit_models`."""
    rows = []
    df = with_kind(df)
    for (mode, op, kind, loader), g in df.groupby(["mode", "op", "kind", "loader"], sort=True):
        x = g["services"].to_numpy(dtype=float)
        y = g["seconds"].to_numpy(dtype=float)
        if len(set(x)) < 2:
            continue
        fits = fit_models(x, y, ("constant", "linear"))
        chosen, _, _ = select_model(fits, "aic") if len(fits) > 1 else ("linear", "", {})
        p = fits["linear"].params()
        rows.append({"mode": mode, "op": op, "kind": kind, "loader": loader,
                     "ms_per_1000_services": p["b"] * 1e6,
                     "intercept_s": p["a"], "chosen": chosen, "points": len(x),
                     "services_max": int(x.max())})
    return pd.DataFrame(rows)

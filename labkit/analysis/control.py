"""The control-plane table (``control.parquet``): summaries and fits (pure)."""
from __future__ import annotations

import os

import pandas as pd

from labkit.analysis.fit import fit_models, select_model
from labkit.rundir import schema
from labkit.rundir.store import read_table as _read

OPS = ("program", "add", "remove")


def load(run_dir: str) -> pd.DataFrame | None:
    p = os.path.join(run_dir, schema.CONTROL)
    return _read(p) if os.path.exists(p) else None


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

"""The CPU experiment's table (``cpu.parquet``): per-connection CPU summaries (pure)."""
from __future__ import annotations

import os

import pandas as pd

from labkit.rundir import schema
from labkit.rundir.store import read_table


def load(run_dir: str) -> pd.DataFrame | None:
    p = os.path.join(run_dir, schema.CPU)
    return read_table(p) if os.path.exists(p) else None


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per mode, target and service count: median CPU per connection, the
    no-datapath baseline, the datapath's excess (median and range over
    rounds), and the cores it costs at the measured rate."""
    v = df[df["valid"]]
    g = v.groupby(["mode", "target", "services"], sort=True)
    out = g.agg(cpu_us=("cpu_us", "median"), baseline_us=("baseline_us", "median"),
                excess_us=("excess_us", "median"), excess_min=("excess_us", "min"),
                excess_max=("excess_us", "max"), rounds=("excess_us", "size"),
                rate=("rate", "first")).reset_index()
    out["excess_cores"] = out["excess_us"] * out["rate"] / 1e6
    return out

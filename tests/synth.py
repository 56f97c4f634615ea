"""Synthetic run directories in the sweep's schema, for tests that need a run
with a known truth (no root): one point's rows from its round-trip times, and
the three files of a run."""
import json
import os

import numpy as np
import pandas as pd


def point_rows(rtt: np.ndarray, *, run_id: str, point_id: int, block: int, mode: str, kernel: str,
               services: int, target: str, probe: str, pacing: float, round: int) -> tuple[pd.DataFrame, dict]:
    """The samples and the points row of one point whose probes took ``rtt`` us."""
    ids = dict(run_id=run_id, point_id=point_id, mode=mode, kernel=kernel, services=services, endpoints=10,
               target=target, probe=probe, pacing=pacing, round=round)
    samples = pd.DataFrame({**ids, "seq": np.arange(len(rtt)), "service": services - 1, "dst": "10.96.0.1",
                            "rtt_us": rtt, "ok": True, "error": "", "endpoint": "10.128.0.1:80"})
    q = np.percentile(rtt, [50, 90, 99])
    point = {**ids, "block": block, "render_s": 0.0, "load_s": 0.1, "program_s": 0.1, "sent": len(rtt),
             "answered": len(rtt), "lost": 0, "valid": True, "reason": "", "p50_us": q[0], "p90_us": q[1],
             "p99_us": q[2], "mean_us": rtt.mean(), "min_us": rtt.min(), "started": 1.8e9 + point_id,
             "finished": 1.8e9 + point_id + 1}
    return samples, point


def write_run(out, samples: list[pd.DataFrame], points: list[dict], meta: dict) -> str:
    """samples.parquet, points.parquet and meta.json (started/finished added) in ``out``."""
    os.makedirs(out, exist_ok=True)
    pd.concat(samples, ignore_index=True).to_parquet(os.path.join(out, "samples.parquet"), index=False)
    pd.DataFrame(points).to_parquet(os.path.join(out, "points.parquet"), index=False)
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({"complete": True, "started": 1.8e9, "finished": 1.8e9 + len(points), **meta}, f)
    return str(out)

"""The sweep: pure planning and validity (no root), real sweeps through the CLI and notebook (root)."""
import json
import os
import random
import subprocess
import sys
import time
import types

import nbformat
import numpy as np
import pandas as pd
import papermill as pm
import pytest
import yaml
from scipy.stats import chisquare

from labkit.core.catalog import ServiceCatalog
from labkit.core.errors import UsageError
from labkit.probes.base import Paced
from labkit.probes.syn import SynProber
from labkit.runs.params import SweepParams
from labkit.runs.sweep import Sweep, check_samples, judge_point, point_id, summary_text, uniform_p

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_plan_covers_every_cell_once_interleaved_and_deterministic():
    p = SweepParams.from_dict(dict(modes="iptables-legacy,iptables-nft", services="0,10,20",
                                   targets="last,none", rounds=3, seed=5))
    blocks = Sweep(p).blocks()
    assert len(blocks) == 2 * 3 * 3
    assert len({(b.mode, b.services, b.round) for b in blocks}) == len(blocks)
    assert [b.round for b in blocks] == sorted(b.round for b in blocks)  # rounds in sequence
    orders = {tuple((b.mode, b.services) for b in blocks if b.round == r) for r in range(3)}
    assert len(orders) > 1  # shuffled differently per round
    assert Sweep(p).blocks() == blocks  # deterministic
    ids = [point_id(p, b, t) for b in blocks for t in b.targets]
    assert len(set(ids)) == len(ids)
    paced = SweepParams.from_dict(dict(p.to_dict(), pacing="0,1k"))
    ids = [point_id(paced, b, t, "syn", v) for b in blocks for t in b.targets for v in (0.0, 1000.0)]
    assert len(set(ids)) == len(ids)
    assert Sweep(paced).units(blocks[0]) == 2 * len(blocks[0].targets)


@pytest.mark.parametrize("value, expect", [("0", [0.0]), ("0,1000", [0.0, 1000.0]), ([0, "2k"], [0.0, 2000.0]),
                                           ("0,0", "given twice"), ("-5", "pacing"), (0.5, "pacing"),
                                           ("fast", "pacing"), ([], "at least one")])
def test_pacing_parameter(value, expect):
    if isinstance(expect, list):
        assert SweepParams.from_dict(dict(pacing=value)).pacing == expect
    else:
        with pytest.raises(UsageError, match=expect):
            SweepParams.from_dict(dict(pacing=value))


def test_paced_probes_arrive_as_a_poisson_process():
    items = list(range(400))
    paced = Paced(items, 2000.0, seed=3)
    gaps = np.array(paced.gaps())
    assert len(paced) == 400 and paced[5] == 5
    assert 0.4e-3 < gaps.mean() < 0.6e-3                      # mean 1/rate
    assert 0.7 < gaps.std() / gaps.mean() < 1.3               # exponential: sd = mean
    t0 = time.monotonic()
    assert list(paced) == items
    took = time.monotonic() - t0
    assert 0.9 * gaps.sum() < took < gaps.sum() + 0.5, (took, gaps.sum())
    t0 = time.monotonic()
    assert list(Paced(items, 0.0)) == items                   # back to back: no gaps
    assert time.monotonic() - t0 < 0.05


def _samples(cat, service, endpoints, rtt=10.0, error=""):
    n = len(endpoints)
    return pd.DataFrame({"service": [service] * n, "rtt_us": [rtt] * n, "error": [error] * n,
                         "endpoint": endpoints, "ok": False})


def test_the_printed_summary_of_a_paced_only_run_shows_its_pacing():
    """A run with no back-to-back points (``--pacing 1000``) prints its paced
    medians, saying so (it used to fail on the empty back-to-back table)."""
    pts = pd.DataFrame({"mode": "nftables", "kernel_release": "6.18", "services": [1, 1, 10, 10],
                        "target": "last", "probe": "syn", "pacing": 1000.0, "round": [0, 1, 0, 1],
                        "block": [0, 1, 2, 3], "valid": True, "p50_us": [8.0, 10.0, 9.0, 11.0],
                        "remeasure_of": -1})
    text = summary_text(pts)
    assert "syn probes at 1,000/s:" in text and "9.0" in text and "10.0" in text
    assert "4 points, 0 invalid" in text


def test_validity_accepts_even_correct_answers():
    cat = ServiceCatalog(10, 4)
    eps = [f"{e}:80" for e in cat.endpoints_of(9)] * 25
    df = check_samples(_samples(cat, 9, eps), cat)
    assert df["ok"].all()
    assert judge_point(df, cat) == (True, "")


@pytest.mark.parametrize("case, reason", [
    ("loss", "probes unanswered (timeout"),
    ("wrong-service", "DNAT to an endpoint of another service"),
    ("unseen", "never seen at the backend"),
    ("uneven", "uneven endpoint spread"),
    ("wrong-source", "answered from the wrong address"),
    ("conntrack", "probes hit existing conntrack entries"),
])
def test_validity_names_what_is_wrong(case, reason):
    cat = ServiceCatalog(10, 4)
    eps = [f"{e}:80" for e in cat.endpoints_of(9)] * 25
    df = _samples(cat, 9, eps)
    if case == "loss":
        df.loc[:2, "rtt_us"] = np.nan
        df.loc[:2, "error"] = "timeout"
        df.loc[:2, "endpoint"] = ""
    elif case == "wrong-service":
        df.loc[:1, "endpoint"] = f"{cat.endpoint(3, 0)}:80"
    elif case == "unseen":
        df.loc[:1, "endpoint"] = ""
    elif case == "uneven":
        df["endpoint"] = f"{cat.endpoint(9, 0)}:80"
    elif case == "wrong-source":
        df.loc[:0, "error"] = "wrong-source"
    df = check_samples(df, cat)
    valid, why = judge_point(df, cat, ct_new=60 if case == "conntrack" else None)
    assert not valid and reason in why, why


def test_validity_judges_the_ebpf_path_counters():
    cat = ServiceCatalog(10, 4)
    df = check_samples(_samples(cat, 9, [f"{e}:80" for e in cat.endpoints_of(9)] * 25), cat)
    assert judge_point(df, cat, path={"stack": 0, "redirected": 200}) == (True, "")
    valid, why = judge_point(df, cat, path={"stack": 3, "redirected": 200})
    assert not valid and "3 service packets fell back to the kernel's stack" in why
    valid, why = judge_point(df, cat, path={"stack": 0, "redirected": 40})
    assert not valid and "40 packets forwarded by the program for 100 answered service probes" in why


# --- real sweeps ----------------------------------------------------------------

def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "labkit", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.root
def test_cli_sweep_writes_tidy_tables(tmp_path):
    out = tmp_path / "run"
    cp = run_cli("sweep", "--modes", "iptables-legacy,iptables-nft", "--services", "0,3000",
                 "--targets", "first,last", "--probes", "60", "--rounds", "1", "--out", str(out))
    assert cp.returncode == 0, cp.stderr
    smp = pd.read_parquet(out / "samples.parquet")
    pts = pd.read_parquet(out / "points.parquet")
    meta = json.loads((out / "meta.json").read_text())
    for col in ("mode", "kernel_release", "services", "endpoints", "target", "probe", "rtt_us", "ok"):
        assert col in smp.columns
    for col in ("mode", "services", "target", "round", "program_s", "sent", "answered", "valid"):
        assert col in pts.columns
    assert len(pts) == 2 * 2 * 2 and len(smp) == 8 * 60
    assert (smp["probe"] == "syn").all() and smp["ok"].all(), smp[~smp["ok"]].head()
    assert pts["valid"].all(), pts["reason"].tolist()
    assert meta["complete"] and meta["kernel_release"] == os.uname().release
    assert meta["params"]["probes"] == 60 and "sweep" in meta["command"]
    # the service datapath costs time: in one node of 3,000 services the last VIP (a
    # walk of 3,000 rules, ~17 us with legacy) is slower than the first.  Compared
    # inside one block, not across blocks: CI once saw the 0-service block, measured
    # on a busier machine, 1.5 us slower than the 2,000-service one.
    med = smp.groupby(["mode", "services", "target"])["rtt_us"].median()
    for mode in ("iptables-legacy", "iptables-nft"):
        assert med[(mode, 3000, "last")] > med[(mode, 3000, "first")] + 5, med[mode]


@pytest.mark.root
def test_paced_and_back_to_back_points_with_ebpf_path_counters(tmp_path):
    """One run measures both pacings; every eBPF point proves its service
    packets bypassed the stack (counter deltas stored per point)."""
    out = tmp_path / "paced"
    cp = run_cli("sweep", "--modes", "ebpf,nftables", "--services", "1,50", "--targets", "last,none",
                 "--probes", "100", "--rounds", "1", "--pacing", "0,1000", "--out", str(out))
    assert cp.returncode == 0, cp.stderr
    pts = pd.read_parquet(out / "points.parquet")
    smp = pd.read_parquet(out / "samples.parquet")
    assert len(pts) == 2 * 2 * 2 * 2 and pts["valid"].all(), pts["reason"].tolist()
    assert sorted(pts["pacing"].unique()) == [0.0, 1000.0] and set(smp["pacing"]) == {0.0, 1000.0}
    paced = pts[pts["pacing"] > 0]
    assert ((paced["finished"] - paced["started"]) > 0.05).all()    # 100 gaps of 1 ms on average
    eb = pts[pts["mode"] == "ebpf"]
    assert (eb["stack_pkts"] == 0).all()
    svc = eb[eb["target"] == "last"]
    assert (svc["redirected_pkts"] >= 2 * svc["answered"]).all(), svc[["redirected_pkts", "answered"]]
    assert (pts.loc[pts["mode"] == "nftables", ["stack_pkts", "redirected_pkts"]] == -1).all().all()


@pytest.mark.root
def test_end_rounds_measure_the_ends_with_their_kinds_only(tmp_path):
    """end_rounds on the real kernel: iptables-nft's second round has blocks at 1 and
    200 services only, measuring http-new only, and no control-plane operations;
    the first round is whole."""
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({
        "modes": ["iptables-nft"], "services": [1, 50, 200], "targets": ["last"], "probes": 20,
        "warmup": 2, "rounds": 1, "probe_kinds": ["syn", "http-new"], "end_rounds": {"iptables-nft": 2},
        "end_kinds": ["http-new"]}))
    out = tmp_path / "run"
    cp = run_cli("sweep", "--params", str(params), "--out", str(out))
    assert cp.returncode == 0, cp.stderr
    pts = pd.read_parquet(out / "points.parquet")
    ctl = pd.read_parquet(out / "control.parquet")
    assert pts["valid"].all(), pts["reason"].tolist()
    first, end = pts[pts["round"] == 0], pts[pts["round"] == 1]
    assert sorted(first["services"].unique()) == [1, 50, 200] and set(first["probe"]) == {"syn", "http-new"}
    assert sorted(end["services"]) == [1, 200] and set(end["probe"]) == {"http-new"}
    assert set(ctl["round"]) == {0}


@pytest.mark.root
def test_sweep_notebook_runs_with_tiny_parameters(tmp_path):
    out = tmp_path / "nb"
    pm.execute_notebook(os.path.join(ROOT, "notebooks", "sweep.ipynb"), str(tmp_path / "sweep.ipynb"),
                        parameters=dict(modes=["iptables-nft"], services=[0, 50], targets=["last"],
                                        probes=20, rounds=1, warmup=2, out_dir=str(out)),
                        kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    pts = pd.read_parquet(out / "points.parquet")
    assert len(pts) == 2 and pts["valid"].all()


def test_sweep_notebook_refuses_an_unknown_parameter_like_the_cli(tmp_path):
    """papermill only warns about a name the notebook lacks; the notebook
    refuses it before any namespace exists, with the CLI's message (no root)."""
    with pytest.raises(pm.PapermillExecutionError, match=r"unknown parameter\(s\): service"):
        pm.execute_notebook(os.path.join(ROOT, "notebooks", "sweep.ipynb"), str(tmp_path / "nb.ipynb"),
                            parameters={"service": [1, 10], "out_dir": str(tmp_path / "o")},
                            progress_bar=False, cwd=str(tmp_path))
    assert not (tmp_path / "o").exists()


@pytest.mark.root
def test_make_sweep_refuses_an_unknown_parameter_like_the_cli(tmp_path):
    """``make sweep`` with a misspelt key: the CLI's one line and exit 2
    (make's own status then 2 too), and no run directory; ``labkit sweep``
    with the same file says the same."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("modes: [nftables]\nservice: [1, 10]\n")
    run = tmp_path / "run"
    cp = subprocess.run(["make", "--no-print-directory", "sweep", f"PARAMS={bad}", f"RUN={run}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert cp.returncode == 2 and not run.exists(), cp.stdout[-2000:] + cp.stderr[-2000:]
    msg = [ln for ln in cp.stderr.splitlines() if "unknown parameter" in ln]
    assert msg == ["labkit: error: unknown parameter(s): service; known: " + msg[0].split("known: ")[1]]
    cli = subprocess.run([sys.executable, "-m", "labkit", "sweep", "--params", str(bad), "--out", str(run)],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and cli.stderr.strip() == msg[0] and not run.exists()


def test_the_default_run_is_reachable_through_the_sweep_notebook(tmp_path):
    """Issue 23: papermill runs notebooks/sweep.ipynb with params/default.yaml
    (its parameter-file-only keys included) to the same plan as
    `labkit sweep --params params/default.yaml --dry-run` (no root: a dry run
    measures nothing and creates nothing)."""
    with open(os.path.join(ROOT, "params", "default.yaml")) as f:
        params = yaml.safe_load(f)
    out = tmp_path / "nb.ipynb"
    pm.execute_notebook(os.path.join(ROOT, "notebooks", "sweep.ipynb"), str(out),
                        parameters={**params, "dry_run": True, "out_dir": str(tmp_path / "o")},
                        kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    text = "".join(o.get("text", "") for c in nbformat.read(str(out), as_version=4).cells
                   if c.cell_type == "code" for o in c.get("outputs", []))
    cp = subprocess.run([sys.executable, "-m", "labkit", "sweep", "--params", "params/default.yaml", "--dry-run"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    plan = cp.stdout.splitlines()[0].split("; estimated")[0]    # "1,440 points in ... blocks, ... probes"
    assert plan in text, (plan, text[-2000:])
    assert not (tmp_path / "o").exists()


def test_a_patched_syn_frame_is_byte_for_byte_scapys_own():
    """SynProber.frame writes each probe's IP id, source port and sequence number
    into a frame scapy built once and recomputes both checksums; every frame must
    equal scapy's full build of the same probe (no root: nothing is sent)."""
    topo = types.SimpleNamespace(client_if="lkc0", node_client_if="lkn0", client_ip="10.255.0.2")
    lab = types.SimpleNamespace(topo=topo, macs={"lkc0": "02:00:00:00:00:01", "lkn0": "02:00:00:00:00:02"})
    pr = SynProber(lab, seed=7)     # type: ignore[arg-type]
    rng = random.Random(3)
    for k in range(400):
        dst = f"10.96.{rng.randrange(256)}.{rng.randrange(1, 255)}" if k % 4 else "10.96.0.1"
        args = (dst, rng.choice([80, 8080, 443]), rng.randrange(1024, 65536), rng.getrandbits(32),
                rng.getrandbits(16))
        assert pr.frame(*args) == pr.scapy_frame(*args), args
    lab.macs["lkn0"] = "02:00:00:00:00:03"          # a new node: its veth has a new MAC
    assert pr.frame("10.96.0.1", 80, 2000, 5, 6) == pr.scapy_frame("10.96.0.1", 80, 2000, 5, 6)
    p = pr.craft(4, "10.96.0.5", 80)
    assert p.frame == pr.scapy_frame("10.96.0.5", 80, p.sport, p.seq, int.from_bytes(p.frame[18:20], "big"))


@pytest.mark.parametrize("counts", [[10, 10, 10, 10], [30, 5, 5, 10, 12, 8, 9, 11, 6, 4], [0, 0, 50], [7, 9]])
def test_the_endpoint_spread_test_is_pearsons_chi_square(counts):
    """uniform_p is scipy.stats.chisquare's p-value without importing scipy.stats
    (slow in user-mode Linux)."""
    assert uniform_p(np.array(counts)) == pytest.approx(chisquare(counts).pvalue, rel=1e-9, abs=1e-15)

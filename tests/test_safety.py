"""Root-safety (README "Safety"): labkit runs as root and must never harm what is not its
own.  Each test holds one guarantee: no predictable paths (a planted symlink changes
nothing), `clean` acts only on runs it proves dead, `--out` never overwrites a user's
files, resume loses no rows, bad input gets one line, the backend tap never overflows."""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import _labkit_namespaces, host_modes

from labkit import cli
from labkit.core.catalog import ServiceCatalog
from labkit.core.topology import new_run_id
from labkit.datapaths import MODES, Ebpf
from labkit.host import netns, state
from labkit.host.clean import clean
from labkit.host.state import RunState, proc_start
from labkit.lab.lab import Lab
from labkit.rundir import provenance, schema, store
from labkit.runs.params import SweepParams
from labkit.runs.sweep import run_sweep

NOBODY = 65534


def labkit(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labkit", *args], capture_output=True, text=True,
                          timeout=timeout)


def as_nobody(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, user=NOBODY, group=NOBODY,
                          extra_groups=[], timeout=30)


def _bpf_mounts() -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[2] == "bpf"]


# ---- no predictable paths ---------------------------------------------------------------

@pytest.mark.root
def test_a_planted_symlink_cannot_redirect_the_bpffs_mount(tmp_path):
    """An unprivileged user who knows the run id plants symlinks where older labkits
    mounted their bpffs; the run's mount point is inside its private work directory,
    which that user cannot enter, and nothing is mounted over the symlink's target."""
    if "ebpf" not in host_modes():
        pytest.skip("ebpf does not run on this host kernel")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    os.chmod(tmp_path, 0o755)
    os.chmod(victim, 0o777)
    cat = ServiceCatalog(5, 2)
    with Lab(endpoint_cidr=cat.endpoint_cidr) as lab:
        planted = f"/tmp/labkit-{lab.run_id}-bpffs"
        cp = as_nobody("ln", "-s", str(victim), planted)
        assert cp.returncode == 0, cp.stderr
        try:
            dp = Ebpf(lab)
            dp.setup(cat)
            mounts = lab.state.mounts
            assert len(mounts) == 1 and mounts[0].startswith(lab.workdir + "/")
            assert mounts[0] in _bpf_mounts() and str(victim) not in _bpf_mounts()
            st = os.lstat(lab.workdir)
            assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700
            assert as_nobody("touch", os.path.join(lab.workdir, "x")).returncode != 0
            assert as_nobody("ls", lab.workdir).returncode != 0
            dp.teardown()
        finally:
            os.unlink(planted)
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not [m for m in _bpf_mounts() if lab.run_id in m]


def test_the_state_directory_is_refused_when_it_is_not_private(tmp_path):
    link = tmp_path / "state"
    os.symlink(tmp_path, link)
    with pytest.raises(Exception, match="not a private directory"):
        state.private_dir(str(link))
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    os.chmod(open_dir, 0o777)
    with pytest.raises(Exception, match="not a private directory"):
        state.private_dir(str(open_dir))
    assert state.private_dir(str(tmp_path / "new")) == str(tmp_path / "new")
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o700


# ---- clean: only what is provably a dead run's ----------------------------------------------

@pytest.mark.root
@pytest.mark.slow
def test_clean_at_any_moment_never_disturbs_a_running_sweep(tmp_path):
    """`labkit clean` runs back to back from before a sweep starts until it ends: the
    sweep completes with every point valid, and clean removed nothing."""
    mode = "nftables" if "nftables" in host_modes() else host_modes()[0]
    out = tmp_path / "run"
    sweep = subprocess.Popen([sys.executable, "-m", "labkit", "sweep", "--modes", mode, "--services", "0,50",
                              "--targets", "last", "--probes", "60", "--warmup", "2", "--rounds", "5",
                              "--kernel", "host", "--out", str(out), "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    removed, cleans = [], 0
    try:
        while sweep.poll() is None:
            cp = labkit("clean", timeout=120)
            assert cp.returncode == 0, cp.stderr
            removed += [ln for ln in cp.stdout.splitlines() if ln.startswith("removed")]
            cleans += 1
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, sweep.stderr.read()
    assert cleans >= 3 and not removed, removed
    pts = pd.read_parquet(out / schema.POINTS)
    # a block disturbed by the clean storm is measured once more (labkit.core.disturbed)
    assert (pts["remeasure_of"] < 0).sum() == 2 * 5 and pts["valid"].all()


@pytest.fixture
def foreign_things():
    """Things that only look like labkit's: another user's directories under /tmp, a
    namespace of another tool with a process in it, an unrecorded name of labkit's
    exact pattern."""
    dirs = ["/tmp/labkit-backup", "/tmp/labkit-2024q3-photos"]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "file.txt"), "w") as f:
            f.write("not labkit's")
        os.chown(d, NOBODY, NOBODY)
    lookalike = "/tmp/labkit-zzzzzz-abcdefgh"       # labkit's pattern, but another user's
    os.makedirs(lookalike, exist_ok=True)
    os.chown(lookalike, NOBODY, NOBODY)
    netns.create("lk-office-vpn")
    proc = subprocess.Popen(["ip", "netns", "exec", "lk-office-vpn", "sleep", "300"])
    netns.create("lk-qqqqqq-cl")                      # exact pattern, no state file
    yield dirs + [lookalike], "lk-office-vpn", "lk-qqqqqq-cl", proc
    proc.kill()
    proc.wait()
    for ns in ("lk-office-vpn", "lk-qqqqqq-cl"):
        if ns in netns.list_namespaces():
            netns.remove(ns)
    for d in dirs + [lookalike]:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.root
def test_foreign_files_and_namespaces_survive_clean(foreign_things):
    dirs, foreign_ns, unrecorded_ns, proc = foreign_things
    cp = labkit("clean")
    assert cp.returncode == 0, cp.stderr
    assert f"left alone: namespace {unrecorded_ns}" in cp.stdout
    assert unrecorded_ns in netns.list_namespaces()
    cp = labkit("clean", "--force")      # removes the unrecorded labkit-pattern namespace only
    assert cp.returncode == 0, cp.stderr
    assert f"removed namespace {unrecorded_ns}" in cp.stdout
    assert unrecorded_ns not in netns.list_namespaces()
    assert foreign_ns in netns.list_namespaces() and proc.poll() is None
    for d in dirs:
        assert os.path.exists(os.path.join(d, "file.txt")) or os.path.isdir(d), d


@pytest.mark.root
def test_clean_never_kills_a_reused_pid(tmp_path):
    """A dead run's state file names a pid that now belongs to another process (its
    start time differs): clean leaves that process alone.  With the right start time
    the same record is the run's own process, and clean stops it."""
    victim = subprocess.Popen(["sleep", "300"])
    try:
        start = proc_start(victim.pid)
        assert start is not None
        for recorded_start, survives in ((start + 1, True), (start, False)):
            st = RunState("deadr" + ("1" if survives else "2"), pid=999_999_99, pid_start=12345,
                          pids=[[victim.pid, recorded_start]])
            state.private_dir(state.STATE_DIR)
            st.save()
            with open(st.lock_file, "w"):
                pass               # a lock file nobody holds: the run is dead
            clean()
            time.sleep(0.2)
            assert (victim.poll() is None) == survives
            assert not os.path.exists(st.file) and not os.path.exists(st.lock_file)
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.wait()


@pytest.mark.root
def test_a_live_run_holds_its_lock_and_a_dead_one_does_not(tmp_path):
    cat = ServiceCatalog(0)
    with Lab(endpoint_cidr=cat.endpoint_cidr, server=False) as lab:
        other = RunState.load(lab.state.file)
        assert other.owner_alive() and state.lock_held(lab.run_id)
        report = clean()
        assert not [r for r in report.removed if lab.run_id in r]
        assert set(lab.topo.namespaces) <= set(netns.list_namespaces())
    assert not state.lock_held(lab.run_id) and not os.path.exists(lab.state.file)


@pytest.mark.root
def test_clean_removes_a_lock_file_no_run_holds_and_keeps_a_held_one():
    """What a run killed between removing its state file and its lock file leaves (a
    lock file alone) is removed by clean, once no process holds it; a held one is a
    live run's, and stays.  A state file a dead process was writing goes too."""
    state.private_dir(state.STATE_DIR)
    dead, held, tmp_of = new_run_id(), new_run_id(), new_run_id()
    gone = subprocess.Popen(["true"])
    gone.wait()
    paths = {k: os.path.join(state.STATE_DIR, n) for k, n in (
        ("dead", f"{dead}.lock"), ("held", f"{held}.lock"), ("tmp", f"{tmp_of}.json.tmp{gone.pid}-0123456789ab"))}
    for p in paths.values():
        with open(p, "w"):
            pass
    fd = os.open(paths["held"], os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        report = clean()
        assert not os.path.exists(paths["dead"]) and not os.path.exists(paths["tmp"])
        assert os.path.exists(paths["held"])
        assert any(paths["dead"] in r for r in report.removed), report.removed
        assert any(paths["tmp"] in r for r in report.removed), report.removed
        assert not [r for r in report.removed if held in r]
        cp = labkit("clean")   # and the command says so
        assert cp.returncode == 0 and held not in cp.stdout, cp.stdout
    finally:
        os.close(fd)
        for p in paths.values():
            if os.path.exists(p):
                os.unlink(p)


def test_a_state_file_is_written_atomically_private_and_never_through_a_link(tmp_path, monkeypatch):
    """RunState.save goes through the one atomic write: 0600, no temporary file left,
    a symbolic link planted under the state file's name replaced, its target untouched."""
    monkeypatch.setattr(state, "STATE_DIR", str(tmp_path))
    st = RunState(new_run_id())
    target = tmp_path / "target"
    target.write_text("theirs")
    os.symlink(target, st.file)
    st.add("namespaces", "lk-x-cl")
    assert target.read_text() == "theirs" and not os.path.islink(st.file)
    assert json.loads(open(st.file).read())["namespaces"] == ["lk-x-cl"]
    assert stat.S_IMODE(os.stat(st.file).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == sorted(["target", os.path.basename(st.file)])


# ---- --out never overwrites what is not this run's -------------------------------------------

SMALL = ["--services", "0", "--targets", "last", "--probes", "5", "--warmup", "0", "--rounds", "1",
         "--kernel", "host", "--quiet"]


@pytest.mark.root
def test_out_refuses_a_directory_with_a_users_files(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "samples.parquet").write_bytes(b"my own table")
    (d / "notes.txt").write_text("mine")
    mode = host_modes()[0]
    cp = labkit("sweep", "--modes", mode, *SMALL, "--out", str(d))
    assert cp.returncode == 2 and len(cp.stderr.strip().splitlines()) == 1, cp.stderr
    assert (d / "samples.parquet").read_bytes() == b"my own table"
    assert sorted(os.listdir(d)) == ["notes.txt", "samples.parquet"]


@pytest.mark.root
def test_one_run_kind_never_overwrites_anothers_table(tmp_path):
    d = tmp_path / "run"
    mode = host_modes()[0]
    cp = labkit("control", "--modes", mode, "--services", "0,5", "--endpoints", "2", "--out", str(d),
                "--quiet")
    assert cp.returncode == 0, cp.stderr
    before = (d / schema.CONTROL).read_bytes()
    cp = labkit("sweep", "--modes", mode, *SMALL, "--out", str(d))
    assert cp.returncode == 2 and "control.parquet" in cp.stderr, cp.stderr
    assert (d / schema.CONTROL).read_bytes() == before
    # the CPU experiment may join a sweep's directory: it owns no table there
    s = tmp_path / "sweep"
    assert labkit("sweep", "--modes", mode, *SMALL, "--out", str(s)).returncode == 0
    cp = labkit("cpu", "--modes", mode, "--services", "0", "--rounds", "1", "--seconds", "0.2",
                "--out", str(s), "--quiet")
    assert cp.returncode == 0, cp.stderr
    assert {schema.CPU, schema.CPU_META, schema.POINTS} <= set(os.listdir(s))


@pytest.mark.root
def test_a_refused_run_leaves_no_directory(tmp_path):
    out = tmp_path / "never"
    lacking = [m for m in ("ipvs", "nftables", "ebpf") if m not in host_modes()]
    if not lacking:
        pytest.skip("every mode runs on this host")
    cp = labkit("sweep", "--modes", lacking[0], *SMALL, "--out", str(out))
    assert cp.returncode == 3, cp.stderr
    assert not out.exists()


@pytest.mark.root
def test_a_signal_during_a_guest_boot_removes_the_empty_out_it_made(tmp_path, capsys, monkeypatch):
    """SIGTERM/Ctrl-C while the guest kernel boots (nothing measured yet): the --out
    directory this command created is removed again; once a table is there it stays."""
    measured = False

    def booting(where, command, args, out_dir, kind, **kw):
        os.makedirs(out_dir, exist_ok=True)   # as the real relaunch: the guest's facts, planned
        store.write_json(os.path.join(out_dir, schema.GUEST_FACTS), {"backend": where, "planned": True})
        if measured:
            store.write_json(os.path.join(out_dir, schema.POINTS), {})
        raise KeyboardInterrupt("signal 15")
    monkeypatch.setattr(cli, "choose_kernel", lambda *a, **kw: ("uml", "user-mode Linux (test)"))
    monkeypatch.setattr(cli, "relaunch", booting)
    for measured in (False, True):
        out = tmp_path / f"run-{measured}"
        code = cli.main(["sweep", "--kernel", "uml", "--modes", "nftables", "--services", "0", "--probes", "5",
                         "--out", str(out), "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 130 and err[-1] == "labkit: interrupted", err
        assert out.exists() == measured, (measured, os.listdir(out) if out.exists() else None)
    assert schema.POINTS in os.listdir(tmp_path / "run-True")


# ---- resume: every table, stale temp files, finished runs ---------------------------------

def _kill_when(out, table, n, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = out / table
        if p.exists():
            try:
                if len(pd.read_parquet(p)) >= n:
                    break
            except Exception:
                pass
        if proc.poll() is not None:
            raise AssertionError(f"ended early: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sweep", "control", "cpu"])
def test_every_run_kind_resumes_after_sigkill_with_no_row_lost_or_repeated(tmp_path, kind):
    mode = "iptables-legacy" if "iptables-legacy" in host_modes() else host_modes()[0]
    out = tmp_path / kind
    args = {"sweep": ["sweep", "--modes", mode, "--services", "0,30,60", "--targets", "last", "--probes",
                      "20", "--warmup", "2", "--rounds", "2", "--kernel", "host"],
            "control": ["control", "--modes", mode, "--services", "0,30,60", "--endpoints", "2",
                        "--rounds", "2"],
            "cpu": ["cpu", "--modes", mode, "--services", "0,30,60", "--rounds", "2", "--seconds", "0.3"]}[kind]
    table = {"sweep": schema.CONTROL, "control": schema.CONTROL, "cpu": schema.CPU}[kind]
    # control: program, add, remove, an endpoint change and a burst (not at 0 services);
    # for iptables every change again as a full sync, for nftables through nft -f
    cls = MODES[mode]
    paths = max(1, len(cls.CHANGE_LOADERS)) + cls.full_sync
    ctl = [1 + paths * (2 + 2 * (n > 0 and cls.changes_endpoints)) for n in (0, 30, 60)]
    total = 2 * {"sweep": 9, "control": sum(ctl), "cpu": 3}[kind]
    kill_at = {"sweep": 7, "control": ctl[0] + ctl[1] + 1, "cpu": 3}[kind]   # in the third block or so
    proc = subprocess.Popen([sys.executable, "-m", "labkit", *args, "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LABKIT_FLUSH_S": "0"})  # every row written at once
    _kill_when(out, table, kill_at, proc)
    (out / ".tmp-killedwrite.parquet").write_bytes(b"")  # what a kill during a write leaves
    assert labkit("clean").returncode == 0
    cp = labkit(kind, "--resume", "--out", str(out), "--quiet")
    assert cp.returncode == 0, cp.stderr
    df = pd.read_parquet(out / table)
    assert len(df) == total
    key = ["block", "op", "kind", "loader"] if "op" in df.columns else ["block", "target"]
    assert not df.duplicated(key).any()
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    meta = json.loads((out / schema.KINDS[kind].meta).read_text())
    assert meta["complete"] and len(meta["resumed"]) == 1 and sorted(meta["blocks_done"]) == list(range(6))
    if kind == "sweep":
        pts = pd.read_parquet(out / schema.POINTS)
        smp = pd.read_parquet(out / schema.SAMPLES)
        assert len(pts) == 6 and pts["point_id"].is_unique and len(smp) == 6 * 20


@pytest.mark.root
def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    out = tmp_path / "done"
    p = SweepParams.from_dict(dict(modes=[host_modes()[0]], services=[0], targets=["last"], probes=5,
                                   rounds=1, warmup=0, kernel="host"))
    run_sweep(p, str(out), progress=False)
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    cp = labkit("sweep", "--resume", "--out", str(out), "--quiet")
    assert cp.returncode == 0 and "nothing to resume" in cp.stderr, cp.stderr
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before


def _crafted_run(tmp_path, name, kind="sweep", **fields):
    d = tmp_path / name
    d.mkdir()
    if kind == "sweep":
        params = SweepParams.from_dict(dict(modes=[host_modes()[0]], services=[0], targets=["last"], probes=5,
                                            rounds=1, warmup=0, kernel="host")).to_dict()
    else:
        params = {"modes": [host_modes()[0]], "services": [0], "endpoints": 2, "rounds": 1, "seed": 1,
                  "verify": True}
    meta = {"schema_version": schema.SCHEMA_VERSION, "kind": kind, "experiment": kind, "run_id": "",
            "params": params, "command": "x", "started": 1.0, "finished": None, "complete": False,
            "blocks_done": [], **fields}
    (d / schema.KINDS[kind].meta).write_text(json.dumps(meta))
    return str(d)


CRAFTED = [({"blocks_done": [None]}, "blocks_done"), ({"blocks_done": ["../x"]}, "blocks_done"),
           ({"blocks_done": "0,1"}, "blocks_done"), ({"blocks_done": [True]}, "blocks_done"),
           ({"resumed": "yesterday"}, "resumed"), ({"host": "box"}, "host"), ({"tools": ["nft"]}, "tools"),
           ({"complete": "yes"}, "complete"), ({"params": {"modes": 5}}, "params"),
           ({"params": {"modes": ["nftables"], "evil": 1}}, "unknown parameter")]


@pytest.mark.root
@pytest.mark.parametrize("fields, named", CRAFTED, ids=[n + str(i) for i, (_, n) in enumerate(CRAFTED)])
def test_resume_refuses_a_meta_file_that_is_not_a_valid_run(tmp_path, capsys, fields, named):
    """A crafted meta.json on resume: one line "not a valid labkit run" naming the
    field, exit 2, before any namespace exists (issue 26 had tracebacks)."""
    out = _crafted_run(tmp_path, "run", **fields)
    before = _labkit_namespaces()
    code = cli.main(["sweep", "--resume", "--out", out, "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "is not a valid labkit run" in lines[0] and named in lines[0], lines
    assert _labkit_namespaces() <= before


@pytest.mark.root
def test_resume_refuses_a_meta_file_that_is_a_fifo(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / schema.META)
    cp = labkit("sweep", "--resume", "--out", str(out), "--quiet", timeout=60)
    lines = cp.stderr.strip().splitlines()
    assert cp.returncode == 2 and len(lines) == 1 and "is a FIFO, not a regular file" in lines[0], cp.stderr
    assert "not valid JSON" not in lines[0]


@pytest.mark.root
def test_resume_refuses_stored_parameters_an_experiment_does_not_take(tmp_path, capsys):
    out = _crafted_run(tmp_path, "ctl", kind="control", params={"modes": [host_modes()[0]], "services": [0],
                                                                "evil": 1})
    code = cli.main(["control", "--resume", "--out", out, "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "is not a valid labkit run: its params" in lines[0], lines


# ---- one line for every bad input, before any namespace exists --------------------------------

def _prepare(tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "latin1.yaml").write_bytes(b"modes: [caf\xe9]\n")
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "table.parquet")
    (tmp_path / "file").write_text("x")
    for name, meta in (("truncated", '{"params": {"modes": ['), ("noparams", '{"run_id": "x"}'),
                       ("alist", "[1, 2]"), ("astring", '"run"')):
        d = tmp_path / name
        d.mkdir()
        (d / "meta.json").write_text(meta)
        for table in ("samples.parquet", "points.parquet"):
            pd.DataFrame({"a": [1]}).to_parquet(d / table)
    d = tmp_path / "corrupt"
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"params": SweepParams().to_dict(),
                                             "blocks_done": [0], "kind": "sweep"}))
    (d / "points.parquet").write_bytes(b"PAR1 garbage")
    for name, data in (("zero", b""), ("random", os.urandom(300)), ("cut", None)):
        r = tmp_path / f"rep-{name}"
        r.mkdir()
        (r / "meta.json").write_text("{}")
        if data is None:
            pd.DataFrame({"x": range(1000)}).to_parquet(r / "samples.parquet")
            data = (r / "samples.parquet").read_bytes()[:200]
        (r / "samples.parquet").write_bytes(data)
        (r / "points.parquet").write_bytes(data)


BAD = [
    (["sweep", "--params", "{t}/adir", "--out", "{t}/o"], 2, "is a directory"),
    (["sweep", "--params", "{t}/latin1.yaml", "--out", "{t}/o"], 2, "not UTF-8"),
    (["sweep", "--params", "{t}/table.parquet", "--out", "{t}/o"], 2, "parameter file"),
    pytest.param(["sweep", "--resume", "--out", "{t}/truncated"], 2, "not valid JSON", marks=pytest.mark.root),
    pytest.param(["sweep", "--resume", "--out", "{t}/noparams"], 2, "no params mapping", marks=pytest.mark.root),
    pytest.param(["sweep", "--resume", "--out", "{t}/corrupt"], 2, "cannot be read", marks=pytest.mark.root),
    (["control", "--modes", "nftables", "--services", "0", "--out", "{t}/file"], 2, "not a directory"),
    pytest.param(["control", "--modes", "nftables", "--services", "0", "--out", "/proc/x"], 2, "cannot be created", marks=pytest.mark.root),
    (["cpu", "--modes", "nftables", "--services", "0", "--out", "{t}/file"], 2, "not a directory"),
    pytest.param(["cpu", "--modes", "nftables", "--services", "0", "--out", "/proc/x"], 2, "cannot be created", marks=pytest.mark.root),
    (["report", "{t}/rep-zero"], 2, "not a readable parquet table"),
    (["report", "{t}/rep-random"], 2, "not a readable parquet table"),
    (["report", "{t}/rep-cut"], 2, "not a readable parquet table"),
    (["report", "{t}/alist"], 2, "not a labkit meta file"),
    (["report", "{t}/astring"], 2, "not a labkit meta file"),
    (["report", "data/reference/host-6.18", "--out-dir", "/proc/x"], 2, "cannot be created|not writable"),
    (["bench", "program", "--repeat", "0"], 2, "repeat must be in 1"),
    (["bench", "program", "--repeat", "-1"], 2, "repeat must be in 1"),
    (["bench", "send", "--seconds", "nan"], 2, "seconds must be a number"),
    (["bench", "send", "--seconds", "0"], 2, "seconds must be a number"),
    (["sweep", "--services", "\u0663,\uff15", "--out", "{t}/o"], 2, "ASCII digits"),
    (["control", "--services", "\u0663", "--out", "{t}/o"], 2, "ASCII digits"),
]


def _id(row) -> str:
    argv, _, msg = row.values if hasattr(row, "values") else row
    return " ".join(argv[:3]) + f" {msg}"


@pytest.mark.parametrize("argv, code, msg", BAD, ids=[_id(r) for r in BAD])
def test_bad_input_gets_one_line_before_any_namespace(tmp_path, argv, code, msg):
    _prepare(tmp_path)
    before = _labkit_namespaces()
    root = os.path.join(os.path.dirname(__file__), "..")
    cp = subprocess.run([sys.executable, "-m", "labkit", *[a.format(t=tmp_path) for a in argv]],
                        capture_output=True, text=True, timeout=120, cwd=root)
    lines = cp.stderr.strip().splitlines()
    assert cp.returncode == code and len(lines) == 1 and re.search(msg, lines[0]), cp.stderr
    assert _labkit_namespaces() <= before
    assert not (tmp_path / "o").exists()


# ---- the backend tap is read while probing ----------------------------------------------------

@pytest.mark.root
@pytest.mark.slow
def test_many_probes_per_point_are_all_seen_at_the_backend(tmp_path):
    """More SYNs than the backend tap's buffer holds: the tap is read while probing."""
    mode = next((m for m in ("ebpf", "nftables") if m in host_modes()), host_modes()[0])
    p = SweepParams.from_dict(dict(modes=[mode], services=[10], targets=["last"], probes=30000,
                                   warmup=0, rounds=1, kernel="host"))
    out = run_sweep(p, str(tmp_path / "big"), progress=False)
    pts = pd.read_parquet(os.path.join(out, schema.POINTS))
    smp = pd.read_parquet(os.path.join(out, schema.SAMPLES))
    assert (smp["error"] == "unseen-at-backend").sum() == 0
    # what this checks is the tap, not the machine: a probe or two lost to a busy 2-core
    # host (an answer later than the timeout) is no tap overflow, which loses thousands
    lost = int(pts["lost"].sum())
    assert lost <= 3, pts["reason"].tolist()
    assert pts["valid"].all() or all("unanswered (timeout" in r for r in pts["reason"]), pts["reason"].tolist()


# ---- smaller guarantees ---------------------------------------------------------------------

def test_provenance_never_takes_gits_optional_locks(monkeypatch):
    seen = {}

    def fake_run(argv, **kw):
        seen["env"] = kw.get("env") or {}
        return subprocess.CompletedProcess(argv, 0, "abc123\n", "")
    monkeypatch.delenv("LABKIT_GIT_REVISION", raising=False)
    monkeypatch.setattr(provenance.subprocess, "run", fake_run)
    assert provenance.git_revision() == "abc123"
    assert seen["env"].get("GIT_OPTIONAL_LOCKS") == "0"


def test_tool_versions_are_versions_not_error_messages():
    assert provenance.parse_version("modprobe: FATAL: Module ip_vs not found\n") == "unknown"
    assert provenance.parse_version("ipvsadm v1.31 2019/12/24 (compiled with popt and IPVS v1.2.1)") \
        .startswith("ipvsadm v1.31")
    assert provenance.parse_version("nftables v1.0.6 (Lester Gooch #5)") == "nftables v1.0.6 (Lester Gooch #5)"
    # what ipvsadm prints on a kernel without IPVS: the kernel release looks like a version
    assert provenance.parse_version("modprobe: FATAL: Module ip_vs not found in directory "
                                    "/lib/modules/6.18.44-fc-v1147\nCan't initialize ipvs: Protocol not "
                                    "available\n") == "unknown"
    v = provenance.tool_version(["ipvsadm", "--version"])
    assert "FATAL" not in v and "modprobe" not in v, v


def test_run_files_are_readable_by_everyone(tmp_path):
    store.write_table(str(tmp_path / "t.parquet"), pd.DataFrame({"a": [1]}))
    store.write_json(str(tmp_path / "m.json"), {"a": 1})
    for n in ("t.parquet", "m.json"):
        assert stat.S_IMODE(os.stat(tmp_path / n).st_mode) == 0o644


def test_stale_temps_go_and_one_a_live_writer_renamed_meanwhile_is_skipped(tmp_path, monkeypatch):
    """A segment run in user-mode Linux once died of ENOENT here: it listed the run
    directory while the host's gauge renamed its load.json temporary away.  Now a
    temporary that is gone is skipped (and segment runs leave temporaries alone)."""
    (tmp_path / ".tmp-0123456789abm.json").write_text("{}")
    (tmp_path / "m.json").write_text("{}")
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda d: [*real(d), ".tmp-renamedawayload.json"])
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert store.remove_stale_temps(fd) == [".tmp-0123456789abm.json"]
    finally:
        os.close(fd)
    assert sorted(real(tmp_path)) == ["m.json"]


def test_a_run_file_reaches_the_disk_before_its_rename_and_the_rename_after(tmp_path):
    """strace of a real write: the temporary file is fsynced before it is renamed over
    the run file, and the directory after (a crash then leaves the old file or the new
    one, never a torn one, and never loses a rename reported done)."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (make setup installs it)")
    target = tmp_path / "m.json"
    code = f"from labkit.rundir import store; store.write_json({str(target)!r}, {{'a': 1}})"
    cp = subprocess.run([strace, "-f", "-y", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2",
                         sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr[-2000:]
    calls = [ln.split("] ", 1)[-1] for ln in cp.stderr.splitlines()
             if str(tmp_path) in ln and re.match(r"(\[pid +\d+\] )?(fsync|fdatasync|rename)", ln)]
    kinds = [c.split("(", 1)[0] for c in calls]
    assert len(calls) == 3 and kinds[0] in ("fsync", "fdatasync") and kinds[1].startswith("rename") \
        and kinds[2] in ("fsync", "fdatasync"), calls
    tmp_name = os.path.basename(re.search(r"<([^>]+)>", calls[0]).group(1))
    # renamed within the directory held open: renameat(dir, tmp, dir, name), never by path
    m = re.match(r'renameat2?\(\d+<([^>]+)>, "([^"]+)", \d+<([^>]+)>, "([^"]+)"', calls[1])
    assert m and m.group(1) == m.group(3) == str(tmp_path), calls
    assert tmp_name.startswith(schema.TMP_PREFIX) and m.group(2) == tmp_name, calls
    assert m.group(4) == target.name, calls                               # renamed onto the run file
    assert f"<{tmp_path}>" in calls[2], calls                             # then the directory
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["m.json"]

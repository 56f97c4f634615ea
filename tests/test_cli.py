"""The CLI refuses bad input with one line and exit status 2, before any kernel state exists."""
import argparse
import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import papermill as pm
import pytest
import test_report
from conftest import _labkit_namespaces
from test_report import make_run

from labkit import cli
from labkit.core.errors import UsageError
from labkit.host import netns
from labkit.report import build as report
from labkit.rundir import schema
from labkit.runs.outdir import prepare_out
from labkit.runs.params import SweepParams
from labkit.runs.runner import Runner
from labkit.runs.sweep import Sweep


def labkit(*args, **kw):
    return subprocess.run([sys.executable, "-m", "labkit", *args], capture_output=True, text=True,
                          timeout=120, **kw)


BAD = [
    (["sweep", "--modes", "nosuch", "--out", "{tmp}/o"], "unknown mode 'nosuch'"),
    (["sweep", "--modes", "", "--out", "{tmp}/o"], "empty item"),
    (["sweep", "--services", "-5", "--out", "{tmp}/o"], "services must be in 0"),
    (["sweep", "--services", "", "--out", "{tmp}/o"], "empty item"),
    (["sweep", "--services", "ten", "--out", "{tmp}/o"], "must be a whole number"),
    (["sweep", "--services", "0,100,100", "--out", "{tmp}/o"], "given twice"),
    (["sweep", "--probes", "0", "--out", "{tmp}/o"], "probes must be in 1"),
    (["sweep", "--rounds", "0", "--out", "{tmp}/o"], "rounds must be in 1"),
    (["sweep", "--endpoints", "0", "--out", "{tmp}/o"], "endpoints must be in 1"),
    (["sweep", "--targets", "last,nowhere", "--out", "{tmp}/o"], "unknown target 'nowhere'"),
    (["sweep", "--kernel", "cloud", "--out", "{tmp}/o"], "kernel must be one of"),
    (["sweep", "--timeout", "0", "--out", "{tmp}/o"], "timeout must be"),
    (["sweep", "--end-by", "soon", "--out", "{tmp}/o"], "--end-by (seconds since the epoch) must be a number"),
    (["sweep", "--end-by", "90", "--out", "{tmp}/o"], "--end-by (seconds since the epoch) must be a number in"),
    (["sweep", "--services", "0,5000", "--service-cidr", "10.96.0.0/24", "--out", "{tmp}/o"],
     "too small for 5,000 services"),
    (["sweep", "--service-cidr", "10.128.0.0/12", "--out", "{tmp}/o"], "overlaps"),
    (["sweep", "--services", "0,10", "--endpoint-cidr", "172.30.0.0/16", "--out", "{tmp}/o"],
     "lab link network 172.30.0.0/24 overlaps"),
    (["sweep", "--out", "{tmp}/file"], "is not a directory"),
    (["sweep", "--params", "{tmp}/missing.yaml", "--out", "{tmp}/o"], "does not exist"),
    (["sweep", "--params", "{tmp}/bad.yaml", "--out", "{tmp}/o"], "unknown parameter"),
    (["sweep", "--resume", "--out", "{tmp}/o"], "holds no sweep run to resume"),
    (["sweep", "--services", "0"], "the following arguments are required: --out (or --dry-run)"),
    (["sweep", "--dry-run", "--resume"], "--dry-run plans a new run"),
    (["frobnicate"], "invalid choice"),
    (["report", os.path.join(os.path.dirname(__file__), "..", "data", "reference", "control-host-6.18"),
      "--out", "{tmp}/o"], "it holds the runs changes, changes-to-100k"),
]


@pytest.mark.parametrize("argv, msg", BAD, ids=[" ".join(a[:3]) for a, _ in BAD])
def test_bad_input_is_refused_in_one_line(tmp_path, argv, msg):
    (tmp_path / "file").write_text("x")
    (tmp_path / "bad.yaml").write_text("modes: [iptables-nft]\nprobs: 3\n")
    before = _labkit_namespaces()
    cp = labkit(*[a.format(tmp=tmp_path) for a in argv])
    assert cp.returncode == 2, cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], cp.stderr
    assert _labkit_namespaces() <= before
    assert not (tmp_path / "o").exists()


def test_not_root_is_named(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UsageError, match="needs root"):
        netns.require_root()


def test_params_normalize():
    p = SweepParams.from_dict({"modes": "iptables-nft", "services": "10k,0,1000", "probes": "50"})
    assert p.services == [0, 1000, 10000] and p.probes == 50 and p.modes == ["iptables-nft"]


def test_params_from_yaml_files_validate():
    for name in ("default", "quick", "full"):
        SweepParams.from_yaml(os.path.join(os.path.dirname(__file__), "..", "params", f"{name}.yaml"))


def test_out_dir_refuses_to_overwrite_a_run(tmp_path):
    (tmp_path / "meta.json").write_text("{}")
    with pytest.raises(UsageError, match="already holds a sweep run"):
        prepare_out(str(tmp_path), "sweep", resume=False)
    assert prepare_out(str(tmp_path), "sweep", resume=True) == str(tmp_path)


# --- the same refusals through parameter files and papermill -----------------------

BAD_FILES = [
    ("- just\n- a list\n", "must hold a mapping"),
    ("modes: [iptables-nft]\nprobes: many\n", "probes must be a whole number"),
    ("services: {a: 1}\n", "services must be a list"),
    ("modes: [iptables-nft\n", "not valid YAML"),
    ("probes: 1000000\nwarmup: 20\ntargets: [last, none]\n", "fresh source ports"),
    ("endpoints: 2000\n", "endpoints must be in 1..1,000"),
    ("services: [0, 1000001]\n", "services must be in 0..1,000,000"),
    ("timeout: true\n", "timeout must be a number"),
]


@pytest.mark.parametrize("text, msg", BAD_FILES, ids=[m for _, m in BAD_FILES])
def test_bad_parameter_files(tmp_path, text, msg):
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(UsageError, match=msg):
        SweepParams.from_yaml(str(f))
    cp = labkit("sweep", "--params", str(f), "--out", str(tmp_path / "o"))
    assert cp.returncode == 2 and msg in cp.stderr and len(cp.stderr.strip().splitlines()) == 1


@pytest.mark.root   # the output directory is made after the root check
def test_unwritable_output_is_refused(tmp_path):
    cp = labkit("sweep", "--services", "0", "--out", "/proc/labkit-out")
    assert cp.returncode == 2 and "/proc/labkit-out cannot be created" in cp.stderr


@pytest.mark.parametrize("params, msg", [
    (dict(probes=0), "probes must be in 1"),
    (dict(modes=["iptables-nft", "quantum"]), "unknown mode 'quantum'"),
    (dict(services=[0, -1]), "services must be in 0"),
    (dict(endpoint_cidr="10.128.0.0/30", services=[10]), "too small"),
])
def test_bad_papermill_parameters_fail_before_the_kernel(tmp_path, params, msg):
    before = _labkit_namespaces()
    root = os.path.join(os.path.dirname(__file__), "..")
    with pytest.raises(pm.PapermillExecutionError, match=msg):
        pm.execute_notebook(os.path.join(root, "notebooks", "sweep.ipynb"),
                            str(tmp_path / "out.ipynb"), parameters=dict(params, out_dir=str(tmp_path / "o")),
                            kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    assert _labkit_namespaces() <= before and not (tmp_path / "o").exists()


# --- bounded, checked input (issue 26) ----------------------------------------------------

def _main(capsys, *argv):
    """labkit's CLI in this process: (exit status, stderr lines)."""
    code = cli.main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


def test_a_fifo_as_parameter_file_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "p.yaml"
    os.mkfifo(fifo)
    cp = subprocess.run([sys.executable, "-m", "labkit", "params", str(fifo)], capture_output=True, text=True,
                        timeout=60)
    lines = cp.stderr.strip().splitlines()
    assert cp.returncode == 2 and len(lines) == 1 and "is a FIFO, not a regular file" in lines[0], cp.stderr
    assert "torn down" not in cp.stderr


@pytest.mark.parametrize("make, msg", [
    (lambda t: "/dev/zero", "is a device, not a regular file"),
    (lambda t: (t / "big.yaml").write_text("modes: [nftables]\n#" + "x" * (1 << 20)) and str(t / "big.yaml"),
     "at most 1 MiB is read"),
    (lambda t: os.symlink("/etc/hostname", t / "link.yaml") or str(t / "link.yaml"), "is a symbolic link"),
], ids=["dev-zero", "over-1-MiB", "symlink"])
def test_a_parameter_file_must_be_a_small_regular_file(tmp_path, make, msg):
    t0 = time.monotonic()
    with pytest.raises(UsageError, match=msg):
        SweepParams.from_yaml(make(tmp_path))
    assert time.monotonic() - t0 < 5


def _bomb(levels: int, key: str) -> str:
    """A YAML alias bomb: anchors nested in ``seed`` (a known key), and ``key``
    an alias of the last one, 9**(levels+1) items once expanded."""
    names = "abcdefghij"
    inner = "[x, x, x, x, x, x, x, x, x]"
    for p, c in zip(names[:levels], names[1:levels + 1]):
        inner += f", &{c} [{', '.join(['*' + p] * 9)}]"
    return f"seed: [&a {inner}]\n{key}: *{names[levels]}\n"


@pytest.mark.parametrize("key", ["modes", "kernel", "ipvs_scheduler", "service_cidr", "endpoints",
                                 "kernels_by_mode", "targets", "services"])
def test_yaml_aliases_are_refused_before_they_expand(tmp_path, key):
    """A few hundred bytes that expand to 9**6 items (9**9 in issue 26): refused at
    once in one short line, whatever key the bomb hangs from."""
    f = tmp_path / "bomb.yaml"
    f.write_text(_bomb(5, key))
    t0 = time.monotonic()
    with pytest.raises(UsageError, match="anchors and aliases") as exc:
        SweepParams.from_yaml(str(f))
    assert time.monotonic() - t0 < 5 and len(str(exc.value)) < 300
    f.write_text("modes: &m [nftables]\n")   # an anchor alone is refused too
    with pytest.raises(UsageError, match="anchors and aliases"):
        SweepParams.from_yaml(str(f))


@pytest.mark.parametrize("text, msg", [
    ("modes: " + "[" * 100 + "]" * 100 + "\n", "nested more than 32 levels"),
    ("modes: " + "[" * 50000 + "]" * 50000 + "\n", "nested more than|not valid YAML"),
    ("seed: " + "9" * 5000 + "\n", "not valid YAML"),
], ids=["deep", "deeper", "huge-int"])
def test_hostile_yaml_gets_one_short_line(tmp_path, text, msg):
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(UsageError, match=msg) as exc:
        SweepParams.from_yaml(str(f))
    assert len(str(exc.value)) < 300 and "\n" not in str(exc.value)


LONG = "x" * 100_000


@pytest.mark.parametrize("key", ["modes", "targets", "probe_kinds", "kernel", "ipvs_scheduler", "service_cidr",
                                 "endpoint_cidr", "services", "endpoints", "ports", "probes", "rounds",
                                 "warmup", "seed", "timeout", "pacing", "kernels_by_mode", LONG])
def test_every_key_is_checked_and_quoted_short(key):
    """A 100,000-character value (or name) under every key: one line that quotes
    at most a short prefix of it."""
    value = {"kernels_by_mode": {LONG: ["host"]}}.get(key, LONG)
    with pytest.raises(UsageError) as exc:
        SweepParams.from_dict({key: value, "kernel": "host+uml"} if key == "kernels_by_mode" else {key: value})
    msg = str(exc.value)
    assert len(msg) < 400 and "\n" not in msg, msg[:500]
    if key != LONG:
        assert "x" * 60 in msg or key.replace("_", "") in msg.replace("_", "") or "x" * 20 in msg, msg


@pytest.mark.parametrize("kbm, kernel, msg", [
    (5, "host+uml", "kernels_by_mode must be a mapping"),
    ([["nftables"]], "host+uml", "kernels_by_mode must be a mapping"),
    ({"nftables": []}, "host+uml", "at least one is needed"),
    ({"nftables": ["uml"]}, "host", "kernels_by_mode is only for kernel host\\+uml"),
    ({"nftables": ["uml"]}, "auto", "kernels_by_mode is only for kernel host\\+uml"),
    ({"nftables": ["mars"]}, "host+uml", "unknown kernels_by_mode\\[nftables\\] 'mars'"),
    ({"nftables": ["host", "host"]}, "host+uml", "given twice"),
    ({"nftables": ["host"], "warp": ["uml"]}, "host+uml", "'warp' is not one of the run's modes"),
    ({"nftables": ["host"], "ebpf": ["uml"]}, "host+uml", "'ebpf' is not one of the run's modes"),
    ({"nftables": ["host"]}, "host+uml", "names no kernel for mode\\(s\\) iptables-nft"),
], ids=["int", "list", "empty-kernels", "kernel-host", "kernel-auto", "unknown-kernel", "twice",
        "unknown-mode", "mode-not-in-run", "missing-mode"])
def test_kernels_by_mode_is_checked(kbm, kernel, msg):
    modes = ["nftables", "iptables-nft"] if "missing" in msg or "names no" in msg else ["nftables"]
    with pytest.raises(UsageError, match=msg):
        SweepParams.from_dict({"modes": modes, "kernel": kernel, "kernels_by_mode": kbm})


def test_a_valid_kernels_by_mode_is_kept():
    p = SweepParams.from_dict({"modes": "nftables,ebpf", "kernel": "host+uml",
                               "kernels_by_mode": {"ebpf": "host,uml", "nftables": ["host"]}})
    assert p.kernels_by_mode == {"nftables": ["host"], "ebpf": ["host", "uml"]}
    assert SweepParams.from_dict({"kernel": "host", "kernels_by_mode": {}}).kernels_by_mode == {}


def test_control_refuses_a_count_given_twice(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, lines = _main(capsys, "control", "--services", "0,0", "--modes", "nftables", "--out",
                        str(tmp_path / "file"))
    assert code == 2 and len(lines) == 1 and "services: a count is given twice" in lines[0], lines


@pytest.mark.parametrize("cmd", ["sweep", "control", "cpu"])
def test_a_negative_count_list_is_named_not_taken_for_an_option(tmp_path, capsys, cmd):
    """argparse reads "-5,100" as an option ("expected one argument"); labkit reads
    it as the value it is, and refuses it by name."""
    (tmp_path / "file").write_text("x")
    code, lines = _main(capsys, cmd, "--services", "-5,100", "--out", str(tmp_path / "file"))
    assert code == 2 and len(lines) == 1 and "services must be in 0..1,000,000, got -5" in lines[0], lines


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_an_os_error_in_a_command_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch, err):
    def full(*a, **kw):
        raise OSError(err, os.strerror(err), str(tmp_path / "report.html"))
    monkeypatch.setattr(report, "build_report", full)
    code, lines = _main(capsys, "report", str(tmp_path))
    assert code == 1 and len(lines) == 1, lines
    assert os.strerror(err) in lines[0] and errno.errorcode[err] in lines[0] and "report.html" in lines[0]


def test_an_interrupted_report_says_interrupted_not_torn_down(tmp_path, capsys, monkeypatch):
    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(report, "build_report", interrupted)
    monkeypatch.setattr(cli.Lab, "opened", 3)      # labs of earlier commands in this process
    monkeypatch.setattr(cli.Lab, "torn_down", 3)
    code, lines = _main(capsys, "report", str(tmp_path))
    assert code == 130 and lines == ["labkit: interrupted"], lines
    # a run that built a lab says so, and says when the teardown did not finish
    monkeypatch.setattr(cli.Lab, "opened", 4)
    monkeypatch.setattr(cli.Lab, "torn_down", 4)
    assert "the lab was torn down" in cli._interrupted((3, 3))
    monkeypatch.setattr(cli.Lab, "torn_down", 3)
    assert "labkit clean" in cli._interrupted((3, 3))


def test_ctrl_c_while_python_imports_labkit_is_one_line():
    """SIGINT at several moments of the start (imports take seconds): exit 130 and
    one line, never a KeyboardInterrupt traceback."""
    interrupted = 0
    # `import labkit.cli` takes about 1.3 s here (the report's libraries load only with `report`):
    # the delays fall inside it, and the last near the end, where exit must stay quiet too
    for delay in (0.3, 0.6, 0.9, 1.5):
        proc = subprocess.Popen([sys.executable, "-m", "labkit", "--version"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, err
        assert proc.returncode in (0, 130, -signal.SIGINT), (proc.returncode, err)
        if proc.returncode == 130:
            assert err.strip() == "labkit: interrupted", err
            interrupted += 1
    assert interrupted, "no SIGINT landed while labkit started"


def test_meta_files_are_checked_against_the_schema():
    """The pure check every reader of a meta file goes through: every reference run
    passes; each crafted field is named."""
    root = os.path.join(os.path.dirname(__file__), "..", "data", "reference")
    for name in os.listdir(root):
        for kind in ("sweep", "control", "cpu", "bench"):
            p = os.path.join(root, name, schema.KINDS[kind].meta)
            if os.path.exists(p):
                with open(p) as f:
                    assert schema.meta_problem(json.load(f), kind) is None, p
    good = {"params": {"modes": ["nftables"], "services": [0]}, "blocks_done": [], "complete": False}
    for bad, field in [([1, 2], "not a labkit meta file"), ({}, None), ({"params": [1]}, "no params mapping"),
                       ({"params": {"modes": 5}}, "params.modes"), ({"params": {"services": "many"}}, "params.services"),
                       ({"host": "box"}, "host must be a mapping"), ({"tools": ["nft"]}, "tools must be a mapping"),
                       ({"blocks_done": [None]}, "blocks_done"), ({"blocks_done": ["../x"]}, "blocks_done"),
                       ({"blocks_done": "0,1"}, "blocks_done"), ({"blocks_done": [True]}, "blocks_done"),
                       ({"blocks_done": [-1]}, "blocks_done"), ({"resumed": "yesterday"}, "resumed"),
                       ({"resumed": ["x"]}, "resumed"), ({"complete": "yes"}, "complete"),
                       ({"kind": "control"}, "not of a sweep run"), ({"guests": [1]}, "guests"),
                       ({"started": "now"}, "started"), ({"run_id": 5}, "run_id")]:
        meta = bad if not isinstance(bad, dict) or "params" in bad or not bad else {**good, **bad}
        problem = schema.meta_problem(meta, "sweep")
        if field is None:
            assert problem is None and schema.meta_problem(meta, "sweep", resume=True) == \
                "meta.json has no params mapping"
        else:
            assert problem and field in problem and len(problem) < 200, (bad, problem)
    assert schema.meta_problem({"params": {}}, "sweep", resume=True).startswith("meta.json has no blocks_done")
    assert schema.meta_problem({"params": {"modes": ["x" * 10**6]}, "blocks_done": [0] * 10**5},
                               "bench") is None


def _small_run(path, modes=("nftables", "iptables-nft"), seed=7):
    return make_run(path, modes=modes, services=(0, 100, 1000), targets=("last",), rounds=2, probes=60,
                    invalid_point=-1, seed=seed)


@pytest.mark.parametrize("field, value", [("host", "box"), ("tools", ["nft"]), ("packages", "numpy"),
                                          ("params", {"modes": 5}), ("started", [1])])
def test_report_refuses_a_meta_file_against_the_schema(tmp_path, capsys, field, value):
    run = _small_run(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    (tmp_path / "run" / "meta.json").write_text(json.dumps({**meta, field: value}))
    code, lines = _main(capsys, "report", run, "--out-dir", str(tmp_path / "out"))
    assert code == 2 and len(lines) == 1 and "is not a valid labkit run" in lines[0], lines
    assert field in lines[0]


def test_report_refuses_a_meta_file_that_is_a_fifo(tmp_path, capsys):
    run = _small_run(tmp_path / "run")
    os.unlink(tmp_path / "run" / "meta.json")
    os.mkfifo(tmp_path / "run" / "meta.json")
    code, lines = _main(capsys, "report", run, "--out-dir", str(tmp_path / "out"))
    assert code == 2 and len(lines) == 1 and "is a FIFO" in lines[0], lines


@pytest.mark.parametrize("option", [["--budget-us", "inf"], ["--budget-us", "nan"], ["--budget-frac", "nan"],
                                    ["--budget-frac", "inf"]])
def test_report_refuses_budgets_that_are_not_finite(tmp_path, capsys, option):
    run = _small_run(tmp_path / "run")
    code, lines = _main(capsys, "report", run, *option, "--out-dir", str(tmp_path / "out"))
    assert code == 2 and len(lines) == 1 and "budgets must be finite" in lines[0], lines
    assert not (tmp_path / "out" / "report.html").exists()


def test_compare_refuses_the_same_run_twice_and_an_unwritable_out_dir(tmp_path, capsys):
    a = _small_run(tmp_path / "a")
    b = _small_run(tmp_path / "b", seed=8)
    os.symlink(a, tmp_path / "alias")
    for dirs in ([a, a], [a, a + "/"], [a, b, str(tmp_path / "alias")]):
        code, lines = _main(capsys, "compare", *dirs, "--out-dir", str(tmp_path / "out"))
        assert code == 2 and len(lines) == 1 and "are the same run directory" in lines[0], lines
    assert not (tmp_path / "out").exists()
    code, lines = _main(capsys, "compare", a, b, "--out-dir", "/proc/x")
    assert code in (1, 2) and len(lines) == 1 and "/proc/x" in lines[0], lines


@pytest.mark.parametrize("mode", ["nftables", "ebpf", "iptables-nft"])
def test_a_single_mode_run_reports(tmp_path, monkeypatch, mode):
    """A sweep of one mode has no pairs: its crossover table is empty, and the
    report says so instead of failing (issue 26: "ufunc 'isfinite'")."""
    monkeypatch.setitem(test_report.TRUTH, "ebpf", lambda n: 30 + 0.0 * n)
    run = _small_run(tmp_path / "run", modes=(mode,))
    path = report.build_report(run, n_boot=50, screenshot=False)
    body = open(path, encoding="utf-8").read()
    assert mode in body and "no crossovers" in body
    assert pd.read_csv(os.path.join(run, "crossover.csv")).empty


# --- one convention (issue 25, part) ------------------------------------------------

def test_bare_labkit_lists_the_commands(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    for name in ("doctor", "sweep", "control", "report", "compare", "clean"):
        assert name in err
    assert "required" not in err


def test_every_option_of_every_command_has_help():
    def walk(p, where):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    yield from walk(sub, f"{where} {name}")
            elif a.help != argparse.SUPPRESS and not isinstance(a, (argparse._HelpAction,
                                                                    argparse._VersionAction)):
                yield where, a
    missing = [f"{w} {a.option_strings or a.dest}" for w, a in walk(cli.build_parser(), "labkit") if not a.help]
    assert not missing, missing


@pytest.mark.parametrize("option", ["--out", "--out-dir"])
def test_report_and_compare_write_where_out_says(option):
    p = cli.build_parser()
    assert p.parse_args(["report", "r", option, "x"]).out_dir == "x"
    assert p.parse_args(["compare", "a", "b", option, "x"]).out_dir == "x"


def test_control_never_reaches_100k_services_unasked():
    args = cli.build_parser().parse_args(["control", "--out", "x"])
    assert max(int(n) for n in args.services.split(",")) <= 10_000


def test_resume_with_the_runs_own_parameter_file_is_accepted(tmp_path):
    # a UML run's meta stores the kernel the guest ran in ("host"); the file says "uml"
    out = tmp_path / "run"
    out.mkdir()
    ref = os.path.join(os.path.dirname(__file__), "..", "data", "reference", "ipvs-tables-7.2.13")
    for name in ("meta.json", "points.parquet", "samples.parquet", "control.parquet"):
        (out / name).write_bytes(open(os.path.join(ref, name), "rb").read())
    params = os.path.join(os.path.dirname(__file__), "..", "params", "ipvs-tables.yaml")
    r = Runner(Sweep(SweepParams.from_yaml(params)), str(out), resume=True)
    assert r.exp.p.kernel == "host" and r.exp.p.probes == 200   # the stored parameters
    with pytest.raises(UsageError, match="parameters differ"):
        Runner(Sweep(SweepParams.from_yaml(params, probes=199)), str(out), resume=True)
    # each mode's kernel is compared when the file gives it (the plan fills it in only when not)
    moved = dataclasses.replace(SweepParams.from_yaml(params), kernel="host+uml", kernels_by_mode={"ipvs": ["uml"]})
    with pytest.raises(UsageError, match="parameters differ"):
        Runner(Sweep(moved), str(out), resume=True)

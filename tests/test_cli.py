"""The CLI refuses bad input with one line and exit status 2, before any kernel state exists."""
import os
import subprocess
import sys

import papermill as pm
import pytest
from conftest import _labkit_namespaces

from labkit.core.errors import UsageError
from labkit.kernel import netns
from labkit.runs.params import SweepParams
from labkit.runs.runner import prepare_out


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
    (["sweep", "--services", "0,5000", "--service-cidr", "10.96.0.0/24", "--out", "{tmp}/o"],
     "too small for 5,000 services"),
    (["sweep", "--service-cidr", "10.128.0.0/12", "--out", "{tmp}/o"], "overlaps"),
    (["sweep", "--services", "0,10", "--endpoint-cidr", "172.30.0.0/16", "--out", "{tmp}/o"],
     "lab link network 172.30.0.0/24 overlaps"),
    (["sweep", "--out", "{tmp}/file"], "is not a directory"),
    (["sweep", "--params", "{tmp}/missing.yaml", "--out", "{tmp}/o"], "does not exist"),
    (["sweep", "--params", "{tmp}/bad.yaml", "--out", "{tmp}/o"], "unknown parameter"),
    (["sweep", "--resume", "--out", "{tmp}/o"], "holds no sweep run to resume"),
    (["sweep", "--services", "0"], "the following arguments are required: --out"),
    (["frobnicate"], "invalid choice"),
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

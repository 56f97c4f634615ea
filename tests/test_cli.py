"""The CLI refuses bad input with one line and exit status 2, before any kernel state exists."""
import os
import subprocess
import sys

import pytest

from labkit import netns
from labkit.errors import UsageError
from labkit.params import SweepParams, check_out_dir
from conftest import _labkit_namespaces


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
    (["sweep", "--resume", "--out", "{tmp}/o"], "holds no run to resume"),
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
    with pytest.raises(UsageError, match="already holds a run"):
        check_out_dir(str(tmp_path), resume=False)
    assert check_out_dir(str(tmp_path), resume=True) == str(tmp_path)

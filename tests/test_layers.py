"""The structure check CI runs (.ci/check_layers.py): the real package passes, and
an import against the drawn arrows fails even when it points to a lower layer."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / ".ci" / "check_layers.py"


def _check(pkg: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), str(pkg)], capture_output=True, text=True)


def test_labkit_keeps_to_its_arrows():
    r = _check(ROOT / "labkit")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 cycles, 0 layer violations" in r.stdout


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "labkit"
    for name, text in files.items():
        f = pkg / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    for d in [p for p in pkg.rglob("*") if p.is_dir()] + [pkg]:
        (d / "__init__.py").touch()
    return pkg


def test_pure_analysis_may_not_import_the_host_layer_below_it(tmp_path):
    pkg = _package(tmp_path, {"host/netns.py": "", "analysis/fitting.py": "from labkit.host import netns\n"})
    r = _check(pkg)
    assert r.returncode == 1
    assert "labkit.analysis.fitting (analysis) imports labkit.host.netns (host)" in r.stdout


def test_an_upward_import_and_a_cycle_fail(tmp_path):
    pkg = _package(tmp_path, {"core/a.py": "from labkit.report import b\n",
                              "report/b.py": "def f():\n    from labkit.core import a\n"})
    r = _check(pkg)
    assert r.returncode == 1
    assert "core may import nothing of labkit" in r.stdout and "cycle: " in r.stdout


def test_an_allowed_arrow_passes(tmp_path):
    pkg = _package(tmp_path, {"core/a.py": "", "analysis/b.py": "from labkit.core import a\n"})
    assert _check(pkg).returncode == 0

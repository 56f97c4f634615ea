"""Project files agree with each other (no root)."""
import json
import os
import re
import shlex
import subprocess
import tomllib

import pandas as pd
import pytest
import yaml

from labkit import cli
from labkit.analysis import anchors
from labkit.host import state

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_pins_what_pyproject_pins():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        proj = tomllib.load(f)["project"]
    want = {_name(r): r for r in proj["dependencies"] + proj["optional-dependencies"]["dev"]}
    with open(os.path.join(ROOT, "environment.yml")) as f:
        env = yaml.safe_load(f)
    have = {}
    for dep in env["dependencies"]:
        for r in (dep["pip"] if isinstance(dep, dict) else [dep]):
            if not r.startswith("-e"):
                have[_name(r)] = r
    for name, req in want.items():
        assert name in have, f"environment.yml lacks {name}"
        assert req.replace(" ", "")[len(name):] == have[name].replace(" ", "")[len(name):], (req, have[name])


def test_notebooks_are_stored_without_outputs_and_tag_parameters():
    nbs = sorted(n for n in os.listdir(os.path.join(ROOT, "notebooks")) if n.endswith(".ipynb"))
    assert {"sweep.ipynb", "analysis.ipynb"} <= set(nbs)
    for nb in nbs:
        with open(os.path.join(ROOT, "notebooks", nb)) as f:
            cells = json.load(f)["cells"]
        code = [c for c in cells if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), nb
        assert sum("parameters" in c["metadata"].get("tags", []) for c in code) == 1, nb


def test_docs_anchors_is_the_anchor_table_rendered():
    with open(os.path.join(ROOT, "docs", "anchors.md"), encoding="utf-8") as f:
        assert f.read() == anchors.markdown(), "regenerate docs/anchors.md from labkit/analysis/anchors.py"


def test_the_ipvs_crossings_are_read_from_the_one_kernel_run(tmp_path):
    """docs/anchors.md's IPVS table says what the run's crossover.csv holds, a
    row per target and pacing, in the report's words: IPVS faster above the
    crossing, and nftables' lead."""
    rows = [dict(probe="syn", mode_a="iptables-legacy", mode_b="ipvs", target="last", pacing=0, statistic="p50", kind="fit",
                 n_star=1234.4, ci_low=900.0, ci_high=1600.0, faster_above="ipvs", bracket_lo=1000.0,
                 bracket_hi=1468.0, diff_lo_us=-5.0, diff_hi_us=50.0, finding=""),
            dict(probe="syn", mode_a="iptables-nft", mode_b="ipvs", target="last", pacing=0, statistic="p50", kind="fit",
                 n_star=float("nan"), ci_low=float("nan"), ci_high=float("nan"), faster_above="", bracket_lo=None,
                 bracket_hi=None, diff_lo_us=1.0, diff_hi_us=80.0, finding=""),
            dict(probe="syn", mode_a="nftables", mode_b="ipvs", target="last", pacing=0, statistic="p50", kind="fit",
                 n_star=float("nan"), ci_low=float("nan"), ci_high=float("nan"), faster_above="", bracket_lo=None,
                 bracket_hi=None, diff_lo_us=-8.1, diff_hi_us=-16.1, finding="", faster_below="nftables"),
            dict(probe="syn", mode_a="nftables", mode_b="ipvs", target="last", pacing=0, statistic="p90", kind="fit",
                 n_star=5.0, ci_low=1.0, ci_high=9.0, faster_above="ipvs", bracket_lo=1.0, bracket_hi=10.0,
                 diff_lo_us=1.0, diff_hi_us=-1.0, finding="")]
    pd.DataFrame(rows).to_csv(tmp_path / "crossover.csv", index=False)
    lines = anchors.ipvs_markdown(str(tmp_path))
    assert lines[-1] == ("| last | back to back | IPVS beats iptables-legacy from 1,234 [900, 1,600] services "
                         "(located between the measured 1,000 and 1,468); IPVS is faster than iptables-nft "
                         "throughout; moving from IPVS to nftables: nftables is faster throughout, by 8.1 to "
                         "16.1 us |")
    assert anchors.ipvs_markdown(str(tmp_path / "none")) == []


def test_docs_cite_only_files_in_the_repository():
    """README, docs and code cite files a reader of the repository can open."""
    for base, _, names in os.walk(ROOT):
        if any(part in base for part in (".venv", ".git", "build", "data", ".cache", "runs")):
            continue
        for name in names:
            if name.endswith((".md", ".py")):
                with open(os.path.join(base, name), encoding="utf-8") as f:
                    text = f.read()
                for ref in ("DESIGN.md", "ANCHORS.md"):
                    assert ref not in text or name in ("test_project.py", "anchors.py"), \
                        f"{os.path.join(base, name)} cites {ref}, which is not in the repository"


@pytest.mark.root
def test_unit_tests_pass_as_an_unprivileged_user(nobody_python):
    """``make test-unit`` is for any user: pure tests pass as nobody, also
    when a root run has left labkit's private state directory behind."""
    os.makedirs(state.STATE_DIR, mode=0o700, exist_ok=True)
    cp = subprocess.run(
        ["runuser", "-m", "-u", "nobody", "--", nobody_python, "-m", "pytest",
         "-q", "-p", "no:cacheprovider", "-m", "not root and not vm", "tests/test_catalog.py",
         "tests/test_bench.py", "tests/test_project.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={"PATH": os.environ["PATH"], "HOME": "/tmp"})
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-2000:]
    assert " passed" in cp.stdout and "error" not in cp.stdout.splitlines()[-1]


def _readme_commands() -> list[str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return sorted(set(re.findall(r"`((?:\.venv/bin/)?python -m labkit [^`]*|make [a-z-]+[^`]*)`", text)))


def test_every_command_of_the_readme_runs_as_far_as_it_can_without_measuring(capsys):
    """Each `python -m labkit ...` line of the README parses with today's options;
    a sweep runs with --dry-run (its plan and estimate), `params` runs whole; each
    `make X` names a target of the Makefile."""
    cmds = _readme_commands()
    assert len(cmds) >= 10, cmds
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as f:
        targets = set(re.findall(r"^([a-z-]+):", f.read(), re.M))
    for cmd in cmds:
        argv = shlex.split(cmd)
        if argv[0] == "make":
            assert argv[1] in targets, f"README: `{cmd}`: no such Makefile target"
            continue
        argv = argv[argv.index("labkit") + 1:]
        if argv[0] == "sweep":
            argv = [a for a in argv if a != "--dry-run"] + ["--dry-run"]
        if argv[0] in ("sweep", "params"):
            old = os.getcwd()
            os.chdir(ROOT)
            try:
                assert cli.main(argv) == 0, cmd
            finally:
                os.chdir(old)
            assert "estimated" in capsys.readouterr().out, cmd
        else:
            ns = cli.build_parser().parse_args(argv)   # refuses an unknown option in one line
            assert ns.cmd == argv[0], cmd

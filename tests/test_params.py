"""SweepParams: valid and frozen once built, and the one source of the sweep's
defaults (the CLI's help and the sweep notebook's parameters cell agree with it)."""
import ast
import dataclasses
import json
import os

import pytest

from labkit import cli
from labkit.core.errors import UsageError
from labkit.runs.params import NOTEBOOK_NAMES, PARAMETERS, SweepParams

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_params_are_valid_once_built_and_frozen():
    p = SweepParams(services="100,0,10", pacing="0,1k", probe_kinds="syn")
    assert p.services == [0, 10, 100] and p.pacing == [0.0, 1000.0] and p.probe_kinds == ["syn"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.probes = 5   # type: ignore[misc]
    with pytest.raises(UsageError, match="probes"):
        SweepParams(probes=0)
    with pytest.raises(UsageError, match="ipvs_scheduler must be one of rr, wrr, lc, sh, mh"):
        dataclasses.replace(p, ipvs_scheduler="fifo")
    cat = p.catalog(10)
    assert (cat.services, cat.endpoints, cat.ports) == (10, p.endpoints, tuple(p.ports))


def _notebook_parameters() -> dict:
    with open(os.path.join(ROOT, "notebooks", "sweep.ipynb")) as f:
        nb = json.load(f)
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    out = {}
    for node in ast.parse("".join(cell["source"])).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) \
                and not node.targets[0].id.startswith("_"):
            out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def test_the_notebooks_parameters_cell_holds_sweepparams_defaults():
    given = _notebook_parameters()
    sweep = {k: v for k, v in given.items() if k not in NOTEBOOK_NAMES}
    assert set(sweep) == set(PARAMETERS) - {"kernels_by_mode"}
    assert SweepParams.from_dict(sweep) == SweepParams()


def test_the_cli_help_names_sweepparams_defaults():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    helps = {a.dest: a.help for a in sub.choices["sweep"]._actions}
    assert set(cli.SWEEP_OPTIONS) <= set(helps)
    for name in cli.SWEEP_OPTIONS:
        assert f"default {cli.default(name)}" in helps[name], (name, helps[name])
    assert cli.default("services") == "0,1,10,30,100,300,1000,2000,5000,10000"
    assert cli.default("pacing") == "0" and cli.default("timeout") == "0.5"

"""SweepParams: valid and frozen once built, and the one source of the sweep's
defaults (the CLI's help and the sweep notebook's parameters cell agree with it)."""
import ast
import dataclasses
import json
import os

import pytest

from labkit import cli
from labkit.core.errors import UsageError
from labkit.runs.estimate import estimate
from labkit.runs.params import FILE_ONLY, NOTEBOOK_NAMES, PARAMETERS, SweepParams
from labkit.runs.sweep import Sweep

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
    assert set(sweep) == set(PARAMETERS) - set(FILE_ONLY)
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


def test_kind_modes_and_the_uml_subsets_shape_the_plan():
    p = SweepParams.from_dict({"modes": ["iptables-legacy", "nftables", "ipvs"], "kernel": "host+uml",
                               "services": [1, 100, 1000], "probe_kinds": ["syn", "http-new"],
                               "kind_modes": {"http-new": "iptables-legacy"},
                               "uml_services": [1000, 1], "uml_probe_kinds": ["syn"],
                               "kernels_by_mode": {"iptables-legacy": ["host", "uml"], "nftables": ["host"],
                                                   "ipvs": ["uml"]}})
    assert p.uml_services == [1, 1000] and p.services_in("uml") == [1, 1000]
    assert p.services_in("host") == p.services_in("") == [1, 100, 1000]
    assert p.kinds_for("iptables-legacy", "host") == ["syn", "http-new"]
    assert p.kinds_for("nftables", "host") == ["syn"]
    assert p.kinds_for("iptables-legacy", "uml") == ["syn"]
    sweep = Sweep(p)
    blocks = sweep.blocks()
    assert {b.services for b in blocks if b.kernel == "uml"} == {1, 1000}
    assert {b.services for b in blocks if b.kernel == "host"} == {1, 100, 1000}
    assert len({b.block for b in blocks}) == len(blocks)
    legacy_host = next(b for b in blocks if b.kernel == "host" and b.mode == "iptables-legacy")
    legacy_uml = next(b for b in blocks if b.kernel == "uml" and b.mode == "iptables-legacy")
    assert sweep.units(legacy_host) == 3 * (1 + 1) and sweep.units(legacy_uml) == 3 * 1   # 3 targets


def test_mode_rounds_add_rounds_of_those_modes_only_after_the_runs_rounds():
    p = SweepParams.from_dict({"modes": ["iptables-legacy", "nftables", "ipvs"], "kernel": "host+uml",
                               "services": [1, 1000], "rounds": 2, "mode_rounds": {"ipvs": 3, "nftables": 4},
                               "kernels_by_mode": {"iptables-legacy": ["host", "uml"], "nftables": ["host"],
                                                   "ipvs": ["uml"]}})
    assert p.rounds_of("iptables-legacy") == 2 and p.rounds_of("ipvs") == 3 and p.max_rounds == 4
    blocks = Sweep(p).blocks()
    assert len({b.block for b in blocks}) == len(blocks)
    by = {(m, k): sorted({b.round for b in blocks if b.mode == m and b.kernel == k})
          for m, k in (("iptables-legacy", "host"), ("iptables-legacy", "uml"), ("nftables", "host"),
                       ("ipvs", "uml"))}
    assert by == {("iptables-legacy", "host"): [0, 1], ("iptables-legacy", "uml"): [0, 1],
                  ("nftables", "host"): [0, 1, 2, 3], ("ipvs", "uml"): [0, 1, 2]}
    # the extra rounds come after the run's rounds; round 3 has no user-mode Linux part
    rounds = [b.round for b in blocks]
    assert rounds == sorted(rounds)
    assert {b.kernel for b in blocks if b.round == 3} == {"host"}
    # the run's rounds are planned as without mode_rounds
    plain = Sweep(SweepParams.from_dict({**p.to_dict(), "mode_rounds": {}})).blocks()
    assert [b for b in blocks if b.round < 2] == plain
    # more rounds asked for the run (--rounds 5 over the file's mode_rounds): every mode 5,
    # and a mode_rounds entry below them counts as the run's
    five = SweepParams.from_dict({**p.to_dict(), "rounds": 5})
    assert {m: five.rounds_of(m) for m in five.modes} == dict.fromkeys(five.modes, 5)
    assert Sweep(five).blocks() == Sweep(SweepParams.from_dict({**five.to_dict(), "mode_rounds": {}})).blocks()


def test_end_rounds_add_blocks_at_the_smallest_and_largest_counts_of_those_kinds_only():
    kinds = ["syn", "http-new", "reuse-3"]
    p = SweepParams.from_dict({"modes": ["iptables-legacy", "nftables", "ipvs"], "kernel": "host+uml",
                               "services": [1, 100, 1000], "rounds": 2, "probe_kinds": kinds,
                               "kind_modes": {"http-new": ["iptables-legacy"], "reuse-3": ["iptables-legacy"]},
                               "uml_probe_kinds": ["syn"], "mode_rounds": {"nftables": 3},
                               "end_rounds": {"iptables-legacy": 4}, "end_kinds": ["reuse-3", "http-new"],
                               "kernels_by_mode": {"iptables-legacy": ["host", "uml"], "nftables": ["host"],
                                                   "ipvs": ["uml"]}})
    assert p.end_kinds == ["http-new", "reuse-3"] and p.max_rounds == 4
    assert p.end_rounds_of("iptables-legacy") == 4 and p.end_rounds_of("nftables") == 3
    sweep = Sweep(p)
    blocks = sweep.blocks()
    assert len({b.block for b in blocks}) == len(blocks)
    ends = [b for b in blocks if b.kinds]
    # rounds 2 and 3, on the host only (user-mode Linux measures syn only), at 1 and 1,000
    assert {(b.round, b.kernel, b.mode, b.services) for b in ends} == {
        (r, "host", "iptables-legacy", n) for r in (2, 3) for n in (1, 1000)}
    assert all(b.kinds == ("http-new", "reuse-3") for b in ends)
    assert all(not b.kinds for b in blocks if b.round < 2)
    assert sweep.units(ends[0]) == len(p.targets) * 2    # two kinds, back to back
    assert p.block_kinds("iptables-legacy", "host", ends[0].kinds) == ["http-new", "reuse-3"]
    # the run's rounds are planned as without end_rounds, nftables' third has the same blocks
    plain = Sweep(SweepParams.from_dict({**p.to_dict(), "end_rounds": {}, "end_kinds": []})).blocks()
    assert [b for b in blocks if b.round < 2] == [b for b in plain if b.round < 2]
    cells = {(b.block, b.round, b.mode, b.services, b.kernel) for b in blocks if not b.kinds}
    assert cells == {(b.block, b.round, b.mode, b.services, b.kernel) for b in plain}
    # one kernel: the same, from plan
    one = SweepParams.from_dict({**p.to_dict(), "kernel": "host", "kernels_by_mode": {}, "uml_probe_kinds": [],
                                 "modes": ["iptables-legacy", "nftables"]})
    assert {(b.round, b.services) for b in Sweep(one).blocks() if b.kinds} == {
        (r, n) for r in (2, 3) for n in (1, 1000)}


@pytest.mark.parametrize("extra,msg", [
    ({"end_rounds": {"ipvs": 3}, "end_kinds": ["syn"]}, "end_rounds: 'ipvs' is not one of the run's modes"),
    ({"end_rounds": {"nftables": 3}}, "end_rounds needs end_kinds"),
    ({"end_kinds": ["syn"]}, "end_kinds is only for end_rounds"),
    ({"end_rounds": {"nftables": 3}, "end_kinds": ["reuse-3"]},
     "end_kinds: 'reuse-3' is not one of the run's probe kinds"),
])
def test_end_rounds_are_checked(extra, msg):
    base = {"modes": ["iptables-legacy", "nftables"], "services": [1, 100], "probe_kinds": ["syn", "http-new"]}
    with pytest.raises(UsageError, match=msg):
        SweepParams.from_dict({**base, **extra})


@pytest.mark.parametrize("extra,msg", [
    ({"mode_rounds": {"ipvs": 3}}, "mode_rounds: 'ipvs' is not one of the run's modes"),
    ({"mode_rounds": {"nftables": 0}, "rounds": 2}, "mode_rounds\\[nftables\\]"),
    ({"mode_rounds": [3]}, "mode_rounds must be a mapping"),
    ({"kind_modes": {"http-new": ["ipvs"]}}, "unknown kind_modes\\[http-new\\]"),
    ({"kind_modes": {"reuse-3": ["nftables"]}}, "kind_modes: 'reuse-3' is not one of the run's probe kinds"),
    ({"kind_modes": ["http-new"]}, "kind_modes must be a mapping"),
    ({"uml_services": [5]}, "uml_services: 5 is not one of the run's services"),
    ({"uml_probe_kinds": ["reuse-3"]}, "uml_probe_kinds: 'reuse-3' is not one of the run's probe_kinds"),
    ({"uml_services": [1], "kernel": "host"}, "uml_services is only for kernel host\\+uml"),
])
def test_kind_modes_and_the_uml_subsets_are_checked(extra, msg):
    base = {"modes": ["iptables-legacy", "nftables"], "kernel": "host+uml", "services": [1, 100],
            "probe_kinds": ["syn", "http-new"]}
    with pytest.raises(UsageError, match=msg):
        SweepParams.from_dict(base | extra)


def test_the_estimate_follows_the_plan_of_a_host_and_uml_run():
    p = SweepParams.from_yaml(os.path.join(ROOT, "params", "default.yaml"))
    est = estimate(p, {"host": None, "uml": None})
    blocks = Sweep(p).blocks()
    assert est.blocks == len(blocks)
    assert est.points == sum(Sweep(p).units(b) for b in blocks)

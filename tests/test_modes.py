"""The one table of modes (labkit.core.modes) and the layers that read it."""
import pytest

from labkit import datapaths
from labkit.core import modes
from labkit.core.errors import UsageError
from labkit.guests import dispatch
from labkit.report import plots
from labkit.runs.params import SweepParams
from labkit.runs.sweep import Sweep


def test_the_registry_and_the_table_agree():
    assert tuple(datapaths.MODES) == modes.NAMES
    assert datapaths.disagreements(datapaths.MODES) == []
    shuffled = dict(reversed(list(datapaths.MODES.items())))
    assert datapaths.disagreements(shuffled)
    for name, cls in datapaths.MODES.items():
        row = modes.get(name)
        assert row.change_loader == cls.change_loader
        for option, keyword in row.options:   # a sweep parameter the constructor takes
            assert keyword in cls.__init__.__code__.co_varnames, (name, option)


def test_the_derived_names_keep_their_values():
    assert modes.CALIBRATORS == ("iptables-legacy", "iptables-nft", "nftables")
    assert modes.INTERPRETED_IN_UML == ("ebpf", "ebpf-xdp")
    assert modes.interpreted("ebpf", "uml") and not modes.interpreted("ebpf", "") \
        and not modes.interpreted("nftables", "uml")
    assert modes.of_family("iptables") == ("iptables-legacy", "iptables-nft")
    assert set(modes.with_lookup(modes.CONSTANT)) == {"ipvs", "nftables", "ebpf", "ebpf-xdp"}
    assert dispatch.UML_CANNOT == {} == modes.cannot_run_in("uml")
    assert plots.MODE_COLORS["nftables"] == "#009E73" and set(modes.NAMES) < set(plots.MODE_COLORS)
    assert modes.get("ipvs").options == (("ipvs_scheduler", "scheduler"),)
    with pytest.raises(UsageError, match="unknown mode 'bogus'; known modes: iptables-legacy"):
        modes.get("bogus")


def test_a_host_uml_sweep_plans_each_modes_kernels_from_the_table_and_the_hosts_lacks():
    p = SweepParams.from_dict(dict(modes="nftables,ipvs,ebpf", kernel="host+uml", services="0", targets="last",
                                   rounds=1))
    sweep = Sweep(p)
    sweep.place({"nftables": None, "ipvs": "no IP_VS", "ebpf": None})
    assert sweep.p.kernels_by_mode == {"nftables": ["host", "uml"], "ipvs": ["uml"], "ebpf": ["host"]}
    assert sorted((b.mode, b.kernel) for b in sweep.blocks()) == [
        ("ebpf", "host"), ("ipvs", "uml"), ("nftables", "host"), ("nftables", "uml")]
    sweep.place({"nftables": "gone", "ipvs": None, "ebpf": None})   # planned once, then stored
    assert sweep.p.kernels_by_mode["nftables"] == ["host", "uml"]

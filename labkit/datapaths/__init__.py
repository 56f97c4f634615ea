"""Registry of service datapaths ("modes").

Add a mode by writing its row in :data:`labkit.core.modes.MODES`, importing
its class here and listing it in ``_ALL``; the registry checks at import that
its classes and the table's rows agree.
"""
from __future__ import annotations

from labkit.core import modes as table
from labkit.core.errors import LabkitError
from labkit.datapaths.base import Datapath, ProgramResult
from labkit.datapaths.ebpf import Ebpf, EbpfXdp
from labkit.datapaths.iptables import IptablesLegacy, IptablesNft
from labkit.datapaths.ipvs import Ipvs
from labkit.datapaths.nftables import Nftables

_ALL: list[type[Datapath]] = [IptablesLegacy, IptablesNft, Nftables, Ipvs, Ebpf, EbpfXdp]

MODES: dict[str, type[Datapath]] = {cls.name: cls for cls in _ALL}


def disagreements(classes: dict[str, type[Datapath]]) -> list[str]:
    """Where the registered ``classes`` and the table of modes disagree: a mode
    in one and not the other, in another order, or with other change loaders."""
    if tuple(classes) != table.NAMES:
        return [f"registry {', '.join(classes)} != table {', '.join(table.NAMES)}"]
    out = []
    for name, cls in classes.items():
        loaders = (cls.change_loader, *(lo for lo in cls.CHANGE_LOADERS if lo != cls.change_loader))
        if loaders != table.get(name).change_loaders:
            out.append(f"{name}: change loaders {loaders} != the table's {table.get(name).change_loaders}")
    return out


if disagreements(MODES):   # a mode added to one and not the other
    raise LabkitError("labkit.datapaths and labkit.core.modes disagree: " + "; ".join(disagreements(MODES)))


def get(name: str) -> type[Datapath]:
    """The datapath class of mode ``name``; UsageError naming the known modes."""
    return MODES[table.get(name).name]


__all__ = ["Datapath", "ProgramResult", "MODES", "get"]

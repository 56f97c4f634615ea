"""Registry of service datapaths ("modes").

Add a mode by importing its class here and listing it in ``_ALL``.
"""
from __future__ import annotations

from labkit.core.errors import Unavailable, UsageError
from labkit.datapaths.base import Datapath, ProgramResult
from labkit.datapaths.ebpf import Ebpf, EbpfXdp
from labkit.datapaths.iptables import IptablesLegacy, IptablesNft
from labkit.datapaths.ipvs import Ipvs
from labkit.datapaths.nftables import Nftables
from labkit.host.limits import check_memory

_ALL: list[type[Datapath]] = [IptablesLegacy, IptablesNft, Nftables, Ipvs, Ebpf, EbpfXdp]

MODES: dict[str, type[Datapath]] = {cls.name: cls for cls in _ALL}


def get(name: str) -> type[Datapath]:
    try:
        return MODES[name]
    except KeyError:
        raise UsageError(f"unknown mode {name!r}; known modes: {', '.join(MODES)}") from None


def preflight(modes, services: int, endpoints: int, ports: int = 1) -> dict[str, type[Datapath]]:
    """The classes of ``modes`` once each can run here and the machine has the
    memory for its largest catalog (``services`` x ``endpoints`` x ``ports``);
    raises :class:`Unavailable` naming the reason.  Touches no namespace."""
    classes = {m: get(m) for m in modes}
    for m, cls in classes.items():
        why = cls.unavailable(None)
        if why:
            raise Unavailable(f"mode {m} cannot run here: {why}")
    check_memory(classes.values(), services, endpoints, ports)
    return classes


__all__ = ["Datapath", "ProgramResult", "MODES", "get", "preflight"]

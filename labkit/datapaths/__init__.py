"""Registry of service datapaths ("modes").

Add a mode by importing its class here and listing it in ``_ALL``.
"""
from __future__ import annotations

from ..errors import UsageError
from .base import Datapath, ProgramResult
from .ebpf import Ebpf, EbpfXdp
from .iptables import IptablesLegacy, IptablesNft
from .ipvs import Ipvs
from .nftables import Nftables

_ALL: list[type[Datapath]] = [IptablesLegacy, IptablesNft, Nftables, Ipvs, Ebpf, EbpfXdp]

MODES: dict[str, type[Datapath]] = {cls.name: cls for cls in _ALL}


def get(name: str) -> type[Datapath]:
    try:
        return MODES[name]
    except KeyError:
        raise UsageError(f"unknown mode {name!r}; known modes: {', '.join(MODES)}") from None


__all__ = ["Datapath", "ProgramResult", "MODES", "get"]

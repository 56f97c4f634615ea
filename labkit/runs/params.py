"""Sweep parameters: one validated dataclass for the CLI, papermill and YAML files.

Pure: validation never touches the kernel, so bad input is refused before
anything is created.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from labkit.core.catalog import (
    DEFAULT_ENDPOINT_CIDR,
    DEFAULT_SERVICE_CIDR,
    MAX_ENDPOINTS,
    MAX_SERVICES,
    ServiceCatalog,
)
from labkit.core.errors import UsageError
from labkit.core.topology import Topology
from labkit.core.validate import names, number, split, whole
from labkit.datapaths import MODES
from labkit.datapaths.ipvs import SCHEDULERS
from labkit.probes import PROBERS
from labkit.probes.base import SPORT_HI, SPORT_LO

TARGETS = ("first", "middle", "last", "random", "none")
KERNELS = ("auto", "host", "uml", "vm", "host+uml")
MAX_PROBES = 1_000_000
MIN_PACING, MAX_PACING = 1.0, 100_000.0   # probes per second (0 = back to back)


@dataclass
class SweepParams:
    modes: list[str] = field(default_factory=lambda: ["iptables-legacy", "iptables-nft"])
    services: list[int] = field(default_factory=lambda: [0, 1, 10, 30, 100, 300, 1000, 2000, 5000, 10000])
    endpoints: int = 10
    ports: list[int] = field(default_factory=lambda: [80])
    targets: list[str] = field(default_factory=lambda: ["last", "random", "none"])
    probes: int = 600
    rounds: int = 3
    warmup: int = 20
    seed: int = 1
    timeout: float = 0.5
    kernel: str = "auto"
    probe_kinds: list[str] = field(default_factory=lambda: ["syn"])
    #: probes per second with Poisson gaps; 0 = back to back.  Each pacing is
    #: measured at every target (kinds that send batches themselves: 0 only)
    pacing: list[float] = field(default_factory=lambda: [0.0])
    service_cidr: str = DEFAULT_SERVICE_CIDR
    endpoint_cidr: str = DEFAULT_ENDPOINT_CIDR
    ipvs_scheduler: str = "rr"
    #: with kernel "host+uml": the kernels each mode runs in (filled in once, from what
    #: each kernel runs, and stored, so a resumed run plans the same blocks)
    kernels_by_mode: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepParams":
        if not isinstance(d, dict):
            raise UsageError(f"parameters must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"unknown parameter(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        p = cls(**{k: v for k, v in d.items() if v is not None})
        return p.validated()

    @classmethod
    def from_yaml(cls, path: str, **overrides: Any) -> "SweepParams":
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise UsageError(f"parameter file {path} does not exist") from None
        except IsADirectoryError:
            raise UsageError(f"parameter file {path} is a directory") from None
        except UnicodeDecodeError:
            raise UsageError(f"parameter file {path} is not UTF-8 text (a YAML file is needed)") from None
        except OSError as exc:
            raise UsageError(f"parameter file {path} cannot be read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise UsageError(f"parameter file {path} is not valid YAML: {exc}".splitlines()[0]) from None
        if not isinstance(data, dict):
            raise UsageError(f"parameter file {path} must hold a mapping of name: value")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)

    def validated(self) -> "SweepParams":
        """A normalized copy; raises UsageError naming the first bad value."""
        p = dataclasses.replace(self)
        p.modes = names(p.modes, "modes", tuple(MODES))
        p.targets = names(p.targets, "targets", TARGETS)
        p.probe_kinds = names(p.probe_kinds, "probe_kinds", tuple(PROBERS))
        svc = [whole(v, "services", 0, MAX_SERVICES) for v in split(p.services, "services")]
        if not svc:
            raise UsageError("services: at least one count is needed")
        if len(set(svc)) != len(svc):
            raise UsageError(f"services: a count is given twice in {svc}")
        p.services = sorted(svc)
        p.endpoints = whole(p.endpoints, "endpoints", 1, MAX_ENDPOINTS)
        p.ports = [whole(v, "ports", 1, 65535) for v in split(p.ports, "ports")]
        p.probes = whole(p.probes, "probes", 1, MAX_PROBES)
        p.rounds = whole(p.rounds, "rounds", 1, 1000)
        p.warmup = whole(p.warmup, "warmup", 0, 100_000)
        p.seed = whole(p.seed, "seed", 0, 2**32 - 1)
        p.timeout = number(p.timeout, "timeout", 0, 10, lo_open=True)
        if p.ipvs_scheduler not in SCHEDULERS:
            raise UsageError(f"ipvs_scheduler must be one of {', '.join(SCHEDULERS)}, got {p.ipvs_scheduler!r}")
        if p.kernel not in KERNELS:
            raise UsageError(f"kernel must be one of {', '.join(KERNELS)}, got {p.kernel!r}")
        pacing = [_pacing(v) for v in split(p.pacing, "pacing")]
        if not pacing:
            raise UsageError("pacing: at least one value is needed (0 = back to back)")
        if len(set(pacing)) != len(pacing):
            raise UsageError(f"pacing: a value is given twice in {pacing}")
        p.pacing = pacing
        per_block = (p.warmup + p.probes * len(p.pacing)) * len(p.targets)
        if per_block > SPORT_HI - SPORT_LO + 1:
            raise UsageError(f"(warmup + probes x pacings) x targets = {per_block:,} probes per block exceed the "
                             f"{SPORT_HI - SPORT_LO + 1:,} fresh source ports a block has: conntrack "
                             "would match reused 5-tuples; lower --probes")
        # the largest catalog must fit the address ranges
        ServiceCatalog(max(p.services), p.endpoints, tuple(p.ports), p.service_cidr, p.endpoint_cidr)
        cat = self.catalog(max(p.services), p)
        Topology("aaaaaa").check_against(cat.service_net, cat.endpoint_net)
        return p

    @staticmethod
    def catalog(services: int, p: "SweepParams") -> ServiceCatalog:
        return ServiceCatalog(services, p.endpoints, tuple(p.ports), p.service_cidr, p.endpoint_cidr)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: names a sweep notebook may be given besides the parameters (papermill -p)
NOTEBOOK_NAMES = frozenset({"out_dir", "resume", "command"})


def refuse_unknown(names_given: set[str]) -> None:
    """Refuse names that are neither sweep parameters nor the notebook's own
    (the papermill path: papermill only warns about them)."""
    known = {f.name for f in dataclasses.fields(SweepParams)} | NOTEBOOK_NAMES
    unknown = sorted(n for n in names_given if not n.startswith("_") and n not in known)
    if unknown:
        raise UsageError(f"unknown parameter(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _pacing(v: Any) -> float:
    """One pacing value: 0 (back to back) or probes per second (``1000``, ``1k``)."""
    what = "pacing (probes/s; 0 = back to back)"
    if isinstance(v, str):
        v = whole(v, what, 0, int(MAX_PACING))
    if v == 0 and not isinstance(v, bool):
        return 0.0
    return number(v, what, MIN_PACING, MAX_PACING)

"""Sweep parameters: one validated dataclass for the CLI, papermill and YAML files.

Pure: validation never touches the kernel, so bad input is refused before
anything is created.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from .catalog import (DEFAULT_ENDPOINT_CIDR, DEFAULT_SERVICE_CIDR, MAX_ENDPOINTS, MAX_SERVICES,
                      ServiceCatalog)
from .errors import UsageError

TARGETS = ("first", "middle", "last", "random", "none")
KERNELS = ("auto", "host", "vm")
MAX_PROBES = 1_000_000


def _split(value: Any, what: str) -> list:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
        if any(v == "" for v in items):
            raise UsageError(f"{what}: empty item in {value!r}")
        return items
    if isinstance(value, (list, tuple)):
        return list(value)
    raise UsageError(f"{what} must be a list or a comma-separated string, got {value!r}")


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise UsageError(f"{what} must be a whole number, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        v = value.strip().replace("_", "")
        if v.lower().endswith("k") and v[:-1].isdigit():
            v = str(int(v[:-1]) * 1000)
        try:
            value = int(v)
        except ValueError:
            raise UsageError(f"{what} must be a whole number, got {value!r}") from None
    if not isinstance(value, int):
        raise UsageError(f"{what} must be a whole number, got {value!r}")
    if not lo <= value <= hi:
        raise UsageError(f"{what} must be in {lo:,}..{hi:,}, got {value:,}")
    return value


def _names(value: Any, what: str, allowed: tuple[str, ...] | None) -> list[str]:
    items = _split(value, what)
    if not items:
        raise UsageError(f"{what}: at least one is needed")
    out = []
    for v in items:
        if not isinstance(v, str):
            raise UsageError(f"{what}: {v!r} is not a name")
        if allowed is not None and v not in allowed:
            raise UsageError(f"unknown {what[:-1] if what.endswith('s') else what} {v!r}; "
                             f"choose from {', '.join(allowed)}")
        if v in out:
            raise UsageError(f"{what}: {v!r} is given twice")
        out.append(v)
    return out


@dataclass
class SweepParams:
    modes: list[str] = field(default_factory=lambda: ["iptables-legacy", "iptables-nft"])
    services: list[int] = field(default_factory=lambda: [0, 1000, 2500, 5000, 10000])
    endpoints: int = 10
    ports: list[int] = field(default_factory=lambda: [80])
    targets: list[str] = field(default_factory=lambda: ["last", "random", "none"])
    probes: int = 300
    rounds: int = 3
    warmup: int = 20
    seed: int = 1
    timeout: float = 0.5
    kernel: str = "auto"
    probe_kinds: list[str] = field(default_factory=lambda: ["syn"])
    service_cidr: str = DEFAULT_SERVICE_CIDR
    endpoint_cidr: str = DEFAULT_ENDPOINT_CIDR

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
        import yaml
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise UsageError(f"parameter file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise UsageError(f"parameter file {path} is not valid YAML: {exc}".splitlines()[0]) from None
        if not isinstance(data, dict):
            raise UsageError(f"parameter file {path} must hold a mapping of name: value")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)

    def validated(self) -> "SweepParams":
        """A normalized copy; raises UsageError naming the first bad value."""
        from .datapaths import MODES
        p = dataclasses.replace(self)
        p.modes = _names(p.modes, "modes", tuple(MODES))
        p.targets = _names(p.targets, "targets", TARGETS)
        from .probe import PROBERS
        p.probe_kinds = _names(p.probe_kinds, "probe_kinds", tuple(PROBERS))
        svc = [_int(v, "services", 0, MAX_SERVICES) for v in _split(p.services, "services")]
        if not svc:
            raise UsageError("services: at least one count is needed")
        if len(set(svc)) != len(svc):
            raise UsageError(f"services: a count is given twice in {svc}")
        p.services = sorted(svc)
        p.endpoints = _int(p.endpoints, "endpoints", 1, MAX_ENDPOINTS)
        p.ports = [_int(v, "ports", 1, 65535) for v in _split(p.ports, "ports")]
        p.probes = _int(p.probes, "probes", 1, MAX_PROBES)
        p.rounds = _int(p.rounds, "rounds", 1, 1000)
        p.warmup = _int(p.warmup, "warmup", 0, 100_000)
        p.seed = _int(p.seed, "seed", 0, 2**32 - 1)
        if isinstance(p.timeout, bool) or not isinstance(p.timeout, (int, float)) \
                or not 0 < p.timeout <= 10:
            raise UsageError(f"timeout must be a number of seconds in (0, 10], got {p.timeout!r}")
        p.timeout = float(p.timeout)
        if p.kernel not in KERNELS:
            raise UsageError(f"kernel must be one of {', '.join(KERNELS)}, got {p.kernel!r}")
        from .probe import SPORT_HI, SPORT_LO
        per_block = (p.warmup + p.probes) * len(p.targets)
        if per_block > SPORT_HI - SPORT_LO + 1:
            raise UsageError(f"(warmup + probes) x targets = {per_block:,} probes per block exceed the "
                             f"{SPORT_HI - SPORT_LO + 1:,} fresh source ports a block has: conntrack "
                             "would match reused 5-tuples; lower --probes")
        # the largest catalog must fit the address ranges
        ServiceCatalog(max(p.services), p.endpoints, tuple(p.ports), p.service_cidr, p.endpoint_cidr)
        from .topology import Topology
        cat = self.catalog(max(p.services), p)
        Topology("aaaaaa").check_against(cat.service_net, cat.endpoint_net)
        return p

    @staticmethod
    def catalog(services: int, p: "SweepParams") -> ServiceCatalog:
        return ServiceCatalog(services, p.endpoints, tuple(p.ports), p.service_cidr, p.endpoint_cidr)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_out_dir(out: str, resume: bool) -> str:
    """The output directory must be a directory we can write; refuse to
    overwrite an earlier run unless resuming it."""
    if not out:
        raise UsageError("--out is needed")
    out = os.path.abspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} exists and is not a directory")
    has_run = os.path.exists(os.path.join(out, "meta.json"))
    if resume and not has_run:
        raise UsageError(f"--resume: {out} holds no run to resume (no meta.json)")
    if not resume and has_run:
        raise UsageError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    # try for real (root passes every permission check, a read-only mount does not)
    try:
        os.makedirs(out, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".labkit-write-test-")
        probe.close()
    except OSError as exc:
        raise UsageError(f"--out {out} is not writable: {exc.strerror}") from None
    return out

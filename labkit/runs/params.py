"""Sweep parameters: one frozen, validated dataclass for the CLI, papermill and YAML files.

Pure: validation never touches the kernel, so bad input is refused before
anything is created.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
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
from labkit.core.files import PARAMS_MAX, read_regular
from labkit.core.kernel_kinds import KERNEL_KINDS
from labkit.core.modes import IPVS_SCHEDULERS
from labkit.core.modes import NAMES as MODE_NAMES
from labkit.core.topology import Topology
from labkit.core.validate import clip, names, number, short, split, whole
from labkit.probes import PROBERS
from labkit.probes.base import SPORT_HI, SPORT_LO

TARGETS = ("first", "middle", "last", "random", "none")
KERNELS = ("auto", *KERNEL_KINDS, "host+uml")
#: the kernels of a host+uml run
UML_KERNELS = ("host", "uml")
MAX_PROBES = 1_000_000
MIN_PACING, MAX_PACING = 1.0, 100_000.0   # probes per second (0 = back to back)


@dataclass(frozen=True)
class SweepParams:
    """A sweep's parameters, valid once built: construction checks and
    normalizes every value (UsageError naming the first bad one), and the
    result is frozen.  Its defaults are the sweep's defaults everywhere: the
    CLI's help and the sweep notebook's parameters cell are checked against
    them (tests/test_params.py)."""
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
    #: probe kinds measured in some modes only: kind -> modes (a kind not named here is
    #: measured in every mode); e.g. the request probes only where the claims need them
    kind_modes: dict[str, list[str]] = field(default_factory=dict)
    #: with kernel host+uml: the service counts measured in user-mode Linux (a subset of
    #: ``services``; empty: all of them), where programming a large table is slow
    uml_services: list[int] = field(default_factory=list)
    #: with kernel host+uml: the probe kinds measured in user-mode Linux (a subset of
    #: ``probe_kinds``; empty: all of them)
    uml_probe_kinds: list[str] = field(default_factory=list)
    #: rounds of some modes, where a mode's blocks are cheap and its claims' intervals
    #: wide (mode -> rounds; a mode is measured in the larger of this and ``rounds``, so
    #: ``--rounds 8`` over a file's ``mode_rounds`` of 6 measures every mode 8 times).
    #: The extra rounds run after the run's ``rounds``, in every kernel the mode runs in;
    #: with ``settle_minutes`` they are *late rounds*: each runs only while it is expected
    #: to end within that budget
    mode_rounds: dict[str, int] = field(default_factory=dict)
    #: rounds at the smallest and the largest count only (mode -> rounds), of the probe
    #: kinds ``end_kinds``: for the figures read at those two counts alone (a penalty's
    #: rise from the smallest count to the largest, a request's cost at the smallest:
    #: amortization and the budget), where a mode's middle counts need no more.  They run
    #: after the mode's own rounds; a mode is measured at its ends in the larger of this
    #: and its rounds
    end_rounds: dict[str, int] = field(default_factory=dict)
    #: the probe kinds of the ``end_rounds`` (a subset of ``probe_kinds``)
    end_kinds: list[str] = field(default_factory=list)
    #: the sweep's time budget in minutes, its planned blocks included, for late rounds
    #: (the rounds beyond ``rounds`` of ``mode_rounds`` and ``end_rounds``: after the
    #: other planned blocks and their re-measurements, each runs only while it is
    #: expected to end within the budget) and settle rounds (0: none: every planned
    #: round runs).  When the planned blocks are done, the claims still inconclusive name
    #: the modes, kernels, probe kinds and counts they rest on; those are measured at
    #: those counts in more rounds, one round after another while the
    #: next round is expected to end within the budget (:mod:`labkit.runs.settle`)
    settle_minutes: float = 0.0
    #: at most this many settle rounds
    settle_rounds: int = 4

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepParams":
        if not isinstance(d, dict):
            raise UsageError(f"parameters must be a mapping, got {type(d).__name__}")
        known = set(PARAMETERS)
        unknown = sorted((k for k in d if k not in known), key=str)
        if unknown:
            shown = ", ".join(short(u, 30) if not isinstance(u, str) or len(u) > 30 else u for u in unknown[:5])
            raise UsageError(f"unknown parameter(s): {shown}{' ...' if len(unknown) > 5 else ''}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in d.items() if v is not None})

    @classmethod
    def from_yaml(cls, path: str, **overrides: Any) -> "SweepParams":
        """The parameters in the YAML file ``path`` (a regular file of at most
        1 MiB, no anchors or aliases: see :func:`load_yaml`), ``overrides`` on top."""
        try:
            raw = read_regular(path, f"parameter file {path}", PARAMS_MAX)
        except FileNotFoundError:
            raise UsageError(f"parameter file {path} does not exist") from None
        try:
            data = load_yaml(raw.decode("utf-8")) or {}
        except UnicodeDecodeError:
            raise UsageError(f"parameter file {path} is not UTF-8 text (a YAML file is needed)") from None
        except UsageError as exc:
            raise UsageError(f"parameter file {path}: {exc}") from None
        except (yaml.YAMLError, ValueError) as exc:   # ValueError: an integer of too many digits
            first = f"{exc}".splitlines()[0] if f"{exc}" else type(exc).__name__
            raise UsageError(f"parameter file {path} is not valid YAML: {clip(first, 120)}") from None
        if not isinstance(data, dict):
            raise UsageError(f"parameter file {path} must hold a mapping of name: value")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)

    def __post_init__(self) -> None:
        """Check and normalize every value, in the order the fields are listed."""
        put = partial(object.__setattr__, self)
        put("modes", names(self.modes, "modes", MODE_NAMES))
        put("targets", names(self.targets, "targets", TARGETS))
        put("probe_kinds", names(self.probe_kinds, "probe_kinds", tuple(PROBERS)))
        svc = [whole(v, "services", 0, MAX_SERVICES) for v in split(self.services, "services")]
        if not svc:
            raise UsageError("services: at least one count is needed")
        if len(set(svc)) != len(svc):
            raise UsageError(f"services: a count is given twice in {short(svc)}")
        put("services", sorted(svc))
        put("endpoints", whole(self.endpoints, "endpoints", 1, MAX_ENDPOINTS))
        put("ports", [whole(v, "ports", 1, 65535) for v in split(self.ports, "ports")])
        put("probes", whole(self.probes, "probes", 1, MAX_PROBES))
        put("rounds", whole(self.rounds, "rounds", 1, 1000))
        put("warmup", whole(self.warmup, "warmup", 0, 100_000))
        put("seed", whole(self.seed, "seed", 0, 2**32 - 1))
        put("timeout", number(self.timeout, "timeout", 0, 10, lo_open=True))
        if not isinstance(self.ipvs_scheduler, str) or self.ipvs_scheduler not in IPVS_SCHEDULERS:
            raise UsageError(f"ipvs_scheduler must be one of {', '.join(IPVS_SCHEDULERS)}, "
                             f"got {short(self.ipvs_scheduler)}")
        if not isinstance(self.kernel, str) or self.kernel not in KERNELS:
            raise UsageError(f"kernel must be one of {', '.join(KERNELS)}, got {short(self.kernel)}")
        for name in ("service_cidr", "endpoint_cidr"):
            if not isinstance(getattr(self, name), str):
                raise UsageError(f"{name} must be an IPv4 network such as 10.96.0.0/12, "
                                 f"got {short(getattr(self, name))}")
        put("kernels_by_mode", _kernels_by_mode(self.kernels_by_mode, self.modes, self.kernel))
        put("kind_modes", _kind_modes(self.kind_modes, self.probe_kinds, self.modes))
        put("uml_services", _uml_subset(self.uml_services, "uml_services", self.services, self.kernel))
        put("uml_probe_kinds", _uml_subset(self.uml_probe_kinds, "uml_probe_kinds", self.probe_kinds,
                                           self.kernel))
        put("mode_rounds", _mode_rounds(self.mode_rounds, self.modes, "mode_rounds"))
        put("end_rounds", _mode_rounds(self.end_rounds, self.modes, "end_rounds"))
        put("end_kinds", _end_kinds(self.end_kinds, self.probe_kinds, self.end_rounds))
        put("settle_minutes", number(self.settle_minutes, "settle_minutes", 0, 24 * 60))
        put("settle_rounds", whole(self.settle_rounds, "settle_rounds", 1, 100))
        pacing = [_pacing(v) for v in split(self.pacing, "pacing")]
        if not pacing:
            raise UsageError("pacing: at least one value is needed (0 = back to back)")
        if len(set(pacing)) != len(pacing):
            raise UsageError(f"pacing: a value is given twice in {short(pacing)}")
        put("pacing", pacing)
        per_block = (self.warmup + self.probes * len(self.pacing)) * len(self.targets)
        if per_block > SPORT_HI - SPORT_LO + 1:
            raise UsageError(f"(warmup + probes x pacings) x targets = {per_block:,} probes per block exceed the "
                             f"{SPORT_HI - SPORT_LO + 1:,} fresh source ports a block has: conntrack "
                             "would match reused 5-tuples; lower --probes")
        # the largest catalog must fit the address ranges, and not overlap the lab's
        cat = self.catalog(max(self.services))
        Topology("aaaaaa").check_against(cat.service_net, cat.endpoint_net)

    def catalog(self, services: int) -> ServiceCatalog:
        """The catalog of ``services`` services of these parameters."""
        return ServiceCatalog(services, self.endpoints, tuple(self.ports), self.service_cidr, self.endpoint_cidr)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def rounds_of(self, mode: str) -> int:
        """The rounds ``mode`` is measured in: the larger of ``rounds`` and its ``mode_rounds``."""
        return max(self.rounds, self.mode_rounds.get(mode, 0))

    def end_rounds_of(self, mode: str) -> int:
        """The rounds ``mode`` is measured in at its smallest and largest counts
        (of ``end_kinds``): the larger of its rounds and its ``end_rounds``."""
        return max(self.rounds_of(mode), self.end_rounds.get(mode, 0))

    @property
    def max_rounds(self) -> int:
        """The rounds of the mode measured most often (at its ends, with ``end_rounds``)."""
        return max(self.end_rounds_of(m) for m in self.modes)

    def end_kinds_for(self, mode: str, kernel: str) -> list[str]:
        """The probe kinds of ``mode``'s end rounds in ``kernel`` (none: no end
        rounds there)."""
        if self.end_rounds_of(mode) <= self.rounds_of(mode):
            return []
        return [k for k in self.kinds_for(mode, kernel) if k in self.end_kinds]

    def block_kinds(self, mode: str, kernel: str, kinds: tuple[str, ...] = ()) -> list[str]:
        """The probe kinds a block measures: ``kinds_for``, or those of ``kinds``
        among them (an end round's block)."""
        return [k for k in self.kinds_for(mode, kernel) if not kinds or k in kinds]

    def services_in(self, kernel: str) -> list[int]:
        """The service counts measured in ``kernel`` ("" = the run's one kernel)."""
        return list(self.uml_services) if kernel == "uml" and self.uml_services else list(self.services)

    def kinds_for(self, mode: str, kernel: str) -> list[str]:
        """The probe kinds measured for ``mode`` in ``kernel``, in ``probe_kinds`` order."""
        kinds = self.uml_probe_kinds if kernel == "uml" and self.uml_probe_kinds else self.probe_kinds
        return [k for k in kinds if mode in self.kind_modes.get(k, self.modes)]


#: the names of the sweep's parameters
PARAMETERS = tuple(f.name for f in dataclasses.fields(SweepParams))
#: parameters given in a parameter file (or papermill) only: mappings and the plan of a
#: host+uml run, not command-line options
FILE_ONLY = ("kernels_by_mode", "kind_modes", "uml_services", "uml_probe_kinds", "mode_rounds",
             "end_rounds", "end_kinds", "settle_minutes", "settle_rounds")

#: the deepest nesting a parameter file may have (a list of lists of ... is refused)
YAML_MAX_DEPTH = 32


def load_yaml(text: str) -> Any:
    """The YAML document ``text``, refusing anchors and aliases (``&a``,
    ``*a``: a few hundred bytes of aliases expand to gigabytes) and nesting
    deeper than :data:`YAML_MAX_DEPTH`, from the parser's events, before
    anything is built.  Only plain data (the safe loader)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    depth = 0
    for ev in yaml.parse(text, Loader=loader):
        if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None) is not None:
            line = ev.start_mark.line + 1 if ev.start_mark is not None else "?"
            raise UsageError(f"YAML anchors and aliases (&name, *name) are not accepted (line {line})")
        if isinstance(ev, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > YAML_MAX_DEPTH:
                raise UsageError(f"nested more than {YAML_MAX_DEPTH} levels deep")
        elif isinstance(ev, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1
    return yaml.load(text, Loader=loader)


#: names a sweep notebook may be given besides the parameters (papermill -p)
NOTEBOOK_NAMES = frozenset({"out_dir", "resume", "command", "dry_run"})


def refuse_unknown(names_given: set[str]) -> None:
    """Refuse names that are neither sweep parameters nor the notebook's own
    (the papermill path: papermill only warns about them)."""
    known = set(PARAMETERS) | NOTEBOOK_NAMES
    unknown = sorted(n for n in names_given if not n.startswith("_") and n not in known)
    if unknown:
        raise UsageError(f"unknown parameter(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _kernels_by_mode(value: Any, modes: list[str], kernel: str) -> dict[str, list[str]]:
    """A user-given (or stored) ``kernels_by_mode``, checked: a mapping of each
    of the run's modes to the kernels it is measured in (host, uml), given only
    with kernel host+uml.  Empty: computed when the run starts
    (:func:`labkit.runs.sweep.kernels_by_mode`)."""
    if not isinstance(value, dict):
        raise UsageError(f"kernels_by_mode must be a mapping of mode: [kernels], got {short(value)}")
    if not value:
        return {}
    if kernel != "host+uml":
        raise UsageError(f"kernels_by_mode is only for kernel host+uml (kernel is {kernel}); "
                         "remove it, or set kernel: host+uml")
    for mode in value:
        if mode not in modes:
            raise UsageError(f"kernels_by_mode: {short(mode)} is not one of the run's modes "
                             f"({', '.join(modes)})")
    missing = [m for m in modes if m not in value]
    if missing:
        raise UsageError(f"kernels_by_mode names no kernel for mode(s) {', '.join(missing)}: "
                         "give every mode, or leave kernels_by_mode out")
    return {m: names(value[m], f"kernels_by_mode[{m}]", UML_KERNELS) for m in modes}


def _kind_modes(value: Any, kinds: list[str], modes: list[str]) -> dict[str, list[str]]:
    """``kind_modes`` checked: each key one of the run's probe kinds, each value
    some of its modes (in the modes' order)."""
    if not isinstance(value, dict):
        raise UsageError(f"kind_modes must be a mapping of probe kind: [modes], got {short(value)}")
    out = {}
    for kind, ms in value.items():
        if kind not in kinds:
            raise UsageError(f"kind_modes: {short(kind)} is not one of the run's probe kinds ({', '.join(kinds)})")
        given = names(ms, f"kind_modes[{kind}]", tuple(modes))
        out[kind] = [m for m in modes if m in given]
    return out


def _mode_rounds(value: Any, modes: list[str], what: str) -> dict[str, int]:
    """``mode_rounds`` / ``end_rounds`` checked: each key one of the run's
    modes, each value a whole number of rounds (the modes' order)."""
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a mapping of mode: rounds, got {short(value)}")
    for mode in value:
        if mode not in modes:
            raise UsageError(f"{what}: {short(mode)} is not one of the run's modes ({', '.join(modes)})")
    return {m: whole(value[m], f"{what}[{m}]", 1, 1000) for m in modes if m in value}


def _end_kinds(value: Any, kinds: list[str], end_rounds: dict[str, int]) -> list[str]:
    """``end_kinds`` checked: some of the run's probe kinds (in their order),
    given when ``end_rounds`` is (and only then)."""
    items = split(value, "end_kinds")
    for v in items:
        if v not in kinds:
            raise UsageError(f"end_kinds: {short(v)} is not one of the run's probe kinds ({', '.join(kinds)})")
    if end_rounds and not items:
        raise UsageError("end_rounds needs end_kinds: the probe kinds measured in those rounds")
    if items and not end_rounds:
        raise UsageError("end_kinds is only for end_rounds: give end_rounds too, or remove end_kinds")
    return [k for k in kinds if k in items]


def _uml_subset(value: Any, what: str, of: list, kernel: str) -> list:
    """``uml_services`` / ``uml_probe_kinds`` checked: a subset of the run's
    ``services`` / ``probe_kinds`` (in their order), given only with host+uml."""
    items = split(value, what)
    if not items:
        return []
    if kernel != "host+uml":
        raise UsageError(f"{what} is only for kernel host+uml (kernel is {kernel}); remove it, or set "
                         "kernel: host+uml")
    if what == "uml_services":
        items = [whole(v, what, 0, MAX_SERVICES) for v in items]
    for v in items:
        if v not in of:
            raise UsageError(f"{what}: {short(v)} is not one of the run's {what[4:]} ({short(of)})")
    return [v for v in of if v in items]


def _pacing(v: Any) -> float:
    """One pacing value: 0 (back to back) or probes per second (``1000``, ``1k``)."""
    what = "pacing (probes/s; 0 = back to back)"
    if isinstance(v, str):
        v = whole(v, what, 0, int(MAX_PACING))
    if v == 0 and not isinstance(v, bool):
        return 0.0
    return number(v, what, MIN_PACING, MAX_PACING)

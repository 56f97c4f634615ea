"""The one table of labkit's modes (pure): what every layer knows of a mode
beside its datapath code.

One frozen :class:`Mode` row per mode, in the order reports and tables list
them.  The report's colours, the claims' lookup classes, which kernels run a
mode (and why not), which modes relate two kernels, the change loaders, the
sweep parameters a mode takes: all read from here.  Adding a mode is one row
here, its datapath module and its registration (``labkit.datapaths``, whose
registry checks at import that its classes and these rows agree).
"""
from __future__ import annotations

from dataclasses import dataclass

from labkit.core.errors import UsageError

#: IPVS schedulers labkit programs (``--ipvs-scheduler``; the ipvs mode's option)
IPVS_SCHEDULERS = ("rr", "wrr", "lc", "sh", "mh")
#: lookup cost classes: the service lookup grows with the service count, or does not
LINEAR, CONSTANT = "linear", "constant"


@dataclass(frozen=True)
class Mode:
    #: the name on the command line and in the data
    name: str
    #: the datapath family (one module of labkit.datapaths): iptables, nftables, ipvs, ebpf
    family: str
    #: how the service lookup grows with the service count: :data:`LINEAR` or :data:`CONSTANT`
    lookup: str
    #: its fixed colour in every figure (colour-blind safe, Okabe-Ito)
    color: str
    #: how a sentence of a report names it (the report's findings: "IPVS")
    label: str
    #: the loaders a change can be sent with (the ``loader`` column), its own first
    change_loaders: tuple[str, ...]
    #: its code runs natively in the host's kernel and in labkit's user-mode Linux, and
    #: on the host labkit is measured on: its figures relate the two kernels (level and
    #: slope ratios).  Not eBPF (interpreted in UML), not IPVS (not on that host)
    calibrator: bool = False
    #: its program runs in the BPF interpreter in user-mode Linux (arch um has no BPF JIT)
    interpreted_in_uml: bool = False
    #: (kernel, why) for each kernel labkit boots that cannot run it (none today: the
    #: user-mode Linux config, labkit/guests/uml.config, has what every mode needs)
    cannot: tuple[tuple[str, str], ...] = ()
    #: sweep parameters it takes, as (parameter name, datapath constructor keyword)
    options: tuple[tuple[str, str], ...] = ()

    @property
    def change_loader(self) -> str:
        """The loader of its own changes."""
        return self.change_loaders[0]

    def cannot_run_in(self, kernel: str) -> str:
        """Why ``kernel`` cannot run it ("" when it can, as far as the table knows:
        the host's own tools and features are the datapath's to check)."""
        return dict(self.cannot).get(kernel, "")


MODES: tuple[Mode, ...] = (
    Mode("iptables-legacy", "iptables", LINEAR, "#0072B2", "iptables-legacy",
         ("iptables-legacy-restore",), calibrator=True),
    Mode("iptables-nft", "iptables", LINEAR, "#D55E00", "iptables-nft",
         ("iptables-nft-restore",), calibrator=True),
    Mode("nftables", "nftables", CONSTANT, "#009E73", "nftables", ("netlink", "nft"), calibrator=True),
    Mode("ipvs", "ipvs", CONSTANT, "#CC79A7", "IPVS", ("ipset, ip, ipvsadm",),
         options=(("ipvs_scheduler", "scheduler"),)),
    Mode("ebpf", "ebpf", CONSTANT, "#E69F00", "ebpf", ("bpf()",), interpreted_in_uml=True),
    Mode("ebpf-xdp", "ebpf", CONSTANT, "#56B4E9", "ebpf-xdp", ("bpf()",), interpreted_in_uml=True),
)

_BY_NAME = {m.name: m for m in MODES}
#: every mode's name, in the table's order
NAMES = tuple(_BY_NAME)


def get(name: str) -> Mode:
    """The row of mode ``name``; UsageError naming the known modes."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UsageError(f"unknown mode {name!r}; known modes: {', '.join(NAMES)}") from None


def of_family(family: str) -> tuple[str, ...]:
    """The modes of one datapath family (``of_family("iptables")``)."""
    return tuple(m.name for m in MODES if m.family == family)


def with_lookup(cost: str) -> tuple[str, ...]:
    """The modes whose lookup is of cost class ``cost`` (:data:`LINEAR`, :data:`CONSTANT`)."""
    return tuple(m.name for m in MODES if m.lookup == cost)


def cannot_run_in(kernel: str) -> dict[str, str]:
    """{mode: why} for the modes ``kernel`` cannot run."""
    return {m.name: m.cannot_run_in(kernel) for m in MODES if m.cannot_run_in(kernel)}


#: modes whose code runs natively in the host kernel and in labkit's user-mode
#: Linux: the only ones that relate the two kernels' figures (level and slope ratios)
CALIBRATORS = tuple(m.name for m in MODES if m.calibrator)
#: modes whose program runs in the BPF interpreter in user-mode Linux: every
#: table and figure of them measured there says so
INTERPRETED_IN_UML = tuple(m.name for m in MODES if m.interpreted_in_uml)
#: the tag of an interpreted mode's curve ("ebpf [interpreted]") in tables and figures
INTERPRETED_TAG = "interpreted"
#: what a report says of it, once
INTERPRETED_NOTE = "interpreted: user-mode Linux has no BPF JIT (arch um), so eBPF runs in the BPF interpreter there"
#: each mode's colour in figures
COLORS = {m.name: m.color for m in MODES}


def interpreted(mode: str, backend: str) -> bool:
    """True when ``mode`` ran in the BPF interpreter (``backend`` "uml")."""
    return backend == "uml" and mode in INTERPRETED_IN_UML

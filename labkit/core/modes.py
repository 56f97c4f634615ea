"""What labkit knows of its modes beside their datapath code (pure).

The first rows of the one table of modes: which modes relate two kernels,
and which run interpreted in user-mode Linux.
"""
from __future__ import annotations

#: modes whose code runs natively in the host kernel and in labkit's user-mode
#: Linux: the only ones that relate the two kernels' figures (level and slope
#: ratios).  eBPF is JIT-compiled on the host and interpreted in UML, so its ratio
#: would measure the interpreter; IPVS is not on the host.
CALIBRATORS = ("iptables-legacy", "iptables-nft", "nftables")

#: modes whose program runs in the BPF interpreter in user-mode Linux (arch um
#: has no BPF JIT): every table and figure of them measured there says so
INTERPRETED_IN_UML = ("ebpf", "ebpf-xdp")

#: the tag of an interpreted mode's curve ("ebpf [interpreted]") in tables and figures
INTERPRETED_TAG = "interpreted"
#: what a report says of it, once
INTERPRETED_NOTE = "interpreted: user-mode Linux has no BPF JIT (arch um), so eBPF runs in the BPF interpreter there"


def interpreted(mode: str, backend: str) -> bool:
    """True when ``mode`` ran in the BPF interpreter (``backend`` "uml")."""
    return backend == "uml" and mode in INTERPRETED_IN_UML

"""Memory pre-flight: refuse a run the machine cannot hold, before the kernel is touched.

Loading a large catalog is the one step of a run whose memory grows with the
catalog: the loader (``iptables-restore``, ``nft``, ``ipvsadm``) parses the whole
ruleset in user space, and the kernel then holds the rules.  ``nft`` 1.0.6 keeps
the whole parsed ruleset and its netlink batch in memory, many gigabytes at
100,000 services x 10 endpoints (docs/nftables.md, "Programming speed"), enough
to push a smaller machine into the OOM killer in the middle of a sweep.  Each
datapath class states its measured cost per endpoint (``mem_per_endpoint``,
bytes, from ``python -m labkit bench program``: columns ``loader_peak_mb`` plus
``held_mb``, with a 25% margin; the figures per mode are in docs/experiments.md,
"Memory per endpoint"); a run whose largest catalog would need more than the
machine's available memory is refused with the figure, exit status 3.

``LABKIT_SKIP_MEMORY_CHECK=1`` turns the check off (for a machine whose swap or
overcommit the user knows better).
"""
from __future__ import annotations

import os
from typing import Iterable

from labkit.core.errors import Unavailable

#: a margin for what a run needs besides the loader and the kernel: the Python
#: process with its rendered text, probes and tables (an allowance, not a measurement)
BASE_BYTES = 1 << 30


def mem_available() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes (None where unreadable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_needed(cls, services: int, endpoints: int, ports: int = 1) -> int:
    """Bytes a run of datapath ``cls`` needs at its largest catalog (pure)."""
    per = float(getattr(cls, "mem_per_endpoint", 0.0))
    return int(BASE_BYTES + per * services * endpoints * ports)


def check_memory(classes: Iterable, services: int, endpoints: int, ports: int = 1,
                 available: int | None = None) -> None:
    """Raise :class:`Unavailable` naming every mode whose largest catalog needs
    more memory than is available.  ``available`` defaults to MemAvailable."""
    if os.environ.get("LABKIT_SKIP_MEMORY_CHECK") == "1":
        return
    avail = mem_available() if available is None else available
    if avail is None:
        return
    short = [(cls.name, memory_needed(cls, services, endpoints, ports)) for cls in classes]
    short = [(name, need) for name, need in short if need > avail]
    if short:
        gb = 1 << 30
        what = ", ".join(f"{name} needs about {need / gb:.1f} GB" for name, need in short)
        raise Unavailable(
            f"not enough memory for {services:,} services x {endpoints} endpoints x {ports} port(s): "
            f"{what}; {avail / gb:.1f} GB available. Use fewer services, leave the mode out, or "
            f"set LABKIT_SKIP_MEMORY_CHECK=1 if swap will hold it")

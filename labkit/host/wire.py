"""Packet-socket constants and CPU isolation for the measuring thread.

Shared by the probes (keepalive, reuse, HTTP) and the CPU experiment:
``isolated`` runs the calling thread and its server on one CPU, at real-time
priority where the machine allows it.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Sequence

SNAPLEN = 256                  # bytes of each frame read from a tap
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23    # a tap that sees incoming frames only (Linux 4.20+)


RT_PRIORITY = 1   # SCHED_FIFO priority while probing: above every normal task, the lowest RT one
_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        logging.getLogger(__name__).warning(msg)


@contextlib.contextmanager
def isolated(pids: Sequence[int], realtime: bool = True):
    """Run the calling thread and the processes ``pids`` on one CPU (the
    highest CPU all of them may use) and, with ``realtime``, at SCHED_FIFO
    priority :data:`RT_PRIORITY`, so other tasks on the machine cannot get
    between them.  Affinities and policies are restored afterwards.

    Processes the thread starts meanwhile inherit both (``ab``, for one).
    The threads involved block on I/O between requests; they never spin."""
    ids = [0]
    saved_cpu: dict[int, set[int]] = {}
    saved_pol: dict[int, tuple[int, os.sched_param]] = {}
    for p in [0, *pids]:
        with contextlib.suppress(ProcessLookupError):
            saved_cpu[p] = os.sched_getaffinity(p)
            saved_pol[p] = (os.sched_getscheduler(p), os.sched_getparam(p))
            if p:
                ids.append(p)
    common = set(saved_cpu[0]).intersection(*saved_cpu.values()) or set(saved_cpu[0])
    cpu = max(common)
    try:
        for p in ids:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(p, {cpu})
                if realtime:
                    try:
                        os.sched_setscheduler(p, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
                    except PermissionError:  # no RT budget here (e.g. a cgroup without one)
                        _warn_once("real-time priority refused: probing pinned, at normal priority")
        yield cpu
    finally:
        for p in reversed(ids):
            with contextlib.suppress(ProcessLookupError):
                pol, prm = saved_pol[p]
                os.sched_setscheduler(p, pol, prm)
                os.sched_setaffinity(p, saved_cpu[p])

"""Small helpers shared by the connection-level probes (keepalive, reuse,
HTTP) and the CPU experiment: TCP segment parsing, CPU pinning.

No imports from the probe modules, so any of them may import this first.
"""
from __future__ import annotations

import contextlib
import os
import socket
import struct
from dataclasses import dataclass
from typing import Sequence

SNAPLEN = 256                  # bytes of each frame read from a tap
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23    # a tap that sees incoming frames only (Linux 4.20+)


@contextlib.contextmanager
def same_cpu(pids: Sequence[int]):
    """Run the calling thread and the processes ``pids`` on one CPU (the
    highest CPU all of them may use); their affinities are restored after."""
    mine = os.sched_getaffinity(0)
    saved = {}
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            saved[p] = os.sched_getaffinity(p)
    common = set(mine).intersection(*saved.values()) or set(mine)
    cpu = max(common)
    try:
        os.sched_setaffinity(0, {cpu})
        for p in saved:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(p, {cpu})
        yield cpu
    finally:
        os.sched_setaffinity(0, mine)
        for p, cpus in saved.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(p, cpus)


@dataclass(frozen=True)
class Segment:
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    flags: int
    payload: bytes


def parse_segment(frame: bytes) -> Segment | None:
    """An Ethernet/IPv4/TCP frame's addresses, ports, flags and payload (pure).

    The payload ends where the IP datagram ends (Ethernet padding is not
    payload)."""
    if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return None
    ihl = (frame[14] & 0x0F) * 4
    total = struct.unpack_from("!H", frame, 16)[0]
    o = 14 + ihl
    if len(frame) < o + 20:
        return None
    sport, dport, seq = struct.unpack_from("!HHI", frame, o)
    doff = (frame[o + 12] >> 4) * 4
    return Segment(socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34]), sport, dport,
                   seq, frame[o + 13], frame[o + doff:14 + total])

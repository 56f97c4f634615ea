"""The noise gauge: how busy this machine was while a run measured.

A :class:`Gauge` samples, every few seconds from a thread of the run's own
process on the host (so also while a block runs in user-mode Linux, whose
processes are the run's children): the 1-minute load average, the CPU time
stolen by a hypervisor, and the CPU used by processes *outside* the run's
own process tree (kernel threads aside: they also do the run's own packet
work), naming the busiest of them.  Reads ``/proc`` only; writes
nothing but its samples (the runner stores them as ``load.json`` in the run
directory, :data:`labkit.rundir.schema.LOAD`).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

#: seconds between samples
INTERVAL_S = 5.0
#: a process outside the run is named when it used at least this share of one CPU
BUSY_MIN = 0.10
#: at most this many busy processes named per sample
BUSY_TOP = 3


def _cpu_times() -> tuple[float, float, float]:
    """(all jiffies, idle+iowait jiffies, steal jiffies) from /proc/stat."""
    with open("/proc/stat") as f:
        v = [float(x) for x in f.readline().split()[1:]]
    v += [0.0] * (8 - len(v))
    return sum(v[:8]), v[3] + v[4], v[7]


def _procs() -> dict[int, tuple[int, str, float, int]]:
    """pid -> (parent pid, command, utime+stime jiffies, start time) of every process."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                s = f.read()
        except OSError:   # gone meanwhile
            continue
        comm = s[s.index("(") + 1:s.rindex(")")]
        rest = s[s.rindex(")") + 2:].split()
        out[int(name)] = (int(rest[1]), comm, float(rest[11]) + float(rest[12]), int(rest[19]))
    return out


def _tree(procs: dict[int, tuple[int, str, float, int]], root: int) -> set[int]:
    """``root`` and its descendants."""
    kids: dict[int, list[int]] = {}
    for pid, (ppid, *_) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo += kids.get(p, [])
    return out


class Gauge:
    """Samples the machine's load every :data:`INTERVAL_S` seconds from start()
    to stop() (a context manager); ``samples`` holds one dict per sample,
    ``on_sample`` is called with the list after each one."""

    def __init__(self, interval: float = INTERVAL_S,
                 on_sample: Callable[[list[dict[str, Any]]], None] | None = None):
        self.interval = interval
        self.on_sample = on_sample
        self.samples: list[dict[str, Any]] = []
        self.cores = os.cpu_count() or 1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: tuple[float, tuple[float, float, float], dict[int, tuple[int, str, float, int]]] | None = None

    def __enter__(self) -> "Gauge":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._last = (time.time(), _cpu_times(), _procs())
        self._thread = threading.Thread(target=self._loop, name="labkit-gauge", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except (OSError, ValueError, IndexError):   # /proc unreadable: no sample, never fatal
                continue

    def sample(self) -> dict[str, Any]:
        """One sample since the previous one (appended to ``samples``)."""
        now, cpu, procs = time.time(), _cpu_times(), _procs()
        assert self._last is not None, "start() first"
        t0, cpu0, procs0 = self._last
        self._last = (now, cpu, procs)
        total = max(cpu[0] - cpu0[0], 1.0)
        ours = _tree(procs, os.getpid())
        hz = os.sysconf("SC_CLK_TCK")
        dt = max(now - t0, 1e-3)
        # CPU since the last sample; a process started since then (a new start time): all of its CPU
        used = {pid: (p[2] - (procs0[pid][2] if pid in procs0 and procs0[pid][3] == p[3] else 0.0)) / hz / dt
                for pid, p in procs.items()}
        kthreads = _tree(procs, 2)   # the kernel's threads (softirq work for the run's own packets too)
        others = {pid: u for pid, u in used.items() if pid not in ours and pid not in kthreads and u > 0}
        top = sorted(others.items(), key=lambda kv: -kv[1])
        with open("/proc/loadavg") as f:
            load1 = float(f.read().split()[0])
        row = {"time": now, "seconds": dt, "load1": load1, "cores": self.cores,
               "busy_pct": 100.0 * (1.0 - (cpu[1] - cpu0[1]) / total) * self.cores,
               "steal_pct": 100.0 * (cpu[2] - cpu0[2]) / total * self.cores,
               "ours_pct": 100.0 * sum(u for pid, u in used.items() if pid in ours),
               "others_pct": 100.0 * sum(others.values()),
               "busiest": [f"{procs[pid][1]} ({pid}) {100 * u:.0f}%" for pid, u in top[:BUSY_TOP]
                           if u >= BUSY_MIN]}
        self.samples.append(row)
        if self.on_sample:
            self.on_sample(self.samples)
        return row

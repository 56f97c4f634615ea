"""CPU cost per new connection: at a fixed rate of new connections (default
1,000/s, the seed's setup), how much CPU time does the node spend on each?

Method.  A generator thread in the client namespace sends prebuilt TCP SYNs
(the SYN probes' frames: a fresh 5-tuple each, so every one is a new
connection for the datapath) at the given rate, paced by the clock, from a
raw packet socket on the client's veth, pinned to one CPU.  Each SYN crosses
the node (service lookup, DNAT, conntrack entry, masquerade), reaches the
backend's kernel, whose SYN-ACK crosses the node back; the client's kernel
answers it with a RST, which crosses the node once more.

With veth, a frame sent by a thread is processed in softirq context *on
that thread's CPU, in that thread's context*: ``veth_xmit`` queues it to the
CPU's backlog and the softirq runs when the send path re-enables bottom
halves, before ``send()`` returns; the backend's SYN-ACK and the client's
RST are produced and forwarded inside the same softirq run.  On a kernel
without ``CONFIG_IRQ_TIME_ACCOUNTING`` (this one) the scheduler charges that
softirq time to the running thread, so the thread's own CPU time
(``/proc/thread-self/schedstat``, nanoseconds from the scheduler clock)
holds the whole chain: node, backend and client kernels, plus the
generator's own Python loop.  Per connection::

    cpu_us      = thread CPU time / SYNs sent
    baseline_us = the same, in the same block, before the datapath is loaded
                  (the node only forwards; target: the none address)
    excess_us   = cpu_us - baseline_us      (what the datapath costs per connection)

Why not the alternatives.  ``/proc/stat`` softirq and system time are
machine-wide ticks of 10 ms (USER_HZ) and include every other process and
tenant (other labs ran on this machine while we measured); they are recorded
as a cross-check (``machine_*`` columns), not used.  ``/proc/softirqs``
counts softirq *runs*, not time.  ``perf stat -e instructions`` is
``<not supported>`` here (no PMU in the VM); perf's software clocks measure
what schedstat already gives.  On a kernel *with* IRQ time accounting the
softirq time is no longer charged to the thread; there the generator adds
the softirq time of its own CPU from ``/proc/stat`` (``method`` column
``thread+cpu-softirq``), which is coarse (10 ms ticks) and shared with
whatever else runs on that CPU.

Noise and leaks.  Softirq work the kernel defers to ``ksoftirqd`` (after
2 ms or 10 restarts) escapes the thread; ``ksoftirqd_ms`` records how much
the ksoftirqd threads ran meanwhile (an upper bound, other tenants
included).  The thread also pays for its own Python loop, the same in every
row, which the baseline removes.  Interleaving and the per-block baseline
protect the excess from drift; the spread between rounds is the honest
error bar.
"""
from __future__ import annotations

import gzip
import os
import platform
import socket
import time
from typing import Any, Mapping, Sequence

from labkit.core.catalog import ServiceCatalog
from labkit.core.errors import LabkitError, UsageError
from labkit.core.validate import number
from labkit.host import netns
from labkit.host.wire import isolated
from labkit.lab.lab import Lab
from labkit.probes.base import SPORT_HI, SPORT_LO
from labkit.probes.syn import SynProber
from labkit.rundir import schema
from labkit.runs.params import SweepParams
from labkit.runs.runner import Block, BlockContext, Experiment, Runner, plan

RATE = 1000.0
SECONDS = 5.0
MIN_ANSWERED = 0.99
USER_HZ = os.sysconf("SC_CLK_TCK")


# ---- counters (pure readers) ------------------------------------------------------
def thread_cpu_ns(path: str = "/proc/thread-self/schedstat") -> int:
    """CPU time of the calling thread, ns (first field of schedstat)."""
    with open(path) as f:
        return int(f.read().split()[0])


def parse_proc_stat(text: str) -> dict[str, dict[str, int]]:
    """``/proc/stat`` cpu lines as {"cpu": {...}, "cpu0": {...}} in USER_HZ ticks."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    out = {}
    for line in text.splitlines():
        if line.startswith("cpu"):
            parts = line.split()
            out[parts[0]] = dict(zip(names, map(int, parts[1:1 + len(names)])))
    return out


def proc_stat() -> dict[str, dict[str, int]]:
    with open("/proc/stat") as f:
        return parse_proc_stat(f.read())


def ksoftirqd_ns() -> int:
    """Summed CPU time of the ksoftirqd threads, ns."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/comm") as f:
                if not f.read().startswith("ksoftirqd/"):
                    continue
            total += thread_cpu_ns(f"/proc/{d}/schedstat")
        except OSError:
            continue
    return total


def parse_net_dev(text: str, ifname: str) -> tuple[int, int]:
    """(rx_packets, tx_packets) of ``ifname`` from /proc/net/dev text."""
    for line in text.splitlines():
        if ":" in line and line.split(":", 1)[0].strip() == ifname:
            f = line.split(":", 1)[1].split()
            return int(f[1]), int(f[9])
    raise LabkitError(f"no interface {ifname} in /proc/net/dev")


def packets(ns: str, ifname: str) -> tuple[int, int]:
    with netns.entered(ns):
        with open("/proc/thread-self/net/dev") as f:
            text = f.read()
    return parse_net_dev(text, ifname)


def irq_time_accounting() -> bool | None:
    """True if the running kernel charges softirq time separately
    (CONFIG_IRQ_TIME_ACCOUNTING=y); None if its config cannot be read."""
    for path, opener in (("/proc/config.gz", gzip.open), (f"/boot/config-{platform.release()}", open)):
        try:
            with opener(path, "rt") as f:
                return "CONFIG_IRQ_TIME_ACCOUNTING=y" in f.read()
        except OSError:
            continue
    return None


# ---- the generator -------------------------------------------------------------------
def generate(lab: Lab, frames: Sequence[bytes], rate: float = RATE) -> dict:
    """Send ``frames`` from the client's veth at ``rate`` per second; the
    CPU the sending thread spent (the softirq work included, see the module
    docstring) and what else the machine did meanwhile."""
    t = lab.topo
    with netns.entered(lab.client):
        netns.require_inside(lab.client, "send CPU-experiment frames")
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    irq_acct = bool(irq_time_accounting())
    with sock, isolated([]) as cpu:
        sock.bind((t.client_if, 0))
        send = sock.send
        rx0, _ = packets(lab.client, t.client_if)
        st0, ks0 = proc_stat(), ksoftirqd_ns()
        c0 = thread_cpu_ns()
        t0 = time.perf_counter()
        for k, frame in enumerate(frames):
            wait = t0 + k / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            send(frame)
        wall = time.perf_counter() - t0
        c1 = thread_cpu_ns()
        st1, ks1 = proc_stat(), ksoftirqd_ns()
        time.sleep(0.05)  # answers still in flight are counted, never timed
        rx1, _ = packets(lab.client, t.client_if)
    tick = 1.0 / USER_HZ
    d = {k: (st1["cpu"][k] - st0["cpu"][k]) * tick for k in ("softirq", "system")}
    cpu_ns = c1 - c0
    method = "thread"
    if irq_acct:
        cpu_ns += int((st1[f"cpu{cpu}"]["softirq"] - st0[f"cpu{cpu}"]["softirq"]) * tick * 1e9)
        method = "thread+cpu-softirq"
    return {"sent": len(frames), "answered": rx1 - rx0, "wall_s": wall, "thread_cpu_ns": cpu_ns,
            "method": method, "machine_softirq_s": d["softirq"], "machine_system_s": d["system"],
            "ksoftirqd_ms": (ks1 - ks0) / 1e6, "cpu": cpu}


def syn_frames(lab: Lab, catalog: ServiceCatalog, target: str, n: int, seed: int) -> list[bytes]:
    """``n`` SYN frames for fresh 5-tuples, crafted like the SYN probes."""
    pr = SynProber(lab, seed=seed)  # crafting only: no sockets are opened
    return [p.frame for p in pr.craft_for(catalog, target, n)]


def measure(lab: Lab, catalog: ServiceCatalog, target: str, rate: float, seconds: float, seed: int) -> dict:
    n = max(1, int(round(rate * seconds)))
    frames = syn_frames(lab, catalog, target, n, seed)
    r = generate(lab, frames, rate)
    r["cpu_us"] = r["thread_cpu_ns"] / 1e3 / r["sent"]
    return r


# ---- the experiment ----------------------------------------------------------------
class Cpu(Experiment):
    """For every block of a sweep plan (modes, services, targets, rounds, seed):
    the no-datapath baseline, then each target with the datapath loaded.
    ``labkit cpu --out`` may name a sweep's run directory."""
    kind = "cpu"

    def __init__(self, params: SweepParams, *, rate: float = RATE, seconds: float = SECONDS) -> None:
        self.p = params
        self.rate = number(rate, "rate (new connections/s)", 1, 20000)
        self.seconds = number(seconds, "seconds", 0.1, 600)
        n = int(round(self.rate * self.seconds))
        per_block = n * (1 + len(self.p.targets))
        if per_block > SPORT_HI - SPORT_LO + 1:
            raise UsageError(f"rate x seconds x (targets + 1) = {per_block:,} SYNs per block exceed "
                             f"the {SPORT_HI - SPORT_LO + 1:,} fresh source ports; lower them")

    def params_dict(self) -> dict[str, Any]:
        return {**self.p.to_dict(), "rate": self.rate, "seconds": self.seconds}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "Cpu":
        d = dict(meta["params"])
        rate, seconds = d.pop("rate", RATE), d.pop("seconds", SECONDS)
        return cls(SweepParams.from_dict(d), rate=rate, seconds=seconds)

    def blocks(self) -> list[Block]:
        p = self.p
        return plan(p.modes, p.services, p.rounds, p.seed, p.targets)

    def largest_catalog(self) -> ServiceCatalog:
        return self.p.catalog(max(self.p.services))

    def meta_extra(self) -> dict[str, Any]:
        return {"rate": self.rate, "seconds": self.seconds,
                "irq_time_accounting": irq_time_accounting()}

    def run_block(self, ctx: BlockContext) -> None:
        p, b = self.p, ctx.block
        catalog = p.catalog(b.services)
        seed = p.seed * 1_000_003 + b.block
        base = measure(ctx.lab, catalog, "none", self.rate, self.seconds, seed)
        dp = ctx.mode(ctx.lab)
        dp.setup(catalog)
        rows = []
        try:
            for k, target in enumerate(b.targets):
                t0 = time.time()
                r = measure(ctx.lab, catalog, target, self.rate, self.seconds, seed + 1 + k)
                rows.append(_row(ctx, catalog, target, self.rate, self.seconds, r, base, t0))
        finally:
            dp.teardown()
        ctx.tables.add(schema.CPU, rows)
        ctx.bar.update(1)


def _row(ctx: BlockContext, catalog: ServiceCatalog, target: str, rate: float, seconds: float,
         r: dict, base: dict, started: float) -> dict:
    reasons = []
    for what, x in (("", r), ("baseline: ", base)):
        if x["answered"] < MIN_ANSWERED * x["sent"]:
            reasons.append(f"{what}{x['answered']:,} of {x['sent']:,} SYNs answered")
        if x["wall_s"] > 1.05 * x["sent"] / rate + 0.05:
            reasons.append(f"{what}sending took {x['wall_s']:.2f} s, not {x['sent'] / rate:.2f} s "
                           "(the rate was not reached)")
    return {**ctx.ident(), "endpoints": catalog.endpoints,
            "target": target, "rate": rate, "seconds": seconds, "sent": r["sent"],
            "answered": r["answered"], "wall_s": r["wall_s"], "thread_cpu_ns": r["thread_cpu_ns"],
            "cpu_us": r["cpu_us"], "baseline_us": base["cpu_us"],
            "excess_us": r["cpu_us"] - base["cpu_us"], "method": r["method"],
            "valid": not reasons, "reason": "; ".join(reasons),
            "machine_softirq_s": r["machine_softirq_s"], "machine_system_s": r["machine_system_s"],
            "ksoftirqd_ms": r["ksoftirqd_ms"], "started": started}


def run_cpu(params: SweepParams, out: str, *, rate: float = RATE, seconds: float = SECONDS,
            command: str | None = None, progress: bool = True) -> str:
    """``labkit cpu`` as a function: writes ``out/cpu.parquet`` and ``out/cpu.json``
    (``out`` may be a sweep's run directory); returns ``out``."""
    result = Runner(Cpu(params, rate=rate, seconds=seconds), out, command=command, progress=progress).run()
    assert result is not None
    return result

"""Where a run's kernel is: the host's, or another one labkit boots.

``--kernel host|vm|auto`` on every run command (sweep, control, cpu, bench)
comes here.  ``auto`` picks the host when its kernel runs every requested
mode, else the other kernel (all modes then run there, so they are compared
inside one kernel).  :func:`relaunch` re-runs the very same labkit command
inside the other kernel with ``--kernel host``, writing into the same run
directory, and records the other kernel's facts beside the run
(``vm.json``, and under ``"vm"`` in the run's meta file).
"""
from __future__ import annotations

import os
import sys
from typing import IO, Sequence

from labkit import datapaths
from labkit.core.errors import Unavailable
from labkit.kernels import vm
from labkit.rundir import schema, store
from labkit.rundir.provenance import git_revision

KERNELS = ("auto", "host", "vm")
RUN_TIMEOUT = 7 * 24 * 3600.0   # a run in the VM may take days under emulation


def strip_options(args: Sequence[str], names: Sequence[str]) -> list[str]:
    """``args`` without the options ``names`` and their values
    (``--opt value`` and ``--opt=value`` forms)."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a in names:
            skip = True
        elif not any(a.startswith(n + "=") for n in names):
            out.append(a)
    return out


def choose_kernel(kernel: str, modes: Sequence[str], out_dir: str | None = None,
                  resume: bool = False) -> tuple[str, str]:
    """("host"|"vm", why) for ``--kernel host|vm|auto``.  A resumed run stays
    where it started."""
    if os.environ.get("LABKIT_IN_VM"):
        return "host", "already inside the VM"
    if resume and out_dir and os.path.exists(os.path.join(out_dir, schema.VM_FACTS)):
        return "vm", "resuming a run that was measured in the VM"
    if kernel == "host":
        return "host", "--kernel host"
    if kernel == "vm":
        ok, why = vm.vm_available()
        if not ok:
            raise Unavailable(f"--kernel vm: {why}")
        return "vm", "--kernel vm"
    missing = {m: datapaths.get(m).unavailable(None) for m in modes}
    missing = {m: why for m, why in missing.items() if why}
    if not missing:
        return "host", "the host kernel runs every mode"
    ok, why = vm.vm_available()
    if not ok:
        return "host", f"VM unavailable ({why}); {', '.join(missing)} will be refused"
    return "vm", (f"the host cannot run {', '.join(missing)}: all modes run in the VM kernel "
                  f"{vm.guest_kernel_release()}")


def relaunch(command: str, args: Sequence[str], out_dir: str, kind: str,
             timeout: float = RUN_TIMEOUT, echo: IO[str] | None = sys.stderr) -> vm.VMResult:
    """Re-run ``python -m labkit <command> <args>`` inside the VM with
    ``--kernel host --out <out_dir>`` (any --kernel/--out in ``args`` are
    replaced); the run is of ``kind`` (its meta file gets the VM's facts)."""
    out_dir = os.path.abspath(out_dir)
    rest = strip_options(args, ("--kernel", "--out"))
    argv = [sys.executable, "-m", "labkit", command, "--kernel", "host", *rest, "--out", out_dir]
    res = vm.run_in_vm(argv, timeout, env={"LABKIT_GIT_REVISION": git_revision()}, rw=[out_dir],
                       echo=echo)
    store.write_json(os.path.join(out_dir, schema.VM_FACTS), res.facts)
    meta = os.path.join(out_dir, schema.KINDS[kind].meta)
    if os.path.exists(meta):
        m = store.read_json(meta)
        m["vm"] = res.facts
        store.write_json(meta, m)
    return res

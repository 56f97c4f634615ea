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
from typing import IO, Iterable, Mapping, Sequence

from labkit.core import modes as table
from labkit.core.errors import Unavailable, UsageError
from labkit.core.kernel_kinds import KERNEL_KINDS, guest_kind
from labkit.guests import uml, vm
from labkit.guests.guest import GuestResult
from labkit.rundir import schema, store
from labkit.rundir.provenance import git_revision

KERNELS = ("auto", *KERNEL_KINDS)
RUN_TIMEOUT = 7 * 24 * 3600.0   # a run in the VM may take days under emulation
#: modes labkit's user-mode Linux kernel cannot run, and why (the table of modes:
#: none today)
UML_CANNOT: dict[str, str] = table.cannot_run_in("uml")


def in_guest() -> bool:
    """True inside a kernel labkit booted (labkit there stays there)."""
    return guest_kind() is not None


def _available(where: str) -> tuple[bool, str]:
    return uml.uml_available() if where == "uml" else vm.vm_available()


def guest_release(where: str) -> str:
    """The release of the guest kernel ``where`` (uml, vm) that would run now."""
    return uml.guest_kernel_release() if where == "uml" else vm.guest_kernel_release()


def recorded_guest(out_dir: str | None) -> str | None:
    """The other kernel a run in ``out_dir`` was measured in, if any."""
    for name in (schema.GUEST_FACTS, schema.VM_FACTS):
        path = os.path.join(out_dir or "", name)
        if out_dir and os.path.exists(path):
            try:
                return str(store.read_json(path).get("backend", "vm"))
            except (OSError, ValueError, AttributeError):
                return "vm"
    return None


def recorded_release(out_dir: str | None) -> str | None:
    """The guest kernel's release a run in ``out_dir`` was measured in, if recorded."""
    if not out_dir:
        return None
    try:
        release = store.read_json(os.path.join(out_dir, schema.GUEST_FACTS)).get("kernel_release")
    except (OSError, ValueError, AttributeError):
        return None
    return str(release) if release else None


def same_guest(where: str, was: Iterable[str], out_dir: str | None, what: str = "the run") -> None:
    """Refuse to resume a run whose ``where`` (uml, vm) parts were measured in
    the releases ``was`` when another release would run now (a run's curves
    compare one kernel; the UML series is chosen by an environment variable)."""
    was = {w for w in was if w}
    now = guest_release(where)
    if was and now not in was:
        raise UsageError(f"--resume: {what} in {out_dir} was measured in {where} {', '.join(sorted(was))}, "
                         f"not {now}; resume it with the same kernel (${uml.SERIES_ENV} picks user-mode Linux's)")


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


def choose_kernel(kernel: str | None, modes: Mapping[str, str | None], out_dir: str | None = None,
                  resume: bool = False) -> tuple[str, str]:
    """("host"|"uml"|"vm", why) for ``--kernel host|uml|vm|auto``; ``modes`` maps
    each of the run's modes to why the host cannot run it (None: it can; the
    runner's pre-flight, :meth:`labkit.runs.runner.Runner.lacking`).

    ``auto``: the host when its kernel runs every mode; else user-mode Linux
    when it runs every mode (native speed); else the VM (emulated).  All modes
    of a run go to one kernel, so they are compared inside it.  A resumed run
    stays where it started (a different ``--kernel`` is refused)."""
    if in_guest():
        return "host", "already inside a guest kernel"
    if resume:
        where = recorded_guest(out_dir) or "host"
        if kernel not in (None, "", "auto") and kernel != where:
            raise UsageError(f"--resume: the run in {out_dir} is measured in {where}, not {kernel}; "
                             f"resume it there (omit --kernel)")
        if where != "host":
            same_guest(where, [recorded_release(out_dir) or ""], out_dir)
            return where, f"resuming a run that was measured in {where}"
        return "host", "resuming a run that was measured on the host"
    if kernel == "host":
        return "host", "--kernel host"
    if kernel in ("uml", "vm"):
        ok, why = _available(kernel)
        if not ok:
            raise Unavailable(f"--kernel {kernel}: {why}")
        if kernel == "uml":
            cannot = [f"{m} ({UML_CANNOT[m]})" for m in modes if m in UML_CANNOT]
            if cannot:
                raise Unavailable("--kernel uml cannot run " + "; ".join(cannot))
        return kernel, f"--kernel {kernel}"
    missing = {m: why for m, why in modes.items() if why}
    if not missing:
        return "host", "the host kernel runs every mode"
    lacking = ", ".join(missing)
    ok, why = uml.uml_available()
    if ok and not any(m in UML_CANNOT for m in modes):
        return "uml", f"the host cannot run {lacking}: all modes run in user-mode Linux {guest_release('uml')}"
    ok, why = vm.vm_available()
    if ok:
        return "vm", f"the host cannot run {lacking}: all modes run in the VM kernel {guest_release('vm')}"
    return "host", f"no other kernel can run {lacking} ({why}); they will be refused"


def relaunch(where: str, command: str, args: Sequence[str], out_dir: str, kind: str,
             timeout: float = RUN_TIMEOUT, echo: IO[str] | None = sys.stderr,
             record: bool = True) -> GuestResult:
    """Re-run ``python -m labkit <command> <args>`` inside the other kernel
    ``where`` with ``--kernel host --out <out_dir>`` (any --kernel/--out in
    ``args`` are replaced); the run is of ``kind``, and its meta file gets the
    guest's facts under ``"guest"`` (also in ``guest.json`` beside it).  With
    ``record`` False (a segment of a run spanning two kernels) nothing is
    recorded here: the caller keeps the facts."""
    out_dir = os.path.abspath(out_dir)
    facts_path = os.path.join(out_dir, schema.GUEST_FACTS)
    if record and not os.path.exists(facts_path):
        # the kernel this run is planned for, before the guest starts: a resume after a
        # kill at any moment goes back to it (and never mixes in the host's points)
        os.makedirs(out_dir, exist_ok=True)
        store.write_json(facts_path, {"backend": where, "kernel_release": guest_release(where), "planned": True})
    rest = strip_options(args, ("--kernel", "--out"))
    argv = [sys.executable, "-m", "labkit", command, "--kernel", "host", *rest, "--out", out_dir]
    env = {"LABKIT_GIT_REVISION": git_revision()}
    run = uml.run_in_uml if where == "uml" else vm.run_in_vm
    res = run(argv, timeout, env=env, rw=[out_dir], echo=echo)
    if not record:
        return res
    store.write_json(os.path.join(out_dir, schema.GUEST_FACTS), res.facts)
    meta = os.path.join(out_dir, schema.KINDS[kind].meta)
    if os.path.exists(meta):
        m = store.read_json(meta)
        m["guest"] = res.facts
        store.write_json(meta, m)
    return res

"""`labkit doctor`: which modes run here, and why not.

Tools are checked first; then, as root, each mode is tried for real in a
scratch lab (namespaces that are removed again): a kernel that lacks a feature
says so by refusing the ruleset.  A mode the host cannot run is checked
against the other kernels labkit can boot (:mod:`labkit.guests`): user-mode
Linux (native speed), then the VM (emulated).
"""
from __future__ import annotations

import os

from labkit import datapaths
from labkit.core import modes
from labkit.core.catalog import DEFAULT_ENDPOINT_CIDR
from labkit.guests import uml, vm
from labkit.lab.lab import Lab


def _guest_note(where: str, mode: str) -> tuple[bool, str]:
    """(runs there, why) for ``mode`` in the other kernel ``where``."""
    cannot = modes.get(mode).cannot_run_in(where)
    if cannot:
        return False, cannot
    try:
        ok, why = uml.uml_available() if where == "uml" else vm.vm_available()
    except Exception as exc:  # a broken set-up of another kernel must not break doctor
        return False, f"{where} check failed: {exc}"
    if not ok:
        return False, why
    if where == "uml":
        return True, (f"runs in user-mode Linux {uml.guest_kernel_release()} at native speed "
                      "(`--kernel uml`)")
    return True, f"runs in the VM kernel {vm.guest_kernel_release()}, emulated (`--kernel vm`)"


def doctor() -> list[dict]:
    """One row per mode: where it runs (host, then user-mode Linux, then the
    VM: the order ``--kernel auto`` tries), and why not elsewhere."""
    rows = []
    reasons = {name: cls.unavailable(None) for name, cls in datapaths.MODES.items()}
    if os.geteuid() != 0:
        for name in reasons:
            reasons[name] = reasons[name] or "not root: cannot try the kernel (run as root)"
    else:
        with Lab(endpoint_cidr=DEFAULT_ENDPOINT_CIDR, server=False) as lab:
            for name, cls in datapaths.MODES.items():
                if reasons[name] is None:
                    lab.reset_node()
                    reasons[name] = cls.unavailable(lab)
    for name, cls in datapaths.MODES.items():
        why = reasons[name]
        row: dict = {"mode": name, "summary": cls.summary, "lookup": cls.lookup,
                     "host": why is None, "reason": why or "", "where": "host" if why is None else ""}
        notes = [why] if why else []
        for where in ("uml", "vm"):
            ok, note = _guest_note(where, name)
            row[where] = ok
            if why is not None:
                if ok and not row["where"]:
                    row["where"] = where
                notes.append(f"{where}: {note}")
        row["reason"] = "; ".join(n for n in notes if n)
        rows.append(row)
    return rows

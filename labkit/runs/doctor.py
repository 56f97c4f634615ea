"""`labkit doctor`: which modes run here, and why not.

Tools are checked first; then, as root, each mode is tried for real in a
scratch lab (namespaces that are removed again): a kernel that lacks a feature
says so by refusing the ruleset.  A mode the host cannot run is checked
against the other kernel labkit can boot (:mod:`labkit.kernels`).
"""
from __future__ import annotations

import os

from labkit import datapaths
from labkit.core.catalog import DEFAULT_ENDPOINT_CIDR
from labkit.kernels import vm
from labkit.lab.lab import Lab


def _vm_note() -> tuple[bool, str]:
    try:
        ok, why = vm.vm_available()
    except Exception as exc:  # a broken VM set-up must not break doctor
        return False, f"VM check failed: {exc}"
    if not ok:
        return False, why
    return True, (f"available in the VM kernel {vm.guest_kernel_release()} "
                  "(`labkit sweep --kernel vm`)")


def doctor() -> list[dict]:
    rows = []
    reasons = {name: cls.unavailable(None) for name, cls in datapaths.MODES.items()}
    if os.geteuid() != 0:
        for name in reasons:
            reasons[name] = reasons[name] or "not root: cannot try the kernel (run with sudo)"
    else:
        with Lab(endpoint_cidr=DEFAULT_ENDPOINT_CIDR, server=False) as lab:
            for name, cls in datapaths.MODES.items():
                if reasons[name] is None:
                    lab.reset_node()
                    reasons[name] = cls.unavailable(lab)
    vm_note: tuple[bool, str] | None = None
    for name, cls in datapaths.MODES.items():
        why = reasons[name]
        row = {"mode": name, "summary": cls.summary, "lookup": cls.lookup,
               "host": why is None, "reason": why or "", "where": "host" if why is None else ""}
        if why is not None:
            vm_note = vm_note or _vm_note()
            ok, note = vm_note
            row["vm"] = ok
            if ok:
                row["where"] = "vm"
            row["reason"] = f"{why}; {note}" if note else why
        rows.append(row)
    return rows

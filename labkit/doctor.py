"""`labkit doctor`: which modes run here, and why not.

Tools are checked first; then, as root, each mode is tried for real in a
scratch lab (namespaces that are removed again): a kernel that lacks a feature
says so by refusing the ruleset.
"""
from __future__ import annotations

import os

from . import datapaths


def _vm_note(mode: str) -> tuple[bool, str]:
    try:
        from . import vm
    except ImportError:
        return False, ""
    try:
        ok, why = vm.vm_available()
    except Exception as exc:  # a broken VM set-up must not break doctor
        return False, f"VM check failed: {exc}"
    if not ok:
        return False, why
    return True, f"available in the VM kernel {vm.guest_kernel_release()}"


def doctor() -> list[dict]:
    rows = []
    reasons = {name: cls.unavailable(None) for name, cls in datapaths.MODES.items()}
    if os.geteuid() != 0:
        for name in reasons:
            reasons[name] = reasons[name] or "not root: cannot try the kernel (run with sudo)"
    else:
        from .lab import Lab
        from .catalog import DEFAULT_ENDPOINT_CIDR
        with Lab(endpoint_cidr=DEFAULT_ENDPOINT_CIDR, server=False) as lab:
            for name, cls in datapaths.MODES.items():
                if reasons[name] is None:
                    lab.reset_node()
                    reasons[name] = cls.unavailable(lab)
    for name, cls in datapaths.MODES.items():
        why = reasons[name]
        row = {"mode": name, "summary": cls.summary, "lookup": cls.lookup,
               "host": why is None, "reason": why or "", "where": "host" if why is None else ""}
        if why is not None:
            ok, note = _vm_note(name)
            row["vm"] = ok
            if ok:
                row["where"] = "vm"
                row["reason"] = why if "VM kernel" in why else f"{why}; {note}"
        rows.append(row)
    return rows

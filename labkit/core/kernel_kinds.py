"""The kinds of kernel labkit runs in, and which one this process is in.

``host`` is this machine's kernel (:mod:`labkit.host`); ``uml`` (labkit's
user-mode Linux) and ``vm`` (a distro kernel under virtme-ng) are kernels
labkit boots (:mod:`labkit.guests`).  A booted kernel tells the labkit inside
it where it is with ``LABKIT_GUEST=<kind>`` in its environment, and
:func:`guest_kind` is the one reader of that variable.
"""
from __future__ import annotations

import os

#: every kernel a run or a block names; ``--kernel`` adds its choices (``auto``, ``host+uml``)
KERNEL_KINDS = ("host", "uml", "vm")
#: the environment variable a guest kernel's command is given (:func:`labkit.guests.guest.guest_env`)
GUEST_ENV = "LABKIT_GUEST"


def guest_kind() -> str | None:
    """The kind of guest kernel labkit booted this process in ("uml", "vm"),
    None on the host."""
    return os.environ.get(GUEST_ENV) or None


def in_guest() -> bool:
    """True inside a kernel labkit booted (labkit there stays there; the host
    process holds the run's lock)."""
    return guest_kind() is not None

"""Probe kinds: how a round trip through the datapath is made and timed.

``base`` holds what every kind shares (records, timestamps, taps, the
:class:`~labkit.probes.base.Prober` protocol); each other module is one family
of kinds.  The registry below is built explicitly: to add a kind, write a class
that satisfies ``Prober`` in a module here and list it in ``PROBERS``.
"""
from __future__ import annotations

from typing import Any

from labkit.probes import conn, http
from labkit.probes.base import Prober
from labkit.probes.syn import SynProber

#: probe kinds by name, as used in ``--probe-kinds`` and the ``probe`` column
#: (``Any``: each kind has its own probe record type, and ``run`` takes only
#: the records the same prober's ``craft_for`` made)
PROBERS: dict[str, type[Prober[Any]]] = {"syn": SynProber, **conn.KINDS, **http.KINDS}

__all__ = ["PROBERS", "Prober", "SynProber"]

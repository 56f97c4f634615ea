"""Validators for user input (CLI options, YAML parameter files, papermill
parameters): pure, so bad input is refused with one line naming the value
before anything is created.  Each raises :class:`~labkit.core.errors.UsageError`.
"""
from __future__ import annotations

import math
from typing import Any

from labkit.core.errors import UsageError


def split(value: Any, what: str) -> list:
    """A list, or a comma-separated string as a list of its stripped items."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
        if any(v == "" for v in items):
            raise UsageError(f"{what}: empty item in {value!r}")
        return items
    if isinstance(value, (list, tuple)):
        return list(value)
    raise UsageError(f"{what} must be a list or a comma-separated string, got {value!r}")


def whole(value: Any, what: str, lo: int, hi: int) -> int:
    """A whole number in ``lo..hi``: an int, an integral float, or a string
    of ASCII digits (``_`` separators and a ``k`` suffix allowed: ``10_000``,
    ``10k``)."""
    if isinstance(value, bool):
        raise UsageError(f"{what} must be a whole number, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        v = value.strip().replace("_", "")
        if v.lower().endswith("k") and v[:-1].isascii() and v[:-1].isdigit():
            v = str(int(v[:-1]) * 1000)
        if not v.isascii():  # int() would take other scripts' digits ("٣", "５")
            raise UsageError(f"{what} must be a whole number in ASCII digits, got {value!r}")
        try:
            value = int(v)
        except ValueError:
            raise UsageError(f"{what} must be a whole number, got {value!r}") from None
    if not isinstance(value, int):
        raise UsageError(f"{what} must be a whole number, got {value!r}")
    if not lo <= value <= hi:
        raise UsageError(f"{what} must be in {lo:,}..{hi:,}, got {value:,}")
    return value


def number(value: Any, what: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{what} must be a number, got {value!r}")
    v = float(value)
    below = v <= lo if lo_open else v < lo
    if math.isnan(v) or below or v > hi:
        span = f"({lo:g}, {hi:g}]" if lo_open else f"[{lo:g}, {hi:g}]"
        raise UsageError(f"{what} must be a number in {span}, got {value!r}")
    return v


def names(value: Any, what: str, allowed: tuple[str, ...] | None) -> list[str]:
    """A non-empty list of distinct names, each one of ``allowed``."""
    items = split(value, what)
    if not items:
        raise UsageError(f"{what}: at least one is needed")
    out: list[str] = []
    for v in items:
        if not isinstance(v, str):
            raise UsageError(f"{what}: {v!r} is not a name")
        if allowed is not None and v not in allowed:
            raise UsageError(f"unknown {what[:-1] if what.endswith('s') else what} {v!r}; "
                             f"choose from {', '.join(allowed)}")
        if v in out:
            raise UsageError(f"{what}: {v!r} is given twice")
        out.append(v)
    return out

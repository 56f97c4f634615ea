"""Validators for user input (CLI options, YAML parameter files, papermill
parameters): pure, so bad input is refused with one line naming the value
before anything is created.  Each raises :class:`~labkit.core.errors.UsageError`.
"""
from __future__ import annotations

import math
from typing import Any

from labkit.core.errors import UsageError

#: characters of a bad value an error message quotes (a 20 MB value makes no 20 MB line)
QUOTE_MAX = 60


def short(value: Any, limit: int = QUOTE_MAX) -> str:
    """``repr(value)`` cut to ``limit`` characters ("..." marks the cut).  A huge
    nested value is never rendered whole: its repr is built from a bounded walk."""
    text = _bounded_repr(value, limit + 1)
    return text if len(text) <= limit else text[:limit] + "..."


def clip(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters ("..." marks the cut)."""
    return text if len(text) <= limit else text[:limit] + "..."


def _bounded_repr(value: Any, budget: int) -> str:
    """``repr(value)``, stopping once ``budget`` characters are produced."""
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        brackets = {list: "[]", tuple: "()", dict: "{}"}.get(type(value), "{}")
        opener, closer = brackets[0], brackets[1]
        parts, used = [], 1
        items = value.items() if isinstance(value, dict) else value
        for item in items:
            if used > budget:
                break
            if isinstance(value, dict):
                k, v = item
                text = _bounded_repr(k, budget - used) + ": " + _bounded_repr(v, budget - used)
            else:
                text = _bounded_repr(item, budget - used)
            parts.append(text)
            used += len(text) + 2
        return (opener + ", ".join(parts) + closer)[: budget + 1]
    if isinstance(value, (str, bytes)):
        return repr(value[: budget + 1])
    if isinstance(value, int) and value.bit_length() > 200:   # str() of a huge int is refused
        return f"a {value.bit_length():,}-bit number"
    return repr(value)[: budget + 1]


def split(value: Any, what: str) -> list:
    """A list, or a comma-separated string as a list of its stripped items."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
        if any(v == "" for v in items):
            raise UsageError(f"{what}: empty item in {short(value)}")
        return items
    if isinstance(value, (list, tuple)):
        return list(value)
    raise UsageError(f"{what} must be a list or a comma-separated string, got {short(value)}")


def whole(value: Any, what: str, lo: int, hi: int) -> int:
    """A whole number in ``lo..hi``: an int, an integral float, or a string
    of ASCII digits (``_`` separators and a ``k`` suffix allowed: ``10_000``,
    ``10k``)."""
    if isinstance(value, bool):
        raise UsageError(f"{what} must be a whole number, got {short(value)}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        v = value.strip().replace("_", "")
        if v.lower().endswith("k") and v[:-1].isascii() and v[:-1].isdigit():
            v = str(int(v[:-1]) * 1000)
        if not v.isascii():  # int() would take other scripts' digits ("٣", "５")
            raise UsageError(f"{what} must be a whole number in ASCII digits, got {short(value)}")
        try:
            value = int(v)
        except ValueError:
            raise UsageError(f"{what} must be a whole number, got {short(value)}") from None
    if not isinstance(value, int):
        raise UsageError(f"{what} must be a whole number, got {short(value)}")
    if not lo <= value <= hi:
        shown = f"{value:,}" if value.bit_length() <= 200 else short(value)
        raise UsageError(f"{what} must be in {lo:,}..{hi:,}, got {shown}")
    return value


def number(value: Any, what: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{what} must be a number, got {short(value)}")
    v = float(value)
    below = v <= lo if lo_open else v < lo
    if math.isnan(v) or below or v > hi:
        span = f"({lo:g}, {hi:g}]" if lo_open else f"[{lo:g}, {hi:g}]"
        raise UsageError(f"{what} must be a number in {span}, got {short(value)}")
    return v


def names(value: Any, what: str, allowed: tuple[str, ...] | None) -> list[str]:
    """A non-empty list of distinct names, each one of ``allowed``."""
    items = split(value, what)
    if not items:
        raise UsageError(f"{what}: at least one is needed")
    out: list[str] = []
    for v in items:
        if not isinstance(v, str):
            raise UsageError(f"{what}: {short(v)} is not a name")
        if allowed is not None and v not in allowed:
            raise UsageError(f"unknown {what[:-1] if what.endswith('s') else what} {short(v)}; "
                             f"choose from {', '.join(allowed)}")
        if v in out:
            raise UsageError(f"{what}: {short(v)} is given twice")
        out.append(v)
    return out

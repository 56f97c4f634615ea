"""Blocks: what an experiment's runner runs, one at a time (pure).

A block programs one mode at one service count in one round.  :func:`plan`
orders a run's planned blocks; :func:`new_remeasures` and
:func:`remeasure_blocks` add a disturbed block's re-measurement (see
:mod:`labkit.runs.runner` and :mod:`labkit.core.disturbed`);
:func:`settle_blocks` the blocks of settle rounds (:mod:`labkit.runs.settle`).
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence


@dataclass(frozen=True)
class Block:
    block: int
    round: int
    mode: str
    services: int
    targets: tuple[str, ...] = ()
    #: the kernel the block runs in ("" = wherever the run runs; "host", "uml", "vm")
    kernel: str = ""
    #: the block this one measures again (a disturbed one), -1 for a planned block
    remeasure_of: int = -1
    #: the probe kinds it measures, of those its mode has ((): all of them); an end
    #: round's block (``end_rounds``) names its own
    kinds: tuple[str, ...] = ()
    #: a settle round's block (:mod:`labkit.runs.settle`): after every planned block and
    #: re-measurement, at a mode's smallest or largest count, of ``kinds``
    settle: bool = False


def plan(modes: Sequence[str], services: Sequence[int], rounds: int, seed: int,
         targets: Sequence[str] = (), mode_rounds: Mapping[str, int] | None = None,
         ends: Mapping[str, tuple[int, Sequence[str]]] | None = None) -> list[Block]:
    """Blocks in execution order: rounds in sequence, (mode, count) shuffled
    within each round, targets shuffled within each block.  ``mode_rounds``:
    each mode's rounds where they differ from ``rounds`` (mode -> rounds); the
    extra rounds follow, with only those modes.  ``ends``: mode -> (rounds,
    probe kinds) of end rounds (``end_rounds``): beyond the mode's rounds, up
    to these, a block at the smallest and one at the largest count, measuring
    those kinds only.  Pure and deterministic from the seed; a block's id
    depends only on its round, mode and count."""
    rng = random.Random(seed)
    more = dict(mode_rounds or {})
    ends = dict(ends or {})
    edge = {0, len(services) - 1}
    out = []
    for r in range(max([rounds, *more.values(), *(e[0] for e in ends.values())])):
        cells = []
        for m, mode in enumerate(modes):
            whole = more.get(mode, rounds) > r
            if not whole and not (mode in ends and ends[mode][0] > r):
                continue
            kinds = () if whole else tuple(ends[mode][1])
            cells += [((r * len(modes) + m) * len(services) + s, mode, n, kinds)
                      for s, n in enumerate(services) if whole or s in edge]
        rng.shuffle(cells)
        for bid, mode, n, kinds in cells:
            ts = list(targets)
            rng.shuffle(ts)
            out.append(Block(bid, r, mode, n, tuple(ts), kinds=kinds))
    return out


def new_remeasures(planned: Sequence[Block], flagged: Iterable[int],
                   entries: Iterable[Mapping[str, Any]]) -> list[dict[str, int]]:
    """The meta file's ``remeasured`` entries ({block, of}) to add for the
    disturbed planned blocks ``flagged``: one per block not already in
    ``entries`` (once only), its id after every planned id (the planned
    block's id plus the number of ids planned), so the same flags give the
    same ids."""
    base = max((b.block for b in planned), default=-1) + 1
    had = {int(e["of"]) for e in entries}
    return [{"block": base + old, "of": old} for old in sorted(set(flagged) - had)]


def remeasure_blocks(blocks: Sequence[Block], entries: Iterable[Mapping[str, Any]]) -> list[Block]:
    """The re-measurements ``remeasured`` entries ({block, of}) name: each a
    copy of the planned block ``of`` (its round, mode, count, targets and
    kernel) with the id ``block``."""
    by_id = {b.block: b for b in blocks}
    return [dataclasses.replace(by_id[int(e["of"])], block=int(e["block"]), remeasure_of=int(e["of"]))
            for e in entries if int(e["of"]) in by_id]


def settle_blocks(cells: Sequence[tuple], ends: Mapping[str, Sequence[int]],
                  rounds: int, first_round: int, base: int, seed: int, targets: Sequence[str] = (),
                  kernels: Sequence[str] = ("", "host", "uml", "vm")) -> list[Block]:
    """The blocks of the first ``rounds`` settle rounds (pure, deterministic
    from the seed): per round, each cell (mode, kernel, probe kinds[, counts])
    at each of its counts (default: its kernel's ``ends``, the smallest and
    largest count), cells of one mode and kernel at one count in one block
    (their kinds together), the cells of one kernel together in ``kernels``
    order (one guest boot a round), shuffled within it; round ``i`` is the
    run's round ``first_round + i``.  Ids from ``base`` on, each fixed by its
    round, cell and count."""
    rng = random.Random(seed)
    order = {k: i for i, k in enumerate(kernels)}
    at: list[list[int]] = [list(dict.fromkeys(c[3] if len(c) > 3 and c[3] else ends[c[1]])) for c in cells]
    offsets = [0]
    for counts in at:
        offsets.append(offsets[-1] + max(2, len(counts)))
    per_round = offsets[-1]
    out: list[Block] = []
    for i in range(rounds):
        for kernel in sorted({c[1] for c in cells}, key=lambda k: (order.get(k, len(order)), k)):
            here: dict[tuple[str, int], list] = {}
            for j, (c, counts) in enumerate(zip(cells, at)):
                if c[1] != kernel:
                    continue
                for e, n in enumerate(counts):
                    bid = base + i * per_round + offsets[j] + e
                    b = here.setdefault((c[0], n), [bid, c[0], n, []])
                    b[3] += [k for k in c[2] if k not in b[3]]
            todo = [(bid, mode, n, tuple(kinds)) for bid, mode, n, kinds in here.values()]
            rng.shuffle(todo)
            for bid, mode, n, kinds in todo:
                ts = list(targets)
                rng.shuffle(ts)
                out.append(Block(bid, first_round + i, mode, n, tuple(ts), kernel, kinds=kinds, settle=True))
    return out

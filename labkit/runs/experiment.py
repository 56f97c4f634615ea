"""What an experiment is, for :mod:`labkit.runs.runner`: the blocks it
plans, what one block measures (:class:`BlockContext`), and the optional
hooks the runner asks (re-measuring disturbed blocks, late rounds, settle
rounds).  The runner owns everything around the blocks."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from labkit.core.catalog import ServiceCatalog
from labkit.lab.lab import Lab
from labkit.runs.blocks import Block
from labkit.runs.tables import Tables

if TYPE_CHECKING:  # pragma: no cover
    from labkit.datapaths.base import Datapath


# ---------------------------------------------------------------------------
# experiments

@dataclass
class BlockContext:
    """What a block's code gets from the runner."""
    lab: Lab
    block: Block
    mode: "type[Datapath]"
    tables: Tables
    run_id: str
    kernel_release: str
    bar: Any

    def ident(self) -> dict[str, Any]:
        """The columns every row of this block carries."""
        b = self.block
        return {"run_id": self.run_id, "block": b.block, "round": b.round, "mode": b.mode,
                "kernel_release": self.kernel_release, "services": b.services, "remeasure_of": b.remeasure_of}


def same_what(given: "Experiment", stored: "Experiment") -> bool:
    """Whether ``given`` asks for the run ``stored`` is: the same parameters,
    apart from where it runs (``where_keys``) and what the plan fills in
    when they are not given (``planned_keys``, compared when given)."""
    a, b = given.params_dict(), stored.params_dict()
    skip = set(given.where_keys) | {k for k in given.planned_keys if not a.get(k)}
    return {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


class Experiment(ABC):
    """One kind of run.  Subclasses say what the blocks are and what one
    block measures; the runner does the rest.  An experiment is valid once
    built (its constructor checks its parameters)."""
    #: run kind (a key of :data:`labkit.rundir.schema.KINDS`)
    kind: ClassVar[str]
    #: the unit the progress bar counts
    unit: ClassVar[str] = "block"
    #: the parameters (a frozen dataclass with at least ``modes``)
    p: Any
    #: parameters that say where the run is measured, not what (a guest stores
    #: the kernel it runs in): resume does not compare them; where to run is
    #: checked by the kernel choice
    where_keys: ClassVar[frozenset[str]] = frozenset()
    #: parameters the plan fills in when they are not given (a host+uml plan:
    #: each mode's kernel): resume compares them only when given
    planned_keys: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def params_dict(self) -> dict[str, Any]:
        """The parameters, as stored in the meta file (and read back by resume)."""

    @classmethod
    @abstractmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "Experiment":
        """The experiment a meta file describes (for resume)."""

    @abstractmethod
    def blocks(self) -> list[Block]: ...

    @abstractmethod
    def run_block(self, ctx: BlockContext) -> None:
        """Measure one block into ``ctx.tables`` (the node is fresh)."""

    @abstractmethod
    def largest_catalog(self) -> ServiceCatalog:
        """The largest catalog the run programs: the memory pre-flight checks
        the machine can hold it, and the lab's address ranges come from it."""

    def lab_options(self, largest: ServiceCatalog) -> dict[str, Any]:
        """Keyword arguments of :class:`~labkit.lab.lab.Lab` for a run whose
        largest catalog is ``largest``."""
        return {"endpoint_cidr": largest.endpoint_cidr, "ports": tuple(largest.ports)}

    def place(self, lacking: Mapping[str, str | None]) -> None:  # noqa: B027  (optional hook)
        """Plan which kernel each mode runs in from what this host lacks
        (:meth:`Runner.lacking`), before :meth:`blocks` is first asked."""

    def units(self, block: Block) -> int:
        return 1

    def mark_disturbed(self, tables: Tables, use: set[int], judge: set[int]) -> set[int]:
        """Among the points of blocks ``use`` (one per cell and round), flag
        those of blocks ``judge`` outside what their cell's other rounds allow,
        in ``tables``; return the judged blocks with a flagged point.  The
        default: an experiment without such points flags nothing."""
        return set()

    def late_rounds(self) -> tuple[int, float] | None:
        """Late rounds: (the first planned round that is optional, seconds from
        the run's start each such round must be expected to end within); the
        default None: every planned block runs."""
        return None

    def settle_budget(self) -> tuple[float, int]:
        """Settle rounds: (seconds from the run's start they must end within,
        most rounds); the default (0, 0): none."""
        return 0.0, 0

    def settle_cells(self, run_dir: str) -> list[dict[str, Any]]:
        """What settle rounds measure, from the run so far in ``run_dir`` (the
        meta file's ``settle`` ``cells``); the default: nothing."""
        return []

    def settle_blocks(self, settle: Mapping[str, Any]) -> list[Block]:
        """The blocks of the settle rounds the meta file's ``settle`` has started."""
        return []

    def settle_seconds(self, blocks: Sequence[Block], tables: "Tables", meta: Mapping[str, Any]) -> float:
        """The seconds ``blocks`` (one settle round) are expected to take."""
        return 0.0

    def meta_extra(self) -> dict[str, Any]:
        return {}

    @property
    def modes(self) -> list[str]:
        return list(self.p.modes)

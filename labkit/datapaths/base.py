"""The datapath interface every mode implements.

A datapath turns a :class:`~labkit.core.catalog.ServiceCatalog` into kernel state
in the lab's *node* namespace.  Following kube-proxy, the rules are rendered
by a pure function (``render``: catalog -> text, unit-testable without root)
and loaded atomically by the kernel's own loader (``load``).  ``setup`` and
``teardown`` come in pairs; ``teardown`` removes exactly what ``setup`` made.
``add_service`` / ``remove_service`` change one service of the loaded
catalog (the control-plane experiment, :mod:`labkit.runs.control`).
"""
from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from labkit.core.errors import LabkitError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from labkit.core.catalog import ServiceCatalog
    from labkit.lab.lab import Lab


@dataclass
class ProgramResult:
    """How long programming took: render (pure Python) and load (the kernel loader)."""
    render_s: float
    load_s: float

    @property
    def program_s(self) -> float:
        return self.render_s + self.load_s


class Datapath(ABC):
    #: mode name as used on the command line and in the data
    name: ClassVar[str]
    #: one line for `labkit doctor` and the report
    summary: ClassVar[str]
    #: what the kernel must have; shown when the mode is unavailable
    needs: ClassVar[str] = ""
    #: cost model, for the report
    lookup: ClassVar[str] = ""
    #: bytes of memory per service endpoint (per port) while the catalog loads: the
    #: loader's peak resident set plus what the kernel holds (labkit.host.limits); measured
    #: with `labkit bench program` (loader_peak_mb + held_mb), with a 25% margin
    mem_per_endpoint: ClassVar[float] = 0.0

    def __init__(self, lab: "Lab") -> None:
        self.lab = lab
        self.catalog: "ServiceCatalog | None" = None

    # ---- availability ----------------------------------------------------
    @classmethod
    @abstractmethod
    def unavailable(cls, lab: "Lab | None" = None) -> str | None:
        """None when this mode can run here, else the reason (missing tool,
        privilege or kernel feature), in words a user can act on.  May use
        the given scratch ``lab`` to try the kernel for real."""

    # ---- rendering (pure) ------------------------------------------------
    @staticmethod
    @abstractmethod
    def render(catalog: "ServiceCatalog") -> str:
        """The full datapath for ``catalog`` as loader input text."""

    # ---- kernel ------------------------------------------------------------
    @abstractmethod
    def load(self, text: str) -> None:
        """Apply rendered text atomically inside ``self.lab.node``."""

    @abstractmethod
    def clear(self) -> None:
        """Remove everything this datapath put into the node namespace."""

    def setup(self, catalog: "ServiceCatalog") -> ProgramResult:
        """Program ``catalog`` from scratch; returns the time it took."""
        return self.resync(catalog)

    def teardown(self) -> None:
        self.clear()
        self.catalog = None

    # ---- control-plane operations (labkit/runs/control.py times them) -----------
    #: how add_service/remove_service change the datapath, for the report
    update: ClassVar[str] = "full re-render and reload (kube-proxy iptables full sync)"
    #: "full" when add_service/remove_service re-render and reload everything,
    #: "partial" when they change only what differs (the ``kind`` column)
    update_kind: ClassVar[str] = "full"
    #: True when a full sync (:meth:`resync`) is a second way to apply the same
    #: change that ``labkit control`` also times (kube-proxy's iptables mode
    #: does both: partial syncs, and a full one now and then)
    full_sync: ClassVar[bool] = False
    #: the program (or system call) that applies a change: the ``loader``
    #: column of control rows; a mode with :attr:`CHANGE_LOADERS` takes any of
    #: them as the ``loader`` argument of a change, and ``labkit control``
    #: times each
    change_loader: ClassVar[str] = "restore"
    CHANGE_LOADERS: ClassVar[tuple[str, ...]] = ()
    #: the loader of a full load (setup, resync): the ``loader`` of program rows
    program_loader: ClassVar[str] = ""
    #: True when the mode replaces services' endpoints in place (a rollout:
    #: :meth:`change_endpoints`); ``labkit control`` times it then
    changes_endpoints: ClassVar[bool] = False

    def add_service(self, loader: str = "") -> ProgramResult:
        """Add the next service (index N) to the loaded catalog of N services,
        sent with ``loader`` (:meth:`loader_of`).

        Default: render the whole catalog of N+1 services and load it, as
        kube-proxy's iptables mode does on a full sync.  Modes that can change
        one service in place override this."""
        self.loader_of(loader)
        return self.resync(self._resized(+1))

    def remove_service(self, loader: str = "") -> ProgramResult:
        """Remove the last service (index N-1) of the loaded catalog.
        Default: full re-render and reload of the N-1 services."""
        self.loader_of(loader)
        return self.resync(self._resized(-1))

    def change_endpoints(self, services: Iterable[int], loader: str = "") -> ProgramResult:
        """Replace the endpoints of the loaded ``services`` in one sync (or put
        the original ones back: the change toggles; :attr:`ServiceCatalog.rolled`).
        Default: a full re-render and reload."""
        self.loader_of(loader)
        return self.resync(self._rolled(services))

    def loader_of(self, loader: str) -> str:
        """The loader a change is sent with: ``loader``, one of
        :attr:`CHANGE_LOADERS`, or the mode's own (:attr:`change_loader`) for ""."""
        if loader in ("", self.change_loader):
            return self.change_loader
        if loader not in self.CHANGE_LOADERS:
            raise UsageError(f"{self.name}: no change loader {loader!r}; it has "
                             f"{', '.join(self.CHANGE_LOADERS or (self.change_loader,))}")
        return loader

    def _rolled(self, services: Iterable[int]) -> "ServiceCatalog":
        catalog = self._loaded_catalog()
        return dataclasses.replace(catalog, rolled=catalog.rolled ^ frozenset(services))

    def render_for(self, catalog: "ServiceCatalog") -> str:
        """This instance's loader text for ``catalog``: :meth:`render`, unless the
        instance has options of its own (the table's ``options``,
        :class:`labkit.core.modes.Mode`) that shape the text."""
        return self.render(catalog)

    def resync(self, catalog: "ServiceCatalog") -> ProgramResult:
        """Render ``catalog`` and load it over the current state."""
        t0 = time.perf_counter()
        text = self.render_for(catalog)
        t1 = time.perf_counter()
        self.load(text)
        t2 = time.perf_counter()
        self.catalog = catalog
        return ProgramResult(render_s=t1 - t0, load_s=t2 - t1)

    def _loaded_catalog(self) -> "ServiceCatalog":
        """The loaded catalog (LabkitError before setup)."""
        if self.catalog is None:
            raise LabkitError(f"{self.name}: no catalog loaded (call setup first)")
        return self.catalog

    def _resized(self, delta: int) -> "ServiceCatalog":
        catalog = self._loaded_catalog()
        n = catalog.services + delta
        if n < 0:
            raise LabkitError(f"{self.name}: no service left to remove")
        return dataclasses.replace(catalog, services=n)

    @property
    def variant(self) -> str:
        """The choices that shaped this instance's datapath ('' when the mode has
        none), recorded with every point (``variant`` column)."""
        return ""

    # ---- observation (for validity checks) ---------------------------------
    def path_counters(self) -> dict[str, int] | None:
        """Counters proving which path service packets took, read before and
        after every point (None: the mode has none).  Keys: ``stack``, packets
        of a matched service the program had to hand to the kernel's stack;
        ``redirected``, packets it forwarded itself."""
        return None

    def describe(self) -> dict:
        """Facts about the loaded state for meta.json (rule counts, versions)."""
        return {}

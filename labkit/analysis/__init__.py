"""Analysis of measured runs (pure: reads run directories, never touches a kernel):
statistics per point, fitted curves against the service count with intervals,
crossovers, the seed's claims, the control-plane, CPU and experiment tables.

Rooms: :mod:`.run` (loading a run), :mod:`.models` (the fitted models),
:mod:`.curves` (one curve per :class:`~.curves.CurveKey`), :mod:`.crossover`,
:mod:`.result` (the :class:`Analysis`), :mod:`.claims`, :mod:`.kernels` (a run
over two kernels) and :mod:`.analyze`, which composes them.
"""
from labkit.analysis.analyze import analyze
from labkit.analysis.result import Analysis
from labkit.analysis.run import load_run

__all__ = ["Analysis", "analyze", "load_run"]

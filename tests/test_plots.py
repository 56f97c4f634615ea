"""The report's figures as laid out: no legend over a title or a tick label, no
two tick labels over each other (bounding boxes from matplotlib; a figure
is an image in the report, so the browser cannot see inside it).  No root."""
from __future__ import annotations

import os

import matplotlib
import matplotlib.pyplot as plt
import pytest

from labkit.analysis import analyze, load_run
from labkit.analysis.claims import amortization_table, budget_fractions
from labkit.report import plots

matplotlib.use("Agg")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = ["host-6.18", "experiments-6.18", "budget-6.18"]


@pytest.fixture(scope="module", params=RUNS)
def an(request):
    return analyze(load_run(os.path.join(ROOT, "data", "reference", request.param)), n_boot=50)


def _figures(an):
    yield "headline", plots.headline(an)
    for probe in an.probes:
        for target in an.targets:
            yield f"curves {target} {probe}", plots.curves(an, target, probe)
            yield f"ecdfs {target} {probe}", plots.ecdfs(an, target, probe)
    yield "published", plots.published(an)
    yield "programming", plots.programming(an)
    t = budget_fractions(an)
    if len(t):
        yield "budget fractions", plots.budget_fractions(an, t)
    t = amortization_table(an)
    if len(t):
        yield "amortization", plots.amortization(an, t)


def test_no_legend_covers_a_title_or_a_tick_label_and_no_tick_labels_collide(an):
    bad = {}
    for name, fig in _figures(an):
        found = plots.overlaps(fig)
        plt.close(fig)
        if found:
            bad[name] = found[:3]
    assert not bad, bad


def test_the_overlap_check_sees_a_legend_over_a_title():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([1, 2], [1, 2], label="a long legend entry that sits on the title")
    ax.set_title("title")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 1.12))
    assert any("legend over title" in x for x in plots.overlaps(fig))
    plt.close(fig)

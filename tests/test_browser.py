"""The built report in a real browser (Debian's headless Chromium, no root):
it loads without console errors, every figure decodes, the answer and
the seed-claims table are on the first screen, above the first figure, and
code and diagrams are set in a monospace font.
Leaves report.png (the first screen) beside report.html."""
from __future__ import annotations

import os
import struct

import pytest
from test_report import make_run

from labkit.report import browser
from labkit.report import build as report

pytestmark = pytest.mark.skipif(browser.browser() is None,
                                reason="chromium is not installed (make setup installs Debian's chromium)")


def _png_size(path: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_report_in_headless_chromium(tmp_path):
    run = make_run(tmp_path / "run")
    html_path = report.build_report(run)
    seen = browser.check(html_path)
    assert seen["console_errors"] == []
    assert len(seen["images"]) >= 4 and all(w > 0 and h > 0 for w, h in seen["images"]), seen["images"]
    w, h = browser.SCREEN
    assert seen["answer_top"] is not None and seen["claims_top"] is not None, seen
    assert seen["answer_top"] < seen["claims_top"] < seen["first_image_top"]
    assert seen["claims_bottom"] <= h, f"the claims table ends at {seen['claims_bottom']:.0f} px"
    # code and the topology diagram in a monospace font (nbconvert's own CSS sets `pre` to inherit)
    assert seen["pre_fonts"] and all("mono" in f.lower() for f in seen["pre_fonts"]), seen["pre_fonts"]
    png = os.path.join(os.path.dirname(html_path), "report.png")
    assert _png_size(png) == (w, h)


def test_the_default_reference_report_prints_to_at_most_12_a4_pages(tmp_path):
    """Issue 25: the default run's report (data/reference/default-6.18, built
    anew from its data) prints to at most 12 A4 pages in Chromium, its details
    folded as a reader gets them."""
    ref = os.path.join(os.path.dirname(__file__), "..", "data", "reference", "default-6.18")
    html_path = report.build_report(ref, out_dir=str(tmp_path / "out"))
    pages = browser.pdf_pages(html_path)
    assert 1 <= pages <= 12, f"the default report prints to {pages} A4 pages"

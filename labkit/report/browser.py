"""The report as a reader meets it, in Debian's headless Chromium: a
screenshot of the first screen (``report.png`` beside ``report.html``) and a
check of what a browser loaded and laid out.

The check loads the report into an iframe of a small page of our own (in
the report's directory, removed afterwards) whose script measures the
iframe's document once it has loaded: every image's natural size, where the
answer, the claims table and the first figure sit, and the first screen's
height.  Chromium prints the page's DOM after that script ran
(``--dump-dom``); console messages go to its log (``--enable-logging``),
which is searched for errors.  No network: the report is self-contained.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile

from labkit.core.errors import LabkitError
from labkit.core.files import atomic_write_bytes

BROWSERS = ("chromium", "chromium-browser")
SCREEN = (1400, 1000)
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
          "--disable-extensions", "--disable-dev-shm-usage", "--mute-audio"]

_CHECK_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body style="margin:0">
<iframe id="f" src="{src}" style="width:{w}px;height:{h}px;border:0"></iframe>
<pre id="out">pending</pre>
<script>
document.getElementById("f").addEventListener("load", function () {{
  var d = this.contentDocument, out = {{}};
  function top(el) {{ return el ? el.getBoundingClientRect().top : null; }}
  function bottom(el) {{ return el ? el.getBoundingClientRect().bottom : null; }}
  out.images = Array.prototype.map.call(d.images, function (i) {{
    return [i.naturalWidth, i.naturalHeight]; }});
  out.answer_top = top(d.querySelector(".lk-answer"));
  out.claims_top = top(d.querySelector("table.lk-claims"));
  out.claims_bottom = bottom(d.querySelector("table.lk-claims"));
  out.first_image_top = top(d.images[0]);
  out.pre_fonts = Array.prototype.map.call(d.querySelectorAll("pre.lk"), function (el) {{
    return d.defaultView.getComputedStyle(el).fontFamily; }});
  out.height = d.documentElement.scrollHeight;
  out.title = d.title;
  document.getElementById("out").textContent = JSON.stringify(out);
}});
</script></body></html>
"""


def browser() -> str | None:
    """The Chromium binary, or None (Debian package ``chromium``: ``make setup``)."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="labkit-chromium-") as profile:
        try:
            return subprocess.run([*argv[:1], *_FLAGS, f"--user-data-dir={profile}", *argv[1:]],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LabkitError(f"chromium did not finish within {timeout:.0f} s") from None


def screenshot(html_path: str, png_path: str, size: tuple[int, int] = SCREEN, timeout: float = 120) -> str:
    """The first screen of ``html_path`` at ``size`` as a PNG; returns its path."""
    exe = browser()
    if exe is None:
        raise LabkitError("chromium is not installed (Debian package chromium; `make setup` installs it)")
    with tempfile.TemporaryDirectory(prefix="labkit-screenshot-") as private:
        tmp = os.path.join(private, "screen.png")
        cp = _run([exe, f"--window-size={size[0]},{size[1]}", f"--screenshot={tmp}",
                   "file://" + os.path.abspath(html_path)], timeout)
        if cp.returncode != 0 or not os.path.exists(tmp):
            raise LabkitError(f"chromium could not take a screenshot: {(cp.stderr or cp.stdout).strip()[-300:]}")
        with open(tmp, "rb") as f:
            atomic_write_bytes(png_path, f)
    return png_path


#: a page object of a PDF (not the /Pages tree)
_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


def pdf_pages(html_path: str, timeout: float = 180) -> int:
    """How many pages ``html_path`` prints to in Chromium (print to PDF; the
    report's CSS asks for A4), details collapsed as a reader gets them."""
    exe = browser()
    if exe is None:
        raise LabkitError("chromium is not installed (Debian package chromium; `make setup` installs it)")
    with tempfile.TemporaryDirectory(prefix="labkit-pdf-") as private:
        pdf = os.path.join(private, "report.pdf")
        cp = _run([exe, "--no-pdf-header-footer", "--virtual-time-budget=15000", f"--print-to-pdf={pdf}",
                   "file://" + os.path.abspath(html_path)], timeout)
        if cp.returncode != 0 or not os.path.exists(pdf):
            raise LabkitError(f"chromium could not print the report: {(cp.stderr or cp.stdout).strip()[-300:]}")
        with open(pdf, "rb") as f:
            return len(_PDF_PAGE.findall(f.read()))


def check(html_path: str, size: tuple[int, int] = SCREEN, timeout: float = 120) -> dict:
    """Load the report in Chromium and return what the browser saw: images
    (natural sizes), positions of the answer, the claims table and the first
    figure (pixels from the top), the page height, the font of each code or
    diagram block (``pre_fonts``) and the console errors."""
    exe = browser()
    if exe is None:
        raise LabkitError("chromium is not installed (Debian package chromium; `make setup` installs it)")
    html_path = os.path.abspath(html_path)
    page = os.path.join(os.path.dirname(html_path), f".labkit-check-{os.urandom(6).hex()}.html")
    # a new file of a random name, never through a symbolic link planted beside the report
    fd = os.open(page, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(_CHECK_PAGE.format(src=os.path.basename(html_path), w=size[0], h=size[1]))
    try:
        cp = _run([exe, "--allow-file-access-from-files", "--virtual-time-budget=15000",
                   "--enable-logging=stderr", "--v=0", "--dump-dom", "file://" + page], timeout)
    finally:
        os.unlink(page)
    m = re.search(r'<pre id="out">(.*?)</pre>', cp.stdout, re.S)
    if not m or m.group(1) == "pending":
        raise LabkitError(f"the report did not load in chromium: {cp.stderr.strip()[-300:]}")
    out = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    out["console_errors"] = [line for line in cp.stderr.splitlines()
                             if "CONSOLE" in line and ("rror" in line or "Failed to load" in line)]
    return out

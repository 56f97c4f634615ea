"""The published report of a run: ``build_report(DIR)`` executes
notebooks/analysis.ipynb with papermill into the output directory, then
converts it to one self-contained HTML file (code hidden, figures embedded as
base64 PNG, no external scripts).  The notebook writes crossover.csv,
fits.csv and summary.csv beside it through :mod:`labkit.analysis`.

The notebook's sections (``header``, ``summary_table``...) are rendered by
:mod:`labkit.report.sections`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
from importlib import resources
from pathlib import Path

import nbformat
import papermill as pm
from jinja2 import DictLoader
from jupyter_client import AsyncKernelManager
from nbconvert import HTMLExporter
from traitlets import default

from labkit.analysis import load_run
from labkit.core.errors import LabkitError, UsageError
from labkit.core.files import META_MAX, read_regular
from labkit.report import browser
from labkit.rundir import safepath, schema, store

log = logging.getLogger(__name__)

#: the analysis notebook, shipped as package data (``labkit/report/notebooks`` links
#: to the repository's ``notebooks/``; a wheel holds copies)
NOTEBOOK = Path(str(resources.files("labkit.report") / "notebooks" / "analysis.ipynb"))
#: control and cpu runs: their sections (figures and tables) without the sweep's analysis
EXPERIMENTS_NOTEBOOK = Path(str(resources.files("labkit.report") / "notebooks" / "experiments.ipynb"))
#: the kinds of run ``report`` builds
REPORTED = ("sweep", "control", "cpu")
KERNEL = "python3"

# the lab template without anything fetched from the network (require.js,
# MathJax, mermaid, widget manager): the report must open offline
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block data_png scoped -%}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
<img src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}"
 alt="{{ (output | get_metadata('alt', 'image/png')) or 'figure' | escape_html }}">
</div>
{%- endblock data_png -%}
{%- block extra_css -%}
<style>
 body { max-width: 1250px; margin: auto; }
 table.lk { border-collapse: collapse; font-size: 12px; margin: 6px 0 14px 0; display: block;
   overflow-x: auto; max-width: 100%; }
 img { max-width: 100%; height: auto; }
 @media print { table.lk { display: table; overflow: visible; font-size: 9.5px; } details { display: block; }
   body { font-size: 12px; } .lk-answer { font-size: 12.5px; line-height: 1.35; }
   table.lk th, table.lk td { padding: 1px 5px; }
   /* JupyterLab keeps each output whole on a page (a long list or table then leaves the page
      before it half empty): let text and tables run on, keep figures and table rows whole */
   .jp-OutputArea-child { break-inside: auto !important; }
   .jp-RenderedImage, table.lk tr { break-inside: avoid; } }
 @media (max-width: 640px) {
   table.lk-claims thead { display: none; }
   table.lk-claims tr { display: block; border-bottom: 1px solid #ccc; padding: 4px 0; }
   table.lk-claims td { display: block; border: none; padding: 1px 4px; }
   table.lk-claims td:empty { display: none; }
   table.lk-claims td::before { content: attr(data-label) ": "; font-weight: 600; } }
 table.lk th, table.lk td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left !important;
   vertical-align: top; }
 table.lk th { background: #f3f3f3; }
 .lk-note { color: #555; font-size: 12px; }
 details.lk-fold > summary { color: #444; font-size: 13px; cursor: pointer; margin: 2px 0 10px 0; }
 @page { size: A4; margin: 12mm; }
 .lk-warn { color: #8a1c00; background: #fff3e0; border-left: 4px solid #d55e00; padding: 4px 8px; font-weight: 600; }
 .lk-answer { font-size: 15px; line-height: 1.5; max-width: 60em; }
 pre.lk { font-size: 11px; background: #f7f7f7; padding: 8px; }
 .jp-OutputArea-output pre, .jp-OutputArea-output pre.lk, .jp-RenderedHTMLCommon pre {
   font-family: var(--jp-code-font-family, ui-monospace, "DejaVu Sans Mono", monospace); }
</style>
{%- endblock extra_css -%}
"""


class IpcKernelManager(AsyncKernelManager):
    """The notebook's kernel talks to papermill over Unix sockets beside its
    connection file in the user's private Jupyter runtime directory, not over
    TCP on localhost (which ipykernel warns about at every start)."""

    @default("transport")
    def _transport_default(self) -> str:
        return "ipc"


def default_notebook(kind: str = "sweep") -> str:
    """The notebook that reports a ``kind`` run: the analysis notebook for a
    sweep, the experiments notebook for a control or cpu run."""
    path = NOTEBOOK if kind == "sweep" else EXPERIMENTS_NOTEBOOK
    if not path.is_file():
        raise LabkitError(f"the notebook {path} is missing: reinstall labkit "
                          "(`pip install .` ships it as package data)")
    return str(path)


def run_kind(run_dir: str) -> str:
    """The kind of run in ``run_dir`` by its meta file (``sweep`` when it has
    none: :func:`~labkit.analysis.run.load_run` then names what is missing).
    A bench run is refused in one line: ``labkit bench`` prints its figures."""
    kind = next((k for k, rk in schema.KINDS.items() if os.path.isfile(os.path.join(run_dir, rk.meta))),
                "sweep")
    if kind not in REPORTED:
        raise UsageError(f"{run_dir} is a {kind} run: `labkit {kind}` prints its figures; `report` "
                         f"builds {', '.join(REPORTED)} runs")
    return kind


def _writable_dir(path: str) -> bool:
    probe = path
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return os.path.isdir(probe or "/") and os.access(probe or "/", os.W_OK)


def check_run_meta(run_dir: str, kind: str = "sweep") -> None:
    """Refuse, in one line, a run directory whose ``meta.json`` is not a
    regular file of a sane size or not valid against the run schema
    (:func:`labkit.rundir.schema.meta_problem`), before anything uses it.  A
    missing or unparsable file is left to :func:`~labkit.analysis.run.load_run`,
    which names it."""
    path = os.path.join(run_dir, schema.KINDS[kind].meta)
    if not os.path.isdir(run_dir):
        return
    try:
        raw = read_regular(path, path, META_MAX)
    except FileNotFoundError:
        return
    try:
        meta = json.loads(raw.decode("utf-8"))
    except ValueError:   # not JSON, not UTF-8
        return
    problem = schema.meta_problem(meta, kind)
    if problem:
        raise UsageError(f"{run_dir} is not a valid labkit run: {problem}")


def build_report(run_dir: str, out_html: str | None = None, budget_us: float = 10.0,
                 budget_frac: float = 0.10, out_dir: str | None = None, *, n_boot: int = 1000,
                 seed: int = 0, notebook: str | None = None, timeout: int = 1800,
                 screenshot: bool = True) -> str:
    """Build DIR/report.html (and crossover.csv, fits.csv, summary.csv, the
    executed analysis.ipynb) for the run in ``run_dir``.  A control or cpu run
    gets the experiments notebook's sections (figures and tables) instead.

    Outputs go to ``out_dir`` (default: the run directory itself); a
    read-only run directory, such as data/reference/<name>/, needs an
    ``out_dir``.  The raw files are only read.  Returns the HTML path.

    No file is written through a path another user could redirect: ``out_dir``
    is checked and held open (:mod:`labkit.rundir.safepath`); the notebook and
    Chromium write into a private temporary directory, and each output is then
    written into the held directory (``O_EXCL|O_NOFOLLOW`` temporary name,
    rename), so a symbolic link planted there under any name is never written
    through."""
    run_dir = os.path.abspath(run_dir)
    kind = run_kind(run_dir) if os.path.isdir(run_dir) else "sweep"
    check_run_meta(run_dir, kind)
    if kind == "sweep":
        load_run(run_dir)  # refuse a directory that is not a run before starting a kernel
    if not (math.isfinite(budget_us) and math.isfinite(budget_frac)) or budget_us < 0 \
            or not 0 <= budget_frac < 10:
        raise UsageError(f"budgets must be finite and non-negative (the fraction below 10), got "
                         f"{budget_us:g} us and {budget_frac:g}")
    out_dir = safepath.check(out_dir or run_dir, "--out")
    html_dir, html_name = os.path.split(safepath.resolve(out_html, "out_html")) if out_html \
        else (out_dir, "report.html")
    for d in dict.fromkeys((out_dir, html_dir)):
        if not _writable_dir(d):
            raise UsageError(f"{d} is not writable; pass --out to write the "
                             "report elsewhere")
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(safepath.open_dir(out_dir, "--out"))
        hdir = out if html_dir == out_dir else stack.enter_context(safepath.open_dir(html_dir, "out_html"))
        work = stack.enter_context(tempfile.TemporaryDirectory(prefix="lkreport."))
        try:
            os.unlink("crossover.csv", dir_fd=out.fd)  # never leave a stale table beside a new report
        except FileNotFoundError:
            pass
        # the notebook writes its tables into its working directory, the private ``work``
        params = dict(run_dir=run_dir, n_boot=int(n_boot), seed=int(seed)) | (
            dict(out_dir=".", budget_us=float(budget_us), budget_frac=float(budget_frac)) if kind == "sweep"
            else {})
        executed = os.path.join(work, "analysis.ipynb")
        try:
            pm.execute_notebook(notebook or default_notebook(kind), executed, parameters=params,
                                kernel_name=KERNEL, cwd=work, progress_bar=False,
                                log_output=False, execution_timeout=timeout,
                                kernel_manager_class=IpcKernelManager)
        except pm.PapermillExecutionError as exc:
            _publish(work, out.fd, ["analysis.ipynb"])
            raise LabkitError(f"the analysis notebook failed: {exc.ename}: {exc.evalue} "
                              f"(executed copy: {os.path.join(out_dir, 'analysis.ipynb')})") from None
        if kind == "sweep" and not os.path.exists(os.path.join(work, "crossover.csv")):
            raise LabkitError(f"the analysis notebook did not write {os.path.join(out_dir, 'crossover.csv')}")
        body = notebook_html(executed)
        _publish(work, out.fd)
        store.atomic_write_at(hdir.fd, html_name, body.encode("utf-8"))
        if screenshot and browser.browser():
            # the first screen a reader sees, beside the report (README shows the reference run's)
            page = os.path.join(work, "report.html")
            with open(page, "w", encoding="utf-8") as f:
                f.write(body)
            browser.screenshot(page, os.path.join(work, "report.png"))
            _publish(work, hdir.fd, ["report.png"])
        elif screenshot:
            log.warning("report.png not written: chromium is not installed (Debian package chromium; "
                        "`make setup` installs it)")
    return os.path.join(html_dir, html_name)


def _publish(work: str, dir_fd: int, names: list[str] | None = None) -> None:
    """Copy the regular files ``names`` (default: all) of the private
    directory ``work`` into the held directory ``dir_fd``, each atomically."""
    for name in sorted(names if names is not None else os.listdir(work)):
        p = os.path.join(work, name)
        if name.startswith(".") or os.path.islink(p) or not os.path.isfile(p):
            continue
        with open(p, "rb") as f:
            store.atomic_write_at(dir_fd, name, f.read())


def notebook_html(path: str) -> str:
    """An executed notebook as self-contained HTML: inputs, prompts and
    stderr streams (warnings, kept in the notebook) left out."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", [])
                            if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, embed_images=True,
                            extra_loaders=[DictLoader({"labkit.html.j2": _TEMPLATE})],
                            template_file="labkit.html.j2")
    body, _ = exporter.from_notebook_node(nb)
    # nbconvert's final pass sorts attributes (alt before src); put the
    # source first, as hand-written HTML has it
    return re.sub(r'<img alt="([^"]*)" ((?:class="[^"]*" )?)src="(data:image/png;base64,[^"]*)"',
                  r'<img src="\3" alt="\1" \2', body)


# ---------------------------------------------------------------------------
# sections for the notebook (HTML)

def self_contained(body: str) -> bool:
    """True when the HTML loads nothing from elsewhere (scripts, styles, images)."""
    return not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', body)

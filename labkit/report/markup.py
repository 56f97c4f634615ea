"""HTML fragments every report builder shares (pure: strings in, strings out)."""
from __future__ import annotations

import html


def details(summary: str, body: str) -> str:
    """``body`` (HTML) under a one-line ``summary`` (text, escaped here) in a
    ``<details>`` element: closed on the page and in print, one click away in
    the browser and in JupyterLab.  One class (``lk-fold``), so every folded
    block of a report looks the same."""
    return f'<details class="lk-fold"><summary>{html.escape(summary)}</summary>{body}</details>'

"""report.html of the battery report: the page of `studies.report_md` rendered by
`studies.page.to_html` — one self-contained page (inline CSS, figures as base64 PNG, no
scripts, no links to fetch). Every piece of text from the user's table goes through
:func:`html.escape` there, so an attribute called ``<script>`` is shown, not run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from studies.page import html_table, to_html
from studies.report_md import battery_page


def render_html(report: Mapping[str, Any], *, figures: Mapping[str, bytes] | None = None) -> str:
    """The whole report.html; ``figures`` maps ``"<outcome>_<figure>"`` to PNG bytes."""
    return to_html(battery_page(report), figures)


__all__ = ["html_table", "render_html"]

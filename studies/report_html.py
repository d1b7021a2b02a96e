"""report.html of the battery report: the page of `studies.report_md` rendered by
`studies.page.to_html` — one self-contained page (inline CSS, figures embedded, no scripts,
nothing to fetch). Every piece of text from the user's table goes through :func:`html.escape`
there, so an attribute called ``<script>`` is shown, not run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from studies.page import Link, html_table, to_html
from studies.report_md import battery_page


def render_html(
    report: Mapping[str, Any],
    *,
    figures: Mapping[str, bytes] | None = None,
    figure_links: Mapping[str, str] | None = None,
    title: str | None = None,
    home: Link | None = None,
) -> str:
    """The whole report.html; ``figures`` maps ``"<outcome>_<figure>"`` to PNG (or SVG) bytes,
    ``figure_links`` the same keys to the full-size files beside the page (each figure then
    opens its file); ``title`` / ``home``: see `studies.report_md.page_identity`."""
    page = battery_page(report, title=title, home=home)
    return to_html(page, figures, figure_links=figure_links)


__all__ = ["html_table", "render_html"]

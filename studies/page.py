"""One report page, two renderings: the page skeleton, tables, escaping and figure embedding
shared by `attrimp study analyze` (`studies.report`) and `attrimp study run`
(`attrimp.study.report`).

A writer builds its page once, from its report.json dictionary, as a small tree — a
:class:`Page` of :class:`Section` s holding blocks (:class:`Text`, :class:`Bullets`,
:class:`Definitions`, :class:`Table`, :class:`Image`, :class:`Links`, :class:`Box`) — and hands it
to :func:`to_markdown` (figures linked as files) and :func:`to_html` (one self-contained page:
inline CSS, figures as base64 PNG, no scripts, nothing to fetch). The two pages therefore say
the same thing in the same order, and the rules below are written once:

* **escaping** — every piece of text may come from the user's table (an attribute called
  ``<script>`` or ``a|b``): Markdown goes through :func:`md_escape`, HTML through
  :func:`html.escape`, at render time, so a page builder never escapes anything itself;
* **numbers** — a table cell is formatted by its table's ``fmt`` (:func:`format_value`, 4
  significant digits, or :func:`format_fixed`, 4 decimals); numbers are formatted here and
  never come from the user, so they are not escaped;
* **skeleton** — the writers put the answer first, then the glossary, then the detail; the
  renderers add nothing but the page frame (and, in HTML, the note that explains highlighted
  p-values when the page asks for highlighting).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

import numpy as np
import pandas as pd

# --------------------------------------------------------------------------- text and numbers

#: characters that can start markup anywhere in a line (block-level ones such as "1." or "-"
#: only act at a line start, and user text never starts a line here)
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#+!|~&$])")
_P_KEYS = {"p_value", "p_holm", "p_fdr_bh", "kendall_w_p", "Holm p"}

#: a cell formatter: (column name, value) -> the cell's text, unescaped
CellFormat = Callable[[str, Any], str]


def md_escape(text: Any) -> str:
    """Literal Markdown text: every markup character backslash-escaped, newlines flattened."""
    s = " ".join(str(text).split())
    return _MD_SPECIAL.sub(r"\\\1", s)


def is_p_key(key: str) -> bool:
    """Whether a column holds p-values (they get their own number format)."""
    return key in _P_KEYS or key.startswith("p_") or key.endswith("_p")


def format_p(p: float) -> str:
    """A p-value: 3 decimals, or scientific below 0.001."""
    if p == 0.0:
        return "0"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def format_value(key: str, value: Any) -> str:
    """A cell's text (unescaped): p-values by :func:`format_p`, other floats to 4 significant
    digits (scientific outside 1e-3..1e5), booleans yes/no, lists and mappings joined."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if is_p_key(key):
            return format_p(value)
        if value == 0.0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.3e}"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(key, v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {format_value(str(k), v)}" for k, v in value.items())
    return str(value)


def format_fixed(key: str, value: Any) -> str:
    """A cell's text with a fixed 4 decimals, so a column of ΔmAP or CI bounds reads alike:
    whole numbers as integers, p-values (a ``p_*`` or ``Holm p*`` column) by :func:`format_p`,
    missing and non-finite values blank."""
    if value is None or (isinstance(value, (float, np.floating)) and not np.isfinite(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if v.is_integer() and abs(v) < 1e6:
            return str(int(v))
        if key.startswith("p_") or key.startswith("Holm p"):
            return format_p(v)
        return f"{v:.4f}"
    return str(value)


# --------------------------------------------------------------------------- the page tree


@dataclass(frozen=True)
class Strong:
    """Bold inline text."""

    text: str


#: inline text: plain strings and bold pieces, rendered one after another
Inline = str | Strong | Sequence[str | Strong]


@dataclass
class Text:
    """A paragraph; ``note`` renders it smaller (HTML) under the thing it explains."""

    text: Inline
    note: bool = False


@dataclass
class Bullets:
    """A bullet list, one inline text per item."""

    items: Sequence[Inline]


@dataclass
class Definitions:
    """Term/meaning pairs: the glossary, the facts about the input (``- **term**: meaning`` in
    Markdown, a ``<dl>`` in HTML)."""

    items: Sequence[tuple[str, str]]


@dataclass
class Table:
    """Rows (a DataFrame, or mappings from column to value) under ``columns`` (default: every
    key, in first-seen order), each cell formatted by ``fmt``."""

    rows: pd.DataFrame | Sequence[Mapping[str, Any]]
    columns: Sequence[str] | None = None
    fmt: CellFormat = format_value


@dataclass
class Image:
    """A figure by its key in the figures handed to the renderer; skipped when absent."""

    key: str
    alt: str


@dataclass
class Link:
    """A link to a page that exists in both formats: each rendering links its own format first
    and the other one second, then ``text``."""

    label: str
    markdown: str
    html: str
    text: str = ""


@dataclass
class Links:
    """A list of links to other reports (the study page's links to each battery's own)."""

    items: Sequence[Link]


@dataclass
class Box:
    """Blocks framed together in HTML (``kind`` "answer" or "warn"); plain in Markdown."""

    blocks: Sequence[Block]
    kind: str = "answer"


Block = Text | Bullets | Definitions | Table | Image | Links | Box


@dataclass
class Section:
    """A heading (``level`` 2 or 3) and its blocks."""

    title: str
    blocks: Sequence[Block] = ()
    level: int = 2


@dataclass
class Page:
    """A whole page: its title, the blocks under the title, then the sections in order.

    ``highlight_alpha``: in HTML, adjusted p-values (``p_holm``, ``p_fdr_bh``, ``Holm p``)
    below it are shown bold red, and a note under the title says so; None highlights nothing.
    """

    title: str
    intro: Sequence[Block] = ()
    sections: list[Section] = field(default_factory=list)
    highlight_alpha: float | None = None


def table_rows(
    table: pd.DataFrame | Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
) -> tuple[list[str], list[Mapping[str, Any]]]:
    """A table's columns and its rows as mappings (a DataFrame's columns in order; otherwise
    every key of the rows, in first-seen order, unless ``columns`` is given)."""
    if isinstance(table, pd.DataFrame):
        cols = [str(c) for c in table.columns]
        rows: list[Mapping[str, Any]] = [
            dict(zip(cols, row)) for row in table.itertuples(index=False, name=None)
        ]
    else:
        rows = list(table)
        cols = list(dict.fromkeys(str(k) for r in rows for k in r))
    return (list(columns) if columns is not None else cols), rows


# --------------------------------------------------------------------------- Markdown


def md_inline(text: Inline) -> str:
    """Inline text as Markdown: each piece escaped, bold pieces wrapped in ``**``; the space
    at a piece's edge is kept, so ``[Strong("ap."), " lead"]`` reads ``**ap.** lead``."""
    if isinstance(text, (str, Strong)):
        text = [text]
    out = []
    for piece in text:
        raw = piece.text if isinstance(piece, Strong) else piece
        s = md_escape(raw)
        if isinstance(piece, Strong):
            s = f"**{s}**"
        lead = " " if raw[:1].isspace() else ""
        trail = " " if raw[-1:].isspace() else ""
        out.append(lead + s + trail)
    return "".join(out).strip()


def md_table(
    rows: pd.DataFrame | Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    fmt: CellFormat = format_value,
) -> str:
    """A pipe table; an escaped ``|`` in a cell never splits it."""
    cols, records = table_rows(rows, columns)
    if not records:
        return "_(empty)_"
    lines = [
        "| " + " | ".join(md_escape(c) for c in cols) + " |",
        "| " + " | ".join("---" for _ in cols) + " |",
    ]
    for r in records:
        lines.append("| " + " | ".join(_md_cell(c, r.get(c), fmt) for c in cols) + " |")
    return "\n".join(lines)


def _md_cell(key: str, value: Any, fmt: CellFormat) -> str:
    text = fmt(key, value)
    # numbers are formatted by us and need no escaping; anything else may come from the user
    return text if isinstance(value, (int, float)) else md_escape(text)


def _md_block(block: Block, figures: Mapping[str, str]) -> str:
    if isinstance(block, Text):
        return md_inline(block.text)
    if isinstance(block, Bullets):
        return "\n".join(f"- {md_inline(item)}" for item in block.items)
    if isinstance(block, Definitions):
        return "\n".join(f"- **{md_escape(t)}**: {md_escape(m)}" for t, m in block.items)
    if isinstance(block, Table):
        return md_table(block.rows, block.columns, fmt=block.fmt)
    if isinstance(block, Image):
        path = figures.get(block.key)
        return f"![{md_escape(block.alt)}]({path})" if path else ""
    if isinstance(block, Links):
        return "\n".join(
            f"- [{md_escape(k.label)}]({k.markdown}) ([HTML]({k.html})): {md_escape(k.text)}"
            for k in block.items
        )
    if isinstance(block, Box):
        return _md_blocks(block.blocks, figures)
    raise TypeError(f"not a page block: {block!r}")


def _md_blocks(blocks: Sequence[Block], figures: Mapping[str, str]) -> str:
    return "\n\n".join(t for t in (_md_block(b, figures) for b in blocks) if t)


def to_markdown(page: Page, figures: Mapping[str, str] | None = None) -> str:
    """The page as Markdown; ``figures`` maps an :class:`Image` key to a relative image path."""
    figures = dict(figures or {})
    parts = [f"# {md_escape(page.title)}", _md_blocks(page.intro, figures)]
    for s in page.sections:
        parts.append(f"{'#' * s.level} {md_escape(s.title)}")
        parts.append(_md_blocks(s.blocks, figures))
    return "\n\n".join(p for p in parts if p).rstrip() + "\n"


# --------------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em;line-height:1.45}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:.85em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.text{text-align:left}.sig{font-weight:bold;color:#b00}
.scroll{overflow-x:auto;max-width:100%}dd,li,p,h1,h2,h3{overflow-wrap:anywhere}
td.text{overflow-wrap:anywhere;min-width:5em}
.answer{background:#eef5fb;border-left:4px solid #1f77b4;padding:.4em 1em;margin:.8em 0}.warn{background:#fff6e0;border-left:4px solid #e0a000;padding:.5em 1em}
.note{color:#555;font-size:.9em}img{max-width:100%;height:auto;margin:.5em 0}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:bold}
"""

#: the columns whose values below alpha are highlighted (adjusted p-values)
HIGHLIGHTED = ("p_holm", "p_fdr_bh", "Holm p")


def png_data_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI, so the page needs no file beside it."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def html_inline(text: Inline) -> str:
    """Inline text as HTML: each piece escaped, bold pieces in ``<b>``."""
    if isinstance(text, (str, Strong)):
        text = [text]
    return "".join(f"<b>{escape(p.text)}</b>" if isinstance(p, Strong) else escape(p) for p in text)


def html_table(
    rows: pd.DataFrame | Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    alpha: float | None = 0.05,
    fmt: CellFormat = format_value,
) -> str:
    """A table inside a scroll container (a wide table scrolls, the page never does); text
    cells left-aligned, adjusted p-values below ``alpha`` bold red (None: none)."""
    cols, records = table_rows(rows, columns)
    if not records:
        return '<p class="note">(empty)</p>'
    head = "".join(f"<th>{escape(str(c))}</th>" for c in cols)
    body = "\n".join(
        "<tr>" + "".join(_html_cell(c, r.get(c), alpha, fmt) for c in cols) + "</tr>"
        for r in records
    )
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>\n{body}\n'
        "</tbody></table></div>"
    )


def _html_cell(key: str, value: Any, alpha: float | None, fmt: CellFormat) -> str:
    text = escape(fmt(key, value))
    cls = "text" if isinstance(value, str) or value is None else ""
    if alpha is not None and key in HIGHLIGHTED and isinstance(value, float) and value < alpha:
        cls = (cls + " sig").strip()
    return f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>"


def _html_block(block: Block, figures: Mapping[str, bytes], alpha: float | None) -> str:
    if isinstance(block, Text):
        cls = ' class="note"' if block.note else ""
        return f"<p{cls}>{html_inline(block.text)}</p>"
    if isinstance(block, Bullets):
        if not block.items:
            return ""
        return "<ul>\n" + "\n".join(f"<li>{html_inline(i)}</li>" for i in block.items) + "\n</ul>"
    if isinstance(block, Definitions):
        items = "\n".join(f"<dt>{escape(t)}</dt><dd>{escape(m)}</dd>" for t, m in block.items)
        return f"<dl>\n{items}\n</dl>"
    if isinstance(block, Table):
        return html_table(block.rows, block.columns, alpha=alpha, fmt=block.fmt)
    if isinstance(block, Image):
        png = figures.get(block.key)
        return f'<img alt="{escape(block.alt)}" src="{png_data_uri(png)}">' if png else ""
    if isinstance(block, Links):
        return "<ul>\n" + "\n".join(_html_link(k) for k in block.items) + "\n</ul>"
    if isinstance(block, Box):
        inner = _html_blocks(block.blocks, figures, alpha)
        return f'<div class="{escape(block.kind)}">{inner}</div>' if inner else ""
    raise TypeError(f"not a page block: {block!r}")


def _html_link(link: Link) -> str:
    return (
        f'<li><a href="{escape(link.html)}">{escape(link.label)}</a> '
        f'(<a href="{escape(link.markdown)}">Markdown</a>): {escape(link.text)}</li>'
    )


def _html_blocks(blocks: Sequence[Block], figures: Mapping[str, bytes], alpha) -> str:
    return "\n".join(t for t in (_html_block(b, figures, alpha) for b in blocks) if t)


def to_html(page: Page, figures: Mapping[str, bytes] | None = None) -> str:
    """The page as one self-contained HTML document; ``figures`` maps an :class:`Image` key to
    PNG bytes (embedded)."""
    figures = dict(figures or {})
    alpha = page.highlight_alpha
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(page.title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{escape(page.title)}</h1>",
        _html_blocks(page.intro, figures, alpha),
    ]
    if alpha is not None:
        parts.append(
            '<p class="note">Bold red adjusted p-values are below alpha = '
            f"{escape(format_value('alpha', float(alpha)))}.</p>"
        )
    for s in page.sections:
        parts.append(f"<h{s.level}>{escape(s.title)}</h{s.level}>")
        parts.append(_html_blocks(s.blocks, figures, alpha))
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p) + "\n"


__all__ = [
    "Block",
    "Box",
    "Bullets",
    "CSS",
    "Definitions",
    "Image",
    "Link",
    "Links",
    "Page",
    "Section",
    "Strong",
    "Table",
    "Text",
    "format_fixed",
    "format_p",
    "format_value",
    "html_inline",
    "html_table",
    "is_p_key",
    "md_escape",
    "md_inline",
    "md_table",
    "png_data_uri",
    "table_rows",
    "to_html",
    "to_markdown",
]

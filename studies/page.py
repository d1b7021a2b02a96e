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
* **numbers and headers** — a table cell is formatted by its table's ``fmt``, by default
  `studies.format.format_cell` (by the column's kind: effects signed to 3 decimals, p-values
  ``4.4e-05`` / ``0.036``, ranks, counts, confidence intervals as one ``[lo, hi]`` unit), and
  headers are shown in words (`studies.format.human_header`); report.json and the CSVs keep
  the machine names. Numbers never come from the user, so they are not escaped;
* **layout** — tables never break a word or a number (cells wrap only between words; numbers
  and intervals never wrap), wide tables scroll in their own box with a visible hint, the
  glossary and the summary tables restack below 600 px, and every figure links to its
  full-size image where the writer names one;
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

from studies.format import (
    format_cell,
    format_p,
    human_header,
    is_number_cell,
    is_p_key,
    merge_ci_columns,
)

# --------------------------------------------------------------------------- text and numbers

#: characters that can start markup anywhere in a line (block-level ones such as "1." or "-"
#: only act at a line start, and user text never starts a line here)
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#+!|~&$])")

#: text that is a number or an interval written by a page builder ("+0.123 [+0.078, +0.174]"):
#: kept on one line like a number
_NUMERIC_TEXT = re.compile(r"^(?=.*\d)[\s\d.,+\-\u2212\[\]()eE%]+$")

#: a cell formatter: (column name, value) -> the cell's text, unescaped
CellFormat = Callable[[str, Any], str]


def md_escape(text: Any) -> str:
    """Literal Markdown text: every markup character backslash-escaped, newlines flattened."""
    s = " ".join(str(text).split())
    return _MD_SPECIAL.sub(r"\\\1", s)


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
    Markdown, a ``<dl>`` in HTML that restacks term above meaning on a narrow screen)."""

    items: Sequence[tuple[str, str]]


@dataclass
class Table:
    """Rows (a DataFrame, or mappings from column to value) under ``columns`` (default: every
    key, in first-seen order), each cell formatted by ``fmt`` (by the column's kind unless
    told otherwise), headers in words. ``stack``: on a narrow screen each row becomes a card
    of "header value" lines (for the summary tables a phone reader must read whole)."""

    rows: pd.DataFrame | Sequence[Mapping[str, Any]]
    columns: Sequence[str] | None = None
    fmt: CellFormat = format_cell
    stack: bool = False


@dataclass
class Image:
    """A figure by its key in the figures handed to the renderer; skipped when absent."""

    key: str
    alt: str


@dataclass
class Link:
    """A link to a page that exists in both formats: each rendering links its own format first
    and the other one second, then ``text``. The HTML shows the target's path beside the link,
    so a reader of a copied page without its folders knows what is missing."""

    label: str
    markdown: str
    html: str
    text: str = ""


@dataclass
class Links:
    """A list of links to other reports (the study page's links to each battery's own);
    ``where`` says in words where they point."""

    items: Sequence[Link]
    where: str = ""


@dataclass
class Box:
    """Blocks framed together in HTML (``kind`` "answer" or "warn"); plain in Markdown."""

    blocks: Sequence[Block]
    kind: str = "answer"


Block = Text | Bullets | Definitions | Table | Image | Links | Box


@dataclass
class Section:
    """A heading (``level`` 2 or 3) and its blocks; ``anchor`` gives the HTML heading an id
    that links (the warnings of a sub-report) can point at."""

    title: str
    blocks: Sequence[Block] = ()
    level: int = 2
    anchor: str | None = None


@dataclass
class Page:
    """A whole page: its title, the blocks under the title, then the sections in order.

    ``highlight_alpha``: in HTML, adjusted p-values (``p_holm``, ``p_fdr_bh``, ``Holm p``)
    below it are shown bold red, and a note under the title says so; None highlights nothing.
    ``home``: the report this page belongs to (a sub-report's link back), shown above the title.
    """

    title: str
    intro: Sequence[Block] = ()
    sections: list[Section] = field(default_factory=list)
    highlight_alpha: float | None = None
    home: Link | None = None


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


def display_rows(
    table: pd.DataFrame | Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
) -> tuple[list[str], list[Mapping[str, Any]]]:
    """:func:`table_rows` with each CI pair folded into one interval column (both pages show
    an interval as one unit)."""
    cols, rows = table_rows(table, columns)
    return merge_ci_columns(cols, rows)


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
    fmt: CellFormat = format_cell,
) -> str:
    """A pipe table with headers in words; an escaped ``|`` in a cell never splits it."""
    cols, records = display_rows(rows, columns)
    if not records:
        return "_(empty)_"
    lines = [
        "| " + " | ".join(md_escape(human_header(c)) for c in cols) + " |",
        "| " + " | ".join("---" for _ in cols) + " |",
    ]
    for r in records:
        lines.append("| " + " | ".join(_md_cell(c, r.get(c), fmt) for c in cols) + " |")
    return "\n".join(lines)


def _md_cell(key: str, value: Any, fmt: CellFormat) -> str:
    text = fmt(key, value)
    # numbers are formatted by us and need no escaping; anything else may come from the user
    return text if is_number_cell(value) else md_escape(text)


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
        items = "\n".join(
            f"- [{md_escape(k.label)}]({k.markdown}) ([HTML]({k.html})): {md_escape(k.text)}"
            for k in block.items
        )
        return f"{md_escape(block.where)}\n\n{items}" if block.where else items
    if isinstance(block, Box):
        return _md_blocks(block.blocks, figures)
    raise TypeError(f"not a page block: {block!r}")


def _md_blocks(blocks: Sequence[Block], figures: Mapping[str, str]) -> str:
    return "\n\n".join(t for t in (_md_block(b, figures) for b in blocks) if t)


def to_markdown(page: Page, figures: Mapping[str, str] | None = None) -> str:
    """The page as Markdown; ``figures`` maps an :class:`Image` key to a relative image path."""
    figures = dict(figures or {})
    home = (
        f"[← {md_escape(page.home.label)}]({page.home.markdown})" if page.home is not None else ""
    )
    parts = [home, f"# {md_escape(page.title)}", _md_blocks(page.intro, figures)]
    for s in page.sections:
        parts.append(f"{'#' * s.level} {md_escape(s.title)}")
        parts.append(_md_blocks(s.blocks, figures))
    return "\n\n".join(p for p in parts if p).rstrip() + "\n"


# --------------------------------------------------------------------------- HTML

#: the page's style: words and numbers never break inside (cells wrap only between words,
#: numbers and intervals not at all), wide tables and figures scroll in their own box with a
#: shadow at the edge that has more and a written hint, and below 600 px the glossary and the
#: summary tables restack (no script: the page works where scripts are blocked)
CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em;line-height:1.45}
h1{border-bottom:2px solid #444;font-size:1.7em}h2{margin-top:2em;border-bottom:1px solid #ccc}
p,li,dd,dt,h1,h2,h3,figcaption{overflow-wrap:break-word}
nav.home{font-size:.9em;margin-bottom:.5em}
table{border-collapse:collapse;margin:.2em 0 .4em;font-size:.85em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right;vertical-align:top;
word-break:normal;overflow-wrap:normal;hyphens:none}
th{background:#f3f3f3;text-align:center;font-weight:600}
td.num{white-space:nowrap;font-variant-numeric:tabular-nums}
.nw{white-space:nowrap}
td.text{text-align:left}td.long{min-width:16em}
.sig{font-weight:bold;color:#b00}
.scroll{overflow-x:auto;max-width:100%;margin:.3em 0 1em;
background:linear-gradient(to right,#fff 30%,rgba(255,255,255,0)),
linear-gradient(to right,rgba(255,255,255,0),#fff 70%) 100% 0,
radial-gradient(farthest-side at 0 50%,rgba(0,0,0,.25),rgba(0,0,0,0)),
radial-gradient(farthest-side at 100% 50%,rgba(0,0,0,.25),rgba(0,0,0,0)) 100% 0;
background-repeat:no-repeat;background-size:40px 100%,40px 100%,14px 100%,14px 100%;
background-attachment:local,local,scroll,scroll}
.hint{display:none;color:#666;font-size:.8em;margin:.6em 0 0}.hint.wide{display:block}
.answer{background:#eef5fb;border-left:4px solid #1f77b4;padding:.4em 1em;margin:.8em 0}
.warn{background:#fff6e0;border-left:4px solid #e0a000;padding:.5em 1em}
.note{color:#555;font-size:.9em}.where{color:#666;font-size:.85em}
figure{margin:.8em 0}.fig{overflow-x:auto;max-width:100%}
figure img{max-width:100%;height:auto;display:block}
figcaption{color:#555;font-size:.85em}
dl{display:grid;grid-template-columns:minmax(8em,max-content) minmax(0,1fr);gap:.3em 1em}
dt{font-weight:bold;max-width:22em}dd{margin:0;min-width:0}
@media (max-width:600px){
body{margin:1em auto;padding:0 .6em}
.hint{display:block}
dl{display:block}dt{margin-top:.7em}dd{margin:0}
table.stack,table.stack tbody,table.stack tr,table.stack td{display:block;width:100%}
table.stack thead{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}
table.stack tr{border:1px solid #ccc;margin:.6em 0;padding:.2em .5em}
table.stack td{border:none;text-align:left;padding:.1em 0;white-space:normal;min-width:0}
table.stack td::before{content:attr(data-label);display:inline-block;width:45%;
padding-right:.5em;font-weight:600;color:#444;vertical-align:top;white-space:normal}
table.stack td.num span{white-space:nowrap}
}
"""

#: the columns whose values below alpha are highlighted (adjusted p-values; so is any column
#: named "Holm p ..." or "BH p ...")
HIGHLIGHTED = ("p_holm", "p_fdr_bh", "Holm p")

#: tables with more columns than this get a written "scroll sideways" hint at every width
WIDE_COLUMNS = 7


def png_data_uri(png: bytes) -> str:
    """A figure as a ``data:`` URI, so the page needs no file beside it: PNG bytes, or SVG text
    (bytes starting with ``<svg`` or ``<?xml``) as ``image/svg+xml``."""
    svg = png[:256].lstrip().startswith((b"<?xml", b"<svg"))
    mime = "image/svg+xml" if svg else "image/png"
    return f"data:{mime};base64," + base64.b64encode(png).decode("ascii")


def figure_css_width(data: bytes) -> int | None:
    """The width in CSS pixels a figure is drawn for: a PNG's pixel width scaled by its
    resolution (the ``pHYs`` chunk matplotlib writes: a 2x PNG saved at 192 dpi is shown at half
    its pixels, so it stays sharp on a dense screen), an SVG's ``width`` in pt or px; None when
    unknown (the browser then uses the natural size)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        pixels = int.from_bytes(data[16:20], "big")
        at = data.find(b"pHYs", 0, 4096)
        if at > 0 and data[at + 12] == 1:  # unit: metre
            dpi = int.from_bytes(data[at + 4 : at + 8], "big") * 0.0254
            if dpi > 0:
                return max(1, round(pixels * 96 / dpi))
        return pixels
    m = re.search(rb'<svg[^>]*?\swidth="([\d.]+)(pt|px)?"', data[:2048])
    if m:
        return round(float(m.group(1)) * (96 / 72 if m.group(2) == b"pt" else 1))
    return None


#: prose tokens a line must not break inside: numbers (signed, scientific, percentages),
#: |ΔmAP|-style magnitudes, and short hyphenated names such as rank-1 or Holm-adjusted p's
#: exponents; a browser may break after a hyphen, which splits "2.4e-04" or "rank-1"
_UNBREAKABLE = re.compile(
    r"(?<![\w.])[−+\-]?\d[\d.,]*(?:e[−+\-]?\d+)?%?(?!\w)"
    r"|\|[^\s|]{1,24}\|"
    r"|\b[A-Za-z]+-\d+\b"
)


def _prose_html(text: str) -> str:
    """Escaped prose whose numbers and short hyphenated tokens never break across lines."""
    out, last = [], 0
    for m in _UNBREAKABLE.finditer(text):
        out.append(escape(text[last : m.start()]))
        out.append(f'<span class="nw">{escape(m.group(0))}</span>')
        last = m.end()
    out.append(escape(text[last:]))
    return "".join(out)


def html_inline(text: Inline) -> str:
    """Inline text as HTML: each piece escaped (numbers kept on one line), bold pieces in
    ``<b>``."""
    if isinstance(text, (str, Strong)):
        text = [text]
    return "".join(
        f"<b>{_prose_html(p.text)}</b>" if isinstance(p, Strong) else _prose_html(p) for p in text
    )


@dataclass
class _Html:
    """What the HTML renderer needs beside the tree: the figures' bytes, the highlighting
    level, where each figure's full-size file is (``figure_links``), how to rewrite link targets
    (``hrefs``, for the single-file export) and the prefix of heading ids."""

    figures: Mapping[str, bytes] = field(default_factory=dict)
    alpha: float | None = None
    figure_links: Mapping[str, str] = field(default_factory=dict)
    hrefs: Mapping[str, str] = field(default_factory=dict)
    prefix: str = ""

    def href(self, target: str) -> str:
        return self.hrefs.get(target, target)


def html_table(
    rows: pd.DataFrame | Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    alpha: float | None = 0.05,
    fmt: CellFormat = format_cell,
    stack: bool = False,
) -> str:
    """A table inside a scroll box (a wide table scrolls, the page never does) with headers in
    words (the machine name as the header's tooltip); text cells left-aligned and wrapped only
    between words, numbers and intervals right-aligned on one line, adjusted p-values below
    ``alpha`` bold red (None: none); every cell carries its header for the narrow layout."""
    cols, records = display_rows(rows, columns)
    if not records:
        return '<p class="note">(empty)</p>'
    head = "".join(
        f'<th scope="col" title="{escape(c)}">{escape(human_header(c))}</th>' for c in cols
    )
    labels = [escape(human_header(c)) for c in cols]
    body = "\n".join(
        "<tr>"
        + "".join(_html_cell(c, lab, r.get(c), alpha, fmt) for c, lab in zip(cols, labels))
        + "</tr>"
        for r in records
    )
    hint = ""
    if not stack and len(cols) > 3:
        wide = " wide" if len(cols) > WIDE_COLUMNS else ""
        hint = f'<p class="hint{wide}">Wide table: scroll sideways to see every column →</p>'
    cls = ' class="stack"' if stack else ""
    return (
        f'{hint}<div class="scroll"><table{cls}><thead><tr>{head}</tr></thead><tbody>\n{body}\n'
        "</tbody></table></div>"
    )


def _html_cell(key: str, label: str, value: Any, alpha: float | None, fmt: CellFormat) -> str:
    text = escape(fmt(key, value))
    if is_number_cell(value) or (isinstance(value, str) and _NUMERIC_TEXT.match(value)):
        cls = "num"
        text = f"<span>{text}</span>"
    else:
        cls = "text long" if len(text) > 40 and " " in text else "text"
    adjusted = key in HIGHLIGHTED or key.startswith(("Holm p", "BH p"))
    if alpha is not None and adjusted and isinstance(value, float) and value < alpha:
        cls += " sig"
    return f'<td class="{cls}" data-label="{label}">{text}</td>'


def _html_image(block: Image, ctx: _Html) -> str:
    data = ctx.figures.get(block.key)
    if not data:
        return ""
    width = figure_css_width(data)
    # drawn at its own width at most (shrunk to the page by CSS); on a narrow screen it keeps
    # at least half of it (labels stay legible) and scrolls in its box instead
    # (52 %: a margin over half, for the rounding of the width to whole pixels)
    size = f' width="{width}" style="min-width:{-(-width * 52 // 100)}px"' if width else ""
    img = f'<img alt="{escape(block.alt)}" src="{png_data_uri(data)}"{size}>'
    full = ctx.figure_links.get(block.key)
    if not full:
        return f'<figure><div class="fig">{img}</div></figure>'
    return (
        f'<figure><div class="fig"><a href="{escape(full)}">{img}</a></div>'
        f'<figcaption><a href="{escape(full)}">Open full size</a> '
        f'<span class="where">({escape(full)}, beside this page)</span></figcaption></figure>'
    )


def _html_block(block: Block, ctx: _Html) -> str:
    if isinstance(block, Text):
        cls = ' class="note"' if block.note else ""
        return f"<p{cls}>{html_inline(block.text)}</p>"
    if isinstance(block, Bullets):
        if not block.items:
            return ""
        return "<ul>\n" + "\n".join(f"<li>{html_inline(i)}</li>" for i in block.items) + "\n</ul>"
    if isinstance(block, Definitions):
        items = "\n".join(
            f"<dt>{_prose_html(t)}</dt><dd>{_prose_html(m)}</dd>" for t, m in block.items
        )
        return f"<dl>\n{items}\n</dl>"
    if isinstance(block, Table):
        return html_table(
            block.rows, block.columns, alpha=ctx.alpha, fmt=block.fmt, stack=block.stack
        )
    if isinstance(block, Image):
        return _html_image(block, ctx)
    if isinstance(block, Links):
        # the note on where the links point is moot once they all point within the page
        local = all(ctx.href(k.html).startswith("#") for k in block.items)
        where = f'<p class="note">{escape(block.where)}</p>\n' if block.where and not local else ""
        return where + "<ul>\n" + "\n".join(_html_link(k, ctx) for k in block.items) + "\n</ul>"
    if isinstance(block, Box):
        inner = _html_blocks(block.blocks, ctx)
        return f'<div class="{escape(block.kind)}">{inner}</div>' if inner else ""
    raise TypeError(f"not a page block: {block!r}")


def _html_link(link: Link, ctx: _Html) -> str:
    target = ctx.href(link.html)
    where = "" if target.startswith("#") else f' <span class="where">({escape(link.html)})</span>'
    md = "" if target.startswith("#") else f' (<a href="{escape(link.markdown)}">Markdown</a>)'
    return (
        f'<li><a href="{escape(target)}">{escape(link.label)}</a>{where}{md}: '
        f"{_prose_html(link.text)}</li>"
    )


def _html_blocks(blocks: Sequence[Block], ctx: _Html) -> str:
    return "\n".join(t for t in (_html_block(b, ctx) for b in blocks) if t)


def _html_body(page: Page, ctx: _Html, *, top: str = "h1") -> list[str]:
    """The page's body parts: link home, title, intro, highlighting note, sections."""
    parts = []
    if page.home is not None:
        target = ctx.href(page.home.html)
        where = "" if target.startswith("#") else f' <span class="where">({escape(target)})</span>'
        parts.append(
            f'<nav class="home"><a href="{escape(target)}">← {escape(page.home.label)}</a>'
            f"{where}</nav>"
        )
    parts += [f"<{top}>{escape(page.title)}</{top}>", _html_blocks(page.intro, ctx)]
    if ctx.alpha is not None:
        parts.append(
            '<p class="note">Bold red adjusted p-values are below alpha = '
            f"{escape(format_value('alpha', float(ctx.alpha)))}.</p>"
        )
    for s in page.sections:
        anchor = f' id="{escape(ctx.prefix + s.anchor)}"' if s.anchor else ""
        parts.append(f"<h{s.level}{anchor}>{escape(s.title)}</h{s.level}>")
        parts.append(_html_blocks(s.blocks, ctx))
    return parts


def _html_document(title: str, body: Sequence[str]) -> str:
    head = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
    ]
    return "\n".join(p for p in [*head, *body, "</body></html>"] if p) + "\n"


def to_html(
    page: Page,
    figures: Mapping[str, bytes] | None = None,
    *,
    figure_links: Mapping[str, str] | None = None,
) -> str:
    """The page as one self-contained HTML document; ``figures`` maps an :class:`Image` key to
    PNG (or SVG) bytes, embedded; ``figure_links`` maps a key to the relative path of the
    full-size file the figure opens (none: the figure is not a link)."""
    ctx = _Html(dict(figures or {}), page.highlight_alpha, dict(figure_links or {}))
    return _html_document(page.title, _html_body(page, ctx))


def to_html_single(
    main: tuple[Page, Mapping[str, bytes]],
    parts: Sequence[tuple[str, Page, Mapping[str, bytes]]],
    *,
    hrefs: Mapping[str, str] | None = None,
) -> str:
    """One HTML file holding a page and its sub-reports (``parts``: anchor, page, figures), for
    sharing: each sub-report is a ``<section id=anchor>`` after the main page, its heading ids
    prefixed ``<anchor>-``, its link home pointing to the top; ``hrefs`` rewrites the main page's
    links to the sub-reports' files into in-page anchors. Figures are embedded and link nowhere
    (there are no files beside a shared page)."""
    page, figs = main
    hrefs = dict(hrefs or {})
    body = [
        '<div id="top"></div>',
        *_html_body(page, _Html(figs, page.highlight_alpha, hrefs=hrefs)),
    ]
    for anchor, sub, sub_figs in parts:
        ctx = _Html(
            sub_figs, sub.highlight_alpha, hrefs={**hrefs, **_home_href(sub)}, prefix=f"{anchor}-"
        )
        body.append(f'<section id="{escape(anchor)}" class="subreport">')
        body += _html_body(sub, ctx)
        body.append("</section>")
    return _html_document(page.title, body)


def _home_href(sub: Page) -> dict[str, str]:
    return {sub.home.html: "#top"} if sub.home is not None else {}


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
    "display_rows",
    "figure_css_width",
    "format_cell",
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
    "to_html_single",
    "to_markdown",
]

"""report.html: one self-contained page (inline CSS, figures as base64 PNG, no scripts, no links
to fetch), rendered from the report.json dictionary. Every piece of text from the user's table
goes through :func:`html.escape`, so an attribute called ``<script>`` is shown, not run."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from studies.report_md import (
    BLANK_P_NOTE,
    CONSENSUS_NOTE,
    GLOSSARY,
    SECTIONS,
    answer_text,
    display_columns,
    figure_tag,
    for_outcome,
    format_value,
    has_blank_p,
    input_facts,
    method_rank_rows,
    sign_convention,
    summary_rows,
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em;line-height:1.45}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:.85em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.text{text-align:left}.sig{font-weight:bold;color:#b00}
.scroll{overflow-x:auto;max-width:100%}dd,li,p,h2,h3{overflow-wrap:anywhere}
td.text{overflow-wrap:anywhere;min-width:5em}
.answer{background:#eef5fb;border-left:4px solid #1f77b4;padding:.4em 1em;margin:.8em 0}.warn{background:#fff6e0;border-left:4px solid #e0a000;padding:.5em 1em}
.note{color:#555;font-size:.9em}img{max-width:100%;height:auto;margin:.5em 0}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:bold}
"""


def _cell(key: str, value: Any, alpha: float) -> str:
    text = escape(format_value(key, value))
    cls = "text" if isinstance(value, str) or value is None else ""
    if key in ("p_holm", "p_fdr_bh", "Holm p") and isinstance(value, float) and value < alpha:
        cls = (cls + " sig").strip()
    return f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>"


def html_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *, alpha: float = 0.05
) -> str:
    if not rows:
        return '<p class="note">(empty)</p>'
    cols = list(columns or display_columns(rows))
    head = "".join(f"<th>{escape(str(c))}</th>" for c in cols)
    body = "\n".join(
        "<tr>" + "".join(_cell(c, r.get(c), alpha) for c in cols) + "</tr>" for r in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table></div>'


def _img(figures: Mapping[str, bytes], key: str, alt: str) -> str:
    data = figures.get(key)
    if not data:
        return ""
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{b64}">'


def render_html(report: Mapping[str, Any], *, figures: Mapping[str, bytes] | None = None) -> str:
    """The whole report.html; ``figures`` maps ``"<outcome>_<figure>"`` to PNG bytes."""
    figures = dict(figures or {})
    alpha = float(report.get("settings", {}).get("alpha", 0.05))
    inp = report["input"]
    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>attrimp study report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>attrimp study report</h1>",
        "<p>Which attribute groups move the outcome, in which direction and by how much; the "
        "detail of every analysis follows.</p>",
        f'<p class="note">Report schema {escape(str(report["schema_version"]))}. '
        f"Bold red adjusted p-values are below alpha = {escape(format_value('alpha', alpha))}.</p>",
        "<h2>Answer</h2>",
    ]
    for o in report.get("outcomes", []):
        lead, lines = answer_text(report, o)
        parts.append(f'<div class="answer"><p><b>{escape(o["outcome"])}.</b> {escape(lead)}</p>')
        if lines:
            parts.append("<ul>" + "".join(f"<li>{escape(x)}</li>" for x in lines) + "</ul>")
        parts.append("</div>")
        rows = summary_rows(report, o["outcome"])
        parts.append(html_table(rows, alpha=alpha))
        if has_blank_p(rows):
            parts.append(f'<p class="note">{escape(BLANK_P_NOTE)}</p>')
        tag = figure_tag(o["outcome"])
        parts.append(_img(figures, f"{tag}_consensus", f"Ranks by method for {o['outcome']}"))
    outcome_names = [o["outcome"] for o in report.get("outcomes", [])]
    parts.append(f"<p>{escape(sign_convention(outcome_names))}</p>")
    parts.append("<h2>How to read this report</h2><dl>")
    for term, meaning in GLOSSARY:
        parts.append(f"<dt>{escape(term)}</dt><dd>{escape(meaning)}</dd>")
    parts.append("</dl>")
    parts.append("<h2>Input</h2><dl>")
    for k, v in input_facts(inp):
        parts.append(f"<dt>{escape(k)}</dt><dd>{escape(format_value(k, v))}</dd>")
    for reason, n in (inp.get("rows_dropped") or {}).items():
        parts.append(f"<dt>rows dropped</dt><dd>{int(n)} ({escape(str(reason))})</dd>")
    settings = ", ".join(f"{k}={format_value(k, v)}" for k, v in report["settings"].items())
    parts.append(f"<dt>settings</dt><dd>{escape(settings)}</dd></dl>")

    lv = report.get("attribute_levels", {})
    parts.append("<h2>Attribute groups</h2>")
    parts.append(
        html_table(
            [
                {
                    "attribute": g,
                    "columns": ", ".join(cols),
                    "reference": lv.get(g, {}).get("reference"),
                    "levels": ", ".join(lv.get(g, {}).get("levels", [])),
                }
                for g, cols in report["attributes"].items()
            ],
            alpha=alpha,
        )
    )

    warns = report.get("warnings", [])
    parts.append(f"<h2>Warnings ({len(warns)})</h2>")
    if warns:
        parts.append('<div class="warn"><ul>')
        for w in warns:
            where = f" ({escape(str(w['outcome']))})" if w.get("outcome") else ""
            parts.append(
                f"<li><b>{escape(str(w['source']))}</b>{where}: {escape(str(w['message']))}</li>"
            )
        parts.append("</ul></div>")
    else:
        parts.append("<p>None.</p>")

    for o in report.get("outcomes", []):
        name = o["outcome"]
        tag = figure_tag(name)
        parts.append(f"<h2>Outcome {escape(name)}</h2>")
        summary = []
        if o.get("family"):
            summary.append(f"GLM family: {escape(o['family'])}.")
        if o.get("kendall_w") is not None:
            summary.append(
                f"Kendall's W across {len(o.get('methods', []))} methods = "
                f"{escape(format_value('w', o['kendall_w']))} "
                f"(p = {escape(format_value('kendall_w_p', o.get('kendall_w_p')))})."
            )
        if summary:
            parts.append(f"<p>{' '.join(summary)}</p>")
        parts.append("<h3>Consensus ranking (most important first)</h3>")
        parts.append(f'<p class="note">{escape(CONSENSUS_NOTE)}</p>')
        parts.append(html_table(method_rank_rows(report, name), alpha=alpha))
        for key, title, why in SECTIONS:
            rows = for_outcome(report["analyses"].get(key, []), name)
            if not rows:
                continue
            drop = ("outcome", "family") if key == "glm_coefficients" else ("outcome",)
            parts.append(f'<h3>{escape(title)}</h3><p class="note">{escape(why)}</p>')
            fig = {
                "glm_coefficients": "glm_forest",
                "permutation_importance": "importance",
                "shap": "shap",
            }.get(key)
            if fig:
                parts.append(_img(figures, f"{tag}_{fig}", f"{title} for {name}"))
            parts.append(html_table(rows, display_columns(rows, drop), alpha=alpha))
            if has_blank_p(rows):
                parts.append(f'<p class="note">{escape(BLANK_P_NOTE)}</p>')
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p) + "\n"


__all__ = ["html_table", "render_html"]

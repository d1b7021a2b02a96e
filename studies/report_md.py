"""report.md, rendered from the report.json dictionary (never from the raw results).

Attribute and column names come from the user's table and may contain ``|``, ``*``, ``_``, ``<``
or a newline; :func:`md_escape` makes each of them literal text so a name can neither break a
table nor inject markup. Number formatting is shared with the HTML page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

#: the note under the consensus table of both pages
CONSENSUS_NOTE = (
    "score: mean over methods of the rank-normalised score (1 = every method's top group). "
    "rank_<method>: each method's own rank. rank_ci_low/rank_ci_high/rank_stability: 95% "
    "interval and share of cluster-bootstrap replicates keeping the rank, for the consensus of "
    "the cheap scores re-computed per replicate (linear-model Wald chi-squared and identity-level "
    "eta-squared; the tree models are not refitted), so the interval need not contain the rank."
)

#: per-outcome sections of both pages: (table key, title, one-line explanation)
SECTIONS: tuple[tuple[str, str, str], ...] = (
    (
        "method_agreement",
        "Agreement between methods",
        "How similarly the methods rank the attribute groups.",
    ),
    ("glm_fits", "GLM fit", "The generalised linear model of the outcome on all attribute groups."),
    (
        "glm_group_tests",
        "GLM: joint Wald test per attribute group",
        "Does the group matter at all, adjusting for the other groups? Robust (cluster-robust when "
        "a cluster column is given) covariance; Holm and Benjamini-Hochberg adjusted.",
    ),
    (
        "glm_coefficients",
        "GLM coefficients",
        "Each level against its group's reference level (the most frequent one), link scale.",
    ),
    (
        "tests",
        "Rank tests per attribute group",
        "Mann-Whitney U (two levels) or Kruskal-Wallis (more), with effect sizes; clustered rows "
        "are handled as described in docs/studies.md.",
    ),
    (
        "paired_tests",
        "Paired tests between conditions",
        "The same units under different conditions: Wilcoxon signed-rank and paired t.",
    ),
    (
        "permutation_importance",
        "Grouped permutation importance",
        "Drop in held-out model quality when a whole attribute group is permuted.",
    ),
    (
        "model_quality",
        "Held-out quality of the tree models",
        "A model that explains nothing has no importance worth reading.",
    ),
    (
        "shap",
        "SHAP importance per attribute group",
        "Mean over rows of |sum of the group's columns' SHAP values|.",
    ),
    ("shap_levels", "SHAP: signed effect per level", "Mean SHAP value of the rows at each level."),
    (
        "prevalence",
        "Effect vs. prevalence",
        "Per-instance effect beside population-level importance: rare but strong groups stand out.",
    ),
    (
        "stability",
        "Stability under cluster resampling",
        "How each group's rank moves when clusters are resampled.",
    ),
)

#: characters that can start markup anywhere in a line (block-level ones such as "1." or "-"
#: only act at a line start, and user text never starts a line here)
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#+!|~&$])")
_P_KEYS = {"p_value", "p_holm", "p_fdr_bh", "kendall_w_p"}


def md_escape(text: Any) -> str:
    """Literal Markdown text: every markup character backslash-escaped, newlines flattened."""
    s = " ".join(str(text).split())
    return _MD_SPECIAL.sub(r"\\\1", s)


def is_p_key(key: str) -> bool:
    return key in _P_KEYS or key.startswith("p_") or key.endswith("_p")


def format_value(key: str, value: Any) -> str:
    """A cell's text (unescaped): p-values to 3 decimals or scientific, others 4 significant."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if is_p_key(key):
            if value == 0.0:
                return "0"
            return f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"
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


def display_columns(
    rows: Sequence[Mapping[str, Any]], drop: Sequence[str] = ("outcome",)
) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols and k not in drop:
                cols.append(k)
    return cols


def for_outcome(rows: Sequence[Mapping[str, Any]], outcome: str) -> list[Mapping[str, Any]]:
    return [r for r in rows if r.get("outcome") == outcome]


def method_rank_rows(report: Mapping[str, Any], outcome: str) -> list[dict[str, Any]]:
    """Consensus rows widened with each method's rank (the heat map as a table)."""
    scores = for_outcome(report["analyses"].get("method_scores", []), outcome)
    methods = list(dict.fromkeys(r["method"] for r in scores))
    by = {(r["attribute"], r["method"]): r["rank"] for r in scores}
    rows = []
    for c in for_outcome(report.get("consensus", []), outcome):
        row = {k: v for k, v in c.items() if k != "outcome"}
        for m in methods:
            row[f"rank_{m}"] = by.get((c["attribute"], m))
        rows.append(row)
    return rows


def _md_cell(key: str, value: Any) -> str:
    text = format_value(key, value)
    # numbers are formatted by us and need no escaping; anything else may come from the user
    return text if isinstance(value, (int, float)) else md_escape(text)


def md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "_(empty)_\n"
    cols = list(columns or display_columns(rows))
    lines = [
        "| " + " | ".join(md_escape(c) for c in cols) + " |",
        "| " + " | ".join("---" for _ in cols) + " |",
    ]
    for r in rows:
        lines.append("| " + " | ".join(_md_cell(c, r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def input_facts(inp: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The report's input block as (label, value) pairs, empty values left out; shared by the
    Markdown and HTML writers so both describe the input alike."""
    facts = [
        ("table", inp.get("path")),
        ("format", inp.get("format")),
        ("rows read", inp.get("rows_read")),
        ("rows used", inp.get("rows_used")),
        ("outcomes", ", ".join(inp.get("outcomes", []))),
        (
            "cluster",
            f"{inp['cluster']} ({inp.get('n_clusters')} clusters)"
            if inp.get("cluster")
            else "none (rows independent)",
        ),
        ("paired by", inp.get("paired_by")),
        ("condition", inp.get("condition")),
        ("excluded columns", ", ".join(inp.get("excluded", [])) or None),
        ("grouping file", inp.get("schema")),
    ]
    return [(k, v) for k, v in facts if v is not None and v != ""]


def render_markdown(report: Mapping[str, Any], *, figures: Mapping[str, str] | None = None) -> str:
    """The whole report.md; ``figures`` maps ``"<outcome>_<figure>"`` to a relative image path."""
    figures = dict(figures or {})
    inp = report["input"]
    settings = report["settings"]
    out: list[str] = ["# attrimp study report", ""]
    out.append(f"Report schema {md_escape(report['schema_version'])}.")
    out.append("")
    out.append("## Input")
    out.append("")
    for k, v in input_facts(inp):
        out.append(f"- **{md_escape(k)}**: {md_escape(format_value(k, v))}")
    for reason, n in (inp.get("rows_dropped") or {}).items():
        out.append(f"- **rows dropped**: {int(n)} ({md_escape(reason)})")
    out.append(
        "- **settings**: "
        + md_escape(", ".join(f"{k}={format_value(k, v)}" for k, v in settings.items()))
    )
    out.append("")
    out.append("## Attribute groups")
    out.append("")
    lv = report.get("attribute_levels", {})
    group_rows = [
        {
            "attribute": g,
            "columns": ", ".join(cols),
            "reference": lv.get(g, {}).get("reference"),
            "levels": len(lv.get(g, {}).get("levels", [])),
        }
        for g, cols in report["attributes"].items()
    ]
    out.append(md_table(group_rows))
    warns = report.get("warnings", [])
    out.append(f"## Warnings ({len(warns)})")
    out.append("")
    if not warns:
        out.append("None.")
    for w in warns:
        where = f" ({md_escape(w['outcome'])})" if w.get("outcome") else ""
        out.append(f"- **{md_escape(w['source'])}**{where}: {md_escape(w['message'])}")
    out.append("")
    for o in report.get("outcomes", []):
        name = o["outcome"]
        tag = figure_tag(name)
        out.append(f"## Outcome {md_escape(name)}")
        out.append("")
        fam = o.get("family")
        if fam:
            out.append(f"GLM family: {md_escape(fam)}.")
        if o.get("kendall_w") is not None:
            out.append(
                f"Kendall's W across {len(o.get('methods', []))} methods = "
                f"{format_value('w', o['kendall_w'])} "
                f"(p = {format_value('kendall_w_p', o.get('kendall_w_p'))})."
            )
        out.append("")
        out.append("### Consensus ranking (most important first)")
        out.append("")
        out.append(md_escape(CONSENSUS_NOTE))
        out.append("")
        out.append(md_table(method_rank_rows(report, name)))
        for fig, title in (("consensus", "Ranks by method"),):
            _md_figure(out, figures, f"{tag}_{fig}", title)
        for key, title, why in SECTIONS:
            rows = for_outcome(report["analyses"].get(key, []), name)
            if not rows:
                continue
            out.append(f"### {md_escape(title)}")
            out.append("")
            out.append(md_escape(why))
            out.append("")
            drop = ("outcome", "family") if key == "glm_coefficients" else ("outcome",)
            out.append(md_table(rows, display_columns(rows, drop)))
            fig = {
                "glm_coefficients": "glm_forest",
                "permutation_importance": "importance",
                "shap": "shap",
            }.get(key)
            if fig:
                _md_figure(out, figures, f"{tag}_{fig}", title)
    return "\n".join(out).rstrip() + "\n"


def figure_tag(outcome: str) -> str:
    """An outcome name made safe for a file name (figures are saved as <tag>_<figure>.png)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", outcome).strip("_") or "outcome"


def _md_figure(out: list[str], figures: Mapping[str, str], key: str, title: str) -> None:
    if key in figures:
        out.append(f"![{md_escape(title)}]({figures[key]})")
        out.append("")


__all__ = [
    "CONSENSUS_NOTE",
    "SECTIONS",
    "figure_tag",
    "format_value",
    "md_escape",
    "md_table",
    "render_markdown",
]

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
_P_KEYS = {"p_value", "p_holm", "p_fdr_bh", "kendall_w_p", "Holm p"}


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


# --------------------------------------------------------------------------- the answer on top

#: terms used on the page, explained once (the glossary of both pages)
GLOSSARY: tuple[tuple[str, str], ...] = (
    (
        "reference level",
        "each attribute group's most common level (seen in the most clusters); every effect "
        "compares another level of the group with it.",
    ),
    (
        "average marginal effect",
        "how much the outcome changes on its own scale (e.g. AP) when a row has the level "
        "instead of the reference, the other attributes unchanged, averaged over rows.",
    ),
    (
        "Holm p",
        "p-value adjusted with Holm's step-down method over the attribute groups of one analysis "
        "on one outcome, so that the chance of any false finding stays below alpha.",
    ),
    (
        "BH (p_fdr_bh)",
        "Benjamini–Hochberg adjusted p-value: bounds the expected share of false findings among "
        "the findings (false discovery rate); less strict than Holm.",
    ),
    (
        "Kendall's W",
        "agreement of the methods' rankings of the attribute groups: 1 = every method ranks them "
        "the same, 0 = no agreement; its p-value tests W = 0.",
    ),
    (
        "CR2 / HTZ",
        "cluster-robust covariance with the small-sample correction of Bell & McCaffrey, and "
        "Pustejovsky & Tipton's degrees of freedom for its t and F tests: p-values that stay "
        "honest with few or very unequal clusters (identities).",
    ),
    (
        "rank-biserial r, epsilon²",
        "effect sizes of the rank tests: r in [-1, 1] for two levels (positive = the "
        "non-reference level has higher outcomes); epsilon² in [0, 1] for more levels.",
    ),
    (
        "permutation importance",
        "drop of a tree model's held-out R² (AUC for a 0/1 outcome) when a whole group's values "
        "are shuffled; it has no sign.",
    ),
    (
        "SHAP",
        "a tree model's attribution of each prediction to each group: mean |SHAP| (no sign) "
        "ranks the groups, the mean per level (signed) gives the direction.",
    ),
    (
        "blank p-value",
        "the test could not be run for that level or group (seen in too few clusters, aliased "
        "with another column, or constant); the warnings name each case, and a blank p-value is "
        "left out of its Holm/BH family.",
    ),
)

#: the note under a table that has a blank p-value
BLANK_P_NOTE = (
    "A blank p-value means the test could not be run there (a level seen in too few clusters, "
    "aliased or constant; see the warnings); it is left out of the Holm/BH adjustment."
)

_METHOD_NAMES = {
    "glm": "GLM",
    "tests": "rank tests",
    "rf": "random forest",
    "xgb": "XGBoost",
    "shap": "SHAP",
}


def sign_convention(outcomes: Sequence[str]) -> str:
    """The one sentence that fixes what a sign means on the page."""
    from studies.report import outcome_sense

    better = [o for o in outcomes if outcome_sense(o) > 0]
    worse = [o for o in outcomes if outcome_sense(o) < 0]
    text = (
        "Signs: a positive effect means the level has a higher outcome than its group's "
        "reference level."
    )
    if better:
        text += f" For {', '.join(better)} higher is better re-identification: positive = helps."
    if worse:
        text += f" For {', '.join(worse)} lower is better: positive = hurts."
    return text


def _agreement_word(w: float) -> str:
    return "strongly" if w >= 0.7 else "moderately" if w >= 0.4 else "weakly"


def _effect_text(rec: Mapping[str, Any], ci_pct: int | None) -> str:
    """``0.12 (95% CI 0.05 to 0.19)`` in a sentence, ``0.12 [0.05, 0.19]`` in a table
    (``ci_pct=None``)."""
    eff = rec.get("effect")
    if eff is None:
        return ""
    lo, hi = rec.get("effect_ci_low"), rec.get("effect_ci_high")
    if lo is None or hi is None:
        return format_value("effect", eff)
    lo_s, hi_s = format_value("effect", lo), format_value("effect", hi)
    if ci_pct is None:
        return f"{format_value('effect', eff)} [{lo_s}, {hi_s}]"
    return f"{format_value('effect', eff)} ({ci_pct}% CI {lo_s} to {hi_s})"


def answer_text(report: Mapping[str, Any], outcome: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The plain-words answer for one outcome: a paragraph (which groups matter, how much the
    methods agree) and one sentence per group that matters (direction, effect with CI, Holm p,
    how many methods find it). Unescaped text; each page escapes it."""
    from studies.report import outcome_sense

    name = outcome["outcome"]
    alpha = float(report.get("settings", {}).get("alpha", 0.05))
    ci_pct = int(round(100 * (1 - alpha)))
    recs = for_outcome(report.get("summary", []), name)
    tested = [r for r in recs if r.get("p_holm") is not None]
    found = [r for r in tested if r.get("matters")]
    src = "GLM joint Wald test" if any(r.get("p_source") == "glm" for r in tested) else "rank test"
    if found:
        lead = (
            f"{len(found)} of {len(recs)} attribute groups matter for {name} "
            f"(Holm-adjusted p < {alpha:g}, {src}): {', '.join(r['attribute'] for r in found)}."
        )
    elif tested:
        best = min(tested, key=lambda r: r["p_holm"])
        lead = (
            f"No attribute group matters for {name} at Holm-adjusted p < {alpha:g} ({src}); "
            f"the closest is {best['attribute']} (Holm p = {format_value('p_holm', best['p_holm'])})."
        )
    else:
        lead = f"No attribute group of {name} could be tested (see the warnings)."
    excluded = outcome.get("excluded_methods") or {}
    methods = [_METHOD_NAMES.get(m, m) for m in outcome.get("methods", []) if m not in excluded]
    w = outcome.get("kendall_w")
    if w is not None and len(methods) >= 2:
        lead += (
            f" The {len(methods)} methods ({', '.join(methods)}) agree {_agreement_word(w)} on "
            f"the order of the groups (Kendall's W = {format_value('w', w)}; 1 = the same "
            "ranking)."
        )
    else:
        lead += " Agreement between methods is not measured (fewer than two methods ranked)."
    if excluded:
        names = ", ".join(_METHOD_NAMES.get(m, m) for m in excluded)
        lead += (
            f" Left out of the consensus and of the counts below: {names} (their scores rank "
            "nothing; see the warnings)."
        )
    sense = outcome_sense(name)
    lines = []
    for r in found:
        parts = [f"{r['attribute']}:"]
        eff = r.get("effect")
        if eff is not None and r.get("level") is not None:
            verb = "raises" if eff > 0 else "lowers" if eff < 0 else "does not move"
            what = (
                "average marginal effect"
                if r.get("effect_name") == "average_marginal_effect"
                else "coefficient, link scale"
            )
            parts.append(
                f"{r['level']} instead of {r.get('reference')} (the reference) {verb} {name}: "
                f"{what} {_effect_text(r, ci_pct)}"
            )
            if sense and eff != 0:
                parts[-1] += ", " + (
                    "helps re-identification" if sense * eff > 0 else "hurts re-identification"
                )
            parts[-1] += ";"
        parts.append(f"Holm p = {format_value('p_holm', r['p_holm'])};")
        if r.get("methods_testing"):
            parts.append(
                f"found by {r['methods_finding']} of the {r['methods_testing']} methods that "
                "test it."
            )
        lines.append(" ".join(parts).rstrip(";") + ("" if parts[-1].endswith(".") else "."))
    return lead, lines


def summary_rows(report: Mapping[str, Any], outcome: str) -> list[dict[str, Any]]:
    """The answer as a compact table, every group in consensus order."""
    alpha = float(report.get("settings", {}).get("alpha", 0.05))
    ci_pct = int(round(100 * (1 - alpha)))
    rows = []
    for r in for_outcome(report.get("summary", []), outcome):
        direction = ""
        if r.get("level") is not None and r.get("direction"):
            direction = f"{r['level']} vs {r.get('reference')}: {r['direction']}"
        found = (
            f"{r['methods_finding']} of {r['methods_testing']}" if r.get("methods_testing") else ""
        )
        rows.append(
            {
                "attribute": r["attribute"],
                "rank": r.get("rank"),
                "matters": r.get("matters"),
                "direction (level vs reference)": direction,
                f"effect [{ci_pct}% CI]": _effect_text(r, None),
                "Holm p": r.get("p_holm"),
                "methods finding it": found,
            }
        )
    return rows


def has_blank_p(rows: Sequence[Mapping[str, Any]]) -> bool:
    """True when a row of a table with p-values has none (the page then explains why)."""
    keys = {k for r in rows for k in r if k in ("p_value", "Holm p")}
    return any(r.get(k) is None for r in rows for k in keys)


def render_markdown(report: Mapping[str, Any], *, figures: Mapping[str, str] | None = None) -> str:
    """The whole report.md; ``figures`` maps ``"<outcome>_<figure>"`` to a relative image path."""
    figures = dict(figures or {})
    inp = report["input"]
    settings = report["settings"]
    out: list[str] = ["# attrimp study report", ""]
    out.append(
        md_escape(
            "Which attribute groups move the outcome, in which direction and by how much; the "
            f"detail of every analysis follows. Report schema {report['schema_version']}."
        )
    )
    out.append("")
    out.append("## Answer")
    out.append("")
    for o in report.get("outcomes", []):
        lead, lines = answer_text(report, o)
        out.append(f"**{md_escape(o['outcome'])}.** {md_escape(lead)}")
        out.append("")
        for line in lines:
            out.append(f"- {md_escape(line)}")
        if lines:
            out.append("")
        rows = summary_rows(report, o["outcome"])
        out.append(md_table(rows))
        if has_blank_p(rows):
            out.append(md_escape(BLANK_P_NOTE))
            out.append("")
        _md_figure(out, figures, f"{figure_tag(o['outcome'])}_consensus", "Ranks by method")
    out.append(md_escape(sign_convention([o["outcome"] for o in report.get("outcomes", [])])))
    out.append("")
    out.append("## How to read this report")
    out.append("")
    for term, meaning in GLOSSARY:
        out.append(f"- **{md_escape(term)}**: {md_escape(meaning)}")
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
            if has_blank_p(rows):
                out.append(md_escape(BLANK_P_NOTE))
                out.append("")
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

"""The battery report's page (`attrimp study analyze`): its words and its Markdown.

The page is built once from the report.json dictionary (never from the raw results) as a
`studies.page.Page` — the answer in plain words first, then the glossary, the input, the
warnings and one section per outcome and analysis — and rendered here as report.md and in
`studies.report_html` as report.html, so the two say the same thing. Escaping, table layout and
number formatting live in `studies.page` (attribute and column names come from the user's table
and may contain ``|``, ``*``, ``_``, ``<`` or a newline; the renderers make them literal text).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from studies.format import CI, format_cell
from studies.page import (
    Box,
    Bullets,
    Definitions,
    Image,
    Link,
    Page,
    Section,
    Strong,
    Table,
    Text,
    format_value,
    is_p_key,
    md_escape,
    md_table,
    to_markdown,
)

#: outcomes where a higher value means better re-identification, and where it means worse; the
#: summary says "helps" / "hurts" only for these, "raises" / "lowers" the outcome for any other
HIGHER_IS_BETTER = frozenset({"ap", "map", "rank1", "rank5", "rank10", "minp", "inp"})
LOWER_IS_BETTER = frozenset({"first_hit"})

#: the note under the consensus table of both pages
CONSENSUS_NOTE = (
    "score: mean over methods of the rank-normalised score (1 = every method's top group). "
    "rank by <method>: each method's own rank. rank 95% CI / rank stability: 95% "
    "interval and share of cluster-bootstrap replicates keeping the rank, for the consensus of "
    "the cheap scores re-computed per replicate (linear-model Wald chi-squared and identity-level "
    "eta-squared; the tree models are not refitted), so the interval need not contain the rank."
)


def __getattr__(name: str) -> Any:
    """``SECTIONS``: the per-outcome sections of both pages, (table key, title, one-line
    explanation), as the analyses declare them (`studies.analysis.report_sections`), read when
    asked so a plug-in analysis registered after import has its section."""
    if name == "SECTIONS":
        from studies.analysis import report_sections

        return report_sections()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def outcome_sense(outcome: str) -> int:
    """+1 when a higher outcome is better re-identification, -1 when lower is, 0 when unknown."""
    key = outcome.strip().lower().replace("-", "").replace(" ", "")
    if key in HIGHER_IS_BETTER:
        return 1
    if key in LOWER_IS_BETTER:
        return -1
    return 0


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

#: the note under the answer table: which of its quantities are adjusted for the many groups
ADJUSTED_NOTE = (
    "matters follows the group's Holm p, adjusted over all the groups; the effect and its CI are "
    "the headline level's alone and not adjusted, so a CI that excludes 0 can sit beside "
    "matters = no."
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
        return format_cell("effect", eff)
    lo_s, hi_s = format_cell("effect", lo), format_cell("effect", hi)
    if ci_pct is None:
        return f"{format_cell('effect', eff)} [{lo_s}, {hi_s}]"
    return f"{format_cell('effect', eff)} ({ci_pct}% CI {lo_s} to {hi_s})"


def answer_text(report: Mapping[str, Any], outcome: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The plain-words answer for one outcome: a paragraph (which groups matter, how much the
    methods agree) and one sentence per group that matters (direction, effect with CI, Holm p,
    how many methods find it). Unescaped text; each page escapes it."""
    name = outcome["outcome"]
    alpha = float(report.get("settings", {}).get("alpha", 0.05))
    recs = for_outcome(report.get("summary", []), name)
    tested = [r for r in recs if r.get("p_holm") is not None]
    found = [r for r in tested if r.get("matters")]
    lead = _finding_text(name, recs, tested, found, alpha) + _verdict_counts(recs)
    lead += _agreement_text(outcome)
    ci_pct = int(round(100 * (1 - alpha)))
    return lead, [_group_sentence(r, name, ci_pct) for r in found]


def _finding_text(
    name: str,
    recs: Sequence[Mapping[str, Any]],
    tested: Sequence[Mapping[str, Any]],
    found: Sequence[Mapping[str, Any]],
    alpha: float,
) -> str:
    """Which groups matter (or the closest one, or that none could be tested)."""
    src = "GLM joint Wald test" if any(r.get("p_source") == "glm" for r in tested) else "rank test"
    if found:
        return (
            f"{len(found)} of {len(recs)} attribute groups matter for {name} "
            f"(Holm-adjusted p < {alpha:g}, {src}): {', '.join(r['attribute'] for r in found)}."
        )
    if tested:
        best = min(tested, key=lambda r: r["p_holm"])
        return (
            f"No attribute group matters for {name} at Holm-adjusted p < {alpha:g} ({src}); "
            f"the closest is {best['attribute']} (Holm p = {format_cell('p_holm', best['p_holm'])})."
        )
    return f"No attribute group of {name} could be tested (see the warnings)."


def _verdict_counts(recs: Sequence[Mapping[str, Any]]) -> str:
    """The verdicts in one sentence: what matters, what is shown negligible, what this table
    cannot tell (with the smallest effect it could have detected) and what cannot be tested."""
    by: dict[str, list[Mapping[str, Any]]] = {}
    for r in recs:
        by.setdefault(r.get("verdict") or "", []).append(r)
    parts = []
    if by.get("negligible"):
        parts.append(
            f"shown negligible (equivalence test): {', '.join(r['attribute'] for r in by['negligible'])}"
        )
    unclear = by.get("inconclusive") or []
    if unclear:
        mdes = [r["mde"] for r in unclear if r.get("mde") is not None]
        reach = f"; it could detect effects from {format_cell('mde', min(mdes))}" if mdes else ""
        parts.append(
            f"inconclusive, neither shown to matter nor negligible{reach}: "
            + ", ".join(r["attribute"] for r in unclear)
        )
    if by.get("not testable"):
        parts.append("not testable: " + ", ".join(r["attribute"] for r in by["not testable"]))
    return (" Verdicts: " + "; ".join(parts) + ".") if parts else ""


def _agreement_text(outcome: Mapping[str, Any]) -> str:
    """How much the methods agree (Kendall's W), and which were left out of the consensus."""
    excluded = outcome.get("excluded_methods") or {}
    methods = [_METHOD_NAMES.get(m, m) for m in outcome.get("methods", []) if m not in excluded]
    w = outcome.get("kendall_w")
    if w is not None and len(methods) >= 2:
        text = (
            f" The {len(methods)} methods ({', '.join(methods)}) agree {_agreement_word(w)} on "
            f"the order of the groups (Kendall's W = {format_cell('kendall_w', w)}; 1 = the same "
            "ranking)."
        )
    else:
        text = " Agreement between methods is not measured (fewer than two methods ranked)."
    if excluded:
        names = ", ".join(_METHOD_NAMES.get(m, m) for m in excluded)
        text += (
            f" Left out of the consensus and of the counts below: {names} (their scores rank "
            "nothing; see the warnings)."
        )
    return text


def _group_sentence(r: Mapping[str, Any], name: str, ci_pct: int) -> str:
    """One group that matters: its headline level's direction and effect with CI, whether that
    helps or hurts re-identification, its Holm p and how many methods find it."""
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
        sense = outcome_sense(name)
        if sense and eff != 0:
            parts[-1] += ", " + (
                "helps re-identification" if sense * eff > 0 else "hurts re-identification"
            )
        parts[-1] += ";"
    parts.append(f"Holm p = {format_cell('p_holm', r['p_holm'])};")
    if r.get("methods_testing"):
        parts.append(
            f"found by {r['methods_finding']} of the {r['methods_testing']} methods that test it."
        )
    return " ".join(parts).rstrip(";") + ("" if parts[-1].endswith(".") else ".")


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
                "verdict": r.get("verdict"),
                "matters": r.get("matters"),
                "direction (level vs reference)": direction,
                "effect": r.get("effect"),
                f"effect {ci_pct}% CI (unadjusted)": CI(
                    r.get("effect_ci_low"), r.get("effect_ci_high")
                ),
                "Holm p": r.get("p_holm"),
                "min. detectable effect": r.get("mde"),
                "TOST p (equivalence)": r.get("p_tost"),
                "methods finding it": found,
            }
        )
    return rows


def has_blank_p(rows: Sequence[Mapping[str, Any]]) -> bool:
    """True when a row of a table with p-values has none (the page then explains why)."""
    keys = {k for r in rows for k in r if k in ("p_value", "Holm p")}
    return any(r.get(k) is None for r in rows for k in keys)


# --------------------------------------------------------------------------- the page

INTRO = (
    "Which attribute groups move the outcome, in which direction and by how much; the detail "
    "of every analysis follows."
)

#: the figure drawn beside an analysis's table (key suffix of ``"<outcome>_<figure>"``)
SECTION_FIGURES = {
    "glm_coefficients": "glm_forest",
    "permutation_importance": "importance",
    "shap": "shap",
    "prevalence": "prevalence",
}


#: the input path `attrimp.study.analyses` gives a battery of the study ("study table 'name'")
_STUDY_TABLE = re.compile(r"^study table '(?P<name>.+)'$")

#: where a battery of the study finds its study's report (it lives in analyses/<name>/)
STUDY_HOME = Link("back to the study report", markdown="../../report.md", html="../../report.html")


def page_identity(
    report: Mapping[str, Any], title: str | None = None, home: Link | None = None
) -> tuple[str, Link | None]:
    """The page's own title and its link home: given ones win; a battery the study ran (input
    "study table '<name>'") is "Study battery: <name>" and links back to the study report two
    folders up; any other table is "attrimp study analyze: <file name>", with no home."""
    path = str((report.get("input") or {}).get("path") or "")
    m = _STUDY_TABLE.match(path)
    if m:
        return title or f"Study battery: {m['name']}", home or STUDY_HOME
    name = re.split(r"[\\/]", path)[-1] if path else "result table"
    return title or f"attrimp study analyze: {name}", home


def battery_page(
    report: Mapping[str, Any], *, title: str | None = None, home: Link | None = None
) -> Page:
    """The whole page, in reading order: answer, glossary, input, groups, warnings, then each
    outcome's consensus and analyses; figures are referred to by ``"<outcome>_<figure>"``.
    ``title`` / ``home``: see :func:`page_identity`."""
    sections = [
        _answer_section(report),
        Section("How to read this report", [Definitions(GLOSSARY)]),
        Section("Input", [Definitions(_input_definitions(report))]),
        Section("Attribute groups", [Table(_group_rows(report))]),
        _warnings_section(report.get("warnings", [])),
    ]
    for o in report.get("outcomes", []):
        sections += _outcome_sections(report, o)
    title, home = page_identity(report, title, home)
    return Page(
        title=title,
        intro=[Text(INTRO), Text(f"Report schema {report['schema_version']}.", note=True)],
        sections=sections,
        highlight_alpha=float(report.get("settings", {}).get("alpha", 0.05)),
        home=home,
    )


def _blank_p_note(rows: Sequence[Mapping[str, Any]]) -> list[Text]:
    return [Text(BLANK_P_NOTE, note=True)] if has_blank_p(rows) else []


def _answer_section(report: Mapping[str, Any]) -> Section:
    """Per outcome: the answer in words, its table, the heat map; then the sign convention."""
    blocks: list[Any] = []
    outcomes = report.get("outcomes", [])
    for o in outcomes:
        name = o["outcome"]
        lead, lines = answer_text(report, o)
        rows = summary_rows(report, name)
        blocks += [
            Box([Text([Strong(f"{name}."), " " + lead]), Bullets(lines)]),
            Table(rows, stack=True),
            Text(ADJUSTED_NOTE, note=True),
            *_blank_p_note(rows),
            Image(f"{figure_tag(name)}_consensus", f"Ranks by method for {name}"),
        ]
    blocks.append(Text(sign_convention([o["outcome"] for o in outcomes])))
    return Section("Answer", blocks)


def _input_definitions(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    inp = report["input"]
    items = [(k, format_cell(k, v)) for k, v in input_facts(inp)]
    items += [
        ("rows dropped", f"{int(n)} ({reason})")
        for reason, n in (inp.get("rows_dropped") or {}).items()
    ]
    settings = ", ".join(
        f"{k}={format_value(k, v)}" for k, v in report["settings"].items() if v is not None
    )
    return [*items, ("settings", settings)]


def _group_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    lv = report.get("attribute_levels", {})
    return [
        {
            "attribute": g,
            "columns": ", ".join(cols),
            "reference": lv.get(g, {}).get("reference"),
            "levels": ", ".join(lv.get(g, {}).get("levels", [])),
        }
        for g, cols in report["attributes"].items()
    ]


def _warnings_section(warns: Sequence[Mapping[str, Any]]) -> Section:
    items = [
        [
            Strong(str(w["source"])),
            f" ({w['outcome']}): " if w.get("outcome") else ": ",
            str(w["message"]),
        ]
        for w in warns
    ]
    body = [Box([Bullets(items)], kind="warn")] if items else [Text("None.")]
    return Section(f"Warnings ({len(warns)})", body, anchor="warnings")


def _outcome_sections(report: Mapping[str, Any], outcome: Mapping[str, Any]) -> list[Section]:
    """An outcome's heading, its consensus ranking and one section per analysis with rows."""
    name = outcome["outcome"]
    facts = []
    if outcome.get("family"):
        facts.append(f"GLM family: {format_cell('family', outcome['family'])}.")
    if outcome.get("kendall_w") is not None:
        facts.append(
            f"Kendall's W across {len(outcome.get('methods', []))} methods = "
            f"{format_cell('kendall_w', outcome['kendall_w'])} "
            f"(p = {format_cell('kendall_w_p', outcome.get('kendall_w_p'))})."
        )
    sections = [
        Section(f"Outcome {name}", [Text(" ".join(facts))] if facts else []),
        Section(
            "Consensus ranking (most important first)",
            [Text(CONSENSUS_NOTE, note=True), Table(method_rank_rows(report, name))],
            level=3,
        ),
    ]
    order = {
        r["attribute"]: i for i, r in enumerate(for_outcome(report.get("consensus", []), name))
    }
    from studies.analysis import report_sections

    for key, title, why in report_sections():
        rows = by_ranking(for_outcome(report["analyses"].get(key, []), name), order)
        if rows:
            sections.append(_analysis_section(name, key, title, why, rows))
    return sections


def by_ranking(
    rows: Sequence[Mapping[str, Any]], order: Mapping[str, int]
) -> list[Mapping[str, Any]]:
    """Rows in the consensus order of their ``attribute`` (most important first; a table's own
    order kept within a group and for rows without a ranked attribute, which come last)."""
    if not order or not any("attribute" in r for r in rows):
        return list(rows)
    last = len(order)
    return sorted(rows, key=lambda r: order.get(r.get("attribute"), last))


def _analysis_section(
    outcome: str, key: str, title: str, why: str, rows: Sequence[Mapping[str, Any]]
) -> Section:
    drop = ("outcome", "family") if key == "glm_coefficients" else ("outcome",)
    blocks: list[Any] = [Text(why, note=True)]
    if key in SECTION_FIGURES:
        blocks.append(
            Image(f"{figure_tag(outcome)}_{SECTION_FIGURES[key]}", f"{title} for {outcome}")
        )
    blocks += [Table(rows, display_columns(rows, drop)), *_blank_p_note(rows)]
    return Section(title, blocks, level=3)


def render_markdown(
    report: Mapping[str, Any],
    *,
    figures: Mapping[str, str] | None = None,
    title: str | None = None,
    home: Link | None = None,
) -> str:
    """The whole report.md; ``figures`` maps ``"<outcome>_<figure>"`` to a relative image path;
    ``title`` / ``home``: see :func:`page_identity`."""
    return to_markdown(battery_page(report, title=title, home=home), figures)


def figure_tag(outcome: str) -> str:
    """An outcome name made safe for a file name (figures are saved as <tag>_<figure>.png)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", outcome).strip("_") or "outcome"


__all__ = [
    "BLANK_P_NOTE",
    "CONSENSUS_NOTE",
    "GLOSSARY",
    "answer_text",
    "battery_page",
    "figure_tag",
    "format_value",
    "is_p_key",
    "md_escape",
    "md_table",
    "outcome_sense",
    "render_markdown",
    "sign_convention",
    "summary_rows",
]

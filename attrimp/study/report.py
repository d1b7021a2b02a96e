"""The study report of `attrimp study run`: report.json (versioned, see docs/study.md),
report.md, a self-contained report.html and its figures; the batteries' own full reports sit
under ``analyses/<name>/``.

What is study-specific lives here: which sections a study has, the answer sentence built from
the designs (leave-one-out, the paired tests, the reliance batteries), the priors figures. How a
page is rendered (tables, escaping, embedded figures, the page frame) is `studies.page`, and the
figures are `studies.plots` — the same stack the battery report of `attrimp study analyze` uses.

report.json is built first and both pages are rendered from it alone, so they cannot disagree.
The pages open with the answer in plain words (which groups the model relies on, which way, by
how much with a CI, the Holm p-value, how much the analyses agree), then a glossary, then the
detail. One sign convention holds everywhere: a positive ΔmAP / ΔAP is what the model loses when
a group's experts are switched off, i.e. positive = the attribute helps re-identification.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from attrimp.config import StudyConfig
from attrimp.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from attrimp.study.analyses import StudyAnalyses
from attrimp.study.answer import (  # _on_direction, answer_paragraphs: re-exported
    _battery_signals,
    answer_rows,
    answer_text,
    build_answer,
    leak_block,
    planted_check,
    planted_sentence,
)
from attrimp.study.answer import (
    _on_direction as _on_direction,
)
from attrimp.study.answer import (
    answer_paragraphs as answer_paragraphs,
)
from attrimp.study.figures import analysis_names, consensus_matrices, study_figures
from studies.page import (
    Box,
    Bullets,
    Definitions,
    Image,
    Link,
    Links,
    Page,
    Section,
    Table,
    Text,
    to_html,
    to_html_single,
    to_markdown,
)
from studies.report import clean_value, records

#: /2 added ``answer`` (the plain-words answer as data) and ``battery_warnings``.
#: /3: the consensus ranks on unsigned evidence (−log10 p) and leaves untestable groups unranked
#: (``consensus`` rows gain verdict, direction, mde, p_tost, testable, reason; rank null when not
#: testable); ``answer`` gains ``margin``, ``analyses``, ``ranking``, ``leak`` (the attribute-only
#: baseline against the oracle's gain, stated first) and per group ``verdict``, ``direction``,
#: ``mde``, ``p_tost``, ``margin``, ``testable``, ``reason``, ``p_value``, ``p_holm`` (now the
#: clustered t test's), ``p_holm_wilcoxon``, ``p_switching_identity``,
#: ``p_switching_randomization(_holm)``, ``shapley`` with CI, ``disagree``, ``explanation``
#: (``effect`` is gone: the verdict replaces it); new blocks ``verdicts`` and ``shapley``.
SCHEMA_VERSION = "attrimp.study.run-report/3"


def _design_order() -> dict[str, int]:
    """Design name -> its place in the report: the design registry's order (`Design.order`), so a
    plug-in design sorts where it says instead of needing a name list here."""
    from attrimp.evaluate.designs import ordered

    return {d.name: i for i, d in enumerate(ordered())}


def _design_labels(names) -> str:
    """The report's words for the designs ``names`` (each `Design.label`), in report order."""
    from attrimp.evaluate.designs import DESIGNS

    order = _design_order()
    known = sorted({n for n in names if n in DESIGNS}, key=lambda n: order.get(n, len(order)))
    labels = [DESIGNS[n].label for n in known]
    if len(labels) < 2:
        return "".join(labels)
    return ", ".join(labels[:-1]) + " and " + labels[-1]


#: the reliance analyses of the study consensus, as the pages name them
ANALYSIS_NAMES = {
    "leave_one_out": "leave-one-group-out (paired)",
    "switching": "per-query switching battery",
    "configurations": "configuration-level battery",
}

#: what each battery under analyses/ asks (attrimp.study.analyses)
BATTERY_ABOUT = {
    "switching": "per query × configuration, AP on the group-on indicators, clustered by "
    "identity: which experts the model relies on, query by query",
    "configurations": "one row per configuration, mAP and rank-1 on the group-on indicators: "
    "the same question at the level the paper reports",
    "attributes": "per query under the full oracle, AP on the query's attribute values: which "
    "values make a query hard (difficulty, not reliance; not in the consensus)",
}

#: terms used on the pages, explained once
GLOSSARY: tuple[tuple[str, str], ...] = (
    (
        "mAP",
        "mean average precision over the queries, as a fraction from 0 to 1 (every command "
        "reports it this way); AP is one query's average precision.",
    ),
    ("rank-1 / rank-5 / rank-10", "share of queries with a correct match in the top 1 / 5 / 10."),
    (
        "mINP",
        "mean inverse negative penalty (Ye et al. 2021): per query, the number of correct "
        "gallery matches divided by the position of the hardest one, averaged; 1 = every "
        "correct match comes before every wrong one.",
    ),
    (
        "ΔmAP / ΔAP",
        "mAP (or a query's AP) with every expert on minus without the group's experts: what "
        "the model loses when the group is switched off. Positive = the attribute helps.",
    ),
    (
        "share_hurt",
        "share of queries whose AP drops when the group's experts are switched off (ΔAP > 0).",
    ),
    (
        "oracle router",
        "switches each query's experts from its annotated attributes; the learned router "
        "predicts them from the image instead. Its accuracy is shown per group beside the "
        "majority-class rate (the accuracy of always guessing the commonest value); balanced "
        "accuracy = the mean recall over a group's values.",
    ),
    (
        "Holm p",
        "p-value adjusted with Holm's step-down method over the 12 or so groups of one test, so "
        "that the chance of any false finding stays below alpha.",
    ),
    (
        "BH (p_fdr_bh)",
        "Benjamini–Hochberg adjusted p-value: bounds the expected share of false findings among "
        "the findings (false discovery rate); less strict than Holm.",
    ),
    (
        "Kendall's W",
        "agreement of the analyses' rankings of the groups: 1 = they rank them the same, "
        "0 = no agreement.",
    ),
    (
        "consensus score",
        "mean over the analyses of the rank-normalised score (1 = every analysis's top group, "
        "0 = every analysis's last).",
    ),
    (
        "blank p-value",
        "no test was possible: every paired difference is 0 (switching the group off changed "
        "no query, e.g. no test identity has the attribute); such groups are left out of the "
        "Holm/BH adjustment.",
    ),
)

SIGN_NOTE = (
    "Signs: ΔmAP and the paired tests' mean difference are full minus without the group, so "
    "positive = the attribute helps re-identification, negative = its experts hurt it."
)

_ON = {"1", "1.0", "true", "yes", "on"}


# --------------------------------------------------------------------------- figures
# The figures are attrimp.study.figures (study_figures); the names below keep older imports.

_figures = study_figures
_consensus_matrices = consensus_matrices
_analysis_names = analysis_names


# --------------------------------------------------------------------------- the answer


# --------------------------------------------------------------------------- report.json


def write_study_report(out: Path, report: Mapping[str, Any]) -> None:
    """report.json (`build_study_report`), then figures/*.png, report.md and report.html drawn
    from it alone (and from ``tables/priors.csv`` when the data stage wrote it)."""
    atomic_write_json(out / "report.json", report, allow_nan=False)
    priors_csv = out / "tables" / "priors.csv"
    from studies.plots import figure_suffix  # matplotlib only where figures are drawn

    figs = study_figures(report, pd.read_csv(priors_csv) if priors_csv.exists() else None)
    for name, data in figs.items():
        atomic_write_bytes(out / "figures" / f"{name}{figure_suffix(data)}", data)
    atomic_write_text(out / "report.md", render_markdown(report, figs))
    atomic_write_text(out / "report.html", render_html(report, figs))


def build_study_report(
    *,
    cfg: StudyConfig,
    data,
    configs: pd.DataFrame,
    importance: pd.DataFrame,
    analyses: StudyAnalyses,
    baseline: dict[str, Any] | None,
    importance_retrained: pd.DataFrame | None = None,
    learned: dict[str, Any] | None,
    planted: dict[str, Any] | None,
    model_info: dict[str, Any],
) -> dict[str, Any]:
    """The report.json dictionary (docs/study.md), JSON-safe (NaN -> null); the run adds its
    ``timings`` last."""
    headline = _headline(configs, baseline) | _learned_headline(learned)
    attribute_only = _attribute_only(baseline)
    answer = build_answer(
        importance,
        analyses.paired,
        analyses.consensus,
        analyses.kendall_w,
        _battery_signals(analyses),
        alpha=cfg.analysis.alpha,
        verdicts=analyses.verdicts,
        switching=analyses.switching_tests,
        shapley=analyses.shapley,
        margin=cfg.analysis.margin,
        leak=leak_block(headline, attribute_only),
    )
    report = {
        "schema_version": SCHEMA_VERSION,
        "study": {
            "name": cfg.name,
            "description": cfg.description,
            "fingerprint": cfg.fingerprint(),
        },
        "data": _data_block(cfg, data),
        "model": model_info,
        "planted_design": planted,
        "headline": headline,
        "answer": answer,
        "configurations": records(configs),
        "leave_one_out": records(importance),
        "leave_one_out_retrained": records(importance_retrained),
        "paired_tests": records(analyses.paired),
        "verdicts": records(analyses.verdicts),
        "shapley": records(analyses.shapley),
        "consensus": records(_consensus_columns(analyses.consensus)),
        "kendall_w": analyses.kendall_w,
        "learned_router": learned,
        "attribute_only": attribute_only,
        "analyses": {name: f"analyses/{name}/report.json" for name in analyses.batteries},
        "battery_warnings": {name: len(b.warnings) for name, b in analyses.batteries.items()},
        "warnings": analyses.warnings + list(data.report.warnings),
    }
    return clean_value(report)


def _data_block(cfg: StudyConfig, data) -> dict[str, Any]:
    return {
        "dataset": cfg.data.dataset,
        "schema": data.schema.name,
        "groups": data.schema.group_names,
        "n_experts": data.schema.n_experts,
        "train_images": len(data.train),
        "query_images": len(data.query),
        "gallery_images": len(data.gallery),
        "train_identities": data.num_train_pids,
        "report": {"counts": data.report.counts, "warnings": data.report.warnings},
    }


def _headline(configs: pd.DataFrame, baseline: Mapping[str, Any] | None) -> dict[str, Any]:
    """mAP of the full oracle, the backbone alone, the learned router and the attribute-only
    baseline, and the learned router's gap to the oracle."""

    def map_of(config: str) -> float | None:
        row = configs.loc[configs["config"] == config]
        return float(row["mAP"].iloc[0]) if len(row) else None

    headline = {
        "full_mAP": map_of("full"),
        "backbone_mAP": map_of("backbone"),
        "learned_mAP": map_of("learned"),
        "attribute_only_mAP": baseline.get("mAP") if baseline else None,
    }
    if headline["full_mAP"] is not None and headline["learned_mAP"] is not None:
        headline["learned_vs_oracle_gap"] = headline["full_mAP"] - headline["learned_mAP"]
    return headline


def _learned_headline(learned: Mapping[str, Any] | None) -> dict[str, Any]:
    """The learned router's share of the oracle's gain (with its identity-bootstrap CI) and its
    reading in one sentence, for the headline; empty without a learned router."""
    reading = (learned or {}).get("reading") or {}
    share = reading.get("share_of_gain") or {}
    if not share:
        return {}
    keys = ("estimate", "ci_low", "ci_high", "level")
    return {
        "learned_share_of_gain": {k: share.get(k) for k in keys},
        "learned_summary": reading.get("summary"),
    }


def _attribute_only(baseline: Mapping[str, Any] | None) -> dict[str, Any]:
    """The attribute-only baseline's metrics, its signature table and the share of identities
    whose signature no other identity shares."""
    signatures = baseline.get("signatures") if baseline else None
    unique_share = None
    if signatures is not None and len(signatures):
        alone = signatures["identities_sharing_signature"] == 1
        unique_share = float(
            signatures.loc[alone, "identities"].sum() / signatures["identities"].sum()
        )
    return {
        **({k: v for k, v in baseline.items() if k != "signatures"} if baseline else {}),
        "signatures": records(signatures),
        "unique_signature_share": unique_share,
    }


def _consensus_columns(consensus: pd.DataFrame | None) -> pd.DataFrame | None:
    """The study consensus as report.json keeps it: attribute, score, rank, each analysis's
    own rank, and the leave-one-out verdict, direction, MDE, TOST p, testable and reason beside
    the rank (the bootstrap rank interval stays in analyses/consensus.csv)."""
    if consensus is None:
        return None
    own = [
        c
        for c in consensus.columns
        if c.startswith("rank_") and c not in ("rank_ci_low", "rank_ci_high", "rank_stability")
    ]
    beside = [
        c
        for c in ("verdict", "direction", "mde", "p_tost", "testable", "reason")
        if c in consensus.columns
    ]
    return consensus[["attribute", "score", "rank", *own, *beside]]


# --------------------------------------------------------------------------- pages


def study_page(report: Mapping[str, Any], figures: Collection[str] = ()) -> Page:
    """The whole page in reading order: the answer, the glossary, one section per part of the
    study, the priors, links to each battery's own report, the warnings. ``figures`` names the
    figures drawn (the priors section shows the ``priors_<split>`` ones)."""
    study = report["study"]
    priors = [f for f in figures if f.startswith("priors_")]
    sections = [
        _answer_section(report),
        Section("How to read this report", [Definitions(GLOSSARY)]),
        *_sections(report),
        *([_priors_section(priors)] if priors else []),
        _batteries_section(report),
        _warnings_section(report.get("warnings") or [], report.get("battery_warnings") or {}),
    ]
    intro = [Text(study["description"])] if study.get("description") else []
    setup = setup_sentence(report)
    return Page(
        title=f"attrimp study: {study['name']}",
        intro=intro + ([Text(setup)] if setup else []),
        sections=sections,
    )


def setup_sentence(report: Mapping[str, Any]) -> str | None:
    """What was studied, in one line: the dataset, the backbone, the expert bank and the router
    the model was trained with (plug-ins by their registered names), and that the test-time
    conditions route from the annotations (the oracle) unless a condition says otherwise."""
    data, model = report.get("data") or {}, report.get("model") or {}
    if not data and not model:
        return None
    return (
        f"Setup: dataset {data.get('dataset', '?')} (schema {data.get('schema', '?')}), "
        f"backbone {model.get('backbone', '?')}, expert bank {model.get('bank', '?')} "
        f"({model.get('n_experts', '?')} experts), trained with the {model.get('router', '?')} "
        "router; the test-time conditions route from the annotations (the oracle) unless a "
        "condition names another router (learned, noisy, partial oracle)."
    )


def render_markdown(
    report: Mapping[str, Any], figures: Collection[str] | Mapping[str, bytes] = ()
) -> str:
    """report.md from report.json; ``figures`` names the figures under figures/ or maps each
    name to its bytes (then an SVG is linked as ``.svg``; names alone are taken as PNGs)."""
    if isinstance(figures, Mapping):
        paths = {name: _figure_file(name, data) for name, data in figures.items()}
    else:
        paths = {name: f"figures/{name}.png" for name in figures}
    return to_markdown(study_page(report, list(paths)), paths)


def render_html(report: Mapping[str, Any], figs: Mapping[str, bytes], *, links: bool = True) -> str:
    """report.html from report.json and the figures' bytes (embedded, nothing to fetch); with
    ``links`` each figure also opens its full-size file under figures/ (written beside the
    page by `write_study_report`)."""
    full = {name: _figure_file(name, data) for name, data in figs.items()} if links else {}
    return to_html(study_page(report, figs), figs, figure_links=full)


def _figure_file(name: str, data: bytes) -> str:
    """Where a figure's file sits beside the page: ``figures/<name>.svg`` for SVG bytes, else
    ``.png``."""
    svg = data[:256].lstrip().startswith((b"<?xml", b"<svg"))
    return f"figures/{name}.svg" if svg else f"figures/{name}.png"


#: the single-file export's name, beside report.html
SINGLE_FILE = "report-single.html"


def write_single_file(out: Path) -> Path:
    """``report-single.html``: the study page and every battery's own page in one HTML file,
    for sharing — figures embedded, the links to ``analyses/<name>/report.html`` (and to their
    warnings) turned into links within the file, nothing relative left to break. Built from
    the report.json files and figures already written, so it can be made after any run."""
    from studies.report import read_figures
    from studies.report_md import battery_page

    out = Path(out)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    parts, hrefs = [], {}
    for name in report.get("analyses") or {}:
        folder = out / "analyses" / name
        if not (folder / "report.json").exists():
            continue
        sub = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        anchor = f"battery-{name}"
        hrefs[f"analyses/{name}/report.html"] = f"#{anchor}"
        hrefs[f"analyses/{name}/report.html#warnings"] = f"#{anchor}-warnings"
        parts.append((anchor, battery_page(sub), read_figures(folder / "figures")))
    figs = read_figures(out / "figures")
    html = to_html_single((study_page(report, figs), figs), parts, hrefs=hrefs)
    path = out / SINGLE_FILE
    atomic_write_text(path, html)
    return path


def _answer_section(report: Mapping[str, Any]) -> Section:
    _, lines = answer_text(report)
    check = planted_check(report)
    paragraphs = [Text(p) for p in answer_paragraphs(report)]
    return Section(
        "Answer",
        [
            Box([*paragraphs, Bullets(lines), *([Text(check)] if check else [])]),
            Table(answer_rows(report), stack=True),
            Text(SIGN_NOTE, note=True),
            Image("consensus", "consensus heat map"),
        ],
    )


def _priors_section(priors: list[str]) -> Section:
    """The prior-bar figures, one per split (``priors_<split>``)."""
    images = [Image(f, f"attribute priors, {f.removeprefix('priors_')} split") for f in priors]
    return Section("Attribute priors", images)


#: what the links to the batteries' pages say about where those pages are
BATTERIES_WHERE = (
    "These pages are files in the analyses/ folder beside this report: copy that folder with "
    "report.html, or share report-single.html (attrimp study run --single-file), which holds "
    "them all."
)


def _batteries_section(report: Mapping[str, Any]) -> Section:
    """Links to each battery's own full report (its HTML and Markdown) with its warnings."""
    counts = report.get("battery_warnings") or {}
    links = [
        Link(
            name,
            markdown=f"analyses/{name}/report.md",
            html=f"analyses/{name}/report.html",
            text=f"{BATTERY_ABOUT.get(name, '')}; {counts.get(name, 0)} warning(s) of its own.",
        )
        for name in (report.get("analyses") or {})
    ]
    return Section("Detailed batteries", [Links(links, where=BATTERIES_WHERE)])


def _warnings_section(warns: list[str], battery_counts: Mapping[str, int]) -> Section:
    """The study's own warnings, then a count of and a link to each battery's warnings (they
    are listed on the battery's page): the heading counts both."""
    body: list[Any] = [Box([Bullets(warns)], kind="warn")] if warns else []
    theirs = {k: int(v) for k, v in battery_counts.items() if v}
    if theirs:
        body.append(
            Links(
                [
                    Link(
                        f"{name}: {n} warning{'s' if n != 1 else ''}",
                        markdown=f"analyses/{name}/report.md",
                        html=f"analyses/{name}/report.html#warnings",
                        text="listed on the battery's own page",
                    )
                    for name, n in theirs.items()
                ],
                where="The detailed batteries carry warnings of their own:",
            )
        )
    total = sum(theirs.values())
    title = f"Warnings ({len(warns)})"
    if theirs:
        title = f"Warnings ({len(warns)} here, {total} in the batteries)"
    return Section(title, body or [Text("None.")], anchor="warnings")


def _section(
    title: str,
    intro: str,
    table: Any = None,
    figure: str | None = None,
    *,
    order: Mapping[str, int] | None = None,
) -> Section:
    """A study section: its intro, its figure (when drawn), its table (numbers by kind, see
    `studies.format`; rows in the consensus ``order`` of their attribute when given)."""
    blocks: list[Any] = [Text(intro)]
    if figure:
        blocks.append(Image(figure, title))
    if table is not None:
        if order and isinstance(table, pd.DataFrame) and "attribute" in table.columns:
            key = table["attribute"].map(lambda a: order.get(a, len(order)))
            table = table.assign(_k=key).sort_values("_k", kind="stable").drop(columns="_k")
        blocks.append(Table(table))
    return Section(title, blocks)


def _consensus_order(report: Mapping[str, Any]) -> dict[str, int]:
    """Each attribute's place in the study consensus (most important first)."""
    return {r["attribute"]: i for i, r in enumerate(report.get("consensus") or [])}


def _sections(report: Mapping[str, Any]) -> list[Section]:
    """The sections after the answer, those with something to show, in reading order."""
    builders = (
        _planted_section,
        _leave_one_out_section,
        _paired_section,
        _consensus_section,
        _accuracy_section,
        _counterfactual_section,
        _retrained_section,
        _attribute_only_section,
        _learned_router_section,
    )
    return [s for s in (build(report) for build in builders) if s is not None]


def _planted_section(report: Mapping[str, Any]) -> Section | None:
    planted = planted_sentence(report.get("planted_design"))
    return _section("Planted design", planted) if planted else None


def _leave_one_out_section(report: Mapping[str, Any]) -> Section:
    return _section(
        "Leave-one-group-out",
        "ΔmAP: mAP lost when one group's experts are switched off (full minus without; "
        "positive = the attribute helps), with a 95% CI from resampling identities; "
        "share_hurt: share of queries losing AP without the group.",
        pd.DataFrame(report.get("leave_one_out") or []),
        "leave_one_out",
        order=_consensus_order(report),
    )


def _paired_section(report: Mapping[str, Any]) -> Section | None:
    paired = pd.DataFrame(report.get("paired_tests") or [])
    if not len(paired):
        return None
    wanted = ["attribute", "test", "mean_difference", "p_value", "p_holm", "p_fdr_bh", "n"]
    blank = paired["p_value"].isna().any() if "p_value" in paired.columns else False
    return _section(
        "Paired tests (full vs without the group, clustered by identity)",
        "Per-identity mean differences of AP, full minus without the group (the sign of "
        "ΔmAP: positive = helps); Wilcoxon signed-rank and paired t, Holm and "
        "Benjamini–Hochberg adjusted over the groups."
        + (
            " A blank p-value: every difference is 0 (switching the group off changed "
            "no query), so there is nothing to test; it is left out of the adjustment."
            if blank
            else ""
        ),
        paired[[c for c in wanted if c in paired.columns]],
        order=_consensus_order(report),
    )


def _consensus_section(report: Mapping[str, Any]) -> Section:
    """The consensus table (its heat map is shown with the answer)."""
    cons = pd.DataFrame(report.get("consensus") or [])
    return _section(
        "Which attributes matter (consensus of the reliance analyses)",
        "Groups ranked over the reliance analyses: "
        + ", ".join(ANALYSIS_NAMES.values())
        + f". Kendall's W = {_f(report.get('kendall_w'))}. rank by <analysis>: each analysis's "
        "own rank. In the heat map, colour = direction (blue: switching the group on helps, "
        "orange: hurts, grey: no sign; paler = a smaller effect), * = the analysis finds the "
        "group.",
        cons if len(cons) else None,
    )


def _accuracy_section(report: Mapping[str, Any]) -> Section:
    h = report["headline"]
    gap = h.get("learned_vs_oracle_gap")
    configs = pd.DataFrame(report.get("configurations") or [])
    words = _design_labels(configs["design"]) if "design" in configs else ""
    return _section(
        "Accuracy per configuration",
        f"mAP (fraction): full oracle {_f(h['full_mAP'])}, backbone only "
        f"{_f(h['backbone_mAP'])}, learned router {_f(h['learned_mAP'])}"
        + (f" (gap to the oracle {_f(gap)})" if gap is not None else "")
        + (f". One row per configuration: {words}." if words else "."),
        _design_sorted(configs) if len(configs) else None,
        "accuracy",
    )


def _counterfactual_section(report: Mapping[str, Any]) -> Section | None:
    """Each group's ΔmAP when every query's value of it is swapped to another (the
    counterfactual design), drawn; None when the study ran no counterfactuals."""
    configs = report.get("configurations") or []
    if not any(r.get("design") == "counterfactual" for r in configs):
        return None
    return _section(
        "Counterfactual values",
        "mAP when every query's value of one group is replaced by another value (the experts "
        "of that value fire instead of the true one's), against the full oracle: a large drop "
        "means the model relies on that group's experts matching the person.",
        figure="counterfactual",
    )


def _retrained_section(report: Mapping[str, Any]) -> Section | None:
    if not report.get("leave_one_out_retrained"):
        return None
    return _section(
        "Leave-one-group-out, retrained per configuration",
        "One model trained and tested without each group: what the model can do without "
        "it, as opposed to how much the one trained model relies on it (above).",
        pd.DataFrame(report["leave_one_out_retrained"]),
        order=_consensus_order(report),
    )


def _attribute_only_section(report: Mapping[str, Any]) -> Section | None:
    ao = report["attribute_only"]
    if ao.get("mAP") is None:
        return None
    return _section(
        "Attribute-only baseline (identity leak through the oracle)",
        f"Ranking the gallery by agreement of the annotations alone gives mAP "
        f"{_f(ao.get('mAP'))} and rank-1 {_f(ao.get('rank1'))}; "
        f"{_pct(ao.get('unique_signature_share'))} of identities have an attribute "
        "signature no other identity shares. This is the accuracy an oracle router "
        "could hand the model without looking at the image.",
        pd.DataFrame(ao.get("signatures") or []),
    )


def _learned_router_section(report: Mapping[str, Any]) -> Section | None:
    """How much of MoSAIC's gain survives without annotations: the share of the oracle's gain
    the learned router keeps, its paired tests, per-group accuracy beside the majority-class
    rate (balanced accuracy named as such), and whose prediction errors cost most."""
    lr = report.get("learned_router")
    if not lr:
        return None
    reading = lr.get("reading") or {}
    summary = reading.get("summary") or (
        f"The learned router reaches mAP {_f(report['headline'].get('learned_mAP'))} against "
        f"the oracle's {_f(report['headline'].get('full_mAP'))}."
    )
    groups = (reading.get("accuracy") or {}).get("groups")
    accuracy = pd.DataFrame(groups) if groups else None
    if accuracy is not None:
        keep = ["group", "accuracy", "majority_rate", "balanced_accuracy", "images"]
        accuracy = accuracy[[c for c in keep if c in accuracy.columns]]
    blocks = list(_section("Learned router vs oracle", summary, accuracy).blocks)
    for title, rows in (
        ("Paired tests (per query, clustered by identity)", reading.get("tests")),
        (
            "Partial oracle: true attributes for one group, predicted for the rest (what each "
            "group's prediction errors cost)",
            reading.get("partial_oracle"),
        ),
    ):
        if rows:
            blocks += [Text(title + ":"), Table(pd.DataFrame(rows))]
    return Section("Learned router vs oracle", blocks)


def _design_sorted(configs: pd.DataFrame) -> pd.DataFrame:
    key = _design_order()
    cols = [
        c
        for c in ["config", "design", "mAP", "rank1", "rank5", "rank10", "mINP", "queries"]
        if c in configs.columns
    ]
    return configs.assign(_k=configs["design"].map(key)).sort_values("_k", kind="stable")[cols]


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"

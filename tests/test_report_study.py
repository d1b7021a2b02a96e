"""The built-in study's report (attrimp.study.report) reads top to bottom: the answer first in
plain words with one sign convention (positive ΔmAP = the attribute helps), terms explained
once (mINP, share_hurt, Kendall's W, BH), blank p-values explained where they appear, the
batteries' own reports linked, the planted design as a sentence, prior bars readable at page
width, and a page whose images are embedded PNGs and whose tables scroll inside the page."""

from __future__ import annotations

import numpy as np
import pandas as pd

from attrimp.study import report as sr
from tests.test_report_html import report_html_problems

GROUPS = ["upcolor", "clothes", "hat", "gender"]
PLANTED = {
    "seed": 0,
    "n_identities": 96,
    "n_cameras": 3,
    "priors": "market",
    "visibility": {"upcolor": 0.0, "clothes": 1.0, "hat": 1.0, "gender": 1.0},
    "counts": {"train_identities": 48, "test_identities": 48},
}


def _importance() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "attribute": GROUPS,
            "delta_map": [0.1291, -0.0361, 0.0, 0.0005],
            "ci_low": [0.0785, -0.0529, 0.0, -0.0179],
            "ci_high": [0.1838, -0.0210, 0.0, 0.0190],
            "queries": 144,
            "identities": 48,
            "share_hurt": [0.47, 0.0, 0.0, 0.13],
        }
    )


def _paired() -> pd.DataFrame:
    rows = []
    for a, d, p, ph in (
        ("upcolor", 0.1291, 1e-5, 9.1e-5),
        ("clothes", -0.0361, 4e-5, 2.6e-4),
        ("hat", 0.0, None, None),
        ("gender", 0.0005, 0.8, 1.0),
    ):
        for test in ("wilcoxon_signed_rank", "paired_t"):
            rows.append(
                {
                    "attribute": a,
                    "test": test,
                    "mean_difference": d,
                    "p_value": p,
                    "p_holm": ph,
                    "p_fdr_bh": ph,
                    "n": 48,
                }
            )
    return pd.DataFrame(rows)


def _consensus() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "attribute": GROUPS,
            "score": [1.0, 0.6, 0.3, 0.1],
            "rank": [1.0, 2.0, 3.0, 4.0],
            "rank_switching": [1.0, 2.0, 4.0, 3.0],
            "rank_leave_one_out": [1.0, 2.0, 4.0, 3.0],
        }
    )


def _report() -> dict:
    signals = {
        "switching": {
            "upcolor": {"direction": 1.0, "found": True},
            "clothes": {"direction": -1.0, "found": True},
            "hat": {"direction": None, "found": False},
            "gender": {"direction": 1.0, "found": False},
        }
    }
    leak = sr.leak_block(
        {"full_mAP": 0.8955, "backbone_mAP": 0.1587},
        {"mAP": 0.986, "unique_signature_share": 0.958},
    )
    answer = sr.build_answer(
        _importance(), _paired(), _consensus(), 0.73, signals, alpha=0.05, leak=leak
    )
    return {
        "schema_version": sr.SCHEMA_VERSION,
        "study": {"name": "synthetic", "description": "upcolor invisible"},
        "planted_design": PLANTED,
        "headline": {"full_mAP": 0.8955, "backbone_mAP": 0.1587, "learned_mAP": 0.1696},
        "answer": answer,
        "configurations": [
            {"config": "full", "design": "full", "mAP": 0.8955, "rank1": 0.92, "mINP": 0.84},
            {"config": "backbone", "design": "backbone", "mAP": 0.1587, "rank1": 0.07},
        ],
        "leave_one_out": _importance().to_dict("records"),
        "leave_one_out_retrained": [],
        "paired_tests": _paired().replace({np.nan: None}).to_dict("records"),
        "consensus": _consensus().to_dict("records"),
        "kendall_w": 0.73,
        "learned_router": {"mA": 0.571, "group_accuracy": {"upcolor": 0.26, "hat": 1.0}},
        "attribute_only": {"mAP": 0.986, "rank1": 0.979, "unique_signature_share": 0.958},
        "analyses": {"switching": "analyses/switching/report.json"},
        "battery_warnings": {"switching": 4},
        "warnings": [],
    }


def test_answer_names_who_helps_who_hurts_with_ci_and_holm_p():
    report = _report()
    groups = {g["attribute"]: g for g in report["answer"]["groups"]}
    # without a verdicts table the verdict falls back to the Wilcoxon Holm p (never negligible)
    assert groups["upcolor"]["verdict"] == "helps" and groups["upcolor"]["matters"]
    assert groups["clothes"]["verdict"] == "hurts" and groups["clothes"]["matters"]
    assert groups["hat"]["verdict"] == "not testable" and groups["hat"]["matters"] is None
    assert groups["hat"]["rank"] is None  # an untestable group gets no rank
    assert groups["gender"]["verdict"] == "inconclusive" and groups["gender"]["matters"] is False
    # leave-one-out and the paired tests share one sign: positive = helps
    assert groups["upcolor"]["signals"]["leave_one_out"] == {"direction": 1.0, "found": True}
    assert groups["clothes"]["signals"]["leave_one_out"]["direction"] == -1.0
    assert groups["clothes"]["direction"] == "hurts"
    lead, lines = sr.answer_text(report)
    assert lead.startswith("Attributes alone retrieve at mAP 0.986")  # the leak first
    assert "the model relies on upcolor" in lead and "the experts of clothes hurt it" in lead
    assert "Kendall's W = 0.73" in lead and "full oracle 0.895" in lead
    assert lines[0].startswith(
        "rank 1: upcolor helps: switching its experts off costs 0.129 mAP (ΔmAP = +0.129, 95% CI "
        "+0.079 to +0.184); Holm p = 9.1e-05"
    )
    assert lines[1].startswith("rank 2: clothes hurts: switching its experts off gains 0.036 mAP")
    assert "opposite" not in lines[1]  # switching agrees: clothes hurts there too
    report["answer"]["groups"][1]["signals"]["switching"]["direction"] = 1.0
    report["answer"]["groups"][1]["signals"]["switching"]["found"] = True
    _, lines = sr.answer_text(report)
    assert lines[1].endswith("but the per-query switching battery finds the opposite direction.")
    assert lines[-1].startswith("hat is not testable")


def test_on_direction_follows_which_level_is_the_reference():
    assert sr._on_direction({"level": "1", "reference": "0", "effect": 0.2}) == 1.0
    assert sr._on_direction({"level": "0", "reference": "1", "effect": 0.2}) == -1.0
    assert sr._on_direction({"level": "True", "reference": "False", "effect": -0.1}) == -1.0
    assert sr._on_direction({"level": "red", "reference": "blue", "effect": 0.1}) is None


def test_planted_design_is_a_sentence_not_a_dict():
    text = sr.planted_sentence(PLANTED)
    assert "{" not in text and "'" not in text
    assert "96 identities seen by 3 cameras (48 for training, 48 for testing)" in text
    assert "upcolor (invisible) stays in the annotations but not in the pixels" in text
    assert sr.planted_sentence(None) is None
    two = dict(PLANTED, visibility={"upcolor": 0.0, "hat": 0.5})
    assert "upcolor (invisible), hat (50% visible) stay" in sr.planted_sentence(two)
    assert sr.planted_check(_report()) == "Planted truth check: upcolor ranks 1 of 4."


def test_pages_read_top_to_bottom_with_terms_once_and_links(tmp_path):
    report = _report()
    figs = sr._figures(report, None)
    assert {"leave_one_out", "consensus", "accuracy"} <= set(figs)
    md = sr.render_markdown(report, list(figs))
    order = [
        "## Answer",
        "## How to read this report",
        "## Planted design",
        "## Leave-one-group-out",
        "## Paired tests",
        "## Which attributes matter",
        "## Accuracy per configuration",
        "## Detailed batteries",
        "## Warnings (0 here, 4 in the batteries)",
    ]
    pos = [md.index(h) for h in order]
    assert pos == sorted(pos)
    for term in ("mINP", "share\\_hurt", "Kendall's W", "BH (p\\_fdr\\_bh)", "blank p-value"):
        assert md.count(f"- **{term}**") == 1, term
    assert "[switching](analyses/switching/report.md)" in md
    assert "([HTML](analyses/switching/report.html))" in md and "4 warning(s)" in md
    paired = md[md.index("## Paired tests") : md.index("## Which attributes")]
    assert "A blank p-value: every difference is 0" in paired
    assert "positive = the attribute helps" in md[: md.index("## How to read")]
    page = sr.render_html(report, figs)
    assert report_html_problems(page) == []
    assert '<a href="analyses/switching/report.html">switching</a>' in page
    # the batteries' own warnings are counted and linked from the study's warnings section
    assert '<a href="analyses/switching/report.html#warnings">switching: 4 warnings</a>' in page
    assert page.index("<h2>Answer</h2>") < page.index("<h2>How to read this report</h2>")


def test_consensus_heat_map_of_the_study_carries_direction_and_found():
    ranks, direction, found = sr._consensus_matrices(_report())
    assert list(ranks.index) == ["switching", "leave_one_out", "consensus"]
    assert direction.loc["leave_one_out", "clothes"] == -1.0
    assert direction.loc["switching", "upcolor"] == 1.0
    assert direction.loc["consensus", "upcolor"] == 1.0
    assert found.loc["leave_one_out", "upcolor"] == 1.0
    # this fixture's switching battery has no randomisation table: its identity-clustered test
    # alone no longer counts as finding a group (issue 16), so switching's "found" is unknown
    assert np.isnan(found.loc["switching", "gender"])


def test_group_on_indicators_read_on_and_off_in_the_batteries():
    from attrimp.study.analyses import on_off

    table = pd.DataFrame({"ap": [0.5, 0.7, 0.6], "hat": [0, 1, 1], "bag": [True, False, True]})
    out = on_off(table, ["hat", "bag"])
    assert out["hat"].tolist() == ["off", "on", "on"] and out["bag"].tolist() == ["on", "off", "on"]
    assert table["hat"].tolist() == [0, 1, 1]  # the caller's table is left alone
    assert sr._on_direction({"level": "on", "reference": "off", "effect": 0.1}) == 1.0
    assert sr._on_direction({"level": "off", "reference": "on", "effect": 0.1}) == -1.0


def test_the_page_names_the_dataset_backbone_bank_and_router_it_studied():
    """A plug-in dataset, bank or router (tests/plugin_example) was named only in report.json;
    the page now says what was studied in one line under the title."""
    report = _report()
    report["data"] = {"dataset": "plugex_tiny_world", "schema": "market1501"}
    report["model"] = {
        "backbone": "timm:x",
        "bank": "plugex_scaled_adapter",
        "n_experts": 35,
        "router": "plugex_one_off",
    }
    md = sr.render_markdown(report, [])
    setup = md[: md.index("## Answer")].replace("\\_", "_")  # Markdown escapes "_"
    for name in ("plugex_tiny_world", "timm:x", "plugex_scaled_adapter", "plugex_one_off"):
        assert name in setup, name

"""The top of the report answers the question in plain words, with one sign convention: which
groups matter, which way, by how much (with CI), Holm p, how many methods find them and how
much the methods agree; terms are explained once and blank p-values where they appear; the
consensus heat map shows direction and significance, not ranks only."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from studies.battery import headline_levels, run_battery
from studies.design import build_analysis_frame, spec_from_toml
from studies.plots import consensus_heatmap, png_bytes
from studies.report import build_summary, outcome_sense, write_report
from studies.report_md import (
    BLANK_P_NOTE,
    GLOSSARY,
    answer_text,
    has_blank_p,
    render_markdown,
    sign_convention,
)
from studies.simulate import market_like_schema_toml, simulate_reid_table

#: female raises ap (simulate: the planted shift goes to the second value), a 5-level shift in
#: downcolor; nothing else
PLANTED = {"gender": 1.2, "downcolor": 1.5}


@pytest.fixture(scope="module")
def result():
    df = simulate_reid_table(900, n_identities=180, effects=PLANTED, seed=5)
    frame = build_analysis_frame(
        df[["pid", "ap", "gender", "hat", "bag", "age", *_downcolor_columns(df)]],
        outcomes=["ap"],
        cluster="pid",
        spec=spec_from_toml(_schema_subset()),
        source="sim.csv",
    )
    return run_battery(frame, seed=0, progress=False, strict=True, n_repeats=2, cv=3, n_bootstrap=0)


def _downcolor_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("down") and c != "down"]


def _schema_subset() -> str:
    """The simulated Market schema restricted to gender, hat, bag, age and downcolor."""
    keep = {"gender", "hat", "bag", "age", "downcolor"}
    blocks = market_like_schema_toml().split("[[groups]]")
    return blocks[0] + "".join(
        "[[groups]]" + b for b in blocks[1:] if b.split('name = "')[1].split('"')[0] in keep
    )


@pytest.fixture(scope="module")
def written(result, tmp_path_factory):
    return write_report(result, tmp_path_factory.mktemp("answer"), input_info={"path": "sim.csv"})


def test_summary_finds_the_planted_groups_with_their_direction(result):
    summary = {r["attribute"]: r for r in build_summary(result)}
    g = summary["gender"]
    assert g["matters"] and g["p_source"] == "glm" and g["p_holm"] < 0.05
    assert (g["level"], g["reference"], g["direction"]) == ("female", "male", "raises")
    assert g["effect"] > 0 and g["effect_ci_low"] < g["effect"] < g["effect_ci_high"]
    assert g["effect_name"] == "average_marginal_effect"
    assert g["methods_testing"] >= 3 and g["methods_finding"] >= 3
    assert summary["downcolor"]["matters"]
    nulls = [summary[a] for a in ("hat", "bag")]
    assert not any(r["matters"] for r in nulls)
    ranks = [r["rank"] for r in build_summary(result)]
    assert ranks == sorted(ranks)  # consensus order


def test_method_scores_carry_direction_and_evidence(result):
    ms = result.outcome("ap").table("method_scores").set_index(["attribute", "method"])
    assert ms.loc[("gender", "glm"), "direction"] == 1.0
    assert ms.loc[("gender", "tests"), "direction"] == 1.0  # rank-biserial: female higher
    assert np.isnan(ms.loc[("gender", "rf"), "direction"])  # importance has no sign
    assert ms.loc[("gender", "glm"), "significant"]
    assert not ms.loc[("hat", "glm"), "significant"]


def test_report_opens_with_the_answer_then_the_glossary_then_the_detail(written):
    md = written.markdown.read_text(encoding="utf-8")
    answer, glossary, inputs = (md.index(h) for h in ("## Answer", "## How to read", "## Input"))
    assert answer < glossary < inputs < md.index("## Outcome ap")
    top = md[answer:glossary]
    assert "matter for ap" in top and "gender" in top
    assert "female instead of male (the reference) raises ap" in top
    assert "helps re-identification" in top and "Holm p = " in top
    assert "Kendall" in top and "95% CI" in top
    assert "positive = helps" in top  # the sign convention, said once on top
    html = written.html.read_text(encoding="utf-8")
    assert html.index("<h2>Answer</h2>") < html.index("<h2>Input</h2>")
    assert "female instead of male (the reference) raises ap" in html


def test_terms_are_explained_exactly_once(written):
    md = written.markdown.read_text(encoding="utf-8")
    html = written.html.read_text(encoding="utf-8")
    for term in ("Kendall", "Holm p", "BH (p\\_fdr\\_bh)", "average marginal effect"):
        assert md.count(f"- **{term}") == 1, term
    terms = [t for t, _ in GLOSSARY]
    assert {"Holm p", "Kendall's W", "BH (p_fdr_bh)", "blank p-value"} <= set(terms)
    for t in terms:
        assert html.count(f"<dt>{t.replace(chr(39), '&#x27;')}</dt>") == 1, t


def test_blank_p_values_are_explained_where_they_appear():
    rows = [{"attribute": "a", "p_value": 0.01}, {"attribute": "b", "p_value": None}]
    assert has_blank_p(rows) and not has_blank_p(rows[:1])
    assert not has_blank_p([{"attribute": "a", "statistic": None}])
    report = _report(p_value=None)
    md = render_markdown(report)
    section = md[md.index("### GLM coefficients") :]
    assert BLANK_P_NOTE.split(" (")[0] in section.replace("\\", "")


def _report(p_value):
    """A minimal report.json dictionary with one GLM coefficient."""
    return {
        "schema_version": "1.1",
        "settings": {"alpha": 0.05},
        "input": {"path": "t.csv", "outcomes": ["ap"], "rows_read": 3, "rows_used": 3},
        "attributes": {"hat": ["hat"]},
        "attribute_levels": {"hat": {"reference": "no", "levels": ["no", "yes"]}},
        "outcomes": [{"outcome": "ap", "methods": ["glm"], "kendall_w": None}],
        "summary": [
            {
                "outcome": "ap",
                "attribute": "hat",
                "rank": 1,
                "matters": True,
                "p_holm": 0.004,
                "p_source": "glm",
                "level": "yes",
                "reference": "no",
                "direction": "lowers",
                "effect": -0.12,
                "effect_ci_low": -0.2,
                "effect_ci_high": -0.04,
                "effect_name": "average_marginal_effect",
                "methods_finding": 1,
                "methods_testing": 1,
            }
        ],
        "analyses": {
            "glm_coefficients": [
                {"outcome": "ap", "attribute": "hat", "level": "yes", "p_value": p_value}
            ]
        },
        "consensus": [],
        "warnings": [],
    }


def test_answer_sentence_for_a_harmful_level_and_a_lower_is_better_outcome():
    report = _report(p_value=0.001)
    lead, lines = answer_text(report, report["outcomes"][0])
    assert lead.startswith("1 of 1 attribute groups matter for ap")
    assert "not measured" in lead  # one method: no agreement to report
    assert lines == [
        "hat: yes instead of no (the reference) lowers ap: average marginal effect −0.120 "
        "(95% CI −0.200 to −0.040), hurts re-identification; Holm p = 0.004; found by 1 of the "
        "1 methods that test it."
    ]
    assert outcome_sense("first_hit") == -1 and outcome_sense("mAP") == 1
    assert outcome_sense("latency") == 0
    assert "first_hit lower is better: positive = hurts" in sign_convention(["ap", "first_hit"])


def _pixel(png: bytes, fig_xy: tuple[float, float]) -> np.ndarray:
    import matplotlib.image as mpimg

    img = mpimg.imread(io.BytesIO(png), format="png")
    h, w = img.shape[:2]
    return img[int(fig_xy[1] * h), int(fig_xy[0] * w), :3]


def test_heat_map_colours_direction_and_marks_significance():
    ranks = pd.DataFrame([[1.0, 2.0, 3.0]], index=["glm"], columns=["up", "down", "none"])
    direction = pd.DataFrame([[1.0, -1.0, np.nan]], index=ranks.index, columns=ranks.columns)
    found = pd.DataFrame([[1.0, 0.0, np.nan]], index=ranks.index, columns=ranks.columns)
    fig = consensus_heatmap(ranks, direction, found, title="t")
    ax = fig.axes[0]
    img = ax.get_images()[0].get_array()
    up, down, none = (np.asarray(img[0, j, :3], float) for j in range(3))
    assert up[2] > up[0]  # blue: raises
    assert down[0] > down[2]  # orange: lowers
    assert np.ptp(none) < 1e-6  # grey: no direction
    texts = [t.get_text() for t in ax.texts]
    # the rank in the cell, the significance star drawn apart in its corner
    assert {"1", "2", "3"} <= set(texts) and texts.count("*") == 1
    assert len(ax.patches) == 1  # the frame of the one significant cell
    assert png_bytes(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_headline_level_skips_separated_and_untested_levels():
    coefs = pd.DataFrame(
        {
            "attribute": ["c", "c", "c"],
            "level": ["sep", "untested", "real"],
            "coef": [30.0, 1.0, -0.4],
            "p_value": [1e-9, np.nan, 0.01],
            "separation": [True, False, False],
        }
    )
    head = headline_levels(coefs)
    assert head.set_index("attribute").loc["c", "level"] == "real"


def test_a_method_left_out_of_the_consensus_is_left_out_of_the_counts(result):
    import copy

    before = {r["attribute"]: r for r in build_summary(result)}
    res = copy.copy(result)
    res.outcomes = [copy.copy(result.outcomes[0])]
    res.outcomes[0].excluded_methods = {"rf": "it gives all attributes the same score"}
    after = {r["attribute"]: r for r in build_summary(res)}
    assert after["gender"]["methods_testing"] == before["gender"]["methods_testing"] - 1
    report = _report(p_value=0.001)
    report["outcomes"][0].update(
        methods=["glm", "tests", "rf"], kendall_w=0.8, excluded_methods={"rf": "ties"}
    )
    lead, _ = answer_text(report, report["outcomes"][0])
    assert "The 2 methods (GLM, rank tests) agree strongly" in lead
    assert "Left out of the consensus and of the counts below: random forest" in lead

"""The study's answer (attrimp.study.answer, attrimp.study.analyses) on small per-query tables with
planted effects: the consensus ranks by unsigned evidence (a strong *hurting* group ranks first,
with its direction beside the rank), a group whose every paired difference is 0 is not testable
and unranked, a null group is negligible with many identities and inconclusive (with a larger
MDE) with few, the switching analysis finds a group only where its randomisation test does, a
disagreement carries its explanation, and the leak paragraph comes first with its share."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from attrimp.study import answer as sa
from attrimp.study.analyses import (
    StudyAnalyses,
    _study_consensus,
    _switching_frame,
    loo_verdicts,
)

ALPHA, MARGIN = 0.05, 0.01


def _per_query(
    effects: dict[str, float],
    *,
    n_ids: int,
    per_id: int = 3,
    noise: float = 0.03,
    zero: tuple[str, ...] = (),
    seed: int = 0,
) -> pd.DataFrame:
    """A leave-one-out per-query table: config "full" and "without:<g>" per group; the AP
    without g is the full AP minus ``effects[g]`` (positive = g helps) minus identity-level
    and query-level noise; a group in ``zero`` changes no query (AP identical)."""
    rng = np.random.default_rng(seed)
    n = n_ids * per_id
    pid = np.repeat(np.arange(n_ids), per_id)
    base = rng.uniform(0.3, 0.8, n)
    groups = [*effects, *zero]
    rows = [pd.DataFrame({"config": "full", "query": np.arange(n), "pid": pid, "ap": base})]
    for g in groups:
        if g in zero:
            ap = base.copy()
        else:
            ident = rng.normal(0, noise, n_ids)[pid]
            ap = base - effects[g] - ident - rng.normal(0, noise / 2, n)
        rows.append(
            pd.DataFrame({"config": f"without:{g}", "query": np.arange(n), "pid": pid, "ap": ap})
        )
    table = pd.concat(rows, ignore_index=True)
    table["valid"] = True
    for g in groups:
        table[g] = "no" if g in zero else np.where(table["query"] % 2, "yes", "no")
    return table


@pytest.fixture(scope="module")
def planted():
    """hurts: strong negative effect; helps: weaker positive; null: none; hat: never fires."""
    table = _per_query(
        {"helps": 0.02, "hurts": -0.06, "null": 0.0}, n_ids=60, zero=("hat",), seed=1
    )
    groups = ["helps", "hurts", "null", "hat"]
    return table, groups, loo_verdicts(table, groups, alpha=ALPHA, margin=MARGIN)


def test_verdicts_find_the_planted_effects_and_the_untestable_group(planted):
    _, _, v = planted
    v = v.set_index("attribute")
    assert v.loc["hurts", "verdict"] == "hurts" and v.loc["hurts", "direction"] == -1.0
    assert v.loc["helps", "verdict"] == "helps" and v.loc["helps", "direction"] == 1.0
    assert v.loc["null", "verdict"] in ("negligible", "inconclusive")
    assert v.loc["hat", "verdict"] == "not testable" and not v.loc["hat", "testable"]
    assert "every test query has hat = no" in v.loc["hat", "reason"]
    assert "exactly 0" in v.loc["hat", "reason"]
    assert np.isnan(v.loc["hat", "mde"]) and np.isnan(v.loc["hat", "p_holm"])
    # Holm over the 3 testable groups only: the untestable one is not in the family
    p = v.loc[["helps", "hurts", "null"], "p_value"].sort_values()
    assert v.loc[p.index[0], "p_holm"] == pytest.approx(min(1.0, 3 * p.iloc[0]))
    assert (v.loc[["helps", "hurts", "null"], "df"] == 59).all()  # G - 1


def test_consensus_ranks_unsigned_evidence_and_leaves_the_untestable_unranked(planted, tmp_path):
    table, groups, v = planted
    result = StudyAnalyses(verdicts=v)
    _study_consensus(result, tmp_path)
    cons = result.consensus.set_index("attribute")
    # the strong hurting group has the strongest evidence: first, not last (a signed score
    # would put it below the null group)
    assert cons.loc["hurts", "rank"] == 1 and cons.loc["helps", "rank"] == 2
    assert cons.loc["null", "rank"] == 3
    assert np.isnan(cons.loc["hat", "rank"]) and not cons.loc["hat", "testable"]
    assert list(result.consensus["attribute"])[-1] == "hat"  # listed after the ranked ones
    assert cons.loc["hurts", "direction"] == -1.0  # direction beside the rank
    assert {"verdict", "mde", "p_tost", "reason"} <= set(cons.columns)
    assert (tmp_path / "consensus.csv").exists()
    answer = sa.build_answer(
        pd.DataFrame(), None, result.consensus, None, {}, alpha=ALPHA, verdicts=v, margin=MARGIN
    )
    first, last = answer["groups"][0], answer["groups"][-1]
    assert (first["attribute"], first["rank"], first["direction"]) == ("hurts", 1.0, "hurts")
    assert first["verdict"] == "hurts" and first["mde"] > 0 and first["p_tost"] is not None
    assert (last["attribute"], last["rank"], last["testable"]) == ("hat", None, False)
    assert last["verdict"] == "not testable" and "exactly 0" in last["reason"]


def test_a_null_group_is_negligible_with_many_identities_and_inconclusive_with_few():
    many = loo_verdicts(
        _per_query({"null": 0.0, "other": 0.0}, n_ids=400, seed=3),
        ["null", "other"],
        alpha=ALPHA,
        margin=MARGIN,
    ).set_index("attribute")
    few = loo_verdicts(
        _per_query({"null": 0.0, "other": 0.0}, n_ids=8, seed=3),
        ["null", "other"],
        alpha=ALPHA,
        margin=MARGIN,
    ).set_index("attribute")
    assert many.loc["null", "verdict"] == "negligible"
    assert many.loc["null", "p_tost"] < ALPHA and many.loc["null", "mde"] < MARGIN
    assert few.loc["null", "verdict"] == "inconclusive"
    assert few.loc["null", "p_tost"] >= ALPHA and few.loc["null", "p_holm"] >= ALPHA
    assert few.loc["null", "mde"] > 3 * many.loc["null", "mde"]
    assert few.loc["null", "mde"] > MARGIN  # too small a study to see an effect of the margin


def _report(answer: dict, *, attribute_only: float = 0.986) -> dict:
    headline = {"full_mAP": 0.890, "backbone_mAP": 0.159, "learned_mAP": 0.177}
    att = {"mAP": attribute_only, "unique_signature_share": 0.958}
    answer["leak"] = sa.leak_block(headline, att)
    return {"answer": answer, "headline": headline, "attribute_only": att, "consensus": []}


def test_the_leak_comes_first_and_states_the_share_of_the_oracles_gain(planted):
    _, _, v = planted
    answer = sa.build_answer(pd.DataFrame(), None, None, None, {}, alpha=ALPHA, verdicts=v)
    report = _report(answer)
    paragraphs = sa.answer_paragraphs(report)
    lead, lines = sa.answer_text(report)
    assert paragraphs[0].startswith("Attributes alone retrieve at mAP 0.986")
    assert lead.startswith(paragraphs[0])
    assert "above the oracle model's 0.890" in paragraphs[0]
    assert "all of the oracle's gain over the backbone (0.159 → 0.890)" in paragraphs[0]
    assert "who the person is" in paragraphs[0] and "96 %" in paragraphs[0]
    assert report["answer"]["leak"]["share_of_gain"] == 1.0
    # a smaller leak: (0.5 - 0.159) / (0.890 - 0.159) = 0.4665 -> 47 %
    small = _report(dict(answer), attribute_only=0.5)
    assert small["answer"]["leak"]["share_raw"] == pytest.approx(0.341 / 0.731)
    assert "could explain 47 % of the oracle's gain" in sa.answer_paragraphs(small)[0]
    assert "below the oracle model's 0.890" in sa.answer_paragraphs(small)[0]
    # every group gets a sentence with its verdict; the untestable says why and has no rank
    assert len(lines) == 4
    assert lines[-1].startswith("hat is not testable: every test query has hat = no")
    assert "no rank" in lines[-1]


def test_switching_finds_a_group_only_where_its_randomisation_test_does(planted):
    _, _, v = planted
    switching = pd.DataFrame(
        {
            "attribute": ["helps", "hurts"],
            "p_switching_identity": [1e-9, 1e-9],
            "p_switching_battery": [0.2, 1e-4],
            "p_switching_randomization": [0.3, 0.001],
            "p_switching_randomization_holm": [0.3, 0.002],
        }
    )
    signals = {"switching": {"helps": {"direction": 1.0, "found": True}, "hurts": {"found": True}}}
    answer = sa.build_answer(
        pd.DataFrame(), None, None, None, signals, alpha=ALPHA, verdicts=v, switching=switching
    )
    g = {x["attribute"]: x for x in answer["groups"]}
    assert g["helps"]["signals"]["switching"]["found"] is False  # identity p 1e-9 is not enough
    assert g["hurts"]["signals"]["switching"]["found"] is True
    assert g["helps"]["p_switching_identity"] == 1e-9
    assert g["helps"]["p_switching_randomization"] == 0.3
    rows = {r["attribute"]: r for r in sa.answer_rows(_report(answer))}
    assert rows["helps"]["switching p (identity-clustered)"] == 1e-9
    assert rows["helps"]["switching p (randomisation)"] == 0.3
    _, lines = sa.answer_text(_report(answer))
    assert lines[0].startswith("helps helps:")  # verdict order without a consensus
    assert "randomisation p = 0.300 (Holm 0.300), which does not support it" in lines[0]
    assert "which supports it" in lines[1]


def test_a_disagreement_is_explained_with_the_two_questions(planted):
    _, _, v = planted
    shap = pd.DataFrame(
        {
            "attribute": ["helps", "hurts"],
            "shapley": [0.10, -0.06],
            "shapley_ci_low": [0.05, -0.08],
            "shapley_ci_high": [0.15, -0.04],
            "disagree": [True, False],
            "explanation": [
                "helps's leave-one-out effect is smaller: it is redundant with null.",
                "agree.",
            ],
        }
    )
    answer = sa.build_answer(
        pd.DataFrame(), None, None, None, {}, alpha=ALPHA, verdicts=v, shapley=shap
    )
    report = _report(answer)
    paragraphs = sa.answer_paragraphs(report)
    assert sa.QUESTIONS in paragraphs[-1] and "for helps" in paragraphs[-1]
    g = {x["attribute"]: x for x in answer["groups"]}
    assert g["helps"]["disagree"] and "redundant with null" in g["helps"]["explanation"]
    assert g["hurts"]["explanation"] is None  # no disagreement, no sentence
    _, lines = sa.answer_text(report)
    assert any("redundant with null" in s for s in lines)


def test_the_switching_frame_is_crossed_with_the_random_subsets_randomised():
    rows = []
    for c, design, on in (
        ("full", "full", (1, 1)),
        ("backbone", "backbone", (0, 0)),
        ("subset:0", "random_subsets", (1, 0)),
        ("subset:1", "random_subsets", (0, 1)),
    ):
        for q in range(12):
            rows.append(
                {
                    "config": c,
                    "design": design,
                    "pid": q // 2,
                    "ap": 0.5 + 0.01 * q,
                    "on_a": on[0],
                    "on_b": on[1],
                }
            )
    frame = _switching_frame(pd.DataFrame(rows), ["a", "b"])
    assert frame.condition == "config" and frame.cluster == "pid"
    assert set(frame.randomized_conditions) == {"subset:0", "subset:1"}


def test_margin_is_a_validated_setting():
    from attrimp.api import study_config
    from attrimp.errors import ConfigError

    assert study_config(None).analysis.margin == 0.01
    assert study_config(None, **{"analysis.margin": 0.02}).analysis.margin == 0.02
    for bad in (0.0, -0.01, float("nan")):
        with pytest.raises(ConfigError, match="analysis.margin"):
            study_config(None, **{"analysis.margin": bad})


def test_a_study_where_no_group_can_be_tested_ranks_nothing(tmp_path):
    table = _per_query({}, n_ids=10, zero=("hat", "bag"))
    v = loo_verdicts(table, ["hat", "bag"], alpha=ALPHA, margin=MARGIN)
    assert (v["verdict"] == "not testable").all() and v["p_holm"].isna().all()
    result = StudyAnalyses(verdicts=v)
    _study_consensus(result, tmp_path)
    assert result.consensus is None  # nothing to rank, nothing ranked
    answer = sa.build_answer(pd.DataFrame(), None, None, None, {}, alpha=ALPHA, verdicts=v)
    lead, lines = sa.answer_text(_report(answer))
    assert "none is shown to matter" in lead and "hat and bag cannot be tested" in lead
    assert all("not testable" in s for s in lines)


def test_the_answer_states_how_many_configurations_were_drawn_and_what_they_could_detect(planted):
    """The number of random configurations is a design choice whose MDE the reader must see
    (issue 16, item 4): the answer names the count and the switching design's median MDE."""
    _, _, v = planted
    switching = pd.DataFrame(
        {
            "attribute": ["helps", "hurts"],
            "p_switching_randomization": [0.3, 0.001],
            "p_switching_randomization_holm": [0.3, 0.002],
            "mde_switching": [0.02, 0.04],
            "n_randomized": [24, 24],
        }
    )
    answer = sa.build_answer(
        pd.DataFrame(), None, None, None, {}, alpha=ALPHA, verdicts=v, switching=switching
    )
    lead, _ = sa.answer_text(_report(answer))
    assert "It drew 24 random configurations" in lead
    assert "about 0.030 AP per group" in lead

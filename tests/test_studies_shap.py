"""SHAP by attribute group: additivity, the per-row grouping before |.|, planted level effects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from studies.errors import StudyInputError
from studies.features import encode_frame
from studies.frame import AnalysisFrame
from studies.importance import fit_tree_model, grouped_permutation_importance
from studies.shap_groups import group_shap, shap_group_importance, tree_shap

FAST = {"rf": {"n_estimators": 20}, "xgb": {"n_estimators": 60, "learning_rate": 0.1}}


def make_frame(
    *,
    n_clusters: int = 150,
    per: int = 4,
    levels: dict[str, int],
    effects: dict[str, dict[int, float]],
    seed: int = 0,
    binary: bool = False,
    noise: float = 0.2,
) -> AnalysisFrame:
    """Identity-level attributes, planted additive level shifts, clustered noise."""
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(n_clusters), per)
    data: dict[str, object] = {}
    lin = np.zeros(n_clusters)
    for g, k in levels.items():
        lv = rng.integers(0, k, n_clusters)
        for level, shift in effects.get(g, {}).items():
            lin += shift * (lv == level)
        cats = [f"{g}{i}" for i in range(k)]
        data[g] = pd.Categorical(np.asarray(cats)[lv][pid], categories=cats)
    y = lin[pid] + rng.normal(0, 0.1, n_clusters)[pid] + rng.normal(0, noise, len(pid))
    if binary:
        y = (rng.random(len(pid)) < 1 / (1 + np.exp(-3 * y))).astype(float)
    data["y"], data["pid"] = y, pid
    df = pd.DataFrame(data)
    return AnalysisFrame(
        data=df,
        outcomes=["y"],
        groups=list(levels),
        group_columns={g: [g] for g in levels},
        cluster="pid",
        rows_read=len(df),
    )


LEVELS = {"a": 2, "c": 3, "n": 4}
#: group c: level 1 raises, level 2 lowers the outcome by the same amount (opposite signs)
EFFECTS = {"a": {1: 0.5}, "c": {1: 0.4, 2: -0.4}}


@pytest.fixture(scope="module")
def planted() -> AnalysisFrame:
    return make_frame(levels=LEVELS, effects=EFFECTS)


@pytest.mark.parametrize("model", ["rf", "xgb"])
@pytest.mark.parametrize("binary", [False, True])
def test_shap_additivity(model, binary):
    """base value + sum of SHAP values = the model's raw prediction, row by row."""
    fr = make_frame(levels=LEVELS, effects=EFFECTS, binary=binary, n_clusters=80)
    enc, codes = encode_frame(fr)
    y = fr.data["y"].to_numpy(float)
    fm = fit_tree_model(model, enc, codes, y, binary=binary, seed=0, model_params=FAST[model])
    vals, base = tree_shap(fm, codes[:50])
    assert vals.shape == (50, enc.n_columns)
    np.testing.assert_allclose(base + vals.sum(axis=1), fm.predict_raw(codes[:50]), atol=1e-5)
    if model == "xgb" and binary:  # the margin is the log-odds of the probability prediction
        p = fm.predict(codes[:50])
        np.testing.assert_allclose(np.log(p / (1 - p)), fm.predict_raw(codes[:50]), atol=1e-4)


def test_group_shap_sums_columns_per_row_before_abs():
    """Hand-made SHAP matrix: group g's two columns cancel on every row."""
    from studies.features import GroupEncoding

    enc = GroupEncoding(
        groups=("g", "h"),
        levels={"g": ("r", "s", "t"), "h": ("u", "v")},
        columns=("g=s", "g=t", "h=v"),
        column_group=("g", "g", "h"),
        column_level=("s", "t", "v"),
        group_columns={"g": np.array([0, 1]), "h": np.array([2])},
    )
    vals = np.array([[1.0, -1.0, 0.5], [-2.0, 2.0, -0.5]])
    gs = group_shap(vals, enc)
    np.testing.assert_allclose(gs, [[0.0, 0.5], [0.0, -0.5]])
    assert np.abs(gs[:, 0]).mean() == 0.0  # the right definition
    assert np.abs(vals[:, :2]).mean(axis=0).sum() == 3.0  # the per-column one, which is wrong


@pytest.mark.parametrize("model", ["rf", "xgb"])
def test_group_importance_is_mean_abs_of_per_row_sum(planted, model):
    """On a real fit the two definitions differ (group c's levels push in opposite directions);
    the reported one equals mean |sum of the group's signed SHAP values| over all rows."""
    res = shap_group_importance(planted, "y", model=model, model_params=FAST[model])
    enc, codes = encode_frame(planted)
    y = planted.data["y"].to_numpy(float)
    fm = fit_tree_model(model, enc, codes, y, binary=False, seed=0, model_params=FAST[model])
    vals, _ = tree_shap(fm, codes)  # every row, no deduplication: the plain computation
    t = res.group_table.set_index("attribute")
    for g in enc.groups:
        cols = enc.group_columns[g]
        per_row = np.abs(vals[:, cols].sum(axis=1)).mean()
        per_col = np.abs(vals[:, cols]).mean(axis=0).sum()
        assert t.at[g, "mean_abs_shap"] == pytest.approx(per_row, rel=1e-6, abs=1e-9)
        assert t.at[g, "sum_of_column_mean_abs"] == pytest.approx(per_col, rel=1e-6, abs=1e-9)
    # for an exactly additive fit the ratio is 4/3: reference rows get +0.133 and -0.133 from
    # c's two columns, which cancel per row but add up per column
    assert t.at["c", "sum_of_column_mean_abs"] > 1.1 * t.at["c", "mean_abs_shap"]
    assert t.at["a", "sum_of_column_mean_abs"] == pytest.approx(
        t.at["a", "mean_abs_shap"]
    )  # 1 column
    assert int(t.at["a", "n_rows"]) == len(planted.data)


def test_planted_groups_and_signed_level_effects(planted):
    res = shap_group_importance(planted, "y", model="xgb", model_params=FAST["xgb"])
    g = res.group_table.set_index("attribute")["mean_abs_shap"]
    assert list(g.sort_values(ascending=False).index[:2]) == ["c", "a"] or list(
        g.sort_values(ascending=False).index[:2]
    ) == ["a", "c"]
    assert g["n"] < 0.25 * min(g["a"], g["c"])
    lv = res.level_table.set_index(["attribute", "level"])["mean_shap"]
    assert lv[("a", "a0")] == 0.0 and lv[("c", "c0")] == 0.0  # reference levels
    assert lv[("a", "a1")] == pytest.approx(0.5, abs=0.1)
    assert lv[("c", "c1")] == pytest.approx(0.4, abs=0.1)
    assert lv[("c", "c2")] == pytest.approx(-0.4, abs=0.1)
    assert res.level_table.groupby("attribute")["n"].sum().eq(len(planted.data)).all()
    assert set(res.values.columns) == {"a", "c", "n", "weight", "fold"}


@pytest.mark.parametrize("model", ["rf", "xgb"])
def test_reuses_the_fold_models_on_their_held_out_rows(planted, model):
    imp = grouped_permutation_importance(
        planted, "y", model=model, n_repeats=2, cv=3, model_params=FAST[model], n_boot=20
    )
    res = shap_group_importance(planted, "y", model=model, fitted=imp)
    # every row is held out by exactly one fold, so every row is explained once
    assert (res.group_table["n_rows"] == len(planted.data)).all()
    assert len(res.base_values) == 3
    assert sorted(res.values["fold"].unique()) == [0, 1, 2]
    top = res.group_table.set_index("attribute")["mean_abs_shap"].idxmin()
    assert top == "n"


def test_model_mismatch_is_a_clear_error(planted):
    imp = grouped_permutation_importance(
        planted, "y", model="xgb", n_repeats=1, cv=2, model_params=FAST["xgb"], n_boot=5
    )
    with pytest.raises(StudyInputError, match="fitted models are xgb but model='rf'"):
        shap_group_importance(planted, "y", model="rf", fitted=imp)


def test_max_rows_subsamples_with_a_warning(planted):
    res = shap_group_importance(planted, "y", model="xgb", model_params=FAST["xgb"], max_rows=20)
    assert (res.group_table["n_rows"] == 20).all()
    assert any("explains a random 20 of its 600 held-out rows" in w for w in res.warnings)

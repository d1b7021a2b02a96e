"""Designs in which the attributes vary *within* a cluster (issue 11, section 2).

The study's switching table has one row per identity x configuration: the group-on indicators
change from row to row of one identity, and every identity carries the same configurations in
the same order. Permuting such a group across clusters (a donor identity's row k for row k)
hands every row back its own value, so the old permutation importance was exactly 0 for every
group whatever the model did. These tests plant within-identity effects and check that every
resampling now moves such groups within clusters, identity-level groups still across clusters,
that the tables say which, and that a method that ranks nothing is left out of the consensus.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import studies.importance as importance_mod
from studies.consensus import consensus_ranking
from studies.features import (
    ACROSS_CLUSTERS,
    WITHIN_CLUSTER,
    clusters_varying,
    permutation_scopes,
)
from studies.frame import AnalysisFrame
from studies.hypothesis import group_tests
from studies.importance import _Permuter, grouped_permutation_importance

FAST_RF = {"n_estimators": 30}
FAST_XGB = {"n_estimators": 60, "learning_rate": 0.1}
GROUPS = ("a", "b", "c", "d")
PLANTED = {"a": 0.30, "b": 0.15}


def switching_frame(
    *,
    n_clusters: int = 40,
    per: int = 30,
    effects: dict[str, float] = PLANTED,
    identity_effect: float = 0.0,
    seed: int = 0,
    cluster_sd: float = 0.15,
    noise: float = 0.1,
    same_subsets: bool = True,
    offset: float = 0.0,
) -> AnalysisFrame:
    """``n_clusters`` identities x ``per`` rows; each row switches every group on or off at
    random (the same ``per`` subsets, in the same order, for every identity when
    ``same_subsets``, as in the study); the outcome is the planted groups' shifts plus an
    identity random effect and row noise. ``identity_effect`` adds an identity-level binary
    attribute ``bag`` (constant within each identity) with that shift."""
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(n_clusters), per)
    if same_subsets:
        on = np.tile(rng.integers(0, 2, (per, len(GROUPS))), (n_clusters, 1))
    else:
        on = rng.integers(0, 2, (n_clusters * per, len(GROUPS)))
    y = rng.normal(0, cluster_sd, n_clusters)[pid] + rng.normal(0, noise, len(pid))
    data: dict[str, object] = {}
    for j, g in enumerate(GROUPS):
        y = y + effects.get(g, 0.0) * on[:, j]
        data[g] = pd.Categorical(np.where(on[:, j] == 1, "on", "off"), categories=["off", "on"])
    groups = list(GROUPS)
    if identity_effect:
        bag = rng.integers(0, 2, n_clusters)
        y = y + identity_effect * bag[pid]
        data["bag"] = pd.Categorical(np.where(bag[pid] == 1, "yes", "no"), categories=["no", "yes"])
        groups.append("bag")
    data["y"], data["pid"] = y + offset, pid
    df = pd.DataFrame(data)
    return AnalysisFrame(
        data=df,
        outcomes=["y"],
        groups=groups,
        group_columns={g: [g] for g in groups},
        cluster="pid",
        rows_read=len(df),
    )


@pytest.fixture(scope="module")
def switching() -> AnalysisFrame:
    return switching_frame()


# ---------------------------------------------------------------------------------------------
# where a feature varies
# ---------------------------------------------------------------------------------------------
def test_permutation_scope_is_decided_from_the_data():
    clusters = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    codes = np.array(
        [
            [0, 1, 0],
            [0, 1, 1],
            [0, 1, 0],
            [1, 0, 0],
            [1, 0, 0],
            [0, 1, 2],
            [0, 1, 2],
            [0, 1, 2],
        ]
    )
    assert clusters_varying(codes, clusters).tolist() == [0, 0, 1]
    assert permutation_scopes(codes, clusters) == [ACROSS_CLUSTERS, ACROSS_CLUSTERS, WITHIN_CLUSTER]
    assert permutation_scopes(codes, None) == ["rows"] * 3


def test_within_cluster_source_is_a_permutation_inside_every_cluster():
    rng = np.random.default_rng(0)
    clusters = rng.integers(0, 7, 200)
    perm = _Permuter.build(clusters)
    moved = 0
    for r in range(20):
        src = perm.source_within(np.random.default_rng(r), len(clusters))
        assert np.array_equal(np.sort(src), np.arange(len(clusters)))  # a permutation
        assert np.array_equal(clusters[src], clusters)  # that never leaves a cluster
        moved += int((src != np.arange(len(clusters))).sum())
    assert moved > 0.8 * 20 * len(clusters)


# ---------------------------------------------------------------------------------------------
# permutation importance
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model,params", [("rf", FAST_RF), ("xgb", FAST_XGB)])
def test_planted_within_cluster_groups_get_importance(switching, model, params):
    res = grouped_permutation_importance(
        switching, "y", model=model, n_repeats=5, cv=3, seed=1, model_params=params
    )
    t = res.table.set_index("attribute")
    assert (t["permuted"] == WITHIN_CLUSTER).all()
    assert any("within each pid" in w for w in res.warnings)
    a, b = t.loc["a", "importance"], t.loc["b", "importance"]
    null = t.loc[["c", "d"], "importance"]
    # planted: clearly above 0 (interval too) and above the unplanted groups, in effect order
    assert a > b > 0.01
    assert t.loc["a", "ci_low"] > 0 and t.loc["b", "ci_low"] > 0
    assert (null < 0.25 * b).all()
    assert (null.abs() < 0.01).all()


def test_across_cluster_permutation_cannot_move_a_switching_design(switching, monkeypatch):
    """The old behaviour, forced: every group permuted across clusters gives exactly 0."""
    monkeypatch.setattr(
        importance_mod,
        "permutation_scopes",
        lambda codes, clusters: [ACROSS_CLUSTERS] * codes.shape[1],
    )
    res = grouped_permutation_importance(
        switching, "y", model="rf", n_repeats=3, cv=3, seed=1, model_params=FAST_RF
    )
    assert (res.table["importance"] == 0.0).all()
    assert res.quality["mean"] > 0.1  # while the model itself explains the outcome


def test_identity_level_group_is_still_permuted_across_clusters():
    frame = switching_frame(identity_effect=0.6, n_clusters=60, per=20, seed=3)
    res = grouped_permutation_importance(
        frame, "y", model="rf", n_repeats=5, cv=3, seed=0, model_params=FAST_RF
    )
    t = res.table.set_index("attribute")
    assert t.loc["bag", "permuted"] == ACROSS_CLUSTERS
    assert (t.loc[list(GROUPS), "permuted"] == WITHIN_CLUSTER).all()
    assert t.loc["bag", "importance"] > 0.05 and t.loc["bag", "ci_low"] > 0
    assert t.loc["a", "importance"] > 0.02


# ---------------------------------------------------------------------------------------------
# rank tests
# ---------------------------------------------------------------------------------------------
def test_rank_tests_say_how_they_permuted_and_find_planted_groups():
    frame = switching_frame(identity_effect=0.6, n_clusters=40, per=20, seed=4)
    res = group_tests(frame, "y", n_perm=199, n_boot=0, method="permutation")
    res = res.set_index("attribute")
    assert (res.loc[list(GROUPS), "permuted"] == WITHIN_CLUSTER).all()
    assert (res.loc[list(GROUPS), "test"] == "mann_whitney_u+cluster_permutation").all()
    assert res.loc["bag", "permuted"] == ACROSS_CLUSTERS and res.loc["bag", "unit"] == "cluster"
    assert res.loc["a", "p_value"] <= 1 / 200 and res.loc["b", "p_value"] <= 1 / 200
    assert res.loc["a", "effect_size"] > res.loc["b", "effect_size"] > 0
    # both planted groups sit at the permutation floor: the table says their order is a tie
    assert any("smallest 199 permutations" in w and "a, b" in w for w in res.attrs["warnings"])
    unclustered = group_tests(AnalysisFrame(**{**frame.__dict__, "cluster": None}), "y", n_boot=0)
    assert (unclustered["permuted"] == "rows").all()


def test_within_cluster_rank_test_holds_its_level_under_the_null():
    """No planted effect, identity random effects: rejections at alpha = 0.05 stay within
    Monte-Carlo error (100 tables x 4 groups, 199 permutations each)."""
    rejections, total = 0, 0
    for seed in range(100):
        frame = switching_frame(
            effects={},
            n_clusters=20,
            per=10,
            seed=1000 + seed,
            cluster_sd=1.0,
            noise=0.5,
            same_subsets=False,
        )
        p = group_tests(frame, "y", n_perm=199, n_boot=0, seed=seed)["p_value"].to_numpy()
        rejections += int((p <= 0.05).sum())
        total += len(p)
    rate = rejections / total
    # binomial sd at 400 tests is 0.011; tests of one table are nearly independent
    assert 0.015 <= rate <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / total), rate


# ---------------------------------------------------------------------------------------------
# consensus
# ---------------------------------------------------------------------------------------------
def test_consensus_leaves_out_a_method_that_ranks_nothing():
    attrs = list("abcd")
    scores = {
        "glm": pd.Series([9.0, 5.0, 1.0, 0.5], index=attrs),
        "tests": pd.Series([3.0] * 4, index=attrs),  # every p at the permutation floor 0.001
        "rf": pd.Series([0.0] * 4, index=attrs),  # importance exactly 0 for every group
        "shap": pd.Series([0.5, 0.3, 0.1, 0.1], index=attrs),
    }
    res = consensus_ranking(scores)
    assert set(res.excluded) == {"tests", "rf"}
    assert "rank_tests" not in res.ranking and "rank_rf" not in res.ranking
    msgs = [w for w in res.warnings if "left out of the consensus" in w]
    assert len(msgs) == 2 and all("same score" in m for m in msgs)
    assert res.ranking["attribute"].tolist()[:2] == ["a", "b"]
    # W is that of the informative methods only, which agree here
    assert res.kendall_w == pytest.approx(
        consensus_ranking({k: scores[k] for k in ("glm", "shap")}).kendall_w
    )
    assert res.kendall_w > 0.9


def test_consensus_with_no_informative_method_is_a_tie_with_a_warning():
    attrs = list("abc")
    res = consensus_ranking({"x": pd.Series(0.0, index=attrs), "y": pd.Series(2.0, index=attrs)})
    assert (res.ranking["rank"] == 1).all()
    assert any("No method separates" in w for w in res.warnings)


def test_battery_on_a_switching_table_ranks_the_planted_groups_and_warns():
    from studies.battery import run_battery

    # offset: a Gaussian outcome (negative) that no GLM rule can take for a proportion
    frame = switching_frame(n_clusters=30, per=20, seed=2, offset=-5.0)
    res = run_battery(
        frame, n_repeats=3, cv=3, n_bootstrap=5, progress=False, models=("rf",), strict=True
    )
    out = res.outcomes[0]
    imp = out.table("permutation_importance").set_index("attribute")
    assert (imp["permuted"] == WITHIN_CLUSTER).all()
    assert imp.loc["a", "importance"] > imp.loc[["c", "d"], "importance"].max()
    tests = out.table("tests").set_index("attribute")
    assert (tests["permuted"] == WITHIN_CLUSTER).all()
    cons = out.table("consensus")
    assert cons["attribute"].tolist()[:2] == ["a", "b"]
    messages = [w.message for w in res.warnings]
    assert any("permutes every attribute within each pid" in m for m in messages)


def test_a_group_varying_in_a_few_clusters_only_is_flagged():
    """An identity-level attribute with one disagreeing row in 2 of 40 identities varies within
    clusters, so it is permuted within them, and both analyses say that only those identities
    move."""
    frame = switching_frame(identity_effect=0.5, n_clusters=40, per=10, seed=5)
    bag = frame.data["bag"].astype(str).to_numpy().copy()
    for c in (3, 17):
        row = c * 10
        bag[row] = "no" if bag[row] == "yes" else "yes"
    frame.data["bag"] = pd.Categorical(bag, categories=["no", "yes"])
    tests = group_tests(frame, "y", groups=["bag"], n_perm=99, n_boot=0)
    assert tests.iloc[0]["permuted"] == WITHIN_CLUSTER
    assert any("'bag' varies within only 2 of 40 pids" in w for w in tests.attrs["warnings"])
    imp = grouped_permutation_importance(
        frame, "y", groups=["bag"], n_repeats=2, cv=2, model_params=FAST_RF
    )
    assert imp.table.iloc[0]["permuted"] == WITHIN_CLUSTER
    assert any("'bag' varies within only 2 of 40 pids" in w for w in imp.warnings)


def test_rank_tests_warn_when_the_design_moves_groups_together():
    """A study-like switching design: 'c' does nothing but is switched on with 'a' (full /
    backbone / only-one rows), so its marginal test is significant; the table warns that the
    tests are marginal. An independent random design gets no such warning."""
    rng = np.random.default_rng(8)
    n_id = 40
    configs = np.array(
        [[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 1, 0], [0, 0, 1, 1]]
        + [[1, 0, 1, 1], [0, 1, 0, 0]] * 2
    )
    per = len(configs)
    pid = np.repeat(np.arange(n_id), per)
    on = np.tile(configs, (n_id, 1))
    y = 0.4 * on[:, 0] + rng.normal(0, 0.3, n_id)[pid] + rng.normal(0, 0.1, len(pid)) - 5
    df = pd.DataFrame({g: on[:, j] for j, g in enumerate(GROUPS)} | {"y": y, "pid": pid})
    from studies.design import build_analysis_frame

    frame = build_analysis_frame(df, outcomes=["y"], cluster="pid")
    res = group_tests(frame, "y", n_perm=199, n_boot=0).set_index("attribute")
    assert res.loc["c", "p_value"] < 0.01  # confounded with 'a' by the design
    assert any("'a' and 'c'" in w and "marginal" in w for w in res.attrs["warnings"])
    independent = switching_frame(n_clusters=40, per=30, seed=9, same_subsets=False)
    res = group_tests(independent, "y", n_perm=99, n_boot=0)
    assert not any("marginal" in w for w in res.attrs["warnings"])

"""Effect vs. prevalence: a planted strong-but-rare attribute is strong per instance and weak
in the population; effects match statsmodels; GLM marginal effects are used when given."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from studies.errors import StudyInputError
from studies.frame import AnalysisFrame
from studies.prevalence import effect_vs_prevalence


def make_frame(
    *,
    n_clusters: int = 600,
    per: int = 4,
    probs: dict[str, list[float]],
    effects: dict[str, dict[int, float]],
    seed: int = 0,
) -> AnalysisFrame:
    """Identity-level attributes drawn with given level probabilities, planted shifts."""
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(n_clusters), per)
    data: dict[str, object] = {}
    lin = np.zeros(n_clusters)
    for g, p in probs.items():
        lv = rng.choice(len(p), size=n_clusters, p=p)
        for level, shift in effects.get(g, {}).items():
            lin += shift * (lv == level)
        cats = [f"{g}{i}" for i in range(len(p))]
        data[g] = pd.Categorical(np.asarray(cats)[lv][pid], categories=cats)
    y = 0.5 + lin[pid] + rng.normal(0, 0.05, n_clusters)[pid] + rng.normal(0, 0.1, len(pid))
    data["ap"], data["pid"] = y, pid
    df = pd.DataFrame(data)
    return AnalysisFrame(
        data=df,
        outcomes=["ap"],
        groups=list(probs),
        group_columns={g: [g] for g in probs},
        cluster="pid",
        rows_read=len(df),
    )


PROBS = {"gender": [0.5, 0.5], "hat": [0.95, 0.05], "age": [0.4, 0.3, 0.3]}
#: a hat costs 0.3 AP but 5% wear one; gender moves AP by 0.05 for half the people
EFFECTS = {"hat": {1: -0.3}, "gender": {1: 0.05}}


@pytest.fixture(scope="module")
def planted() -> AnalysisFrame:
    return make_frame(probs=PROBS, effects=EFFECTS)


def test_strong_but_rare_hat_is_strong_per_instance_and_weak_in_population(planted):
    t = effect_vs_prevalence(
        planted, "ap", importance=pd.Series({"hat": 0.01, "gender": 0.02, "age": 0.0})
    )
    row = t.set_index(["attribute", "level"])
    hat, gender = row.loc[("hat", "hat1")], row.loc[("gender", "gender1")]
    assert hat["per_instance_effect"] == pytest.approx(-0.3, abs=0.03)
    assert hat["effect_ci_low"] < -0.3 < hat["effect_ci_high"]
    assert gender["per_instance_effect"] == pytest.approx(0.05, abs=0.02)
    assert abs(hat["per_instance_effect"]) > 3 * abs(gender["per_instance_effect"])
    assert hat["population_importance"] < gender["population_importance"]
    assert hat["per_instance_rank"] == 1 and hat["population_rank"] == 2
    assert hat["note"].startswith("strong but rare")
    assert "'hat1' in" in hat["note"]
    assert gender["note"] == "" and row.loc[("hat", "hat0"), "note"] == "reference level"
    assert row.loc[("age", "age1"), "note"] == ""  # no effect, nothing to flag
    assert hat["importance"] == 0.01 and gender["importance"] == 0.02
    assert (t["effect_source"].isin(["reference", "linear_model"])).all()


def test_prevalence_counts_rows_and_clusters(planted):
    t = effect_vs_prevalence(planted, "ap").set_index(["attribute", "level"])
    d = planted.data
    for g in planted.groups:
        rows = d[g].value_counts(normalize=True)
        clusters = d.groupby(g, observed=False)["pid"].nunique() / d["pid"].nunique()
        for level in d[g].cat.categories:
            assert t.at[(g, level), "prevalence"] == pytest.approx(rows[level])
            assert t.at[(g, level), "prevalence_clusters"] == pytest.approx(clusters[level])
            assert t.at[(g, level), "n"] == (d[g] == level).sum()
    assert t.groupby(level=0)["prevalence"].sum().to_numpy() == pytest.approx(1.0)


def test_adjusted_effects_match_statsmodels_cluster_robust_ols(planted):
    import statsmodels.api as sm

    t = effect_vs_prevalence(planted, "ap").set_index(["attribute", "level"])
    x = pd.get_dummies(planted.data[planted.groups], drop_first=True).astype(float)
    fit = sm.OLS(planted.data["ap"], sm.add_constant(x)).fit(
        cov_type="cluster", cov_kwds={"groups": planted.data["pid"]}
    )
    ci = fit.conf_int()
    for name in x.columns:
        g, level = name.split("_", 1)
        assert t.at[(g, level), "per_instance_effect"] == pytest.approx(fit.params[name], abs=1e-10)
        assert t.at[(g, level), "effect_ci_low"] == pytest.approx(ci.loc[name, 0], rel=1e-6)
        assert t.at[(g, level), "effect_ci_high"] == pytest.approx(ci.loc[name, 1], rel=1e-6)
    raw = planted.data.groupby("hat", observed=False)["ap"].mean()
    assert t.at[("hat", "hat1"), "raw_difference"] == pytest.approx(raw["hat1"] - raw["hat0"])


def test_glm_average_marginal_effects_are_used_when_given(planted):
    glm = pd.DataFrame(
        {
            "attribute": ["hat", "gender", "age", "age"],
            "level": ["hat1", "gender1", "age1", "age2"],
            "coef": [-1.5, 0.2, 0.0, 0.0],  # link scale: not what we want
            "ame": [-0.25, 0.04, np.nan, 0.001],
            "ame_ci_low": [-0.3, 0.02, np.nan, -0.01],
            "ame_ci_high": [-0.2, 0.06, np.nan, 0.012],
        }
    )
    t = effect_vs_prevalence(planted, "ap", glm_coefficients=glm).set_index(["attribute", "level"])
    assert t.at[("hat", "hat1"), "per_instance_effect"] == -0.25
    assert t.at[("hat", "hat1"), "effect_source"] == "glm_ame"
    assert t.at[("hat", "hat1"), "population_importance"] == pytest.approx(
        0.25 * t.at[("hat", "hat1"), "prevalence"]
    )
    assert t.at[("age", "age2"), "effect_ci_high"] == 0.012
    # a level the GLM could not estimate falls back to the linear model, and says so
    assert t.at[("age", "age1"), "effect_source"] == "linear_model"
    with pytest.raises(StudyInputError, match="no 'level' column"):
        effect_vs_prevalence(planted, "ap", glm_coefficients=glm.drop(columns="level"))


def test_level_seen_in_few_clusters_is_not_flagged(planted):
    """A level worn by 2 identities gets a huge effect and a collapsed cluster-robust CI; it
    must be marked unreliable, not sold as 'strong but rare'."""
    d = planted.data.copy()
    few = d["pid"].isin([0, 1])
    d["odd"] = pd.Categorical(np.where(few, "odd1", "odd0"), categories=["odd0", "odd1"])
    d.loc[few, "ap"] += 0.4
    fr = AnalysisFrame(
        data=d,
        outcomes=["ap"],
        groups=[*planted.groups, "odd"],
        group_columns={**planted.group_columns, "odd": ["odd"]},
        cluster="pid",
    )
    t = effect_vs_prevalence(fr, "ap").set_index(["attribute", "level"])
    odd = t.loc[("odd", "odd1")]
    assert odd["n_clusters"] == 2 and not odd["reliable"]
    assert odd["per_instance_effect"] == pytest.approx(0.4, abs=0.15)
    assert odd["note"] == "only 2 clusters at this level: its effect and CI are not reliable"
    assert t.loc[("hat", "hat1"), "note"].startswith("strong but rare")  # still the hat
    assert t.loc[("hat", "hat1"), "per_instance_rank"] == 1

"""studies.compare on stacked tables with planted arm x group interactions and seed noise.

Known answers: a planted interaction is found with its sign and inside its CI; arms that differ
only in seed hold the family-wise alpha; with seed-level random effects the seed-aware test holds
alpha where the identity-only one does not; tau-b equals scipy's on the point estimates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import expit

import studies
from studies.errors import StudyInputError
from tests.test_compare_null import GROUPS as NULL_GROUPS
from tests.test_compare_null import delta_tables

GROUPS = ("gender", "hat", "bag", "upcolor")
COLOURS = ("black", "white", "red", "blue")


def _world(n_id: int, rng: np.random.Generator) -> pd.DataFrame:
    """One query table: identity-level attributes (as in the real annotations), 1-5 queries."""
    sizes = rng.integers(1, 6, n_id)
    pid = np.repeat(np.arange(n_id), sizes)
    attrs = {
        "gender": rng.choice(["male", "female"], n_id),
        "hat": rng.choice(["no", "yes"], n_id, p=[0.7, 0.3]),
        "bag": rng.choice(["no", "yes"], n_id),
        "upcolor": rng.choice(COLOURS, n_id),
    }
    df = pd.DataFrame({"pid": pid, "query": np.arange(len(pid))})
    for k, v in attrs.items():
        df[k] = v[pid]
    df["u"] = rng.normal(0, 0.8, n_id)[pid] + rng.normal(0, 0.5, len(pid))
    return df


def _x(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per group the 0/1 indicator the planted effect applies to (upcolor: red)."""
    return {
        "gender": (df["gender"] == "female").to_numpy(float),
        "hat": (df["hat"] == "yes").to_numpy(float),
        "bag": (df["bag"] == "yes").to_numpy(float),
        "upcolor": (df["upcolor"] == "red").to_numpy(float),
    }


def stacked(
    arms: dict[str, dict[str, float]],
    *,
    n_seeds: int = 1,
    seed_sd: float = 0.0,
    n_id: int = 300,
    seed: int = 0,
) -> pd.DataFrame:
    """Every arm x seed evaluated on the same queries; ap = expit(latent) with the arm's planted
    logit effects, a per-(seed, group) random effect of sd ``seed_sd`` and row noise."""
    rng = np.random.default_rng(seed)
    base = _world(n_id, rng)
    x = _x(base)
    parts = []
    for arm, eff in arms.items():
        for s in range(n_seeds):
            lat = 0.5 + base["u"].to_numpy() + rng.normal(0, 0.3, len(base))
            for g in GROUPS:
                lat = lat + (eff.get(g, 0.0) + rng.normal(0, seed_sd)) * x[g]
            part = base.drop(columns="u").assign(ap=expit(lat), backbone=arm, seed=s)
            parts.append(part)
    return pd.concat(parts, ignore_index=True)


def run(df: pd.DataFrame, **kw) -> studies.ComparisonResult:
    kw.setdefault("n_boot", 200)
    return studies.compare(df, by="backbone", outcome="ap", cluster="pid", exclude=["query"], **kw)


def test_planted_interaction_found_with_sign_and_ci() -> None:
    strong = {"upcolor": 1.2, "gender": 0.3}
    df = stacked({"vit": strong, "dino": {"gender": 0.3}}, n_id=400, seed=1)
    res = run(df)
    d = res.differences.set_index("attribute")
    up = d.loc["upcolor"]
    assert up["level"] == "red"
    assert up["verdict"] == "differs" and up["difference"] > 0 and up["p_holm"] < 0.01
    # truth on the outcome scale: the same contrast computed from the generating logits
    tru = _true_contrast(df, "vit") - _true_contrast(df, "dino")
    assert up["ci_low"] < tru < up["ci_high"]
    assert (d.drop(index="upcolor")["verdict"] != "differs").all()
    assert res.summary[0].startswith("vit relies on upcolor (red)")
    assert any("one training run" in s for s in res.summary)
    e = res.effects.set_index(["arm", "attribute"])
    assert e.loc[("vit", "upcolor"), "effect"] > 0.1 > abs(e.loc[("dino", "upcolor"), "effect"])


def _true_contrast(df: pd.DataFrame, arm: str) -> float:
    sub = df[df["backbone"] == arm]
    red = sub["upcolor"] == "red"
    return float(sub.loc[red, "ap"].mean() - sub.loc[~red, "ap"].mean())


def test_kendall_tau_equals_scipy_on_point_estimates() -> None:
    df = stacked({"a": {"upcolor": 0.8, "hat": -0.4}, "b": {"gender": 0.5}}, n_id=200, seed=2)
    res = run(df)
    e = res.effects.pivot(index="attribute", columns="arm", values="effect")
    row = res.agreement[res.agreement["kind"] == "between arms"].iloc[0]
    assert row["kendall_tau"] == pytest.approx(stats.kendalltau(e["a"], e["b"]).statistic)
    assert row["spearman_rho"] == pytest.approx(stats.spearmanr(e["a"], e["b"]).statistic)
    assert -1 <= row["tau_low"] <= row["tau_high"] <= 1
    assert row["tau_one_run"] == pytest.approx(row["kendall_tau"])  # one run per arm


def test_seeds_give_seed_level_test_and_between_seed_baseline() -> None:
    df = stacked({"a": {"upcolor": 1.0}, "b": {}}, n_seeds=3, seed_sd=0.05, n_id=300, seed=3)
    res = run(df, seed="seed")
    d = res.differences
    assert (d["test"] == "seeds and identities (t)").all()
    # Satterthwaite: between the seed-level df (4) and the identities' (299)
    assert ((d["df"] >= 4) & (d["df"] <= 299)).all()
    assert np.allclose(d["std_err"] ** 2, d["se_seeds"] ** 2 + d["se_identities"] ** 2)
    up = res.differences.set_index("attribute").loc["upcolor"]
    assert up["verdict"] == "differs" and up["difference"] > 0
    assert set(res.agreement["kind"]) == {"between arms", "between seeds"}
    assert not any("one training run" in s for s in res.summary)
    assert (res.effects["n_seeds"] == 3).all()


def _rejections(n_tables: int, *, seed_sd: float, use_seed: bool, start: int) -> float:
    """Share of tables where any group 'differs' between two arms that differ only in seed."""
    same = {"upcolor": 0.6, "gender": 0.3}
    hits = 0
    for t in range(n_tables):
        df = stacked({"a": same, "b": same}, n_seeds=3, seed_sd=seed_sd, n_id=120, seed=start + t)
        res = run(df, seed="seed" if use_seed else None, n_boot=20)
        hits += bool((res.differences["verdict"] == "differs").any())
    return hits / n_tables


def test_seed_only_arms_hold_alpha_familywise() -> None:
    # 50 tables: 0 to 5 false findings expected at 5 %; 9+ is p < 0.01 under Binomial(50, .05)
    assert _rejections(50, seed_sd=0.0, use_seed=True, start=100) <= 8 / 50


@pytest.mark.slow
def test_seed_only_arms_hold_alpha_familywise_large() -> None:
    rate = _rejections(800, seed_sd=0.0, use_seed=True, start=1000)
    assert rate <= 0.05 + 2.6 * np.sqrt(0.05 * 0.95 / 800)


def test_seed_variation_breaks_identity_only_test_not_seed_aware() -> None:
    """Seed-level random effects (sd 0.3 on the logit scale, per seed and group): pooling seeds
    and testing at the identity level ignores them and rejects far above alpha; the seed-level
    t test keeps them in its null distribution."""
    naive = _rejections(30, seed_sd=0.3, use_seed=False, start=500)
    aware = _rejections(30, seed_sd=0.3, use_seed=True, start=500)
    assert naive >= 0.3
    assert aware <= 6 / 30


@pytest.mark.slow
def test_seed_variation_seed_aware_holds_alpha_large() -> None:
    aware = _rejections(600, seed_sd=0.3, use_seed=True, start=3000)
    assert aware <= 0.05 + 2.6 * np.sqrt(0.05 * 0.95 / 600)


def test_bad_input_one_sentence() -> None:
    df = stacked({"a": {}, "b": {}}, n_id=40)
    with pytest.raises(StudyInputError, match="no column 'arm'"):
        studies.compare(df, by="arm", outcome="ap", cluster="pid")
    with pytest.raises(StudyInputError, match="one arm only"):
        studies.compare(
            df[df["backbone"] == "a"], by="backbone", outcome="ap", cluster="pid", exclude=["query"]
        )
    # disjoint attribute levels: arm a only ever sees male, arm b only female, etc.
    only = df[((df["backbone"] == "a") & (df["gender"] == "male"))
              | ((df["backbone"] == "b") & (df["gender"] == "female"))]  # fmt: skip
    only = only[["pid", "gender", "ap", "backbone"]]
    with pytest.raises(StudyInputError, match="share no attribute group"):
        studies.compare(only, by="backbone", outcome="ap", cluster="pid")


def test_import_studies_stays_lazy() -> None:
    import subprocess
    import sys

    code = "import sys, studies; assert 'studies.comparison' not in sys.modules; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_compare_and_its_report_run_without_torch(tmp_path) -> None:
    """The acceptance line: studies.compare on a stacked table, and its report, like
    studies.analyze, never load torch."""
    import subprocess
    import sys

    table = stacked({"a": {"hat": 0.7}, "b": {}}, n_id=60, seed=2)
    table.to_csv(tmp_path / "stacked.csv", index=False)
    code = (
        "import sys, studies\n"
        f"r = studies.compare({str(tmp_path / 'stacked.csv')!r}, by='backbone', outcome='ap', "
        "cluster='pid', exclude=['query'], n_boot=20)\n"
        f"studies.write_comparison_report(r, {str(tmp_path / 'out')!r})\n"
        "assert 'torch' not in sys.modules, 'torch was loaded'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "out" / "report.html").is_file()


@pytest.mark.parametrize("paired", [True, False])
def test_identity_wald_matches_statsmodels_cluster_interaction(paired: bool) -> None:
    """One run per arm: the difference is the arm x hat interaction of an OLS on the stacked
    table with every group's levels, all interacted with the arm (each arm's effect adjusted for
    the other groups), and its std_err statsmodels' cluster-robust (by identity) one, up to
    statsmodels' (N - 1) / (N - K) factor that the delta method does not apply. Unpaired: the
    arms' identities are disjoint (two datasets), so nothing cancels."""
    import statsmodels.formula.api as smf

    df = stacked({"a": {"hat": 0.7}, "b": {}}, n_id=150, seed=4)
    if not paired:
        df["pid"] = df["pid"] + np.where(df["backbone"] == "b", 10_000, 0)
    res = run(df)
    row = res.differences.set_index("attribute").loc["hat"]
    assert row["level"] == "yes"
    d = df.assign(arm=(df["backbone"] == "a").astype(float))
    formula = "ap ~ (C(gender) + C(hat) + C(bag) + C(upcolor)) * arm"
    fit = smf.ols(formula, data=d).fit(cov_type="cluster", cov_kwds={"groups": d["pid"]})
    term = "C(hat)[T.yes]:arm"
    n, k = len(d), len(fit.params)
    assert row["difference"] == pytest.approx(fit.params[term], rel=1e-7)
    assert row["std_err"] == pytest.approx(fit.bse[term] * np.sqrt((n - k) / (n - 1)), rel=1e-5)


def test_levels_mode_effects_are_adjusted_for_correlated_groups() -> None:
    """A hat interaction planted on identities whose bag is correlated with their hat: raw
    differences of means would show a bag interaction too; the adjusted effects find hat only,
    and each arm's multi-level effect is the OLS contrast of its headline level against the
    others' pooled shares (checked against statsmodels on one arm)."""
    import statsmodels.formula.api as smf

    df = stacked({"a": {"hat": 1.2}, "b": {}}, n_seeds=3, seed_sd=0.05, n_id=300, seed=11)
    # bag copies hat for 70 % of identities: strongly correlated groups
    rng = np.random.default_rng(0)
    copy = rng.random(df["pid"].max() + 1) < 0.7
    df["bag"] = np.where(copy[df["pid"]], df["hat"], df["bag"])
    res = run(df, seed="seed")
    diffs = res.differences.set_index("attribute")
    assert diffs.loc["hat", "verdict"] == "differs"
    assert diffs.loc["bag", "verdict"] != "differs"
    raw = {}
    for arm in ("a", "b"):
        sub = df[df["backbone"] == arm]
        raw[arm] = (
            sub.loc[sub["bag"] == "yes", "ap"].mean() - sub.loc[sub["bag"] == "no", "ap"].mean()
        )
    assert abs(raw["a"] - raw["b"]) > 5 * abs(diffs.loc["bag", "difference"])  # raw would mislead
    eff = res.effects.set_index(["arm", "attribute"])
    one = df[(df["backbone"] == "b") & (df["seed"] == 0)]
    fit = smf.ols("ap ~ C(gender) + C(hat) + C(bag) + C(upcolor)", data=one).fit()
    level = diffs.loc["upcolor", "level"]
    coef = {c: fit.params.get(f"C(upcolor)[T.{c}]", 0.0) for c in COLOURS}
    rest = one.loc[one["upcolor"] != level, "upcolor"]
    pooled_rest = df.loc[df["upcolor"] != level, "upcolor"].value_counts(normalize=True)
    expected = coef[level] - sum(pooled_rest.get(c, 0.0) * coef[c] for c in COLOURS)
    seed0 = run(df[df["seed"] == 0]).effects.set_index(["arm", "attribute"])
    assert len(rest) > 0
    assert seed0.loc[("b", "upcolor"), "effect"] == pytest.approx(expected, rel=1e-6)
    assert eff.loc[("b", "hat"), "effect"] == pytest.approx(eff.loc[("b", "hat"), "effect"])


def test_seed_test_equals_scipy_ttest_on_seed_effects() -> None:
    """With seeds, p_interaction is scipy's pooled two-sample t test on each seed's adjusted
    effect (computed here with statsmodels' OLS from the raw rows)."""
    df = stacked({"a": {"bag": 0.5}, "b": {}}, n_seeds=3, seed_sd=0.2, n_id=150, seed=6)
    res = run(df, seed="seed")
    row = res.differences.set_index("attribute").loc["bag"]

    import statsmodels.formula.api as smf

    sign = 1.0 if row["level"] == "yes" else -1.0  # the headline level against the other one

    def seed_effects(arm: str) -> list[float]:
        """Each seed's bag effect adjusted for the other groups (statsmodels' OLS)."""
        out = []
        for _, sub in df[df["backbone"] == arm].groupby("seed"):
            fit = smf.ols("ap ~ C(gender) + C(hat) + C(bag) + C(upcolor)", data=sub).fit()
            out.append(sign * fit.params["C(bag)[T.yes]"])
        return out

    ref = stats.ttest_ind(seed_effects("a"), seed_effects("b"), equal_var=True)
    # the seed component is scipy's pooled t test's standard error; the test adds the identities'
    se_seeds = abs(row["difference"] / ref.statistic)
    assert row["se_seeds"] == pytest.approx(se_seeds, rel=1e-6)
    v_s, v_i = se_seeds**2, row["se_identities"] ** 2
    dof = (v_s + v_i) ** 2 / (v_s**2 / 4 + v_i**2 / 149)
    t = abs(row["difference"]) / np.sqrt(v_s + v_i)
    assert row["df"] == pytest.approx(dof, rel=1e-6)
    assert row["p_interaction"] == pytest.approx(2 * stats.t.sf(t, dof), rel=1e-6)
    assert row["difference"] == pytest.approx(
        np.mean(seed_effects("a")) - np.mean(seed_effects("b"))
    )


def test_rows_without_an_arm_are_dropped() -> None:
    df = stacked({"a": {"hat": 0.5}, "b": {}}, n_id=80, seed=7)
    with_nan = pd.concat([df, df.head(30).assign(backbone=np.nan)], ignore_index=True)
    assert list(run(with_nan).arms) == ["a", "b"]


def test_reads_a_file_path(tmp_path) -> None:
    df = stacked({"a": {"upcolor": 1.2}, "b": {}}, n_id=200, seed=8)
    path = tmp_path / "stacked.csv"
    df.to_csv(path, index=False)
    res = studies.compare(path, by="backbone", outcome="ap", cluster="pid", exclude=["query"])
    assert res.differences.set_index("attribute").loc["upcolor", "verdict"] == "differs"


# ---- the paired-effects mode (group=): a study's delta tables, stacked ---------------------


def _deltas(shifts: dict, **kw) -> pd.DataFrame:
    return delta_tables(shifts, **kw)


def _run_groups(df: pd.DataFrame, **kw) -> studies.ComparisonResult:
    kw.setdefault("n_boot", 200)
    kw.setdefault("relative_to", "all experts")
    return studies.compare(df, by="arm", outcome="delta_ap", cluster="pid", group="group", **kw)


def test_group_mode_effects_are_plain_means_and_relative_is_effect_over_gain() -> None:
    df = _deltas({"a": {"upcolor": 0.05}, "b": {}}, n_seeds=3, seed=11)
    res = _run_groups(df, seed="seed")
    assert res.mode == "groups" and res.paired and res.unshared == {}
    # an arm's effect: the mean over its seeds of each seed's mean Δ over the group's rows
    cell = df.groupby(["arm", "seed", "group"])["delta_ap"].mean()
    truth = cell.groupby(["arm", "group"]).mean()
    e = res.effects.set_index(["arm", "attribute"])
    assert "all experts" not in set(res.effects["attribute"])
    for (arm, g), row in e.iterrows():
        assert row["effect"] == pytest.approx(truth[(arm, g)], rel=1e-12, abs=1e-15)
        assert row["level"] is None and row["n_seeds"] == 3
    gains = res.gains.set_index("arm")["gain"]
    for arm in ("a", "b"):
        assert gains[arm] == pytest.approx(truth[(arm, "all experts")], rel=1e-12)
        rel = e.loc[arm, "relative"]
        assert np.allclose(rel, e.loc[arm, "effect"] / gains[arm], rtol=1e-12)
    d = res.differences.set_index("attribute")
    assert np.allclose(d["relative_a"], d["effect_a"] / gains["a"], rtol=1e-12)
    assert np.allclose(d["relative_b"], d["effect_b"] / gains["b"], rtol=1e-12)
    assert d.loc["upcolor", "verdict"] == "differs" and d.loc["upcolor", "difference"] > 0
    up = e.loc[("a", "upcolor")]
    assert up["relative_low"] < up["relative"] < up["relative_high"]
    assert (res.gains["n_seeds"] == 3).all() and res.gains["ci_low"].lt(res.gains["gain"]).all()
    # the answer gives both relative effects, and compares the oracle gains
    first = res.summary[0]
    assert first.startswith("a relies on upcolor more than b") and "oracle gain against" in first
    assert any(s.startswith("Oracle gain (all experts)") for s in res.summary)
    # the oracle gain is not part of the interaction family
    assert len(res.differences) == 12 and res.differences["p_holm"].notna().all()


def test_group_mode_seed_test_equals_scipy_ttest_on_seed_means() -> None:
    df = _deltas({"a": {"hair": 0.03}, "b": {}}, n_seeds=3, seed=12)
    res = _run_groups(df, seed="seed")
    row = res.differences.set_index("attribute").loc["hair"]
    cell = df[df["group"] == "hair"].groupby(["arm", "seed"])["delta_ap"].mean()
    ref = stats.ttest_ind(cell["a"], cell["b"], equal_var=True)
    assert row["test"] == "seeds and identities (t)"
    assert row["se_seeds"] == pytest.approx(abs(row["difference"] / ref.statistic), rel=1e-8)
    # the identity component: the one-run Wald of the seed-pooled rows (every seed of an arm
    # reads the same queries, so pooling them is one run with each query counted n_seeds times)
    pooled = _run_groups(df.drop(columns="seed")).differences.set_index("attribute").loc["hair"]
    assert row["se_identities"] == pytest.approx(pooled["std_err"], rel=1e-8)
    assert row["std_err"] ** 2 == pytest.approx(row["se_seeds"] ** 2 + pooled["std_err"] ** 2)


@pytest.mark.parametrize("paired", [True, False])
def test_group_mode_identity_wald_matches_statsmodels_cluster_se(paired: bool) -> None:
    """One run per arm: a group's difference is the arm coefficient of an OLS of its rows on
    the arm, and its std_err statsmodels' cluster-robust (by identity) one up to the
    (N - 1) / (N - K) factor; unpaired: the arms' identities are disjoint (two datasets)."""
    import statsmodels.formula.api as smf

    df = _deltas({"a": {"bag": 0.02}, "b": {}}, n_seeds=1, seed=13)
    if not paired:
        df["pid"] = df["pid"] + np.where(df["arm"] == "b", 10_000, 0)
    res = _run_groups(df)
    assert res.paired is paired
    d = res.differences.set_index("attribute")
    for g in ("gender", "bag"):
        row = d.loc[g]
        sub = df[df["group"] == g].assign(is_a=lambda x: (x["arm"] == "a").astype(float))
        fit = smf.ols("delta_ap ~ is_a", data=sub).fit(
            cov_type="cluster", cov_kwds={"groups": sub["pid"]}
        )
        n, k = len(sub), 2
        assert row["test"] == "identities (CR1 Wald)"
        assert row["difference"] == pytest.approx(fit.params["is_a"], rel=1e-9)
        assert row["std_err"] == pytest.approx(
            fit.bse["is_a"] * np.sqrt((n - k) / (n - 1)), rel=1e-6
        )
    assert any("include training noise" in s for s in res.summary)


def test_group_mode_compares_shared_groups_and_names_the_others() -> None:
    df = _deltas({"a": {}, "b": {}}, n_seeds=2, seed=14)
    df = df[~((df["arm"] == "b") & df["group"].isin(["hat", "up"]))]
    res = _run_groups(df, seed="seed")
    assert res.unshared == {"a": ["up", "hat"]}
    assert set(res.differences["attribute"]) == set(NULL_GROUPS) - {"hat", "up"}
    assert any(s.startswith("Not compared") and "up, hat (only in a)" in s for s in res.summary)


def test_to_dict_is_json_with_nan_as_none() -> None:
    import json

    df = _deltas({"a": {}, "b": {}}, n_seeds=1, seed=15)
    res = _run_groups(df)
    out = res.to_dict()
    text = json.dumps(out, allow_nan=False)  # raises on NaN / inf
    back = json.loads(text)
    assert back["paired"] is True and back["arms"] == ["a", "b"] and back["mode"] == "groups"
    assert back["effects"][0]["seed_sd"] is None  # one run: no seed-to-seed sd
    assert {r["arm"] for r in back["gains"]} == {"a", "b"}
    assert back["summary"] == res.summary and back["unshared"] == {}
    levels = run(stacked({"a": {"hat": 0.5}, "b": {}}, n_id=60, seed=16)).to_dict()
    assert levels["mode"] == "levels" and levels["gains"] == [] and levels["paired"] is True
    json.dumps(levels, allow_nan=False)


def test_group_mode_bad_input_one_sentence() -> None:
    df = _deltas({"a": {}, "b": {}}, n_seeds=1, n_id=40, seed=17)

    def go(data: pd.DataFrame, **kw) -> None:
        kw.setdefault("group", "group")
        studies.compare(data, by="arm", outcome="delta_ap", cluster="pid", **kw)

    cases = [
        (dict(group="grp"), "no column 'grp' \\(given as the group column\\)"),
        (
            dict(relative_to="oracle"),
            "relative_to='oracle' is not a value of column 'group' in arm 'a'",
        ),
        (dict(group=None, relative_to="all experts"), "give group= too"),
        (dict(schema="market1501"), "leave schema out"),
        (dict(group="arm"), "both the arm \\(by\\) and the group column"),
    ]
    for kw, msg in cases:
        with pytest.raises(StudyInputError, match=msg):
            go(df, **kw)
    no_gain_b = df[~((df["arm"] == "b") & (df["group"] == "all experts"))]
    with pytest.raises(StudyInputError, match="in arm 'b'; every arm"):
        go(no_gain_b, relative_to="all experts")
    numeric = df.assign(group=df["group"].where(df["group"] != "hat", 7))
    with pytest.raises(StudyInputError, match="holds 7 \\(int\\), not a group name"):
        go(numeric)
    missing = df.assign(group=df["group"].where(df["group"] != "hat", None))
    with pytest.raises(StudyInputError, match="'group' \\(the group column\\) has missing values"):
        go(missing)
    with pytest.raises(StudyInputError, match="'delta_ap' \\(the outcome\\) is not numeric"):
        go(df.assign(delta_ap=df["delta_ap"].astype(str)))
    disjoint = df[((df["arm"] == "a") & df["group"].isin(["hat", "all experts"]))
                  | ((df["arm"] == "b") & (df["group"] == "bag"))]  # fmt: skip
    with pytest.raises(StudyInputError, match="no group to compare"):
        go(disjoint)
    for msg in [m for _, m in cases]:
        assert "\n" not in msg


def test_vectorised_rank_agreement_equals_scipy_with_ties_and_nans() -> None:
    from studies.comparison import _rank_pairs

    rng = np.random.default_rng(18)
    x = rng.normal(size=(60, 12))
    y = x + rng.normal(size=(60, 12))
    x[1, 3] = x[1, 4]  # a tie
    x[2] = np.round(x[2])  # many ties
    y[3] = 1.0  # constant: undefined
    x[4, 5] = np.nan  # left out, as scipy on the finite pairs
    got = _rank_pairs(x, y)
    for i in range(len(x)):
        ok = np.isfinite(x[i]) & np.isfinite(y[i])
        if i == 3:
            assert np.isnan(got[i]).all()
            continue
        assert got[i, 0] == pytest.approx(stats.kendalltau(x[i, ok], y[i, ok]).statistic)
        assert got[i, 1] == pytest.approx(stats.spearmanr(x[i, ok], y[i, ok]).statistic)


def test_group_mode_unpaired_datasets_with_different_schemas() -> None:
    """Two datasets: disjoint identities and each with a group the other lacks; three arms."""
    a = _deltas({"market": {}}, n_seeds=1, seed=19)
    b = _deltas({"duke": {"upcolor": 0.06}}, n_seeds=1, seed=20)
    c = _deltas({"duke2": {}}, n_seeds=1, seed=20)
    b["pid"] += 10_000
    c["pid"] += 10_000
    df = pd.concat([a[a["group"] != "hat"], b[b["group"] != "up"], c[c["group"] != "up"]])
    res = _run_groups(df)
    assert res.paired is True  # duke and duke2 share identities
    assert res.unshared == {"market": ["up"], "duke": ["hat"], "duke2": ["hat"]}
    assert len(res.differences) == 3 * 10
    d = res.differences.set_index(["attribute", "arm_a", "arm_b"])
    assert d.loc[("upcolor", "duke", "duke2"), "verdict"] == "differs"
    two = _run_groups(df[df["arm"] != "duke2"])
    assert two.paired is False and two.unshared == {"market": ["up"], "duke": ["hat"]}


def test_relative_interval_left_empty_when_the_gain_may_be_zero() -> None:
    df = _deltas({"a": {"all experts": -0.1}, "b": {}}, n_seeds=2, seed=21)  # a's gain ~ 0
    res = _run_groups(df, seed="seed")
    g = res.gains.set_index("arm")
    assert g.loc["a", "ci_low"] < 0 < g.loc["a", "ci_high"]
    e = res.effects.set_index("arm")
    assert e.loc["a", "relative_low"].isna().all() and e.loc["a", "relative"].notna().all()
    assert e.loc["b", "relative_low"].notna().all()

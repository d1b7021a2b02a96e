"""studies.glm against statsmodels' own fits of the same design (written independently here,
through the formula API on the uncollapsed rows), hand-computed Wald tests, planted effects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.multitest import multipletests

from studies.design import build_analysis_frame, spec_from_toml
from studies.errors import StudyInputError
from studies.glm import detect_family, fit_glm
from studies.simulate import market_like_schema_toml, simulate_reid_table

SPEC = spec_from_toml(market_like_schema_toml())
OTHER = ["query", "camid"]


def _frame(
    n_rows=4000,
    n_id=200,
    effects=None,
    seed=0,
    cluster="pid",
    outcomes=("ap", "rank1", "first_hit"),
):
    df = simulate_reid_table(n_rows, n_identities=n_id, effects=effects, seed=seed, outcome="all")
    excl = OTHER + [o for o in ("ap", "rank1", "first_hit") if o not in outcomes]
    if cluster is None:
        excl = excl + ["pid"]
    return build_analysis_frame(
        df, outcomes=list(outcomes), cluster=cluster, exclude=excl, spec=SPEC
    )


def _formula(frame, outcome, groups=None):
    groups = frame.groups if groups is None else groups
    terms = [f'C({g}, Treatment(reference="{frame.levels(g)[0]}"))' for g in groups]
    return f"{outcome} ~ " + " + ".join(terms)


def _statsmodels_names(frame, groups=None):
    """Our (attribute, level) rows in the formula API's coefficient names."""
    groups = frame.groups if groups is None else groups
    names = []
    for g in groups:
        ref = frame.levels(g)[0]
        for lv in frame.levels(g)[1:]:
            names.append(f'C({g}, Treatment(reference="{ref}"))[T.{lv}]')
    return names


@pytest.fixture(scope="module")
def clustered():
    return _frame(effects={"backpack": 0.6, "upcolor": 0.5}, seed=11)


@pytest.mark.parametrize(
    ("outcome", "family", "sm_family"),
    [
        ("ap", "fractional_logit", sm.families.Binomial()),
        ("rank1", "logit", sm.families.Binomial()),
        ("first_hit", "poisson", sm.families.Poisson()),
    ],
)
def test_cluster_robust_fit_equals_statsmodels(clustered, outcome, family, sm_family):
    frame = clustered
    res = fit_glm(frame, outcome, cov_type="CR1")
    assert res.family == family
    assert res.n_obs == frame.rows_used and res.n_clusters == frame.data["pid"].nunique()
    ref = smf.glm(_formula(frame, outcome), frame.data, family=sm_family).fit(
        cov_type="cluster", cov_kwds={"groups": pd.factorize(frame.data["pid"])[0]}
    )
    ours = res.coefficients.set_index(pd.Index(_statsmodels_names(frame)))
    est = ours["coef"].notna()
    assert est.sum() >= len(ours) - 1
    names = ours.index[est]
    np.testing.assert_allclose(ours.loc[names, "coef"], ref.params[names], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ours.loc[names, "std_err"], ref.bse[names], rtol=1e-6)
    assert res.intercept == pytest.approx(ref.params["Intercept"], rel=1e-6)
    assert "cluster-robust CR1" in res.covariance


@pytest.mark.parametrize(
    ("outcome", "family", "cov_type"),
    [("ap", "fractional_logit", "HC0"), ("rank1", "logit", "nonrobust"), ("ap", "gaussian", "HC0")],
)
def test_unclustered_covariance_equals_statsmodels(outcome, family, cov_type):
    frame = _frame(n_rows=3000, n_id=300, effects={"hat": 0.8}, seed=5, cluster=None)
    res = fit_glm(
        frame, outcome, family=family, cov_type="model" if cov_type == "nonrobust" else cov_type
    )
    sm_family = sm.families.Gaussian() if family == "gaussian" else sm.families.Binomial()
    ref = smf.glm(_formula(frame, outcome), frame.data, family=sm_family).fit(cov_type=cov_type)
    ours = res.coefficients.set_index(pd.Index(_statsmodels_names(frame)))
    names = ours.index[ours["coef"].notna()]
    np.testing.assert_allclose(ours.loc[names, "coef"], ref.params[names], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ours.loc[names, "std_err"], ref.bse[names], rtol=1e-6)
    if family == "gaussian":  # the mean difference is the coefficient and the AME
        np.testing.assert_allclose(ours.loc[names, "ame"], ours.loc[names, "coef"], rtol=1e-9)


def test_hc2_equals_statsmodels_ols_hc2():
    frame = _frame(n_rows=2000, n_id=200, effects={"hat": 0.8}, seed=6, cluster=None)
    res = fit_glm(frame, "ap", family="gaussian")
    assert res.covariance == "robust HC2"
    ref = smf.ols(_formula(frame, "ap"), frame.data).fit(cov_type="HC2")
    ours = res.coefficients.set_index(pd.Index(_statsmodels_names(frame)))
    names = ours.index[ours["coef"].notna()]
    np.testing.assert_allclose(ours.loc[names, "std_err"], ref.bse[names], rtol=1e-6)


def _cr2_by_definition(X, y, mu, v, groups):
    """CR2 on the rows, straight from clubSandwich's definition for a canonical-link GLM
    (Pustejovsky & Tipton 2018, eq. 7 with Phi = Theta = diag(v)): the score of cluster g is
    X_g' A_g (y_g - mu_g), A_g = Theta_g^(1/2) B_g^(-1/2) Theta_g^(1/2),
    B_g = Theta_g^(1/2) (Theta_g - U_g M U_g') Theta_g^(1/2), U = diag(v) X, M = (X' V X)^-1."""
    Ainv = np.linalg.inv(X.T @ (X * v[:, None]))
    meat = np.zeros_like(Ainv)
    for g in np.unique(groups):
        i = groups == g
        rt = np.sqrt(v[i])
        U = X[i] * v[i][:, None]
        B = rt[:, None] * (np.diag(v[i]) - U @ Ainv @ U.T) * rt[None, :]
        lam, Q = np.linalg.eigh(B)
        inv_sqrt = np.where(lam > 1e-12, 1 / np.sqrt(np.clip(lam, 1e-12, None)), 0.0)
        A = rt[:, None] * ((Q * inv_sqrt) @ Q.T) * rt[None, :]
        s = X[i].T @ (A @ (y[i] - mu[i]))
        meat += np.outer(s, s)
    return Ainv @ meat @ Ainv


@pytest.mark.parametrize("within", [False, True])
def test_cr2_equals_its_definition_on_the_rows(within):
    # within=True: an attribute varies inside clusters, so clusters hold several cells
    rng = np.random.default_rng(4)
    n_id, per = 40, 6
    pid = np.repeat(np.arange(n_id), per)
    bag = rng.choice(["no", "yes"], n_id)[pid].astype(object)
    colour = rng.choice(["red", "blue", "black"], n_id)[pid].astype(object)
    cam = rng.choice(["c1", "c2"], n_id * per).astype(object)
    ap = 1 / (1 + np.exp(-(rng.normal(0, 1, n_id)[pid] + rng.normal(0, 1, n_id * per))))
    df = pd.DataFrame({"ap": ap, "pid": pid, "bag": bag, "colour": colour})
    if within:
        df["cam"] = cam
    frame = build_analysis_frame(df, outcomes="ap", cluster="pid")
    res = fit_glm(frame, "ap", icc=0.0)  # the definition's working model: independence
    assert "CR2" in res.covariance
    ref = smf.glm(_formula(frame, "ap"), frame.data, family=sm.families.Binomial()).fit()
    X = ref.model.exog
    mu = ref.fittedvalues.to_numpy()
    V = _cr2_by_definition(X, frame.data["ap"].to_numpy(), mu, mu * (1 - mu), pid)
    ours = res.coefficients.set_index(pd.Index(_statsmodels_names(frame)))
    idx = [list(ref.params.index).index(n) for n in ours.index]
    np.testing.assert_allclose(ours["std_err"], np.sqrt(np.diag(V))[idx], rtol=1e-6)


def test_group_wald_test_is_the_hand_computed_chi_square_and_f(clustered):
    frame = clustered
    res = fit_glm(frame, "ap", cov_type="CR1")
    ref = smf.glm(_formula(frame, "ap"), frame.data, family=sm.families.Binomial()).fit(
        cov_type="cluster", cov_kwds={"groups": pd.factorize(frame.data["pid"])[0]}
    )
    V = ref.cov_params()
    for g in ("upcolor", "backpack"):
        coefs = res.coefficients[res.coefficients["attribute"] == g]
        tested = coefs["p_value"].notna().to_numpy()
        names = [n for n, ok in zip(_statsmodels_names(frame, [g]), tested) if ok]
        b = ref.params[names].to_numpy()
        W = float(b @ np.linalg.inv(V.loc[names, names].to_numpy()) @ b)
        q = len(names)
        row = res.group_tests.set_index("attribute").loc[g]
        assert row["statistic"] == pytest.approx(W, rel=1e-6)
        assert row["df"] == q
        assert row["p_chi2"] == pytest.approx(stats.chi2.sf(W, q), rel=1e-6)
        nu = coefs.loc[coefs["p_value"].notna(), "n_clusters"].min() - 1
        assert row["df_denom"] == nu
        assert row["p_value"] == pytest.approx(stats.f.sf(W / q, q, nu), rel=1e-6)
        # statsmodels' own Wald test of the same restriction agrees
        R = np.zeros((q, len(ref.params)))
        for i, n in enumerate(names):
            R[i, list(ref.params.index).index(n)] = 1.0
        sm_w = ref.wald_test(R, scalar=True, use_f=False)
        assert float(sm_w.statistic) == pytest.approx(W, rel=1e-6)
    gt = res.group_tests
    np.testing.assert_allclose(gt["p_holm"], multipletests(gt["p_value"], method="holm")[1])
    np.testing.assert_allclose(gt["p_fdr_bh"], multipletests(gt["p_value"], method="fdr_bh")[1])


def test_planted_effects_are_recovered_with_the_right_sign():
    frame = _frame(n_rows=8000, n_id=500, effects={"backpack": 0.8, "gender": -0.6}, seed=3)
    for outcome in ("ap", "rank1", "first_hit"):
        res = fit_glm(frame, outcome)
        gt = res.group_tests.set_index("attribute")
        assert gt.loc["backpack", "p_holm"] < 0.01 and gt.loc["gender", "p_holm"] < 0.01
        top2 = set(gt["p_value"].nsmallest(2).index)
        assert top2 == {"backpack", "gender"}
        co = res.coefficients.set_index(["attribute", "level"])
        sign = -1 if outcome == "first_hit" else 1  # a better latent score means an earlier hit
        assert sign * co.loc[("backpack", "yes"), "coef"] > 0
        assert sign * co.loc[("gender", "female"), "coef"] < 0
        assert sign * co.loc[("backpack", "yes"), "ame"] > 0


def test_average_marginal_effect_equals_statsmodels_margeff():
    # binary groups only, so each dummy is a whole group and statsmodels' discrete change equals
    # our level-vs-reference AME
    df = simulate_reid_table(
        3000, n_identities=300, effects={"hat": 1.0, "bag": -0.5}, outcome="all", seed=9
    )
    binary = ["gender", "hair", "bag", "hat", "handbag"]
    frame = build_analysis_frame(df[["rank1", *binary]], outcomes="rank1")
    res = fit_glm(frame, "rank1")
    X = pd.DataFrame({"const": 1.0}, index=frame.data.index)
    for g in binary:
        X[g] = (frame.data[g].cat.codes > 0).astype(float)
    mfx = sm.Logit(frame.data["rank1"], X).fit(disp=0).get_margeff(at="overall", dummy=True)
    ours = res.coefficients.set_index("attribute").loc[binary]
    np.testing.assert_allclose(ours["ame"], mfx.margeff, rtol=1e-5)
    np.testing.assert_allclose(ours["ame_std_err"], mfx.margeff_se, rtol=1e-3)


def test_family_detection_and_range_validation():
    assert detect_family(np.array([0, 1, 1, 0])) == "logit"
    assert detect_family(np.array([0.2, 1, 0.5])) == "fractional_logit"
    assert detect_family(np.array([1, 3, 2, 7])) == "poisson"
    assert detect_family(np.array([-1.5, 3.0])) == "gaussian"
    frame = _frame(n_rows=1000, n_id=100, seed=2)
    frame.data["ap_pct"] = frame.data["ap"] * 100
    frame.outcomes.append("ap_pct")
    with pytest.raises(StudyInputError, match=r"'ap_pct' holds .* outside \[0, 1\]"):
        fit_glm(frame, "ap_pct", family="fractional_logit")
    with pytest.raises(StudyInputError, match="'ap' holds .*not 0/1"):
        fit_glm(frame, "ap", family="logit")
    frame.data["neg"] = -frame.data["first_hit"]
    with pytest.raises(StudyInputError, match="negative value"):
        fit_glm(frame, "neg", family="poisson")
    with pytest.raises(StudyInputError, match="Unknown GLM family"):
        fit_glm(frame, "ap", family="probit")


def test_separation_is_reported_not_silent():
    rng = np.random.default_rng(0)
    n = 400
    hat = rng.choice(["no", "yes"], n, p=[0.8, 0.2])
    bag = rng.choice(["no", "yes"], n)
    ap = np.where(hat == "yes", 1.0, rng.random(n))  # every hat wearer has AP = 1
    frame = build_analysis_frame(pd.DataFrame({"ap": ap, "hat": hat, "bag": bag}), outcomes="ap")
    res = fit_glm(frame, "ap")
    assert any("Separation" in w and "hat=yes" in w for w in res.warnings)
    co = res.coefficients.set_index("attribute")
    assert bool(co.loc["hat", "separation"]) and not bool(co.loc["bag", "separation"])
    assert bool(res.group_tests.set_index("attribute").loc["hat", "separation"])


def test_collinear_groups_are_aliased_with_a_warning():
    rng = np.random.default_rng(1)
    n = 300
    a = rng.choice(["x", "y"], n)
    df = pd.DataFrame(
        {
            "ap": rng.random(n),
            "a": a,
            "b": np.where(a == "x", "p", "q"),
            "c": rng.choice(["u", "v"], n),
        }
    )
    res = fit_glm(build_analysis_frame(df, outcomes="ap"), "ap")
    co = res.coefficients.set_index("attribute")
    assert bool(co.loc["b", "aliased"]) and np.isnan(co.loc["b", "coef"])
    assert any("'b' is collinear" in w for w in res.warnings)
    assert np.isfinite(co.loc["c", "p_value"])


def test_level_in_one_cluster_gets_no_p_value_and_stays_out_of_the_group_test():
    rng = np.random.default_rng(2)
    pid = np.repeat(np.arange(60), 5)
    colour = rng.choice(["red", "blue"], 60)[pid].astype(object)
    colour[pid == 0] = "green"  # a single identity wears green
    df = pd.DataFrame({"ap": rng.random(300), "pid": pid, "colour": colour})
    res = fit_glm(build_analysis_frame(df, outcomes="ap", cluster="pid"), "ap")
    co = res.coefficients.set_index("level")
    assert np.isnan(co.loc["green", "p_value"]) and np.isfinite(co.loc["green", "coef"])
    assert np.isfinite(co.loc[[lv for lv in co.index if lv != "green"][0], "p_value"])
    row = res.group_tests.iloc[0]
    assert row["n_tested"] == 1 and np.isfinite(row["p_value"])
    assert any("'green'" in w and "only 1 clusters" in w for w in res.warnings)


def test_negative_binomial_matches_statsmodels(clustered):
    frame = clustered
    res = fit_glm(frame, "first_hit", family="negative_binomial")
    ref = smf.negativebinomial(_formula(frame, "first_hit"), frame.data).fit(
        disp=0,
        maxiter=300,
        cov_type="cluster",
        cov_kwds={"groups": pd.factorize(frame.data["pid"])[0]},
    )
    ours = res.coefficients.set_index(pd.Index(_statsmodels_names(frame)))
    names = ours.index[ours["coef"].notna()]
    np.testing.assert_allclose(ours.loc[names, "coef"], ref.params[names], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours.loc[names, "std_err"], ref.bse[names], rtol=1e-3)
    assert (res.coefficients["effect_name"] == "rate_ratio").all()


def test_constant_outcome_is_a_warning_not_a_crash():
    df = pd.DataFrame({"ap": np.ones(50), "g": np.tile(["a", "b"], 25)})
    res = fit_glm(build_analysis_frame(df, outcomes="ap"), "ap")
    assert res.group_tests.empty and res.coefficients.empty
    assert any("constant" in w for w in res.warnings)


def test_working_icc_recovers_a_known_intra_cluster_correlation():
    """Gaussian rows with a cluster random effect: ICC = 0.6^2 / (0.6^2 + 0.8^2) = 0.36; and
    rows without cluster structure give ~0."""
    from studies.glm import _build_design, working_icc

    rng = np.random.default_rng(8)
    n_id, per = 400, 8
    pid = np.repeat(np.arange(n_id), per)
    bag = rng.integers(0, 2, n_id)[pid]
    clustered = 0.3 * bag + rng.normal(0, 0.6, n_id)[pid] + rng.normal(0, 0.8, n_id * per)
    for y, expected, tol in ((clustered, 0.36, 0.04), (rng.normal(size=len(pid)), 0.0, 0.03)):
        d = _build_design(bag[:, None], ["bag"], {"bag": ["no", "yes"]}, y, pid)
        beta = np.linalg.lstsq(d.X * np.sqrt(d.n)[:, None], d.sy / np.sqrt(d.n), rcond=None)[0]
        mu = d.X @ beta
        assert working_icc(d, mu, np.ones_like(mu), 2) == pytest.approx(expected, abs=tol)


def _frame_of(df: pd.DataFrame):
    return build_analysis_frame(
        df, outcomes=["ap"], cluster="pid", exclude=OTHER + ["rank1", "first_hit"], spec=SPEC
    )


def test_auto_family_refuses_a_proportion_with_values_outside_0_1():
    df = simulate_reid_table(600, n_identities=60, seed=2)
    df.loc[[16, 253], "ap"] = [1.5, 87.0]  # typos in an AP column
    frame = _frame_of(df)
    with pytest.raises(StudyInputError, match=r"row 17 = 1\.5, row 254 = 87.*family='gaussian'"):
        fit_glm(frame, "ap")
    res = fit_glm(frame, "ap", family="gaussian")  # asked for: modelled as it is
    assert res.family == "gaussian" and not res.coefficients.empty


def test_auto_family_refuses_a_percentage_and_says_when_it_picks_gaussian():
    df = simulate_reid_table(600, n_identities=60, seed=2)
    df["ap"] = 100 * df["ap"]
    with pytest.raises(StudyInputError, match="percentage.*divide it by 100"):
        fit_glm(_frame_of(df), "ap")
    df["ap"] = np.log(df["ap"] / 100)  # a genuinely continuous outcome (negative values)
    res = fit_glm(_frame_of(df), "ap")
    assert res.family == "gaussian"
    assert any("Gaussian family" in w for w in res.warnings)


def test_ame_interval_uses_the_coefficients_reference_distribution():
    """AME intervals used z while coefficients used t: with few clusters the AME interval must
    be as wide as its t quantile says (delta-method SE x t(df of the AME's contrast))."""
    from studies.simulate import simulate_small_cluster_table

    df = simulate_small_cluster_table(14, size_sigma=1.0, effects={"bag": 0.5}, seed=5)
    frame = build_analysis_frame(df, outcomes="ap", cluster="pid")
    res = fit_glm(frame, "ap", min_level_support=3)
    co = res.coefficients[res.coefficients["p_value"].notna()]
    assert len(co)
    half = (co["ame_ci_high"] - co["ame_ci_low"]) / 2
    z_half = stats.norm.ppf(0.975) * co["ame_std_err"]
    assert (half > z_half * 1.05).all()

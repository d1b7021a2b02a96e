"""The within-cluster rank test: the stratified rank statistic Q, its exact permutation moments,
its chi² reference and the rule that chooses between that reference and permutations.

Known answers: the analytic mean and covariance of the level rank sums against Monte-Carlo
permutations; one cluster against scipy's Mann-Whitney (normal approximation) and
Kruskal-Wallis; a 0/1 outcome against statsmodels' Cochran-Mantel-Haenszel test; simulated null
tables in the regimes users meet for calibration, planted effects for power. The exact cluster
bootstrap of epsilon² is checked against the bootstrap that materialises every resample.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import StratifiedTable

import studies.hypothesis as hypothesis
from studies.errors import StudyInputError
from studies.frame import AnalysisFrame
from studies.hypothesis import (
    ASYMPTOTIC_MIN_CLUSTERS,
    _cluster_bootstrap,
    _cross_counts,
    _kw_h,
    _StratifiedRanks,
    _within_cluster_test,
    group_tests,
)


def _frame(y: np.ndarray, cl: np.ndarray, attrs: dict[str, np.ndarray]) -> AnalysisFrame:
    data = {name: pd.Categorical(v) for name, v in attrs.items()}
    df = pd.DataFrame({**data, "y": y, "pid": cl})
    return AnalysisFrame(
        data=df,
        outcomes=["y"],
        groups=list(attrs),
        group_columns={g: [g] for g in attrs},
        cluster="pid",
        rows_read=len(df),
    )


def _permute_within(g: np.ndarray, cl: np.ndarray, rng) -> np.ndarray:
    out = g.copy()
    for c in np.unique(cl):
        rows = np.flatnonzero(cl == c)
        out[rows] = g[rng.permutation(rows)]
    return out


# ---------------------------------------------------------------------------------------------
# the moments and the statistic
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 3])
def test_analytic_moments_equal_the_permutation_moments(k):
    """E and Cov of the level rank sums under within-cluster permutation, by formula and by
    20,000 permutations done by hand (ties, unequal clusters, one constant cluster)."""
    rng = np.random.default_rng(1)
    sizes = [3, 8, 5, 2, 6, 4]
    cl = np.repeat(np.arange(len(sizes)), sizes)
    y = np.round(rng.normal(size=len(cl)) + np.arange(len(sizes))[cl], 0)  # ties
    g = rng.integers(0, k, len(cl))
    g[cl == 2] = 0  # one cluster in which the attribute does not vary
    strat = _StratifiedRanks.build(y, g, cl, k)
    r = stats.rankdata(y) / len(y)
    sums = np.array(
        [np.bincount(_permute_within(g, cl, rng), weights=r, minlength=k) for _ in range(20_000)]
    )
    observed = np.bincount(g, weights=r, minlength=k)
    expected = observed - strat.dev  # E S
    se_mean = sums.std(axis=0) / np.sqrt(len(sums))
    assert np.all(np.abs(sums.mean(axis=0) - expected) < 4 * se_mean)
    mc_cov = np.cov(sums.T)
    # the sampling sd of a variance estimate is about var * sqrt(2 / B): 2 % here
    np.testing.assert_allclose(mc_cov, strat.cov, rtol=0.06, atol=0.06 * np.abs(strat.cov).max())
    assert strat.df == k - 1


def test_one_cluster_and_two_levels_is_mann_whitney_normal_approximation():
    rng = np.random.default_rng(2)
    y = np.round(rng.normal(size=70), 1)  # ties
    g = (rng.random(70) < 0.35).astype(np.int64)
    strat = _StratifiedRanks.build(y, g, np.zeros(70, dtype=np.int64), 2)
    ref = stats.mannwhitneyu(y[g == 1], y[g == 0], method="asymptotic", use_continuity=False)
    assert strat.asymptotic_p() == pytest.approx(ref.pvalue, rel=1e-10)
    # Q is the square of scipy's z
    u1 = float(ref.statistic)
    n1, n0 = (g == 1).sum(), (g == 0).sum()
    assert float(strat.q(strat.dev)) == pytest.approx(stats.norm.isf(ref.pvalue / 2) ** 2, rel=1e-8)
    assert np.sign(strat.dev[1]) == np.sign(u1 - n1 * n0 / 2)


def test_one_cluster_and_more_levels_is_the_tie_corrected_kruskal_wallis_h():
    """With one cluster, Var S = s2 n / (n - 1) (diag(m) - m m' / n) and its generalised
    inverse give Q = sum_j (S_j - E_j)² / m_j * (n - 1) / (n s2), which is the tie-corrected H
    itself (not H (n - 1) / n: the n / (n - 1) of sampling without replacement cancels it)."""
    rng = np.random.default_rng(3)
    y = np.round(rng.normal(size=90), 1)
    g = rng.choice(4, 90, p=[0.4, 0.3, 0.2, 0.1])
    strat = _StratifiedRanks.build(y, g, np.zeros(90, dtype=np.int64), 4)
    ref = stats.kruskal(*[y[g == j] for j in range(4)])
    assert float(strat.q(strat.dev)) == pytest.approx(ref.statistic, rel=1e-10)
    assert strat.asymptotic_p() == pytest.approx(ref.pvalue, rel=1e-9)
    assert strat.df == 3


@pytest.mark.parametrize("seed", [0, 1])
def test_binary_outcome_and_two_levels_is_cochran_mantel_haenszel(seed):
    """For a 0/1 outcome the stratified rank statistic of a 0/1 attribute is the CMH statistic
    of the 2 x 2 x K table (statsmodels, no continuity correction), end to end."""
    rng = np.random.default_rng(seed)
    n_cl = 9
    cl = rng.integers(0, n_cl, 400)
    g = rng.integers(0, 2, 400)
    y = (rng.random(400) < 0.2 + 0.05 * cl / n_cl + 0.1 * g).astype(float)
    tables = [
        np.array([[((cl == c) & (g == a) & (y == b)).sum() for b in (1, 0)] for a in (1, 0)])
        for c in range(n_cl)
    ]
    ref = StratifiedTable(tables).test_null_odds(correction=False)
    res = group_tests(_frame(y, cl, {"on": g}), "y", n_boot=0, method="asymptotic").iloc[0]
    assert res["test"] == "mann_whitney_u+stratified_asymptotic"
    assert res["statistic"] == pytest.approx(ref.statistic, rel=1e-10)
    assert res["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_cross_counts_equal_counting_every_pair():
    rng = np.random.default_rng(4)
    x, z = np.round(rng.normal(size=300), 1), np.round(rng.normal(size=500), 1)
    cx, cz = rng.integers(0, 7, 300), rng.integers(0, 5, 500)
    fast = _cross_counts(x, cx, 7, z, cz, 5)
    less = (z[None, :] < x[:, None]) + 0.5 * (z[None, :] == x[:, None])
    slow = np.array([[less[np.ix_(cx == a, cz == b)].sum() for b in range(5)] for a in range(7)])
    np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("ties", [False, True])
def test_exact_epsilon_squared_bootstrap_equals_the_materialised_one(ties):
    rng = np.random.default_rng(5)
    n_cl = 20
    sizes = rng.integers(1, 10, n_cl)
    cl = np.repeat(rng.permutation(n_cl) * 3, sizes)
    g = rng.choice(3, len(cl), p=[0.5, 0.35, 0.15])
    y = rng.normal(size=len(cl)) + 0.4 * g
    if ties:
        y = np.round(y, 0)
    fast = _cluster_bootstrap(y, g, cl, 3, 150, np.random.default_rng(9))
    draw = np.random.default_rng(9)
    ids, inv = np.unique(cl, return_inverse=True)
    slow = np.empty(150)
    for b in range(150):
        pick = draw.integers(0, n_cl, n_cl)
        rows = np.concatenate([np.flatnonzero(inv == c) for c in pick])
        gb = g[rows]
        full = len(np.unique(gb)) == 3
        slow[b] = _kw_h(y[rows][None], gb[None], 3)[0] / (len(rows) - 1) if full else np.nan
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12, equal_nan=True)
    assert np.isfinite(fast).sum() > 100


# ---------------------------------------------------------------------------------------------
# the method and the table
# ---------------------------------------------------------------------------------------------
def test_auto_method_says_which_reference_it_used_and_bad_methods_are_refused():
    rng = np.random.default_rng(6)
    n_cl, per = 60, 10
    cl = np.repeat(np.arange(n_cl), per)
    y = rng.normal(0, 1, n_cl)[cl] + rng.normal(size=len(cl))
    switch = rng.integers(0, 2, len(cl))  # varies in every cluster
    bag = np.repeat(rng.integers(0, 2, n_cl), per)
    bag[[0, 30]] = 1 - bag[[0, 30]]  # varies in 2 clusters only
    frame = _frame(y, cl, {"switch": switch, "bag": bag})
    res = group_tests(frame, "y", n_boot=0, n_perm=199).set_index("attribute")
    assert res.loc["switch", "test"] == "mann_whitney_u+stratified_asymptotic"
    assert res.loc["bag", "test"] == "mann_whitney_u+cluster_permutation"
    forced = group_tests(frame, "y", n_boot=0, method="asymptotic").set_index("attribute")
    assert forced.loc["bag", "test"] == "mann_whitney_u+stratified_asymptotic"
    # the statistic is Q in both modes, the p-value its reference's
    assert res.loc["bag", "statistic"] == pytest.approx(forced.loc["bag", "statistic"])
    assert forced.loc["switch", "p_value"] == pytest.approx(
        stats.chi2.sf(forced.loc["switch", "statistic"], 1)
    )
    with pytest.raises(StudyInputError, match="method must be one of"):
        group_tests(frame, "y", method="exact")


def test_planted_within_cluster_effect_is_found_and_null_groups_are_not():
    rng = np.random.default_rng(7)
    n_cl, per = 100, 12
    cl = np.repeat(np.arange(n_cl), per)
    on = rng.integers(0, 2, (len(cl), 3))
    colour = rng.choice(3, len(cl))
    y = (
        rng.normal(0, 1, n_cl)[cl]
        + 0.3 * on[:, 0]
        + 0.25 * (colour == 2)
        + rng.normal(0, 0.8, len(cl))
    )
    attrs = {"a": on[:, 0], "b": on[:, 1], "c": on[:, 2], "colour": colour}
    res = group_tests(_frame(y, cl, attrs), "y", n_boot=0).set_index("attribute")
    assert (res["test"].str.endswith("+stratified_asymptotic")).all()
    assert res.loc["a", "p_value"] < 1e-6 and res.loc["colour", "p_value"] < 1e-4
    assert res.loc["colour", "test"] == "kruskal_wallis+stratified_asymptotic"
    assert (res.loc[["b", "c"], "p_value"] > 0.01).all()


def test_asymptotic_and_permutation_p_values_agree_on_a_moderate_table():
    rng = np.random.default_rng(13)
    n_cl, per = 50, 12
    cl = np.repeat(np.arange(n_cl), per)
    on = rng.integers(0, 2, len(cl))
    colour = rng.choice(3, len(cl), p=[0.5, 0.3, 0.2])
    y = rng.normal(0, 1, n_cl)[cl] + 0.12 * on + 0.2 * (colour == 1) + rng.normal(size=len(cl))
    frame = _frame(y, cl, {"on": on, "colour": colour})
    asym = group_tests(frame, "y", n_boot=0, method="asymptotic")
    perm = group_tests(frame, "y", n_boot=0, method="permutation", n_perm=4999)
    for pa, pp in zip(asym["p_value"], perm["p_value"], strict=True):
        assert 0.005 < pa < 0.5  # a range in which the two references can differ
        assert abs(pa - pp) < 4 * np.sqrt(pa * (1 - pa) / 5000) + 0.005
    np.testing.assert_allclose(asym["statistic"], perm["statistic"])


# ---------------------------------------------------------------------------------------------
# null calibration
# ---------------------------------------------------------------------------------------------
def _lognormal_sizes(rng, n_cl: int, mean_log: float = 2.0) -> np.ndarray:
    return np.maximum(2, np.round(np.exp(rng.normal(mean_log, 1.0, n_cl)))).astype(int)


def _null_table(regime: str, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y, cluster, attribute of one null table: an identity random effect (sd 1) plus row
    noise, the attribute independent of the outcome given the identity."""
    if regime == "few_unequal":  # 12 identities of lognormal size
        sizes = _lognormal_sizes(rng, 12)
        cl = np.repeat(np.arange(12), sizes)
        g = rng.integers(0, 2, len(cl))
    elif regime == "many_unequal":
        sizes = _lognormal_sizes(rng, 100)
        cl = np.repeat(np.arange(100), sizes)
        g = rng.integers(0, 2, len(cl))
    elif regime == "rare_level":  # 3 levels, one at 4 %
        sizes = _lognormal_sizes(rng, 150)
        cl = np.repeat(np.arange(150), sizes)
        g = rng.choice(3, len(cl), p=[0.6, 0.36, 0.04])
    elif regime == "switching":  # on in exactly half of every identity's rows
        cl = np.repeat(np.arange(40), 16)
        g = np.concatenate([rng.permutation(np.repeat([0, 1], 8)) for _ in range(40)])
    elif regime == "binary_outcome":  # a rank1-like 0/1 outcome: massive ties
        cl = np.repeat(np.arange(80), rng.integers(4, 11, 80))
        g = rng.integers(0, 2, len(cl))
    elif regime == "threshold":  # the auto rule's boundary: Kish n_eff of about 14 to 30
        n_cl = int(rng.integers(40, 90))
        sizes = _lognormal_sizes(rng, n_cl, 1.5)
        cl = np.repeat(np.arange(n_cl), sizes)
        g = (rng.random(len(cl)) < 0.3).astype(np.int64)
    else:
        raise ValueError(regime)
    y = rng.normal(0, 1, cl.max() + 1)[cl] + rng.normal(size=len(cl))
    if regime == "binary_outcome":
        y = (y > 0.8).astype(float)
    return y, cl, g


def _rejection_rate(regime: str, tables: int, alpha: float, seed: int) -> tuple[float, dict]:
    """Share of null tables rejected at ``alpha`` by the within-cluster test with
    ``method="auto"`` (called below ``group_tests``, whose table plumbing would cost more than
    the test), and how often each reference was chosen."""
    rng = np.random.default_rng(seed)
    rejected, done, methods = 0, 0, {}
    while done < tables:
        y, cl, g = _null_table(regime, rng)
        k = int(g.max()) + 1
        if len(np.unique(g)) < k:
            continue
        res = _within_cluster_test(y, g, cl, k, alpha, 199, 0, rng, "auto")
        how = res["test"].split("+")[1]
        hit = int(res["p_value"] <= alpha)
        methods[how] = [a + b for a, b in zip(methods.get(how, [0, 0]), (1, hit), strict=True)]
        rejected += hit
        done += 1
    return rejected / tables, methods


REGIMES = {
    # regime: (tables, the reference method="auto" must pick for most of them)
    "few_unequal": (500, "cluster_permutation"),
    "many_unequal": (500, "stratified_asymptotic"),
    "rare_level": (500, "stratified_asymptotic"),
    "switching": (600, "stratified_asymptotic"),
    "binary_outcome": (600, "stratified_asymptotic"),
    "threshold": (500, None),
}


@pytest.mark.parametrize("regime", list(REGIMES))
def test_null_rejection_rate_is_nominal(regime):
    tables, expect = REGIMES[regime]
    rate, methods = _rejection_rate(regime, tables, 0.05, seed=100)
    band = 3.5 * np.sqrt(0.05 * 0.95 / tables)
    assert abs(rate - 0.05) <= band, (rate, methods)
    if expect is None:  # both sides of the threshold are visited
        assert len(methods) == 2 and min(m[0] for m in methods.values()) >= 0.2 * tables, methods
    else:
        assert methods.get(expect, [0])[0] >= 0.9 * tables, methods


@pytest.mark.slow
@pytest.mark.parametrize("regime", list(REGIMES))
def test_null_rejection_rate_is_nominal_on_a_bigger_grid(regime):
    """1,500 tables per regime: rejections at 0.05 and 0.01 within 3.5 binomial sd, overall
    and among the tables of each reference that got at least 300 of them (at the threshold:
    the tables just above it, which the chi² reference gets)."""
    for alpha, seed in ((0.05, 200), (0.01, 300)):
        rate, methods = _rejection_rate(regime, 1500, alpha, seed=seed)
        band = 3.5 * np.sqrt(alpha * (1 - alpha) / 1500)
        assert abs(rate - alpha) <= band, (alpha, rate, methods)
        for n, hits in methods.values():
            if n >= 300:
                assert abs(hits / n - alpha) <= 3.5 * np.sqrt(alpha * (1 - alpha) / n), methods


def test_the_threshold_is_the_documented_one():
    """The simulations above and docs/studies.md describe the rule at this value."""
    assert ASYMPTOTIC_MIN_CLUSTERS == 20


@pytest.mark.parametrize("method", ["auto", "asymptotic", "permutation"])
def test_outcomes_tied_within_every_cluster_give_no_evidence_and_no_warnings(method):
    """Every cluster's outcome is constant: no permutation can move a rank sum (V = 0), so
    Q = 0 and p = 1, without a numpy warning; the bootstrap CIs stay finite."""
    rng = np.random.default_rng(10)
    cl = np.repeat(np.arange(30), 6)
    y = rng.normal(size=30)[cl]
    attrs = {"on": rng.integers(0, 2, len(cl)), "colour": rng.choice(3, len(cl))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = group_tests(_frame(y, cl, attrs), "y", n_boot=50, n_perm=49, method=method)
    assert (res["p_value"] == 1.0).all() and (res["statistic"] == 0.0).all()
    assert np.isfinite(res[["ci_low", "ci_high"]].to_numpy()).all()


@pytest.mark.parametrize("k", [2, 3])
def test_many_clusters_fall_back_to_the_materialised_bootstrap_with_the_same_values(k, monkeypatch):
    rng = np.random.default_rng(11)
    cl = np.repeat(np.arange(25), rng.integers(2, 8, 25))
    g = rng.integers(0, k, len(cl))
    y = np.round(rng.normal(size=len(cl)) + 0.3 * g, 1)
    exact = _cluster_bootstrap(y, g, cl, k, 80, np.random.default_rng(4))
    monkeypatch.setattr(hypothesis, "MAX_PAIR_CELLS", 10)
    slow = _cluster_bootstrap(y, g, cl, k, 80, np.random.default_rng(4))
    np.testing.assert_allclose(exact, slow, rtol=1e-10, atol=1e-12, equal_nan=True)

"""Verdicts (helps / hurts / negligible / inconclusive / not testable), TOST and the MDE.

Known answers from reference libraries (statsmodels, pingouin), then simulations of the claims a
reader relies on: TOST's size at the margin is at most alpha, and an effect equal to the MDE the
battery reports is found (Holm) about 80 % of the time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import DescrStatsW, ttost_ind

from studies.verdicts import (
    VERDICTS,
    clustered_mean,
    group_verdicts,
    minimum_detectable_effect,
    tost_p,
    verdict,
)

# --------------------------------------------------------------------------- known answers


def test_tost_p_equals_statsmodels_one_sample_and_pingouin() -> None:
    pingouin = pytest.importorskip("pingouin")
    rng = np.random.default_rng(1)
    x = rng.normal(0.1, 1.0, 40)
    se = x.std(ddof=1) / np.sqrt(x.size)
    ours = tost_p(x.mean(), se, x.size - 1, 0.3)
    assert ours == pytest.approx(DescrStatsW(x).ttost_mean(-0.3, 0.3)[0], rel=1e-10)
    pg = pingouin.tost(x, 0, bound=0.3, paired=False)
    assert ours == pytest.approx(float(pg["pval"].iloc[0]), rel=1e-8)


def test_tost_p_equals_statsmodels_two_sample() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.0, 1.0, 30), rng.normal(0.2, 1.0, 25)
    diff = a.mean() - b.mean()
    sp2 = ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2)
    se = np.sqrt(sp2 * (1 / a.size + 1 / b.size))
    ours = tost_p(diff, se, a.size + b.size - 2, 0.5)
    assert ours == pytest.approx(ttost_ind(a, b, -0.5, 0.5)[0], rel=1e-10)


def test_tost_normal_when_df_infinite_and_nan_without_se() -> None:
    from scipy.stats import norm

    assert tost_p(0.0, 1.0, np.inf, 1.0) == pytest.approx(norm.sf(1.0))
    assert np.isnan(tost_p(0.0, 0.0, 10, 1.0))
    assert np.isnan(tost_p(np.nan, 1.0, 10, 1.0))


@pytest.mark.parametrize("df", [30, 60, 200])
@pytest.mark.parametrize("m", [1, 5])
def test_mde_within_one_percent_of_noncentral_t_for_df_30_or_more(df: int, m: int) -> None:
    """statsmodels' TTestPower solves the noncentral t exactly for a one-sample design with n =
    df + 1 and se = 1/sqrt(n) (effect in SD units); the shifted-t MDE is within 1 %."""
    n = df + 1
    ours = minimum_detectable_effect(1 / np.sqrt(n), df, alpha=0.05, power=0.8, family_size=m)
    exact = TTestPower().solve_power(nobs=n, alpha=0.05 / m, power=0.8)
    assert ours == pytest.approx(exact, rel=0.01)


def test_mde_scales_with_se_and_grows_with_family() -> None:
    one = minimum_detectable_effect(0.01, np.inf)
    assert one == pytest.approx((1.959964 + 0.841621) * 0.01, rel=1e-5)
    assert minimum_detectable_effect(0.02, np.inf) == pytest.approx(2 * one)
    assert minimum_detectable_effect(0.01, np.inf, family_size=10) > one
    assert np.isnan(minimum_detectable_effect(0.0, 10))


def test_clustered_mean_equals_statsmodels_cluster_ols() -> None:
    rng = np.random.default_rng(3)
    g = rng.integers(0, 12, 150)
    y = rng.normal(size=150) + 0.5 * rng.normal(size=12)[g]
    fit = sm.OLS(y, np.ones_like(y)).fit(cov_type="cluster", cov_kwds={"groups": g})
    mean, se, df = clustered_mean(y, g)
    assert mean == pytest.approx(float(fit.params[0]), rel=1e-12)
    assert se == pytest.approx(float(fit.bse[0]), rel=1e-10)
    assert df == len(np.unique(g)) - 1


def test_clustered_mean_unclustered_is_the_t_test() -> None:
    y = np.array([1.0, 2.0, 4.0, 7.0])
    mean, se, df = clustered_mean(y, None)
    assert (mean, df) == (3.5, 3.0)
    assert se == pytest.approx(y.std(ddof=1) / 2.0)


# --------------------------------------------------------------------------- the verdict rule


def test_verdict_rule() -> None:
    kw = {"alpha": 0.05}
    assert verdict(p_holm=0.01, direction=1.0, p_tost=0.5, **kw) == "helps"
    assert verdict(p_holm=0.01, direction=-2.0, p_tost=0.5, **kw) == "hurts"
    # significance wins over equivalence (a tiny effect on a huge table is still real)
    assert verdict(p_holm=0.01, direction=-1.0, p_tost=0.01, **kw) == "hurts"
    assert verdict(p_holm=0.2, direction=1.0, p_tost=0.01, **kw) == "negligible"
    assert verdict(p_holm=0.2, direction=1.0, p_tost=0.2, **kw) == "inconclusive"
    assert verdict(p_holm=None, direction=None, p_tost=None, **kw) == "inconclusive"
    assert verdict(p_holm=0.01, direction=1.0, p_tost=0.5, testable=False, **kw) == "not testable"
    assert set(VERDICTS) == {"helps", "hurts", "negligible", "inconclusive", "not testable"}


def test_group_verdicts_multilevel_and_untestable() -> None:
    levels = pd.DataFrame(
        [
            # color: one level clearly within the margin, one not -> not negligible (IUT)
            ("color", "red", 0.001, 0.001, 100.0),
            ("color", "blue", -0.004, 0.004, 100.0),
            ("bag", "yes", -0.05, 0.01, 40.0),
            ("hat", "yes", 0.0, 0.0, 40.0),  # no variation: no usable contrast
            ("shoes", "yes", 0.0005, 0.001, 60.0),
        ],
        columns=["attribute", "level", "estimate", "std_err", "df"],
    )
    tests = pd.DataFrame(
        {
            "attribute": ["color", "bag", "hat", "shoes"],
            "p_value": [0.5, 1e-5, np.nan, 0.6],
            "p_holm": [1.0, 4e-5, np.nan, 1.0],
        }
    )
    out = group_verdicts(levels, tests, margin=0.005, alpha=0.05).set_index("attribute")
    assert out.at["bag", "verdict"] == "hurts"
    assert out.at["bag", "direction"] == -1.0
    assert out.at["shoes", "verdict"] == "negligible"
    assert out.at["color", "verdict"] == "inconclusive"
    # intersection-union: the group's TOST p is its worst level's
    assert out.at["color", "p_tost"] == pytest.approx(tost_p(-0.004, 0.004, 100.0, 0.005))
    # the direction / estimate come from the largest-|t| level (blue: t = -1 vs red: t = 1 tie ->
    # first; make sure it is one of the two and the sign matches the estimate)
    assert np.sign(out.at["color", "estimate"]) == out.at["color", "direction"]
    assert out.at["hat", "verdict"] == "not testable"
    assert isinstance(out.at["hat", "reason"], str)
    assert np.isnan(out.at["hat", "mde"])
    # three testable groups -> MDE at the Holm first step alpha/3, the largest level's
    expect = minimum_detectable_effect(0.004, 100.0, alpha=0.05, family_size=3)
    assert out.at["color", "mde"] == pytest.approx(expect)
    assert (out["margin"] == 0.005).all()


def test_group_verdicts_respects_testable_flag() -> None:
    levels = pd.DataFrame(
        [("a", "1", 0.2, 0.01, 30.0)], columns=["attribute", "level", "estimate", "std_err", "df"]
    )
    tests = pd.DataFrame(
        {
            "attribute": ["a"],
            "p_value": [1e-9],
            "p_holm": [1e-9],
            "testable": [False],
            "reason": ["absent from the test split"],
        }
    )
    out = group_verdicts(levels, tests, margin=0.01, alpha=0.05)
    assert out["verdict"].tolist() == ["not testable"]
    assert out["reason"].tolist() == ["absent from the test split"]

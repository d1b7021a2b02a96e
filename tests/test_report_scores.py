"""The consensus scores survive extreme tables: a GLM p-value that underflows to 0.0 (a strong
group on a 1M-row table) still gets a finite GLM score, computed in log space from its test
statistic, and very strong groups keep their order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

from studies.battery import _glm_score, log_sf


@pytest.mark.parametrize(("x", "d2"), [(1e3, 1e6), (3e3, 700.0), (1e5, 30.0), (1e8, 30.0)])
def test_log_sf_of_f_with_two_df_matches_the_closed_form(x, d2):
    # F(2, d2): P(F > x) = (1 + 2x/d2)^(-d2/2) exactly
    expected = -(d2 / 2.0) * np.log1p(2.0 * x / d2)
    assert log_sf(stats.f(2, d2), x) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("x", [1.5e3, 1e5, 1e7])
def test_log_sf_of_chi2_far_beyond_underflow(x):
    assert stats.chi2.logsf(x, 2) == -np.inf or x < 1400  # scipy alone gives up here
    assert log_sf(stats.chi2(2), x) == pytest.approx(-x / 2.0, rel=1e-9)
    # chi2(1): P = 2 Phi(-sqrt(x))
    expected = np.log(2.0) + special.log_ndtr(-np.sqrt(x))
    assert log_sf(stats.chi2(1), x) == pytest.approx(expected, rel=1e-9)


def test_log_sf_in_the_ordinary_range_is_scipys():
    assert log_sf(stats.chi2(5), 10.0) == stats.chi2.logsf(10.0, 5)


def _group_tests(**cols):
    return pd.DataFrame({"attribute": ["strong", "stronger", "weak"], **cols})


def test_glm_p_value_that_underflowed_to_zero_keeps_a_finite_ordered_score():
    tests = _group_tests(
        statistic=[4.0e3, 8.0e3, 3.0],
        f_statistic=[2.0e3, 4.0e3, 1.5],
        df=[2, 2, 2],
        df_denom=[1e6, 1e6, 1e6],
        p_value=[0.0, 0.0, float(stats.f.sf(1.5, 2, 1e6))],
    )
    score = _glm_score(tests)
    assert np.isfinite(score).all()
    # the exact answer of F(2, d2) in log10
    for name, f in (("strong", 2.0e3), ("stronger", 4.0e3)):
        expected = (1e6 / 2.0) * np.log1p(2.0 * f / 1e6) / np.log(10.0)
        assert score[name] == pytest.approx(expected, rel=1e-9)
        assert score[name] > 300
    assert score["stronger"] > score["strong"] > score["weak"]
    assert score["weak"] == pytest.approx(-np.log10(tests["p_value"].iloc[2]))


def test_glm_score_without_an_f_column_reads_the_wald_statistic():
    # a table from before f_statistic existed: F = W / df; infinite df_denom means chi2(df)
    tests = _group_tests(
        statistic=[2.0e3, 4.0e3, 1.0],
        df=[2, 2, 1],
        df_denom=[np.inf, np.inf, np.inf],
        p_value=[0.0, 0.0, float(stats.chi2.sf(1.0, 1))],
    )
    score = _glm_score(tests)
    assert score["strong"] == pytest.approx(1.0e3 / np.log(10.0), rel=1e-9)
    assert score["stronger"] == pytest.approx(2.0e3 / np.log(10.0), rel=1e-9)


def test_untestable_group_has_no_glm_score():
    tests = _group_tests(
        statistic=[np.nan, 5.0, 1.0],
        df=[0, 1, 1],
        df_denom=[np.nan, 40.0, 40.0],
        p_value=[np.nan, 0.03, 0.3],
    )
    score = _glm_score(tests)
    assert np.isnan(score["strong"]) and np.isfinite(score[["stronger", "weak"]]).all()

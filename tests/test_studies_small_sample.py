"""CR2 and the HTZ small-sample tests against their reference implementation, R's clubSandwich.

Expected values were produced with R 4.2.2 and clubSandwich 0.5.8 (Debian's r-cran-clubsandwich)
on the table below (16 clusters of 1-15 rows; ``cam`` varies within clusters):

    library(clubSandwich)
    d <- read.csv("table.csv")   # levels as below: bag no/yes, col black/blue/red, cam c1/c2
    ctl <- glm.control(epsilon = 1e-14, maxit = 100)
    m <- glm(ap ~ bag + col + cam, data = d, family = binomial(), control = ctl)  # or poisson()
    # (hits ~ ...) or gaussian(); cluster = d$pid, or seq_len(nrow(d)) for "no clusters" (HC2)
    V <- vcovCR(m, cluster = d$pid, type = "CR2")
    coef_test(m, vcov = V, test = "Satterthwaite")              # SE, df_Satt, p_Satt
    Wald_test(m, constraints = constrain_zero(c("colblue", "colred")), vcov = V, test = "HTZ")

With an exchangeable working model (``fit_glm(..., icc=0.3)``), clubSandwich's ``target``:

    v <- fitted(m) * (1 - fitted(m)); rho <- 0.3
    target <- lapply(split(seq_len(nrow(d)), d$pid), function(i) {
      s <- sqrt(v[i]); k <- length(i)
      outer(s, s) * ((1 - rho) * diag(k) + rho * matrix(1, k, k)) })
    V <- vcovCR(m, cluster = d$pid, type = "CR2", target = target)

The tests compare ``fit_glm``'s coefficient table (std_err, df_denom, p_value) and group tests
(f_statistic, df_denom, p_value) with those numbers.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from studies.design import build_analysis_frame
from studies.glm import fit_glm
from studies.small_sample import cr2_pieces, htz_df, htz_test

TABLE = """\
pid,bag,col,cam,ap,hits
0,yes,red,c1,0.8698,2
0,yes,red,c1,0.925,2
0,yes,red,c1,0.8457,4
0,yes,red,c1,0.7077,3
1,no,blue,c2,0.6857,0
1,no,blue,c2,0.6366,2
1,no,blue,c1,0.6057,2
1,no,blue,c1,0.5145,0
1,no,blue,c2,0.6991,0
1,no,blue,c2,0.6873,1
1,no,blue,c2,0.6241,0
1,no,blue,c1,0.6027,0
1,no,blue,c2,0.4189,2
1,no,blue,c1,0.5577,0
1,no,blue,c1,0.8048,2
1,no,blue,c1,0.6079,0
2,no,black,c1,0.2926,2
2,no,black,c1,0.7425,0
2,no,black,c2,0.6215,2
2,no,black,c1,0.8321,1
2,no,black,c1,0.5421,0
2,no,black,c2,0.4506,6
2,no,black,c2,0.2914,2
2,no,black,c2,0.7411,1
2,no,black,c2,0.8725,4
2,no,black,c1,0.3894,6
2,no,black,c2,0.4187,2
3,no,red,c1,0.4531,2
3,no,red,c1,0.2339,1
4,no,red,c1,0.7343,1
4,no,red,c1,0.7233,2
4,no,red,c2,0.7925,0
5,yes,red,c1,0.6123,2
5,yes,red,c1,0.427,0
6,no,red,c2,0.7853,2
6,no,red,c2,0.589,5
6,no,red,c2,0.7074,1
6,no,red,c1,0.3009,0
6,no,red,c1,0.4106,2
6,no,red,c1,0.7704,2
7,yes,black,c1,0.7906,2
7,yes,black,c2,0.8954,0
7,yes,black,c1,0.8929,3
8,no,black,c2,0.4615,1
8,no,black,c1,0.3749,0
8,no,black,c1,0.4091,1
8,no,black,c2,0.239,0
8,no,black,c1,0.1724,0
8,no,black,c1,0.1691,1
8,no,black,c1,0.1944,2
9,yes,blue,c2,0.4175,0
10,yes,blue,c1,0.3251,1
10,yes,blue,c1,0.3984,1
10,yes,blue,c1,0.4573,1
10,yes,blue,c1,0.3579,2
10,yes,blue,c2,0.1553,2
10,yes,blue,c1,0.4018,1
10,yes,blue,c1,0.4527,5
10,yes,blue,c1,0.6015,0
10,yes,blue,c1,0.5143,0
10,yes,blue,c2,0.3105,1
10,yes,blue,c2,0.2986,1
10,yes,blue,c2,0.7427,1
10,yes,blue,c1,0.5454,1
10,yes,blue,c2,0.718,0
10,yes,blue,c1,0.7583,2
11,yes,black,c1,0.58,3
11,yes,black,c2,0.7622,1
11,yes,black,c2,0.7714,3
12,yes,black,c2,0.9091,1
12,yes,black,c2,0.9081,1
12,yes,black,c1,0.8862,0
12,yes,black,c1,0.8843,1
12,yes,black,c2,0.7026,2
12,yes,black,c2,0.8576,1
12,yes,black,c1,0.8003,2
13,no,blue,c2,0.8707,2
13,no,blue,c1,0.8163,0
13,no,blue,c2,0.9048,0
14,no,blue,c1,0.3432,4
14,no,blue,c1,0.2677,0
14,no,blue,c1,0.2687,4
15,no,black,c2,0.4514,0
15,no,black,c2,0.3604,1
15,no,black,c2,0.4073,3
15,no,black,c1,0.3528,0
15,no,black,c1,0.5029,1
15,no,black,c2,0.4378,1
"""

#: per case: coefficient rows (bagyes, colblue, colred, camc2) as (SE, df, p), then the group
#: tests (col, bag, cam) as (F, df_denom, p)
R_VALUES = {
    "fractional_logit_clustered": (
        [
            (0.545766537633, 6.37802777910, 0.3679659136165),
            (0.592253380784, 5.36562925024, 0.7690045630193),
            (0.415918363017, 5.70915997813, 0.4218865270535),
            (0.169393136152, 8.56564208206, 0.0728264802876),
        ],
        [
            (0.553541529895, 5.539258224777, 0.603721168509),
            (0.938444717505, 6.378027779100, 0.367965913617),
            (4.1799784096287, 8.5656420820573, 0.0728264802876),
        ],
    ),
    "fractional_logit_rows": (
        [
            (0.198846453089, 65.3258837348, 0.00985045786831),
            (0.216321168231, 63.4599268567, 0.40082228289512),
            (0.247165823755, 30.4747376655, 0.15572984687065),
            (0.199618566266, 67.0740417670, 0.08734632916666),
        ],
        [
            (2.343192877312, 46.488233518122, 0.107263323603),
            (7.06946918021322, 65.32588373483975, 0.00985045786831),
            (3.0099812609993, 67.0740417670023, 0.0873463291667),
        ],
    ),
    "poisson_clustered": (
        [
            (0.256451565786, 7.71476444197, 0.691314224654),
            (0.318465299500, 4.75744580916, 0.345483398645),
            (0.312304109640, 6.19166118845, 0.606742108954),
            (0.195871581266, 9.18826224865, 0.988894464135),
        ],
        [
            (1.198414829909, 5.304768703509, 0.371998117809),
            (0.170018688129, 7.714764441969, 0.691314224654),
            (0.000204559120857, 9.188262248646849, 0.988894464135101),
        ],
    ),
    "gaussian_clustered": (
        [
            (0.1247397668047, 6.65617077762, 0.34630755122010),
            (0.1420053199732, 5.34819042517, 0.76967691583551),
            (0.0976979205308, 5.86859001284, 0.41327433655327),
            (0.0401824812799, 8.70066035390, 0.06841592335396),
        ],
        [
            (0.576257272633, 5.558601814148, 0.592341306797),
            (1.02685732636, 6.65617077762, 0.34630755122),
            (4.322879985898, 8.700660353901, 0.068415923354),
        ],
    ),
    "fractional_logit_icc_0.3": (
        [
            (0.610877044933, 3.24762023196, 0.445990236548),
            (0.655199482123, 3.17728701436, 0.797244442510),
            (0.408451694692, 4.87393578726, 0.419721356795),
            (0.162082351318, 9.39336847248, 0.060093290484),
        ],
        [
            (0.478831199294, 3.521366544193, 0.654721765979),
            (0.749057041854, 3.247620231956, 0.445990236548),
            (4.565561519780, 9.393368472485, 0.060093290484),
        ],
    ),
}
CASES = {
    "fractional_logit_clustered": ("ap", "fractional_logit", "pid"),
    "fractional_logit_rows": ("ap", "fractional_logit", None),
    "poisson_clustered": ("hits", "poisson", "pid"),
    "gaussian_clustered": ("ap", "gaussian", "pid"),
    "fractional_logit_icc_0.3": ("ap", "fractional_logit", "pid"),
}


def _table() -> pd.DataFrame:
    return pd.read_csv(io.StringIO(TABLE))


@pytest.mark.parametrize("case", list(CASES))
def test_cr2_and_htz_match_clubsandwich(case):
    outcome, family, cluster = CASES[case]
    df = _table()
    other = {"ap": "hits", "hits": "ap"}[outcome]
    exclude = [other] if cluster is not None else [other, "pid"]
    frame = build_analysis_frame(df, outcomes=[outcome], cluster=cluster, exclude=exclude)
    assert [list(frame.data[g].cat.categories) for g in ("bag", "col", "cam")] == [
        ["no", "yes"],
        ["black", "blue", "red"],
        ["c1", "c2"],
    ]
    icc = 0.3 if case.endswith("icc_0.3") else 0.0
    res = fit_glm(frame, outcome, family=family, icc=icc)
    coef_ref, test_ref = R_VALUES[case]
    co = res.coefficients.set_index(["attribute", "level"])
    levels = [("bag", "yes"), ("col", "blue"), ("col", "red"), ("cam", "c2")]
    got = co.loc[levels, ["std_err", "df_denom", "p_value"]].to_numpy(dtype=float)
    np.testing.assert_allclose(got, np.array(coef_ref), rtol=2e-6)
    gt = res.group_tests.set_index("attribute")
    assert set(gt.loc[["col", "bag", "cam"], "test"]) == {"wald_htz"}
    got = gt.loc[["col", "bag", "cam"], ["f_statistic", "df_denom", "p_value"]].to_numpy(float)
    np.testing.assert_allclose(got, np.array(test_ref), rtol=2e-6)


def test_htz_with_one_constraint_is_the_satterthwaite_t_test():
    """q = 1: F = t^2 on the same degrees of freedom, so the two p-values coincide."""
    frame = build_analysis_frame(_table(), outcomes=["ap"], cluster="pid", exclude=["hits"])
    res = fit_glm(frame, "ap")
    co = res.coefficients.set_index("attribute")
    gt = res.group_tests.set_index("attribute")
    for g in ("bag", "cam"):
        assert gt.loc[g, "df_denom"] == pytest.approx(co.loc[g, "df_denom"], rel=1e-9)
        assert gt.loc[g, "f_statistic"] == pytest.approx(co.loc[g, "statistic"] ** 2, rel=1e-9)
        assert gt.loc[g, "p_value"] == pytest.approx(co.loc[g, "p_value"], rel=1e-9)


def test_htz_df_of_a_balanced_two_group_design_is_the_welch_limit():
    """Known answer: an OLS two-group comparison, one row per cluster, equal groups of m. CR2
    is then the unbiased two-sample variance, and the Satterthwaite df under the working model
    (homoscedastic normal errors) is 2m - 2, the pooled-t df (Pustejovsky & Tipton 2018, sec.
    3; Bell & McCaffrey 2002)."""
    for m in (3, 5, 12):
        X = np.column_stack([np.ones(2 * m), np.repeat([0.0, 1.0], m)])
        ones = np.ones(2 * m)
        pieces = cr2_pieces(X, ones, ones, ones, np.zeros(2 * m), np.arange(2 * m))
        assert htz_df(pieces, np.array([[0.0, 1.0]])) == pytest.approx(2 * m - 2, rel=1e-9)


def test_htz_df_counts_the_clusters_of_the_reference_level():
    """A contrast is only as well estimated as the sparser of its two sides: with the level in
    40 clusters and the reference in 3, the df are near 3 - 1, not 40 - 1 (the old rule)."""
    X = np.column_stack([np.ones(43), np.r_[np.zeros(3), np.ones(40)]])
    ones = np.ones(43)
    pieces = cr2_pieces(X, ones, ones, ones, np.zeros(43), np.arange(43))
    nu = htz_df(pieces, np.array([[0.0, 1.0]]))
    assert 1.5 < nu < 3.0


def test_hotelling_approximation_refuses_too_few_df():
    assert np.isnan(htz_test(10.0, 3, 1.5)[1])
    F, df = htz_test(10.0, 2, 8.0)
    assert df == pytest.approx(7.0) and pytest.approx(7.0 / 8.0 * 10.0 / 2) == F
    assert stats.f.sf(F, 2, df) > stats.chi2.sf(10.0, 2)


def test_cr2_low_rank_adjustment_equals_the_general_one_on_configuration_clusters(monkeypatch):
    """A crossed table's configuration clusters hold hundreds of cells sharing one variance; the
    CR2 adjustment is then computed from a p x p eigenproblem instead of two n x n ones. It must
    give the same pieces (covariance and HTZ df) as the general clubSandwich form."""
    import studies.small_sample as ss

    rng = np.random.default_rng(5)
    n_cfg, n_id, p = 6, 40, 4
    on = rng.integers(0, 2, (n_cfg, p - 1))
    X = np.column_stack([np.ones(n_cfg * n_id), np.repeat(on, n_id, axis=0)]).astype(float)
    mu = 1 / (1 + np.exp(-(X @ rng.normal(0, 0.5, p))))
    v = mu * (1 - mu)  # one variance per configuration: its cells share the mean
    n = rng.integers(1, 6, len(mu)).astype(float)
    r = rng.normal(0, 1, len(mu)) * np.sqrt(n * v)
    cluster = np.repeat(np.arange(n_cfg), n_id)
    fast = ss.cr2_pieces(X, n, v, v, r, cluster, icc=0.0)
    general = ss._adjustment

    def force_general(*args, **kw):
        return general(*args, **{**kw, "independent": False})

    monkeypatch.setattr(ss, "_adjustment", force_general)
    slow = ss.cr2_pieces(X, n, v, v, r, cluster, icc=0.0)
    np.testing.assert_allclose(fast.covariance, slow.covariance, rtol=1e-9, atol=1e-14)
    C = np.eye(p)[1:2]
    assert ss.htz_df(fast, C) == pytest.approx(ss.htz_df(slow, C), rel=1e-9)

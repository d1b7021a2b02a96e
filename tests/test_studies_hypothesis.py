"""studies.hypothesis and studies.corrections against published R results and scipy /
statsmodels on hand-built data.

Known answers (R 4.x):
- ``wilcox.test(mpg ~ am, data = mtcars)``: W = 42, p = 0.001871;
  ``effectsize::rank_biserial(mpg ~ am, data = mtcars)``: r = -0.66, 95% CI [-0.84, -0.36]
  (our sign is "non-reference level minus reference"; the reference am = 0 is the most frequent).
- ``kruskal.test(list(x, y, z))`` (its help-page example): chi-squared = 0.77143, p = 0.68.
- ``wilcox.test(x, y, paired = TRUE)`` on the help page's depression data: V = 40,
  two-sided p = 0.03906.
- ``t.test(extra ~ group, data = sleep, paired = TRUE)``: t = -4.0621, df = 9, p = 0.002833,
  mean difference (group 1 - group 2) = -1.58.

Paired tests report ``reference - condition`` (positive = what the condition removes helps), so
R's ``t.test(reference, condition, paired = TRUE)`` has our signs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from studies.corrections import adjust
from studies.design import build_analysis_frame
from studies.errors import StudyInputError
from studies.hypothesis import _kw_h, group_tests, paired_tests

MPG = [21.0, 21.0, 22.8, 21.4, 18.7, 18.1, 14.3, 24.4, 22.8, 19.2, 17.8, 16.4, 17.3, 15.2, 10.4, 10.4,
       14.7, 32.4, 30.4, 33.9, 21.5, 15.5, 15.2, 13.3, 19.2, 27.3, 26.0, 30.4, 15.8, 19.7, 15.0, 21.4]  # fmt: skip
AM = [
    1,
    1,
    1,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    1,
    1,
    1,
    0,
    0,
    0,
    0,
    0,
    1,
    1,
    1,
    1,
    1,
    1,
    1,
]


# ----------------------------------------------------------------------------------------------
# corrections
# ----------------------------------------------------------------------------------------------
def test_holm_and_bh_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> 0.02, 0.03, 0.06, max(0.06, 0.04)
    np.testing.assert_allclose(adjust(p, "holm"), [0.03, 0.06, 0.06, 0.02])
    # BH: p*m/rank = 0.02, 0.02, 0.04, 0.04 (running minimum from the top)
    np.testing.assert_allclose(adjust(p, "fdr_bh"), [0.02, 0.04, 0.04, 0.02])


def test_adjust_is_nan_safe_and_equals_statsmodels():
    np.testing.assert_allclose(adjust([0.01, np.nan, 0.04], "holm"), [0.02, np.nan, 0.04])
    rng = np.random.default_rng(0)
    for _ in range(8):  # statsmodels' holm runs gc.collect() per call: keep this loop short
        p = rng.random(rng.integers(1, 25)) ** 2
        for m in ("holm", "fdr_bh"):
            np.testing.assert_allclose(adjust(p, m), multipletests(p, method=m)[1])
    assert adjust([], "holm").shape == (0,)
    with pytest.raises(ValueError):
        adjust([0.1], "sidak-ish")


# ----------------------------------------------------------------------------------------------
# group tests on independent rows: published values
# ----------------------------------------------------------------------------------------------
def test_mann_whitney_and_rank_biserial_match_r():
    frame = build_analysis_frame(pd.DataFrame({"mpg": MPG, "am": AM}), outcomes="mpg")
    row = group_tests(frame, "mpg").iloc[0]
    assert row["test"] == "mann_whitney_u" and row["unit"] == "row" and row["n"] == 32
    assert row["p_value"] == pytest.approx(0.001871, abs=5e-7)
    assert 13 * 19 - row["statistic"] == 42  # R's W is the U of the reference group am = 0
    assert row["effect_size"] == pytest.approx(0.66, abs=0.005)
    assert row["ci_low"] == pytest.approx(0.36, abs=0.005)
    assert row["ci_high"] == pytest.approx(0.84, abs=0.005)


def test_kruskal_wallis_matches_r():
    x, y, z = [2.9, 3.0, 2.5, 2.6, 3.2], [3.8, 2.7, 4.0, 2.4], [2.8, 3.4, 3.7, 2.2, 2.0]
    df = pd.DataFrame({"v": x + y + z, "g": ["x"] * 5 + ["y"] * 4 + ["z"] * 5})
    row = group_tests(build_analysis_frame(df, outcomes="v"), "v", n_boot=300).iloc[0]
    assert row["test"] == "kruskal_wallis"
    assert row["statistic"] == pytest.approx(0.77143, abs=1e-5)
    assert row["p_value"] == pytest.approx(0.68, abs=0.001)
    assert row["effect_size"] == pytest.approx(0.77143 / 13, abs=1e-5)
    assert 0 <= row["ci_low"] <= row["ci_high"] <= 1


def test_vectorised_kruskal_h_equals_scipy_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, (20, 50)).astype(float)
    g = rng.integers(0, 4, (20, 50))
    ours = _kw_h(y, g, 4)
    ref = [stats.kruskal(*[y[i][g[i] == j] for j in range(4)]).statistic for i in range(20)]
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


# ----------------------------------------------------------------------------------------------
# clustered rows
# ----------------------------------------------------------------------------------------------
def _clustered(seed=0, n_id=80, per=6, effect=0.0, cluster_sd=1.0):
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(n_id), per)
    bag = rng.choice(["no", "yes"], n_id, p=[0.6, 0.4])[pid].astype(object)
    colour = rng.choice(["red", "blue", "black"], n_id)[pid].astype(object)
    u = rng.normal(0, cluster_sd, n_id)[pid]
    y = u + effect * (bag == "yes") + rng.normal(0, 1, len(pid))
    return pd.DataFrame({"y": y, "pid": pid, "bag": bag, "colour": colour})


def test_identity_level_attributes_are_tested_on_cluster_means():
    df = _clustered(seed=1, effect=1.5)
    frame = build_analysis_frame(df, outcomes="y", cluster="pid")
    res = group_tests(frame, "y", n_boot=200).set_index("attribute")
    means = df.groupby("pid").agg(y=("y", "mean"), bag=("bag", "first"), colour=("colour", "first"))
    mw = stats.mannwhitneyu(means.y[means.bag == "yes"], means.y[means.bag == "no"])
    assert res.loc["bag", "unit"] == "cluster" and res.loc["bag", "n"] == 80
    assert res.loc["bag", "statistic"] == pytest.approx(mw.statistic)
    assert res.loc["bag", "p_value"] == pytest.approx(mw.pvalue)
    kw = stats.kruskal(*[means.y[means.colour == c] for c in ("red", "blue", "black")])
    assert res.loc["colour", "statistic"] == pytest.approx(kw.statistic)
    assert res.loc["colour", "p_value"] == pytest.approx(kw.pvalue)
    assert res.loc["bag", "p_value"] < 0.01 and res.loc["bag", "effect_size"] > 0
    np.testing.assert_allclose(res["p_holm"], multipletests(res["p_value"], method="holm")[1])
    np.testing.assert_allclose(res["p_fdr_bh"], multipletests(res["p_value"], method="fdr_bh")[1])


def test_within_cluster_attribute_uses_within_cluster_permutation():
    # An image-level attribute ("occluded") that varies within identities. Identities with a high
    # random effect are occluded more often, but occlusion itself does nothing: the naive row test
    # is fooled by the between-identity confounding, the within-cluster permutation is not.
    rng = np.random.default_rng(5)
    n_id, per = 60, 10
    pid = np.repeat(np.arange(n_id), per)
    u = rng.normal(0, 1.5, n_id)
    p_occ = 1 / (1 + np.exp(-2 * u))
    occ = np.where(rng.random(n_id * per) < p_occ[pid], "yes", "no")
    y = u[pid] + rng.normal(0, 0.5, n_id * per)
    df = pd.DataFrame({"y": y, "pid": pid, "occluded": occ})
    frame = build_analysis_frame(df, outcomes="y", cluster="pid")
    row = group_tests(frame, "y", n_perm=499, n_boot=100).iloc[0]
    naive = group_tests(dataclasses.replace(frame, cluster=None), "y", n_boot=0).iloc[0]
    # 60 varying identities: method="auto" trusts the stratified statistic's chi² reference
    assert row["test"] == "mann_whitney_u+stratified_asymptotic"
    assert naive["p_value"] < 1e-6
    assert row["p_value"] > 0.05
    perm = group_tests(frame, "y", n_perm=499, n_boot=0, method="permutation").iloc[0]
    assert perm["test"] == "mann_whitney_u+cluster_permutation"
    assert perm["p_value"] > 0.05
    # with a real within-identity effect the permutation test finds it
    df["y"] = df["y"] + 0.8 * (df["occluded"] == "yes")
    frame = build_analysis_frame(df, outcomes="y", cluster="pid")
    row = group_tests(frame, "y", n_perm=499, n_boot=0).iloc[0]
    assert row["p_value"] <= 2 / 500


def test_group_tests_are_deterministic_for_a_seed():
    frame = build_analysis_frame(_clustered(seed=2), outcomes="y", cluster="pid")
    a = group_tests(frame, "y", n_boot=100, seed=3)
    b = group_tests(frame, "y", n_boot=100, seed=3)
    pd.testing.assert_frame_equal(a, b)


# ----------------------------------------------------------------------------------------------
# paired designs
# ----------------------------------------------------------------------------------------------
def _sleep() -> pd.DataFrame:
    g1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
    g2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
    return pd.DataFrame(
        {"extra": g1 + g2, "group": ["1"] * 10 + ["2"] * 10, "ID": list(range(10)) * 2}
    )


def test_paired_t_and_cohen_dz_match_r():
    frame = build_analysis_frame(_sleep(), outcomes="extra", paired_by="ID", condition="group")
    res = paired_tests(frame, "extra").set_index("test")
    t = res.loc["paired_t"]
    assert t["attribute"] == "2" and t["reference"] == "1"  # tie in counts: first seen
    # reference "1" minus condition "2": R's t.test(extra ~ group, paired = TRUE) exactly
    assert t["statistic"] == pytest.approx(-4.0621, abs=1e-4)
    assert t["p_value"] == pytest.approx(0.002833, abs=1e-6)
    assert t["mean_difference"] == pytest.approx(-1.58)
    assert t["effect_size"] == pytest.approx(
        -1.58 / np.std(np.array([1.2, 2.4, 1.3, 1.3, 0, 1, 1.8, 0.8, 4.6, 1.4]), ddof=1)
    )
    assert t["ci_low"] < t["effect_size"] < t["ci_high"]
    assert t["n"] == 10 and t["unit"] == "pair"


def test_wilcoxon_signed_rank_matches_r():
    x = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30]
    y = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29]
    df = pd.DataFrame({"v": y + x, "cond": ["pre"] * 9 + ["post"] * 9, "q": list(range(9)) * 2})
    frame = build_analysis_frame(df, outcomes="v", paired_by="q", condition="cond")
    row = paired_tests(frame, "v", reference="pre").set_index("test").loc["wilcoxon_signed_rank"]
    assert row["p_value"] == pytest.approx(0.03906, abs=1e-5)
    # differences pre - post = y - x: R's wilcox.test(y, x, paired = TRUE) has V = 5 = T+, and
    # wilcox.test(x, y) V = 40 = T-; (T+ - T-) / (T+ + T-)
    assert row["effect_size"] == pytest.approx((5 - 40) / 45)
    assert row["ci_low"] < row["effect_size"] < row["ci_high"]


def test_paired_differences_are_averaged_per_cluster_and_adjusted_per_test():
    rng = np.random.default_rng(7)
    n_q = 120
    pid = rng.integers(0, 30, n_q)
    base = rng.normal(0, 1, 30)[pid] + rng.normal(0, 1, n_q)
    rows = []
    for cond, shift in (("full", 0.0), ("no_hat", -0.3), ("no_bag", 0.0), ("no_age", -0.05)):
        rows.append(
            pd.DataFrame(
                {
                    "q": np.arange(n_q),
                    "pid": pid,
                    "config": cond,
                    "ap": base + shift + rng.normal(0, 0.2, n_q),
                }
            )
        )
    df = pd.concat(rows, ignore_index=True)
    df = df.drop(index=df.index[(df.config == "no_bag") & (df.q < 3)])  # 3 unpaired queries
    frame = build_analysis_frame(
        df, outcomes="ap", cluster="pid", paired_by="q", condition="config"
    )
    res = paired_tests(frame, "ap", reference="full")
    assert set(res["attribute"]) == {"no_hat", "no_bag", "no_age"}
    w = res[res.test == "wilcoxon_signed_rank"].set_index("attribute")
    # by hand: per-cluster mean difference, then scipy
    wide = df.pivot(index="q", columns="config", values="ap")
    d = (wide["full"] - wide["no_hat"]).groupby(pid).mean()
    assert w.loc["no_hat", "n"] == d.size and w.loc["no_hat", "unit"] == "cluster"
    assert w.loc["no_hat", "p_value"] == pytest.approx(stats.wilcoxon(d.to_numpy()).pvalue)
    # no_hat loses 0.3: the hat helps, so the effect is positive (reference - condition)
    assert w.loc["no_hat", "p_value"] < 0.001 and w.loc["no_hat", "effect_size"] > 0
    assert w.loc["no_bag", "n_pairs"] == n_q - 3
    assert any("3 rows" in m for m in res.attrs["warnings"])
    for _, fam in res.groupby("test"):
        np.testing.assert_allclose(fam["p_holm"], multipletests(fam["p_value"], method="holm")[1])


def test_paired_tests_refuse_non_paired_frames_and_duplicate_pairs():
    frame = build_analysis_frame(_clustered(), outcomes="y", cluster="pid")
    with pytest.raises(StudyInputError, match="paired design"):
        paired_tests(frame, "y")
    df = pd.concat([_sleep(), _sleep().iloc[[0]]], ignore_index=True)
    frame = build_analysis_frame(df, outcomes="extra", paired_by="ID", condition="group")
    with pytest.raises(StudyInputError, match="ID=0 appears more than once under group='1'"):
        paired_tests(frame, "extra")


# ----------------------------------------------------------------------------------------------
# epsilon² intervals agree with the test; one sign convention for paired tests
# ----------------------------------------------------------------------------------------------
def test_epsilon_squared_interval_agrees_with_the_kruskal_wallis_test():
    """The old percentile bootstrap of H / (n - 1) excluded 0 at p = 0.31 (H >= 0 and a
    bootstrap resample inflates it). The interval now inverts the test: it excludes 0 exactly
    when p < alpha, and its lower end is the noncentrality that puts H at the 1 - alpha quantile
    of chi²(k - 1, lambda), over n - 1."""
    rng = np.random.default_rng(11)
    seen_large_p = seen_small_p = 0
    for i in range(40):
        shift = [0.0, 0.15 * (i % 4), 0.3 * (i % 4)]
        g = np.repeat(["x", "y", "z"], 20)
        v = rng.normal(0, 1, 60) + np.repeat(shift, 20)
        row = group_tests(build_analysis_frame(pd.DataFrame({"v": v, "g": g}), outcomes="v"), "v")
        row = row.iloc[0]
        assert row["effect_name"] == "epsilon_squared" and row["ci_high"] == 1.0
        assert (row["ci_low"] > 0) == (row["p_value"] < 0.05), (row["p_value"], row["ci_low"])
        assert row["ci_low"] <= row["effect_size"]
        if row["p_value"] > 0.25:
            seen_large_p += 1
            assert row["ci_low"] == 0.0
        if row["p_value"] < 0.05:
            seen_small_p += 1
            lam = row["ci_low"] * 59
            assert stats.ncx2.sf(row["statistic"], 2, lam) == pytest.approx(0.05, abs=1e-6)
    assert seen_large_p and seen_small_p


def test_within_cluster_epsilon_squared_interval_reaches_zero_at_a_large_p():
    rng = np.random.default_rng(3)
    n_id, per = 40, 8
    pid = np.repeat(np.arange(n_id), per)
    colour = rng.choice(["red", "blue", "black"], n_id * per)  # varies within identities
    y = rng.normal(0, 1, n_id)[pid] + rng.normal(0, 1, n_id * per)
    df = pd.DataFrame({"y": y, "pid": pid, "colour": colour})
    frame = build_analysis_frame(df, outcomes="y", cluster="pid")
    row = group_tests(frame, "y", n_perm=199, n_boot=200).iloc[0]
    assert row["permuted"] == "within_cluster" and row["p_value"] > 0.05
    assert row["ci_low"] == 0.0 and row["ci_high"] == 1.0
    df["y"] = df["y"] + 1.0 * (df["colour"] == "red")
    row = group_tests(build_analysis_frame(df, outcomes="y", cluster="pid"), "y", n_boot=200)
    row = row.iloc[0]
    assert row["p_value"] < 0.01 and 0 < row["ci_low"] < row["effect_size"]


def test_paired_tests_say_positive_when_the_attribute_helps():
    """A planted helping group: AP drops by 0.1 when its experts are off. The paired tests'
    difference, statistic, effect and CI are positive, and equal the study's leave-one-out
    ΔmAP (full - without) with its sign."""
    from attrimp.study.run import leave_one_out_importance

    rng = np.random.default_rng(2)
    n_id, per = 30, 4
    pid = np.repeat(np.arange(n_id), per)
    q = np.arange(n_id * per)
    base = np.clip(0.6 + rng.normal(0, 0.15, n_id)[pid] + rng.normal(0, 0.05, len(q)), 0, 1)
    full = pd.DataFrame({"query": q, "pid": pid, "config": "full", "ap": base})
    without = full.assign(
        config="without:hat", ap=base - 0.1 + rng.normal(0, 0.03, len(q))
    )  # the hat helps
    neutral = full.assign(config="without:age", ap=base + rng.normal(0, 0.03, len(q)))
    df = pd.concat([full, without, neutral], ignore_index=True)
    frame = build_analysis_frame(
        df, outcomes="ap", cluster="pid", paired_by="query", condition="config"
    )
    res = paired_tests(frame, "ap", reference="full")
    hat = res[res["attribute"] == "without:hat"].set_index("test")
    for test in ("wilcoxon_signed_rank", "paired_t"):
        r = hat.loc[test]
        assert r["mean_difference"] > 0.08
        assert r["effect_size"] > 0 and r["ci_low"] > 0 and r["p_value"] < 1e-6
    assert hat.loc["paired_t", "statistic"] > 0  # scipy's Wilcoxon statistic is min(T+, T-)
    deltas = pd.DataFrame(
        {
            "query": q,
            "pid": pid,
            "group": "hat",
            "delta_ap": base - without["ap"].to_numpy(),
        }
    )
    loo = leave_one_out_importance(deltas, n_boot=50).set_index("attribute")
    # equal cluster sizes: the query-weighted ΔmAP equals the mean of the cluster means
    assert hat.loc["paired_t", "mean_difference"] == pytest.approx(loo.loc["hat", "delta_map"])
    age = res[(res["attribute"] == "without:age") & (res["test"] == "paired_t")].iloc[0]
    assert abs(age["mean_difference"]) < 0.02

"""Crossed designs (queries × configurations): inference at the unit the design varied.

Known answers only: statsmodels' own two-way clustering, a randomisation p-value enumerated by
hand with statsmodels' F test, null rejection rates within binomial error, planted effects."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from studies.crossed import is_crossed, two_way_resample
from studies.design import build_analysis_frame
from studies.errors import StudyInputError
from studies.glm import fit_glm
from studies.randomization import randomization_tests
from studies.simulate import simulate_crossed_table

GROUPS = ["g0", "g1", "g2", "g3"]


def _frame(df: pd.DataFrame, *, randomized: bool = True):
    return build_analysis_frame(
        df,
        outcomes="ap",
        cluster="pid",
        condition="config",
        exclude=["query"],
        randomized=df.attrs["randomized_conditions"] if randomized else None,
    )


def test_crossed_frame_without_paired_by_and_randomized_values_checked() -> None:
    df = simulate_crossed_table(6, 2, 8, GROUPS, seed=1)
    frame = _frame(df)
    assert is_crossed(frame) and frame.paired_by is None
    assert set(frame.randomized_conditions) == set(range(8))
    with pytest.raises(StudyInputError, match="randomized condition '99'"):
        build_analysis_frame(
            df, outcomes="ap", cluster="pid", condition="config", exclude=["query"], randomized=[99]
        )


@pytest.mark.parametrize("family", ["gaussian", "fractional_logit"])
def test_two_way_cr1_equals_statsmodels(family: str) -> None:
    df = simulate_crossed_table(30, 3, 20, GROUPS, effects={"g0": 0.3}, config_sd=0.2, seed=3)
    res = fit_glm(_frame(df), "ap", family=family, cov_type="twoway_cr1")
    X = np.column_stack([np.ones(len(df))] + [(df[g] == "on").to_numpy(float) for g in GROUPS])
    fam = sm.families.Gaussian() if family == "gaussian" else sm.families.Binomial()
    groups = np.column_stack([df["pid"].to_numpy(), df["config"].to_numpy()])
    ref = sm.GLM(df["ap"].to_numpy(), X, family=fam).fit(
        cov_type="cluster", cov_kwds={"groups": groups}
    )
    coefs = res.coefficients
    assert list(coefs["level"]) == ["on"] * 4  # "off" is every group's reference
    np.testing.assert_allclose(coefs["coef"], ref.params[1:], rtol=1e-6)
    np.testing.assert_allclose(coefs["std_err"], ref.bse[1:], rtol=1e-6)
    assert (coefs["df_denom"] == 19).all()  # min(30 identities, 20 configurations) - 1
    assert (res.group_tests["test"] == "wald_twoway_cr1").all()
    assert (res.group_tests["covariance"] == "twoway_cr1").all()


def test_glm_on_crossed_frame_defaults_to_two_way() -> None:
    df = simulate_crossed_table(20, 2, 20, GROUPS, seed=4)
    res = fit_glm(_frame(df), "ap")
    assert (res.group_tests["test"] == "wald_twoway").all()
    assert "two-way" in res.covariance


def _f_by_hand(ybar: np.ndarray, cols: np.ndarray, j: int) -> float:
    """Group j's F on the condition means, by statsmodels' restricted-vs-full F test."""
    X = sm.add_constant(cols)
    full = sm.OLS(ybar, X).fit()
    reduced = sm.OLS(ybar, np.delete(X, j + 1, axis=1)).fit()
    return float(full.compare_f_test(reduced)[0])


@pytest.mark.filterwarnings("ignore")  # an aliased re-draw has no F: counted as not >= T
def test_randomization_p_is_exact_on_a_tiny_design() -> None:
    df = simulate_crossed_table(4, 2, 6, ["g0", "g1"], effects={"g0": 0.4}, seed=7)
    frame = _frame(df)
    table = randomization_tests(frame, "ap", n_perm=999)
    means = df.groupby("config").agg(ap=("ap", "mean"), g0=("g0", "first"), g1=("g1", "first"))
    cols = (means[["g0", "g1"]] == "on").to_numpy(float)
    y = means["ap"].to_numpy()
    for j, g in enumerate(["g0", "g1"]):
        observed = _f_by_hand(y, cols, j)
        null = []
        for perm in set(itertools.permutations(cols[:, j])):  # every distinct re-draw
            c = cols.copy()
            c[:, j] = perm
            null.append(_f_by_hand(y, c, j))
        p_exact = np.mean(np.array(null) >= observed * (1 - 1e-9))
        row = table.set_index("attribute").loc[g]
        assert row["test"] == "randomization_exact"
        assert row["p_value"] == pytest.approx(p_exact, abs=1e-12)
        assert row["statistic"] == pytest.approx(observed, rel=1e-8)


def test_randomization_respects_fixed_conditions_and_untestable_groups() -> None:
    df = simulate_crossed_table(5, 2, 12, ["g0", "g1"], seed=2)
    df["pidattr"] = np.where(df["pid"] % 2 == 0, "a", "b")  # varies within configurations
    on = df.loc[df["g0"] == "on", "config"].unique()
    frame = build_analysis_frame(
        df, outcomes="ap", cluster="pid", condition="config", exclude=["query"], randomized=on
    )
    table = randomization_tests(frame, "ap", n_perm=99).set_index("attribute")
    # g0 is "on" in every randomized configuration: re-drawing it changes nothing
    assert table.loc["g0", "test"] == "not testable"
    assert table.loc["pidattr", "test"] == "not testable"
    assert np.isnan(table.loc["pidattr", "p_value"])
    assert table.loc["g1", "n_randomized"] == len(on)
    unsaid = randomization_tests(_frame(df.drop(columns="pidattr"), randomized=False), "ap")
    assert unsaid["note"].str.contains("assumed randomized").all()


def _null_rates(n_tables: int, config_sd: float, n_configs: int, seed0: int) -> dict:
    rand_rej, rand_fw, glm1_rej = [], [], []
    for r in range(n_tables):
        df = simulate_crossed_table(10, 2, n_configs, GROUPS, config_sd=config_sd, seed=seed0 + r)
        table = randomization_tests(_frame(df), "ap", n_perm=99, seed=r)
        rand_rej.append(table["p_value"].to_numpy() < 0.05)
        rand_fw.append(bool((table["p_holm"] < 0.05).any()))
    return {"size": float(np.mean(rand_rej)), "fwer": float(np.mean(rand_fw)), "glm1": glm1_rej}


def test_randomization_size_under_crossed_null() -> None:
    """200 null tables × 4 groups: per-group size 0.05 within 3 binomial SE, and not
    needlessly conservative (>= 0.035); Holm FWER <= alpha + 3 SE."""
    rates = _null_rates(200, 0.3, 20, 50_000)
    se = np.sqrt(0.05 * 0.95 / 800)
    assert 0.035 <= rates["size"] <= 0.05 + 3 * se
    assert rates["fwer"] <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 200)


def test_identity_clustering_over_rejects_where_randomization_holds() -> None:
    """The defect of issue 16: with configuration noise, the GLM clustered by identity alone
    (today's battery) takes the configurations' noise for signal; the randomisation test
    does not."""
    glm_rej, rand_rej = [], []
    for r in range(15):
        df = simulate_crossed_table(24, 3, 30, GROUPS, config_sd=0.3, seed=70_000 + r)
        one_way = build_analysis_frame(
            df.drop(columns="config"), outcomes="ap", cluster="pid", exclude=["query"]
        )
        glm_rej.append(fit_glm(one_way, "ap").group_tests["p_value"].to_numpy() < 0.05)
        rand_rej.append(randomization_tests(_frame(df), "ap", n_perm=99)["p_value"] < 0.05)
    assert np.mean(glm_rej) > 0.5
    assert np.mean(rand_rej) < 0.15


def test_randomization_power_on_planted_switching_effect() -> None:
    hits = []
    for r in range(20):
        df = simulate_crossed_table(
            20, 2, 50, GROUPS, effects={"g0": 0.3}, config_sd=0.15, seed=90_000 + r
        )
        table = randomization_tests(_frame(df), "ap", n_perm=199).set_index("attribute")
        hits.append(table.loc["g0", "p_holm"] < 0.05)
    assert np.mean(hits) >= 0.8


def test_randomization_is_fast() -> None:
    import time

    g12 = [f"g{i}" for i in range(12)]
    frame = _frame(simulate_crossed_table(10, 2, 50, g12, seed=5))
    t = time.perf_counter()
    randomization_tests(frame, "ap", n_perm=999)
    assert time.perf_counter() - t < 1.0


def test_two_way_resample_keeps_cells_whole() -> None:
    df = simulate_crossed_table(6, 2, 5, GROUPS, seed=8)
    frame = _frame(df)
    rng = np.random.default_rng(0)
    rep = two_way_resample(frame, rng)
    # replay the draws: identities, then configurations
    rng = np.random.default_rng(0)
    ids = pd.factorize(frame.data["pid"])[1]
    cfg = pd.factorize(frame.data["config"])[1]
    draw_a, draw_b = rng.integers(0, len(ids), len(ids)), rng.integers(0, len(cfg), len(cfg))
    expected = sum(
        int(((frame.data["pid"] == ids[i]) & (frame.data["config"] == cfg[j])).sum())
        for i in draw_a
        for j in draw_b
    )
    assert len(rep.data) == expected
    for (a, b), cell in rep.data.groupby(["pid", "config"]):
        orig = frame.data[
            (frame.data["pid"] == ids[draw_a[a]]) & (frame.data["config"] == cfg[draw_b[b]])
        ]
        np.testing.assert_allclose(np.sort(cell["ap"]), np.sort(orig["ap"]))
    assert len(rep.randomized_conditions) == len(cfg)


@pytest.mark.slow
def test_randomization_size_across_noise_and_configurations() -> None:
    """The issue's grid, a coarser replicate count: per-group size within binomial error of
    0.05 and Holm FWER <= alpha + 3 SE at every configuration noise and count."""
    for sd, k in [(0.0, 20), (0.05, 50), (0.15, 100), (0.3, 50)]:
        rates = _null_rates(150, sd, k, int(1e6 * sd) + 100 * k)
        se = np.sqrt(0.05 * 0.95 / 600)
        assert 0.05 - 3.5 * se <= rates["size"] <= 0.05 + 3 * se, (sd, k, rates)
        assert rates["fwer"] <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 150), (sd, k, rates)


def test_rank_tests_on_crossed_frame_use_condition_means() -> None:
    from scipy import stats

    from studies.hypothesis import group_tests

    df = simulate_crossed_table(12, 2, 16, GROUPS, effects={"g0": 0.3}, config_sd=0.1, seed=11)
    table = group_tests(_frame(df), "ap", n_boot=0).set_index("attribute")
    means = df.groupby("config").agg(ap=("ap", "mean"), **{g: (g, "first") for g in GROUPS})
    for g in GROUPS:
        ref = stats.mannwhitneyu(
            means.loc[means[g] == "on", "ap"], means.loc[means[g] == "off", "ap"]
        )
        assert table.loc[g, "test"] == "mann_whitney_u+per_condition"
        assert table.loc[g, "unit"] == "condition" and table.loc[g, "n"] == 16
        assert table.loc[g, "p_value"] == pytest.approx(ref.pvalue, rel=1e-10)


def test_importance_on_crossed_frame_holds_out_whole_conditions() -> None:
    from studies.importance import grouped_permutation_importance

    df = simulate_crossed_table(8, 2, 15, GROUPS, effects={"g0": 0.5}, seed=12)
    frame = _frame(df)
    res = grouped_permutation_importance(frame, "ap", n_repeats=2, cv=3, n_boot=20)
    assert (res.table["held_out"] == "condition config").all()
    cond = frame.data["config"].to_numpy()
    for fm in res.fitted_models:
        test_rows = np.zeros(len(cond), dtype=bool)
        test_rows[fm.test_index] = True
        assert not set(cond[test_rows]) & set(cond[~test_rows])
    assert any("holds out whole conditions" in w for w in res.warnings)


def test_two_way_glm_holds_size_on_crossed_null() -> None:
    """Configuration noise (SD 0.3, 20 configurations): the default two-way GLM test keeps its
    size within binomial error where identity clustering alone rejects most nulls."""
    rej = []
    for r in range(30):
        df = simulate_crossed_table(16, 2, 20, GROUPS, config_sd=0.3, seed=80_000 + r)
        rej.append(fit_glm(_frame(df), "ap").group_tests["p_value"].to_numpy() < 0.05)
    assert np.mean(rej) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 120)


@pytest.mark.parametrize("family", ["gaussian", "fractional_logit"])
def test_one_cell_cr2_shortcut_equals_general_cr2(family: str) -> None:
    """The vectorised CR2 of one-cell clusters equals small_sample.cr2_pieces (itself checked
    against clubSandwich) on the (identity, configuration) clusters of a crossed table."""
    from studies import glm
    from studies.small_sample import cr2_pieces

    df = simulate_crossed_table(10, 2, 8, GROUPS[:3], config_sd=0.2, seed=3)
    frame = _frame(df)
    y = frame.data["ap"].to_numpy()
    levels, codes = glm._present_levels(frame, GROUPS[:3], len(y))
    d, _ = glm._two_way_design(frame, codes, GROUPS[:3], levels, y, "twoway")
    fam = glm._sm_family(family)
    b, _ = glm._fit_cells(d, d.X, family, [])
    mu = np.asarray(fam.link.inverse(d.X @ b))
    v = np.asarray(fam.variance(mu))
    dmu = np.asarray(fam.link.inverse_deriv(fam.link(mu)))
    r = d.sy - d.n * mu
    general = cr2_pieces(d.X, d.n, v, dmu, r, d.cell_cluster, icc=0.0).covariance
    np.testing.assert_allclose(glm._one_cell_cr2(d, d.X, v, r), general, rtol=1e-10, atol=1e-14)


def crossed_grid(n_null: int = 200, n_glm: int = 60, n_power: int = 30) -> str:
    """The table of docs/studies.md ("Crossed designs"): FWER, per-group size and power of the
    randomisation test and the two-way GLM on 48 identities × 12 groups, for configuration
    noise 0-0.3 and 20-100 configurations (``python -m tests.test_studies_crossed``; ~25 min)."""
    g12 = [f"g{i}" for i in range(12)]

    def one(sd: float, k: int, seed: int, effects: dict, glm: bool):
        df = simulate_crossed_table(48, 3, k, g12, config_sd=sd, effects=effects, seed=seed)
        frame = _frame(df)
        p = randomization_tests(frame, "ap", n_perm=999, seed=seed)
        return p, fit_glm(frame, "ap").group_tests if glm else None

    lines = [
        "| config SD | configs | rand FWER | rand size | rand power g0 / g1 | two-way GLM FWER "
        "| two-way GLM size | two-way GLM power g0 / g1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in (20, 50, 100):
        for sd in (0.0, 0.05, 0.15, 0.3):
            fw_r, sz_r, fw_g, sz_g, pw_r, pw_g = [], [], [], [], [], []
            for r in range(n_null):
                p, g = one(sd, k, 10_000 * k + r, {}, r < n_glm)
                fw_r.append((p["p_holm"] < 0.05).any())
                sz_r.append(np.mean(p["p_value"] < 0.05))
                if g is not None:
                    fw_g.append((g["p_holm"] < 0.05).any())
                    sz_g.append(np.mean(g["p_value"] < 0.05))
            for r in range(n_power):
                p, g = one(sd, k, 20_000 * k + r, {"g0": 0.1, "g1": 0.2}, True)
                pw_r.append(p["p_holm"].to_numpy()[:2] < 0.05)
                pw_g.append(g["p_holm"].to_numpy()[:2] < 0.05)
            pr, pg = np.mean(pw_r, axis=0), np.mean(pw_g, axis=0)
            lines.append(
                f"| {sd} | {k} | {np.mean(fw_r):.3f} | {np.mean(sz_r):.3f} | {pr[0]:.2f} / "
                f"{pr[1]:.2f} | {np.mean(fw_g):.3f} | {np.mean(sz_g):.3f} | {pg[0]:.2f} / "
                f"{pg[1]:.2f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(crossed_grid())

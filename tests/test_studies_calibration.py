"""Null calibration and planted-effect recovery of the battery's tests, by simulation.

On *null* Market-like tables (no attribute matters; a per-identity random effect makes the
queries of one identity correlated; attributes are identity-level, with Market-1501's real
frequencies, rare levels included) the family-wise false-positive rate of the Holm decisions
across the 12 attribute groups must stay at or below alpha for the cluster-aware GLM (CR2
covariance, small-sample F tests) and the cluster-aware rank tests (identity-level
aggregation). The same tables analysed naively, rows as independent, must exceed alpha badly:
that is why ``--cluster`` exists. With planted effects, the planted groups must come out on top.

Monte-Carlo slack: with N simulations, a true FWER of alpha gives a Binomial(N, alpha) count of
false-positive runs; we fail only when the count is above its 99th percentile (a one-sided 1%
test of "FWER <= alpha"). The default run uses small tables and ~100 simulations; the slow run
(``-m slow``) uses 750 identities like Market-1501's test split and 400 simulations.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from studies.design import build_analysis_frame, spec_from_toml
from studies.glm import fit_glm
from studies.hypothesis import group_tests
from studies.simulate import GROUP_NAMES, market_like_schema_toml, simulate_reid_table

ALPHA = 0.05
SPEC = spec_from_toml(market_like_schema_toml())
EXCLUDE = ["query", "camid", "rank1", "first_hit"]


def _frame(df):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_analysis_frame(df, outcomes="ap", cluster="pid", exclude=EXCLUDE, spec=SPEC)


def _null_runs(n_sims: int, n_id: int, per_id: int, seed0: int) -> dict[str, np.ndarray]:
    """For each simulated null table: did any Holm-adjusted group test reject? (four methods)"""
    out = {k: np.zeros(n_sims, dtype=bool) for k in ("glm", "rank", "glm_naive", "rank_naive")}
    for s in range(n_sims):
        frame = _frame(simulate_reid_table(n_id * per_id, n_identities=n_id, seed=seed0 + s))
        naive = dataclasses.replace(frame, cluster=None)
        out["glm"][s] = (fit_glm(frame, "ap").group_tests["p_holm"] < ALPHA).any()
        out["rank"][s] = (group_tests(frame, "ap", n_boot=0)["p_holm"] < ALPHA).any()
        out["glm_naive"][s] = (fit_glm(naive, "ap").group_tests["p_holm"] < ALPHA).any()
        out["rank_naive"][s] = (group_tests(naive, "ap", n_boot=0)["p_holm"] < ALPHA).any()
    return out


def _allowed(n_sims: int) -> int:
    """Largest count of false-positive runs consistent with FWER <= alpha (one-sided 1%)."""
    return int(stats.binom.ppf(0.99, n_sims, ALPHA))


N_SIMS = 100


@pytest.fixture(scope="module")
def null_runs():
    return _null_runs(N_SIMS, n_id=150, per_id=5, seed0=10_000)


def test_cluster_robust_glm_keeps_the_familywise_error_rate(null_runs):
    k = int(null_runs["glm"].sum())
    assert k <= _allowed(N_SIMS), f"GLM FWER {k / N_SIMS:.2f} > {ALPHA}"


def test_cluster_aware_rank_tests_keep_the_familywise_error_rate(null_runs):
    k = int(null_runs["rank"].sum())
    assert k <= _allowed(N_SIMS), f"rank-test FWER {k / N_SIMS:.2f} > {ALPHA}"


def test_naive_row_level_tests_badly_exceed_alpha_on_the_same_tables(null_runs):
    # "badly": at least five times alpha, far beyond Monte-Carlo noise
    for key in ("glm_naive", "rank_naive"):
        rate = null_runs[key].mean()
        assert rate >= 5 * ALPHA, f"{key} FWER {rate:.2f} unexpectedly small"
        # and significantly above alpha by an exact binomial test
        assert (
            stats.binomtest(int(null_runs[key].sum()), N_SIMS, ALPHA, alternative="greater").pvalue
            < 1e-6
        )


PLANTED = {"backpack": 0.9, "gender": -0.7, "upcolor": 1.0}


def _planted_ranks(n_sims: int, n_id: int, per_id: int, seed0: int):
    top_glm = top_rank = rejected = 0
    for s in range(n_sims):
        frame = _frame(
            simulate_reid_table(n_id * per_id, n_identities=n_id, effects=PLANTED, seed=seed0 + s)
        )
        glm = fit_glm(frame, "ap").group_tests.set_index("attribute")
        rank = group_tests(frame, "ap", n_boot=0).set_index("attribute")
        top_glm += set(glm["p_value"].nsmallest(3).index) == set(PLANTED)
        top_rank += set(rank["p_value"].nsmallest(3).index) == set(PLANTED)
        rejected += bool((glm.loc[list(PLANTED), "p_holm"] < ALPHA).all())
    return top_glm, top_rank, rejected


def test_planted_groups_come_out_on_top():
    n = 12
    top_glm, top_rank, rejected = _planted_ranks(n, n_id=400, per_id=5, seed0=20_000)
    assert top_glm >= n - 1 and top_rank >= n - 1
    assert rejected >= n - 1
    assert set(PLANTED) <= set(GROUP_NAMES)


@pytest.mark.slow
def test_calibration_at_market_size():
    n_sims = 400
    runs = _null_runs(n_sims, n_id=750, per_id=10, seed0=50_000)
    for key in ("glm", "rank"):
        assert runs[key].sum() <= _allowed(n_sims), f"{key} FWER {runs[key].mean():.3f}"
    for key in ("glm_naive", "rank_naive"):
        assert runs[key].mean() >= 5 * ALPHA
    top_glm, top_rank, rejected = _planted_ranks(50, n_id=750, per_id=10, seed0=60_000)
    assert min(top_glm, top_rank, rejected) >= 48


# ------------------------------------------------------------------------------------------
# Few and unequal clusters: the regimes a new attribute dataset meets (tens of identities,
# lognormal cluster sizes, a level held by a few giant clusters, an attribute that varies
# within clusters). The GLM's CR2 + HTZ tests must keep the Holm family-wise error at alpha
# in every cell. Before HTZ (t(m - 1) with m the non-reference level's clusters, the level
# with the most rows as reference) cell "giant_level" rejected 28 of these 300 null tables,
# above the 24 allowed (measured on the code before this test; 0.10 on the benchmark's seeds).
SMALL_CELLS = {
    "lognormal_20": dict(n_clusters=20, size_sigma=1.0),
    "giant_level": dict(n_clusters=30, size_sigma=1.5, rare_clusters=5),
    "rare_level_50": dict(n_clusters=50, size_sigma=1.0, rare_clusters=6),
    "within_50": dict(n_clusters=50, size_sigma=1.0, within=True),
    "equal_40": dict(n_clusters=40, size_sigma=0.0),
}


def _small_cluster_fwer(cell: dict, n_sims: int, seed0: int) -> int:
    from studies.simulate import simulate_small_cluster_table

    k = 0
    for s in range(n_sims):
        df = simulate_small_cluster_table(seed=seed0 + s, **cell)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame = build_analysis_frame(df, outcomes="ap", cluster="pid")
        k += bool((fit_glm(frame, "ap").group_tests["p_holm"] < ALPHA).any())
    return k


@pytest.mark.parametrize("cell,n_sims", [("giant_level", 300), ("within_50", 120)])
def test_glm_fwer_with_few_unequal_clusters(cell, n_sims):
    k = _small_cluster_fwer(SMALL_CELLS[cell], n_sims, seed0=70_000)
    assert k <= _allowed(n_sims), f"{cell}: GLM FWER {k / n_sims:.3f} > {ALPHA}"


@pytest.mark.slow
@pytest.mark.parametrize("cell", list(SMALL_CELLS))
def test_glm_fwer_with_few_unequal_clusters_full_grid(cell):
    n_sims = 300
    k = _small_cluster_fwer(SMALL_CELLS[cell], n_sims, seed0=80_000)
    assert k <= _allowed(n_sims), f"{cell}: GLM FWER {k / n_sims:.3f} > {ALPHA}"


def test_satterthwaite_t_keeps_its_size_for_a_level_of_unequal_clusters():
    """One identity-level binary attribute over 50 clusters of lognormal size, fractional
    outcome with an identity random effect (ICC ~0.4). HTZ under working independence
    (clubSandwich's default, ``icc=0``) rejected 0.08 at 5% on these seeds (32 of 400, above the
    allowed 31): it counts a big cluster's rows as independent information. The former t(m - 1)
    rejected 0.07-0.08 on other seeds (27 of 400 on these). HTZ with the estimated exchangeable
    working model holds 0.05."""
    n_sims, k = 400, 0
    for s in range(n_sims):
        rng = np.random.default_rng(90_000 + s)
        sizes = np.maximum(1, np.round(rng.lognormal(np.log(6) - 0.5, 1.0, 50))).astype(int)
        pid = np.repeat(np.arange(50), sizes)
        bag = np.array(["no", "yes"], dtype=object)[(rng.random(50) < 0.35).astype(int)][pid]
        latent = 0.5 + rng.normal(0, 0.8, 50)[pid] + rng.normal(0, 1, len(pid))
        df = pd.DataFrame({"pid": pid, "bag": bag, "ap": 1 / (1 + np.exp(-latent))})
        frame = build_analysis_frame(df, outcomes="ap", cluster="pid")
        k += bool(fit_glm(frame, "ap").coefficients["p_value"].iloc[0] < ALPHA)
    assert k <= _allowed(n_sims), f"size {k / n_sims:.3f} > {ALPHA}"

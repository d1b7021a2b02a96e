"""Shapley values of the groups from evaluated coalitions, and LOO-vs-Shapley disagreements.

Known answers only: the permutation definition of the Shapley value on a fully evaluated game,
a planted redundant pair (either group suffices) whose Shapley values are a/2 each and whose
leave-one-out effects are 0, and the false-flag rate on additive games (where LOO and Shapley
are equal by construction).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from studies.errors import StudyInputError
from studies.shapley import (
    DISAGREEMENT_COLUMNS,
    SHAPLEY_COLUMNS,
    conditional_vs_average,
    shapley_map,
    shapley_values,
)

GROUPS6 = [f"g{i}" for i in range(1, 7)]


def permutation_shapley(v: dict[tuple[int, ...], float], m: int) -> np.ndarray:
    """The definition: each player's marginal contribution averaged over all m! orders."""
    phi = np.zeros(m)
    for order in itertools.permutations(range(m)):
        on = [0] * m
        for player in order:
            before = v[tuple(on)]
            on[player] = 1
            phi[player] += v[tuple(on)] - before
    return phi / math.factorial(m)


def balanced_coalitions(m: int, n: int, seed: int) -> list[tuple[int, ...]]:
    """The study's random_subsets design (attrimp.evaluate.ablation.balanced_subsets): each
    group on in about half of ``n`` distinct subsets, none empty or full."""
    rng = np.random.default_rng(seed)
    seen = {(0,) * m, (1,) * m}
    for _ in range(50):
        cols = []
        for _ in range(m):
            col = np.zeros(n, dtype=int)
            col[: n // 2 + int(rng.integers(0, 2)) * (n % 2)] = 1
            rng.shuffle(col)
            cols.append(col)
        rows = [tuple(int(c[i]) for c in cols) for i in range(n)]
        if len(set(rows)) == n and not (set(rows) & seen):
            break
    return rows


def study_design(m: int, n_subsets: int, seed: int) -> list[tuple[str, tuple[int, ...]]]:
    """(design, coalition) of every configuration the study evaluates."""
    out = [("backbone", (0,) * m), ("full", (1,) * m)]
    out += [("only_one", tuple(int(j == i) for j in range(m))) for i in range(m)]
    out += [("leave_one_out", tuple(int(j != i) for j in range(m))) for i in range(m)]
    out += [("random_subsets", c) for c in balanced_coalitions(m, n_subsets, seed)]
    return out


def per_query_table(
    design: list[tuple[str, tuple[int, ...]]],
    value,
    groups: list[str],
    *,
    n_ids: int,
    queries: int,
    noise: float,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """One row per query × configuration: AP = value(coalition) + identity effect + noise."""
    pids = np.repeat(np.arange(n_ids), queries)
    id_effect = rng.normal(0, 0.1, n_ids)[pids]
    frames = []
    for k, (name, coalition) in enumerate(design):
        ap = value(np.array(coalition)) + id_effect + rng.normal(0, noise, len(pids))
        frame = pd.DataFrame(
            {
                "config": f"c{k:03d}",
                "design": name,
                "query": np.arange(len(pids)),
                "pid": pids,
                "ap": ap,
                "valid": True,
            }
        )
        for g, on in zip(groups, coalition):
            frame[f"on_{g}"] = on
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def test_exact_on_a_fully_evaluated_game():
    """All 2^4 coalitions evaluated: the estimate is the permutation-definition Shapley value,
    and the method says exact. The game has pairwise and higher-order interactions."""
    rng = np.random.default_rng(3)
    m, groups = 4, ["a", "b", "c", "d"]
    coalitions = list(itertools.product([0, 1], repeat=m))
    v = {c: float(rng.uniform(0.2, 0.8)) for c in coalitions}
    design = [("random_subsets", c) for c in coalitions]
    table = per_query_table(
        design,
        lambda z: v[tuple(int(x) for x in z)],
        groups,
        n_ids=5,
        queries=2,
        noise=0.0,
        rng=rng,
    )
    # the identity effect shifts every coalition alike and cancels in the Shapley values
    table["ap"] -= table.groupby("config")["ap"].transform("mean") - table["config"].map(
        {f"c{k:03d}": v[c] for k, (_, c) in enumerate(design)}
    )
    out = shapley_values(table, groups, n_boot=20)
    assert list(out.columns) == SHAPLEY_COLUMNS
    np.testing.assert_allclose(out["shapley"], permutation_shapley(v, m), atol=1e-12)
    assert set(out["method"]) == {"exact"}
    assert set(out["n_coalitions"]) == {16}
    # efficiency: the values add up to v(full) − v(∅)
    assert out["shapley"].sum() == pytest.approx(v[(1,) * m] - v[(0,) * m], abs=1e-12)


A, B = 0.10, 0.05


def _redundant_world(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    design = study_design(6, 24, seed)

    def value(z: np.ndarray) -> float:
        return 0.3 + A * max(z[0], z[1]) + B * z[2]

    return per_query_table(design, value, GROUPS6, n_ids=60, queries=3, noise=0.1, rng=rng)


def test_planted_redundant_pair_is_explained():
    """AP = base + a·[g1 or g2] + b·[g3]: LOO ≈ 0 for g1 and g2 and Shapley ≈ a/2 for each;
    both flagged, each naming the other as redundant; g3 agrees (LOO ≈ Shapley ≈ b).

    Tolerances: the LOO's standard error here is 0.011 and the sampled-coalition Shapley
    estimate's 0.005–0.007 (measured over 200 designs), so 3 SE. Interval coverage is
    measured over 50 worlds in test_redundant_pair_rates.
    """
    table = _redundant_world(seed=1)
    out = conditional_vs_average(table, GROUPS6, n_boot=200, seed=0).set_index("attribute")
    assert list(out.reset_index().columns) == DISAGREEMENT_COLUMNS
    for g, other in (("g1", "g2"), ("g2", "g1")):
        row = out.loc[g]
        assert abs(row["loo"]) < 0.033
        assert abs(row["shapley"] - A / 2) < 0.02
        assert row["shapley_ci_low"] > 0
        assert row["disagree"]
        assert row["interacting"] == [other]
        assert f"redundant with {other} (either one suffices)" in row["explanation"]
        assert "smaller than its Shapley value" in row["explanation"]
    g3 = out.loc["g3"]
    assert abs(g3["loo"] - B) < 0.033
    assert abs(g3["shapley"] - B) < 0.02
    assert not g3["disagree"] and g3["interacting"] == []
    assert "agree within their intervals" in g3["explanation"]


def test_size_stratified_beats_plain_kernel_on_a_saturating_game():
    """mAP saturating in the number of groups on, plus a null player (g6 changes nothing):
    over 40 sampled designs, the size-stratified estimator's error against the permutation
    Shapley values is smaller than plain Kernel SHAP's, overall and for the null player (whose
    value neither estimator gets exactly 0 from sampled coalitions)."""
    effects = np.array([0.3, 0.2, 0.2, 0.1, 0.1, 0.0])

    def value(z) -> float:
        return 1 - np.exp(-(np.asarray(z, dtype=float) @ effects) * 2)

    exact = permutation_shapley({c: value(c) for c in itertools.product([0, 1], repeat=6)}, 6)
    errors = {"kernel": [], "size_stratified": []}
    for seed in range(40):
        z = np.array([c for _, c in study_design(6, 24, seed)], dtype=float)
        v = np.array([value(c) for c in z])
        for est in errors:
            errors[est].append(shapley_map(z, est) @ v - exact)
    kernel, strat = (np.abs(np.array(errors[k])) for k in ("kernel", "size_stratified"))
    # measured: mean |error| 0.0070 against 0.0114 overall, 0.0097 against 0.0124 for g6
    assert strat.mean() < 0.75 * kernel.mean()
    assert strat[:, 5].mean() < kernel[:, 5].mean()


def redundant_pair_rates(n_worlds: int, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Over planted redundant worlds: CI coverage of the true Shapley values (a/2, a/2, b, 0,
    0, 0) and LOO effects (0, 0, b, 0, 0, 0), flag rate per group, and how often g1 / g2 name
    exactly the other as their interacting group."""
    truth_sh = np.array([A / 2, A / 2, B, 0, 0, 0])
    truth_loo = np.array([0, 0, B, 0, 0, 0])
    cov_sh, cov_loo, flags, named = [], [], [], []
    for s in range(n_worlds):
        out = conditional_vs_average(
            _redundant_world(1000 + s), GROUPS6, n_boot=200, alpha=alpha, seed=s
        )
        cov_sh.append((out["shapley_ci_low"] <= truth_sh) & (truth_sh <= out["shapley_ci_high"]))
        cov_loo.append((out["loo_ci_low"] <= truth_loo) & (truth_loo <= out["loo_ci_high"]))
        flags.append(out["disagree"].to_numpy())
        named.append([out["interacting"][0] == ["g2"], out["interacting"][1] == ["g1"]])
    return {
        "shapley_coverage": np.mean(cov_sh, 0),
        "loo_coverage": np.mean(cov_loo, 0),
        "flag_rate": np.mean(flags, 0),
        "named_rate": np.mean(named, 0),
    }


@pytest.mark.slow
def test_redundant_pair_rates():
    """50 planted worlds at α = 0.05: intervals cover the truth about 95 % of the time
    (≥ 0.85 allows the binomial error of 50 draws), g1 and g2 are flagged and name each other
    nearly always, g3 (additive) is rarely flagged."""
    rates = redundant_pair_rates(50)
    print({k: np.round(v, 2).tolist() for k, v in rates.items()})
    assert (rates["shapley_coverage"] >= 0.85).all()
    assert (rates["loo_coverage"] >= 0.85).all()
    assert (rates["flag_rate"][:2] >= 0.9).all()
    assert (rates["named_rate"] >= 0.85).all()
    assert (rates["flag_rate"][2:] <= 0.15).all()


def test_shapley_frame_is_reused():
    """A precomputed Shapley frame supplies the Shapley columns of the comparison."""
    table = _redundant_world(seed=2)
    sh = shapley_values(table, GROUPS6, n_boot=50, seed=5)
    out = conditional_vs_average(table, GROUPS6, shapley=sh, n_boot=50, seed=5)
    np.testing.assert_allclose(out["shapley"], sh["shapley"])
    np.testing.assert_allclose(out["shapley_ci_low"], sh["ci_low"])
    np.testing.assert_allclose(out["difference"], out["loo"] - sh["shapley"])


def additive_false_flags(n_tables: int, *, n_boot: int = 200, seed: int = 0) -> np.ndarray:
    """Per table, per group: flagged as disagreeing on an additive game (no interactions)."""
    rng = np.random.default_rng(seed)
    flags = np.zeros((n_tables, len(GROUPS6)), dtype=bool)
    for t in range(n_tables):
        effects = rng.normal(0, 0.05, len(GROUPS6))
        design = study_design(6, 24, int(rng.integers(1 << 30)))
        table = per_query_table(
            design,
            lambda z, effects=effects: 0.3 + z @ effects,
            GROUPS6,
            n_ids=60,
            queries=3,
            noise=0.1,
            rng=rng,
        )
        out = conditional_vs_average(table, GROUPS6, n_boot=n_boot, seed=t)
        flags[t] = out["disagree"].to_numpy()
    return flags


@pytest.mark.slow
def test_additive_games_are_rarely_flagged():
    """No interactions: LOO equals the Shapley value, so a flag is a false one. Per group the
    rate should be near α = 0.05; per table (any of 6 groups) at most about α·M = 0.3."""
    flags = additive_false_flags(100)
    print({"per_group": flags.mean(), "per_table": flags.any(axis=1).mean()})
    per_group = flags.mean()
    per_table = flags.any(axis=1).mean()
    # binomial error: 600 group-tests at 0.05 → SD 0.009; 100 tables at 0.3 → SD 0.046
    assert per_group <= 0.05 + 3 * 0.009, per_group
    assert per_table <= 0.30 + 2 * 0.046, per_table


def test_noiseless_additive_game_agrees_exactly():
    """Additive game, no noise: LOO and Shapley both equal each group's planted effect, for any
    set of sampled coalitions, and no group is flagged."""
    rng = np.random.default_rng(4)
    effects = np.array([0.08, -0.03, 0.0, 0.02, 0.05, -0.01])
    table = per_query_table(
        study_design(6, 24, 9),
        lambda z: 0.3 + z @ effects,
        GROUPS6,
        n_ids=20,
        queries=2,
        noise=0.0,
        rng=rng,
    )
    out = conditional_vs_average(table, GROUPS6, n_boot=50)
    np.testing.assert_allclose(out["loo"], effects, atol=1e-12)
    np.testing.assert_allclose(out["shapley"], effects, atol=1e-12)
    assert not out["disagree"].any()
    assert set(shapley_values(table, GROUPS6, n_boot=10)["method"]) == {
        "size_stratified_wls_sampled"
    }


def test_planted_complementary_pair_is_explained():
    """AP = base + a·[g1 and g2]: LOO = a for each (removing either loses all), Shapley = a/2;
    LOO above Shapley, each names the other as complementary."""
    rng = np.random.default_rng(8)
    table = per_query_table(
        study_design(6, 24, 8),
        lambda z: 0.3 + A * z[0] * z[1],
        GROUPS6,
        n_ids=60,
        queries=3,
        noise=0.1,
        rng=rng,
    )
    out = conditional_vs_average(table, GROUPS6, seed=1).set_index("attribute")
    for g, other in (("g1", "g2"), ("g2", "g1")):
        row = out.loc[g]
        assert abs(row["loo"] - A) < 0.033 and abs(row["shapley"] - A / 2) < 0.02
        assert row["disagree"] and row["interacting"] == [other]
        assert f"complementary with {other}" in row["explanation"]
        assert "larger than its Shapley value" in row["explanation"]


def test_bad_input_is_one_sentence():
    table = _redundant_world(seed=3)
    with pytest.raises(StudyInputError, match="no column 'on_g7'"):
        shapley_values(table, [*GROUPS6, "g7"])
    no_backbone = table[table["design"] != "backbone"]
    with pytest.raises(StudyInputError, match="empty coalition"):
        shapley_values(no_backbone, GROUPS6)
    full_only = table[table["design"].isin(["backbone", "full"])]
    with pytest.raises(StudyInputError, match="do not identify"):
        shapley_values(full_only, GROUPS6)
    with pytest.raises(StudyInputError, match="Unknown Shapley estimator"):
        shapley_values(table, GROUPS6, estimator="permutation")
    with pytest.raises(StudyInputError, match="n_boot"):
        shapley_values(table, GROUPS6, n_boot=1)
    with pytest.raises(StudyInputError, match="lacks a row"):
        conditional_vs_average(
            table, GROUPS6, shapley=pd.DataFrame({"attribute": ["g1"], "shapley": [0.1]})
        )
    mixed = table.copy()
    mixed.loc[mixed.index[0], "on_g1"] = 1 - mixed.loc[mixed.index[0], "on_g1"]
    with pytest.raises(StudyInputError, match="one coalition"):
        shapley_values(mixed, GROUPS6)

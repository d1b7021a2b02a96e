"""Small and degenerate tables: numpy's and scipy's raw warnings must not reach the report, and
no interval is reported where it would mean nothing (fewer than one effective df)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from studies.design import build_analysis_frame, spec_from_toml
from studies.glm import fit_glm
from studies.hypothesis import group_tests
from studies.importance import grouped_permutation_importance
from studies.simulate import market_like_schema_toml, simulate_reid_table

SPEC = spec_from_toml(market_like_schema_toml())
OTHERS = ["query", "camid", "ap", "first_hit"]


def _tiny_rank1(seed: int):
    df = simulate_reid_table(100, n_identities=20, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the frame's own warnings are words, not these
        return build_analysis_frame(
            df, outcomes=["rank1"], cluster="pid", exclude=OTHERS, spec=SPEC
        )


@pytest.mark.parametrize("seed", [2, 3, 5])
def test_glm_on_a_tiny_separated_table_raises_no_numpy_warning_and_no_absurd_interval(seed):
    frame = _tiny_rank1(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in exp() used to escape here
        res = fit_glm(frame, "rank1")
    co = res.coefficients
    for lo, hi in (("ci_low", "ci_high"), ("ame_ci_low", "ame_ci_high")):
        width = (co[hi] - co[lo]).to_numpy(dtype=float)
        assert np.all(np.isnan(width) | (width < 1e6)), co[[lo, hi]]
    tested = co["p_value"].notna()
    assert (co.loc[tested, "df_denom"] >= 1).all()
    below = co["df_denom"] < 1
    if below.any():
        assert any("less than one" in w for w in res.warnings)


def test_rank_tests_with_every_outcome_tied_give_p_one_without_warnings():
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {"pid": np.arange(60), "colour": rng.choice(["a", "b", "c"], 60), "y": np.ones(60)}
    )
    frame = build_analysis_frame(df, outcomes="y", cluster="pid")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = group_tests(frame, "y", n_boot=0).set_index("attribute")
    assert t.loc["colour", "p_value"] == 1.0 and t.loc["colour", "statistic"] == 0.0


def test_importance_on_a_tiny_table_has_no_empty_slice_warning():
    """12 rows of a 0/1 outcome: some bootstrap replicates are NaN in every fold (numpy's
    "Mean of empty slice" used to reach the report)."""
    df = simulate_reid_table(12, n_identities=6, seed=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = build_analysis_frame(
            df, outcomes=["rank1"], cluster="pid", exclude=OTHERS, spec=SPEC
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        grouped_permutation_importance(frame, "rank1", model="rf", n_repeats=2, cv=3, n_boot=20)

"""The rank tests' consensus score: -log10 p, recomputed in log space where p underflowed."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from studies.battery import _tests_score


def _table(rows):
    return pd.DataFrame(rows, columns=["attribute", "test", "statistic", "p_value", "n_levels"])


def test_an_underflowed_within_cluster_p_keeps_its_score_and_order():
    """Q = 1300 on 1 df has p = 4e-285 (representable: the known answer); reported as 0, as a
    1M-row table would, its score must still be -log10 of that, and a larger Q scores higher
    instead of tying at the cap."""
    asym = "mann_whitney_u+stratified_asymptotic"
    score = _tests_score(
        _table(
            [
                ("a", asym, 1300.0, 0.0, 2),
                ("b", asym, 5000.0, 0.0, 2),
                ("c", "kruskal_wallis+stratified_asymptotic", 900.0, 0.0, 4),
                ("d", "mann_whitney_u", 10.0, 0.0, 2),
                ("e", asym, 4.0, 0.0455, 2),
            ]
        )
    )
    assert np.isclose(score["a"], -np.log10(stats.chi2(1).sf(1300.0)), rtol=1e-6)
    assert np.isclose(score["c"], -np.log10(stats.chi2(3).sf(900.0)), rtol=1e-6)
    assert score["b"] > score["a"] and np.isfinite(score["b"]) and score["b"] < 1200
    assert score["d"] == 323.3  # no statistic to recompute from: the cap
    assert np.isclose(score["e"], -np.log10(0.0455))

"""The within-cluster rank test's cluster bootstrap of the rank-biserial, computed from
cluster-pair counts, equals the bootstrap that materialises every resample and ranks it."""

from __future__ import annotations

import numpy as np
import pytest

from studies.hypothesis import _cluster_bootstrap, _rank_biserial


def _materialised(y, g, cl, n_boot, rng):
    ids, inv = np.unique(cl, return_inverse=True)
    out = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, len(ids), len(ids))
        rows = np.concatenate([np.flatnonzero(inv == c) for c in pick])
        gb = g[rows]
        out[b] = _rank_biserial(y[rows], gb) if (gb == 0).any() and (gb == 1).any() else np.nan
    return out


@pytest.mark.parametrize("ties", [False, True])
def test_pair_count_bootstrap_equals_the_materialised_one(ties):
    rng = np.random.default_rng(3)
    n_cl = 25
    sizes = rng.integers(1, 12, n_cl)
    cl = np.repeat(rng.permutation(n_cl) * 7, sizes)  # arbitrary, unsorted cluster labels
    g = (rng.random(len(cl)) < 0.4).astype(np.int64)
    y = rng.normal(size=len(cl)) + 0.3 * g
    if ties:
        y = np.round(y, 1)
        g[cl == cl[0]] = 0  # a cluster without level 1, and resamples may lack a level
    fast = _cluster_bootstrap(y, g, cl, 2, 200, np.random.default_rng(11))
    slow = _materialised(y, g, cl, 200, np.random.default_rng(11))
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert np.isfinite(fast).sum() > 150

"""Crossed designs: queries × configurations, and the two units of replication they have.

A switching table evaluates every query under every configuration, and a configuration switches
each attribute group on or off for *all* queries at once. Such a table has two units that the
design replicated: the identity (``frame.cluster``: queries of one person share their
appearance) and the configuration (``frame.condition``: every query of one configuration shares
whatever the configuration does beyond the additive effects of its groups, e.g. interactions).
Inference that clusters by identity alone counts each query as fresh evidence about a
configuration; with configuration-level noise its tests reject a true null far too often
(``docs/studies.md``, "Crossed designs").

This module holds the helpers every analysis of a crossed frame shares:

- :func:`is_crossed`: a frame with a ``condition`` and no ``paired_by`` (``paired_by`` +
  ``condition`` is the paired design of ``studies.hypothesis.paired_tests``, unchanged);
- :func:`two_way_meat`: the meat of the two-way cluster-robust covariance of Cameron, Gelbach
  & Miller (2011), ``M_a + M_b - M_ab`` with statsmodels' CR1 factor per dimension, so it
  equals statsmodels' ``cov_type="cluster"`` with two group columns;
- :func:`psd_clip`: eigenvalues of the two-way covariance clipped at 0 (the difference of
  three PSD matrices need not be PSD; CGM 2011, section 2.3);
- :func:`two_way_resample`: the "pigeonhole" bootstrap (Owen 2007): identities *and*
  configurations resampled independently, each cell (identity, configuration) kept whole.
  A bootstrap that resamples identities alone treats the 50 configurations as fixed, and its
  intervals miss the configurations' own variation.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from studies.frame import AnalysisFrame


def is_crossed(frame: AnalysisFrame) -> bool:
    """Whether the frame is a crossed design: a condition column and no ``paired_by``."""
    return frame.condition is not None and frame.paired_by is None


def randomized_conditions(frame: AnalysisFrame) -> tuple | None:
    """The condition values whose attribute assignment was drawn at random (None: not said).

    ``build_analysis_frame(..., randomized=...)`` stores them on the frame; a frame made another
    way (or copied by ``dataclasses.replace``, which keeps declared fields only) has none."""
    return frame.randomized_conditions


def unit_codes(frame: AnalysisFrame) -> tuple[np.ndarray, np.ndarray]:
    """Identity and condition of every row as codes 0..G-1 (order of first appearance)."""
    if frame.cluster is None or frame.condition is None:
        raise ValueError("a crossed frame needs both a cluster and a condition column")
    a = pd.factorize(frame.data[frame.cluster])[0].astype(np.int64)
    b = pd.factorize(frame.data[frame.condition])[0].astype(np.int64)
    return a, b


def _cluster_meat(scores: np.ndarray, g: np.ndarray, n_obs: int, n_params: int) -> np.ndarray:
    """CR1 meat of one clustering: ``c S'S`` with S the cluster sums of the scores and
    ``c = G/(G-1) (N-1)/(N-K)``, the factor statsmodels and Stata use."""
    codes, uniq = pd.factorize(g)
    n_g = len(uniq)
    S = np.zeros((n_g, scores.shape[1]))
    np.add.at(S, codes, scores)
    c = n_g / (n_g - 1.0) * (n_obs - 1.0) / (n_obs - n_params) if n_g > 1 else 1.0
    return c * (S.T @ S)


def two_way_meat(
    scores: np.ndarray, g1: np.ndarray, g2: np.ndarray, *, n_obs: int, n_params: int
) -> np.ndarray:
    """Two-way cluster-robust meat ``M_1 + M_2 - M_12`` (Cameron, Gelbach & Miller 2011).

    ``scores``: score contributions (rows or collapsed cells, ``units x k``; a cell's score is
    the sum of its rows', which is exact because every row of a cell lies in one cluster of
    each dimension); ``g1`` / ``g2``: each unit's cluster in the two dimensions; ``M_12`` is
    clustered on their intersection. Each term carries its own CR1 factor, as in statsmodels'
    ``cov_cluster_2groups``, so ``bread @ meat @ bread`` equals statsmodels' two-way covariance."""
    scores = np.asarray(scores, dtype=float)
    g1 = np.asarray(g1)
    g2 = np.asarray(g2)
    inter = pd.factorize(pd.MultiIndex.from_arrays([g1, g2]))[0]
    return (
        _cluster_meat(scores, g1, n_obs, n_params)
        + _cluster_meat(scores, g2, n_obs, n_params)
        - _cluster_meat(scores, inter, n_obs, n_params)
    )


def psd_clip(V: np.ndarray) -> tuple[np.ndarray, bool]:
    """``V`` with negative eigenvalues set to 0, and whether any was (CGM 2011, section 2.3)."""
    V = (V + V.T) / 2.0
    lam, Q = np.linalg.eigh(V)
    tol = 1e-12 * max(float(np.abs(lam).max(initial=0.0)), 1e-300)
    if lam.min(initial=0.0) >= -tol:
        return V, False
    return (Q * np.maximum(lam, 0.0)) @ Q.T, True


def two_way_df(frame: AnalysisFrame) -> float:
    """Denominator df of two-way tests: min(G_identity, G_condition) - 1 (CGM 2011; as
    statsmodels' ``df_resid`` for two-way clusters): the scarcer unit bounds the information."""
    a, b = unit_codes(frame)
    return float(min(int(a.max()) + 1, int(b.max()) + 1) - 1)


def two_way_resample(frame: AnalysisFrame, rng: np.random.Generator) -> AnalysisFrame:
    """One pigeonhole-bootstrap replicate of a crossed frame (Owen 2007).

    Identities are drawn with replacement (as many as there are) and, independently,
    conditions; the replicate holds, for every drawn identity ``i`` and drawn condition ``j``,
    the rows of identity ``i`` under condition ``j``. Copies get new labels (0..G-1 in each
    dimension), so an identity drawn twice counts as two clusters, as a cluster bootstrap must;
    a condition copy is randomized when its original was. Attribute columns keep their
    categories (a level may be missing from a replicate)."""
    a, b = unit_codes(frame)
    n_a, n_b = int(a.max()) + 1, int(b.max()) + 1
    draw_a = rng.integers(0, n_a, n_a)
    draw_b = rng.integers(0, n_b, n_b)
    # rows of each drawn identity, labelled by the draw
    order = np.argsort(a, kind="stable")
    start = np.concatenate([[0], np.cumsum(np.bincount(a, minlength=n_a))])
    size = start[draw_a + 1] - start[draw_a]
    lab_a = np.repeat(np.arange(n_a), size)
    offs = np.arange(int(size.sum())) - np.repeat(np.cumsum(size) - size, size)
    rows = order[np.repeat(start[draw_a], size) + offs]
    # each such row once per draw of its condition
    mult_b = np.bincount(draw_b, minlength=n_b)
    by_b = np.argsort(draw_b, kind="stable")
    start_b = np.concatenate([[0], np.cumsum(mult_b)])
    m = mult_b[b[rows]]
    rows2 = np.repeat(rows, m)
    lab_a2 = np.repeat(lab_a, m)
    k = np.arange(int(m.sum())) - np.repeat(np.cumsum(m) - m, m)
    lab_b2 = by_b[start_b[b[rows2]] + k]
    data = frame.data.iloc[rows2].reset_index(drop=True)
    data[frame.cluster] = lab_a2
    data[frame.condition] = lab_b2
    out = replace(frame, data=data, warnings=[])
    rand = randomized_conditions(frame)
    if rand is not None:
        cond_values = pd.factorize(frame.data[frame.condition])[1]
        is_rand = np.array([v in set(rand) for v in cond_values])
        out.randomized_conditions = tuple(int(j) for j in np.flatnonzero(is_rand[draw_b]))
    else:
        out.randomized_conditions = None
    return out


def condition_means(
    frame: AnalysisFrame, outcome: str
) -> tuple[pd.Index, np.ndarray, dict[str, np.ndarray | None]]:
    """The outcome averaged per condition, and each group's level code per condition.

    Returns the condition values (first-appearance order), the mean outcome of each, and per
    group its level code in each condition, or None for a group that is not constant within
    conditions (an identity attribute, say: such a group is not what the configurations
    switched, and a per-condition analysis cannot test it)."""
    b, values = pd.factorize(frame.data[frame.condition])
    n_b = len(values)
    y = frame.data[outcome].to_numpy(dtype=float)
    ybar = np.bincount(b, weights=y, minlength=n_b) / np.bincount(b, minlength=n_b)
    first = np.empty(n_b, dtype=np.int64)
    first[b[::-1]] = np.arange(len(b))[::-1]
    codes: dict[str, np.ndarray | None] = {}
    for g in frame.groups:
        c = frame.data[g].cat.codes.to_numpy().astype(np.int64)
        per = c[first]
        codes[g] = per if np.array_equal(per[b], c) else None
    return values, ybar, codes

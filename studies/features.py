"""Numeric encoding of an `AnalysisFrame` for the tree models, shared by importance and SHAP.

Why one module: permutation importance and SHAP must agree on which columns make up an attribute
group, and both lean on one fact about attribute tables: every attribute is categorical, so a
table of any length holds few *distinct attribute rows*. A ReID table with 1M queries of 750
identities has at most 750 (attributes are identity-level). Fitting, predicting and explaining
are done once per distinct row and mapped back to the rows through integer indices; the row
count only enters through cheap ``np.bincount`` passes. The same sufficient statistics give a
joint linear model (used for cheap bootstrap scores and adjusted effects) in O(cells * p^2).

Encoding: treatment coding, one 0/1 column per *non-reference* level (the frame's first
category is the reference), named ``"group=level"``. A group with a single level has no
column. A tree needs no column for the reference: it is the row with all of its group's
columns at zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from studies.errors import StudyInputError
from studies.frame import AnalysisFrame

_KEY_LIMIT = 2**62


@dataclass(frozen=True)
class GroupEncoding:
    """How attribute groups map to one-hot columns."""

    groups: tuple[str, ...]
    #: levels of each group, reference first
    levels: dict[str, tuple[str, ...]]
    #: one name per column, ``"group=level"``
    columns: tuple[str, ...]
    column_group: tuple[str, ...]
    column_level: tuple[str, ...]
    #: column indices of each group (empty for a single-level group)
    group_columns: dict[str, np.ndarray]

    @property
    def n_levels(self) -> np.ndarray:
        return np.array([len(self.levels[g]) for g in self.groups], dtype=np.int64)

    @property
    def n_columns(self) -> int:
        return len(self.columns)

    def onehot(self, codes: np.ndarray) -> np.ndarray:
        """Level codes ``[n, n_groups]`` (0 = reference) to the float32 design ``[n, p]``."""
        codes = np.asarray(codes)
        n = codes.shape[0]
        x = np.zeros((n, self.n_columns), dtype=np.float32)
        rows = np.arange(n)
        for j, g in enumerate(self.groups):
            cols = self.group_columns[g]
            if cols.size == 0:
                continue
            c = codes[:, j]
            hit = c > 0
            x[rows[hit], cols[0] + c[hit] - 1] = 1.0
        return x


def _categorical(frame: AnalysisFrame, group: str) -> pd.Categorical:
    if group not in frame.data.columns:
        raise StudyInputError(f"Attribute group '{group}' is not a column of {frame.source}.")
    col = frame.data[group]
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.array
    # Not built by studies.design: the most frequent level becomes the reference, like there.
    counts = col.astype(str).value_counts(sort=False)
    order = sorted(counts.index, key=lambda v: (-counts[v], v))
    return pd.Categorical(col.astype(str), categories=order)


def encode_frame(
    frame: AnalysisFrame, groups: list[str] | None = None
) -> tuple[GroupEncoding, np.ndarray]:
    """The encoding of ``frame``'s attribute groups and its level codes ``[n_rows, n_groups]``."""
    groups = list(frame.groups if groups is None else groups)
    levels: dict[str, tuple[str, ...]] = {}
    codes = np.zeros((len(frame.data), len(groups)), dtype=np.int32)
    columns: list[str] = []
    col_group: list[str] = []
    col_level: list[str] = []
    group_columns: dict[str, np.ndarray] = {}
    for j, g in enumerate(groups):
        cat = _categorical(frame, g)
        c = np.asarray(cat.codes, dtype=np.int32)
        if (c < 0).any():
            raise StudyInputError(
                f"Attribute '{g}' has {int((c < 0).sum())} missing value(s) in {frame.source}; "
                "drop those rows or give the missing value its own level."
            )
        codes[:, j] = c
        lv = tuple(str(v) for v in cat.categories)
        levels[g] = lv
        start = len(columns)
        for level in lv[1:]:
            columns.append(f"{g}={level}")
            col_group.append(g)
            col_level.append(level)
        group_columns[g] = np.arange(start, len(columns), dtype=np.int64)
    enc = GroupEncoding(
        groups=tuple(groups),
        levels=levels,
        columns=tuple(columns),
        column_group=tuple(col_group),
        column_level=tuple(col_level),
        group_columns=group_columns,
    )
    return enc, codes


def row_keys(codes: np.ndarray, n_levels: np.ndarray) -> np.ndarray:
    """One int64 per row, equal for rows with equal codes (mixed radix, re-compacted on overflow)."""
    codes = np.asarray(codes)
    key = np.zeros(codes.shape[0], dtype=np.int64)
    span = 1
    for j in range(codes.shape[1]):
        k = int(n_levels[j])
        if span * k >= _KEY_LIMIT:
            uniq, key = np.unique(key, return_inverse=True)
            key = key.astype(np.int64)
            span = len(uniq)
        key = key * k + codes[:, j]
        span *= k
    return key


@dataclass(frozen=True)
class Distinct:
    """Distinct rows of a code matrix: ``codes[rep]`` are they, ``inverse`` maps rows to them."""

    rep: np.ndarray
    inverse: np.ndarray
    counts: np.ndarray


def distinct_rows(codes: np.ndarray, n_levels: np.ndarray) -> Distinct:
    key = row_keys(codes, n_levels)
    _, rep, inverse, counts = np.unique(
        key, return_index=True, return_inverse=True, return_counts=True
    )
    return Distinct(rep=rep, inverse=inverse.ravel(), counts=counts)


def outcome_values(frame: AnalysisFrame, outcome: str) -> np.ndarray:
    """The outcome as float64, with a clear error when it is missing, non-numeric or has NaN."""
    if outcome not in frame.data.columns:
        raise StudyInputError(f"Outcome column '{outcome}' is not in {frame.source}.")
    try:
        y = frame.data[outcome].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise StudyInputError(
            f"Outcome column '{outcome}' in {frame.source} is not numeric."
        ) from None
    bad = ~np.isfinite(y)
    if bad.any():
        raise StudyInputError(
            f"Outcome column '{outcome}' in {frame.source} has {int(bad.sum())} missing or "
            "infinite value(s); the analysis frame should have dropped those rows."
        )
    return y


def is_binary(y: np.ndarray) -> bool:
    """A 0/1 outcome (both values present) is modelled as a probability and scored by AUC."""
    u = np.unique(y)
    return len(u) == 2 and u[0] == 0.0 and u[1] == 1.0


def cluster_codes(frame: AnalysisFrame) -> np.ndarray | None:
    """Cluster labels as 0..m-1 codes aligned with the rows (None when rows are independent)."""
    labels = frame.clusters()
    if labels is None:
        return None
    if labels.isna().any():
        raise StudyInputError(
            f"Cluster column '{frame.cluster}' in {frame.source} has "
            f"{int(labels.isna().sum())} missing value(s)."
        )
    return pd.factorize(labels, sort=True)[0].astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Where an attribute varies: the unit every resampling of it must respect
# ---------------------------------------------------------------------------------------------

#: the attribute is constant within every cluster: its values are moved between clusters
ACROSS_CLUSTERS = "across_clusters"
#: the attribute varies within at least one cluster: its values are shuffled among the rows of
#: each cluster (the exchangeable unit under an identity random effect)
WITHIN_CLUSTER = "within_cluster"
#: no clusters: rows are independent and are permuted freely
ROWS = "rows"


def clusters_varying(codes: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """For each column of ``codes [n, k]``, the number of clusters in which it takes more than
    one value (``clusters``: codes 0..m-1 aligned with the rows)."""
    codes = np.asarray(codes)
    if codes.ndim == 1:
        codes = codes[:, None]
    if codes.shape[0] == 0:
        return np.zeros(codes.shape[1], dtype=np.int64)
    order = np.argsort(clusters, kind="stable")
    cl = clusters[order]
    starts = np.flatnonzero(np.r_[True, cl[1:] != cl[:-1]])
    c = codes[order]
    lo = np.minimum.reduceat(c, starts, axis=0)
    hi = np.maximum.reduceat(c, starts, axis=0)
    return (lo != hi).sum(axis=0).astype(np.int64)


def permutation_scopes(codes: np.ndarray, clusters: np.ndarray | None) -> list[str]:
    """How each attribute column of ``codes`` must be permuted (or its null resampled).

    Rule (the same for permutation importance and the rank tests): an attribute constant within
    every cluster is an identity-level attribute, and only moving it *across clusters* breaks
    its link with the outcome; an attribute that varies within any cluster (an image-level
    annotation, an expert switched on and off across one identity's rows) is shuffled *within
    clusters*, which keeps each cluster's random effect in place and is the null of "no effect
    of the attribute given the identity". Moving such an attribute across clusters can be a
    no-op: when every cluster carries the same set of values in the same row order (a switching
    design) a donor cluster hands back the very values it replaces, and the importance is 0.
    """
    k = np.asarray(codes).shape[1] if np.asarray(codes).ndim == 2 else 1
    if clusters is None:
        return [ROWS] * k
    varying = clusters_varying(codes, clusters)
    return [WITHIN_CLUSTER if v > 0 else ACROSS_CLUSTERS for v in varying]


def within_cluster_note(
    group: str, n_varying: int, n_clusters: int, what: str, unit: str = "cluster"
) -> str | None:
    """A warning when a group varies within only a minority of clusters: then a within-cluster
    permutation moves only those clusters' rows, which the reader should know."""
    if n_varying == 0 or 2 * n_varying >= n_clusters:
        return None
    return (
        f"Attribute '{group}' varies within only {n_varying} of {n_clusters} {unit}s, so "
        f"{what} permutes it within those {unit}s only (its between-{unit} differences are not "
        "permuted); if it is really a per-identity attribute, fix the few rows that disagree."
    )


# ---------------------------------------------------------------------------------------------
# Sufficient statistics and the joint linear model on them
# ---------------------------------------------------------------------------------------------


@dataclass
class CellStats:
    """Rows pooled by (cluster, distinct attribute row): everything a linear fit needs."""

    #: level codes of each cell ``[n_cells, n_groups]``
    codes: np.ndarray
    #: cell of each row
    row_cell: np.ndarray
    count: np.ndarray
    ysum: np.ndarray
    y2sum: np.ndarray
    #: cluster code of each cell, or None (then every row is its own cluster)
    cluster: np.ndarray | None
    n_clusters: int


def cell_stats(
    codes: np.ndarray,
    n_levels: np.ndarray,
    y: np.ndarray,
    clusters: np.ndarray | None = None,
    row_weight: np.ndarray | None = None,
) -> CellStats:
    key = row_keys(codes, n_levels)
    if clusters is not None:
        uniq, dense = np.unique(key, return_inverse=True)
        key = clusters.astype(np.int64) * len(uniq) + dense.ravel()
    _, rep, inv = np.unique(key, return_index=True, return_inverse=True)
    inv = inv.ravel()
    k = len(rep)
    w = np.ones_like(y) if row_weight is None else row_weight
    return CellStats(
        codes=codes[rep],
        row_cell=inv,
        count=np.bincount(inv, weights=w, minlength=k),
        ysum=np.bincount(inv, weights=w * y, minlength=k),
        y2sum=np.bincount(inv, weights=w * y * y, minlength=k),
        cluster=None if clusters is None else clusters[rep],
        n_clusters=int(clusters.max() + 1) if clusters is not None else len(y),
    )


@dataclass
class LinearFit:
    """Ordinary least squares of the outcome on intercept + treatment-coded groups."""

    beta: np.ndarray
    #: cluster-robust (CR1) covariance when clusters are given, else HC1; pseudo-inverse based,
    #: so an empty column (a level absent from a bootstrap sample) gets 0, not an error
    cov: np.ndarray
    sse: float
    sst: float
    n: float
    #: SSE of the fit without each group's columns
    sse_without: dict[str, float]


def cell_design(enc: GroupEncoding, stats: CellStats) -> np.ndarray:
    """Intercept + treatment-coded columns, one row per cell."""
    return np.column_stack([np.ones(len(stats.count)), enc.onehot(stats.codes).astype(np.float64)])


def linear_fit(
    enc: GroupEncoding,
    stats: CellStats,
    *,
    weights: np.ndarray | None = None,
    drop_each: bool = False,
    x: np.ndarray | None = None,
) -> LinearFit:
    """OLS from cell sums: X'WX, X'Wy and y'Wy are sums over cells, never over rows.

    ``weights`` (per cell) multiply the cell's sums: a cluster bootstrap is a reweighting.
    ``x`` is ``cell_design(enc, stats)`` when the caller already has it.
    """
    w = np.ones(len(stats.count)) if weights is None else weights
    cnt, s1, s2 = stats.count * w, stats.ysum * w, stats.y2sum * w
    if x is None:
        x = cell_design(enc, stats)
    xtx = (x * cnt[:, None]).T @ x
    xty = x.T @ s1
    yty = float(s2.sum())
    n = float(cnt.sum())
    ybar = float(s1.sum()) / n if n > 0 else 0.0
    sst = yty - n * ybar * ybar
    bread = np.linalg.pinv(xtx)
    beta = bread @ xty
    sse = max(yty - 2 * beta @ xty + beta @ xtx @ beta, 0.0)
    fitted = x @ beta
    resid_sum = s1 - cnt * fitted  # sum of the cell's row residuals
    p = int(np.linalg.matrix_rank(xtx)) if n > 0 else x.shape[1]
    if stats.cluster is not None:
        m = stats.n_clusters
        u = np.zeros((m, x.shape[1]))
        np.add.at(u, stats.cluster, x * resid_sum[:, None])
        meat = u.T @ u
        g_used = int((np.bincount(stats.cluster, weights=cnt, minlength=m) > 0).sum())
        adj = (g_used / max(g_used - 1, 1)) * ((n - 1) / max(n - p, 1))
    else:
        # sum over the cell's rows of squared residuals, from the cell sums
        e2 = s2 - 2 * fitted * s1 + cnt * fitted**2
        meat = (x * np.clip(e2, 0, None)[:, None]).T @ x
        adj = n / max(n - p, 1)
    cov = adj * bread @ meat @ bread
    sse_without: dict[str, float] = {}
    if drop_each:
        for g in enc.groups:
            cols = enc.group_columns[g]
            if cols.size == 0:
                sse_without[g] = sse
                continue
            keep = np.setdiff1d(np.arange(x.shape[1]), cols + 1)
            a = xtx[np.ix_(keep, keep)]
            b = xty[keep]
            bk = np.linalg.pinv(a) @ b
            sse_without[g] = max(yty - 2 * bk @ b + bk @ a @ bk, 0.0)
    return LinearFit(beta=beta, cov=cov, sse=sse, sst=sst, n=n, sse_without=sse_without)

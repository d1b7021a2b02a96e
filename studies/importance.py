"""Grouped permutation importance with a random forest and with XGBoost.

What it answers: how much held-out accuracy a tree model loses when one attribute *group* (all
of its one-hot columns, jointly, row by row) is shuffled. We write our own loop because
scikit-learn's ``permutation_importance`` permutes one column at a time, and permuting the
columns of a one-hot group separately makes rows with two or zero colours at once: nonsense
inputs whose loss measures the model's reaction to impossible data. We keep its good ideas:
keyword-only options after the data, one seed handed to every unit of work so the numbers do not
depend on ``n_jobs``, the same permutation of rows for every group within a repeat (common random
numbers make groups comparable), and results as a tidy table.

Honesty with clustered rows (``frame.cluster``, e.g. the identity in a ReID table):

- folds are ``GroupKFold`` (or ``GroupShuffleSplit`` for a hold-out) by cluster, so no identity
  is both learned and scored and the held-out score is not inflated by memorised identities;
- the permutation is done *within the held-out fold*, and where the group varies decides how
  (``features.permutation_scopes``, the rule the rank tests use too; column ``permuted``):
  a group constant within every cluster is moved *across clusters*: each held-out cluster
  takes the group's values of another held-out cluster (row ``k`` of a cluster takes row
  ``k mod size`` of the donor cluster). For identity-level attributes this is exactly a
  permutation of the identities' values, so the spread over repeats reflects the number of
  identities, not the number of rows. A group that varies within clusters (a switching
  design: one identity's rows under different subsets of experts) is shuffled *within each
  cluster*. Moving it across clusters would be wrong twice: when every cluster carries the same
  values in the same order the donor hands back the values it replaces (importance exactly 0
  whatever the model does), and otherwise it would mix the group's effect with the clusters'
  random effects;
- the confidence interval redraws held-out clusters, not rows (see
  ``grouped_permutation_importance``);
- on a crossed design (``frame.condition`` without ``paired_by``: every query under every
  configuration, ``studies.crossed``) the folds hold out whole *conditions* (``GroupKFold`` on
  the condition), so a model is judged on configurations it did not see: with folds by
  identity every configuration is in every training fold, and a model that memorises the
  configurations' own effects (interactions included) scores as if the switches predicted
  them. The table's ``held_out`` column says which unit the folds held out.

Speed, so it runs on 1M rows: attributes are categorical, so models are fit on the distinct
attribute rows of the training fold, weighted by their row counts, with the mean outcome as
target. For squared error (and for log loss with the fractional mean as label, which XGBoost
accepts) every split and leaf value is then the one the full table would give; a random forest
bags distinct rows instead of rows (for identity-level attributes: identities). A 0/1 outcome is
fit by a regression forest, which is a probability forest: the variance of a 0/1 variable is
half its Gini impurity, so the splits equal a Gini classifier's and leaves hold P(y = 1).
Predictions are made once per (distinct other-attributes row, level) and scored through
``np.bincount``: no repeat predicts row by row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.ensemble import RandomForestRegressor
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, KFold, ShuffleSplit

from studies.crossed import is_crossed
from studies.errors import StudyInputError
from studies.features import (
    WITHIN_CLUSTER,
    GroupEncoding,
    cluster_codes,
    clusters_varying,
    distinct_rows,
    encode_frame,
    is_binary,
    outcome_values,
    permutation_scopes,
    within_cluster_note,
)
from studies.frame import AnalysisFrame

MODELS = ("rf", "xgb")
MODEL_NAMES = {"rf": "random forest", "xgb": "XGBoost"}

#: Defaults; ``model_params`` overrides any of them. Chosen on Market-like simulated tables
#: (750 identities, planted effects, identity noise): deeper forests / more boosting rounds
#: fit the identities' noise and score *lower* held-out, and path-dependent TreeSHAP costs grow
#: with leaves x depth², so a depth-12 forest made SHAP ~5x slower for a worse model.
#: ``min_samples_leaf`` counts distinct attribute rows (the forest is fit on those).
RF_DEFAULTS: dict[str, Any] = {
    "n_estimators": 100,
    "max_features": 0.5,
    "min_samples_leaf": 3,
    "max_depth": 8,
}
XGB_DEFAULTS: dict[str, Any] = {
    "n_estimators": 100,
    "max_depth": 3,
    "learning_rate": 0.05,
    "tree_method": "hist",
    "reg_lambda": 1.0,
}
#: a forest bags at most this many distinct rows per tree (only tables with very many
#: distinct attribute combinations reach it)
MAX_FIT_ROWS = 200_000


def design_matrix(enc: GroupEncoding, codes: np.ndarray) -> np.ndarray:
    """The model input; one constant column when no attribute varies (a constant model)."""
    x = enc.onehot(codes)
    if x.shape[1] == 0:
        x = np.zeros((x.shape[0], 1), dtype=np.float32)
    return x


@dataclass
class FittedModel:
    """One tree model and the rows it was *not* trained on (for honest scoring and SHAP)."""

    model: str
    estimator: Any
    encoding: GroupEncoding
    binary: bool
    fold: int
    test_index: np.ndarray
    n_train_rows: int
    n_train_distinct: int

    def predict_distinct(self, codes: np.ndarray) -> np.ndarray:
        """Outcome-scale prediction (P(y=1) for a 0/1 outcome), one per row of ``codes``."""
        x = design_matrix(self.encoding, codes)
        if x.shape[0] == 0:
            return np.zeros(0)
        if self.model == "rf":
            # the forest's own average of its trees, in the same order, without the per-tree
            # joblib/config overhead of RandomForestRegressor.predict (which dominated here)
            x32 = np.ascontiguousarray(x, dtype=np.float32)
            out = np.zeros(x.shape[0])
            for tree in self.estimator.estimators_:
                out += tree.tree_.predict(x32).reshape(x32.shape[0], -1)[:, 0]
            return out / len(self.estimator.estimators_)
        return np.asarray(self.estimator.predict(x), dtype=np.float64)

    def predict(self, codes: np.ndarray) -> np.ndarray:
        """Like ``predict_distinct`` but computed once per distinct row and mapped back."""
        d = distinct_rows(codes, self.encoding.n_levels)
        return self.predict_distinct(codes[d.rep])[d.inverse]

    def predict_raw(self, codes: np.ndarray) -> np.ndarray:
        """The output TreeSHAP explains: the outcome scale for a forest, the margin for XGBoost."""
        if self.model == "xgb":
            import xgboost as xgb

            x = design_matrix(self.encoding, codes)
            booster = self.estimator.get_booster()
            return booster.predict(xgb.DMatrix(x), output_margin=True).astype(np.float64)
        return self.predict(codes)


@dataclass
class ImportanceResult:
    #: one row per attribute group: attribute, model, importance (mean drop in the held-out
    #: score over folds x repeats), std, ci_low, ci_high (cluster-bootstrap interval of the
    #: held-out sets), perm_ci_low, perm_ci_high (interval of the drops over folds x repeats),
    #: n_repeats, n_folds, n_boot, metric, permuted (how the group was permuted:
    #: "across_clusters", "within_cluster" or "rows"; see ``features.permutation_scopes``)
    table: pd.DataFrame
    #: held-out quality: metric ("r2" or "auc"), per_fold, mean, and fitting details
    quality: dict
    warnings: list[str] = field(default_factory=list)
    #: one fitted model per fold, with its held-out rows (``shap_group_importance`` reuses them)
    fitted_models: list[FittedModel] = field(default_factory=list)
    #: raw drops ``[n_groups, n_folds, n_repeats]`` in the table's attribute order
    drops: np.ndarray | None = None
    #: bootstrap replicates of the drops ``[n_groups, n_folds, n_repeats, n_boot]`` (held-out
    #: units redrawn; the same weights for the baseline and the permuted score)
    boot_drops: np.ndarray | None = None


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise StudyInputError(f"Unknown model '{model}'; choose one of {', '.join(MODELS)}.")


def _estimator(model: str, *, binary: bool, seed: int, params: dict | None, n_distinct: int):
    if model == "rf":
        kw = {**RF_DEFAULTS, **(params or {})}
        if n_distinct > MAX_FIT_ROWS and "max_samples" not in kw:
            kw["max_samples"] = MAX_FIT_ROWS / n_distinct
        return RandomForestRegressor(**kw, random_state=seed, n_jobs=1)
    import xgboost as xgb

    kw = {**XGB_DEFAULTS, **(params or {})}
    objective = "binary:logistic" if binary else "reg:squarederror"
    return xgb.XGBRegressor(**kw, objective=objective, random_state=seed, n_jobs=1)


def fit_tree_model(
    model: str,
    enc: GroupEncoding,
    codes: np.ndarray,
    y: np.ndarray,
    *,
    binary: bool,
    seed: int = 0,
    model_params: dict | None = None,
    fold: int = -1,
    test_index: np.ndarray | None = None,
) -> FittedModel:
    """Fit on the distinct rows of ``codes`` weighted by their counts (see the module notes)."""
    _check_model(model)
    d = distinct_rows(codes, enc.n_levels)
    counts = d.counts.astype(np.float64)
    ymean = np.bincount(d.inverse, weights=y, minlength=len(d.rep)) / counts
    est = _estimator(model, binary=binary, seed=seed, params=model_params, n_distinct=len(d.rep))
    x = design_matrix(enc, codes[d.rep])
    est.fit(x, ymean, sample_weight=counts)
    return FittedModel(
        model=model,
        estimator=est,
        encoding=enc,
        binary=binary,
        fold=fold,
        test_index=np.arange(0) if test_index is None else test_index,
        n_train_rows=len(y),
        n_train_distinct=len(d.rep),
    )


# ---------------------------------------------------------------------------------------------
# Scores of one held-out set, with cluster-bootstrap replicates
# ---------------------------------------------------------------------------------------------


class FoldScorer:
    """Held-out R² (or AUC for a 0/1 outcome) of predictions ``f[cell]``, plus its value under
    ``n_boot`` bootstrap reweightings of the held-out *units* (clusters; random blocks of rows
    when rows are independent), all from per-unit sums: no score loops over rows twice.

    ``score(cell, f)`` returns ``(point, boot[n_boot])``. The same unit weights serve the
    baseline and every permuted score, so a drop's replicates are paired.
    """

    def __init__(self, y: np.ndarray, unit: np.ndarray, weights: np.ndarray, binary: bool):
        self.y = y
        self.unit = unit
        self.m = int(unit.max()) + 1 if len(unit) else 0
        self.w = weights.astype(np.float64)  # [n_boot, m]
        self.binary = binary
        if not binary:
            n_u = np.bincount(unit, minlength=self.m).astype(np.float64)
            sy = np.bincount(unit, weights=y, minlength=self.m)
            syy = np.bincount(unit, weights=y * y, minlength=self.m)
            nb, syb, syyb = self.w @ n_u, self.w @ sy, self.w @ syy
            with np.errstate(invalid="ignore", divide="ignore"):
                self.sst_boot = np.where(nb > 0, syyb - syb**2 / nb, np.nan)
            self.sst_boot[
                self.sst_boot <= 1e-12 * max(1.0, float(np.nanmax(np.abs(syyb), initial=0)))
            ] = np.nan
            self.sst = float(((y - y.mean()) ** 2).sum()) if len(y) else 0.0

    def score(self, cell: np.ndarray, f: np.ndarray) -> tuple[float, np.ndarray]:
        return self._auc(cell, f) if self.binary else self._r2(cell, f)

    def _r2(self, cell: np.ndarray, f: np.ndarray) -> tuple[float, np.ndarray]:
        res2 = (self.y - f[cell]) ** 2
        sse_u = np.bincount(self.unit, weights=res2, minlength=self.m)
        point = 1.0 - sse_u.sum() / self.sst if self.sst > 0 else float("nan")
        return float(point), 1.0 - (self.w @ sse_u) / self.sst_boot

    def _auc(self, cell: np.ndarray, f: np.ndarray) -> tuple[float, np.ndarray]:
        uf, vinv = np.unique(f, return_inverse=True)
        v = vinv.ravel()[cell]
        nv = len(uf)
        pair = self.unit.astype(np.int64) * nv + v
        if self.m * nv <= 4 * len(pair):
            cnt = np.bincount(pair, minlength=self.m * nv)
            pos = np.bincount(pair, weights=self.y, minlength=self.m * nv)
            nz = np.flatnonzero(cnt)
            cnt, pos = cnt[nz], pos[nz]
        else:
            nz, inv = np.unique(pair, return_inverse=True)
            cnt = np.bincount(inv.ravel())
            pos = np.bincount(inv.ravel(), weights=self.y)
        pu, pv = nz // nv, nz % nv
        # (unit, score value) pairs sorted by score value; sum each value's pairs under every
        # weighting at once: [1 + n_boot, values]
        order = np.argsort(pv, kind="stable")
        pu, pv, cnt, pos = pu[order], pv[order], cnt[order], pos[order]
        bounds = np.flatnonzero(np.r_[True, pv[1:] != pv[:-1]])
        pw = np.vstack([np.ones((1, self.m)), self.w])[:, pu]
        p_all = np.add.reduceat(pw * pos, bounds, axis=1)
        n_all = np.add.reduceat(pw * (cnt - pos), bounds, axis=1)
        below = np.cumsum(n_all, axis=1) - n_all
        num = (p_all * below).sum(1) + 0.5 * (p_all * n_all).sum(1)
        den = p_all.sum(1) * n_all.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
        return float(auc[0]), auc[1:]


# ---------------------------------------------------------------------------------------------
# Folds and permutations
# ---------------------------------------------------------------------------------------------


def make_splits(
    n: int, clusters: np.ndarray | None, cv: int | float | str, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """K folds (``cv`` int >= 2) or one hold-out (``cv`` a fraction, or ``"holdout"`` = 0.25)."""
    if isinstance(cv, str):
        if cv != "holdout":
            raise StudyInputError(
                f"cv must be a number of folds, a hold-out fraction or 'holdout', not '{cv}'."
            )
        cv = 0.25
    units = n if clusters is None else int(clusters.max()) + 1
    what = "rows" if clusters is None else "clusters"
    idx = np.zeros(n)
    if isinstance(cv, (int, np.integer)) and not isinstance(cv, bool):
        if cv < 2:
            raise StudyInputError(f"cv={cv}: cross-validation needs at least 2 folds.")
        if units < cv:
            raise StudyInputError(
                f"cv={cv} folds need at least {cv} {what}; the table has {units}."
            )
        if clusters is None:
            split = KFold(n_splits=int(cv), shuffle=True, random_state=seed).split(idx)
        else:
            split = GroupKFold(n_splits=int(cv), shuffle=True, random_state=seed).split(
                idx, groups=clusters
            )
    elif isinstance(cv, float) and 0.0 < cv < 1.0:
        if units < 2:
            raise StudyInputError(
                f"A hold-out split needs at least 2 {what}; the table has {units}."
            )
        if clusters is None:
            split = ShuffleSplit(n_splits=1, test_size=cv, random_state=seed).split(idx)
        else:
            split = GroupShuffleSplit(n_splits=1, test_size=cv, random_state=seed).split(
                idx, groups=clusters
            )
    else:
        raise StudyInputError(
            f"cv={cv!r}: give a number of folds (>= 2) or a hold-out fraction in (0, 1)."
        )
    return [(np.sort(tr), np.sort(te)) for tr, te in split]


@dataclass
class _Permuter:
    """Row permutations of one held-out set; by cluster when the rows are clustered."""

    n: int
    cinv: np.ndarray | None = None
    order: np.ndarray | None = None
    starts: np.ndarray | None = None
    sizes: np.ndarray | None = None
    pos: np.ndarray | None = None

    @classmethod
    def build(cls, clusters: np.ndarray | None) -> _Permuter:
        if clusters is None:
            return cls(n=0)
        _, cinv = np.unique(clusters, return_inverse=True)
        cinv = cinv.ravel()
        order = np.argsort(cinv, kind="stable")
        sizes = np.bincount(cinv)
        starts = np.cumsum(sizes) - sizes
        pos = np.empty(len(cinv), dtype=np.int64)
        pos[order] = np.arange(len(cinv)) - starts[cinv[order]]
        return cls(n=len(cinv), cinv=cinv, order=order, starts=starts, sizes=sizes, pos=pos)

    def source(self, rng: np.random.Generator, n_rows: int) -> np.ndarray:
        """For each row, the row whose group values it takes: row ``k`` of a cluster takes row
        ``k mod size`` of a donor cluster (an across-clusters move of identity-level values)."""
        if self.cinv is None:
            return rng.permutation(n_rows)
        donor = rng.permutation(len(self.sizes))[self.cinv]
        return self.order[self.starts[donor] + self.pos % self.sizes[donor]]

    def source_within(self, rng: np.random.Generator, n_rows: int) -> np.ndarray:
        """For each row, the row of the *same* cluster whose group values it takes: one uniform
        random permutation of the rows of every cluster (for groups that vary within clusters)."""
        if self.cinv is None:
            return rng.permutation(n_rows)
        src = np.empty(len(self.cinv), dtype=np.int64)
        # rows sorted by cluster, in random order within each cluster, matched position by
        # position with the rows sorted by cluster in table order
        src[self.order] = np.argsort(self.cinv + rng.random(len(self.cinv)), kind="stable")
        return src


@dataclass
class _Fold:
    fitted: FittedModel
    codes: np.ndarray
    scorer: FoldScorer
    #: ``[n_repeats, n_rows]``: for each repeat and row, the row whose group values it takes;
    #: one permutation per repeat, shared by every group (common random numbers); groups that
    #: vary within clusters use ``sources_within`` (rows shuffled inside each cluster) instead
    sources: np.ndarray
    baseline: float
    baseline_boot: np.ndarray
    sources_within: np.ndarray | None = None
    #: per group: ``features.ACROSS_CLUSTERS``, ``WITHIN_CLUSTER`` or ``ROWS``
    scopes: tuple[str, ...] = ()


def _group_drops(fold: _Fold, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Drops in score over repeats when group ``j`` is permuted in this fold's held-out rows,
    and the bootstrap replicates of their mean over repeats."""
    enc = fold.fitted.encoding
    codes = fold.codes
    n, n_repeats = len(codes), fold.sources.shape[0]
    within = bool(fold.scopes) and fold.scopes[j] == WITHIN_CLUSTER
    sources = fold.sources_within if within and fold.sources_within is not None else fold.sources
    n_boot = len(fold.baseline_boot)
    if not np.isfinite(fold.baseline):
        return np.full(n_repeats, np.nan), np.full((n_repeats, n_boot), np.nan)
    if enc.group_columns[enc.groups[j]].size == 0:
        return np.zeros(n_repeats), np.zeros((n_repeats, n_boot))
    n_lev = int(enc.n_levels[j])
    others = np.delete(codes, j, axis=1)
    d = distinct_rows(others, np.delete(enc.n_levels, j))
    n_cells = len(d.rep) * n_lev
    use_cells = n_cells <= n * n_repeats
    if use_cells:
        # every input a permutation can produce: (distinct other-attributes row) x (level)
        cell_codes = np.repeat(codes[d.rep], n_lev, axis=0)
        cell_codes[:, j] = np.tile(np.arange(n_lev), len(d.rep))
        f = fold.fitted.predict_distinct(cell_codes)
        base_cell = d.inverse * n_lev
    out = np.empty(n_repeats)
    boot = np.empty((n_repeats, n_boot))
    for r in range(n_repeats):
        src = sources[r]
        if use_cells:
            score, score_b = fold.scorer.score(base_cell + codes[src, j], f)
        else:
            perm = codes.copy()
            perm[:, j] = codes[src, j]
            dd = distinct_rows(perm, enc.n_levels)
            score, score_b = fold.scorer.score(
                dd.inverse, fold.fitted.predict_distinct(perm[dd.rep])
            )
        out[r] = fold.baseline - score
        boot[r] = fold.baseline_boot - score_b
    return out, boot


@dataclass
class _Setup:
    """What every fold of one importance run shares: the encoded table, its splits and how each
    group is permuted."""

    y: np.ndarray
    enc: GroupEncoding
    codes: np.ndarray
    binary: bool
    clusters: np.ndarray | None
    splits: list[tuple[np.ndarray, np.ndarray]]
    #: per group: ``features.ACROSS_CLUSTERS``, ``WITHIN_CLUSTER`` or ``ROWS``
    scopes: tuple[str, ...]
    #: the unit whole folds hold out: "rows", "cluster <name>" or "condition <name>"
    held_out: str = "rows"

    @property
    def metric(self) -> str:
        return "auc" if self.binary else "r2"

    @property
    def any_within(self) -> bool:
        return WITHIN_CLUSTER in self.scopes


@dataclass(frozen=True)
class _Options:
    """The keyword options of ``grouped_permutation_importance`` that the folds need."""

    model: str
    n_repeats: int
    seed: int
    n_boot: int
    max_score_rows: int | None
    model_params: dict | None


def _check_options(model: str, n_repeats: int, ci: float, n_boot: int) -> None:
    _check_model(model)
    if n_repeats < 1:
        raise StudyInputError(
            f"n_repeats={n_repeats}: permutation importance needs at least 1 repeat."
        )
    if not 0 < ci < 1:
        raise StudyInputError(f"ci={ci}: the confidence level must lie strictly between 0 and 1.")
    if n_boot < 1:
        raise StudyInputError(f"n_boot={n_boot}: the bootstrap needs at least one replicate.")


def _setup(
    frame: AnalysisFrame,
    outcome: str,
    groups: Sequence[str] | None,
    cv: int | float | str,
    seed: int,
) -> _Setup:
    y = outcome_values(frame, outcome)
    enc, codes = encode_frame(frame, None if groups is None else list(groups))
    clusters = cluster_codes(frame)
    fold_units, held_out = clusters, "rows" if clusters is None else f"cluster {frame.cluster}"
    if is_crossed(frame):  # judge the model on configurations it did not see
        fold_units = pd.factorize(frame.data[frame.condition], sort=True)[0].astype(np.int64)
        held_out = f"condition {frame.condition}"
    return _Setup(
        y=y,
        enc=enc,
        codes=codes,
        binary=is_binary(y),
        clusters=clusters,
        splits=make_splits(len(y), fold_units, cv, seed),
        scopes=tuple(permutation_scopes(codes, clusters)),
        held_out=held_out,
    )


def _input_warnings(frame: AnalysisFrame, outcome: str, s: _Setup, name: str) -> list[str]:
    """What the table itself makes of the importances: a constant outcome, single-level
    groups, groups permuted within clusters."""
    warnings: list[str] = []
    if _constant(s.y):
        warnings.append(f"Outcome '{outcome}' is constant, so {name} importance is undefined.")
    for g in s.enc.groups:
        if s.enc.group_columns[g].size == 0:
            warnings.append(
                f"Attribute '{g}' has a single level; its {name} importance is 0 by construction."
            )
    if not s.any_within:
        return warnings
    n_clusters = int(s.clusters.max()) + 1
    varying = clusters_varying(s.codes, s.clusters)
    inside = [g for g, sc in zip(s.enc.groups, s.scopes, strict=True) if sc == WITHIN_CLUSTER]
    cl_name = frame.cluster or "cluster"
    warnings.append(
        f"{name} permutes {', '.join(inside)} within each {cl_name}, because they vary "
        f"within {cl_name}s, and the other attributes across {cl_name}s (column 'permuted')."
        if len(inside) < len(s.enc.groups)
        else f"{name} permutes every attribute within each {cl_name}: they all vary within "
        f"{cl_name}s (a within-identity design, such as experts switched on and off), so an "
        f"importance is the held-out loss when an attribute is shuffled among one "
        f"{cl_name}'s rows."
    )
    for j, g in enumerate(s.enc.groups):
        note = within_cluster_note(g, int(varying[j]), n_clusters, name, cl_name)
        if note:
            warnings.append(note)
    return warnings


def _constant(y: np.ndarray) -> bool:
    return float(np.ptp(y)) == 0.0 if len(y) else True


# ---------------------------------------------------------------------------------------------
# One fold: fit, draw the permutations and the bootstrap weights, score the baseline
# ---------------------------------------------------------------------------------------------


def _score_rows(te: np.ndarray, o: _Options, i: int) -> np.ndarray:
    """The held-out rows that are scored: all of them, or a seeded subset of ``max_score_rows``."""
    if o.max_score_rows is None or len(te) <= o.max_score_rows:
        return te
    pick = np.random.default_rng([o.seed, i, 2**31]).choice(
        len(te), o.max_score_rows, replace=False
    )
    return te[np.sort(pick)]


def _repeat_sources(
    perm: _Permuter, n_rows: int, o: _Options, i: int, within: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Row sources ``[n_repeats, n_rows]`` of every repeat (across clusters), and the
    within-cluster ones when some group varies within clusters; seeded by (seed, fold, repeat)."""
    sources = np.empty((o.n_repeats, n_rows), dtype=np.int64)
    for r in range(o.n_repeats):
        sources[r] = perm.source(np.random.default_rng([o.seed, i, r]), n_rows)
    if not within:
        return sources, None
    sources_within = np.empty_like(sources)
    for r in range(o.n_repeats):
        sources_within[r] = perm.source_within(np.random.default_rng([o.seed, i, r, 1]), n_rows)
    return sources, sources_within


def _bootstrap_units(
    perm: _Permuter, n_rows: int, o: _Options, i: int
) -> tuple[np.ndarray, np.ndarray]:
    """The held-out units (clusters; random blocks of rows when rows are independent) and the
    multinomial weights ``[n_boot, units]`` of the bootstrap that redraws them."""
    if perm.cinv is not None:
        unit = perm.cinv
    else:  # independent rows: random blocks of rows are independent units too
        n_units = min(n_rows, 1000)
        unit = np.random.default_rng([o.seed, i, 2**31 + 1]).permutation(n_rows) % n_units
    m = int(unit.max()) + 1
    w = np.random.default_rng([o.seed, i, 2**31 + 2]).multinomial(
        m, np.full(m, 1.0 / m), size=o.n_boot
    )
    return unit, w


def _fit_fold(s: _Setup, o: _Options, i: int) -> _Fold:
    """Fit fold ``i``'s model, prepare its permutations and bootstrap, score its baseline."""
    tr, te = s.splits[i]
    fm = fit_tree_model(
        o.model,
        s.enc,
        s.codes[tr],
        s.y[tr],
        binary=s.binary,
        seed=int(np.random.default_rng([o.seed, i]).integers(2**31 - 1)),
        model_params=o.model_params,
        fold=i,
        test_index=te,
    )
    score_rows = _score_rows(te, o, i)
    c, yt = s.codes[score_rows], s.y[score_rows]
    perm = _Permuter.build(None if s.clusters is None else s.clusters[score_rows])
    sources, sources_within = _repeat_sources(perm, len(yt), o, i, s.any_within)
    unit, w = _bootstrap_units(perm, len(yt), o, i)
    scorer = FoldScorer(yt, unit, w, s.binary)
    d = distinct_rows(c, s.enc.n_levels)
    base, base_b = scorer.score(d.inverse, fm.predict_distinct(c[d.rep]))
    return _Fold(
        fitted=fm,
        codes=c,
        scorer=scorer,
        sources=sources,
        baseline=base,
        baseline_boot=base_b,
        sources_within=sources_within,
        scopes=s.scopes,
    )


# ---------------------------------------------------------------------------------------------
# The run: folds and (fold, group) drops in threads, then quality and the table
# ---------------------------------------------------------------------------------------------


class _Progress:
    """An optional transient rich bar; a no-op unless asked for (library calls stay quiet)."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self._bar = None
        if enabled:
            from attrimp.progress import progress_bar  # the one bar: stderr, transient

            self._bar = progress_bar(True)
            self._bar.start()
            self._task = self._bar.add_task(label, total=total)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _permute_in_folds(
    s: _Setup, o: _Options, n_jobs: int, bar: _Progress
) -> tuple[list[_Fold], np.ndarray, np.ndarray]:
    """The fitted folds, the drops ``[groups, folds, repeats]`` and their bootstrap replicates
    ``[groups, folds, repeats, n_boot]``. Every unit of work is seeded by its own indices, so
    the numbers do not depend on ``n_jobs``."""
    parallel = Parallel(n_jobs=n_jobs, prefer="threads")

    def fit_fold(i: int) -> _Fold:
        fold = _fit_fold(s, o, i)
        bar.advance()
        return fold

    folds: list[_Fold] = parallel(delayed(fit_fold)(i) for i in range(len(s.splits)))

    def drops_of(i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        out = _group_drops(folds[i], j)
        bar.advance()
        return out

    pairs = [(i, j) for i in range(len(folds)) for j in range(len(s.enc.groups))]
    res = parallel(delayed(drops_of)(i, j) for i, j in pairs)
    drops = np.empty((len(s.enc.groups), len(folds), o.n_repeats))
    boots = np.empty((len(s.enc.groups), len(folds), o.n_repeats, o.n_boot))
    for (i, j), (r, b) in zip(pairs, res, strict=True):
        drops[j, i] = r
        boots[j, i] = b
    return folds, drops, boots


def _model_quality(folds: list[_Fold], model: str, metric: str, ci: float) -> dict:
    """Held-out quality per fold, its mean, and a bootstrap interval of the mean."""
    per_fold = [f.baseline for f in folds]
    finite = [v for v in per_fold if np.isfinite(v)]
    quality = {
        "model": model,
        "metric": metric,
        "per_fold": per_fold,
        "mean": float(np.mean(finite)) if finite else float("nan"),
        "n_folds": len(folds),
        "train_distinct_rows": [f.fitted.n_train_distinct for f in folds],
        "scored_rows": [len(f.codes) for f in folds],
    }
    q_boot = np.array([f.baseline_boot for f in folds if np.isfinite(f.baseline)])
    # replicates where every fold is NaN (tiny tables, a rare 0/1 outcome) have no mean
    q_boot = q_boot[:, np.isfinite(q_boot).any(axis=0)] if q_boot.size else q_boot
    if q_boot.size:
        qb = np.nanmean(q_boot, axis=0)
        quality["ci_low"] = float(np.nanquantile(qb, (1 - ci) / 2))
        quality["ci_high"] = float(np.nanquantile(qb, 1 - (1 - ci) / 2))
    return quality


def _quality_warnings(quality: dict, outcome: str, name: str) -> list[str]:
    """Folds that could not be scored, and a model that explains nothing or little."""
    warnings: list[str] = []
    per_fold, mean_q, metric = quality["per_fold"], quality["mean"], quality["metric"]
    n_unscored = sum(1 for v in per_fold if not np.isfinite(v))
    if n_unscored:
        warnings.append(
            f"{n_unscored} held-out fold(s) of '{outcome}' had a single outcome "
            f"value, so {name} could not be scored there."
        )
    label = "R²" if metric == "r2" else "AUC"
    floor = 0.0 if metric == "r2" else 0.5
    if not np.isfinite(mean_q) or mean_q <= floor:
        warnings.append(
            f"{name} explains nothing of '{outcome}' (held-out {label} = {mean_q:.3f}): "
            "its importances are noise."
        )
    elif mean_q <= floor + (0.02 if metric == "r2" else 0.05):
        warnings.append(
            f"{name} explains little of '{outcome}' (held-out {label} = {mean_q:.3f}): "
            "read its importances with care."
        )
    return warnings


def _hierarchical_bootstrap(
    drops: np.ndarray, boots: np.ndarray, pick: np.ndarray, seed: int, n_boot: int
) -> np.ndarray:
    """Replicates of one group's importance (finite ones only): replicate ``b`` redraws the
    held-out units (the weights behind ``boots``), the repeats (``pick``) and the folds."""
    fold_ok = np.isfinite(drops[:, 0])
    if not fold_ok.any():
        return np.zeros(0)
    per_fold = np.take_along_axis(boots, pick, axis=1).mean(axis=1)  # [folds, n_boot]
    pf = per_fold[fold_ok]
    fsel = np.random.default_rng([seed, 2**31 + 4]).integers(0, len(pf), size=(len(pf), n_boot))
    imp_b = np.take_along_axis(pf, fsel, axis=0).mean(axis=0)
    return imp_b[np.isfinite(imp_b)]


def _importance_table(
    s: _Setup, o: _Options, drops: np.ndarray, boots: np.ndarray, ci: float
) -> pd.DataFrame:
    """One row per group: mean drop, its spread and both intervals (see the public docstring)."""
    alpha = (1.0 - ci) / 2.0
    n_folds = drops.shape[1]
    # resample the repeats too, so the interval also carries the permutation noise of the mean
    rep_rng = np.random.default_rng([o.seed, 2**31 + 3])
    pick = rep_rng.integers(0, o.n_repeats, size=(n_folds, o.n_repeats, o.n_boot))
    nan = float("nan")
    rows = []
    for j, g in enumerate(s.enc.groups):
        flat = drops[j].ravel()
        ok = flat[np.isfinite(flat)]
        imp_b = _hierarchical_bootstrap(drops[j], boots[j], pick, o.seed, o.n_boot)
        rows.append(
            {
                "attribute": g,
                "model": o.model,
                "importance": float(ok.mean()) if ok.size else nan,
                "std": float(ok.std(ddof=1)) if ok.size > 1 else nan,
                "ci_low": float(np.quantile(imp_b, alpha)) if imp_b.size else nan,
                "ci_high": float(np.quantile(imp_b, 1 - alpha)) if imp_b.size else nan,
                "perm_ci_low": float(np.quantile(ok, alpha)) if ok.size else nan,
                "perm_ci_high": float(np.quantile(ok, 1 - alpha)) if ok.size else nan,
                "n_repeats": o.n_repeats,
                "n_folds": n_folds,
                "n_boot": o.n_boot,
                "metric": s.metric,
                "permuted": s.scopes[j],
                "held_out": s.held_out,
            }
        )
    return pd.DataFrame(rows)


def grouped_permutation_importance(
    frame: AnalysisFrame,
    outcome: str,
    *,
    model: str = "rf",
    n_repeats: int = 10,
    cv: int | float | str = 5,
    seed: int = 0,
    n_jobs: int = 1,
    ci: float = 0.95,
    groups: Sequence[str] | None = None,
    model_params: dict | None = None,
    n_boot: int = 200,
    max_score_rows: int | None = 200_000,
    progress: bool = False,
) -> ImportanceResult:
    """Drop in held-out R² (AUC for a 0/1 outcome) when a whole attribute group is permuted.

    ``importance`` is the mean drop over folds x repeats. ``ci_low``/``ci_high``: percentile
    interval of a three-level (hierarchical) bootstrap with ``n_boot`` replicates; a replicate
    redraws the folds, within each fold the held-out clusters (random blocks of rows when rows
    are independent; the same draw for the baseline and the permuted scores, so drops stay
    paired), and the permutation repeats, all with replacement. So the interval carries the
    refit-on-other-data, the which-identities-were-held-out and the permutation noise, and
    held-out data are redrawn by cluster, never by row. On simulated clustered null tables
    (80 identities, 3 folds; ``tests/test_studies_importance.py``, slow) the intervals of
    no-effect groups covered 0 in 97% of cases; redrawing only the held-out identities gave
    81-86%, because an over-fit model's noise group then looks "significantly" negative.
    ``perm_ci_low``/``perm_ci_high`` keep the plain percentile interval of the drops over
    folds x repeats for comparison.

    Held-out sets larger than ``max_score_rows`` are scored on a random subset of that many
    rows (only 1M-row tables reach the default). ``n_jobs`` runs folds and groups in threads;
    every model is single-threaded and every random draw seeded from ``(seed, fold, ...)``, so
    the result is the same for any ``n_jobs``. ``progress`` shows a transient progress bar
    (off by default: library calls are quiet).
    """
    _check_options(model, n_repeats, ci, n_boot)
    s = _setup(frame, outcome, groups, cv, seed)
    o = _Options(model, n_repeats, seed, n_boot, max_score_rows, model_params)
    name = MODEL_NAMES[model]
    warnings = _input_warnings(frame, outcome, s, name)
    if s.held_out.startswith("condition"):
        warnings.append(
            f"{name}: cross-validation holds out whole conditions ({frame.condition!r}), so "
            "each model is scored on configurations it did not see (column 'held_out')."
        )
    total = len(s.splits) * (1 + len(s.enc.groups))
    bar = _Progress(progress, total, f"{name} importance ({outcome})")
    try:
        folds, drops, boots = _permute_in_folds(s, o, n_jobs, bar)
    finally:
        bar.stop()
    quality = _model_quality(folds, model, s.metric, ci)
    if not _constant(s.y):
        warnings += _quality_warnings(quality, outcome, name)
    return ImportanceResult(
        table=_importance_table(s, o, drops, boots, ci),
        quality=quality,
        warnings=warnings,
        fitted_models=[f.fitted for f in folds],
        drops=drops,
        boot_drops=boots,
    )

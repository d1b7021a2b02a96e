"""SHAP values of the fitted tree models, summed within each attribute group.

Exact TreeSHAP: ``shap.TreeExplainer`` (path-dependent) for the random forest, and XGBoost's own
``pred_contribs=True`` for XGBoost, which is the same exact path-dependent TreeSHAP algorithm
implemented inside XGBoost and much faster than going through ``shap``. Values are on the scale
the tree ensemble adds up: the outcome (P(y=1) for a 0/1 outcome) for the forest; the outcome,
or the log-odds for a 0/1 outcome, for XGBoost (column ``scale``).

A group's SHAP value on a row is the *sum* of its columns' signed SHAP values on that row (SHAP
values are additive, so this is the attribution of the group as one player). Its importance is
the mean over rows of the absolute value of that sum. Averaging |SHAP| per column first and
summing over the group's columns is a different, wrong number: a row's columns can carry
opposite signs that cancel (a reference-level row gets a positive value from one level's column
and a negative one from another's), and the per-column version counts both as importance. The
table keeps that number in ``sum_of_column_mean_abs`` so the difference is visible.

Rows are explained once per distinct attribute row and weighted by their counts, so the result
is exact for every row of the table (up to ``max_rows`` distinct rows per model).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from studies.errors import StudyInputError
from studies.features import GroupEncoding, distinct_rows, encode_frame, is_binary, outcome_values
from studies.frame import AnalysisFrame
from studies.importance import (
    MODEL_NAMES,
    FittedModel,
    ImportanceResult,
    _check_model,
    design_matrix,
    fit_tree_model,
)


@dataclass
class ShapResult:
    #: attribute, model, mean_abs_shap (mean over rows of |group SHAP|), mean_shap,
    #: sum_of_column_mean_abs (the per-column definition, for contrast only), scale, n_rows
    group_table: pd.DataFrame
    #: attribute, level, model, mean_shap (mean group SHAP of rows at that level minus that of
    #: reference rows: the model's signed effect of the level vs the reference), mean_group_shap,
    #: n (rows), is_reference, scale
    level_table: pd.DataFrame
    #: group SHAP per explained distinct row (one column per group) with its row count in
    #: ``weight`` and the model's ``fold``; for plots
    values: pd.DataFrame | None = None
    #: the level labels of those rows, same index
    levels: pd.DataFrame | None = None
    #: expected value of each explained model (the SHAP base value)
    base_values: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def tree_shap(fitted: FittedModel, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact TreeSHAP values ``[n, n_columns]`` and base values ``[n]`` for rows ``codes``.

    ``base + values.sum(1)`` equals ``fitted.predict_raw(codes)`` (SHAP additivity).
    """
    x = design_matrix(fitted.encoding, codes)
    ncol = fitted.encoding.n_columns
    if fitted.model == "xgb":
        import xgboost as xgb

        contrib = fitted.estimator.get_booster().predict(xgb.DMatrix(x), pred_contribs=True)
        contrib = np.asarray(contrib, dtype=np.float64)
        return contrib[:, :ncol], contrib[:, -1]
    with warnings.catch_warnings():  # shap's colour maps warn about matplotlib on import
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        import shap

    explainer = shap.TreeExplainer(fitted.estimator, feature_perturbation="tree_path_dependent")
    vals = np.asarray(explainer.shap_values(x, check_additivity=True), dtype=np.float64)
    base = float(np.ravel(explainer.expected_value)[0])
    return vals[:, :ncol], np.full(len(x), base)


def group_shap(values: np.ndarray, enc: GroupEncoding) -> np.ndarray:
    """Per-row group SHAP ``[n, n_groups]``: the sum of each group's columns, row by row."""
    out = np.zeros((values.shape[0], len(enc.groups)))
    for j, g in enumerate(enc.groups):
        cols = enc.group_columns[g]
        if cols.size:
            out[:, j] = values[:, cols].sum(axis=1)
    return out


def _as_models(fitted, model: str) -> list[FittedModel]:
    if isinstance(fitted, ImportanceResult):
        models = list(fitted.fitted_models)
    elif isinstance(fitted, FittedModel):
        models = [fitted]
    else:
        models = list(fitted)
    if not models or not all(isinstance(m, FittedModel) for m in models):
        raise StudyInputError(
            "fitted must be an ImportanceResult, a FittedModel or a list of them."
        )
    wrong = {m.model for m in models} - {model}
    if wrong:
        raise StudyInputError(
            f"The fitted models are {', '.join(sorted(wrong))} but model='{model}' was asked for."
        )
    return models


def _models_to_explain(
    frame: AnalysisFrame,
    y: np.ndarray,
    *,
    model: str,
    fitted: ImportanceResult | FittedModel | Sequence[FittedModel] | None,
    seed: int,
    model_params: dict | None,
) -> tuple[list[FittedModel], GroupEncoding, np.ndarray]:
    """The models to explain with their encoding and the frame's codes: the given fitted models
    (checked against the frame), or one model fit on all rows that explains all of them."""
    if fitted is None:
        enc, codes = encode_frame(frame)
        fm = fit_tree_model(
            model, enc, codes, y, binary=is_binary(y), seed=seed, model_params=model_params
        )
        fm.test_index = np.arange(len(y))
        return [fm], enc, codes
    models = _as_models(fitted, model)
    enc = models[0].encoding
    _, codes = encode_frame(frame, list(enc.groups))
    for m in models:
        if m.test_index.size and m.test_index.max() >= len(y):
            raise StudyInputError(
                f"The fitted models index rows beyond the {len(y)} rows of {frame.source}; "
                "pass the frame they were fitted on."
            )
    return models, enc, codes


@dataclass
class _Explained:
    """TreeSHAP of the distinct held-out rows of every model, stacked over models."""

    #: group SHAP ``[rows, groups]``, per-column |SHAP| ``[rows, columns]``
    group: np.ndarray
    column_abs: np.ndarray
    #: row counts behind each distinct row, its codes and the fold of its model
    weight: np.ndarray
    codes: np.ndarray
    fold: np.ndarray
    base_values: list[float]


def _explain(
    models: list[FittedModel],
    codes: np.ndarray,
    enc: GroupEncoding,
    *,
    max_rows: int,
    seed: int,
    warnings: list[str],
) -> _Explained:
    """Explain each model's held-out rows once per distinct row (a seeded subset of rows when
    a model has more than its share of ``max_rows`` distinct rows)."""
    model = models[0].model
    per_model = max(1, max_rows // len(models))
    all_g, all_w, all_codes, all_fold, col_abs, bases = [], [], [], [], [], []
    for k, m in enumerate(models):
        rows = m.test_index
        if rows.size == 0:
            continue
        c = codes[rows]
        d = distinct_rows(c, enc.n_levels)
        if len(d.rep) > per_model:
            pick = np.random.default_rng([seed, k]).choice(len(rows), per_model, replace=False)
            c = c[np.sort(pick)]
            d = distinct_rows(c, enc.n_levels)
            warnings.append(
                f"SHAP for {MODEL_NAMES[model]} (fold {m.fold}) explains a random {per_model} of "
                f"its {len(rows)} held-out rows."
            )
        uc = c[d.rep]
        vals, base = tree_shap(m, uc)
        all_g.append(group_shap(vals, enc))
        all_w.append(d.counts.astype(np.float64))
        all_codes.append(uc)
        all_fold.append(np.full(len(uc), m.fold))
        col_abs.append(np.abs(vals))
        bases.append(float(base[0]) if len(base) else float("nan"))
    if not all_g:
        raise StudyInputError(
            f"The fitted {MODEL_NAMES[model]} models hold out no rows to explain."
        )
    return _Explained(
        group=np.concatenate(all_g),
        column_abs=np.concatenate(col_abs),
        weight=np.concatenate(all_w),
        codes=np.concatenate(all_codes),
        fold=np.concatenate(all_fold),
        base_values=bases,
    )


def _group_row(ex: _Explained, enc: GroupEncoding, j: int, model: str, scale: str) -> dict:
    """Mean |group SHAP| (and the per-column contrast) of group ``j`` over the explained rows."""
    g = enc.groups[j]
    cols = enc.group_columns[g]
    w, gs, wsum = ex.weight, ex.group, ex.weight.sum()
    return {
        "attribute": g,
        "model": model,
        "mean_abs_shap": float(w @ np.abs(gs[:, j]) / wsum),
        "mean_shap": float(w @ gs[:, j] / wsum),
        "sum_of_column_mean_abs": float((w @ ex.column_abs[:, cols]).sum() / wsum)
        if cols.size
        else 0.0,
        "scale": scale,
        "n_rows": int(wsum),
    }


def _level_rows(
    ex: _Explained, enc: GroupEncoding, j: int, model: str, scale: str, warnings: list[str]
) -> list[dict]:
    """Mean group SHAP of the rows at each level of group ``j``, and its difference from the
    reference level's (the model's signed effect of the level)."""
    g = enc.groups[j]
    n_lev = len(enc.levels[g])
    w, gs, uc = ex.weight, ex.group, ex.codes
    s_l = np.bincount(uc[:, j], weights=w * gs[:, j], minlength=n_lev)
    n_l = np.bincount(uc[:, j], weights=w, minlength=n_lev)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_l = s_l / n_l
    ref = mean_l[0]
    if n_l[0] == 0:
        warnings.append(
            f"No explained row of '{g}' has its reference level '{enc.levels[g][0]}', so its "
            "signed SHAP effects per level are undefined."
        )
    return [
        {
            "attribute": g,
            "level": level,
            "model": model,
            "mean_shap": float(mean_l[li] - ref) if n_l[li] > 0 else float("nan"),
            "mean_group_shap": float(mean_l[li]) if n_l[li] > 0 else float("nan"),
            "n": int(n_l[li]),
            "is_reference": li == 0,
            "scale": scale,
        }
        for li, level in enumerate(enc.levels[g])
    ]


def _values_tables(ex: _Explained, enc: GroupEncoding) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Group SHAP per explained row (with weight and fold) and the level labels of those rows."""
    values = pd.DataFrame(ex.group, columns=list(enc.groups))
    values["weight"] = ex.weight
    values["fold"] = ex.fold
    levels = pd.DataFrame(
        {
            g: np.asarray(enc.levels[g], dtype=object)[ex.codes[:, j]]
            for j, g in enumerate(enc.groups)
        }
    )
    return values, levels


def shap_group_importance(
    frame: AnalysisFrame,
    outcome: str,
    *,
    model: str = "rf",
    fitted: ImportanceResult | FittedModel | Sequence[FittedModel] | None = None,
    max_rows: int = 20_000,
    seed: int = 0,
    model_params: dict | None = None,
    keep_values: bool = True,
) -> ShapResult:
    """Mean |group SHAP| per attribute group and the signed SHAP effect of each level.

    With ``fitted`` (e.g. the result of ``grouped_permutation_importance``) each fold's model
    explains its own held-out rows, so attributions describe what the model does on data it
    did not learn. Without it one model is fit on all rows and explains all of them. A model
    whose held-out rows have more than ``max_rows`` distinct attribute rows explains a seeded
    random subset of ``max_rows`` rows.
    """
    _check_model(model)
    y = outcome_values(frame, outcome)
    warnings: list[str] = []
    models, enc, codes = _models_to_explain(
        frame, y, model=model, fitted=fitted, seed=seed, model_params=model_params
    )
    binary = models[0].binary
    scale = "log-odds" if (binary and model == "xgb") else ("P(y=1)" if binary else "outcome")
    ex = _explain(models, codes, enc, max_rows=max_rows, seed=seed, warnings=warnings)
    group_rows, level_rows = [], []
    for j in range(len(enc.groups)):
        group_rows.append(_group_row(ex, enc, j, model, scale))
        level_rows += _level_rows(ex, enc, j, model, scale, warnings)
    values, levels = _values_tables(ex, enc) if keep_values else (None, None)
    return ShapResult(
        group_table=pd.DataFrame(group_rows),
        level_table=pd.DataFrame(level_rows),
        values=values,
        levels=levels,
        base_values=ex.base_values,
        warnings=warnings,
    )

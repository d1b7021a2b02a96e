"""Per-instance effect beside population importance, so a strong but rare attribute shows.

Permutation importance, SHAP and variance-explained all measure what an attribute does *to the
population*: a hat that lowers AP sharply but is worn by 4% of people moves the table little and
ranks low. That is the right answer to "what explains the table" and the wrong one to "does
wearing a hat hurt re-identification". This table gives both numbers per level:

- ``per_instance_effect``: the change in the outcome for a row *having* the level instead of the
  reference, other attributes held fixed. Source (``effect_source``): the GLM's average marginal
  effect (``ame`` column of ``studies.glm`` coefficients) when given; otherwise the coefficient
  of a joint linear model of the outcome on all groups (treatment-coded, cluster-robust CI),
  which is the average marginal effect of a linear-probability / linear model.
- ``prevalence``: share of rows at the level (``prevalence_clusters``: share of clusters with at
  least one row at it).
- ``population_importance``: ``prevalence x |per_instance_effect|``, the mean absolute shift of
  the population's outcome that the level accounts for against the reference;
  ``group_population_importance`` sums it over the group's levels.

``note`` flags a level as strong but rare when its group ranks better per instance than in the
population, the level is rarer than ``rare_share`` and its effect CI excludes zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from studies.errors import StudyInputError
from studies.features import (
    GroupEncoding,
    LinearFit,
    cell_stats,
    cluster_codes,
    encode_frame,
    linear_fit,
    outcome_values,
)
from studies.frame import AnalysisFrame

#: GLM coefficient columns read as per-instance effects on the outcome scale, in preference order
EFFECT_COLUMNS = ("ame", "average_marginal_effect", "marginal_effect")


def _importance_series(importance) -> pd.Series | None:
    """Group importance from a Series (index attribute) or a table with an importance column."""
    if importance is None:
        return None
    if isinstance(importance, pd.Series):
        return pd.to_numeric(importance, errors="coerce")
    if isinstance(importance, pd.DataFrame):
        if "attribute" not in importance.columns:
            raise StudyInputError("The importance table has no 'attribute' column.")
        for col in ("importance", "score", "mean_abs_shap"):
            if col in importance.columns:
                v = pd.to_numeric(importance[col], errors="coerce")
                # several models: their mean per attribute
                return v.groupby(importance["attribute"].astype(str)).mean()
        raise StudyInputError(
            "The importance table needs an 'importance', 'score' or 'mean_abs_shap' column."
        )
    raise StudyInputError("importance must be a pandas Series or DataFrame.")


def _glm_effects(glm: pd.DataFrame, effect_column: str | None) -> tuple[pd.DataFrame, str] | None:
    if glm is None:
        return None
    for c in ("attribute", "level"):
        if c not in glm.columns:
            raise StudyInputError(f"The GLM coefficient table has no '{c}' column.")
    col = effect_column
    if col is None:
        col = next((c for c in EFFECT_COLUMNS if c in glm.columns), None)
        if col is None:
            return None
    elif col not in glm.columns:
        raise StudyInputError(f"The GLM coefficient table has no '{col}' column.")
    out = pd.DataFrame(
        {
            "attribute": glm["attribute"].astype(str),
            "level": glm["level"].astype(str),
            "effect": pd.to_numeric(glm[col], errors="coerce"),
            "lo": pd.to_numeric(
                glm.get(f"{col}_ci_low", pd.Series(np.nan, index=glm.index)), errors="coerce"
            ),
            "hi": pd.to_numeric(
                glm.get(f"{col}_ci_high", pd.Series(np.nan, index=glm.index)), errors="coerce"
            ),
        }
    )
    return out.drop_duplicates(["attribute", "level"]).set_index(["attribute", "level"]), col


@dataclass
class _Effects:
    """Where per-instance effects come from: the joint linear model (with its standard errors
    and the normal quantile of the interval) and, where given, the GLM's marginal effects."""

    fit: LinearFit
    se: np.ndarray
    z: float
    glm: tuple[pd.DataFrame, str] | None

    def of(
        self, enc: GroupEncoding, g: str, li: int, level: str, n: int
    ) -> tuple[float, float, float, str]:
        """(effect, ci_low, ci_high, source) of level ``li`` of group ``g`` against its
        reference; the GLM's when it has a finite one, else the linear model's."""
        if li == 0:
            return 0.0, 0.0, 0.0, "reference"
        col = int(enc.group_columns[g][li - 1]) + 1
        b, half = self.fit.beta[col], self.z * self.se[col]
        eff, lo, hi, src = float(b), float(b - half), float(b + half), "linear_model"
        if n == 0:
            eff = lo = hi = float("nan")
        if self.glm is not None:
            table, gcol = self.glm
            key = (g, level)
            if key in table.index and np.isfinite(table.at[key, "effect"]):
                eff = float(table.at[key, "effect"])
                lo, hi = float(table.at[key, "lo"]), float(table.at[key, "hi"])
                src = f"glm_{gcol}"
        return eff, lo, hi, src


def _level_counts(
    lv: np.ndarray, y: np.ndarray, clusters: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, mean outcome and clusters (rows when unclustered) at each of ``k`` levels."""
    n_l = np.bincount(lv, minlength=k)
    s_l = np.bincount(lv, weights=y, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_l = s_l / n_l
    if clusters is None:
        return n_l, mean_l, n_l
    pairs = np.unique(clusters * k + lv)
    return n_l, mean_l, np.bincount(pairs % k, minlength=k)


def _group_rows(
    enc: GroupEncoding,
    j: int,
    lv: np.ndarray,
    y: np.ndarray,
    clusters: np.ndarray | None,
    *,
    effects: _Effects,
    min_clusters: int,
) -> list[dict]:
    """One row per level of group ``j``: counts, prevalence, effect and population importance."""
    g = enc.groups[j]
    n = len(y)
    m = None if clusters is None else int(clusters.max()) + 1
    n_l, mean_l, c_l = _level_counts(lv, y, clusters, len(enc.levels[g]))
    rows = []
    for li, level in enumerate(enc.levels[g]):
        eff, lo, hi, src = effects.of(enc, g, li, level, int(n_l[li]))
        prev = n_l[li] / n if n else float("nan")
        rows.append(
            {
                "attribute": g,
                "level": level,
                "is_reference": li == 0,
                "n": int(n_l[li]),
                "prevalence": float(prev),
                "prevalence_clusters": float(c_l[li] / m) if m else float(prev),
                "mean_outcome": float(mean_l[li]) if n_l[li] else float("nan"),
                "raw_difference": float(mean_l[li] - mean_l[0])
                if n_l[li] and n_l[0]
                else float("nan"),
                "per_instance_effect": eff,
                "effect_ci_low": lo,
                "effect_ci_high": hi,
                "effect_source": src,
                "population_importance": float(prev * abs(eff))
                if np.isfinite(eff)
                else float("nan"),
                "n_clusters": int(c_l[li]),
                "reliable": bool(c_l[li] >= min_clusters),
            }
        )
    return rows


def _add_group_columns(df: pd.DataFrame, imp: pd.Series | None) -> int:
    """Add the group-level columns (per-instance effect, population importance, their ranks,
    the given importance) in place; returns the number of groups."""
    grp = df.groupby("attribute", sort=False)
    # the group's per-instance effect: its largest |effect| among reliable levels (all levels
    # when none is reliable)
    shown = df["per_instance_effect"].abs().where(df["reliable"] | df["is_reference"])
    df["group_per_instance_effect"] = shown.groupby(df["attribute"], sort=False).transform("max")
    fallback = grp["per_instance_effect"].transform(lambda s: s.abs().max())
    df["group_per_instance_effect"] = df["group_per_instance_effect"].fillna(fallback)
    df["group_population_importance"] = grp["population_importance"].transform(
        lambda s: s.sum(min_count=1)
    )
    by_group = df.drop_duplicates("attribute").set_index("attribute")
    inst_rank = by_group["group_per_instance_effect"].rank(ascending=False, method="min")
    pop_rank = by_group["group_population_importance"].rank(ascending=False, method="min")
    df["per_instance_rank"] = df["attribute"].map(inst_rank)
    df["population_rank"] = df["attribute"].map(pop_rank)
    df["importance"] = df["attribute"].map(imp) if imp is not None else np.nan
    return len(by_group)


def _note(r, n_groups: int, clustered: bool, rare_share: float) -> str:
    """The ``note`` of one level row: reference, not estimable, unreliable, strong but rare."""
    if r.is_reference:
        return "reference level"
    if not np.isfinite(r.per_instance_effect):
        return "no rows at this level" if r.n == 0 else "effect not estimable"
    if not r.reliable:
        unit = ("cluster" if clustered else "row") + ("" if r.n_clusters == 1 else "s")
        return f"only {r.n_clusters} {unit} at this level: its effect and CI are not reliable"
    significant = (np.isfinite(r.effect_ci_low) and np.isfinite(r.effect_ci_high)) and (
        r.effect_ci_low > 0 or r.effect_ci_high < 0
    )
    strongest = abs(r.per_instance_effect) >= r.group_per_instance_effect - 1e-15
    if (
        significant
        and strongest
        and r.prevalence < rare_share
        and r.per_instance_rank < r.population_rank
    ):
        return (
            f"strong but rare: per instance its group ranks {int(r.per_instance_rank)} of "
            f"{n_groups}, in the population {int(r.population_rank)} of {n_groups} "
            f"(level '{r.level}' in {100 * r.prevalence:.1f}% of rows)"
        )
    return ""


def effect_vs_prevalence(
    frame: AnalysisFrame,
    outcome: str,
    *,
    glm_coefficients: pd.DataFrame | None = None,
    importance: pd.Series | pd.DataFrame | None = None,
    effect_column: str | None = None,
    rare_share: float = 0.10,
    min_clusters: int = 5,
    ci: float = 0.95,
) -> pd.DataFrame:
    """One row per (attribute group, level): prevalence, per-instance effect, population importance.

    Columns: attribute, level, is_reference, n, prevalence, prevalence_clusters, mean_outcome,
    raw_difference (mean outcome minus the reference's, unadjusted), per_instance_effect,
    effect_ci_low, effect_ci_high, effect_source, population_importance,
    group_per_instance_effect (largest |effect| of the group), group_population_importance,
    per_instance_rank, population_rank (of the group among groups, 1 = largest), importance
    (``importance`` given: the group's score, e.g. permutation importance), n_clusters (clusters
    with a row at the level; rows when unclustered), reliable, note.

    A level seen in fewer than ``min_clusters`` clusters is not ``reliable``: its effect is the
    mean of a handful of identities and a cluster-robust CI for it is far too narrow (with one
    identity the residuals of its cluster sum to zero and the CI collapses). Such levels keep
    their numbers, get a note, and are left out of the group's per-instance effect and the
    strong-but-rare flag.
    """
    if not 0 < ci < 1:
        raise StudyInputError(f"ci={ci}: the confidence level must lie strictly between 0 and 1.")
    y = outcome_values(frame, outcome)
    enc, codes = encode_frame(frame)
    clusters = cluster_codes(frame)
    fit = linear_fit(enc, cell_stats(codes, enc.n_levels, y, clusters))
    effects = _Effects(
        fit=fit,
        se=np.sqrt(np.clip(np.diag(fit.cov), 0, None)),
        z=float(stats.norm.ppf(0.5 + ci / 2)),
        glm=_glm_effects(glm_coefficients, effect_column),
    )
    imp = _importance_series(importance)
    clustered = clusters is not None
    rows = []
    for j in range(len(enc.groups)):
        rows += _group_rows(
            enc, j, codes[:, j], y, clusters, effects=effects, min_clusters=min_clusters
        )
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    n_groups = _add_group_columns(df, imp)
    df["note"] = [_note(r, n_groups, clustered, rare_share) for r in df.itertuples(index=False)]
    return df

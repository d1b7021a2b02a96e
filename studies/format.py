"""How a number or a name reads on a report page: one module, so every table of both reports
(`attrimp study analyze`, `attrimp study run`) formats a value by what it *is*, not by how
Python happens to print it.

A column's **kind** (:func:`column_kind`) is read from its machine name:

* ``p`` — p-values: ``4.4e-05`` below 0.001, else 3 decimals (``0.036``);
* ``effect`` — signed differences (coefficients, average marginal effects, ΔmAP, rank-biserial
  r, mean SHAP per level, CI bounds): 3 decimals with a sign and a true minus (``+0.012``,
  ``−0.045``); a non-zero value that would round to ``0.000`` is shown in scientific notation
  rather than as a misleading ``−0.000``;
* ``rank`` — ranks: integers, ``4.5`` for a true tie, one decimal for a bootstrap mean/interval;
* ``count`` — counts: integers, thousands separated;
* ``number`` — everything else (shares, mAP, importances, statistics): 3 decimals, thousands
  separated from 1,000 up, scientific below 0.001.

Confidence intervals are one unit: :func:`merge_ci_columns` folds each ``*_ci_low`` /
``*_ci_high`` pair of a table into one ``*_ci`` cell holding a :class:`CI`, which
:func:`format_cell` writes ``[−0.045, −0.030]`` and the HTML renderer keeps on one line.

Column headers are for people (:func:`human_header`: ``p_holm`` → "Holm p (adjusted)");
machine values of a few descriptive columns likewise (:func:`human_value`: ``wald_htz`` →
"Wald (HTZ)"). report.json and the CSVs keep the machine names; only the pages translate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: the true minus sign (U+2212): a hyphen-minus reads as a dash and lines may break after it
MINUS = "\u2212"

#: columns holding signed differences
EFFECT_KEYS = frozenset(
    {
        "coef",
        "effect",
        "ame",
        "effect_size",
        "mean_difference",
        "delta_map",
        "delta_ap",
        "delta_rank1",
        "delta_minp",
        "mean_shap",
        "mean_group_shap",
        "raw_difference",
        "per_instance_effect",
        "group_per_instance_effect",
        "kendall_tau",
        "spearman_rho",
        "ci_low",
        "ci_high",
    }
)

#: columns holding counts
COUNT_KEYS = frozenset(
    {
        "n",
        "df",
        "queries",
        "count",
        "identities",
        "methods_finding",
        "methods_testing",
        "train_distinct_rows",
        "scored_rows",
        "identities_sharing_signature",
        "rows",
        "images",
    }
)

#: the CI pairs a table may hold, folded into one ``<prefix>ci`` column
CI_PREFIXES = ("", "effect_", "ame_", "perm_", "score_", "rank_", "delta_")

#: machine column names -> what a reader sees (anything not here is shown as it is, with
#: underscores read as spaces only where listed, so a user's own column keeps its name)
HEADERS: dict[str, str] = {
    "p_value": "p (unadjusted)",
    "p_holm": "Holm p (adjusted)",
    "p_fdr_bh": "BH p (adjusted)",
    "p_chi2": "χ² p (unadjusted)",
    "p_tost": "TOST p (equivalence)",
    "kendall_p": "Kendall p",
    "spearman_p": "Spearman p",
    "Holm p": "Holm p (adjusted)",
    "mde": "min. detectable effect",
    "verdict": "verdict",
    "rank_ci_low": "rank CI low",
    "rank_ci_high": "rank CI high",
    "rank_ci": "rank 95% CI",
    "rank_stability": "rank stability",
    "rank_mean": "mean rank",
    "ci": "95% CI",
    "ci_low": "CI low",
    "ci_high": "CI high",
    "effect_ci": "effect 95% CI",
    "ame_ci": "AME 95% CI",
    "perm_ci": "95% CI (permutations)",
    "score_ci": "score 95% CI",
    "delta_ci": "Δ 95% CI",
    "mean_abs_shap": "mean |SHAP| of the group",
    "mean_shap": "mean SHAP (level vs reference)",
    "mean_group_shap": "mean group SHAP at this level",
    "sum_of_column_mean_abs": "sum of columns' mean |SHAP|",
    "coef": "coefficient",
    "std_err": "std. error",
    "ame": "average marginal effect",
    "ame_std_err": "AME std. error",
    "odds_ratio": "odds ratio",
    "statistic": "statistic",
    "f_statistic": "F",
    "df_denom": "denominator df",
    "n_obs": "rows",
    "n_rows": "rows",
    "n_clusters": "clusters",
    "n_cells": "cells",
    "n_levels": "levels",
    "n_tested": "levels tested",
    "n_repeats": "repeats",
    "n_folds": "folds",
    "n_boot": "bootstraps",
    "effect_size": "effect size",
    "effect_name": "effect measure",
    "effect_source": "effect from",
    "is_reference": "reference level?",
    "prevalence_clusters": "prevalence (clusters)",
    "mean_outcome": "mean outcome",
    "raw_difference": "raw difference",
    "per_instance_effect": "per-instance effect",
    "population_importance": "population importance",
    "group_per_instance_effect": "group per-instance effect",
    "group_population_importance": "group population importance",
    "per_instance_rank": "per-instance rank",
    "population_rank": "population rank",
    "score_mean": "mean score",
    "method_a": "method A",
    "method_b": "method B",
    "kendall_tau": "Kendall τ",
    "spearman_rho": "Spearman ρ",
    "mean_difference": "mean difference",
    "share_hurt": "share of queries hurt",
    "delta_map": "ΔmAP",
    "per_fold": "per fold",
    "train_distinct_rows": "distinct training rows",
    "scored_rows": "scored rows",
    "methods_finding": "methods finding it",
    "methods_testing": "methods testing it",
    "identities_sharing_signature": "identities sharing the signature",
}

#: machine values of descriptive columns -> words (tests, effect measures, sources)
VALUES: dict[str, str] = {
    "wald_htz": "Wald (HTZ)",
    "wald_chi2": "Wald χ²",
    "wald_F": "Wald F",
    "mann_whitney_u": "Mann–Whitney U",
    "kruskal_wallis": "Kruskal–Wallis",
    "wilcoxon_signed_rank": "Wilcoxon signed-rank",
    "paired_t": "paired t",
    "rank_biserial": "rank-biserial r",
    "epsilon_squared": "epsilon²",
    "cohen_dz": "Cohen's dz",
    "odds_ratio": "odds ratio",
    "average_marginal_effect": "average marginal effect",
    "glm_ame": "GLM average marginal effect",
    "linear_model": "linear model",
    "across_clusters": "across clusters",
    "fractional_logit": "fractional logit",
    "negative_binomial": "negative binomial",
}

#: the columns whose string values :data:`VALUES` translates
DESCRIPTIVE_KEYS = frozenset(
    {"test", "effect_name", "effect_source", "permuted", "family", "unit", "p_source"}
)


@dataclass(frozen=True)
class CI:
    """A confidence interval shown as one unit; ``kind`` formats its bounds."""

    low: float | None
    high: float | None
    kind: str = "effect"


def _finite(value: Any) -> float | None:
    """A finite float, or None for None / NaN / inf / anything not a number."""
    if value is None or isinstance(value, (bool, np.bool_, str)):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _minus(text: str) -> str:
    """A leading hyphen-minus as the true minus sign."""
    return MINUS + text[1:] if text.startswith("-") else text


def format_p(p: float) -> str:
    """A p-value: ``0`` when exactly 0, scientific with 2 digits below 0.001 (``4.4e-05``),
    else 3 decimals (``0.036``)."""
    if p == 0.0:
        return "0"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def format_effect(v: float) -> str:
    """A signed difference: ``+0.012`` / ``−0.045``; exactly 0 is ``0.000``; a non-zero value
    below 0.0005 in size is ``+3.2e-06`` (3 decimals would print a signed zero)."""
    if v == 0.0:
        return "0.000"
    if abs(v) < 5e-4:
        return _minus(f"{v:+.1e}")
    return _minus(f"{v:+.3f}")


def format_rank(v: float) -> str:
    """A rank: ``4`` for a whole rank, ``4.5`` for a true tie (a half), one decimal for a mean or
    percentile of bootstrap ranks."""
    if float(v).is_integer():
        return str(int(v))
    return f"{v:.1f}"


def format_count(v: float) -> str:
    """A count: an integer with thousands separated (``88,090``); a fractional count (a
    Satterthwaite df) keeps one decimal."""
    if float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:,.1f}"


def format_number(v: float) -> str:
    """Any other number: 3 decimals, thousands separated from 1,000 up (no decimals), scientific
    below 0.001, ``0`` for exactly 0."""
    if v == 0.0:
        return "0"
    if abs(v) >= 1000:
        return _minus(f"{v:,.0f}")
    if abs(v) < 1e-3:
        return _minus(f"{v:.1e}")
    return _minus(f"{v:.3f}")


def format_ci(ci: CI) -> str:
    """``[−0.045, −0.030]``; blank when either bound is missing."""
    lo, hi = _finite(ci.low), _finite(ci.high)
    if lo is None or hi is None:
        return ""
    fmt = _FORMATS.get(ci.kind, format_effect)
    return f"[{fmt(lo)}, {fmt(hi)}]"


_FORMATS = {
    "p": format_p,
    "effect": format_effect,
    "rank": format_rank,
    "count": format_count,
    "number": format_number,
}


#: "p" as a word of a column name: ``p_value``, ``kendall_p``, "Holm p (Wilcoxon)",
#: "TOST p (±0.010)", "switching p (randomisation)"
_P_WORD = re.compile(r"(^|[\s_])p($|[\s_(])")


def is_p_key(key: str) -> bool:
    """Whether a column holds p-values: its name has "p" as a word."""
    return bool(_P_WORD.search(key))


def column_kind(key: str) -> str:
    """The kind of a column's numbers, read from its machine name (see the module docstring)."""
    if is_p_key(key):
        return "p"
    if key == "rank_stability":
        return "number"
    if key == "rank" or key.startswith("rank_") or key.endswith("_rank"):
        return "rank"
    if key in COUNT_KEYS or key.startswith("n_"):
        return "count"
    if key in EFFECT_KEYS or key.endswith("_ci_low") or key.endswith("_ci_high"):
        return "effect"
    return "number"


def format_cell(key: str, value: Any) -> str:
    """A cell's text (unescaped) by its column's kind: blank for None/NaN, yes/no for booleans,
    a :class:`CI` as one interval, a descriptive machine value in words, lists joined."""
    if isinstance(value, CI):
        return format_ci(value)
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, str):
        return human_value(key, value)
    if isinstance(value, (list, tuple)):
        return ", ".join(format_cell(key, v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {format_cell(str(k), v)}" for k, v in value.items())
    v = _finite(value)
    if v is None:
        return "" if isinstance(value, (int, float, np.number)) else str(value)
    if isinstance(value, (int, np.integer)) and column_kind(key) in ("number", "count"):
        return format_count(v)
    return _FORMATS[column_kind(key)](v)


def is_number_cell(value: Any) -> bool:
    """Whether a cell holds a number, an interval or a list of numbers (right-aligned, never
    wrapped)."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (list, tuple)):  # e.g. the per-fold scores of a model
        return bool(value) and all(is_number_cell(v) for v in value)
    return isinstance(value, (CI, int, float, np.number))


def human_header(key: str) -> str:
    """A column's header for people: :data:`HEADERS`, ``rank_<method>`` as "rank by <method>",
    ``found: x`` kept; any other name unchanged (a user's column keeps its own name)."""
    if key in HEADERS:
        return HEADERS[key]
    if key.startswith("rank_"):
        return f"rank by {key.removeprefix('rank_').replace('_', ' ')}"
    return key


def human_value(key: str, value: str) -> str:
    """A descriptive column's machine value in words (``wald_htz`` → "Wald (HTZ)"); any other
    column's text unchanged."""
    if key in DESCRIPTIVE_KEYS:
        return VALUES.get(value, value.replace("_", " "))
    return value


def merge_ci_columns(
    columns: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Fold each ``<prefix>ci_low`` / ``<prefix>ci_high`` pair into one ``<prefix>ci`` column
    (at the low bound's place) holding a :class:`CI`, so an interval is one cell; rows come
    back as new dictionaries, the caller's are left alone."""
    cols = list(columns)
    pairs = [
        (p + "ci_low", p + "ci_high", p + "ci")
        for p in CI_PREFIXES
        if p + "ci_low" in cols and p + "ci_high" in cols and p + "ci" not in cols
    ]
    if not pairs:
        return cols, [dict(r) for r in rows]
    out_cols = []
    for c in cols:
        pair = next((p for p in pairs if c == p[0]), None)
        if pair is not None:
            out_cols.append(pair[2])
        elif not any(c == p[1] for p in pairs):
            out_cols.append(c)
    out_rows = []
    for r in rows:
        new = {k: v for k, v in r.items() if not any(k in p[:2] for p in pairs)}
        for lo, hi, name in pairs:
            new[name] = CI(r.get(lo), r.get(hi), "rank" if name == "rank_ci" else "effect")
        out_rows.append(new)
    return out_cols, out_rows


__all__ = [
    "CI",
    "HEADERS",
    "MINUS",
    "VALUES",
    "column_kind",
    "format_cell",
    "format_ci",
    "format_count",
    "format_effect",
    "format_number",
    "format_p",
    "format_rank",
    "human_header",
    "human_value",
    "is_number_cell",
    "is_p_key",
    "merge_ci_columns",
]

"""The numbers the consensus ranks, and the direction / evidence each method gives a group.

Moved out of ``studies.battery`` (which only orders the analyses) so that the score maths can be
read, tested and reused on its own: each method's per-group score is *unsigned* evidence that
the group changes the outcome (either way), and its signal says which way (where the method
has a sign) and whether the method finds the group at all. The built-in analyses
(``studies.builtin_analyses``) call these; ``studies.battery`` re-exports the names tests use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

_LN10 = float(np.log(10.0))
#: -log10 of the smallest positive double: a p-value that underflowed to 0 scores this
_MAX_LOG10 = 323.3
#: below this p-value the reported number has lost digits (or underflowed to 0): the score is
#: recomputed from the test statistic in log space instead
_P_TINY = 1e-300


def log_sf(dist: Any, x: float) -> float:
    """ln P(X > x) of a frozen continuous scipy distribution, also where P underflows.

    scipy's ``f.logsf`` / ``chi2.logsf`` are ``log(sf)`` and return -inf once sf < 1e-308 (a
    strong group on a 1M-row table). Beyond that, ``ln sf(x) = ln pdf(x) + ln ∫_0^∞ pdf(x + s) /
    pdf(x) ds``: the log-density is exact far into the tail, and the integrand starts at 1 and
    decays over a length ``h`` (the inverse slope of the log-density at x), so quadrature in
    units of ``h`` is accurate."""
    from scipy.integrate import quad

    direct = float(dist.logsf(x))
    if np.isfinite(direct) and direct > -700.0:
        return direct
    lp0 = float(dist.logpdf(x))
    if not np.isfinite(lp0):
        return direct
    eps = 1e-6 * max(abs(x), 1.0)
    slope = (float(dist.logpdf(x + eps)) - lp0) / eps
    h = 1.0 / -slope if slope < 0 else max(abs(x), 1.0)

    def ratio(u: float) -> float:
        return float(np.exp(dist.logpdf(x + h * u) - lp0))

    integral, _ = quad(ratio, 0.0, np.inf, limit=200)
    return lp0 + float(np.log(h * integral)) if integral > 0 else direct


def _glm_score(group_tests: pd.DataFrame | None) -> pd.Series | None:
    """-log10 p of each group's Wald test. The reported p-value is used as it is; where it is
    below 1e-300 or underflowed to 0 (a strong group on a large table), the score is
    recomputed in log space from the test's F statistic and degrees of freedom (the same
    reference distribution as the p-value: F(df, df_denom), chi²(df) when df_denom is
    infinite), so very strong groups keep a finite score and their order instead of tying or
    dropping out of the consensus."""
    if group_tests is None or group_tests.empty:
        return None
    from scipy import stats

    out = {}
    for row in group_tests.to_dict("records"):
        p = _as_float(row.get("p_value"))
        if np.isfinite(p) and p >= _P_TINY:
            out[row["attribute"]] = float(-np.log10(p))
            continue
        q = _as_float(row.get("df"))
        nu = _as_float(row.get("df_denom"))
        f = _as_float(row.get("f_statistic"))
        if not np.isfinite(f):
            f = _as_float(row.get("statistic")) / q if q > 0 else np.nan
        if not (np.isfinite(f) and q > 0):
            out[row["attribute"]] = np.nan if not np.isfinite(p) else _MAX_LOG10
            continue
        if np.isfinite(nu) and nu > 0:
            logp = log_sf(stats.f(q, nu), f)
        else:
            logp = log_sf(stats.chi2(q), f * q)
        score = -logp / _LN10
        out[row["attribute"]] = float(score) if np.isfinite(score) else _MAX_LOG10
    return pd.Series(out, name="glm", dtype=float)


def _as_float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _tests_score(tests: pd.DataFrame | None) -> pd.Series | None:
    """-log10 p of each group's rank test. A within-cluster test with the chi² reference whose
    p-value is below 1e-300 (or underflowed to 0: a strong switch on a Market-size table) is
    scored in log space from its statistic Q on ``n_levels - 1`` df, as the GLM is, so strong
    groups keep their order instead of tying at the maximum; any other p of 0 scores the
    maximum."""
    if tests is None or tests.empty or "p_value" not in tests.columns:
        return None
    from scipy import stats

    df = tests.drop_duplicates("attribute").set_index("attribute")
    p = pd.to_numeric(df["p_value"], errors="coerce")
    with np.errstate(divide="ignore"):
        score = -np.log10(p)
    asymptotic = df.get("test", pd.Series("", index=df.index)).astype(str)
    tiny = asymptotic.str.endswith("+stratified_asymptotic") & (p < _P_TINY)
    for name in df.index[tiny]:
        q, k = _as_float(df.at[name, "statistic"]), _as_float(df.at[name, "n_levels"])
        if np.isfinite(q) and k >= 2:
            score[name] = -log_sf(stats.chi2(k - 1), q) / _LN10
    return score.clip(upper=_MAX_LOG10).rename("tests")


def _importance_score(table: pd.DataFrame | None, model: str) -> pd.Series | None:
    if table is None or table.empty:
        return None
    df = table[table["model"] == model] if "model" in table.columns else table
    return pd.to_numeric(df.set_index("attribute")["importance"], errors="coerce").rename(model)


def _shap_score(group_tables: list[pd.DataFrame]) -> pd.Series | None:
    shares = []
    for t in group_tables:
        if t is None or t.empty:
            continue
        s = pd.to_numeric(t.set_index("attribute")["mean_abs_shap"], errors="coerce")
        total = s.sum()
        if np.isfinite(total) and total > 0:
            shares.append(s / total)
    if not shares:
        return None
    return pd.concat(shares, axis=1).mean(axis=1).rename("shap")


def _randomization_score(rand: pd.DataFrame | None) -> pd.Series | None:
    """-log10 p of each group's randomisation test (a Monte-Carlo p is never below
    1 / (n_perm + 1), so no log-space recomputation is needed)."""
    if rand is None or rand.empty:
        return None
    p = pd.to_numeric(rand.set_index("attribute")["p_value"], errors="coerce")
    return (-np.log10(p)).rename("randomization")


# --------------------------------------------------------------------------- direction, evidence


def headline_levels(coefficients: pd.DataFrame | None) -> pd.DataFrame:
    """Per attribute group, the GLM level that carries its story: the tested, non-separated
    level with the smallest p-value (ties: the largest |coefficient|). Its sign is the group's direction
    (positive = the level has a higher outcome than the group's reference level)."""
    cols = ["attribute", "level", "coef", "p_value"]
    if coefficients is None or coefficients.empty or not set(cols) <= set(coefficients.columns):
        return pd.DataFrame(columns=cols)
    df = coefficients[coefficients["attribute"].notna()].copy()
    if "term_kind" in df.columns:
        df = df[df["term_kind"].fillna("level") != "intercept"]
    df["_p"] = pd.to_numeric(df["p_value"], errors="coerce")
    df["_c"] = pd.to_numeric(df["coef"], errors="coerce").abs()
    df = df[df["_p"].notna() & df["_c"].notna()]
    if "separation" in df.columns:  # a separated level's estimate is meaningless
        df = df[~df["separation"].fillna(False).astype(bool)]
    df = df.sort_values(["attribute", "_p", "_c"], ascending=[True, True, False], kind="stable")
    return df.drop_duplicates("attribute").drop(columns=["_p", "_c"]).reset_index(drop=True)


def _table(source: Any, name: str) -> pd.DataFrame:
    """A table by name from a mapping of tables or an object with ``.tables`` (an
    `OutcomeResult`); empty when it is missing."""
    tables = source if isinstance(source, Mapping) else source.tables
    table = tables.get(name)
    return pd.DataFrame() if table is None else table


def _sign(x: Any) -> float:
    v = _as_float(x)
    return float(np.sign(v)) if np.isfinite(v) and v != 0 else np.nan


def _glm_signals(res: Any, alpha: float) -> list[dict[str, Any]]:
    """GLM: the sign of the group's headline level; found when its Holm p < alpha."""
    head = headline_levels(_table(res, "glm_coefficients")).set_index("attribute")
    out = []
    for row in _table(res, "glm_group_tests").to_dict("records"):
        a = row["attribute"]
        p = _as_float(row.get("p_holm"))
        out.append(
            {
                "attribute": a,
                "method": "glm",
                "direction": _sign(head["coef"].get(a)) if a in head.index else np.nan,
                "significant": (p < alpha) if np.isfinite(p) else np.nan,
            }
        )
    return out


def _test_signals(res: Any, alpha: float) -> list[dict[str, Any]]:
    """Rank tests: the sign of a rank-biserial effect (none for Kruskal-Wallis); Holm p < alpha."""
    tests = _table(res, "tests")
    if tests.empty:
        return []
    out = []
    for row in tests.drop_duplicates("attribute").to_dict("records"):
        p = _as_float(row.get("p_holm"))
        signed = row.get("effect_name") == "rank_biserial"
        out.append(
            {
                "attribute": row["attribute"],
                "method": "tests",
                "direction": _sign(row.get("effect_size")) if signed else np.nan,
                "significant": (p < alpha) if np.isfinite(p) else np.nan,
            }
        )
    return out


def _randomization_signals(res: Any, alpha: float) -> list[dict[str, Any]]:
    """Randomisation tests (crossed frames): no sign; found when Holm p < alpha."""
    out = []
    for row in _table(res, "randomization").to_dict("records"):
        p = _as_float(row.get("p_holm"))
        out.append(
            {
                "attribute": row["attribute"],
                "method": "randomization",
                "direction": np.nan,
                "significant": (p < alpha) if np.isfinite(p) else np.nan,
            }
        )
    return out


def _importance_signals(res: Any, models: tuple[str, ...]) -> list[dict[str, Any]]:
    """Permutation importance: no sign; found when the CI's lower end is above 0."""
    out = []
    for row in _table(res, "permutation_importance").to_dict("records"):
        if row.get("model") not in models:
            continue
        lo = _as_float(row.get("ci_low"))
        out.append(
            {
                "attribute": row["attribute"],
                "method": row["model"],
                "direction": np.nan,
                "significant": (lo > 0) if np.isfinite(lo) else np.nan,
            }
        )
    return out


def _shap_signals(res: Any) -> list[dict[str, Any]]:
    """SHAP: the sign of a two-level group's level effect (none for more levels); no test."""
    lv = _table(res, "shap_levels")
    if lv.empty or "is_reference" not in lv.columns:
        return []
    lv = lv[~lv["is_reference"].astype(bool)]
    out = []
    for a, part in lv.groupby("attribute", sort=False):
        per_level = part.groupby("level", sort=False)["mean_shap"].mean()
        direction = _sign(per_level.iloc[0]) if len(per_level) == 1 else np.nan
        out.append(
            {"attribute": a, "method": "shap", "direction": direction, "significant": np.nan}
        )
    return out


def method_signals(
    res: Any, alpha: float, *, models: tuple[str, ...] = ("rf", "xgb")
) -> pd.DataFrame:
    """For every (attribute, method): the direction the method gives the group (+1: its
    headline level raises the outcome against the reference, -1: lowers it, NaN: the method has
    no sign — permutation importance, Kruskal-Wallis, a multi-level SHAP group) and whether the
    method finds the group at all (GLM and rank tests: Holm p < alpha; permutation importance:
    the CI's lower end above 0; SHAP has no test: NaN). The report's heat map and summary read
    these, so every page states direction and evidence the same way."""
    out = (
        _glm_signals(res, alpha)
        + _test_signals(res, alpha)
        + _randomization_signals(res, alpha)
        + _importance_signals(res, models)
        + _shap_signals(res)
    )
    return pd.DataFrame(out, columns=["attribute", "method", "direction", "significant"])


def score_table(scores: Mapping[str, pd.Series], signals: list[dict[str, Any]]) -> pd.DataFrame:
    """The long ``method_scores`` table: one row per (attribute, method) with the score, its
    rank within the method (1 = strongest, ties averaged), and the method's direction and
    evidence (``signals``: records of attribute, method, direction, significant)."""
    long = [
        pd.DataFrame(
            {
                "attribute": sc.index,
                "method": method,
                "score": sc.to_numpy(),
                "rank": sc.rank(ascending=False, method="average").to_numpy(),
            }
        )
        for method, sc in scores.items()
    ]
    table = pd.concat(long, ignore_index=True)
    signal_table = pd.DataFrame(
        signals, columns=["attribute", "method", "direction", "significant"]
    )
    return table.merge(signal_table, on=["attribute", "method"], how="left")


__all__ = [
    "headline_levels",
    "log_sf",
    "method_signals",
    "score_table",
]

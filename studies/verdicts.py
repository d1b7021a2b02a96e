"""One verdict per attribute group: helps, hurts, negligible, inconclusive — or not testable.

Why a verdict and not just a p-value: "no significant effect" reads the same whether the effect is
small or the study was too small to see it. Each group therefore gets

- ``helps`` / ``hurts``: its group test is significant after Holm (``p_holm < alpha``); the sign of
  its strongest level contrast (largest |t|) gives the direction;
- ``negligible``: equivalence is shown — two one-sided tests (TOST, Schuirmann 1987) reject
  ``|effect| >= margin`` at ``alpha`` for every level of the group (an intersection-union test, so
  the group's TOST p is the largest over its levels and no multiplicity correction is needed for
  one group's claim);
- ``inconclusive``: neither; the minimum detectable effect (MDE) says how large an effect this
  design would have found with 80 % power;
- ``not testable``: no variation, excluded, or no test possible; such a group gets no rank.

The MDE is the shifted-t approximation ``(t_{1-alpha/(2m), df} + t_{power, df}) * se`` at the Holm
first-step level ``alpha/m`` (m = the number of testable groups): the effect that the first Holm
step detects with the given power, so it is conservative for every later step. It differs from the
exact noncentral-t power calculation (statsmodels' ``TTestPower``) by under 1 % for df >= 30
(tests/test_studies_verdicts.py checks it); below that it is slightly optimistic (a few %).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

#: every verdict a group can get, in the order reports list them
VERDICTS: tuple[str, ...] = ("helps", "hurts", "negligible", "inconclusive", "not testable")

#: columns of :func:`group_verdicts`
VERDICT_COLUMNS: tuple[str, ...] = (
    "attribute",
    "verdict",
    "direction",
    "estimate",
    "p_holm",
    "p_tost",
    "mde",
    "margin",
    "reason",
)


def _dist(df: float) -> Any:
    """The reference distribution: Student t on ``df`` degrees of freedom, normal when infinite."""
    if df is None or not np.isfinite(df):
        return stats.norm()
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, not {df}")
    return stats.t(df)


def tost_p(estimate: float, std_err: float, df: float, margin: float) -> float:
    """Two one-sided t tests of H0: |effect| >= margin (df = inf -> normal); the larger p.

    Equivalence within ±margin is shown at level alpha when the returned p is below alpha (the
    same as the (1 - 2 alpha) confidence interval lying inside ±margin). NaN when the estimate or
    its standard error is missing or the standard error is not positive.
    """
    est, se, m = float(estimate), float(std_err), float(margin)
    if not (np.isfinite(est) and np.isfinite(se) and se > 0 and np.isfinite(m) and m > 0):
        return float("nan")
    dist = _dist(df)
    p_lower = float(dist.sf((est + m) / se))  # H0: effect <= -margin
    p_upper = float(dist.cdf((est - m) / se))  # H0: effect >= +margin
    return max(p_lower, p_upper)


def minimum_detectable_effect(
    std_err: float,
    df: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    family_size: int = 1,
    median_unbiased: bool = True,
) -> float:
    """(t_{1-alpha/(2m), df} + t_{power, df}) * se: the effect a two-sided test at the Holm
    first-step level alpha/m detects with the given power (m = family_size).

    Why the shifted-t and not the noncentral t: it is closed-form, needs only the standard error
    and df a table already has, and is within 1 % of the noncentral answer for df >= 30.

    ``median_unbiased`` (default) multiplies by ``sqrt(df / median(chi2_df))``. Why: the formula
    wants the *true* standard error, and the table has an estimate whose square is, under the
    Satterthwaite approximation behind the df, ``se^2 chi2_df / df``; its median is below the
    true value (by 3.5 % at df = 10, 1.1 % at df = 30, 0 at df = inf), so the plain plug-in
    MDE is optimistic exactly where few clusters make it matter. The factor makes the reported
    MDE median-unbiased for the design's MDE (measured: power at the reported MDE on a rare level
    carried by 10 identities, df ~ 10: docs/studies.md). ``False`` gives the textbook formula.
    """
    se = float(std_err)
    if not (np.isfinite(se) and se > 0):
        return float("nan")
    m = max(int(family_size), 1)
    dist = _dist(df)
    mde = (dist.ppf(1.0 - alpha / (2.0 * m)) + dist.ppf(power)) * se
    if median_unbiased and df is not None and np.isfinite(df):
        mde *= math.sqrt(df / stats.chi2.median(df))
    return float(mde)


def clustered_mean(values: np.ndarray, clusters: np.ndarray | None) -> tuple[float, float, float]:
    """Mean of rows with a cluster-robust (CR1) standard error and G - 1 df (n - 1 unclustered).

    Returns ``(mean, std_err, df)``. CR1 on a constant-only model is ``G/(G-1)`` times the sum of
    squared cluster totals of the residuals over ``n^2`` (statsmodels' ``cov_type="cluster"``
    with its default small-sample corrections; the (n-1)/(n-k) factor is 1 for k = 1). Written out
    because the one-column case needs no model fit, and it runs inside simulation loops.
    """
    y = np.asarray(values, dtype=float)
    n = y.size
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(y.mean())
    if clusters is None:
        if n < 2:
            return mean, float("nan"), float("nan")
        return mean, float(y.std(ddof=1) / math.sqrt(n)), float(n - 1)
    codes = pd.factorize(np.asarray(clusters))[0]
    g = int(codes.max()) + 1
    if g < 2:
        return mean, float("nan"), float("nan")
    totals = np.bincount(codes, weights=y - mean, minlength=g)
    var = g / (g - 1.0) * float(np.sum(totals**2)) / n**2
    return mean, float(math.sqrt(var)), float(g - 1)


def verdict(
    *,
    p_holm: float | None,
    direction: float | None,
    p_tost: float | None,
    alpha: float,
    testable: bool = True,
) -> str:
    """helps / hurts when p_holm < alpha (by direction's sign), negligible when p_tost < alpha,
    else inconclusive; 'not testable' when not testable.

    A significant group without a usable sign (direction missing or 0) is ``inconclusive``: the
    test says something changes, but not which way, so neither helps nor hurts can be claimed.
    """
    if not testable:
        return "not testable"
    ph = finite_or_none(p_holm)
    if ph is not None and ph < alpha:
        d = finite_or_none(direction)
        if d is not None and d > 0:
            return "helps"
        if d is not None and d < 0:
            return "hurts"
        return "inconclusive"
    pt = finite_or_none(p_tost)
    if pt is not None and pt < alpha:
        return "negligible"
    return "inconclusive"


def finite_or_none(x: Any) -> float | None:
    """``x`` as a finite float; None for None, NaN, inf or anything that is not a number."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def group_verdicts(
    levels: pd.DataFrame, tests: pd.DataFrame, *, margin: float, alpha: float
) -> pd.DataFrame:
    """levels: attribute, level, estimate, std_err, df (one row per level contrast on the
    outcome's scale); tests: attribute, p_value, p_holm (and optional testable, reason).
    Returns one row per attribute: attribute, verdict, direction, estimate, p_holm, p_tost, mde,
    margin, reason (and test, when ``tests`` has that column). Multi-level groups: negligible only if every level is (intersection-union
    test: p_tost = max over levels); direction and estimate of the largest-|t| level; mde = the
    largest level MDE (conservative), family_size = number of testable groups.

    A group is not testable when ``tests`` says so (``testable`` False, with its ``reason``),
    when its test has no p-value, or when none of its levels has a usable estimate.
    """
    if not (np.isfinite(margin) and margin > 0):
        raise ValueError(f"the equivalence margin must be a positive number, not {margin}")
    lv = levels.copy()
    for col in ("estimate", "std_err", "df"):
        lv[col] = pd.to_numeric(lv[col], errors="coerce")
    lv = lv[lv["estimate"].notna() & (lv["std_err"] > 0)]
    by_attr = {a: part for a, part in lv.groupby("attribute", sort=False)}
    order = list(dict.fromkeys([*tests["attribute"].tolist(), *by_attr]))
    info = {row["attribute"]: row for row in tests.to_dict("records")}
    status = {a: _testable(info.get(a), by_attr.get(a)) for a in order}
    m = max(sum(ok for ok, _ in status.values()), 1)
    rows = []
    for a in order:
        ok, reason = status[a]
        row = info.get(a, {})
        p_holm = finite_or_none(row.get("p_holm"))
        if not ok:
            rows.append(_row(a, "not testable", margin, reason=reason, p_holm=p_holm))
            continue
        rows.append(_testable_row(a, by_attr[a], p_holm, margin=margin, alpha=alpha, m=m))
    out = pd.DataFrame(rows, columns=list(VERDICT_COLUMNS))
    if "test" in tests.columns:  # which test each verdict used, where the caller says
        out["test"] = [info.get(a, {}).get("test") for a in order]
    return out


def _testable(test: dict[str, Any] | None, lv: pd.DataFrame | None) -> tuple[bool, str | None]:
    """Whether a group can get a verdict, and why not."""
    if test is None:
        return False, "no group test"
    flag = test.get("testable", True)
    if flag is not None and not (isinstance(flag, float) and np.isnan(flag)) and not bool(flag):
        return False, str(test.get("reason") or "no test possible")
    if finite_or_none(test.get("p_value")) is None:
        return False, str(test.get("reason") or "the group test has no p-value")
    if lv is None or lv.empty:
        return False, "no level contrast could be estimated"
    return True, None


def _testable_row(
    attribute: str, lv: pd.DataFrame, p_holm: float | None, *, margin: float, alpha: float, m: int
) -> dict[str, Any]:
    """The verdict of one testable group from its level contrasts."""
    est, se, dfs = (lv[c].to_numpy(dtype=float) for c in ("estimate", "std_err", "df"))
    head = int(np.argmax(np.abs(est / se)))
    p_tost = max(tost_p(e, s, d, margin) for e, s, d in zip(est, se, dfs))
    mde = max(minimum_detectable_effect(s, d, alpha=alpha, family_size=m) for s, d in zip(se, dfs))
    direction = float(np.sign(est[head])) if est[head] != 0 else float("nan")
    v = verdict(p_holm=p_holm, direction=direction, p_tost=p_tost, alpha=alpha)
    reason = None
    if v == "inconclusive" and p_holm is not None and p_holm < alpha:
        reason = "significant, but its strongest level has no direction"
    return _row(
        attribute,
        v,
        margin,
        direction=direction,
        estimate=float(est[head]),
        p_holm=p_holm,
        p_tost=p_tost,
        mde=mde,
        reason=reason,
    )


def _row(attribute: str, v: str, margin: float, **values: Any) -> dict[str, Any]:
    nan = float("nan")
    out = {c: nan for c in VERDICT_COLUMNS}
    out.update({"attribute": attribute, "verdict": v, "margin": float(margin), "reason": None})
    out.update({k: (nan if val is None and k != "reason" else val) for k, val in values.items()})
    return out


# --------------------------------------------------------------------------- inputs from tables


def default_margin(values: np.ndarray | pd.Series) -> float:
    """The equivalence margin when none is given, on the outcome's scale.

    An outcome in [0, 1] (AP, mAP, rank-1 as 0/1) gets 0.01 — one point of mAP, the study's
    default too: a smaller change is below what ReID papers report as a difference. Any other
    outcome gets 0.1 standard deviations of the outcome (a tenth of Cohen's "small" 0.2 would be
    too strict to ever show; 0.1 SD is a conventional "trivial" effect). A constant outcome
    falls back to 0.01 (nothing can be tested on it anyway)."""
    y = np.asarray(values, dtype=float)
    y = y[np.isfinite(y)]
    if y.size == 0 or (y.min() >= 0.0 and y.max() <= 1.0):
        return 0.01
    sd = float(y.std(ddof=1)) if y.size > 1 else 0.0
    return 0.1 * sd if sd > 0 else 0.01


def levels_from_glm(coefficients: pd.DataFrame) -> pd.DataFrame:
    """The ``levels`` input of :func:`group_verdicts` from a GLM coefficient table
    (``studies.glm.GLMResult.coefficients``): each tested level's average marginal effect on
    the outcome's scale (``ame``, ``ame_std_err``) with its coefficient's denominator df
    (``df_denom``: HTZ / Satterthwaite, two-way ``min(G) - 1``, inf for a normal reference).
    Untested, separated and aliased levels are left out: their estimates mean nothing."""
    cols = ["attribute", "level", "estimate", "std_err", "df"]
    need = {"attribute", "level", "ame", "ame_std_err", "df_denom", "p_value"}
    if coefficients is None or coefficients.empty or not need <= set(coefficients.columns):
        return pd.DataFrame(columns=cols)
    df = coefficients[coefficients["attribute"].notna()]
    keep = pd.to_numeric(df["p_value"], errors="coerce").notna()
    for flag in ("separation", "aliased"):
        if flag in df.columns:
            keep &= ~df[flag].fillna(False).astype(bool)
    df = df[keep]
    return pd.DataFrame(
        {
            "attribute": df["attribute"].to_numpy(),
            "level": df["level"].astype(str).to_numpy(),
            "estimate": pd.to_numeric(df["ame"], errors="coerce").to_numpy(),
            "std_err": pd.to_numeric(df["ame_std_err"], errors="coerce").to_numpy(),
            "df": pd.to_numeric(df["df_denom"], errors="coerce").fillna(np.inf).to_numpy(),
        },
        columns=cols,
    )


def tests_from_glm(group_tests: pd.DataFrame) -> pd.DataFrame:
    """The ``tests`` input of :func:`group_verdicts` from the GLM's group Wald tests."""
    out = group_tests[["attribute", "p_value", "p_holm"]].copy()
    p = pd.to_numeric(out["p_value"], errors="coerce")
    out["testable"] = p.notna().to_numpy()
    out["reason"] = np.where(
        p.notna(), None, "the GLM could test none of its levels (too few rows or clusters)"
    )
    out["test"] = group_tests["test"].to_numpy() if "test" in group_tests.columns else "glm"
    return out.reset_index(drop=True)


def tests_from_randomization(table: pd.DataFrame) -> pd.DataFrame:
    """The ``tests`` input of :func:`group_verdicts` from ``studies.randomization``'s table: a
    group whose test is ``not testable`` (not constant within configurations, or never
    switched) keeps the table's note as its reason."""
    out = table[["attribute", "p_value", "p_holm"]].copy()
    test = table["test"].astype(str)
    p = pd.to_numeric(out["p_value"], errors="coerce")
    out["testable"] = ((test != "not testable") & p.notna()).to_numpy()
    note = table["note"] if "note" in table.columns else pd.Series("", index=table.index)
    out["reason"] = [
        None if ok else (n or "no randomisation test possible")
        for ok, n in zip(out["testable"], note.fillna(""))
    ]
    out["test"] = test.to_numpy()
    return out.reset_index(drop=True)


def excluded_tests(excluded: dict[str, str]) -> pd.DataFrame:
    """``tests`` rows for groups the frame left out (single level, ...): not testable, with the
    frame's reason."""
    return pd.DataFrame(
        {
            "attribute": list(excluded),
            "p_value": np.nan,
            "p_holm": np.nan,
            "testable": False,
            "reason": [f"left out of the analysis: {r}" for r in excluded.values()],
            "test": "none",
        },
        columns=["attribute", "p_value", "p_holm", "testable", "reason", "test"],
    )


__all__ = [
    "VERDICTS",
    "VERDICT_COLUMNS",
    "clustered_mean",
    "default_margin",
    "excluded_tests",
    "group_verdicts",
    "levels_from_glm",
    "tests_from_glm",
    "tests_from_randomization",
    "minimum_detectable_effect",
    "tost_p",
    "verdict",
]

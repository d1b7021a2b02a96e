"""Generalised linear models of an outcome on all attribute groups, with robust inference.

Choices that change answers, and why:

- **Family** (``family="auto"``): an outcome of only 0/1 -> ``logit``; values in [0, 1] (AP) ->
  ``fractional_logit`` (Papke–Wooldridge: binomial likelihood as a quasi-likelihood, so only the
  mean model is assumed and *robust* covariance is mandatory); non-negative integers (ranks,
  counts) -> ``poisson`` as a quasi-likelihood (consistent for the mean under any
  overdispersion, because its covariance is robust; a Pearson dispersion above 1.5 is reported);
  anything else -> ``gaussian``. ``negative_binomial`` (NB2, statsmodels' discrete model) can be
  asked for explicitly. The outcome's range is validated: statsmodels' binomial family accepts
  values outside [0, 1] without a word.
- **Covariance.** With ``frame.cluster``: cluster-robust CR2 (Bell–McCaffrey) for every family;
  ``cov_type="CR1"`` gives statsmodels' / Stata's CR1 instead. CR1 is biased downwards when the
  model spends many parameters per cluster (12 attribute groups are ~33 parameters; with 150
  identities the null rejection rate of a balanced binary attribute was ~9% at 5% in our
  simulations), CR2 corrects the leverage. Without clusters: HC2 (``"HC0"`` available) for the
  quasi-likelihood families (fractional logit, Poisson) and Gaussian, model-based for a binary
  logit. Every p-value, CI and Wald test uses this covariance; no likelihood-ratio tests (wrong
  for quasi-likelihoods). The negative binomial model uses statsmodels' CR1 / HC0.
- **Small samples of clusters per level.** A robust variance of a level seen in ``m`` clusters
  (or rows, unclustered) is estimated from ``m`` score sums, so its reference distribution is
  Student t with about ``m - 1`` degrees of freedom (the Welch–Satterthwaite limit that Imbens &
  Kolesár 2016 show for a dummy with few treated clusters), not normal. With the normal, a
  Market level such as ``age=old`` (6 identities of 750) rejects several times too often at a
  Holm-corrected level. So each coefficient uses t(m - 1) and each group's joint Wald statistic
  W is referred to F(q, min m - 1) over its tested levels (column ``p_value``); the asymptotic
  chi-square p-value is kept beside it (``p_chi2``). In our null simulations (150 identities,
  Market frequencies) CR2 + F kept the family-wise error of Holm at 0.045; CR2 + chi-square gave
  0.135 and CR1 + F 0.08. A level seen in a single cluster has no variance estimate at all: its
  coefficient is reported without a p-value and left out of its group's test, with a warning;
  so is any level seen in fewer than ``min_level_support`` (5) clusters, because one such level
  would otherwise drag its whole group's test down to F(q, 1..3) and hide any effect of the
  group's common levels (Market's ``downcolor=yellow`` has 2 identities of 750).
- **Speed without approximation.** Attributes are categorical, so the design has few distinct
  rows; for a ReID table with identity-level attributes, one per identity. Rows are collapsed to
  (cluster, attribute pattern) cells with counts and outcome sums; the canonical-link GLM fitted
  on cell means with frequency weights has the same estimating equations, and the robust
  covariances are exact functions of cell sums (our sandwich, below, because statsmodels' needs
  per-row scores). A million-row table becomes ~750 cells. Tests check every number against
  statsmodels' own fit of the uncollapsed table.
- **Separation.** A level whose outcomes are all 0 or all 1 (or a coefficient beyond ±10 on the
  link scale, or a fit that does not converge) is reported as a warning naming the attribute and
  level, and flagged in the ``separation`` column, instead of a silent huge coefficient.
"""

from __future__ import annotations

import warnings as _warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats
from threadpoolctl import threadpool_limits

from studies.corrections import add_adjusted
from studies.errors import StudyInputError
from studies.frame import AnalysisFrame

FAMILIES = ("logit", "fractional_logit", "poisson", "negative_binomial", "gaussian")
#: |coefficient| on the link scale beyond which a level is flagged as (quasi-)separated
HUGE_COEF = 10.0
_KEY_LIMIT = 2**62


@dataclass
class GLMResult:
    outcome: str
    family: str
    #: one row per non-reference level: attribute, level, coef, std_err, ci_low, ci_high,
    #: statistic, df_denom, p_value, effect, effect_name, effect_ci_low, effect_ci_high,
    #: odds_ratio (logit families), ame, ame_std_err, ame_ci_low, ame_ci_high, n_rows,
    #: n_clusters, separation, aliased
    coefficients: pd.DataFrame
    #: one row per attribute group: attribute, statistic (Wald W), df, df_denom, p_value,
    #: p_chi2, test, n_levels, n_tested, separation, p_holm, p_fdr_bh
    group_tests: pd.DataFrame
    n_obs: int
    n_clusters: int | None
    warnings: list[str] = field(default_factory=list)
    covariance: str = ""
    intercept: float = float("nan")
    #: reference level of each modelled group
    reference: dict[str, str] = field(default_factory=dict)
    converged: bool = True
    #: distinct (cluster, attribute pattern) cells the model was fitted on
    n_cells: int = 0
    #: Pearson dispersion (Poisson / Gaussian scale), for the report
    dispersion: float = float("nan")


# ----------------------------------------------------------------------------------------------
# Family
# ----------------------------------------------------------------------------------------------
def detect_family(y: np.ndarray) -> str:
    """The family ``auto`` picks for an outcome (see the module docstring)."""
    y = np.asarray(y, dtype=float)
    if np.all((y == 0) | (y == 1)):
        return "logit"
    if np.all((y >= 0) & (y <= 1)):
        return "fractional_logit"
    if np.all(y >= 0) and np.all(np.mod(y, 1) == 0):
        return "poisson"
    return "gaussian"


def _check_family(y: np.ndarray, family: str, outcome: str) -> None:
    def first(mask: np.ndarray) -> str:
        return f"{y[mask][0]:g}"

    if family == "logit":
        bad = (y != 0) & (y != 1)
        if bad.any():
            raise StudyInputError(
                f"Outcome {outcome!r} holds {first(bad)}, not 0/1, so a logit cannot model it; "
                "use family 'fractional_logit' for proportions."
            )
    elif family == "fractional_logit":
        bad = (y < 0) | (y > 1)
        if bad.any():
            raise StudyInputError(
                f"Outcome {outcome!r} holds {first(bad)}, outside [0, 1], so a fractional logit "
                "cannot model it."
            )
    elif family in ("poisson", "negative_binomial"):
        bad = y < 0
        if bad.any():
            raise StudyInputError(
                f"Outcome {outcome!r} holds {first(bad)}, a negative value, so a {family} model "
                "cannot model it."
            )
        if family == "negative_binomial" and np.any(np.mod(y, 1) != 0):
            raise StudyInputError(
                f"Outcome {outcome!r} holds {first(np.mod(y, 1) != 0)}, not an integer count, so "
                "a negative binomial model cannot model it."
            )
    elif family != "gaussian":
        raise StudyInputError(
            f"Unknown GLM family {family!r}; use 'auto' or one of {list(FAMILIES)}."
        )


def _sm_family(family: str) -> sm.families.Family:
    if family in ("logit", "fractional_logit"):
        return sm.families.Binomial()
    if family in ("poisson", "negative_binomial"):
        return sm.families.Poisson()
    return sm.families.Gaussian()


# ----------------------------------------------------------------------------------------------
# Cells: the collapsed design
# ----------------------------------------------------------------------------------------------
def _cell_index(codes: np.ndarray, ks: Sequence[int], cluster: np.ndarray | None) -> np.ndarray:
    """One integer per distinct (cluster, level pattern), numbered in order of first appearance."""
    n = codes.shape[0]
    key = np.zeros(n, dtype=np.int64) if cluster is None else cluster.astype(np.int64)
    top = int(key.max(initial=0)) + 1
    for j, k in enumerate(ks):
        if top * k >= _KEY_LIMIT:
            key, uniq = pd.factorize(key)
            top = len(uniq)
        key = key * k + codes[:, j]
        top *= k
    return pd.factorize(key)[0]


@dataclass
class _Design:
    names: list[tuple[str, str]]  # (group, level) of each non-intercept column
    col_group: list[str]
    X: np.ndarray  # cells x (1 + columns)
    n: np.ndarray  # rows per cell
    sy: np.ndarray
    syy: np.ndarray
    cell_codes: np.ndarray  # cells x groups
    cell_cluster: np.ndarray | None
    cell: np.ndarray  # row -> cell


def _build_design(
    codes: np.ndarray,
    groups: list[str],
    levels: dict[str, list[str]],
    y: np.ndarray,
    cluster: np.ndarray | None,
) -> _Design:
    ks = [len(levels[g]) for g in groups]
    cell = _cell_index(codes, ks, cluster)
    n_cells = int(cell.max()) + 1 if len(cell) else 0
    first = np.empty(n_cells, dtype=np.int64)
    first[cell[::-1]] = np.arange(len(cell))[::-1]
    cell_codes = codes[first]
    cols, names, col_group = [np.ones(n_cells)], [], []
    for j, g in enumerate(groups):
        for li in range(1, ks[j]):
            cols.append((cell_codes[:, j] == li).astype(float))
            names.append((g, levels[g][li]))
            col_group.append(g)
    return _Design(
        names=names,
        col_group=col_group,
        X=np.column_stack(cols),
        n=np.bincount(cell, minlength=n_cells).astype(float),
        sy=np.bincount(cell, weights=y, minlength=n_cells),
        syy=np.bincount(cell, weights=y * y, minlength=n_cells),
        cell_codes=cell_codes,
        cell_cluster=None if cluster is None else cluster[first],
        cell=cell,
    )


def _independent_columns(X: np.ndarray, w: np.ndarray) -> list[int]:
    """Greedy, in column order: keep a column unless the kept ones (weighted) span it."""
    Xw = X * np.sqrt(w)[:, None]
    basis: list[np.ndarray] = []
    kept: list[int] = []
    for j in range(X.shape[1]):
        v = Xw[:, j].astype(float)
        norm0 = float(np.linalg.norm(v))
        if norm0 == 0:
            continue
        for _ in range(2):  # Gram-Schmidt, twice for numerical safety
            for q in basis:
                v = v - (q @ v) * q
        norm = float(np.linalg.norm(v))
        if norm > 1e-9 * norm0:
            basis.append(v / norm)
            kept.append(j)
    return kept


# ----------------------------------------------------------------------------------------------
# Fit
# ----------------------------------------------------------------------------------------------
def _sandwich(
    d: _Design, X: np.ndarray, mu: np.ndarray, fam: sm.families.Family, kind: str, n_obs: int
) -> np.ndarray:
    """Covariance of a canonical-link GLM fitted on cells, from cell sums only.

    Bread A = sum_c n_c v(mu_c) x_c x_c'. Cell score s_c = x_c (sum y - n_c mu_c): the sum of its
    rows' scores. The dispersion cancels in every sandwich.

    - ``CR1``: cluster sums of scores, times G/(G-1)·(N-1)/(N-K) (statsmodels, Stata).
    - ``CR2`` (Bell–McCaffrey): each cluster's residuals are first multiplied by
      (I - H_gg)^(-1/2), H_gg the cluster's block of the (working-weight) hat matrix. Rows of one
      cell share x and mu, so only the cell-mean directions of the residual vector reach the
      score; on them H_gg is the cells x cells matrix D^(1/2) X_g A^-1 X_g' D^(1/2), D = n v.
      For the usual one-cell cluster this is the scalar h_g and the score is scaled by
      (1 - h_g)^(-1/2). CR1 is biased downwards when the model has many parameters per cluster
      (every one of 12 attribute groups spends its levels); CR2 removes most of that bias.
    - ``HC0``: per-row squared residuals, sum (y - mu_c)^2 = syy - 2 mu_c sy + n_c mu_c^2.
    - ``HC2``: the same divided by 1 - h_i, h_i = v_c x_c' A^-1 x_c the leverage of a row of c.
    """
    v = np.asarray(fam.variance(mu))
    A = (X * (d.n * v)[:, None]).T @ X
    Ainv = np.linalg.inv(A)
    k = X.shape[1]
    r = d.sy - d.n * mu
    if kind in ("CR1", "CR2"):
        g = d.cell_cluster
        n_g = int(g.max()) + 1
        scores = X * r[:, None]
        if kind == "CR2":
            scores = _cr2_scores(X, Ainv, d.n * v, r, g, n_g)
        S = np.zeros((n_g, k))
        np.add.at(S, g, scores)
        M = S.T @ S
        corr = 1.0
        if kind == "CR1" and n_g > 1:
            corr = n_g / (n_g - 1.0) * (n_obs - 1.0) / (n_obs - k)
        return corr * (Ainv @ M @ Ainv)
    if kind in ("HC0", "HC2"):
        rss = np.maximum(d.syy - 2.0 * mu * d.sy + d.n * mu * mu, 0.0)
        if kind == "HC2":
            h_row = v * np.einsum("ij,jk,ik->i", X, Ainv, X)
            rss = rss / np.maximum(1.0 - h_row, 1e-12)
        M = (X * rss[:, None]).T @ X
        return Ainv @ M @ Ainv
    # model-based: dispersion 1 for binomial / Poisson, Pearson for Gaussian
    if isinstance(fam, sm.families.Gaussian):
        rss = np.maximum(d.syy - 2.0 * mu * d.sy + d.n * mu * mu, 0.0)
        return Ainv * (rss.sum() / max(n_obs - k, 1))
    return Ainv


def _cr2_scores(
    X: np.ndarray, Ainv: np.ndarray, w: np.ndarray, r: np.ndarray, g: np.ndarray, n_g: int
) -> np.ndarray:
    """Cell scores with the CR2 adjustment (see ``_sandwich``); summing them by cluster gives
    the adjusted cluster scores. A direction with leverage ~1 (a level seen in one cluster)
    carries no information about the variance and is dropped rather than blown up."""
    sw = np.sqrt(w)
    u = np.divide(r, sw, out=np.zeros_like(r), where=sw > 0)  # residual along the cell direction
    Z = X * sw[:, None]  # D^(1/2) X
    h = np.einsum("ij,jk,ik->i", Z, Ainv, Z)
    cells_per_cluster = np.bincount(g, minlength=n_g)
    single = cells_per_cluster[g] == 1
    adj = np.zeros_like(u)
    ok = single & (h < 1 - 1e-8)
    adj[ok] = u[ok] / np.sqrt(1.0 - h[ok])
    for c in np.flatnonzero(cells_per_cluster > 1):
        idx = np.flatnonzero(g == c)
        Zg = Z[idx]
        M = np.eye(len(idx)) - Zg @ Ainv @ Zg.T
        lam, Q = np.linalg.eigh((M + M.T) / 2)
        inv_sqrt = np.where(lam > 1e-8, 1.0 / np.sqrt(np.clip(lam, 1e-8, None)), 0.0)
        adj[idx] = Q @ (inv_sqrt * (Q.T @ u[idx]))
    return Z * adj[:, None]


def _fit_cells(d: _Design, X: np.ndarray, family: str, notes: list[str]) -> tuple[np.ndarray, bool]:
    fam = _sm_family(family)
    ybar = d.sy / d.n
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        res = sm.GLM(ybar, X, family=fam, freq_weights=d.n).fit(maxiter=200)
    converged = bool(getattr(res, "converged", True))
    for w in caught:
        name = type(w.message).__name__ if isinstance(w.message, Warning) else str(w.category)
        if "Separation" in name or "Convergence" in name:
            notes.append(f"statsmodels: {str(w.message).splitlines()[0]}")
    return np.asarray(res.params), converged


def _fit_negbin(
    d: _Design, X: np.ndarray, y: np.ndarray, cov: str, cluster: np.ndarray | None, notes: list[str]
) -> tuple[np.ndarray, np.ndarray, bool]:
    Xr = X[d.cell]
    kw: dict = {"cov_type": "HC0"} if cov == "HC0" else {}
    if cov == "CR1":
        kw = {"cov_type": "cluster", "cov_kwds": {"groups": cluster}}
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        res = sm.NegativeBinomial(y, Xr, loglike_method="nb2").fit(disp=0, maxiter=300, **kw)
    for w in caught:
        if "Convergence" in type(w.message).__name__:
            notes.append(f"statsmodels: {str(w.message).splitlines()[0]}")
    k = X.shape[1]
    converged = bool(res.mle_retvals.get("converged", True))
    return np.asarray(res.params)[:k], np.asarray(res.cov_params())[:k, :k], converged


def _resolve_groups(
    frame: AnalysisFrame, groups: Sequence[str] | None, notes: list[str]
) -> list[str]:
    wanted = list(frame.groups if groups is None else groups)
    out = []
    for g in wanted:
        if g not in frame.data.columns or not isinstance(frame.data[g].dtype, pd.CategoricalDtype):
            raise StudyInputError(f"{frame.source} has no attribute group {g!r}.")
        observed = int((np.bincount(frame.data[g].cat.codes.to_numpy() + 1) > 0)[1:].sum())
        if observed < 2:
            notes.append(
                f"Attribute {g!r} has a single level in these rows and is left out of the GLM."
            )
            continue
        out.append(g)
    return out


def _covariance_kind(cov_type: str, family: str, *, clustered: bool) -> str:
    if cov_type == "auto" and family == "negative_binomial":
        return "CR1" if clustered else "HC0"
    if cov_type == "auto":
        if clustered:
            return "CR2"
        return "model" if family == "logit" else "HC2"
    allowed = ("CR1", "CR2") if clustered else ("HC0", "HC2", "model")
    if cov_type not in allowed:
        raise StudyInputError(
            f"Covariance {cov_type!r} does not fit this "
            f"{'clustered' if clustered else 'unclustered'} table; use one of {list(allowed)}."
        )
    if family == "negative_binomial" and cov_type in ("CR2", "HC2"):
        raise StudyInputError("The negative binomial model supports covariance CR1, HC0 or model.")
    return cov_type


def fit_glm(
    frame: AnalysisFrame,
    outcome: str,
    *,
    family: str = "auto",
    groups: Sequence[str] | None = None,
    alpha: float = 0.05,
    cov_type: str = "auto",
    min_level_support: int = 5,
    small_sample: bool = True,
) -> GLMResult:
    """Fit ``outcome ~ all attribute groups`` (treatment-coded against each group's reference)
    and test each group jointly. See the module docstring for family, covariance and df.

    ``cov_type``: "auto" (CR2 with clusters; HC2, or model-based for a binary logit, without),
    "CR1", "CR2", "HC0", "HC2" or "model". Levels seen in fewer than ``min_level_support``
    clusters (rows, unclustered) get no p-value and stay out of their group's test.
    ``small_sample=False`` refers statistics to the normal / chi-square instead of t / F."""
    # The collapsed design is small (cells x ~40): multithreaded BLAS only adds overhead, and on a
    # busy 2-core machine OpenBLAS threads made one 750 x 36 least-squares solve 100x slower.
    with threadpool_limits(1, user_api="blas"):
        return _fit_glm(
            frame,
            outcome,
            family=family,
            groups=groups,
            alpha=alpha,
            cov_type=cov_type,
            min_level_support=min_level_support,
            small_sample=small_sample,
        )


def _fit_glm(
    frame: AnalysisFrame,
    outcome: str,
    *,
    family: str,
    groups: Sequence[str] | None,
    alpha: float,
    cov_type: str,
    min_level_support: int,
    small_sample: bool,
) -> GLMResult:
    if outcome not in frame.outcomes and outcome not in frame.data.columns:
        raise StudyInputError(f"{frame.source} has no outcome {outcome!r}.")
    notes: list[str] = []
    y = frame.data[outcome].to_numpy(dtype=float)
    if family == "auto":
        family = detect_family(y)
    _check_family(y, family, outcome)
    use = _resolve_groups(frame, groups, notes)
    # Levels actually present (categories of a subset may be unobserved).
    levels: dict[str, list[str]] = {}
    codes_list = []
    for g in use:
        c = frame.data[g].cat.codes.to_numpy().astype(np.int64)
        cats = [str(x) for x in frame.data[g].cat.categories]
        present = np.flatnonzero(np.bincount(c, minlength=len(cats)) > 0)
        if present[0] != 0:  # reference unobserved: most frequent present level becomes reference
            counts = np.bincount(c, minlength=len(cats))
            ref = int(present[np.argmax(counts[present])])
            present = np.array([ref] + [p for p in present if p != ref])
        remap = np.full(len(cats), -1)
        remap[present] = np.arange(len(present))
        levels[g] = [cats[p] for p in present]
        codes_list.append(remap[c])
    codes = np.column_stack(codes_list) if codes_list else np.zeros((len(y), 0), dtype=np.int64)
    clus = None
    if frame.cluster is not None:
        clus = pd.factorize(frame.data[frame.cluster])[0].astype(np.int64)
    n_obs = len(y)
    n_clusters = None if clus is None else int(clus.max()) + 1
    cov_kind = _covariance_kind(cov_type, family, clustered=clus is not None)
    if cov_kind in ("CR1", "CR2"):
        cov_label = f"cluster-robust {cov_kind} ({n_clusters} clusters of {frame.cluster!r})"
    elif cov_kind == "model":
        cov_label = "model-based"
    else:
        cov_label = f"robust {cov_kind}"

    d = _build_design(codes, use, levels, y, clus)
    empty = _empty_tables()
    if np.all(y == y[0]):
        notes.append(f"Outcome {outcome!r} is constant ({y[0]:g}); there is nothing to model.")
        return GLMResult(
            outcome, family, *empty, n_obs, n_clusters, notes, cov_label, n_cells=len(d.n)
        )
    kept = _independent_columns(d.X, d.n)
    aliased = [j for j in range(d.X.shape[1]) if j not in kept]
    for j in aliased:
        g, lv = d.names[j - 1]
        notes.append(
            f"Level {lv!r} of attribute {g!r} is collinear with other attributes (aliased); its "
            "coefficient is not estimated."
        )
    X = d.X[:, kept]
    fam = _sm_family(family)
    if family == "negative_binomial":
        b, V, converged = _fit_negbin(d, X, y, cov_kind, clus, notes)
    else:
        b, converged = _fit_cells(d, X, family, notes)
        mu0 = np.asarray(fam.link.inverse(X @ b))
        V = _sandwich(d, X, mu0, fam, cov_kind, n_obs)
    if not converged:
        notes.append(
            f"The {family} GLM of {outcome!r} did not converge; read its numbers with care."
        )
    eta = X @ b
    mu = np.asarray(fam.link.inverse(eta))
    dispersion = float("nan")
    if family in ("poisson", "negative_binomial", "gaussian"):
        v = np.maximum(np.asarray(fam.variance(mu)), 1e-300)
        pearson = (d.syy - 2.0 * mu * d.sy + d.n * mu * mu) / v
        dispersion = float(pearson.sum() / max(n_obs - X.shape[1], 1))
        if family == "poisson" and dispersion > 1.5:
            notes.append(
                f"Outcome {outcome!r} is overdispersed for a Poisson model (Pearson dispersion "
                f"{dispersion:.2f}); its robust covariance keeps the tests valid."
            )

    se = np.sqrt(np.maximum(np.diag(V), 0.0))
    sep_levels = _separated_levels(d, use, levels, family, outcome, notes)
    coefs, testable = _coefficient_table(
        d,
        b,
        V,
        se,
        kept,
        family,
        cov_kind,
        small_sample,
        min_level_support,
        sep_levels,
        alpha,
        fam,
        X,
        notes,
    )

    tests = []
    pos = {j: i for i, j in enumerate(kept)}
    attr = coefs["attribute"].to_numpy()
    sep_col = coefs["separation"].to_numpy(dtype=bool)
    nu_col = coefs["df_denom"].to_numpy(dtype=float)
    for g in use:
        in_g = attr == g
        idx = [pos[c] for c in range(1, d.X.shape[1]) if d.names[c - 1][0] == g and testable[c - 1]]
        rec = {
            "attribute": g,
            "n_levels": len(levels[g]),
            "n_tested": len(idx),
            "separation": bool(sep_col[in_g].any()),
        }
        if not idx:
            rec.update(
                statistic=np.nan, df=0, df_denom=np.nan, p_value=np.nan, p_chi2=np.nan, test="none"
            )
            notes.append(f"Attribute {g!r} has no testable level; it gets no p-value.")
        else:
            W, q = wald_statistic(b[idx], V[np.ix_(idx, idx)])
            nu = float(np.nanmin(nu_col[in_g & np.asarray(testable)]))
            p_chi2 = float(stats.chi2.sf(W, q))
            p = p_chi2 if np.isinf(nu) else float(stats.f.sf(W / q, q, nu))
            rec.update(
                statistic=W,
                df=q,
                df_denom=nu,
                p_value=p,
                p_chi2=p_chi2,
                test="wald_chi2" if np.isinf(nu) else "wald_F",
            )
        tests.append(rec)
    group_tests = add_adjusted(pd.DataFrame(tests).reindex(columns=_TEST_COLUMNS[:-2]))
    intercept = float(b[0]) if kept and kept[0] == 0 else float("nan")
    return GLMResult(
        outcome=outcome,
        family=family,
        coefficients=coefs,
        group_tests=group_tests.reindex(columns=_TEST_COLUMNS),
        n_obs=n_obs,
        n_clusters=n_clusters,
        warnings=_dedupe(notes),
        covariance=cov_label,
        intercept=intercept,
        reference={g: levels[g][0] for g in use},
        converged=converged,
        n_cells=len(d.n),
        dispersion=dispersion,
    )


def _separated_levels(
    d: _Design,
    use: list[str],
    levels: dict[str, list[str]],
    family: str,
    outcome: str,
    notes: list[str],
) -> set[tuple[str, str]]:
    """Levels whose outcomes are all 0 (or all 1 for binomial families): the MLE does not exist.
    Computed from cell sums; ``syy == sy`` tells all-0/1 rows apart from fractional ones."""
    out: set[tuple[str, str]] = set()
    if family == "gaussian":
        return out
    binomial = family in ("logit", "fractional_logit")
    for j, g in enumerate(use):
        k = len(levels[g])
        c = d.cell_codes[:, j]
        s = np.bincount(c, weights=d.sy, minlength=k)
        m = np.bincount(c, weights=d.n, minlength=k)
        for li in range(k):
            if s[li] == 0 or (binomial and s[li] == m[li]):
                out.add((g, levels[g][li]))
                notes.append(
                    f"Separation: every row with {g}={levels[g][li]} has outcome {outcome!r} = "
                    f"{0 if s[li] == 0 else 1}; its coefficient runs off to infinity and its test "
                    "means nothing."
                )
    return out


def _coefficient_table(
    d: _Design,
    b: np.ndarray,
    V: np.ndarray,
    se: np.ndarray,
    kept: list[int],
    family: str,
    cov_kind: str,
    small_sample: bool,
    min_level_support: int,
    sep_levels: set[tuple[str, str]],
    alpha: float,
    fam: sm.families.Family,
    X: np.ndarray,
    notes: list[str],
) -> tuple[pd.DataFrame, list[bool]]:
    """One row per non-reference level; also which levels enter their group's joint test."""
    pos = {j: i for i, j in enumerate(kept)}
    zcrit = stats.norm.ppf(1 - alpha / 2)
    p_cols = d.X.shape[1] - 1
    rec: dict[str, list] = {c: [] for c in _COEF_COLUMNS}
    testable: list[bool] = []
    groups_in_order = list(dict.fromkeys(d.col_group))
    for col in range(1, p_cols + 1):
        g, lv = d.names[col - 1]
        j = groups_in_order.index(g)
        li = 1 + [n for n in d.names if n[0] == g].index((g, lv))
        at = d.cell_codes[:, j] == li
        n_rows = int(d.n[at].sum())
        n_cl = int(len(np.unique(d.cell_cluster[at]))) if d.cell_cluster is not None else None
        support = n_cl if n_cl is not None else n_rows
        vals = dict.fromkeys(_COEF_COLUMNS, np.nan)
        vals.update(attribute=g, level=lv, n_rows=n_rows, n_clusters=n_cl, aliased=col not in pos)
        vals["separation"] = False
        ok = False
        if col in pos:
            i = pos[col]
            coef, s = float(b[i]), float(se[i])
            nu = np.inf if (cov_kind == "model" or not small_sample) else float(support - 1)
            # this level, or the group's reference level (not a column), is separated
            sep = (g, lv) in sep_levels or any(x[0] == g and x not in d.names for x in sep_levels)
            if abs(coef) > HUGE_COEF and family != "gaussian":
                sep = True
                notes.append(
                    f"The coefficient of {g}={lv} is {coef:.1f} on the link scale: likely "
                    "(quasi-)separation; its test means nothing."
                )
            ame, ame_se = _ame(d, X, pos, b, V, fam, col)
            vals.update(
                coef=coef, std_err=s, df_denom=nu, separation=sep, ame=ame, ame_std_err=ame_se
            )
            vals.update(ame_ci_low=ame - zcrit * ame_se, ame_ci_high=ame + zcrit * ame_se)
            if support < max(min_level_support, 2) or s == 0:
                unit = "clusters" if n_cl is not None else "rows"
                notes.append(
                    f"Level {lv!r} of attribute {g!r} occurs in only {support} {unit}, too few "
                    "for a robust variance; its coefficient gets no p-value and is left out of "
                    "the group test."
                )
            else:
                ok = True
        testable.append(ok)
        for c, v in vals.items():
            rec[c].append(v)
    coefs = pd.DataFrame(rec)
    ok = np.asarray(testable, dtype=bool)
    coef = coefs["coef"].to_numpy(dtype=float)
    s = coefs["std_err"].to_numpy(dtype=float)
    nu = coefs["df_denom"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = np.where(ok, coef / s, np.nan)
    finite = np.isfinite(nu)
    p = np.where(
        finite,
        2 * stats.t.sf(np.abs(stat), np.where(finite, np.maximum(nu, 1), 1)),
        2 * stats.norm.sf(np.abs(stat)),
    )
    crit = np.where(
        finite, stats.t.ppf(1 - alpha / 2, np.where(finite, np.maximum(nu, 1), 1)), zcrit
    )
    coefs["statistic"] = stat
    coefs["p_value"] = np.where(ok, p, np.nan)
    coefs["ci_low"] = np.where(ok, coef - crit * s, np.nan)
    coefs["ci_high"] = np.where(ok, coef + crit * s, np.nan)
    coefs = _add_effects(coefs, family)
    return coefs.reindex(columns=_COEF_COLUMNS), testable


def wald_statistic(b: np.ndarray, V: np.ndarray) -> tuple[float, int]:
    """Joint Wald statistic b' V^- b for H0: b = 0 and its rank (the chi-square df)."""
    b = np.asarray(b, dtype=float)
    V = np.atleast_2d(np.asarray(V, dtype=float))
    q = int(np.linalg.matrix_rank(V))
    if q == 0:
        return float("nan"), 0
    return float(b @ np.linalg.pinv(V) @ b), q


_COEF_COLUMNS = [
    "attribute",
    "level",
    "coef",
    "std_err",
    "ci_low",
    "ci_high",
    "statistic",
    "df_denom",
    "p_value",
    "effect",
    "effect_name",
    "effect_ci_low",
    "effect_ci_high",
    "odds_ratio",
    "ame",
    "ame_std_err",
    "ame_ci_low",
    "ame_ci_high",
    "n_rows",
    "n_clusters",
    "separation",
    "aliased",
]
_TEST_COLUMNS = [
    "attribute",
    "statistic",
    "df",
    "df_denom",
    "p_value",
    "p_chi2",
    "test",
    "n_levels",
    "n_tested",
    "separation",
    "p_holm",
    "p_fdr_bh",
]


def _empty_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.DataFrame(columns=_COEF_COLUMNS), pd.DataFrame(columns=_TEST_COLUMNS)


def _dedupe(xs: list[str]) -> list[str]:
    return list(dict.fromkeys(xs))


def _add_effects(coefs: pd.DataFrame, family: str) -> pd.DataFrame:
    """The coefficient on an interpretable scale: odds ratio, rate ratio or mean difference."""
    coefs = coefs.copy()
    for c in ("coef", "ci_low", "ci_high"):
        if c not in coefs:
            coefs[c] = np.nan
    if family in ("logit", "fractional_logit", "poisson", "negative_binomial"):
        coefs["effect"] = np.exp(coefs["coef"])
        coefs["effect_ci_low"] = np.exp(coefs["ci_low"])
        coefs["effect_ci_high"] = np.exp(coefs["ci_high"])
        coefs["effect_name"] = (
            "odds_ratio" if family in ("logit", "fractional_logit") else "rate_ratio"
        )
    else:
        coefs["effect"] = coefs["coef"]
        coefs["effect_ci_low"] = coefs["ci_low"]
        coefs["effect_ci_high"] = coefs["ci_high"]
        coefs["effect_name"] = "mean_difference"
    coefs["odds_ratio"] = coefs["effect"] if family in ("logit", "fractional_logit") else np.nan
    return coefs


def _ame(
    d: _Design,
    X: np.ndarray,
    pos: dict[int, int],
    b: np.ndarray,
    V: np.ndarray,
    fam: sm.families.Family,
    col: int,
) -> tuple[float, float]:
    """Average marginal effect of one level vs its reference on the outcome's own scale: the
    mean over all rows of mu(row at this level) - mu(row at the reference), other attributes as
    observed; its standard error by the delta method with the robust covariance."""
    g = d.names[col - 1][0]
    gcols = [pos[c] for c in range(1, d.X.shape[1]) if d.names[c - 1][0] == g and c in pos]
    w = d.n / d.n.sum()
    X_ref = X.copy()
    X_ref[:, gcols] = 0.0
    X_lv = X_ref.copy()
    X_lv[:, pos[col]] = 1.0
    e_ref, e_lv = X_ref @ b, X_lv @ b
    ame = float(w @ (fam.link.inverse(e_lv) - fam.link.inverse(e_ref)))
    dref = np.asarray(fam.link.inverse_deriv(e_ref))
    dlv = np.asarray(fam.link.inverse_deriv(e_lv))
    grad = (w * dlv) @ X_lv - (w * dref) @ X_ref
    return ame, float(np.sqrt(max(grad @ V @ grad, 0.0)))

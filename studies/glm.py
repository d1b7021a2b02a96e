"""Generalised linear models of an outcome on all attribute groups, with robust inference.

Choices that change answers, and why:

- **Family** (``family="auto"``; never a silent Gaussian: an outcome that looks like a proportion
  or a percentage but is not one is refused with the offending rows named, and a Gaussian
  choice is stated in the warnings): an outcome of only 0/1 -> ``logit``; values in [0, 1] (AP) ->
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
- **Small samples of clusters: CR2 + HTZ** (``small_sample="htz"``, the default; see
  ``studies.small_sample``). A robust variance estimated from a few clusters is itself noisy,
  so its reference distribution is not normal -- and how many degrees of freedom it has
  depends on *both* sides of a contrast (the reference level's clusters count too), on the
  cluster sizes and on the leverage, not only on the clusters of the level. Each coefficient
  gets the Satterthwaite t test and each group the Hotelling-T² ("HTZ") Wald test of
  Pustejovsky & Tipton (2018), exactly as R's clubSandwich computes them
  (``coef_test(test = "Satterthwaite")``, ``Wald_test(test = "HTZ")``; our tests compare with
  its numbers). Their degrees of freedom are computed under a working model; ours is the GLM's
  variance with an exchangeable within-cluster correlation estimated from the residuals
  (``icc``; ``icc=0`` is clubSandwich's default, working independence), because working
  independence counts every row of a big cluster as independent information and overstates
  the df of a level held by a few big clusters. Below ``FEW_DF`` (4) effective df a warning
  names the attribute. The asymptotic chi-square p-value is kept beside the group test
  (``p_chi2``); ``small_sample="naive"`` gives the former t(m - 1) / F(q, min m - 1) rule (m
  the clusters of the level) for comparison -- in our simulations (``docs/studies.md``) it
  rejected a true null at up to ~0.2 when the reference level was held by a few giant
  clusters. A level seen in fewer than ``min_level_support`` (5) clusters (rows, unclustered)
  is reported without a p-value and left out of its group's test, with a warning: one such
  level would otherwise drag its whole group's test down to a handful of df and hide any
  effect of the group's common levels (Market's ``downcolor=yellow`` has 2 identities of 750).
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
from studies.crossed import is_crossed, psd_clip, two_way_meat, unit_codes
from studies.errors import StudyInputError
from studies.frame import AnalysisFrame
from studies.small_sample import ClusterPieces, cr2_pieces, htz_df, htz_test

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


def _auto_family(y: np.ndarray, outcome: str, source: str, notes: list[str]) -> str:
    """``detect_family``, never silently Gaussian: an outcome that looks like a proportion
    (most values in [0, 1]) or a percentage but is not one is refused, naming the offending
    rows; any other Gaussian choice is said in the warnings."""
    family = detect_family(y)
    if family != "gaussian":
        return family
    way_out = "pass family='gaussian' (--family gaussian) to model the values as they are"
    outside = np.flatnonzero((y < 0) | (y > 1))
    if len(outside) < 0.5 * len(y):
        shown = ", ".join(f"row {i + 1} = {y[i]:g}" for i in outside[:5])
        more = f" and {len(outside) - 5} more" if len(outside) > 5 else ""
        raise StudyInputError(
            f"Outcome {outcome!r} of {source} looks like a proportion but {len(outside)} of its "
            f"{len(y)} analysed rows lie outside [0, 1] ({shown}{more}; rows counted among the "
            f"analysed rows); correct them, or {way_out}."
        )
    if np.all((y >= 0) & (y <= 100)):
        raise StudyInputError(
            f"Outcome {outcome!r} of {source} lies in [0, 100] with fractions, like a "
            f"percentage (max {y.max():g}); divide it by 100 to model it as a proportion, or "
            f"{way_out}."
        )
    notes.append(
        f"Outcome {outcome!r} is neither 0/1, a proportion nor a count (values {y.min():g} to "
        f"{y.max():g}): it is modelled with the Gaussian family, effects are mean differences."
    )
    return family


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
    #: two-way designs: each cell's identity and condition (``cell_cluster`` is their pair)
    cell_a: np.ndarray | None = None
    cell_b: np.ndarray | None = None


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
def _cell_rss(d: _Design, mu: np.ndarray) -> np.ndarray:
    """Sum over each cell's rows of (y - mu_c)^2, from the cell's sums: syy - 2 mu sy + n mu^2."""
    return d.syy - 2.0 * mu * d.sy + d.n * mu * mu


def _sandwich(
    d: _Design, X: np.ndarray, mu: np.ndarray, fam: sm.families.Family, kind: str, n_obs: int
) -> np.ndarray:
    """Covariance of a canonical-link GLM fitted on cells, from cell sums only.

    Bread A = sum_c n_c v(mu_c) x_c x_c'. Cell score s_c = x_c (sum y - n_c mu_c): the sum of its
    rows' scores. The dispersion cancels in every sandwich.

    - ``CR1``: cluster sums of scores, times G/(G-1)·(N-1)/(N-K) (statsmodels, Stata).
    - ``CR2`` (Bell–McCaffrey, in clubSandwich's form; ``studies.small_sample``): each
      cluster's residuals are first multiplied by an adjustment that makes the sandwich unbiased
      under the working model. For the usual one-cell cluster the score is scaled by
      (1 - h_g)^(-1/2), h_g the cluster's leverage. CR1 is biased downwards when the model has
      many parameters per cluster (every one of 12 attribute groups spends its levels); CR2
      removes most of that bias.
    - ``HC0``: per-row squared residuals, sum (y - mu_c)^2 = syy - 2 mu_c sy + n_c mu_c^2.
    - ``HC2``: the same divided by 1 - h_i, h_i = v_c x_c' A^-1 x_c the leverage of a row of c.
    """
    v = np.asarray(fam.variance(mu))
    A = (X * (d.n * v)[:, None]).T @ X
    Ainv = np.linalg.inv(A)
    k = X.shape[1]
    r = d.sy - d.n * mu
    if kind == "CR1":
        g = d.cell_cluster
        n_g = int(g.max()) + 1
        S = np.zeros((n_g, k))
        np.add.at(S, g, X * r[:, None])
        corr = n_g / (n_g - 1.0) * (n_obs - 1.0) / (n_obs - k) if n_g > 1 else 1.0
        return corr * (Ainv @ (S.T @ S) @ Ainv)
    if kind == "twoway_cr1":
        meat = two_way_meat(X * r[:, None], d.cell_a, d.cell_b, n_obs=n_obs, n_params=k)
        return Ainv @ meat @ Ainv
    if kind in ("HC0", "HC2"):
        rss = np.maximum(_cell_rss(d, mu), 0.0)
        if kind == "HC2":
            h_row = v * np.einsum("ij,jk,ik->i", X, Ainv, X)
            rss = rss / np.maximum(1.0 - h_row, 1e-12)
        M = (X * rss[:, None]).T @ X
        return Ainv @ M @ Ainv
    # model-based: dispersion 1 for binomial / Poisson, Pearson for Gaussian
    if isinstance(fam, sm.families.Gaussian):
        rss = np.maximum(_cell_rss(d, mu), 0.0)
        return Ainv * (rss.sum() / max(n_obs - k, 1))
    return Ainv


def _cr2_pieces(
    d: _Design, X: np.ndarray, mu: np.ndarray, fam: sm.families.Family, icc: float | None
) -> ClusterPieces:
    """clubSandwich's CR2 pieces of this fit (``studies.small_sample``): per cluster, or per row
    when the table has no clusters (then they serve the HC2 degrees of freedom). The working
    model's within-cluster correlation is ``icc``, estimated from the residuals when None."""
    eta = np.asarray(fam.link(mu))
    v = np.asarray(fam.variance(mu))
    if icc is None:
        icc = working_icc(d, mu, v, X.shape[1])
    return cr2_pieces(
        X,
        d.n,
        v,
        np.asarray(fam.link.inverse_deriv(eta)),
        d.sy - d.n * mu,
        d.cell_cluster,
        icc=icc,
    )


def working_icc(d: _Design, mu: np.ndarray, v: np.ndarray, n_params: int) -> float:
    """Moment estimate of the within-cluster correlation of the Pearson residuals, clipped to
    [0, 0.99]: per cluster of two or more rows, the mean product of two of its residuals; their
    average over clusters, over the residuals' mean square.

    Why a working correlation: the HTZ degrees of freedom are computed under a working model,
    and working independence (clubSandwich's default) counts a cluster of 30 correlated rows as
    30 rows' worth of information, which overstates the df of a level held by a few large
    clusters. Why every cluster weighs the same: pooling the pairs lets the largest clusters
    decide, and their residual sums are the ones the fit shrinks most (a level held only by
    them absorbs their random effects), which biased the estimate low. In our null simulations
    (30 clusters with lognormal sizes, a level held by the 5 largest) the family-wise error of
    Holm was 0.10 with the former t(m - 1) rule, 0.073 with pooled pairs and 0.047 with this
    estimator (``docs/studies.md``)."""
    if d.cell_cluster is None:
        return 0.0
    g = d.cell_cluster
    n_g = np.bincount(g, weights=d.n)
    s_g = np.bincount(g, weights=(d.sy - d.n * mu) / np.sqrt(v))
    ss_g = np.bincount(g, weights=_cell_rss(d, mu) / v)
    scale = float(ss_g.sum()) / max(float(n_g.sum()) - n_params, 1.0)
    several = n_g > 1
    if not several.any() or scale <= 0:
        return 0.0
    pair_mean = (s_g * s_g - ss_g)[several] / (n_g * (n_g - 1))[several]
    return float(np.clip(pair_mean.mean() / scale, 0.0, 0.99))


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


#: two-way covariances of a crossed frame: CR2 per dimension with HTZ df (default), or the
#: CGM / statsmodels CR1 form on min(G) - 1 df
TWO_WAY = ("twoway", "twoway_cr1")


def _two_way_cr2(
    d: _Design, X: np.ndarray, mu: np.ndarray, fam: sm.families.Family
) -> tuple[np.ndarray, tuple[ClusterPieces, ClusterPieces]]:
    """V = V_condition + [V_identity - V_cell]_+, each term CR2 (working independence), and
    the pieces of the two dimensions for the HTZ degrees of freedom.

    Why not CGM's CR1 ``V_a + V_b - V_ab``: a group switched per configuration is estimated
    from G configuration means with p parameters; CR1's G/(G-1) ignores that the fit absorbs
    about p/G of their variance, and with 20 configurations and 12 groups the two-way CR1 test
    rejected a true null in 59 % of tests. CR2 removes that leverage bias. Why the clip: for a
    group that is constant within configurations, identity effects cancel from its contrast, so
    ``V_identity - V_cell`` estimates about zero and is as often negative as positive; left in,
    it shrank V and the test still rejected in 13 % of null tests (20 configurations); clipped
    to its positive part it keeps the identity dimension's contribution when there is one
    (effects that differ between identities) and never removes the condition's. Measured sizes
    are in docs/studies.md ("Crossed designs")."""
    v = np.asarray(fam.variance(mu))
    dmu = np.asarray(fam.link.inverse_deriv(np.asarray(fam.link(mu))))
    r = d.sy - d.n * mu
    pa, pb = (cr2_pieces(X, d.n, v, dmu, r, c, icc=0.0) for c in (d.cell_a, d.cell_b))
    V_cell = _one_cell_cr2(d, X, v, r)
    if V_cell is None:  # an (identity, condition) pair spans several cells: the general form
        V_cell = cr2_pieces(X, d.n, v, dmu, r, d.cell_cluster, icc=0.0).covariance
    return pb.covariance + psd_clip(pa.covariance - V_cell)[0], (pa, pb)


def _one_cell_cr2(d: _Design, X: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray | None:
    """CR2 covariance when every cluster is one cell (canonical link, working independence):
    each score ``x_c r_c`` scaled by ``(1 - h_c)^(-1/2)``, ``h_c = n_c v_c x_c' A^-1 x_c``.
    Vectorised: the (identity, condition) clusters of a Market-size crossed table number
    ~40,000, and ``cr2_pieces``' per-cluster loop took minutes. None when a cluster holds
    several cells."""
    if d.cell_cluster is None or len(np.unique(d.cell_cluster)) != len(d.n):
        return None
    Ainv = np.linalg.inv((X * (d.n * v)[:, None]).T @ X)
    h = d.n * v * np.einsum("ij,jk,ik->i", X, Ainv, X)
    S = X * (r / np.sqrt(np.maximum(1.0 - h, 1e-12)))[:, None]
    return Ainv @ (S.T @ S) @ Ainv


def _covariance_kind(cov_type: str, family: str, *, clustered: bool, crossed: bool = False) -> str:
    """The covariance a fit uses. A crossed frame (identity × condition) gets the two-way
    cluster-robust covariance by default (``studies.crossed``): one-way clustering by identity
    takes the configurations' noise for signal."""
    if crossed and clustered and cov_type in ("auto",) + TWO_WAY:
        if family == "negative_binomial":
            raise StudyInputError(
                "The negative binomial model has no two-way cluster-robust covariance here; "
                "use another family or cov_type 'CR1' (identity clusters only)."
            )
        return "twoway" if cov_type == "auto" else cov_type
    if cov_type in TWO_WAY:
        raise StudyInputError(
            "Two-way clustering needs a crossed table: a cluster and a condition column and no "
            "paired-by column."
        )
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
    small_sample: bool | str = "htz",
    icc: float | None = None,
) -> GLMResult:
    """Fit ``outcome ~ all attribute groups`` (treatment-coded against each group's reference)
    and test each group jointly. See the module docstring for family, covariance and df.

    ``cov_type``: "auto" (CR2 with clusters; HC2, or model-based for a binary logit, without;
    on a crossed frame -- cluster and condition, no paired-by -- "twoway"), "CR1", "CR2",
    "HC0", "HC2", "model", "twoway" (two-way cluster-robust by identity and condition, each
    dimension CR2, HTZ df of the scarcer dimension; ``studies.crossed``) or "twoway_cr1"
    (Cameron-Gelbach-Miller's CR1 form, statsmodels' two-way clustering, on F(q, min(G) - 1));
    "CR1" / "CR2" on a crossed frame cluster by identity only. Levels seen in fewer than ``min_level_support``
    clusters (rows, unclustered) get no p-value and stay out of their group's test.
    ``small_sample``: "htz" (default; CR2 / HC2 with Pustejovsky–Tipton degrees of freedom,
    ``studies.small_sample``), "naive" (t(m - 1) / F(q, min m - 1), m the clusters of the
    level: the rule before HTZ, anti-conservative with unequal clusters; kept for comparison)
    or "none" (normal / chi-square; ``False`` means the same). CR1 and HC0 always use "naive"
    unless "none" is asked for. ``icc``: the within-cluster correlation of CR2's working model
    (None: estimated from the residuals, see ``working_icc``; 0: working independence,
    clubSandwich's default)."""
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
            icc=icc,
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
    small_sample: bool | str,
    icc: float | None,
) -> GLMResult:
    """``fit_glm`` without the BLAS thread limit: choose the family and the covariance, build
    the cell design, fit, then test every level and every group."""
    notes: list[str] = []
    y, family = _outcome_and_family(frame, outcome, family, notes)
    use = _resolve_groups(frame, groups, notes)
    levels, codes = _present_levels(frame, use, len(y))
    clus = _cluster_index(frame)
    n_clusters = None if clus is None else int(clus.max()) + 1
    cov_kind = _covariance_kind(
        cov_type, family, clustered=clus is not None, crossed=is_crossed(frame)
    )
    cov_label = _covariance_label(cov_kind, n_clusters, frame.cluster)
    if cov_kind in TWO_WAY:
        d, cov_label = _two_way_design(frame, codes, use, levels, y, cov_kind)
    else:
        d = _build_design(codes, use, levels, y, clus)
    if np.all(y == y[0]):
        notes.append(f"Outcome {outcome!r} is constant ({y[0]:g}); there is nothing to model.")
        coefs, tests = _empty_tables()
        return GLMResult(
            outcome,
            family,
            coefs,
            tests,
            len(y),
            n_clusters,
            warnings=notes,
            covariance=cov_label,
            n_cells=len(d.n),
        )
    mode = _small_sample_mode(small_sample)
    fit, pieces, converged = _estimate(
        d, y, family=family, cov_kind=cov_kind, mode=mode, cluster=clus, icc=icc, notes=notes
    )
    if not converged:
        notes.append(
            f"The {family} GLM of {outcome!r} did not converge; read its numbers with care."
        )
    dispersion = _dispersion(fit, len(y), outcome, notes)
    coefs, group_tests = _inference(
        fit,
        _reference(cov_kind, mode, pieces, d),
        levels,
        outcome=outcome,
        min_level_support=min_level_support,
        alpha=alpha,
        notes=notes,
    )
    # which covariance every p-value used (``twoway``: identity × condition, studies.crossed)
    coefs["covariance"] = cov_kind
    group_tests["covariance"] = cov_kind
    return GLMResult(
        outcome=outcome,
        family=family,
        coefficients=coefs,
        group_tests=group_tests,
        n_obs=len(y),
        n_clusters=n_clusters,
        warnings=_dedupe(notes),
        covariance=cov_label,
        intercept=float(fit.b[0]) if fit.kept and fit.kept[0] == 0 else float("nan"),
        reference={g: levels[g][0] for g in use},
        converged=converged,
        n_cells=len(d.n),
        dispersion=dispersion,
    )


def _outcome_and_family(
    frame: AnalysisFrame, outcome: str, family: str, notes: list[str]
) -> tuple[np.ndarray, str]:
    """The outcome's values and its family ("auto" resolved), checked against each other."""
    if outcome not in frame.outcomes and outcome not in frame.data.columns:
        raise StudyInputError(f"{frame.source} has no outcome {outcome!r}.")
    y = frame.data[outcome].to_numpy(dtype=float)
    if family == "auto":
        family = _auto_family(y, outcome, frame.source, notes)
    _check_family(y, family, outcome)
    return y, family


def _inference(
    fit: _Fit,
    ref: _ReferenceDistribution,
    levels: dict[str, list[str]],
    *,
    outcome: str,
    min_level_support: int,
    alpha: float,
    notes: list[str],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The coefficient table (a test and interval per level, separation flagged) and the joint
    test of every group, with Holm and Benjamini-Hochberg adjusted p-values."""
    use = list(levels)
    sep_levels = _separated_levels(fit.d, use, levels, fit.family, outcome, notes)
    coefs, testable = _coefficient_table(
        fit,
        ref,
        min_level_support=min_level_support,
        sep_levels=sep_levels,
        alpha=alpha,
        notes=notes,
    )
    tests = [
        _group_test(
            fit, ref, g, n_levels=len(levels[g]), coefs=coefs, testable=testable, notes=notes
        )
        for g in use
    ]
    group_tests = add_adjusted(pd.DataFrame(tests).reindex(columns=_TEST_COLUMNS[:-2]))
    return coefs, group_tests.reindex(columns=_TEST_COLUMNS)


def _present_levels(
    frame: AnalysisFrame, use: list[str], n_rows: int
) -> tuple[dict[str, list[str]], np.ndarray]:
    """The levels of each group actually present (categories of a subset may be unobserved),
    reference first, and the rows' codes among them ``[rows, groups]``. An unobserved
    reference is replaced by the most frequent present level."""
    levels: dict[str, list[str]] = {}
    codes_list = []
    for g in use:
        c = frame.data[g].cat.codes.to_numpy().astype(np.int64)
        cats = [str(x) for x in frame.data[g].cat.categories]
        present = np.flatnonzero(np.bincount(c, minlength=len(cats)) > 0)
        if present[0] != 0:
            counts = np.bincount(c, minlength=len(cats))
            ref = int(present[np.argmax(counts[present])])
            present = np.array([ref] + [p for p in present if p != ref])
        remap = np.full(len(cats), -1)
        remap[present] = np.arange(len(present))
        levels[g] = [cats[p] for p in present]
        codes_list.append(remap[c])
    codes = np.column_stack(codes_list) if codes_list else np.zeros((n_rows, 0), dtype=np.int64)
    return levels, codes


def _two_way_design(
    frame: AnalysisFrame,
    codes: np.ndarray,
    use: list[str],
    levels: dict[str, list[str]],
    y: np.ndarray,
    cov_kind: str,
) -> tuple[_Design, str]:
    """Cells keyed by (identity, condition, pattern), each cell's identity and condition kept
    for the two-way meat; and the covariance's label."""
    a, b = unit_codes(frame)
    pair = pd.factorize(a * (int(b.max()) + 1) + b)[0].astype(np.int64)
    d = _build_design(codes, use, levels, y, pair)
    n_cells = len(d.n)
    d.cell_a = np.zeros(n_cells, dtype=np.int64)
    d.cell_b = np.zeros(n_cells, dtype=np.int64)
    d.cell_a[d.cell] = a
    d.cell_b[d.cell] = b
    label = (
        f"two-way cluster-robust {'CR1' if cov_kind == 'twoway_cr1' else 'CR2'} "
        f"({int(a.max()) + 1} clusters of {frame.cluster!r} × "
        f"{int(b.max()) + 1} of {frame.condition!r})"
    )
    return d, label


def _cluster_index(frame: AnalysisFrame) -> np.ndarray | None:
    """Cluster of each row as 0..m-1 in order of first appearance; None when unclustered."""
    if frame.cluster is None:
        return None
    return pd.factorize(frame.data[frame.cluster])[0].astype(np.int64)


def _covariance_label(cov_kind: str, n_clusters: int | None, cluster: str | None) -> str:
    if cov_kind in ("CR1", "CR2"):
        return f"cluster-robust {cov_kind} ({n_clusters} clusters of {cluster!r})"
    if cov_kind == "model":
        return "model-based"
    return f"robust {cov_kind}"


def _estimate(
    d: _Design,
    y: np.ndarray,
    *,
    family: str,
    cov_kind: str,
    mode: str,
    cluster: np.ndarray | None,
    icc: float | None,
    notes: list[str],
) -> tuple[_Fit, ClusterPieces | None, bool]:
    """Coefficients on the estimable (non-aliased) columns and their covariance; the CR2
    pieces when the small-sample degrees of freedom need them; whether the fit converged."""
    kept = _independent_columns(d.X, d.n)
    for j in range(d.X.shape[1]):
        if j not in kept:
            g, lv = d.names[j - 1]
            notes.append(
                f"Level {lv!r} of attribute {g!r} is collinear with other attributes (aliased); "
                "its coefficient is not estimated."
            )
    X = d.X[:, kept]
    fam = _sm_family(family)
    pieces = None
    if family == "negative_binomial":
        b, V, converged = _fit_negbin(d, X, y, cov_kind, cluster, notes)
    else:
        b, converged = _fit_cells(d, X, family, notes)
        mu0 = np.asarray(fam.link.inverse(X @ b))
        if cov_kind == "CR2" or (cov_kind == "HC2" and mode == "htz"):
            pieces = _cr2_pieces(d, X, mu0, fam, icc)
        n_obs = len(y)
        if cov_kind == "twoway":
            V, pieces = _two_way_cr2(d, X, mu0, fam)
        elif cov_kind == "CR2":
            V = pieces.covariance
        else:
            V = _sandwich(d, X, mu0, fam, cov_kind, n_obs)
        if cov_kind in TWO_WAY:
            V, clipped = psd_clip(V)
            if clipped:
                notes.append(
                    "The two-way covariance had negative eigenvalues (its three terms are "
                    "estimated separately); they were set to 0 (Cameron, Gelbach & Miller 2011)."
                )
    fit = _Fit(d=d, b=b, V=V, kept=kept, X=X, fam=fam, family=family)
    return fit, pieces, converged


def _dispersion(fit: _Fit, n_obs: int, outcome: str, notes: list[str]) -> float:
    """Pearson dispersion of the Poisson, negative binomial and Gaussian fits (NaN for the
    binomial families); a note when a Poisson outcome is overdispersed."""
    if fit.family not in ("poisson", "negative_binomial", "gaussian"):
        return float("nan")
    mu = np.asarray(fit.fam.link.inverse(fit.X @ fit.b))
    v = np.maximum(np.asarray(fit.fam.variance(mu)), 1e-300)
    pearson = _cell_rss(fit.d, mu) / v
    dispersion = float(pearson.sum() / max(n_obs - fit.X.shape[1], 1))
    if fit.family == "poisson" and dispersion > 1.5:
        notes.append(
            f"Outcome {outcome!r} is overdispersed for a Poisson model (Pearson dispersion "
            f"{dispersion:.2f}); its robust covariance keeps the tests valid."
        )
    return dispersion


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


@dataclass
class _Fit:
    """A fitted model on cells: design, coefficients on the kept columns, their covariance."""

    d: _Design
    b: np.ndarray
    V: np.ndarray
    kept: list[int]
    X: np.ndarray
    fam: sm.families.Family
    family: str

    @property
    def pos(self) -> dict[int, int]:
        """Design column -> position among the kept (estimated) coefficients."""
        return {j: i for i, j in enumerate(self.kept)}


#: below this many effective degrees of freedom a test's p-value gets a warning
FEW_DF = 4.0
#: below this many, a level gets no p-value or interval at all
MIN_DF = 1.0


@dataclass
class _ReferenceDistribution:
    """How a Wald statistic is referred to a distribution.

    ``htz``: CR2 / HC2 with Pustejovsky–Tipton degrees of freedom (``studies.small_sample``);
    ``naive``: t(m - 1) / F(q, min m - 1), m the clusters (rows) of the level -- kept for the
    covariances HTZ is not defined for here (CR1, HC0, the negative binomial's);
    ``normal``: normal / chi-square (model-based covariance, or ``small_sample=False``)."""

    mode: str
    pieces: ClusterPieces | None = None
    #: ``twoway_cr1``: min(G_identity, G_condition) - 1 for every contrast
    fixed_df: float = float("nan")
    #: ``twoway``: the condition dimension's CR2 pieces (``pieces``: the identity's)
    pieces2: ClusterPieces | None = None

    def df(self, contrast: np.ndarray, support: int) -> float:
        if self.mode == "normal":
            return float("inf")
        if self.mode == "twoway_cr1":
            return self.fixed_df
        if self.mode == "twoway":  # the scarcer dimension bounds the information
            return min(htz_df(self.pieces, contrast), htz_df(self.pieces2, contrast))
        if self.mode == "htz":
            return htz_df(self.pieces, contrast)
        return float(support - 1)


SMALL_SAMPLE = ("htz", "naive", "none")


def _small_sample_mode(small_sample: bool | str) -> str:
    mode = {True: "htz", False: "none"}.get(small_sample, small_sample)
    if mode not in SMALL_SAMPLE:
        raise StudyInputError(
            f"Unknown small-sample method {small_sample!r}; use one of {list(SMALL_SAMPLE)}."
        )
    return mode


def _reference(
    cov_kind: str, mode: str, pieces: ClusterPieces | None, d: _Design | None = None
) -> _ReferenceDistribution:
    if cov_kind == "twoway_cr1" and mode != "none":
        g = min(len(np.unique(d.cell_a)), len(np.unique(d.cell_b)))
        return _ReferenceDistribution("twoway_cr1", fixed_df=float(g - 1))
    if cov_kind == "twoway" and mode != "none":
        return _ReferenceDistribution("twoway", pieces[0], pieces2=pieces[1])
    if cov_kind == "model" or mode == "none":
        return _ReferenceDistribution("normal")
    if mode == "htz" and pieces is not None:
        return _ReferenceDistribution("htz", pieces)
    return _ReferenceDistribution("naive")


def _t_interval(
    est: float, se: float, df: float, alpha: float
) -> tuple[float, float, float, float]:
    """Statistic, two-sided p-value and CI of ``est`` with standard error ``se`` on ``df``
    degrees of freedom (normal when infinite); NaNs where the df are not positive."""
    if not se > 0 or not df > 0:
        return (np.nan,) * 4
    dist = stats.norm if np.isinf(df) else stats.t(df)
    stat = est / se
    crit = float(dist.ppf(1 - alpha / 2))
    return stat, float(2 * dist.sf(abs(stat))), est - crit * se, est + crit * se


def _level_rows(fit: _Fit) -> list[tuple[int, str, str, np.ndarray]]:
    """(design column, group, level, cell mask) of every non-reference level."""
    d = fit.d
    groups_in_order = list(dict.fromkeys(d.col_group))
    out = []
    for col in range(1, d.X.shape[1]):
        g, lv = d.names[col - 1]
        li = 1 + [n for n in d.names if n[0] == g].index((g, lv))
        out.append((col, g, lv, d.cell_codes[:, groups_in_order.index(g)] == li))
    return out


def _coefficient_table(
    fit: _Fit,
    ref: _ReferenceDistribution,
    *,
    min_level_support: int,
    sep_levels: set[tuple[str, str]],
    alpha: float,
    notes: list[str],
) -> tuple[pd.DataFrame, list[bool]]:
    """One row per non-reference level; also which levels enter their group's joint test."""
    d, pos = fit.d, fit.pos
    rows, testable = [], []
    for col, g, lv, at in _level_rows(fit):
        n_cl = int(len(np.unique(d.cell_cluster[at]))) if d.cell_cluster is not None else None
        support = n_cl if n_cl is not None else int(d.n[at].sum())
        if d.cell_a is not None:  # two-way: the scarcer unit that holds the level
            n_cl = int(len(np.unique(d.cell_a[at])))
            support = min(n_cl, int(len(np.unique(d.cell_b[at]))))
        row = dict.fromkeys(_COEF_COLUMNS, np.nan)
        row.update(attribute=g, level=lv, n_rows=int(d.n[at].sum()), n_clusters=n_cl)
        row.update(aliased=col not in pos, separation=False)
        ok = False
        if col in pos:
            ok = _fill_level(
                row,
                fit,
                ref,
                col=col,
                support=support,
                min_level_support=min_level_support,
                alpha=alpha,
                notes=notes,
            )
            # this level, or the group's reference level (not a column), is separated
            row["separation"] = (g, lv) in sep_levels or any(
                x[0] == g and x not in d.names for x in sep_levels
            )
            if abs(row["coef"]) > HUGE_COEF and fit.family != "gaussian":
                row["separation"] = True
                notes.append(
                    f"The coefficient of {g}={lv} is {row['coef']:.1f} on the link scale: likely "
                    "(quasi-)separation; its test means nothing."
                )
        rows.append(row)
        testable.append(ok)
    coefs = _add_effects(pd.DataFrame(rows, columns=_COEF_COLUMNS), fit.family)
    return coefs.reindex(columns=_COEF_COLUMNS), testable


def _fill_level(
    row: dict,
    fit: _Fit,
    ref: _ReferenceDistribution,
    *,
    col: int,
    support: int,
    min_level_support: int,
    alpha: float,
    notes: list[str],
) -> bool:
    """Coefficient, test, CI and AME of one estimated level; True if it enters the group test."""
    i = fit.pos[col]
    coef, s = float(fit.b[i]), float(np.sqrt(max(fit.V[i, i], 0.0)))
    ame, ame_se, grad = _ame(fit, col)
    row.update(coef=coef, std_err=s, ame=ame, ame_std_err=ame_se)
    if support < max(min_level_support, 2) or s == 0:
        unit = "clusters" if row["n_clusters"] is not None else "rows"
        notes.append(
            f"Level {row['level']!r} of attribute {row['attribute']!r} occurs in only {support} "
            f"{unit}, too few for a robust variance; its coefficient gets no p-value and is left "
            "out of the group test."
        )
        return False
    nu = ref.df(np.eye(len(fit.b))[[i]], support)
    if not nu >= MIN_DF:  # a t on less than one df: p-values and intervals mean nothing
        notes.append(
            f"Level {row['level']!r} of attribute {row['attribute']!r}: its contrast rests on "
            f"{nu:.2g} effective degrees of freedom, less than one (a level the clusters barely "
            "inform, or separation); it gets no p-value or interval and is left out of the "
            "group test."
        )
        row["df_denom"] = nu
        return False
    stat, p, lo, hi = _t_interval(coef, s, nu, alpha)
    row.update(df_denom=nu, statistic=stat, p_value=p, ci_low=lo, ci_high=hi)
    ame_nu = ref.df(grad[None, :], support) if ame_se > 0 else nu
    if not ame_nu >= MIN_DF:  # a degenerate gradient (separation): the coefficient's df
        ame_nu = nu
    row.update(zip(("ame_ci_low", "ame_ci_high"), _t_interval(ame, ame_se, ame_nu, alpha)[2:]))
    if nu < FEW_DF:
        notes.append(_few_df_note(row["attribute"], f"level {row['level']!r}", nu))
    return bool(np.isfinite(p))


def _few_df_note(attribute: str, what: str, nu: float) -> str:
    return (
        f"Attribute {attribute!r}: the test of {what} rests on about {nu:.1f} effective degrees "
        "of freedom (few or very unequal clusters carry it); its p-value is a small-sample "
        "approximation, read it with care."
    )


def _group_test(
    fit: _Fit,
    ref: _ReferenceDistribution,
    g: str,
    *,
    n_levels: int,
    coefs: pd.DataFrame,
    testable: list[bool],
    notes: list[str],
) -> dict:
    """The joint Wald test that every tested level of group ``g`` equals its reference."""
    d, pos = fit.d, fit.pos
    in_g = (coefs["attribute"] == g).to_numpy()
    ok = np.asarray(testable, dtype=bool)
    idx = [pos[c] for c in range(1, d.X.shape[1]) if d.names[c - 1][0] == g and testable[c - 1]]
    rec = {
        "attribute": g,
        "n_levels": n_levels,
        "n_tested": len(idx),
        "separation": bool(coefs["separation"].to_numpy(dtype=bool)[in_g].any()),
    }
    if not idx:
        notes.append(f"Attribute {g!r} has no testable level; it gets no p-value.")
        return rec | dict(statistic=np.nan, df=0, df_denom=np.nan, p_value=np.nan, test="none")
    W, q = wald_statistic(fit.b[idx], fit.V[np.ix_(idx, idx)])
    rec.update(statistic=W, df=q, p_chi2=float(stats.chi2.sf(W, q)))
    if ref.mode == "normal":
        return rec | dict(
            df_denom=np.inf, f_statistic=W / q, p_value=rec["p_chi2"], test="wald_chi2"
        )
    if ref.mode in ("htz", "twoway"):
        F, nu = htz_test(W, q, ref.df(np.eye(len(fit.b))[idx], 0))
        test = "wald_htz" if ref.mode == "htz" else "wald_twoway"
        if not nu >= MIN_DF:
            F, nu = np.nan, np.nan
            notes.append(
                f"Attribute {g!r}: its group test rests on less than one effective "
                "degree of freedom; it gets no p-value."
            )
        elif nu < FEW_DF:
            notes.append(_few_df_note(g, "the group", nu))
    elif ref.mode == "twoway_cr1":
        F, nu = W / q, float(np.nanmin(coefs["df_denom"].to_numpy(dtype=float)[in_g & ok]))
        test = "wald_twoway_cr1"
    else:
        F, nu = W / q, float(np.nanmin(coefs["df_denom"].to_numpy(dtype=float)[in_g & ok]))
        test = "wald_F"
    p = float(stats.f.sf(F, q, nu)) if np.isfinite(nu) else np.nan
    return rec | dict(df_denom=nu, f_statistic=F, p_value=p, test=test)


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
    "f_statistic",
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
        with np.errstate(over="ignore"):  # a separated level's bound is +inf, said elsewhere
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


def _ame(fit: _Fit, col: int) -> tuple[float, float, np.ndarray]:
    """Average marginal effect of one level vs its reference on the outcome's own scale: the
    mean over all rows of mu(row at this level) - mu(row at the reference), other attributes as
    observed; its standard error by the delta method with the robust covariance, and the
    gradient (the contrast whose degrees of freedom its interval uses)."""
    d, X, b, fam, pos = fit.d, fit.X, fit.b, fit.fam, fit.pos
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
    return ame, float(np.sqrt(max(grad @ fit.V @ grad, 0.0))), grad

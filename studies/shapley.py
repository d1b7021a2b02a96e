"""Shapley values of the attribute groups on mAP, and why leave-one-out can disagree with them.

A configurations study switches groups of experts on and off and evaluates every query under
each configuration. Each configuration is a *coalition* S of groups and its mAP is the value
v(S) of a cooperative game. Two questions can be asked of that game:

- **leave-one-out** (LOO): v(full) − v(full without g) — the effect of g *given every other
  group is on* (a conditional effect);
- **Shapley value**: g's marginal contribution v(S ∪ g) − v(S) averaged over every order in
  which the groups could be switched on (an average effect; the switching battery's average
  marginal effects answer a similar averaged question). The Shapley values add up to
  v(full) − v(∅) and split the credit of interacting groups fairly.

When groups do not interact (an additive game) both are equal. When two groups are redundant
(either one suffices), removing one of them from the full set costs nothing, so both LOO
effects are ≈ 0, while each Shapley value is half their joint effect; complementary groups do
the opposite. `conditional_vs_average` reports where the two differ beyond their joint
bootstrap interval and names the groups whose pairwise interaction explains it.

**Estimator.** Kernel SHAP (Lundberg & Lee 2017): the weighted least-squares fit of the
coalition values by additive group contributions over the evaluated coalitions, with the
Shapley kernel weights. The kernel gives all coalitions of size s together the mass
(M−1)/(s(M−s)); here that mass is spread equally over the *evaluated* coalitions of that size.

- ``estimator="kernel"``: v(S) − v(∅) ≈ Σ_{g∈S} φ_g subject to Σφ = v(full) − v(∅) (plain
  Kernel SHAP with the efficiency constraint).
- ``estimator="size_stratified"`` (default): v(S) ≈ a_|S| + Σ_{g∈S} γ_g with a free intercept
  per coalition size and Σγ = 0, then φ_g = γ_g + (v(full) − v(∅))/M. Why it is exact too: the
  Shapley value equals (v(full) − v(∅))/M plus (1/M) Σ_s [mean v of the size-s coalitions
  with g − mean v of those without g], and with kernel weights the within-size WLS
  coefficient is exactly that average of within-size contrasts.

With all 2^M coalitions evaluated both are exactly the Shapley value (checked against the
permutation definition in `tests/test_studies_shapley.py`). With sampled coalitions (the study
evaluates ∅, full, every singleton, every full-minus-one and a set of balanced random subsets)
both are approximations: sizes 1 and M−1 are complete, the evaluated subsets of a middle size
stand in for all coalitions of that size, and the kernel mass of sizes with no evaluated
coalition is dropped. Plain Kernel SHAP is exact on additive games; the stratified one on any
game that is a function of the number of groups on plus additive effects. mAP saturating as
groups are switched on is such a size effect, so the stratified estimator removes most of the
sampling error there (the test measures it; on the built-in study, ``hat``, whose experts
never fire, gets −0.048 [−0.127, 0.091] from plain Kernel SHAP and −0.004 [−0.016, 0.019]
from the stratified one). The remaining error is part of the reported interval because the
bootstrap also resamples the randomly drawn coalitions (below).

Why not a library: ``shap.KernelExplainer`` computes the same estimator but *chooses and
evaluates* its coalitions itself by calling a model on masked inputs; it cannot take a fixed
set of coalitions whose values were measured (a study cannot evaluate new configurations after
the fact). No statistics library estimates a game's Shapley values from given coalition values
with the efficiency constraint, so the constrained WLS is solved here through its KKT system
with ``numpy.linalg.lstsq``.

**Intervals.** Percentile bootstrap, seeded: each replicate resamples identities (clusters)
with replacement and recomputes every v(S) from the per-query outcomes, and resamples the
randomly drawn coalitions (design ``random_subsets``) with replacement, then re-estimates. The
fixed designs (∅, full, singletons, leave-one-out) are kept, as the study's design fixes them.
LOO and Shapley come from the same replicates, so their difference has an interval too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.api as sm
from statsmodels.stats.multitest import multipletests

from studies.errors import StudyInputError

#: the designs whose configurations are coalitions of groups (on_<group> columns define them)
COALITION_DESIGNS = ("full", "backbone", "leave_one_out", "only_one", "random_subsets")
#: the designs whose coalitions were drawn at random, resampled by the bootstrap
SAMPLED_DESIGNS = ("random_subsets",)
#: the Kernel-SHAP WLS with a free intercept per coalition size (default), or without
ESTIMATORS = ("size_stratified", "kernel")

#: differences within rounding of 0 are 0 (outcomes are on a 0–1 scale such as AP)
_TOL = 1e-9

SHAPLEY_COLUMNS = ["attribute", "shapley", "ci_low", "ci_high", "n_coalitions", "method"]
DISAGREEMENT_COLUMNS = [
    "attribute",
    "loo",
    "loo_ci_low",
    "loo_ci_high",
    "shapley",
    "shapley_ci_low",
    "shapley_ci_high",
    "difference",
    "diff_ci_low",
    "diff_ci_high",
    "disagree",
    "interacting",
    "explanation",
]


@dataclass
class _Game:
    """The evaluated coalitions of a table: one row per configuration."""

    groups: list[str]
    configs: list[str]
    #: coalition indicator per configuration (n_configs × M, 0/1)
    z: np.ndarray
    #: whether the configuration's coalition was drawn at random (resampled by the bootstrap)
    sampled: np.ndarray
    #: per-cluster sums and counts of the outcome (n_clusters × n_configs)
    sums: np.ndarray
    counts: np.ndarray
    #: ``size_stratified`` (default) or ``kernel``
    estimator: str = "size_stratified"

    @property
    def values(self) -> np.ndarray:
        """v(S) per configuration: the mean outcome over its queries."""
        return self.sums.sum(0) / self.counts.sum(0)


def _check_columns(table: pd.DataFrame, needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise StudyInputError(
            f"The configurations table has no column {missing[0]!r}; the Shapley analysis "
            "needs the outcome, configuration, cluster and one on_<group> column per group."
        )


def _coalition_rows(
    table: pd.DataFrame, on_cols: list[str], *, config: str, designs: Sequence[str]
) -> pd.DataFrame:
    """The rows of coalition designs (all rows when the table has no ``design`` column),
    valid queries only, with one coalition per configuration checked."""
    rows = table
    if "design" in rows.columns:
        rows = rows[rows["design"].isin(list(designs))]
    if "valid" in rows.columns:
        rows = rows[rows["valid"].astype(bool)]
    if rows.empty:
        raise StudyInputError(
            f"The table has no valid rows of the coalition designs {', '.join(designs)}."
        )
    spread = rows.groupby(config, sort=False)[on_cols].nunique()
    if (spread > 1).any(axis=None):
        bad = spread.index[(spread > 1).any(axis=1)][0]
        raise StudyInputError(
            f"Configuration {bad!r} switches a group on for some queries and off for others; "
            "each configuration must be one coalition of groups."
        )
    return rows


def _game(
    table: pd.DataFrame,
    groups: Sequence[str],
    *,
    outcome: str,
    config: str,
    cluster: str,
    on_prefix: str,
    estimator: str = "size_stratified",
    designs: Sequence[str] = COALITION_DESIGNS,
    sampled_designs: Sequence[str] = SAMPLED_DESIGNS,
) -> _Game:
    """Per-cluster sums and counts of the outcome under each evaluated coalition."""
    groups = list(groups)
    if estimator not in ESTIMATORS:
        raise StudyInputError(
            f"Unknown Shapley estimator {estimator!r}; use one of {', '.join(ESTIMATORS)}."
        )
    if len(groups) < 2:
        raise StudyInputError("Shapley values need at least two groups.")
    on_cols = [f"{on_prefix}{g}" for g in groups]
    _check_columns(table, [outcome, config, cluster, *on_cols])
    rows = _coalition_rows(table, on_cols, config=config, designs=designs)
    if rows[outcome].isna().any():
        raise StudyInputError(f"The outcome column {outcome!r} has missing values.")
    cells = rows.groupby([cluster, config], sort=False)[outcome].agg(["sum", "count"])
    sums = cells["sum"].unstack(config, fill_value=0.0)
    counts = cells["count"].unstack(config, fill_value=0).reindex(columns=sums.columns)
    first = rows.drop_duplicates(config).set_index(config).reindex(sums.columns)
    z = (first[on_cols].to_numpy(dtype=float) > 0).astype(float)
    sizes = (first[on_cols].to_numpy() > 0).sum(1)
    sampled = (sizes > 0) & (sizes < len(groups))  # ∅ and full stay: the efficiency pins
    if "design" in first.columns:
        sampled &= first["design"].isin(list(sampled_designs)).to_numpy()
    else:
        sampled &= False
    game = _Game(
        groups,
        [str(c) for c in sums.columns],
        z,
        sampled,
        sums.to_numpy(dtype=float),
        counts.to_numpy(dtype=float),
        estimator,
    )
    _check_identified(game.z, estimator)
    return game


def _check_identified(z: np.ndarray, estimator: str) -> None:
    """The empty and full coalitions must be evaluated, and the interior ones must pin every
    group down (the KKT matrix must have full rank)."""
    sizes = z.sum(1)
    m = z.shape[1]
    if not (sizes == 0).any() or not (sizes == m).any():
        raise StudyInputError(
            "Shapley values need the empty coalition (design 'backbone') and the full one "
            "(design 'full') among the configurations."
        )
    kkt = _kkt(z, estimator)[0]
    if np.linalg.matrix_rank(kkt) < len(kkt):
        raise StudyInputError(
            "The evaluated configurations do not identify every group's Shapley value; add "
            "the designs 'only_one' or 'leave_one_out'."
        )


def _kernel_weights(sizes: np.ndarray, m: int, interior: np.ndarray) -> np.ndarray:
    """Shapley kernel: all coalitions of size s together weigh (M−1)/(s(M−s)), spread equally
    over the evaluated ones of that size (duplicates of a resampled design count apart)."""
    w = np.zeros(len(sizes))
    s = sizes[interior]
    n_of_size = {k: int((s == k).sum()) for k in np.unique(s)}
    w[interior] = [(m - 1) / (k * (m - k)) / n_of_size[k] for k in s]
    return w


def _kkt(z: np.ndarray, estimator: str) -> tuple[np.ndarray, np.ndarray]:
    """The KKT matrix of the constrained WLS and the linear map from the coalition values v
    (one per row of ``z``) to its right-hand side.

    ``kernel``: minimise Σ_S w_S (v_S − v_∅ − z_S·φ)² subject to 1·φ = v_full − v_∅.
    ``size_stratified``: minimise Σ_S w_S (v_S − a_|S| − z_S·γ)² subject to 1·γ = 0, with a
    free intercept a_s per interior size; then φ = γ + (v_full − v_∅)/M (`shapley_map`).
    """
    m = z.shape[1]
    sizes = z.sum(1)
    empty, full = sizes == 0, sizes == m
    interior = ~(empty | full)
    w = _kernel_weights(sizes, m, interior)
    if estimator == "size_stratified":
        levels = np.unique(sizes[interior])
        x = np.column_stack([z, (sizes[:, None] == levels[None, :]) & interior[:, None]])
    else:
        x = z
    p = x.shape[1]
    xw = x * w[:, None]
    kkt = np.zeros((p + 1, p + 1))
    kkt[:p, :p] = x.T @ xw
    kkt[:m, p] = kkt[p, :m] = 1.0
    rhs = np.zeros((p + 1, len(z)))
    rhs[:p] = xw.T
    if estimator != "size_stratified":
        rhs[:m, empty] -= xw.sum(0)[:, None] / empty.sum()
        rhs[m, full] = 1.0 / full.sum()
        rhs[m, empty] -= 1.0 / empty.sum()
    return kkt, rhs


def shapley_map(z: np.ndarray, estimator: str = "size_stratified") -> np.ndarray:
    """The M × n matrix L with φ = L v (v: one value per row of the 0/1 coalition matrix
    ``z``): both estimators are linear in the coalition values, so bootstrap replicates of v
    need only a matrix product."""
    z = np.asarray(z, dtype=float)
    m = z.shape[1]
    kkt, rhs = _kkt(z, estimator)
    out = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:m]
    if estimator == "size_stratified":
        sizes = z.sum(1)
        out[:, sizes == m] += 1.0 / (m * (sizes == m).sum())
        out[:, sizes == 0] -= 1.0 / (m * (sizes == 0).sum())
    return out


def _replicates(game: _Game, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap replicates of the coalition values (n_boot × n_configs) and of the Shapley
    values (n_boot × M): clusters resampled, randomly drawn coalitions resampled."""
    rng = np.random.default_rng(seed)
    n_clusters = game.sums.shape[0]
    weights = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (weights @ game.sums) / (weights @ game.counts)
    fixed = np.flatnonzero(~game.sampled)
    drawn = np.flatnonzero(game.sampled)
    phis = np.empty((n_boot, len(game.groups)))
    base_map = shapley_map(game.z, game.estimator)
    for b in range(n_boot):
        if drawn.size:
            idx = np.concatenate([fixed, rng.choice(drawn, size=drawn.size, replace=True)])
            phis[b] = shapley_map(game.z[idx], game.estimator) @ values[b, idx]
        else:
            phis[b] = base_map @ values[b]
    return values, phis


def _interval(draws: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    low, high = np.nanpercentile(draws, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return low, high


def _method(game: _Game) -> str:
    distinct = {tuple(r) for r in game.z.astype(int)}
    if len(distinct) == 2 ** len(game.groups):
        return "exact"
    return f"{game.estimator}_wls_sampled"


def _check_boot(n_boot: int, alpha: float) -> None:
    if n_boot < 2:
        raise StudyInputError(f"n_boot must be at least 2 (got {n_boot}).")
    if not 0 < alpha < 1:
        raise StudyInputError(f"alpha must lie between 0 and 1 (got {alpha}).")


def shapley_values(
    table: pd.DataFrame,
    groups: Sequence[str],
    *,
    outcome: str = "ap",
    config: str = "config",
    cluster: str = "pid",
    on_prefix: str = "on_",
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    estimator: str = "size_stratified",
) -> pd.DataFrame:
    """Each group's Shapley value on the mean outcome (mAP for ``ap``), with a bootstrap CI.

    ``table`` has one row per query × configuration (the study's per-query table): ``config``,
    ``outcome``, ``cluster`` (identity), ``on_<group>`` 0/1, and optionally ``design`` (only
    the coalition designs are used) and ``valid``. v(S) is the mean outcome over the valid
    queries of configuration S. Columns: attribute, shapley, ci_low, ci_high, n_coalitions
    (distinct coalitions evaluated), method (``exact`` when all 2^M coalitions were
    evaluated, ``kernel_wls_sampled`` otherwise — see the module docstring).
    """
    _check_boot(n_boot, alpha)
    game = _game(
        table,
        groups,
        outcome=outcome,
        config=config,
        cluster=cluster,
        on_prefix=on_prefix,
        estimator=estimator,
    )
    return _shapley_frame(game, _replicates(game, n_boot, seed)[1], alpha)


def _shapley_frame(game: _Game, phis: np.ndarray, alpha: float) -> pd.DataFrame:
    low, high = _interval(phis, alpha)
    return pd.DataFrame(
        {
            "attribute": game.groups,
            "shapley": shapley_map(game.z, game.estimator) @ game.values,
            "ci_low": low,
            "ci_high": high,
            "n_coalitions": len({tuple(r) for r in game.z.astype(int)}),
            "method": _method(game),
        },
        columns=SHAPLEY_COLUMNS,
    )


def _loo_draws(game: _Game, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """v(full) − v(full − g) per group: point (M,) and replicates (n_boot × M); NaN where the
    full-minus-g coalition was not evaluated."""
    m = len(game.groups)
    full = game.z.sum(1) == m
    point_v = game.values
    point = np.full(m, np.nan)
    draws = np.full((values.shape[0], m), np.nan)
    for i in range(m):
        without = (game.z.sum(1) == m - 1) & (game.z[:, i] == 0)
        if without.any():
            point[i] = point_v[full].mean() - point_v[without].mean()
            draws[:, i] = values[:, full].mean(1) - values[:, without].mean(1)
    return point, draws


def pairwise_interactions(game_z: np.ndarray, values: np.ndarray, i: int) -> pd.DataFrame:
    """Group i's pairwise interaction with each other group j, one j at a time.

    OLS (statsmodels) over the evaluated configurations of v(S) on one intercept per coalition
    size, the groups' indicators (one dropped: with the size intercepts they sum to a known
    column) and the single product z_i·z_j. The size intercepts absorb what every group shares
    (mAP saturating as more groups are on), so a named partner interacts with i beyond that.
    The configuration is the unit: the residual variance is the configurations' spread around
    that model, higher-order interactions included. Holm across the M − 1 partners. Columns:
    partner (index), coef (negative: redundant, positive: complementary), p, p_holm.
    """
    m = game_z.shape[1]
    sizes = game_z.sum(1)
    dummies = (sizes[:, None] == np.unique(sizes)[None, :]).astype(float)
    rows = []
    for j in range(m):
        if j == i:
            continue
        drop = min(k for k in range(m) if k not in (i, j))
        mains = np.delete(game_z, drop, axis=1)
        x = np.column_stack([dummies, mains, game_z[:, i] * game_z[:, j]])
        if len(x) <= x.shape[1] or np.linalg.matrix_rank(x) < x.shape[1]:
            rows.append((j, np.nan, np.nan))
            continue
        fit = sm.OLS(values, x).fit()
        rows.append((j, float(fit.params[-1]), float(fit.pvalues[-1])))
    out = pd.DataFrame(rows, columns=["partner", "coef", "p"])
    ok = out["p"].notna()
    out["p_holm"] = np.nan
    if ok.any():
        out.loc[ok, "p_holm"] = multipletests(out.loc[ok, "p"], method="holm")[1]
    return out


def _join_names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


@dataclass
class _Common:
    """The part of LOO − Shapley every group shares (its mean over groups), with its CI, and
    whether group g's own part (its difference minus the mean) is within noise."""

    point: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        return self.low > _TOL or self.high < -_TOL

    def clause(self) -> str:
        trend = "saturates" if self.point < 0 else "grows faster"
        adds = "less" if self.point < 0 else "more"
        return (
            f"mAP {trend} as groups are switched on (leave-one-out minus Shapley is "
            f"{self.point:+.3f} [{self.low:+.3f}, {self.high:+.3f}] on average over the "
            f"groups), so the last group switched on adds {adds} than the average one"
        )


def _pair_clause(partners: pd.DataFrame, loo: float, shapley: float) -> str:
    redundant = partners.loc[partners["coef"] < 0, "name"].tolist()
    complementary = partners.loc[partners["coef"] > 0, "name"].tolist()
    if redundant and not complementary and loo < shapley:
        return (
            f"it is redundant with {_join_names(redundant)} (either one suffices), "
            "so removing it alone costs little"
        )
    if complementary and not redundant and loo > shapley:
        return (
            f"it is complementary with {_join_names(complementary)} (each helps more when "
            "the other is on), so removing it from the full set costs more than it adds on average"
        )
    kinds = [f"{r} (redundant)" for r in redundant] + [
        f"{c} (complementary)" for c in complementary
    ]
    return f"it interacts with {_join_names(kinds)}"


def _explain(
    name: str,
    loo: float,
    shapley: float,
    disagree: bool,
    partners: pd.DataFrame,
    common: _Common,
    own_within_noise: bool,
    alpha: float,
) -> str:
    """One sentence: do the conditional and the average effect agree, and if not, why."""
    if np.isnan(loo):
        return f"{name}'s leave-one-out configuration was not evaluated, so it has no LOO effect."
    if not disagree:
        return (
            f"{name}'s leave-one-out effect ({loo:+.3f}) and Shapley value ({shapley:+.3f}) "
            "agree within their intervals."
        )
    side = "smaller" if loo < shapley else "larger"
    head = (
        f"{name}'s leave-one-out effect ({loo:+.3f}) is {side} than its Shapley value "
        f"({shapley:+.3f}): "
    )
    shared = common.significant and (common.point < 0) == (loo < shapley)
    if len(partners):
        tail = (
            f"; mAP also saturates as groups are switched on ({common.point:+.3f} on average)"
            if shared and common.point < 0
            else ""
        )
        return head + _pair_clause(partners, loo, shapley) + tail + "."
    if shared and own_within_noise:
        return head + f"as for every group, {common.clause()}; no pairwise interaction stands out."
    return head + (
        f"no pairwise interaction with another group is significant at α = {alpha:g}"
        + (f" and {common.clause()}" if shared else "")
        + "; higher-order interactions or configuration-to-configuration variation explain the rest."
    )


def _partners(game: _Game, i: int, alpha: float) -> pd.DataFrame:
    """Group i's significant partners (Holm within i's M − 1 tests), with their names."""
    inter = pairwise_interactions(game.z, game.values, i)
    inter = inter[inter["p_holm"] < alpha].copy()
    inter["name"] = [game.groups[j] for j in inter["partner"]]
    return inter.sort_values("p_holm")


def _common(diff_point: np.ndarray, diff_draws: np.ndarray, alpha: float) -> tuple:
    """The mean of LOO − Shapley over the groups (point, replicates, CI) and each group's own
    part (difference minus that mean): within noise when its CI covers 0."""
    with np.errstate(invalid="ignore"):
        draws = np.nanmean(diff_draws, axis=1)
    low, high = _interval(draws, alpha)
    own_low, own_high = _interval(diff_draws - draws[:, None], alpha)
    common = _Common(float(np.nanmean(diff_point)), float(low), float(high))
    return common, (own_low <= _TOL) & (own_high >= -_TOL)


def _comparison(
    groups: list[str],
    loo: np.ndarray,
    loo_draws: np.ndarray,
    sh: pd.DataFrame,
    phis: np.ndarray,
    alpha: float,
) -> pd.DataFrame:
    """LOO and Shapley side by side, their difference with its joint-bootstrap interval, and
    whether that interval excludes 0."""
    out = pd.DataFrame(
        {
            "attribute": groups,
            "loo": loo,
            **dict(zip(("loo_ci_low", "loo_ci_high"), _interval(loo_draws, alpha))),
            "shapley": sh["shapley"].to_numpy(dtype=float),
            "shapley_ci_low": sh["ci_low"].to_numpy(dtype=float),
            "shapley_ci_high": sh["ci_high"].to_numpy(dtype=float),
        }
    )
    out["difference"] = out["loo"] - out["shapley"]
    out["diff_ci_low"], out["diff_ci_high"] = _interval(loo_draws - phis, alpha)
    # a noiseless game's replicates differ from 0 by rounding only: not a disagreement
    out["disagree"] = (out["diff_ci_low"] > _TOL) | (out["diff_ci_high"] < -_TOL)
    return out


def conditional_vs_average(
    table: pd.DataFrame,
    groups: Sequence[str],
    *,
    shapley: pd.DataFrame | None = None,
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    outcome: str = "ap",
    config: str = "config",
    cluster: str = "pid",
    on_prefix: str = "on_",
    estimator: str = "size_stratified",
) -> pd.DataFrame:
    """Leave-one-out (conditional) against Shapley (average) effect per group, and why they
    differ.

    LOO = v(full) − v(full − g) and the Shapley value come from the same bootstrap replicates
    (see `shapley_values`), so the difference LOO − Shapley has a percentile interval;
    ``disagree`` is True when it excludes 0. For a disagreeing group, ``interacting`` names the
    groups whose pairwise interaction with it is significant beyond the common saturation
    (`pairwise_interactions`, Holm at ``alpha``) and ``explanation`` says in one sentence which
    question each number answers, separating what all groups share (the mean difference over
    groups: mAP saturating as groups are switched on) from the group's own interactions.
    A ``shapley`` frame from `shapley_values` (same table and options) supplies the Shapley
    columns, so a report prints one set of numbers; the difference's interval still comes
    from this call's joint replicates.
    """
    _check_boot(n_boot, alpha)
    game = _game(
        table,
        groups,
        outcome=outcome,
        config=config,
        cluster=cluster,
        on_prefix=on_prefix,
        estimator=estimator,
    )
    values, phis = _replicates(game, n_boot, seed)
    sh = _shapley_frame(game, phis, alpha)
    if shapley is not None:
        sh = shapley.set_index("attribute").reindex(game.groups).reset_index()
        if sh["shapley"].isna().any():
            raise StudyInputError("The shapley frame lacks a row for some of the groups.")
    loo, loo_draws = _loo_draws(game, values)
    out = _comparison(game.groups, loo, loo_draws, sh, phis, alpha)
    common, own_within_noise = _common(out["difference"].to_numpy(), loo_draws - phis, alpha)
    interacting, explanation = [], []
    for i, row in out.iterrows():
        partners = _partners(game, i, alpha) if row["disagree"] else pd.DataFrame(columns=["name"])
        interacting.append(partners["name"].tolist())
        explanation.append(
            _explain(
                row["attribute"],
                row["loo"],
                row["shapley"],
                bool(row["disagree"]),
                partners,
                common,
                bool(own_within_noise[i]),
                alpha,
            )
        )
    out["interacting"], out["explanation"] = interacting, explanation
    return out[DISAGREEMENT_COLUMNS]

"""Compare arms (backbones, datasets, expert banks) on one stacked result table: do they rely on
different attribute groups, beyond the noise of one training run?

    >>> import studies
    >>> cmp = studies.compare(df, by="backbone", outcome="ap", cluster="pid", seed="seed")  # doctest: +SKIP
    >>> cmp.differences[["attribute", "arm_a", "arm_b", "difference", "p_holm", "verdict"]]  # doctest: +SKIP

Two kinds of table, one machinery:

- **Rows with attributes** (``group=None``): one row per query (per arm, seed), its attribute
  columns and the outcome. The effect of a group in one arm is a *difference of means* on the
  outcome's scale: the mean outcome of rows at the group's headline level minus the mean of its
  other rows (a two-level group: its non-reference level against the reference). The headline
  level of a multi-level group is chosen once, on the pooled table (all arms together, so the
  choice is symmetric in the arms and does not favour a difference).
- **Paired effects** (``group="group"``, e.g. a study's ``tables/deltas.csv``): one row per query
  x group, the group's name in column ``group`` and the query's effect of the group in
  ``outcome`` (``delta_ap``: AP with all experts minus AP with the group switched off). The
  effect of a group in one arm is the *mean* of its rows. ``relative_to`` names the group value
  whose rows hold each query's oracle gain (AP with all experts minus the backbone alone): it is
  not compared as a group; it gives each arm's gain and every effect relative to it, since arms
  with different baselines have different room to gain.

Why a mean (of a difference) and not the GLM's adjusted average marginal effect: the between-arm
test needs the effect re-estimated in thousands of bootstrap draws and per seed, and a mean is a
ratio of identity totals, so every draw is a matrix product and its cluster-robust variance is
closed-form. The price in the first mode: the effect is marginal (not adjusted for the other
groups); `studies.analyze` on each arm gives the adjusted one.

Inference about the arm x group interaction (the difference of an arm pair's effects):

- one run per arm (no ``seed`` column, or one seed): a Wald test with the cluster-robust (CR1,
  by identity) variance of the difference, by the delta method on the identity totals; paired
  when the arms share identities (they cancel), unpaired otherwise. The difference then
  includes training noise, and the summary says so.
- several seeds: the seed is the unit. Each seed's effect is computed, and a two-sample t test
  (pooled variance, n_a + n_b - 2 df) compares the arms' seed-level effects, so the null
  distribution holds the seed-to-seed variation (measured: docs/studies.md). Intervals come
  from a hierarchical bootstrap: seeds resampled within arm, then identities (shared across
  arms, so a paired design stays paired).

Holm runs over the interaction family only (every group x arm pair; never the oracle gain).
Verdicts: ``differs`` (Holm p < alpha), ``negligible`` (two one-sided tests within ±margin),
``inconclusive`` (with ``mdd``, the minimum detectable difference at 80 % power),
``not testable``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from studies.corrections import adjust
from studies.design import build_analysis_frame, group_codes
from studies.errors import StudyInputError
from studies.verdicts import default_margin, finite_or_none, minimum_detectable_effect, tost_p

_ROW = "__compare_row__"
_UNIT = "__compare_unit__"


@dataclass
class ComparisonResult:
    """What `compare` found; every table is tidy (one row per arm / pair and group)."""

    #: arm, attribute, level, effect, ci_low, ci_high, seed_sd, n_seeds (+ relative,
    #: relative_low, relative_high with ``relative_to``: effect / the arm's oracle gain). In the
    #: paired-effects mode ``level`` is None (a group's effect is the mean of its rows).
    effects: pd.DataFrame
    #: attribute, level, arm_a, arm_b, effect_a, effect_b, difference (effect_a - effect_b),
    #: ci_low, ci_high (the test's t / Wald interval), boot_low, boot_high (the hierarchical
    #: bootstrap's), std_err, df, test, se_seeds (the seed-level t's SE; NaN with one run per
    #: arm), se_identities (the identity-clustered SE; std_err^2 = the sum of their squares with
    #: seeds), p_interaction, p_holm, p_tost, mdd, margin, verdict
    #: (+ relative_a, relative_b with ``relative_to``)
    differences: pd.DataFrame
    #: kind (between arms / between seeds), arm_a, arm_b, kendall_tau, tau_low, tau_high,
    #: spearman_rho, rho_low, rho_high, n_groups, tau_one_run (tau between single runs: between
    #: arms the mean over cross-arm seed pairs, between seeds the mean over its seed pairs; the
    #: like-for-like pair, since an arm's seed-averaged effects are less noisy than one run's)
    agreement: pd.DataFrame
    #: the answer, one sentence per finding
    summary: list[str] = field(default_factory=list)
    #: arms in table order
    arms: list[str] = field(default_factory=list)
    #: arm, gain, ci_low, ci_high, seed_sd, n_seeds: each arm's oracle gain (``relative_to``);
    #: empty without it
    gains: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: per arm, the groups it has that are not compared (missing from some arm or seed)
    unshared: dict[str, list[str]] = field(default_factory=dict)
    #: whether the arms share identities (same queries: differences are paired)
    paired: bool = False
    #: "levels" (rows with attribute columns) or "groups" (paired effects, ``group=``)
    mode: str = "levels"

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain JSON types: each table a list of records, NaN / inf -> None."""
        return {
            "mode": self.mode,
            "arms": list(self.arms),
            "paired": bool(self.paired),
            "summary": list(self.summary),
            "unshared": {str(k): [str(g) for g in v] for k, v in self.unshared.items()},
            "effects": _records(self.effects),
            "differences": _records(self.differences),
            "agreement": _records(self.agreement),
            "gains": _records(self.gains),
        }


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): _plain(v) for k, v in row.items()} for row in df.to_dict("records")]


def _plain(v: Any) -> Any:
    """One cell as a JSON value (numpy scalars unwrapped; NaN, inf, pandas NA -> None)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return finite_or_none(v)
    return None if pd.isna(v) else str(v)


@dataclass
class _Adjusted:
    """The levels mode's effects, adjusted for the other groups: per (arm, seed) cell an OLS of
    the outcome on every group's level dummies (reference level left out), kept as identity
    cross-products so a bootstrap draw (identity weights) is a weighted sum and one solve.

    Why adjusted: a difference of raw means is confounded whenever groups are correlated across
    identities (always, by chance, in a few hundred identities): when arms share identities, a
    true interaction on one group then shows up in every group correlated with it, and the
    seed-level test, whose noise is only the training runs', finds those too (a planted upcolor
    interaction gave eleven "differs" on a simulated table). A group's effect is the contrast
    ``contrast @ beta``: its headline level's coefficient minus the other levels' coefficients
    weighted by their pooled shares (a two-level group: its one coefficient)."""

    xtx: np.ndarray  # [cells, identities, p, p]
    xty: np.ndarray  # [cells, identities, p]
    contrast: np.ndarray  # [groups, p]

    def take(self, idx: list[int]) -> _Adjusted:
        return replace(self, contrast=self.contrast[idx])

    def beta(self, w: np.ndarray | None = None) -> np.ndarray:
        """Coefficients [cells, p], or [draws, cells, p] under identity weights w [draws, ids]."""
        if w is None:
            a, b = self.xtx.sum(1), self.xty.sum(1)
        else:
            a = np.einsum("bi,cipq->bcpq", w, self.xtx)
            b = np.einsum("bi,cip->bcp", w, self.xty)
        # a level a cell (or a draw) never sees has a zero column: the ridge pins its
        # coefficient at 0 instead of failing; it is 1e-9 of the design's scale, so any level
        # that is seen is unaffected
        p = a.shape[-1]
        ridge = 1e-9 * np.maximum(np.einsum("...ii->...", a) / p, 1e-300)
        a = a + ridge[..., None, None] * np.eye(p)
        return np.linalg.solve(a, b[..., None])[..., 0]

    def effects(self, w: np.ndarray | None = None) -> np.ndarray:
        return (self._fit[0] if w is None else self.beta(w)) @ self.contrast.T

    @cached_property
    def _fit(self) -> tuple[np.ndarray, np.ndarray]:
        """Each cell's coefficients [cells, p] and (X'X)^+ [cells, p, p], solved once: every
        group's and arm pair's influence reads them."""
        return self.beta(), np.linalg.pinv(self.xtx.sum(1))

    def influence(self, cells: list[int], g: int) -> np.ndarray:
        """Each identity's influence [identities] on the mean over ``cells`` of group g's
        effect (the cluster score of the OLS contrast: c' (X'X)^-1 X_i' e_i)."""
        beta, inverse = self._fit
        out = np.zeros(self.xtx.shape[1])
        for c in cells:
            score = self.xty[c] - self.xtx[c] @ beta[c]  # [identities, p]
            out += score @ inverse[c] @ self.contrast[g] / len(cells)
        return out


@dataclass
class _Cells:
    """Identity totals of every (arm, seed) cell per group: the rows that make its effect
    (``s1``, ``n1``) and, in the levels mode, the rows it is contrasted with (``s0``, ``n0``).
    The paired-effects mode has no "off" part (its rows are already effects): ``s0`` is None."""

    arm: list[str]
    seed: list[str]
    s1: np.ndarray  # [cells, groups, identities]: outcome sums (levels mode: at the headline level)
    n1: np.ndarray  # row counts
    s0: np.ndarray | None  # outcome sums at the other levels; None: no contrast part
    n0: np.ndarray | None
    groups: list[str]
    levels: list[str | None]
    #: levels mode: the per-cell regression on every group's levels that adjusts each effect
    adjusted: _Adjusted | None = None

    def take(self, idx: list[int]) -> _Cells:
        """The same cells restricted to groups ``idx``."""
        off = None if self.s0 is None else (self.s0[:, idx], self.n0[:, idx])
        return replace(
            self,
            s1=self.s1[:, idx],
            n1=self.n1[:, idx],
            s0=None if off is None else off[0],
            n0=None if off is None else off[1],
            groups=[self.groups[i] for i in idx],
            levels=[self.levels[i] for i in idx],
            adjusted=None if self.adjusted is None else self.adjusted.take(idx),
        )

    def parts(self) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """(sums, counts, sign) of the means an effect is made of."""
        out = [(self.s1, self.n1, 1.0)]
        if self.s0 is not None:
            out.append((self.s0, self.n0, -1.0))
        return out

    @cached_property
    def point(self) -> np.ndarray:
        """Each cell's effects [cells, groups], computed once (every test and table reads
        them; a levels-mode cell is a regression solve)."""
        return _cell_effects(self)

    def cells_of(self, arm: str) -> list[int]:
        return [i for i, a in enumerate(self.arm) if a == arm]


def compare(
    table: pd.DataFrame | str | Path,
    *,
    by: str,
    outcome: str,
    cluster: str | None = None,
    schema: object = None,
    exclude: Iterable[str] = (),
    seed: str | None = None,
    group: str | None = None,
    relative_to: str | None = None,
    margin: float | None = None,
    alpha: float = 0.05,
    n_boot: int = 1000,
    random_state: int = 0,
) -> ComparisonResult:
    """Do the arms named by column ``by`` rely on different attribute groups? (module docstring)

    ``cluster``: the identity column (rows of one identity are not independent; None = every
    row its own unit, so nothing is paired). ``seed``: the training-run column; with several
    seeds per arm the seed is the unit of every between-arm test. ``schema``, ``exclude``: as in
    `studies.analyze` (rows-with-attributes mode only). ``group``: the column naming the group of
    each row of a paired-effects table (then the effect of a group is the mean ``outcome`` of its
    rows); ``relative_to``: the value of that column holding each query's oracle gain.
    """
    df = _read(table)
    _check_columns(df, by=by, seed=seed, outcome=outcome, cluster=cluster, group=group)
    # rows without an arm (or seed) belong to no arm: dropped, as the frame drops NaN outcomes
    df = df[df[by].notna() & (df[seed].notna() if seed is not None else True)]
    if group is None:
        if relative_to is not None:
            raise StudyInputError(
                f"relative_to={relative_to!r} names a value of the group column; give group= too."
            )
        cells, arms, y = _level_cells(df, by, seed, outcome, cluster, schema, exclude)
        unshared, ref = {}, None
    else:
        if schema is not None:
            raise StudyInputError(
                "schema= groups attribute columns; a paired-effects table (group=) names its "
                f"groups in column {group!r}, so leave schema out."
            )
        cells, arms, y, unshared = _group_cells(df, by, seed, outcome, cluster, group, relative_to)
        ref = len(cells.groups) - 1 if relative_to is not None else None
    rng = np.random.default_rng(random_state)
    margin = _margin(y, group is not None) if margin is None else float(margin)
    point, draws = _arm_effects(cells, arms, n_boot, rng)
    gains = pd.DataFrame()
    gain_rows: list[dict] = []
    if ref is not None:
        gain = ({a: point[a][ref] for a in arms}, {a: draws[a][:, ref] for a in arms})
        gains = _gains_table(cells, arms, ref, *gain)
        gain_rows = [_pair_row(cells, a, b, ref, gain[0], gain[1]) for a, b in _pairs(arms)]
        keep = list(range(ref))
        cells = cells.take(keep)
        point = {a: p[keep] for a, p in point.items()}
        draws = {a: d[:, keep] for a, d in draws.items()}
    else:
        gain = None
    effects = _effects_table(cells, arms, point, draws, gain)
    differences = _differences(cells, arms, point, draws, margin, alpha, gain)
    agreement = _agreement(cells, arms, point, draws)
    paired = _paired(cells, arms)
    summary = _summary(differences, agreement, cells, arms, alpha, unshared, gain_rows, relative_to)
    mode = "levels" if group is None else "groups"
    return ComparisonResult(
        effects, differences, agreement, summary, arms, gains, unshared, paired, mode
    )


def _read(table: pd.DataFrame | str | Path) -> pd.DataFrame:
    if isinstance(table, pd.DataFrame):
        return table
    from studies.io import read_table

    return read_table(table)


def _check_columns(
    df: pd.DataFrame,
    *,
    by: str,
    seed: str | None,
    outcome: str,
    cluster: str | None,
    group: str | None,
) -> None:
    roles = (
        ("arm (by)", by),
        ("seed", seed),
        ("outcome", outcome),
        ("cluster", cluster),
        ("group", group),
    )
    for role, col in roles:
        if col is not None and col not in df.columns:
            raise StudyInputError(f"The table has no column {col!r} (given as the {role} column).")
    named = [(role, col) for role, col in roles if col is not None]
    for (r1, c1), (r2, c2) in itertools.combinations(named, 2):
        if c1 == c2:
            raise StudyInputError(f"Column {c1!r} cannot be both the {r1} and the {r2} column.")


def _margin(y: np.ndarray, paired_effects: bool) -> float:
    """`default_margin`, except that effects of an outcome in [0, 1] (Δ AP, in [-1, 1]) keep
    its 0.01: they are on the outcome's scale, not a new outcome with its own spread."""
    y = np.asarray(y, dtype=float)
    y = y[np.isfinite(y)]
    if paired_effects and y.size and np.abs(y).max() <= 1.0:
        return 0.01
    return default_margin(y)


def _pairs(arms: list[str]) -> list[tuple[str, str]]:
    return list(itertools.combinations(arms, 2))


def _level_cells(
    df: pd.DataFrame,
    by: str,
    seed: str | None,
    outcome: str,
    cluster: str | None,
    schema: object,
    exclude: Iterable[str],
) -> tuple[_Cells, list[str], np.ndarray]:
    """Rows with attribute columns: the analysis frame's groups, each at its headline level."""
    df = df.assign(**{_ROW: np.arange(len(df), dtype=float)})
    if cluster is None:
        cluster = _UNIT
        df[cluster] = np.arange(len(df))
    skip = [c for c in (by, seed, *exclude) if c is not None]
    frame = build_analysis_frame(
        df, outcomes=[outcome, _ROW], cluster=cluster, exclude=skip, spec=schema, source="table"
    )
    rows = frame.data[_ROW].to_numpy().astype(np.int64)
    arms = [str(a) for a in pd.unique(df[by].to_numpy()[rows])]
    _two_arms(arms, by)
    cells = _cells(frame, df, rows, by, seed, outcome)
    return cells, arms, frame.data[outcome].to_numpy(dtype=float)


def _two_arms(arms: list[str], by: str) -> None:
    if len(arms) < 2:
        raise StudyInputError(
            f"Column {by!r} holds one arm only ({arms[0] if arms else 'none'}); "
            "a comparison needs at least two."
        )


def _group_cells(
    df: pd.DataFrame,
    by: str,
    seed: str | None,
    outcome: str,
    cluster: str | None,
    group: str,
    relative_to: str | None,
) -> tuple[_Cells, list[str], np.ndarray, dict[str, list[str]]]:
    """A paired-effects table: identity totals of each group's rows per (arm, seed) cell, for
    the groups present in every cell (then ``relative_to``'s rows, last); the rest listed per
    arm as unshared."""
    names = df[group]
    if names.isna().any():
        raise StudyInputError(
            f"Column {group!r} (the group column) has missing values; every row needs a group name."
        )
    bad = names[~names.map(lambda v: isinstance(v, str))] if not _all_strings(names) else names[:0]
    if len(bad):
        v = bad.iloc[0]
        raise StudyInputError(
            f"Column {group!r} (the group column) holds {v!r} ({type(v).__name__}), "
            "not a group name; every value must be a string."
        )
    if not pd.api.types.is_numeric_dtype(df[outcome]) or pd.api.types.is_bool_dtype(df[outcome]):
        raise StudyInputError(
            f"Column {outcome!r} (the outcome) is not numeric (dtype {df[outcome].dtype})."
        )
    y_all = df[outcome].to_numpy(dtype=float)
    if np.isinf(y_all).any():
        raise StudyInputError(f"Column {outcome!r} (the outcome) holds infinite values.")
    if cluster is not None and df[cluster].isna().any():
        raise StudyInputError(f"Column {cluster!r} (the cluster column) has missing values.")
    df = df[np.isfinite(y_all)]
    arms = [str(a) for a in pd.unique(df[by])]
    _two_arms(arms, by)
    arm_col = df[by].astype(str).to_numpy()
    seed_col = df[seed].astype(str).to_numpy() if seed is not None else np.full(len(df), "")
    cell, uniq = _cell_codes(arm_col, seed_col)
    names = df[group].to_numpy()
    order = list(pd.unique(names))
    per_cell = [set(names[cell == c]) for c in range(len(uniq))]
    shared = [g for g in order if all(g in s for s in per_cell)]
    if relative_to is not None:
        _check_reference(relative_to, group, uniq, per_cell)
    compared = [g for g in shared if g != relative_to]
    if not compared:
        raise StudyInputError(
            f"No value of column {group!r} (besides relative_to) is present in every arm and "
            "seed; there is no group to compare."
        )
    unshared = {}
    for a in arms:
        seen = set(names[arm_col == a])
        rest = [g for g in order if g in seen and g not in shared]
        if rest:
            unshared[a] = rest
    keep = compared + ([relative_to] if relative_to is not None else [])
    gcode = pd.Index(keep).get_indexer(names)
    ident = pd.factorize(df[cluster].to_numpy())[0] if cluster is not None else np.arange(len(df))
    y = df[outcome].to_numpy(dtype=float)
    n_id = int(ident.max()) + 1
    shape = (len(uniq), len(keep), n_id)
    on = gcode >= 0
    flat = np.ravel_multi_index((cell[on], gcode[on], ident[on]), shape)
    s1 = np.bincount(flat, weights=y[on], minlength=int(np.prod(shape))).reshape(shape)
    n1 = np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape).astype(float)
    cells = _Cells(
        arm=[str(u[0]) for u in uniq],
        seed=[str(u[1]) for u in uniq],
        s1=s1,
        n1=n1,
        s0=None,
        n0=None,
        groups=keep,
        levels=[None] * len(keep),
    )
    return cells, arms, y, unshared


def _all_strings(x: pd.Series) -> bool:
    return pd.api.types.infer_dtype(x, skipna=False) == "string"


def _cell_codes(arm: np.ndarray, seed: np.ndarray) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """(arm, seed) cell of every row, numbered in order of first appearance, and the cells."""
    a, ua = pd.factorize(arm)
    s, us = pd.factorize(seed)
    cell, uniq = pd.factorize(a * len(us) + s)
    return cell, [(str(ua[k // len(us)]), str(us[k % len(us)])) for k in uniq]


def _check_reference(ref: str, group: str, uniq: pd.Index, per_cell: list[set]) -> None:
    for (arm, seed), names in zip(uniq, per_cell):
        if ref not in names:
            where = f"arm {arm!r}" + (f", seed {seed}" if seed != "" else "")
            raise StudyInputError(
                f"relative_to={ref!r} is not a value of column {group!r} in {where}; every arm "
                "and seed needs its oracle-gain rows."
            )


def _paired(c: _Cells, arms: list[str]) -> bool:
    """True when some identity has rows in more than one arm (their differences cancel)."""
    seen = []
    for a in arms:
        idx = c.cells_of(a)
        seen.append(sum(n[idx].sum(axis=(0, 1)) for _, n, _ in c.parts()) > 0)
    return bool((np.sum(seen, axis=0) > 1).any())


def _headline(codes: np.ndarray, y: np.ndarray, cell: np.ndarray, n_cells: int) -> int:
    """The level (code) whose mean differs most from the rest, by |t| on the pooled table,
    among levels present in every cell (a two-level group: its non-reference level); -1 when
    none is."""
    k = int(codes.max()) + 1
    best, best_t = -1, -1.0
    for lv in range(1 if k <= 2 else 0, k):
        on = codes == lv
        if on.all() or len(np.unique(cell[on])) < n_cells or len(np.unique(cell[~on])) < n_cells:
            continue
        a, b = y[on], y[~on]
        se = np.sqrt(a.var() / max(a.size, 1) + b.var() / max(b.size, 1))
        t = abs(a.mean() - b.mean()) / se if se > 0 else 0.0
        if t > best_t:
            best, best_t = lv, t
    return best


def _cells(
    frame, df: pd.DataFrame, rows: np.ndarray, by: str, seed: str | None, outcome: str
) -> _Cells:
    """Identity totals per (arm, seed) cell; groups with no level shared by all cells dropped."""
    arm_col = df[by].astype(str).to_numpy()[rows]
    seed_col = df[seed].astype(str).to_numpy()[rows] if seed is not None else np.full(len(rows), "")
    cell, uniq = _cell_codes(arm_col, seed_col)
    ident = pd.factorize(frame.data[frame.cluster].to_numpy())[0]
    n_id, n_cells = int(ident.max()) + 1, len(uniq)
    y = frame.data[outcome].to_numpy(dtype=float)
    codes = group_codes(frame)
    groups, levels, idx = [], [], []
    for j, g in enumerate(frame.groups):
        lv = _headline(codes[:, j], y, cell, n_cells)
        if lv >= 0:
            groups.append(g)
            levels.append(frame.levels(g)[lv])
            idx.append((j, lv))
    if not groups:
        raise StudyInputError(
            f"The arms of column {by!r} share no attribute group with a level seen in every arm."
        )
    shape = (n_cells, len(groups), n_id)
    s1, n1, s0, n0 = (np.zeros(shape) for _ in range(4))
    for c in range(n_cells):
        m = cell == c
        for gi, (j, lv) in enumerate(idx):
            on = m & (codes[:, j] == lv)
            off = m & (codes[:, j] != lv)
            s1[c, gi] = np.bincount(ident[on], weights=y[on], minlength=n_id)
            n1[c, gi] = np.bincount(ident[on], minlength=n_id)
            s0[c, gi] = np.bincount(ident[off], weights=y[off], minlength=n_id)
            n0[c, gi] = np.bincount(ident[off], minlength=n_id)
    arms = [str(u[0]) for u in uniq]
    seeds = [str(u[1]) for u in uniq]
    adjusted = _adjusted_design(codes, y, cell, ident, n_cells, n_id, idx)
    return _Cells(arms, seeds, s1, n1, s0, n0, groups, levels, adjusted)


def _adjusted_design(
    codes: np.ndarray,
    y: np.ndarray,
    cell: np.ndarray,
    ident: np.ndarray,
    n_cells: int,
    n_id: int,
    idx: list[tuple[int, int]],
) -> _Adjusted:
    """Identity cross-products of [1, every group's non-reference level dummies] per cell, and
    each compared group's headline-versus-rest contrast (other levels weighted by their pooled
    shares). Rows are summed in chunks so a Market-size table never holds rows x p^2 at once."""
    from scipy import sparse

    offsets, p = [], 1
    for j in range(codes.shape[1]):
        offsets.append(p)
        p += max(int(codes[:, j].max()), 0)
    x = np.zeros((len(y), p))
    x[:, 0] = 1.0
    for j, off in enumerate(offsets):
        lv = codes[:, j]
        on = lv > 0
        x[np.flatnonzero(on), off + lv[on] - 1] = 1.0
    key = cell * n_id + ident
    xtx = np.zeros((n_cells * n_id, p * p))
    xty = np.zeros((n_cells * n_id, p))
    for start in range(0, len(y), 20000):
        sl = slice(start, start + 20000)
        k = key[sl]
        m = sparse.csr_matrix(
            (np.ones(len(k)), (k, np.arange(len(k)))), shape=(n_cells * n_id, len(k))
        )
        xs = x[sl]
        xtx += m @ (xs[:, :, None] * xs[:, None, :]).reshape(len(k), p * p)
        xty += m @ (xs * y[sl, None])
    contrast = np.zeros((len(idx), p))
    for gi, (j, lv) in enumerate(idx):
        k = int(codes[:, j].max()) + 1
        rest = codes[:, j][codes[:, j] != lv]
        share = np.bincount(rest, minlength=k) / max(len(rest), 1)
        weights = -share
        weights[lv] = 1.0
        contrast[gi, offsets[j] : offsets[j] + k - 1] = weights[1:]  # level 0: the reference
    return _Adjusted(xtx.reshape(n_cells, n_id, p, p), xty.reshape(n_cells, n_id, p), contrast)


def _cell_effects(c: _Cells, w: np.ndarray | None = None) -> np.ndarray:
    """Effects [cells, groups] (w None) or [draws, cells, groups] under identity weights w:
    each part's ratio of identity totals, signed; the levels mode: the adjusted contrast."""
    if c.adjusted is not None:
        return c.adjusted.effects(w)
    out = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        for s, n, sign in c.parts():
            if w is None:
                out = out + sign * s.sum(-1) / n.sum(-1)
            else:
                out = out + sign * np.einsum("bi,cgi->bcg", w, s) / np.einsum("bi,cgi->bcg", w, n)
    return out


def _arm_effects(
    c: _Cells, arms: list[str], n_boot: int, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per arm: the point effects [groups] (mean over its seeds) and hierarchical bootstrap
    draws [n_boot, groups] (seeds resampled within the arm, identities shared by all arms)."""
    n_id = c.s1.shape[-1]
    w = rng.multinomial(n_id, np.full(n_id, 1.0 / n_id), size=n_boot).astype(float)
    cell_point = c.point
    cell_draws = _cell_effects(c, w)
    point, draws = {}, {}
    for a in arms:
        idx = np.array(c.cells_of(a))
        point[a] = cell_point[idx].mean(axis=0)
        pick = idx[rng.integers(0, len(idx), size=(n_boot, len(idx)))]
        draws[a] = np.take_along_axis(cell_draws, pick[:, :, None], axis=1).mean(axis=1)
    return point, draws


def _seed_effects(c: _Cells, arm: str) -> np.ndarray:
    """Effects [seeds of the arm, groups]."""
    return c.point[c.cells_of(arm)]


def _ci(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """95 % percentile interval over draws (axis 0), NaN where every draw is NaN."""
    with np.errstate(invalid="ignore"):
        if x.ndim == 1:
            x = x[:, None]
        ok = np.isfinite(x).any(axis=0)
        lo, hi = np.full(x.shape[1], np.nan), np.full(x.shape[1], np.nan)
        if ok.any():
            lo[ok], hi[ok] = np.nanpercentile(x[:, ok], [2.5, 97.5], axis=0)
    return lo, hi


def _relative(eff: np.ndarray, gain: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return eff / gain[..., None] if np.ndim(gain) else eff / gain


def _effects_table(
    c: _Cells, arms: list[str], point: dict, draws: dict, gain: tuple[dict, dict] | None
) -> pd.DataFrame:
    """One row per arm and group. With oracle gains: the effect relative to the arm's gain,
    from the same bootstrap draws (so the interval carries the gain's uncertainty too); no
    interval when the gain's own interval reaches 0 (the ratio is then unbounded)."""
    out = []
    for a in arms:
        lo, hi = _ci(draws[a])
        se = _seed_effects(c, a)
        sd = se.std(axis=0, ddof=1) if len(se) > 1 else np.full(len(c.groups), np.nan)
        if gain is not None:
            rel = _relative(point[a], gain[0][a])
            g_lo, g_hi = _ci(gain[1][a])
            if g_lo[0] > 0 or g_hi[0] < 0:
                r_lo, r_hi = _ci(_relative(draws[a], gain[1][a]))
            else:
                r_lo = r_hi = np.full(len(c.groups), np.nan)
        for g in range(len(c.groups)):
            row = {
                "arm": a,
                "attribute": c.groups[g],
                "level": c.levels[g],
                "effect": float(point[a][g]),
                "ci_low": float(lo[g]),
                "ci_high": float(hi[g]),
                "seed_sd": float(sd[g]),
                "n_seeds": len(se),
            }
            if gain is not None:
                row.update(relative=float(rel[g]), relative_low=float(r_lo[g]))
                row.update(relative_high=float(r_hi[g]))
            out.append(row)
    return pd.DataFrame(out)


def _gains_table(c: _Cells, arms: list[str], ref: int, point: dict, draws: dict) -> pd.DataFrame:
    """Each arm's oracle gain (the mean of its ``relative_to`` rows) with its interval."""
    out = []
    for a in arms:
        lo, hi = _ci(draws[a])
        se = _seed_effects(c, a)[:, ref]
        out.append(
            {
                "arm": a,
                "gain": float(point[a]),
                "ci_low": float(lo[0]),
                "ci_high": float(hi[0]),
                "seed_sd": float(se.std(ddof=1)) if len(se) > 1 else float("nan"),
                "n_seeds": len(se),
            }
        )
    return pd.DataFrame(out)


def _identity_wald(c: _Cells, a: str, b: str, g: int) -> tuple[float, float]:
    """CR1 (by identity) standard error of effect_a - effect_b for group g, pooling each arm's
    seeds, and its df (identities - 1). Delta method on the ratio-of-totals means: identity p's
    influence on mean m = S/N is (S_p - m N_p) / N; an identity in both arms adds both
    influences (paired), one in only one arm adds one (unpaired). Written out because it is
    four lines and runs inside simulation loops; equals statsmodels' OLS cluster SE of the
    single-arm case up to its (n-1)/(n-k) factor."""
    infl = np.zeros(c.s1.shape[-1])
    used = np.zeros(c.s1.shape[-1], dtype=bool)
    for arm, sign in ((a, 1.0), (b, -1.0)):
        idx = c.cells_of(arm)
        for s, n, part in c.parts():
            sp, np_ = s[idx, g].sum(0), n[idx, g].sum(0)
            used |= np_ > 0
            if c.adjusted is None:
                m = sp.sum() / np_.sum()
                infl += sign * part * (sp - m * np_) / np_.sum()
        if c.adjusted is not None:
            infl += sign * c.adjusted.influence(idx, g)
    n_g = int(used.sum())
    if n_g < 2:
        return float("nan"), float("nan")
    return float(np.sqrt(n_g / (n_g - 1.0) * np.sum(infl**2))), float(n_g - 1)


def _seed_t(c: _Cells, a: str, b: str, g: int) -> tuple[float, float] | None:
    """Pooled-variance two-sample t on the seed-level effects: (std_err, df), or None when the
    arms have fewer than three seeds together (no seed-to-seed variance to estimate)."""
    ea, eb = _seed_effects(c, a)[:, g], _seed_effects(c, b)[:, g]
    na, nb = len(ea), len(eb)
    if na + nb < 3 or not (np.isfinite(ea).all() and np.isfinite(eb).all()):
        return None
    ss = ((ea - ea.mean()) ** 2).sum() + ((eb - eb.mean()) ** 2).sum()
    df = na + nb - 2.0
    return float(np.sqrt(ss / df * (1.0 / na + 1.0 / nb))), df


def _combined(seed: tuple[float, float], ident: tuple[float, float]) -> tuple[float, float]:
    """The SE of a difference whose estimate varies with the training runs *and* with the
    identities sampled, and its Satterthwaite df.

    Why both: the seed-level t sees how much the arms' effects move from one training run to
    the next on *these* queries; every run reads the same identities, so it is blind to how the
    difference would move on other people, which the identity-clustered variance of the
    seed-pooled difference measures (the design varied both: seeds and identities). Alone, the
    seed-level t called a 0.001 mAP difference resting on one query "differs" between two arms
    that were the same config (three seeds each, one arm's three runs within 4e-5 of each other).
    The sum counts the seed noise a little twice (it is also in each identity's residual), so it
    errs on the safe side. An identity term that cannot be computed leaves the seed term alone.
    """
    (se_s, df_s), (se_i, df_i) = seed, ident
    if not (np.isfinite(se_i) and np.isfinite(df_i) and df_i > 0):
        return se_s, df_s
    v_s, v_i = se_s**2, se_i**2
    total = v_s + v_i
    if total <= 0:
        return 0.0, df_s
    df = total**2 / (v_s**2 / df_s + v_i**2 / df_i)
    return float(np.sqrt(total)), float(df)


def _pair_row(c: _Cells, a: str, b: str, g: int, point: dict, draws: dict) -> dict:
    """The difference effect_a - effect_b of group g: point, interval, test and p (no Holm)."""
    pa, pb = point[a], point[b]
    pa, pb = (pa[g], pb[g]) if np.ndim(pa) else (pa, pb)
    diff = float(pa - pb)
    d_draws = draws[a] - draws[b]
    lo, hi = _ci(d_draws[:, g] if d_draws.ndim > 1 else d_draws)
    seeded = _seed_t(c, a, b, g)
    se, df = se_id, _ = _identity_wald(c, a, b, g)
    test = "identities (CR1 Wald)"
    if seeded is not None:
        se, df = _combined(seeded, (se, df))
        test = "seeds and identities (t)"
    se_seeds = seeded[0] if seeded is not None else float("nan")
    ok = np.isfinite(diff) and np.isfinite(se) and se > 0
    p = float(2 * stats.t.sf(abs(diff) / se, df)) if ok else float("nan")
    row = {"attribute": c.groups[g], "level": c.levels[g], "arm_a": a, "arm_b": b}
    row.update(effect_a=float(pa), effect_b=float(pb), difference=diff)
    # The interval shown is the test's own (difference ± t quantile x its SE), so an interval
    # that excludes 0 and p < alpha always agree: with three seeds per arm the hierarchical
    # bootstrap re-draws from three values per arm and is narrower than the t test admits
    # (a "differs" whose bootstrap interval covered 0 was seen); it is kept as boot_low/high.
    half = float(stats.t.ppf(0.975, df) * se) if ok else float("nan")
    row.update(ci_low=diff - half, ci_high=diff + half, std_err=se, df=df, test=test)
    row.update(se_seeds=se_seeds, se_identities=se_id)
    row.update(boot_low=float(lo[0]), boot_high=float(hi[0]), p_interaction=p, ok=ok)
    if not ok:
        row.update(ci_low=float(lo[0]), ci_high=float(hi[0]))
    return row


def _differences(
    c: _Cells,
    arms: list[str],
    point: dict,
    draws: dict,
    margin: float,
    alpha: float,
    gain: tuple[dict, dict] | None,
) -> pd.DataFrame:
    """One row per (arm pair, group): the difference, its CI, the interaction test, verdict."""
    out = []
    for a, b in _pairs(arms):
        for g in range(len(c.groups)):
            row = _pair_row(c, a, b, g, point, draws)
            ok = row.pop("ok")
            se, df = row["std_err"], row["df"]
            row["p_tost"] = tost_p(row["difference"], se, df, margin) if ok else float("nan")
            if gain is not None:
                row["relative_a"] = float(_relative(point[a][g], gain[0][a]))
                row["relative_b"] = float(_relative(point[b][g], gain[0][b]))
            out.append(row)
    res = pd.DataFrame(out)
    res["p_holm"] = adjust(res["p_interaction"], "holm")
    m = int(res["p_interaction"].notna().sum())
    res["mdd"] = [
        minimum_detectable_effect(se, df, alpha=alpha, family_size=m) if np.isfinite(se) else np.nan
        for se, df in zip(res["std_err"], res["df"])
    ]
    res["margin"] = margin
    res["verdict"] = [_verdict(r, alpha) for r in res.itertuples()]
    first = [k for k in res.columns if k not in ("relative_a", "relative_b")]
    return res[first + [k for k in ("relative_a", "relative_b") if k in res.columns]]


def _verdict(r, alpha: float) -> str:
    if not np.isfinite(r.p_interaction):
        return "not testable"
    if r.p_holm < alpha:
        return "differs"
    if np.isfinite(r.p_tost) and r.p_tost < alpha:
        return "negligible"
    return "inconclusive"


def _rank_pair(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Kendall tau-b and Spearman rho of one pair of effect vectors (scipy's; groups where
    either is not finite left out; NaN with fewer than three groups)."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan"), float("nan")
    tau = stats.kendalltau(x[ok], y[ok]).statistic  # tau-b, ties handled
    rho = stats.spearmanr(x[ok], y[ok]).statistic
    return float(tau), float(rho)


def _rank_pairs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[rows, 2]: (tau-b, rho) of each row pair of x, y [rows, groups]: the formulas written out
    over all rows at once (a bootstrap has thousands), equal to scipy's; rows with a
    non-finite value go through `_rank_pair`."""
    x, y = np.atleast_2d(x), np.atleast_2d(y)
    out = np.full((len(x), 2), np.nan)
    ok = np.isfinite(x).all(1) & np.isfinite(y).all(1)
    if x.shape[1] >= 3 and ok.any():
        xs, ys = x[ok], y[ok]
        iu = np.triu_indices(x.shape[1], 1)
        sx = np.sign(xs[:, :, None] - xs[:, None, :])[:, iu[0], iu[1]]
        sy = np.sign(ys[:, :, None] - ys[:, None, :])[:, iu[0], iu[1]]
        rx, ry = stats.rankdata(xs, axis=1), stats.rankdata(ys, axis=1)
        rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            tau = (sx * sy).sum(1) / np.sqrt((sx**2).sum(1) * (sy**2).sum(1))
            rho = (rx * ry).sum(1) / np.sqrt((rx**2).sum(1) * (ry**2).sum(1))
        out[ok] = np.column_stack([tau, rho])
    for i in np.flatnonzero(~ok):
        out[i] = _rank_pair(x[i], y[i])
    return out


def _agreement_row(kind: str, a: str, b: str, tau: np.ndarray, rho: np.ndarray, k: int) -> dict:
    """tau, rho: [point, low, high]."""
    return {
        "kind": kind,
        "arm_a": a,
        "arm_b": b,
        "kendall_tau": float(tau[0]),
        "tau_low": float(tau[1]),
        "tau_high": float(tau[2]),
        "spearman_rho": float(rho[0]),
        "rho_low": float(rho[1]),
        "rho_high": float(rho[2]),
        "n_groups": k,
    }


def _agreement(c: _Cells, arms: list[str], point: dict, draws: dict) -> pd.DataFrame:
    """Kendall tau-b and Spearman rho between arms' signed effects (bootstrap percentile CIs),
    and, per arm with seeds, the mean agreement over pairs of its seeds (low / high: the
    smallest and largest pair): the baseline a between-arm agreement is read against, best
    through ``tau_one_run`` (single runs on both sides, so equally noisy)."""
    out, k = [], len(c.groups)
    for a, b in itertools.combinations(arms, 2):
        pt = _rank_pairs(point[a], point[b])[0]
        boot = _rank_pairs(draws[a], draws[b])
        # plain percentiles of the draws' tau / rho. They lean towards 0: a draw's effects carry
        # the sampling noise twice (the data's and the resample's), and a bias-corrected (BC)
        # interval breaks down when the point lies above nearly every draw, as it does for a
        # strong agreement; so read [low, high] as the spread a replicate study could show.
        ci = np.nanpercentile(boot, [2.5, 97.5], axis=0)  # [2, 2]: (low, high) x (tau, rho)
        tau = np.array([pt[0], ci[0, 0], ci[1, 0]])
        rho = np.array([pt[1], ci[0, 1], ci[1, 1]])
        out.append(_agreement_row("between arms", a, b, tau, rho, k))
        sa, sb = _seed_effects(c, a), _seed_effects(c, b)
        cross = _rank_pairs(np.repeat(sa, len(sb), axis=0), np.tile(sb, (len(sa), 1)))[:, 0]
        out[-1]["tau_one_run"] = float(np.nanmean(cross))
    for a in arms:
        se = _seed_effects(c, a)
        if len(se) < 2:
            continue
        i, j = np.triu_indices(len(se), 1)
        pairs = _rank_pairs(se[i], se[j])
        summ = np.array([np.nanmean(pairs, 0), np.nanmin(pairs, 0), np.nanmax(pairs, 0)])
        out.append(_agreement_row("between seeds", a, a, summ[:, 0], summ[:, 1], k))
        out[-1]["tau_one_run"] = float(summ[0, 0])
    return pd.DataFrame(out)


def _name(attribute: str, level: str | None) -> str:
    return attribute if level is None else f"{attribute} ({level})"


def _summary(
    diffs: pd.DataFrame,
    agree: pd.DataFrame,
    c: _Cells,
    arms: list[str],
    alpha: float,
    unshared: dict[str, list[str]],
    gain_rows: list[dict],
    relative_to: str | None,
) -> list[str]:
    """The answer: one sentence per difference found, then what was not found, the training
    noise, the oracle gains, the groups not compared, then agreement."""
    out = []
    found = diffs[diffs["verdict"] == "differs"].sort_values("p_holm")
    for r in found.itertuples():
        # "relies more" is about the size of the effect: the arm with the larger |effect|;
        # when that effect is negative (the group's experts cost accuracy) it is "hurt by"
        a_larger = abs(r.effect_a) >= abs(r.effect_b)
        more, less = (r.arm_a, r.arm_b) if a_larger else (r.arm_b, r.arm_a)
        verb = "relies on" if (r.effect_a if a_larger else r.effect_b) >= 0 else "is hurt by"
        rel = ""
        if relative_to is not None:
            rel = (
                f"; {r.relative_a:.2g} of {r.arm_a}'s oracle gain against "
                f"{r.relative_b:.2g} of {r.arm_b}'s"
            )
        out.append(
            f"{more} {verb} {_name(r.attribute, r.level)} more than {less}: effect "
            f"{r.effect_a:+.3g} in {r.arm_a} against {r.effect_b:+.3g} in {r.arm_b}, difference "
            f"{r.difference:+.3g} [{r.ci_low:+.3g}, {r.ci_high:+.3g}] ({r.test}), "
            f"Holm p {r.p_holm:.2g}{rel}."
        )
    rest = diffs[diffs["verdict"] != "differs"]
    if len(rest):
        mdd = rest["mdd"].dropna()
        neg = int((rest["verdict"] == "negligible").sum())
        lead = "No other group" if len(found) else "No group"
        det = (
            f"smallest detectable difference {mdd.min():.3g} to {mdd.max():.3g} "
            f"(median {mdd.median():.3g})"
            if len(mdd)
            else "nothing testable"
        )
        out.append(
            f"{lead} differs detectably between arms (Holm, alpha {alpha:g}); {neg} of "
            f"{len(rest)} comparisons are negligible within ±{rest['margin'].iloc[0]:.3g}; {det}."
        )
    n_seeds = {a: len(c.cells_of(a)) for a in arms}
    if min(n_seeds.values()) < 2:
        one = [a for a, n in n_seeds.items() if n < 2]
        out.append(
            f"Arm(s) {', '.join(one)} have one training run: their differences include training "
            "noise, which one run per arm cannot separate from the arm."
        )
    for r in gain_rows:
        out.append(
            f"Oracle gain ({relative_to}): {r['effect_a']:+.3g} in {r['arm_a']} against "
            f"{r['effect_b']:+.3g} in {r['arm_b']}, difference {r['difference']:+.3g} "
            f"[{r['ci_low']:+.3g}, {r['ci_high']:+.3g}], p {r['p_interaction']:.2g} "
            f"({r['test']}; not part of the Holm family)."
        )
    if unshared:
        parts = [f"{', '.join(gs)} (only in {a})" for a, gs in unshared.items()]
        out.append(f"Not compared, since not every arm and seed has them: {'; '.join(parts)}.")
    for r in agree.itertuples():
        if r.kind == "between arms":
            out.append(
                f"Rank agreement between {r.arm_a} and {r.arm_b}: Kendall tau-b {r.kendall_tau:.2f} "
                f"[{r.tau_low:.2f}, {r.tau_high:.2f}], {r.tau_one_run:.2f} between single runs."
            )
        else:
            out.append(
                f"Rank agreement between seeds of {r.arm_a} (the baseline): Kendall tau-b "
                f"{r.kendall_tau:.2f} on average ({r.tau_low:.2f} to {r.tau_high:.2f})."
            )
    return out

"""Compare arms (backbones, datasets, expert banks) on one stacked result table: do they rely on
different attribute groups, beyond the noise of one training run?

    >>> import studies
    >>> cmp = studies.compare(df, by="backbone", outcome="ap", cluster="pid", seed="seed")  # doctest: +SKIP
    >>> cmp.differences[["attribute", "arm_a", "arm_b", "difference", "p_holm", "verdict"]]  # doctest: +SKIP

The effect of a group in one arm is a *difference of means* on the outcome's scale: the mean
outcome of rows at the group's headline level minus the mean of its other rows (a two-level
group: its non-reference level against the reference). Why not the GLM's adjusted average
marginal effect: the between-arm test needs the effect re-estimated in thousands of bootstrap
draws and per seed, and a difference of means is a ratio of identity totals, so every draw is a
matrix product and its cluster-robust variance is closed-form. The price: the effect is
marginal (not adjusted for the other groups); `studies.analyze` on each arm gives the adjusted
one. The headline level of a multi-level group is chosen once, on the pooled table (all arms
together, so the choice is symmetric in the arms and does not favour a difference).

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

Holm runs over the interaction family only (every group x arm pair). Verdicts: ``differs``
(Holm p < alpha), ``negligible`` (two one-sided tests within ±margin), ``inconclusive`` (with
``mdd``, the minimum detectable difference at 80 % power), ``not testable``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from studies.corrections import adjust
from studies.design import build_analysis_frame, group_codes
from studies.errors import StudyInputError
from studies.verdicts import default_margin, minimum_detectable_effect, tost_p

_ROW = "__compare_row__"


@dataclass
class ComparisonResult:
    """What `compare` found; every table is tidy (one row per arm / pair and group)."""

    #: arm, attribute, level, effect, ci_low, ci_high, seed_sd, n_seeds
    effects: pd.DataFrame
    #: attribute, level, arm_a, arm_b, effect_a, effect_b, difference (effect_a - effect_b), ci_low, ci_high, std_err, df, test,
    #: p_interaction, p_holm, p_tost, mdd, margin, verdict
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


@dataclass
class _Cells:
    """Identity totals of every (arm, seed) cell at each group's headline level and off it."""

    arm: list[str]
    seed: list[str]
    s1: np.ndarray  # [cells, groups, identities]: outcome sums at the headline level
    n1: np.ndarray  # row counts at the headline level
    s0: np.ndarray  # outcome sums at the other levels
    n0: np.ndarray
    groups: list[str]
    levels: list[str]


def compare(
    table: pd.DataFrame | str | Path,
    *,
    by: str,
    outcome: str,
    cluster: str | None = None,
    schema: object = None,
    exclude: Iterable[str] = (),
    seed: str | None = None,
    margin: float | None = None,
    alpha: float = 0.05,
    n_boot: int = 1000,
    random_state: int = 0,
) -> ComparisonResult:
    """Do the arms named by column ``by`` rely on different attribute groups? (module docstring)

    ``cluster``: the identity column (rows of one identity are not independent; None = every
    row its own unit). ``seed``: the training-run column; with several seeds per arm the seed
    is the unit of every between-arm test. ``schema``, ``exclude``: as in `studies.analyze`.
    """
    df = _read(table)
    _check_columns(df, by, seed, outcome)
    # rows without an arm (or seed) belong to no arm: dropped, as the frame drops NaN outcomes
    df = df[df[by].notna() & (df[seed].notna() if seed is not None else True)]
    df = df.assign(**{_ROW: np.arange(len(df), dtype=float)})
    if cluster is None:
        cluster = "__compare_unit__"
        df[cluster] = np.arange(len(df))
    skip = [c for c in (by, seed, *exclude) if c is not None]
    frame = build_analysis_frame(
        df, outcomes=[outcome, _ROW], cluster=cluster, exclude=skip, spec=schema, source="table"
    )
    rows = frame.data[_ROW].to_numpy().astype(np.int64)
    arms = [str(a) for a in pd.unique(df[by].to_numpy()[rows])]
    if len(arms) < 2:
        raise StudyInputError(
            f"Column {by!r} holds one arm only ({arms[0] if arms else 'none'}); "
            "a comparison needs at least two."
        )
    cells = _cells(frame, df, rows, by, seed, outcome)
    rng = np.random.default_rng(random_state)
    margin = default_margin(frame.data[outcome]) if margin is None else float(margin)
    point, draws = _arm_effects(cells, arms, n_boot, rng)
    effects = _effects_table(cells, arms, point, draws)
    differences = _differences(cells, arms, point, draws, margin, alpha)
    agreement = _agreement(cells, arms, point, draws)
    summary = _summary(differences, agreement, cells, arms, alpha)
    return ComparisonResult(effects, differences, agreement, summary, arms)


def _read(table: pd.DataFrame | str | Path) -> pd.DataFrame:
    if isinstance(table, pd.DataFrame):
        return table
    from studies.io import read_table

    return read_table(table)


def _check_columns(df: pd.DataFrame, by: str, seed: str | None, outcome: str) -> None:
    for role, col in (("arm (by)", by), ("seed", seed), ("outcome", outcome)):
        if col is not None and col not in df.columns:
            raise StudyInputError(f"The table has no column {col!r} (given as the {role} column).")
    if by == seed:
        raise StudyInputError(f"Column {by!r} cannot be both the arm and the seed column.")


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
    keys = pd.MultiIndex.from_arrays([arm_col, seed_col])
    cell, uniq = pd.factorize(keys)
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
    return _Cells(arms, seeds, s1, n1, s0, n0, groups, levels)


def _cell_effects(c: _Cells, w: np.ndarray | None = None) -> np.ndarray:
    """Effects [cells, groups] (w None) or [draws, cells, groups] under identity weights w."""
    if w is None:
        with np.errstate(invalid="ignore", divide="ignore"):
            return c.s1.sum(-1) / c.n1.sum(-1) - c.s0.sum(-1) / c.n0.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        on = np.einsum("bi,cgi->bcg", w, c.s1) / np.einsum("bi,cgi->bcg", w, c.n1)
        off = np.einsum("bi,cgi->bcg", w, c.s0) / np.einsum("bi,cgi->bcg", w, c.n0)
    return on - off


def _arm_effects(
    c: _Cells, arms: list[str], n_boot: int, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per arm: the point effects [groups] (mean over its seeds) and hierarchical bootstrap
    draws [n_boot, groups] (seeds resampled within the arm, identities shared by all arms)."""
    n_id = c.s1.shape[-1]
    w = rng.multinomial(n_id, np.full(n_id, 1.0 / n_id), size=n_boot).astype(float)
    cell_point = _cell_effects(c)
    cell_draws = _cell_effects(c, w)
    point, draws = {}, {}
    for a in arms:
        idx = np.array([i for i, arm in enumerate(c.arm) if arm == a])
        point[a] = cell_point[idx].mean(axis=0)
        pick = idx[rng.integers(0, len(idx), size=(n_boot, len(idx)))]
        draws[a] = np.take_along_axis(cell_draws, pick[:, :, None], axis=1).mean(axis=1)
    return point, draws


def _seed_effects(c: _Cells, arm: str) -> np.ndarray:
    """Effects [seeds of the arm, groups]."""
    idx = [i for i, a in enumerate(c.arm) if a == arm]
    return _cell_effects(c)[idx]


def _effects_table(c: _Cells, arms: list[str], point: dict, draws: dict) -> pd.DataFrame:
    out = []
    for a in arms:
        lo, hi = np.nanpercentile(draws[a], [2.5, 97.5], axis=0)
        se = _seed_effects(c, a)
        sd = se.std(axis=0, ddof=1) if len(se) > 1 else np.full(len(c.groups), np.nan)
        for g in range(len(c.groups)):
            out.append(
                {
                    "arm": a,
                    "attribute": c.groups[g],
                    "level": c.levels[g],
                    "effect": float(point[a][g]),
                    "ci_low": float(lo[g]),
                    "ci_high": float(hi[g]),
                    "seed_sd": float(sd[g]),
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
    for arm, sign in ((a, 1.0), (b, -1.0)):
        idx = [i for i, x in enumerate(c.arm) if x == arm]
        for s, n, part in ((c.s1, c.n1, 1.0), (c.s0, c.n0, -1.0)):
            sp, np_ = s[idx, g].sum(0), n[idx, g].sum(0)
            m = sp.sum() / np_.sum()
            infl += sign * part * (sp - m * np_) / np_.sum()
    used = np.zeros(c.s1.shape[-1], dtype=bool)
    for arm in (a, b):
        idx = [i for i, x in enumerate(c.arm) if x == arm]
        used |= (c.n1[idx, g].sum(0) + c.n0[idx, g].sum(0)) > 0
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


def _differences(
    c: _Cells, arms: list[str], point: dict, draws: dict, margin: float, alpha: float
) -> pd.DataFrame:
    """One row per (arm pair, group): the difference, its CI, the interaction test, verdict."""
    out = []
    for a, b in itertools.combinations(arms, 2):
        d_draws = draws[a] - draws[b]
        lo, hi = np.nanpercentile(d_draws, [2.5, 97.5], axis=0)
        for g in range(len(c.groups)):
            diff = float(point[a][g] - point[b][g])
            seeded = _seed_t(c, a, b, g)
            se, df = seeded if seeded is not None else _identity_wald(c, a, b, g)
            test = "seeds as units (t)" if seeded is not None else "identities (CR1 Wald)"
            ok = np.isfinite(diff) and np.isfinite(se) and se > 0
            p = float(2 * stats.t.sf(abs(diff) / se, df)) if ok else float("nan")
            row = {"attribute": c.groups[g], "level": c.levels[g], "arm_a": a, "arm_b": b}
            row.update(effect_a=float(point[a][g]), effect_b=float(point[b][g]))
            row.update(difference=diff, ci_low=float(lo[g]), ci_high=float(hi[g]))
            row.update(std_err=se, df=df, test=test, p_interaction=p)
            row.update(p_tost=tost_p(diff, se, df, margin) if ok else float("nan"))
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
    return res


def _verdict(r, alpha: float) -> str:
    if not np.isfinite(r.p_interaction):
        return "not testable"
    if r.p_holm < alpha:
        return "differs"
    if np.isfinite(r.p_tost) and r.p_tost < alpha:
        return "negligible"
    return "inconclusive"


def _rank_pair(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan"), float("nan")
    tau = stats.kendalltau(x[ok], y[ok]).statistic  # tau-b, ties handled
    rho = stats.spearmanr(x[ok], y[ok]).statistic
    return float(tau), float(rho)


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
        pt = _rank_pair(point[a], point[b])
        boot = np.array([_rank_pair(x, y) for x, y in zip(draws[a], draws[b])])
        # plain percentiles of the draws' tau / rho. They lean towards 0: a draw's effects carry
        # the sampling noise twice (the data's and the resample's), and a bias-corrected (BC)
        # interval breaks down when the point lies above nearly every draw, as it does for a
        # strong agreement; so read [low, high] as the spread a replicate study could show.
        ci = np.nanpercentile(boot, [2.5, 97.5], axis=0)  # [2, 2]: (low, high) x (tau, rho)
        tau = np.array([pt[0], ci[0, 0], ci[1, 0]])
        rho = np.array([pt[1], ci[0, 1], ci[1, 1]])
        out.append(_agreement_row("between arms", a, b, tau, rho, k))
        sa, sb = _seed_effects(c, a), _seed_effects(c, b)
        cross = [_rank_pair(x, y)[0] for x in sa for y in sb]
        out[-1]["tau_one_run"] = float(np.nanmean(cross))
    for a in arms:
        se = _seed_effects(c, a)
        if len(se) < 2:
            continue
        pairs = np.array(
            [_rank_pair(se[i], se[j]) for i, j in itertools.combinations(range(len(se)), 2)]
        )
        summ = np.array([np.nanmean(pairs, 0), np.nanmin(pairs, 0), np.nanmax(pairs, 0)])
        out.append(_agreement_row("between seeds", a, a, summ[:, 0], summ[:, 1], k))
        out[-1]["tau_one_run"] = float(summ[0, 0])
    return pd.DataFrame(out)


def _summary(
    diffs: pd.DataFrame, agree: pd.DataFrame, c: _Cells, arms: list[str], alpha: float
) -> list[str]:
    """The answer: one sentence per difference found, then what was not found, then agreement."""
    out = []
    found = diffs[diffs["verdict"] == "differs"].sort_values("p_holm")
    for r in found.itertuples():
        # "relies more" is about the size of the effect: the arm with the larger |effect|
        more, less = (
            (r.arm_a, r.arm_b) if abs(r.effect_a) >= abs(r.effect_b) else (r.arm_b, r.arm_a)
        )
        out.append(
            f"{more} relies on {r.attribute} ({r.level}) more than {less}: effect "
            f"{r.effect_a:+.3g} in {r.arm_a} against {r.effect_b:+.3g} in {r.arm_b}, difference "
            f"{r.difference:+.3g} [{r.ci_low:+.3g}, {r.ci_high:+.3g}] ({r.test}), "
            f"Holm p {r.p_holm:.2g}."
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
    n_seeds = {a: sum(1 for x in c.arm if x == a) for a in arms}
    if min(n_seeds.values()) < 2:
        one = [a for a, n in n_seeds.items() if n < 2]
        out.append(
            f"Arm(s) {', '.join(one)} have one training run: their differences include training "
            "noise, which one run per arm cannot separate from the arm."
        )
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

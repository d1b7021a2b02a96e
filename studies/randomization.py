"""Randomisation inference for designs that drew their switches at random (configurations).

In a crossed table (``studies.crossed``) the configuration is the unit the design varied: each
configuration switches every attribute group on or off for all queries at once. When the
design drew that assignment at random -- attrimp's random-subsets design
(``attrimp.evaluate.ablation.balanced_subsets``) draws each group's on/off column as an
independently shuffled balanced column -- the null distribution of any statistic is known
exactly: re-draw the assignment as the design drew it and recompute. No model of the
configurations' noise (interactions, anything the additive model misses) is needed, so the
test's size is exact whatever that noise is, which no cluster-robust test can promise with 20-100
configurations.

Method, per group ``g`` (Fisher's randomisation test, conditional on the other groups):

1. average the outcome per condition (one row per configuration; every query of a configuration
   shares its switches, so the queries add precision, not replication);
2. OLS of the condition means on all groups' treatment-coded dummies; the statistic is ``g``'s
   F (extra sum of squares of dropping ``g``), computed through Frisch-Waugh: residualise the
   mean and ``g``'s dummies on the other columns, whose projection is fixed under the null;
3. the null re-draws ``g``'s level column: a permutation among the *randomized* conditions
   (fixed-design conditions, e.g. the full model and leave-one-out configurations, keep
   theirs), the other groups fixed. Permuting an exchangeably drawn column *is* re-drawing it;
4. ``p = (1 + #{T* >= T}) / (n_perm + 1)``; when the distinct re-draws number at most
   ``n_perm`` they are all enumerated and ``p`` is exact (``test = "randomization_exact"``).

All permutations of one group are one matrix: the residualisation is one product and the extra
sums of squares one batched solve (999 × 12 groups × 50 conditions in a few milliseconds).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from studies.corrections import add_adjusted
from studies.crossed import condition_means, randomized_conditions
from studies.errors import StudyInputError
from studies.frame import AnalysisFrame

COLUMNS = [
    "attribute",
    "statistic",
    "p_value",
    "p_holm",
    "p_fdr_bh",
    "n_conditions",
    "n_randomized",
    "test",
    "note",
]
#: relative tolerance of ``T* >= T`` (floating-point ties must count as ties)
_TIE = 1e-9


def _dummies(codes: np.ndarray) -> np.ndarray:
    """Treatment-coded dummies of the levels present (the first present level is the base)."""
    present = np.unique(codes)
    return (codes[:, None] == present[None, 1:]).astype(float)


def _residualiser(Z: np.ndarray) -> np.ndarray:
    """``I - Z Z^+``: the residual maker of the fixed columns (pinv: aliased columns are fine)."""
    return np.eye(Z.shape[0]) - Z @ np.linalg.pinv(Z)


def _extra_ss(M: np.ndarray, y_r: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Extra sum of squares of ``D`` (``draws x C x q``) beyond the fixed columns, per draw."""
    Dr = np.einsum("ij,njq->niq", M, D)
    h = np.einsum("niq,i->nq", Dr, y_r)
    G = np.einsum("niq,nir->nqr", Dr, Dr)
    return np.einsum("nq,nqr,nr->n", h, np.linalg.pinv(G, rcond=1e-10, hermitian=True), h)


def _distinct_redraws(labels: np.ndarray) -> int:
    """How many distinct arrangements a permutation of ``labels`` has (a multinomial)."""
    _, counts = np.unique(labels, return_counts=True)
    return math.factorial(len(labels)) // math.prod(math.factorial(int(c)) for c in counts)


def _all_arrangements(labels: np.ndarray) -> np.ndarray:
    """Every distinct arrangement of ``labels`` (rows), by choosing each level's positions."""
    levels, counts = np.unique(labels, return_counts=True)
    n = len(labels)
    out: list[np.ndarray] = []

    def place(i: int, free: tuple[int, ...], acc: np.ndarray) -> None:
        if i == len(levels) - 1:
            row = acc.copy()
            row[list(free)] = levels[i]
            out.append(row)
            return
        for pos in itertools.combinations(free, int(counts[i])):
            row = acc.copy()
            row[list(pos)] = levels[i]
            place(i + 1, tuple(p for p in free if p not in pos), row)

    place(0, tuple(range(n)), np.empty(n, dtype=labels.dtype))
    return np.array(out)


def _redraws(
    col: np.ndarray, rand: np.ndarray, n_perm: int, rng: np.random.Generator
) -> tuple[np.ndarray, bool]:
    """Level columns of the null (``draws x C``): the observed column with its randomized
    entries permuted; every distinct re-draw when there are at most ``n_perm`` (then exact)."""
    sub = col[rand]
    if _distinct_redraws(sub) <= n_perm:
        arr = _all_arrangements(sub)
        exact = True
    else:
        arr = rng.permuted(np.tile(sub, (n_perm, 1)), axis=1)
        exact = False
    draws = np.tile(col, (len(arr), 1))
    draws[:, rand] = arr
    return draws, exact


def _test_one(
    g: str,
    codes: dict[str, np.ndarray | None],
    ybar: np.ndarray,
    rand: np.ndarray,
    n_perm: int,
    rng: np.random.Generator,
) -> dict:
    """One group's randomisation test (F statistic, p-value) or the reason it has none."""
    rec = {"attribute": g, "n_conditions": len(ybar), "n_randomized": int(rand.sum())}
    col = codes[g]
    if col is None:
        return rec | dict(test="not testable", note="its level varies within conditions")
    if len(np.unique(col[rand])) < 2:
        return rec | dict(
            test="not testable", note="its level does not vary among the randomized conditions"
        )
    others = [_dummies(c) for h, c in codes.items() if h != g and c is not None]
    Z = np.column_stack([np.ones(len(ybar)), *others])
    M = _residualiser(Z)
    y_r = M @ ybar
    levels = np.unique(col)
    D_obs = (col[:, None] == levels[None, 1:]).astype(float)
    q = D_obs.shape[1]
    df_res = len(ybar) - np.linalg.matrix_rank(np.column_stack([Z, D_obs]))
    rss_red = float(y_r @ y_r)
    ess = float(_extra_ss(M, y_r, D_obs[None]).item())
    if df_res < 1 or rss_red - ess <= 1e-12 * max(rss_red, 1e-300):
        return rec | dict(
            test="not testable", note="the condition means leave no residual degrees of freedom"
        )
    draws, exact = _redraws(col, rand, n_perm, rng)
    D = (draws[:, :, None] == levels[None, None, 1:]).astype(float)
    ess_null = _extra_ss(M, y_r, D)
    F = (ess / q) / ((rss_red - ess) / df_res)
    hits = int((ess_null >= ess * (1 - _TIE) - 1e-14).sum())
    if exact:  # the identity arrangement is among the enumerated re-draws
        p, test = hits / len(draws), "randomization_exact"
    else:
        p, test = (1 + hits) / (n_perm + 1), "randomization"
    return rec | dict(statistic=float(F), p_value=float(p), test=test, note="")


def randomization_tests(
    frame: AnalysisFrame,
    outcome: str,
    *,
    n_perm: int = 999,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """One randomisation test per attribute group of a crossed frame (module docstring).

    Columns: ``attribute, statistic`` (the group's F on the condition means), ``p_value``,
    ``p_holm``, ``p_fdr_bh`` (over the testable groups), ``n_conditions``, ``n_randomized``,
    ``test`` (``randomization``, ``randomization_exact`` or ``not testable``) and ``note``.
    Groups come in ``frame.groups`` order. ``alpha`` is accepted for a uniform call signature
    (the p-values do not depend on it). When the frame does not say which conditions were
    randomized, every condition is treated as randomized and every note says so."""
    if frame.condition is None:
        raise StudyInputError(
            f"{frame.source}: randomisation tests need a condition column (the configurations)."
        )
    if outcome not in frame.data.columns:
        raise StudyInputError(f"{frame.source} has no outcome {outcome!r}.")
    if n_perm < 1:
        raise StudyInputError("n_perm must be at least 1.")
    values, ybar, codes = condition_means(frame, outcome)
    declared = randomized_conditions(frame)
    if declared is None:
        rand = np.ones(len(values), dtype=bool)
        assumed = "every condition assumed randomized (the design did not say which were)"
    else:
        rand = np.asarray(values.isin(list(declared)), dtype=bool)
        assumed = ""
    rows = [
        _test_one(g, codes, ybar, rand, n_perm, np.random.default_rng([seed, i]))
        for i, g in enumerate(frame.groups)
    ]
    table = pd.DataFrame(rows).reindex(columns=[c for c in COLUMNS if not c.startswith("p_")])
    table["p_value"] = [r.get("p_value", np.nan) for r in rows]
    if assumed:
        table["note"] = [f"{n}; {assumed}" if n else assumed for n in table["note"]]
    table = add_adjusted(table).reindex(columns=COLUMNS)
    table.attrs["alpha"] = alpha
    return table

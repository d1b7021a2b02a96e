"""One ranking of the attribute groups across methods, their agreement, and its stability.

**The ranking rule** (one rule for ``studies.analyze``, its heat map, report.json and the study's
reliance consensus): groups are ordered by the *strength of evidence that they change the
outcome, in either direction* — the Borda consensus of unsigned evidence scores: -log10 p of the
group tests (GLM Wald, rank tests, the randomisation test on crossed designs), permutation-
importance drops, mean |SHAP|. No score fed to the consensus carries a sign, so a group that
significantly *hurts* ranks as high as one that helps equally strongly; the direction (helps /
hurts, ``studies.verdicts``) is shown beside the rank and never folded into it. A group that
cannot be tested (constant, excluded, no test possible: verdict ``not testable``) gets no rank
(NaN) and is listed after the ranked ones with its reason (:func:`rank_with_verdicts`). Where
verdicts exist the rank is tiered (:func:`tiered`): the groups the primary test finds (helps /
hurts) first, then the inconclusive, then those shown negligible, the consensus deciding within
a tier; the plain Borda rank stays beside it as ``consensus_rank``.

Input convention: every method hands a ``pd.Series`` of scores indexed by attribute group,
**higher = more important**. Callers convert: a test's p-value as ``-log10(p)``, a GLM's joint
Wald test as its chi² (or ``-log10(p)``), a permutation importance or mean |SHAP| as is. Only
ranks are used, so scales never need to match.

A method whose scores rank nothing (every attribute the same score) is left out, with a
warning saying why (``uninformative_reason``).

Consensus score: the mean over methods of the rank-normalised score ``(n - rank) / (n - 1)``
(1 = a method's top attribute, 0 = its last; ties share the mean rank). This is a Borda count
rescaled to [0, 1]; an attribute a method did not score is averaged over the methods that did
(with a warning). Agreement: Kendall's W with the tie correction (Kendall & Babington Smith
1939; Siegel & Castellan 1988, eq. 9.16), its chi² test ``m (n - 1) W`` on ``n - 1`` degrees of
freedom, and pairwise Kendall tau-b / Spearman rho.

Stability: ``stability_by_cluster_bootstrap`` resamples whole clusters (identities) with
replacement and rescores; ``consensus_ranking(..., bootstrap_scores=...)`` turns those into a
percentile interval of each attribute's consensus rank and the share of replicates that keep
its rank. Bootstrap ranks are the consensus of the methods present in each replicate, so when
only cheap methods are bootstrapped (the default: refitting forests 200 times is not cheap) the
interval describes those methods' consensus, and stability is measured against those methods'
consensus on the full table (``rank_bootstrap_methods``), with a warning saying so.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy import stats

from studies.crossed import is_crossed, two_way_resample
from studies.errors import StudyInputError
from studies.features import (
    CellStats,
    GroupEncoding,
    cell_design,
    cell_stats,
    cluster_codes,
    encode_frame,
    linear_fit,
    outcome_values,
)
from studies.frame import AnalysisFrame


@dataclass
class ConsensusResult:
    #: most important first: attribute, score, rank, rank_<method> per method, rank_ci_low,
    #: rank_ci_high, rank_stability (NaN without bootstrap scores); with replicates from
    #: ``stability_by_cluster_bootstrap`` also rank_bootstrap_methods, the consensus rank of
    #: the resampled methods on the full table, which rank_stability is measured against
    ranking: pd.DataFrame
    kendall_w: float
    kendall_w_p: float
    #: method_a, method_b, kendall_tau, kendall_p, spearman_rho, spearman_p, n
    agreement: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    #: the chi² statistic of the W test and its degrees of freedom
    kendall_w_chi2: float = float("nan")
    kendall_w_df: int = 0
    #: methods left out because their scores rank nothing (method -> reason); see
    #: ``uninformative_reason``
    excluded: dict[str, str] = field(default_factory=dict)


def _clean(scores: dict[str, pd.Series]) -> dict[str, pd.Series]:
    out = {}
    for name, s in scores.items():
        if not isinstance(s, pd.Series):
            raise StudyInputError(
                f"Scores of method '{name}' must be a pandas Series indexed by attribute."
            )
        if s.index.has_duplicates:
            dup = s.index[s.index.duplicated()][0]
            raise StudyInputError(f"Method '{name}' scores attribute '{dup}' more than once.")
        try:
            v = pd.to_numeric(s, errors="raise").astype(float)
        except (TypeError, ValueError):
            raise StudyInputError(f"Scores of method '{name}' are not numeric.") from None
        v.index = v.index.astype(str)
        out[str(name)] = v.replace([np.inf, -np.inf], np.nan)
    return out


def uninformative_reason(scores: pd.Series) -> str | None:
    """Why a method's scores carry no ranking information, or None when they do.

    A method that gives every attribute the same score (every permutation importance exactly 0
    because the permutation could not move the data; every rank test at the smallest p-value
    its permutations can give) ranks all attributes as one tie. Averaged into the consensus it
    would pull every attribute to the middle and make Kendall's W look like disagreement, so it
    is left out, with this reason in a warning.
    """
    v = scores.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return f"it scores {v.size} attribute(s), so it ranks nothing"
    if np.ptp(v) <= 1e-12 * max(1.0, float(np.abs(v).max())):
        return (
            f"it gives all {v.size} attributes the same score ({v[0]:.4g}), so its ranking is "
            "one tie and carries no information"
        )
    return None


def _ranks(s: pd.Series) -> pd.Series:
    """1 = highest score; ties share their mean rank; NaN stays NaN."""
    return s.rank(ascending=False, method="average")


def kendall_w(ranks: np.ndarray) -> tuple[float, float, float, int]:
    """Kendall's W for ``ranks [m raters, n objects]`` with the tie correction.

    ``W = 12 S / (m² (n³ - n) - m Σ T)``, ``S = Σ (R_i - mean R)²``, ``T = Σ (t³ - t)`` over each
    rater's tie groups. Returns (W, p, chi², df) with chi² = m (n - 1) W on n - 1 df.
    """
    ranks = np.asarray(ranks, dtype=float)
    m, n = ranks.shape
    if m < 2 or n < 2:
        return float("nan"), float("nan"), float("nan"), 0
    r = ranks.sum(axis=0)
    s = float(((r - r.mean()) ** 2).sum())
    ties = 0.0
    for row in ranks:
        _, t = np.unique(row, return_counts=True)
        ties += float((t**3 - t).sum())
    denom = m**2 * (n**3 - n) - m * ties
    if denom <= 0:  # every rater ties every object: no information
        return float("nan"), float("nan"), float("nan"), n - 1
    w = 12.0 * s / denom
    chi2 = m * (n - 1) * w
    return float(w), float(stats.chi2.sf(chi2, n - 1)), float(chi2), n - 1


def _consensus_scores(
    scores: dict[str, pd.Series], attributes: list[str]
) -> tuple[pd.Series, pd.DataFrame]:
    ranks = pd.DataFrame(
        {k: _ranks(v.reindex(attributes)) for k, v in scores.items()}, index=attributes
    )
    n_scored = ranks.notna().sum(axis=0)
    norm = (n_scored - ranks) / (n_scored - 1).where(n_scored > 1)
    return norm.mean(axis=1, skipna=True), ranks


def _bootstrap_ranks(
    replicates: Sequence[dict[str, pd.Series]], attributes: list[str]
) -> np.ndarray:
    """Consensus rank of every attribute in every replicate ``[n_boot, n_attributes]``: the
    same rule as ``_consensus_scores`` + ``_order``, vectorised over replicates."""
    methods = list(dict.fromkeys(k for rep in replicates for k in rep))
    total = np.zeros((len(replicates), len(attributes)))
    n_methods = np.zeros_like(total)
    for k in methods:
        vals = np.full((len(replicates), len(attributes)), np.nan)
        for b, rep in enumerate(replicates):
            if k in rep:
                vals[b] = _clean({k: rep[k]})[k].reindex(attributes).to_numpy(float)
        ok = np.isfinite(vals)
        ranks = stats.rankdata(np.where(ok, -vals, np.inf), axis=1)  # average ranks, NaN last
        n_ok = ok.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = (n_ok - ranks) / np.where(n_ok > 1, n_ok - 1, np.nan)
        use = ok & (n_ok > 1)
        total += np.where(use, norm, 0.0)
        n_methods += use
    with np.errstate(invalid="ignore", divide="ignore"):
        score = total / n_methods
    return stats.rankdata(np.where(np.isfinite(score), -score, np.inf), axis=1, method="min")


def _order(score: pd.Series) -> pd.Series:
    """Consensus rank: 1 = highest score, ties share the best (lowest) rank, NaN last."""
    return score.rank(ascending=False, method="min", na_option="bottom")


def _drop_uninformative(
    sc: dict[str, pd.Series], warnings: list[str]
) -> tuple[dict[str, pd.Series], dict[str, str]]:
    """Leave out the methods whose scores rank nothing (see ``uninformative_reason``), unless
    every method is such: then all stay and the consensus is a tie."""
    excluded: dict[str, str] = {}
    for k, v in sc.items():
        reason = uninformative_reason(v)
        if reason is not None:
            excluded[k] = reason
    if excluded and len(excluded) < len(sc):
        for k, reason in excluded.items():
            warnings.append(f"Method '{k}' is left out of the consensus: {reason}.")
        return {k: v for k, v in sc.items() if k not in excluded}, excluded
    if excluded:
        warnings.append(
            "No method separates the attributes (every method gives all of them one score), so "
            "the consensus ranking is a tie."
        )
    return sc, {}


def _agreement_w(
    sc: dict[str, pd.Series], ranks: pd.DataFrame, attributes: list[str]
) -> tuple[float, float, float, int]:
    """Kendall's W on the attributes every method scored, re-ranked so each method ranks 1..n."""
    complete = [a for a in attributes if ranks.loc[a].notna().all()]
    if len(complete) < 2:
        return float("nan"), float("nan"), float("nan"), 0
    mat = np.vstack([stats.rankdata(-sc[k].reindex(complete).to_numpy()) for k in sc])
    return kendall_w(mat)


_AGREEMENT_COLUMNS = [
    "method_a",
    "method_b",
    "kendall_tau",
    "kendall_p",
    "spearman_rho",
    "spearman_p",
    "n",
]


def _pairwise_agreement(
    sc: dict[str, pd.Series], ranks: pd.DataFrame, attributes: list[str]
) -> pd.DataFrame:
    """Kendall tau-b and Spearman rho of every pair of methods on the attributes both scored."""
    agree = []
    for a, b in itertools.combinations(sc, 2):
        common = [
            x for x in attributes if not np.isnan(ranks.at[x, a]) and not np.isnan(ranks.at[x, b])
        ]
        va, vb = sc[a].reindex(common).to_numpy(), sc[b].reindex(common).to_numpy()
        if len(common) >= 2 and np.ptp(va) > 0 and np.ptp(vb) > 0:
            kt = stats.kendalltau(va, vb)
            sp = stats.spearmanr(va, vb)
            row = (kt.statistic, kt.pvalue, sp.statistic, sp.pvalue)
        else:
            row = (np.nan,) * 4
        agree.append(
            {
                "method_a": a,
                "method_b": b,
                "kendall_tau": float(row[0]),
                "kendall_p": float(row[1]),
                "spearman_rho": float(row[2]),
                "spearman_p": float(row[3]),
                "n": len(common),
            }
        )
    return pd.DataFrame(agree, columns=_AGREEMENT_COLUMNS)


def _add_rank_intervals(
    table: pd.DataFrame,
    rank: pd.Series,
    sc: dict[str, pd.Series],
    bootstrap_scores: Sequence[dict[str, pd.Series]],
    ci: float,
    warnings: list[str],
) -> None:
    """Percentile interval of each attribute's consensus rank over the replicates and the share
    of replicates that keep its rank (in place)."""
    attributes = table["attribute"].tolist()
    boot = _bootstrap_ranks(bootstrap_scores, attributes)
    alpha = (1 - ci) / 2
    table["rank_ci_low"] = np.quantile(boot, alpha, axis=0, method="lower")
    table["rank_ci_high"] = np.quantile(boot, 1 - alpha, axis=0, method="higher")
    # stability is measured against the same methods' consensus on the full table when
    # the replicates carry it (they may bootstrap only cheap methods), else against `rank`
    observed = getattr(bootstrap_scores, "observed", None)
    reference = rank.to_numpy()
    if observed:
        reference = _order(_consensus_scores(_clean(observed), attributes)[0]).to_numpy()
        table["rank_bootstrap_methods"] = reference
        boot_methods = sorted(set(observed))
        if set(boot_methods) != set(sc):
            warnings.append(
                "Rank intervals and stability come from resampling "
                f"{', '.join(boot_methods)}; the consensus itself uses {', '.join(sc)}."
            )
    table["rank_stability"] = (boot == reference[None, :]).mean(axis=0)


def consensus_ranking(
    scores: dict[str, pd.Series],
    *,
    bootstrap_scores: Sequence[dict[str, pd.Series]] | None = None,
    ci: float = 0.95,
) -> ConsensusResult:
    """Rank attribute groups across methods (scores: higher = more important)."""
    if not scores:
        raise StudyInputError("consensus_ranking needs the scores of at least one method.")
    warnings: list[str] = []
    sc, excluded = _drop_uninformative(_clean(scores), warnings)
    attributes = list(dict.fromkeys(a for s in sc.values() for a in s.index))
    if not attributes:
        raise StudyInputError("consensus_ranking was given no attributes to rank.")
    score, ranks = _consensus_scores(sc, attributes)
    for k in sc:
        miss = [a for a in attributes if np.isnan(ranks.at[a, k])]
        if miss:
            warnings.append(
                f"Method '{k}' has no score for {', '.join(miss)}; their consensus uses the other methods."
            )
    if len(sc) < 2:
        warnings.append(
            "Only one method ranks the attributes, so agreement between methods is undefined."
        )
    w, w_p, chi2, df = _agreement_w(sc, ranks, attributes)
    rank = _order(score)
    table = pd.DataFrame(
        {"attribute": attributes, "score": score.to_numpy(), "rank": rank.to_numpy()}
    )
    for k in sc:
        table[f"rank_{k}"] = ranks[k].to_numpy()
    table["rank_ci_low"] = np.nan
    table["rank_ci_high"] = np.nan
    table["rank_stability"] = np.nan
    if bootstrap_scores:
        _add_rank_intervals(table, rank, sc, bootstrap_scores, ci, warnings)
    return ConsensusResult(
        ranking=table.sort_values(["rank", "attribute"], kind="stable").reset_index(drop=True),
        kendall_w=w,
        kendall_w_p=w_p,
        agreement=_pairwise_agreement(sc, ranks, attributes),
        warnings=warnings,
        kendall_w_chi2=chi2,
        kendall_w_df=df,
        excluded=excluded,
    )


#: the verdict columns ``rank_with_verdicts`` adds to a ranking (``studies.verdicts``)
VERDICT_COLUMNS = ("verdict", "direction", "mde", "p_tost", "margin", "test", "reason")


def rank_with_verdicts(
    scores: dict[str, pd.Series],
    verdicts: pd.DataFrame | None,
    *,
    bootstrap_scores: Sequence[dict[str, pd.Series]] | None = None,
    ci: float = 0.95,
) -> ConsensusResult:
    """The consensus ranking of the testable groups, with each group's verdict beside its rank.

    ``verdicts`` is ``studies.verdicts.group_verdicts``' table. Groups whose verdict is ``not
    testable`` are dropped from every method's scores *before* ranking (so they neither take a
    rank nor shift the others' Borda scores) and appended after the ranked groups with NaN score
    and rank and their reason. ``direction`` is a column, never part of the score. Without a
    verdicts table (the GLM could not run) this is :func:`consensus_ranking` with empty verdict
    columns."""
    verdicts = verdicts if verdicts is not None else pd.DataFrame(columns=["attribute", "verdict"])
    untestable = verdicts.loc[verdicts["verdict"] == "not testable", "attribute"].tolist()
    kept = {k: s.drop(labels=untestable, errors="ignore") for k, s in scores.items()}
    kept = {k: s for k, s in kept.items() if len(s)}
    if kept:
        cons = consensus_ranking(kept, bootstrap_scores=bootstrap_scores, ci=ci)
    else:
        cons = ConsensusResult(
            ranking=pd.DataFrame(columns=["attribute", "score", "rank"]),
            kendall_w=float("nan"),
            kendall_w_p=float("nan"),
            agreement=pd.DataFrame(columns=_AGREEMENT_COLUMNS),
            warnings=["No group can be tested, so there is no ranking."],
        )
    return replace(cons, ranking=tiered(attach_verdicts(cons.ranking, verdicts)))


#: the verdict tiers of the ranking: what the primary test finds first, what it cannot tell
#: next, what it shows negligible last
VERDICT_TIERS = {"helps": 0, "hurts": 0, "inconclusive": 1, "negligible": 2}


def tiered(ranking: pd.DataFrame) -> pd.DataFrame:
    """``rank`` ordered by verdict tier first (helps / hurts, then inconclusive, then
    negligible), by the consensus score within a tier; the Borda rank it replaces is kept as
    ``consensus_rank`` (the bootstrap rank interval and stability describe that one).

    Why: a ranking by evidence alone put groups the primary test found (e.g. one whose experts
    significantly hurt) below groups it could not tell from zero, and a reader takes rank 2 to
    matter more than rank 8. Within a tier the analyses' consensus decides, as before. Groups
    without a verdict (no primary test) sit with the inconclusive ones; untestable ones keep no
    rank."""
    if ranking.empty or "verdict" not in ranking.columns:
        return ranking
    out = ranking.copy()
    ranked = out["rank"].notna()
    tier = out["verdict"].map(VERDICT_TIERS).fillna(1.0)
    key = pd.DataFrame({"tier": tier, "score": -out["score"].astype(float)})[ranked]
    order = key.apply(tuple, axis=1)
    out["consensus_rank"] = out["rank"]
    out.loc[ranked, "rank"] = order.rank(method="average").to_numpy()
    sort_key = out["rank"].fillna(np.inf)
    return (
        out.assign(_k=sort_key)
        .sort_values("_k", kind="stable")
        .drop(columns="_k")
        .reset_index(drop=True)
    )


def attach_verdicts(ranking: pd.DataFrame, verdicts: pd.DataFrame) -> pd.DataFrame:
    """``ranking`` with the verdict columns, ranked groups first (by rank), then every group the
    verdicts call ``not testable`` or the ranking lacks (NaN rank), in the verdicts' order."""
    v = verdicts.drop_duplicates("attribute").set_index("attribute")
    v = v.reindex(columns=list(VERDICT_COLUMNS))
    ranked = ranking.sort_values(["rank", "attribute"], kind="stable").reset_index(drop=True)
    missing = [a for a in v.index if a not in set(ranked["attribute"])]
    if missing:
        extra = pd.DataFrame({"attribute": missing, "score": np.nan, "rank": np.nan})
        ranked = pd.concat([ranked, extra], ignore_index=True, sort=False)
    for col in VERDICT_COLUMNS:
        ranked[col] = ranked["attribute"].map(v[col]).to_numpy() if len(v) else np.nan
    return ranked


# ---------------------------------------------------------------------------------------------
# Cluster bootstrap
# ---------------------------------------------------------------------------------------------

#: the methods ``stability_by_cluster_bootstrap`` scores by default
DEFAULT_STABILITY_METHODS = ("linear_wald_chi2", "identity_eta2")


def _cheap_scores(
    enc: GroupEncoding,
    st: CellStats,
    w_cell: np.ndarray,
    clustered: bool,
    x: np.ndarray | None = None,
) -> dict[str, pd.Series]:
    """Scores from cell sums under cell weights ``w_cell`` (see ``stability_by_cluster_bootstrap``)."""
    fit = linear_fit(enc, st, weights=w_cell, x=x)
    wald = {}
    for g in enc.groups:
        cols = enc.group_columns[g] + 1
        if cols.size == 0:
            wald[g] = 0.0
            continue
        b = fit.beta[cols]
        v = fit.cov[np.ix_(cols, cols)]
        wald[g] = float(b @ np.linalg.pinv(v) @ b)
    # identity-level eta²: each (cluster, attribute row) cell counts once with its mean outcome
    # (clustered), or each row counts once (unclustered)
    cnt = st.count * w_cell
    keep = cnt > 0
    if clustered:
        wt = np.where(keep, w_cell, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ybar = np.where(keep, st.ysum / st.count, 0.0)
        total_mean = (wt @ ybar) / wt.sum()
        sst = float(wt @ (ybar - total_mean) ** 2)
    else:
        wt = cnt
        ysum_w = st.ysum * w_cell
        total_mean = ysum_w.sum() / cnt.sum()
        sst = float((st.y2sum * w_cell).sum() - cnt.sum() * total_mean**2)
        with np.errstate(invalid="ignore", divide="ignore"):
            ybar = np.where(keep, st.ysum / st.count, 0.0)
    eta = {}
    for j, g in enumerate(enc.groups):
        lv = st.codes[:, j]
        n_l = np.bincount(lv, weights=wt, minlength=len(enc.levels[g]))
        s_l = np.bincount(lv, weights=wt * ybar, minlength=len(enc.levels[g]))
        ok = n_l > 0
        between = float((s_l[ok] ** 2 / n_l[ok]).sum() - wt.sum() * total_mean**2)
        eta[g] = between / sst if sst > 0 else float("nan")
    return {"linear_wald_chi2": pd.Series(wald), "identity_eta2": pd.Series(eta)}


class BootstrapScores(list):
    """The per-replicate score dicts (a list), plus a tidy summary for reports.

    ``table``: attribute, method, score_mean, score_ci_low, score_ci_high, rank_mean,
    rank_ci_low, rank_ci_high (95% percentile intervals over replicates, rank 1 = top).
    """

    def __init__(
        self,
        replicates: list[dict[str, pd.Series]],
        warnings: list[str] | None = None,
        observed: dict[str, pd.Series] | None = None,
    ):
        super().__init__(replicates)
        self.warnings = list(warnings or [])
        #: the same methods' scores on the full table (the reference for rank stability)
        self.observed = observed

    @property
    def bootstrap_scores(self) -> list[dict[str, pd.Series]]:
        return list(self)

    @property
    def table(self) -> pd.DataFrame:
        rows = []
        methods = list(dict.fromkeys(k for rep in self for k in rep))
        for k in methods:
            reps = [rep[k] for rep in self if k in rep]
            sc = pd.concat(reps, axis=1)
            rk = sc.rank(ascending=False, method="average")
            for a in sc.index:
                v, r = sc.loc[a].to_numpy(float), rk.loc[a].to_numpy(float)
                v, r = v[np.isfinite(v)], r[np.isfinite(r)]
                rows.append(
                    {
                        "attribute": a,
                        "method": k,
                        "score_mean": float(v.mean()) if v.size else np.nan,
                        "score_ci_low": float(np.quantile(v, 0.025)) if v.size else np.nan,
                        "score_ci_high": float(np.quantile(v, 0.975)) if v.size else np.nan,
                        "rank_mean": float(r.mean()) if r.size else np.nan,
                        "rank_ci_low": float(np.quantile(r, 0.025)) if r.size else np.nan,
                        "rank_ci_high": float(np.quantile(r, 0.975)) if r.size else np.nan,
                        "n_boot": int(v.size),
                    }
                )
        return pd.DataFrame(rows)


def resample_clusters(frame: AnalysisFrame, rng: np.random.Generator) -> AnalysisFrame:
    """A cluster bootstrap sample of ``frame`` (rows if unclustered); drawn clusters get new labels."""
    clusters = cluster_codes(frame)
    if clusters is None:
        rows = rng.integers(0, len(frame.data), len(frame.data))
        return replace(frame, data=frame.data.iloc[rows].reset_index(drop=True), warnings=[])
    m = int(clusters.max()) + 1
    draw = rng.integers(0, m, m)
    order = np.argsort(clusters, kind="stable")
    sizes = np.bincount(clusters, minlength=m)
    starts = np.cumsum(sizes) - sizes
    rows = np.concatenate([order[starts[c] : starts[c] + sizes[c]] for c in draw])
    label = np.repeat(np.arange(m), sizes[draw])
    data = frame.data.iloc[rows].reset_index(drop=True)
    data[frame.cluster] = label
    return replace(frame, data=data, warnings=[])


def stability_by_cluster_bootstrap(
    frame: AnalysisFrame,
    outcome: str,
    score_fn: Callable[[AnalysisFrame], dict[str, pd.Series]] | None = None,
    *,
    n_boot: int = 200,
    seed: int = 0,
) -> BootstrapScores:
    """Scores of every attribute group on ``n_boot`` cluster-bootstrap samples.

    Clusters (identities) are drawn with replacement, so a replicate has the table's between-
    cluster variation; without ``frame.cluster`` rows are drawn. Drawing whole clusters is right
    whether an attribute is constant within clusters or varies within them (a switching
    design): the cluster is the independent unit either way, and a drawn cluster keeps all of
    its rows, so a within-cluster contrast stays within its cluster. On a crossed frame
    (``studies.crossed.is_crossed``: a condition column, no paired_by) identities and
    conditions are both resampled (``studies.crossed.two_way_resample``). Default scores (cheap, exact,
    computed from cell sums so a replicate is a reweighting, not a copy of the table):

    - ``linear_wald_chi2``: the joint Wald chi² of the group in a linear model of the outcome on
      all groups, cluster-robust (CR1) covariance; the Gaussian-GLM version of the GLM's per-
      group Wald test.
    - ``identity_eta2``: the share of the variance of identity-level mean outcomes explained by
      the group's levels (each identity counted once; rows when unclustered).

    ``score_fn(frame) -> {method: Series}`` replaces them with any scores (e.g. the full GLM);
    it is then called on a resampled copy of the frame per replicate, so keep it cheap.

    Returns the per-replicate score dicts (a ``BootstrapScores`` list, which also carries a
    summary ``table``); hand them to ``consensus_ranking(..., bootstrap_scores=...)``.
    """
    if n_boot < 1:
        raise StudyInputError(f"n_boot={n_boot}: the bootstrap needs at least one replicate.")
    rng = np.random.default_rng(seed)
    if frame.cluster is not None and is_crossed(frame):
        # a crossed design has two units of replication: identities AND configurations are
        # resampled (pigeonhole bootstrap), or the intervals miss the configurations' variation
        fn = score_fn or (lambda f: default_stability_scores(f, outcome))
        reps = [fn(two_way_resample(frame, rng)) for _ in range(n_boot)]
        return BootstrapScores(reps, observed=fn(frame))
    if score_fn is not None:
        reps = [score_fn(resample_clusters(frame, rng)) for _ in range(n_boot)]
        return BootstrapScores(reps, observed=score_fn(frame))
    y = outcome_values(frame, outcome)
    enc, codes = encode_frame(frame)
    clusters = cluster_codes(frame)
    st = cell_stats(codes, enc.n_levels, y, clusters)
    x = cell_design(enc, st)
    if clusters is not None:
        out = _cluster_replicates(enc, st, x, rng, n_boot)
    else:
        out = _row_block_replicates(enc, codes, y, rng, n_boot)
    observed = _cheap_scores(enc, st, np.ones(len(st.count)), clustered=clusters is not None, x=x)
    return BootstrapScores(out, observed=observed)


def _cluster_replicates(
    enc: GroupEncoding, st: CellStats, x: np.ndarray, rng: np.random.Generator, n_boot: int
) -> list[dict[str, pd.Series]]:
    """Default scores under ``n_boot`` multinomial reweightings of the clusters."""
    m = st.n_clusters
    out = []
    for _ in range(n_boot):
        wc = np.bincount(rng.integers(0, m, m), minlength=m).astype(float)
        out.append(_cheap_scores(enc, st, wc[st.cluster], clustered=True, x=x))
    return out


def _row_block_replicates(
    enc: GroupEncoding, codes: np.ndarray, y: np.ndarray, rng: np.random.Generator, n_boot: int
) -> list[dict[str, pd.Series]]:
    """Independent rows: resample random blocks of rows (each row its own block up to 1000
    rows), which is a valid bootstrap of iid rows and keeps a replicate O(cells); the fits
    still use the row-level (HC1) covariance, not the blocks."""
    n = len(y)
    m = min(n, 1000)
    blocks = rng.permutation(n) % m
    st_blocks = cell_stats(codes, enc.n_levels, y, blocks)
    st_rows = replace(st_blocks, cluster=None)
    xb = cell_design(enc, st_blocks)
    out = []
    for _ in range(n_boot):
        wb = np.bincount(rng.integers(0, m, m), minlength=m).astype(float)
        out.append(_cheap_scores(enc, st_rows, wb[st_blocks.cluster], clustered=False, x=xb))
    return out


def default_stability_scores(frame: AnalysisFrame, outcome: str) -> dict[str, pd.Series]:
    """The default bootstrap methods' scores on the table itself (the observed values)."""
    y = outcome_values(frame, outcome)
    enc, codes = encode_frame(frame)
    clusters = cluster_codes(frame)
    st = cell_stats(codes, enc.n_levels, y, clusters)
    return _cheap_scores(enc, st, np.ones(len(st.count)), clustered=clusters is not None)

"""The learned router, read right: how much of the oracle's gain survives without annotations.

A learned router's mAP alone cannot be read: 0.18 is good if the backbone alone gets 0.16 and
the oracle 0.20, and nothing if the oracle gets 0.89. So a study reports

- the **share of the oracle's gain** the learned router keeps,
  ``(mAP_learned - mAP_backbone) / (mAP_oracle - mAP_backbone)``, with a percentile CI from an
  identity bootstrap (identities resampled with replacement; the three mAPs recomputed from the
  same resample, so their correlation is kept);
- **paired tests** of learned vs backbone and learned vs oracle on per-query AP: the mean
  difference with an identity-cluster-robust standard error (statsmodels' CR1 sandwich on an
  intercept-only OLS; queries of one identity share its annotation and its experts, so they are
  not independent) and a t reference on G - 1 degrees of freedom (G identities; scipy), beside
  the Wilcoxon signed-rank test on the identities' mean differences (scipy);
- per group, the router's **accuracy beside the majority-class rate** of the test split (the
  accuracy of always guessing the most frequent value) and the **balanced accuracy**, named as
  such (`routers.learned.group_accuracy`);
- the **matched-noise oracle** (each group's annotation corrupted at the router's own error
  rate) and the **partial oracle** per group (true values for that group, predicted for the
  rest), whose gain over the learned router is what that group's prediction errors cost
  (`partial_oracle_table`).

Every value returned is JSON-safe (floats, ints, strings, lists, dicts, None), for report.json.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

LEARNED, BACKBONE, ORACLE, MATCHED = "learned", "backbone", "full", "matched_noisy"


def _wide(per_query: pd.DataFrame, configs: Sequence[str]) -> pd.DataFrame:
    """One row per query valid under every one of ``configs``: its ``pid`` and one AP column
    per configuration (pairs queries across configurations)."""
    sub = per_query[per_query["config"].isin(configs) & per_query["valid"].astype(bool)]
    wide = sub.pivot_table(index="query", columns="config", values="ap", aggfunc="first")
    wide = wide.reindex(columns=list(configs)).dropna()
    pids = sub.drop_duplicates("query").set_index("query")["pid"]
    return wide.assign(pid=pids.reindex(wide.index).to_numpy())


def _identity_sums(wide: pd.DataFrame, configs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per identity, the AP sums ``[G, len(configs)]`` and the query counts ``[G]``."""
    grouped = wide.groupby("pid", sort=True)
    return grouped[list(configs)].sum().to_numpy(float), grouped.size().to_numpy(float)


def _boot_maps(
    sums: np.ndarray, counts: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """``[n_boot, n_configs]`` mAPs of identity resamples (one resample per row, shared by all
    configurations: the paired bootstrap)."""
    idx = rng.integers(0, len(counts), size=(n_boot, len(counts)))
    return sums[idx].sum(axis=1) / counts[idx].sum(axis=1)[:, None]


def _interval(values: np.ndarray, alpha: float) -> tuple[float | None, float | None]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None, None
    lo, hi = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_clustered_test(
    diff: np.ndarray | pd.Series, clusters: np.ndarray | pd.Series, *, alpha: float = 0.05
) -> dict[str, Any]:
    """Mean of the per-query differences ``diff`` with an identity-cluster-robust test.

    The standard error is statsmodels' cluster-robust (CR1) one of an intercept-only OLS; the
    t statistic is referred to a t distribution on G - 1 degrees of freedom (G clusters), the
    usual small-G reference (with equal cluster sizes this is exactly the one-sample t-test on
    the cluster means). The Wilcoxon signed-rank test on the cluster means is the rank-based
    companion (scipy; p = 1 when every cluster mean is 0). Needs at least 2 clusters.
    """
    import statsmodels.api as sm

    d = np.asarray(diff, dtype=float)
    g = pd.factorize(np.asarray(clusters))[0]
    n_clusters = int(g.max()) + 1 if len(g) else 0
    means = pd.Series(d).groupby(g).mean().to_numpy()
    out: dict[str, Any] = {"mean_difference": float(d.mean()) if len(d) else None}
    out.update(queries=len(d), identities=n_clusters, df=n_clusters - 1)
    if n_clusters < 2:
        return {**out, "se": None, "t": None, "p": None, "ci_low": None, "ci_high": None,
                "wilcoxon_statistic": None, "wilcoxon_p": None}  # fmt: skip
    fit = sm.OLS(d, np.ones((len(d), 1))).fit(cov_type="cluster", cov_kwds={"groups": g})
    se = float(fit.bse[0])
    df = n_clusters - 1
    t = out["mean_difference"] / se if se > 0 else (0.0 if out["mean_difference"] == 0 else np.inf)
    half = stats.t.ppf(1 - alpha / 2, df) * se
    if np.all(means == 0):
        w_stat, w_p = 0.0, 1.0
    else:
        w = stats.wilcoxon(means)
        w_stat, w_p = float(w.statistic), float(w.pvalue)
    return {
        **out,
        "se": se,
        "t": float(t),
        "p": float(2 * stats.t.sf(abs(t), df)),
        "ci_low": out["mean_difference"] - half,
        "ci_high": out["mean_difference"] + half,
        "wilcoxon_statistic": w_stat,
        "wilcoxon_p": w_p,
    }


def share_of_gain(
    per_query: pd.DataFrame, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict[str, Any] | None:
    """The learned router's share of the oracle's gain over the backbone, with its identity-
    bootstrap percentile CI; None without the three configurations. The share is None (with a
    ``note``) when the oracle does not beat the backbone: there is no gain to share."""
    configs = [LEARNED, BACKBONE, ORACLE]
    if not set(configs) <= set(per_query["config"]):
        return None
    wide = _wide(per_query, configs)
    if wide.empty:
        return None
    learned, backbone, oracle = (float(wide[c].mean()) for c in configs)
    out: dict[str, Any] = {
        "map": {"learned": learned, "backbone": backbone, "oracle": oracle},
        "queries": len(wide),
        "identities": int(wide["pid"].nunique()),
        "n_boot": n_boot,
        "level": 1 - alpha,
    }
    gain = oracle - backbone
    if not gain > 0:
        return {**out, "estimate": None, "ci_low": None, "ci_high": None,
                "note": "the oracle does not beat the backbone: there is no gain to share"}  # fmt: skip
    sums, counts = _identity_sums(wide, configs)
    boot = _boot_maps(sums, counts, n_boot, np.random.default_rng(seed))
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = (boot[:, 0] - boot[:, 1]) / (boot[:, 2] - boot[:, 1])
    lo, hi = _interval(shares, alpha)
    return {**out, "estimate": (learned - backbone) / gain, "ci_low": lo, "ci_high": hi}


def _delta_with_ci(
    wide: pd.DataFrame, a: str, b: str, *, n_boot: int, alpha: float, seed: int
) -> dict[str, Any]:
    """mAP(a) - mAP(b) over the paired queries, with its identity-bootstrap percentile CI."""
    sums, counts = _identity_sums(wide, [a, b])
    boot = _boot_maps(sums, counts, n_boot, np.random.default_rng(seed))
    lo, hi = _interval(boot[:, 0] - boot[:, 1], alpha)
    return {"delta_map": float(wide[a].mean() - wide[b].mean()), "ci_low": lo, "ci_high": hi}


def partial_oracle_table(
    per_query: pd.DataFrame,
    accuracy: Mapping[str, Any] | None = None,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """Per group: what its prediction errors cost. ΔmAP of ``partial_oracle:<group>`` (true
    values for that group, predicted for the rest) minus the learned router, with its identity-
    bootstrap CI, the identity-clustered paired p-value, and the share of the learned router's
    gap to the oracle that fixing this group alone closes. With ``accuracy`` (the study's
    learned-router accuracy) the group's accuracy, majority-class rate and error rate sit
    beside. Sorted by ΔmAP, the costliest errors first; empty without partial-oracle rows."""
    from attrimp.evaluate.designs import group_conditions

    groups = [c.removeprefix("on_") for c in per_query.columns if c.startswith("on_")]
    # the partial-oracle design names its conditions; read them from it, never parse them back
    group_of = {name: g for g, name in group_conditions(groups, "oracle").items()}
    names = sorted(c for c in per_query["config"].unique() if c in group_of)
    if not names or LEARNED not in set(per_query["config"]):
        return pd.DataFrame()
    has_oracle = ORACLE in set(per_query["config"])
    rows = []
    for i, name in enumerate(names):
        wide = _wide(per_query, [name, LEARNED] + ([ORACLE] if has_oracle else []))
        group = group_of[name]
        row: dict[str, Any] = {"group": group, "map_partial": float(wide[name].mean())}
        row.update(_delta_with_ci(wide, name, LEARNED, n_boot=n_boot, alpha=alpha, seed=seed + i))
        row["p"] = paired_clustered_test(wide[name] - wide[LEARNED], wide["pid"], alpha=alpha)["p"]
        gap = float(wide[ORACLE].mean() - wide[LEARNED].mean()) if has_oracle else np.nan
        row["share_of_gap"] = row["delta_map"] / gap if gap > 0 else None
        for key in ("accuracy", "majority_rate", "error_rate"):
            row[key] = ((accuracy or {}).get(key) or {}).get(group)
        rows.append(row)
    return pd.DataFrame(rows).sort_values("delta_map", ascending=False, ignore_index=True)


def _accuracy_block(accuracy: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Per group accuracy / majority rate / balanced accuracy as records, plus their means and
    the count of groups whose accuracy beats the majority rate beyond binomial noise (two
    standard errors of a proportion at the majority rate)."""
    if not accuracy or "accuracy" not in accuracy:
        return None
    records, above, tested = [], 0, 0
    for g, acc in accuracy["accuracy"].items():
        maj = accuracy["majority_rate"].get(g)
        n = int((accuracy.get("n") or {}).get(g) or 0)
        bal = accuracy["balanced_accuracy"].get(g)
        records.append({"group": g, "accuracy": acc, "majority_rate": maj,
                        "balanced_accuracy": bal, "images": n})  # fmt: skip
        if acc is not None and acc == acc and n > 0:
            tested += 1
            above += acc > maj + 2 * np.sqrt(maj * (1 - maj) / n)
    return {
        "groups": records,
        "mean_accuracy": accuracy.get("mean_accuracy"),
        "mean_majority_rate": accuracy.get("mean_majority_rate"),
        "mean_balanced_accuracy": accuracy.get("mean_balanced_accuracy"),
        "groups_above_majority": int(above),
        "groups_tested": tested,
    }


def _comparisons(per_query: pd.DataFrame, alpha: float) -> list[dict[str, Any]]:
    """The paired, identity-clustered tests learned vs backbone / oracle / matched noise."""
    out = []
    for other, label in ((BACKBONE, "backbone"), (ORACLE, "oracle"), (MATCHED, "matched noise")):
        if other not in set(per_query["config"]):
            continue
        wide = _wide(per_query, [LEARNED, other])
        test = paired_clustered_test(wide[LEARNED] - wide[other], wide["pid"], alpha=alpha)
        out.append({"comparison": f"learned vs {label}", "reference": other, **test})
    return out


def read_learned_router(
    per_query: pd.DataFrame,
    accuracy: Mapping[str, Any] | None,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any] | None:
    """The learned router's reading for report.json (see the module docstring); None when the
    study has no learned condition. ``accuracy`` is the study's learned-router accuracy
    (``tables/learned_router.json``: per-group ``accuracy``, ``majority_rate``,
    ``balanced_accuracy`` and their means) or None."""
    if LEARNED not in set(per_query["config"]):
        return None
    share = share_of_gain(per_query, n_boot=n_boot, alpha=alpha, seed=seed)
    tests = _comparisons(per_query, alpha)
    partial = partial_oracle_table(per_query, accuracy, n_boot=n_boot, alpha=alpha, seed=seed)
    matched = None
    if MATCHED in set(per_query["config"]):
        wide = _wide(per_query, [MATCHED, LEARNED])
        matched = {"map": float(wide[MATCHED].mean()), "rates": (accuracy or {}).get("error_rate")}
        matched.update(
            _delta_with_ci(wide, MATCHED, LEARNED, n_boot=n_boot, alpha=alpha, seed=seed)
        )
    result = {
        "share_of_gain": share,
        "tests": tests,
        "accuracy": _accuracy_block(accuracy),
        "matched_noise": matched,
        "partial_oracle": _records(partial),
    }
    result["summary"] = learned_summary(result)
    return _json_safe(result)


def _records(table: pd.DataFrame) -> list[dict[str, Any]] | None:
    return None if table.empty else table.to_dict(orient="records")


def _json_safe(value: Any) -> Any:
    """NaN / inf -> None, numpy scalars -> Python ones, recursively (report.json is written
    with ``allow_nan=False``)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def learned_summary(result: Mapping[str, Any]) -> str:
    """One or two sentences a reader can check against the numbers beside them."""
    share = result.get("share_of_gain")
    if not share or share.get("estimate") is None:
        head = "The learned router's share of the oracle's gain cannot be computed" + (
            f" ({share['note']})" if share and share.get("note") else ""
        )
    else:
        m = share["map"]
        head = (
            f"The learned router keeps {_pct(share['estimate'])} "
            f"[{_pct(share['ci_low'])}, {_pct(share['ci_high'])}] of the oracle's gain over the "
            f"backbone (mAP {m['learned']:.3f} against backbone {m['backbone']:.3f} and oracle "
            f"{m['oracle']:.3f})"
        )
    tests = {t["reference"]: t for t in result.get("tests") or []}
    if BACKBONE in tests and tests[BACKBONE]["p"] is not None:
        head += f"; against the backbone alone p = {tests[BACKBONE]['p']:.2g}"
    acc = result.get("accuracy")
    if acc and acc.get("mean_accuracy") is not None:
        # "above" only when most groups beat a constant guess beyond binomial noise
        where = "above" if acc["groups_above_majority"] > acc["groups_tested"] / 2 else "at"
        head += (
            f"; its per-group accuracies (mean {acc['mean_accuracy']:.3f}) sit {where} the "
            f"majority-class rate (mean {acc['mean_majority_rate']:.3f}; above it beyond "
            f"binomial noise in {acc['groups_above_majority']} of {acc['groups_tested']} groups), "
            f"balanced accuracy {acc['mean_balanced_accuracy']:.3f}"
        )
    partial = result.get("partial_oracle")
    if partial:
        top = partial[0]
        head += (
            f". Fixing one group's predictions helps most for {top['group']} "
            f"(ΔmAP {top['delta_map']:+.3f})"
        )
    return head + "."

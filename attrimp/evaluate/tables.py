"""The result tables built from the per-query table: one row per configuration, the paired Δ
of switching each group off, and the leave-one-out importance with its identity bootstrap.

Why here and not in the study: they are evaluation results (what `ConditionEvaluator.table`
writes per condition, aggregated), and ``attrimp ablate`` builds the same tables without a
study. Their columns are the result-table contract of ``docs/architecture.md``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def config_table(per_query: pd.DataFrame, groups: list[str]) -> pd.DataFrame:
    """One row per configuration: mAP, rank-1/5/10, mINP over valid queries + group-on columns."""
    valid = per_query[per_query["valid"]]
    rows = []
    for (config, design), g in valid.groupby(["config", "design"], sort=False):
        fh = g["first_hit"].to_numpy()
        row = {
            "config": config,
            "design": design,
            "mAP": float(g["ap"].mean()),
            "rank1": float(np.mean(fh <= 1)),
            "rank5": float(np.mean(fh <= 5)),
            "rank10": float(np.mean(fh <= 10)),
            "mINP": float(g["inp"].mean()),
            "queries": len(g),
        }
        row.update({grp: int(g[f"on_{grp}"].iloc[0]) for grp in groups})
        rows.append(row)
    return pd.DataFrame(rows)


def delta_table(per_query: pd.DataFrame, groups: list[str], *, prefix: str = "") -> pd.DataFrame:
    """Each query's AP with all experts minus its AP without each group (paired Δ).

    ``prefix`` selects the family of configurations: "" for test-time switching on the one
    trained model, ``"retrain:"`` for the models retrained per configuration.
    """
    from attrimp.evaluate.designs import off_conditions

    full = per_query[per_query["config"] == f"{prefix}full"].set_index("query")
    off = off_conditions(groups)  # the leave-one-out design names its conditions
    rows = []
    for g in groups:
        if g not in off:
            continue
        name = f"{prefix}{off[g]}"
        other = per_query[per_query["config"] == name].set_index("query")
        if other.empty or full.empty:
            continue
        both = full[["pid", "ap", "valid"]].join(other[["ap"]], rsuffix="_without", how="inner")
        both = both[both["valid"]]
        rows.append(
            pd.DataFrame(
                {
                    "query": both.index,
                    "pid": both["pid"].to_numpy(),
                    "group": g,
                    "ap_full": both["ap"].to_numpy(),
                    "ap_without": both["ap_without"].to_numpy(),
                    "delta_ap": (both["ap"] - both["ap_without"]).to_numpy(),
                }
            )
        )
    if not rows:
        return pd.DataFrame(columns=["query", "pid", "group", "ap_full", "ap_without", "delta_ap"])
    return pd.concat(rows, ignore_index=True)


def leave_one_out_importance(
    deltas: pd.DataFrame, *, seed: int = 0, n_boot: int = 2000, level: float = 0.95
) -> pd.DataFrame:
    """ΔmAP of switching each group off, with an identity-cluster bootstrap CI.

    Queries of one identity share its annotation and its experts, so the bootstrap resamples
    identities, not queries (a query-level bootstrap would give CIs that are too narrow).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for g, d in deltas.groupby("group", sort=False):
        per_id = d.groupby("pid")["delta_ap"].agg(["sum", "count"])
        sums, counts = per_id["sum"].to_numpy(), per_id["count"].to_numpy()
        idx = rng.integers(0, len(per_id), size=(n_boot, len(per_id)))
        boot = sums[idx].sum(1) / counts[idx].sum(1)
        lo, hi = np.quantile(boot, [(1 - level) / 2, 1 - (1 - level) / 2])
        rows.append(
            {
                "attribute": g,
                "delta_map": float(d["delta_ap"].mean()),
                "ci_low": float(lo),
                "ci_high": float(hi),
                "queries": len(d),
                "identities": len(per_id),
                "share_hurt": float(np.mean(d["delta_ap"] > 0)),
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values("delta_map", ascending=False, kind="stable").reset_index(drop=True)

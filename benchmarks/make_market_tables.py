"""A Market-1501-shaped study table without training or sweeping, for timing the statistics stage.

Why: the full-size reference run (`bench_reference_study.py --size cpu`) takes ~30 minutes of
training and sweeping before its analyses; a change to the battery should be timed on tables of
the same shape, side by side with the code before it, in minutes. This writes what a finished
`attrimp study run` leaves in ``tables/`` — ``per_query.parquet`` (one row per query per
condition) and ``configs.csv`` — for the study's own conditions on the Market-1501 schema
(full, backbone, leave-one-out, only-one, balanced random subsets, counterfactuals, noisy), with
3,368 queries of 750 identities as in Market-1501's query split, and the config TOML that
`bench_study_analyses.py` reads::

    .venv/bin/python benchmarks/make_market_tables.py --out runs/market-tables
    .venv/bin/python benchmarks/bench_study_analyses.py runs/market-tables --config runs/market-tables/config.toml

AP is simulated on the logit scale: an identity effect, a configuration effect (the groups
interact, so configurations differ beyond their groups' additive effects), and planted effects of
upcolor and downcolor when their experts are on. The numbers mean nothing; the shape is the point.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from attrimp.evaluate.ablation import make_conditions
from attrimp.model.schema import load_schema
from attrimp.study.run import config_table

DESIGNS = (
    "full",
    "backbone",
    "leave_one_out",
    "only_one",
    "random_subsets",
    "counterfactual",
    "noisy",
)
PLANTED = {"upcolor": 1.2, "downcolor": 1.0, "gender": 0.2}
CONFIG_TOML = """name = "market-tables"
[data]
dataset = "synthetic"
[ablation]
random_subsets = {subsets}
[analysis]
alpha = 0.05
seed = 0
repeats = 3
"""


def _queries(schema, n_queries: int, n_ids: int, rng: np.random.Generator) -> pd.DataFrame:
    """Query rows with identity-level attributes drawn from each group's values."""
    pid = np.sort(rng.integers(0, n_ids, n_queries))
    ids = {g.name: rng.choice(list(g.values), n_ids) for g in schema.groups}
    frame = pd.DataFrame({"query": [f"q{i:05d}.jpg" for i in range(n_queries)], "pid": pid})
    frame["camid"] = rng.integers(0, 6, n_queries)
    for name, values in ids.items():
        frame[name] = values[pid]
    return frame


def _condition_rows(queries, cond, groups, base_logit, cfg_effect) -> pd.DataFrame:
    """One condition's per-query rows: AP from the planted effects of the groups that are on."""
    logit = base_logit + cfg_effect
    for g, effect in PLANTED.items():
        if g in cond.groups_on:
            logit = logit + effect
    ap = 1.0 / (1.0 + np.exp(-logit))
    first_hit = np.maximum(1, np.round(1.0 / np.clip(ap, 0.02, 1.0))).astype(int)
    rows = queries.assign(config=cond.name, design=cond.design, ap=ap)
    rows["rank1"] = (first_hit == 1).astype(int)
    rows["first_hit"] = first_hit
    rows["inp"] = np.clip(ap * 0.9, 0, 1)
    rows["valid"] = True
    for g in groups:
        rows[f"on_{g}"] = int(g in cond.groups_on)
    return rows


def make_tables(out: Path, *, n_queries: int, n_ids: int, subsets: int, seed: int) -> None:
    schema = load_schema("market1501")
    groups = list(schema.group_names)
    rng = np.random.default_rng(seed)
    queries = _queries(schema, n_queries, n_ids, rng)
    identity = rng.normal(0.0, 1.0, n_ids)[queries["pid"].to_numpy()]
    base = -1.5 + identity + rng.normal(0.0, 0.5, n_queries)
    conditions = make_conditions(schema, DESIGNS, random_subsets=subsets, seed=seed)
    parts = [_condition_rows(queries, c, groups, base, rng.normal(0.0, 0.15)) for c in conditions]
    per_query = pd.concat(parts, ignore_index=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    per_query.to_parquet(out / "tables" / "per_query.parquet", index=False)
    config_table(per_query, groups).to_csv(out / "tables" / "configs.csv", index=False)
    (out / "config.toml").write_text(CONFIG_TOML.format(subsets=subsets))
    print(f"{len(per_query):,} rows, {len(conditions)} conditions -> {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=3368)
    parser.add_argument("--identities", type=int, default=750)
    parser.add_argument("--subsets", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_tables(
        args.out,
        n_queries=args.queries,
        n_ids=args.identities,
        subsets=args.subsets,
        seed=args.seed,
    )


if __name__ == "__main__":
    main()

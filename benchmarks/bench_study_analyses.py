"""The study's statistics stage alone, on the tables a finished `attrimp study run` wrote.

Why: at full size the sweep takes minutes to tens of minutes, the analyses a few; a change to
the battery should be measured on the real full-size tables without redoing the sweep. Reads
``STUDY/tables/per_query.parquet`` and ``configs.csv`` and the run's config, runs
`attrimp.study.analyses.run_study_analyses` exactly as `study run` does, with the same stage
clock, and prints the stage table (seconds, rows, peak memory) in Markdown::

    .venv/bin/python benchmarks/bench_study_analyses.py runs/bench-ref-cpu/study --config runs/bench-ref-cpu/config.toml
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from attrimp.config import load_config
from attrimp.model.schema import load_schema
from attrimp.study.analyses import run_study_analyses
from attrimp.study.run import StageClock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="the --out folder of a finished study run")
    parser.add_argument("--config", type=Path, required=True, help="the run's config TOML")
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()
    per_query = pd.read_parquet(args.study / "tables" / "per_query.parquet")
    configs = pd.read_csv(args.study / "tables" / "configs.csv")
    cfg = load_config(args.config)
    schema = load_schema(cfg.data.schema or "market1501")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-analyses-"))
    clock = StageClock()
    start = time.perf_counter()
    clock.begin("analyses")
    run_study_analyses(per_query, configs, schema, cfg, out, clock=clock)
    clock.end()
    wall = time.perf_counter() - start
    from bench_reference_study import cpu_name  # beside this script

    print(
        f"`bench_study_analyses.py` on {cpu_name()}, "
        f"{len(per_query):,} per-query rows; analyses {wall:.1f} s\n"
    )
    print("| stage | wall s | rows | peak memory MB |\n| --- | ---: | ---: | ---: |")
    for rec in clock.records:
        print(
            f"| {rec['stage']} | {rec.get('seconds', float('nan')):.1f} | "
            f"{rec.get('rows', '')} | {rec.get('peak_rss_mb', float('nan')):.0f} |"
        )


if __name__ == "__main__":
    main()

"""Regenerate the bundled example table studies/examples/market_like.csv and its grouping file.

The table is a Market-like per-query result table (750 identities, 12 attribute groups / 27
attribute columns) from ``studies.simulate.simulate_reid_table`` with planted effects on the
logit scale of ``ap``: lower- and upper-body colour and gender strongest, a strong but rare hat
(~3% of identities). It stays small (< 1 MB) so `attrimp study analyze` on it runs in well
under a minute on two cores; ``ap`` is written with 6 significant digits for the same reason.

    .venv/bin/python benchmarks/make_example_table.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

from studies.simulate import market_like_schema_toml, simulate_reid_table

#: the planted truth of the example (logit-scale shifts, see studies/simulate.py)
EFFECTS = {"downcolor": 1.2, "upcolor": 1.0, "gender": 0.8, "hat": 1.5}
N_ROWS = 4000
SEED = 2024

EXAMPLES = Path(__file__).resolve().parents[1] / "studies" / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=N_ROWS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=EXAMPLES)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    df = simulate_reid_table(args.rows, effects=EFFECTS, outcome="ap", seed=args.seed)
    csv = args.out / "market_like.csv"
    df.to_csv(csv, index=False, float_format="%.6g", lineterminator="\n")
    toml = args.out / "market_like_schema.toml"
    toml.write_text(market_like_schema_toml(), encoding="utf-8")
    print(f"wrote {csv} ({csv.stat().st_size / 1e3:.0f} kB, {len(df)} rows) and {toml}")


if __name__ == "__main__":
    main()

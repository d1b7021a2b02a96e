"""Wall time of a comparison study against one built-in study, side by side in one run.

Why: the issue's bound is relative ("at most 7x one built-in study"), and this machine is shared,
so both are measured in the same invocation, each in a fresh folder, as the CLI runs them (a
subprocess each, so neither inherits the other's warmed caches). Prints a Markdown table::

    .venv/bin/python benchmarks/bench_compare.py                      # compare_synthetic.toml
    .venv/bin/python benchmarks/bench_compare.py --config my_compare.toml --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ATTRIMP = [sys.executable, "-m", "attrimp"]


def _timed(args: list[str], out: Path) -> float:
    """Seconds of one `attrimp study run` into a fresh ``out`` (it must succeed)."""
    start = time.perf_counter()
    done = subprocess.run(
        [*ATTRIMP, "study", "run", *args, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"attrimp study run {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", type=Path, default=REPO / "studies" / "configs" / "compare_synthetic.toml"
    )
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (median kept)")
    parser.add_argument("--keep", type=Path, default=None, help="write the runs here and keep them")
    args = parser.parse_args()
    single, compare = [], []
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as scratch:
        tmp = args.keep or scratch
        for r in range(args.rounds):
            single.append(_timed([], Path(tmp) / f"single-{r}"))
            compare.append(_timed([str(args.config)], Path(tmp) / f"compare-{r}"))
    one, many = statistics.median(single), statistics.median(compare)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"| run | wall s (median of {args.rounds}) |")
    print("| --- | ---: |")
    print(f"| built-in study (`attrimp study run`) | {one:.1f} |")
    print(f"| comparison (`attrimp study run {args.config.name}`) | {many:.1f} |")
    print(f"| ratio | {many / one:.2f}x |")


if __name__ == "__main__":
    main()

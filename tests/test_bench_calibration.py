"""The calibration benchmark runs (a smoke test, so the script cannot rot between sessions)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_bench_calibration_prints_its_tables():
    for extra in ([], ["--power"]):
        out = subprocess.run(
            [sys.executable, "benchmarks/bench_calibration.py", "--sims", "2", "--cells", "E"]
            + extra,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout
        rows = [line for line in out.splitlines() if line.startswith("| E:")]
        assert len(rows) == 1, out
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        if not extra:  # two rates in [0, 1]
            assert all(0.0 <= float(c) <= 1.0 for c in cells[1:3])
        else:
            assert cells[2].startswith("bag ") and cells[3].startswith("bag ")

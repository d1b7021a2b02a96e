"""benchmarks/bench_reference_study.py at its `tiny` size: the same code path as the full-size
CPU and GPU runs (preset world, reference config, `attrimp study run`, stage table)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import REPO


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_reference_study", REPO / "benchmarks" / "bench_reference_study.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configs_keep_the_reference_schema_and_designs(tmp_path):
    """Every size is the reference config with its data paths and a few replacements: the
    Market schema and every default design stay (no [ablation] designs key)."""
    bench = _bench()
    reference = tomllib.loads((REPO / "studies/configs/market1501_clip_vitb16.toml").read_text())
    for size in ("gpu", "cpu", "tiny"):
        cfg = bench.study_config(size, tmp_path / "w", None)
        assert tomllib.loads(bench.to_toml(cfg)) == cfg  # written as it is meant
        assert cfg["data"]["dataset"] == "market1501"
        assert cfg["data"]["attributes"] == str(tmp_path / "w" / "market_attribute.mat")
        assert "designs" not in cfg.get("ablation", {})
    gpu = bench.study_config("gpu", tmp_path / "w", None)
    assert gpu["model"]["backbone"] == reference["model"]["backbone"] == "clip:ViT-B-16"
    assert gpu["model"]["img_size"] == [256, 128] and gpu["train"]["amp"] == "auto"
    assert gpu["train"]["epochs"] == reference["train"]["epochs"]
    assert gpu["train"]["lr"] == reference["train"]["lr"]
    assert bench.study_config("gpu", tmp_path / "w", 2)["train"]["epochs"] == 2


@pytest.mark.slow
def test_tiny_size_runs_the_study_and_tabulates_every_stage(tmp_path):
    bench = _bench()
    result, table = bench.run_reference("tiny", tmp_path)
    counts = result["world_counts"]
    d = result["data"]
    # the loader read the preset world as planned: junk dropped, distractors in the gallery
    assert (d["train_images"], d["query_images"], d["gallery_images"]) == (
        counts["train"],
        counts["query"],
        counts["gallery"],
    )
    assert counts["junk_images"] > 0 and counts["distractor_images"] > 0
    stages = {s["stage"]: s for s in result["timings"]["stages"]}
    # the reference designs without the learned router: 1 + 1 + 12 + 12 + 8 + 39 + 1
    assert stages["sweep"]["conditions"] == 74
    for line in (
        "world generation",
        "data loading",
        "training",
        "backbone-prefix cache",
        "condition sweep",
        "74 conditions",
        "battery `switching`",
        "battery `configurations`",
        "battery `attributes`",
        "paired tests",
        "report",
        "img/s",
        "s/condition",
    ):
        assert line in table, line
    assert (tmp_path / "stage_table.md").read_text() == table
    assert (tmp_path / "study" / "report.html").exists()
    # the study printed each stage's cost as it ended
    log = (tmp_path / "study.log").read_text()
    assert "switching: " in log and "s, peak RSS" in log
    # a second run reuses the world instead of drawing it again
    assert bench.draw_world(tmp_path / "world", "tiny", tmp_path)["reused"] is True
    # the statistics stage alone, again, on the tables the study wrote
    again = [str(tmp_path / "study"), "--config", str(tmp_path / "config.toml")]
    script = REPO / "benchmarks" / "bench_study_analyses.py"
    proc = subprocess.run(
        [sys.executable, str(script), *again, "--out", str(tmp_path / "again")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "| analyses.switching |" in proc.stdout and "| analyses.attributes |" in proc.stdout

"""mAP is reported the same way in every command: as a fraction from 0 to 1 (the study report,
ablate and study run already did; evaluate and train printed percent)."""

from __future__ import annotations

import numpy as np
from rich.console import Console
from typer.testing import CliRunner

from attrimp.cli import app
from attrimp.cli.train_cmd import _print_metrics
from attrimp.evaluate.evaluation import evaluate_features, save_features
from tests.test_evaluation import _sets


def test_train_prints_metrics_as_fractions():
    console = Console(record=True, width=200)
    m = {"num_query": 3, "num_gallery": 9, "mAP": 0.8955, "rank1": 0.9236}
    m |= {"rank5": 1.0, "rank10": 1.0, "mINP": 0.8374}
    _print_metrics(console, "oracle", m)
    text = console.export_text()
    assert "0.8955" in text and "0.9236" in text and "0.8374" in text
    assert "89.55" not in text and "92.36" not in text


def test_evaluate_prints_map_as_a_fraction(tmp_path):
    q, g = _sets(np.random.default_rng(2))
    feats = save_features(tmp_path / "run.npz", q, g)
    res = CliRunner().invoke(app, ["evaluate", str(feats), "--max-rank", "5"])
    assert res.exit_code == 0, res.output
    expected = evaluate_features(q, g, max_rank=5)
    assert f"{expected.mAP:.4f}" in res.output
    assert f"{100 * expected.mAP:.2f}" not in res.output

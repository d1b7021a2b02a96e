"""The whole config is validated before any work (issue 12): a value that would fail after the
training and the sweep (``[analysis] alpha = 1.5``) or poison every gradient (``lr = nan``) is
one sentence naming the key, exit 2, and nothing is created."""

from __future__ import annotations

import math
import re
from importlib import resources

import pytest

from attrimp.config import RANGES, config_from_dict, load_config
from attrimp.errors import ConfigError
from tests.test_reliability_output import TINY_CONFIG, cli

#: one out-of-range value per checked key (the test below insists that every key has one)
BAD = {
    "data.num_workers": -1,
    "data.synthetic.identities": 1,
    "data.synthetic.cameras": 12,
    "data.synthetic.images_per_camera": 0,
    "data.synthetic.size": [16, 16],
    "data.synthetic.seed": -3,
    "model.img_size": [0, 128],
    "model.stride": 0,
    "experts.blocks": -1,
    "experts.rank": 0,
    "experts.alpha": math.nan,
    "experts.dropout": 1.0,
    "router.attribute_loss_weight": -0.5,
    "train.lr": math.nan,
    "train.expert_lr_scale": 0.0,
    "train.weight_decay": math.inf,
    "train.warmup_epochs": -1,
    "train.predicted_gates_p": 1.5,
    "train.label_smoothing": 1.0,
    "train.triplet_margin": -0.3,
    "train.grad_clip": 0.0,
    "train.seed": -1,
    "train.eval_every": -2,
    "train.max_steps_per_epoch": -1,
    "ablation.random_subsets": -1,
    "ablation.seed": 2**32,
    "analysis.alpha": 1.5,
    "analysis.seed": -1,
    "analysis.repeats": 0,
    "analysis.margin": 0.0,
    "eval.max_rank": 0,
    "eval.batch_size": 0,
}


def _nested(key: str, value) -> dict:
    out: dict = {}
    node = out
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return out


def test_every_range_rule_has_a_bad_value_here():
    assert sorted(BAD) == sorted(k for k, _, _ in RANGES)


@pytest.mark.parametrize("key", sorted(BAD))
def test_out_of_range_value_names_its_key(key):
    with pytest.raises(ConfigError, match=f"^config: {re.escape(key)} must be "):
        config_from_dict(_nested(key, BAD[key]))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("analysis.alpha", 0.05),
        ("train.lr", 3.5e-4),
        ("train.triplet_margin", False),  # soft margin
        ("train.grad_clip", False),
        ("model.stride", 12),
        ("experts.dropout", 0.1),
        ("data.synthetic.size", [32, 16]),
    ],
)
def test_in_range_values_pass(key, value):
    config_from_dict(_nested(key, value))


def test_the_bundled_configs_are_valid():
    folder = resources.files("studies") / "configs"
    names = [p.name for p in folder.iterdir() if p.name.endswith(".toml")]
    assert "synthetic_study.toml" in names
    for name in names:
        load_config(folder / name)


@pytest.mark.parametrize(
    ("command", "section", "line", "fragment"),
    [
        ("study run", "[analysis]", "alpha = 1.5", "analysis.alpha must be strictly between 0"),
        ("train", "[analysis]", "alpha = 1.5", "analysis.alpha must be strictly between 0"),
        ("train", "[train]", "lr = nan", "train.lr must be a finite number above 0, not nan"),
        ("study run", "[train]", "lr = inf", "train.lr must be a finite number above 0, not inf"),
    ],
)
def test_bad_value_stops_the_cli_before_any_work(
    tmp_path, monkeypatch, capsys, command, section, line, fragment
):
    text = TINY_CONFIG.read_text()
    if section in text:
        text = text.replace(section, f"{section}\n{line}", 1)
    else:
        text += f"\n{section}\n{line}\n"
    if line.startswith("lr"):
        text = text.replace("lr = 1e-3\n", "")
    config = tmp_path / "c.toml"
    config.write_text(text)
    out = tmp_path / "out"
    args = ["train", config, "--out", out] if command == "train" else ["study", "run", config]
    if command == "study run":
        args += ["--out", out]
    code, err = cli(monkeypatch, capsys, *args)
    assert code == 2, err
    assert fragment in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # nothing made: no world, no model, no folder

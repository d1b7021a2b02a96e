from __future__ import annotations

import pytest

from attrimp.config import StudyConfig, config_from_dict, load_config
from attrimp.errors import ConfigError


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        """
name = "tiny"
[model]
backbone = "timm:vit_tiny_patch16_224"
pretrained = "none-here"
img_size = [64, 32]
backbone_kwargs = { depth = 2 }
[experts]
rank = 4
alpha = 8
[train]
epochs = 3
lr = 1e-3
[data.synthetic]
identities = 20
visibility = { hat = 0.0, upcolor = 0.5 }
"""
    )
    cfg = load_config(path)
    assert cfg.name == "tiny"
    assert cfg.model.img_size == (64, 32)
    assert cfg.model.backbone_kwargs == {"depth": 2}
    assert cfg.experts.alpha == 8.0 and isinstance(cfg.experts.alpha, float)
    assert cfg.train.epochs == 3 and cfg.train.lr == 1e-3
    assert cfg.data.synthetic.visibility == {"hat": 0.0, "upcolor": 0.5}
    # untouched sections keep their defaults
    assert cfg.router.name == StudyConfig().router.name


@pytest.mark.parametrize(
    "data, message",
    [
        ({"trian": {}}, "Unknown setting trian"),
        ({"train": {"epoch": 3}}, "Unknown setting train.epoch"),
        ({"train": {"epochs": "three"}}, "train.epochs must be int"),
        ({"train": {"epochs": 0}}, "train.epochs must be at least 1"),
        ({"experts": {"pooling": "median"}}, "experts.pooling must be one of"),
        ({"model": {"img_size": [256]}}, "model.img_size must be a list of 2 values"),
        ({"ablation": {"designs": ["full", "loo"]}}, "unknown design 'loo'"),
        ({"ablation": {"noisy_p": [1.5]}}, "noisy_p values must lie in"),
        ({"data": {"dataset": "market1501"}}, "data.root is required"),
        ({"train": {"epochs": True}}, "train.epochs must be a whole number"),
        ({"data": {"dataset": "market1501", "root": "x", "schema": "my.toml"}}, "data.schema"),
        ({"train": {"id_loss_weight": "high"}}, "train.id_loss_weight must be float"),
        ({"train": {"id_loss_weight": -0.25}}, "train.id_loss_weight must be a finite number of 0"),
        ({"train": {"triplet_loss_weight": True}}, "train.triplet_loss_weight must be float"),
        ({"train": {"triplet_loss_weight": -1}}, "train.triplet_loss_weight must be a finite"),
        ({"train": {"triplet_loss_weight": float("nan")}}, "train.triplet_loss_weight must be a"),
        ({"train": {"id_loss_weight": 0, "triplet_loss_weight": 0}}, "nothing would train"),
        ({"train": {"center_loss_weight": -5e-4}}, "train.center_loss_weight must be a finite"),
    ],
)
def test_bad_settings_name_section_and_key(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data, source="test.toml")


def test_loss_weights_default_to_one_and_take_whole_numbers():
    """1 and 1 is the bag-of-tricks sum every earlier run used; TOML `1` is a valid float."""
    assert (StudyConfig().train.id_loss_weight, StudyConfig().train.triplet_loss_weight) == (1, 1)
    cfg = config_from_dict({"train": {"id_loss_weight": 0, "triplet_loss_weight": 2}})
    assert cfg.train.id_loss_weight == 0.0 and isinstance(cfg.train.id_loss_weight, float)
    assert cfg.train.triplet_loss_weight == 2.0


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_fingerprint_tracks_what_matters():
    a, b = StudyConfig(), StudyConfig()
    assert a.fingerprint() == b.fingerprint()
    b.train.epochs = 2
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint("data", "model") == b.fingerprint("data", "model")

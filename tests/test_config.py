from __future__ import annotations

import dataclasses

import pytest

from attrimp.config import (
    ExpertConfig,
    ModelConfig,
    MoSAICConfig,
    StudyConfig,
    config_from_dict,
    load_config,
)
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
        ({"experts": {"bank": "peft"}}, r"experts.bank must be one of \['adapter', 'lora'\]"),
        ({"experts": {"rank": 0}}, "experts.rank must be at least 1, not 0"),
        ({"experts": {"blocks": -1}}, "experts.blocks must be 0 or more, not -1"),
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


def test_one_model_config_toml_keys_are_its_field_names():
    """[model] and [experts] reach the model under their own names: MoSAICConfig is made of the
    same two dataclasses the TOML is read into, and from_study translates none of them."""
    cfg = config_from_dict(
        {
            "model": {"backbone": "timm:x", "img_size": [64, 32], "camera_embedding": True},
            "experts": {"bank": "lora", "blocks": 3, "dropout": 0.25, "rank": 4, "site": "attn"},
            "router": {"name": "learned", "gates": "soft"},
        }
    )
    model = MoSAICConfig.from_study(cfg, schema="market1501", num_classes=12, num_cameras=6)
    for section in (cfg.model, cfg.experts):
        for f in dataclasses.fields(section):
            assert getattr(model, f.name) == getattr(section, f.name), f.name
    assert (model.bank, model.blocks, model.dropout) == ("lora", 3, 0.25)
    assert (model.camera_count, model.num_classes) == (6, 12)
    assert model.router == "learned" and model.router_kwargs == {"gates": "soft", "norm": "layer"}
    names = {f.name for f in dataclasses.fields(MoSAICConfig)}
    toml_keys = {f.name for f in dataclasses.fields(ModelConfig) + dataclasses.fields(ExpertConfig)}
    assert toml_keys <= names and "expert_blocks" not in names
    assert MoSAICConfig.from_json(model.to_json()) == model
    no_cameras = dataclasses.replace(cfg.model, camera_embedding=False)
    plain = MoSAICConfig.from_study(
        dataclasses.replace(cfg, model=no_cameras), schema="x", num_classes=0, num_cameras=6
    )
    assert plain.camera_count == 0 and not plain.camera_embedding


def test_model_config_checks_its_fields_like_the_toml():
    with pytest.raises(ConfigError, match="Model config: experts.bank must be one of"):
        MoSAICConfig(bank="peft")
    with pytest.raises(ConfigError, match="Model config: experts.dropout must be in"):
        MoSAICConfig(dropout=1.5)
    with pytest.raises(ConfigError, match="Model config: model.adapt must be one of"):
        MoSAICConfig(adapt="half")
    with pytest.raises(ConfigError, match="camera_embedding = true needs camera_count"):
        MoSAICConfig(camera_embedding=True)
    with pytest.raises(ConfigError, match="unknown key 'expert_blocks'"):
        MoSAICConfig.from_dict({"expert_blocks": 2})
    assert MoSAICConfig(camera_count=4).camera_embedding

"""``[data] color = "grayscale"``: the data-transform arm of a comparison."""

from __future__ import annotations

import pytest
from PIL import Image

from attrimp.config import config_from_dict, load_config
from attrimp.data.dataset import build_transforms
from attrimp.errors import ConfigError


def test_grayscale_images_have_three_equal_channels_and_rgb_ones_do_not():
    im = Image.new("RGB", (32, 64), (200, 30, 40))
    # normalisation differs per channel, so compare before it: mean 0, std 1 everywhere
    gray = build_transforms(
        train=False, size=(64, 32), mean=(0, 0, 0), std=(1, 1, 1), grayscale=True
    )(im)
    rgb = build_transforms(train=False, size=(64, 32), mean=(0, 0, 0), std=(1, 1, 1))(im)
    assert gray.shape == rgb.shape == (3, 64, 32)
    assert float((gray[0] - gray[1]).abs().max()) < 1e-6
    assert float((gray[1] - gray[2]).abs().max()) < 1e-6
    assert float((rgb[0] - rgb[1]).abs().max()) > 0.5
    # ITU-R 601 luma of (200, 30, 40): what torchvision's Grayscale computes
    assert float(gray[0].mean()) == pytest.approx(
        (0.299 * 200 + 0.587 * 30 + 0.114 * 40) / 255, abs=0.01
    )


def test_color_changes_the_fingerprint_only_when_set():
    cfg = load_config("studies/configs/synthetic_study.toml")
    rgb = cfg.fingerprint()
    cfg.data.color = "grayscale"
    assert cfg.fingerprint() != rgb
    # the built-in study's fingerprint from before the option existed (report.json, cached runs)
    assert rgb == "f2d06d9a7699b74b"


def test_unknown_color_is_one_sentence():
    with pytest.raises(ConfigError, match=r"data\.color must be one of \['rgb', 'grayscale'\]"):
        config_from_dict({"data": {"color": "sepia"}})

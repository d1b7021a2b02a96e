"""Errors that say what to do next: a missing dataset names the key to edit and where the data
come from, weights that cannot be downloaded fail in seconds with the way out, real but
unsupported models say why, and a bad backbone is reported before any synthetic world is drawn.
No test reaches the network: the hub is offline (conftest) or the probe and download are
replaced by stand-ins that fail the way they would."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

import backbones
from attrimp.cli import main
from attrimp.config import ModelConfig, config_from_dict
from attrimp.errors import CheckpointError, ConfigError
from attrimp.model.mosaic import MoSAICConfig
from attrimp.train.pipeline import check_model
from tests.conftest import REPO

REFERENCE = REPO / "studies" / "configs" / "market1501_clip_vitb16.toml"
TIMM_TINY = "timm:vit_tiny_patch16_224"


def run(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """``attrimp ARGS`` through the console entry point: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["attrimp", *args])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


def one_sentence(code: int, err: str, *fragments: str) -> str:
    """The error is the last line of stderr (progress lines may come before it), one line."""
    assert code == 2, err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error"), err
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


@pytest.fixture
def no_download(monkeypatch):
    """Fail the test if anything tries to build a model with hub weights."""
    import open_clip
    import timm

    def refuse(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise AssertionError("a download was attempted")
        return real_timm(*args, **kwargs)

    real_timm = timm.create_model
    monkeypatch.setattr(timm, "create_model", refuse)
    monkeypatch.setattr(open_clip, "create_model", refuse)


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


# ----------------------------------------------------------------------- the dataset is missing


def test_reference_config_without_the_dataset_names_the_key(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)  # the placeholder paths are relative: nothing there
    code, err = run(monkeypatch, capsys, "study", "run", str(REFERENCE), "--out", "out")
    line = one_sentence(code, err, "[data] root", "Market-1501", "bounding_box_train/")
    assert "does not download the images" in line and str(tmp_path) in line
    code, err = run(monkeypatch, capsys, "train", str(REFERENCE), "--out", "out")
    one_sentence(code, err, "[data] root", "Market-1501")


def test_missing_attribute_file_says_which_command_fetches_it(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "Market-1501-v15.09.15").mkdir(parents=True)
    code, err = run(monkeypatch, capsys, "train", str(REFERENCE), "--out", "out")
    one_sentence(
        code, err, "[data] attributes", "attrimp data fetch-attributes market1501 --out", "--url"
    )


# ----------------------------------------------------------------- weights that cannot be had


def test_offline_hub_fails_at_once_with_the_way_out(no_download, empty_hub_cache):
    for name, tag in ((TIMM_TINY, True), ("clip:ViT-B-16", "openai")):
        start = time.perf_counter()
        with pytest.raises(CheckpointError) as info:
            backbones.build(name, pretrained=tag)
        assert time.perf_counter() - start < 10
        message = str(info.value)
        assert "HF_HUB_OFFLINE" in message and 'pretrained = "<local file>"' in message
        assert name in message and "\n" not in message


def test_unreachable_hub_fails_after_one_probe(monkeypatch, no_download, empty_hub_cache):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    probes = []
    monkeypatch.setattr(backbones, "_reachable", lambda url: probes.append(url) or False)
    with pytest.raises(CheckpointError, match='cannot be reached.*pretrained = "<local file>"'):
        backbones.build(TIMM_TINY, pretrained=True)
    assert len(probes) == 1 and probes[0].startswith("https://")


def test_a_download_that_fails_midway_is_one_sentence(monkeypatch, empty_hub_cache):
    """The probe passes but the hub client then gives up (hub down): its chained errors become
    one CheckpointError that keeps the innermost reason."""
    import timm

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(backbones, "_reachable", lambda url: True)

    def hub_down(*args, **kwargs):
        try:
            raise ConnectionError("503 Service Unavailable")
        except ConnectionError as exc:
            raise RuntimeError("Failed to download weights") from exc

    monkeypatch.setattr(timm, "create_model", hub_down)
    with pytest.raises(CheckpointError) as info:
        backbones.build(TIMM_TINY, pretrained=True)
    assert "503 Service Unavailable" in str(info.value)
    assert 'pretrained = "<local file>"' in str(info.value)


def test_a_cached_model_is_not_probed(monkeypatch, tmp_path):
    from huggingface_hub import constants

    family = backbones.get_family("timm")
    repo, _ = family.weight_source("vit_tiny_patch16_224", "augreg_in21k_ft_in1k")
    snapshot = tmp_path / ("models--" + repo.replace("/", "--")) / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(backbones, "_reachable", lambda url: pytest.fail("probed"))
    assert backbones._fetch_problem(family, "vit_tiny_patch16_224", "augreg_in21k_ft_in1k") is None


def test_train_without_network_exits_2_in_one_sentence(
    monkeypatch, capsys, tmp_path, no_download, empty_hub_cache
):
    config = tmp_path / "c.toml"
    text = (REPO / "studies" / "configs" / "synthetic_tiny.toml").read_text(encoding="utf-8")
    text = text.replace("pretrained = false", 'pretrained = "default"')
    text = text.replace("backbone_kwargs = { tiny = true }", "backbone_kwargs = { depth = 1 }")
    config.write_text(text, encoding="utf-8")
    code, err = run(monkeypatch, capsys, "train", str(config), "--out", str(tmp_path / "run"))
    one_sentence(code, err, "Could not download", 'pretrained = "<local file>"', "[model]")


# --------------------------------------------------------------------- the pretrained default


def test_the_default_pretrained_fits_every_family():
    assert MoSAICConfig().pretrained == ModelConfig().pretrained == "default"
    timm_family, clip_family = backbones.get_family("timm"), backbones.get_family("clip")
    tag, _ = backbones._resolve_pretrained(timm_family, "vit_tiny_patch16_224", "default")
    assert tag == timm_family.list_pretrained("vit_tiny_patch16_224")[0]
    assert backbones._resolve_pretrained(clip_family, "ViT-B-16", "default") == ("openai", None)
    # a timm backbone under the default no longer meets "unknown pretrained tag 'openai'"
    cfg = config_from_dict({"model": {"backbone": TIMM_TINY, "img_size": [64, 32]}})
    check_model(cfg)


# ---------------------------------------------------------------- models that are not supported


@pytest.mark.parametrize(
    "name, fragments",
    [
        ("timm:swin_base_patch4_window7_224", ["known timm model, but not supported", "windowed"]),
        ("timm:convnext_base", ["known timm model, but not supported", "convolutional"]),
        ("timm:beit_base_patch16_224", ["known timm model, but not supported", "BEiT"]),
        ("clip:RN50", ["known clip model, but not supported", "ResNet"]),
        # models that pool by averaging or an attention head now build through their own
        # pooling (tests/test_backbone_pooling.py); what stays refused says its true reason
        ("clip:MobileCLIP-B", ["known clip model, but not supported", "vision_transformer_hybrid"]),
        ("clip:coca_ViT-B-32", ["known clip model, but not supported", "attentional pooler"]),
    ],
)
def test_known_but_unsupported_models_say_why(name, fragments):
    with pytest.raises(ConfigError) as info:
        backbones.check(name)
    message = str(info.value)
    assert "unknown" not in message and "closest" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_dynamic_img_size_with_a_grid_that_does_not_fit_is_refused_with_sizes_that_do():
    import torch

    name, kwargs = "timm:vit_small_patch14_dinov2", {"tiny": True, "dynamic_img_size": True}
    with pytest.raises(ConfigError, match=r"img_size = \[252, 126\] or \[266, 140\]"):
        backbones.build(name, img_size=(256, 128), **kwargs)
    with pytest.raises(ConfigError, match="252, 126"):
        backbones.check(name, img_size=(256, 128), **kwargs)
    bb = backbones.build(name, img_size=(252, 126), **kwargs)  # the suggested size runs
    assert bb(torch.zeros(1, 3, 252, 126)).shape == (1, bb.width)


def test_a_bad_backbone_is_reported_before_the_world_is_drawn(monkeypatch, capsys, tmp_path):
    config = tmp_path / "c.toml"
    text = (REPO / "studies" / "configs" / "synthetic_tiny.toml").read_text(encoding="utf-8")
    config.write_text(text.replace(TIMM_TINY, "timm:swin_base_patch4_window7_224"), "utf-8")
    for command in (["study", "run"], ["train"]):
        out = tmp_path / command[-1]
        code, err = run(monkeypatch, capsys, *command, str(config), "--out", str(out))
        one_sentence(code, err, "[model] backbone", "not supported")
        assert not list(Path(out).rglob("*.jpg")), "the synthetic world was drawn first"


def test_a_misspelt_backbone_is_reported_before_out_is_touched(monkeypatch, capsys, tmp_path):
    """The whole config, backbone name included, is checked before any work: no data stage
    line, no --out folder (not even one holding only the lock), the close names offered."""
    config = tmp_path / "c.toml"
    text = (REPO / "studies" / "configs" / "synthetic_tiny.toml").read_text(encoding="utf-8")
    config.write_text(text.replace(TIMM_TINY, "timm:vit_tiny_patch16_242"), "utf-8")
    for command in (["study", "run"], ["train"]):
        out = tmp_path / "runs" / command[-1]
        code, err = run(monkeypatch, capsys, *command, str(config), "--out", str(out))
        one_sentence(code, err, "[model] backbone", "vit_tiny_patch16_242", "vit_tiny_patch16_224")
        assert "data" not in err.strip().splitlines()[0].split(), err  # no stage ran first
        assert not (tmp_path / "runs").exists(), sorted((tmp_path / "runs").rglob("*"))


# --------------------------------------------------------- one lock per folder, every command


def test_evaluate_and_ablate_take_the_out_lock(monkeypatch, capsys, tmp_path):
    """`evaluate` (the folder of --table / --summary) and `ablate` (--out) stop at once, in one
    sentence, while another command holds the folder, as study / train / data synth do; a
    refused input leaves no folder behind."""
    from attrimp.io import LOCK_FILE, output_folder

    held = tmp_path / "held"
    config = REPO / "studies" / "configs" / "synthetic_tiny.toml"
    with output_folder(held):
        args = ["evaluate", str(tmp_path / "f.npz"), "--table", str(held / "t.csv")]
        one_sentence(*run(monkeypatch, capsys, *args), "--table folder", "in use by another")
        args = ["ablate", str(config), "--checkpoint", str(tmp_path / "no"), "--out", str(held)]
        one_sentence(*run(monkeypatch, capsys, *args), "--out", "in use by another")
    assert sorted(p.name for p in held.iterdir()) == [LOCK_FILE]  # nothing else written
    fresh = tmp_path / "fresh"
    args = ["ablate", str(config), "--checkpoint", str(tmp_path / "no"), "--out", str(fresh)]
    code, err = run(monkeypatch, capsys, *args)
    assert code == 2 and "Traceback" not in err, err
    args = ["evaluate", str(tmp_path / "f.npz"), "--summary", str(fresh / "s.json")]
    one_sentence(*run(monkeypatch, capsys, *args), "f.npz", "save_features")
    assert not fresh.exists()


# ------------------------------------------------------------- inputs made by another command


def test_missing_feature_file_says_what_makes_one(monkeypatch, capsys, tmp_path):
    code, err = run(monkeypatch, capsys, "evaluate", str(tmp_path / "features.npz"))
    one_sentence(code, err, "features.npz", "save_features", "--checkpoint")


def test_missing_attribute_file_for_priors(monkeypatch, capsys, tmp_path):
    missing = tmp_path / "data" / "market_attribute.mat"
    args = ["data", "priors", "--dataset", "market1501", "--attributes", str(missing)]
    code, err = run(monkeypatch, capsys, *args, "--out", str(tmp_path / "p"))
    one_sentence(code, err, "attrimp data fetch-attributes market1501 --out")


def test_fetch_without_network_suggests_url(monkeypatch, capsys, tmp_path):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    args = ["data", "fetch-attributes", "market1501", "--out", str(tmp_path)]
    code, err = run(monkeypatch, capsys, *args)
    one_sentence(code, err, "Name or service not known", "--url file://")

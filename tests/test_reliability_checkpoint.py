"""Checkpoints that are never silently wrong (issue 12): the trainer state is checked against
its SHA-256, a `latest` pointer to a missing folder falls back to the newest complete
checkpoint, temporary folders of a killed save are removed on the next start, weights refuse a
model of another config, and a fine-tuned backbone exports and re-imports at any input size."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch

import backbones
from attrimp.config import config_from_dict
from attrimp.errors import CheckpointError
from attrimp.model.checkpoint import load_weights, save_checkpoint
from attrimp.train.pipeline import build_model, datasets, prepare_data
from attrimp.train.training import (
    STATE_JSON,
    STATE_WEIGHTS,
    latest_checkpoint,
    remove_stale_temporaries,
    train,
)
from backbones.base import resample_pos_embed, unwrap_site_keys
from tests.test_model import randomise, tiny_model
from tests.test_training import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny model trained for one epoch (two steps): ``(cfg, data, out)``."""
    cfg = config_from_dict(
        {**TINY, "train": {**TINY["train"], "epochs": 1, "max_steps_per_epoch": 2}}
    )
    work = tmp_path_factory.mktemp("run")
    data = prepare_data(cfg, work / "data")
    _train(cfg, data, work / "out", epochs=1)
    return cfg, data, work / "out"


def _train(cfg, data, out, *, epochs: int):
    torch.manual_seed(0)
    model = build_model(cfg, data)
    train_set, _, _ = datasets(model, data)
    cfg.train.epochs = epochs
    return train(model, train_set, cfg.train, out, progress=False)


def _copy(run, tmp_path):
    import shutil

    cfg, data, out = run
    shutil.copytree(out, tmp_path / "out")
    return cfg, data, tmp_path / "out"


# ------------------------------------------------------------------------- trainer state
def test_trainer_state_records_its_sha256(run):
    import hashlib

    folder = latest_checkpoint(run[2])
    doc = json.loads((folder / STATE_JSON).read_text())
    digest = hashlib.sha256((folder / STATE_WEIGHTS).read_bytes()).hexdigest()
    assert doc["state_sha256"] == digest


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_trainer_state_is_one_sentence_not_a_silent_resume(run, tmp_path, damage):
    cfg, data, out = _copy(run, tmp_path)
    state = latest_checkpoint(out) / STATE_WEIGHTS
    blob = bytearray(state.read_bytes())
    if damage == "flip":
        middle = len(blob) // 2
        blob[middle : middle + 10] = bytes(b ^ 0xFF for b in blob[middle : middle + 10])
    else:
        blob = blob[: len(blob) // 2]
    state.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"does not match the SHA-256 .*--no-resume\.$"):
        _train(cfg, data, out, epochs=2)


def test_unreadable_trainer_json_is_one_sentence(run, tmp_path):
    cfg, data, out = _copy(run, tmp_path)
    (latest_checkpoint(out) / STATE_JSON).write_text('{"epoch": 1')
    with pytest.raises(CheckpointError, match=r"trainer state in .* cannot be read"):
        _train(cfg, data, out, epochs=2)


def test_trainer_state_error_through_the_cli_is_exit_2(run, tmp_path):
    """The CLI's own resume: the same sentence, exit 2, no traceback."""
    cfg, data, out = _copy(run, tmp_path)
    (tmp_path / "c.toml").write_text(_toml(cfg))
    state = latest_checkpoint(out) / STATE_WEIGHTS
    state.write_bytes(state.read_bytes()[:100])
    proc = subprocess.run(
        [sys.executable, "-m", "attrimp", "train", str(tmp_path / "c.toml"), "--out", str(out)]
        + ["--epochs", "2", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "SHA-256" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def _toml(cfg) -> str:
    """The config as TOML (with its data root pointing at the world already made)."""
    d = cfg.to_dict()
    lines = []

    def emit(table: dict, prefix: str) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if prefix:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            if v is None:
                v = False
            lines.append(f"{k} = {json.dumps(list(v) if isinstance(v, tuple) else v)}")
        for k, v in table.items():
            if isinstance(v, dict) and k not in ("visibility", "backbone_kwargs"):
                emit(v, f"{prefix}.{k}" if prefix else k)
            elif isinstance(v, dict):
                inner = ", ".join(f"{a} = {json.dumps(b)}" for a, b in v.items())
                lines.insert(lines.index(f"[{prefix}]") + 1, f"{k} = {{ {inner} }}")

    emit(d, "")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------- latest pointer
def test_latest_pointing_nowhere_falls_back_and_deletes_nothing(run, tmp_path, caplog):
    cfg, data, out = _copy(run, tmp_path)
    root = out / "checkpoints"
    (root / "latest").write_text("epoch-0009")
    with caplog.at_level(logging.WARNING, logger="attrimp.train.training"):
        found = latest_checkpoint(out)
    assert found == root / "epoch-0001"
    assert "names 'epoch-0009', which is missing or incomplete" in caplog.text
    assert "using the newest complete checkpoint" in caplog.text
    assert sorted(p.name for p in root.iterdir()) == ["epoch-0001", "latest"]
    result = _train(cfg, data, out, epochs=2)
    assert result.resumed_from == 1  # resumed from the valid checkpoint, not from scratch
    assert [int(h["epoch"]) for h in result.history] == [1, 2]


def test_missing_pointer_file_also_falls_back(run, tmp_path):
    _, _, out = _copy(run, tmp_path)
    (out / "checkpoints" / "latest").unlink()
    assert latest_checkpoint(out) == out / "checkpoints" / "epoch-0001"
    (out / "checkpoints" / "epoch-0001" / STATE_JSON).unlink()  # incomplete: not a candidate
    assert latest_checkpoint(out) is None


# ------------------------------------------------------------------------- temporaries
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporary_folders_of_a_killed_save_are_removed_on_the_next_start(run, tmp_path):
    cfg, data, out = _copy(run, tmp_path)
    root = out / "checkpoints"
    dead = _dead_pid()
    stale = root / f".epoch-0002.tmp-{dead}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 4096)
    (root / f".latest.tmp-{dead}").write_text("epoch-0002")
    alive = root / f".epoch-0002.tmp-{subprocess.os.getppid()}"  # a live process's: kept
    alive.mkdir()
    result = _train(cfg, data, out, epochs=2)
    assert result.resumed_from == 1
    assert not stale.exists() and not (root / f".latest.tmp-{dead}").exists()
    assert alive.is_dir()
    assert remove_stale_temporaries(out) == []


# ------------------------------------------------------------------------- load_weights config
@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"alpha": 64.0}, ["alpha 16.0 in the checkpoint but 64.0 in the model"]),
        ({"pooling": "max"}, ["pooling 'mean' in the checkpoint but 'max' in the model"]),
        (
            {"alpha": 4.0, "pooling": "sum", "blocks": 1},
            ["blocks 2 in", "alpha 16.0 in", "pooling 'mean' in"],
        ),
        ({"site": "attn"}, ["site 'mlp' in the checkpoint but 'attn'"]),
        ({"bank": "lora"}, ["bank 'adapter' in the checkpoint but 'lora'"]),
    ],
)
def test_load_weights_refuses_another_config_naming_the_keys(tmp_path, changes, named):
    saved = tiny_model()
    folder = save_checkpoint(saved, tmp_path / "c")
    other = tiny_model(**changes)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match="was saved with another model config") as e:
        load_weights(other, folder)
    for piece in named:
        assert piece in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())  # untouched


def test_load_weights_accepts_the_same_config(tmp_path):
    saved = tiny_model()
    randomise(saved)
    folder = save_checkpoint(saved, tmp_path / "c")
    seed_file = backbones.save_weights(tiny_model(seed=7).backbone, tmp_path / "seed.safetensors")
    other = tiny_model(seed=3, pretrained=str(seed_file), dropout=0.1)
    load_weights(other, folder)
    assert all(
        torch.equal(a, b) for a, b in zip(saved.state_dict().values(), other.state_dict().values())
    )


# ------------------------------------------------------------------------- backbone export
FAMILIES = {"timm": {"depth": 3}, "clip": {"layers": 3}}


@pytest.mark.parametrize(
    "family, bank", [("timm", "adapter"), ("clip", "adapter"), ("clip", "lora")]
)
def test_exported_backbone_with_experts_attached_rebuilds(tmp_path, family, bank):
    model = tiny_model(family, bank=bank)
    randomise(model)
    f = backbones.save_weights(model.backbone, tmp_path / "bb.safetensors")
    again = backbones.build(
        model.config.backbone,
        pretrained=f,
        img_size=model.config.img_size,
        tiny=True,
        **FAMILIES[family],
    )
    want = unwrap_site_keys(model.backbone.state_dict(), model.backbone)
    got = again.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in got)
    x = torch.randn(2, 3, *model.config.img_size)
    model.experts.set_gates(torch.zeros(2, model.schema.n_experts))  # all off = the backbone
    with torch.no_grad():
        torch.testing.assert_close(again(x), model.backbone(x))


@pytest.mark.parametrize("family", ["timm", "clip"])
def test_mosaic_checkpoint_seeds_a_backbone_at_another_size(tmp_path, family):
    model = tiny_model(family)
    randomise(model)
    folder = save_checkpoint(model, tmp_path / "c")
    size = (64, 32)
    bb = backbones.build(
        model.config.backbone,
        pretrained=folder / "model.safetensors",
        img_size=size,
        tiny=True,
        **FAMILIES[family],
    )
    key = bb.pos_embed_key
    old = model.backbone.state_dict()[key]
    want = resample_pos_embed(old, bb.grid_size, model.backbone.grid_size, num_prefix_tokens=1)
    torch.testing.assert_close(bb.state_dict()[key], want.reshape(bb.state_dict()[key].shape))
    plain = unwrap_site_keys(model.backbone.state_dict(), model.backbone)
    for k, v in bb.state_dict().items():
        if k != key:
            assert torch.equal(v, plain[k]), k
    # and as the seed of a whole model at that size
    from attrimp.model.mosaic import MoSAICReID

    bigger = MoSAICReID(
        model.config.__class__.from_dict(
            {
                **model.config.to_dict(),
                "pretrained": str(folder / "model.safetensors"),
                "img_size": list(size),
            }
        )
    )
    torch.testing.assert_close(bigger.backbone.state_dict()[key], bb.state_dict()[key])

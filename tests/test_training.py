"""Training: a tiny MoSAIC model learns on the synthetic world, and resume after kill -9 is exact."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from attrimp.config import config_from_dict
from attrimp.metrics import evaluate, pairwise_distance
from attrimp.pipeline import build_model, datasets, prepare_data
from attrimp.training import latest_checkpoint, train
from tests.conftest import REPO

TINY = {
    "name": "tiny",
    "device": "cpu",
    "data": {
        "dataset": "synthetic",
        "synthetic": {"identities": 24, "cameras": 3, "images_per_camera": 2, "size": [64, 32]},
    },
    "model": {
        "backbone": "timm:vit_tiny_patch16_224",
        "pretrained": None,
        "img_size": [64, 32],
        "backbone_kwargs": {"tiny": True},
    },
    "experts": {"blocks": 1, "rank": 4, "alpha": 4.0},
    "train": {
        "epochs": 3,
        "identities_per_batch": 4,
        "images_per_identity": 4,
        "lr": 1e-3,
        "expert_lr_scale": 1.0,
        "warmup_epochs": 1,
        "seed": 0,
    },
}


def _features(model, ds):
    model.eval()
    feats, pids, cams = [], [], []
    with torch.no_grad():
        for i in range(0, len(ds), 32):
            items = [ds[j] for j in range(i, min(len(ds), i + 32))]
            images = torch.stack([x[0] for x in items])
            attrs = torch.stack([x[3] for x in items])
            feats.append(model(images, attrs).features)
            pids += [x[1] for x in items]
            cams += [x[2] for x in items]
    return torch.cat(feats), np.array(pids), np.array(cams)


def _map(model, query, gallery) -> float:
    qf, qp, qc = _features(model, query)
    gf, gp, gc = _features(model, gallery)
    return float(evaluate(pairwise_distance(qf, gf).numpy(), qp, gp, qc, gc, max_rank=10)["mAP"])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cfg = config_from_dict(TINY)
    work = tmp_path_factory.mktemp("world")
    return cfg, prepare_data(cfg, work)


def test_tiny_model_learns_on_the_synthetic_world(world, tmp_path):
    cfg, data = world
    cfg.train.epochs = 8
    torch.manual_seed(0)
    model = build_model(cfg, data)
    train_set, query, gallery = datasets(model, data)
    untrained = _map(model, query, gallery)
    result = train(model, train_set, cfg.train, tmp_path, progress=False)
    trained = _map(model, query, gallery)
    assert len(result.history) == 8
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert trained > untrained + 0.1, (untrained, trained)
    log = (tmp_path / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 8 and log[0].startswith("epoch,")
    assert any((tmp_path / "tensorboard").iterdir())


KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    from attrimp.config import config_from_dict
    from attrimp.pipeline import build_model, datasets, prepare_data
    from attrimp.training import train

    cfg = config_from_dict(json.loads(sys.argv[1]))
    data = prepare_data(cfg, sys.argv[2])
    torch.manual_seed(0)
    model = build_model(cfg, data)
    train_set = datasets(model, data)[0]

    def die(epoch, stats):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    train(model, train_set, cfg.train, sys.argv[3], progress=False, on_epoch_end=die)
    """
)


def test_resume_after_kill_continues_exactly(world, tmp_path):
    cfg, data = world
    cfg.train.epochs = 3
    cfg.data.root = str(data.root)
    # Uninterrupted reference run.
    torch.manual_seed(0)
    ref_model = build_model(cfg, data)
    train(ref_model, datasets(ref_model, data)[0], cfg.train, tmp_path / "ref", progress=False)

    # A run killed with SIGKILL right after its first checkpoint ...
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLER,
            json.dumps(cfg.to_dict()),
            str(tmp_path),
            str(tmp_path / "run"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert latest_checkpoint(tmp_path / "run").name == "epoch-0001"
    # ... resumes from it and ends where the uninterrupted run ended, bit for bit.
    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    model = build_model(cfg, data)
    result = train(model, datasets(model, data)[0], cfg.train, tmp_path / "run", progress=False)
    assert result.resumed_from == 1
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    ref = load_file(str(latest_checkpoint(tmp_path / "ref") / "model.safetensors"))
    got = load_file(str(latest_checkpoint(tmp_path / "run") / "model.safetensors"))
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    ref_state = load_file(str(latest_checkpoint(tmp_path / "ref") / "trainer_state.safetensors"))
    got_state = load_file(str(latest_checkpoint(tmp_path / "run") / "trainer_state.safetensors"))
    for key in ref_state:
        assert torch.equal(ref_state[key], got_state[key]), key

"""`attrimp train` and the shipped study configs.

The training runs use studies/configs/synthetic_tiny.toml as shipped (a random 2-block ViT on a
16-identity synthetic world), so they also check that config. The metrics the command reports
are recomputed here from the saved checkpoint with a plain loop and `attrimp.evaluate.metrics.evaluate`
(itself checked against torchreid in test_metrics.py): the numbers in metrics.json must be the
numbers of the checkpoint it names.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import backbones
from attrimp.cli import app
from attrimp.config import load_config
from attrimp.evaluate.metrics import evaluate, pairwise_distance
from attrimp.model.checkpoint import load_model
from attrimp.train.pipeline import datasets, prepare_data
from attrimp.train.training import latest_checkpoint
from tests.conftest import REPO

CONFIGS = REPO / "studies" / "configs"
TINY = CONFIGS / "synthetic_tiny.toml"


def _train(*args: str):
    return CliRunner().invoke(app, ["train", *map(str, args), "--no-progress"])


def _features(model, dataset, use_cams: bool):
    model.eval()
    feats, pids, cams = [], [], []
    with torch.no_grad():
        for i in range(len(dataset)):
            image, pid, cam, attrs, _ = dataset[i]
            camids = torch.tensor([cam]) if use_cams else None
            feats.append(model(image[None], attrs[None], camids).features)
            pids.append(pid)
            cams.append(cam)
    return torch.cat(feats), np.array(pids), np.array(cams)


def _recomputed_map(out, metric: str) -> float:
    """mAP of the checkpoint in ``out``, computed without attrimp.evaluate.evaluation or the command."""
    cfg = load_config(TINY)
    data = prepare_data(cfg, out)
    model = load_model(latest_checkpoint(out))
    _, query, gallery = datasets(model, data)
    use_cams = model.config.camera_count > 0
    qf, qp, qc = _features(model, query, use_cams)
    gf, gp, gc = _features(model, gallery, use_cams)
    return float(evaluate(pairwise_distance(qf, gf, metric).numpy(), qp, gp, qc, gc)["mAP"])


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A one-epoch run of the shipped tiny config (shared by the tests that only read it)."""
    out = tmp_path_factory.mktemp("train") / "run"
    result = _train(TINY, "--out", out, "--epochs", "1")
    assert result.exit_code == 0, result.output
    return out, result


def test_train_writes_checkpoint_metrics_and_logs(one_epoch):
    out, result = one_epoch
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("mAP", "rank1", "rank5", "rank10", "mINP"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["rank1"] <= metrics["rank5"] <= metrics["rank10"]
    assert metrics["num_query"] == 24 and metrics["num_gallery"] == 24
    assert metrics["epochs"] == 1 and metrics["resumed_from"] == 0 and metrics["world_size"] == 1
    assert metrics["checkpoint"] == str(out / "checkpoints" / "epoch-0001")
    assert (out / "checkpoints" / "latest").read_text().strip() == "epoch-0001"
    log = (out / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,") and len(log) == 2
    assert any((out / "tensorboard").iterdir())
    saved = json.loads((out / "config.json").read_text())
    assert saved["name"] == "synthetic_tiny" and saved["train"]["epochs"] == 1
    # the rich table: a header row with every metric and the checkpoint path
    for col in ("mAP", "rank-1", "rank-5", "rank-10", "mINP"):
        assert col in result.output
    assert "epoch-0001" in result.output
    # the reported numbers are those of the saved checkpoint
    assert metrics["mAP"] == pytest.approx(_recomputed_map(out, metrics["metric"]), abs=1e-5)


def test_resume_continues_and_a_finished_run_only_reevaluates(one_epoch, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(one_epoch[0], out)
    # --epochs 2 continues from the epoch-1 checkpoint (the default is --resume)
    result = _train(TINY, "--out", out, "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert "Resuming from" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] == 1 and metrics["epochs"] == 2
    assert latest_checkpoint(out).name == "epoch-0002"
    log = (out / "train_log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2"]
    # the first epoch's row is the original one, not a retrained one
    first_log = (one_epoch[0] / "train_log.csv").read_text().splitlines()
    assert log[1] == first_log[1]
    weights = (latest_checkpoint(out) / "model.safetensors").read_bytes()

    # the shipped config says 2 epochs: nothing left to train, the same model is re-evaluated
    again = _train(TINY, "--out", out)
    assert again.exit_code == 0, again.output
    metrics2 = json.loads((out / "metrics.json").read_text())
    assert metrics2["resumed_from"] == 2
    assert (latest_checkpoint(out) / "model.safetensors").read_bytes() == weights
    assert metrics2["mAP"] == pytest.approx(metrics["mAP"], abs=1e-9)

    # --no-resume starts afresh, says so, and replaces the run
    fresh = _train(TINY, "--out", out, "--epochs", "1", "--no-resume")
    assert fresh.exit_code == 0, fresh.output
    assert "--no-resume" in fresh.output
    assert json.loads((out / "metrics.json").read_text())["resumed_from"] == 0
    assert latest_checkpoint(out).name == "epoch-0001"
    assert len((out / "train_log.csv").read_text().splitlines()) == 2


def test_resume_refuses_a_run_folder_of_another_model(one_epoch, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(one_epoch[0], out)
    other = tmp_path / "other.toml"
    other.write_text(TINY.read_text().replace("rank = 4", "rank = 2"))
    result = _train(other, "--out", out, "--epochs", "2")
    assert result.exit_code == 2
    assert "holds a checkpoint of a different config" in result.output
    assert "[experts]" in result.output
    assert "Traceback" not in result.output
    assert latest_checkpoint(out).name == "epoch-0001"  # untouched


def test_eval_every_logs_metrics_without_changing_training(tmp_path):
    """train.eval_every evaluates mid-run (eval_log.csv), and the trained weights are bit for
    bit those of a run without it: evaluation must not consume the training's random stream."""
    from safetensors.torch import load_file

    periodic = tmp_path / "periodic.toml"
    periodic.write_text(TINY.read_text().replace("[train]", "[train]\neval_every = 1"))
    a = _train(periodic, "--out", tmp_path / "a")
    b = _train(TINY, "--out", tmp_path / "b")
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    rows = (tmp_path / "a" / "eval_log.csv").read_text().splitlines()
    assert rows[0] == "epoch,mAP,rank1,rank5,rank10,mINP"
    assert [r.split(",")[0] for r in rows[1:]] == ["1"]  # the last epoch is in metrics.json
    assert 0.0 < float(rows[1].split(",")[1]) <= 1.0
    assert "epoch 1: mAP" in a.output
    assert not (tmp_path / "b" / "eval_log.csv").exists()
    wa = load_file(str(latest_checkpoint(tmp_path / "a") / "model.safetensors"))
    wb = load_file(str(latest_checkpoint(tmp_path / "b") / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_a_stale_synthetic_world_is_never_reused(tmp_path):
    """A run folder's world made with other [data.synthetic] settings is regenerated; one in a
    folder the user named (data.root) is an error instead of being replaced."""
    from attrimp.errors import ConfigError

    small, large = load_config(TINY), load_config(TINY)
    large.data.synthetic.identities = 20
    assert len(prepare_data(small, tmp_path).train) == 8 * 6
    assert len(prepare_data(large, tmp_path).train) == 10 * 6  # regenerated, not reused
    assert len(prepare_data(large, tmp_path).train) == 10 * 6  # and now reused as is
    small.data.root = large.data.root = str(tmp_path / "mine")
    prepare_data(small, tmp_path)
    with pytest.raises(ConfigError, match="made with a different identities setting"):
        prepare_data(large, tmp_path)


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    """The real entry point, `python -m attrimp` (what torchrun runs), in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "attrimp", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("[experts]", "[experts]\nranks = 4"), "Unknown setting experts.ranks"),
        (lambda t: t.replace('amp = "off"', 'amp = "fp16"'), "train.amp must be one of"),
        (lambda t: t.replace("[train]", "[train\n"), "is not valid TOML"),
        (
            lambda t: t.replace('dataset = "synthetic"', 'dataset = "market1501"'),
            "data.root is required",
        ),
    ],
    ids=["unknown-key", "bad-choice", "bad-toml", "missing-root"],
)
def test_bad_config_is_one_sentence_and_exit_2(tmp_path, edit, message):
    config = tmp_path / "bad.toml"
    config.write_text(edit(TINY.read_text()))
    proc = _cli("train", config, "--out", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert str(config) in proc.stderr  # the sentence names the file
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) <= 3  # one sentence (rich may wrap it)
    assert not (tmp_path / "run").exists()


def test_missing_config_file_and_missing_dataset_folder(tmp_path):
    proc = _cli("train", tmp_path / "nope.toml", "--out", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "nope.toml" in proc.stderr
    assert "Traceback" not in proc.stderr

    config = tmp_path / "market.toml"
    config.write_text(
        TINY.read_text().replace(
            'dataset = "synthetic"',
            f'dataset = "market1501"\nroot = "{tmp_path / "no-such-folder"}"',
        )
    )
    proc = _cli("train", config, "--out", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "no-such-folder" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- shipped configs
REFERENCE = ["market1501_clip_vitb16.toml", "dukemtmc_clip_vitb16.toml"]


@pytest.mark.parametrize("name", [*REFERENCE, "market1501_timm_vitb16.toml"])
def test_reference_configs_hold_the_reference_recipe(name):
    cfg = load_config(CONFIGS / name)
    m, e, t = cfg.model, cfg.experts, cfg.train
    assert m.img_size == (256, 128) and m.stride in (16, 12)
    assert m.camera_embedding and m.adapt == "full" and m.pretrained == "openai"
    assert e.rank == 8 and e.blocks >= 1 and cfg.router.name == "oracle"
    assert t.optimizer == "adamw" and t.lr == 5e-6 and t.lr * t.expert_lr_scale > t.lr
    assert t.epochs == 60 and t.warmup_epochs > 0
    assert (t.identities_per_batch, t.images_per_identity) == (16, 4)
    assert t.label_smoothing == 0.1 and t.triplet_margin == 0.3
    assert t.amp in ("auto", "bf16")
    assert t.max_steps_per_epoch == 0  # a full pass every epoch
    # the backbone name and weight tag exist (checked without building or downloading)
    family, model = backbones.parse_name(m.backbone)
    fam = backbones.get_family(family)
    assert fam.has_model(model)
    assert m.pretrained in fam.list_pretrained(model)
    # dataset paths are placeholders the user edits; the attribute file matches the dataset
    assert cfg.data.root and cfg.data.attributes
    stem = {"market1501": "market", "dukemtmc": "duke"}[cfg.data.dataset]
    assert f"{stem}_attribute.mat" in cfg.data.attributes


def test_reference_configs_differ_only_in_their_data():
    market, duke = (load_config(CONFIGS / n).to_dict() for n in REFERENCE)
    assert market["data"]["dataset"] == "market1501" and duke["data"]["dataset"] == "dukemtmc"
    for section in ("model", "experts", "router", "train", "eval"):
        assert market[section] == duke[section], section
    timm = load_config(CONFIGS / "market1501_timm_vitb16.toml").to_dict()
    assert timm["model"]["backbone"].startswith("timm:")
    assert {k: v for k, v in timm["model"].items() if k != "backbone"} == {
        k: v for k, v in market["model"].items() if k != "backbone"
    }
    assert timm["train"] == market["train"] and timm["data"] == market["data"]


def test_docs_list_every_config_key():
    """docs/training.md has a table row for every key of every section (with its section)."""
    import dataclasses
    import re

    from attrimp import config

    doc = (REPO / "docs" / "training.md").read_text()
    doc = doc[doc.index("## Config keys") : doc.index("## Resume")]
    chunks = re.split(r"\n\*\*", doc)  # one chunk per "**`[section]`**" heading
    sections = {
        "": config.StudyConfig, "data": config.DataConfig, "data.synthetic": config.SyntheticConfig,
        "model": config.ModelConfig, "experts": config.ExpertConfig, "router": config.RouterConfig,
        "train": config.TrainConfig, "eval": config.EvalConfig, "ablation": config.AblationConfig,
        "analysis": config.AnalysisConfig,
    }  # fmt: skip
    subsections = {key.rsplit(".", 1)[-1] for key in sections}
    missing = []
    for name, cls in sections.items():
        heading = "Top level" if not name else f"`[{name}]`"
        if name == "analysis":  # one table for [ablation] and [analysis], keys prefixed
            heading = "`[ablation]`"
        chunk = next(c for c in chunks if c.startswith(heading))
        for f in dataclasses.fields(cls):
            if f.name in subsections:
                continue
            if f"| `{f.name}` |" not in chunk and f"| `{name}.{f.name}` |" not in chunk:
                missing.append(f"{name}.{f.name}".lstrip("."))
    assert not missing, missing


def test_tiny_config_is_tiny():
    cfg = load_config(TINY)
    assert cfg.model.pretrained is None  # `pretrained = false`: nothing to download
    assert cfg.model.backbone_kwargs == {"tiny": True}
    assert cfg.data.dataset == "synthetic" and cfg.data.synthetic.identities == 16
    assert cfg.train.epochs <= 2 and cfg.device == "cpu"


def test_evaluate_a_trained_checkpoint_on_its_data(tmp_path):
    """`attrimp evaluate --checkpoint RUN --data CONFIG` reproduces the metrics train wrote."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    config = REPO / "studies" / "configs" / "synthetic_tiny.toml"
    run = tmp_path / "run"
    common = dict(cwd=REPO, capture_output=True, text=True, timeout=600)
    proc = subprocess.run(
        [sys.executable, "-m", "attrimp", "train", str(config), "--out", str(run), "--epochs", "1"],
        **common,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    trained = json.loads((run / "metrics.json").read_text())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "attrimp",
            "evaluate",
            "--checkpoint",
            str(run),
            "--data",
            str(config),
            "--summary",
            str(tmp_path / "summary.json"),
            "--max-rank",
            "10",
        ],
        **common,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    row = summary[0] if isinstance(summary, list) else summary
    mAP = trained.get("mAP", trained.get("metrics", {}).get("mAP"))
    assert abs(row["mAP"] - mAP) < 1e-5

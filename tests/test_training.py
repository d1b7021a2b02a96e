"""Training: a tiny MoSAIC model learns on the synthetic world, and resume after kill -9 is exact."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from attrimp.config import config_from_dict
from attrimp.errors import ConfigError
from attrimp.evaluate.metrics import evaluate, pairwise_distance
from attrimp.model.schema import load_schema
from attrimp.train.pipeline import build_model, datasets, prepare_data
from attrimp.train.training import drop_groups, latest_checkpoint, train
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
    from attrimp.train.pipeline import build_model, datasets, prepare_data
    from attrimp.train.training import train

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


# --------------------------------------------------------------------------- loss bookkeeping
def _record_losses(monkeypatch, training) -> dict[str, list[float]]:
    """Wrap the loop's identity and triplet losses to record each step's (unweighted) value.

    The recorder reads the values here, in the test, so its own host reads are not the loop's.
    """
    seen: dict[str, list[float]] = {"id_loss": [], "triplet_loss": []}
    for key, name in (("id_loss", "identity_loss"), ("triplet_loss", "batch_hard_triplet_loss")):
        fn = getattr(training, name)

        def wrapped(*args, _fn=fn, _key=key, **kwargs):
            value = _fn(*args, **kwargs)
            seen[_key].append(float(value.detach()))
            return value

        monkeypatch.setattr(training, name, wrapped)
    return seen


def test_loop_reads_losses_to_the_host_only_every_log_every_steps(world, tmp_path, monkeypatch):
    """On a GPU every host read of a CUDA tensor waits for the stream, so the per-step loss
    sums stay on the device: the loop reads them every LOG_EVERY steps (progress bar) and once
    per epoch, and the epoch statistics are still exactly the mean of the per-step values."""
    import inspect

    import attrimp.train.training as training

    cfg, data = world
    cfg.train.epochs = 2
    monkeypatch.setattr(training, "LOG_EVERY", 2)
    seen = _record_losses(monkeypatch, training)
    here = inspect.getsourcefile(training)
    reads = {"n": 0}
    for name in ("__float__", "__int__", "__bool__", "item", "tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            if sys._getframe(1).f_code.co_filename == here:
                reads["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    torch.manual_seed(0)
    model = build_model(cfg, data)
    result = train(model, datasets(model, data)[0], cfg.train, tmp_path, progress=True)
    monkeypatch.undo()

    steps = [h["steps"] for h in result.history]
    assert steps[0] >= 3, steps  # enough steps that a read per step would be seen
    # one read per LOG_EVERY steps for the bar, one per epoch for the statistics
    assert 0 < reads["n"] <= sum(n // 2 + 1 for n in steps), (reads, steps)
    # and the statistics are the plain float64 means of the per-step values, bit for bit
    start = 0
    for h, n in zip(result.history, steps):
        for key in ("id_loss", "triplet_loss"):
            assert h[key] == sum(seen[key][start : start + n]) / n, key
        assert h["loss"] == pytest.approx(h["id_loss"] + h["triplet_loss"], rel=1e-6)
        start += n
    assert start == len(seen["id_loss"])


def _train_one_step(cfg, data, out, **weights):
    cfg = copy.deepcopy(cfg)
    cfg.train.epochs, cfg.train.max_steps_per_epoch = 1, 1
    for key, value in weights.items():
        setattr(cfg.train, key, value)
    torch.manual_seed(0)
    model = build_model(cfg, data)
    before = model.classifier.weight.detach().clone()
    result = train(model, datasets(model, data)[0], cfg.train, out, progress=False)
    return result.history[0], not torch.equal(before, model.classifier.weight.detach())


def test_loss_weights_scale_the_logged_parts_and_zero_switches_a_loss_off(world, tmp_path):
    cfg, data = world
    plain, moved = _train_one_step(cfg, data, tmp_path / "a")
    weighted, _ = _train_one_step(
        cfg, data, tmp_path / "b", id_loss_weight=0.5, triplet_loss_weight=0.25
    )
    # same seed, same first step: the logged parts are the unweighted ones times the weight
    assert plain["id_loss"] > 0 and plain["triplet_loss"] > 0
    assert weighted["id_loss"] == 0.5 * plain["id_loss"]
    assert weighted["triplet_loss"] == 0.25 * plain["triplet_loss"]
    assert weighted["loss"] == pytest.approx(weighted["id_loss"] + weighted["triplet_loss"])
    # the classifier learns from the ID loss alone: off, it gets no gradient and stays put
    # (not even AdamW's weight decay touches it)
    no_id, moved_without_id = _train_one_step(cfg, data, tmp_path / "c", id_loss_weight=0.0)
    assert moved and not moved_without_id
    assert no_id["id_loss"] == 0.0 and no_id["triplet_loss"] == plain["triplet_loss"]
    with pytest.raises(ConfigError, match="Every training loss is switched off"):
        _train_one_step(cfg, data, tmp_path / "d", id_loss_weight=0.0, triplet_loss_weight=0.0)


DDP_WORKER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import torch
    import attrimp.train.training as training
    from attrimp.config import config_from_dict
    from attrimp.train.pipeline import build_model, datasets, prepare_data
    from tests.test_training import _record_losses

    class Patch:  # the bit of pytest's monkeypatch that _record_losses uses
        setattr = staticmethod(setattr)

    cfg = config_from_dict(json.loads(sys.argv[1]))
    data = prepare_data(cfg, sys.argv[2])
    torch.manual_seed(0)
    model = build_model(cfg, data)
    seen = _record_losses(Patch, training)
    result = training.train(model, datasets(model, data)[0], cfg.train, sys.argv[3], progress=False)
    record = {"seen": seen, "history": result.history}
    (Path(sys.argv[4]) / f"rank{os.environ['RANK']}.json").write_text(json.dumps(record))
    """
)


def test_ddp_logs_the_mean_over_every_ranks_batches(world, tmp_path):
    """Under torchrun each rank trains on its own batches; the logged epoch losses are the
    mean over all ranks' steps (one all-reduce per epoch), not rank 0's share alone."""
    cfg, data = world
    cfg = copy.deepcopy(cfg)
    cfg.train.epochs = 1
    cfg.data.root = str(data.root)
    (tmp_path / "probe").mkdir()
    worker = tmp_path / "worker.py"  # torchrun runs a script file, not -c
    worker.write_text(DDP_WORKER)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(worker),
            json.dumps(cfg.to_dict()),
            str(tmp_path),
            str(tmp_path / "run"),
            str(tmp_path / "probe"),
        ],  # fmt: skip
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]
    h, h1 = ranks[0]["history"][0], ranks[1]["history"][0]
    h1["seconds"] = h["seconds"]  # each rank's own clock
    assert h1 == h  # every rank logs the same statistics
    for key in ("id_loss", "triplet_loss"):
        own = [r["seen"][key] for r in ranks]
        assert len(own[0]) == len(own[1]) == h["steps"] >= 1
        means = [sum(v) / len(v) for v in own]
        assert abs(means[0] - means[1]) > 1e-6, means  # the ranks saw different batches
        assert h[key] == pytest.approx(sum(own[0] + own[1]) / (2 * h["steps"]), rel=1e-12), key
    logged = (tmp_path / "run" / "train_log.csv").read_text().splitlines()[1].split(",")
    assert float(logged[3]) == pytest.approx(h["id_loss"], rel=1e-9)


def test_group_dropout_blanks_whole_groups_without_reading_the_device():
    schema = load_schema("market1501")
    slot_group = torch.tensor(np.array(schema.slot_group))
    attrs = torch.ones(400, schema.n_slots)
    torch.manual_seed(0)
    derived = drop_groups(attrs, slot_group, 0.5)
    torch.manual_seed(0)
    given = drop_groups(attrs, slot_group, 0.5, len(schema.groups))  # the training loop's call
    assert torch.equal(derived, given)
    for g in range(len(schema.groups)):  # a group is kept or blanked as a whole, per sample
        block = given[:, slot_group == g]
        assert torch.equal(block.amin(1), block.amax(1))
    kept = given[:, slot_group == 0].amax(1).mean().item()
    assert 0.4 < kept < 0.6  # p = 0.5 over 400 samples
    assert torch.equal(drop_groups(attrs, slot_group, 0.0, len(schema.groups)), attrs)
    assert torch.count_nonzero(drop_groups(attrs, slot_group, 1.0, len(schema.groups))) == 0


# --------------------------------------------------------------------------- compiled step
def _short_run(cfg, data, out, compile_mode: str, steps: int = 3, device: str = "cpu"):
    cfg = copy.deepcopy(cfg)
    cfg.train.epochs, cfg.train.max_steps_per_epoch = 1, steps
    cfg.train.compile = compile_mode
    torch.manual_seed(0)
    model = build_model(cfg, data)
    result = train(model, datasets(model, data)[0], cfg.train, out, progress=False, device=device)
    return result.history[0], {k: v.detach().cpu() for k, v in model.state_dict().items()}


def test_compiled_step_matches_the_eager_step(world, tmp_path, monkeypatch, caplog):
    """The compiled step (Dynamo capture + AOTAutograd's forward/backward split, here with the
    code-free aot_eager backend so the test stays fast on a CPU) trains exactly as the eager
    step: same logged losses, same weights after three optimiser steps."""
    import attrimp.train.training as training

    cfg, data = world
    monkeypatch.setattr(training, "COMPILE_BACKEND", "aot_eager")
    calls = []
    original = torch.compile

    def spy(fn, **kwargs):
        calls.append(kwargs)
        return original(fn, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    torch._dynamo.reset()
    eager, w_eager = _short_run(cfg, data, tmp_path / "eager", "eager")
    assert calls == []  # eager means eager
    with caplog.at_level("WARNING", logger="attrimp.train.training"):
        compiled, w_compiled = _short_run(cfg, data, tmp_path / "compiled", "default")
    assert [c["backend"] for c in calls] == ["aot_eager"] and calls[0]["dynamic"] is False
    assert not [r for r in caplog.records if "failed" in r.getMessage()]  # no eager fallback
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    for key in ("loss", "id_loss", "triplet_loss"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-5, abs=1e-6), key
    for name, value in w_eager.items():
        torch.testing.assert_close(w_compiled[name], value, rtol=1e-4, atol=1e-5, msg=name)
    torch._dynamo.reset()


def test_the_training_step_is_one_graph(world):
    """No graph break in forward + losses: CUDA graphs then cover the whole step."""
    import attrimp.train.training as training

    cfg, data = world
    torch.manual_seed(0)
    model = build_model(cfg, data)
    train_set = datasets(model, data)[0]
    items = [train_set[i] for i in range(8)]
    images = torch.stack([x[0] for x in items])
    labels = torch.as_tensor([x[1] for x in items])
    attrs = torch.stack([x[3] for x in items]).float()
    step = training.loss_step(model, model, cfg.train, None, 1.0, torch.device("cpu"))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(step)(images, labels, attrs, attrs, None)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()


def test_compile_setting_resolves_per_device():
    from attrimp.train.training import resolve_compile

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_compile("auto", cuda) == "reduce-overhead"  # the default on a GPU
    assert resolve_compile("auto", cuda, world_size=2) == "eager"
    assert resolve_compile("auto", cpu) == "eager"
    assert resolve_compile("eager", cuda) == "eager"
    assert resolve_compile("reduce-overhead", cpu) == "default"  # no CUDA graphs off CUDA
    with pytest.raises(ConfigError, match="train.compile"):
        resolve_compile("fast", cpu)
    with pytest.raises(ConfigError, match="compile"):
        config_from_dict({**TINY, "train": {**TINY["train"], "compile": "fast"}})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_step_trains_like_the_eager_step(world, tmp_path):
    """On CUDA the default step is compiled and replayed as CUDA graphs; it trains as the eager
    step does (bf16 autocast in both, so to bf16 accuracy)."""
    cfg, data = world
    torch._dynamo.reset()
    eager, w_eager = _short_run(cfg, data, tmp_path / "eager", "eager", steps=4, device="cuda")
    graphs, w_graphs = _short_run(cfg, data, tmp_path / "graphs", "auto", steps=4, device="cuda")
    for key in ("loss", "id_loss", "triplet_loss"):
        assert graphs[key] == pytest.approx(eager[key], rel=0.05, abs=1e-3), key
    moved = [n for n, v in w_graphs.items() if v.is_floating_point()]
    for name in moved:
        torch.testing.assert_close(w_graphs[name], w_eager[name], rtol=0.05, atol=2e-3, msg=name)
    torch._dynamo.reset()


def test_a_bad_camera_id_stops_training_before_the_first_step(world, tmp_path):
    """Camera ids are validated once, over the whole training set, before the loop (the
    forward does not read ids on the device); a table too small for the data is one clear
    error naming the id, and nothing is trained or written."""
    from attrimp.errors import DataError

    cfg, data = world
    cfg = copy.deepcopy(cfg)
    cfg.model.camera_embedding = True
    torch.manual_seed(0)
    model = build_model(cfg, data)
    n_cams = model.config.camera_count
    assert n_cams == 3
    train_set = datasets(model, data)[0]
    model.config.camera_count = 2  # as if built for another dataset's cameras
    model.backbone.camera_count = 2
    forwards = []
    model.register_forward_pre_hook(lambda *_: forwards.append(1))
    with pytest.raises(DataError, match="camera id 2 is outside the camera table of 2"):
        train(model, train_set, cfg.train, tmp_path, progress=False)
    assert forwards == [] and latest_checkpoint(tmp_path) is None


def test_each_training_run_compiles_its_own_step(monkeypatch):
    """A study that retrains many configurations in one process compiles each run's step
    afresh: with one shared cache the ninth run would pass torch's recompile limit and train
    eagerly without a word."""
    import attrimp.train.training as training

    monkeypatch.setattr(training, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()

    def make(k):
        def step(x):
            return x * k

        return step

    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for k in range(10):
        step = training.compile_step(make(k), "default")
        assert step(torch.ones(2))[0].item() == k
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - before == 10
    torch._dynamo.reset()


def test_train_is_quiet_by_default_and_logs_each_epoch(world, tmp_path, capsys, caplog):
    """A library call prints nothing (the progress bar is the CLI's, asked for with
    progress=True); each epoch is one INFO line of the module's logger instead."""
    import logging

    cfg, data = world
    cfg = copy.deepcopy(cfg)
    cfg.train.epochs, cfg.train.max_steps_per_epoch = 2, 1
    torch.manual_seed(0)
    model = build_model(cfg, data)
    with caplog.at_level(logging.INFO, logger="attrimp.train.training"):
        train(model, datasets(model, data)[0], cfg.train, tmp_path)
    assert capsys.readouterr() == ("", "")
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [m.split(":")[0] for m in epochs] == ["epoch 1", "epoch 2"], epochs

"""`attrimp train` under torchrun: 2 CPU processes with the gloo backend.

The command runs unchanged (tests/ddp_probe.py only records what each rank did, then runs
``python -m attrimp``). What must hold: it finishes; the two ranks trained on disjoint PK
batches, the ones the sampler assigns to each rank; their weights are identical at the end
(so the gradients really were averaged: with disjoint batches, unsynchronised ranks would
differ); rank 0 alone wrote one checkpoint and one metrics file and printed the results; the
checkpoint loads and holds exactly the weights the ranks ended with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from attrimp.config import load_config
from attrimp.data.sampler import PKSampler
from attrimp.model.checkpoint import load_model
from attrimp.train.pipeline import prepare_data
from attrimp.train.training import latest_checkpoint
from tests.conftest import REPO
from tests.ddp_probe import digest

TINY = REPO / "studies" / "configs" / "synthetic_tiny.toml"


def test_torchrun_two_cpu_processes(tmp_path):
    out, probe = tmp_path / "run", tmp_path / "probe"
    probe.mkdir()
    env = {
        **os.environ,
        "ATTRIMP_PROBE_DIR": str(probe),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "tests" / "ddp_probe.py"),
        "train", str(TINY), "--out", str(out), "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # Only rank 0 printed the results and wrote: one checkpoint folder, one metrics file.
    assert proc.stdout.count("mINP") == 1 and proc.stdout.count("Trained 2 epochs") == 1, (
        proc.stdout
    )
    assert "Traceback" not in proc.stderr
    ckpt_root = out / "checkpoints"
    assert sorted(p.name for p in ckpt_root.iterdir()) == ["epoch-0002", "latest"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs"] == 2
    assert 0.0 < metrics["mAP"] <= 1.0
    assert not list(out.glob(".*tmp*")) and not list(ckpt_root.glob(".*"))
    log = (out / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 2

    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]

    # Each rank got its own share of every epoch's PK batches, and the shares are disjoint.
    cfg = load_config(TINY)
    data = prepare_data(cfg, out)  # the world rank 0 generated (read, not regenerated)
    labels = [r.label for r in data.train]
    p, k = cfg.train.identities_per_batch, cfg.train.images_per_identity
    sampler = PKSampler(labels, p, k, seed=cfg.train.seed)
    for epoch in range(cfg.train.epochs):
        every = sampler.epoch_batches(epoch)
        per_rank = len(every) // 2
        assert per_rank >= 1
        got = [r["batches"][str(epoch)] for r in ranks]
        assert got[0] == every[0::2][:per_rank]
        assert got[1] == every[1::2][:per_rank]
        seen0 = {i for b in got[0] for i in b}
        seen1 = {i for b in got[1] for i in b}
        assert seen0 and seen1 and not seen0 & seen1
        assert all(len(b) == p * k for b in got[0] + got[1])

    # Disjoint data, identical parameters: the gradients were averaged across the ranks.
    # (Buffers may differ: each rank's BNNeck running statistics saw its own last batch, and
    # DDP re-broadcasts rank 0's at the next forward; rank 0's are the ones saved.)
    assert ranks[0]["parameters_sha256"] == ranks[1]["parameters_sha256"]
    # The checkpoint loads and is exactly what rank 0 trained, buffers included.
    model = load_model(latest_checkpoint(out))
    assert digest(model.named_parameters()) == ranks[0]["parameters_sha256"]
    assert digest(model.state_dict().items()) == ranks[0]["state_sha256"]
    assert metrics["checkpoint"] == str(latest_checkpoint(out))


def test_torchrun_user_error_is_a_sentence_not_a_traceback(tmp_path):
    """A config mistake stops the job with the sentence and no traceback from attrimp's code
    (torchrun's own launcher still prints its failure summary, which we do not control)."""
    config = tmp_path / "bad.toml"
    config.write_text(TINY.read_text() + "\n[train.extra]\nfoo = 1\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "attrimp",
            "train",
            str(config),
            "--out",
            str(tmp_path / "run"),
        ],  # fmt: skip
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "Unknown setting train.extra" in proc.stderr, proc.stderr
    assert "exitcode  : 2" in proc.stderr  # the failing rank exited with the user-error code
    assert f'File "{REPO / "attrimp"}' not in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()

"""The reference study shape, stage by stage: ViT-B/16 at 256×128 with the Market-1501 schema's
experts (rank 8, last 2 blocks), a Market-size query/gallery (3,368 × 19,732), every test-time
ablation design.

    python benchmarks/bench_study.py --device cuda            # the reference shape on a GPU
    python benchmarks/bench_study.py --small                  # a CPU-sized smoke version

Images are random tensors held in memory (no decoding), so the numbers are the model-side cost
of each stage of `attrimp study run`: training steps (the real `attrimp.train.training.train`, with
its per-epoch checkpoint), the cached backbone prefix over query + gallery, and the condition
sweep (expert blocks + BNNeck + distances + Market-protocol evaluation per condition, the real
`attrimp.evaluate.conditions.ConditionEvaluator`). The statistics battery runs on the CPU and is
measured by benchmarks/bench_studies.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from attrimp.config import TrainConfig
from attrimp.data.records import ImageRecord
from attrimp.evaluate.ablation import make_conditions
from attrimp.evaluate.conditions import ConditionEvaluator
from attrimp.model.mosaic import MoSAICConfig, MoSAICReID
from attrimp.model.schema import load_schema
from attrimp.train.training import train


class RandomImages(torch.utils.data.Dataset):
    """Records with Market-like ids and random annotations; images from a fixed random pool."""

    def __init__(self, pids, camids, attributes, size, *, target="pid", pool=128, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.pool = torch.randn(pool, 3, *size, generator=g)
        self.records = [
            ImageRecord(
                Path(f"{i:06d}.jpg"), int(p), int(c), "x", int(p) if target == "label" else -1, a
            )
            for i, (p, c, a) in enumerate(zip(pids, camids, attributes))
        ]
        self.target = target

    @property
    def targets(self):
        return [r.label if self.target == "label" else r.pid for r in self.records]

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        r = self.records[i]
        return (
            self.pool[i % len(self.pool)],
            (r.label if self.target == "label" else r.pid),
            r.camid,
            torch.from_numpy(r.attributes),
            i,
        )


def market_like(schema, n_ids, n_images, n_cams, rng, first_pid=1):
    pids = rng.integers(first_pid, first_pid + n_ids, n_images)
    camids = rng.integers(0, n_cams, n_images)
    raw = {}
    for g in schema.groups:
        for c in g.source_columns:
            codes = g.codes if g.column is not None else (1, 2)
            raw[c] = rng.choice(np.asarray(codes), size=n_ids + first_pid)
    per_id = schema.encode(raw)
    return pids, camids, per_id[pids]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", action="store_true", help="tiny model and data (CPU smoke run)")
    p.add_argument("--train-steps", type=int, default=40)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    schema = load_schema("market1501")
    rng = np.random.default_rng(0)
    if args.small:
        mcfg = MoSAICConfig(
            backbone="timm:vit_tiny_patch16_224",
            pretrained=None,
            img_size=(64, 32),
            backbone_kwargs={"tiny": True},
            rank=4,
            num_classes=50,
        )
        n_q, n_g, n_train, ids, size, batch = 100, 500, 400, 50, (64, 32), 32
    else:
        mcfg = MoSAICConfig(
            backbone="timm:vit_base_patch16_clip_224",
            pretrained=None,
            img_size=(256, 128),
            rank=8,
            blocks=2,
            num_classes=751,
        )
        n_q, n_g, n_train, ids, size, batch = 3368, 19732, 12936, 751, (256, 128), 64
    torch.manual_seed(0)
    model = MoSAICReID(mcfg, schema=schema)
    rows = []

    def stage(name, seconds, items, unit):
        rows.append(
            {
                "stage": name,
                "seconds": round(seconds, 2),
                "items": items,
                "throughput": round(items / seconds, 1) if seconds > 0 else None,
                "unit": unit,
            }
        )
        print(
            f"{name:>28}: {seconds:8.2f} s  {items:>7} {unit}  ({items / max(seconds, 1e-9):,.1f}/s)",
            flush=True,
        )

    # training: the real loop, PK 16 x 4, bf16 on CUDA, one epoch of --train-steps steps
    tp, tc, ta = market_like(schema, ids, n_train, 6, rng)
    train_set = RandomImages(tp - 1, tc, ta, size, target="label")
    cfg = TrainConfig(
        epochs=1,
        identities_per_batch=batch // 4,
        images_per_identity=4,
        max_steps_per_epoch=args.train_steps,
        lr=1e-4,
        warmup_epochs=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(model, train_set, cfg, tmp, device=device, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        stage(
            "train (incl. 1 checkpoint)",
            time.perf_counter() - t0,
            args.train_steps * batch,
            "images",
        )

    qp, qc, qa = market_like(schema, ids, n_q, 6, rng, first_pid=1)
    gp, gc, ga = market_like(schema, ids, n_g, 6, rng, first_pid=1)
    query = RandomImages(qp, qc, qa, size, seed=1)
    gallery = RandomImages(gp, gc, ga, size, seed=2)
    t0 = time.perf_counter()
    ev = ConditionEvaluator(
        model, query, gallery, device=device, batch_size=256 if device.type == "cuda" else 32
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    stage("prefix cache (query+gallery)", time.perf_counter() - t0, n_q + n_g, "images")

    designs = [
        "full",
        "backbone",
        "leave_one_out",
        "only_one",
        "random_subsets",
        "counterfactual",
        "noisy",
    ]
    conditions = make_conditions(schema, designs, random_subsets=16)
    t0 = time.perf_counter()
    maps = []
    with torch.no_grad():
        for cond in conditions:
            result, _ = ev.run(cond)
            maps.append(result.mAP)
    if device.type == "cuda":
        torch.cuda.synchronize()
    stage(
        f"condition sweep ({len(conditions)} conditions)",
        time.perf_counter() - t0,
        len(conditions) * (n_q + n_g),
        "image-conditions",
    )
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    info = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "shape": "small" if args.small else "reference",
        "peak_gpu_gib": peak,
        "stages": rows,
    }
    print(json.dumps(info, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    sys.exit(main())

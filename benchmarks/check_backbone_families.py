"""Does every ViT that ``attrimp backbones list --all`` lists build, train and sweep?

    python benchmarks/check_backbone_families.py                    # every family, both banks
    python benchmarks/check_backbone_families.py --family clip --match SigLIP
    python benchmarks/check_backbone_families.py --csv out.csv --banks adapter

For each listed ``family:model`` name, with random weights and the tiny configuration studies
use (``backbone_kwargs = { tiny = true }``: 2 blocks, width 48; nothing is downloaded), at a
64x32 input (or the nearest size a dynamic-size model accepts):

1. build the MoSAIC model (expert bank on the last block, oracle router, BNNeck, classifier);
2. one training step (identity + batch-hard triplet loss, AdamW) whose loss is finite and which
   changes the weights;
3. evaluate as a study does: the test-time sweep (`ConditionEvaluator`: the backbone prefix
   cached once, the expert blocks per condition) for the ``full`` and ``backbone`` conditions,
   whose features must equal the model's own forward, and whose metrics must be finite; with
   every gate off the model's embedding must equal the bare backbone's (no expert attached).

Both expert banks are checked: ``adapter`` (a gated LoRA branch beside the MLP) and ``lora``
(gated LoRA updates of the MLP's own linears). Each row is ``ok``, ``refused: <reason>`` (a `ConfigError` the library
raises on purpose, its sentence) or ``failed: <error>`` (anything else: a bug). The summary
counts results by reason, with the model names stripped so equal reasons group.
"""

from __future__ import annotations

import argparse
import copy
import platform
import re
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import backbones  # noqa: E402
from attrimp.data.dataset import ReIDImageDataset, build_transforms  # noqa: E402
from attrimp.data.records import ImageRecord  # noqa: E402
from attrimp.errors import ConfigError  # noqa: E402
from attrimp.evaluate.ablation import make_conditions  # noqa: E402
from attrimp.evaluate.conditions import ConditionEvaluator, build_router  # noqa: E402
from attrimp.model.mosaic import MoSAICConfig, MoSAICReID  # noqa: E402
from attrimp.model.schema import load_schema  # noqa: E402
from attrimp.train.losses import batch_hard_triplet_loss, identity_loss  # noqa: E402

SIZE = (64, 32)
N_IMAGES = 12  # 6 identities x 2 cameras; query = even rows, gallery = odd rows


@dataclass
class Row:
    name: str
    bank: str
    result: str  # ok / refused / failed
    detail: str = ""
    seconds: float = 0.0


# --------------------------------------------------------------------------- the tiny world


class World:
    """Random images with annotations, as datasets at any input size (made once per size)."""

    def __init__(self, folder: Path) -> None:
        from PIL import Image

        self.schema = load_schema("market1501")
        rng = np.random.default_rng(0)
        self.records = []
        for i in range(N_IMAGES):
            path = folder / f"{i:04d}.png"
            Image.fromarray(rng.integers(0, 255, (128, 64, 3), dtype=np.uint8)).save(path)
            raw = {c: rng.integers(1, 3, 1) for g in self.schema.groups for c in g.source_columns}
            raw["age"] = rng.integers(1, 5, 1)
            attrs = self.schema.encode(raw)[0]
            self.records.append(
                ImageRecord(
                    path, pid=1 + i // 2, camid=i % 2, split="x", label=-1, attributes=attrs
                )
            )
        self._sets: dict[tuple[int, int], tuple[ReIDImageDataset, ReIDImageDataset]] = {}

    def sets(self, size: tuple[int, int]) -> tuple[ReIDImageDataset, ReIDImageDataset]:
        if size not in self._sets:
            tf = build_transforms(train=False, size=size)
            self._sets[size] = (
                ReIDImageDataset(self.records[::2], tf),
                ReIDImageDataset(self.records[1::2], tf),
            )
        return self._sets[size]

    def batch(self, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        query, gallery = self.sets(size)
        items = [query[i] for i in range(len(query))] + [gallery[i] for i in range(len(gallery))]
        images = torch.stack([it[0] for it in items])
        attrs = torch.from_numpy(
            np.stack(
                [r.attributes for r in self.records[::2]]
                + [r.attributes for r in self.records[1::2]]
            )
        ).float()
        pids = torch.tensor(
            [r.pid - 1 for r in self.records[::2]] + [r.pid - 1 for r in self.records[1::2]]
        )
        return images, attrs, pids


# --------------------------------------------------------------------------- one model


def _config(name: str, bank: str, size: tuple[int, int]) -> MoSAICConfig:
    return MoSAICConfig(
        backbone=name,
        pretrained=None,
        img_size=size,
        backbone_kwargs={"tiny": True},
        blocks=1,
        rank=4,
        num_classes=N_IMAGES // 2,
        bank=bank,
    )


def _build(name: str, bank: str) -> tuple[MoSAICReID, tuple[int, int]]:
    """The model at `SIZE`, or at the size a dynamic-size model says it needs."""
    torch.manual_seed(0)
    try:
        return MoSAICReID(_config(name, bank, SIZE)), SIZE
    except ConfigError as exc:
        fit = re.search(r"img_size = \[(\d+), (\d+)\]", str(exc))
        if not fit:
            raise
        size = (int(fit.group(1)), int(fit.group(2)))
        return MoSAICReID(_config(name, bank, size)), size


def _train_step(model: MoSAICReID, world: World, size: tuple[int, int]) -> None:
    images, attrs, pids = world.batch(size)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-3)
    out = model(images, attrs)
    loss = identity_loss(out.logits, pids) + batch_hard_triplet_loss(out.global_features, pids)
    if not torch.isfinite(loss):
        raise AssertionError(f"training loss is {loss.item()}")
    loss.backward()
    opt.step()
    if all(torch.equal(a, p) for a, p in zip(before, params)):
        raise AssertionError("the training step changed no weight")


def _sweep(model: MoSAICReID, world: World, size: tuple[int, int]) -> None:
    model.eval()
    with torch.no_grad():  # experts that change the output, so a wrong path would show
        for p in model.experts.parameters():
            p.normal_(0, 0.3)
    query, gallery = world.sets(size)
    ev = ConditionEvaluator(model, query, gallery, device=torch.device("cpu"), batch_size=4)
    images = torch.stack([query[i][0] for i in range(len(query))])
    for cond in make_conditions(world.schema, ["full", "backbone"])[:2]:
        router = build_router(cond, world.schema, query=True)
        fast = ev.features("query", router)
        with torch.no_grad():
            slow = model(images, ev.splits["query"].attributes, router=router).features
        if not torch.allclose(fast, slow, rtol=1e-4, atol=1e-4):
            raise AssertionError(
                f"the sweep's split forward differs from the model's ({cond.name})"
            )
        result, _ = ev.run(cond)
        if not np.isfinite(np.asarray(result.ap, dtype=float)).all():
            raise AssertionError(f"non-finite AP in condition {cond.name}")
    bare = copy.deepcopy(model)
    bare.experts.detach()
    with torch.no_grad():
        off = model(images, gates=torch.zeros(len(images), model.schema.n_experts))
        if not torch.equal(off.global_features, bare.backbone(images)):
            raise AssertionError("with every gate off the model's embedding is not the backbone's")


def check_one(name: str, bank: str, world: World) -> Row:
    start = time.perf_counter()
    try:
        model, size = _build(name, bank)
        _train_step(model, world, size)
        _sweep(model, world, size)
        row = Row(name, bank, "ok")
    except ConfigError as exc:
        row = Row(name, bank, "refused", str(exc))
    except Exception as exc:  # a bug: keep going, say where
        where = traceback.extract_tb(exc.__traceback__)[-1]
        detail = f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})"
        row = Row(name, bank, "failed", detail.splitlines()[0])
    row.seconds = time.perf_counter() - start
    return row


# --------------------------------------------------------------------------- the summary


def reason_key(detail: str) -> str:
    """A refusal or error with model names, sizes and numbers stripped, so equal reasons group."""
    text = re.sub(r"\b[\w-]+:[A-Za-z][\w.-]*", "<model>", detail)
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"\b\d+(\.\d+)?\b", "N", text)
    text = re.sub(r"\[[^\]]*\]", "[…]", text)
    return text[:160]


def summarize(rows: list[Row]) -> str:
    lines = []
    for bank in sorted({r.bank for r in rows}):
        mine = [r for r in rows if r.bank == bank]
        counts = Counter(r.result for r in mine)
        lines.append(
            f"bank {bank}: {len(mine)} models: {counts['ok']} ok, {counts['refused']} refused, "
            f"{counts['failed']} failed"
        )
        for kind in ("refused", "failed"):
            by = Counter(reason_key(r.detail) for r in mine if r.result == kind)
            for reason, n in by.most_common():
                lines.append(f"  {kind} x{n}: {reason}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", help="only this family (clip, timm, ...)")
    ap.add_argument("--match", help="only names containing this (case-insensitive)")
    ap.add_argument("--banks", default="adapter,lora", help="expert banks to check")
    ap.add_argument("--limit", type=int, default=None, help="at most this many names")
    ap.add_argument("--csv", type=Path, help="write every row here")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import logging
    import warnings

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    names = backbones.list_backbones(args.family, all=True)
    if args.match:
        names = [n for n in names if args.match.lower() in n.lower()]
    names = names[: args.limit]
    banks = [b.strip() for b in args.banks.split(",") if b.strip()]
    rows: list[Row] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp))
        for name in names:
            for bank in banks:
                row = check_one(name, bank, world)
                rows.append(row)
                detail = f": {row.detail[:150]}" if row.detail else ""
                print(f"{name:<52} {bank:<8} {row.result}{detail}", flush=True)
    took = time.perf_counter() - start
    print()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()} ({platform.machine()}, "
        f"torch {torch.__version__}, {args.threads} thread(s)), {took:.0f} s"
    )
    print(summarize(rows))
    if args.csv:
        import csv

        with args.csv.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["name", "bank", "result", "detail", "seconds"])
            for r in rows:
                writer.writerow([r.name, r.bank, r.result, r.detail, f"{r.seconds:.2f}"])
    return 1 if any(r.result == "failed" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())

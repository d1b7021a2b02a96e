"""Test-time ablations on one trained model: every condition's features, metrics and tables.

Conditions differ only in the gates of the expert blocks, which are the last K blocks of the
backbone. So the tokens at the input of the first expert block are computed ONCE per image and
kept; each condition then runs only the K expert blocks (+ final norm + BNNeck). With K = 2 of
12 ViT-B blocks that makes a sweep of ~100 conditions about 6× cheaper than full forwards, and it
is exact: the prefix does not depend on the gates. Backbones without `forward_prefix` fall back
to full forward passes.

Where the prefix lives and what it costs: one tensor per split ``[images, tokens, width]`` on the
evaluation device, in the dtype the prefix blocks return (float32 on the CPU; under CUDA's bf16
autocast CLIP's residual stream comes out in bf16, timm's stays float32). It is filled in place
batch by batch, so the peak is the cache itself, not the cache plus a list of batches to
concatenate. At Market-1501 size with ViT-B/16 at 256×128 that is (3,368 + 15,913) × 129 × 768
× 4 bytes = 7.6 GB in float32, 3.8 GB in bf16 (`prefix_info`); it fits an 80 GB GPU and a 24 GB
CPU machine, so it is neither chunked to disk nor rounded further (which would make the sweep
differ from a full forward).

Which samples each router bends (documented in docs/study.md):
- masks (backbone, leave-one-out, only-one, random subsets) and noise apply to query AND gallery
  (the deployed model sees the same switch everywhere);
- a counterfactual edits the QUERY's annotation only: "if this person's upper colour were red,
  would we still find them in a gallery annotated truthfully?".
- the learned router's readings (``matched_noisy``, ``partial_oracle:<group>``) apply to query
  AND gallery, like the learned router itself. Both start from the learned router's prediction
  on each split, computed once from the cached prefix (the router reads the CLS token at the
  input of the first expert block, which is exactly the prefix's first token): the partial
  oracle gates the oracle from the predicted values with its groups' columns replaced by the
  annotation's; the matched-noise oracle corrupts the annotation at the prediction's per-group
  error rates on the query and gallery images together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from attrimp.errors import ConfigError
from attrimp.evaluate.ablation import Condition
from attrimp.evaluate.metrics import EvalResult, evaluate, pairwise_distance
from attrimp.model.interfaces import Router
from attrimp.model.mosaic import MoSAICReID
from attrimp.model.schema import AttributeSchema
from attrimp.threads import cpu_threads, threads_for


def build_router(
    condition: Condition,
    schema: AttributeSchema,
    *,
    query: bool,
    noise_rates: dict[str, float] | None = None,
) -> Router:
    """The router that realises ``condition`` (for the query side when ``query``).

    ``noise_rates`` (per group) replaces the condition's single noise rate: the matched-noise
    oracle's rates, which come from the trained model, not from the condition.

    Every router comes from the `routers` registry by name, so this module imports no router."""
    from routers import build_router as router

    base: Router = router("oracle")
    noise = noise_rates if noise_rates is not None else condition.noise_p
    if noise is not None:
        # Query and gallery draw from different streams: one seed for both would corrupt the
        # i-th query and the i-th gallery image alike.
        base = router("noisy", p=noise, seed=condition.seed * 2 + int(query), base=base)
    if condition.counterfactual is not None and query:
        group, value = condition.counterfactual
        base = router("counterfactual", group=group, value=value, base=base, schema=schema)
    if set(condition.groups_on) != set(schema.group_names):
        base = router("mask", groups_on=list(condition.groups_on), base=base, schema=schema)
    return base


@dataclass
class SplitTensors:
    """One split's fixed inputs: images (lazily), annotations, ids, and cached prefix tokens."""

    attributes: torch.Tensor  # [N, n_slots]
    pids: np.ndarray
    camids: np.ndarray
    names: list[str]
    prefix: torch.Tensor | None = None  # [N, tokens, D] at the first expert block's input
    prefix_ctx: Any = None
    #: ``attributes`` on the evaluation device, copied once: a copy per batch from pageable
    #: memory would synchronise the GPU stream at every batch of every condition
    device_attributes: torch.Tensor | None = None


class ConditionEvaluator:
    """Evaluates conditions on a trained model against one query / gallery split."""

    def __init__(
        self,
        model: MoSAICReID,
        query_set,
        gallery_set,
        *,
        device: torch.device,
        batch_size: int = 64,
        metric: str = "euclidean",
        max_rank: int = 50,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.model = model.eval().to(device)
        self.schema = model.schema
        self.device = device
        self.batch_size = batch_size
        self.metric = metric
        self.max_rank = max_rank
        self.progress = progress
        self.sets = {"query": query_set, "gallery": gallery_set}
        blocks = model.experts.block_indices
        self.split_block = blocks[0] if blocks else len(model.backbone.blocks)
        self.use_prefix = model.backbone.splits_forward
        self.splits = {name: self._prepare(name, ds) for name, ds in self.sets.items()}
        #: the learned router's attribute logits per split (`learned_logits`), computed once
        self._learned_logits: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(
        cls, model: MoSAICReID, query_set, gallery_set, eval_cfg, *, device, progress=None
    ) -> ConditionEvaluator:
        """An evaluator with the batch size, metric and CMC length of an `EvalConfig`."""
        return cls(
            model,
            query_set,
            gallery_set,
            device=device,
            batch_size=eval_cfg.batch_size,
            metric=eval_cfg.metric,
            max_rank=eval_cfg.max_rank,
            progress=progress,
        )

    # ------------------------------------------------------------------ inputs
    def _autocast(self):
        return torch.autocast(
            device_type=self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
        )

    def _batches(self, ds):
        for start in range(0, len(ds), self.batch_size):
            items = [ds[i] for i in range(start, min(len(ds), start + self.batch_size))]
            images = torch.stack([x[0] for x in items]).to(self.device, non_blocking=True)
            camids = torch.as_tensor([x[2] for x in items], device=self.device)
            yield start, images, camids

    def _threads(self, rows: int) -> int | None:
        """Intra-op threads for a batch of ``rows`` images through the transformer blocks: one
        for small work (the built-in study's tiny ViT), the available CPUs for large (see
        `attrimp.threads`); None off the CPU (leave the setting alone)."""
        if self.device.type != "cpu":
            return torch.get_num_threads()
        bb = self.model.backbone
        tokens = bb.grid_size[0] * bb.grid_size[1] + bb.num_prefix_tokens
        return threads_for(rows * tokens * bb.width * bb.width)

    def _camids(self, camids: torch.Tensor) -> torch.Tensor | None:
        return camids if self.model.config.camera_count > 0 else None

    def _prepare(self, name: str, ds) -> SplitTensors:
        records = ds.records
        split = SplitTensors(
            attributes=torch.from_numpy(np.stack([r.attributes for r in records])).float(),
            pids=np.array([r.pid for r in records]),
            camids=np.array([r.camid for r in records]),
            names=[r.path.name for r in records],
        )
        split.device_attributes = split.attributes.to(self.device)
        if self.model.config.camera_count > 0:  # once per split, on the host (not per batch)
            self.model.check_camids(split.camids)
        if not self.use_prefix:
            return split
        with torch.no_grad(), self._autocast(), cpu_threads(self._threads(self.batch_size)):
            for start, images, camids in self._batches(ds):
                x, ctx = self.model.backbone.forward_prefix(
                    images, self._camids(camids), stop=self.split_block
                )
                if split.prefix is None:  # one allocation, filled in place: no 2x peak
                    split.prefix = x.new_empty((len(ds), *x.shape[1:]))
                split.prefix[start : start + len(x)] = x
                split.prefix_ctx = ctx
                if self.progress:
                    self.progress(f"prefix {name}", start + len(images), len(ds))
        return split

    def prefix_info(self) -> dict[str, Any]:
        """Size, dtype and place of the cached backbone prefix (the study records it)."""
        cached = [s.prefix for s in self.splits.values() if s.prefix is not None]
        if not cached:
            return {"prefix_bytes": 0, "prefix_device": None, "prefix_dtype": None}
        return {
            "prefix_bytes": sum(t.numel() * t.element_size() for t in cached),
            "prefix_device": str(cached[0].device),
            "prefix_dtype": str(cached[0].dtype).removeprefix("torch."),
            "prefix_tokens": int(cached[0].shape[1]),
            "prefix_width": int(cached[0].shape[2]),
            "split_block": self.split_block,
        }

    # ------------------------------------------------------------------ features
    def features(
        self,
        name: str,
        router: Router | None,
        *,
        reset: bool = True,
        attributes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """BNNeck features of split ``name`` under ``router`` (None = the model's own router).

        ``attributes`` (``[N, n_slots]`` on the device) replaces the split's annotation as the
        router's input: the partial oracle's mix of predicted and true values."""
        if reset and router is not None:
            router.reset()
        split = self.splits[name]
        routed = attributes if attributes is not None else split.device_attributes
        out = []
        with torch.no_grad(), self._autocast(), cpu_threads(self._threads(self.batch_size)):
            if router is None or not self.use_prefix or router.needs_features:
                for start, images, camids in self._batches(self.sets[name]):
                    attrs = routed[start : start + len(images)]
                    feats = self.model(images, attrs, self._camids(camids), router=router).features
                    out.append(feats.float())
            else:
                for start in range(0, len(split.attributes), self.batch_size):
                    attrs = routed[start : start + self.batch_size]
                    gates = router.route(attrs, self.schema).to(self.device)
                    x = split.prefix[start : start + self.batch_size]
                    with self.model.experts.gated(gates):
                        tokens = self.model.backbone.forward_suffix(
                            x, split.prefix_ctx, start=self.split_block
                        )
                    out.append(self.model.neck(tokens[:, 0].float()))
        return torch.cat(out)

    def run(self, condition: Condition) -> tuple[EvalResult, dict[str, float]]:
        """Metrics of one condition, plus the mean gate of each group over the queries."""
        if condition.router == "learned":
            qf, gf = self.features("query", None), self.features("gallery", None)
        elif condition.router == "partial_oracle":
            qf, gf = (self._partial_oracle_features(condition, n) for n in ("query", "gallery"))
        else:
            rates = self.learned_error_rates() if condition.router == "matched_noisy" else None
            qf, gf = (
                self.features(n, build_router(condition, self.schema, query=q, noise_rates=rates))
                for n, q in (("query", True), ("gallery", False))
            )
        work = qf.shape[0] * gf.shape[0] * qf.shape[1]  # one matrix product
        cpu = self.device.type == "cpu"
        with cpu_threads(threads_for(work) if cpu else torch.get_num_threads()):
            dist = pairwise_distance(qf, gf, self.metric)
        q, g = self.splits["query"], self.splits["gallery"]
        result = evaluate(dist, q.pids, g.pids, q.camids, g.camids, max_rank=self.max_rank)
        return result, condition.group_mask(self.schema)

    # ------------------------------------------------------------------ the learned router
    def learned_logits(self, name: str) -> torch.Tensor:
        """The model's learned router's attribute logits ``[N, n_slots]`` on split ``name``
        (CPU, float32), computed once: from the cached prefix's CLS token when there is one
        (what the router reads inside the forward), else from full forward passes."""
        if name in self._learned_logits:
            return self._learned_logits[name]
        router, split = self.model.router, self.splits[name]
        if not router.needs_features:
            raise ConfigError(
                "The learned router's readings (matched_noisy, partial_oracle) need a model "
                "trained with the learned router (router.name = 'learned')."
            )
        out = []
        with torch.no_grad(), self._autocast(), cpu_threads(self._threads(self.batch_size)):
            if self.use_prefix:
                for start in range(0, len(split.attributes), self.batch_size):
                    out.append(router(split.prefix[start : start + self.batch_size, 0]).float())
            else:
                for start, images, camids in self._batches(self.sets[name]):
                    attrs = split.device_attributes[start : start + len(images)]
                    logits = self.model(images, attrs, self._camids(camids)).attr_logits
                    out.append(logits.float())
        self._learned_logits[name] = torch.cat(out).cpu()
        return self._learned_logits[name]

    def learned_accuracy(self) -> dict[str, Any]:
        """`routers.learned.group_accuracy` of the learned router on the test split (query and
        gallery images together, the images it routes in every condition)."""
        from routers.learned import group_accuracy

        names = ("query", "gallery")
        logits = torch.cat([self.learned_logits(n) for n in names])
        truth = torch.cat([self.splits[n].attributes for n in names])
        return group_accuracy(logits, truth, self.schema)

    def learned_error_rates(self) -> dict[str, float]:
        """Per group, the learned router's error rate on the test split (0 where no image is
        annotated for the group): the matched-noise oracle's rates."""
        errors = self.learned_accuracy()["error_rate"]
        return {g: (float(v) if v == v else 0.0) for g, v in errors.items()}

    def _partial_oracle_features(self, condition: Condition, name: str) -> torch.Tensor:
        """Features of split ``name`` gated from the learned router's predicted values, with the
        condition's ``oracle_groups`` taken from the annotation instead (`partial_oracle`)."""
        from routers import build_router

        mixed = partial_oracle_slots(
            self.model.router,
            self.learned_logits(name),
            self.splits[name].attributes,
            self.schema,
            condition.oracle_groups or (),
        )
        router: Router = build_router("oracle")
        if set(condition.groups_on) != set(self.schema.group_names):
            groups_on = list(condition.groups_on)
            router = build_router("mask", groups_on=groups_on, base=router, schema=self.schema)
        return self.features(name, router, attributes=mixed.to(self.device))

    def table(self, condition: Condition, result: EvalResult) -> pd.DataFrame:
        """The per-query rows of the ReID result table for one condition."""
        q = self.splits["query"]
        values = self.schema.decode(q.attributes.numpy())
        frame = pd.DataFrame(
            {
                "config": condition.name,
                "design": condition.design,
                "query": q.names,
                "pid": q.pids,
                "camid": q.camids,
                **values,
                "ap": result.ap,
                "rank1": result.rank1.astype(int),
                "first_hit": result.first_hit,
                "inp": result.inp,
                "valid": result.valid,
            }
        )
        for group, on in condition.group_mask(self.schema).items():
            frame[f"on_{group}"] = on
        return frame


def partial_oracle_slots(
    router,
    logits: torch.Tensor,
    attributes: torch.Tensor,
    schema: AttributeSchema,
    oracle_groups: tuple[str, ...] | list[str],
) -> torch.Tensor:
    """The slot values ``[N, n_slots]`` from which the oracle gates a partial oracle.

    The learned router's own gate values per slot (its per-group one-hot for hard gates, its
    per-group probabilities for soft ones), so that the oracle's gather of them at the expert
    slots gives exactly the learned router's gates; then the columns of ``oracle_groups`` are
    replaced by the annotation's. With no oracle group this is the learned router; with every
    group, the oracle.
    """
    unknown = sorted(set(oracle_groups) - set(schema.group_names))
    if unknown:
        raise ConfigError(f"partial oracle: unknown group {unknown[0]!r}.")
    hard = getattr(router, "gate_mode", "hard") == "hard"
    slots = router.predict(logits) if hard else router.probabilities(logits)
    slots = slots.to(torch.float32).clone()
    for g in oracle_groups:
        cols = schema.group_slots(g)
        slots[:, cols] = attributes[:, cols].to(torch.float32)
    return slots


def attribute_only_baseline(
    schema: AttributeSchema,
    query: SplitTensors,
    gallery: SplitTensors,
    *,
    max_rank: int = 50,
) -> tuple[EvalResult, pd.DataFrame]:
    """Rank the gallery by agreement of the annotations alone, and count shared signatures.

    Identity-level annotations are the same for every image of an identity, so an oracle router
    hands the model a tag that can single out an identity by itself. This baseline measures how
    far that tag alone goes: the distance is the number of groups whose values disagree (ties
    broken by gallery order, as everywhere). The signature table says how many identities share
    each full attribute signature: a signature held by one identity is an identity leak.
    """

    def group_codes(multihot: torch.Tensor) -> np.ndarray:
        decoded = schema.decode(multihot.numpy())
        return np.stack([np.asarray(decoded[g]) for g in schema.group_names], axis=1)

    qc, gc = group_codes(query.attributes), group_codes(gallery.attributes)
    # Disagreement count: an unknown value disagrees with everything (it carries no tag).
    dist = np.zeros((len(qc), len(gc)), dtype=np.float32)
    for j in range(qc.shape[1]):
        same = qc[:, j][:, None] == gc[:, j][None, :]
        known = (qc[:, j] != "unknown")[:, None] & (gc[:, j] != "unknown")[None, :]
        dist += ~(same & known)
    result = evaluate(
        dist, query.pids, gallery.pids, query.camids, gallery.camids, max_rank=max_rank
    )

    pids = np.concatenate([query.pids, gallery.pids])
    codes = np.concatenate([qc, gc])
    keep = pids > 0  # distractors and junk carry no annotation
    per_identity = (
        pd.DataFrame(codes[keep], columns=schema.group_names)
        .assign(pid=pids[keep])
        .drop_duplicates("pid")
    )
    signature = per_identity[schema.group_names].agg("|".join, axis=1)
    counts = signature.map(signature.value_counts())
    table = (
        pd.DataFrame({"identities_sharing_signature": counts.values})
        .value_counts()
        .rename("identities")
        .reset_index()
        .sort_values("identities_sharing_signature")
    )
    return result, table.reset_index(drop=True)

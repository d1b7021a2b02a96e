"""Test-time ablations: the cached-prefix path is exact, routers bend the right side, and the
attribute-only baseline ranks by annotation agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import backbones
from attrimp.data.dataset import ReIDImageDataset, build_transforms
from attrimp.data.records import ImageRecord
from attrimp.evaluate.ablation import Condition, make_conditions
from attrimp.evaluate.conditions import (
    ConditionEvaluator,
    SplitTensors,
    attribute_only_baseline,
    build_router,
)
from attrimp.model.mosaic import MoSAICConfig, MoSAICReID
from attrimp.model.schema import load_schema


@pytest.mark.parametrize(
    "name, depth", [("timm:vit_tiny_patch16_224", {"depth": 3}), ("clip:ViT-B-16", {"layers": 3})]
)
def test_prefix_then_suffix_equals_the_whole_forward(name, depth):
    torch.manual_seed(0)
    bb = backbones.build(name, tiny=True, img_size=(64, 32), **depth).eval()
    images = torch.randn(2, 3, 64, 32)
    whole = bb.forward_tokens(images)
    for split in (0, 1, 3):
        x, ctx = bb.forward_prefix(images, stop=split)
        assert torch.equal(bb.forward_suffix(x, ctx, start=split), whole)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from PIL import Image

    schema = load_schema("market1501")
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("imgs")
    records = []
    for i in range(12):
        path = folder / f"{i:04d}.png"
        Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(path)
        raw = {c: rng.integers(1, 3, 1) for g in schema.groups for c in g.source_columns}
        raw["age"] = rng.integers(1, 5, 1)
        records.append(
            ImageRecord(
                path,
                pid=1 + i // 2,
                camid=i % 2,
                split="x",
                label=-1,
                attributes=schema.encode(raw)[0],
            )
        )
    tf = build_transforms(train=False, size=(64, 32))
    query = ReIDImageDataset(records[::2], tf)
    gallery = ReIDImageDataset(records[1::2], tf)
    torch.manual_seed(0)
    cfg = MoSAICConfig(
        backbone="timm:vit_tiny_patch16_224",
        pretrained=None,
        img_size=(64, 32),
        backbone_kwargs={"tiny": True, "depth": 3},
        blocks=2,
        rank=4,
    )
    model = MoSAICReID(cfg, schema=schema)
    with torch.no_grad():  # give the experts non-zero B so gates matter
        for layer in model.experts.layers:
            for p in layer.parameters():
                p.normal_(0, 0.5)
    return schema, model, query, gallery


def test_cached_prefix_features_equal_full_forwards(tiny_setup):
    schema, model, query, gallery = tiny_setup
    ev = ConditionEvaluator(model, query, gallery, device=torch.device("cpu"), batch_size=4)
    assert ev.use_prefix and ev.split_block == 1
    for cond in make_conditions(schema, ["full", "backbone", "leave_one_out"])[:4]:
        router = build_router(cond, schema, query=True)
        fast = ev.features("query", router)
        images = torch.stack([query[i][0] for i in range(len(query))])
        with torch.no_grad():
            slow = model.eval()(images, ev.splits["query"].attributes, router=router).features
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    full = ev.features(
        "query",
        build_router(Condition("full", "full", tuple(schema.group_names)), schema, query=True),
    )
    off = ev.features(
        "query", build_router(Condition("backbone", "backbone", ()), schema, query=True)
    )
    assert not torch.allclose(full, off)  # the experts do change the features


def test_counterfactual_edits_queries_only_and_noise_both(tiny_setup):
    schema = tiny_setup[0]
    attrs = torch.zeros(3, schema.n_slots)
    attrs[:, schema.slot("upcolor", "black")] = 1
    cond = Condition(
        "cf", "counterfactual", tuple(schema.group_names), counterfactual=("upcolor", "red")
    )
    q_gates = build_router(cond, schema, query=True).route(attrs, schema)
    g_gates = build_router(cond, schema, query=False).route(attrs, schema)
    names = schema.expert_names
    assert (q_gates[:, names.index("upcolor=red")] == 1).all()
    assert (q_gates[:, names.index("upcolor=black")] == 0).all()
    assert (g_gates[:, names.index("upcolor=black")] == 1).all()
    masked = build_router(Condition("w", "leave_one_out", ("gender",)), schema, query=False)
    gates = masked.route(attrs, schema)
    on = [i for i, n in enumerate(names) if not n.startswith("gender=")]
    assert gates[:, on].sum() == 0


def test_attribute_only_baseline_by_hand():
    schema = load_schema("market1501")

    def split(rows, pids, cams):
        mh = np.zeros((len(rows), schema.n_slots), dtype=np.float32)
        for i, row in enumerate(rows):
            for g, v in row.items():
                mh[i, schema.slot(g, v)] = 1
        return SplitTensors(
            torch.from_numpy(mh), np.array(pids), np.array(cams), [str(p) for p in pids]
        )

    a = {"gender": "male", "hat": "yes"}
    b = {"gender": "female", "hat": "no"}
    query = split([a, b], [1, 2], [0, 0])
    # gallery: identity 2 looks like a (one group off), identity 1 exactly a, then b
    gallery = split([{"gender": "male", "hat": "no"}, a, b], [2, 1, 2], [1, 1, 1])
    result, signatures = attribute_only_baseline(schema, query, gallery, max_rank=3)
    # query 1 (a): distances 1, 0, 2 over groups with annotation -> its match is first: AP 1
    # query 2 (b): distances 1 (pid 2), 2 (pid 1), 0 (pid 2) -> matches at ranks 1 and 2: AP 1
    assert result.ap.tolist() == [1.0, 1.0]
    # identity 1 has signature a, identity 2 has b (its first image wins): both unique
    assert signatures.to_dict("records") == [{"identities_sharing_signature": 1, "identities": 2}]

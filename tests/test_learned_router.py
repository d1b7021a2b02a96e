"""The learned router: attribute heads on an intermediate CLS token, gates from the prediction."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from attrimp.config import config_from_dict, load_config
from attrimp.errors import ConfigError
from attrimp.model.checkpoint import load_model, save_checkpoint
from attrimp.model.mosaic import MoSAICConfig, MoSAICReID
from attrimp.model.schema import load_schema
from attrimp.train.pipeline import model_config
from routers.learned import LearnedRouter, attribute_accuracy

MARKET = load_schema("market1501")
IMG = (32, 16)
STUDY_CONFIG = Path(__file__).resolve().parents[1] / "studies" / "configs" / "synthetic_study.toml"


def learned_model(seed: int = 0, **overrides) -> MoSAICReID:
    torch.manual_seed(seed)
    cfg = dict(
        backbone="timm:vit_tiny_patch16_224",
        pretrained=None,
        img_size=IMG,
        backbone_kwargs={"tiny": True, "depth": 3},
        blocks=1,
        router="learned",
    )
    return MoSAICReID(MoSAICConfig(**{**cfg, **overrides}))


def test_hard_gates_are_one_hot_per_group_and_soft_gates_are_probabilities():
    router = LearnedRouter(MARKET, 8)
    logits = torch.randn(16, MARKET.n_slots, generator=torch.Generator().manual_seed(0))
    hard = router.predict(logits)
    soft = router.probabilities(logits)
    for g in MARKET.groups:
        slots = MARKET.group_slots(g.name)
        assert torch.equal(hard[:, slots].sum(1), torch.ones(16))
        assert torch.equal(hard[:, slots].argmax(1), logits[:, slots].argmax(1))
        torch.testing.assert_close(soft[:, slots], torch.softmax(logits[:, slots], dim=1))
    gates = router.gates_from_logits(logits)
    assert torch.equal(gates, hard[:, MARKET.expert_slots.tolist()])
    assert set(gates.unique().tolist()) == {0.0, 1.0}
    hat = MARKET.expert_names.index("hat=yes")
    no, yes = MARKET.group_slots("hat")
    assert torch.equal(gates[:, hat], (logits[:, yes] > logits[:, no]).float())
    router.gate_mode = "soft"
    torch.testing.assert_close(
        router.gates_from_logits(logits), soft[:, MARKET.expert_slots.tolist()]
    )


def test_loss_is_cross_entropy_per_group_ignoring_missing_and_multiple():
    router = LearnedRouter(MARKET, 8)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, MARKET.n_slots, generator=g)
    truth = torch.zeros(5, MARKET.n_slots)
    for i in range(5):
        for grp in MARKET.groups:
            slots = MARKET.group_slots(grp.name)
            if (i + len(slots)) % 3 == 0:
                continue  # missing
            truth[i, slots[(i * 7 + len(slots)) % len(slots)]] = 1.0
    color = MARKET.group_slots("upcolor")
    truth[0, color] = 0.0
    truth[0, color[:3]] = 1.0  # multiply marked
    terms = []
    for i in range(5):
        for grp in MARKET.groups:
            slots = MARKET.group_slots(grp.name)
            if truth[i, slots].sum() == 1:
                target = truth[i, slots].argmax().unsqueeze(0)
                terms.append(F.cross_entropy(logits[i, slots].unsqueeze(0), target))
    assert 10 < len(terms) < 5 * MARKET.n_groups
    torch.testing.assert_close(router.loss(logits, truth), torch.stack(terms).mean())


def test_attribute_accuracy_against_hand_counts():
    n = 6
    truth = torch.zeros(n, MARKET.n_slots)
    scores = torch.randn(n, MARKET.n_slots, generator=torch.Generator().manual_seed(2))
    male, female = MARKET.group_slots("gender")
    for i, t in enumerate([male, male, male, female, female, None]):
        if t is not None:
            truth[i, t] = 1
    for i, p in enumerate([male, female, male, female, male, female]):
        scores[i, [male, female]] = 0.0
        scores[i, p] = 10.0
    age = MARKET.group_slots("age")
    for i, t in enumerate([[0], [1], [1], [2], [], [0, 1]]):
        truth[i, [age[k] for k in t]] = 1
    for i, p in enumerate([0, 1, 0, 3, 0, 1]):
        scores[i, age] = 0.0
        scores[i, age[p]] = 10.0
    res = attribute_accuracy(scores, truth, MARKET)
    female_name = f"gender={MARKET.group('gender').values[1]}"
    ages = [f"age={v}" for v in MARKET.group("age").values]
    # gender=female over the 5 annotated: TPR 1/2, TNR 2/3
    assert res["balanced_accuracy"][female_name] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert res["group_accuracy"]["gender"] == pytest.approx(3 / 5)
    # age one-vs-rest over samples 0,1,2,3,5 (4 is missing); sample 5 is marked twice
    assert res["balanced_accuracy"][ages[0]] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert res["balanced_accuracy"][ages[1]] == pytest.approx((2 / 3 + 1) / 2)
    assert res["balanced_accuracy"][ages[2]] == pytest.approx((0 + 1) / 2)
    assert math.isnan(res["balanced_accuracy"][ages[3]])  # no positive sample
    assert res["group_accuracy"]["age"] == pytest.approx(2 / 4)
    assert math.isnan(res["group_accuracy"]["hat"])  # nobody annotated
    assert res["mA"] == pytest.approx(((1 / 2 + 2 / 3) / 2 * 2 + (2 / 3 + 1) / 2 + 0.5) / 4)
    assert res["mean_group_accuracy"] == pytest.approx((3 / 5 + 2 / 4) / 2)
    # 30 binary attributes for Market-1501: 9 two-valued groups + 4 ages + 8 + 9 colours
    assert len(res["balanced_accuracy"]) == 30


def brightness_batch(n: int, seed: int):
    """Gender is visible (bright = female), hair is a coin flip the pixels do not show."""
    g = torch.Generator().manual_seed(seed)
    female = torch.rand(n, generator=g) < 0.5
    long_hair = torch.rand(n, generator=g) < 0.5
    images = (
        torch.randn(n, 3, *IMG, generator=g) + torch.where(female, 0.6, -0.6)[:, None, None, None]
    )
    attrs = torch.zeros(n, MARKET.n_slots)
    attrs[torch.arange(n), torch.tensor(MARKET.group_slots("gender"))[female.long()]] = 1
    attrs[torch.arange(n), torch.tensor(MARKET.group_slots("hair"))[long_hair.long()]] = 1
    return images, attrs


def test_learned_router_learns_a_visible_attribute_and_gates_without_annotations():
    model = learned_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(15):
        x, attrs = brightness_batch(32, seed=step)
        out = model(x, attrs)
        # teacher forcing: in training the experts are gated by the annotation
        assert torch.equal(out.gates, attrs[:, MARKET.expert_slots.tolist()])
        loss = model.router.loss(out.attr_logits, attrs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, attrs = brightness_batch(256, seed=1000)
    with torch.no_grad():
        out = model(x)  # no annotation at test time
    res = attribute_accuracy(out.attr_logits, attrs, MARKET)
    assert res["group_accuracy"]["gender"] > 0.9
    assert res["group_accuracy"]["hair"] < 0.7  # not visible: no better than chance
    assert torch.equal(out.gates, model.router.gates_from_logits(out.attr_logits))
    for grp in MARKET.groups:  # hard gates: one value per group (single groups: 0 or 1 expert)
        on = out.gates[:, torch.as_tensor(MARKET.expert_group == MARKET.group_index(grp.name))]
        assert (on.sum(1) <= 1).all() and (grp.kind.value == "single" or (on.sum(1) == 1).all())


def test_learned_router_needs_a_block_before_the_experts_and_the_cls_token():
    with pytest.raises(ConfigError, match="start at block 0"):
        learned_model(blocks=3)
    router = LearnedRouter(MARKET, 48)
    with pytest.raises(ConfigError, match="needs the CLS token"):
        router.route(torch.zeros(2, MARKET.n_slots), MARKET)
    with pytest.raises(ConfigError, match="gates 'fuzzy'"):
        LearnedRouter(MARKET, 48, gates="fuzzy")


def test_learned_router_compiles_without_graph_breaks():
    model = learned_model(router_kwargs={"gates": "soft"}).eval()
    x, _ = brightness_batch(4, seed=0)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons


def shared_token_batch(n: int, seed: int, width: int = 48):
    """Features like the CLS token of a ViT trained from scratch at the router's decision point:
    one vector shared by every image plus a small per-image part (about 0.05% of the energy
    after a LayerNorm varies across images, as in the built-in study), gender in that part."""
    g = torch.Generator().manual_seed(seed)
    shared = 5.0 * torch.randn(width, generator=torch.Generator().manual_seed(123))
    u = F.normalize(torch.randn(width, generator=torch.Generator().manual_seed(7)), dim=0)
    female = torch.rand(n, generator=g) < 0.5
    sign = torch.where(female, 1.0, -1.0)[:, None]
    x = shared + 0.1 * torch.randn(n, width, generator=g) + 0.3 * sign * u
    attrs = torch.zeros(n, MARKET.n_slots)
    attrs[torch.arange(n), torch.tensor(MARKET.group_slots("gender"))[female.long()]] = 1
    return x, attrs


def train_router_on_shared_tokens(norm: str) -> float:
    torch.manual_seed(0)
    router = LearnedRouter(MARKET, 48, norm=norm)
    opt = torch.optim.Adam(router.parameters(), lr=3e-3)
    router.train()
    for step in range(60):
        x, attrs = shared_token_batch(32, seed=step)
        loss = router.loss(router(x), attrs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    router.eval()  # a batch norm now uses its running statistics
    x, attrs = shared_token_batch(256, seed=1000)
    with torch.no_grad():
        return attribute_accuracy(router(x), attrs, MARKET)["group_accuracy"]["gender"]


def test_batch_norm_router_learns_from_a_token_that_is_mostly_shared_by_every_image():
    # A LayerNorm normalises each token on its own and keeps the shared offset: the heads see
    # a near-constant input and predict one gender for everybody (the built-in study's mA 0.50).
    assert train_router_on_shared_tokens("layer") == pytest.approx(0.5, abs=0.05)
    # A BatchNorm standardises every channel across images and exposes the per-image part.
    assert train_router_on_shared_tokens("batch") > 0.95


def test_router_norm_is_a_config_key_that_reaches_the_model(tmp_path):
    data = SimpleNamespace(schema=MARKET, num_cameras=2, num_train_pids=4)
    model_keys = {
        "backbone": "timm:vit_tiny_patch16_224",
        "pretrained": False,
        "img_size": list(IMG),
        "backbone_kwargs": {"tiny": True, "depth": 3},
    }

    def build(router: dict) -> MoSAICReID:
        cfg = config_from_dict({"model": model_keys, "experts": {"blocks": 1}, "router": router})
        torch.manual_seed(0)
        return MoSAICReID(model_config(cfg, data), schema=MARKET)

    assert isinstance(build({"name": "learned"}).router.norm, torch.nn.LayerNorm)  # default
    model = build({"name": "learned", "norm": "batch"})
    assert isinstance(model.router.norm, torch.nn.BatchNorm1d)
    assert model.config.router_kwargs["norm"] == "batch"
    # training updates the running statistics; a checkpoint keeps them and the setting
    model.train()
    x, attrs = brightness_batch(8, seed=0)
    model(x, attrs)
    assert int(model.router.norm.num_batches_tracked) == 1
    save_checkpoint(model, tmp_path / "ckpt")
    again = load_model(tmp_path / "ckpt").eval()
    model.eval()
    assert isinstance(again.router.norm, torch.nn.BatchNorm1d)
    torch.testing.assert_close(again.router.norm.running_mean, model.router.norm.running_mean)
    with torch.no_grad():
        torch.testing.assert_close(again(x[:1]).attr_logits, model(x[:1]).attr_logits)
    # the built-in study, a ViT trained from scratch, uses it
    assert load_config(STUDY_CONFIG).router.norm == "batch"
    with pytest.raises(ConfigError, match=r"router\.norm must be one of \['layer', 'batch'\]"):
        config_from_dict({"router": {"name": "learned", "norm": "group"}})
    with pytest.raises(ConfigError, match="norm 'group'"):
        LearnedRouter(MARKET, 48, norm="group")

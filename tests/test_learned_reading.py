"""The learned router, read right: share of the oracle's gain, paired clustered tests, accuracy
beside the majority rate, the matched-noise and partial oracles, and the router's training
options (scheduled sampling, a detached router)."""

from __future__ import annotations

import copy
import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from scipy import stats

from attrimp.config import DESIGNS, MoSAICConfig, config_from_dict
from attrimp.errors import ConfigError
from attrimp.evaluate.ablation import Condition, make_conditions
from attrimp.evaluate.conditions import ConditionEvaluator, partial_oracle_slots
from attrimp.model.schema import load_schema
from attrimp.study.learned import (
    paired_clustered_test,
    partial_oracle_table,
    read_learned_router,
    share_of_gain,
)
from attrimp.study.run import _learned_router_accuracy, study_conditions
from attrimp.train.pipeline import build_model, datasets, prepare_data
from attrimp.train.training import latest_checkpoint, train
from routers.learned import LearnedRouter, group_accuracy
from routers.noisy import NoisyRouter, corrupt
from routers.oracle import OracleRouter

MARKET = load_schema("market1501")


# --------------------------------------------------------------------------- per-query tables
def planted_table(share: float, *, ids: int = 40, per_id: int = 3, noise: float = 0.0, seed=0):
    """A study's per-query table: backbone AP, oracle AP above it, and the learned AP planted at
    ``backbone + share * (oracle - backbone)`` per query (plus optional noise)."""
    rng = np.random.default_rng(seed)
    n = ids * per_id
    pid = np.repeat(np.arange(1, ids + 1), per_id)
    backbone = rng.uniform(0.05, 0.4, n)
    oracle = np.clip(backbone + rng.uniform(0.2, 0.6, n), 0, 1)
    learned = np.clip(backbone + share * (oracle - backbone) + noise * rng.normal(size=n), 0, 1)
    rows = [
        pd.DataFrame(
            {
                "config": c,
                "design": c,
                "query": [f"q{i}" for i in range(n)],
                "pid": pid,
                "ap": ap,
                "valid": True,
            }
        )  # fmt: skip
        for c, ap in (("backbone", backbone), ("full", oracle), ("learned", learned))
    ]
    return pd.concat(rows, ignore_index=True)


def test_share_of_gain_recovers_a_planted_share_exactly_and_its_ci_covers_it():
    res = share_of_gain(planted_table(0.4), n_boot=500)
    assert res["estimate"] == pytest.approx(0.4, abs=1e-12)
    # every resample has share 0.4 too: the interval collapses onto it
    assert res["ci_low"] == pytest.approx(0.4, abs=1e-9)
    assert res["ci_high"] == pytest.approx(0.4, abs=1e-9)
    assert res["identities"] == 40 and res["queries"] == 120


def test_share_of_gain_with_noise_matches_hand_mAPs_and_its_ci_is_a_real_interval():
    table = planted_table(0.3, noise=0.1, seed=3)
    res = share_of_gain(table, n_boot=800, seed=1)
    m = table.groupby("config")["ap"].mean()
    hand = (m["learned"] - m["backbone"]) / (m["full"] - m["backbone"])
    assert res["estimate"] == pytest.approx(hand, rel=1e-12)
    assert res["ci_low"] < hand < res["ci_high"]
    assert res["ci_low"] < 0.3 < res["ci_high"]  # the planted share (noise is mean 0)
    assert res["ci_high"] - res["ci_low"] < 0.2


def test_share_of_gain_has_no_estimate_when_the_oracle_does_not_beat_the_backbone():
    table = planted_table(0.4)
    table.loc[table["config"] == "full", "ap"] = table.loc[
        table["config"] == "backbone", "ap"
    ].to_numpy()
    res = share_of_gain(table)
    assert res["estimate"] is None and "no gain" in res["note"]


def test_paired_clustered_test_equals_the_t_test_on_identity_means_for_equal_clusters():
    rng = np.random.default_rng(5)
    pid = np.repeat(np.arange(30), 4)
    diff = rng.normal(0.05, 0.2, 30)[pid] + rng.normal(0, 0.1, 120)
    res = paired_clustered_test(diff, pid)
    means = pd.Series(diff).groupby(pid).mean()
    ref = stats.ttest_1samp(means, 0.0)
    assert res["t"] == pytest.approx(ref.statistic, rel=1e-9)
    assert res["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert res["df"] == 29
    assert res["wilcoxon_p"] == pytest.approx(stats.wilcoxon(means).pvalue, rel=1e-12)
    ci = stats.ttest_1samp(means, 0.0).confidence_interval()
    assert res["ci_low"] == pytest.approx(ci.low, rel=1e-9)
    assert res["ci_high"] == pytest.approx(ci.high, rel=1e-9)


def test_paired_clustered_test_is_wider_than_a_naive_test_when_queries_share_an_identity():
    rng = np.random.default_rng(2)
    pid = np.repeat(np.arange(20), 6)
    diff = rng.normal(0, 0.3, 20)[pid] + rng.normal(0, 0.02, 120)  # mostly identity-level
    naive = stats.ttest_1samp(diff, 0.0)
    assert paired_clustered_test(diff, pid)["p"] > naive.pvalue


def test_read_learned_router_reads_the_planted_table_and_is_json_safe():
    table = planted_table(0.4)
    acc = {
        "accuracy": {"gender": 0.9, "hat": 1.0, "age": float("nan")},
        "majority_rate": {"gender": 0.6, "hat": 1.0, "age": float("nan")},
        "balanced_accuracy": {"gender": 0.88, "hat": 1.0, "age": float("nan")},
        "n": {"gender": 100, "hat": 100, "age": 0},
        "mean_accuracy": 0.95, "mean_majority_rate": 0.8, "mean_balanced_accuracy": 0.94,
    }  # fmt: skip
    res = read_learned_router(table, acc, n_boot=200)
    json.dumps(res, allow_nan=False)
    assert res["share_of_gain"]["estimate"] == pytest.approx(0.4)
    tests = {t["reference"]: t for t in res["tests"]}
    assert tests["backbone"]["mean_difference"] > 0 and tests["full"]["mean_difference"] < 0
    # gender 0.9 vs 0.6 at n = 100 is beyond binomial noise; hat at its majority rate is not
    assert res["accuracy"]["groups_above_majority"] == 1
    assert res["accuracy"]["groups_tested"] == 2
    assert "40.0 %" in res["summary"] and "sit at the majority-class rate" in res["summary"]
    acc["majority_rate"]["hat"] = 0.5  # now both groups beat a constant guess
    assert "sit above the majority-class rate" in read_learned_router(table, acc)["summary"]
    assert read_learned_router(table[table["config"] != "learned"], None) is None


def test_partial_oracle_table_ranks_the_costliest_group_first_with_a_ci():
    table = planted_table(0.2)
    learned = table[table["config"] == "learned"]
    oracle = table[table["config"] == "full"]["ap"].to_numpy()
    extra = []
    for group, fix in (("gender", 0.5), ("hat", 0.0), ("upcolor", 0.1)):
        ap = learned["ap"].to_numpy() + fix * (oracle - learned["ap"].to_numpy())
        extra.append(learned.assign(config=f"partial_oracle:{group}", ap=ap))
    # the study's per-query table carries each group's on_ column (which groups exist)
    groups = {f"on_{g}": 1 for g in ("gender", "hat", "upcolor")}
    out = partial_oracle_table(pd.concat([table, *extra]).assign(**groups), n_boot=300)
    assert list(out["group"]) == ["gender", "upcolor", "hat"]
    gender = out.iloc[0]
    assert gender["share_of_gap"] == pytest.approx(0.5)
    assert gender["ci_low"] <= gender["delta_map"] <= gender["ci_high"] and gender["ci_low"] > 0
    hat = out.iloc[2]
    assert hat["delta_map"] == 0 and hat["ci_low"] == 0 and hat["ci_high"] == 0


# --------------------------------------------------------------------------- accuracy
def test_group_accuracy_majority_rate_and_balanced_accuracy_against_hand_counts():
    n = 8
    truth = torch.zeros(n, MARKET.n_slots)
    pred = torch.zeros(n, MARKET.n_slots)
    male, female = MARKET.group_slots("gender")
    # truth: 6 male, 2 female; prediction: all male except one female that is right
    for i in range(n):
        truth[i, female if i >= 6 else male] = 1
        pred[i, female if i == 7 else male] = 1
    age = MARKET.group_slots("age")
    t_age = [0, 0, 1, 1, 1, 2, None, None]  # two missing
    p_age = [0, 1, 1, 1, 0, 0, 0, 0]
    for i, (t, p) in enumerate(zip(t_age, p_age)):
        if t is not None:
            truth[i, age[t]] = 1
        pred[i, age[p]] = 1
    res = group_accuracy(pred, truth, MARKET)
    assert res["accuracy"]["gender"] == pytest.approx(7 / 8)
    assert res["majority_rate"]["gender"] == pytest.approx(6 / 8)
    assert res["majority_value"]["gender"] == MARKET.group("gender").values[0]
    assert res["balanced_accuracy"]["gender"] == pytest.approx((6 / 6 + 1 / 2) / 2)
    assert res["accuracy"]["age"] == pytest.approx(3 / 6)
    assert res["majority_rate"]["age"] == pytest.approx(3 / 6)
    # recalls: value 0: 1/2, value 1: 2/3, value 2: 0/1 (values 3 absent from the truth)
    assert res["balanced_accuracy"]["age"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert res["n"]["age"] == 6
    assert np.isnan(res["accuracy"]["hat"])  # nobody annotated
    assert res["mean_accuracy"] == pytest.approx((7 / 8 + 3 / 6) / 2)
    assert res["error_rate"]["gender"] == pytest.approx(1 / 8)


# --------------------------------------------------------------------------- matched noise
def test_per_group_noise_corrupts_each_group_at_its_own_rate():
    rng = np.random.default_rng(0)
    n = 20000
    x = torch.zeros(n, MARKET.n_slots)
    for g in MARKET.groups:
        slots = MARKET.group_slots(g.name)
        x[torch.arange(n), torch.tensor(slots)[rng.integers(0, len(slots), n)]] = 1
    rates = {"gender": 0.1, "age": 0.3, "upcolor": 0.05, "hat": 0.5}
    out = corrupt(x, MARKET, rates, torch.Generator().manual_seed(1))
    for g in MARKET.groups:
        slots = MARKET.group_slots(g.name)
        changed = float((out[:, slots] != x[:, slots]).any(1).float().mean())
        p = rates.get(g.name, 0.0)
        assert abs(changed - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-12, g.name
    # the same rate for every group as a mapping draws exactly what the float does
    same = {g: 0.2 for g in MARKET.group_names}
    a = corrupt(x[:500], MARKET, same, torch.Generator().manual_seed(3))
    b = corrupt(x[:500], MARKET, 0.2, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="unknown group"):
        NoisyRouter({"nope": 0.1}).route(x[:2], MARKET)
    with pytest.raises(ConfigError, match="probability"):
        NoisyRouter({"gender": 1.5})


# --------------------------------------------------------------------------- partial oracle
@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_partial_oracle_gates_are_the_oracles_for_its_group_and_the_learned_ones_elsewhere(mode):
    router = LearnedRouter(MARKET, 8, gates=mode)
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(32, MARKET.n_slots, generator=g)
    truth = torch.zeros(32, MARKET.n_slots)
    for grp in MARKET.groups:
        slots = MARKET.group_slots(grp.name)
        truth[
            torch.arange(32), torch.tensor(slots)[torch.randint(len(slots), (32,), generator=g)]
        ] = 1
    gates = OracleRouter().route(
        partial_oracle_slots(router, logits, truth, MARKET, ("upcolor",)), MARKET
    )
    learned = router.gates_from_logits(logits)
    oracle = OracleRouter().route(truth, MARKET)
    upcolor = torch.tensor(MARKET.expert_group) == MARKET.group_names.index("upcolor")
    assert torch.equal(gates[:, upcolor], oracle[:, upcolor])
    torch.testing.assert_close(gates[:, ~upcolor], learned[:, ~upcolor], rtol=0, atol=0)
    assert not torch.equal(gates, learned) and not torch.equal(gates, oracle)


def test_make_conditions_adds_the_two_readings_and_only_a_learned_model_runs_them():
    assert {"matched_noisy", "partial_oracle"} <= set(DESIGNS)
    conds = make_conditions(MARKET, ["learned", "matched_noisy", "partial_oracle"])
    names = [c.name for c in conds]
    assert names[:2] == ["learned", "matched_noisy"]
    assert names[2:] == [f"partial_oracle:{g}" for g in MARKET.group_names]
    assert all(c.oracle_groups == (c.name.split(":")[1],) for c in conds[2:])
    cfg = config_from_dict({"ablation": {"designs": ["full", "matched_noisy", "partial_oracle"]}})
    oracle_model = SimpleNamespace(router=SimpleNamespace(needs_features=False))
    learned_model = SimpleNamespace(router=SimpleNamespace(needs_features=True))
    assert [c.name for c in study_conditions(cfg, MARKET, oracle_model)] == ["full"]
    assert len(study_conditions(cfg, MARKET, learned_model)) == 2 + len(MARKET.group_names)


def test_older_conditions_keep_their_cache_key():
    cond = Condition("noisy:p=0.1", "noisy", ("gender", "hat"), noise_p=0.1, seed=3)
    old = {"name": "noisy:p=0.1", "design": "noisy", "groups_on": ["gender", "hat"],
           "counterfactual": None, "noise_p": 0.1, "router": "oracle", "seed": 3}  # fmt: skip
    assert cond.key() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:12]
    assert (
        Condition("p", "partial_oracle", (), oracle_groups=("hat",)).key()
        != Condition("p", "partial_oracle", (), oracle_groups=("age",)).key()
    )


# --------------------------------------------------------------------------- a tiny trained world
TINY = {
    "name": "tiny",
    "device": "cpu",
    "data": {"dataset": "synthetic",
             "synthetic": {"identities": 12, "cameras": 2, "images_per_camera": 2, "size": [32, 16]}},
    "model": {"backbone": "timm:vit_tiny_patch16_224", "pretrained": None, "img_size": [32, 16],
              "backbone_kwargs": {"tiny": True, "depth": 3}},
    "experts": {"blocks": 1, "rank": 2, "alpha": 2.0},
    "router": {"name": "learned", "norm": "batch"},
    "train": {"epochs": 1, "identities_per_batch": 4, "images_per_identity": 2, "lr": 1e-3,
              "expert_lr_scale": 1.0, "warmup_epochs": 0, "seed": 0, "compile": "eager",
              "max_steps_per_epoch": 2, "amp": "off"},
}  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cfg = config_from_dict(TINY)
    return prepare_data(cfg, tmp_path_factory.mktemp("world"))


def _trained(world, tmp_path, name: str, **overrides):
    raw = copy.deepcopy(TINY)
    for section, kv in overrides.items():
        raw[section].update(kv)
    cfg = config_from_dict(raw)
    torch.manual_seed(0)
    model = build_model(cfg, world)
    train(model, datasets(model, world)[0], cfg.train, tmp_path / name)
    return load_file(str(latest_checkpoint(tmp_path / name) / "model.safetensors"))


def test_training_options_change_training_and_their_defaults_do_not(world, tmp_path):
    plain = _trained(world, tmp_path, "plain")
    explicit = _trained(world, tmp_path, "explicit", train={"predicted_gates_p": 0.0},
                        router={"detach": False})  # fmt: skip
    assert all(torch.equal(plain[k], explicit[k]) for k in plain)
    for name, over in (("sampled", {"train": {"predicted_gates_p": 1.0}}),
                       ("detached", {"router": {"detach": True}})):  # fmt: skip
        other = _trained(world, tmp_path, name, **over)
        assert any(not torch.equal(plain[k], other[k]) for k in plain), name


def test_detached_router_sends_no_attribute_gradient_to_the_backbone(world):
    for detach in (False, True):
        cfg = config_from_dict({**TINY, "router": {**TINY["router"], "detach": detach}})
        torch.manual_seed(0)
        model = build_model(cfg, world).train()
        ds = datasets(model, world)[0]
        items = [ds[i] for i in range(8)]
        images, attrs = torch.stack([x[0] for x in items]), torch.stack([x[3] for x in items])
        out = model(images, attrs)
        model.router.loss(out.attr_logits, attrs).backward()
        grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
        reached = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
        assert reached is not detach
        assert model.router.heads.weight.grad.abs().sum() > 0


def test_scheduled_sampling_gates_from_the_prediction_at_its_rate():
    router = LearnedRouter(MARKET, 8, predicted_gates_p=0.0).train()
    feats = torch.randn(4000, 8, generator=torch.Generator().manual_seed(0))
    truth = torch.zeros(4000, MARKET.n_slots)
    truth[:, [MARKET.group_slots(g)[0] for g in MARKET.group_names]] = 1
    state = torch.get_rng_state()
    gates, logits = router.route_with_logits(truth, MARKET, features=feats)
    assert torch.equal(torch.get_rng_state(), state)  # p = 0 draws nothing: exact teacher forcing
    assert torch.equal(gates, OracleRouter().route(truth, MARKET))
    predicted = router.gates_from_logits(logits)
    router.predicted_gates_p = 1.0
    assert torch.equal(router.route_with_logits(truth, MARKET, features=feats)[0], predicted)
    router.predicted_gates_p = 0.3
    gates = router.route_with_logits(truth, MARKET, features=feats)[0]
    oracle = OracleRouter().route(truth, MARKET)
    differs = (gates != oracle).any(1) & (predicted != oracle).any(1)
    share = float(differs.sum() / (predicted != oracle).any(1).sum())
    assert abs(share - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 4000)
    assert ((gates == oracle).all(1) | (gates == predicted).all(1)).all()  # whole samples


def test_training_options_are_validated_and_reach_the_model():
    with pytest.raises(ConfigError, match="learned router only"):
        config_from_dict({"train": {"predicted_gates_p": 0.5}})
    with pytest.raises(ConfigError, match="learned router only"):
        config_from_dict({"router": {"detach": True}})
    with pytest.raises(ConfigError, match="predicted_gates_p"):
        config_from_dict({"router": {"name": "learned"}, "train": {"predicted_gates_p": 1.5}})
    cfg = config_from_dict({"router": {"name": "learned", "detach": True}})
    mcfg = MoSAICConfig.from_study(cfg, schema="market1501", num_classes=4, num_cameras=2)
    assert mcfg.router_kwargs == {"gates": "hard", "norm": "layer", "detach": True}
    default = config_from_dict({"router": {"name": "learned"}})
    mcfg = MoSAICConfig.from_study(default, schema="market1501", num_classes=4, num_cameras=2)
    assert mcfg.router_kwargs == {"gates": "hard", "norm": "layer"}  # checkpoints unchanged


def test_evaluator_readings_agree_with_the_learned_router(world):
    cfg = config_from_dict(TINY)
    torch.manual_seed(0)
    model = build_model(cfg, world).eval()
    _, query, gallery = datasets(model, world)
    ev = ConditionEvaluator(model, query, gallery, device=torch.device("cpu"), batch_size=16)
    # the prefix's CLS token is what the router reads inside the full forward
    split = ev.splits["query"]
    with torch.no_grad():
        full = model(torch.stack([query[i][0] for i in range(len(query))]), split.attributes)
    torch.testing.assert_close(ev.learned_logits("query"), full.attr_logits, rtol=1e-5, atol=1e-5)
    learned = Condition("learned", "learned", tuple(MARKET.group_names), router="learned")
    none_fixed = Condition("p", "partial_oracle", tuple(MARKET.group_names),
                           router="partial_oracle", oracle_groups=())  # fmt: skip
    with torch.no_grad():
        a, _ = ev.run(learned)
        b, _ = ev.run(none_fixed)
    np.testing.assert_allclose(a.ap, b.ap, atol=1e-6)
    rates = ev.learned_error_rates()
    assert set(rates) == set(MARKET.group_names) and all(0 <= r <= 1 for r in rates.values())
    # the study's accuracy block: over query + gallery, named keys, gender counted by hand
    acc = _learned_router_accuracy(model, ev, SimpleNamespace(schema=model.schema))
    logits = torch.cat([ev.learned_logits("query"), ev.learned_logits("gallery")])
    truth = torch.cat([ev.splits["query"].attributes, ev.splits["gallery"].attributes])
    slots = MARKET.group_slots("gender")
    known = truth[:, slots].sum(1) == 1
    hand = (logits[known][:, slots].argmax(1) == truth[known][:, slots].argmax(1)).float().mean()
    assert acc["accuracy"]["gender"] == pytest.approx(float(hand))
    assert acc["error_rate"]["gender"] == pytest.approx(rates["gender"])
    assert acc["images"] == len(truth) and acc["mA"] == acc["mA_binary"]
    assert {"majority_rate", "balanced_accuracy", "mean_balanced_accuracy"} <= set(acc)

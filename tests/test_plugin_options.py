"""Routers and expert banks as plug-ins of the config: names from the registries, options tables.

A config names any registered router (``router.name``) or bank (``experts.bank``) and hands it
its own table (``[router.options]``, ``[experts.options]``), read through the plug-in's declared
``Options`` dataclass with one-sentence errors; the built-ins behave as before options existed
(the built-in study's fingerprint is the one its baseline report carries); the condition sweep
builds its routers through the registry, so replacing a registered router changes what it gets.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import attrimp
import routers
from attrimp.config import MoSAICConfig, config_from_dict
from attrimp.errors import ConfigError
from attrimp.evaluate.ablation import Condition
from attrimp.evaluate.conditions import build_router as condition_router
from attrimp.model.experts import ParallelAdapterBank
from attrimp.model.interfaces import Router
from attrimp.model.mosaic import MoSAICReID
from attrimp.model.schema import load_schema
from attrimp.registry import BANKS, NoOptions, option_kwargs, plugin_options
from routers.mask import MaskRouter

TINY = {
    "model": {
        "backbone": "timm:vit_tiny_patch16_224",
        "pretrained": False,
        "img_size": [32, 16],
        "backbone_kwargs": {"tiny": True, "depth": 3},
    },
    "experts": {"blocks": 2, "rank": 2},
}


class LevelRouter(Router):
    """A third party's router: every expert on at ``level`` (declares its options)."""

    name = "level"

    @dataclass
    class Options:
        level: float = 1.0
        spare: list[str] | None = None

    def __init__(self, level: float = 1.0, spare: list[str] | None = None) -> None:
        self.level, self.spare = level, spare

    def route(self, attributes, schema, *, features=None):
        return torch.full((attributes.shape[0], schema.n_experts), float(self.level))


class ScaledAdapterBank(ParallelAdapterBank):
    """A third party's bank: the adapter bank with its own option (a scale on its B factors)."""

    kind = "scaled"

    @dataclass
    class Options:
        scale: float = 1.0
        tag: str = "x"

    def __init__(self, backbone, n_experts, *, scale: float = 1.0, tag: str = "x", **common):
        super().__init__(backbone, n_experts, **common)
        self.scale, self.tag = scale, tag


@pytest.fixture
def plugins():
    with routers.ROUTERS.isolated(), BANKS.isolated():
        routers.ROUTERS.register("level", LevelRouter)
        BANKS.register("scaled", ScaledAdapterBank)
        yield


def _config(**sections):
    return config_from_dict({**TINY, **sections}, source="test")


# ----------------------------------------------------------------------------- names


def test_any_registered_router_is_a_valid_router_name():
    cfg = attrimp.study_config(router={"name": "mask"})  # raised "must be one of" before
    assert cfg.router.name == "mask" and cfg.router.options == {}
    with pytest.raises(
        ConfigError, match=r"router\.name must be one of \[.*'mask'.*\], not 'maks'"
    ):
        attrimp.study_config(router={"name": "maks"})


def test_bank_choices_come_from_the_registry(plugins):
    assert _config(experts={"bank": "scaled"}).experts.bank == "scaled"
    assert "scaled" not in BANKS.builtins
    with pytest.raises(ConfigError, match=r"experts\.bank must be one of \['adapter', 'lora', 's"):
        _config(experts={"bank": "nope"})


def test_the_plugins_are_gone_after_their_block():
    assert "scaled" not in BANKS and "level" not in routers.ROUTERS
    with pytest.raises(ConfigError, match="experts.bank must be one of"):
        _config(experts={"bank": "scaled"})


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("section", "table", "message"),
    [
        (
            "router",
            {"name": "mask", "options": {"groups_of": ["hat"]}},
            r"router\.options\.groups_of is not an option of the router 'mask'; its options "
            r"are: groups_on, groups_off\.",
        ),
        (
            "router",
            {"name": "mask", "options": {"groups_on": "hat"}},
            r"router\.options\.groups_on must be a list, not 'hat'\.",
        ),
        (
            "router",
            {"name": "oracle", "options": {"p": 0.1}},
            r"router\.options\.p is not an option of the router 'oracle'; it takes no options\.",
        ),
        (
            "router",
            {"name": "noisy", "options": {"seed": 3}},
            r"router\.options\.p is required by the router 'noisy'\.",
        ),
        (
            "router",
            {"name": "noisy", "options": {"p": "high"}},
            r"router\.options\.p must be",
        ),
        (
            "experts",
            {"bank": "lora", "options": {"rank": 4}},
            r"experts\.options\.rank is not an option of the expert bank 'lora'; it takes no ",
        ),
    ],
)
def test_a_bad_options_table_is_one_sentence_naming_the_key(section, table, message):
    with pytest.raises(ConfigError, match=message) as info:
        _config(**{section: table})
    text = str(info.value)
    assert text.startswith("test: ") and text.count(". ") == 0 and "\n" not in text


def test_third_party_options_are_typed_by_their_dataclass(plugins):
    cfg = _config(router={"name": "level", "options": {"level": 1}})
    assert cfg.router.router_kwargs() == {"level": 1.0, "spare": None}
    assert isinstance(cfg.router.router_kwargs()["level"], float)  # TOML int -> declared float
    with pytest.raises(ConfigError, match=r"router\.options\.level must be float, not 'hi'"):
        _config(router={"name": "level", "options": {"level": "hi"}})
    with pytest.raises(ConfigError, match=r"experts\.options\.scale must be float, not True"):
        _config(experts={"bank": "scaled", "options": {"scale": True}})
    with pytest.raises(ConfigError, match=r"experts\.options\.tga is not an option .*scale, tag"):
        _config(experts={"bank": "scaled", "options": {"tga": "y"}})


def test_plugin_options_helpers_on_a_plain_factory():
    def factory(*args, **kwargs):  # declares no Options: takes none
        return None

    assert option_kwargs(plugin_options(factory, {}, where="x.options", what="f")) == {}
    assert isinstance(plugin_options(factory, {}, where="x.options", what="f"), NoOptions)

    class Broken:
        Options = dict  # not a dataclass

    with pytest.raises(ConfigError, match="is not a dataclass"):
        plugin_options(Broken, {}, where="x.options", what="b")


# ----------------------------------------------------------------------------- built models


def test_a_study_config_builds_a_model_with_a_third_party_router_and_bank(plugins):
    cfg = _config(
        router={"name": "level", "options": {"level": 0.5}},
        experts={"bank": "scaled", "options": {"scale": 3, "tag": "mine"}, "blocks": 2, "rank": 2},
    )
    mcfg = MoSAICConfig.from_study(cfg, schema="market1501", num_classes=0, num_cameras=0)
    assert mcfg.router == "level" and mcfg.router_kwargs == {"level": 0.5, "spare": None}
    model = MoSAICReID(mcfg).eval()
    assert type(model.experts) is ScaledAdapterBank
    assert (model.experts.scale, model.experts.tag) == (3.0, "mine")
    assert model.experts.block_indices == (1, 2)  # the common [experts] keys still arrive
    schema = model.schema
    out = model(torch.randn(2, 3, 32, 16), torch.zeros(2, schema.n_slots))
    assert out.gates.shape == (2, schema.n_experts) and bool((out.gates == 0.5).all())
    # the checkpoint form rebuilds the same bank and options
    again = MoSAICConfig.from_json(mcfg.to_json())
    assert again.options == {"scale": 3, "tag": "mine"} and again.bank == "scaled"


def test_a_model_config_with_bad_bank_options_is_refused_when_built():
    mcfg = MoSAICConfig.from_dict(
        {**TINY["model"], **TINY["experts"], "options": {"scale": 2.0}}, source="model"
    )
    with pytest.raises(ConfigError, match=r"experts\.options\.scale is not an option of the ex"):
        MoSAICReID(mcfg)


def test_builtin_configs_build_exactly_as_before():
    """No options anywhere: the model router gets the kwargs it always got, and the built-in
    study hashes to the fingerprint its baseline report.json carries."""
    cfg = attrimp.study_config()
    assert cfg.router.options == {} and cfg.experts.options == {}
    assert cfg.fingerprint() == "f2d06d9a7699b74b"  # /tmp/new_study/report.json, pre-options
    learned = _config(router={"name": "learned", "gates": "soft", "norm": "batch"})
    assert learned.router.router_kwargs() == {"gates": "soft", "norm": "batch"}
    assert _config().router.router_kwargs() == {}
    with_options = attrimp.study_config(router={"name": "mask", "options": {"groups_on": ["hat"]}})
    assert with_options.fingerprint() != attrimp.study_config(router={"name": "mask"}).fingerprint()


# ----------------------------------------------------------------------------- condition sweep


def test_the_condition_sweep_asks_the_registry_for_its_routers(plugins):
    """Replace the registered 'mask' router: the sweep's masked condition gets the replacement
    (it would get the built-in class if conditions.py imported it)."""
    schema = load_schema("market1501")
    built = []

    class SpyMask(MaskRouter):
        def __init__(self, *args, **kwargs):
            built.append(kwargs.get("groups_on"))
            super().__init__(*args, **kwargs)

    routers.ROUTERS.register("mask", SpyMask)
    on = tuple(g for g in schema.group_names if g != "hat")
    cond = Condition(name="no hat", design="leave_one_out", groups_on=on)
    router = condition_router(cond, schema, query=True)
    assert type(router) is SpyMask and built == [list(on)]
    attrs = torch.ones(2, schema.n_slots)
    gates = router.route(attrs, schema)
    hat = torch.tensor(list(schema.expert_group)) == schema.group_index("hat")
    assert bool((gates[:, hat] == 0).all()) and bool((gates[:, ~hat] == 1).all())
    full = Condition(name="full", design="full", groups_on=tuple(schema.group_names))
    assert type(condition_router(full, schema, query=True)).__name__ == "OracleRouter"
    assert len(built) == 1  # the full condition needs no mask

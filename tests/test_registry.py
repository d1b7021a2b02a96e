"""attrimp.registry: one plug-in mechanism for backbone families, routers and expert banks.

The built-ins are declared in pyproject.toml's entry-point groups exactly as a third party's are;
a plain checkout without distribution metadata still finds them; a third-party router and
backbone registered only through (faked) entry points are built by name.
"""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
import tomllib
import warnings
from pathlib import Path

import pytest
import torch

import backbones
import routers
from attrimp.errors import ConfigError
from attrimp.model.schema import load_schema
from attrimp.registry import BANKS, Registry

REPO = Path(__file__).resolve().parents[1]
REGISTRIES = {
    backbones.ENTRY_POINT_GROUP: backbones.FAMILIES,
    routers.ENTRY_POINT_GROUP: routers.ROUTERS,
    BANKS.group: BANKS,
}


def _pyproject_entry_points() -> dict[str, dict[str, str]]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return data["project"]["entry-points"]


@pytest.mark.parametrize("group", sorted(REGISTRIES))
def test_builtins_are_declared_in_pyproject_as_entry_points(group):
    declared = _pyproject_entry_points()[group]
    registry = REGISTRIES[group]
    # the fallback list for a checkout without metadata says exactly what pyproject says
    assert declared == registry.builtins
    assert len(declared) >= 2
    for value in declared.values():
        module, _, attr = value.partition(":")
        assert (REPO / Path(*module.split("."))).with_suffix(".py").is_file(), value
        assert f"class {attr}(" in (REPO / Path(*module.split("."))).with_suffix(".py").read_text()
    try:
        installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=group)}
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - not installed
        installed = {}
    if installed:  # an installed (editable) attrimp registers them through its metadata
        assert {k: installed[k] for k in declared if k in installed} == declared


def _faking(monkeypatch, groups: dict[str, list]) -> None:
    """``importlib.metadata.entry_points`` answering ``groups`` itself (others as installed)."""
    real = importlib.metadata.entry_points

    def entry_points(**kw):
        return groups[kw["group"]] if kw.get("group") in groups else real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_without_distribution_metadata_the_builtins_are_still_found(monkeypatch):
    with routers.ROUTERS.isolated(), backbones.FAMILIES.isolated(), BANKS.isolated():
        _faking(monkeypatch, {group: [] for group in REGISTRIES})
        routers.ROUTERS.refresh()
        backbones.FAMILIES.refresh()
        BANKS.refresh()
        assert set(routers.ROUTERS) == {"oracle", "mask", "counterfactual", "noisy", "learned"}
        from routers.oracle import OracleRouter

        assert routers.ROUTERS["oracle"] is OracleRouter
        assert backbones.FAMILIES.names() == ["clip", "timm"]
        from attrimp.model.weight_lora import WeightLoRABank

        assert BANKS.names() == ["adapter", "lora"] and BANKS["lora"] is WeightLoRABank


PLUGIN = textwrap.dedent(
    """
    import torch
    from attrimp.model.interfaces import Router
    from backbones import BackboneFamily, build

    class AllOnRouter(Router):
        '''Every expert on, scaled by ``level``.'''
        def __init__(self, level=1.0):
            self.level = level
        def route(self, attributes, schema, *, features=None):
            return torch.full((attributes.shape[0], schema.n_experts), float(self.level))

    class MiniFamily(BackboneFamily):
        description = "a third party's family (a tiny timm ViT underneath)"
        def list_models(self):
            return ["mini"]
        def build(self, model, *, tag, img_size, stride, camera_count, tiny, **kw):
            return build("timm:vit_tiny_patch16_224", img_size=img_size, stride=stride,
                         camera_count=camera_count, depth=1, embed_dim=32, num_heads=2)
    """
)


def test_a_third_party_router_and_backbone_through_entry_points(monkeypatch, tmp_path):
    (tmp_path / "third_party_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    schema = load_schema("market1501")
    fake = {
        routers.ENTRY_POINT_GROUP: ("allon", "third_party_plugin:AllOnRouter"),
        backbones.ENTRY_POINT_GROUP: ("third", "third_party_plugin:MiniFamily"),
    }
    try:
        with routers.ROUTERS.isolated(), backbones.FAMILIES.isolated():
            _faking(
                monkeypatch,
                {
                    group: [
                        *importlib.metadata.entry_points(group=group),
                        importlib.metadata.EntryPoint(name=name, value=value, group=group),
                    ]
                    for group, (name, value) in fake.items()
                },
            )
            routers.ROUTERS.refresh()
            backbones.FAMILIES.refresh()
            assert "allon" in routers.ROUTERS and "oracle" in routers.ROUTERS
            gates = routers.build_router("allon", level=0.5).route(
                torch.zeros(3, schema.n_slots), schema
            )
            assert gates.shape == (3, schema.n_experts) and bool((gates == 0.5).all())
            with pytest.raises(ConfigError, match="Router 'allon' does not accept"):
                routers.build_router("allon", p=0.1)
            assert "third" in backbones.list_families()
            bb = backbones.build("third:mini")
            assert bb.width == 32 and bb.grid_size == (16, 8)
            assert bb(torch.zeros(1, 3, 256, 128)).shape == (1, 32)
        assert "allon" not in routers.ROUTERS and "third" not in backbones.FAMILIES
    finally:
        sys.modules.pop("third_party_plugin", None)


def test_registry_loads_lazily_and_explains_every_failure(monkeypatch, tmp_path):
    (tmp_path / "widget_plugin.py").write_text("LOADED = True\nclass Widget:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    group = "attrimp.test_widgets"
    eps = [
        importlib.metadata.EntryPoint(name="ext", value="widget_plugin:Widget", group=group),
        importlib.metadata.EntryPoint(name="gone", value="no_such_module_xyz:W", group=group),
        importlib.metadata.EntryPoint(name="bare", value="widget_plugin", group=group),
    ]
    _faking(monkeypatch, {group: eps})  # this registry is new: it reads them on first use
    sys.modules.pop("widget_plugin", None)

    def only_classes(name, obj):
        if not isinstance(obj, type):
            raise TypeError(f"{obj!r} is not a class")
        return obj

    reg: Registry[type] = Registry(
        group, kind="widget", plural="widgets", builtins={"json": "json:JSONDecoder"},
        coerce=only_classes,
    )  # fmt: skip
    try:
        assert reg.names() == ["bare", "ext", "gone", "json"]
        assert "widget_plugin" not in sys.modules  # listing names imports nothing
        assert reg.load("ext").__name__ == "Widget" and "widget_plugin" in sys.modules
        import json

        assert reg["json"] is json.JSONDecoder
        with pytest.raises(KeyError):
            reg["nope"]  # noqa: B018
        with pytest.raises(ConfigError, match=r"unknown widget 'nope'; known widgets: bare, ext"):
            reg.load("nope")
        with pytest.raises(ConfigError, match=r"'gone' \(no_such_module_xyz:W\) could not be"):
            reg.load("gone")
        with pytest.raises(ConfigError, match=r"'bare' \(widget_plugin\).*registers nothing"):
            reg.load("bare")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert sorted(reg.load_all()) == ["ext", "json"]
        assert sorted(str(w.message).split("'")[1] for w in caught) == ["bare", "gone"]

        with reg.isolated():

            @reg.register("local")
            class Local:
                pass

            assert reg.load("local") is Local
            reg.register("lazy", "json:JSONEncoder")
            assert reg.load("lazy") is json.JSONEncoder
            with pytest.raises(TypeError, match="is not a class"):
                reg.register("bad", 3)
        assert "local" not in reg and "lazy" not in reg
    finally:
        sys.modules.pop("widget_plugin", None)

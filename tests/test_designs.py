"""Ablation designs as registered objects (attrimp.evaluate.designs).

The registry must reproduce, condition for condition and cache key for cache key, what the old
if/elif chain of `make_conditions` made (copied below as the reference); its built-ins are
declared in pyproject.toml as a third party declares a design; a third-party design declared
through an entry point is accepted by the config, expanded by the sweep and placed by the
analyses and the report by its role and order, with no name list edited.
"""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attrimp.config import config_from_dict
from attrimp.errors import ConfigError
from attrimp.evaluate import designs
from attrimp.evaluate.ablation import balanced_subsets, make_conditions
from attrimp.evaluate.designs import DESIGNS, Condition, Design, DesignOptions
from attrimp.model.schema import load_schema

REPO = Path(__file__).resolve().parents[1]
GROUP = designs.ENTRY_POINT_GROUP

#: the design lists of the code before the registry (config.DESIGNS, config.RETRAIN_DESIGNS,
#: study.analyses.SWITCHING_DESIGNS), which the registry's answers must equal
LEGACY_DESIGNS = (
    "full", "backbone", "leave_one_out", "only_one", "random_subsets", "counterfactual",
    "noisy", "learned", "matched_noisy", "partial_oracle", "attribute_only",
)  # fmt: skip
LEGACY_RETRAIN = ("full", "backbone", "leave_one_out", "only_one", "random_subsets", "noisy")
LEGACY_SWITCHING = ("full", "backbone", "leave_one_out", "only_one", "random_subsets")


def legacy_make_conditions(schema, names, *, random_subsets=16, noisy_p=(0.1, 0.25, 0.5), seed=0):
    """The if/elif chain `make_conditions` was before the registry, verbatim (minus errors)."""
    groups = tuple(schema.group_names)
    out = []
    for design in names:
        if design == "full":
            out.append(Condition("full", design, groups))
        elif design == "backbone":
            out.append(Condition("backbone", design, ()))
        elif design == "leave_one_out":
            out += [
                Condition(f"without:{g}", design, tuple(x for x in groups if x != g))
                for g in groups
            ]
        elif design == "only_one":
            out += [Condition(f"only:{g}", design, (g,)) for g in groups]
        elif design == "random_subsets":
            if random_subsets > 0:
                subsets = balanced_subsets(groups, random_subsets, seed)
                out += [
                    Condition(f"subset:{i:03d}", design, s, seed=seed)
                    for i, s in enumerate(subsets)
                ]
        elif design == "counterfactual":
            for g in schema.groups:
                for v in g.values:
                    out.append(
                        Condition(f"cf:{g.name}={v}", design, groups, counterfactual=(g.name, v))
                    )
        elif design == "noisy":
            out += [
                Condition(f"noisy:p={p:g}", design, groups, noise_p=float(p), seed=seed)
                for p in noisy_p
            ]
        elif design == "learned":
            out.append(Condition("learned", design, groups, router="learned"))
        elif design == "matched_noisy":
            out.append(Condition("matched_noisy", design, groups, router=design, seed=seed))
        elif design == "partial_oracle":
            out += [
                Condition(f"partial_oracle:{g}", design, groups, router=design, oracle_groups=(g,))
                for g in groups
            ]
    return out


def _strip_group(c: Condition) -> Condition:
    return Condition(**{**c.__dict__, "group": None})


@pytest.mark.parametrize("schema_name", ["market1501", "dukemtmc"])
@pytest.mark.parametrize(
    "options", [{}, {"random_subsets": 7, "noisy_p": (0.2, 1), "seed": 5}, {"random_subsets": 0}]
)
def test_the_registry_makes_exactly_the_conditions_of_the_old_chain(schema_name, options):
    schema = load_schema(schema_name)
    new = make_conditions(schema, LEGACY_DESIGNS, **options)
    old = legacy_make_conditions(schema, LEGACY_DESIGNS, **options)
    assert [c.name for c in new] == [c.name for c in old]
    assert [_strip_group(c) for c in new] == old
    assert [c.key() for c in new] == [c.key() for c in old]  # the cached tables stay valid


def test_cache_keys_are_the_ones_written_by_the_previous_release():
    # keys printed by the code before the registry (market1501, default options)
    conds = {c.name: c for c in make_conditions(load_schema("market1501"), LEGACY_DESIGNS)}
    assert len(conds) == 98
    known = {
        "full": "7bd82fcc2db0",
        "backbone": "e74986e21b07",
        "without:hat": "b78a773f789b",
        "only:age": "43dc7caa81ba",
        "subset:003": "adf0704a49c4",
        "cf:gender=female": "45e4d6c89321",
        "noisy:p=0.25": "fdd2d534adcf",
        "learned": "ff75fc2acf76",
        "matched_noisy": "8233fe62975b",
        "partial_oracle:age": "88a899a8b3fd",
    }
    assert {n: conds[n].key() for n in known} == known


def test_a_condition_carries_the_group_it_concerns():
    schema = load_schema("market1501")
    conds = make_conditions(schema, ["full", "leave_one_out", "only_one", "partial_oracle"])
    by_design = {d: [c for c in conds if c.design == d] for d in ("leave_one_out", "only_one")}
    for c in by_design["leave_one_out"]:
        assert c.group not in c.groups_on and len(c.groups_on) == len(schema.group_names) - 1
    for c in by_design["only_one"]:
        assert c.groups_on == (c.group,)
    assert [c.group for c in by_design["leave_one_out"]] == list(schema.group_names)
    assert conds[0].group is None
    cf = make_conditions(schema, ["counterfactual"])
    assert all(c.group == c.counterfactual[0] for c in cf)
    # the analyses find leave-one-out conditions from the objects, by group
    off = designs.off_conditions(schema)
    assert off == {c.group: c.name for c in by_design["leave_one_out"]}
    assert designs.off_conditions(["hat", "bag"]) == {"hat": "without:hat", "bag": "without:bag"}
    partial = make_conditions(schema, ["partial_oracle"])
    assert designs.group_conditions(schema, "oracle") == {
        c.oracle_groups[0]: c.name for c in partial
    }
    assert designs.group_conditions(["hat"], "only") == {"hat": "only:hat"}


def test_the_config_and_the_analyses_read_the_registry_as_the_old_lists():
    assert designs.default_designs() == list(LEGACY_DESIGNS)
    assert designs.retrainable_designs() == list(LEGACY_RETRAIN)
    assert designs.designs_with_role("switching") == LEGACY_SWITCHING
    # the battery's own coalition lists (studies.shapley) say the same
    from studies.shapley import COALITION_DESIGNS, SAMPLED_DESIGNS

    assert designs.designs_with_role("switching") == COALITION_DESIGNS
    assert designs.sampled_designs() == SAMPLED_DESIGNS
    assert config_from_dict({}).ablation.designs == list(LEGACY_DESIGNS)
    with pytest.raises(ConfigError, match=r"unknown design 'loo'; known: \['full', 'backbone'"):
        config_from_dict({"ablation": {"designs": ["full", "loo"]}})
    with pytest.raises(ConfigError, match="cannot retrain the design 'learned'; retrainable"):
        config_from_dict({"ablation": {"retrain": ["learned"]}})


def test_builtins_are_declared_in_pyproject_as_entry_points():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "entry-points"
    ][GROUP]
    assert declared == DESIGNS.builtins
    for name, value in declared.items():
        module, _, attr = value.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        assert isinstance(obj, Design) and obj.name == name
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=GROUP)}
    if installed:  # an installed (editable) attrimp registers them through its metadata
        assert {k: installed[k] for k in declared if k in installed} == declared


def test_without_distribution_metadata_the_builtins_are_still_found(monkeypatch):
    with DESIGNS.isolated():
        _faking(monkeypatch, [])
        DESIGNS.refresh()
        assert designs.default_designs() == list(LEGACY_DESIGNS)


def _faking(monkeypatch, eps: list) -> None:
    """``importlib.metadata.entry_points(group="attrimp.designs")`` answers ``eps``."""
    real = importlib.metadata.entry_points

    def entry_points(**kw):
        return eps if kw.get("group") == GROUP else real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


PLUGIN = textwrap.dedent(
    """
    from attrimp.evaluate.designs import Condition, Design

    def _pairs_off(schema, options):
        g = tuple(schema.group_names)
        return [Condition(f"pair_off:{a}+{b}", "pair_off", tuple(x for x in g if x not in (a, b)),
                          seed=options.seed)
                for a, b in zip(g[::2], g[1::2])]

    PAIR_OFF = Design("pair_off", _pairs_off, label="pairs of groups off", role="switching",
                      retrainable=True, order=35)
    WRONG_NAME = Design("something_else", _pairs_off, label="x")
    NOT_A_DESIGN = 42
    """
)


@pytest.fixture
def plugin(monkeypatch, tmp_path):
    """A third-party module declaring designs through (faked) entry points."""
    (tmp_path / "third_party_designs.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    extra = {
        "pair_off": "third_party_designs:PAIR_OFF",
        "misnamed": "third_party_designs:WRONG_NAME",
        "notone": "third_party_designs:NOT_A_DESIGN",
    }
    try:
        with DESIGNS.isolated():
            eps = list(importlib.metadata.entry_points(group=GROUP))
            eps += [importlib.metadata.EntryPoint(n, v, GROUP) for n, v in extra.items()]
            _faking(monkeypatch, eps)
            DESIGNS.refresh()
            yield
        assert "pair_off" not in DESIGNS
    finally:
        sys.modules.pop("third_party_designs", None)


@pytest.mark.filterwarnings("ignore:The ablation design")
def test_a_third_party_design_through_an_entry_point(plugin):
    schema = load_schema("market1501")
    # named in a config, it runs; not named, nothing changes for an existing study
    cfg = config_from_dict({"ablation": {"designs": ["full", "pair_off"], "retrain": ["pair_off"]}})
    assert cfg.ablation.designs == ["full", "pair_off"]
    assert designs.default_designs() == list(LEGACY_DESIGNS)
    conds = make_conditions(schema, cfg.ablation.designs, seed=3)
    assert [c.name for c in conds[1:3]] == ["pair_off:gender+hair", "pair_off:up+down"]
    assert len(conds) == 1 + len(schema.group_names) // 2
    assert all(len(c.groups_on) == len(schema.group_names) - 2 for c in conds[1:])
    # its role puts it among the switching designs; its order, after leave-one-out
    assert designs.designs_with_role("switching") == (
        "full", "backbone", "leave_one_out", "pair_off", "only_one", "random_subsets",
    )  # fmt: skip
    assert "pair_off" in designs.retrainable_designs()
    from attrimp.study.report import _design_labels, _design_order

    order = _design_order()
    assert order["leave_one_out"] < order["pair_off"] < order["only_one"]
    assert _design_labels(["pair_off", "full"]) == "full oracle and pairs of groups off"


def test_a_broken_third_party_design_is_one_sentence(plugin):
    schema = load_schema("market1501")
    with pytest.raises(ConfigError, match=r"'misnamed' .* named 'something_else'"):
        make_conditions(schema, ["misnamed"])
    with pytest.raises(ConfigError, match=r"'notone' .* is not an attrimp.evaluate.designs.Design"):
        make_conditions(schema, ["notone"])
    with pytest.warns(UserWarning, match="misnamed"):  # a listing warns and goes on
        assert "pair_off" in [d.name for d in designs.ordered()]


def test_a_design_whose_conditions_name_another_design_is_refused():
    schema = load_schema("market1501")
    liar = Design("liar", lambda s, o: [Condition("full", "full", ())], label="liar")
    with DESIGNS.isolated():
        designs.register_design(liar)
        with pytest.raises(ConfigError, match="'liar' made the condition 'full' of another"):
            make_conditions(schema, ["liar"])
    assert "liar" not in DESIGNS


def test_the_paired_analyses_follow_the_off_design_not_a_string(tmp_path):
    """A plug-in "off" design placed first renames the leave-one-out conditions: the verdicts
    read its conditions by their group, and find the planted effect of switching 'hat' off."""
    from attrimp.study.analyses import loo_verdicts

    rng = np.random.default_rng(0)
    n = 400
    pid = np.repeat(np.arange(80), 5)
    ap = rng.uniform(0.3, 0.9, n)
    rows = [pd.DataFrame({"config": "full", "query": np.arange(n), "pid": pid, "ap": ap})]
    rows.append(pd.DataFrame({"config": "drop=hat", "query": np.arange(n), "pid": pid,
                              "ap": ap - 0.2 + rng.normal(0, 0.02, n)}))  # fmt: skip
    rows.append(pd.DataFrame({"config": "drop=bag", "query": np.arange(n), "pid": pid,
                              "ap": ap + rng.normal(0, 0.02, n)}))  # fmt: skip
    table = pd.concat(rows, ignore_index=True)

    def drop(schema, options):
        g = tuple(schema.group_names)
        return [Condition(f"drop={x}", "drop", tuple(y for y in g if y != x), group=x) for x in g]

    with DESIGNS.isolated():
        designs.register_design(Design("drop", drop, "drop", "switching", per_group="off", order=1))
        v = loo_verdicts(table, ["hat", "bag"], alpha=0.05, margin=0.01).set_index("attribute")
    assert v.loc["hat", "verdict"] == "helps" and v.loc["hat", "estimate"] == pytest.approx(
        0.2, abs=0.01
    )
    assert v.loc["bag", "verdict"] != "helps"
    # with the built-in design back, those rows are not leave-one-out rows: nothing testable
    v = loo_verdicts(table, ["hat", "bag"], alpha=0.05, margin=0.01).set_index("attribute")
    assert not v["testable"].any()


def test_design_options_reach_the_expansion():
    schema = load_schema("market1501")
    seen = []

    def spy(s, o: DesignOptions):
        seen.append(o)
        return []

    with DESIGNS.isolated():
        designs.register_design(Design("spy", spy, "spy"))
        make_conditions(schema, ["spy"], random_subsets=3, noisy_p=[0.3], seed=9)
    assert seen == [DesignOptions(random_subsets=3, noisy_p=(0.3,), seed=9)]

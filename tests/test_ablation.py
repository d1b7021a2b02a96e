from __future__ import annotations

import numpy as np
import pytest

from attrimp.errors import ConfigError
from attrimp.evaluate.ablation import balanced_subsets, make_conditions
from attrimp.model.schema import load_schema


@pytest.fixture(scope="module")
def market():
    return load_schema("market1501")


def test_designs_expand_to_the_expected_conditions(market):
    conds = make_conditions(
        market,
        ["full", "backbone", "leave_one_out", "only_one", "counterfactual", "noisy"],
        noisy_p=(0.1, 0.5),
    )
    names = [c.name for c in conds]
    assert names[:2] == ["full", "backbone"]
    assert sum(n.startswith("without:") for n in names) == 12
    assert sum(n.startswith("only:") for n in names) == 12
    assert sum(n.startswith("cf:") for n in names) == market.n_slots  # one per value
    full = conds[0]
    assert set(full.groups_on) == set(market.group_names)
    without_hat = next(c for c in conds if c.name == "without:hat")
    assert "hat" not in without_hat.groups_on and len(without_hat.groups_on) == 11
    assert without_hat.group_mask(market)["hat"] == 0
    assert conds[-1].noise_p == 0.5
    assert len({c.key() for c in conds}) == len(conds)


def test_balanced_subsets_are_balanced_distinct_and_seeded(market):
    groups = market.group_names
    subsets = balanced_subsets(groups, 16, seed=3)
    assert len(subsets) == 16 == len(set(subsets))
    on = np.array([[g in s for g in groups] for s in subsets])
    assert (on.sum(0) == 8).all()  # every group on in exactly half
    assert balanced_subsets(groups, 16, seed=3) == subsets
    assert balanced_subsets(groups, 16, seed=4) != subsets
    odd = np.array([[g in s for g in groups] for s in balanced_subsets(groups, 7, seed=0)])
    assert set(odd.sum(0)) <= {3, 4}


def test_unknown_design_and_duplicates(market):
    with pytest.raises(ConfigError, match="(?i)unknown ablation design 'loo'"):
        make_conditions(market, ["loo"])
    with pytest.raises(ConfigError, match="twice"):
        make_conditions(market, ["full", "full"])

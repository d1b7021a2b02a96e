"""Non-learned routers: hand-computed gates on a toy schema, the real Market batch checked
against the raw fields, and the statistics of the noisy router."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import torch

from attrimp.data.annotations import load_attribute_file
from attrimp.errors import ConfigError, SchemaError
from attrimp.model.schema import load_schema
from routers import ROUTERS, build_router
from routers.counterfactual import CounterfactualRouter
from routers.mask import MaskRouter
from routers.noisy import NoisyRouter, corrupt
from routers.oracle import OracleRouter

TOY = """
[[groups]]
name = "gender"
kind = "dual"
column = "gender"
values = ["male", "female"]
codes = [1, 2]

[[groups]]
name = "hat"
kind = "single"
column = "hat"
values = ["no", "yes"]
codes = [1, 2]

[[groups]]
name = "colour"
kind = "multiclass"
values = ["red", "green", "blue"]
columns = ["red", "green", "blue"]
positive = 2
"""
# slots:   0 male, 1 female | 2 hat=no, 3 hat=yes | 4 red, 5 green, 6 blue
# experts: 0 male, 1 female | 2 hat=yes          | 3 red, 4 green, 5 blue


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("schema") / "toy.toml"
    path.write_text(TOY)
    return load_schema(path)


@pytest.fixture
def batch():
    return torch.tensor(
        [
            [1, 0, 0, 1, 1, 0, 0],  # male, hat, red
            [0, 1, 1, 0, 0, 0, 0],  # female, no hat, colour unknown
            [0, 0, 1, 0, 0, 1, 1],  # gender unknown, no hat, green+blue (policy "all")
        ],
        dtype=torch.float32,
    )


@pytest.fixture(scope="module")
def market(shared_data):
    return load_attribute_file(shared_data / "market_attribute.mat", "market1501")


# ----- oracle -------------------------------------------------------------------------------


def test_oracle_by_hand(toy, batch):
    gates = OracleRouter().route(batch, toy)
    expected = torch.tensor(
        [
            [1, 0, 1, 1, 0, 0],
            [0, 1, 0, 0, 0, 0],  # "no hat" owns no expert; unknown colour -> colour experts off
            [0, 0, 0, 0, 1, 1],
        ],
        dtype=torch.float32,
    )
    torch.testing.assert_close(gates, expected, rtol=0, atol=0)
    assert gates.dtype == torch.float32


def test_oracle_checks_shape_and_accepts_integers(toy, batch):
    with pytest.raises(
        SchemaError, match=r"shape \(3, 6\) do not fit schema .* needs \[batch, 7\]"
    ):
        OracleRouter().route(batch[:, :6], toy)
    gates = OracleRouter().route(batch.to(torch.int64), toy)
    assert gates.dtype == torch.float32
    torch.testing.assert_close(gates, OracleRouter().route(batch, toy))


def test_oracle_on_the_real_market_file(shared_data, market):
    """Each gate equals its raw field's code, read independently from the .mat."""
    schema = market.schema
    gates = OracleRouter().route(torch.from_numpy(market.multihot), schema)
    assert gates.shape == (1501, 35)
    struct = scipy.io.loadmat(str(shared_data / "market_attribute.mat"))["market_attribute"][0, 0]
    fields = {
        n: np.concatenate([struct[s][0, 0][n].ravel() for s in ("train", "test")])
        for n in struct["train"][0, 0].dtype.names
        if n != "image_index"
    }
    expected = {}
    for g in schema.groups:
        if g.column is not None:
            for value, code in zip(g.values, g.codes):
                expected[f"{g.name}={value}"] = fields[g.column] == code
        else:
            for value, col in zip(g.values, g.columns):
                expected[f"{g.name}={value}"] = fields[col] == 2
    for e, name in enumerate(schema.expert_names):
        np.testing.assert_array_equal(
            gates[:, e].numpy(), expected[name].astype(np.float32), err_msg=name
        )
    # 78 + 69 identities with no upper colour have every upcolor expert off
    up = [e for e, n in enumerate(schema.expert_names) if n.startswith("upcolor=")]
    assert int((gates[:, up].sum(dim=1) == 0).sum()) == 78 + 69


def test_oracle_on_duke_multiple_colours(shared_data):
    duke = load_attribute_file(shared_data / "duke_attribute.mat", "dukemtmc")
    gates = OracleRouter().route(torch.from_numpy(duke.lookup([5951], split="test")), duke.schema)
    on = [duke.schema.expert_names[e] for e in torch.nonzero(gates[0]).flatten().tolist()]
    assert [n for n in on if n.startswith("downcolor")] == [
        "downcolor=black", "downcolor=white", "downcolor=red",
    ]  # fmt: skip


# ----- mask ---------------------------------------------------------------------------------


def test_mask_by_hand(toy, batch):
    gates = MaskRouter({"hat", "colour"}).route(batch, toy)
    expected = torch.tensor(
        [[0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.float32
    )
    torch.testing.assert_close(gates, expected, rtol=0, atol=0)
    torch.testing.assert_close(MaskRouter(groups_off={"gender"}).route(batch, toy), expected)
    torch.testing.assert_close(MaskRouter([0, 1, 1]).route(batch, toy), expected)
    torch.testing.assert_close(
        MaskRouter(torch.tensor([False, True, True])).route(batch, toy), expected
    )


def test_mask_all_off_is_all_zero(market):
    x = torch.from_numpy(market.multihot)
    gates = MaskRouter(set()).route(x, market.schema)
    assert gates.shape == (1501, 35) and not gates.any()
    gates = MaskRouter(np.zeros(12)).route(x, market.schema)
    assert not gates.any()
    every = MaskRouter(set(market.schema.group_names)).route(x, market.schema)
    torch.testing.assert_close(every, OracleRouter().route(x, market.schema))


def test_mask_per_sample(toy, batch):
    mask = torch.tensor([[1, 0, 0], [1, 1, 1], [0, 0, 1]])
    gates = MaskRouter(mask).route(batch, toy)
    expected = torch.tensor(
        [[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.float32
    )
    torch.testing.assert_close(gates, expected, rtol=0, atol=0)
    with pytest.raises(SchemaError, match="2 rows for a batch of 3"):
        MaskRouter(mask[:2]).route(batch, toy)


def test_mask_errors(toy, batch):
    with pytest.raises(
        SchemaError, match=r"no attribute group 'shoes'; it has \['gender', 'hat', 'colour'\]"
    ):
        MaskRouter({"gender", "shoes"}).route(batch, toy)
    with pytest.raises(SchemaError, match="no attribute group 'shoes'"):
        MaskRouter({"shoes"}, schema=toy)  # early check when the schema is known
    with pytest.raises(SchemaError, match=r"mask has 2 entries but schema .* has 3 groups"):
        MaskRouter([1, 0]).route(batch, toy)
    with pytest.raises(SchemaError, match="holds only 0 and 1, not 2"):
        MaskRouter([1, 2, 0])
    with pytest.raises(SchemaError, match="exactly one of groups_on and groups_off"):
        MaskRouter()


def test_mask_composes_with_another_base(toy, batch):
    router = MaskRouter({"gender"}, base=CounterfactualRouter("gender", "female"))
    gates = router.route(batch, toy)
    assert gates[:, 1].tolist() == [1, 1, 1] and gates[:, [0, 2, 3, 4, 5]].sum() == 0


# ----- counterfactual -----------------------------------------------------------------------


def test_counterfactual_by_hand(toy, batch):
    before = batch.clone()
    gates = CounterfactualRouter("colour", "green").route(batch, toy)
    expected = torch.tensor(
        [[1, 0, 1, 0, 1, 0], [0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 1, 0]], dtype=torch.float32
    )
    torch.testing.assert_close(gates, expected, rtol=0, atol=0)
    torch.testing.assert_close(batch, before, rtol=0, atol=0)  # input untouched
    # a single-state group forced to its absent value: its expert off for everyone
    gates = CounterfactualRouter("hat", "no").route(batch, toy)
    assert gates[:, 2].tolist() == [0, 0, 0]
    assert (
        gates[:, [0, 1, 3, 4, 5]].tolist()
        == OracleRouter().route(batch, toy)[:, [0, 1, 3, 4, 5]].tolist()
    )
    # "unknown" erases the group
    gates = CounterfactualRouter("gender", "unknown").route(batch, toy)
    assert gates[:, :2].sum() == 0 and gates[0, 2] == 1


def test_counterfactual_errors(toy, batch):
    with pytest.raises(
        SchemaError,
        match=r"Group 'colour' has no value 'pink'; it has \['red', 'green', 'blue', 'unknown'\]",
    ):
        CounterfactualRouter("colour", "pink").route(batch, toy)
    with pytest.raises(SchemaError, match="no attribute group 'shoe'"):
        CounterfactualRouter("shoe", "red", schema=toy)


def test_counterfactual_on_market(market):
    x = torch.from_numpy(market.multihot)
    gates = CounterfactualRouter("age", "old").route(x, market.schema)
    names = market.schema.expert_names
    old = names.index("age=old")
    assert gates[:, old].sum() == 1501
    assert gates[:, [names.index(f"age={v}") for v in ("young", "teenager", "adult")]].sum() == 0


# ----- noisy --------------------------------------------------------------------------------


def _groups(schema, x):
    return [x[:, schema.group_slots(g)] for g in schema.group_names]


def test_noisy_p0_is_the_oracle_and_p1_always_changes(market):
    x = torch.from_numpy(market.multihot)
    torch.testing.assert_close(
        NoisyRouter(0.0).route(x, market.schema), OracleRouter().route(x, market.schema)
    )
    before = x.clone()
    y = corrupt(x, market.schema, 1.0, torch.Generator().manual_seed(3))
    torch.testing.assert_close(x, before, rtol=0, atol=0)  # the input is never modified
    for g, a, b in zip(
        market.schema.group_names, _groups(market.schema, x), _groups(market.schema, y)
    ):
        present = a.sum(1) > 0
        assert (a[present] != b[present]).any(dim=1).all(), g  # every present value changed
        assert (b[present].sum(dim=1) == 1).all(), g  # to exactly one other value
        assert (b[~present] == 0).all(), g  # missing stays missing (78+69 upcolor, 30+44 downcolor)


def test_noisy_rate_is_p(market):
    schema = market.schema
    x = torch.from_numpy(market.multihot).repeat(10, 1)  # 15010 identities x 12 groups
    p = 0.2
    y = corrupt(x, schema, p, torch.Generator().manual_seed(0))
    changed = present = 0
    for a, b in zip(_groups(schema, x), _groups(schema, y)):
        mask = a.sum(1) > 0
        present += int(mask.sum())
        changed += int((a[mask] != b[mask]).any(dim=1).sum())
    rate = changed / present
    sd = (p * (1 - p) / present) ** 0.5
    assert abs(rate - p) < 5 * sd, (rate, sd)


def test_noisy_replacement_is_uniform_over_other_values():
    schema = load_schema("market1501")
    teen = schema.slot("age", "teenager")
    x = torch.zeros(30000, schema.n_slots)
    x[:, teen] = 1  # only age is known
    y = corrupt(x, schema, 1.0, torch.Generator().manual_seed(1))
    counts = y[:, schema.group_slots("age")].sum(0)
    assert counts[1] == 0  # never "replaced" by itself
    others = counts[[0, 2, 3]] / 30000
    assert torch.all((others - 1 / 3).abs() < 5 * (2 / 9 / 30000) ** 0.5), others
    assert y[:, [s for s in range(schema.n_slots) if s not in schema.group_slots("age")]].sum() == 0


def test_noisy_multiple_values(toy, batch):
    y = corrupt(batch, toy, 1.0, torch.Generator().manual_seed(0))
    assert y[2, 4:].tolist() == [1, 0, 0]  # green+blue -> the one value not marked


def test_noisy_is_reproducible(market):
    x = torch.from_numpy(market.multihot)
    a = NoisyRouter(0.3, seed=7)
    b = NoisyRouter(0.3, seed=7)
    first = a.route(x, market.schema)
    torch.testing.assert_close(first, b.route(x, market.schema), rtol=0, atol=0)
    second = a.route(x, market.schema)
    assert not torch.equal(first, second)  # the stream advances
    a.reset()
    torch.testing.assert_close(a.route(x, market.schema), first, rtol=0, atol=0)
    assert not torch.equal(first, NoisyRouter(0.3, seed=8).route(x, market.schema))


def test_noisy_bad_p():
    for p in (-0.1, 1.5, "a"):
        with pytest.raises(ConfigError, match="must be a probability in"):
            NoisyRouter(p)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_routers_on_cuda_match_cpu(market):
    x = torch.from_numpy(market.multihot)
    for make in (
        OracleRouter,
        lambda: MaskRouter(groups_off={"age"}),
        lambda: NoisyRouter(0.3, seed=2),
    ):
        cpu, gpu = make().route(x, market.schema), make().route(x.cuda(), market.schema)
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=0)


# ----- registry -----------------------------------------------------------------------------


def test_registry(toy, batch):
    assert {"oracle", "mask", "counterfactual", "noisy", "learned"} <= set(ROUTERS)
    assert ROUTERS["oracle"] is OracleRouter
    router = build_router("mask", groups_on=["hat"], base={"name": "noisy", "p": 0.0})
    assert isinstance(router.base, NoisyRouter)
    torch.testing.assert_close(router.route(batch, toy), MaskRouter({"hat"}).route(batch, toy))
    assert isinstance(
        build_router("counterfactual", group="hat", value="yes", base="oracle"),
        CounterfactualRouter,
    )
    with pytest.raises(
        ConfigError, match=r"unknown router 'gated'; known routers: counterfactual, learned, mask"
    ):
        build_router("gated")
    with pytest.raises(ConfigError, match="Router 'noisy' does not accept these options"):
        build_router("noisy", p=0.1, rate=3)


def test_register_a_third_party_router(toy, batch):
    from routers import register_router

    with ROUTERS.isolated():

        @register_router("everything_on")
        class EverythingOn(OracleRouter):
            def route(self, attributes, schema, *, features=None):
                return torch.ones(attributes.shape[0], schema.n_experts)

        assert build_router("everything_on").route(batch, toy).sum() == 3 * 6
    assert "everything_on" not in ROUTERS


def test_registry_imports_learned_lazily():
    code = (
        "import sys, routers; assert 'learned' in routers.ROUTERS; "
        "print('routers.learned' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]

"""The gated LoRA expert bank: exactness, per-sample gradients, pooling, autocast, compile."""

from __future__ import annotations

import copy

import pytest
import torch

import backbones
from attrimp.errors import ConfigError
from attrimp.model.experts import ExpertBank, ExpertSiteWrapper, GatedLoRA

IMG = (32, 16)
FAMILIES = {
    "timm": ("timm:vit_tiny_patch16_224", {"depth": 3}),
    "clip": ("clip:ViT-B-16", {"layers": 3}),
}


def tiny_backbone(family: str = "timm", seed: int = 0):
    name, kwargs = FAMILIES[family]
    torch.manual_seed(seed)
    return backbones.build(name, pretrained=None, img_size=IMG, tiny=True, **kwargs)


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, *IMG, generator=torch.Generator().manual_seed(seed))


def randomise_experts(bank: ExpertBank, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in bank.layers:
            layer.B.copy_(torch.randn(layer.B.shape, generator=g) * 0.5)


def random_gates(n: int, e: int, seed: int = 3, p: float = 0.4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, e, generator=g) < p).float()


@pytest.mark.parametrize("family", ["timm", "clip"])
@pytest.mark.parametrize("site", ["mlp", "attn"])
def test_fresh_bank_equals_backbone_and_trained_bank_does_not(family, site):
    bb = tiny_backbone(family)
    reference = copy.deepcopy(bb)
    bank = ExpertBank(bb, 7, blocks=2, site=site)
    x = images()
    gates = torch.ones(4, 7)
    with torch.no_grad(), bank.gated(gates):
        assert torch.equal(bb(x), reference(x))  # B = 0: the branch is exactly zero
    randomise_experts(bank)
    with torch.no_grad(), bank.gated(gates):
        assert not torch.allclose(bb(x), reference(x))  # the check above can fail


@pytest.mark.parametrize("pooling", ["mean", "max", "sum"])
def test_all_gates_off_is_exactly_the_backbone_after_training(pooling):
    bb = tiny_backbone("clip")
    bank = ExpertBank(bb, 6, blocks=2, pooling=pooling)
    randomise_experts(bank)
    opt = torch.optim.AdamW(bb.parameters(), lr=1e-2, weight_decay=0.1)
    assert {id(p) for p in bank.parameters()} - {id(p) for p in bb.parameters()}
    opt.add_param_group({"params": list(bank.parameters())})
    for step in range(3):  # train backbone and experts together, per-sample routing
        with bank.gated(random_gates(4, 6, seed=step)):
            loss = bb(images(seed=step)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = images(seed=9)
    with torch.no_grad():
        with bank.gated(torch.zeros(4, 6)):
            off = bb(x)
        with bank.gated(torch.ones(4, 6)):
            on = bb(x)
        bank.detach()  # the trained backbone without any expert branch
        plain = bb(x)
    assert torch.equal(off, plain)
    assert not torch.allclose(on, plain)


def test_samples_without_active_experts_are_untouched_in_a_mixed_batch():
    bb = tiny_backbone("timm")
    reference = copy.deepcopy(bb)
    bank = ExpertBank(bb, 5, blocks=2)
    randomise_experts(bank)
    gates = torch.tensor([[1.0, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 1], [0, 0, 0, 0, 0]])
    x = images()
    with torch.no_grad(), bank.gated(gates):
        out = bb(x)
    ref = reference(x).detach()
    assert torch.equal(out[[1, 3]], ref[[1, 3]])
    assert not torch.allclose(out[[0, 2]], ref[[0, 2]])


@pytest.mark.parametrize("pooling", ["mean", "max", "sum"])
def test_expert_off_for_the_whole_batch_gets_no_gradient(pooling):
    bb = tiny_backbone("timm")
    bank = ExpertBank(bb, 5, blocks=2, rank=3, pooling=pooling)
    randomise_experts(bank)
    gates = torch.rand(4, 5, generator=torch.Generator().manual_seed(0)) + 0.1
    gates[:, 2] = 0.0  # expert 2 is off for every sample
    with bank.gated(gates):
        bb(images()).pow(2).sum().backward()
    r = 3
    for layer in bank.layers:
        a_rows = slice(2 * r, 3 * r)
        assert layer.A.grad is not None and layer.B.grad is not None
        assert torch.count_nonzero(layer.A.grad[a_rows]) == 0
        assert torch.count_nonzero(layer.B.grad[:, a_rows]) == 0
        # ...while the experts that were on do learn
        others = torch.cat([layer.A.grad[: 2 * r], layer.A.grad[3 * r :]])
        assert torch.count_nonzero(others) > 0


def hand_pooled(layer: GatedLoRA, h: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """The bank's definition, one sample and one expert at a time."""
    r, out = layer.rank, torch.zeros(*h.shape[:-1], layer.out_features, dtype=h.dtype)
    for b in range(h.shape[0]):
        ys = []
        for e in range(layer.n_experts):
            if gates[b, e] == 0:
                continue
            a_e = layer.A[e * r : (e + 1) * r]  # [r, D_in]
            b_e = layer.B[:, e * r : (e + 1) * r]  # [D_out, r]
            ys.append(gates[b, e] * layer.scale * (h[b] @ a_e.T @ b_e.T))
        if not ys:
            continue
        stacked = torch.stack(ys)
        if layer.pooling == "mean":
            out[b] = stacked.mean(0)
        elif layer.pooling == "sum":
            out[b] = stacked.sum(0)
        else:
            out[b] = stacked.max(0).values
    return out


@pytest.mark.parametrize("pooling", ["mean", "max", "sum"])
def test_pooling_matches_a_hand_computation(pooling):
    torch.manual_seed(0)
    layer = GatedLoRA(6, 5, 4, rank=2, alpha=3.0, pooling=pooling).double()
    with torch.no_grad():
        layer.B.normal_()
    h = torch.randn(3, 7, 6, dtype=torch.float64)
    gates = torch.tensor(
        [[1.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]], dtype=torch.float64
    )
    got = layer(h, gates)
    want = hand_pooled(layer, h, gates)
    torch.testing.assert_close(got, want)
    assert torch.count_nonzero(got[1]) == 0  # no active expert -> exactly no branch
    if pooling == "mean":  # one active expert: mean == that expert == sum
        layer.pooling = "sum"
        torch.testing.assert_close(layer(h, gates)[2], got[2])


def test_max_pooling_ignores_inactive_experts_even_when_they_would_win():
    layer = GatedLoRA(2, 2, 2, rank=1, alpha=1.0, pooling="max")
    with torch.no_grad():
        layer.A.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
        layer.B.copy_(torch.tensor([[-1.0, 5.0], [-1.0, 5.0]]))
    h = torch.tensor([[[1.0, 0.0]]])
    out = layer(h, torch.tensor([[1.0, 0.0]]))  # expert 1 (+5) is off: the max is expert 0's -1
    torch.testing.assert_close(out, torch.tensor([[[-1.0, -1.0]]]))


def test_bf16_autocast_trains_and_all_off_stays_exact():
    bb = tiny_backbone("timm")
    reference = copy.deepcopy(bb)
    bank = ExpertBank(bb, 5, blocks=2, pooling="mean")
    randomise_experts(bank)
    x = images()
    branch_dtypes = []
    layer, branch = bank.layers[0], bank.layers[0].branch

    def spy(h, w, expanded=None):
        out = branch(h, w, expanded)
        branch_dtypes.append(out.dtype)
        return out

    layer.branch = spy
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with bank.gated(random_gates(4, 5)):
            out = bb(x)
        with bank.gated(torch.zeros(4, 5)), torch.no_grad():
            off = bb(x)
        ref = reference(x)
    assert branch_dtypes[0] == torch.bfloat16  # the experts ran in bf16
    out.float().pow(2).mean().backward()
    assert all(torch.isfinite(layer.A.grad).all() for layer in bank.layers)
    assert torch.equal(off, ref)
    with bank.gated(random_gates(4, 5)), torch.no_grad():
        full = bb(x)
    torch.testing.assert_close(out.float(), full, atol=0.15, rtol=0.05)


def test_bank_site_compiles_without_graph_breaks():
    bb = tiny_backbone("clip")  # its attention site returns a tuple: the harder case
    bank = ExpertBank(bb, 5, blocks=1, site="attn", pooling="mean")
    randomise_experts(bank)
    wrapper = bb.expert_site(2, "attn").parent.attn
    assert isinstance(wrapper, ExpertSiteWrapper)
    h = torch.randn(4, 3, 48)
    bank.set_gates(random_gates(4, 5))
    compiled = torch.compile(wrapper, fullgraph=True, backend="aot_eager")
    for pooling in ("mean", "max"):
        bank.pooling = pooling  # every layer, and the gate weights are recomputed
        eager = wrapper(h, h, h, need_weights=False)[0]
        out = compiled(h, h, h, need_weights=False)[0]  # fullgraph: a graph break raises
        torch.testing.assert_close(out, eager)
        out.sum().backward()  # aot_eager traces the backward too
        assert bank.layers[0].B.grad is not None


def test_misuse_is_reported():
    bb = tiny_backbone("timm")
    with pytest.raises(ConfigError, match="pooling"):
        ExpertBank(bb, 3, pooling="median")
    with pytest.raises(ConfigError, match="site"):
        ExpertBank(bb, 3, site="norm")
    with pytest.raises(ConfigError, match="between 0 and 3"):
        ExpertBank(bb, 3, blocks=4)
    bank = ExpertBank(bb, 3, blocks=1)
    with pytest.raises(RuntimeError, match="without gates"):
        bb(images())
    with pytest.raises(ValueError, match=r"\[batch, experts=3\], got \[4, 2\]"):
        bank.set_gates(torch.ones(4, 2))
    with bank.gated(torch.ones(3, 3)), pytest.raises(ValueError, match="batch of 3 .* 4 samples"):
        bb(images())


def test_parameter_count_and_init_follow_lora():
    bb = tiny_backbone("timm")
    bank = ExpertBank(bb, 7, blocks=2, rank=4)
    assert bank.num_parameters() == 2 * 7 * 4 * (48 + 48)
    assert bank.block_indices == (1, 2)
    layer = bank.layers[0]
    assert torch.count_nonzero(layer.B) == 0
    assert layer.A.abs().max() <= 1 / 48**0.5 + 1e-6  # kaiming-uniform(a=√5): U(±1/√fan_in)
    assert layer.A.std() > 0.5 / (3 * 48) ** 0.5


@pytest.mark.parametrize("pooling", ["mean", "sum", "max"])
def test_soft_gates_get_the_gradient_of_the_pooled_branch(pooling):
    # the learned router's soft gates are trained through the bank: the per-sample weights
    # (normaliser, scale, repetition over the rank) must pass the exact gradient back
    torch.manual_seed(0)
    layer = GatedLoRA(6, 5, 4, rank=2, alpha=3.0, pooling=pooling).double()
    with torch.no_grad():
        layer.B.normal_()
    h = torch.randn(3, 7, 6, dtype=torch.float64)
    gates = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)

    def branch(g):
        w = layer.gate_weights(g)
        expanded = None if pooling == "max" else layer.expand_weights(w)
        return layer.branch(h, w, expanded)

    assert torch.autograd.gradcheck(branch, (gates,))
    torch.testing.assert_close(branch(gates), hand_pooled(layer, h, gates))

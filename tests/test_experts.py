"""The adapter expert bank and the `GatedLoRA` both banks share: pooling, soft-gate gradients,
autocast, compile, misuse, parameter count. The ExpertBank contract (exactness, zero gradients,
per-sample routing, detach) is tested for both banks in test_weight_lora.py."""

from __future__ import annotations

import pytest
import torch

import backbones
from attrimp.model.experts import ExpertSiteWrapper, GatedLoRA, ParallelAdapterBank

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


def randomise_experts(bank: ParallelAdapterBank, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in bank.layers:
            layer.B.copy_(torch.randn(layer.B.shape, generator=g) * 0.5)


def random_gates(n: int, e: int, seed: int = 3, p: float = 0.4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, e, generator=g) < p).float()


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


def test_bank_site_compiles_without_graph_breaks():
    bb = tiny_backbone("clip")  # its attention site returns a tuple: the harder case
    bank = ParallelAdapterBank(bb, 5, blocks=1, site="attn", pooling="mean")
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


def test_parameter_count_and_init_follow_lora():
    bb = tiny_backbone("timm")
    bank = ParallelAdapterBank(bb, 7, blocks=2, rank=4)
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

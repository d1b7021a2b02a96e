"""The ExpertBank contract, for both banks (``adapter`` and ``lora``), and what is particular to
the ``lora`` bank: gated LoRA on the block's own linear weights."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import backbones
from attrimp.errors import ConfigError
from attrimp.model import interfaces
from attrimp.model.experts import ExpertSiteWrapper, GatedLoRA
from attrimp.model.mosaic import BANKS
from attrimp.model.weight_lora import GatedLinear, WeightLoRABank
from tests.test_experts import hand_pooled, images, random_gates, randomise_experts, tiny_backbone

KINDS = sorted(BANKS)  # ["adapter", "lora"]


def make(kind: str, family: str = "timm", n: int = 5, **options):
    """``(backbone with the bank attached, bank, a bare copy of the backbone taken before)``."""
    bb = tiny_backbone(family)
    bare = copy.deepcopy(bb)
    return bb, BANKS[kind](bb, n, **options), bare


def wrapped(bb: nn.Module) -> dict[str, nn.Module]:
    """The modules the bank put into the backbone, by qualified name."""
    return {
        name: m for name, m in bb.named_modules() if isinstance(m, (ExpertSiteWrapper, GatedLinear))
    }


class SlowGated(nn.Module):
    """The bank's definition written out: the original module plus, per sample and per active
    expert, ``g_e · s · B_e A_e h`` pooled by `hand_pooled` (a loop over samples and experts)."""

    def __init__(self, base: nn.Module, lora: GatedLoRA, gates: torch.Tensor) -> None:
        super().__init__()
        self.base, self.lora, self.gates = base, lora, gates

    def forward(self, h, *args, **kwargs):
        out = self.base(h, *args, **kwargs)
        delta = hand_pooled(self.lora, h, self.gates)
        if isinstance(out, tuple):
            return (out[0] + delta, *out[1:])
        return out + delta


def slow_twin(bb: nn.Module, bare: nn.Module, gates: torch.Tensor) -> nn.Module:
    """``bare`` with each module the bank wrapped in ``bb`` replaced by its `SlowGated`."""
    twin = copy.deepcopy(bare)
    for name, module in wrapped(bb).items():
        parent_name, _, attr = name.rpartition(".")
        parent = twin.get_submodule(parent_name)
        setattr(parent, attr, SlowGated(getattr(parent, attr), module._lora, gates))
    return twin


@pytest.mark.parametrize("kind", KINDS)
def test_both_banks_implement_the_interface(kind):
    bb, bank, _ = make(kind, blocks=2)
    assert isinstance(bank, interfaces.ExpertBank) and bank.kind == kind
    assert bank.n_experts == 5 and bank.block_indices == (1, 2)
    assert bank.num_parameters() == sum(p.numel() for p in bank.layers.parameters()) > 0


@pytest.mark.parametrize(
    "kind, family, site",
    [
        (kind, family, site)
        for kind in KINDS
        for family in ("timm", "clip")
        for site in ("mlp", "attn")
        if (kind, family, site) != ("lora", "clip", "attn")  # refused, tested below
    ],
)
def test_fresh_bank_leaves_the_backbone_unchanged_whatever_the_gates(kind, family, site):
    bb, bank, bare = make(kind, family, n=7, blocks=2, site=site)
    x = images()
    with torch.no_grad(), bank.gated(torch.ones(4, 7)):
        assert torch.equal(bb(x), bare(x))  # B = 0: every branch is exactly zero
    randomise_experts(bank)
    with torch.no_grad(), bank.gated(torch.ones(4, 7)):
        assert not torch.allclose(bb(x), bare(x))  # the check above can fail


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pooling", ["mean", "max", "sum"])
def test_all_gates_off_is_exactly_the_backbone_after_training(kind, pooling):
    bb, bank, _ = make(kind, "clip", n=6, blocks=2, pooling=pooling)
    randomise_experts(bank)
    opt = torch.optim.AdamW([*bb.parameters(), *bank.parameters()], lr=1e-2, weight_decay=0.1)
    for step in range(2):  # train backbone and experts together, per-sample routing
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
        bank.detach()  # the trained backbone without any expert
        plain = bb(x)
    assert torch.equal(off, plain)
    assert not torch.allclose(on, plain)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pooling", ["mean", "max", "sum"])
def test_expert_off_for_the_whole_batch_gets_exactly_zero_gradient(kind, pooling):
    bb, bank, _ = make(kind, n=5, blocks=2, rank=3, pooling=pooling)
    randomise_experts(bank)
    gates = torch.rand(4, 5, generator=torch.Generator().manual_seed(0)) + 0.1
    gates[:, 2] = 0.0  # expert 2 is off for every sample
    with bank.gated(gates):
        bb(images()).pow(2).sum().backward()
    off = slice(2 * 3, 3 * 3)
    for layer in bank.layers:
        assert layer.A.grad is not None and layer.B.grad is not None
        assert torch.count_nonzero(layer.A.grad[off]) == 0
        assert torch.count_nonzero(layer.B.grad[:, off]) == 0
        assert torch.count_nonzero(layer.A.grad) > 0  # ...while the experts that were on learn


@pytest.mark.parametrize("kind", KINDS)
def test_routing_is_per_sample(kind):
    bb, bank, bare = make(kind, n=5, blocks=2)
    randomise_experts(bank)
    x = images()
    gates = torch.tensor([[1.0, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        with bank.gated(gates):
            out = bb(x)
        other = gates.clone()
        other[[0, 2, 3]] = 1.0 - other[[0, 2, 3]]  # every sample but 1 changes its gates
        with bank.gated(other):
            changed = bb(x)
        alone = []
        for i in range(len(x)):  # each sample in a batch of its own
            with bank.gated(gates[i : i + 1]):
                alone.append(bb(x[i : i + 1]))
    assert torch.equal(changed[1], out[1])  # sample 1 depends on its own gates only
    assert torch.equal(out[1], bare(x).detach()[1])  # ...which are all off: the backbone
    assert not torch.allclose(changed[[0, 2, 3]], out[[0, 2, 3]])
    torch.testing.assert_close(torch.cat(alone), out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pooling", ["mean", "max", "sum"])
def test_pooling_matches_a_slow_loop_over_samples_and_experts(kind, pooling):
    bb, bank, bare = make(kind, n=4, blocks=2, rank=2, alpha=3.0, pooling=pooling)
    bb.double(), bare.double(), bank.double()
    randomise_experts(bank)
    x = images(3).double()
    gates = torch.tensor(
        [[1.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]], dtype=torch.float64
    )
    with torch.no_grad(), bank.gated(gates):
        got = bb(x)
        want = slow_twin(bb, bare, gates)(x)
    assert len(wrapped(bb)) == (2 if kind == "adapter" else 4)
    torch.testing.assert_close(got, want)
    assert torch.equal(got[1], bare(x).detach()[1])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", ["timm", "clip"])
def test_detach_restores_the_original_modules(kind, family):
    bb = tiny_backbone(family)
    before = dict(bb.named_modules())
    keys = list(bb.state_dict())
    bank = BANKS[kind](bb, 3, blocks=3)
    assert wrapped(bb)
    bank.detach()
    assert not wrapped(bb)
    after = dict(bb.named_modules())
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)
    assert list(bb.state_dict()) == keys


@pytest.mark.parametrize("kind", KINDS)
def test_misuse_is_reported(kind):
    bb = tiny_backbone("timm")
    with pytest.raises(ConfigError, match="pooling"):
        BANKS[kind](bb, 3, pooling="median")
    with pytest.raises(ConfigError, match="site"):
        BANKS[kind](bb, 3, site="norm")
    with pytest.raises(ConfigError, match="between 0 and 3"):
        BANKS[kind](bb, 3, blocks=4)
    assert not wrapped(bb)
    bank = BANKS[kind](bb, 3, blocks=1)
    with pytest.raises(RuntimeError, match="without gates"):
        bb(images())
    with pytest.raises(ValueError, match=r"\[batch, experts=3\], got \[4, 2\]"):
        bank.set_gates(torch.ones(4, 2))
    with bank.gated(torch.ones(3, 3)), pytest.raises(ValueError, match="batch of 3 .* 4 samples"):
        bb(images())


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_trains_and_all_off_stays_exact(kind):
    bb, bank, bare = make(kind, n=5, blocks=2)
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
        ref = bare(x)
    assert branch_dtypes[0] == torch.bfloat16  # the experts ran in bf16
    out.float().pow(2).mean().backward()
    assert all(torch.isfinite(layer.A.grad).all() for layer in bank.layers)
    assert torch.equal(off, ref)
    with bank.gated(random_gates(4, 5)), torch.no_grad():
        full = bb(x)
    torch.testing.assert_close(out.float(), full, atol=0.15, rtol=0.05)


# ------------------------------------------------------------------------ the lora bank itself


@pytest.mark.parametrize(
    "family, site, targets",
    [
        ("timm", "mlp", {"mlp.fc1": (48, 192), "mlp.fc2": (192, 48)}),
        ("clip", "mlp", {"mlp.c_fc": (48, 192), "mlp.c_proj": (192, 48)}),
        ("timm", "attn", {"attn.qkv": (48, 144), "attn.proj": (48, 48)}),
    ],
)
def test_lora_bank_wraps_the_blocks_own_linears_and_keeps_their_keys(family, site, targets):
    bb = tiny_backbone(family)
    keys = {k: v.clone() for k, v in bb.state_dict().items()}
    bank = WeightLoRABank(bb, 5, blocks=1, site=site, rank=2)
    got = {".".join(name.split(".")[-2:]): m for name, m in wrapped(bb).items()}
    assert {k: (m.in_features, m.out_features) for k, m in got.items()} == targets
    assert [(lo.in_features, lo.out_features) for lo in bank.layers] == list(targets.values())
    state = bb.state_dict()  # the same tensors under the same names: no new backbone key
    assert state.keys() == keys.keys() and all(torch.equal(state[k], keys[k]) for k in keys)
    assert all(isinstance(m, nn.Linear) for m in got.values())
    # every wrapped linear really runs in the forward (a functional call would skip it)
    calls = []
    for m in got.values():
        m.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad(), bank.gated(torch.ones(4, 5)):
        bb(images())
    assert len(calls) == len(targets)
    assert bank.num_parameters() == 5 * 2 * sum(i + o for i, o in targets.values())


def test_lora_bank_update_is_w_plus_b_a():
    # one linear, one sample, one expert: y = W x + b + g·(α/r)·B A x, written out by hand
    torch.manual_seed(0)
    base = nn.Linear(6, 4).double()
    lora = GatedLoRA(6, 4, 3, rank=2, alpha=4.0, pooling="sum").double()
    with torch.no_grad():
        lora.B.normal_()
    from attrimp.model.experts import _GateState

    state = _GateState()
    layer = GatedLinear(base, lora, state)
    x = torch.randn(1, 5, 6, dtype=torch.float64)
    state.set(torch.tensor([[0.0, 0.5, 0.0]], dtype=torch.float64))
    a1, b1 = lora.A[2:4], lora.B[:, 2:4]
    want = x @ (base.weight + 0.5 * (4.0 / 2) * b1 @ a1).T + base.bias
    torch.testing.assert_close(layer(x), want)


def test_lora_bank_refuses_clips_functional_attention_and_leaves_it_intact():
    bb = tiny_backbone("clip")
    before = dict(bb.named_modules())
    with pytest.raises(ConfigError, match=r"'lora' expert bank cannot reach the 'attn'.*ClipViT"):
        WeightLoRABank(bb, 3, blocks=2, site="attn")
    after = dict(bb.named_modules())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


def test_lora_bank_compiles_without_graph_breaks():
    bb, bank, _ = make("lora", n=5, blocks=1)
    randomise_experts(bank)
    compiled = torch.compile(bb, fullgraph=True, backend="aot_eager")
    x = images()
    for pooling in ("mean", "max"):
        bank.pooling = pooling
        with bank.gated(random_gates(4, 5)):
            eager = bb(x)
            out = compiled(x)  # fullgraph: a graph break raises
        torch.testing.assert_close(out, eager)
        out.sum().backward()  # aot_eager traces the backward too
        assert bank.layers[0].B.grad is not None


def test_lora_bank_composes_with_peft_lora_on_the_backbone():
    # adapt = "lora": peft already wrapped the MLP's linears; the bank gates peft's base_layer
    # and leaves peft's own lora_A / lora_B alone
    torch.manual_seed(0)
    bb = backbones.build(
        "timm:vit_tiny_patch16_224", pretrained=None, img_size=(32, 16), tiny=True, depth=3,
        adapt="lora",
    )  # fmt: skip
    bare = copy.deepcopy(bb)
    bank = WeightLoRABank(bb, 4, blocks=1)
    assert sorted(wrapped(bb)) == [
        "inner.blocks.2.mlp.fc1.base_layer",
        "inner.blocks.2.mlp.fc2.base_layer",
    ]
    x = images(2)
    with torch.no_grad(), bank.gated(torch.zeros(2, 4)):
        assert torch.equal(bb(x), bare(x))
    randomise_experts(bank)
    with torch.no_grad(), bank.gated(torch.ones(2, 4)):
        assert not torch.allclose(bb(x), bare(x))


# --- timm EVA attention: every projection trains, or the site is refused -------------------------
#: EVA-01 / EVA-CLIP giant: fused qkv with q/v biases, applied as F.linear(x, qkv.weight, bias)
EVA_FUSED = "timm:eva_giant_patch14_clip_224"
#: EVA-02: separate q_proj / k_proj / v_proj, each called as a module
EVA_SPLIT = "timm:eva02_base_patch16_clip_224"
#: a few patches of 14 and of 16 pixels
IMG_EVA = (56, 32)


def tiny_eva(name: str) -> backbones.ViTBackbone:
    """A random 2-block, 48-wide EVA at `IMG_EVA` (timm's own class; nothing is downloaded)."""
    torch.manual_seed(0)
    return backbones.build(name, pretrained=None, img_size=IMG_EVA, tiny=True)


def uncalled_attention_linears(bb: nn.Module, block: int = -1) -> list[str]:
    """The ``nn.Linear`` layers of one block's attention that a forward never calls."""
    attn = bb.blocks[block].attn
    called: set[str] = set()
    hooks = [
        m.register_forward_hook(lambda *_, n=name: called.add(n))
        for name, m in attn.named_modules()
        if isinstance(m, nn.Linear)
    ]
    with torch.no_grad():
        bb(torch.randn(2, 3, *IMG_EVA))
    for h in hooks:
        h.remove()
    return sorted(
        name for name, m in attn.named_modules() if isinstance(m, nn.Linear) and name not in called
    )


def test_lora_bank_refuses_eva_attention_that_applies_qkv_functionally():
    bb = tiny_eva(EVA_FUSED)
    # the premise: timm's EvaAttention never calls this qkv as a module, so a LoRA on it
    # would train nothing (the output projection alone would run)
    assert uncalled_attention_linears(bb) == ["qkv"]
    before = dict(bb.named_modules())
    with pytest.raises(ConfigError, match=r"cannot reach the 'attn' projection 'qkv' of TimmViT"):
        WeightLoRABank(bb, 3, blocks=1, site="attn")
    after = dict(bb.named_modules())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    WeightLoRABank(bb, 3, blocks=1, site="mlp")  # its MLP is reachable: not refused


def test_lora_bank_trains_every_projection_of_eva02_attention():
    bb = tiny_eva(EVA_SPLIT)
    bare = copy.deepcopy(bb)
    bank = WeightLoRABank(bb, 3, blocks=1, site="attn", rank=2)
    got = sorted(n.rsplit(".", 1)[-1] for n in wrapped(bb))
    assert got == ["k_proj", "proj", "q_proj", "v_proj"]
    with bank.gated(torch.ones(2, 3)):
        assert uncalled_attention_linears(bb) == []  # each wrapped projection runs
    x = torch.randn(3, 3, *IMG_EVA, generator=torch.Generator().manual_seed(1))
    randomise_experts(bank)
    with torch.no_grad(), bank.gated(torch.zeros(3, 3)):
        assert torch.equal(bb(x), bare(x))  # all gates off: the backbone, bit for bit
    with bank.gated(torch.ones(3, 3)):
        out = bb(x)
        out.pow(2).sum().backward()
    assert not torch.allclose(out, bare(x))
    for layer in bank.layers:  # every projection's experts learn
        assert layer.A.grad is not None and torch.count_nonzero(layer.A.grad) > 0


def test_backbone_lora_refuses_the_fused_eva_qkv_it_could_not_train_and_adapts_the_split_one():
    """adapt = 'lora' (peft on the backbone) had the lora bank's blind spot: on an EVA with a
    fused qkv and q/v biases, timm applies qkv.weight with F.linear, so peft's LoRA on qkv got no
    gradient. It is refused with a sentence; EVA-02's separate projections are still adapted."""
    from backbones.lora import lora_target_names

    with pytest.raises(ConfigError, match=r"functionally .*'mlp' target only"):
        lora_target_names(tiny_eva(EVA_FUSED), ("attn",))
    assert lora_target_names(tiny_eva(EVA_FUSED), ("mlp",))
    split = lora_target_names(tiny_eva(EVA_SPLIT), ("attn",), blocks=[0])
    assert {n.rsplit(".", 1)[-1] for n in split} >= {"q_proj", "k_proj", "v_proj", "proj"}

from __future__ import annotations

import math

import pytest
import torch

from attrimp.errors import ConfigError
from attrimp.train.losses import CenterLoss, batch_hard_triplet_loss, identity_loss
from attrimp.train.optim import build_optimizer, warmup_cosine


def _loop_triplet(x, y, margin):
    """Batch-hard triplet written as the paper states it, one anchor at a time."""
    losses = []
    for i in range(len(y)):
        pos = [torch.dist(x[i], x[j]) for j in range(len(y)) if j != i and y[j] == y[i]]
        neg = [torch.dist(x[i], x[j]) for j in range(len(y)) if y[j] != y[i]]
        if pos and neg:
            losses.append(max(0.0, float(max(pos) - min(neg)) + margin))
    return sum(losses) / len(losses)


def test_batch_hard_triplet_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, generator=g)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    got = batch_hard_triplet_loss(x, y, margin=0.3)
    assert got.item() == pytest.approx(_loop_triplet(x, y, 0.3), rel=1e-5)


def test_triplet_is_zero_when_identities_are_far_apart():
    y = torch.tensor([0, 0, 1, 1])
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]])
    assert batch_hard_triplet_loss(x, y, margin=0.3).item() == 0.0
    # soft margin: softplus(d_ap - d_an); d_ap = 0.1 everywhere, d_an = 10.0, 9.9, 9.9, 10.0
    expected = sum(math.log1p(math.exp(0.1 - d)) for d in (10.0, 9.9, 9.9, 10.0)) / 4
    assert batch_hard_triplet_loss(x, y, margin=None).item() == pytest.approx(expected, rel=1e-4)


def test_triplet_skips_anchors_without_positive():
    x = torch.randn(3, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2])  # K=1: no positives at all
    loss = batch_hard_triplet_loss(x, y)
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph, with a finite (zero) gradient
    assert torch.equal(x.grad, torch.zeros_like(x))
    # a mixed batch: only the anchors of identity 0 (which has a positive) count
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 4, generator=g)
    y = torch.tensor([0, 0, 1, 2, 3])
    for margin in (0.3, 5.0):  # 5.0: an invalid anchor's -1 stand-in would count if not masked
        want = _loop_triplet(x, y, margin)
        assert batch_hard_triplet_loss(x, y, margin=margin).item() == pytest.approx(want, rel=1e-5)


def test_triplet_never_reads_the_device_back_to_the_host():
    # `if mask.any()` or boolean indexing would synchronise a GPU stream at every step
    from torch.utils._python_dispatch import TorchDispatchMode

    host_reads = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in {"_local_scalar_dense", "nonzero", "is_nonzero"}:
                host_reads.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    x = torch.randn(8, 4)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])
    with Spy():
        batch_hard_triplet_loss(x, y)
        batch_hard_triplet_loss(x, y, margin=None)
    assert host_reads == []


def test_identity_loss_label_smoothing_formula():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    labels = torch.tensor([0])
    eps = 0.1
    logp = torch.log_softmax(logits, 1)[0]
    expected = -((1 - eps) * logp[0] + eps / 3 * logp.sum())
    assert identity_loss(logits, labels, smoothing=eps).item() == pytest.approx(
        expected.item(), rel=1e-6
    )


def test_center_loss_is_half_squared_distance():
    loss = CenterLoss(2, 3)
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    feats = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 3.0]])
    assert loss(feats, torch.tensor([0, 1])).item() == pytest.approx(0.5 * (1 + 4) / 2)


def test_warmup_cosine_schedule_points():
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, name="sgd", lr=1.0)
    sched = warmup_cosine(opt, total_steps=110, warmup_steps=10, warmup_start=0.0, min_ratio=0.0)
    lrs = []
    for _ in range(111):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.0)
    assert lrs[5] == pytest.approx(0.5)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5)  # half-way through the cosine
    assert lrs[110] == pytest.approx(0.0, abs=1e-9)


def test_optimizer_excludes_norms_and_biases_from_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    opt = build_optimizer(model, name="adamw", lr=0.1, weight_decay=0.5)
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays[id(model[0].weight)] == 0.5
    assert decays[id(model[0].bias)] == 0.0
    assert decays[id(model[1].weight)] == 0.0
    with pytest.raises(ConfigError, match="adamw"):
        build_optimizer(model, name="lamb")

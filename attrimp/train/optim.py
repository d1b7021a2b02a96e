"""Optimiser and learning-rate schedule for ReID training."""

from __future__ import annotations

import math

import torch
from torch import nn

from attrimp.errors import ConfigError


def build_optimizer(
    model: nn.Module,
    *,
    name: str = "adamw",
    lr: float = 3.5e-4,
    weight_decay: float = 1e-4,
    momentum: float = 0.9,
    expert_lr_scale: float = 1.0,
    extra_parameters: list[nn.Parameter] | None = None,
) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters.

    Biases and normalisation weights get no weight decay (decaying them only hurts); parameters
    whose name contains ``experts`` may train at a scaled learning rate, since freshly initialised
    experts on a pretrained backbone usually want a larger step than the backbone.
    """
    decay, no_decay, experts = [], [], []
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "expert" in pname and expert_lr_scale != 1.0:
            experts.append(p)
        elif p.ndim <= 1 or pname.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr": lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": lr},
    ]
    if experts:
        groups.append({"params": experts, "weight_decay": weight_decay, "lr": lr * expert_lr_scale})
    if extra_parameters:
        groups.append({"params": list(extra_parameters), "weight_decay": 0.0, "lr": lr})
    groups = [g for g in groups if g["params"]]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    raise ConfigError(f"Unknown optimizer {name!r}; use 'adamw' or 'sgd'.")


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int,
    warmup_start: float = 0.01,
    min_ratio: float = 0.01,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ``warmup_start``×lr, then cosine decay to ``min_ratio``×lr (per step)."""
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return warmup_start + (1.0 - warmup_start) * step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(1.0, progress)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

"""ReID training losses: label-smoothed identity cross-entropy, batch-hard triplet, centre loss.

The standard "bag of tricks" recipe (Luo et al. 2019) that CLIP-ReID and MoSAIC-ReID train with:
cross-entropy on the BNNeck logits, triplet on the features before the BNNeck.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def identity_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, smoothing: float = 0.1
) -> torch.Tensor:
    """Cross-entropy with label smoothing (torch's own implementation, computed in float32)."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)


def batch_hard_triplet_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float | None = 0.3,
    normalize: bool = False,
) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017).

    For every anchor: its farthest positive and nearest negative in the batch. ``margin=None``
    gives the soft-margin variant ``softplus(d_ap - d_an)``. Anchors without a positive or a
    negative in the batch (possible with K=1) are left out rather than given a fake distance.
    """
    x = features.float()
    if normalize:
        x = F.normalize(x, dim=1)
    dist = torch.cdist(x, x).clamp_min(1e-12)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos_mask = same & ~eye
    neg_mask = ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    d_ap = torch.where(pos_mask, dist, torch.full_like(dist, -1.0)).max(1).values
    d_an = torch.where(neg_mask, dist, torch.full_like(dist, float("inf"))).min(1).values
    per_anchor = F.softplus(d_ap - d_an) if margin is None else F.relu(d_ap - d_an + margin)
    # The mean over valid anchors by masking, not by `if valid.any()` or `d_ap[valid]`: both
    # read the mask on the host, a GPU stream synchronisation at every training step.
    masked = torch.where(valid, per_anchor, torch.zeros_like(per_anchor))
    return masked.sum() / valid.sum().clamp(min=1)


class CenterLoss(nn.Module):
    """Centre loss (Wen et al. 2016): pulls each feature to a learned centre of its identity."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, dim) * 0.01)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return 0.5 * (features.float() - self.centers[labels]).pow(2).sum(1).mean()

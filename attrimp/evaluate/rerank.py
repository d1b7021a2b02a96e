"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li, CVPR 2017, "Re-ranking Person
Re-identification with k-reciprocal Encoding").

Written from the paper's equations (no maintained library ships it), vectorised in torch so it
runs on a GPU; the conventions the paper leaves open follow the authors' released code:

* distances are scaled row by row by their maximum over queries + gallery, so the original
  distance and the Jaccard distance (both in [0, 1]) mix on the same scale;
* ``N(p, k)`` holds the ``k + 1`` nearest samples *including p itself*;
  ``R(p, k) = {g in N(p, k) : p in N(g, k)}`` (Eq. 4);
* ``R*(p, k1)`` adds ``R(q, k1/2)`` (``k1/2`` rounded half-to-even) for every ``q`` in
  ``R(p, k1)`` with ``|R(p, k1) ∩ R(q, k1/2)| >= 2/3 |R(q, k1/2)|`` (Eq. 6, the paper's ``>=``;
  the released code uses ``>``);
* ``V[p, g] = exp(-d(p, g))`` on ``R*(p, k1)``, 0 elsewhere (Eq. 7), normalised to sum 1;
* local query expansion averages ``V`` over the ``k2`` nearest samples, ``p`` first (Eq. 11);
* Jaccard distance ``1 - sum(min(V_p, V_g)) / sum(max(V_p, V_g))`` (Eq. 10), final distance
  ``(1 - lambda) d_J + lambda d`` (Eq. 12).

Memory: the method is defined on the ``(Q + G) x (Q + G)`` set, and this implementation keeps
three dense matrices of that size (distances, ``V`` and its expansion): ~6.5 GB in float32 at
Market-1501 size (23,100 images) — use a GPU there.  Ties at the k-th neighbour are broken by
``torch.topk`` (deterministic for a given input and device).
"""

from __future__ import annotations

import numpy as np
import torch

from attrimp.errors import ConfigError, DataError
from attrimp.evaluate.metrics import pairwise_distance

__all__ = ["k_reciprocal_rerank", "rerank_features"]

_BUDGET = 1 << 25  # elements of the largest temporary built at once


def _t(x: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t.to(device, torch.float64 if t.dtype == torch.float64 else torch.float32)


def _reciprocal(nn: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``R(i, k)`` as padded indices + mask: the members of ``N(i, k)`` that have ``i`` in their
    own ``N(., k)``."""
    fwd = nn[:, : k + 1]  # [N, k+1]
    me = torch.arange(nn.shape[0], device=nn.device)[:, None, None]
    back = (fwd[fwd] == me).any(2)  # [N, k+1]: is i among the neighbours of its neighbour?
    return fwd, back


def k_reciprocal_rerank(
    q_g_dist: torch.Tensor | np.ndarray,
    q_q_dist: torch.Tensor | np.ndarray,
    g_g_dist: torch.Tensor | np.ndarray,
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Re-ranked ``[n_query, n_gallery]`` distances from the three distance blocks.

    Pass the distances you would rank by (e.g. `attrimp.evaluate.metrics.pairwise_distance`); the result
    is on ``device`` (default: that of ``q_g_dist``) and feeds `attrimp.evaluate.metrics.evaluate`.
    """
    qg, qq, gg = _checked_blocks(q_g_dist, q_q_dist, g_g_dist, device)
    nq = qg.shape[0]
    _check_options(nq + qg.shape[1], k1, k2, lambda_value)
    dist = _joint_distances(qg, qq, gg)
    kh = int(round(k1 / 2))  # Python's round is half-to-even, like the authors' np.around
    nn = _nearest(dist, max(k1 + 1, k2))
    v = _k_reciprocal_weights(dist, nn, k1, kh, dtype=qg.dtype)
    if k2 > 1:
        v = _expand_queries(v, nn, k2)
    return (1.0 - lambda_value) * _jaccard_distance(v, nq) + lambda_value * dist[:nq, nq:]


def _checked_blocks(
    q_g_dist: torch.Tensor | np.ndarray,
    q_q_dist: torch.Tensor | np.ndarray,
    g_g_dist: torch.Tensor | np.ndarray,
    device: str | torch.device | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three blocks as float tensors on ``device`` (default: that of ``q_g_dist``), their
    shapes checked against each other."""
    qg = torch.as_tensor(q_g_dist)
    dev = torch.device(device) if device is not None else qg.device
    qg, qq, gg = _t(qg, dev), _t(q_q_dist, dev), _t(g_g_dist, dev)
    nq, ng = qg.shape
    if qq.shape != (nq, nq) or gg.shape != (ng, ng):
        raise DataError(
            f"Re-ranking needs query-gallery {nq} x {ng}, query-query {nq} x {nq} and "
            f"gallery-gallery {ng} x {ng} distances; got {tuple(qq.shape)} and {tuple(gg.shape)}."
        )
    return qg, qq, gg


def _joint_distances(qg: torch.Tensor, qq: torch.Tensor, gg: torch.Tensor) -> torch.Tensor:
    """The ``(Q + G) x (Q + G)`` distances, each row scaled by its maximum so that they mix
    with the Jaccard distance on the same [0, 1] scale."""
    dist = torch.cat([torch.cat([qq, qg], 1), torch.cat([qg.T, gg], 1)], 0)
    if not bool(torch.isfinite(dist).all()):
        raise DataError("The distances given for re-ranking contain NaN or inf values.")
    dist /= dist.amax(1, keepdim=True).clamp(min=torch.finfo(qg.dtype).tiny)
    return dist


def _check_options(n: int, k1: int, k2: int, lambda_value: float) -> None:
    if not (1 <= k1 < n) or not (1 <= k2 <= n):
        raise ConfigError(
            f"k1={k1} and k2={k2} must be at least 1 and below the {n} query + gallery images."
        )
    if not 0.0 <= lambda_value <= 1.0:
        raise ConfigError(f"lambda_value must lie in [0, 1]; got {lambda_value}.")


def _nearest(dist: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of each sample's ``k`` nearest samples (itself first), in row blocks."""
    rows = max(1, _BUDGET // dist.shape[0])
    return torch.cat(
        [
            torch.topk(dist[s : s + rows], k, dim=1, largest=False, sorted=True).indices
            for s in range(0, dist.shape[0], rows)
        ]
    )


def _k_reciprocal_weights(
    dist: torch.Tensor, nn: torch.Tensor, k1: int, kh: int, *, dtype: torch.dtype
) -> torch.Tensor:
    """``V`` (Eq. 7) on ``R*(i)``: ``R(i, k1)`` plus ``R(c, k1/2)`` of the candidates ``c`` in
    ``R(i, k1)`` that overlap it enough (Eq. 6); rows normalised to sum 1; in ``dtype`` (that
    of the query-gallery block)."""
    n = dist.shape[0]
    r_idx, r_ok = _reciprocal(nn, k1)  # [N, k1+1]
    h_idx, h_ok = _reciprocal(nn, kh)  # [N, kh+1]
    v = torch.zeros(n, n, dtype=dtype, device=dist.device)
    step = max(1, _BUDGET // ((k1 + 1) ** 2 * (kh + 1)))
    for s in range(0, n, step):
        ri, ro = r_idx[s : s + step], r_ok[s : s + step]  # [c, K1]
        hc, ho = h_idx[ri], h_ok[ri] & ro[:, :, None]  # [c, K1, Kh] candidates' half sets
        in_r = ((hc[..., None] == ri[:, None, None, :]) & ro[:, None, None, :]).any(3)
        overlap = (in_r & ho).sum(2)  # |R(i) ∩ R(c, k1/2)|
        accept = ro & (3 * overlap >= 2 * ho.sum(2))
        members = torch.cat([ri, hc.flatten(1)], 1)
        keep = torch.cat([ro, (ho & accept[:, :, None]).flatten(1)], 1)
        rows_d = dist[s : s + step]
        w = torch.where(keep, torch.exp(-torch.gather(rows_d, 1, members)), 0.0)
        # a sample listed twice carries the same weight; 'amax' also ignores the masked zeros
        v[s : s + step].scatter_reduce_(1, members, w, reduce="amax")
    v /= v.sum(1, keepdim=True)
    return v


def _expand_queries(v: torch.Tensor, nn: torch.Tensor, k2: int) -> torch.Tensor:
    """Local query expansion (Eq. 11): ``V`` averaged over each sample's ``k2`` nearest."""
    rows = max(1, _BUDGET // v.shape[0])
    vq = torch.empty_like(v)
    for s in range(0, v.shape[0], rows):
        vq[s : s + rows] = v[nn[s : s + rows, :k2]].mean(1)
    return vq


def _jaccard_distance(v: torch.Tensor, nq: int) -> torch.Tensor:
    """Jaccard distance between each query and each gallery sample (Eq. 10), over the query's
    support only: min(a, b) = 0 wherever a = 0, and sum(max) = sum(a) + sum(b) - sum(min)."""
    vg = v[nq:]
    ng = vg.shape[0]
    vg_sum = vg.sum(1)
    support = int((v[:nq] > 0).sum(1).max())
    c = max(1, _BUDGET // (ng * support))
    jac = torch.empty(nq, ng, dtype=v.dtype, device=v.device)
    for s in range(0, nq, c):
        vqr = v[s : min(s + c, nq)]
        val, idx = torch.topk(vqr, support, dim=1)  # each query's support (zeros pad)
        b = vg[:, idx.flatten()].view(ng, vqr.shape[0], support)
        mins = torch.minimum(b, val[None]).sum(2).T  # [c, G]
        jac[s : s + c] = 1.0 - mins / (vqr.sum(1, keepdim=True) + vg_sum[None] - mins)
    return jac


def rerank_features(
    qf: torch.Tensor | np.ndarray,
    gf: torch.Tensor | np.ndarray,
    *,
    metric: str = "euclidean",
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Re-ranked distances straight from query and gallery features."""

    def d(a, b):
        return pairwise_distance(a, b, metric, device=device)

    return k_reciprocal_rerank(
        d(qf, gf), d(qf, qf), d(gf, gf), k1=k1, k2=k2, lambda_value=lambda_value, device=device
    )

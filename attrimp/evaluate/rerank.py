"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li, CVPR 2017, "Re-ranking Person
Re-identification with k-reciprocal Encoding").

Written from the paper's equations (no maintained library ships it), vectorised in torch so it
runs on a GPU; the conventions the paper leaves open follow the authors' released code
(``re_ranking`` in github.com/zhunzhong07/person-re-ranking, copied unchanged into torchreid's
``torchreid/utils/rerank.py`` and fast-reid's ``fastreid/evaluation/rerank.py``), so that by
default the result equals theirs (to float32 rounding, ~1e-6) on the same distances:

* distances are scaled row by row by their maximum over queries + gallery, so the original
  distance and the Jaccard distance (both in [0, 1]) mix on the same scale;
* ``N(p, k)`` holds the ``k + 1`` nearest samples *including p itself*;
  ``R(p, k) = {g in N(p, k) : p in N(g, k)}`` (Eq. 4);
* ``R*(p, k1)`` adds ``R(q, k1/2)`` (``k1/2`` rounded half-to-even) for every ``q`` in
  ``R(p, k1)`` whose half-size set overlaps ``R(p, k1)`` enough (Eq. 6). "Enough" is
  ``overlap=``: ``"released"`` (default) keeps ``q`` when ``|R(p, k1) ∩ R(q, k1/2)| > 2/3
  |R(q, k1/2)|``, the rule of the released code with which published re-ranked numbers were
  made; ``"paper"`` uses the paper's wording, ``>= 2/3``. They differ only where the overlap is
  exactly 2/3 (e.g. 2 of 3, 4 of 6), which is common: on random data at k1 = 20 the paper's
  rule moved distances by up to ~9e-2 and mAP by up to ~4e-3 (``benchmarks/bench_rerank.py``);
* ``V[p, g] = exp(-d(p, g))`` on ``R*(p, k1)``, 0 elsewhere (Eq. 7), normalised to sum 1;
* local query expansion averages ``V`` over the ``k2`` nearest samples, ``p`` first (Eq. 11);
* Jaccard distance ``1 - sum(min(V_p, V_g)) / sum(max(V_p, V_g))`` (Eq. 10), final distance
  ``(1 - lambda) d_J + lambda d`` (Eq. 12).

Which distance: `k_reciprocal_rerank` uses the distances it is given *as they are*. The peers
square theirs first (``original_dist = np.power(dist, 2)``), so torchreid's / fast-reid's
``re_ranking(D_qg, D_qq, D_gg)`` equals ``k_reciprocal_rerank(D_qg**2, D_qq**2, D_gg**2)``;
torchreid's engine passes it squared Euclidean distances, i.e. re-ranks on ``|q - g|**4``
(fast-reid's evaluator calls a separate faiss-based Jaccard path, not this function).
`rerank_features` computes the blocks with `attrimp.evaluate.metrics.pairwise_distance`:
``metric="sqeuclidean"`` is the peers' re-ranking of plain Euclidean distances (and the
feature-based ``re_ranking(probFea, galFea, ...)`` variants, which compute squared Euclidean
distances).

Speed: every stage works on blocks of rows. On the CPU the blocks go to independent workers
(one per available CPU, each with torch held to one intra-op thread), as
`attrimp.evaluate.metrics.evaluate` does: a torch op spread over every core waits at its end
for all of them, and on a busy machine some of those cores have been given away
(`attrimp.threads`).

Memory: the method is defined on the ``(Q + G) x (Q + G)`` set, and this implementation keeps
three dense matrices of that size (distances, ``V`` and its expansion): ~6.5 GB in float32 at
Market-1501 size (23,100 images) — use a GPU there.  Ties at the k-th neighbour are broken by
``torch.topk`` (deterministic for a given input and device).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch

from attrimp.errors import ConfigError, DataError
from attrimp.evaluate.metrics import pairwise_distance
from attrimp.threads import cpu_threads, default_threads

__all__ = ["OVERLAP_RULES", "k_reciprocal_rerank", "rerank_features"]

_BUDGET = 1 << 25  # elements of the temporaries built at once, all workers together

#: ``overlap=`` values: the released code's strict ``>`` (default) and the paper's ``>=``.
OVERLAP_RULES = ("released", "paper")
Overlap = Literal["released", "paper"]


def _t(x: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t.to(device, torch.float64 if t.dtype == torch.float64 else torch.float32)


class _Blocks:
    """Row blocks of an ``n``-row job and the workers that take them.

    A block holds at most ``_BUDGET / (workers * per_row)`` rows (the workers' temporaries
    together stay within the budget), and on the CPU each worker gets about four blocks, so a
    worker whose core the scheduler gives away delays only a small share of the rows."""

    def __init__(self, device: torch.device, workers: int) -> None:
        self.device = device
        self.workers = 1 if device.type != "cpu" else max(1, workers)

    def starts(self, n: int, per_row: int) -> tuple[list[int], int]:
        rows = max(1, _BUDGET // max(1, self.workers * per_row))
        if self.workers > 1:
            rows = min(rows, max(1, -(-n // (4 * self.workers))))
        return list(range(0, n, rows)), rows

    def run(self, fn: Callable[[int, int], torch.Tensor | None], n: int, per_row: int) -> list:
        """``fn(start, rows)`` for every block, in block order; on the CPU in the workers."""
        starts, rows = self.starts(n, per_row)
        if self.workers == 1 or len(starts) == 1:
            return [fn(s, rows) for s in starts]
        with ThreadPoolExecutor(
            min(self.workers, len(starts)), thread_name_prefix="attrimp-rerank"
        ) as pool:
            return list(pool.map(lambda s: fn(s, rows), starts))  # re-raises a block's error


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
    overlap: Overlap = "released",
    device: str | torch.device | None = None,
    threads: int | None = None,
) -> torch.Tensor:
    """Re-ranked ``[n_query, n_gallery]`` distances from the three distance blocks.

    The distances are used as given (the peers' ``re_ranking(D, ...)`` squares ``D`` first:
    pass ``D**2`` here to reproduce it; see the module docstring). ``overlap``: ``"released"``
    (the authors' code, torchreid, fast-reid: ``> 2/3``) or ``"paper"`` (``>= 2/3``).
    ``threads``: CPU workers (default `attrimp.threads.default_threads`), each on one intra-op
    thread. The result is on ``device`` (default: that of ``q_g_dist``) and feeds
    `attrimp.evaluate.metrics.evaluate`.
    """
    qg, qq, gg = _checked_blocks(q_g_dist, q_q_dist, g_g_dist, device)
    nq = qg.shape[0]
    _check_options(nq + qg.shape[1], k1, k2, lambda_value, overlap)
    blocks = _Blocks(qg.device, default_threads() if threads is None else int(threads))
    with cpu_threads(1):
        dist = _joint_distances(qg, qq, gg, blocks)
        kh = int(round(k1 / 2))  # Python's round is half-to-even, like the authors' np.around
        nn = _nearest(dist, max(k1 + 1, k2), blocks)
        v = _k_reciprocal_weights(dist, nn, k1, kh, overlap == "paper", blocks)
        if k2 > 1:
            v = _expand_queries(v, nn, k2, blocks)
        jac = _jaccard_distance(v, nq, blocks)
        return (1.0 - lambda_value) * jac + lambda_value * dist[:nq, nq:]


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
    return qg, qq.to(qg.dtype), gg.to(qg.dtype)


def _joint_distances(
    qg: torch.Tensor, qq: torch.Tensor, gg: torch.Tensor, blocks: _Blocks
) -> torch.Tensor:
    """The ``(Q + G) x (Q + G)`` distances, each row scaled by its maximum so that they mix
    with the Jaccard distance on the same [0, 1] scale."""
    nq, ng = qg.shape
    n = nq + ng
    dist = torch.empty(n, n, dtype=qg.dtype, device=qg.device)
    tiny = torch.finfo(qg.dtype).tiny

    def fill(s: int, rows: int) -> torch.Tensor:
        e = min(s + rows, n)
        if s < nq:  # query rows: [q-q | q-g]
            dist[s : min(e, nq), :nq] = qq[s:e]
            dist[s : min(e, nq), nq:] = qg[s:e]
        if e > nq:  # gallery rows: [g-q | g-g]
            a = max(s, nq) - nq
            dist[nq + a : e, :nq] = qg.T[a : e - nq]
            dist[nq + a : e, nq:] = gg[a : e - nq]
        block = dist[s:e]
        block /= block.amax(1, keepdim=True).clamp(min=tiny)
        return torch.isfinite(block).all()

    if not all(bool(ok) for ok in blocks.run(fill, nq + ng, nq + ng)):
        raise DataError("The distances given for re-ranking contain NaN or inf values.")
    return dist


def _check_options(n: int, k1: int, k2: int, lambda_value: float, overlap: str) -> None:
    if not (1 <= k1 < n) or not (1 <= k2 <= n):
        raise ConfigError(
            f"k1={k1} and k2={k2} must be at least 1 and below the {n} query + gallery images."
        )
    if not 0.0 <= lambda_value <= 1.0:
        raise ConfigError(f"lambda_value must lie in [0, 1]; got {lambda_value}.")
    if overlap not in OVERLAP_RULES:
        raise ConfigError(
            f"overlap must be 'released' (> 2/3, the authors' code, torchreid, fast-reid) or "
            f"'paper' (>= 2/3); got {overlap!r}."
        )


def _nearest(dist: torch.Tensor, k: int, blocks: _Blocks) -> torch.Tensor:
    """Indices of each sample's ``k`` nearest samples (itself first), in row blocks."""

    def top(s: int, rows: int) -> torch.Tensor:
        return torch.topk(dist[s : s + rows], k, dim=1, largest=False, sorted=True).indices

    return torch.cat(blocks.run(top, dist.shape[0], dist.shape[0]))


def _k_reciprocal_weights(
    dist: torch.Tensor, nn: torch.Tensor, k1: int, kh: int, paper: bool, blocks: _Blocks
) -> torch.Tensor:
    """``V`` (Eq. 7) on ``R*(i)``: ``R(i, k1)`` plus ``R(c, k1/2)`` of the candidates ``c`` in
    ``R(i, k1)`` that overlap it enough (Eq. 6: ``>`` 2/3, or ``>=`` when ``paper``); rows
    normalised to sum 1; in the distances' dtype."""
    n = dist.shape[0]
    r_idx, r_ok = _reciprocal(nn, k1)  # [N, k1+1]
    h_idx, h_ok = _reciprocal(nn, kh)  # [N, kh+1]
    v = torch.zeros(n, n, dtype=dist.dtype, device=dist.device)

    def fill(s: int, rows: int) -> None:
        ri, ro = r_idx[s : s + rows], r_ok[s : s + rows]  # [c, K1]
        hc, ho = h_idx[ri], h_ok[ri] & ro[:, :, None]  # [c, K1, Kh] candidates' half sets
        in_r = ((hc[..., None] == ri[:, None, None, :]) & ro[:, None, None, :]).any(3)
        overlap3 = 3 * (in_r & ho).sum(2)  # 3 |R(i) ∩ R(c, k1/2)|, against 2 |R(c, k1/2)|
        size2 = 2 * ho.sum(2)  # integers: exact at 2/3, like the released float test
        accept = ro & (overlap3 >= size2 if paper else overlap3 > size2)
        members = torch.cat([ri, hc.flatten(1)], 1)
        keep = torch.cat([ro, (ho & accept[:, :, None]).flatten(1)], 1)
        w = torch.where(keep, torch.exp(-torch.gather(dist[s : s + rows], 1, members)), 0.0)
        # a sample listed twice carries the same weight; 'amax' also ignores the masked zeros
        block = v[s : s + rows]
        block.scatter_reduce_(1, members, w, reduce="amax")
        block /= block.sum(1, keepdim=True)

    blocks.run(fill, n, (k1 + 1) ** 2 * (kh + 1))
    return v


def _expand_queries(v: torch.Tensor, nn: torch.Tensor, k2: int, blocks: _Blocks) -> torch.Tensor:
    """Local query expansion (Eq. 11): ``V`` averaged over each sample's ``k2`` nearest."""
    vq = torch.empty_like(v)

    def fill(s: int, rows: int) -> None:
        torch.mean(v[nn[s : s + rows, :k2]], 1, out=vq[s : s + rows])

    blocks.run(fill, v.shape[0], v.shape[0] * k2)
    return vq


def _jaccard_distance(v: torch.Tensor, nq: int, blocks: _Blocks) -> torch.Tensor:
    """Jaccard distance between each query and each gallery sample (Eq. 10): ``1 - m / (|V_q|
    + |V_g| - m)`` with ``m = sum(min(V_q, V_g))`` (``sum(max) = sum(a) + sum(b) - sum(min)``).

    ``V`` is sparse (each row holds a few hundred non-zeros), so on the CPU ``m`` is summed only
    where both rows are non-zero, through an inverted index as the released code does (~15x
    faster than the dense form at 7,500 images). On a GPU the dense form over each
    query's support is used: it is fast there, and the sparse form's scattered additions
    (atomics) would make the float sums' order vary from run to run."""
    vg = v[nq:]
    q_sum, g_sum = v[:nq].sum(1, keepdim=True), vg.sum(1)[None]
    if v.device.type == "cpu":
        mins = _sparse_min_sums(v, nq, blocks)
    else:
        mins = _dense_min_sums(v, nq, blocks)
    return 1.0 - mins / (q_sum + g_sum - mins)


def _sparse_min_sums(v: torch.Tensor, nq: int, blocks: _Blocks) -> torch.Tensor:
    """``sum(min(V_q, V_g))`` for every query-gallery pair, over the columns both hold: each
    query's non-zero column ``j`` meets the gallery rows that hold ``j`` (the inverted index),
    and the minima are added into ``[query, gallery]`` in column order."""
    vg = v[nq:]
    ng, n = vg.shape
    col, row = (vg.T > 0).nonzero(as_tuple=True)  # holders, by column then gallery row
    held_val = vg[row, col]
    first = torch.searchsorted(col, torch.arange(n + 1, device=v.device))
    held = first[1:] - first[:-1]  # gallery rows holding each column
    q_nz = v[:nq] > 0
    pairs = int((q_nz * held[None]).sum(1).max()) if nq else 0
    out = torch.zeros(nq, ng, dtype=v.dtype, device=v.device)

    def fill(s: int, rows: int) -> None:
        qi, qj = q_nz[s : s + rows].nonzero(as_tuple=True)
        cnt = held[qj]
        start = torch.repeat_interleave(first[qj] - (cnt.cumsum(0) - cnt), cnt)
        pos = torch.arange(start.shape[0], device=v.device) + start  # into the holder lists
        q_val = torch.repeat_interleave(v[s + qi, qj], cnt)
        target = torch.repeat_interleave(qi, cnt) * ng + row[pos]
        block = out[s : s + rows]
        block.view(-1).index_add_(0, target, torch.minimum(q_val, held_val[pos]))

    blocks.run(fill, nq, 6 * max(1, pairs) + ng)
    return out


def _dense_min_sums(v: torch.Tensor, nq: int, blocks: _Blocks) -> torch.Tensor:
    """``sum(min(V_q, V_g))`` over each query's support (min is 0 wherever ``V_q`` is), dense in
    the gallery: the GPU path."""
    vg = v[nq:]
    ng = vg.shape[0]
    support = int((v[:nq] > 0).sum(1).max())
    out = torch.empty(nq, ng, dtype=v.dtype, device=v.device)

    def fill(s: int, rows: int) -> None:
        val, idx = torch.topk(v[s : min(s + rows, nq)], support, dim=1)  # zeros pad
        b = vg[:, idx.flatten()].view(ng, val.shape[0], support)
        out[s : s + rows] = torch.minimum(b, val[None]).sum(2).T

    blocks.run(fill, nq, 2 * ng * support)
    return out


def rerank_features(
    qf: torch.Tensor | np.ndarray,
    gf: torch.Tensor | np.ndarray,
    *,
    metric: str = "euclidean",
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    overlap: Overlap = "released",
    device: str | torch.device | None = None,
    threads: int | None = None,
) -> torch.Tensor:
    """Re-ranked distances straight from query and gallery features, on the ``metric``
    distances as they are (``"sqeuclidean"`` reproduces the peers' ``re_ranking`` given
    Euclidean distances; see the module docstring)."""

    def d(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> torch.Tensor:
        return pairwise_distance(a, b, metric, device=device)

    return k_reciprocal_rerank(
        d(qf, gf),
        d(qf, qf),
        d(gf, gf),
        k1=k1,
        k2=k2,
        lambda_value=lambda_value,
        overlap=overlap,
        device=device,
        threads=threads,
    )

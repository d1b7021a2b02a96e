"""ReID ranking metrics: mAP, CMC and mINP under the standard Market-1501 protocol.

Protocol (the one of torchreid's ``evaluate_rank`` / ``eval_market1501`` and of the Market-1501
devkit), for every query:

* gallery entries with the query's identity *and* the query's camera are removed (they would
  be trivial matches), and junk gallery entries (identity ``-1``) are ignored everywhere;
* the remaining gallery is ranked by ascending distance; ties are broken by gallery position
  (the order of a *stable* argsort), so results never depend on a sort implementation;
* a query whose identity has no remaining gallery entry (or whose own identity is junk) is
  skipped: it gets ``valid = False``, NaN ``ap``/``inp``, and is counted in ``num_skipped``;
* ``ap`` is the average precision over the filtered ranking, ``first_hit`` the 1-based rank of
  the first true match, ``inp = (number of true matches) / (rank of the hardest true match)``
  (Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook", AGW);
* ``mAP``, ``mINP`` and the CMC curve average the valid queries.  ``cmc[k-1]`` is the fraction of
  valid queries whose first hit is within rank ``k``; it is defined for every ``k`` up to
  ``max_rank`` even when a query's filtered gallery is shorter than that (torchreid's Python
  version builds a ragged array there, and its Cython version reads stale buffer entries).

Why not an argsort per query?  AP, CMC and INP depend only on the ranks of the true matches,
and a query has a handful of them.  So each chunk of rows is sorted by *value* only (numpy's
SIMD sort, several times faster than argsort plus the gathers the reference does), and the rank
of each true match is read with a binary search: ``rank = #(gallery closer) - #(closer entries
of the query's own identity) + #(true matches before it) + 1``.  Rows where a true match ties in
distance with a non-match take an exact stable-argsort path, so tie order is always the
documented one.  Everything is torch, so the same code runs on a GPU; on the CPU the row sort is
delegated to numpy, which is ~10x faster than ``torch.sort`` there.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from attrimp.errors import ConfigError, DataError
from attrimp.threads import cpu_threads, default_threads

#: Identity of junk images (Market-1501): never a match, never a distractor, ignored.
JUNK_PID = -1
#: Elements of the distance matrix processed at once: 16 MiB of float32 on the CPU (more buys
#: nothing there), 256 MiB on a GPU (fewer, larger sorts keep it busy).
DEFAULT_CHUNK_ELEMENTS = 1 << 22
DEFAULT_CHUNK_ELEMENTS_GPU = 1 << 26
#: sort with numpy on the CPU (off: torch everywhere; the tests use it to run the GPU code path)
_NUMPY_SORT_ON_CPU = True

__all__ = [
    "EvalResult",
    "evaluate",
    "pairwise_distance",
]


@dataclass(frozen=True, eq=False)
class EvalResult(Mapping):
    """Metrics of one evaluation; reads as attributes (``r.mAP``) or as a mapping (``r["mAP"]``).

    Per-query arrays have one entry per query, in query order; skipped queries have
    ``valid=False``, ``ap = inp = NaN``, ``first_hit = 0`` and ``rank1 = 0``.
    """

    mAP: float
    cmc: np.ndarray
    mINP: float
    ap: np.ndarray
    inp: np.ndarray
    first_hit: np.ndarray
    rank1: np.ndarray
    valid: np.ndarray
    max_rank: int
    num_queries: int
    num_valid: int
    num_skipped: int
    num_junk_gallery: int

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    @classmethod
    def _keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def rank(self, k: int) -> float:
        """CMC at any rank ``k`` (not limited to ``max_rank``): share of valid queries whose first
        true match is within the top ``k``."""
        return float(np.mean(self.first_hit[self.valid] <= k))

    def summary(self) -> dict[str, float | int]:
        """The headline numbers, as plain floats (for logs, JSON and config-level tables)."""
        return {
            "mAP": self.mAP,
            "rank1": self.rank(1),
            "rank5": self.rank(5),
            "rank10": self.rank(10),
            "mINP": self.mINP,
            "num_valid": self.num_valid,
            "num_skipped": self.num_skipped,
        }

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"EvalResult(mAP={s['mAP']:.4f}, rank1={s['rank1']:.4f}, mINP={s['mINP']:.4f}, "
            f"valid={self.num_valid}/{self.num_queries})"
        )


# --------------------------------------------------------------------------------------------
# distances


def pairwise_distance(
    qf: torch.Tensor | np.ndarray,
    gf: torch.Tensor | np.ndarray,
    metric: str = "euclidean",
    *,
    chunk: int = 4096,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Distance matrix ``[n_query, n_gallery]`` (float32) computed ``chunk`` query rows at a time.

    ``metric``: ``"euclidean"`` (the L2 distance), ``"sqeuclidean"`` (its square, as torchreid's
    ``compute_distance_matrix`` returns; same ranking) or ``"cosine"`` (``1 - cos``).  The result
    lives on ``device`` (default: the device of ``qf``).  Features in half precision are upcast,
    because bf16 rounding of ``|q|^2 + |g|^2 - 2 q.g`` creates spurious ties.
    """
    if metric not in ("euclidean", "sqeuclidean", "cosine"):
        raise ConfigError(
            f"Unknown distance metric {metric!r}; use 'euclidean', 'sqeuclidean' or 'cosine'."
        )
    q = torch.as_tensor(qf)
    g = torch.as_tensor(gf)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise DataError(
            f"Query and gallery features must be 2-D with the same width; got {tuple(q.shape)} "
            f"and {tuple(g.shape)}."
        )
    dev = torch.device(device) if device is not None else q.device
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    g = g.to(dev, dtype)
    if metric == "cosine":
        g = torch.nn.functional.normalize(g, dim=1)
    g_sq = (g * g).sum(1)
    out = torch.empty(q.shape[0], g.shape[0], dtype=dtype, device=dev)
    for start in range(0, q.shape[0], max(1, int(chunk))):
        qc = q[start : start + chunk].to(dev, dtype)
        if metric == "cosine":
            qc = torch.nn.functional.normalize(qc, dim=1)
            out[start : start + chunk] = 1.0 - qc @ g.T
            continue
        d = torch.addmm(g_sq[None, :], qc, g.T, beta=1.0, alpha=-2.0)
        d += (qc * qc).sum(1, keepdim=True)
        d.clamp_(min=0)
        out[start : start + chunk] = d.sqrt_() if metric == "euclidean" else d
    return out


# --------------------------------------------------------------------------------------------
# evaluation


def _as_ids(x: Any, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 1:
        raise DataError(f"{name} must be a 1-D array; got shape {a.shape}.")
    integral = np.issubdtype(a.dtype, np.integer) or (
        np.issubdtype(a.dtype, np.floating) and bool(np.all(np.isfinite(a) & (a == np.round(a))))
    )
    if a.size and not integral:
        raise DataError(f"{name} must hold integer identities/cameras; got dtype {a.dtype}.")
    return a.astype(np.int64)


def _sort_rows(d: torch.Tensor, buffer: np.ndarray | None = None) -> torch.Tensor:
    """Row-wise ascending values (contiguous, for searchsorted).  On the CPU numpy's SIMD sort
    beats ``torch.sort`` by ~10x, and sorting in place in a reused ``buffer`` saves the page
    faults of a fresh copy per chunk (~25% of the time at Market size)."""
    if d.device.type != "cpu" or not _NUMPY_SORT_ON_CPU:
        return torch.sort(d, dim=1).values.contiguous()
    a = d.numpy()
    if buffer is None or buffer.dtype != a.dtype or buffer.size < a.size:
        return torch.from_numpy(np.sort(a, axis=1))
    out = buffer.reshape(-1)[: a.size].reshape(a.shape)
    np.copyto(out, a)
    out.sort(axis=1)
    return torch.from_numpy(out)


def _stable_argsort_rows(d: torch.Tensor) -> torch.Tensor:
    if d.device.type == "cpu" and _NUMPY_SORT_ON_CPU:
        return torch.from_numpy(np.argsort(d.numpy(), axis=1, kind="stable"))
    return torch.sort(d, dim=1, stable=True).indices


def _exact_rows(
    d: torch.Tensor, qp: torch.Tensor, qc: torch.Tensor, gp: torch.Tensor, gc: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The protocol literally, vectorised over rows: stable argsort, drop junk and
    same-id-same-camera entries, ranks of the true matches from cumulative sums.  Used for rows
    where a true match ties in distance with a non-match (only the full order says who wins)."""
    order = _stable_argsort_rows(d)
    op, oc = gp[order], gc[order]
    same = op == qp[:, None]
    keep = ~(same & (oc == qc[:, None])) & (op != JUNK_PID)
    pos = same & keep
    rank = torch.cumsum(keep, 1)  # 1-based rank in the filtered list, at kept positions
    hit_no = torch.cumsum(pos, 1)  # how many true matches up to here
    n = pos.sum(1)
    prec = torch.where(pos, hit_no.double() / rank.double(), 0.0)
    ap = prec.sum(1) / n.clamp(min=1)
    big = torch.iinfo(torch.int64).max
    first = torch.where(pos, rank, big).amin(1)
    last = torch.where(pos, rank, 0).amax(1)
    return ap, first, last


def _count_below(sorted_rows: torch.Tensor, pd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: how many entries are < and <= each threshold."""
    return (
        torch.searchsorted(sorted_rows, pd, right=False),
        torch.searchsorted(sorted_rows, pd, right=True),
    )


@dataclass(frozen=True)
class _Gallery:
    """The gallery side of a chunk computation, on the compute device."""

    pids: torch.Tensor
    camids: torch.Tensor
    members: torch.Tensor  # [n identities asked about, max images] gallery columns, -1 padded
    junk: torch.Tensor  # junk columns


def _chunk_metrics(
    d: torch.Tensor,
    srt: torch.Tensor,
    qp: torch.Tensor,
    qc: torch.Tensor,
    slot: torch.Tensor,
    g: _Gallery,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """AP, first-hit rank, hardest-hit rank and number of true matches for a chunk of queries.

    ``d`` is the chunk of the distance matrix, ``srt`` its rows sorted; ``slot[i]`` is the row of
    query ``i``'s identity in ``g.members`` (-1: the identity is absent from the gallery).
    """
    mem = g.members[slot.clamp(min=0)]  # [c, m] gallery columns of the query's identity
    mem_ok = (mem >= 0) & (slot >= 0)[:, None]
    mem_c = mem.clamp(min=0)
    md = torch.gather(d, 1, mem_c)
    is_pos = mem_ok & (g.camids[mem_c] != qc[:, None])
    n = is_pos.sum(1)
    inf = torch.tensor(float("inf"), dtype=d.dtype, device=d.device)
    # true-match distances, ascending (padding: +inf, never read)
    pd = _sort_rows(torch.where(is_pos, md, inf))
    all_lt, all_le = _count_below(srt, pd)
    own = _sort_rows(torch.where(mem_ok, md, inf))
    own_lt, own_le = _count_below(own, pd)  # the query's own identity, kept or removed
    neg_lt, neg_le = all_lt - own_lt, all_le - own_le
    if g.junk.numel():
        junk = _sort_rows(d.index_select(1, g.junk))
        junk_lt, junk_le = _count_below(junk, pd)
        neg_lt, neg_le = neg_lt - junk_lt, neg_le - junk_le
    # neg_lt[i, j]: non-matches strictly closer than true match j of query i
    j = torch.arange(pd.shape[1], device=d.device)
    is_hit = j[None, :] < n[:, None]
    rank = neg_lt + j[None, :] + 1
    ap = torch.where(is_hit, (j[None, :] + 1).double() / rank.double(), 0.0).sum(1)
    ap = ap / n.clamp(min=1)
    first = rank[:, 0]
    last = torch.gather(rank, 1, (n - 1).clamp(min=0)[:, None])[:, 0]
    tie = is_hit & (neg_le > neg_lt)  # a non-match at exactly a true match's distance
    tie_rows = tie.any(1).nonzero()[:, 0]
    if tie_rows.numel():
        e_ap, e_first, e_last = _exact_rows(
            d[tie_rows], qp[tie_rows], qc[tie_rows], g.pids, g.camids
        )
        ap, first, last = ap.clone(), first.clone(), last.clone()
        ap[tie_rows], first[tie_rows], last[tie_rows] = e_ap, e_first, e_last
    return ap, first, last, n


def _pid_members(gp: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gallery columns of each identity in ``wanted`` that the gallery has: (sorted pids, member
    matrix padded with -1).  Only query identities are kept so that a large identity nobody asks
    about (the distractors, pid 0) does not inflate the padding."""
    sel = np.flatnonzero(np.isin(gp, wanted))
    order = sel[np.argsort(gp[sel], kind="stable")]
    pids, start, count = np.unique(gp[order], return_index=True, return_counts=True)
    m = int(count.max()) if count.size else 1
    members = np.full((max(len(pids), 1), m), -1, dtype=np.int64)  # >= 1 row: always indexable
    within = np.arange(len(order)) - np.repeat(start, count)
    members[np.repeat(np.arange(len(pids)), count), within] = order
    return pids, members


def evaluate(
    distmat: torch.Tensor | np.ndarray,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    *,
    device: str | torch.device | None = None,
    chunk_elements: int | None = None,
    threads: int | None = None,
) -> EvalResult:
    """Market-1501-protocol evaluation of a ``[n_query, n_gallery]`` distance matrix.

    Same contract as torchreid's ``evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids,
    max_rank)`` (see the module docstring for the protocol), plus per-query arrays and mINP.
    ``distmat`` may be a numpy array or a tensor; a CUDA tensor (or ``device="cuda"``) runs on
    the GPU, streaming ``chunk_elements``-sized row blocks so large matrices need not fit at once.
    ``cmc`` always has ``max_rank`` entries.  Raises `DataError` on mismatched shapes,
    non-finite distances, or when no query has a true match in the gallery.

    ``threads``: CPU threads for the work (default: `attrimp.threads.default_threads`, the CPUs
    this process may use, at most torch's setting, so ``OMP_NUM_THREADS`` caps it). They are
    *independent workers*, each taking whole blocks of query rows with torch held to one
    intra-op thread: a torch op spread over every core waits at its end for all of them, and
    on a busy machine the scheduler has given some of those cores away (measured at Market size
    on a loaded 2-core box: 3-5 s with two intra-op threads, 1.2-1.8 s with one). A worker
    that loses its core delays only its own block; the others keep taking blocks.
    """
    workers = default_threads() if threads is None else max(1, int(threads))
    with cpu_threads(1):
        return _evaluate(
            distmat, q_pids, g_pids, q_camids, g_camids, max_rank, device, chunk_elements, workers
        )


def _evaluate(
    distmat: torch.Tensor | np.ndarray,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int,
    device: str | torch.device | None,
    chunk_elements: int | None,
    workers: int = 1,
) -> EvalResult:
    """`evaluate` inside its thread setting: check the inputs, rank the blocks of query rows
    (in ``workers`` threads on the CPU), and average the per-query numbers."""
    if not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ConfigError(f"max_rank must be a positive integer; got {max_rank!r}.")
    dm = _as_distmat(distmat)
    qp, gp, qc, gc = _checked_ids(dm, q_pids, g_pids, q_camids, g_camids)
    dev = torch.device(device) if device is not None else dm.device
    if chunk_elements is None:
        chunk_elements = DEFAULT_CHUNK_ELEMENTS if dev.type == "cpu" else DEFAULT_CHUNK_ELEMENTS_GPU
    rows = max(1, int(chunk_elements) // max(1, dm.shape[1]))
    per_query = _rank_blocks(dm, qp, qc, gp, gc, dev, rows, workers)
    return _summarise(per_query, int(max_rank), num_junk=int((gp == JUNK_PID).sum()))


def _as_distmat(distmat: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The distance matrix as a 2-D float32/float64 tensor (numpy input shares its memory)."""
    if isinstance(distmat, torch.Tensor):
        dm = distmat.detach()
    else:
        a = np.asarray(distmat)
        if a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float64)
        dm = torch.from_numpy(a)
    if dm.ndim != 2:
        raise DataError(f"distmat must be a 2-D matrix; got shape {tuple(dm.shape)}.")
    if not dm.is_floating_point() or dm.dtype in (torch.float16, torch.bfloat16):
        dm = dm.float()
    return dm


def _checked_ids(
    dm: torch.Tensor, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Identities and cameras as int64 arrays whose lengths match ``dm``: (qp, gp, qc, gc)."""
    qp, gp = _as_ids(q_pids, "q_pids"), _as_ids(g_pids, "g_pids")
    qc, gc = _as_ids(q_camids, "q_camids"), _as_ids(g_camids, "g_camids")
    nq, ng = dm.shape
    if len(qp) != nq or len(qc) != nq or len(gp) != ng or len(gc) != ng:
        raise DataError(
            f"distmat is {nq} x {ng} but there are {len(qp)} query pids, {len(qc)} query "
            f"camids, {len(gp)} gallery pids and {len(gc)} gallery camids."
        )
    return qp, gp, qc, gc


def _on(a: np.ndarray, dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(a).to(dev)


def _gallery_index(
    qp: np.ndarray, gp: np.ndarray, gc: np.ndarray, dev: torch.device
) -> tuple[_Gallery, np.ndarray]:
    """The gallery on ``dev``, and each query's row in its member matrix (-1: the query's
    identity is junk or absent from the gallery)."""
    upids, members = _pid_members(gp, qp[qp != JUNK_PID])
    slots = np.full(len(qp), -1, dtype=np.int64)
    if len(upids):
        at = np.minimum(np.searchsorted(upids, qp), len(upids) - 1)
        found = (upids[at] == qp) & (qp != JUNK_PID)
        slots[found] = at[found]
    gallery = _Gallery(
        _on(gp, dev), _on(gc, dev), _on(members, dev), _on(np.flatnonzero(gp == JUNK_PID), dev)
    )
    return gallery, slots


@dataclass(frozen=True)
class _PerQuery:
    """Per-query results, filled block by block: AP, first- and hardest-hit rank, #matches."""

    ap: np.ndarray
    first: np.ndarray
    last: np.ndarray
    nhit: np.ndarray

    @classmethod
    def empty(cls, nq: int) -> _PerQuery:
        def zeros() -> np.ndarray:
            return np.zeros(nq, dtype=np.int64)

        return cls(np.full(nq, np.nan), zeros(), zeros(), zeros())


@dataclass(frozen=True)
class _BlockJob:
    """What a worker needs to rank one block of ``rows`` query rows starting at a given row;
    blocks write disjoint rows of ``out``.  ``buffers`` holds one reusable sort buffer per
    worker (None: no buffer)."""

    dm: torch.Tensor
    rows: int
    dev: torch.device
    qp: np.ndarray
    qc: np.ndarray
    slots: np.ndarray
    gallery: _Gallery
    buffers: queue.SimpleQueue[np.ndarray | None]
    out: _PerQuery

    def __call__(self, s: int) -> None:
        buffer = self.buffers.get()
        try:
            block = self.dm[s : s + self.rows].to(self.dev).contiguous()
            srt = _sort_rows(block, buffer)
            _check_finite(block, srt, s)
            sl = slice(s, s + block.shape[0])
            q = (_on(self.qp[sl], self.dev), _on(self.qc[sl], self.dev))
            res = _chunk_metrics(block, srt, *q, _on(self.slots[sl], self.dev), self.gallery)
            o = self.out
            o.ap[sl], o.first[sl], o.last[sl], o.nhit[sl] = (x.cpu().numpy() for x in res)
        finally:
            self.buffers.put(buffer)


def _check_finite(block: torch.Tensor, srt: torch.Tensor, start: int) -> None:
    """NaN sorts last and -inf first, so the two end columns of the sorted rows tell whether
    every distance of the block is finite."""
    if not bool(torch.isfinite(srt[:, 0]).all() & torch.isfinite(srt[:, -1]).all()):
        bad = int((~torch.isfinite(block)).sum())
        raise DataError(
            f"distmat has {bad} non-finite distance(s) (NaN or inf) in query rows "
            f"{start}..{start + block.shape[0] - 1}; check the features."
        )


def _rank_blocks(
    dm: torch.Tensor,
    qp: np.ndarray,
    qc: np.ndarray,
    gp: np.ndarray,
    gc: np.ndarray,
    dev: torch.device,
    rows: int,
    workers: int,
) -> _PerQuery:
    """Per-query metrics, ``rows`` query rows at a time; on the CPU the blocks are shared
    between ``workers`` threads (numpy's sort and torch's ops release the GIL), on a GPU one
    thread queues them all."""
    nq, ng = dm.shape
    gallery, slots = _gallery_index(qp, gp, gc, dev)
    out = _PerQuery.empty(nq)
    starts = list(range(0, nq if ng else 0, rows))
    if dev.type != "cpu":
        workers = 1
    workers = max(1, min(workers, len(starts)))
    buffers: queue.SimpleQueue[np.ndarray | None] = queue.SimpleQueue()
    dtype = np.float64 if dm.dtype == torch.float64 else np.float32
    for _ in range(workers):
        buffers.put(np.empty(min(rows, nq) * ng, dtype) if dev.type == "cpu" and ng else None)
    job = _BlockJob(dm, rows, dev, qp, qc, slots, gallery, buffers, out)
    if workers == 1:
        for s in starts:
            job(s)
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="attrimp-eval") as pool:
            for _ in pool.map(job, starts):  # re-raises the first block's error
                pass
    return out


def _summarise(r: _PerQuery, max_rank: int, *, num_junk: int) -> EvalResult:
    """mAP, mINP and the CMC curve over the queries that have a true match; raises when none
    has."""
    nq = len(r.ap)
    valid = r.nhit > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise DataError(
            f"None of the {nq} queries has a true match in the gallery (same identity, other "
            "camera); check that query and gallery come from the same split and use the same "
            "identity numbering."
        )
    ap = np.where(valid, r.ap, np.nan)
    first = np.where(valid, r.first, 0)
    inp = np.where(valid, r.nhit / np.maximum(r.last, 1), np.nan)
    hits = np.bincount(np.minimum(first[valid], max_rank + 1), minlength=max_rank + 2)
    cmc = np.cumsum(hits[1 : max_rank + 1]) / num_valid
    return EvalResult(
        mAP=float(np.mean(ap[valid])),
        cmc=cmc.astype(np.float64),
        mINP=float(np.mean(inp[valid])),
        ap=ap,
        inp=inp,
        first_hit=first,
        rank1=((first == 1) & valid).astype(np.int64),
        valid=valid,
        max_rank=max_rank,
        num_queries=int(nq),
        num_valid=num_valid,
        num_skipped=int(nq - num_valid),
        num_junk_gallery=num_junk,
    )

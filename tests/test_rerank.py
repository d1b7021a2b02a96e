"""k-reciprocal re-ranking against two references: the authors' released ``re_ranking`` (which
torchreid and fast-reid ship unchanged), transcribed below in plain numpy, and the paper's
equations in plain Python loops; plus a toy where neighbourhood structure must help."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from attrimp.errors import ConfigError, DataError
from attrimp.evaluate.metrics import evaluate
from attrimp.evaluate.rerank import k_reciprocal_rerank, rerank_features


def released_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3, *, ge=False):
    """Reference: ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)`` of the
    authors' released code (github.com/zhunzhong07/person-re-ranking,
    ``python-version/re_ranking_ranklist.py``; the same function is torchreid's
    ``torchreid/utils/rerank.py`` and fast-reid's ``fastreid/evaluation/rerank.py``),
    transcribed step by step in my own numpy: square the given distances and cast to float32;
    divide by each column's maximum and transpose; ``np.argsort`` whole rows; k-reciprocal sets
    from the first ``k+1`` of a row and of its members' rows; expand by each member's
    ``round(k1/2)`` set when ``|intersection| > 2/3 |set|`` (``>=`` when ``ge``, the paper's
    wording); ``np.unique`` of the expansion; weights ``exp(-d)`` normalised to sum 1; query
    expansion as the mean of the rows of the first ``k2`` (skipped when ``k2 == 1``); Jaccard
    as ``1 - m / (2 - m)`` with ``m`` the sum of minima, accumulated in float32 through an
    inverted index (column -> rows holding a non-zero) as the released code does (the form
    relies on the rows summing to 1); ``lambda`` mix; the query-gallery block. The benchmark
    ``benchmarks/bench_rerank.py`` times this function as the peers' algorithm.

    Returns the re-ranked distances and how many (sample, candidate) pairs had an overlap of
    exactly 2/3, the case where ``>`` and ``>=`` part."""
    nq = q_g_dist.shape[0]
    joint = np.block([[q_q_dist, q_g_dist], [q_g_dist.T, g_g_dist]])
    d = np.power(joint, 2).astype(np.float32)
    d = np.transpose(d / np.max(d, axis=0))
    n = d.shape[0]
    order = np.argsort(d).astype(np.int32)
    kh = int(np.around(k1 / 2.0))

    def reciprocal(i, k):
        forward = order[i, : k + 1]
        hits = np.where(order[forward, : k + 1] == i)[0]
        return forward[hits]

    v = np.zeros((n, n), np.float32)
    exact = 0
    for i in range(n):
        r = reciprocal(i, k1)
        expansion = r
        for c in r:
            rc = reciprocal(c, kh)
            common = len(np.intersect1d(rc, r))
            exact += 3 * common == 2 * len(rc)
            if (common >= 2.0 / 3 * len(rc)) if ge else (common > 2.0 / 3 * len(rc)):
                expansion = np.append(expansion, rc)
        expansion = np.unique(expansion)
        w = np.exp(-d[i, expansion])
        v[i, expansion] = w / np.sum(w)
    if k2 != 1:
        v = np.stack([np.mean(v[order[i, :k2]], axis=0) for i in range(n)]).astype(np.float32)
    holders = [np.where(v[:, j] != 0)[0] for j in range(n)]  # inverted index: column -> rows
    jaccard = np.zeros((nq, n), np.float32)
    for i in range(nq):
        m = np.zeros(n, np.float32)  # sum of minima, accumulated column by column
        for j in np.where(v[i] != 0)[0]:
            m[holders[j]] += np.minimum(v[i, j], v[holders[j], j])
        jaccard[i] = 1 - m / (2.0 - m)
    final = jaccard * (1 - lambda_value) + d[:nq] * lambda_value
    return final[:, nq:], exact


def loop_rerank(qg, qq, gg, k1, k2, lam, *, ge):
    """Zhong et al. 2017, equation by equation, with Python sets (conventions as documented in
    attrimp/evaluate/rerank.py: row-max scaling, N(p, k) = k+1 nearest incl. p; Eq. 6 with
    ``>= 2/3`` when ``ge`` (the paper), else ``> 2/3`` (the released code))."""
    nq, ng = qg.shape
    d = np.block([[qq, qg], [qg.T, gg]]).astype(np.float64)
    n = nq + ng
    d = d / d.max(axis=1, keepdims=True)
    order = [list(np.argsort(d[i], kind="stable")) for i in range(n)]

    def nbrs(i, k):  # N(i, k)
        return set(order[i][: k + 1])

    def recip(i, k):  # R(i, k), Eq. 4
        return {j for j in nbrs(i, k) if i in nbrs(j, k)}

    kh = int(round(k1 / 2))
    v = np.zeros((n, n))
    for i in range(n):
        r = recip(i, k1)
        r_star = set(r)
        for c in r:  # Eq. 6
            rc = recip(c, kh)
            common = len(r & rc)
            if common >= 2.0 / 3.0 * len(rc) if ge else common > 2.0 / 3.0 * len(rc):
                r_star |= rc
        for j in r_star:  # Eq. 7
            v[i, j] = math.exp(-d[i, j])
        v[i] /= v[i].sum()
    vqe = np.zeros_like(v)
    for i in range(n):  # Eq. 11
        vqe[i] = np.mean([v[j] for j in order[i][:k2]], axis=0)
    out = np.zeros((nq, ng))
    for i in range(nq):
        for g in range(ng):
            a, b = vqe[i], vqe[nq + g]
            jac = 1.0 - np.minimum(a, b).sum() / np.maximum(a, b).sum()  # Eq. 10
            out[i, g] = (1 - lam) * jac + lam * d[i, nq + g]  # Eq. 12
    return out


def blocks(qf, gf):
    return cdist(qf, gf), cdist(qf, qf), cdist(gf, gf)


def identities(seed, nq=60, ng=340, n_ids=40, dim=16):
    """Features around identity centres (so re-ranking has neighbourhoods to use), with pids
    and cameras for the Market protocol."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    qp, gp = rng.integers(0, n_ids, nq), rng.integers(0, n_ids, ng)
    qf = centres[qp] + 0.6 * rng.normal(size=(nq, dim))
    gf = centres[gp] + 0.6 * rng.normal(size=(ng, dim))
    qc, gc = rng.integers(0, 3, nq), rng.integers(3, 6, ng)
    return qf, gf, (qp, gp, qc, gc)


@pytest.mark.parametrize("seed", [0, 1])
def test_default_equals_released_code(seed):
    """The default rule is the released code's: same squared-Euclidean distances (the reference
    squares the Euclidean ones it is given, attrimp takes the squares as they are), k1 = 20,
    k2 = 6, lambda = 0.3 -> the same distances to float32 rounding and the same metrics. The
    data hold exact-2/3 overlaps, so the paper's >= (the old default) fails this test."""
    qf, gf, ids = identities(seed)
    eu = blocks(qf, gf)
    ref, exact = released_re_ranking(*eu)
    assert exact > 0  # the two rules part on this data
    sq = [np.power(b, 2).astype(np.float32) for b in eu]
    got = k_reciprocal_rerank(*sq, k1=20, k2=6, lambda_value=0.3)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, atol=2e-6, rtol=0)
    mine, theirs = evaluate(got, *ids), evaluate(ref, *ids)
    assert mine.mAP == pytest.approx(theirs.mAP, abs=1e-12)
    np.testing.assert_allclose(mine.cmc, theirs.cmc, atol=1e-12)
    # the feature entry point: "sqeuclidean" is the peers' re-ranking of Euclidean distances
    via_features = rerank_features(
        qf.astype(np.float32), gf.astype(np.float32), metric="sqeuclidean"
    )
    np.testing.assert_allclose(via_features.numpy(), ref, atol=1e-4, rtol=0)


def test_paper_rule_is_the_option_and_differs_at_exactly_two_thirds():
    """``overlap="paper"`` keeps a candidate whose overlap is exactly 2/3: it equals the
    reference run with ``>=`` and differs from the released rule on data with such overlaps."""
    qf, gf, ids = identities(2)
    eu = blocks(qf, gf)
    released, exact = released_re_ranking(*eu)
    paper_ref, _ = released_re_ranking(*eu, ge=True)
    assert exact > 0
    sq = [np.power(b, 2).astype(np.float32) for b in eu]
    paper = k_reciprocal_rerank(*sq, overlap="paper").numpy()
    np.testing.assert_allclose(paper, paper_ref, atol=2e-6, rtol=0)
    assert np.abs(paper - released).max() > 1e-3
    default = k_reciprocal_rerank(*sq).numpy()
    assert np.abs(default - released).max() < 2e-6


def test_two_of_three_is_kept_only_by_the_paper_rule():
    """A hand-made case, k1 = 4 (so k1/2 = 2), points on a line, samples 0-1 the queries:

    x:  6.4  2.7  0.4  0.2  8.1  9.1  6.1   (samples 0 .. 6)

    Query 1's k-reciprocal set R(1, 4) = {0, 1, 2, 3, 6}; its member 0 has R(0, 2) = {0, 4, 6},
    which shares {0, 6} with it: exactly 2 of 3. The paper's >= adds sample 4 (x = 8.1) to
    R*(1), the released > does not, and that moves query 1's distances by ~5e-2."""
    x = np.array([6.4, 2.7, 0.4, 0.2, 8.1, 9.1, 6.1])[:, None]
    d = cdist(x, x)
    eu = (d[:2, 2:], d[:2, :2], d[2:, 2:])
    ref, exact = released_re_ranking(*eu, k1=4, k2=1)
    ref_ge, _ = released_re_ranking(*eu, k1=4, k2=1, ge=True)
    assert exact == 1 and np.abs(ref - ref_ge).max() > 1e-2
    sq = [b**2 for b in eu]
    got = k_reciprocal_rerank(*sq, k1=4, k2=1).numpy()
    got_paper = k_reciprocal_rerank(*sq, k1=4, k2=1, overlap="paper").numpy()
    np.testing.assert_allclose(got, ref, atol=1e-6)
    np.testing.assert_allclose(got_paper, ref_ge, atol=1e-6)
    assert np.abs(got[1] - got_paper[1]).max() > 1e-2  # query 1 is the one that moves
    np.testing.assert_allclose(got[0], got_paper[0], atol=1e-12)


@pytest.mark.parametrize(
    ("k1", "k2", "lam", "seed"), [(20, 6, 0.3, 0), (5, 3, 0.3, 1), (7, 1, 0.0, 2), (3, 2, 1.0, 3)]
)
@pytest.mark.parametrize("overlap", ["released", "paper"])
def test_matches_loop_over_paper_equations(k1, k2, lam, seed, overlap):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 5)) * 2
    qf = centres[rng.integers(0, 6, 7)] + rng.normal(size=(7, 5))
    gf = centres[rng.integers(0, 6, 30)] + rng.normal(size=(30, 5))
    qg, qq, gg = blocks(qf, gf)
    got = k_reciprocal_rerank(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam, overlap=overlap)
    assert got.shape == (7, 30) and got.dtype == torch.float64
    ref = loop_rerank(qg, qq, gg, k1, k2, lam, ge=overlap == "paper")
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-10)


def test_float32_and_feature_entry_point():
    rng = np.random.default_rng(4)
    qf = rng.normal(size=(5, 4)).astype(np.float32)
    gf = rng.normal(size=(25, 4)).astype(np.float32)
    got = rerank_features(torch.from_numpy(qf), torch.from_numpy(gf), k1=6, k2=3)
    ref = loop_rerank(*blocks(qf.astype(np.float64), gf.astype(np.float64)), 6, 3, 0.3, ge=False)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-5)


def test_workers_split_rows_without_changing_the_result():
    """Blocks of rows in two workers (the busy-machine treatment) give the one-worker answer."""
    qf, gf, _ = identities(3, nq=40, ng=200)
    sq = [np.power(b, 2) for b in blocks(qf, gf)]
    one = k_reciprocal_rerank(*sq, threads=1).numpy()
    two = k_reciprocal_rerank(*sq, threads=2).numpy()
    np.testing.assert_allclose(two, one, atol=1e-12, rtol=0)
    assert torch.get_num_threads() >= 1  # the thread setting is restored (no error raised)


def test_gpu_path_sums_equal_the_cpu_path():
    """The Jaccard sums have two forms: sparse through an inverted index (CPU) and dense over
    each query's support (GPU). Run both on the CPU on a real ``V`` and against numpy."""
    from attrimp.evaluate import rerank as rr

    qf, gf, _ = identities(5, nq=30, ng=150)
    dist = rr._joint_distances(
        *[torch.as_tensor(b**2) for b in blocks(qf, gf)], rr._Blocks(torch.device("cpu"), 2)
    )
    nn = rr._nearest(dist, 21, rr._Blocks(torch.device("cpu"), 1))
    v = rr._k_reciprocal_weights(dist, nn, 20, 10, False, rr._Blocks(torch.device("cpu"), 1))
    v = rr._expand_queries(v, nn, 6, rr._Blocks(torch.device("cpu"), 1)).numpy()
    want = np.minimum(v[:30, None, :], v[None, 30:, :]).sum(2)
    for workers in (1, 2):
        b = rr._Blocks(torch.device("cpu"), workers)
        sparse = rr._sparse_min_sums(torch.from_numpy(v), 30, b).numpy()
        dense = rr._dense_min_sums(torch.from_numpy(v), 30, b).numpy()
        np.testing.assert_allclose(sparse, want, atol=1e-12, rtol=0)
        np.testing.assert_allclose(dense, want, atol=1e-12, rtol=0)


def test_improves_map_when_neighbours_carry_identity():
    """Each identity is a long thin chain of images (a person walking away from the camera:
    appearance drifts smoothly).  A query at one end is closer to other identities' chains than
    to its own far end, but the chain's k-reciprocal neighbourhoods connect it."""
    rng = np.random.default_rng(0)
    n_ids, per_id, dim = 8, 12, 6
    q, g, qp, gp = [], [], [], []
    for pid in range(n_ids):
        start = rng.normal(size=dim) * 2.0
        direction = rng.normal(size=dim)
        direction /= np.linalg.norm(direction)
        chain = start + np.outer(np.arange(per_id + 1) * 0.7, direction)
        chain += rng.normal(size=chain.shape) * 0.12
        q.append(chain[0])
        g.extend(chain[1:])
        qp.append(pid)
        gp.extend([pid] * per_id)
    qf, gf = np.array(q), np.array(g)
    qp, gp = np.array(qp), np.array(gp)
    qc, gc = np.zeros(len(qp), int), np.ones(len(gp), int)
    base = evaluate(cdist(qf, gf), qp, gp, qc, gc, max_rank=10)
    rr = evaluate(rerank_features(qf, gf, k1=6, k2=3), qp, gp, qc, gc, max_rank=10)
    assert rr.mAP > base.mAP + 0.1, (base.mAP, rr.mAP)


def test_bad_parameters_are_clear():
    qg, qq, gg = blocks(np.zeros((2, 3)) + [[0, 0, 1], [1, 0, 0]], np.eye(3))
    with pytest.raises(ConfigError, match="k1=20"):
        k_reciprocal_rerank(qg, qq, gg)
    with pytest.raises(ConfigError, match="lambda_value"):
        k_reciprocal_rerank(qg, qq, gg, k1=2, k2=1, lambda_value=1.5)
    with pytest.raises(ConfigError, match="overlap must be 'released'"):
        k_reciprocal_rerank(qg, qq, gg, k1=2, k2=1, overlap=">=")
    with pytest.raises(DataError, match="query-query 2 x 2"):
        k_reciprocal_rerank(qg, gg, gg, k1=2, k2=1)
    with pytest.raises(DataError, match="NaN"):
        k_reciprocal_rerank(qg * np.nan, qq, gg, k1=2, k2=1)

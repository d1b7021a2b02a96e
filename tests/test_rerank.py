"""k-reciprocal re-ranking: the vectorised version against the paper's equations in plain loops,
and a toy where neighbourhood structure must help."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from attrimp.errors import ConfigError, DataError
from attrimp.evaluate.metrics import evaluate
from attrimp.evaluate.rerank import k_reciprocal_rerank, rerank_features


def loop_rerank(qg, qq, gg, k1, k2, lam):
    """Zhong et al. 2017, equation by equation, with Python sets (conventions as documented in
    attrimp/evaluate/rerank.py: row-max scaling, N(p, k) = k+1 nearest incl. p, paper's >= 2/3)."""
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
            if len(r & rc) >= 2.0 / 3.0 * len(rc):
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


@pytest.mark.parametrize(
    ("k1", "k2", "lam", "seed"), [(20, 6, 0.3, 0), (5, 3, 0.3, 1), (7, 1, 0.0, 2), (3, 2, 1.0, 3)]
)
def test_matches_loop_over_paper_equations(k1, k2, lam, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 5)) * 2
    qf = centres[rng.integers(0, 6, 7)] + rng.normal(size=(7, 5))
    gf = centres[rng.integers(0, 6, 30)] + rng.normal(size=(30, 5))
    qg, qq, gg = blocks(qf, gf)
    got = k_reciprocal_rerank(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam)
    assert got.shape == (7, 30) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), loop_rerank(qg, qq, gg, k1, k2, lam), atol=1e-10)


def test_float32_and_feature_entry_point():
    rng = np.random.default_rng(4)
    qf = rng.normal(size=(5, 4)).astype(np.float32)
    gf = rng.normal(size=(25, 4)).astype(np.float32)
    got = rerank_features(torch.from_numpy(qf), torch.from_numpy(gf), k1=6, k2=3)
    ref = loop_rerank(*blocks(qf.astype(np.float64), gf.astype(np.float64)), 6, 3, 0.3)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-5)


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
    with pytest.raises(DataError, match="query-query 2 x 2"):
        k_reciprocal_rerank(qg, gg, gg, k1=2, k2=1)

"""`attrimp.evaluate.metrics`: agreement with the community protocol (torchreid's ``evaluate_rank``).

torchreid itself cannot be a test dependency (its PyPI sdist ships neither the Cython source nor
a usable package for this Python), so `reference_eval` below re-derives its protocol step by
step, one query at a time, in the plainest numpy possible; `attrimp.evaluate.metrics.evaluate` is a
completely different (sort-by-value + binary-search) algorithm, so agreement is meaningful.
The hand-worked fixture pins the numbers independently of both.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

from attrimp.errors import ConfigError, DataError
from attrimp.evaluate.metrics import EvalResult, evaluate, pairwise_distance

# --------------------------------------------------------------------------------------------
# An independent, loop-based reference following torchreid's eval_market1501 protocol.


def reference_eval(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """torchreid's Market-1501 protocol, written out literally.

    1. junk gallery images (pid -1) are not part of the gallery (torchreid drops them when it
       reads the dataset);
    2. per query: rank the gallery by distance (stable argsort: ties keep gallery order);
    3. drop gallery entries with the query's pid AND camid;
    4. matches = gallery pid == query pid; no match at all -> the query is skipped;
    5. CMC_q(k) = 1 if a match is within the top k (for k beyond the filtered gallery the
       query's curve stays at 1, which is what a CMC means; torchreid's Python code goes ragged);
    6. AP = sum over match positions i of (matches up to i / (i+1)), divided by #matches;
    7. INP (AGW) = #matches / (1-based position of the last match).
    """
    distmat = np.asarray(distmat, dtype=np.float64)
    keep_g = np.asarray(g_pids) != -1
    distmat = distmat[:, keep_g]
    g_pids = np.asarray(g_pids)[keep_g]
    g_camids = np.asarray(g_camids)[keep_g]
    all_cmc, all_ap, all_inp = [], [], []
    per_q = []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        raw = (g_pids[order][keep] == q_pids[i]).astype(int)
        if q_pids[i] == -1 or raw.sum() == 0:
            per_q.append(None)
            continue
        cum = np.cumsum(raw)
        cmc = np.minimum(cum, 1)
        cmc = np.concatenate([cmc, np.ones(max(0, max_rank - len(cmc)), dtype=int)])[:max_rank]
        ap = sum(cum[k] / (k + 1.0) for k in range(len(raw)) if raw[k]) / raw.sum()
        last = max(k for k in range(len(raw)) if raw[k]) + 1
        inp = raw.sum() / last
        first = min(k for k in range(len(raw)) if raw[k]) + 1
        all_cmc.append(cmc)
        all_ap.append(ap)
        all_inp.append(inp)
        per_q.append((ap, inp, first))
    if not all_ap:
        return None, None, None, per_q
    cmc = np.mean(np.asarray(all_cmc, dtype=np.float64), axis=0)
    return cmc, float(np.mean(all_ap)), float(np.mean(all_inp)), per_q


def check_against_reference(res: EvalResult, distmat, qp, gp, qc, gc, max_rank):
    cmc, m_ap, m_inp, per_q = reference_eval(distmat, qp, gp, qc, gc, max_rank)
    assert res.mAP == pytest.approx(m_ap, abs=1e-6)
    assert res.mINP == pytest.approx(m_inp, abs=1e-6)
    assert res.cmc.shape == (max_rank,)
    np.testing.assert_allclose(res.cmc, cmc, atol=1e-6)
    for i, ref in enumerate(per_q):
        if ref is None:
            assert not res.valid[i] and np.isnan(res.ap[i]) and res.first_hit[i] == 0
        else:
            assert res.valid[i]
            assert res.ap[i] == pytest.approx(ref[0], abs=1e-9)
            assert res.inp[i] == pytest.approx(ref[1], abs=1e-9)
            assert res.first_hit[i] == ref[2]
            assert res.rank1[i] == int(ref[2] == 1)
    assert res.num_skipped == sum(r is None for r in per_q)


def market_like(rng, nq=40, ng=300, n_ids=25, n_cams=6, junk=10, distractors=20, ties=False):
    """A small gallery with the Market structure: identities seen by several cameras, junk (-1)
    and distractors (0), some query identities missing from the gallery."""
    g_pids = rng.integers(1, n_ids + 1, ng)
    g_pids[:junk] = -1
    g_pids[junk : junk + distractors] = 0
    g_cams = rng.integers(0, n_cams, ng)
    q_pids = rng.integers(1, n_ids + 4, nq)  # ids > n_ids are absent from the gallery
    q_cams = rng.integers(0, n_cams, nq)
    perm = rng.permutation(ng)
    g_pids, g_cams = g_pids[perm], g_cams[perm]
    if ties:  # few distinct values: plenty of ties, including between matches and non-matches
        dist = rng.integers(0, 6, (nq, ng)).astype(np.float64)
    else:
        dist = rng.random((nq, ng)) + 0.6 * (q_pids[:, None] != g_pids[None, :])
    return dist, q_pids, g_pids, q_cams, g_cams


# --------------------------------------------------------------------------------------------
# Hand-derived fixture.
#
# gallery  index:  0      1      2      3      4            5
#          pid:    1      1      2      2      0 (distr.)   -1 (junk)
#          cam:    0      1      0      1      2            1
#
# q0 pid 1 cam 0, d = [.1 .5 .3 .9 .2 .05]: g0 removed (same id+cam), g5 junk ignored;
#    ranking g4(.2) g2(.3) g1(.5)* g3(.9) -> hit at rank 3:  AP = 1/3, INP = 1/3, first = 3
# q1 pid 2 cam 2, d = [.4 .8 .2 .85 .1 0]: nothing removed, junk ignored;
#    ranking g4 g2* g0 g1 g3* -> hits at 2 and 5:  AP = (1/2 + 2/5)/2 = .45, INP = 2/5, first 2
# q2 pid 2 cam 0, d = [.6 .4 .1 .4 .9 .2]: g2 removed, g5 junk; g1 and g3 tie at .4 and the
#    stable order puts g1 (a non-match) first: g1 g3* g0 g4 -> AP = 1/2, INP = 1/2, first = 2
# q3 pid 3 cam 1: identity 3 is not in the gallery -> skipped.
# mAP  = (1/3 + .45 + .5)/3 = 0.427777...,  mINP = (1/3 + .4 + .5)/3 = 0.411111...
# CMC over the 3 valid queries (first hits 3, 2, 2): [0, 2/3, 1, 1, ...] up to max_rank=10,
# beyond every filtered gallery (4-5 entries): the curve stays at 1.

HAND_D = np.array(
    [
        [0.1, 0.5, 0.3, 0.9, 0.2, 0.05],
        [0.4, 0.8, 0.2, 0.85, 0.1, 0.0],
        [0.6, 0.4, 0.1, 0.4, 0.9, 0.2],
        [0.3, 0.2, 0.1, 0.4, 0.5, 0.6],
    ]
)
HAND_QP = np.array([1, 2, 2, 3])
HAND_QC = np.array([0, 2, 0, 1])
HAND_GP = np.array([1, 1, 2, 2, 0, -1])
HAND_GC = np.array([0, 1, 0, 1, 2, 1])


def test_hand_worked_fixture():
    r = evaluate(HAND_D, HAND_QP, HAND_GP, HAND_QC, HAND_GC, max_rank=10)
    np.testing.assert_allclose(r.ap[:3], [1 / 3, 0.45, 0.5])
    np.testing.assert_allclose(r.inp[:3], [1 / 3, 0.4, 0.5])
    assert np.isnan(r.ap[3]) and np.isnan(r.inp[3])
    assert r.first_hit.tolist() == [3, 2, 2, 0]
    assert r.rank1.tolist() == [0, 0, 0, 0]
    assert r.valid.tolist() == [True, True, True, False]
    assert r.mAP == pytest.approx(1.2833333333333333 / 3)
    assert r.mINP == pytest.approx(1.2333333333333333 / 3)
    np.testing.assert_allclose(r.cmc, [0, 2 / 3] + [1] * 8)
    assert (r.num_valid, r.num_skipped, r.num_junk_gallery) == (3, 1, 1)
    assert r.rank(1) == 0 and r.rank(2) == pytest.approx(2 / 3)
    check_against_reference(r, HAND_D, HAND_QP, HAND_GP, HAND_QC, HAND_GC, 10)


def test_result_is_mapping_and_attributes():
    r = evaluate(HAND_D, HAND_QP, HAND_GP, HAND_QC, HAND_GC, max_rank=5)
    assert r["mAP"] == r.mAP and r["cmc"] is r.cmc
    assert {"mAP", "cmc", "mINP", "ap", "inp", "first_hit", "rank1", "valid"} <= set(r)
    assert dict(r)["num_valid"] == 3
    with pytest.raises(KeyError):
        r["nope"]
    s = r.summary()
    assert s["rank1"] == 0 and s["rank5"] == 1.0 and s["mAP"] == r.mAP


def test_tie_order_is_stable():
    """A match and a non-match at the same distance: gallery order decides."""
    d = np.array([[0.5, 0.5]])
    match_second = evaluate(d, [1], [2, 1], [0], [1, 1], max_rank=2)
    match_first = evaluate(d, [1], [1, 2], [0], [1, 1], max_rank=2)
    assert match_second.ap[0] == 0.5 and match_second.first_hit[0] == 2
    assert match_first.ap[0] == 1.0 and match_first.first_hit[0] == 1


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_reference_protocol(seed, ties):
    rng = np.random.default_rng(seed)
    d, qp, gp, qc, gc = market_like(rng, ties=ties)
    r = evaluate(d, qp, gp, qc, gc, max_rank=20)
    assert r.num_skipped > 0 and r.num_junk_gallery == 10  # the fixture exercises both
    check_against_reference(r, d, qp, gp, qc, gc, 20)


def test_chunking_and_inputs_do_not_change_results():
    rng = np.random.default_rng(3)
    d, qp, gp, qc, gc = market_like(rng, ties=True)
    base = evaluate(d, qp, gp, qc, gc)
    small = evaluate(d, qp, gp, qc, gc, chunk_elements=1)  # one query row at a time
    tens = evaluate(torch.from_numpy(d), torch.from_numpy(qp), gp.tolist(), qc, gc, device="cpu")
    f32 = evaluate(d.astype(np.float32), qp, gp, qc, gc)  # integer distances: exact in float32
    for other in (small, tens, f32):
        np.testing.assert_array_equal(other.ap, base.ap)
        np.testing.assert_array_equal(other.cmc, base.cmc)
        np.testing.assert_array_equal(other.first_hit, base.first_hit)


def test_torch_sort_path_used_on_gpus_agrees(monkeypatch):
    """On a GPU the sorts are torch's, not numpy's: run that code path here on the CPU."""
    import attrimp.evaluate.metrics

    monkeypatch.setattr(attrimp.evaluate.metrics, "_NUMPY_SORT_ON_CPU", False)
    rng = np.random.default_rng(6)
    for ties in (False, True):
        d, qp, gp, qc, gc = market_like(rng, ties=ties)
        r = evaluate(torch.from_numpy(d).float(), qp, gp, qc, gc, max_rank=20)
        check_against_reference(r, d.astype(np.float32), qp, gp, qc, gc, 20)


def test_short_gallery_cmc_is_padded_not_ragged():
    """Gallery of 3 (after filtering: 2 or 3 entries per query) with max_rank 50."""
    d = np.array([[0.3, 0.1, 0.2], [0.1, 0.2, 0.3]])
    r = evaluate(d, [1, 2], [1, 2, 1], [0, 0], [0, 1, 1], max_rank=50)
    # q0: g0 removed; ranking g1(0.1) g2*(0.2) -> first hit 2.  q1: g0 g1* g2 -> first hit 2.
    assert r.cmc.shape == (50,)
    assert r.cmc[0] == 0 and np.all(r.cmc[1:] == 1)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    nq=st.integers(1, 6),
    ng=st.integers(1, 12),
    levels=st.integers(1, 4),
)
def test_random_small_cases_match_reference(seed, nq, ng, levels):
    rng = np.random.default_rng(seed)
    qp = rng.integers(-1, 3, nq)
    gp = rng.integers(-1, 3, ng)
    qc = rng.integers(0, 2, nq)
    gc = rng.integers(0, 2, ng)
    d = rng.integers(0, levels, (nq, ng)).astype(np.float64)  # dense ties
    ref = reference_eval(d, qp, gp, qc, gc, 7)
    if ref[1] is None:  # no valid query
        with pytest.raises(DataError, match="None of the"):
            evaluate(d, qp, gp, qc, gc, max_rank=7)
        return
    r = evaluate(d, qp, gp, qc, gc, max_rank=7)
    check_against_reference(r, d, qp, gp, qc, gc, 7)


def test_bad_input_is_one_clear_error():
    with pytest.raises(DataError, match="distmat is 4 x 6 but there are 3 query pids"):
        evaluate(HAND_D, HAND_QP[:3], HAND_GP, HAND_QC, HAND_GC)
    bad = HAND_D.copy()
    bad[1, 2] = np.nan
    with pytest.raises(DataError, match="1 non-finite"):
        evaluate(bad, HAND_QP, HAND_GP, HAND_QC, HAND_GC)
    with pytest.raises(DataError, match="None of the 1 queries"):
        evaluate(HAND_D[3:], HAND_QP[3:], HAND_GP, HAND_QC[3:], HAND_GC)
    with pytest.raises(ConfigError, match="max_rank"):
        evaluate(HAND_D, HAND_QP, HAND_GP, HAND_QC, HAND_GC, max_rank=0)
    with pytest.raises(DataError, match="2-D"):
        evaluate(HAND_D[0], HAND_QP, HAND_GP, HAND_QC, HAND_GC)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_pairwise_distance_matches_scipy(metric):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(13, 8)).astype(np.float32)
    g = rng.normal(size=(29, 8)).astype(np.float32)
    got = pairwise_distance(torch.from_numpy(q), g, metric, chunk=4)
    assert got.dtype == torch.float32 and got.shape == (13, 29)
    np.testing.assert_allclose(got.numpy(), cdist(q, g, metric), atol=2e-5)


def test_pairwise_distance_rejects_bad_input():
    with pytest.raises(ConfigError, match="Unknown distance metric 'manhattan'"):
        pairwise_distance(np.zeros((2, 3)), np.zeros((2, 3)), "manhattan")
    with pytest.raises(DataError, match="same width"):
        pairwise_distance(np.zeros((2, 3)), np.zeros((2, 4)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_matches_cpu():
    rng = np.random.default_rng(5)
    d, qp, gp, qc, gc = market_like(rng, ties=True)
    cpu = evaluate(d, qp, gp, qc, gc)
    gpu = evaluate(torch.from_numpy(d).cuda(), qp, gp, qc, gc)
    np.testing.assert_array_equal(gpu.first_hit, cpu.first_hit)
    np.testing.assert_array_equal(gpu.valid, cpu.valid)
    # same ranks; AP sums may round differently on the GPU: the contract is 1e-6
    np.testing.assert_allclose(gpu.ap, cpu.ap, rtol=0, atol=1e-6)
    np.testing.assert_allclose(gpu.inp, cpu.inp, rtol=0, atol=1e-6)
    streamed = evaluate(d, qp, gp, qc, gc, device="cuda", chunk_elements=1000)
    np.testing.assert_allclose(streamed.ap, cpu.ap, rtol=0, atol=1e-6)

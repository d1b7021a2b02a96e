"""`attrimp.threads`: deliberate CPU thread counts that never leak out of a library call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import attrimp.evaluate.metrics as metrics
from attrimp.errors import DataError
from attrimp.threads import SMALL_WORK, available_cpus, cpu_threads, default_threads, threads_for

REPO = Path(__file__).resolve().parents[1]


def test_cpu_threads_sets_and_restores_even_on_error():
    before = torch.get_num_threads()
    with cpu_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), cpu_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no affinity API here")
def test_available_cpus_follow_the_affinity_mask_not_the_core_count():
    """Pinned to one CPU (as taskset, a cpuset or Slurm would), the process gets one thread for
    large work even though torch's own default counts every core of the machine."""
    code = (
        "import os, torch\n"
        "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
        "torch.set_num_threads(4)\n"
        "from attrimp.threads import available_cpus, default_threads\n"
        "print(available_cpus(), default_threads())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]
    assert available_cpus() == len(os.sched_getaffinity(0))


def test_default_threads_never_exceed_the_users_setting():
    with cpu_threads(1):
        assert default_threads() == 1  # OMP_NUM_THREADS=1 or torch.set_num_threads(1) wins
    assert threads_for(SMALL_WORK - 1) == 1
    assert threads_for(SMALL_WORK) == default_threads()


def _problem(seed=0, nq=40, ng=300):
    rng = np.random.default_rng(seed)
    qp, gp = rng.integers(0, 12, nq), rng.integers(0, 12, ng)
    qc, gc = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    return rng.random((nq, ng)).astype(np.float32), qp, gp, qc, gc


def test_evaluate_uses_independent_single_threaded_workers_and_restores(monkeypatch):
    """Each worker runs torch on one intra-op thread (no barrier shared between cores); the
    number of workers follows the available CPUs, capped by the user's setting."""
    seen = []
    inner = metrics._evaluate

    def spy(*args, **kwargs):
        seen.append((torch.get_num_threads(), args[-1]))
        return inner(*args, **kwargs)

    monkeypatch.setattr(metrics, "_evaluate", spy)
    d, qp, gp, qc, gc = _problem()
    with cpu_threads(2):  # a process set to 2 threads (as torch's default on 2 cores)
        metrics.evaluate(d, qp, gp, qc, gc, max_rank=10)
        assert torch.get_num_threads() == 2  # restored
        metrics.evaluate(d, qp, gp, qc, gc, max_rank=10, threads=3)
    with cpu_threads(1):  # OMP_NUM_THREADS=1: one worker
        metrics.evaluate(d, qp, gp, qc, gc, max_rank=10)
    assert seen == [(1, min(2, available_cpus())), (1, 3), (1, 1)]


def test_parallel_blocks_give_the_sequential_numbers_and_the_first_error():
    d, qp, gp, qc, gc = _problem(seed=3, nq=97, ng=211)
    small = 211 * 5  # 5 query rows per block: 20 blocks
    one = metrics.evaluate(d, qp, gp, qc, gc, max_rank=10, chunk_elements=small, threads=1)
    three = metrics.evaluate(d, qp, gp, qc, gc, max_rank=10, chunk_elements=small, threads=3)
    for key in ("ap", "inp", "first_hit", "valid", "cmc"):
        np.testing.assert_array_equal(one[key], three[key], err_msg=key)
    assert one.mAP == three.mAP and one.mINP == three.mINP
    bad = d.copy()
    bad[61, 7] = np.nan  # in block 12 of 20
    with pytest.raises(DataError, match=r"query rows 60\.\.64"):
        metrics.evaluate(bad, qp, gp, qc, gc, chunk_elements=small, threads=3)

"""`attrimp.threads`: deliberate CPU thread counts that never leak out of a library call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import attrimp.metrics as metrics
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


def test_evaluate_runs_single_threaded_by_default_and_restores(monkeypatch):
    seen = []
    inner = metrics._evaluate

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return inner(*args, **kwargs)

    monkeypatch.setattr(metrics, "_evaluate", spy)
    d, qp, gp, qc, gc = _problem()
    with cpu_threads(2):  # a process set to 2 threads (as torch's default on 2 cores)
        one = metrics.evaluate(d, qp, gp, qc, gc, max_rank=10)
        assert torch.get_num_threads() == 2  # restored
        two = metrics.evaluate(d, qp, gp, qc, gc, max_rank=10, threads=2)
    assert seen == [1, 2]
    np.testing.assert_array_equal(one.ap, two.ap)
    np.testing.assert_array_equal(one.cmc, two.cmc)

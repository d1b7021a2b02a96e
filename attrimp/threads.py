"""CPU threads, chosen deliberately on the paths that matter (evaluation, the condition sweep).

torch runs each CPU op on a pool of intra-op threads (by default one per core) and every op
ends at a barrier that waits for all of them. On a machine that is busy with other work (a
shared cluster node, a laptop, CI) the scheduler hands some of those threads' cores away, and
every op waits for the slowest one: measured on a 2-core box with other work running,
`attrimp.evaluate.metrics.evaluate` took 3-5 s with 2 threads and 1.2-1.8 s with 1.

So the choice is explicit:

* small or memory-bound ops run on ONE intra-op thread, with `cpu_threads(1)`. The ranking
  metrics go further: `attrimp.evaluate.metrics.evaluate` gives blocks of query rows to independent
  workers (one per available CPU), each single-threaded, so a worker whose core is taken
  delays only its own block instead of every op waiting at a barrier for every core;
* large matrix products (the sweep's expert blocks, the distance matrix) run on
  `default_threads()`: the CPUs this process may actually use (``os.sched_getaffinity``, which
  honours ``taskset``, cgroups' cpusets and Slurm's binding, unlike ``os.cpu_count``), capped
  by torch's own setting, which follows ``OMP_NUM_THREADS``. On a shared machine, set
  ``OMP_NUM_THREADS`` to your share of the cores (docs/evaluation.md).

`cpu_threads` sets the count for the duration of a block and restores the previous one: a
library call never leaves the process's setting changed. torch's setting is process-wide, so
two Python threads that evaluate at the same time share it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["SMALL_WORK", "available_cpus", "cpu_threads", "default_threads", "threads_for"]

#: multiply-adds below which one op runs on one thread: ~1-2 ms of one core. A thread the
#: scheduler has given away costs a time slice (milliseconds) at the op's barrier, so under
#: this size a second thread risks more than it can save.
SMALL_WORK = 1 << 24


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), not the machine's core count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows: no affinity API
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """Threads for large CPU work: the available CPUs, at most torch's current setting (which
    ``OMP_NUM_THREADS`` or a user's ``torch.set_num_threads`` lowered)."""
    return max(1, min(torch.get_num_threads(), available_cpus()))


def threads_for(work: float) -> int:
    """Threads for ops of ``work`` multiply-adds each: 1 below `SMALL_WORK`, else
    `default_threads`."""
    return 1 if work < SMALL_WORK else default_threads()


@contextmanager
def cpu_threads(n: int | None = None) -> Iterator[int]:
    """Run the block with ``n`` torch intra-op threads (None: `default_threads`), then restore
    the previous count. Yields the count in force."""
    n = default_threads() if n is None else max(1, int(n))
    before = torch.get_num_threads()
    if n == before:
        yield n
        return
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)

"""Speed and agreement of `attrimp.evaluate.rerank.k_reciprocal_rerank` against the released
re-ranking algorithm (Zhong et al. 2017, the ``re_ranking`` that torchreid and fast-reid ship).

    python benchmarks/bench_rerank.py                       # 750 x 6,750, quiet and busy
    python benchmarks/bench_rerank.py --busy 0 --rounds 1   # one quiet round
    python benchmarks/bench_rerank.py --queries 300 --gallery 2700   # a quick look

Size: the method works on the dense ``(Q + G)^2`` set. Market-1501's 3,368 x 15,913 (or 750 x
15,913) needs several dense matrices of 1.1 GB or more each (attrimp keeps three, the released
code five, one of them float64); on a 2-core box with ~20 GB shared between jobs the default
here is 750 queries x 6,750 gallery images (7,500 in all: 225 MB per float32 matrix, peak
~2 GB for the reference, ~1 GB for attrimp).

Implementations, each timed on the same distances within a phase:

* ``attrimp (default)``: the current function, row blocks shared between one-thread workers
  (one per available CPU; `attrimp.threads`);
* ``attrimp, one worker``: the same with ``threads=1``;
* ``previous default``: the version before issue 19 (git 81d9ba8: torch ops on every core,
  the paper's ``>=`` rule), loaded from git history;
* ``released algorithm``: ``released_re_ranking`` from ``tests/test_rerank.py``, a plain-numpy
  transcription of the authors' function (the peers' own code is not installed here: torchreid's
  PyPI package is a third-party repackaging and fast-reid is not on PyPI), so its time stands
  for theirs.

The reference takes Euclidean distances and squares them, as the peers do; attrimp takes the
squares as they are. Phases: "quiet" (the machine as it is) and "busy" (one competing spinning
process per available CPU added by the script, as in ``bench_eval.py``). Agreement with the
reference (max |distance difference|, |mAP difference|) is printed for every attrimp variant.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from bench_eval import Busy  # noqa: E402
from test_rerank import released_re_ranking  # noqa: E402

from attrimp.evaluate.metrics import evaluate, pairwise_distance  # noqa: E402
from attrimp.evaluate.rerank import k_reciprocal_rerank  # noqa: E402
from attrimp.threads import available_cpus  # noqa: E402

PREVIOUS = "81d9ba8"  # the last commit of attrimp/evaluate/rerank.py before issue 19


def previous_module():
    """The pre-issue-19 rerank module from git history (None when git cannot show it)."""
    try:
        src = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{PREVIOUS}:attrimp/evaluate/rerank.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "previous_rerank.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("previous_rerank", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def data(nq: int, ng: int, seed: int = 0, n_ids: int = 500, dim: int = 64):
    """Identity-centred float32 features -> Euclidean blocks, their squares, pids and cameras."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim)).astype(np.float32)
    qp, gp = rng.integers(0, n_ids, nq), rng.integers(0, n_ids, ng)
    qf = centres[qp] + 1.1 * rng.normal(size=(nq, dim)).astype(np.float32)
    gf = centres[gp] + 1.1 * rng.normal(size=(ng, dim)).astype(np.float32)
    qc, gc = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    gc[rng.random(ng) < 0.5] = 6  # half the gallery from a camera no query uses
    eu = [pairwise_distance(a, b).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf))]
    return eu, [np.power(b, 2) for b in eu], (qp, gp, qc, gc)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=750)
    ap.add_argument("--gallery", type=int, default=6750)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--busy", type=int, default=None, help="busy processes (default: one per CPU)")
    ap.add_argument("--busy-seconds", type=float, default=600.0)
    args = ap.parse_args()
    console = Console(width=150)
    n_busy = available_cpus() if args.busy is None else args.busy
    eu, sq, ids = data(args.queries, args.gallery)
    prev = previous_module()
    impls = {
        "attrimp (default)": lambda: k_reciprocal_rerank(*sq).numpy(),
        "attrimp, one worker": lambda: k_reciprocal_rerank(*sq, threads=1).numpy(),
    }
    if prev is not None:
        impls["previous default (81d9ba8)"] = lambda: prev.k_reciprocal_rerank(*sq).numpy()
    impls["released algorithm (numpy)"] = lambda: released_re_ranking(*eu)[0]
    phases = ["quiet"] + (["busy"] if n_busy > 0 else [])
    times = {(p, k): [] for p in phases for k in impls}
    outs: dict[str, np.ndarray] = {}
    loads = {p: [] for p in phases}
    for r in range(args.rounds):
        for ph in phases:
            with Busy(n_busy if ph == "busy" else 0, args.busy_seconds):
                loads[ph].append(os.getloadavg()[0])
                for name, fn in impls.items():
                    t, out = timed(fn)
                    times[ph, name].append(t)
                    outs[name] = out
                    console.print(f"round {r + 1} {ph:5s} {name:28s} {t:7.2f} s")
    report(console, args, phases, impls, times, outs, ids, loads, n_busy)


def report(console, args, phases, impls, times, outs, ids, loads, n_busy) -> None:
    ref = outs["released algorithm (numpy)"]
    ref_map = evaluate(ref, *ids).mAP
    tab = Table(
        title=f"k-reciprocal re-ranking, {args.queries:,} x {args.gallery:,} "
        f"(k1=20, k2=6, lambda=0.3), median of {args.rounds} round(s)"
    )
    tab.add_column("implementation")
    for ph in phases:
        tab.add_column(f"{ph} s", justify="right")
        tab.add_column(f"{ph}: reference / it", justify="right")
    tab.add_column("max |Δd| vs reference", justify="right")
    tab.add_column("|ΔmAP|", justify="right")
    for name in impls:
        row = [name]
        for ph in phases:
            t = statistics.median(times[ph, name])
            ratio = statistics.median(
                a / b for a, b in zip(times[ph, "released algorithm (numpy)"], times[ph, name])
            )
            row += [f"{t:.2f}", f"{ratio:.2f}×"]
        diff = float(np.abs(outs[name] - ref).max())
        dmap = abs(evaluate(outs[name], *ids).mAP - ref_map)
        row += [f"{diff:.1e}", f"{dmap:.1e}"]
        tab.add_row(*row)
    console.print(tab)
    console.print(
        f"reference mAP {ref_map:.4f}; CPUs available {os.cpu_count()} "
        f"(affinity {len(os.sched_getaffinity(0))}), torch {torch.__version__}, "
        f"load average at phase start: "
        + ", ".join(f"{p} {statistics.mean(loads[p]):.1f}" for p in phases)
        + (f" ({n_busy} busy processes added)" if n_busy else "")
    )


if __name__ == "__main__":
    main()

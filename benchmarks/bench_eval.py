"""Speed of `attrimp.evaluate.metrics.evaluate` at Market-1501 size against the per-query reference.

    python benchmarks/bench_eval.py                    # CPU, Market size, quiet and busy
    python benchmarks/bench_eval.py --busy 0           # no busy phase
    python benchmarks/bench_eval.py --device cuda      # + GPU rows when a GPU is present
    PYTHONPATH=/path/with/Cython python benchmarks/bench_eval.py   # + a compiled reference

The data imitate Market-1501's test split: 3,368 queries x 19,732 gallery images, 750
identities, 6 cameras, 2,793 distractors (pid 0) and 3,819 junk images (pid -1); features are
identity centres plus camera shift plus noise, so the ranking is realistic (mAP ~ 0.66), and
distances are float32, as a model produces them.

Every implementation is timed twice per round: with the machine as it is ("quiet"), and with
one competing busy process per available CPU started by the script ("busy"; each bounded in time
and killed after the phase). The speed-up is taken within a phase, so the ratios side by side
say whether attrimp keeps its lead on a busy machine, where a torch op run on one thread per
core waits at every barrier for threads the scheduler gave away (`attrimp.threads`). The
headline is the median over rounds of the reference's time over attrimp's in the same round;
the previous default (one pass over the blocks, torch on every core) is timed beside it.

The reference is torchreid's Market-1501 protocol (``eval_market1501``): argsort every row,
then walk each query's ranking, dropping same-identity-same-camera entries.  torchreid's fast
Cython build is not usable here (its PyPI sdist ships no ``rank_cy.pyx``) and copying it is not
allowed, so two references are written below from the protocol:

* ``reference (numpy loop)`` — the Python ``eval_market1501`` algorithm, one query at a time;
* ``reference (compiled loop)`` — the same algorithm with the per-query walk in Cython (built
  on the fly when Cython is importable).  Like torchreid's Cython it argsorts with numpy and
  walks the ranking in C; unlike it, it reads identities through the order instead of
  materialising a ``[Q, G]`` matches matrix, so it is if anything faster than torchreid's.

Junk is dropped from the gallery before the references run (torchreid drops it when it reads the
dataset), so they see 3,368 x 15,913; attrimp is timed on that same matrix and on the full
19,732-column one (where it excludes junk itself).  mAP, mINP and CMC must agree with attrimp's
to 1e-6.  Ties: numpy's default argsort is not stable, so where a true match and a non-match
have the *same* float32 distance the timed references may order them either way; the script
counts such ties, asserts agreement against the compiled reference run in stable order (and
between attrimp's own variants), and reports any larger difference of the unstable runs.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import attrimp.evaluate.metrics as metrics
from attrimp.evaluate.metrics import evaluate, pairwise_distance
from attrimp.threads import available_cpus, cpu_threads

# --------------------------------------------------------------------------------------------
# data


def market_like(seed: int = 0, dim: int = 256, noise: float = 1.2):
    """Features and ids with the shape of Market-1501's query/gallery split."""
    rng = np.random.default_rng(seed)
    n_ids, n_cams = 750, 6
    n_query, n_gallery, n_distractor, n_junk = 3368, 19732, 2793, 3819
    centres = rng.normal(size=(n_ids, dim)).astype(np.float32)
    cam_shift = 0.4 * rng.normal(size=(n_cams, dim)).astype(np.float32)
    # queries: at most one per (identity, camera), like Market
    pairs = rng.permutation(n_ids * n_cams)[:n_query]
    q_pids, q_cams = pairs // n_cams + 1, pairs % n_cams
    n_real = n_gallery - n_distractor - n_junk
    g_pids = np.concatenate([rng.integers(1, n_ids + 1, n_real), np.zeros(n_distractor, int)])
    g_pids = np.concatenate([g_pids, -np.ones(n_junk, int)])
    g_cams = rng.integers(0, n_cams, n_gallery)

    def feats(pids, cams):
        base = np.where((pids > 0)[:, None], centres[np.maximum(pids, 1) - 1], 0.0)
        junk = pids < 0  # junk crops: a random identity, badly framed
        base[junk] = centres[rng.integers(0, n_ids, junk.sum())] * 0.5
        f = base + cam_shift[cams] + noise * rng.normal(size=(len(pids), dim))
        return f.astype(np.float32)

    perm = rng.permutation(n_gallery)
    g_pids, g_cams = g_pids[perm], g_cams[perm]
    return feats(q_pids, q_cams), feats(g_pids, g_cams), q_pids, g_pids, q_cams, g_cams


# --------------------------------------------------------------------------------------------
# references (written from the protocol; see the module docstring)


def reference_numpy_loop(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, kind=None):
    """torchreid's ``eval_market1501`` algorithm: argsort, then one query at a time."""
    indices = np.argsort(distmat, axis=1, kind=kind)
    matches = g_pids[indices] == q_pids[:, None]
    cmc_sum = np.zeros(max_rank)
    aps, inps = [], []
    for i in range(distmat.shape[0]):
        order = indices[i]
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        raw = matches[i][keep]
        if not raw.any():
            continue
        cum = raw.cumsum()
        hits = np.flatnonzero(raw)
        cmc_sum[hits[0] :] += 1
        aps.append(float((cum[hits] / (hits + 1.0)).sum() / len(hits)))
        inps.append(len(hits) / (hits[-1] + 1.0))
    n = len(aps)
    return cmc_sum / n, float(np.mean(aps)), float(np.mean(inps))


CYTHON_SOURCE = textwrap.dedent(
    """
    # cython: boundscheck=False, wraparound=False, cdivision=True, language_level=3
    import numpy as np
    cimport numpy as cnp

    def walk(long[:, :] order, long[:] q_pids, long[:] g_pids, long[:] q_camids,
             long[:] g_camids, long max_rank):
        cdef Py_ssize_t nq = order.shape[0], ng = order.shape[1], i, j
        cdef long g, n_hit, pos, first, last, qp, qc
        cdef double ap, sum_ap = 0.0, sum_inp = 0.0
        cdef long n_valid = 0
        cmc = np.zeros(max_rank, dtype=np.float64)
        cdef double[:] cmc_v = cmc
        for i in range(nq):
            qp = q_pids[i]
            qc = q_camids[i]
            pos = 0
            n_hit = 0
            ap = 0.0
            first = -1
            last = 0
            for j in range(ng):
                g = order[i, j]
                if g_pids[g] == qp and g_camids[g] == qc:
                    continue
                pos += 1
                if g_pids[g] == qp:
                    n_hit += 1
                    ap += n_hit / <double>pos
                    if first < 0:
                        first = pos
                    last = pos
            if n_hit == 0:
                continue
            n_valid += 1
            sum_ap += ap / n_hit
            sum_inp += n_hit / <double>last
            for j in range(first - 1, max_rank):
                cmc_v[j] += 1
        return cmc / n_valid, sum_ap / n_valid, sum_inp / n_valid
    """
)


def build_cython_reference(console: Console):
    """Compile the per-query walk with Cython, or return None (with the reason) if we can't."""
    try:
        import Cython  # noqa: F401
    except ImportError:
        return None, "Cython is not importable (pip install cython, or put it on PYTHONPATH)"
    build = Path(tempfile.mkdtemp(prefix="attrimp_bench_cy_"))
    (build / "ref_walk.pyx").write_text(CYTHON_SOURCE)
    (build / "setup.py").write_text(
        "import numpy\nfrom setuptools import setup, Extension\nfrom Cython.Build import "
        "cythonize\nsetup(ext_modules=cythonize([Extension('ref_walk', ['ref_walk.pyx'], "
        "include_dirs=[numpy.get_include()], extra_compile_args=['-O3'])], quiet=True))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=build,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        console.print(proc.stderr[-2000:])
        return None, "the Cython build failed"
    sys.path.insert(0, str(build))
    mod = importlib.import_module("ref_walk")

    def reference_compiled(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, kind=None):
        order = np.argsort(distmat, axis=1, kind=kind)
        return mod.walk(order, q_pids, g_pids, q_camids, g_camids, max_rank)

    return reference_compiled, f"Cython {Cython.__version__}"


# --------------------------------------------------------------------------------------------


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), out


def pos_neg_ties(d, qp, gp, qc, gc) -> int:
    """Number of (true match, non-match) pairs at exactly equal distance."""
    n = 0
    for i in range(d.shape[0]):
        pos = (gp == qp[i]) & (gc != qc[i])
        neg = gp != qp[i]
        n += int(np.isin(d[i, pos], d[i, neg]).sum())
    return n


#: a competing CPU-bound process: pure-Python spinning, bounded in time so that nothing outlives
#: the benchmark even if it is killed before it can stop its helpers
SPINNER = (
    "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
)


class Busy:
    """``n`` competing busy processes for the duration of a ``with`` block (killed at its end)."""

    def __init__(self, n: int, seconds: float) -> None:
        self.n, self.seconds, self.procs = n, seconds, []

    def __enter__(self) -> Busy:
        code = SPINNER.format(seconds=self.seconds)
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.n)]
        time.sleep(0.5)  # let the scheduler see them
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (GPU rows added)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads of the process (default: torch's own; evaluate picks its own "
        "count either way, see attrimp.threads)",
    )
    ap.add_argument(
        "--busy",
        type=int,
        default=None,
        help="competing busy processes for the 'busy' phase (default: one per available CPU; "
        "0: no busy phase)",
    )
    ap.add_argument(
        "--busy-seconds",
        type=float,
        default=900.0,
        help="upper bound on each busy process's life (they are killed after each phase anyway)",
    )
    ap.add_argument("--skip-numpy-loop", action="store_true", help="skip the slow loop reference")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    console = Console(width=150)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cpus = available_cpus()
    n_busy = cpus if args.busy is None else args.busy

    qf, gf, qp, gp, qc, gc = market_like(args.seed)
    d_full = pairwise_distance(torch.from_numpy(qf), torch.from_numpy(gf)).numpy()
    keep = gp != -1
    d = np.ascontiguousarray(d_full[:, keep])
    gpk, gck = gp[keep], gc[keep]
    console.print(
        f"queries {d.shape[0]}, gallery {d_full.shape[1]} ({int((~keep).sum())} junk, "
        f"{int((gp == 0).sum())} distractors), float32 distances; {pos_neg_ties(d, qp, gpk, qc, gck)} "
        "match/non-match distance ties"
    )

    # CPU implementations, timed round-robin (one call of each per round) so that load changes
    # on a shared machine hit every implementation alike.
    impls = [
        (
            "attrimp.evaluate.metrics.evaluate",
            "3368 x 15913 (junk dropped)",
            lambda: evaluate(d, qp, gpk, qc, gck, max_rank=50),
        ),
        (
            "attrimp.evaluate.metrics.evaluate",
            "3368 x 19732 (junk inside)",
            lambda: evaluate(d_full, qp, gp, qc, gc, max_rank=50),
        ),
    ]
    if cpus > 1:
        impls.append(
            (
                "attrimp.evaluate.metrics.evaluate(threads=1) (one worker)",
                "3368 x 15913 (junk dropped)",
                lambda: evaluate(d, qp, gpk, qc, gck, max_rank=50, threads=1),
            )
        )

        def old_default():  # before: one pass over the blocks, every torch op on every core
            with cpu_threads(cpus):
                return metrics._evaluate(d, qp, gpk, qc, gck, 50, None, None, 1)

        impls.append(
            (
                f"previous default: one pass, {cpus} intra-op threads",
                "3368 x 15913 (junk dropped)",
                old_default,
            )
        )
    compiled, why = build_cython_reference(console)
    if compiled is not None:
        impls.append(
            (
                f"reference (compiled loop, {why})",
                "3368 x 15913",
                lambda: compiled(d, qp, gpk, qc, gck, 50),
            )
        )
    else:
        console.print(f"[yellow]compiled reference skipped: {why}[/]")
    impls.append(
        (
            "np.argsort alone (floor of any argsort-based method)",
            "3368 x 15913",
            lambda: np.argsort(d, axis=1),
        )
    )
    if not args.skip_numpy_loop:
        impls.append(
            (
                "reference (numpy loop, eval_market1501)",
                "3368 x 15913",
                lambda: reference_numpy_loop(d, qp, gpk, qc, gck, 50),
            )
        )
    phases = ["quiet"] + (["busy"] if n_busy > 0 else [])
    times = {ph: [[] for _ in impls] for ph in phases}
    outs: list = [None] * len(impls)
    loads: dict[str, list[float]] = {ph: [] for ph in phases}
    for r in range(args.repeats):
        # alternate which phase goes first, so a drift in the machine's own load hits both
        for ph in phases if r % 2 == 0 else phases[::-1]:
            with Busy(n_busy if ph == "busy" else 0, args.busy_seconds):
                for k, (_, _, fn) in enumerate(impls):
                    t0 = time.perf_counter()
                    outs[k] = fn()
                    times[ph][k].append(time.perf_counter() - t0)
                loads[ph].append(os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan)
    rows = [
        (ph, k, name, inp, statistics.median(ts), min(ts))
        for ph in phases
        for k, ((name, inp, _), ts) in enumerate(zip(impls, times[ph], strict=True))
    ]
    ref_k = next((k for k, (n, _, _) in enumerate(impls) if n.startswith("reference")), None)
    # the headline: in each round the reference and each implementation ran back to back, so
    # the ratio of that round's two times is what drift of a shared machine moves least
    pair = {
        (ph, k): statistics.median(r / t for r, t in zip(times[ph][ref_k], ts, strict=True))
        for ph in phases
        for k, ts in enumerate(times[ph])
        if ref_k is not None
    }
    ours, r_full = outs[0], outs[1]
    results = {"attrimp (junk inside)": (r_full.cmc, r_full.mAP, r_full.mINP)}
    for (name, _, _), out in zip(impls, outs, strict=True):
        if name.startswith("reference (compiled"):
            results["reference (compiled loop)"] = out
            results["reference (compiled, stable order)"] = compiled(
                d, qp, gpk, qc, gck, 50, kind="stable"
            )
        elif name.startswith("reference (numpy"):
            results["reference (numpy loop)"] = out
        elif "threads=1" in name or name.startswith("previous"):
            results[f"attrimp ({name.split(' (')[0].split(':')[0]})"] = (
                out.cmc,
                out.mAP,
                out.mINP,
            )

    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            console.print("[yellow]--device cuda asked for but no CUDA device: GPU rows skipped[/]")
        else:
            dg = torch.from_numpy(d).cuda()
            evaluate(dg, qp, gpk, qc, gck)  # warm-up (CUDA context, kernels)
            med, best, r = timed(lambda: evaluate(dg, qp, gpk, qc, gck), args.repeats)
            rows.append(
                (
                    "gpu",
                    -1,
                    "attrimp.evaluate.metrics.evaluate, CUDA tensor",
                    "3368 x 15913",
                    med,
                    best,
                )
            )
            results["attrimp (cuda)"] = (r.cmc, r.mAP, r.mINP)
            med, best, r = timed(
                lambda: evaluate(d_full, qp, gp, qc, gc, device="cuda"), args.repeats
            )
            rows.append(
                (
                    "gpu",
                    -1,
                    "attrimp.evaluate.metrics.evaluate, numpy -> CUDA",
                    "3368 x 19732",
                    med,
                    best,
                )
            )
            results["attrimp (numpy -> cuda)"] = (r.cmc, r.mAP, r.mINP)
            qg, gg = torch.from_numpy(qf).cuda(), torch.from_numpy(gf).cuda()
            med, best, _ = timed(lambda: pairwise_distance(qg, gg), args.repeats)
            rows.append(
                ("gpu", -1, "pairwise_distance (euclidean), CUDA", "3368 x 19732 x 256", med, best)
            )

    # identical numbers
    table_eq = Table(title="agreement with attrimp (3368 x 15913)")
    for col in ("implementation", "mAP", "mINP", "max |dCMC|", "max |d|"):
        table_eq.add_column(col)
    table_eq.add_row("attrimp", f"{ours.mAP:.6f}", f"{ours.mINP:.6f}", "", "")
    for name, (cmc, m_ap, m_inp) in results.items():
        diff = max(abs(m_ap - ours.mAP), abs(m_inp - ours.mINP), np.abs(cmc - ours.cmc).max())
        table_eq.add_row(
            name,
            f"{m_ap:.6f}",
            f"{m_inp:.6f}",
            f"{np.abs(cmc - ours.cmc).max():.1e}",
            f"{diff:.1e}",
        )
        if "stable" in name or "attrimp" in name:
            assert diff < 1e-6, f"{name} disagrees with attrimp by {diff}"
        elif diff >= 1e-6:
            console.print(f"[yellow]{name}: differs by {diff:.1e} (unstable tie order)[/]")
    console.print(table_eq)

    ref_name = next((n for n, _, _ in impls if n.startswith("reference")), None)
    base = {
        ph: next((m for p, _, n, _, m, _ in rows if p == ph and n == ref_name), None)
        for ph in phases
    }
    base["gpu"] = base["quiet"]
    load = {ph: statistics.median(v) for ph, v in loads.items()}
    table = Table(
        title=f"evaluate() at Market size — {cpu_name()}, {cpus} available CPUs "
        f"({os.cpu_count()} cores), torch threads {torch.get_num_threads()}, {args.repeats} "
        f"rounds; load average quiet {load['quiet']:.1f}"
        + (f", busy {load['busy']:.1f} ({n_busy} busy processes added)" if n_busy else "")
    )
    ref_label = "compiled ref" if ref_name and "compiled" in ref_name else "numpy-loop ref"
    speed = f"vs {ref_label}: median of per-round ratios" if ref_name else ""
    speed2 = "ratio of medians" if ref_name else ""
    for col in ("phase", "implementation", "input", "median s", "best s", speed, speed2):
        table.add_column(col)
    for ph, k, name, inp, med, best in rows:
        b = base.get(ph)
        r = pair.get((ph, k))
        table.add_row(
            ph,
            name,
            inp,
            f"{med:.3f}",
            f"{best:.3f}",
            f"{r:.2f}x" if r else "",
            f"{b / med:.2f}x" if b else "",
        )
    console.print(table)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()

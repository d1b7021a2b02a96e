"""Error rates of the GLM's tests where users meet them: few and unequal clusters.

Prints, per cell of a simulation grid (``studies.simulate.simulate_small_cluster_table``), the
family-wise error of the Holm decisions over all attribute groups on *null* tables, and the
power to find planted effects, for the default CR2 + HTZ tests and for the former
t(m - 1) / F(q, min m - 1) rule (``small_sample="naive"``). The results are kept in
``docs/studies.md`` ("Small-sample inference").

    python benchmarks/bench_calibration.py --sims 300            # the null grid
    python benchmarks/bench_calibration.py --sims 200 --power    # planted effects

Monte-Carlo error: with N simulations a rate near 0.05 has a standard error of
sqrt(0.05 * 0.95 / N) (0.013 at N = 300).
"""

from __future__ import annotations

import argparse
import time
import warnings

from studies.design import build_analysis_frame
from studies.glm import fit_glm
from studies.simulate import simulate_small_cluster_table

CELLS = {
    "A: 20 clusters, lognormal sizes (sigma 1)": dict(n_clusters=20, size_sigma=1.0),
    "B: 30 clusters (sigma 1.5), a level held by the 5 largest": dict(
        n_clusters=30, size_sigma=1.5, rare_clusters=5
    ),
    "C: 50 clusters (sigma 1), a level held by the 6 largest": dict(
        n_clusters=50, size_sigma=1.0, rare_clusters=6
    ),
    "D: 50 clusters (sigma 1), an attribute varying within clusters": dict(
        n_clusters=50, size_sigma=1.0, within=True
    ),
    "E: 40 clusters of equal size": dict(n_clusters=40, size_sigma=0.0),
}
#: planted effects (logit scale) for the power runs, per cell letter
PLANTED = {
    "A": {"bag": 1.0, "colour": 1.0},
    "B": {"bag": 0.8, "colour": 0.8},
    "C": {"bag": 0.8, "colour": 0.8},
    "D": {"switch": 0.3, "colour": 0.8},
    "E": {"bag": 0.8, "colour": 0.8},
}
MODES = ("htz", "naive")


def _holm_rejections(df, mode: str, alpha: float):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = build_analysis_frame(df, outcomes="ap", cluster="pid")
        gt = fit_glm(frame, "ap", small_sample=mode).group_tests
    return gt.set_index("attribute")["p_holm"] < alpha


def null_row(cell: dict, sims: int, alpha: float, seed0: int) -> dict[str, float]:
    """Family-wise error of each mode: the share of null tables with any Holm rejection."""
    hits = dict.fromkeys(MODES, 0)
    for s in range(sims):
        df = simulate_small_cluster_table(seed=seed0 + s, **cell)
        for mode in MODES:
            hits[mode] += bool(_holm_rejections(df, mode, alpha).any())
    return {mode: hits[mode] / sims for mode in MODES}


def power_row(cell: dict, effects: dict, sims: int, alpha: float, seed0: int) -> dict[str, dict]:
    """Per planted group and mode: the share of tables where Holm rejects it."""
    hits = {mode: dict.fromkeys(effects, 0) for mode in MODES}
    for s in range(sims):
        df = simulate_small_cluster_table(seed=seed0 + s, effects=effects, **cell)
        for mode in MODES:
            rejected = _holm_rejections(df, mode, alpha)
            for g in effects:
                hits[mode][g] += bool(rejected.get(g, False))
    return {mode: {g: k / sims for g, k in h.items()} for mode, h in hits.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=300)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--power", action="store_true", help="planted effects instead of the null")
    ap.add_argument("--cells", default="ABCDE", help="letters of the cells to run")
    args = ap.parse_args()
    if args.power:
        print("| cell | planted (logit) | power HTZ | power naive | s |")
        print("| --- | --- | --- | --- | ---: |")
    else:
        print("| cell | FWER HTZ | FWER naive t(m-1) | s |")
        print("| --- | ---: | ---: | ---: |")
    for name, cell in CELLS.items():
        if name[0] not in args.cells:
            continue
        t0 = time.perf_counter()
        if args.power:
            eff = PLANTED[name[0]]
            r = power_row(cell, eff, args.sims, args.alpha, seed0=9000)
            fmt = {m: ", ".join(f"{g} {v:.2f}" for g, v in r[m].items()) for m in MODES}
            planted = ", ".join(f"{g} {d:g}" for g, d in eff.items())
            print(
                f"| {name} | {planted} | {fmt['htz']} | {fmt['naive']} | "
                f"{time.perf_counter() - t0:.0f} |",
                flush=True,
            )
        else:
            r = null_row(cell, args.sims, args.alpha, seed0=5000)
            print(
                f"| {name} | {r['htz']:.3f} | {r['naive']:.3f} | {time.perf_counter() - t0:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

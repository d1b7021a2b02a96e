"""Speed and memory of the statistical battery, and the comparison with a naive notebook.

Part 1 — scale: a generated Market-like table (12 attribute groups / 27 attribute columns, planted
effects, rows clustered by 750 identities) at 10k, 100k and 1M rows. Each size runs in a fresh
subprocess (so peak memory is that size's alone): generate the table, build the analysis frame,
run the full battery with its default settings, write the whole report (JSON, MD, HTML, CSVs,
figures). Wall time per stage and the child's peak RSS (``resource.getrusage``) are reported.

Part 2 — against the naive approach: the same 20k-row table written to CSV, then, as whole
processes each (imports and reading included), ``attrimp study analyze`` with its defaults and
``benchmarks/naive_battery.py`` (library defaults, one column at a time). Wall time, CPU time
(user + sys of the process, from ``os.wait4``) and peak RSS of each, their ratio, and whether
the conclusions (the top-3 attribute groups) agree with each other and with the planted truth.

    .venv/bin/python benchmarks/bench_studies.py                # everything (~20 min on 2 cores)
    .venv/bin/python benchmarks/bench_studies.py --sizes 10000  # a quick look
    .venv/bin/python benchmarks/bench_studies.py --skip-naive

Prints Markdown tables (paste them into BENCHMARKS.md with the machine's CPU model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: the planted truth (logit-scale shifts of ap), the same as the bundled example's
EFFECTS = {"downcolor": 1.2, "upcolor": 1.0, "gender": 0.8, "hat": 1.5}
#: the strongest population-level effects: the colour groups and gender (hat is strong but rare)
TOP3 = {"downcolor", "upcolor", "gender"}


def _child(n_rows: int, out: Path, seed: int) -> None:
    """One size, in its own process; prints one JSON line."""
    t0 = time.perf_counter()
    from studies.battery import run_battery
    from studies.design import build_analysis_frame, spec_from_toml
    from studies.report import write_report
    from studies.simulate import market_like_schema_toml, simulate_reid_table

    t_import = time.perf_counter() - t0
    t = time.perf_counter()
    df = simulate_reid_table(n_rows, effects=EFFECTS, seed=seed)
    t_gen = time.perf_counter() - t
    t = time.perf_counter()
    frame = build_analysis_frame(
        df,
        outcomes=["ap"],
        cluster="pid",
        exclude=["query"],
        spec=spec_from_toml(market_like_schema_toml()),
        source=f"simulated {n_rows} rows",
    )
    del df
    t_frame = time.perf_counter() - t
    t = time.perf_counter()
    result = run_battery(frame, seed=seed, progress=False)
    t_battery = time.perf_counter() - t
    t = time.perf_counter()
    write_report(result, out)
    t_report = time.perf_counter() - t
    cons = result.outcome("ap").table("consensus")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "rows": n_rows,
                "import_s": t_import,
                "generate_s": t_gen,
                "frame_s": t_frame,
                "battery_s": t_battery,
                "report_s": t_report,
                "steps": result.outcome("ap").timings,
                "steps_cpu": result.outcome("ap").cpu_timings,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "peak_rss_mb": usage.ru_maxrss / 1024,
                "top3": list(cons["attribute"][:3]),
            }
        )
    )


def _run(cmd: list[str], *, cwd: Path = REPO) -> tuple[float, float, float, str, int]:
    """Wall s, CPU s (user + sys), peak RSS MB and stdout of one child process."""
    t = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        if proc.returncode != 0:
            sys.stderr.write(err.read().decode("utf-8", "replace")[-3000:])
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, stdout, proc.returncode


def _scale(sizes: list[int], seed: int) -> list[dict]:
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, __file__, "--child", str(n), "--out", tmp, "--seed", str(seed)]
            wall, cpu, rss, stdout, rc = _run(cmd)
            if rc != 0:
                rows.append({"rows": n, "error": f"exit {rc}"})
                continue
            rec = json.loads(stdout.strip().splitlines()[-1])
            rec["process_wall_s"] = wall
            rows.append(rec)
            print(
                f"  {n} rows: battery {rec['battery_s']:.1f} s, peak {rec['peak_rss_mb']:.0f} MB",
                file=sys.stderr,
            )
    return rows


def _naive(n_rows: int, seed: int) -> dict:
    from studies.simulate import market_like_schema_toml, simulate_reid_table

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table, schema = tmp / "table.csv", tmp / "schema.toml"
        simulate_reid_table(n_rows, effects=EFFECTS, seed=seed).to_csv(table, index=False)
        schema.write_text(market_like_schema_toml())
        ours_cmd = [
            sys.executable,
            "-m",
            "attrimp",
            "study",
            "analyze",
            str(table),
            "--outcome",
            "ap",
            "--cluster",
            "pid",
            "--exclude",
            "query",
            "--schema",
            str(schema),
            "--out",
            str(tmp / "ours"),
            "--no-progress",
            "--seed",
            str(seed),
        ]
        naive_cmd = [
            sys.executable,
            str(REPO / "benchmarks" / "naive_battery.py"),
            str(table),
            "--schema",
            str(schema),
            "--outcome",
            "ap",
            "--out",
            str(tmp / "naive"),
        ]
        ours = _run(ours_cmd)
        print(f"  attrimp: {ours[0]:.1f} s", file=sys.stderr)
        report = json.loads((tmp / "ours" / "report.json").read_text())
        ours_top = [r["attribute"] for r in report["consensus"][:3]]
        naive = _run(naive_cmd)
        print(f"  naive: {naive[0]:.1f} s", file=sys.stderr)
        naive_top = json.loads(naive[3].strip().splitlines()[-1])["top"] if naive[4] == 0 else []
    return {
        "rows": n_rows,
        "ours": {"wall_s": ours[0], "cpu_s": ours[1], "peak_rss_mb": ours[2], "top3": ours_top},
        "naive": {
            "wall_s": naive[0],
            "cpu_s": naive[1],
            "peak_rss_mb": naive[2],
            "top3": naive_top,
        },
    }


def _print(scale: list[dict], naive: dict | None) -> None:
    from bench_reference_study import cpu_name  # beside this script

    print(f"\nMachine: {cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n")
    if scale:
        print(
            "| rows | generate s | frame s | battery s | report s | battery + report s | "
            "process CPU s | peak RSS MB | top 3 (consensus) |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for r in scale:
            if "error" in r:
                print(f"| {r['rows']:,} | {r['error']} | | | | | | | |")
                continue
            print(
                f"| {r['rows']:,} | {r['generate_s']:.1f} | {r['frame_s']:.1f} | "
                f"{r['battery_s']:.1f} | {r['report_s']:.1f} | "
                f"{r['battery_s'] + r['report_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} | "
                f"{', '.join(r['top3'])} |"
            )
        print("\nBattery steps, wall s / CPU s:\n")
        steps = list(dict.fromkeys(k for r in scale if "steps" in r for k in r["steps"]))
        print("| rows | " + " | ".join(steps) + " |")
        print("| ---: | " + " | ".join("---:" for _ in steps) + " |")
        for r in scale:
            if "steps" in r:
                cells = [
                    f"{r['steps'].get(k, 0):.2f} / {r['steps_cpu'].get(k, 0):.2f}" for k in steps
                ]
                print(f"| {r['rows']:,} | " + " | ".join(cells) + " |")
    if naive:
        o, n = naive["ours"], naive["naive"]
        print(f"\nWhole process on the same {naive['rows']:,}-row CSV:\n")
        print("| script | wall s | CPU s | peak RSS MB | top 3 groups | planted top 3 recovered |")
        print("| --- | ---: | ---: | ---: | --- | --- |")
        for name, r in (("attrimp study analyze (defaults)", o), ("naive_battery.py", n)):
            print(
                f"| {name} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} | "
                f"{', '.join(r['top3'])} | {'yes' if set(r['top3']) == TOP3 else 'no'} |"
            )
        same = set(o["top3"]) == set(n["top3"])
        print(
            f"\nSpeed-up: {n['wall_s'] / o['wall_s']:.1f}x wall, {n['cpu_s'] / o['cpu_s']:.1f}x CPU; "
            f"same top-3 groups: {'yes' if same else 'no'}."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--naive-rows", type=int, default=20_000)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="Also write the raw numbers here.")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.out, args.seed)
        return
    scale = _scale(args.sizes, args.seed)
    naive = None if args.skip_naive else _naive(args.naive_rows, args.seed)
    _print(scale, naive)
    if args.json:
        args.json.write_text(json.dumps({"scale": scale, "naive": naive}, indent=2))


if __name__ == "__main__":
    main()

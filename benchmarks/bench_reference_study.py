"""The reference study end to end at Market-1501 size, with a table of what each stage costs.

Draws the full-size synthetic Market-1501 world (``attrimp data synth --preset market1501``),
then runs ``attrimp study run`` on it with the reference config
(``studies/configs/market1501_clip_vitb16.toml``: the Market schema, every default design) as a
separate process, and turns the stage timings the study records in ``report.json`` into a table:
world generation, data loading, training (img/s), backbone-prefix cache (time, size, memory),
condition sweep (seconds per condition, number of conditions), each battery (rows, seconds, peak
memory) and the report.

Sizes (``--size``):

- ``gpu``: the reference recipe — CLIP ViT-B/16 at 256×128 with bf16 autocast and the compiled
  training step (``device = "auto"``), random weights (a GPU box has no network; speed does not
  depend on the weights), 60 epochs unless ``--epochs``. ``benchmarks/gpu_check.sh`` runs it.
- ``cpu``: the full-size data (the same world, every image, every condition, every battery) with
  a small random ViT (4 blocks, width 64, experts of rank 4 in the last 2) at 128×64 and 2
  epochs: what a 2-core machine can do in about an hour.
- ``tiny``: a 2 % world at 64×32 and the tests' 2-block ViT for 1 epoch: a minutes-scale smoke
  run of the same code path (``tests/test_bench_reference_study.py``).

    .venv/bin/python benchmarks/bench_reference_study.py --size cpu --out runs/bench-ref
    python benchmarks/bench_reference_study.py --size gpu --epochs 2 --out runs/bench-ref-gpu

Writes ``OUT/stage_table.md`` and ``OUT/bench.json`` and prints the table (Markdown, for
BENCHMARKS.md); the world and the study's folder go to ``--work`` (default ``OUT``; ~0.4 GB of
JPEGs at full size). ``--world DIR`` reuses a world drawn earlier by this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "studies" / "configs" / "market1501_clip_vitb16.toml"

#: per size: the world (preset scale, image size) and what replaces the reference config's keys
SIZES: dict[str, dict[str, Any]] = {
    "gpu": {
        "scale": 1.0,
        "image_size": None,  # the preset's 256x128
        "epochs": 60,
        "overrides": {"model": {"pretrained": False}, "device": "auto"},
    },
    "cpu": {
        "scale": 1.0,
        "image_size": None,
        "epochs": 2,
        "overrides": {
            "device": "cpu",
            "data": {"num_workers": 1},
            "model": {
                "backbone": "timm:vit_tiny_patch16_224",
                "pretrained": False,
                "img_size": [128, 64],
                "backbone_kwargs": {"tiny": True, "depth": 4, "embed_dim": 64, "num_heads": 2},
            },
            # rank 4: with 35 experts at the reference rank 8 the experts cost as much as the
            # whole width-64 block, and the sweep runs the 2 expert blocks 84 times
            "experts": {"rank": 4, "alpha": 8.0},
            "train": {"lr": 1e-3, "expert_lr_scale": 1.0, "warmup_epochs": 1, "amp": "off"},
            "eval": {"batch_size": 128},
        },
    },
    "tiny": {
        "scale": 0.02,
        "image_size": "64x32",
        "epochs": 1,
        "overrides": {
            "device": "cpu",
            "data": {"num_workers": 0},
            "model": {
                "backbone": "timm:vit_tiny_patch16_224",
                "pretrained": False,
                "img_size": [64, 32],
                "backbone_kwargs": {"tiny": True},
            },
            "experts": {"blocks": 1, "rank": 4, "alpha": 4.0},
            "train": {
                "identities_per_batch": 4,
                "lr": 1e-3,
                "expert_lr_scale": 1.0,
                "warmup_epochs": 0,
                "amp": "off",
            },
            "eval": {"batch_size": 64, "max_rank": 10},
            "ablation": {"random_subsets": 8, "noisy_p": [0.5]},
            "analysis": {"repeats": 1},
        },
    },
}


# --------------------------------------------------------------------------- config
def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "backbone_kwargs":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(data: dict[str, Any]) -> str:
    """A config dict as TOML (scalars first, then one table per section; inline sub-tables)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, body in data.items():
        if not isinstance(body, dict):
            continue
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def study_config(size: str, world: Path, epochs: int | None) -> dict[str, Any]:
    """The reference config with the world's paths and the size's replacements."""
    spec = SIZES[size]
    cfg = _merge(tomllib.loads(REFERENCE.read_text(encoding="utf-8")), spec["overrides"])
    cfg["name"] = f"bench_reference_{size}"
    cfg["data"]["root"] = str(world)
    cfg["data"]["attributes"] = str(world / "market_attribute.mat")
    cfg["train"]["epochs"] = epochs if epochs is not None else spec["epochs"]
    return cfg


# --------------------------------------------------------------------------- processes
def _run(cmd: list[str], log: Path) -> dict[str, float]:
    """Run ``cmd`` with its output in ``log``; wall s, CPU s and peak RSS MB of the child."""
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(cmd[:5])} ... failed (exit {code}); its log ends:\n{tail}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def draw_world(
    world: Path,
    size: str,
    out: Path,
    scale: float | None = None,
    attributes_file: Path | None = None,
) -> dict[str, Any]:
    """The preset world (reused when ``world`` already holds the one this size asks for); with
    ``attributes_file`` (market_attribute.mat) its identities are drawn jointly from the real
    file, so the study sees Market's identity leak rather than independent draws' larger one."""
    from attrimp.data.synth import preset_world
    from attrimp.io import sha256_file

    spec = SIZES[size]
    scale = spec["scale"] if scale is None else scale
    design_file = world / "synth.json"
    if design_file.is_file():
        design = json.loads(design_file.read_text(encoding="utf-8"))
        want = preset_world("market1501", scale)
        if spec["image_size"] is not None:
            want["size"] = tuple(int(x) for x in spec["image_size"].split("x"))
        if (
            design.get("split_sizes") == vars(want["split_sizes"])
            and design["n_identities"] == want["n_identities"]
            and design["size"] == list(want["size"])
            and design.get("attributes_sha256")
            == (None if attributes_file is None else sha256_file(attributes_file))
        ):
            return {"reused": True, "images": _world_images(design), "design": design}
    cmd = [sys.executable, "-m", "attrimp", "data", "synth", "--preset", "market1501"]
    cmd += ["--scale", str(scale), "--out", str(world), "--overwrite"]
    cmd += ["--workers", str(len(os.sched_getaffinity(0)))]
    if spec["image_size"]:
        cmd += ["--size", spec["image_size"]]
    if attributes_file is not None:
        cmd += ["--attributes-file", str(attributes_file)]
    stats = _run(cmd, out / "world.log")
    design = json.loads(design_file.read_text(encoding="utf-8"))
    return {"reused": False, "images": _world_images(design), "design": design, **stats}


def _world_images(design: dict[str, Any]) -> int:
    c = design["counts"]
    return c["train"] + c["query"] + c["gallery"] + c.get("junk_images", 0)


def run_reference(
    size: str,
    out: Path,
    *,
    world: Path | None = None,
    epochs: int | None = None,
    work: Path | None = None,
    scale: float | None = None,
    attributes_file: Path | None = None,
):
    """Draw the world, run the study, return everything the table needs.

    ``out`` gets the table, ``bench.json``, the config and the logs; ``work`` (default ``out``)
    the world and the study's own output folder, which are large at full size.
    """
    out.mkdir(parents=True, exist_ok=True)
    work = work or out
    work.mkdir(parents=True, exist_ok=True)
    world = world or work / "world"
    world_info = draw_world(world, size, out, scale, attributes_file)
    cfg = study_config(size, world, epochs)
    config_path = out / "config.toml"
    config_path.write_text(to_toml(cfg), encoding="utf-8")
    study_out = work / "study"
    cmd = [sys.executable, "-m", "attrimp", "study", "run", str(config_path), "--out"]
    study = _run([*cmd, str(study_out), "--fresh"], out / "study.log")
    report = json.loads((study_out / "report.json").read_text(encoding="utf-8"))
    result = {
        "size": size,
        "command": " ".join(
            ["python", "benchmarks/bench_reference_study.py", "--size", size]
            + ([] if scale is None else ["--scale", str(scale)])
            + ([] if epochs is None else ["--epochs", str(epochs)])
            + ([] if attributes_file is None else ["--attributes-file", str(attributes_file)])
        ),
        "machine": machine(),
        "world": {k: v for k, v in world_info.items() if k != "design"},
        "world_counts": world_info["design"]["counts"],
        "config": cfg,
        "study_process": study,
        "timings": report["timings"],
        "data": {k: v for k, v in report["data"].items() if k != "report"},
        "epochs": cfg["train"]["epochs"],
    }
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = stage_table(result)
    (out / "stage_table.md").write_text(table, encoding="utf-8")
    return result, table


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (``platform.processor()`` says only "x86_64" on Linux);
    the other benchmark scripts import it from here."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    cpu = cpu_name()
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
        else:
            gpu = f", no GPU, torch {torch.__version__}"
    except ImportError:
        pass
    try:
        load = f", load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load = ""
    return f"{cpu}, {len(os.sched_getaffinity(0))} CPUs{gpu}{load}"


# --------------------------------------------------------------------------- the table
def _mb(x: float | None) -> str:
    return "" if x is None else (f"{x / 1024:.2f} GB" if x >= 1024 else f"{x:.0f} MB")


def stage_table(r: dict[str, Any]) -> str:
    """The Markdown stage table of one run."""
    st = {s["stage"]: s for s in r["timings"]["stages"]}
    d, w = r["data"], r["world"]
    rows: list[tuple[str, str, str, str, str]] = []

    def mem(s: dict[str, Any]) -> str:
        gpu = f" / GPU {_mb(s['peak_gpu_mb'])}" if "peak_gpu_mb" in s else ""
        return _mb(s.get("peak_rss_mb")) + gpu

    if w.get("reused"):
        rows.append(("world generation", "(reused)", f"{w['images']:,} images", "", ""))
    else:
        rate = f"{w['images'] / w['wall_s']:.0f} img/s"
        rows.append(
            (
                "world generation",
                f"{w['wall_s']:.1f}",
                f"{w['images']:,} images",
                rate,
                _mb(w["peak_rss_mb"]),
            )
        )
    s = st["data"]
    work = f"{d['train_images']:,} / {d['query_images']:,} / {d['gallery_images']:,} images"
    rows.append(("data loading (+ priors)", f"{s['seconds']:.1f}", work, "", mem(s)))
    s = st["train"]
    seen = d["train_images"] * r["epochs"]
    rate = "" if s.get("cached") else f"{seen / s['seconds']:.0f} img/s"
    rows.append(
        ("training", f"{s['seconds']:.1f}", f"{r['epochs']} epochs, {seen:,} images", rate, mem(s))
    )
    s = st.get("prefix_cache")
    if s:
        size = (
            f"{s['images']:,} images; cache {s['prefix_bytes'] / 1e9:.2f} GB "
            f"{s['prefix_dtype']} on {s['prefix_device']}"
        )
        rate = f"{s['images'] / s['seconds']:.0f} img/s"
        rows.append(("backbone-prefix cache", f"{s['seconds']:.1f}", size, rate, mem(s)))
    s = st["sweep"]
    per = s.get("seconds_per_condition")
    rows.append(
        (
            "condition sweep",
            f"{s['seconds']:.1f}",
            f"{s['conditions']} conditions",
            "" if per is None else f"{per:.2f} s/condition",
            mem(s),
        )
    )
    s = st["tables"]
    rows.append(
        ("tables", f"{s['seconds']:.1f}", f"{s['per_query_rows']:,} per-query rows", "", mem(s))
    )
    for name, s in st.items():
        if name.startswith("analyses."):
            what = "paired tests" if name == "analyses.paired" else f"battery `{name[9:]}`"
            rows.append((what, f"{s['seconds']:.1f}", f"{s.get('rows', 0):,} rows", "", mem(s)))
    s = st["analyses"]
    rows.append(("analyses (all)", f"{s['seconds']:.1f}", "", "", mem(s)))
    s = st["report"]
    rows.append(("report", f"{s['seconds']:.1f}", "", "", mem(s)))
    p = r["study_process"]
    rows.append(
        (
            "**study process**",
            f"**{p['wall_s']:.1f}**",
            f"stages {r['timings']['total_seconds']:.1f} s, CPU {p['cpu_s']:.0f} s",
            "",
            f"**{_mb(p['peak_rss_mb'])}**",
        )
    )
    head = "| stage | wall s | work | rate | peak memory |\n| --- | ---: | --- | ---: | ---: |\n"
    body = "".join(f"| {' | '.join(row)} |\n" for row in rows)
    return f"`{r['command']}` on {r['machine']}:\n\n" + head + body


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--world", type=Path, default=None, help="reuse (or draw) the world here")
    parser.add_argument("--epochs", type=int, default=None, help="override the size's epochs")
    parser.add_argument(
        "--work", type=Path, default=None, help="world and study folders (default: --out)"
    )
    parser.add_argument(
        "--scale", type=float, default=None, help="world scale instead of the size's (0-1]"
    )
    parser.add_argument(
        "--attributes-file",
        type=Path,
        default=None,
        help="market_attribute.mat: draw the world's identities jointly from it (the real leak)",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix=f"bench-ref-{args.size}-"))
    _, table = run_reference(
        args.size,
        args.out,
        world=args.world,
        epochs=args.epochs,
        work=args.work,
        scale=args.scale,
        attributes_file=args.attributes_file,
    )
    print(table)
    print(f"(tables and logs in {args.out})", file=sys.stderr)


if __name__ == "__main__":
    main()

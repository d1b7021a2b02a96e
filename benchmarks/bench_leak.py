"""The identity leak, measured: how well attribute vectors alone re-identify, in the synthetic
worlds under both attribute draws and in the real annotation files.

An oracle router hands the model each identity's annotation. Where that annotation is (nearly)
unique to the identity, it names the person whatever the image shows, so part of the oracle's
gain is the tag, not attribute reliance. This script measures that leak where it can be measured
without training a model:

- the attribute-only baseline (`attrimp.evaluate.conditions.attribute_only_baseline`, the very
  function the study's ``attribute_only`` design runs: the gallery ranked by the number of
  disagreeing groups, ties in gallery order) on the built-in study's world and on the
  Market-size preset world, each drawn with ``attributes = "independent"`` (today's default) and
  ``"joint"`` (real vectors resampled from market_attribute.mat). No image is drawn: the query and
  gallery lists come from `attrimp.data.synth.world_images`, which lists exactly the files the
  world would write (tests/test_synth_joint.py checks it against a written world);
- uniqueness (`attrimp.data.synth.attribute_uniqueness`) of the test identities' vectors, in the
  worlds and in the real Market-1501 and DukeMTMC-reID files.

The real files' attribute-only mAP cannot be computed without their images; the Market-size
joint world at scale 1 carries exactly the real test split's 750 vectors in Market's layout (its
counts per split, 6 cameras, 2,793 distractors), so its mAP is the closest stand-in.

Usage: ``python benchmarks/bench_leak.py [--data DIR] [--seeds N] [--json FILE]``; ``--data``
defaults to ``$ATTRIMP_SHARED_DATA`` or ``../shared/data``. Prints a markdown table (the one in
docs/data.md, "The identity leak").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from attrimp.config import load_config  # noqa: E402
from attrimp.data import synth  # noqa: E402
from attrimp.data.annotations import AttributeTable, load_attribute_file  # noqa: E402
from attrimp.model.schema import load_schema  # noqa: E402

BUILTIN_CONFIG = REPO / "studies" / "configs" / "synthetic_study.toml"
DEFAULT_DATA = Path(os.environ.get("ATTRIMP_SHARED_DATA", REPO.parent / "shared" / "data"))
REAL_FILES = {"market1501": "market_attribute.mat", "dukemtmc": "duke_attribute.mat"}


def builtin_world() -> dict[str, Any]:
    """The built-in study's world as `make_synthetic_world` keyword arguments (from its TOML,
    so this follows any change of the built-in study)."""
    s = load_config(BUILTIN_CONFIG).data.synthetic
    return {
        "n_identities": s.identities,
        "n_cameras": s.cameras,
        "images_per_identity_per_camera": s.images_per_camera,
        "seed": s.seed,
    }


def attribute_only(world: dict[str, Any], max_rank: int = 50) -> dict[str, Any]:
    """Attribute-only retrieval and test-identity uniqueness of one world, no image drawn."""
    import torch

    from attrimp.evaluate.conditions import SplitTensors, attribute_only_baseline

    schema = load_schema("market1501")
    table = AttributeTable.from_frame(synth.world_attributes(**world), schema)
    images = synth.world_images(**world)
    # distractors (pid 0) carry no annotation: the all-unknown vector, as the loader gives them
    multihot = dict(zip(table.pids.tolist(), table.multihot))
    unknown = np.zeros(schema.n_slots, dtype=np.float32)
    splits = {}
    for name, folder in (("query", "query"), ("gallery", "bounding_box_test")):
        part = images[images["folder"] == folder]
        splits[name] = SplitTensors(
            attributes=torch.from_numpy(
                np.stack([multihot.get(p, unknown) for p in part["pid"]]).astype(np.float32)
            ),
            pids=part["pid"].to_numpy(),
            camids=part["camid"].to_numpy(),
            names=part["name"].tolist(),
        )
    result, _ = attribute_only_baseline(
        schema, splits["query"], splits["gallery"], max_rank=max_rank
    )
    test = table.frame[table.frame["split"] == "test"]
    return {
        **result.summary(),
        "uniqueness": synth.attribute_uniqueness(test[list(synth.MAT_COLUMNS)]).as_dict(),
        "queries": len(splits["query"].pids),
        "gallery": len(splits["gallery"].pids),
    }


def real_uniqueness(path: Path, dataset: str) -> dict[str, dict[str, int]]:
    """Uniqueness of each split of a real file, over the raw columns (as the file codes them)
    and over the decoded groups (what the attribute-only baseline compares)."""
    table = load_attribute_file(path, dataset)
    values = table.values()
    out = {}
    for split in table.splits:
        raw = table.frame[table.frame["split"] == split][list(table.schema.source_columns)]
        groups = values[values["split"] == split][table.schema.group_names]
        out[split] = {
            "columns": len(table.schema.source_columns),
            **synth.attribute_uniqueness(raw).as_dict(),
            "distinct_groups": synth.attribute_uniqueness(groups).distinct,
        }
    return out


def run(data: Path, seeds: int) -> dict[str, Any]:
    """Every measurement of the table; the joint rows only where the Market file is present."""
    market = data / REAL_FILES["market1501"]
    joint = {"attributes": "joint", "attributes_file": market} if market.is_file() else None
    rows: dict[str, Any] = {}
    worlds = {"built-in": builtin_world(), "Market-size": synth.preset_world("market1501")}
    for label, world in worlds.items():
        for draw, extra in (("independent", {}), ("joint", joint)):
            if extra is None:
                continue
            start = time.perf_counter()
            row = attribute_only({**world, **extra})
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows[f"{label} / {draw}"] = row
    if seeds > 1:
        for draw, extra in (("independent", {}), ("joint", joint)):
            if extra is None:
                continue
            maps = [
                attribute_only({**worlds["built-in"], **extra, "seed": s})["mAP"]
                for s in range(seeds)
            ]
            rows[f"built-in / {draw}"]["mAP_over_seeds"] = {
                "seeds": seeds,
                "mean": statistics.fmean(maps),
                "sd": statistics.stdev(maps),
                "min": min(maps),
                "max": max(maps),
            }
    real = {
        name: real_uniqueness(data / f, name)
        for name, f in REAL_FILES.items()
        if (data / f).is_file()
    }
    return {"worlds": rows, "real": real}


def markdown(result: dict[str, Any]) -> str:
    """The two tables of docs/data.md."""
    lines = [
        "| world / draw | test identities | distinct vectors | sharing theirs | "
        "attribute-only mAP | rank-1 | mAP over seeds (mean ± SD, min–max) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in result["worlds"].items():
        u = r["uniqueness"]
        over = r.get("mAP_over_seeds")
        spread = (
            f"{over['mean']:.3f} ± {over['sd']:.3f} ({over['min']:.3f}–{over['max']:.3f}), "
            f"{over['seeds']} seeds"
            if over
            else ""
        )
        lines.append(
            f"| {name} | {u['identities']} | {u['distinct']} | {u['sharing']} | "
            f"{r['mAP']:.3f} | {r['rank1']:.3f} | {spread} |"
        )
    lines += [
        "",
        "| real file / split | identities | attributes | distinct vectors (raw) | "
        "distinct (groups) | sharing theirs | alone with theirs | largest class |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, splits in result["real"].items():
        for split, u in splits.items():
            lines.append(
                f"| {name} / {split} | {u['identities']} | {u['columns']} | {u['distinct']} | "
                f"{u['distinct_groups']} | {u['sharing']} | {u['unique']} | {u['largest']} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the real files' folder")
    parser.add_argument("--seeds", type=int, default=30, help="built-in world seeds (spread)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    if not (args.data / REAL_FILES["market1501"]).is_file():
        print(f"{args.data} has no market_attribute.mat: the joint rows are left out.")
    result = run(args.data, args.seeds)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

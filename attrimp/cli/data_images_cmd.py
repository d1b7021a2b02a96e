"""`attrimp data synth` and `attrimp data summary`: the synthetic world and what a dataset holds.

Heavy imports happen inside the commands so `attrimp --help` stays instant. User mistakes raise
`AttrimpError`s, which the CLI prints as one sentence (exit 2).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from attrimp.errors import ConfigError, DataError

console = Console(soft_wrap=True)


def _parse_visibility(items: list[str]) -> dict[str, float] | float:
    """``["hat=0", "upcolor=0.5"]`` -> mapping; a bare number (``["0.5"]``) sets every group."""
    if len(items) == 1 and "=" not in items[0]:
        try:
            return float(items[0])
        except ValueError:
            pass
    out: dict[str, float] = {}
    for item in items:
        group, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[group.strip()] = float(value)
        except ValueError:
            raise ConfigError(
                f"--visibility {item!r} is not GROUP=VALUE (e.g. hat=0.0) or one number for all "
                "groups."
            ) from None
    return out


def _parse_size(text: str) -> tuple[int, int]:
    h, sep, w = text.lower().partition("x")
    try:
        if not sep:
            raise ValueError
        return int(h), int(w)
    except ValueError:
        raise ConfigError(f"--size {text!r} is not HEIGHTxWIDTH (e.g. 128x64).") from None


# the options of `attrimp data synth`, named here so the command reads as its steps
_OUT = typer.Option(..., "--out", help="Folder to write the world into.", show_default=False)
_PRESET = typer.Option(
    None,
    "--preset",
    help="market1501: Market-1501's layout and exact counts (1,501 identities, 6 cameras, "
    "12,936 train / 3,368 query / 15,913 gallery images incl. 2,793 distractors, + 3,819 "
    "junk; 256x128).",
)
_SCALE = typer.Option(
    1.0, "--scale", help="With --preset: keep this fraction of the identities (0-1]."
)
_IDENTITIES = typer.Option(
    None,
    "--identities",
    help="Number of identities, half train \\[default: 80].",
    show_default=False,
)
_CAMERAS = typer.Option(
    None, "--cameras", help="Number of cameras (2-9) \\[default: 4].", show_default=False
)
_IMAGES_PER_CAMERA = typer.Option(
    3, "--images-per-camera", help="Images of each identity in each camera."
)
_SIZE = typer.Option(
    None, "--size", help="Image size HEIGHTxWIDTH \\[default: 128x64].", show_default=False
)
_SEED = typer.Option(0, "--seed", help="Same seed, same bytes.")
_VISIBILITY = typer.Option(
    [],
    "--visibility",
    help="GROUP=VALUE in [0,1], repeatable (0 = invisible in the pixels, still annotated); "
    "or one number for every group.",
)
_PRIORS = typer.Option("market", "--priors", help="market (Market-1501's) or uniform.")
_DISTRACTORS = typer.Option(
    None,
    "--distractors",
    help="Unannotated gallery images (0000) \\[default: 0].",
    show_default=False,
)
_ATTRIBUTES_FILE = typer.Option(
    None,
    "--attributes-file",
    help="A Market-1501 attribute file (market_attribute.mat): draw identities' whole attribute "
    "vectors from it (the joint draw: real correlations and the real identity leak) instead of "
    "group by group from --priors.",
    show_default=False,
)
_FORMAT = typer.Option("jpg", "--format", help="jpg or png.")
_OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing world.")
_WORKERS = typer.Option(
    1, "--workers", min=1, help="Processes drawing images (same bytes for any number)."
)


def synth(
    out: Path = _OUT,
    preset: str | None = _PRESET,
    scale: float = _SCALE,
    identities: int | None = _IDENTITIES,
    cameras: int | None = _CAMERAS,
    images_per_camera: int = _IMAGES_PER_CAMERA,
    size: str | None = _SIZE,
    seed: int = _SEED,
    visibility: list[str] = _VISIBILITY,
    priors: str = _PRIORS,
    distractors: int | None = _DISTRACTORS,
    attributes_file: Path | None = _ATTRIBUTES_FILE,
    image_format: str = _FORMAT,
    overwrite: bool = _OVERWRITE,
    workers: int = _WORKERS,
) -> None:
    """Draw a synthetic pedestrian world in the Market-1501 layout with a planted attribute file.

    Example: attrimp data synth --out runs/world --visibility upcolor=0

    Full size: attrimp data synth --preset market1501 --out runs/market-synth

    With real identities: ... --preset market1501 --attributes-file market_attribute.mat
    """
    from attrimp.data.synth import make_synthetic_world
    from attrimp.io import run_output

    start = time.perf_counter()
    world = _world_shape(preset, scale, images_per_camera, attributes_file)
    # options given beside a preset win over it (e.g. a smaller --size for a quick look)
    for key, value in (
        ("n_identities", identities),
        ("n_cameras", cameras),
        ("size", None if size is None else _parse_size(size)),
        ("distractors", distractors),
    ):
        if value is not None:
            world[key] = value
    vis = _parse_visibility(visibility) if visibility else 1.0
    # the world replaces --out in one rename, so its lock lives beside it
    with run_output(out, replaced_whole=True):
        root = make_synthetic_world(
            out,
            **world,
            images_per_identity_per_camera=images_per_camera,
            seed=seed,
            visibility=vis,
            priors=priors,
            image_format=image_format,
            overwrite=overwrite,
            progress=True,
            workers=workers,
        )
    _print_world(root, time.perf_counter() - start)


def _world_shape(
    preset: str | None, scale: float, images_per_camera: int, attributes_file: Path | None = None
) -> dict:
    """Identities, cameras, image size, distractors and the attribute draw (joint where a file
    is given): the default world's or a preset's."""
    from attrimp.data.synth import preset_world

    if preset is None:
        if scale != 1.0:
            raise ConfigError("--scale applies to a --preset; pass --preset market1501 with it.")
        world = {"n_identities": 80, "n_cameras": 4, "size": (128, 64), "distractors": 0}
        if attributes_file is not None:
            world.update(attributes="joint", attributes_file=attributes_file)
        return world
    if images_per_camera != 3:
        raise ConfigError(
            f"--preset {preset} sets the images of every identity itself; drop --images-per-camera."
        )
    return preset_world(preset, scale, attributes_file=attributes_file)


def _print_world(root: Path, seconds: float) -> None:
    """What was written (from the world's own synth.json) and how long it took."""
    from attrimp.data.synth import DESIGN_FILE

    design = json.loads((root / DESIGN_FILE).read_text(encoding="utf-8"))
    c = design["counts"]
    hidden = {g: v for g, v in design["visibility"].items() if v < 1.0}
    console.print(
        f"Wrote {root}: {design['n_identities']} identities × {design['n_cameras']} cameras, "
        f"{c['train']} train / {c['query']} query / {c['gallery']} gallery images"
        + (f" (+ {c['junk_images']} junk)" if c.get("junk_images") else "")
        + f" in {seconds:.1f} s.",
        highlight=False,
    )
    if hidden:
        console.print(
            "Visibility below 1: " + ", ".join(f"{g}={v:g}" for g, v in hidden.items()),
            highlight=False,
        )
    console.print(f"Attributes: {root / design['attribute_file']}; design: {root / DESIGN_FILE}.")


def summary(
    path: Path = typer.Argument(
        ...,
        help="Dataset folder (market1501/dukemtmc), manifest CSV or a plug-in dataset's path.",
        show_default=False,
    ),
    dataset: str = typer.Option(
        "market1501", "--dataset", help="market1501, dukemtmc, manifest or a plug-in dataset."
    ),
    attributes: Path | None = typer.Option(
        None,
        "--attributes",
        help="Identity-level attribute file (.mat or CSV). Default: the synthetic world's own, "
        "if PATH is one.",
    ),
    schema: Path | None = typer.Option(None, "--schema", help="Schema TOML (manifest)."),
    missing_policy: str = typer.Option(
        "error", "--missing-policy", help="error, or skip (counted) identities without attributes."
    ),
    bad_names: str = typer.Option(
        "error", "--bad-names", help="error, or skip (counted) unparseable file names."
    ),
    verify: bool = typer.Option(False, "--verify", help="Decode every image to find broken ones."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the summary as JSON."),
) -> None:
    """Identities, images, cameras, per-split counts, attribute coverage and warnings.

    Example: attrimp data summary runs/world --verify
    """
    from attrimp.data.summary import summarize, verify_images
    from attrimp.io import atomic_write_json

    data = _load_dataset(path, dataset, attributes, schema, missing_policy, bad_names)
    result = summarize(data)
    if verify:
        paths = [r.path for r in data.all_records()]
        result.bad_images = verify_images(paths, progress=True)
        result.verified = True
    _print(result)
    if json_out is not None:
        atomic_write_json(json_out, result.to_dict())
    if result.bad_images:
        first = result.bad_images[0][0]
        raise DataError(
            f"{len(result.bad_images)} images cannot be decoded (the first: {first!r}); replace "
            "or remove them."
        )


def _load_dataset(
    path: Path,
    dataset: str,
    attributes: Path | None,
    schema: Path | None,
    missing_policy: str,
    bad_names: str,
):
    """The dataset to summarise, opened by its registry entry (a plug-in dataset that supports
    a summary is offered too); a synthetic world brings its own attribute file."""
    from attrimp.data.datasets import DATASETS, dataset_names
    from attrimp.data.synth import DESIGN_FILE

    able = dataset_names(summary=True)
    key = dataset.lower().replace("-", "")
    if key not in able:
        raise ConfigError(f"Unknown dataset {dataset!r}; use {', '.join(able)}.")
    if attributes is None and (path / DESIGN_FILE).is_file():
        design = json.loads((path / DESIGN_FILE).read_text(encoding="utf-8"))
        attributes = path / design.get("attribute_file", "market_attribute.mat")
        console.print(f"Synthetic world: using its attribute file {attributes}.", highlight=False)
    return DATASETS.load(key).open(
        path,
        attributes=attributes,
        schema=schema,
        missing_policy=missing_policy,
        bad_names=bad_names,
    )


def _print(s) -> None:
    title = f"{s.name} at {s.root}" + (
        f" (attributes: {s.attribute_source})" if s.attribute_source else ""
    )
    t = Table(title=title, title_justify="left")
    for col in ("split", "images", "identities", "cameras", "distractor images"):
        t.add_column(col, justify="left" if col == "split" else "right")
    for name, sp in s.splits.items():
        t.add_row(
            name, str(sp.images), str(sp.identities), str(sp.cameras), str(sp.distractor_images)
        )
    t.add_row(
        "all",
        str(sum(sp.images for sp in s.splits.values())),
        str(s.identities),
        str(s.cameras),
        str(sum(sp.distractor_images for sp in s.splits.values())),
        style="bold",
    )
    console.print(t)
    if s.coverage:
        c = Table(
            title=f"Attribute coverage per identity (schema {s.schema})", title_justify="left"
        )
        for col in ("group", "annotated", "unknown", "multiple"):
            c.add_column(col, justify="left" if col == "group" else "right")
        for g, v in s.coverage.items():
            c.add_row(g, str(v["annotated"]), str(v["unknown"]), str(v["multiple"]))
        console.print(c)
    if s.counts:
        console.print(
            "Loader counts: " + ", ".join(f"{k} = {v}" for k, v in sorted(s.counts.items())),
            highlight=False,
        )
    for w in s.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if s.verified:
        if s.bad_images:
            console.print(f"[red]{len(s.bad_images)} images cannot be decoded:[/]")
            for _, reason in s.bad_images[:20]:
                console.print(f"  {reason}", highlight=False)
        else:
            console.print("Every image decodes.")


def register(app: typer.Typer) -> None:
    """Attach `synth` and `summary` to the `attrimp data` group."""
    app.command("synth")(synth)
    app.command("summary")(summary)

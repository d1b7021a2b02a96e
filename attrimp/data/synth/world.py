"""The synthetic world on disk: its layout, its image plan and the files it writes.

`make_synthetic_world` draws every identity (`priors`), renders every image (`render`) and
publishes the folder atomically in Market-1501's layout with its attribute files and design;
`preset_world` / `plan_images` lay out a world shaped like a real dataset;
`world_attributes` / `world_images` give the tables without drawing a pixel.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from attrimp.data.synth.priors import (
    _COLOR_COLUMNS,
    ATTRIBUTE_DRAWS,
    GROUPS,
    MAT_COLUMNS,
    NO_VALUE,
    PRIORS,
    AttributePool,
    IdentityDetail,
    assign_identities,
    draw_attributes,
    draw_camera,
    draw_identity_detail,
    draw_pose,
    load_attribute_pool,
)
from attrimp.data.synth.render import NEUTRAL, render_person
from attrimp.errors import DataError
from attrimp.io import atomic_folder, atomic_write_json

ATTRIBUTE_FILE = "market_attribute.mat"
ATTRIBUTE_CSV = "market_attribute.csv"
DESIGN_FILE = "synth.json"
IMAGE_FORMATS = ("jpg", "png")
_FORMAT_VERSION = 1
#: File-name code of junk images (bad detections), which the standard protocol excludes.
JUNK_PID = -1


@dataclass(frozen=True)
class SplitSizes:
    """Exact image counts, for a world laid out like a real dataset rather than a grid.

    ``gallery`` counts the gallery images of annotated (test) identities; distractors (0000)
    and junk (-1) come on top, from `make_synthetic_world`'s ``distractors`` and ``junk``.
    """

    train_identities: int
    train: int
    query: int
    gallery: int


#: Market-1501 as its authors released it (Zheng et al., ICCV 2015; the counts torchreid and
#: every paper report): 751 train identities / 12,936 images, 750 test identities with 3,368
#: query and 13,120 gallery images, 2,793 distractor (0000) and 3,819 junk (-1) images in
#: bounding_box_test (19,732 files; 15,913 after the protocol drops the junk), 6 cameras.
MARKET1501_FULL = {
    "n_identities": 1501,
    "n_cameras": 6,
    "size": (256, 128),
    "distractors": 2793,
    "junk": 3819,
    "split_sizes": SplitSizes(train_identities=751, train=12936, query=3368, gallery=13120),
}
PRESETS = ("market1501",)


def preset_world(
    name: str, scale: float = 1.0, *, attributes_file: str | Path | None = None
) -> dict:
    """`make_synthetic_world` keyword arguments of a named preset, optionally scaled down.

    With ``attributes_file`` (Market-1501's ``market_attribute.mat``) the preset draws its
    identities jointly from the real file (``attributes="joint"``): at ``scale=1`` its 751 train
    and 750 test identities carry exactly the file's train and test vectors, so the world's
    identity leak is Market's own rather than the larger one of independent draws.

    ``scale`` multiplies the number of identities (and distractors and junk); the images per
    identity stay Market's averages, so a scaled world has Market's shape at a fraction of its
    size (tests use ``scale=0.02``: 30 identities, ~700 images, in seconds). ``scale=1`` gives
    the exact published counts.
    """
    if name not in PRESETS:
        raise DataError(f"Unknown preset {name!r}; the presets are {', '.join(PRESETS)}.")
    if not 0.0 < scale <= 1.0:
        raise DataError(f"The preset scale is {scale}; it must lie in (0, 1].")
    full = MARKET1501_FULL
    sizes: SplitSizes = full["split_sizes"]
    n_ids = max(4, round(full["n_identities"] * scale))
    n_train = min(n_ids - 2, max(2, round(sizes.train_identities * scale)))
    n_test = n_ids - n_train
    full_test = full["n_identities"] - sizes.train_identities
    world = {
        "n_identities": n_ids,
        "n_cameras": full["n_cameras"],
        "size": full["size"],
        "distractors": round(full["distractors"] * scale),
        "junk": round(full["junk"] * scale),
        "split_sizes": SplitSizes(
            train_identities=n_train,
            train=round(sizes.train * n_train / sizes.train_identities),
            query=round(sizes.query * n_test / full_test),
            gallery=round(sizes.gallery * n_test / full_test),
        ),
    }
    if attributes_file is not None:
        world.update(attributes="joint", attributes_file=attributes_file)
    return world


def spread(total: int, n: int) -> list[int]:
    """``total`` split into ``n`` integers that differ by at most one, the larger ones spaced
    evenly (not all first), so identities and cameras share the remainder fairly."""
    base, extra = divmod(total, n)
    return [base + ((i + 1) * extra // n - i * extra // n) for i in range(n)]


def plan_images(
    n_identities: int, n_cameras: int, sizes: SplitSizes
) -> list[tuple[int, int, str, int]]:
    """Where every image of a `SplitSizes` world goes: ``(pid, camera, split, count)`` cells.

    Identities ``1..train_identities`` are training identities. Each identity's images are
    spread evenly over its images per split (`spread`), and each identity appears in a run of
    cameras starting at ``pid % n_cameras``: a training identity in ``min(n_cameras, images)``
    of them; a test identity in ``max(2, queries)`` (at most ``n_cameras``) with one query in
    each of its first ``queries`` cameras (Market's one query per identity and camera) and its
    gallery images spread over all of them, so every query has a match in another camera.
    Pure arithmetic (no image is drawn): a test checks the full preset against Market's counts.
    """
    n_train, n_test = sizes.train_identities, n_identities - sizes.train_identities
    if not 1 <= n_train < n_identities:
        raise DataError(
            f"train_identities {n_train} leaves no train or no test identity of {n_identities}."
        )
    if sizes.train < n_train:
        raise DataError(
            f"{sizes.train} training images cannot give each of {n_train} identities one."
        )
    if not n_test <= sizes.query <= n_test * n_cameras:
        raise DataError(
            f"{sizes.query} query images do not fit {n_test} test identities with one query "
            f"per identity and camera ({n_test} to {n_test * n_cameras} with {n_cameras} cameras)."
        )
    cells: list[tuple[int, int, str, int]] = []
    for i, t in enumerate(spread(sizes.train, n_train)):
        pid = i + 1
        cams = min(n_cameras, t)
        for j, c in enumerate(spread(t, cams)):
            cells.append((pid, (pid + j) % n_cameras, "train", c))
    for i, (q, g) in enumerate(
        zip(spread(sizes.query, n_test), spread(sizes.gallery, n_test), strict=True)
    ):
        pid = n_train + i + 1
        cams = min(n_cameras, max(2, q))
        if g < cams:
            raise DataError(
                f"{sizes.gallery} gallery images are too few for {n_test} test identities: each "
                f"needs one in every camera it is queried from or matched in ({cams})."
            )
        for j, c in enumerate(spread(g, cams)):
            cam = (pid + j) % n_cameras
            if j < q:
                cells.append((pid, cam, "query", 1))
            cells.append((pid, cam, "gallery", c))
    worst = max(c for *_, c in cells)
    if worst > 98:
        raise DataError(
            f"The planned world puts {worst} images of one identity in one camera; file names "
            "hold at most 98: use more identities or cameras."
        )
    return cells


# --- the world -------------------------------------------------------------------------------
def resolve_visibility(visibility: Mapping[str, float] | float) -> dict[str, float]:
    """Every group's visibility in [0, 1]; a float applies to all groups, a mapping to those it
    names (the rest stay 1.0). Unknown group names and values outside [0, 1] are errors."""
    if isinstance(visibility, Mapping):
        unknown = sorted(set(visibility) - set(GROUPS))
        if unknown:
            raise DataError(
                f"The synthetic world has no attribute group {unknown[0]!r}; its groups are "
                f"{', '.join(GROUPS)}."
            )
        out = {g: float(visibility.get(g, 1.0)) for g in GROUPS}
    else:
        out = {g: float(visibility) for g in GROUPS}
    for g, v in out.items():
        if not 0.0 <= v <= 1.0:
            raise DataError(f"The visibility of group {g!r} is {v}; it must lie in [0, 1].")
    return out


def attribute_codes(attributes: Mapping[str, int]) -> dict[str, int]:
    """Group value indices -> the raw Market columns and codes of market_attribute.mat."""
    out: dict[str, int] = {}
    for g, idx in attributes.items():
        if g in _COLOR_COLUMNS:
            for i, col in enumerate(_COLOR_COLUMNS[g]):
                out[col] = 2 if i == idx else 1
        else:
            out[g] = idx + 1
    return out


def make_synthetic_world(
    out: str | Path,
    *,
    n_identities: int = 80,
    n_cameras: int = 4,
    images_per_identity_per_camera: int = 3,
    size: tuple[int, int] = (128, 64),
    seed: int = 0,
    visibility: Mapping[str, float] | float = 1.0,
    priors: str = "market",
    train_fraction: float = 0.5,
    distractors: int = 0,
    junk: int = 0,
    split_sizes: SplitSizes | None = None,
    attributes: str = "independent",
    attributes_file: str | Path | None = None,
    image_format: str = "jpg",
    overwrite: bool = False,
    progress: bool = False,
    workers: int = 1,
) -> Path:
    """Write a synthetic world to ``out`` and return ``out``.

    Identities ``1..n_train`` (``n_train = round(n_identities * train_fraction)``) are the
    training identities, the rest are test identities. Every identity appears in every camera
    with ``images_per_identity_per_camera`` images. For a test identity the first image of each
    camera goes to ``query/`` and the rest to ``bounding_box_test/`` (with one image per camera,
    only the camera ``pid % n_cameras`` contributes a query, so every query has a match in
    another camera). ``distractors`` adds that many unannotated gallery images of identity 0000,
    ``junk`` that many gallery images of identity -1 (bad detections: a person cut by the frame
    edge), which the Market protocol drops.

    ``split_sizes`` replaces the grid by exact per-split counts (`plan_images`; then
    ``train_fraction`` and ``images_per_identity_per_camera`` are not used): `preset_world`
    gives Market-1501's (``attrimp data synth --preset market1501``). ``workers`` > 1 draws the
    images in that many processes (the same bytes: every draw is keyed by the image).
    Every random draw is keyed by ``(seed, what, pid, camera, image)``, so the same arguments
    give the same bytes and changing a visibility changes only that group's pixels.

    ``attributes="joint"`` draws every identity's whole attribute vector from the real
    ``attributes_file`` (Market-1501's; see `assign_identities`) instead of group by group from
    ``priors``; the default ``"independent"`` is the world as it always was, byte for byte.
    """
    out = Path(out)
    plan = _prepare(
        n_identities=n_identities,
        n_cameras=n_cameras,
        images_per_identity_per_camera=images_per_identity_per_camera,
        size=size,
        seed=seed,
        visibility=visibility,
        priors=priors,
        train_fraction=train_fraction,
        distractors=distractors,
        junk=junk,
        split_sizes=split_sizes,
        attributes=attributes,
        attributes_file=attributes_file,
    )
    if image_format not in IMAGE_FORMATS:
        raise DataError(
            f"image_format must be one of {', '.join(IMAGE_FORMATS)}, not {image_format!r}."
        )
    _check_output_folder(out, overwrite)
    # written whole under a temporary name and renamed into place: a killed run never leaves
    # half a world, and an error leaves the old one (if any) as it was
    with atomic_folder(out) as tmp:
        counts = _write_world(tmp, plan, image_format, progress, workers)
        atomic_write_json(tmp / DESIGN_FILE, _design(plan.settings, counts, image_format))
    return out


@dataclass(frozen=True)
class _Plan:
    """Everything a world is before a pixel is drawn: its checked settings, image cells (or
    None for the grid), training identities, joint-draw pool and every identity's vector."""

    settings: dict
    cells: list[tuple[int, int, str, int]] | None
    n_train: int
    pool: AttributePool | None
    by_pid: dict[int, dict[str, int]]


def _prepare(
    *,
    n_identities: int = 80,
    n_cameras: int = 4,
    images_per_identity_per_camera: int = 3,
    size: tuple[int, int] = (128, 64),
    seed: int = 0,
    visibility: Mapping[str, float] | float = 1.0,
    priors: str = "market",
    train_fraction: float = 0.5,
    distractors: int = 0,
    junk: int = 0,
    split_sizes: SplitSizes | None = None,
    attributes: str = "independent",
    attributes_file: str | Path | None = None,
) -> _Plan:
    """Check the arguments of `make_synthetic_world` and draw the identities' attributes (cheap:
    no image), so `world_attributes` and `world_images` see exactly the world it writes."""
    settings = {
        "seed": seed,
        "n_identities": n_identities,
        "n_cameras": n_cameras,
        "images_per_identity_per_camera": images_per_identity_per_camera,
        "size": list(size),
        "priors": priors,
        "train_fraction": train_fraction,
        "distractors": distractors,
        "junk": junk,
        "split_sizes": None if split_sizes is None else vars(split_sizes),
        "visibility": resolve_visibility(visibility),
    }
    _check_args(settings)
    pool = None
    if _check_draw(attributes, attributes_file, priors):
        pool = load_attribute_pool(attributes_file)
        # only a joint world names its draw in synth.json: the default world's file is unchanged
        settings["attributes"] = attributes
        settings["attributes_file"] = str(attributes_file)
        settings["attributes_sha256"] = pool.sha256
    cells = plan_images(n_identities, n_cameras, split_sizes) if split_sizes else None
    n_train = round(n_identities * train_fraction)
    if cells is not None:
        n_train = max(pid for pid, _, split, _ in cells if split == "train")
    if pool is None:
        by_pid = {pid: _identity(seed, priors, pid)[0] for pid in range(1, n_identities + 1)}
    else:
        by_pid = {
            **assign_identities(pool, seed, list(range(1, n_train + 1)), "train"),
            **assign_identities(pool, seed, list(range(n_train + 1, n_identities + 1)), "test"),
        }
    return _Plan(settings, cells, n_train, pool, by_pid)


def _check_draw(attributes: str, attributes_file: str | Path | None, priors: str) -> bool:
    """Whether the world is drawn jointly from a file; one sentence for a contradiction."""
    if attributes not in ATTRIBUTE_DRAWS:
        raise DataError(
            f"attributes must be one of {', '.join(ATTRIBUTE_DRAWS)}, not {attributes!r}."
        )
    if attributes == "independent":
        if attributes_file is not None:
            raise DataError(
                "attributes_file is read only by the joint draw; set attributes to 'joint' to "
                "draw identities from it, or drop it."
            )
        return False
    if attributes_file is None:
        raise DataError(
            "The joint attribute draw needs attributes_file, a Market-1501 attribute file "
            "(market_attribute.mat) to resample identities from."
        )
    if priors != "market":
        raise DataError(
            f"priors={priors!r} applies to the independent draw only; the joint draw takes "
            "its vectors from attributes_file."
        )
    return True


def world_attributes(**world) -> pd.DataFrame:
    """The attribute table a world would write (``pid, split`` and the raw Market columns, as
    market_attribute.csv), without drawing an image. ``world``: `make_synthetic_world`'s
    keyword arguments (a `preset_world` dict, ``seed``, ``attributes``...; image-only ones such
    as ``size`` are accepted and do not matter). For measuring a world's identity leak cheaply."""
    plan = _prepare(**world)
    return _attribute_frame(
        [(pid, "train" if pid <= plan.n_train else "test", a) for pid, a in plan.by_pid.items()]
    )


def world_images(**world) -> pd.DataFrame:
    """Every query and gallery image a world would write, as the Market loader lists them
    (``folder, name, pid, camid`` — camid from 0 —, sorted by name per folder, junk dropped),
    without drawing one: with `world_attributes`, enough to evaluate attribute-only retrieval
    on a Market-size world in seconds. Same keyword arguments as `world_attributes`."""
    plan = _prepare(**world)
    s = plan.settings
    others = None if plan.pool is None else plan.pool.for_split("all")
    jobs = _image_jobs(
        s["n_identities"],
        s["n_cameras"],
        s["images_per_identity_per_camera"],
        plan.n_train,
        s["distractors"],
        0,
        plan.cells,
    )
    rows = []
    for dest, kind, pid, cam, k in jobs:
        if dest == "train":
            continue
        if kind == "distractor":
            cam = _stranger(s["seed"], 5, k, s["priors"], others, s["n_cameras"])[2]
        rows.append((FOLDERS[dest], _image_name(kind, pid, cam, k, "jpg"), pid, cam))
    frame = pd.DataFrame(rows, columns=["folder", "name", "pid", "camid"])
    return frame.sort_values(["folder", "name"], ignore_index=True)


def _image_name(kind: str, pid: int, cam: int, k: int, fmt: str) -> str:
    """The Market-style file name of one image (``k``: its index, see `_image_jobs`)."""
    if kind == "person":
        return f"{pid:04d}_c{cam + 1}s1_{pid * 100 + k:06d}_00.{fmt}"
    if kind == "distractor":
        return f"0000_c{cam + 1}s1_{990000 + k:06d}_00.{fmt}"
    return f"-1_c{cam + 1}s1_{970000 + k:06d}_00.{fmt}"


def _check_output_folder(out: Path, overwrite: bool) -> None:
    """``out`` is absent, empty, or (with ``overwrite``) an earlier synthetic world."""
    if out.exists() and any(out.iterdir()):
        if not (out / DESIGN_FILE).is_file():
            raise DataError(
                f"The output folder {str(out)!r} is not empty and holds no synthetic world; "
                "choose another folder."
            )
        if not overwrite:
            raise DataError(
                f"The output folder {str(out)!r} already holds a synthetic world; pass overwrite "
                "(--overwrite) to replace it."
            )


def _design(settings: dict, counts: dict[str, int], image_format: str) -> dict:
    """``synth.json``: the arguments that planted the world and what it holds."""
    return {
        "format": "attrimp-synth",
        "version": _FORMAT_VERSION,
        "dataset": "market1501",
        "schema": "market1501",
        **settings,
        "neutral": NEUTRAL,
        "counts": counts,
        "attribute_file": ATTRIBUTE_FILE,
        "attribute_csv": ATTRIBUTE_CSV,
        "image_format": image_format,
    }


def load_synthetic_world(root: str | Path):
    """A written world as `ReIDData`, joined to its own attribute file (found via synth.json)."""
    from attrimp.data.market import load_reid_dataset

    root = Path(root)
    design_path = root / DESIGN_FILE
    if not design_path.is_file():
        raise DataError(f"{str(root)!r} is not a synthetic world: it has no {DESIGN_FILE}.")
    design = json.loads(design_path.read_text(encoding="utf-8"))
    return load_reid_dataset(root, "market1501", root / design["attribute_file"])


def _check_args(settings: dict) -> None:
    """One sentence for the first argument of `make_synthetic_world` out of its range."""
    n_ids, n_cams = settings["n_identities"], settings["n_cameras"]
    n_img, size = settings["images_per_identity_per_camera"], settings["size"]
    priors, train_fraction = settings["priors"], settings["train_fraction"]
    distractors, junk = settings["distractors"], settings["junk"]
    if n_ids < 2:
        raise DataError(f"The synthetic world needs at least 2 identities, not {n_ids}.")
    if n_ids > 9999:
        raise DataError(f"Market-style names hold at most 9999 identities, not {n_ids}.")
    if not 2 <= n_cams <= 9:
        raise DataError(f"The synthetic world needs 2 to 9 cameras, not {n_cams}.")
    if not 1 <= n_img <= 99:
        raise DataError(f"images_per_identity_per_camera must be 1..99, not {n_img}.")
    if len(size) != 2 or size[0] < 32 or size[1] < 16:
        raise DataError(f"The image size {tuple(size)} is too small; use at least 32×16 (H×W).")
    if priors not in PRIORS:
        raise DataError(f"priors must be one of {', '.join(PRIORS)}, not {priors!r}.")
    n_train = round(n_ids * train_fraction)
    if not 1 <= n_train < n_ids:
        raise DataError(
            f"train_fraction {train_fraction} leaves no train or no test identity of {n_ids}."
        )
    if not 0 <= distractors <= 9999:
        raise DataError(f"distractors must be 0 to 9999, not {distractors}.")
    if not 0 <= junk <= 9999:
        raise DataError(f"junk must be 0 to 9999, not {junk}.")


def _write_world(
    root: Path, plan: _Plan, fmt: str, progress: bool, workers: int = 1
) -> dict[str, int]:
    """Draw every image and write the attribute files into ``root``; returns the counts."""
    settings, cells, n_train = plan.settings, plan.cells, plan.n_train
    n_ids, n_cams = settings["n_identities"], settings["n_cameras"]
    n_img, size = settings["images_per_identity_per_camera"], tuple(settings["size"])
    seed, vis, priors = settings["seed"], settings["visibility"], settings["priors"]
    distractors, junk = settings["distractors"], settings["junk"]
    for f in FOLDERS.values():
        (root / f).mkdir()
    rows = [(pid, "train" if pid <= n_train else "test", a) for pid, a in plan.by_pid.items()]
    jobs = _image_jobs(n_ids, n_cams, n_img, n_train, distractors, junk, cells)
    counts = {
        "train_identities": n_train,
        "test_identities": n_ids - n_train,
        "train": sum(j[0] == "train" for j in jobs),
        "query": sum(j[0] == "query" for j in jobs),
        "gallery": sum(j[0] == "gallery" for j in jobs),
        "distractor_images": distractors,
        "junk_images": junk,
    }
    others = None if plan.pool is None else plan.pool.for_split("all")
    world = (str(root), seed, n_cams, size, tuple(vis.items()), priors, fmt, plan.by_pid, others)
    chunk = 256
    parts = [(world, jobs[i : i + chunk]) for i in range(0, len(jobs), chunk)]
    with _progress(progress, len(jobs)) as advance:
        if workers <= 1 or len(parts) <= 1:
            for part in parts:
                advance(_draw_images(part))
        else:
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(min(workers, len(parts))) as pool:
                for done in as_completed([pool.submit(_draw_images, p) for p in parts]):
                    advance(done.result())
    _write_attribute_files(root, _attribute_frame(rows))
    return counts


#: the split folders of the Market layout
FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def _image_jobs(n_ids, n_cams, n_img, n_train, distractors, junk, cells) -> list[tuple]:
    """Every image to draw as ``(dest, kind, pid, camera, k)``; kind: person / distractor /
    junk (for those two, ``k`` is the image's index among them and ``camera`` is drawn)."""
    jobs: list[tuple] = []
    if cells is not None:
        for pid, cam, dest, count in cells:
            # the query is image 0 of its camera, gallery images 1..count
            first = 0 if dest in ("train", "query") else 1
            jobs += [(dest, "person", pid, cam, k) for k in range(first, first + count)]
    else:
        for pid in range(1, n_ids + 1):
            for cam in range(n_cams):
                for k in range(n_img):
                    if pid <= n_train:
                        dest = "train"
                    elif n_img > 1:
                        dest = "query" if k == 0 else "gallery"
                    else:
                        dest = "query" if cam == pid % n_cams else "gallery"
                    jobs.append((dest, "person", pid, cam, k))
    jobs += [("gallery", "distractor", 0, None, i) for i in range(distractors)]
    jobs += [("junk", "junk", -1, None, i) for i in range(junk)]
    return jobs


@functools.lru_cache(maxsize=4096)
def _identity(seed: int, priors: str, pid: int) -> tuple[dict[str, int], IdentityDetail]:
    return (
        draw_attributes(np.random.default_rng([seed, 0, pid]), priors),
        draw_identity_detail(np.random.default_rng([seed, 1, pid])),
    )


def _stranger(
    seed: int,
    what: int,
    k: int,
    priors: str,
    others: tuple[dict[str, int], ...] | None,
    n_cams: int,
) -> tuple[dict[str, int], IdentityDetail, int, np.random.Generator]:
    """A distractor's (``what=5``) or junk image's (6) person and camera, and the generator to
    go on drawing from; under the joint draw the person is a random real vector of ``others``."""
    rng = np.random.default_rng([seed, what, k])
    if others is None:
        attrs = draw_attributes(rng, priors)
    else:
        attrs = dict(others[int(rng.integers(len(others)))])
    detail = draw_identity_detail(rng)
    return attrs, detail, int(rng.integers(n_cams)), rng


def _draw_images(part) -> int:
    """Draw and save one chunk of jobs (in this process or a worker): every draw is keyed by
    the job, so the bytes do not depend on how the jobs are split between workers."""
    (root, seed, n_cams, size, vis_items, priors, fmt, by_pid, others), jobs = part
    root, vis, groups = Path(root), dict(vis_items), list(GROUPS)
    cameras = [draw_camera(np.random.default_rng([seed, 2, c])) for c in range(n_cams)]
    for dest, kind, pid, cam, k in jobs:
        if kind == "person":
            attrs, detail = by_pid[pid], _identity(seed, priors, pid)[1]
            rng = np.random.default_rng([seed, 3, pid, cam, k])
            pose = draw_pose(rng)
            u = rng.random(len(groups))
            visible = {g: bool(u[i] < vis[g]) for i, g in enumerate(groups)}
        elif kind == "distractor":
            attrs, detail, cam, _ = _stranger(seed, 5, k, priors, others, n_cams)
            rng = np.random.default_rng([seed, 3, 0, cam, k])
            pose = draw_pose(rng)
            u = rng.random(len(groups))
            visible = {g: bool(u[i] < vis[g]) for i, g in enumerate(groups)}
        else:  # junk: a bad detection, the person half out of the box as in Market's junk
            attrs, detail, cam, rng = _stranger(seed, 6, k, priors, others, n_cams)
            pose = replace(draw_pose(rng), dx=float(rng.choice([-0.45, 0.45])))
            visible = dict.fromkeys(groups, True)
        # a colour the real file leaves unmarked is drawn neutral: a colour not on the list
        visible.update({g: False for g, v in attrs.items() if v == NO_VALUE})
        name = _image_name(kind, pid, cam, k, fmt)
        arr = render_person(attrs, detail, pose, cameras[cam], visible, size)
        _save(arr, root / FOLDERS["gallery" if dest == "junk" else dest] / name)
    return len(jobs)


def _save(arr: np.ndarray, path: Path) -> None:
    # JPEG (as Market ships) encodes ~10x faster than PNG at this size and is byte-stable for a
    # given Pillow build; PNG is lossless when exact pixels matter more than speed.
    if path.suffix == ".png":
        Image.fromarray(arr).save(path, format="PNG", compress_level=1)
    else:
        Image.fromarray(arr).save(path, format="JPEG", quality=95)


class _progress:
    """A rich progress bar when asked for, a no-op otherwise (tests, library use)."""

    def __init__(self, show: bool, total: int) -> None:
        self.show, self.total, self._bar = show, total, None

    def __enter__(self):
        if not self.show:
            return lambda n=1: None
        from attrimp.progress import progress_bar

        self._bar = progress_bar(True)
        self._bar.__enter__()
        task = self._bar.add_task("drawing the synthetic world", total=self.total)
        return lambda n=1: self._bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _attribute_frame(rows: list[tuple[int, str, dict[str, int]]]) -> pd.DataFrame:
    """``pid, split`` and the raw Market columns of each identity, in the released coding."""
    return pd.DataFrame(
        [{"pid": pid, "split": split, **attribute_codes(attrs)} for pid, split, attrs in rows]
    )[["pid", "split", *MAT_COLUMNS]]


def _write_attribute_files(root: Path, table: pd.DataFrame) -> None:
    from scipy.io import savemat

    table.to_csv(root / ATTRIBUTE_CSV, index=False, lineterminator="\n")
    struct = {}
    for split in ("train", "test"):
        part = table[table["split"] == split]
        fields: dict[str, np.ndarray] = {
            c: part[c].to_numpy(np.uint8).reshape(1, -1) for c in MAT_COLUMNS
        }
        index = np.empty((1, len(part)), dtype=object)
        for i, pid in enumerate(part["pid"]):
            index[0, i] = f"{pid:04d}"
        fields["image_index"] = index
        struct[split] = fields
    buf = io.BytesIO()
    savemat(buf, {"market_attribute": struct}, do_compression=False, oned_as="row")
    raw = bytearray(buf.getvalue())
    # The MAT header's 116 text bytes carry a creation time; fix them for same-seed-same-bytes.
    raw[:116] = b"MATLAB 5.0 MAT-file, written by attrimp synthetic world".ljust(116)
    (root / ATTRIBUTE_FILE).write_bytes(bytes(raw))

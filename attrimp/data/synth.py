"""The synthetic world: pedestrian-like images with planted, controllable attributes.

Why it exists: tests and the built-in study need a ReID dataset that is small, fast, free to
redistribute and whose truth is known — in particular, an attribute that is *annotated* but not
*visible* in the pixels, so a study can check that such an attribute comes out as important (the
expert carries information the image lacks).

What is drawn (``render_person``), per image of 128×64 by default:
- a person — head, hair (short / long), optional hat, torso in the upper colour with sleeves
  (short / long), lower body as pants or a dress, short or long, in the lower colour, shoes,
  backpack / shoulder bag / handbag shapes; gender shows in body proportions (shoulders vs hips),
  age in height, head size, grey hair and a stoop;
- identity-specific detail so identities are not defined by attributes alone: skin tone, hair
  and shoe colour, a small torso pattern (stripe / logo / dots / none), body width and height,
  accessory colours and a slight shade shift of the clothing colours;
- the camera: background colour and floor, light gain and colour cast, noise, optional blur;
- per image: position and scale jitter, walking phase (legs, arms), front or back view, clutter.

Attributes are drawn per identity, independently across groups, from Market-1501's priors
(`MARKET_PRIORS`, embedded so the package never needs the real file; a test checks it against
``../shared/data/market_attribute.mat``) or uniformly (``priors="uniform"``, for balanced designs).
Independent draws are deliberate: the real file's correlations (e.g. long hair with female) would
confound a planted-importance design. Annotations are then always complete (no "unknown").

The price is an identity leak larger than real data's: independent vectors are more unique than
real ones (Market-1501's 750 test identities carry only 484 distinct vectors), so an oracle router
handing the model the annotation tells it more about who the person is than it would on real data.
``attributes="joint"`` with ``attributes_file`` (a Market-1501 attribute file) instead resamples
real identities' whole vectors (`AttributePool`, `assign_identities`): train identities from the
file's train split, test identities from its test split, without replacement while the split lasts,
so correlations and uniqueness are the file's. A colour group the file leaves unmarked stays
unmarked in the world's file (code 1 in every colour column, as in the real file) and is drawn in
its neutral colour, "a colour not on the list". `attribute_uniqueness` measures the leak.

Visibility: each attribute group has a visibility ``v`` in [0, 1]. For every image and group a
uniform number ``u`` is drawn (always, so changing one group's visibility changes no other pixel);
if ``u < v`` the true value is drawn, otherwise the group's *neutral* rendering (`NEUTRAL`), the
same for every identity. ``v = 0``: the attribute never shows in the pixels while the annotation
keeps its true value; ``v = 1``: always shows.

Output, in the Market-1501 layout so the same loaders read it: ``bounding_box_train/``,
``query/``, ``bounding_box_test/`` with names ``PPPP_cCs1_FFFFFF_00.jpg`` (or ``.png``);
``market_attribute.mat`` (the released file's struct layout and coding: 1 = no / first value,
2 = yes / second, age 1..4), ``market_attribute.csv`` (``pid, split`` + the same raw columns) and ``synth.json`` (the planted
design). Same arguments, same bytes on a given Pillow/scipy build (the .mat header's timestamp
is fixed).
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
from PIL import Image, ImageDraw

from attrimp.errors import DataError
from attrimp.io import atomic_folder, atomic_write_json

# --- Market-1501 priors ---------------------------------------------------------------------
#: P(code) of every raw column of market_attribute.mat over all 1,501 identities (train + test),
#: rounded to 4 decimals. Codes: 1 = no / first value, 2 = yes / second value; age 1..4. For the
#: colour columns, 1 - P(2) includes identities with no colour marked (147 upper, 74 lower).
MARKET_PRIORS: dict[str, dict[int, float]] = {
    "gender": {1: 0.5630, 2: 0.4370},
    "hair": {1: 0.6536, 2: 0.3464},
    "up": {1: 0.0560, 2: 0.9440},
    "down": {1: 0.3704, 2: 0.6296},
    "clothes": {1: 0.1299, 2: 0.8701},
    "hat": {1: 0.9714, 2: 0.0286},
    "backpack": {1: 0.7428, 2: 0.2572},
    "bag": {1: 0.7535, 2: 0.2465},
    "handbag": {1: 0.8921, 2: 0.1079},
    "age": {1: 0.0107, 2: 0.8055, 3: 0.1752, 4: 0.0087},
    "upblack": {1: 0.8521, 2: 0.1479},
    "upwhite": {1: 0.7095, 2: 0.2905},
    "upred": {1: 0.8974, 2: 0.1026},
    "uppurple": {1: 0.9640, 2: 0.0360},
    "upyellow": {1: 0.9354, 2: 0.0646},
    "upgray": {1: 0.8721, 2: 0.1279},
    "upblue": {1: 0.9347, 2: 0.0653},
    "upgreen": {1: 0.9327, 2: 0.0673},
    "downblack": {1: 0.6136, 2: 0.3864},
    "downwhite": {1: 0.9280, 2: 0.0720},
    "downpink": {1: 0.9674, 2: 0.0326},
    "downpurple": {1: 0.9987, 2: 0.0013},
    "downyellow": {1: 0.9927, 2: 0.0073},
    "downgray": {1: 0.8341, 2: 0.1659},
    "downblue": {1: 0.8155, 2: 0.1845},
    "downgreen": {1: 0.9773, 2: 0.0227},
    "downbrown": {1: 0.9221, 2: 0.0779},
}

#: Raw columns in the order of the released .mat struct (kept so our file reads like theirs).
MAT_COLUMNS = [
    "age",
    "backpack",
    "bag",
    "handbag",
    "downblack",
    "downblue",
    "downbrown",
    "downgray",
    "downgreen",
    "downpink",
    "downpurple",
    "downwhite",
    "downyellow",
    "upblack",
    "upblue",
    "upgreen",
    "upgray",
    "uppurple",
    "upred",
    "upwhite",
    "upyellow",
    "clothes",
    "down",
    "up",
    "hair",
    "hat",
    "gender",
]

# Market-1501 groups, values in schema order (see attrimp/schemas/market1501.toml).
GROUPS: dict[str, tuple[str, ...]] = {
    "gender": ("male", "female"),
    "hair": ("short", "long"),
    "up": ("long", "short"),
    "down": ("long", "short"),
    "clothes": ("dress", "pants"),
    "hat": ("no", "yes"),
    "backpack": ("no", "yes"),
    "bag": ("no", "yes"),
    "handbag": ("no", "yes"),
    "age": ("young", "teenager", "adult", "old"),
    "upcolor": ("black", "white", "red", "purple", "yellow", "gray", "blue", "green"),
    "downcolor": ("black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown"),
}
_COLOR_COLUMNS = {
    g: tuple(("up" if g == "upcolor" else "down") + v for v in GROUPS[g])
    for g in ("upcolor", "downcolor")
}

#: What an invisible group looks like: one fixed rendering for every identity.
NEUTRAL: dict[str, str] = {
    "gender": "proportions halfway between the male and female body",
    "hair": "chin-length hair",
    "up": "sleeves to the elbow",
    "down": "lower clothing to mid-calf",
    "clothes": "pants",
    "hat": "no hat",
    "backpack": "no backpack",
    "bag": "no shoulder bag",
    "handbag": "no handbag",
    "age": "adult height and head, own hair colour, upright",
    "upcolor": "khaki (160, 150, 120)",
    "downcolor": "khaki (160, 150, 120)",
}
_NEUTRAL_COLOR = np.array([160, 150, 120])

PALETTE = {
    "black": (28, 28, 32),
    "white": (236, 236, 230),
    "red": (200, 32, 36),
    "purple": (118, 50, 150),
    "yellow": (230, 208, 40),
    "gray": (128, 128, 128),
    "blue": (40, 72, 190),
    "green": (40, 150, 62),
    "pink": (236, 140, 182),
    "brown": (120, 76, 36),
}

ATTRIBUTE_FILE = "market_attribute.mat"
ATTRIBUTE_CSV = "market_attribute.csv"
DESIGN_FILE = "synth.json"
PRIORS = ("market", "uniform")
#: how identities' attribute vectors are drawn: per group from the priors, or whole real vectors
ATTRIBUTE_DRAWS = ("independent", "joint")
#: group value index of a colour group the real file leaves unmarked (joint draw only)
NO_VALUE = -1
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


# --- the planted quantities ------------------------------------------------------------------
@dataclass(frozen=True)
class IdentityDetail:
    """What makes an identity itself beyond its attributes."""

    skin: tuple[int, int, int]
    hair_color: tuple[int, int, int]
    shoe_color: tuple[int, int, int]
    accessory_color: tuple[int, int, int]
    hat_color: tuple[int, int, int]
    shade: tuple[int, int, int]  # added to both clothing colours
    pattern: str  # none / stripe / logo / dots
    pattern_color: tuple[int, int, int]
    pattern_pos: float  # 0..1 down the torso
    width: float
    height: float


@dataclass(frozen=True)
class Camera:
    background: tuple[int, int, int]
    floor: tuple[int, int, int]
    gain: float
    cast: tuple[float, float, float]
    noise: float
    blur: bool


@dataclass(frozen=True)
class Pose:
    dx: float  # fraction of width
    dy: float  # fraction of height
    scale: float
    phase: float  # walking phase, -1..1
    back: bool  # seen from behind
    clutter: tuple[tuple[float, float, float, float, int], ...]  # x0, y0, x1, y1, shade
    light: float  # per-image gain jitter
    noise_index: int


def _color(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(lo, hi, size=3))


def draw_attributes(rng: np.random.Generator, priors: str = "market") -> dict[str, int]:
    """One identity's attributes: group -> index into ``GROUPS[group]``."""
    out: dict[str, int] = {}
    for g, values in GROUPS.items():
        if priors == "uniform":
            out[g] = int(rng.integers(len(values)))
            continue
        if g in _COLOR_COLUMNS:
            p = np.array([MARKET_PRIORS[c][2] for c in _COLOR_COLUMNS[g]])
        else:
            p = np.array([MARKET_PRIORS[g][code] for code in sorted(MARKET_PRIORS[g])])
        out[g] = int(rng.choice(len(values), p=p / p.sum()))
    return out


def draw_identity_detail(rng: np.random.Generator) -> IdentityDetail:
    tone = rng.uniform(0.0, 1.0)
    skin = tuple(int(a + (b - a) * tone) for a, b in zip((236, 200, 170), (110, 72, 48)))
    hair = [(20, 16, 14), (60, 38, 22), (104, 70, 40), (180, 150, 90)][int(rng.integers(4))]
    return IdentityDetail(
        skin=skin,
        hair_color=hair,
        shoe_color=_color(rng, 0, 200),
        accessory_color=_color(rng, 20, 200),
        hat_color=_color(rng, 20, 230),
        shade=tuple(int(s) for s in rng.integers(-14, 15, size=3)),
        pattern=("none", "stripe", "logo", "dots")[int(rng.integers(4))],
        pattern_color=_color(rng),
        pattern_pos=float(rng.uniform(0.2, 0.7)),
        width=float(rng.uniform(0.9, 1.1)),
        height=float(rng.uniform(0.95, 1.03)),
    )


def draw_camera(rng: np.random.Generator) -> Camera:
    return Camera(
        background=_color(rng, 40, 220),
        floor=_color(rng, 40, 200),
        gain=float(rng.uniform(0.7, 1.2)),
        cast=tuple(float(c) for c in rng.uniform(0.88, 1.12, size=3)),
        noise=float(rng.uniform(2.0, 7.0)),
        blur=bool(rng.random() < 0.35),
    )


def draw_pose(rng: np.random.Generator) -> Pose:
    clutter = []
    for _ in range(int(rng.integers(1, 4))):
        x0, x1 = sorted(rng.uniform(0, 1, 2))
        y0, y1 = sorted(rng.uniform(0, 1, 2))
        clutter.append((float(x0), float(y0), float(x1), float(y1), int(rng.integers(-40, 41))))
    return Pose(
        dx=float(rng.uniform(-0.06, 0.06)),
        dy=float(rng.uniform(-0.025, 0.025)),
        scale=float(rng.uniform(0.92, 1.04)),
        phase=float(rng.uniform(-1, 1)),
        back=bool(rng.random() < 0.5),
        clutter=tuple(clutter),
        light=float(rng.uniform(0.95, 1.05)),
        noise_index=int(rng.integers(2**31)),
    )


# --- the joint draw: real identities' whole vectors ------------------------------------------
@dataclass(frozen=True)
class AttributePool:
    """Real identities' attribute vectors (group -> value index, `NO_VALUE` for an unmarked
    colour group), per split of the file they come from (``train`` / ``test``, or ``all`` for a
    file without splits). ``sha256`` pins the file in the world's synth.json."""

    source: str
    sha256: str
    splits: Mapping[str, tuple[dict[str, int], ...]]

    def for_split(self, split: str) -> tuple[dict[str, int], ...]:
        """The vectors a world's ``split`` identities are drawn from: the same split of the
        file, or all of it when the file has no splits or lacks that one."""
        if split in self.splits:
            return self.splits[split]
        return tuple(v for part in self.splits.values() for v in part)


def load_attribute_pool(path: str | Path) -> AttributePool:
    """Read a Market-1501 attribute file (the released ``.mat`` or a CSV in its columns) as the
    pool of the joint draw. The world is drawn in the Market-1501 schema, so another dataset's
    file is refused in one sentence rather than mapped column by column by guesswork."""
    from attrimp.data.annotations import load_attribute_file
    from attrimp.errors import SchemaError
    from attrimp.io import sha256_file

    try:
        table = load_attribute_file(path, "market1501")
    except SchemaError as e:
        raise DataError(
            f"{str(e).rstrip('.')}; the synthetic world follows the market1501 schema, so its "
            "joint draw needs a Market-1501 attribute file."
        ) from None
    frame = table.frame
    splits = {
        split: tuple(_groups_of_row(row, table.source) for row in part.to_dict("records"))
        for split, part in frame.groupby("split", sort=True)
    }
    return AttributePool(table.source, sha256_file(Path(path)), splits)


def _groups_of_row(row: Mapping[str, int], source: str) -> dict[str, int]:
    """One file row's raw codes as the world's group value indices (inverse of
    `attribute_codes`); several colours marked has no single rendering and is refused."""
    out: dict[str, int] = {}
    for g in GROUPS:
        if g not in _COLOR_COLUMNS:
            out[g] = int(row[g]) - 1
            continue
        marked = [i for i, col in enumerate(_COLOR_COLUMNS[g]) if int(row[col]) == 2]
        if len(marked) > 1:
            raise DataError(
                f"{source}: identity {row['pid']} has several {g} values marked, and the "
                "synthetic world draws one colour per group."
            )
        out[g] = marked[0] if marked else NO_VALUE
    return out


def assign_identities(
    pool: AttributePool, seed: int, pids: list[int], split: str
) -> dict[int, dict[str, int]]:
    """Each of ``pids`` (one split of the world, in order) gets a real vector of the pool's
    same split: a seeded permutation of that split's rows, started again when the world has
    more identities than the file (so no vector repeats before every one has been used, and a
    world as large as the file carries exactly its vectors, with its uniqueness)."""
    rows = pool.for_split(split)
    rng = np.random.default_rng([seed, 7, SPLIT_KEYS[split]])
    reps = -(-len(pids) // len(rows))
    order = np.concatenate([rng.permutation(len(rows)) for _ in range(reps)])
    return {pid: dict(rows[int(i)]) for pid, i in zip(pids, order)}


#: the key of each split's permutation in `assign_identities`
SPLIT_KEYS = {"train": 0, "test": 1}


@dataclass(frozen=True)
class Uniqueness:
    """How well attribute vectors single out identities (the identity leak of an oracle)."""

    identities: int
    #: distinct vectors among them
    distinct: int
    #: identities whose vector at least one other identity carries too
    sharing: int
    #: identities whose vector is theirs alone: the annotation names them
    unique: int
    #: identities carrying the most common vector
    largest: int

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def attribute_uniqueness(vectors: pd.DataFrame) -> Uniqueness:
    """Uniqueness of one row per identity (columns: the attributes, any coding; compare raw
    columns or decoded groups as the question needs). An identity alone with its vector is one
    the annotation identifies by itself, whatever the image shows."""
    if len(vectors) == 0:
        return Uniqueness(0, 0, 0, 0, 0)
    sizes = vectors.astype(str).value_counts(dropna=False)
    return Uniqueness(
        identities=len(vectors),
        distinct=len(sizes),
        sharing=int(sizes[sizes > 1].sum()),
        unique=int((sizes == 1).sum()),
        largest=int(sizes.max()),
    )


# --- drawing ---------------------------------------------------------------------------------
def _shade(color, shift) -> tuple[int, int, int]:
    return tuple(min(255, max(0, int(c) + int(s))) for c, s in zip(color, shift))


def render_person(
    attributes: Mapping[str, int],
    detail: IdentityDetail,
    pose: Pose,
    camera: Camera,
    visible: Mapping[str, bool],
    size: tuple[int, int] = (128, 64),
) -> np.ndarray:
    """Draw one image, ``uint8 [H, W, 3]``. A group with ``visible[g] == False`` is drawn in its
    neutral form, so the result does not depend on ``attributes[g]`` at all.

    The layers are painted back to front, each by its own function: background, what hangs
    behind the body, legs, lower clothing, arms, torso, what is carried, head; then the camera.
    """
    H, W = size
    look = _look(attributes, detail, visible)
    img = _background(camera, pose, H, W)
    d = ImageDraw.Draw(img)
    body = _body(look, detail, pose, H, W)
    _draw_behind(d, body, look, detail, pose)
    _draw_legs(d, body, detail)
    _draw_lower_clothing(d, body, look)
    _draw_arms(d, body, look, detail)
    _draw_torso(d, body, look, detail)
    _draw_carried(d, body, look, detail, pose)
    _draw_head(d, body, look, detail, pose)
    return _through_camera(img, camera, pose, H, W)


@dataclass(frozen=True)
class _Look:
    """What one image shows of the attributes: each group's value (None = its neutral form)
    and the colours that follow from them."""

    value: dict[str, str | None]
    up_rgb: tuple[int, int, int]
    down_rgb: tuple[int, int, int]
    hair_rgb: tuple[int, int, int]

    @property
    def clothes(self) -> str:
        return self.value["clothes"] or "pants"

    @property
    def age(self) -> str:
        return self.value["age"] or "adult"

    def has(self, group: str) -> bool:
        return self.value[group] == "yes"


def _look(
    attributes: Mapping[str, int], detail: IdentityDetail, visible: Mapping[str, bool]
) -> _Look:
    value = {g: GROUPS[g][attributes[g]] if visible.get(g, True) else None for g in GROUPS}
    upc, downc = value["upcolor"], value["downcolor"]
    age = value["age"] or "adult"
    return _Look(
        value=value,
        up_rgb=_shade(PALETTE[upc] if upc else _NEUTRAL_COLOR, detail.shade),
        down_rgb=_shade(PALETTE[downc] if downc else _NEUTRAL_COLOR, detail.shade),
        hair_rgb=(170, 170, 172) if age == "old" else detail.hair_color,
    )


def _background(camera: Camera, pose: Pose, H: int, W: int) -> Image.Image:
    """The camera colour with a vertical gradient, a floor band and per-image clutter."""
    rows = np.linspace(1.15, 0.85, H, dtype=np.float32)[:, None, None]
    bg = np.empty((H, W, 3), dtype=np.uint8)
    bg[:] = np.minimum(np.asarray(camera.background, np.float32) * rows, 255)
    bg[int(H * 0.82) :] = camera.floor
    img = Image.fromarray(bg)
    d = ImageDraw.Draw(img)
    for x0, y0, x1, y1, s in pose.clutter:
        base = camera.floor if y0 > 0.82 else camera.background
        d.rectangle((x0 * W, y0 * H, x1 * W, y1 * H), fill=_shade(base, (s, s, s)))
    return img


@dataclass(frozen=True)
class _Body:
    """The body geometry of one image, in pixels (see `_body`)."""

    h: float  # height
    cx: float  # centre line
    feet: float
    top: float
    shoulder: float  # half-widths
    hip: float
    stoop: float
    y_head1: float  # bottom of the head
    y_sh: float  # shoulders
    y_waist: float
    y_knee: float
    y_ankle: float
    leg_w: float
    spread: float  # walking: how far the feet and hands swing
    hx: float  # head centre
    head_r: float
    hair_len: float  # how far long hair falls below the head, as a fraction of h


def _body(look: _Look, detail: IdentityDetail, pose: Pose, H: int, W: int) -> _Body:
    """Age sets height and head size; gender sets shoulders vs hips; the pose moves, scales
    and swings it."""
    age, gender = look.age, look.value["gender"]
    age_scale = {"young": 0.72, "teenager": 0.88, "adult": 1.0, "old": 0.96}[age]
    head_frac = {"young": 0.17, "teenager": 0.145, "adult": 0.13, "old": 0.13}[age]
    h = H * 0.86 * pose.scale * age_scale * detail.height
    cx = W / 2 + pose.dx * W
    feet = H * 0.95 + pose.dy * H
    top = feet - h
    stoop = h * 0.03 if age == "old" else 0.0
    y_head1 = top + h * head_frac
    return _Body(
        h=h,
        cx=cx,
        feet=feet,
        top=top,
        shoulder=h * 0.135 * detail.width * {"male": 1.12, "female": 0.86, None: 0.99}[gender],
        hip=h * 0.10 * detail.width * {"male": 0.9, "female": 1.12, None: 1.01}[gender],
        stoop=stoop,
        y_head1=y_head1,
        y_sh=y_head1 + h * 0.03,
        y_waist=top + h * 0.52,
        y_knee=top + h * 0.74,
        y_ankle=feet - h * 0.03,
        leg_w=h * 0.05,
        spread=pose.phase * h * 0.06,
        hx=cx + stoop,
        head_r=h * head_frac / 2,
        hair_len={"short": 0.0, "long": 0.16, None: 0.05}[look.value["hair"]],
    )


def _poly(d: ImageDraw.ImageDraw, points, fill) -> None:
    d.polygon([(float(x), float(y)) for x, y in points], fill=fill)


def _between(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _draw_behind(
    d: ImageDraw.ImageDraw, b: _Body, look: _Look, detail: IdentityDetail, pose: Pose
) -> None:
    """In front view: a backpack's sides sticking out behind the torso, long hair falling
    behind the shoulders."""
    h = b.h
    if look.has("backpack") and not pose.back:
        d.rounded_rectangle(
            (
                b.cx - b.shoulder * 1.12,
                b.y_sh + h * 0.02,
                b.cx + b.shoulder * 1.12,
                b.y_waist - h * 0.04,
            ),
            radius=2,
            fill=detail.accessory_color,
        )
    if b.hair_len > 0 and not pose.back:
        d.rectangle(
            (
                b.hx - b.head_r * 1.3,
                b.y_head1 - b.head_r,
                b.hx + b.head_r * 1.3,
                b.y_head1 + h * b.hair_len,
            ),
            fill=look.hair_rgb,
        )


def _draw_legs(d: ImageDraw.ImageDraw, b: _Body, detail: IdentityDetail) -> None:
    """Bare legs (skin) and shoes; the lower clothing is drawn over them."""
    for side in (-1, 1):
        x_hip = b.cx + side * b.hip * 0.5
        x_foot = x_hip + side * abs(b.spread) * 0.5
        _poly(
            d,
            [
                (x_hip - b.leg_w / 2, b.y_waist),
                (x_hip + b.leg_w / 2, b.y_waist),
                (x_foot + b.leg_w / 2, b.y_ankle),
                (x_foot - b.leg_w / 2, b.y_ankle),
            ],
            detail.skin,
        )
        d.ellipse(
            (x_foot - b.leg_w * 0.8, b.y_ankle - 1, x_foot + b.leg_w * 0.9, b.feet + 1),
            fill=detail.shoe_color,
        )


def _draw_lower_clothing(d: ImageDraw.ImageDraw, b: _Body, look: _Look) -> None:
    """A flared dress, or two trouser legs, down to the hem the ``down`` length sets."""
    hem = {
        "long": b.y_ankle - b.h * 0.01,
        "short": b.y_knee,
        None: _between(b.y_knee, b.y_ankle, 0.5),
    }[look.value["down"]]
    if look.clothes == "dress":
        flare = b.hip * 0.6 + (hem - b.y_waist) * 0.35
        _poly(
            d,
            [
                (b.cx - b.hip, b.y_waist),
                (b.cx + b.hip, b.y_waist),
                (b.cx + flare + b.hip * 0.4, hem),
                (b.cx - flare - b.hip * 0.4, hem),
            ],
            look.down_rgb,
        )
        return
    t = (hem - b.y_waist) / (b.y_ankle - b.y_waist)
    for side in (-1, 1):
        x_hip = b.cx + side * b.hip * 0.5
        x_foot = x_hip + side * abs(b.spread) * 0.5
        x_hem = _between(x_hip, x_foot, t)
        w = b.leg_w * 0.65
        _poly(
            d,
            [
                (x_hip - w - b.hip * 0.3, b.y_waist),
                (x_hip + w + b.hip * 0.3, b.y_waist),
                (x_hem + w, hem),
                (x_hem - w, hem),
            ],
            look.down_rgb,
        )


def _draw_arms(d: ImageDraw.ImageDraw, b: _Body, look: _Look, detail: IdentityDetail) -> None:
    """Each arm in skin, its sleeve in the upper colour (long sleeves reach the wrist), the
    hand, and a handbag hanging from the right hand."""
    h = b.h
    y_hand = b.y_waist + h * 0.04
    sleeve = {"long": 1.0, "short": 0.3, None: 0.5}[look.value["up"]]
    for side in (-1, 1):
        x_sh = b.cx + side * b.shoulder
        x_hand = x_sh + side * h * 0.015 + b.spread * 0.3
        arm_w = h * 0.045
        y_sl = _between(b.y_sh, y_hand, sleeve)
        x_sl = _between(x_sh, x_hand, sleeve)
        _poly(
            d,
            [
                (x_sh - arm_w, b.y_sh),
                (x_sh + arm_w, b.y_sh),
                (x_hand + arm_w * 0.8, y_hand),
                (x_hand - arm_w * 0.8, y_hand),
            ],
            detail.skin,
        )
        _poly(
            d,
            [
                (x_sh - arm_w * 1.1, b.y_sh),
                (x_sh + arm_w * 1.1, b.y_sh),
                (x_sl + arm_w, y_sl),
                (x_sl - arm_w, y_sl),
            ],
            look.up_rgb,
        )
        d.ellipse(
            (x_hand - arm_w, y_hand - arm_w, x_hand + arm_w, y_hand + arm_w), fill=detail.skin
        )
        if side == 1 and look.has("handbag"):
            d.rectangle(
                (x_hand - h * 0.05, y_hand + arm_w, x_hand + h * 0.05, y_hand + h * 0.11),
                fill=detail.accessory_color,
            )


def _draw_torso(d: ImageDraw.ImageDraw, b: _Body, look: _Look, detail: IdentityDetail) -> None:
    """The torso in the upper colour with the identity's pattern (stripe, logo or dots)."""
    h, cx, hip = b.h, b.cx, b.hip
    _poly(
        d,
        [
            (cx - b.shoulder + b.stoop, b.y_sh),
            (cx + b.shoulder + b.stoop, b.y_sh),
            (cx + hip, b.y_waist),
            (cx - hip, b.y_waist),
        ],
        look.up_rgb,
    )
    py = _between(b.y_sh, b.y_waist, detail.pattern_pos)
    if detail.pattern == "stripe":
        d.rectangle(
            (cx - hip * 0.95, py - h * 0.012, cx + hip * 0.95, py + h * 0.012),
            fill=detail.pattern_color,
        )
    elif detail.pattern == "logo":
        d.rectangle(
            (cx - h * 0.025, py - h * 0.025, cx + h * 0.025, py + h * 0.025),
            fill=detail.pattern_color,
        )
    elif detail.pattern == "dots":
        for k in (-1, 0, 1):
            x = cx + k * hip * 0.5
            d.ellipse((x - 1, py - 1, x + 1, py + 1), fill=detail.pattern_color)


def _draw_carried(
    d: ImageDraw.ImageDraw, b: _Body, look: _Look, detail: IdentityDetail, pose: Pose
) -> None:
    """A backpack (its body from behind, its straps from the front) and a shoulder bag (strap
    across the torso, the bag at the hip)."""
    h, cx, shoulder, colour = b.h, b.cx, b.shoulder, detail.accessory_color
    if look.has("backpack"):
        if pose.back:
            d.rounded_rectangle(
                (cx - shoulder * 0.8, b.y_sh + h * 0.02, cx + shoulder * 0.8, b.y_waist - h * 0.03),
                radius=2,
                fill=colour,
            )
        else:
            for side in (-1, 1):
                x = cx + side * shoulder * 0.55
                d.line((x, b.y_sh, x, b.y_waist - h * 0.06), fill=colour, width=2)
    if look.has("bag"):
        side = 1 if pose.back else -1
        d.line(
            (cx - side * shoulder * 0.8, b.y_sh, cx + side * b.hip, b.y_waist - h * 0.02),
            fill=colour,
            width=2,
        )
        bx = cx + side * (b.hip + h * 0.02)
        d.rectangle(
            (bx - h * 0.05, b.y_waist - h * 0.05, bx + h * 0.05, b.y_waist + h * 0.05),
            fill=colour,
        )


def _draw_head(
    d: ImageDraw.ImageDraw, b: _Body, look: _Look, detail: IdentityDetail, pose: Pose
) -> None:
    """Neck and face, the hair (a cap of it from the front, the whole back of the head and
    long hair from behind), and a hat."""
    hx, r, top, y_head1, hair = b.hx, b.head_r, b.top, b.y_head1, look.hair_rgb
    d.rectangle((hx - r * 0.35, y_head1 - 2, hx + r * 0.35, b.y_sh + 1), fill=detail.skin)
    d.ellipse((hx - r * 0.85, top, hx + r * 0.85, y_head1), fill=detail.skin)
    if pose.back:
        d.ellipse((hx - r * 0.9, top - 1, hx + r * 0.9, y_head1), fill=hair)
        if b.hair_len > 0:
            d.rectangle(
                (hx - r * 0.9, top + r, hx + r * 0.9, y_head1 + b.h * b.hair_len), fill=hair
            )
    else:
        d.chord((hx - r * 0.92, top - 1, hx + r * 0.92, y_head1 - r * 0.4), 180, 360, fill=hair)
    if look.has("hat"):
        d.rectangle(
            (hx - r * 1.2, top + r * 0.45, hx + r * 1.2, top + r * 0.65), fill=detail.hat_color
        )
        d.chord(
            (hx - r * 0.9, top - r * 0.5, hx + r * 0.9, top + r * 1.1),
            180,
            360,
            fill=detail.hat_color,
        )


def _through_camera(img: Image.Image, camera: Camera, pose: Pose, H: int, W: int) -> np.ndarray:
    """The camera's light (gain, colour cast), optional blur and sensor noise."""
    if camera.blur:
        img = img.resize((W // 2, H // 2), Image.BILINEAR).resize((W, H), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)
    arr *= np.asarray(camera.cast, np.float32) * np.float32(camera.gain * pose.light)
    bank = _noise_bank(H, W)
    arr += bank[pose.noise_index % len(bank)] * np.float32(camera.noise)
    return np.clip(arr, 0, 255, out=arr).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _noise_bank(H: int, W: int, n: int = 16) -> np.ndarray:
    """Sensor-noise fields, drawn once: drawing 24k normals per image was the slowest step, and
    the noise only needs to vary between images, not be fresh for each."""
    bank = np.random.default_rng(20240611).standard_normal((n, H, W, 3), dtype=np.float32)
    bank.flags.writeable = False
    return bank


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
        from rich.progress import Progress

        self._bar = Progress(transient=True)
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

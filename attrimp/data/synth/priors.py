"""The synthetic world's planted quantities and where they are drawn from.

Market-1501's attribute priors (`MARKET_PRIORS`, embedded so the package never needs the real
file) and its raw columns and groups; the per-identity draws (attributes independently per
group, identity detail, camera, pose); the joint draw that resamples real identities' whole
vectors (`AttributePool`, `assign_identities`); and `attribute_uniqueness`, which measures the
identity leak either draw plants. No pixel is drawn here (`render`), nothing is written
(`world`). See the package docstring for why the draws are what they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from attrimp.errors import DataError

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

PRIORS = ("market", "uniform")
#: how identities' attribute vectors are drawn: per group from the priors, or whole real vectors
ATTRIBUTE_DRAWS = ("independent", "joint")
#: group value index of a colour group the real file leaves unmarked (joint draw only)
NO_VALUE = -1


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

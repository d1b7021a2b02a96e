"""The in-memory form of a ReID dataset, shared by every loader (Market/Duke folders, manifests).

Kept free of torch so that `attrimp data summary` and the studies tooling start fast; the torch
`Dataset` wrapper lives in :mod:`attrimp.data.dataset`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from attrimp.errors import DataError
from attrimp.model.schema import AttributeSchema

SPLITS = ("train", "query", "gallery")
#: Identity code of Market/Duke "distractor" images: kept in the gallery, never annotated.
DISTRACTOR_PID = 0
#: Identity code of Market "junk" images: excluded from every split by the standard protocol.
JUNK_PID = -1


@dataclass(frozen=True)
class ImageRecord:
    """One image.

    ``pid`` is the identity as written in the file name / manifest; ``label`` is its classifier
    index (``0..N-1`` over the training identities, ``-1`` outside the training split);
    ``camid`` is the 0-based camera index (file name ``c1`` -> 0, as torchreid does), and
    ``attributes`` is the identity's multi-hot vector ``[schema.n_slots]`` (all zeros =
    every group unknown, which the oracle router turns into "all experts off").
    """

    path: Path
    pid: int
    camid: int
    split: str
    label: int
    attributes: np.ndarray


@dataclass
class DataReport:
    """Everything a loader skipped, ignored or found odd, with counts: nothing is lost silently."""

    counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def warn(self, message: str) -> None:
        self.warnings.append(message)


@dataclass
class ReIDData:
    """A loaded ReID dataset: three record lists, the schema and what the loader reported."""

    name: str
    root: Path
    schema: AttributeSchema
    train: list[ImageRecord]
    query: list[ImageRecord]
    gallery: list[ImageRecord]
    #: original train pid -> classifier label (0..N-1, sorted by pid)
    pid_to_label: dict[int, int]
    report: DataReport
    #: identity -> multi-hot attributes, for every annotated identity that has images
    identity_attributes: dict[int, np.ndarray] = field(default_factory=dict)
    attribute_source: Path | None = None
    #: the colour the model sees: "rgb", or "grayscale" (``[data] color``; a data-transform
    #: arm of a comparison: colour then reaches the model only through the experts)
    color: str = "rgb"

    @property
    def label_to_pid(self) -> dict[int, int]:
        return {label: pid for pid, label in self.pid_to_label.items()}

    @property
    def num_train_pids(self) -> int:
        return len(self.pid_to_label)

    @property
    def num_cameras(self) -> int:
        cams = {r.camid for r in self.all_records()}
        return (max(cams) + 1) if cams else 0

    def split(self, name: str) -> list[ImageRecord]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, name)

    def all_records(self) -> Iterable[ImageRecord]:
        yield from self.train
        yield from self.query
        yield from self.gallery


def describe_ids(ids: Sequence[object], *, first: int = 5) -> str:
    """``'0003, 0007, 0010 and 12 more'``: name the first few of a list and count the rest."""
    ids = list(ids)
    shown = ", ".join(_fmt_id(i) for i in ids[:first])
    rest = len(ids) - first
    return f"{shown} and {rest} more" if rest > 0 else shown


def _fmt_id(i: object) -> str:
    return f"{i:04d}" if isinstance(i, (int, np.integer)) and i >= 0 else str(i)


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image as RGB, or raise a `DataError` naming the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"The image {str(path)!r} does not exist.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"The image {str(path)!r} cannot be decoded ({e}).") from None

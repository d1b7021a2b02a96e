"""What a loaded dataset holds: counts per split, cameras, attribute coverage, loader warnings,
and an optional pass that decodes every image (``attrimp data summary --verify``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attrimp.data.records import DISTRACTOR_PID, SPLITS, ReIDData, load_image
from attrimp.errors import DataError
from attrimp.model.schema import MULTIPLE, UNKNOWN


@dataclass
class SplitSummary:
    images: int
    identities: int  # distractors (pid 0) not counted
    cameras: int
    distractor_images: int = 0


@dataclass
class DatasetSummary:
    name: str
    root: str
    schema: str
    attribute_source: str | None
    splits: dict[str, SplitSummary]
    identities: int
    cameras: int
    #: group -> {"annotated", "unknown", "multiple"} counts over identities, as the router sees
    #: them (after the schema's missing/multiple policies)
    coverage: dict[str, dict[str, int]]
    counts: dict[str, int]
    warnings: list[str]
    bad_images: list[tuple[str, str]] = field(default_factory=list)
    verified: bool = False

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "root": self.root,
            "schema": self.schema,
            "attribute_source": self.attribute_source,
            "splits": {k: vars(v) for k, v in self.splits.items()},
            "identities": self.identities,
            "cameras": self.cameras,
            "coverage": self.coverage,
            "counts": self.counts,
            "warnings": self.warnings,
            "verified": self.verified,
            "bad_images": [list(b) for b in self.bad_images],
        }


def summarize(data: ReIDData) -> DatasetSummary:
    """Counts, cameras and per-group attribute coverage of a loaded dataset.

    Coverage is per identity (distractors excluded), from the first image of each identity:
    Market/Duke attributes are identity-level; for an image-level manifest this is a summary.
    """
    splits = {}
    for name in SPLITS:
        recs = data.split(name)
        splits[name] = SplitSummary(
            images=len(recs),
            identities=len({r.pid for r in recs if r.pid != DISTRACTOR_PID}),
            cameras=len({r.camid for r in recs}),
            distractor_images=sum(r.pid == DISTRACTOR_PID for r in recs),
        )
    first: dict[int, np.ndarray] = {}
    for r in data.all_records():
        if r.pid != DISTRACTOR_PID:
            first.setdefault(r.pid, r.attributes)
    coverage: dict[str, dict[str, int]] = {}
    if first:
        decoded = data.schema.decode(np.stack(list(first.values())))
        for g in data.schema.group_names:
            vals = decoded[g]
            n_unknown = sum(v == UNKNOWN for v in vals)
            n_multiple = sum(v == MULTIPLE for v in vals)
            coverage[g] = {
                "annotated": len(vals) - n_unknown - n_multiple,
                "unknown": n_unknown,
                "multiple": n_multiple,
            }
    return DatasetSummary(
        name=data.name,
        root=str(data.root),
        schema=data.schema.name,
        attribute_source=str(data.attribute_source) if data.attribute_source else None,
        splits=splits,
        identities=len(first),
        cameras=len({r.camid for r in data.all_records()}),
        coverage=coverage,
        counts=dict(data.report.counts),
        warnings=list(data.report.warnings),
    )


def verify_images(paths: list[Path], *, progress: bool = False) -> list[tuple[str, str]]:
    """Decode every image; return ``(path, reason)`` for each that fails (nothing raised)."""
    from attrimp.progress import track

    bad: list[tuple[str, str]] = []
    for p in track(paths, "decoding images", show=progress):
        try:
            load_image(p)
        except DataError as e:
            bad.append((str(p), str(e)))
    return bad

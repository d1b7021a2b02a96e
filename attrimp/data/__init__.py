"""ReID data: Market-1501 / DukeMTMC-reID folders, manifests for any attribute dataset, the
synthetic world, the torch dataset and the PK sampler (see docs/data.md).

Import light: the loaders, the synthetic world and the summary need no torch; `ReIDImageDataset`,
`build_transforms` and `PKSampler` are imported lazily on first use.
"""

from __future__ import annotations

from attrimp.data.manifest import load_manifest
from attrimp.data.market import DATASETS, load_reid_dataset, parse_image_name
from attrimp.data.records import DataReport, ImageRecord, ReIDData, load_image
from attrimp.data.summary import DatasetSummary, summarize, verify_images
from attrimp.data.synth import load_synthetic_world, make_synthetic_world

_LAZY = {
    "ReIDImageDataset": "attrimp.data.dataset",
    "build_transforms": "attrimp.data.dataset",
    "PKSampler": "attrimp.data.sampler",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attrimp.data' has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "DataReport",
    "DatasetSummary",
    "ImageRecord",
    "PKSampler",
    "ReIDData",
    "ReIDImageDataset",
    "build_transforms",
    "load_image",
    "load_manifest",
    "load_reid_dataset",
    "load_synthetic_world",
    "make_synthetic_world",
    "parse_image_name",
    "summarize",
    "verify_images",
]

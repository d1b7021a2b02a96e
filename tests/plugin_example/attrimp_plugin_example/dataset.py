"""A dataset plug-in: a tiny synthetic world under its own name, with its own options.

It delegates to attrimp's ``synthetic`` dataset (found through the registry, not imported by
path) after turning its own ``[data.options]`` into the synthetic world's settings: a fixed small
world in which the groups named in ``hidden`` are annotated but not drawn.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from attrimp.config import DataConfig, SyntheticConfig
from attrimp.data.datasets import DATASETS, Dataset
from attrimp.data.records import ReIDData


class TinyWorld(Dataset):
    """A 2-camera synthetic world at 64x32 with the Market-1501 schema."""

    name = "plugex_tiny_world"
    title = "example plug-in tiny world"
    schema = "market1501"
    #: generated into the study's work folder, so ``[data] root`` may be left out
    needs_root = False

    @dataclass
    class Options:
        """``[data.options]`` of the tiny world (checked by attrimp's config reader)."""

        identities: int = 12
        seed: int = 0
        #: attribute groups annotated but not drawn in the pixels
        hidden: list[str] = field(default_factory=list)

    def load(self, data: DataConfig, workdir: Path, *, progress: bool = False) -> ReIDData:
        opts = self.options_of(data)
        world = SyntheticConfig(
            identities=opts.identities,
            cameras=2,
            images_per_camera=2,
            size=(64, 32),
            seed=opts.seed,
            visibility={group: 0.0 for group in opts.hidden},
        )
        synthetic = dataclasses.replace(data, dataset="synthetic", synthetic=world, options={})
        return DATASETS.load("synthetic").load(synthetic, workdir, progress=progress)

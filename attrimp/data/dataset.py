"""The torch side of the data: an image `Dataset` over `ImageRecord`s and the ReID transforms.

Each item is ``(image [3,H,W] float, target int, camid int, attributes [n_slots] float, index)``.
``target`` is the classifier label for training (``target="label"``) and the original identity
for evaluation (``target="pid"``). Images are decoded lazily; a file that cannot be decoded
raises a `DataError` naming it (``attrimp data summary --verify`` finds them all up front).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from attrimp.data.records import ImageRecord, load_image
from attrimp.errors import DataError

#: CLIP's normalisation, the reference backbone's; pass your backbone's own mean/std.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_transforms(
    *,
    train: bool,
    size: tuple[int, int] = (256, 128),
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    flip_p: float = 0.5,
    padding: int = 10,
    erasing_p: float = 0.5,
    grayscale: bool = False,
) -> Callable[[Image.Image], torch.Tensor]:
    """The usual ReID pipeline (as in TransReID / CLIP-ReID): resize to the model's
    ``(height, width)``; for training also random flip, pad + random crop back to size, and
    random erasing (after normalisation, so erased pixels are noise around the mean). A flip
    changes no attribute of Market/Duke, so the annotation stays valid. ``grayscale`` turns every
    image to luminance (three equal channels, so any RGB backbone takes it) before the rest."""
    size = (int(size[0]), int(size[1]))
    steps: list = [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC)]
    if grayscale:
        steps.append(T.Grayscale(num_output_channels=3))
    if train:
        if flip_p > 0:
            steps.append(T.RandomHorizontalFlip(p=flip_p))
        if padding > 0:
            steps += [T.Pad(padding), T.RandomCrop(size)]
    steps += [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    if train and erasing_p > 0:
        steps.append(T.RandomErasing(p=erasing_p, value="random"))
    return T.Compose(steps)


class ReIDImageDataset(Dataset):
    """Records -> ``(image, target, camid, attributes, index)``."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        *,
        target: str = "pid",
    ) -> None:
        if target not in ("pid", "label"):
            raise ValueError("target must be 'pid' or 'label'")
        if target == "label" and any(r.label < 0 for r in records):
            raise DataError(
                "target='label' needs training records (relabelled identities); these records "
                "come from a query/gallery split."
            )
        self.records = list(records)
        self.transform = transform or build_transforms(train=False)
        self.target = target
        n_slots = {len(r.attributes) for r in self.records}
        if len(n_slots) > 1:
            raise DataError("The records carry attribute vectors of different lengths.")
        self._attributes = (
            torch.from_numpy(np.stack([r.attributes for r in self.records]).astype(np.float32))
            if self.records
            else torch.zeros(0, 0)
        )

    def __len__(self) -> int:
        return len(self.records)

    @property
    def targets(self) -> list[int]:
        """Per-item target, e.g. for `PKSampler`."""
        return [getattr(r, self.target) for r in self.records]

    def __getitem__(self, index: int):
        r = self.records[index]
        image = self.transform(load_image(r.path))
        return image, getattr(r, self.target), r.camid, self._attributes[index], index

"""From a `StudyConfig` to data, model and datasets: the glue shared by `attrimp train`,
`attrimp evaluate` and `attrimp study run`, so each command builds things the same way."""

from __future__ import annotations

from pathlib import Path

from attrimp.config import StudyConfig
from attrimp.data.records import ReIDData
from attrimp.errors import AttrimpError, ConfigError
from attrimp.model.mosaic import MoSAICConfig, MoSAICReID


def check_data_paths(cfg: StudyConfig) -> None:
    """What the configured dataset can refuse in seconds (its paths exist; one sentence naming
    the key to edit), asked of the dataset registry: the reference configs ship placeholder
    paths, and a first run without the dataset must say which key to edit."""
    from attrimp.data.datasets import DATASETS

    DATASETS.load(cfg.data.dataset).check(cfg.data)


def check_model(cfg: StudyConfig) -> None:
    """Everything `backbones.build` would refuse about ``[model]``, found in seconds without a
    download, so that a bad backbone is reported before a synthetic world is drawn."""
    import backbones

    m = cfg.model
    try:
        backbones.check(
            m.backbone,
            pretrained=m.pretrained,
            img_size=tuple(m.img_size),
            stride=m.stride,
            camera_count=1 if m.camera_embedding else 0,
            adapt=m.adapt,
            **dict(m.backbone_kwargs),
        )
    except AttrimpError as exc:
        raise ConfigError(f"[model] backbone = {m.backbone!r}: {exc}") from None


def prepare_data(
    cfg: StudyConfig, workdir: str | Path, *, progress: bool = False, model_check: bool = True
) -> ReIDData:
    """Load the configured dataset, as the dataset registry's entry for ``[data] dataset`` does
    it (``synthetic`` generates its world under ``workdir`` first, once).

    The dataset paths and (unless ``model_check=False``: the model comes from a checkpoint) the
    ``[model]`` section are checked first, so a mistake in either costs seconds, not the world.
    """
    from attrimp.data.datasets import DATASETS

    check_data_paths(cfg)
    if model_check:
        check_model(cfg)
    data = DATASETS.load(cfg.data.dataset).load(cfg.data, Path(workdir), progress=progress)
    data.color = cfg.data.color
    return data


def model_config(cfg: StudyConfig, data: ReIDData) -> MoSAICConfig:
    """The model config for ``data``: ``[model]`` and ``[experts]`` under their own names, the
    schema, identity and camera counts from the data."""
    return MoSAICConfig.from_study(
        cfg,
        schema=data.schema.name,
        num_classes=data.num_train_pids,
        num_cameras=data.num_cameras,
    )


def build_model(cfg: StudyConfig, data: ReIDData) -> MoSAICReID:
    """The configured model for ``data`` (its schema object is passed in, not re-read)."""
    return MoSAICReID(model_config(cfg, data), schema=data.schema)


def normalization(model: MoSAICReID) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pc = model.backbone.pretrained_cfg
    return tuple(pc.mean), tuple(pc.std)


def datasets(model: MoSAICReID, data: ReIDData):
    """``(train, query, gallery)`` torch datasets with the model's input size and normalisation."""
    from attrimp.data.dataset import ReIDImageDataset, build_transforms

    mean, std = normalization(model)
    size = tuple(model.config.img_size)
    gray = data.color == "grayscale"
    train_tf = build_transforms(train=True, size=size, mean=mean, std=std, grayscale=gray)
    test_tf = build_transforms(train=False, size=size, mean=mean, std=std, grayscale=gray)
    return (
        ReIDImageDataset(data.train, train_tf, target="label"),
        ReIDImageDataset(data.query, test_tf, target="pid"),
        ReIDImageDataset(data.gallery, test_tf, target="pid"),
    )

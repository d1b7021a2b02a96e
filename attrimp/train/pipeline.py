"""From a `StudyConfig` to data, model and datasets: the glue shared by `attrimp train`,
`attrimp evaluate` and `attrimp study run`, so each command builds things the same way."""

from __future__ import annotations

from pathlib import Path

from attrimp.config import StudyConfig
from attrimp.data.records import ReIDData
from attrimp.errors import AttrimpError, ConfigError
from attrimp.model.mosaic import MoSAICConfig, MoSAICReID

#: the real datasets: display name and where their images come from
REAL_DATASETS = {
    "market1501": ("Market-1501", "its authors (Zheng et al., ICCV 2015)"),
    "dukemtmc": ("DukeMTMC-reID", "its authors (Zheng, Zheng and Yang, ICCV 2017)"),
}


def check_data_paths(cfg: StudyConfig) -> None:
    """The dataset paths the config names exist; else one sentence naming the key to edit.

    The reference configs ship placeholder paths: a first run without the dataset must say
    which key (``[data] root``, ``[data] attributes``) to edit and where the files come from.
    """
    d = cfg.data
    here = f"relative paths are read from {str(Path.cwd())!r}"
    if d.dataset in REAL_DATASETS:
        title, source = REAL_DATASETS[d.dataset]
        if not Path(d.root).expanduser().is_dir():
            raise ConfigError(
                f"[data] root = {d.root!r} is not a folder ({here}): edit [data] root in the "
                f"config to point at the unpacked {title} folder (the one holding "
                f"bounding_box_train/, query/ and bounding_box_test/); attrimp does not download "
                f"the images, {title} comes from {source} under their terms."
            )
        if d.attributes is not None and not Path(d.attributes).expanduser().is_file():
            raise ConfigError(
                f"[data] attributes = {d.attributes!r} does not exist ({here}): "
                f"`attrimp data fetch-attributes {d.dataset} --out DIR` downloads the identity-level "
                "attribute file (add --url for a mirror or a file:// copy), then set "
                "[data] attributes to the file in DIR."
            )
    elif d.dataset == "manifest" and not Path(d.root).expanduser().is_file():
        raise ConfigError(
            f"[data] root = {d.root!r} is not a file ({here}): for a manifest dataset it is the "
            "manifest CSV (path, pid, camid, split + attribute columns; docs/data.md)."
        )


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
    """Load the configured dataset; for ``synthetic``, generate the world first (once).

    The dataset paths and (unless ``model_check=False``: the model comes from a checkpoint) the
    ``[model]`` section are checked first, so a mistake in either costs seconds, not the world.
    """
    from attrimp.data import load_manifest, load_reid_dataset, make_synthetic_world
    from attrimp.data.synth import ATTRIBUTE_FILE, DESIGN_FILE

    check_data_paths(cfg)
    if model_check:
        check_model(cfg)
    d = cfg.data
    if d.dataset == "synthetic":
        s = d.synthetic
        root = Path(d.root) if d.root else Path(workdir) / "world"
        differs = _world_differs(root / DESIGN_FILE, s)
        if differs and d.root:
            # a folder the user named is not replaced behind their back
            raise ConfigError(
                f"The synthetic world in {str(root)!r} was made with a different {differs} "
                "setting than [data.synthetic] asks for; point data.root elsewhere or delete "
                "that folder."
            )
        if not (root / DESIGN_FILE).exists() or differs:
            make_synthetic_world(
                root,
                n_identities=s.identities,
                n_cameras=s.cameras,
                images_per_identity_per_camera=s.images_per_camera,
                size=tuple(s.size),
                seed=s.seed,
                visibility=dict(s.visibility) or 1.0,
                attributes=s.attributes,
                attributes_file=s.attributes_file,
                overwrite=True,
                progress=progress,
            )
        return load_reid_dataset(root, "market1501", root / ATTRIBUTE_FILE)
    if d.dataset == "manifest":
        if d.schema is None:
            raise ConfigError("data.schema is required for a manifest dataset.")
        return load_manifest(d.root, d.schema)
    return load_reid_dataset(d.root, d.dataset, d.attributes, missing_policy=d.missing_policy)


def _world_differs(design_file: Path, s) -> str | None:
    """The first [data.synthetic] setting that an existing world's design does not match."""
    import json

    from attrimp.data.synth import resolve_visibility

    if not design_file.is_file():
        return None
    design = json.loads(design_file.read_text(encoding="utf-8"))
    wanted_file = str(s.attributes_file) if s.attributes_file else None
    # synth.json carries the draw's keys only for joint worlds
    if (
        design.get("attributes", "independent") != s.attributes
        or design.get("attributes_file") != wanted_file
    ):
        return "attributes"
    wanted = {
        "seed": s.seed,
        "n_identities": s.identities,
        "n_cameras": s.cameras,
        "images_per_identity_per_camera": s.images_per_camera,
        "size": list(s.size),
        "visibility": resolve_visibility(dict(s.visibility) or 1.0),
    }
    names = {
        "n_identities": "identities",
        "n_cameras": "cameras",
        "images_per_identity_per_camera": "images_per_camera",
    }
    for key, value in wanted.items():
        if design.get(key) != value:
            return names.get(key, key)
    return None


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
    train_tf = build_transforms(train=True, size=size, mean=mean, std=std)
    test_tf = build_transforms(train=False, size=size, mean=mean, std=std)
    return (
        ReIDImageDataset(data.train, train_tf, target="label"),
        ReIDImageDataset(data.query, test_tf, target="pid"),
        ReIDImageDataset(data.gallery, test_tf, target="pid"),
    )

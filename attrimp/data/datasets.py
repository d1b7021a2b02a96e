"""The named datasets of ``[data] dataset``: one object each, in the `attrimp.datasets` registry.

Why a registry: what a named dataset is (its schema, its options, how it loads, which attribute
file the ``attrimp data`` commands read) used to be name lists in seven files. Now each dataset
is one class; the config's choices, `attrimp.train.pipeline.prepare_data` and the ``data``
commands ask `DATASETS`. A third-party dataset is one file plus one entry-point line::

    # my_pkg/cuhk.py
    @dataclass
    class CuhkOptions:              # the dataset's [data.options] table (optional)
        labeled: bool = True

    class Cuhk03(attrimp.data.datasets.Dataset):
        name = "cuhk03"
        title = "CUHK03"
        schema = "my_pkg/cuhk03.toml"   # or None: the config's data.schema is required
        Options = CuhkOptions

        def load(self, data, workdir, *, progress=False):
            opts = self.options_of(data)        # a validated CuhkOptions
            return attrimp.data.load_manifest(...)

    # pyproject.toml
    [project.entry-points."attrimp.datasets"]
    cuhk03 = "my_pkg.cuhk:Cuhk03"

``[data.options]`` is checked against ``Options`` (a dataclass) when the config is read, with the
config's own one-sentence errors. Heavy loaders are imported inside the methods, so reading a
config lists and checks datasets without touching images.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from attrimp.config import SyntheticConfig
from attrimp.errors import ConfigError
from attrimp.registry import NoOptions, Registry, plugin_options

if TYPE_CHECKING:
    from attrimp.config import DataConfig
    from attrimp.data.annotations import AttributeSource, AttributeTable
    from attrimp.data.records import ReIDData

#: attrimp's own datasets, declared exactly as in pyproject.toml's ``attrimp.datasets`` group
#: (tests/test_dataset_registry.py keeps the two equal)
BUILTIN_DATASETS = {
    "market1501": "attrimp.data.datasets:Market1501",
    "dukemtmc": "attrimp.data.datasets:DukeMTMC",
    "manifest": "attrimp.data.datasets:Manifest",
    "synthetic": "attrimp.data.datasets:Synthetic",
}


def _here() -> str:
    return f"relative paths are read from {str(Path.cwd())!r}"


class Dataset:
    """A named dataset: what ``[data] dataset = NAME`` means. Subclass it and set the class
    attributes; override `load` (and `check`, `read_attributes`, `open` where they apply)."""

    #: the registry name (``[data] dataset``)
    name: ClassVar[str] = ""
    #: display name in messages
    title: ClassVar[str] = ""
    #: the built-in schema (or schema TOML) its attributes follow; None = ``data.schema`` required
    schema: ClassVar[str | None] = None
    #: the dataclass that ``[data.options]`` fills (attrimp.registry's convention for every
    #: plug-in's options); `NoOptions` = the dataset takes none
    Options: ClassVar[type] = NoOptions
    #: ``[data] root`` must be given (a generated dataset may default it)
    needs_root: ClassVar[bool] = True
    #: ``attrimp data priors`` can read its attribute file (`read_attributes`)
    priors: ClassVar[bool] = False
    #: ``attrimp data summary`` can open it (`open`)
    summary: ClassVar[bool] = False

    @property
    def attribute_source(self) -> AttributeSource | None:
        """Where ``attrimp data fetch-attributes NAME`` downloads its attribute file; None = none."""
        return None

    def options_of(self, data: DataConfig) -> Any:
        """``[data.options]`` as the dataset's `Options` dataclass (checked with the config's
        one-sentence errors, as a router's or a bank's options are)."""
        what = f"dataset {self.name!r}"
        return plugin_options(self, data.options, where="data.options", what=what)

    def check(self, data: DataConfig) -> None:
        """Everything about ``[data]`` that can be refused in seconds, before any work (the
        paths exist); one sentence naming the key to edit. The default checks nothing."""

    def load(self, data: DataConfig, workdir: Path, *, progress: bool = False) -> ReIDData:
        """The dataset as `ReIDData` (``workdir``: where a generated dataset may be written)."""
        raise NotImplementedError

    def read_attributes(self, path: Path, schema: Any) -> AttributeTable:
        """The identity-level attribute table of ``path`` (``attrimp data priors``)."""
        raise ConfigError(f"The dataset {self.name!r} has no attribute file to read priors from.")

    def open(
        self,
        path: Path,
        *,
        attributes: Path | None,
        schema: Any,
        missing_policy: str,
        bad_names: str,
    ) -> ReIDData:
        """The dataset at ``path`` for ``attrimp data summary``."""
        raise ConfigError(f"The dataset {self.name!r} cannot be summarised from a path.")


class _MarketLayout(Dataset):
    """Market-1501 / DukeMTMC-reID: a folder of the three splits plus an identity-level file."""

    source: ClassVar[str] = ""
    priors = True
    summary = True

    @property
    def attribute_source(self) -> AttributeSource | None:
        from attrimp.data.annotations import SOURCES

        return SOURCES[self.name]

    def check(self, data: DataConfig) -> None:
        if not Path(data.root).expanduser().is_dir():
            raise ConfigError(
                f"[data] root = {data.root!r} is not a folder ({_here()}): edit [data] root in "
                f"the config to point at the unpacked {self.title} folder (the one holding "
                f"bounding_box_train/, query/ and bounding_box_test/); attrimp does not download "
                f"the images, {self.title} comes from {self.source} under their terms."
            )
        if data.attributes is not None and not Path(data.attributes).expanduser().is_file():
            raise ConfigError(
                f"[data] attributes = {data.attributes!r} does not exist ({_here()}): "
                f"`attrimp data fetch-attributes {self.name} --out DIR` downloads the "
                "identity-level attribute file (add --url for a mirror or a file:// copy), then "
                "set [data] attributes to the file in DIR."
            )

    def load(self, data: DataConfig, workdir: Path, *, progress: bool = False) -> ReIDData:
        from attrimp.data.market import load_reid_dataset

        return load_reid_dataset(
            data.root, self.name, data.attributes, missing_policy=data.missing_policy
        )

    def read_attributes(self, path: Path, schema: Any) -> AttributeTable:
        from attrimp.data.annotations import load_attribute_file

        return load_attribute_file(path, schema if schema is not None else self.name)

    def open(self, path, *, attributes, schema, missing_policy, bad_names) -> ReIDData:
        from attrimp.data.market import load_reid_dataset

        return load_reid_dataset(
            path, self.name, attributes, missing_policy=missing_policy, bad_names=bad_names
        )


class Market1501(_MarketLayout):
    name = "market1501"
    title = "Market-1501"
    schema = "market1501"
    source = "its authors (Zheng et al., ICCV 2015)"


class DukeMTMC(_MarketLayout):
    name = "dukemtmc"
    title = "DukeMTMC-reID"
    schema = "dukemtmc"
    source = "its authors (Zheng, Zheng and Yang, ICCV 2017)"


class Manifest(Dataset):
    """Any attribute dataset as a CSV of path, pid, camid, split + attribute columns."""

    name = "manifest"
    title = "manifest"
    priors = True
    summary = True

    def check(self, data: DataConfig) -> None:
        if not Path(data.root).expanduser().is_file():
            raise ConfigError(
                f"[data] root = {data.root!r} is not a file ({_here()}): for a manifest dataset "
                "it is the manifest CSV (path, pid, camid, split + attribute columns; "
                "docs/data.md)."
            )

    def load(self, data: DataConfig, workdir: Path, *, progress: bool = False) -> ReIDData:
        from attrimp.data.manifest import load_manifest

        if data.schema is None:
            raise ConfigError("data.schema is required for a manifest dataset.")
        return load_manifest(data.root, data.schema)

    def read_attributes(self, path: Path, schema: Any) -> AttributeTable:
        from attrimp.data.annotations import load_manifest_attributes

        if schema is None:
            raise ConfigError(
                "--dataset manifest needs --schema, the TOML that describes its columns."
            )
        return load_manifest_attributes(path, schema)

    def open(self, path, *, attributes, schema, missing_policy, bad_names) -> ReIDData:
        from attrimp.data.manifest import load_manifest

        if schema is None:
            raise ConfigError(
                "--dataset manifest needs --schema, the TOML of its attribute columns."
            )
        return load_manifest(path, schema)


class Synthetic(Dataset):
    """The synthetic world, drawn once into ``data.root`` (default ``WORKDIR/world``).

    Its options are `attrimp.config.SyntheticConfig`, given as ``[data.synthetic]`` (as before)
    or ``[data.options]``; the config moves the latter into ``data.synthetic`` so both spellings
    make the same world and the same fingerprint.
    """

    name = "synthetic"
    title = "synthetic world"
    schema = "market1501"
    Options = SyntheticConfig
    needs_root = False

    def load(self, data: DataConfig, workdir: Path, *, progress: bool = False) -> ReIDData:
        from attrimp.data.market import load_reid_dataset
        from attrimp.data.synth import ATTRIBUTE_FILE, DESIGN_FILE, make_synthetic_world

        s = data.synthetic
        root = Path(data.root) if data.root else Path(workdir) / "world"
        differs = world_differs(root / DESIGN_FILE, s)
        if differs and data.root:
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


def world_differs(design_file: Path, s: Any) -> str | None:
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


def _instance(name: str, obj: Any) -> Dataset:
    """An entry point names a dataset class (or an instance); the registry holds instances."""
    if isinstance(obj, type):
        obj = obj()
    if not callable(getattr(obj, "load", None)) or not hasattr(obj, "schema"):
        raise TypeError(f"{obj!r} is not a dataset (it needs `schema` and `load`)")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, Dataset):
        raise TypeError(f"{obj!r} is an options dataclass, not a dataset")
    return obj


#: every named dataset: attrimp's own and those of installed plug-ins
DATASETS: Registry[Dataset] = Registry(
    "attrimp.datasets",
    kind="dataset",
    plural="datasets",
    builtins=BUILTIN_DATASETS,
    coerce=_instance,
)


def dataset_names(*, priors: bool = False, summary: bool = False, fetch: bool = False) -> list[str]:
    """Names of the datasets, attrimp's own first (in `BUILTIN_DATASETS` order) then plug-ins
    sorted; with a flag, only those that support ``attrimp data priors`` / ``summary`` /
    ``fetch-attributes``. A filtered listing loads every entry (a broken plug-in is a warning).
    """
    names = DATASETS.names()
    if priors or summary or fetch:
        loaded = DATASETS.load_all()
        names = [
            n
            for n, ds in loaded.items()
            if (not priors or ds.priors)
            and (not summary or ds.summary)
            and (not fetch or ds.attribute_source is not None)
        ]
    order = list(BUILTIN_DATASETS)
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))

"""The dataset registry (`attrimp.data.datasets.DATASETS`, group ``attrimp.datasets``).

What is checked: the built-ins are declared in pyproject.toml exactly as the code's list says;
``data.dataset``'s choices, ``[data.options]``, ``prepare_data`` and the ``data`` commands all
ask the registry, so a third-party dataset declared only through a (faked) entry point is
configured, validated and loaded by name; the synthetic world's ``[data.options]`` spelling is
the ``[data.synthetic]`` table (same world, same fingerprint).
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from attrimp.config import SyntheticConfig, config_from_dict
from attrimp.data.datasets import BUILTIN_DATASETS, DATASETS, Dataset, dataset_names
from attrimp.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
GROUP = "attrimp.datasets"

#: a third party's dataset module: it writes a tiny manifest dataset of ``identities`` people
#: (two cameras, one image each, train / query / gallery by identity) into the work folder
PLUGIN = textwrap.dedent(
    """
    from dataclasses import dataclass
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from attrimp.data.datasets import Dataset
    from attrimp.data.manifest import load_manifest

    @dataclass
    class ToyOptions:
        identities: int = 4
        colour: str = "red"

        def __post_init__(self):
            if self.identities < 3:
                raise ValueError("identities must be at least 3")

    class ToyDataset(Dataset):
        name = "toyds"
        title = "toy"
        schema = str(Path(__file__).with_name("toy.toml"))
        Options = ToyOptions
        summary = True

        def load(self, data, workdir, *, progress=False):
            opts = self.options_of(data)
            root = Path(workdir) / "toy"
            rows = ["path,pid,camid,split,coat"]
            for pid in range(1, opts.identities + 1):
                split = "train" if pid <= opts.identities - 1 else "test"
                for cam in (0, 1):
                    rel = f"img/{pid}_{cam}.png"
                    (root / "img").mkdir(parents=True, exist_ok=True)
                    Image.fromarray(np.zeros((8, 4, 3), np.uint8)).save(root / rel)
                    s = split if split == "train" else ("query" if cam == 0 else "gallery")
                    rows.append(f"{rel},{pid},{cam},{s},{pid % 2}")
            (root / "manifest.csv").write_text("\\n".join(rows) + "\\n")
            return load_manifest(root / "manifest.csv", self.schema)

        def open(self, path, *, attributes, schema, missing_policy, bad_names):
            return load_manifest(path, self.schema)
    """
)


SCHEMA = """
name = "toy"
[[groups]]
name = "coat"
kind = "dual"
column = "coat"
values = ["short", "long"]
codes = [0, 1]
"""


def test_builtins_are_declared_in_pyproject_as_entry_points():
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    declared = data["project"]["entry-points"][GROUP]
    assert declared == BUILTIN_DATASETS == DATASETS.builtins
    for name, value in declared.items():
        ds = DATASETS.load(name)
        assert isinstance(ds, Dataset) and ds.name == name, value


@pytest.fixture
def plugin(monkeypatch, tmp_path):
    """``toyds`` registered only through a (faked) entry point of the ``attrimp.datasets`` group."""
    (tmp_path / "toy_dataset_plugin.py").write_text(PLUGIN)
    (tmp_path / "toy.toml").write_text(SCHEMA)
    monkeypatch.syspath_prepend(str(tmp_path))
    real = importlib.metadata.entry_points
    extra = importlib.metadata.EntryPoint(
        name="toyds", value="toy_dataset_plugin:ToyDataset", group=GROUP
    )

    def entry_points(**kw):
        found = real(**kw)
        return [*found, extra] if kw.get("group") == GROUP else found

    with DATASETS.isolated():
        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
        DATASETS.refresh()
        yield tmp_path
    sys.modules.pop("toy_dataset_plugin", None)


def _cfg(**data):
    return config_from_dict({"data": data})


def test_an_unknown_dataset_lists_the_registry(plugin):
    with pytest.raises(ConfigError, match="data.dataset must be one of") as e:
        _cfg(dataset="nope", root="x")
    for name in ("market1501", "dukemtmc", "manifest", "synthetic", "toyds"):
        assert repr(name) in str(e.value)
    DATASETS.refresh()


def test_a_plugin_dataset_is_configured_and_loaded_by_name(plugin):
    from attrimp.train.pipeline import prepare_data

    cfg = _cfg(dataset="toyds", root=str(plugin), options={"identities": 5})
    assert cfg.data.options == {"identities": 5}
    data = prepare_data(cfg, plugin / "work", model_check=False)
    # 5 identities: 4 train (2 images each), the 5th split into one query and one gallery image
    assert data.num_train_pids == 4 and len(data.train) == 8
    assert len(data.query) == 1 and len(data.gallery) == 1
    assert data.schema.name == "toy"
    # the default options reach the loader when [data.options] is absent
    assert prepare_data(_cfg(dataset="toyds", root="x"), plugin / "w2", model_check=False)
    assert "toyds" in dataset_names(summary=True) and "toyds" not in dataset_names(priors=True)


@pytest.mark.parametrize(
    "options, fragment",
    [
        (
            {"identity": 5},
            "data.options.identity is not an option of the dataset 'toyds'; its options are: identities, colour.",
        ),
        ({"identities": "five"}, "data.options.identities"),
        ({"identities": 2}, "data.options: identities must be at least 3."),
    ],
)
def test_plugin_options_are_checked_by_its_dataclass(plugin, options, fragment):
    with pytest.raises(ConfigError) as e:
        _cfg(dataset="toyds", root="x", options=options)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_schema_and_root_rules_come_from_the_dataset(plugin):
    with pytest.raises(ConfigError, match="cannot be used with dataset 'toyds'"):
        _cfg(dataset="toyds", root="x", schema="dukemtmc")
    with pytest.raises(ConfigError, match="data.root is required for dataset 'toyds'"):
        _cfg(dataset="toyds")
    own = str(plugin / "toy.toml")
    assert _cfg(dataset="toyds", root="x", schema=own).data.schema == own


def test_a_dataset_without_options_refuses_them():
    with pytest.raises(
        ConfigError,
        match="data.options.labeled is not an option of the dataset 'market1501'; it takes no options.",
    ):
        _cfg(dataset="market1501", root="x", options={"labeled": True})


def test_synthetic_options_are_the_synthetic_table():
    table = {"identities": 12, "cameras": 2, "seed": 3}
    by_options = _cfg(dataset="synthetic", options=table)
    by_table = _cfg(dataset="synthetic", synthetic=table)
    assert (
        by_options.data.synthetic
        == by_table.data.synthetic
        == SyntheticConfig(identities=12, cameras=2, seed=3)
    )
    assert by_options.data.options == {}
    assert by_options.fingerprint() == by_table.fingerprint()
    # the synthetic ranges still apply to the options spelling
    with pytest.raises(ConfigError, match="identities must be from 2 to 9999"):
        _cfg(dataset="synthetic", options={"identities": 1})
    with pytest.raises(ConfigError, match="data.options and data.synthetic both"):
        _cfg(dataset="synthetic", options={"seed": 1}, synthetic={"seed": 2})


def test_something_that_is_not_a_dataset_is_one_sentence(plugin):
    with DATASETS.isolated():
        DATASETS.register("broken", "toy_dataset_plugin:ToyOptions")
        with pytest.raises(ConfigError, match="could not be loaded: TypeError"):
            DATASETS.load("broken")


def _run(argv, monkeypatch, capsys):
    from attrimp.cli import main

    monkeypatch.setattr(sys, "argv", ["attrimp", *map(str, argv)])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err


def test_the_data_commands_offer_and_open_a_plugin_dataset(plugin, monkeypatch, capsys):
    from attrimp.train.pipeline import prepare_data

    cfg = _cfg(dataset="toyds", root="x", options={"identities": 3})
    prepare_data(cfg, plugin / "w", model_check=False)
    manifest = plugin / "w" / "toy" / "manifest.csv"
    summary = plugin / "summary.json"
    code, _, err = _run(
        ["data", "summary", manifest, "--dataset", "toyds", "--json", summary], monkeypatch, capsys
    )
    assert code == 0, err
    # 3 identities x 2 cameras: 2 train identities (4 images), one query and one gallery image
    splits = json.loads(summary.read_text())["splits"]
    assert {k: (v["images"], v["identities"]) for k, v in splits.items()} == {
        "train": (4, 2),
        "query": (1, 1),
        "gallery": (1, 1),
    }
    code, _, err = _run(
        ["data", "priors", "--dataset", "toyds", "--attributes", manifest, "--out", plugin / "p"],
        monkeypatch,
        capsys,
    )
    # toyds has no attribute file of its own: priors does not offer it, and says which do
    assert code == 2 and "Unknown dataset 'toyds'; use market1501, dukemtmc, manifest." in err

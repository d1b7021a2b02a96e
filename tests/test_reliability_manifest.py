"""Manifest image paths may not leave the dataset folder (issue 12): ``../../etc/passwd`` and
absolute paths are refused, unless the manifest opts in with an ``absolute_path`` column."""

from __future__ import annotations

import pandas as pd
import pytest

from attrimp.data.annotations import load_manifest_attributes
from attrimp.data.manifest import load_manifest
from attrimp.errors import DataError
from attrimp.model.schema import load_schema
from tests.test_data_manifest import SCHEMA, _img

ROWS = [
    ("img/a.png", 10, 0, "train", 1, 1, 0),
    ("img/b.png", 20, 0, "train", 0, 0, 1),
    ("img/c.png", 30, 0, "query", 0, 1, 0),
    ("img/d.png", 30, 1, "gallery", 0, 1, 0),
]
COLUMNS = ["pid", "camid", "split", "coat", "is_red", "is_blue"]


def _write(folder, rows, path_column="path"):
    (folder / "toy.toml").write_text(SCHEMA)
    frame = pd.DataFrame(rows, columns=[path_column, *COLUMNS])
    frame.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    for r in ROWS:
        _img(root / r[0])
    outside = tmp_path / "secret.png"  # a real image outside the dataset folder
    _img(outside)
    return root, outside


@pytest.mark.parametrize(
    "escape",
    ["../secret.png", "img/../../secret.png", "./../secret.png", "../../../../etc/passwd"],
)
def test_a_path_that_climbs_out_is_refused(dataset, escape):
    root, _ = dataset
    rows = [*ROWS[:3], (escape, *ROWS[3][1:])]
    with pytest.raises(DataError, match=r"on row 5, which leaves the dataset folder"):
        load_manifest(_write(root, rows), root / "toy.toml")


def test_an_absolute_path_in_path_is_refused_and_says_how_to_opt_in(dataset):
    root, outside = dataset
    rows = [*ROWS[:3], (str(outside), *ROWS[3][1:])]
    with pytest.raises(
        DataError, match=r"absolute path .* on row 5.*name the column 'absolute_path'"
    ):
        load_manifest(_write(root, rows), root / "toy.toml")


def test_paths_that_fold_back_inside_are_fine(dataset):
    root, _ = dataset
    rows = [*ROWS[:3], ("img/../img/d.png", *ROWS[3][1:])]
    data = load_manifest(_write(root, rows), root / "toy.toml")
    assert data.gallery[0].path.resolve() == (root / "img" / "d.png").resolve()


def test_absolute_path_column_opts_in(dataset, tmp_path):
    root, outside = dataset
    rows = [(str(root / r[0]), *r[1:]) for r in ROWS[:3]] + [(str(outside), *ROWS[3][1:])]
    (tmp_path / "elsewhere").mkdir()
    manifest = _write(tmp_path / "elsewhere", rows, "absolute_path")
    data = load_manifest(manifest, tmp_path / "elsewhere" / "toy.toml")
    assert data.gallery[0].path == outside
    # the identity-level reader (study priors) accepts the same manifest
    table = load_manifest_attributes(manifest, load_schema(tmp_path / "elsewhere" / "toy.toml"))
    assert len(table) > 0
    # ... and there every entry must be absolute
    rows[1] = ("img/b.png", *ROWS[1][1:])
    with pytest.raises(
        DataError, match=r"relative path 'img/b.png' on row 3 in its 'absolute_path'"
    ):
        load_manifest(
            _write(tmp_path / "elsewhere", rows, "absolute_path"),
            tmp_path / "elsewhere" / "toy.toml",
        )


def test_both_path_columns_is_an_error(dataset):
    root, _ = dataset
    manifest = _write(root, ROWS)
    frame = pd.read_csv(manifest)
    frame["absolute_path"] = frame["path"]
    frame.to_csv(manifest, index=False)
    with pytest.raises(DataError, match=r"has both a 'path' and an 'absolute_path' column"):
        load_manifest(manifest, root / "toy.toml")

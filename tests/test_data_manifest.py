"""Manifest CSV + schema TOML: any attribute dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from attrimp.data.manifest import load_manifest
from attrimp.errors import AttrimpError, DataError, SchemaError

SCHEMA = """
name = "toy"
[[groups]]
name = "coat"
kind = "dual"
column = "coat"
values = ["short", "long"]
codes = [0, 1]

[[groups]]
name = "colour"
kind = "multiclass"
values = ["red", "blue"]
columns = ["is_red", "is_blue"]
positive = 1
negative = 0
"""


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 4, 3), np.uint8)).save(path)


@pytest.fixture
def manifest(tmp_path):
    (tmp_path / "toy.toml").write_text(SCHEMA)
    rows = [
        ("img/a.png", 10, 0, "train", 1, 1, 0),
        ("img/b.png", 10, 1, "train", 1, 1, 0),
        ("img/c.png", 20, 0, "train", 0, 0, 1),
        ("img/d.png", 30, 0, "query", 0, "", ""),  # colour not annotated
        ("img/e.png", 30, 1, "gallery", 0, 1, 1),  # both colours marked
        ("img/f.png", -1, 1, "gallery", 0, 0, 1),  # junk
    ]
    frame = pd.DataFrame(
        rows, columns=["path", "pid", "camid", "split", "coat", "is_red", "is_blue"]
    )
    for r in rows:
        _img(tmp_path / r[0])
    frame.to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path


def test_manifest_loads_with_schema(manifest):
    data = load_manifest(manifest / "manifest.csv", manifest / "toy.toml")
    s = data.schema
    assert [(r.pid, r.camid, r.label) for r in data.train] == [(10, 0, 0), (10, 1, 0), (20, 0, 1)]
    assert data.train[0].path == manifest / "img" / "a.png"
    assert s.decode(np.stack([r.attributes for r in data.train]))["colour"] == [
        "red",
        "red",
        "blue",
    ]
    assert s.decode(data.query[0].attributes[None]) == {"coat": ["short"], "colour": ["unknown"]}
    assert s.decode(data.gallery[0].attributes[None])["colour"] == ["multiple"]
    assert len(data.gallery) == 1 and data.report.counts["junk_images"] == 1


def test_manifest_folder_argument_finds_manifest_csv(manifest):
    assert len(load_manifest(manifest, manifest / "toy.toml").train) == 3


@pytest.mark.parametrize(
    ("column", "value", "error", "match"),
    [
        ("split", "test", DataError, "split 'test' on row 2"),
        ("pid", "abc", DataError, "pid 'abc' on row 2"),
        ("camid", "-3", DataError, "negative camid on row 2"),
        ("coat", "7", SchemaError, "code 7"),
        ("is_red", "yes", SchemaError, "'yes' in attribute column 'is_red' on row 2"),
        ("path", "img/missing.png", DataError, "1 images that do not exist: .*missing.png"),
    ],
)
def test_manifest_errors_name_the_problem(manifest, column, value, error, match):
    frame = pd.read_csv(manifest / "manifest.csv", dtype=str)
    frame.loc[0, column] = value
    frame.to_csv(manifest / "manifest.csv", index=False)
    with pytest.raises(error, match=match):
        load_manifest(manifest / "manifest.csv", manifest / "toy.toml")


def test_manifest_missing_attribute_column(manifest):
    frame = pd.read_csv(manifest / "manifest.csv").drop(columns=["is_blue"])
    frame.to_csv(manifest / "manifest.csv", index=False)
    with pytest.raises(AttrimpError, match="lacks the attribute column 'is_blue'"):
        load_manifest(manifest / "manifest.csv", manifest / "toy.toml")


def test_manifest_query_without_gallery_match_is_warned(manifest):
    frame = pd.read_csv(manifest / "manifest.csv")
    frame = frame[frame["path"] != "img/e.png"]
    frame.to_csv(manifest / "manifest.csv", index=False)
    data = load_manifest(manifest / "manifest.csv", manifest / "toy.toml")
    assert data.report.counts["query_identities_absent_from_gallery"] == 1

"""`attrimp data fetch-attributes` (offline, through file:// URLs) and `attrimp data priors`
(counts checked against the raw .mat fields, read independently)."""

from __future__ import annotations

import hashlib
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.io

from attrimp.cli import main
from attrimp.data.annotations import SOURCES


def run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["attrimp", *args])
    with pytest.raises(SystemExit) as info:
        main()
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def assert_one_sentence_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    line = err.strip()
    assert line.startswith("error: ") and "\n" not in line and "Traceback" not in line, err
    for fragment in fragments:
        assert fragment in line, (fragment, line)


# ----- fetch-attributes ---------------------------------------------------------------------


@pytest.fixture
def mirror(shared_data, tmp_path):
    folder = tmp_path / "mirror"
    folder.mkdir()
    for name in ("market_attribute.mat", "duke_attribute.mat"):
        shutil.copy(shared_data / name, folder / name)
    return folder


@pytest.mark.parametrize("dataset", ["market1501", "dukemtmc"])
def test_fetch_from_file_url(monkeypatch, capsys, mirror, tmp_path, dataset):
    spec = SOURCES[dataset]
    out = tmp_path / "out"
    url = (mirror / spec.filename).as_uri()
    code, stdout, _ = run(
        monkeypatch, capsys, "data", "fetch-attributes", dataset, "--out", str(out), "--url", url
    )
    assert code == 0
    target = out / spec.filename
    assert hashlib.sha256(target.read_bytes()).hexdigest() == spec.sha256
    assert "downloaded and verified" in stdout
    assert sorted(p.name for p in out.iterdir()) == [spec.filename]  # no temporary left
    code, stdout, _ = run(
        monkeypatch, capsys, "data", "fetch-attributes", dataset, "--out", str(out), "--url", url
    )
    assert code == 0 and "already present" in stdout


def test_fetch_rejects_a_corrupted_file(monkeypatch, capsys, mirror, tmp_path):
    bad = mirror / "market_attribute.mat"
    data = bytearray(bad.read_bytes())
    data[500] ^= 0xFF
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    code, _, err = run(
        monkeypatch,
        capsys,
        "data",
        "fetch-attributes",
        "market1501",
        "--out",
        str(out),
        "--url",
        bad.as_uri(),
    )
    assert_one_sentence_error(
        code, err, "sha256", SOURCES["market1501"].sha256, "nothing was written"
    )
    assert list(out.iterdir()) == []


def test_fetch_replaces_a_stale_file(monkeypatch, capsys, mirror, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "duke_attribute.mat").write_bytes(b"old")
    url = (mirror / "duke_attribute.mat").as_uri()
    code, _, _ = run(
        monkeypatch, capsys, "data", "fetch-attributes", "dukemtmc", "--out", str(out), "--url", url
    )
    assert code == 0
    assert (
        hashlib.sha256((out / "duke_attribute.mat").read_bytes()).hexdigest()
        == SOURCES["dukemtmc"].sha256
    )


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("file:///nonexistent/market_attribute.mat", "Could not download file:///nonexistent"),
        ("http://127.0.0.1:9/market_attribute.mat", "Could not download http://127.0.0.1:9"),
    ],
)
def test_fetch_network_failure(monkeypatch, capsys, tmp_path, url, fragment):
    out = tmp_path / "out"
    code, _, err = run(
        monkeypatch,
        capsys,
        "data",
        "fetch-attributes",
        "market1501",
        "--out",
        str(out),
        "--url",
        url,
    )
    assert_one_sentence_error(code, err, fragment)
    assert not out.exists() or list(out.iterdir()) == []


def test_fetch_unknown_dataset(monkeypatch, capsys, tmp_path):
    code, _, err = run(
        monkeypatch, capsys, "data", "fetch-attributes", "cuhk03", "--out", str(tmp_path)
    )
    assert_one_sentence_error(code, err, "'cuhk03'", "market1501 or dukemtmc")


# ----- priors -------------------------------------------------------------------------------


def expected_counts(path, variable, schema_groups):
    """(split, attribute, value) -> count, straight from the raw fields with np.bincount."""
    struct = scipy.io.loadmat(str(path))[variable][0, 0]
    counts = {}
    raw = {s: struct[s][0, 0] for s in ("train", "test")}
    for split in ("train", "test", "all"):
        parts = ["train", "test"] if split == "all" else [split]

        def field(name, parts=parts):
            return np.concatenate([raw[p][name].ravel().astype(int) for p in parts])

        for name, column, values in schema_groups:
            if isinstance(column, str):  # coded column: value k has code k+1; 0 = unknown
                bins = np.bincount(field(column), minlength=len(values) + 1)
                for k, value in enumerate(values):
                    counts[(split, name, value)] = int(bins[k + 1])
                if bins[0]:
                    counts[(split, name, "unknown")] = int(bins[0])
            else:  # one binary column per value, 2 = marked
                marks = np.stack([field(c) == 2 for c in column], axis=1)
                n = marks.sum(axis=1)
                for k, value in enumerate(values):
                    counts[(split, name, value)] = int((marks[:, k] & (n == 1)).sum())
                counts[(split, name, "unknown")] = int((n == 0).sum())
                counts[(split, name, "multiple")] = int((n > 1).sum())
    return counts


MARKET_GROUPS = [
    ("gender", "gender", ["male", "female"]),
    ("hair", "hair", ["short", "long"]),
    ("up", "up", ["long", "short"]),
    ("down", "down", ["long", "short"]),
    ("clothes", "clothes", ["dress", "pants"]),
    ("hat", "hat", ["no", "yes"]),
    ("backpack", "backpack", ["no", "yes"]),
    ("bag", "bag", ["no", "yes"]),
    ("handbag", "handbag", ["no", "yes"]),
    ("age", "age", ["young", "teenager", "adult", "old"]),
    ("upcolor", [f"up{c}" for c in ["black", "white", "red", "purple", "yellow", "gray", "blue", "green"]],
     ["black", "white", "red", "purple", "yellow", "gray", "blue", "green"]),
    ("downcolor", [f"down{c}" for c in ["black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown"]],
     ["black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown"]),
]  # fmt: skip
DUKE_GROUPS = [
    ("gender", "gender", ["male", "female"]),
    ("top", "top", ["short", "long"]),
    ("boots", "boots", ["no", "yes"]),
    ("shoes", "shoes", ["dark", "light"]),
    ("hat", "hat", ["no", "yes"]),
    ("backpack", "backpack", ["no", "yes"]),
    ("bag", "bag", ["no", "yes"]),
    ("handbag", "handbag", ["no", "yes"]),
    ("upcolor", [f"up{c}" for c in ["black", "white", "red", "purple", "gray", "blue", "green", "brown"]],
     ["black", "white", "red", "purple", "gray", "blue", "green", "brown"]),
    ("downcolor", [f"down{c}" for c in ["black", "white", "red", "gray", "blue", "green", "brown"]],
     ["black", "white", "red", "gray", "blue", "green", "brown"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "dataset, filename, variable, groups, n",
    [
        (
            "market1501",
            "market_attribute.mat",
            "market_attribute",
            MARKET_GROUPS,
            {"train": 751, "test": 750},
        ),
        (
            "dukemtmc",
            "duke_attribute.mat",
            "duke_attribute",
            DUKE_GROUPS,
            {"train": 702, "test": 1110},
        ),
    ],
)
def test_priors_match_the_raw_file(
    monkeypatch, capsys, shared_data, tmp_path, dataset, filename, variable, groups, n
):
    out = tmp_path / "priors"
    code, stdout, _ = run(
        monkeypatch, capsys, "data", "priors", "--dataset", dataset,
        "--attributes", str(shared_data / filename), "--out", str(out),
    )  # fmt: skip
    assert code == 0
    priors = pd.read_csv(out / "priors.csv", keep_default_na=False)
    assert list(priors.columns) == ["split", "attribute", "value", "count", "probability"]
    assert list(dict.fromkeys(priors["split"])) == ["train", "test", "all"]
    expected = expected_counts(shared_data / filename, variable, groups)
    got = {(r.split, r.attribute, r.value): r.count for r in priors.itertuples()}
    nonzero = {k: v for k, v in got.items() if v}
    assert nonzero == {k: v for k, v in expected.items() if v}
    # every schema value has a row, even with count 0 (Market test: no purple lower garment)
    for split in ("train", "test", "all"):
        for name, _, values in groups:
            for value in values:
                assert (split, name, value) in got
    sums = priors.groupby(["split", "attribute"])["probability"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, rtol=0, atol=1e-12)
    totals = priors.groupby(["split", "attribute"])["count"].sum()
    for split, size in {**n, "all": sum(n.values())}.items():
        assert (totals.loc[split] == size).all()
    png = (out / "priors.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert "Wrote" in stdout


def test_priors_known_quirk_rows(shared_data):
    """The Python API behind the command: Duke's quirks are values of their own."""
    from attrimp.data.annotations import load_attribute_file
    from attrimp.data.priors import compute_priors

    table = load_attribute_file(shared_data / "duke_attribute.mat", "dukemtmc")
    p = compute_priors(table).set_index(["split", "attribute", "value"])
    assert p.loc[("train", "top", "unknown"), "count"] == 2
    assert p.loc[("test", "top", "unknown"), "count"] == 0
    assert p.loc[("test", "downcolor", "multiple"), "count"] == 23
    assert p.loc[("test", "downcolor", "multiple"), "probability"] == pytest.approx(23 / 1110)
    assert ("train", "gender", "unknown") not in p.index  # a coded group without missing codes
    assert ("train", "top", "multiple") not in p.index  # one coded column cannot mark two values


MANIFEST_SCHEMA = """
name = "tiny"

[[groups]]
name = "hat"
kind = "single"
column = "hat"
values = ["no", "yes"]
codes = [0, 1]

[[groups]]
name = "shirt"
kind = "multiclass"
values = ["red", "blue"]
columns = ["red", "blue"]
"""


def test_priors_from_a_manifest_count_identities_once(monkeypatch, capsys, tmp_path):
    schema = tmp_path / "tiny.toml"
    schema.write_text(MANIFEST_SCHEMA)
    rows = [
        # path, pid, camid, split, hat, red, blue
        ("1_a.jpg", 1, 0, "train", 1, 1, 0),
        ("1_b.jpg", 1, 1, "train", 1, 1, 0),
        ("1_c.jpg", 1, 2, "train", 1, 1, 0),  # identity 1: three images, one identity
        ("2_a.jpg", 2, 0, "train", 0, 0, 1),
        ("3_a.jpg", 3, 0, "query", 0, 1, 1),
        ("3_b.jpg", 3, 1, "gallery", 0, 1, 1),
        ("4_a.jpg", 4, 1, "gallery", 1, 0, 0),
    ]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows, columns=["path", "pid", "camid", "split", "hat", "red", "blue"]).to_csv(
        manifest, index=False
    )
    out = tmp_path / "out"
    code, _, _ = run(
        monkeypatch, capsys, "data", "priors", "--dataset", "manifest", "--attributes", str(manifest),
        "--out", str(out), "--schema", str(schema),
    )  # fmt: skip
    assert code == 0
    p = pd.read_csv(out / "priors.csv", keep_default_na=False).set_index(
        ["split", "attribute", "value"]
    )
    assert (
        p.loc[("train", "hat", "yes"), "count"] == 1 and p.loc[("train", "hat", "no"), "count"] == 1
    )
    assert p.loc[("train", "shirt", "red"), "probability"] == 0.5
    assert p.loc[("test", "shirt", "multiple"), "count"] == 1
    assert p.loc[("test", "shirt", "unknown"), "count"] == 1
    assert p.loc[("all", "hat", "yes"), "count"] == 2
    assert (out / "priors.png").is_file()


@pytest.mark.parametrize(
    "args, fragments",
    [
        (
            ["--dataset", "cuhk03", "--attributes", "x.mat"],
            ["Unknown dataset 'cuhk03'", "manifest"],
        ),
        (["--dataset", "manifest", "--attributes", "x.csv"], ["--dataset manifest needs --schema"]),
        (["--dataset", "market1501", "--attributes", "nope.mat"], ["'nope.mat' does not exist"]),
    ],
)
def test_priors_errors(monkeypatch, capsys, tmp_path, args, fragments):
    code, _, err = run(monkeypatch, capsys, "data", "priors", *args, "--out", str(tmp_path / "o"))
    assert_one_sentence_error(code, err, *fragments)
    assert not (tmp_path / "o").exists()


def test_priors_wrong_dataset(monkeypatch, capsys, shared_data, tmp_path):
    code, _, err = run(
        monkeypatch, capsys, "data", "priors", "--dataset", "market1501",
        "--attributes", str(shared_data / "duke_attribute.mat"), "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert_one_sentence_error(code, err, "holds the dukemtmc attributes", "not the market1501 ones")

"""The attribute-file loader on the real Market-1501 / DukeMTMC-reID files: every quirk is an
explicit, counted decision (the counts are pinned here and documented in docs/schemas.md),
cross-checked against the raw MATLAB fields read independently with scipy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.io

from attrimp.data.annotations import (
    AttributeTable,
    load_attribute_file,
    load_manifest_attributes,
    save_attribute_file,
)
from attrimp.errors import DataError, SchemaError
from attrimp.model.schema import load_schema

FILES = {
    "market1501": ("market_attribute.mat", "market_attribute"),
    "dukemtmc": ("duke_attribute.mat", "duke_attribute"),
}
MARKET_UP = ["upblack", "upwhite", "upred", "uppurple", "upyellow", "upgray", "upblue", "upgreen"]
MARKET_DOWN = [
    "downblack",
    "downwhite",
    "downpink",
    "downpurple",
    "downyellow",
    "downgray",
    "downblue",
    "downgreen",
    "downbrown",
]
DUKE_UP = ["upblack", "upwhite", "upred", "uppurple", "upgray", "upblue", "upgreen", "upbrown"]
DUKE_DOWN = ["downblack", "downwhite", "downred", "downgray", "downblue", "downgreen", "downbrown"]


def raw(shared_data, dataset, split):
    """Fields of one split as flat arrays (ids as ints), read with scipy's record layout."""
    filename, var = FILES[dataset]
    s = scipy.io.loadmat(str(shared_data / filename))[var][0, 0][split][0, 0]
    out = {n: s[n].ravel() for n in s.dtype.names if n != "image_index"}
    out["pid"] = np.array([int(x[0]) for x in s["image_index"].ravel()])
    return out


def colour_count(fields, cols):
    return np.stack([fields[c] == 2 for c in cols], axis=1).sum(axis=1)


@pytest.fixture(scope="module")
def market(shared_data) -> AttributeTable:
    return load_attribute_file(shared_data / "market_attribute.mat", "market1501")


@pytest.fixture(scope="module")
def duke(shared_data) -> AttributeTable:
    return load_attribute_file(shared_data / "duke_attribute.mat", "dukemtmc")


# ----- the real files -----------------------------------------------------------------------


def test_market_identities(market):
    assert market.schema.name == "market1501"
    assert market.report.identities == {"train": 751, "test": 750}
    assert market.frame.shape == (1501, 2 + 27)
    assert market.multihot.shape == (1501, 39)
    assert market.frame["pid"].iloc[:3].tolist() == [2, 7, 10]
    assert market.frame.columns[:4].tolist() == ["pid", "split", "gender", "hair"]
    assert market.report.extra_columns == []
    # the two splits partition Market's identities 0001..1501 (no 0000 distractor, no -1 junk)
    assert sorted(market.pids.tolist()) == list(range(1, 1502))


def test_duke_identities(duke):
    assert duke.report.identities == {"train": 702, "test": 1110}
    assert duke.frame.shape == (1812, 2 + 23)
    assert duke.multihot.shape == (1812, 31)


@pytest.mark.parametrize("dataset", ["market1501", "dukemtmc"])
def test_columns_are_read_by_field_name(shared_data, dataset):
    """Every column equals the raw field of the same name (the field order differs per split)."""
    table = load_attribute_file(shared_data / FILES[dataset][0])
    assert table.schema.name == dataset  # recognised from the file
    for split in ("train", "test"):
        fields = raw(shared_data, dataset, split)
        part = table.frame[table.frame["split"] == split]
        for name, values in fields.items():
            np.testing.assert_array_equal(part[name].to_numpy(), values, err_msg=f"{split}.{name}")


def test_market_quirks(shared_data, market):
    r = market.report
    # decision: no colour marked -> the group has no value -> its experts are off (missing="off")
    assert r.count("no_value", split="train", group="upcolor") == 78
    assert r.count("no_value", split="train", group="downcolor") == 30
    assert r.count("no_value", split="test", group="upcolor") == 69
    assert r.count("no_value", split="test", group="downcolor") == 44
    assert r.count("no_value") == 78 + 30 + 69 + 44  # no other group ever lacks a value
    assert r.count("several_values") == 0  # Market never marks two colours
    assert r.count("missing_code") == 0
    assert r.count("duplicate_id") == 0
    assert r.count("split_overlap") == 0
    # Market's test split never marks a purple lower garment: that expert never fires there
    assert r.unused_values == {"train": [], "test": ["downcolor=purple"]}
    # the same identities, found independently from the raw fields
    for split, n_up, n_down in (("train", 78, 30), ("test", 69, 44)):
        f = raw(shared_data, "market1501", split)
        no_up = f["pid"][colour_count(f, MARKET_UP) == 0]
        no_down = f["pid"][colour_count(f, MARKET_DOWN) == 0]
        assert len(no_up) == n_up and len(no_down) == n_down
        assert r.pids("no_value", split=split, group="upcolor") == sorted(no_up.tolist())
        assert r.pids("no_value", split=split, group="downcolor") == sorted(no_down.tolist())
        assert (colour_count(f, MARKET_UP) <= 1).all() and (colour_count(f, MARKET_DOWN) <= 1).all()


def test_duke_quirks(shared_data, duke):
    r = duke.report
    # decision: `top` code 0 is a declared missing code (2 train identities) -> group off
    assert r.pids("missing_code", split="train", group="top") == [370, 679]
    assert r.count("missing_code") == 2
    assert r.pids("no_value", split="train", group="upcolor") == [3732]
    assert r.count("no_value", split="train", group="downcolor") == 0
    assert r.count("no_value", split="test", group="upcolor") == 14
    assert r.count("no_value", split="test", group="downcolor") == 11
    # decision: several lower colours (23 test identities) -> each marked colour's expert on
    assert r.count("several_values", split="test", group="downcolor") == 23
    assert r.count("several_values") == 23
    assert r.count("duplicate_id") == 0 and r.count("split_overlap") == 0
    assert r.unused_values == {"train": [], "test": []}
    test = raw(shared_data, "dukemtmc", "test")
    n_down = colour_count(test, DUKE_DOWN)
    assert np.bincount(n_down).tolist() == [11, 1076, 22, 1]
    assert test["pid"][n_down == 3].tolist() == [5951]
    assert r.pids("several_values", group="downcolor") == sorted(test["pid"][n_down > 1].tolist())
    assert (colour_count(test, DUKE_UP) <= 1).all()
    train = raw(shared_data, "dukemtmc", "train")
    assert sorted(np.unique(train["top"]).tolist()) == [0, 1, 2]


def test_quirk_decisions_reach_the_multihot(market, duke):
    def row(table, pid, split):
        return table.lookup([pid], split=split)[0]

    s = duke.schema
    top = s.group_slots("top")
    assert row(duke, 370, "train")[top].tolist() == [0, 0]  # code 0 -> top unknown, experts off
    down = s.group_slots("downcolor")
    got = row(duke, 5951, "test")[down]
    assert [s.group("downcolor").values[i] for i in np.flatnonzero(got)] == [
        "black",
        "white",
        "red",
    ]
    up = market.schema.group_slots("upcolor")
    assert row(market, 65, "train")[up].sum() == 0  # 0065 has no upper colour marked


def test_values_decode_quirks_as_their_own_value(duke):
    values = duke.values()
    by_pid = values.set_index(["split", "pid"])
    assert by_pid.loc[("train", 370), "top"] == "unknown"
    assert by_pid.loc[("test", 80), "downcolor"] == "multiple"
    assert by_pid.loc[("train", 1), "gender"] == "male"


def test_report_lines_are_readable(duke):
    lines = duke.report.lines()
    assert lines[0].endswith("702 train, 1110 test")
    assert any("group 'top': 2 identities" in line and "370, 679" in line for line in lines)
    assert any("group 'upcolor': 1 identity " in line for line in lines)


def test_subset(duke):
    test = duke.subset("test")
    assert len(test) == 1110 and test.splits == ["test"]
    assert test.report.count("several_values") == 23 and test.report.count("missing_code") == 0
    np.testing.assert_array_equal(test.multihot, duke.multihot[702:])
    with pytest.raises(DataError, match="no identity in split 'all'"):
        duke.subset("all")


def test_lookup(market):
    rows = market.lookup([7, 2])
    np.testing.assert_array_equal(rows, market.multihot[[1, 0]])
    with pytest.raises(
        DataError,
        match=r"identity 0 has no attributes in split 'train' of .*\(2 identities missing",
    ):
        market.lookup([0, 2, 1], split="train")


# ----- bad files ----------------------------------------------------------------------------


def _split_dict(shared_data, dataset, split):
    fields = raw(shared_data, dataset, split)
    pid = fields.pop("pid")
    return {**fields, "image_index": np.array([f"{p:04d}" for p in pid], dtype=object)}


def _savemat(path, variable, train, test):
    scipy.io.savemat(str(path), {variable: {"train": train, "test": test}})
    return path


def test_missing_file_and_junk_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_attribute_file(tmp_path / "nope.mat")
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"definitely not a MATLAB file" * 10)
    with pytest.raises(DataError, match=r"'.*junk\.mat' is not a readable MATLAB file"):
        load_attribute_file(junk, "market1501")


def test_wrong_dataset(shared_data):
    with pytest.raises(
        SchemaError,
        match=r"duke_attribute\.mat' holds the dukemtmc attributes .* not the market1501 ones",
    ):
        load_attribute_file(shared_data / "duke_attribute.mat", "market1501")


def test_field_the_schema_needs_is_missing(shared_data, tmp_path):
    train = _split_dict(shared_data, "market1501", "train")
    test = _split_dict(shared_data, "market1501", "test")
    del test["age"]
    path = _savemat(tmp_path / "market_attribute.mat", "market_attribute", train, test)
    with pytest.raises(SchemaError, match=r"market_attribute\.mat', split 'test': no field 'age'"):
        load_attribute_file(path)


def test_undeclared_code_names_file_column_and_code(shared_data, tmp_path):
    train = _split_dict(shared_data, "market1501", "train")
    test = _split_dict(shared_data, "market1501", "test")
    train["hat"] = train["hat"].copy()
    train["hat"][5] = 3
    path = _savemat(tmp_path / "m.mat", "market_attribute", train, test)
    with pytest.raises(SchemaError, match=r"m\.mat'.*column 'hat' holds the code 3 \(row 5\)"):
        load_attribute_file(path)


def test_field_length_mismatch(shared_data, tmp_path):
    train = _split_dict(shared_data, "dukemtmc", "train")
    test = _split_dict(shared_data, "dukemtmc", "test")
    train["boots"] = train["boots"][:-1]
    path = _savemat(tmp_path / "d.mat", "duke_attribute", train, test)
    with pytest.raises(
        DataError, match=r"split 'train': field 'boots' has 701 entries for 702 identities"
    ):
        load_attribute_file(path, "dukemtmc")


def test_renamed_variable_is_recognised_by_its_fields(shared_data, tmp_path):
    train = _split_dict(shared_data, "dukemtmc", "train")
    test = _split_dict(shared_data, "dukemtmc", "test")
    path = _savemat(tmp_path / "x.mat", "attributes", train, test)
    table = load_attribute_file(path)
    assert table.schema.name == "dukemtmc" and len(table) == 1812


def test_field_order_and_id_layout_do_not_matter(tmp_path):
    """A struct whose fields come in another order and whose ids are numbers, not strings."""
    schema = load_schema("market1501")
    rng = np.random.default_rng(0)

    def split(pids):
        fields = {}
        for g in reversed(schema.groups):
            for c in reversed(g.source_columns):
                hi = 4 if c == "age" else 2
                fields[c] = rng.integers(1, hi + 1, size=len(pids)).astype(np.uint8)
        fields["image_index"] = np.asarray(pids, dtype=np.float64)
        return fields

    train, test = split([5, 3, 9]), split([4])  # a one-identity split is squeezed by MATLAB I/O
    path = _savemat(tmp_path / "market_attribute.mat", "market_attribute", train, test)
    table = load_attribute_file(path)
    assert table.frame["pid"].tolist() == [5, 3, 9, 4]
    assert table.frame["age"].tolist() == [*train["age"].tolist(), *test["age"].tolist()]
    assert table.frame["upgreen"].tolist() == [
        *train["upgreen"].tolist(),
        *test["upgreen"].tolist(),
    ]


def test_duplicates_and_split_overlap_are_reported(market, tmp_path):
    frame = market.frame
    dup = pd.concat([frame, frame.iloc[[0]]], ignore_index=True)
    overlap = frame.iloc[[1]].assign(split="test")
    table = AttributeTable.from_frame(pd.concat([dup, overlap], ignore_index=True), market.schema)
    assert table.report.pids("duplicate_id", split="train") == [2]
    assert table.report.pids("split_overlap") == [7]
    conflicting = frame.iloc[[0]].assign(gender=2)
    with pytest.raises(
        DataError, match="identity 2 appears twice in split 'train' with different attributes"
    ):
        AttributeTable.from_frame(pd.concat([frame, conflicting]), market.schema)


# ----- writing and CSV ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".mat", ".csv"])
def test_save_and_load_round_trip(duke, tmp_path, suffix):
    path = save_attribute_file(duke, tmp_path / f"duke_attribute{suffix}")
    again = load_attribute_file(path, "dukemtmc")
    pd.testing.assert_frame_equal(again.frame, duke.frame)
    np.testing.assert_array_equal(again.multihot, duke.multihot)
    assert again.report.quirks == duke.report.quirks
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary


def test_csv_for_a_dataset_with_a_schema_toml(tmp_path):
    schema_path = tmp_path / "s.toml"
    schema_path.write_text(
        '[[groups]]\nname = "bag"\nkind = "single"\ncolumn = "bag"\nvalues = ["no", "yes"]\ncodes = [0, 1]\n'
        '[[groups]]\nname = "shirt"\nkind = "multiclass"\nvalues = ["red", "blue"]\ncolumns = ["red", "blue"]\n'
    )
    csv = tmp_path / "a.csv"
    csv.write_text("pid,bag,red,blue,note\n1,0,1,0,x\n2,1,1,1,y\n3,1,0,0,z\n")
    table = load_attribute_file(csv, schema_path)
    assert table.frame["split"].tolist() == ["all"] * 3  # no split column: one pool
    assert table.report.extra_columns == ["note"]
    np.testing.assert_array_equal(table.multihot, [[1, 0, 1, 0], [0, 1, 1, 1], [0, 1, 0, 0]])
    assert table.report.pids("several_values", group="shirt") == [2]
    assert table.report.pids("no_value", group="shirt") == [3]
    with pytest.raises(SchemaError, match="does not match a built-in schema"):
        load_attribute_file(csv)


def test_csv_errors(tmp_path):
    schema = load_schema("market1501")
    cols = schema.source_columns
    good = {c: [1] for c in cols}

    def write(name, extra):
        frame = pd.DataFrame({"pid": [1], "split": ["train"], **good} | extra)
        path = tmp_path / name
        frame.to_csv(path, index=False)
        return path

    with pytest.raises(DataError, match=r"column 'hat' is blank in row 0"):
        load_attribute_file(write("blank.csv", {"hat": [None]}), "market1501")
    with pytest.raises(DataError, match=r"column 'age' holds 'old' in row 0"):
        load_attribute_file(write("word.csv", {"age": ["old"]}), "market1501")
    with pytest.raises(DataError, match="has the split 'val'"):
        load_attribute_file(write("split.csv", {"split": ["val"]}), "market1501")
    no_pid = tmp_path / "nopid.csv"
    pd.DataFrame(good).to_csv(no_pid, index=False)
    with pytest.raises(DataError, match="has no 'pid' column"):
        load_attribute_file(no_pid, "market1501")


# ----- manifests ----------------------------------------------------------------------------


def test_manifest_to_identities(tmp_path):
    schema_path = tmp_path / "s.toml"
    schema_path.write_text(
        '[[groups]]\nname = "hat"\nkind = "single"\ncolumn = "hat"\nvalues = ["no", "yes"]\ncodes = [0, 1]\n'
    )
    rows = [
        ("a.jpg", 1, 0, "train", 1),
        ("b.jpg", 1, 1, "train", 1),
        ("c.jpg", 2, 0, "train", 0),
        ("d.jpg", 3, 0, "query", 0),
        ("e.jpg", 3, 1, "gallery", 0),
        ("f.jpg", 4, 1, "gallery", 1),
        ("g.jpg", 0, 1, "gallery", None),  # a distractor: no attributes at all
    ]
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows, columns=["path", "pid", "camid", "split", "hat"]).to_csv(
        manifest, index=False
    )
    table = load_manifest_attributes(manifest, schema_path)
    assert table.frame[["pid", "split", "hat"]].values.tolist() == [
        [1, "train", 1], [2, "train", 0], [3, "test", 0], [4, "test", 1],
    ]  # fmt: skip
    assert table.report.pids("unannotated", split="test") == [0]

    rows[1] = ("b.jpg", 1, 1, "train", 0)
    pd.DataFrame(rows, columns=["path", "pid", "camid", "split", "hat"]).to_csv(
        manifest, index=False
    )
    with pytest.raises(DataError, match=r"identity 1 has different values in 'hat' \(\[0, 1\]\)"):
        load_manifest_attributes(manifest, schema_path)

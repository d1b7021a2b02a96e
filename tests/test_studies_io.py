"""studies.io.read_table: every format reads back the same table; every bad file is one sentence."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from studies.errors import StudyInputError
from studies.io import read_table, table_format


@pytest.fixture()
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "pid": np.repeat(np.arange(5), 4),
            "gender": rng.choice(["male", "female"], 20),
            "hat": rng.integers(1, 3, 20),
            "ap": rng.random(20),
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".csv.gz", ".parquet", ".jsonl", ".ndjson"])
def test_round_trip(tmp_path, table, suffix):
    path = tmp_path / f"t{suffix}"
    if suffix.startswith(".csv"):
        table.to_csv(path, index=False)
    elif suffix == ".tsv":
        table.to_csv(path, index=False, sep="\t")
    elif suffix == ".parquet":
        table.to_parquet(path)
    else:  # json.dumps, not DataFrame.to_json, which rounds floats to 10 digits
        lines = [json.dumps(r) for r in table.astype(object).to_dict(orient="records")]
        path.write_text("\n".join(lines) + "\n")
    got = read_table(path)
    assert list(got.columns) == list(table.columns)
    assert len(got) == len(table)
    np.testing.assert_allclose(got["ap"].to_numpy(), table["ap"].to_numpy(), rtol=1e-12)
    assert got["gender"].astype(str).tolist() == table["gender"].tolist()
    assert got["hat"].tolist() == table["hat"].tolist()


def test_missing_file(tmp_path):
    with pytest.raises(StudyInputError, match="does not exist"):
        read_table(tmp_path / "nope.csv")


def test_directory_is_not_a_table(tmp_path):
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(StudyInputError, match="is not a file"):
        read_table(tmp_path / "d.csv")


def test_unknown_suffix(tmp_path):
    path = tmp_path / "t.xlsx"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(StudyInputError, match=r"suffix '\.xlsx'"):
        read_table(path)
    with pytest.raises(StudyInputError):
        table_format("t.parquet.gz")


def test_empty_file_and_header_only(tmp_path):
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(StudyInputError, match="is empty"):
        read_table(empty)
    header_only = tmp_path / "h.csv"
    header_only.write_text("a,b,ap\n")
    with pytest.raises(StudyInputError, match="no rows"):
        read_table(header_only)


def test_duplicated_csv_header_is_refused_not_renamed(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("pid,ap,ap\n1,0.5,0.7\n2,0.1,0.2\n")
    # pandas alone would hand back columns ['pid', 'ap', 'ap.1'].
    assert list(pd.read_csv(path).columns) == ["pid", "ap", "ap.1"]
    with pytest.raises(StudyInputError, match="repeats the column name.*'ap'"):
        read_table(path)


def test_duplicated_key_in_jsonl_record(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text('{"pid": 1, "ap": 0.5}\n{"pid": 2, "ap": 0.1, "ap": 0.9}\n')
    with pytest.raises(StudyInputError, match="repeats the key 'ap'.*line 2"):
        read_table(path)


def test_duplicated_parquet_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "dup.parquet"
    t = pa.Table.from_arrays([pa.array([1, 2]), pa.array([0.1, 0.2])], names=["ap", "ap"])
    pq.write_table(t, path)
    with pytest.raises(StudyInputError, match="repeats the column name"):
        read_table(path)


def test_unreadable_content(tmp_path):
    bad_parquet = tmp_path / "bad.parquet"
    bad_parquet.write_bytes(b"this is not parquet at all")
    with pytest.raises(StudyInputError, match="bad.parquet"):
        read_table(bad_parquet)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(StudyInputError, match="invalid JSON on line 2"):
        read_table(bad_json)
    not_object = tmp_path / "list.jsonl"
    not_object.write_text("[1, 2]\n")
    with pytest.raises(StudyInputError, match="not a JSON object"):
        read_table(not_object)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00a,b\n\xff,\x00\n")
    with pytest.raises(StudyInputError, match="bin.csv"):
        read_table(binary)


@pytest.mark.parametrize("text", ["a,b\n1,2,3,4\n", "a,b\n1,2\n5,6,7\n"])
def test_csv_row_longer_than_header(tmp_path, text):
    # pandas would turn the extra leading fields into an index and shift every column.
    path = tmp_path / "ragged.csv"
    path.write_text(text)
    with pytest.raises(StudyInputError, match="ragged.csv.*(more fields|does not match)"):
        read_table(path)


def test_gzip_jsonl(tmp_path, table):
    path = tmp_path / "t.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        for rec in table.to_dict(orient="records"):
            fh.write(json.dumps(rec) + "\n")
    assert read_table(path).shape == table.shape

"""A result table with a nested column (list, struct) is refused naming the column, instead of
ending in pandas' ``TypeError: unhashable type`` deep inside the battery."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from studies.errors import StudyInputError
from studies.io import read_table


def _table(extra: pa.Array, name: str) -> pa.Table:
    return pa.table({"pid": [1, 2, 3], "ap": [0.5, 0.7, 0.9], "hat": [0, 1, 0], name: extra})


@pytest.mark.parametrize(
    ("name", "column"),
    [
        ("gates", pa.array([[1, 0], [0, 1], [1, 1]], type=pa.list_(pa.int64()))),
        ("box", pa.array([{"x": 1}, {"x": 2}, {"x": 3}])),
        ("tags", pa.array([[("a", 1)], [("b", 2)], []], type=pa.map_(pa.string(), pa.int64()))),
    ],
)
def test_parquet_nested_column_is_named(tmp_path, name, column):
    path = tmp_path / "t.parquet"
    pq.write_table(_table(column, name), path)
    with pytest.raises(StudyInputError, match=rf"has the nested column '{name}' \(type "):
        read_table(path)


def test_parquet_plain_columns_still_read(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(_table(pa.array(["a", "b", "a"]).dictionary_encode(), "cam"), path)
    df = read_table(path)
    assert list(df.columns) == ["pid", "ap", "hat", "cam"] and len(df) == 3


def test_jsonl_list_value_is_named(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"pid": 1, "ap": 0.5, "hat": 0}, {"pid": 2, "ap": 0.6, "hat": [1, 0]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(StudyInputError, match=r"list or object in the column 'hat' on line 2"):
        read_table(path)
    path.write_text(json.dumps(rows[0]) + "\n")
    assert read_table(path).equals(pd.DataFrame([rows[0]]))

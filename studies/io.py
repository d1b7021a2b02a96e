"""Reading result tables (CSV, Parquet, JSON Lines) without losing or altering a column.

pandas quietly renames a repeated CSV header to ``x.1`` and keeps only the last of two equal keys
in a JSON object, and both would hand the battery a table that is not the one on disk. So the
header is read from the file itself before pandas parses it, and every user-side problem becomes
one :class:`~studies.errors.StudyInputError` sentence naming the file.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from studies.errors import StudyInputError

#: suffix (lower case, compression suffix stripped) -> format name
FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_COMPRESSED = {".gz"}


def table_format(path: str | Path) -> str:
    """The format of a table file from its suffix (``.csv``, ``.tsv``, ``.parquet``/``.pq``,
    ``.jsonl``/``.ndjson``; ``.gz`` allowed on the text formats)."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    fmt = FORMATS.get(suffix)
    if fmt is None or (fmt == "parquet" and p.suffix.lower() in _COMPRESSED):
        known = ", ".join(sorted(FORMATS))
        raise StudyInputError(
            f"The table {str(p)!r} has the suffix {suffix or '(none)'!r}; "
            f"attrimp reads {known} (text formats may end in .gz)."
        )
    return fmt


def check_table_file(path: str | Path) -> str:
    """The checks of `read_table` that need no reading (the file exists, is a file of a known
    format, is not empty), so a command can refuse a table before it creates anything; the
    table's format."""
    p = Path(path)
    if not p.exists():
        raise StudyInputError(f"The table {str(p)!r} does not exist.")
    if not p.is_file():
        raise StudyInputError(f"The table {str(p)!r} is not a file.")
    fmt = table_format(p)
    if p.stat().st_size == 0:
        raise StudyInputError(f"The table {str(p)!r} is empty.")
    return fmt


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a result table, refusing anything that would silently change its columns or rows."""
    p = Path(path)
    fmt = check_table_file(p)
    try:
        if fmt in ("csv", "tsv"):
            df = _read_delimited(p, "\t" if fmt == "tsv" else ",")
        elif fmt == "parquet":
            df = _read_parquet(p)
        else:
            df = _read_jsonl(p)
    except StudyInputError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyInputError(f"The table {str(p)!r} cannot be read: {_reason(exc)}.") from exc
    except Exception as exc:  # pandas / pyarrow parse errors have many types
        raise StudyInputError(
            f"The table {str(p)!r} is not a valid {fmt} file: {_reason(exc)}."
        ) from exc
    if df.shape[1] == 0:
        raise StudyInputError(f"The table {str(p)!r} has no columns.")
    if len(df) == 0:
        raise StudyInputError(f"The table {str(p)!r} has a header but no rows.")
    return df


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.rstrip(".")


def _open_text(p: Path):
    if p.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8-sig", newline="")
    return open(p, encoding="utf-8-sig", newline="")


def _check_unique(p: Path, names: Iterable[str], where: str = "header") -> None:
    counts = Counter(str(n) for n in names)
    dupes = [n for n, c in counts.items() if c > 1]
    if dupes:
        listed = ", ".join(repr(d) for d in dupes)
        raise StudyInputError(
            f"The table {str(p)!r} repeats the column name(s) {listed} in its {where}; "
            "every column needs a unique name."
        )


def _read_delimited(p: Path, sep: str) -> pd.DataFrame:
    with _open_text(p) as fh:
        try:
            header = next(csv.reader(fh, delimiter=sep))
        except StopIteration:
            raise StudyInputError(f"The table {str(p)!r} is empty.") from None
    if not any(h.strip() for h in header):
        raise StudyInputError(f"The table {str(p)!r} has an empty header line.")
    _check_unique(p, header)
    # index_col=False: a row longer than the header must not silently become an index; pandas
    # then warns instead, and that warning is turned into the error it should be.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(p, sep=sep, encoding="utf-8-sig", index_col=False)
    except pd.errors.ParserWarning:
        raise StudyInputError(
            f"The table {str(p)!r} has a row with more fields than its header."
        ) from None
    except pd.errors.ParserError as exc:
        raise StudyInputError(
            f"The table {str(p)!r} has a row that does not match its header: {_reason(exc)}."
        ) from None
    except pd.errors.EmptyDataError:
        raise StudyInputError(f"The table {str(p)!r} has no columns.") from None


def _read_parquet(p: Path) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(p)
    _check_unique(p, schema.names, "schema")
    nested = [f for f in schema if pa.types.is_nested(f.type)]
    if nested:  # lists, structs, maps: one cell holds many values, no attribute or outcome can
        raise StudyInputError(
            f"The table {str(p)!r} has the nested column {nested[0].name!r} "
            f"(type {nested[0].type}); every column must hold one plain value per row: "
            "flatten it, or drop it."
        )
    return pd.read_parquet(p)


def _read_jsonl(p: Path) -> pd.DataFrame:
    """Parse line by line so that a key repeated inside one record is caught, not overwritten."""
    records: list[dict] = []
    with _open_text(p) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line, object_pairs_hook=_unique_pairs)
            except _DuplicateKey as dup:
                raise StudyInputError(
                    f"The table {str(p)!r} repeats the key {dup.key!r} in the record on line "
                    f"{lineno}; every column needs a unique name."
                ) from None
            except json.JSONDecodeError as exc:
                raise StudyInputError(
                    f"The table {str(p)!r} has invalid JSON on line {lineno}: {exc.msg}."
                ) from None
            if not isinstance(record, dict):
                raise StudyInputError(
                    f"The table {str(p)!r} has a line that is not a JSON object (line {lineno})."
                )
            nested = [k for k, v in record.items() if isinstance(v, (list, dict))]
            if nested:
                raise StudyInputError(
                    f"The table {str(p)!r} has a list or object in the column {nested[0]!r} "
                    f"on line {lineno}; every column must hold one plain value per row."
                )
            records.append(record)
    if not records:
        raise StudyInputError(f"The table {str(p)!r} has no records.")
    return pd.DataFrame.from_records(records)


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


__all__ = ["FORMATS", "read_table", "table_format"]

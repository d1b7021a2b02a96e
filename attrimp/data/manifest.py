"""Any attribute dataset: a manifest CSV plus a schema TOML.

The manifest has one row per image: ``path`` (relative to the CSV's folder, and inside it),
``pid`` (integer identity; ``-1`` = junk, excluded and counted), ``camid`` (non-negative
integer, used as given), ``split`` (``train``, ``query`` or ``gallery``) and the attribute
columns the schema names (its ``column`` / ``columns``), coded as the schema says. An empty cell
in a group's column(s) means "not annotated": that group is unknown for the image (all its
slots 0, so the oracle router keeps its experts off). Attributes may differ between images of one
identity — a manifest is image-level, unlike the Market/Duke files.

Image paths may not leave the dataset folder: a ``path`` that is absolute or climbs out with
``..`` (``../../etc/passwd``) is refused, so a manifest from elsewhere cannot make a run read
arbitrary files. A manifest whose images live elsewhere opts in by naming the column
``absolute_path`` instead of ``path``; every entry of that column must then be absolute.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from attrimp.data.market import _check_query_matches
from attrimp.data.records import JUNK_PID, SPLITS, DataReport, ImageRecord, ReIDData
from attrimp.errors import DataError, SchemaError
from attrimp.model.schema import AttributeSchema, MissingPolicy, load_schema

REQUIRED = ("path", "pid", "camid", "split")
#: the path column of a manifest that opts in to absolute image paths (instead of ``path``)
ABSOLUTE = "absolute_path"


def load_manifest(
    manifest: str | Path,
    schema: str | Path | AttributeSchema,
    *,
    root: str | Path | None = None,
    check_files: bool = True,
) -> ReIDData:
    """Read a manifest CSV against ``schema`` (a built-in name, a TOML path or a schema).

    ``root`` resolves relative paths (default: the CSV's folder). With ``check_files`` every
    listed image must exist (one error names the first missing files and their count).
    """
    manifest = Path(manifest)
    if manifest.is_dir():
        manifest = manifest / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"The manifest {str(manifest)!r} does not exist.")
    if not isinstance(schema, AttributeSchema):
        schema = load_schema(schema)
    base = Path(root) if root is not None else manifest.parent
    src = f"manifest {str(manifest)!r}"
    frame, absolute = _read_manifest(manifest, src)
    frame = _checked_columns(frame, src)

    report = DataReport()
    junk = frame["pid"] == JUNK_PID
    if junk.any():
        report.add("junk_images", int(junk.sum()))
    multihot = encode_with_gaps(frame, schema, source=src)
    paths = image_paths(frame["path"], base, absolute=absolute, source=src)
    if check_files:
        _check_images_exist(paths, junk, src)
    records, pid_to_label = _image_records(frame, paths, multihot, ~junk.to_numpy())
    if not any(records.values()):
        raise DataError(f"The {src} lists no usable image.")
    _check_query_matches(records["query"], records["gallery"], report)
    return ReIDData(
        name=schema.name,
        root=base,
        schema=schema,
        train=records["train"],
        query=records["query"],
        gallery=records["gallery"],
        pid_to_label=pid_to_label,
        report=report,
        attribute_source=manifest,
    )


def _read_manifest(manifest: Path, src: str) -> tuple[pd.DataFrame, bool]:
    """The CSV with its path column named ``path``, and whether its paths are absolute (an
    ``absolute_path`` column); every required column checked present."""
    try:
        frame = pd.read_csv(manifest, dtype={"path": str, "split": str}, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"The {src} is not a readable CSV file: {e}.") from None
    absolute = ABSOLUTE in frame.columns
    if absolute:
        if "path" in frame.columns:
            raise DataError(
                f"The {src} has both a 'path' and an {ABSOLUTE!r} column; keep one (relative "
                f"paths inside the dataset folder in 'path', or absolute ones in {ABSOLUTE!r})."
            )
        frame = frame.rename(columns={ABSOLUTE: "path"})
    absent = [c for c in REQUIRED if c not in frame.columns]
    if absent:
        raise DataError(
            f"The {src} lacks the column {absent[0]!r}; it needs {', '.join(REQUIRED)} plus the "
            "schema's attribute columns."
        )
    return frame.reset_index(drop=True), absolute


def _checked_columns(frame: pd.DataFrame, src: str) -> pd.DataFrame:
    """``pid`` and ``camid`` as integers (camid >= 0, pid >= -1), ``split`` normalised to
    train/query/gallery, no empty path; the first bad row is named (CSV line = row + 2)."""
    for col in ("pid", "camid"):
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() | (values != values.round())
        if bad.any():
            i = _first(bad)
            raise DataError(
                f"The {src} has {col} {frame[col].iloc[i]!r} on row {i + 2}, not an integer."
            )
        frame[col] = values.astype(np.int64)
    if (frame["camid"] < 0).any():
        raise DataError(f"The {src} has a negative camid on row {_first(frame['camid'] < 0) + 2}.")
    if (frame["pid"] < JUNK_PID).any():
        i = _first(frame["pid"] < JUNK_PID)
        raise DataError(
            f"The {src} has pid {frame['pid'].iloc[i]} on row {i + 2}; use -1 for junk."
        )
    splits = frame["split"].fillna("").str.strip().str.lower()
    bad_split = ~splits.isin(SPLITS)
    if bad_split.any():
        i = _first(bad_split)
        raise DataError(
            f"The {src} has split {frame['split'].iloc[i]!r} on row {i + 2}; use train, query "
            "or gallery."
        )
    frame["split"] = splits
    if frame["path"].isna().any():
        raise DataError(f"The {src} has an empty path on row {_first(frame['path'].isna()) + 2}.")
    return frame


def _first(mask: pd.Series) -> int:
    """The position of the first True of a boolean column."""
    return int(np.flatnonzero(mask.to_numpy())[0])


def _check_images_exist(paths: list[Path], junk: pd.Series, src: str) -> None:
    """Every listed image other than junk exists (one error: the first three and the count)."""
    missing = [str(p) for p, j in zip(paths, junk) if not j and not p.is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(
            f"The {src} lists {len(missing)} images that do not exist: "
            f"{', '.join(missing[:3])}{more}."
        )


def _image_records(
    frame: pd.DataFrame, paths: list[Path], multihot: np.ndarray, keep: np.ndarray
) -> tuple[dict[str, list[ImageRecord]], dict[int, int]]:
    """The kept rows as records per split, and the classifier label of each training pid
    (train pids in increasing order; query and gallery images get label -1)."""
    train_pids = sorted(set(frame.loc[keep & (frame["split"] == "train").to_numpy(), "pid"]))
    pid_to_label = {int(p): i for i, p in enumerate(train_pids)}
    records: dict[str, list[ImageRecord]] = {s: [] for s in SPLITS}
    for i in np.flatnonzero(keep):
        pid, split = int(frame["pid"].iat[i]), frame["split"].iat[i]
        records[split].append(
            ImageRecord(
                path=paths[i],
                pid=pid,
                camid=int(frame["camid"].iat[i]),
                split=split,
                label=pid_to_label[pid] if split == "train" else -1,
                attributes=multihot[i],
            )
        )
    return records, pid_to_label


def image_paths(column: pd.Series, base: Path, *, absolute: bool, source: str) -> list[Path]:
    """The image paths of a manifest, each checked to stay where the manifest says.

    Relative paths are joined to ``base`` and must stay inside it after ``..`` is folded
    (lexically: a symbolic link the user put inside the folder is theirs to follow). Absolute
    paths are allowed only in the ``absolute_path`` column, where every entry must be one.
    """
    out: list[Path] = []
    for i, text in enumerate(column):
        p = Path(str(text).strip())
        if absolute:
            if not p.is_absolute():
                raise DataError(
                    f"The {source} has the relative path {str(text)!r} on row {i + 2} in its "
                    f"{ABSOLUTE!r} column, where every path must be absolute."
                )
            out.append(p)
            continue
        if p.is_absolute() or p.anchor:
            raise DataError(
                f"The {source} has the absolute path {str(text)!r} on row {i + 2}; paths are "
                f"relative to {str(base)!r}. To list images elsewhere, name the column "
                f"{ABSOLUTE!r} instead of 'path' (docs/data.md)."
            )
        if os.path.normpath(p).split(os.sep)[0] == os.pardir:
            raise DataError(
                f"The {source} has the path {str(text)!r} on row {i + 2}, which leaves the "
                f"dataset folder {str(base)!r}; paths must stay inside it (or use an "
                f"{ABSOLUTE!r} column, docs/data.md)."
            )
        out.append(base / p)
    return out


def encode_with_gaps(frame: pd.DataFrame, schema: AttributeSchema, *, source: str) -> np.ndarray:
    """``schema.encode`` for a table whose attribute cells may be empty (= not annotated).

    The schema encoder wants integer codes everywhere; empty cells are filled with a valid code
    for encoding and the group's slots are then cleared for those rows, so an empty cell can
    never turn into a value.
    """
    need = [c for g in schema.groups for c in g.source_columns]
    absent = [c for c in need if c not in frame.columns]
    if absent:
        raise SchemaError(
            f"The {source} lacks the attribute column {absent[0]!r} that schema "
            f"{schema.name!r} needs ({len(absent)} missing in all)."
        )
    cols: dict[str, np.ndarray] = {}
    gaps: list[tuple[int, np.ndarray]] = []
    for gi, g in enumerate(schema.groups):
        fill = g.codes[0] if g.column is not None else g.negative
        empty = np.zeros(len(frame), dtype=bool)
        for c in g.source_columns:
            values = pd.to_numeric(frame[c], errors="coerce")
            nonint = values.notna() & (values != values.round())
            garbage = values.isna() & frame[c].notna()
            if (nonint | garbage).any():
                i = int(np.flatnonzero((nonint | garbage).to_numpy())[0])
                raise SchemaError(
                    f"The {source} has {frame[c].iloc[i]!r} in attribute column {c!r} on row "
                    f"{i + 2}, not an integer code."
                )
            empty |= values.isna().to_numpy()
            cols[c] = values.fillna(fill).astype(np.int64).to_numpy()
        if empty.any() and schema.missing is MissingPolicy.ERROR:
            i = int(np.flatnonzero(empty)[0])
            raise SchemaError(
                f"The {source} has no value for group {g.name!r} on row {i + 2} and schema "
                f"{schema.name!r} sets missing = 'error'."
            )
        gaps.append((gi, empty))
    out = schema.encode(cols, source=source)
    for gi, empty in gaps:
        if empty.any():
            out[np.ix_(empty, schema.group_slots(schema.groups[gi].name))] = 0.0
    return out

"""Identity-level attribute annotation files: the Market-1501 / DukeMTMC-reID ``.mat`` files, a
CSV for any dataset with a schema TOML, and an image-level manifest reduced to identities.

Everything lands in one `AttributeTable`: the raw codes exactly as the file holds them (so no
data is altered), the schema's multi-hot encoding (policies applied) and a report of every quirk
the file has (identities with no colour marked, with several, declared missing codes, duplicate
ids, ids in both splits, values never used, columns the schema does not read). The quirks of the
real files, with their counts, are documented in docs/schemas.md and pinned by
tests/test_annotations.py.

The MATLAB structs are read by *field name*: Market and Duke store their fields in different
orders (and in a different order in each split), so reading by position would silently swap
attributes.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from attrimp.errors import DataError, SchemaError
from attrimp.io import atomic_writer, sha256_file
from attrimp.model.schema import (
    BUILTIN_SCHEMAS,
    MULTIPLE,
    UNKNOWN,
    AttributeSchema,
    load_schema,
)

#: The splits an identity-level attribute file can hold. ``all`` marks rows of a CSV that has no
#: ``split`` column (one pool of identities).
SPLITS = ("train", "test")
NO_SPLIT = "all"

#: Name of the MATLAB struct variable in each dataset's public file.
MAT_VARIABLES = {"market1501": "market_attribute", "dukemtmc": "duke_attribute"}
ID_FIELD = "image_index"

#: Manifest split -> identity-level split: query and gallery identities are the test identities.
MANIFEST_SPLITS = {"train": "train", "query": "test", "gallery": "test", "test": "test"}


@dataclass(frozen=True)
class AttributeSource:
    """Where a dataset's public attribute file lives and what its bytes must hash to."""

    dataset: str
    filename: str
    url: str
    sha256: str
    licence: str


SOURCES = {
    "market1501": AttributeSource(
        "market1501",
        "market_attribute.mat",
        "https://raw.githubusercontent.com/vana77/Market-1501_Attribute/master/market_attribute.mat",
        "d9fdbdd2e33ed2c4e3a073b77b1d16ac9fae5d93dd597ccd4e38bf75b2efaa95",
        "see https://github.com/vana77/Market-1501_Attribute (Lin et al., Pattern Recognition 2019)",
    ),
    "dukemtmc": AttributeSource(
        "dukemtmc",
        "duke_attribute.mat",
        "https://raw.githubusercontent.com/vana77/DukeMTMC-attribute/master/duke_attribute.mat",
        "06b9833be1c6339362ccf2112a8cf885c7c64db8f038da9e12896f86bec51e8c",
        "CC BY-NC-SA 4.0 (https://github.com/vana77/DukeMTMC-attribute)",
    ),
}

# ----- the report -----------------------------------------------------------------------------

#: Identity-level quirk kinds and what each means for the router.
QUIRK_KINDS = {
    "no_value": "no value of the group is marked; the schema's `missing` policy applies",
    "missing_code": "the group's column holds a declared missing code; `missing` policy applies",
    "several_values": "several values of a one-hot group are marked; `multiple` policy applies",
    "duplicate_id": "the identity appears more than once in the split (identical rows)",
    "split_overlap": "the identity appears in more than one split",
    "unannotated": "manifest identity whose images carry no attribute at all (left out)",
}


@dataclass(frozen=True)
class Quirk:
    """One kind of oddity in one split (and group), with the identities that have it."""

    kind: str
    split: str
    pids: tuple[int, ...]
    group: str | None = None

    @property
    def count(self) -> int:
        return len(self.pids)

    def describe(self) -> str:
        where = f"split {self.split!r}" + (f", group {self.group!r}" if self.group else "")
        shown = ", ".join(str(p) for p in self.pids[:8]) + (" ..." if self.count > 8 else "")
        noun = "identity" if self.count == 1 else "identities"
        return f"{where}: {self.count} {noun} — {QUIRK_KINDS[self.kind]} ({shown})"


@dataclass
class AttributeReport:
    """What the loader found odd in a file; nothing here was changed or dropped silently."""

    source: str
    identities: dict[str, int] = field(default_factory=dict)
    quirks: list[Quirk] = field(default_factory=list)
    #: split -> ``group=value`` names that no identity of the split has (their expert never fires)
    unused_values: dict[str, list[str]] = field(default_factory=dict)
    #: columns in the file that the schema does not read (kept in the frame, not encoded)
    extra_columns: list[str] = field(default_factory=list)

    def _select(self, kind: str, split: str | None, group: str | None) -> list[Quirk]:
        if kind not in QUIRK_KINDS:
            raise KeyError(f"unknown quirk kind {kind!r}; known: {sorted(QUIRK_KINDS)}")
        return [
            q
            for q in self.quirks
            if q.kind == kind
            and (split is None or q.split == split)
            and (group is None or q.group == group)
        ]

    def count(self, kind: str, *, split: str | None = None, group: str | None = None) -> int:
        """Identities with this quirk (summed over the groups/splits not fixed)."""
        return sum(q.count for q in self._select(kind, split, group))

    def pids(self, kind: str, *, split: str | None = None, group: str | None = None) -> list[int]:
        return sorted({p for q in self._select(kind, split, group) for p in q.pids})

    def lines(self) -> list[str]:
        out = [f"{self.source}: " + ", ".join(f"{n} {s}" for s, n in self.identities.items())]
        out += [q.describe() for q in self.quirks]
        out += [
            f"split {s!r}: never marked: {', '.join(v)}" for s, v in self.unused_values.items() if v
        ]
        if self.extra_columns:
            out.append(f"columns the schema does not read: {', '.join(self.extra_columns)}")
        return out

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"kind": q.kind, "split": q.split, "group": q.group, "count": q.count}
                for q in self.quirks
            ],
            columns=["kind", "split", "group", "count"],
        )


# ----- the table ------------------------------------------------------------------------------


@dataclass
class AttributeTable:
    """Identity-level attributes: ``frame`` holds ``pid``, ``split`` and the raw columns as the
    file codes them; ``multihot`` is ``schema.encode(frame)`` (policies applied), row-aligned."""

    schema: AttributeSchema
    frame: pd.DataFrame
    multihot: np.ndarray
    report: AttributeReport
    source: str = "annotations"

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        schema: AttributeSchema,
        *,
        source: str = "annotations",
        extra_columns: Sequence[str] = (),
        quirks: Iterable[Quirk] = (),
    ) -> AttributeTable:
        """Validate a ``pid, split, <columns>`` frame, encode it and list its quirks."""
        frame = frame.reset_index(drop=True)
        for col in ("pid", "split"):
            if col not in frame.columns:
                raise DataError(f"{source} has no {col!r} column.")
        bad_split = sorted(set(frame["split"]) - {*SPLITS, NO_SPLIT})
        if bad_split:
            raise DataError(
                f"{source} has the split {bad_split[0]!r}; use {', '.join(SPLITS)} "
                f"(or no split column)."
            )
        frame = frame.copy()
        frame["pid"] = _int_column(frame["pid"], "pid", source)
        for col in schema.source_columns:
            if col not in frame.columns:
                raise SchemaError(
                    f"{source} lacks the column {col!r} that schema {schema.name!r} needs."
                )
            frame[col] = _int_column(frame[col], col, source)
        _check_duplicates(frame, schema, source)
        multihot = schema.encode(frame, source=source)
        report = _report(frame, schema, source, extra_columns, quirks)
        return cls(schema=schema, frame=frame, multihot=multihot, report=report, source=source)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def splits(self) -> list[str]:
        present = set(self.frame["split"])
        return [s for s in (*SPLITS, NO_SPLIT) if s in present]

    @property
    def pids(self) -> np.ndarray:
        return self.frame["pid"].to_numpy()

    def marks(self) -> np.ndarray:
        """``bool [n, n_slots]``: the marked values before the missing/multiple policies."""
        return self.schema.marks(self.frame, source=self.source)

    def values(self) -> pd.DataFrame:
        """``pid, split`` + one column per group holding the value name, ``unknown`` or
        ``multiple`` — read from the raw marks, so "multiple" survives a policy that switches
        such groups off."""
        decoded = self.schema.decode(self.marks())
        out = self.frame[["pid", "split"]].copy()
        for name in self.schema.group_names:
            out[name] = decoded[name]
        return out

    def subset(self, split: str) -> AttributeTable:
        keep = (self.frame["split"] == split).to_numpy()
        if not keep.any():
            raise DataError(f"{self.source} has no identity in split {split!r}.")
        return AttributeTable.from_frame(
            self.frame[keep],
            self.schema,
            source=self.source,
            extra_columns=self.report.extra_columns,
        )

    def lookup(self, pids: Sequence[int], *, split: str | None = None) -> np.ndarray:
        """Multi-hot rows ``[len(pids), n_slots]`` for these identities (in that order)."""
        frame = self.frame if split is None else self.frame[self.frame["split"] == split]
        index = pd.Index(frame["pid"].to_numpy())
        if not index.is_unique:
            dup = index[index.duplicated()][0]
            raise DataError(
                f"{self.source}: identity {dup} appears in several rows"
                + ("" if split else "; name the split to look it up")
                + "."
            )
        pos = index.get_indexer(np.asarray(pids, dtype=np.int64))
        if (pos < 0).any():
            missing = np.asarray(pids)[pos < 0]
            where = f" split {split!r} of" if split else ""
            raise DataError(
                f"identity {int(missing[0])} has no attributes in{where} {self.source} "
                f"({len(missing)} identities missing in all)."
            )
        return self.multihot[frame.index.to_numpy()[pos]]


def _int_column(col: pd.Series, name: str, source: str) -> pd.Series:
    """Codes must be whole numbers; a blank or a word is an error naming the row."""
    values = pd.to_numeric(col, errors="coerce")
    bad = values.isna() | (values != np.round(values))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        value = col.iloc[row]
        if pd.isna(value):
            raise DataError(
                f"{source}: column {name!r} is blank in row {row}; every code is needed."
            )
        value = value.item() if hasattr(value, "item") else value
        raise DataError(
            f"{source}: column {name!r} holds {value!r} in row {row}, which is not a "
            "whole-number code."
        )
    return values.astype(np.int64)


def _check_duplicates(frame: pd.DataFrame, schema: AttributeSchema, source: str) -> None:
    """Identical repeated rows are reported; rows that disagree cannot be resolved."""
    cols = ["split", "pid", *schema.source_columns]
    dup = frame.duplicated(["split", "pid"], keep=False)
    if dup.any():
        distinct = frame.loc[dup, cols].drop_duplicates()
        clash = distinct.duplicated(["split", "pid"], keep=False)
        if clash.any():
            row = distinct[clash].iloc[0]
            raise DataError(
                f"{source}: identity {int(row['pid'])} appears twice in split {row['split']!r} "
                "with different attributes."
            )


def _report(
    frame: pd.DataFrame,
    schema: AttributeSchema,
    source: str,
    extra_columns: Sequence[str],
    quirks: Iterable[Quirk],
) -> AttributeReport:
    marks = schema.marks(frame, source=source)
    splits = [s for s in (*SPLITS, NO_SPLIT) if (frame["split"] == s).any()]
    report = AttributeReport(
        source=source,
        identities={s: int((frame["split"] == s).sum()) for s in splits},
        extra_columns=list(extra_columns),
    )
    pid = frame["pid"].to_numpy()
    offsets = np.cumsum([0] + [len(g.values) for g in schema.groups])
    for s in splits:
        in_split = (frame["split"] == s).to_numpy()
        report.unused_values[s] = []
        for gi, g in enumerate(schema.groups):
            block = marks[in_split, offsets[gi] : offsets[gi + 1]]
            marked = block.sum(axis=1)
            coded = np.zeros(len(block), dtype=bool)
            if g.missing_codes:
                for c in g.source_columns:
                    coded |= np.isin(frame.loc[in_split, c].to_numpy(), g.missing_codes)
            for kind, rows in (
                ("missing_code", (marked == 0) & coded),
                ("no_value", (marked == 0) & ~coded),
                ("several_values", marked > 1),
            ):
                if rows.any():
                    report.quirks.append(
                        Quirk(kind, s, tuple(int(p) for p in pid[in_split][rows]), g.name)
                    )
            report.unused_values[s] += [
                f"{g.name}={v}" for v, n in zip(g.values, block.sum(axis=0)) if n == 0
            ]
        counts = pd.Series(pid[in_split]).value_counts()
        dups = sorted(int(p) for p in counts[counts > 1].index)
        if dups:
            report.quirks.append(Quirk("duplicate_id", s, tuple(dups)))
    by_split = {s: set(pid[(frame["split"] == s).to_numpy()]) for s in splits}
    if len(splits) > 1:
        shared = sorted(int(p) for p in set.intersection(*by_split.values()))
        if shared:
            report.quirks.append(Quirk("split_overlap", "+".join(splits), tuple(shared)))
    report.quirks.extend(quirks)
    return report


# ----- loading --------------------------------------------------------------------------------


def resolve_schema(dataset: str | Path | AttributeSchema) -> AttributeSchema:
    return dataset if isinstance(dataset, AttributeSchema) else load_schema(dataset)


def load_attribute_file(
    path: str | Path, dataset: str | Path | AttributeSchema | None = None
) -> AttributeTable:
    """Read an identity-level attribute file: a MATLAB ``.mat`` struct in the Market / Duke
    layout, or a CSV ``pid, split?, <attribute columns>``.

    ``dataset`` is ``market1501``, ``dukemtmc``, a schema TOML path or a schema; ``None``
    recognises the two built-in datasets from the file itself.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Attribute file {str(path)!r} does not exist.")
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return _load_csv(path, dataset)
    return _load_mat(path, dataset)


def _load_csv(path: Path, dataset) -> AttributeTable:
    source = f"attribute file {str(path)!r}"
    try:
        frame = pd.read_csv(
            path, sep=None if path.suffix.lower() != ".csv" else ",", engine="python"
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{source} is not a readable CSV: {str(e).strip()}.") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if "pid" not in frame.columns:
        raise DataError(
            f"{source} has no 'pid' column (expected: pid, split, <attribute columns>)."
        )
    if dataset is None:
        dataset = _detect(set(frame.columns), source)
    schema = resolve_schema(dataset)
    if "split" not in frame.columns:
        frame.insert(1, "split", NO_SPLIT)
    else:
        frame["split"] = frame["split"].astype(str).str.strip().str.lower()
    extra = [c for c in frame.columns if c not in ("pid", "split", *schema.source_columns)]
    ordered = ["pid", "split", *[c for c in schema.source_columns if c in frame.columns], *extra]
    missing = [c for c in schema.source_columns if c not in frame.columns]
    if missing:
        raise SchemaError(
            f"{source} lacks the column {missing[0]!r} that schema {schema.name!r} needs "
            f"({len(missing)} missing in all)."
        )
    return AttributeTable.from_frame(frame[ordered], schema, source=source, extra_columns=extra)


def _detect(fields: set[str], source: str) -> str:
    fits = [name for name in BUILTIN_SCHEMAS if set(load_schema(name).source_columns) <= fields]
    if len(fits) != 1:
        raise SchemaError(
            f"{source} does not match a built-in schema ({', '.join(BUILTIN_SCHEMAS)}); "
            "name the dataset or pass a schema TOML."
        )
    return fits[0]


def _load_mat(path: Path, dataset) -> AttributeTable:
    """A Market/Duke-style ``.mat`` struct (``<var>.train`` / ``<var>.test``, one field per
    attribute and ``image_index`` with the identity ids) as an `AttributeTable`."""
    source = f"attribute file {str(path)!r}"
    variables = _read_mat_variables(path, source)
    var = _choose_variable(variables, dataset, source)
    struct = variables[var]
    splits = _struct_splits(struct, var, source)
    if dataset is None:
        fields = set.intersection(*(set(_fields(struct[s], var, s, source)) for s in splits))
        dataset = {v: n for n, v in MAT_VARIABLES.items()}.get(var) or _detect(fields, source)
    schema = resolve_schema(dataset)
    parts = [_split_columns(_fields(struct[s], var, s, source), schema, s, source) for s in splits]
    frame, extra = _tabulate_splits(parts, schema, source)
    return AttributeTable.from_frame(frame, schema, source=source, extra_columns=extra)


def _read_mat_variables(path: Path, source: str) -> dict:
    """The file's MATLAB variables (scipy's own ``__header__`` etc. left out)."""
    import scipy.io

    try:
        content = scipy.io.loadmat(str(path), simplify_cells=True)
    except NotImplementedError:
        raise DataError(
            f"{source} is a MATLAB v7.3 (HDF5) file; save it with -v7 or as CSV."
        ) from None
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError... for junk
        raise DataError(f"{source} is not a readable MATLAB file ({e}).") from None
    variables = {k: v for k, v in content.items() if not k.startswith("__")}
    if not variables:
        raise DataError(f"{source} holds no MATLAB variable.")
    return variables


def _choose_variable(variables: dict, dataset, source: str) -> str:
    """The variable holding the attribute struct: the built-in dataset's own name when one is
    asked for (another built-in's is a `SchemaError`), else the only (known) variable."""
    known = {var: name for name, var in MAT_VARIABLES.items()}
    wanted = None
    if isinstance(dataset, str) and dataset.lower().replace("-", "") in BUILTIN_SCHEMAS:
        wanted = dataset.lower().replace("-", "")
    if wanted is None:
        candidates = [v for v in variables if v in known] or list(variables)
        if len(candidates) != 1:
            raise DataError(
                f"{source} holds several variables {sorted(variables)}; keep one attribute struct."
            )
        return candidates[0]
    var = MAT_VARIABLES[wanted]
    if var in variables:
        return var
    others = [known[v] for v in variables if v in known]
    if others:
        raise SchemaError(
            f"{source} holds the {others[0]} attributes (variable "
            f"{MAT_VARIABLES[others[0]]!r}), not the {wanted} ones."
        )
    if len(variables) != 1:
        raise DataError(f"{source} has no variable {var!r}; it has {sorted(variables)}.")
    return next(iter(variables))


def _struct_splits(struct, var: str, source: str) -> list[str]:
    """The splits (train, test) a struct holds; any other field is an error."""
    if not isinstance(struct, dict):
        raise DataError(f"{source}: variable {var!r} is not a struct with train/test fields.")
    odd = sorted(set(struct) - set(SPLITS))
    if odd:
        raise DataError(
            f"{source}: struct {var!r} has the field {odd[0]!r}; expected only train and test."
        )
    splits = [s for s in SPLITS if s in struct]
    if not splits:
        raise DataError(f"{source}: struct {var!r} has neither a train nor a test field.")
    return splits


def _split_columns(fields: dict, schema: AttributeSchema, split: str, source: str) -> dict:
    """One split's fields as columns: ``pid``, ``split`` and one 1-D array per field, each as
    long as the identity list."""
    where = f"{source}, split {split!r}"
    if ID_FIELD not in fields:
        raise DataError(f"{where}: no field {ID_FIELD!r} with the identity ids.")
    for col in schema.source_columns:
        if col not in fields:
            raise SchemaError(
                f"{where}: no field {col!r}, which schema {schema.name!r} needs; is this the "
                "right dataset?"
            )
    pids = _parse_ids(fields[ID_FIELD], where)
    part = {"pid": pids, "split": np.full(len(pids), split, dtype=object)}
    for name, value in fields.items():
        if name == ID_FIELD:
            continue
        arr = np.atleast_1d(np.asarray(value)).ravel()
        if len(arr) != len(pids):
            raise DataError(
                f"{where}: field {name!r} has {len(arr)} entries for {len(pids)} identities."
            )
        part[name] = arr
    return part


def _tabulate_splits(
    parts: list[dict], schema: AttributeSchema, source: str
) -> tuple[pd.DataFrame, list[str]]:
    """The splits stacked into one frame; fields beyond the schema's are kept as extra columns
    when every split has them (one split only is an error)."""
    extra_sets = [set(p) - {"pid", "split", *schema.source_columns} for p in parts]
    extra = [c for c in parts[0] if c in set.intersection(*extra_sets)]
    columns = ["pid", "split", *schema.source_columns, *extra]
    frame = pd.concat([pd.DataFrame({c: p[c] for c in columns}) for p in parts], ignore_index=True)
    dropped = sorted(set.union(*extra_sets) - set(extra))
    if dropped:
        raise DataError(
            f"{source}: field {dropped[0]!r} is in one split but not the other; it cannot be "
            "tabulated."
        )
    return frame, extra


def _fields(split_struct, var: str, split: str, source: str) -> dict:
    if not isinstance(split_struct, dict):
        raise DataError(f"{source}: {var}.{split} is not a struct of attribute fields.")
    return split_struct


def _parse_ids(raw, where: str) -> np.ndarray:
    """``image_index`` as MATLAB stores it (a cell of '0002' strings, a char matrix or numbers)
    -> integer identities."""
    items = raw if isinstance(raw, list) else np.atleast_1d(np.asarray(raw, dtype=object)).ravel()
    out = []
    for item in items:
        value = item
        while isinstance(value, (np.ndarray, list)) and np.size(value) == 1:
            value = np.asarray(value, dtype=object).ravel()[0]
        try:
            if isinstance(value, (str, np.str_)):
                number = int(str(value).strip())
            else:
                as_float = float(value)
                if as_float != round(as_float):
                    raise ValueError
                number = int(as_float)
        except (TypeError, ValueError):
            raise DataError(
                f"{where}: {ID_FIELD} holds {value!r}, which is not an identity id."
            ) from None
        out.append(number)
    return np.asarray(out, dtype=np.int64)


def load_manifest_attributes(
    path: str | Path, schema: AttributeSchema | str | Path
) -> AttributeTable:
    """Identity-level attributes from an image manifest ``path, pid, camid, split`` + attribute
    columns: one row per (identity, split), ``query``/``gallery`` folded into ``test``.

    Every annotated image of an identity must carry the same codes (identity-level attributes);
    images whose attribute cells are all blank (e.g. distractors) are left out and reported as
    ``unannotated``; a partly blank row is an error.
    """
    path = Path(path)
    source = f"manifest {str(path)!r}"
    schema = resolve_schema(schema)
    if not path.is_file():
        raise DataError(f"Manifest {str(path)!r} does not exist.")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{source} is not a readable CSV: {str(e).strip()}.") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    path_col = "absolute_path" if "absolute_path" in frame.columns else "path"  # docs/data.md
    for col in (path_col, "pid", "camid", "split", *schema.source_columns):
        if col not in frame.columns:
            kind = "attribute column" if col in schema.source_columns else "column"
            raise DataError(f"{source} lacks the {kind} {col!r}.")
    split = frame["split"].astype(str).str.strip().str.lower()
    bad = sorted(set(split) - set(MANIFEST_SPLITS))
    if bad:
        raise DataError(f"{source} has the split {bad[0]!r}; use {', '.join(MANIFEST_SPLITS)}.")
    frame = frame.assign(split=split.map(MANIFEST_SPLITS))
    frame["pid"] = _int_column(frame["pid"], "pid", source)
    cols = schema.source_columns
    empty, unannotated = _blank_rows(frame, cols, source)
    images = frame[~empty].copy()
    for col in cols:
        images[col] = _int_column(images[col], col, source)
    identities = images[["pid", "split", *cols]].drop_duplicates()
    clash = identities.duplicated(["split", "pid"], keep=False)
    if clash.any():
        pid, s = identities[clash].iloc[0][["pid", "split"]]
        rows = images[(images["pid"] == pid) & (images["split"] == s)]
        col = next(c for c in cols if rows[c].nunique() > 1)
        raise DataError(
            f"{source}: identity {int(pid)} has different values in {col!r} "
            f"({sorted(int(v) for v in rows[col].unique())}); identity-level attributes need one."
        )
    identities = identities.sort_values(
        ["split", "pid"], key=lambda c: c.map({"train": 0, "test": 1}) if c.name == "split" else c
    )
    return AttributeTable.from_frame(identities, schema, source=source, quirks=unannotated)


def _blank_rows(frame: pd.DataFrame, cols: list[str], source: str) -> tuple[pd.Series, list]:
    """Which manifest rows have every attribute cell blank (a partly blank row is an error),
    and, per split, the identities that have only such rows (`Quirk` ``unannotated``)."""
    blank = frame[cols].isna()
    empty = blank.all(axis=1)
    partial = blank.any(axis=1) & ~empty
    if partial.any():
        row = int(np.flatnonzero(partial.to_numpy())[0])
        col = cols[int(np.flatnonzero(blank.iloc[row].to_numpy())[0])]
        raise DataError(f"{source}: row {row} ({frame['path'].iloc[row]}) has no value in {col!r}.")
    unannotated = []
    if empty.any():
        for s, pids in frame[empty].groupby("split")["pid"]:
            annotated = set(frame.loc[~empty & (frame["split"] == s), "pid"])
            lost = sorted(int(p) for p in set(pids) - annotated)
            if lost:
                unannotated.append(Quirk("unannotated", s, tuple(lost)))
    return empty, unannotated


# ----- writing (synthetic data, conversions) ----------------------------------------------------


def save_attribute_file(
    table: AttributeTable, path: str | Path, *, variable: str | None = None
) -> Path:
    """Write a table as a ``.mat`` struct in the Market/Duke layout (or as CSV by suffix),
    atomically, so `load_attribute_file` reads it back unchanged."""
    path = Path(path)
    frame = table.frame
    if path.suffix.lower() == ".csv":
        return _atomic_write(path, lambda f: frame.to_csv(f, index=False))
    import scipy.io

    variable = variable or MAT_VARIABLES.get(table.schema.name, f"{table.schema.name}_attribute")
    struct = {}
    for s in table.splits:
        if s == NO_SPLIT:
            raise DataError(
                "A .mat attribute file needs train/test splits; write this table as CSV."
            )
        part = frame[frame["split"] == s]
        fields = {}
        for col in frame.columns:
            if col in ("pid", "split"):
                continue
            values = part[col].to_numpy()
            fields[col] = values.astype(
                np.uint8 if values.min() >= 0 and values.max() < 256 else np.int32
            )
        fields[ID_FIELD] = np.array([f"{p:04d}" for p in part["pid"]], dtype=object)
        struct[s] = fields
    return _atomic_write(path, lambda f: scipy.io.savemat(f, {variable: struct}), binary=True)


def _atomic_write(path: Path, write, *, binary: bool = False) -> Path:
    """``write(file)`` through `attrimp.io.atomic_writer`: the whole file or none of it."""
    with atomic_writer(path, "wb" if binary else "w", newline="") as fh:
        write(fh)
    return path


# ----- downloading ------------------------------------------------------------------------------


def fetch_attribute_file(
    dataset: str | AttributeSource,
    out_dir: str | Path,
    *,
    url: str | None = None,
    timeout: float = 60.0,
    progress: bool = False,
) -> tuple[Path, bool]:
    """Download a dataset's public attribute file into ``out_dir`` and verify its sha256.

    The bytes go to a temporary file beside the target and are moved into place only once the
    checksum matches, so a failed or corrupted download never leaves a file that looks valid.
    Returns ``(path, downloaded)``; an existing file with the right checksum is kept as is.
    ``progress`` shows a download bar on a terminal (the CLI turns it on). ``dataset`` is a
    built-in name or a plug-in dataset's `AttributeSource` (its ``attribute_source``).
    """
    if isinstance(dataset, AttributeSource):
        spec = dataset
    else:
        key = dataset.lower().replace("-", "")
        if key not in SOURCES:
            raise DataError(
                f"No public attribute file is known for {dataset!r}; choose {' or '.join(SOURCES)}."
            )
        spec = SOURCES[key]
    out_dir = Path(out_dir)
    target = out_dir / spec.filename
    if target.is_file() and sha256_file(target) == spec.sha256:
        return target, False
    url = url or spec.url
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"Cannot create the output folder {str(out_dir)!r} ({e.strerror})."
        ) from None
    digest = hashlib.sha256()
    # the checks raise inside the writer, which then deletes its temporary and writes nothing
    with atomic_writer(target, "wb") as f:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                total = response.headers.get("Content-Length")
                _copy(response, f, digest, int(total) if total else None, spec.filename, progress)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise DataError(
                f"Could not download {url} ({reason}); without a network, fetch "
                f"{spec.filename} elsewhere and pass --url file:///path/to/{spec.filename} "
                "(or a mirror's URL): the checksum is verified either way."
            ) from None
        got = digest.hexdigest()
        if got != spec.sha256:
            raise DataError(
                f"The file downloaded from {url} has sha256 {got}, not the expected {spec.sha256}; "
                "nothing was written."
            )
    return target, True


def _copy(response, f, digest, total: int | None, label: str, progress: bool) -> None:
    from rich.progress import BarColumn, DownloadColumn, TextColumn, TransferSpeedColumn

    from attrimp.progress import progress_bar

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    with progress_bar(progress, *columns, TransferSpeedColumn()) as bar:
        task = bar.add_task(f"downloading {label}", total=total)
        for chunk in iter(lambda: response.read(1 << 16), b""):
            f.write(chunk)
            digest.update(chunk)
            bar.advance(task, len(chunk))


def value_names(schema: AttributeSchema) -> Mapping[str, list[str]]:
    """Every name a group's decoded value can take: its values, then ``unknown`` and
    ``multiple`` where the annotation format allows them."""
    return {
        g.name: [
            *g.values,
            *([UNKNOWN] if g.can_be_missing else []),
            *([MULTIPLE] if g.can_be_multiple else []),
        ]
        for g in schema.groups
    }

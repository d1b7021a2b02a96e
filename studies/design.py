"""From any result table to an :class:`~studies.frame.AnalysisFrame`: groups, levels, drops.

Every analysis reads the same frame, so the decisions that change answers are made here, once:

- **Grouping.** A schema / grouping TOML (``load_group_spec``) says which columns form one
  attribute group. A ``column`` group is one coded column (``codes`` mapped to ``values`` names;
  ``missing_codes`` become the level ``unknown``). A ``columns`` group is one-hot columns
  collapsed into one factor: the marked column's value name, ``unknown`` when none is marked,
  ``multiple`` when several are. Collapsing matters: 8 colour dummies tested one by one are 8
  correlated tests of one question. With a spec, only its groups are attributes.
- **No spec.** Every column that is not an outcome, the cluster, ``paired_by``, ``condition`` or
  excluded is its own attribute group: strings, bools and numbers with at most ``max_levels``
  distinct values (integral floats such as ``1.0`` read as ``1``) are categorical. Anything else
  (an image id, a float score) is refused with a sentence naming the column: treating it as
  hundreds of levels or silently as a numeric covariate would both answer a question nobody
  asked, so the user excludes it (``--exclude``) or writes a schema.
- **Rows.** Rows with NaN in an outcome, the cluster, ``paired_by``/``condition`` or an attribute
  column are dropped and counted by reason (the first reason found, in that order). Nothing else
  is dropped or altered; cluster labels are taken from the kept rows, so they stay aligned.
- **Levels.** Only observed levels become categories; the reference comes first. It is the
  level seen in the most clusters (with a cluster column), then in the most rows (ties: the
  first in schema / natural order): a level held by a few giant clusters would make every
  contrast of its group rest on those few clusters.
- **Degenerate but legal** input gives warnings, not errors: a single-level group (kept out of
  ``groups`` and listed in ``excluded_groups``), a value no row has, duplicate one-hot columns,
  groups that split the rows identically (collinear), levels with very few rows / clusters, and a
  column that looks like an outcome being analysed as an attribute.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from studies.errors import StudyInputError
from studies.frame import AnalysisFrame

UNKNOWN = "unknown"
MULTIPLE = "multiple"
#: a level with fewer rows (or clusters, when clustered) than this gets a warning
FEW = 5
#: names of ReID outcome columns; one found among the attributes gets a warning
OUTCOME_LIKE = {"ap", "map", "rank1", "rank5", "rank10", "first_hit", "inp", "minp", "cmc"}
#: where attrimp's built-in schema files live (same distribution; studies must not import attrimp)
_BUILTIN_SCHEMAS = Path(__file__).resolve().parents[1] / "attrimp" / "schemas"


# ----------------------------------------------------------------------------------------------
# Group specs
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupDef:
    """One attribute group: either one coded ``column`` or several one-hot ``columns``."""

    name: str
    column: str | None = None
    #: raw codes of ``column``, one per value (None: the raw values are the level names)
    codes: tuple | None = None
    columns: tuple[str, ...] | None = None
    #: level names (of ``codes`` or of ``columns``); None: the codes / column names themselves
    values: tuple[str, ...] | None = None
    #: the code that marks a one-hot column as set
    positive: object = 1
    #: codes of ``column`` that mean "not annotated" -> level ``unknown``
    missing_codes: tuple = ()
    kind: str | None = None
    description: str = ""

    @property
    def source_columns(self) -> tuple[str, ...]:
        return (self.column,) if self.column is not None else tuple(self.columns or ())

    @property
    def value_names(self) -> tuple[str, ...]:
        """Level names in declared order (before ``unknown`` / ``multiple``)."""
        if self.values is not None:
            return self.values
        if self.columns is not None:
            return self.columns
        return tuple(_level_name(c) for c in self.codes or ())


@dataclass(frozen=True)
class GroupSpec:
    groups: tuple[GroupDef, ...]
    name: str = ""
    source: str = "grouping"

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]


def _spec_error(where: str, msg: str) -> StudyInputError:
    return StudyInputError(f"{where}: {msg}")


def _parse_group(raw: dict, i: int, where: str) -> GroupDef:
    if not isinstance(raw, dict) or "name" not in raw:
        raise _spec_error(where, f"group number {i + 1} has no `name`.")
    name = str(raw["name"])
    at = f"group {name!r}"
    column, columns = raw.get("column"), raw.get("columns")
    if (column is None) == (columns is None):
        raise _spec_error(where, f"{at} needs either `column` (one coded column) or `columns`.")
    values = raw.get("values")
    if values is not None:
        if not isinstance(values, list) or not values:
            raise _spec_error(where, f"{at} has `values` that is not a non-empty list.")
        values = tuple(str(v) for v in values)
        if len(set(values)) != len(values):
            raise _spec_error(where, f"{at} lists a value twice: {list(values)}.")
        if {UNKNOWN, MULTIPLE} & set(values):
            raise _spec_error(where, f"{at} may not name a value {UNKNOWN!r} or {MULTIPLE!r}.")
    codes = raw.get("codes")
    missing = tuple(raw.get("missing_codes", ()))
    if column is not None:
        if not isinstance(column, str):
            raise _spec_error(where, f"{at} has a `column` that is not a column name.")
        if codes is not None:
            codes = tuple(codes)
            if len(set(codes)) != len(codes):
                raise _spec_error(where, f"{at} lists a code twice: {list(codes)}.")
            if values is not None and len(values) != len(codes):
                raise _spec_error(where, f"{at} needs one code per value in `codes`.")
            if set(codes) & set(missing):
                raise _spec_error(where, f"{at} uses a code both as a value and as missing.")
        elif values is not None:
            raise _spec_error(where, f"{at} names `values` but gives no `codes` to map them from.")
    else:
        if (
            not isinstance(columns, list)
            or not columns
            or not all(isinstance(c, str) for c in columns)
        ):
            raise _spec_error(where, f"{at} has `columns` that is not a list of column names.")
        columns = tuple(columns)
        if len(set(columns)) != len(columns):
            raise _spec_error(where, f"{at} lists a column twice: {list(columns)}.")
        if values is not None and len(values) != len(columns):
            raise _spec_error(where, f"{at} needs one value per column in `columns`.")
        if codes is not None:
            raise _spec_error(where, f"{at} has one-hot `columns`; use `positive`, not `codes`.")
    return GroupDef(
        name=name,
        column=column,
        codes=codes,
        columns=columns,
        values=values,
        positive=raw.get("positive", 1),
        missing_codes=missing,
        kind=raw.get("kind"),
        description=str(raw.get("description", "")),
    )


def load_group_spec(path: str | Path) -> GroupSpec:
    """Read a grouping TOML: attrimp's schema format (``[[groups]]`` with ``name`` and either
    ``column`` + ``codes`` + ``values`` or ``columns`` + ``positive`` + ``values``) or its minimal
    form (``name`` + ``columns``). A bare name (``market1501``, ``dukemtmc``) reads attrimp's
    built-in schema of that name."""
    p = Path(path)
    if not p.exists() and p.suffix == "" and (_BUILTIN_SCHEMAS / f"{p.name}.toml").exists():
        p = _BUILTIN_SCHEMAS / f"{p.name}.toml"
    if not p.is_file():
        raise StudyInputError(f"The schema file {str(path)!r} does not exist.")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise StudyInputError(f"The schema file {str(p)!r} cannot be read ({e}).") from None
    except tomllib.TOMLDecodeError as e:
        raise StudyInputError(f"The schema file {str(p)!r} is not valid TOML ({e}).") from None
    return parse_group_spec(raw, source=str(p))


def parse_group_spec(raw: dict, *, source: str = "grouping") -> GroupSpec:
    """A :class:`GroupSpec` from an already-parsed TOML mapping (see :func:`load_group_spec`)."""
    groups_raw = raw.get("groups")
    if not isinstance(groups_raw, list) or not groups_raw:
        raise StudyInputError(f"The schema {source!r} has no [[groups]] entries.")
    groups = tuple(_parse_group(g, i, f"The schema {source!r}") for i, g in enumerate(groups_raw))
    names = [g.name for g in groups]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise StudyInputError(f"The schema {source!r} defines the group {dup[0]!r} twice.")
    used = [c for g in groups for c in g.source_columns]
    dupc = sorted({c for c in used if used.count(c) > 1})
    if dupc:
        raise StudyInputError(f"The schema {source!r} puts the column {dupc[0]!r} in two groups.")
    return GroupSpec(groups=groups, name=str(raw.get("name", "")), source=source)


def spec_from_toml(text: str, *, source: str = "grouping") -> GroupSpec:
    """A :class:`GroupSpec` from TOML text (e.g. ``studies.simulate.market_like_schema_toml()``)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise StudyInputError(f"The schema {source!r} is not valid TOML ({e}).") from None
    return parse_group_spec(raw, source=source)


# ----------------------------------------------------------------------------------------------
# Level coding
# ----------------------------------------------------------------------------------------------
def _level_name(v: object) -> str:
    """A raw value as a level name; integral floats read as integers (``1.0`` -> ``"1"``)."""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)) and math.isfinite(float(v)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, (np.integer,)):
        return str(int(v))
    return str(v)


def _natural_key(name: str) -> tuple:
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def _same_code(a: object, b: object) -> bool:
    if a == b:
        return True
    try:
        return float(a) == float(b)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(a) == str(b)


@dataclass
class _Coded:
    """One group as integer codes into ``names`` (-1 = NaN, row to drop)."""

    codes: np.ndarray
    names: list[str]
    nan_column: np.ndarray | None  # per row, index into source columns of the first NaN (or -1)


def _code_column(df: pd.DataFrame, g: GroupDef, where: str) -> _Coded:
    col = df[g.column]
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    nan = codes < 0
    if g.codes is None:
        raw_names = [_level_name(u) for u in uniques]
        order = sorted(set(raw_names), key=_natural_key)
        pos = {n: i for i, n in enumerate(order)}
        lut = np.array([pos[n] for n in raw_names], dtype=np.int64)
        names = order
    else:
        names = list(g.value_names)
        has_unknown = False
        lut = np.empty(len(uniques), dtype=np.int64)
        for j, u in enumerate(uniques):
            hit = [k for k, c in enumerate(g.codes) if _same_code(u, c)]
            if hit:
                lut[j] = hit[0]
            elif any(_same_code(u, m) for m in g.missing_codes):
                lut[j] = len(names)
                has_unknown = True
            else:
                raise StudyInputError(
                    f"{where}: column {g.column!r} holds the value {_level_name(u)!r}, which group "
                    f"{g.name!r} does not define (codes {list(g.codes)}, missing codes "
                    f"{list(g.missing_codes)})."
                )
        if has_unknown:
            names.append(UNKNOWN)
    out = np.full(len(col), -1, dtype=np.int64)
    out[~nan] = lut[codes[~nan]]
    return _Coded(out, names, np.where(nan, 0, -1))


def _code_onehot(df: pd.DataFrame, g: GroupDef, where: str, warnings: list[str]) -> _Coded:
    cols = list(g.columns or ())
    n = len(df)
    marks = np.zeros((n, len(cols)), dtype=bool)
    nan_first = np.full(n, -1, dtype=np.int64)
    any_positive = False
    for j, c in enumerate(cols):
        s = df[c]
        isnan = s.isna().to_numpy()
        nan_first[(nan_first < 0) & isnan] = j
        uniq = pd.unique(s.dropna())
        pos = [u for u in uniq if _same_code(u, g.positive)]
        if pos:
            any_positive = True
            marks[:, j] = (s == pos[0]).to_numpy() & ~isnan
    if not any_positive and n:
        seen = sorted({_level_name(u) for c in cols for u in pd.unique(df[c].dropna())})
        raise StudyInputError(
            f"{where}: no column of group {g.name!r} holds its positive code "
            f"{_level_name(g.positive)!r} (they hold {seen}); set `positive` in the schema."
        )
    # Duplicate one-hot columns make two levels indistinguishable.
    totals = marks.sum(axis=0)
    for a in range(len(cols)):
        for b in range(a + 1, len(cols)):
            if totals[a] and totals[a] == totals[b] and np.array_equal(marks[:, a], marks[:, b]):
                warnings.append(
                    f"Columns {cols[a]!r} and {cols[b]!r} of group {g.name!r} mark the same rows "
                    f"(duplicate one-hot columns); those rows fall in the level {MULTIPLE!r}."
                )
    count = marks.sum(axis=1)
    names = list(g.value_names) + [UNKNOWN, MULTIPLE]
    codes = np.where(
        count == 1, marks.argmax(axis=1), np.where(count == 0, len(cols), len(cols) + 1)
    )
    codes = codes.astype(np.int64)
    codes[nan_first >= 0] = -1
    return _Coded(codes, names, nan_first)


def _auto_group(df: pd.DataFrame, col: str, max_levels: int) -> GroupDef:
    s = df[col]
    nunique = s.nunique(dropna=True)
    kind = s.dtype.kind
    if kind in "biuf":
        # numbers with few distinct values are codes (1.0 / 2.0 included); many values are an
        # identifier or a measurement, which this battery does not model as an attribute
        ok = nunique <= max_levels
    elif kind in "OUSb" or isinstance(
        s.dtype, (pd.CategoricalDtype, pd.StringDtype, pd.BooleanDtype)
    ):
        ok = nunique <= max(max_levels, 50)
    else:
        raise StudyInputError(
            f"Column {col!r} has the type {s.dtype} and cannot be an attribute; exclude it or give "
            "a schema."
        )
    if not ok:
        raise StudyInputError(
            f"Column {col!r} has {nunique} distinct values, too many for a categorical attribute "
            f"(it looks like an identifier or a measurement); exclude it with --exclude {col} or "
            "give a --schema naming the attribute columns."
        )
    return GroupDef(name=col, column=col)


# ----------------------------------------------------------------------------------------------
# The frame builder
# ----------------------------------------------------------------------------------------------
def _as_list(x: str | Iterable[str] | None) -> list[str]:
    if x is None:
        return []
    if isinstance(x, str):
        return [x]
    return list(x)


def _numeric_outcome(df: pd.DataFrame, name: str, source: str) -> pd.Series:
    s = df[name]
    if s.dtype.kind == "b" or isinstance(s.dtype, pd.BooleanDtype):
        return s.astype("float64")
    if s.dtype.kind in "iuf":
        out = s.astype("float64")
    else:
        out = pd.to_numeric(s, errors="coerce")
        bad = out.isna() & s.notna()
        if bad.any():
            raise StudyInputError(
                f"{source}: outcome column {name!r} is not numeric (row {int(np.flatnonzero(bad)[0])} "
                f"holds {str(s[bad].iloc[0])!r})."
            )
        out = out.astype("float64")
    if np.isinf(out.to_numpy()).any():
        raise StudyInputError(f"{source}: outcome column {name!r} holds an infinite value.")
    if out.isna().all():
        raise StudyInputError(f"{source}: outcome column {name!r} has no numeric value (all NaN).")
    return out


def n_parameters(frame: AnalysisFrame) -> int:
    """Coefficients of the full main-effects model (intercept + non-reference levels)."""
    return 1 + sum(len(frame.levels(g)) - 1 for g in frame.groups)


def build_analysis_frame(
    df: pd.DataFrame,
    *,
    outcomes: str | Sequence[str],
    cluster: str | None = None,
    exclude: Iterable[str] = (),
    spec: GroupSpec | str | Path | None = None,
    paired_by: str | None = None,
    condition: str | None = None,
    source: str = "table",
    max_levels: int = 20,
) -> AnalysisFrame:
    """Validate a result table and build the frame every analysis reads (see module docstring).

    Raises :class:`StudyInputError` (one sentence naming the column / value) for a user mistake:
    a missing or duplicated column, a non-numeric or all-NaN outcome, an attribute that cannot
    be categorical, a value a schema does not define, fewer usable rows than parameters.
    """
    if not isinstance(df, pd.DataFrame):
        raise StudyInputError(f"{source}: expected a table (pandas DataFrame).")
    cols = [str(c) for c in df.columns]
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if dup:
        raise StudyInputError(f"{source}: the column name {dup[0]!r} appears more than once.")
    df = df.set_axis(cols, axis=1)
    outcomes = _as_list(outcomes)
    exclude = _as_list(exclude)
    if not outcomes:
        raise StudyInputError(f"{source}: name at least one outcome column.")
    roles: dict[str, str] = {}
    for role, names in (
        ("outcome", outcomes),
        ("cluster", _as_list(cluster)),
        ("paired-by", _as_list(paired_by)),
        ("condition", _as_list(condition)),
        ("excluded", exclude),
    ):
        for c in names:
            if c not in df.columns:
                raise StudyInputError(f"{source} has no column {c!r} (given as the {role} column).")
            if c in roles and not (role == "excluded" and roles[c] == "excluded"):
                raise StudyInputError(
                    f"Column {c!r} is given both as the {roles[c]} and as the {role} column."
                )
            roles[c] = role
    if (paired_by is None) != (condition is None):
        raise StudyInputError("A paired design needs both --paired-by and --condition.")
    if isinstance(spec, (str, Path)):
        spec = load_group_spec(spec)

    warnings: list[str] = []
    where = f"{source}"
    # --- groups --------------------------------------------------------------------------------
    if spec is not None:
        defs = list(spec.groups)
        for g in defs:
            for c in g.source_columns:
                if c not in df.columns:
                    raise StudyInputError(
                        f"{source} has no column {c!r}, which group {g.name!r} of the schema "
                        f"{spec.source!r} needs."
                    )
                if c in roles:
                    raise StudyInputError(
                        f"Column {c!r} is given as the {roles[c]} column but the schema "
                        f"{spec.source!r} makes it an attribute."
                    )
            if g.name in roles:
                raise StudyInputError(
                    f"The schema group {g.name!r} has the same name as the {roles[g.name]} column."
                )
        used = {c for g in defs for c in g.source_columns} | set(roles)
        unused = [c for c in df.columns if c not in used]
        if unused:
            warnings.append(
                f"Columns not in the schema are not analysed: {', '.join(map(repr, unused))}."
            )
    else:
        defs = [_auto_group(df, c, max_levels) for c in df.columns if c not in roles]
        for g in defs:
            if g.name.lower() in OUTCOME_LIKE:
                warnings.append(
                    f"Column {g.name!r} looks like an outcome but is analysed as an attribute; "
                    "name it as an outcome or exclude it."
                )
    coded: dict[str, _Coded] = {}
    for g in defs:
        if g.column is not None:
            coded[g.name] = _code_column(df, g, where)
        else:
            coded[g.name] = _code_onehot(df, g, where, warnings)

    # --- rows to drop, by first reason ---------------------------------------------------------
    n = len(df)
    keep = np.ones(n, dtype=bool)
    dropped: dict[str, int] = {}

    def drop(mask: np.ndarray, reason: str) -> None:
        new = mask & keep
        k = int(new.sum())
        if k:
            dropped[reason] = dropped.get(reason, 0) + k
            keep[new] = False

    out_values = {o: _numeric_outcome(df, o, source) for o in outcomes}
    for o in outcomes:
        drop(out_values[o].isna().to_numpy(), f"NaN in outcome {o!r}")
    for role, c in (("cluster", cluster), ("paired-by", paired_by), ("condition", condition)):
        if c is not None:
            drop(df[c].isna().to_numpy(), f"NaN in {role} column {c!r}")
    for g in defs:
        cg = coded[g.name]
        bad = cg.codes < 0
        if bad.any():
            src = g.source_columns
            for j, c in enumerate(src):
                drop(bad & (cg.nan_column == j), f"NaN in attribute column {c!r}")

    # --- assemble ----------------------------------------------------------------------------
    idx = np.flatnonzero(keep)
    data: dict[str, object] = {o: out_values[o].to_numpy()[idx] for o in outcomes}
    groups: list[str] = []
    group_columns: dict[str, list[str]] = {}
    excluded: dict[str, str] = {}
    clus = df[cluster].to_numpy()[idx] if cluster is not None else None
    clus_codes = pd.factorize(clus)[0] if clus is not None else None
    for g in defs:
        cg = coded[g.name]
        codes = cg.codes[idx]
        counts = (
            np.bincount(codes, minlength=len(cg.names))
            if len(codes)
            else np.zeros(len(cg.names), int)
        )
        observed = [k for k in range(len(cg.names)) if counts[k] > 0]
        declared = (g.values is not None) or (g.columns is not None)
        for k in range(len(cg.names)):
            if counts[k] == 0 and declared and cg.names[k] not in (UNKNOWN, MULTIPLE):
                warnings.append(f"Attribute {g.name!r} has no row with the value {cg.names[k]!r}.")
        if not observed:
            order = []
        else:
            # the reference anchors every contrast of its group: with clusters, the level seen
            # in the most clusters (a level of a few giant clusters makes every contrast noisy)
            support = counts if clus_codes is None else _clusters_per_level(codes, clus_codes)
            ref = max(observed, key=lambda k: (support[k], counts[k], -k))
            order = [ref] + [k for k in observed if k != ref]
        names = [cg.names[k] for k in order]
        if len(names) < 2:
            reason = (
                f"it has the single value {names[0]!r} in every used row" if names else "no rows"
            )
            excluded[g.name] = reason
            warnings.append(f"Attribute {g.name!r} is left out of the analyses: {reason}.")
        else:
            groups.append(g.name)
            group_columns[g.name] = list(g.source_columns)
            if MULTIPLE in names and names[0] == MULTIPLE:
                warnings.append(
                    f"Most rows mark several columns of group {g.name!r}; check its `positive` code."
                )
            for k in order[1:]:
                few = counts[k] < FEW
                msg = f"{int(counts[k])} rows"
                if clus_codes is not None:
                    nc = len(np.unique(clus_codes[codes == k]))
                    few = few or nc < FEW
                    msg += f" in {nc} clusters"
                if few:
                    warnings.append(
                        f"Level {cg.names[k]!r} of attribute {g.name!r} has only {msg}; its "
                        "estimates are unreliable."
                    )
        remap = np.full(len(cg.names), -1, dtype=np.int64)
        remap[order] = np.arange(len(order))
        data[g.name] = pd.Categorical.from_codes(remap[codes], categories=names) if names else codes
    for c in (cluster, paired_by, condition):
        if c is not None:
            data[c] = df[c].to_numpy()[idx]
    out = pd.DataFrame(data)
    # group names may equal their column; a leftover excluded group column must not confuse anyone
    out = out.drop(columns=[g for g in excluded if g in out.columns and g not in groups])

    frame = AnalysisFrame(
        data=out,
        outcomes=outcomes,
        groups=groups,
        group_columns=group_columns,
        cluster=cluster,
        paired_by=paired_by,
        condition=condition,
        rows_read=n,
        rows_dropped=dropped,
        warnings=warnings,
        source=source,
    )
    frame.excluded_groups.update(excluded)
    _collinearity_warnings(frame)
    k = n_parameters(frame)
    if frame.rows_used <= k:
        raise StudyInputError(
            f"{source}: only {frame.rows_used} usable rows for a model with {k} parameters "
            f"({sum(dropped.values())} rows dropped for NaN)."
        )
    return frame


def _collinearity_warnings(frame: AnalysisFrame) -> None:
    """Two groups that split the rows identically cannot be told apart by any model.
    Checked on the distinct attribute patterns (few, even for a million rows)."""
    if len(frame.groups) < 2:
        return
    ks = [len(frame.levels(g)) for g in frame.groups]
    codes = [frame.data[g].cat.codes.to_numpy() for g in frame.groups]
    key = np.zeros(frame.rows_used, dtype=np.int64)
    top = 1
    for c, k in zip(codes, ks):
        if top * k >= 2**62:
            key = pd.factorize(key)[0].astype(np.int64)
            top = int(key.max(initial=0)) + 1
        key = key * k + c
        top *= k
    cell = pd.factorize(key)[0]
    first = np.empty(int(cell.max(initial=-1)) + 1, dtype=np.int64)
    first[cell[::-1]] = np.arange(len(cell))[::-1]
    patterns = np.column_stack([c[first].astype(np.int64) for c in codes])
    for i, a in enumerate(frame.groups):
        for j in range(i + 1, len(frame.groups)):
            if ks[i] != ks[j]:
                continue
            pairs = np.bincount(patterns[:, i] * ks[j] + patterns[:, j], minlength=ks[i] * ks[j])
            if int((pairs > 0).sum()) == ks[i]:
                frame.warnings.append(
                    f"Attributes {a!r} and {frame.groups[j]!r} split the rows identically "
                    "(perfectly collinear); no analysis can separate their effects."
                )


def group_codes(frame: AnalysisFrame, groups: Sequence[str] | None = None) -> np.ndarray:
    """Level codes ``[n_rows, n_groups]`` (0 = reference) of the frame's groups."""
    groups = list(frame.groups if groups is None else groups)
    if not groups:
        return np.zeros((frame.rows_used, 0), dtype=np.int64)
    return np.column_stack([frame.data[g].cat.codes.to_numpy().astype(np.int64) for g in groups])


def _clusters_per_level(codes: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Number of distinct clusters in which each level code occurs."""
    pairs = np.unique(np.column_stack([codes, clusters]), axis=0)
    return np.bincount(pairs[:, 0], minlength=int(codes.max(initial=-1)) + 1)

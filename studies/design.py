"""From any result table to an :class:`~studies.frame.AnalysisFrame`: groups, levels, drops.

Every analysis reads the same frame, so the decisions that change answers are made here, once:

- **Grouping.** An attribute schema (``attrimp.model.schema.AttributeSchema``, read by the one
  schema parser; ``load_group_spec`` wraps it) says which columns form one attribute group; a
  grouping may leave out the ``kind`` and ``values`` an engine schema needs. A ``column`` group is one coded column (``codes`` mapped to ``values`` names;
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
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from attrimp.errors import SchemaError
from attrimp.model.schema import MULTIPLE, UNKNOWN, AttributeGroup, AttributeSchema, load_schema
from studies.errors import StudyInputError
from studies.frame import AnalysisFrame

#: a level with fewer rows (or clusters, when clustered) than this gets a warning
FEW = 5
#: names of ReID outcome columns; one found among the attributes gets a warning
OUTCOME_LIKE = {"ap", "map", "rank1", "rank5", "rank10", "first_hit", "inp", "minp", "cmc"}

#: The grouping of a table is an attribute schema, read by attrimp's one parser; these names stay
#: for code written against the former studies-only parser.
GroupDef = AttributeGroup
GroupSpec = AttributeSchema

_T = TypeVar("_T")


# ----------------------------------------------------------------------------------------------
# Group specs: attrimp's schema, read by its parser, mistakes raised as StudyInputError
# ----------------------------------------------------------------------------------------------
def _study_error(read: Callable[[], _T]) -> _T:
    """Run ``read``; a schema mistake becomes this layer's error with the same sentence."""
    try:
        return read()
    except SchemaError as e:
        raise StudyInputError(str(e)) from None


def load_group_spec(path: str | Path) -> AttributeSchema:
    """A grouping TOML (attrimp's schema format; ``kind`` / ``values`` optional) or, by bare
    name (``market1501``, ``dukemtmc``), a built-in schema."""
    return _study_error(lambda: load_schema(path, experts=False))


def parse_group_spec(raw: dict, *, source: str = "grouping") -> AttributeSchema:
    """A grouping from an already-parsed TOML mapping (see :func:`load_group_spec`)."""
    return _study_error(lambda: AttributeSchema.from_dict(raw, source=source))


def spec_from_toml(text: str, *, source: str = "grouping") -> AttributeSchema:
    """A grouping from TOML text (e.g. ``studies.simulate.market_like_schema_toml()``)."""
    return _study_error(lambda: AttributeSchema.from_toml_text(text, source=source))


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


def _code_column(df: pd.DataFrame, g: AttributeGroup, where: str) -> _Coded:
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
        names = list(g.level_names or ())
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


def _code_onehot(df: pd.DataFrame, g: AttributeGroup, where: str, warnings: list[str]) -> _Coded:
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
    names = list(g.level_names or ()) + [UNKNOWN, MULTIPLE]
    codes = np.where(
        count == 1, marks.argmax(axis=1), np.where(count == 0, len(cols), len(cols) + 1)
    )
    codes = codes.astype(np.int64)
    codes[nan_first >= 0] = -1
    return _Coded(codes, names, nan_first)


def _code_group(df: pd.DataFrame, g: AttributeGroup, where: str, warnings: list[str]) -> _Coded:
    """One group as level codes: a coded column, or one-hot columns collapsed into one factor."""
    if g.column is not None:
        return _code_column(df, g, where)
    return _code_onehot(df, g, where, warnings)


def _auto_group(df: pd.DataFrame, col: str, max_levels: int) -> AttributeGroup:
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
    return _study_error(lambda: AttributeGroup(name=col, column=col))


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
    spec: AttributeSchema | str | Path | None = None,
    paired_by: str | None = None,
    condition: str | None = None,
    source: str = "table",
    max_levels: int = 20,
    randomized: Collection | None = None,
) -> AnalysisFrame:
    """Validate a result table and build the frame every analysis reads (see module docstring).

    ``spec`` is an attribute schema or grouping (an `AttributeSchema`, a TOML path or a built-in
    name). Raises :class:`StudyInputError` (one sentence naming the column / value) for a user
    mistake: a missing or duplicated column, a non-numeric or all-NaN outcome, an attribute that
    cannot be categorical, a value a schema does not define, fewer usable rows than parameters.

    ``condition`` without ``paired_by`` is a *crossed* design (every query evaluated under every
    configuration; a configuration switches attributes for all queries at once): the condition
    is then a second unit of replication beside ``cluster`` (``studies.crossed``).
    ``randomized`` names the condition values whose attribute assignment the design drew at
    random (exchangeably); randomisation tests (``studies.randomization``) re-draw only those.
    Stored as ``frame.randomized_conditions`` (a tuple, or None when not given).
    """
    df = _with_unique_columns(df, source)
    outcomes = _as_list(outcomes)
    if not outcomes:
        raise StudyInputError(f"{source}: name at least one outcome column.")
    roles = _column_roles(df, outcomes, cluster, paired_by, condition, _as_list(exclude), source)
    if isinstance(spec, (str, Path)):
        spec = load_group_spec(spec)
    warnings: list[str] = []
    defs = _attribute_groups(df, spec, roles, max_levels, source, warnings)
    coded = {g.name: _code_group(df, g, source, warnings) for g in defs}
    out_values = {o: _numeric_outcome(df, o, source) for o in outcomes}
    keep, dropped = _rows_to_keep(df, out_values, (cluster, paired_by, condition), defs, coded)
    idx = np.flatnonzero(keep)
    clus = pd.factorize(df[cluster].to_numpy()[idx])[0] if cluster is not None else None
    factors = {g.name: _factor(g, coded[g.name], idx, clus, warnings) for g in defs}
    data: dict[str, object] = {o: out_values[o].to_numpy()[idx] for o in outcomes}
    data.update({name: f.values for name, f in factors.items()})
    data.update(
        {c: df[c].to_numpy()[idx] for c in (cluster, paired_by, condition) if c is not None}
    )
    groups = [g.name for g in defs if factors[g.name].excluded is None]
    excluded = {name: f.excluded for name, f in factors.items() if f.excluded is not None}
    out = pd.DataFrame(data)
    # group names may equal their column; a leftover excluded group column must not confuse anyone
    out = out.drop(columns=[g for g in excluded if g in out.columns and g not in groups])
    frame = AnalysisFrame(
        data=out,
        outcomes=outcomes,
        groups=groups,
        group_columns={g.name: list(g.source_columns) for g in defs if g.name in groups},
        cluster=cluster,
        paired_by=paired_by,
        condition=condition,
        rows_read=len(df),
        rows_dropped=dropped,
        warnings=warnings,
        source=source,
    )
    frame.excluded_groups.update(excluded)
    frame.randomized_conditions = _randomized_conditions(df, condition, randomized, source)
    _collinearity_warnings(frame)
    _check_enough_rows(frame)
    return frame


def _randomized_conditions(
    df: pd.DataFrame, condition: str | None, randomized: Collection | None, source: str
) -> tuple | None:
    """The randomized condition values, each checked against the table's conditions.

    Why a check: a typo would silently make a condition "fixed", and a randomisation test would
    then re-draw fewer assignments than the design did (still valid, but less powerful and not
    what the user meant)."""
    if randomized is None:
        return None
    if condition is None:
        raise StudyInputError(
            f"{source}: randomized conditions were given but no condition column names them."
        )
    values = [randomized] if isinstance(randomized, str) else list(randomized)
    present = pd.unique(df[condition].dropna())
    by_name = {_level_name(v): v for v in present}
    out = []
    for v in values:
        if any(_same_code(v, c) for c in present):
            out.append(next(c for c in present if _same_code(v, c)))
        elif _level_name(v) in by_name:
            out.append(by_name[_level_name(v)])
        else:
            raise StudyInputError(
                f"{source}: the randomized condition {_level_name(v)!r} is not a value of the "
                f"condition column {condition!r}."
            )
    return tuple(dict.fromkeys(out))


def _with_unique_columns(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """The table with string column names; a name given twice is refused."""
    if not isinstance(df, pd.DataFrame):
        raise StudyInputError(f"{source}: expected a table (pandas DataFrame).")
    cols = [str(c) for c in df.columns]
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if dup:
        raise StudyInputError(f"{source}: the column name {dup[0]!r} appears more than once.")
    return df.set_axis(cols, axis=1)


def _column_roles(
    df: pd.DataFrame,
    outcomes: list[str],
    cluster: str | None,
    paired_by: str | None,
    condition: str | None,
    exclude: list[str],
    source: str,
) -> dict[str, str]:
    """Column -> its role (outcome, cluster, ...); each must exist and have one role only."""
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
    if paired_by is not None and condition is None:
        raise StudyInputError("A paired design needs both --paired-by and --condition.")
    return roles


def _attribute_groups(
    df: pd.DataFrame,
    spec: AttributeSchema | None,
    roles: dict[str, str],
    max_levels: int,
    source: str,
    warnings: list[str],
) -> list[AttributeGroup]:
    """The schema's groups (checked against the table), or one group per remaining column."""
    if spec is None:
        defs = [_auto_group(df, c, max_levels) for c in df.columns if c not in roles]
        for g in defs:
            if g.name.lower() in OUTCOME_LIKE:
                warnings.append(
                    f"Column {g.name!r} looks like an outcome but is analysed as an attribute; "
                    "name it as an outcome or exclude it."
                )
        return defs
    named = spec.source or f"schema {spec.name!r}"
    for g in spec.groups:
        for c in g.source_columns:
            if c not in df.columns:
                raise StudyInputError(
                    f"{source} has no column {c!r}, which group {g.name!r} of the {named} needs."
                )
            if c in roles:
                raise StudyInputError(
                    f"Column {c!r} is given as the {roles[c]} column but the {named} makes it "
                    "an attribute."
                )
        if g.name in roles:
            raise StudyInputError(
                f"The schema group {g.name!r} has the same name as the {roles[g.name]} column."
            )
    used = set(spec.source_columns) | set(roles)
    unused = [c for c in df.columns if c not in used]
    if unused:
        warnings.append(
            f"Columns not in the schema are not analysed: {', '.join(map(repr, unused))}."
        )
    return list(spec.groups)


def _rows_to_keep(
    df: pd.DataFrame,
    out_values: dict[str, pd.Series],
    design_columns: tuple[str | None, str | None, str | None],
    defs: list[AttributeGroup],
    coded: dict[str, _Coded],
) -> tuple[np.ndarray, dict[str, int]]:
    """Rows without NaN in an outcome, cluster / paired-by / condition or attribute column,
    and the count dropped for each reason (the first reason found, in that order)."""
    keep = np.ones(len(df), dtype=bool)
    dropped: dict[str, int] = {}

    def drop(mask: np.ndarray, reason: str) -> None:
        new = mask & keep
        if new.any():
            dropped[reason] = dropped.get(reason, 0) + int(new.sum())
            keep[new] = False

    for o, values in out_values.items():
        drop(values.isna().to_numpy(), f"NaN in outcome {o!r}")
    for role, c in zip(("cluster", "paired-by", "condition"), design_columns):
        if c is not None:
            drop(df[c].isna().to_numpy(), f"NaN in {role} column {c!r}")
    for g in defs:
        cg = coded[g.name]
        bad = cg.codes < 0
        if bad.any():
            for j, c in enumerate(g.source_columns):
                drop(bad & (cg.nan_column == j), f"NaN in attribute column {c!r}")
    return keep, dropped


@dataclass
class _Factor:
    """One group over the kept rows: its levels (reference first) and the reason it is left out."""

    names: list[str]
    values: object  # a pd.Categorical of ``names`` (the raw codes when no level is left)
    excluded: str | None


def _factor(
    g: AttributeGroup,
    cg: _Coded,
    idx: np.ndarray,
    clus_codes: np.ndarray | None,
    warnings: list[str],
) -> _Factor:
    """The group's factor on the kept rows ``idx``, with its level warnings."""
    codes = cg.codes[idx]
    counts = (
        np.bincount(codes, minlength=len(cg.names)) if len(codes) else np.zeros(len(cg.names), int)
    )
    if g.values is not None or g.columns is not None:  # declared levels: say which are empty
        for k, name in enumerate(cg.names):
            if counts[k] == 0 and name not in (UNKNOWN, MULTIPLE):
                warnings.append(f"Attribute {g.name!r} has no row with the value {name!r}.")
    order = _level_order(codes, counts, clus_codes)
    names = [cg.names[k] for k in order]
    excluded = None
    if len(names) < 2:
        excluded = f"it has the single value {names[0]!r} in every used row" if names else "no rows"
        warnings.append(f"Attribute {g.name!r} is left out of the analyses: {excluded}.")
    else:
        _level_warnings(g, cg.names, order, codes, counts, clus_codes, warnings)
    remap = np.full(len(cg.names), -1, dtype=np.int64)
    remap[order] = np.arange(len(order))
    values = pd.Categorical.from_codes(remap[codes], categories=names) if names else codes
    return _Factor(names, values, excluded)


def _level_order(codes: np.ndarray, counts: np.ndarray, clus_codes: np.ndarray | None) -> list[int]:
    """Observed level codes, reference first.

    The reference anchors every contrast of its group: with clusters, the level seen in the most
    clusters (a level of a few giant clusters makes every contrast noisy), then in the most rows
    (ties: the first in declared / natural order).
    """
    observed = [k for k in range(len(counts)) if counts[k] > 0]
    if not observed:
        return []
    support = counts if clus_codes is None else _clusters_per_level(codes, clus_codes)
    ref = max(observed, key=lambda k: (support[k], counts[k], -k))
    return [ref] + [k for k in observed if k != ref]


def _level_warnings(
    g: AttributeGroup,
    names: list[str],
    order: list[int],
    codes: np.ndarray,
    counts: np.ndarray,
    clus_codes: np.ndarray | None,
    warnings: list[str],
) -> None:
    """A suspicious reference (``multiple``) and levels too rare to estimate."""
    if names[order[0]] == MULTIPLE:
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
                f"Level {names[k]!r} of attribute {g.name!r} has only {msg}; its estimates are "
                "unreliable."
            )


def _check_enough_rows(frame: AnalysisFrame) -> None:
    k = n_parameters(frame)
    if frame.rows_used <= k:
        raise StudyInputError(
            f"{frame.source}: only {frame.rows_used} usable rows for a model with {k} parameters "
            f"({sum(frame.rows_dropped.values())} rows dropped for NaN)."
        )


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
    """Number of distinct clusters in which each level code occurs.

    Distinct (level, cluster) pairs as one integer key: a 1-D unique is a plain sort, where
    ``np.unique(axis=0)`` on a two-column array sorts structured rows (~30x slower).
    """
    n_clusters = max(int(clusters.max(initial=-1)) + 1, 1)
    pairs = np.unique(codes.astype(np.int64) * n_clusters + clusters)
    return np.bincount(pairs // n_clusters, minlength=int(codes.max(initial=-1)) + 1)

"""Attribute schemas: which attributes a dataset annotates and which expert each value owns.

A schema is an ordered list of attribute *groups*. Every value of every group is one *slot* of
the multi-hot attribute vector that datasets emit and routers read; the slots that own an expert
are the rows of the expert bank:

- ``single`` (e.g. ``hat``): values ``(absent, present)``; one expert, for ``present``.
- ``dual`` (e.g. ``gender``): two values, one expert each.
- ``multiclass`` (e.g. ``upcolor``, ``age``): one expert per class.

Annotation files code a group either as one integer column (``column`` + ``codes``, e.g. Market's
``gender`` 1 = male, 2 = female) or as one binary column per value (``columns`` + ``positive`` /
``negative``, e.g. ``upblack … upgreen`` with 2 = yes, 1 = no). Real files have identities with no
value marked, codes that mean "not annotated" and identities with several colours marked; the
schema's ``missing`` / ``multiple`` policies and each group's ``missing_codes`` make every such
case an explicit decision (see docs/schemas.md) rather than an accident of field order. Any code
the schema does not declare is an error naming the column and the code, never a silent "no".

The same model, read by the same parser, groups the columns of any result table for
``studies/`` (``attrimp study analyze --schema``). There a group may leave out ``kind`` and
``values`` (the levels are then the column names of a one-hot group, the codes of a coded column,
or, without ``codes``, the values found in the column); such a *grouping* names columns but owns
no experts, so the engine (`load_schema`, the slot / expert layout) asks for a kind and values in
every group.

This module is numpy-only so that data tooling and ``studies/`` can use it without torch; the
layout tensors at its end (`expert_slots`, `expert_group`, `slot_group`, `check_attributes`),
which the model and the routers read, import torch when called.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attrimp.errors import SchemaError

if TYPE_CHECKING:
    import torch

UNKNOWN = "unknown"
MULTIPLE = "multiple"
#: Value names that `decode` uses for "no value" / "several values"; no group may use them.
RESERVED_VALUES = (UNKNOWN, MULTIPLE)
#: a code in an annotation file or result table (TOML integers or strings)
Code = int | str


class GroupKind(str, Enum):
    SINGLE = "single"
    DUAL = "dual"
    MULTICLASS = "multiclass"


class MissingPolicy(str, Enum):
    """What the router does for an identity whose group has no (valid) value."""

    OFF = "off"  # every expert of the group is off for that sample (the default)
    ERROR = "error"  # refuse: the dataset must be complete


class MultiplePolicy(str, Enum):
    """What happens when several values of a one-hot group are marked for one identity."""

    ALL = "all"  # each marked value's expert is on; the bank pools them (the default)
    OFF = "off"  # treat as unknown: the group's experts are off
    ERROR = "error"  # refuse


def _readonly(a: np.ndarray) -> np.ndarray:
    # The layout arrays are cached on the (frozen) schema and shared by every caller.
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class AttributeGroup:
    """One group: its value names and the annotation / table columns that code them.

    ``kind`` and ``values`` make it an *expert group* (what the engine needs); a group without a
    ``kind`` is a grouping of result-table columns for ``studies/`` and owns no expert.
    """

    name: str
    kind: GroupKind | None = None
    values: tuple[str, ...] | None = None
    column: str | None = None  # one coded column ...
    codes: tuple[Code, ...] | None = None  # ... with one code per value
    columns: tuple[str, ...] | None = None  # or one binary column per value ...
    positive: Code = 1  # ... marked by this code
    missing_codes: tuple[Code, ...] = ()  # codes that explicitly mean "not annotated"
    description: str = ""
    #: the "not marked" code of binary columns; ``None`` -> 0 when positive is 1, 1 when it is 2
    #: (and, in a grouping without a kind, any other code)
    negative: Code | None = None

    def __post_init__(self) -> None:
        where = f"attribute group {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise SchemaError(f"The {where} needs a non-empty name.")
        if self.kind is not None and not isinstance(self.kind, GroupKind):
            raise SchemaError(f"The {where} has kind {self.kind!r}; use {_kinds()}.")
        if self.values is not None:
            self._check_values(where)
        if self.kind is not None:
            self._check_expert_group(where)
        if (self.column is None) == (self.columns is None):
            raise SchemaError(f"The {where} needs either `column` (with `codes`) or `columns`.")
        if len(set(self.missing_codes)) != len(self.missing_codes):
            raise SchemaError(
                f"The {where} lists a missing code twice: {list(self.missing_codes)}."
            )
        if self.column is not None:
            self._check_coded_column(where)
        else:
            self._check_binary_columns(where)

    def _check_values(self, where: str) -> None:
        assert self.values is not None
        if not self.values:
            raise SchemaError(f"The {where} has an empty `values` list.")
        if len(set(self.values)) != len(self.values):
            raise SchemaError(f"The {where} lists a value twice: {list(self.values)}.")
        reserved = [v for v in self.values if v in RESERVED_VALUES]
        if reserved:
            raise SchemaError(
                f"The {where} uses the reserved value name {reserved[0]!r} "
                f"({' and '.join(RESERVED_VALUES)} mean no value / several values)."
            )

    def _check_expert_group(self, where: str) -> None:
        """What an expert group needs beyond a grouping: a plain name, values that fit its kind."""
        if not self.name.isidentifier():
            raise SchemaError(f"The {where} needs a name made of letters, digits and underscores.")
        if self.values is None:
            raise SchemaError(
                f"The {where} has kind {self.kind.value!r} but no `values`; an expert group names "
                "its values."
            )
        if self.kind in (GroupKind.SINGLE, GroupKind.DUAL) and len(self.values) != 2:
            raise SchemaError(
                f"The {where} is of kind {self.kind.value!r} and needs exactly 2 values, "
                f"not {len(self.values)}."
            )
        if self.kind is GroupKind.MULTICLASS and len(self.values) < 2:
            raise SchemaError(f"The {where} is multiclass and needs at least 2 values.")

    def _check_coded_column(self, where: str) -> None:
        if self.values is not None and (self.codes is None or len(self.codes) != len(self.values)):
            raise SchemaError(
                f"The {where} needs one code per value in `codes` ({len(self.values)} values, "
                f"{0 if self.codes is None else len(self.codes)} codes)."
            )
        if self.codes is None:
            return  # a grouping: the column's own values are the levels
        if len(set(self.codes)) != len(self.codes):
            raise SchemaError(
                f"The {where} gives two values the same code: codes {list(self.codes)}."
            )
        clash = sorted(set(self.codes) & set(self.missing_codes), key=str)
        if clash:
            raise SchemaError(
                f"The {where} uses the code {clash[0]} both for a value and as a missing code."
            )

    def _check_binary_columns(self, where: str) -> None:
        assert self.columns is not None
        if self.codes is not None:
            raise SchemaError(f"The {where} has one column per value, so `codes` has no use.")
        if not self.columns:
            raise SchemaError(f"The {where} has an empty `columns` list.")
        if self.values is not None and len(self.columns) != len(self.values):
            raise SchemaError(
                f"The {where} needs one column per value in `columns` ({len(self.values)} "
                f"values, {len(self.columns)} columns)."
            )
        if len(set(self.columns)) != len(self.columns):
            raise SchemaError(f"The {where} lists a column twice: {list(self.columns)}.")
        negative = self.negative
        if negative is None and self.positive in (1, 2) and not isinstance(self.positive, bool):
            negative = self.positive - 1
            object.__setattr__(self, "negative", negative)
        if negative is None and self.kind is not None:
            # the engine checks every code of an annotation file, so it must know "not marked"
            raise SchemaError(
                f"The {where} marks values with code {self.positive}; declare its "
                '`negative` ("not marked") code too.'
            )
        if negative is not None and negative == self.positive:
            raise SchemaError(
                f"The {where} uses the code {negative} as both positive and negative."
            )
        marks = {self.positive} if negative is None else {self.positive, negative}
        clash = sorted(marks & set(self.missing_codes), key=str)
        if clash:
            raise SchemaError(
                f"The {where} uses the code {clash[0]} both as a mark and as a missing code."
            )

    @property
    def is_expert_group(self) -> bool:
        """Whether the group owns experts (has a kind and values), not only groups columns."""
        return self.kind is not None

    @property
    def expert_values(self) -> tuple[str, ...]:
        """Values that own an expert: only ``present`` for a single-state group."""
        if self.kind is None or self.values is None:
            return ()
        return self.values[1:] if self.kind is GroupKind.SINGLE else self.values

    @property
    def level_names(self) -> tuple[str, ...] | None:
        """Level names in declared order: ``values``, else the one-hot column names, else the
        codes as text; None when the levels are whatever values a coded column holds."""
        if self.values is not None:
            return self.values
        if self.columns is not None:
            return self.columns
        return None if self.codes is None else tuple(str(c) for c in self.codes)

    @property
    def source_columns(self) -> tuple[str, ...]:
        return (self.column,) if self.column is not None else tuple(self.columns or ())

    @property
    def can_be_missing(self) -> bool:
        """Whether the annotation format can leave this group without a value."""
        return self.columns is not None or bool(self.missing_codes)

    @property
    def can_be_multiple(self) -> bool:
        """Whether the annotation format can mark several values (only one-column-per-value)."""
        return self.columns is not None


def _kinds() -> str:
    return ", ".join(repr(k.value) for k in GroupKind)


@dataclass(frozen=True)
class AttributeSchema:
    name: str
    groups: tuple[AttributeGroup, ...]
    missing: MissingPolicy = MissingPolicy.OFF
    multiple: MultiplePolicy = MultiplePolicy.ALL
    description: str = ""
    #: where the schema was read from (``schema file '...'``, ``built-in schema '...'``), for errors
    source: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.groups:
            raise SchemaError(f"Schema {self.name!r} defines no attribute group.")
        names = [g.name for g in self.groups]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise SchemaError(f"Schema {self.name!r} defines the group {sorted(dup)[0]!r} twice.")
        seen: dict[str, str] = {}
        for g in self.groups:
            for c in g.source_columns:
                if c in seen:
                    raise SchemaError(
                        f"Schema {self.name!r} reads the column {c!r} for both group "
                        f"{seen[c]!r} and group {g.name!r}."
                    )
                seen[c] = g.name

    @property
    def has_experts(self) -> bool:
        """Whether every group is an expert group (has a kind and values), as the engine needs."""
        return all(g.is_expert_group for g in self.groups)

    def require_experts(self) -> AttributeSchema:
        """This schema, or a SchemaError naming the first group without a ``kind``.

        A grouping of result-table columns (``studies/``) may leave kinds and values out; the
        slot and expert layout cannot, so every layout property asks for this first.
        """
        for g in self.groups:
            if not g.is_expert_group:
                where = self.source or f"schema {self.name!r}"
                raise SchemaError(
                    f"{where}: group {g.name!r} has no `kind`, so it owns no expert; the engine "
                    "needs a kind and values in every group (a grouping without them serves "
                    "`attrimp study analyze` only)."
                )
        return self

    @cached_property
    def _slot_offsets(self) -> tuple[int, ...]:
        """First slot of every group (the multi-hot layout); only expert schemas have one."""
        self.require_experts()
        offsets, total = [], 0
        for g in self.groups:
            offsets.append(total)
            total += len(g.values or ())
        return tuple(offsets)

    # ----- layout ---------------------------------------------------------------------------
    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def n_slots(self) -> int:
        return self._slot_offsets[-1] + len(self.groups[-1].values or ())

    @property
    def n_attributes(self) -> int:
        """Annotated attributes as the papers count them (binary columns, or one per group)."""
        return sum(len(g.source_columns) for g in self.groups)

    @property
    def source_columns(self) -> list[str]:
        """Every annotation column the schema reads, in group order."""
        return [c for g in self.groups for c in g.source_columns]

    def group(self, name: str) -> AttributeGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise SchemaError(
            f"Schema {self.name!r} has no attribute group {name!r}; it has {self.group_names}."
        )

    def group_index(self, name: str) -> int:
        return self.group_names.index(self.group(name).name)

    def slot(self, group: str, value: str) -> int:
        offsets, g = self._slot_offsets, self.group(group)
        values = g.values or ()
        if value not in values:
            raise SchemaError(f"Group {group!r} has no value {value!r}; it has {list(values)}.")
        return offsets[self.group_index(group)] + values.index(value)

    def group_slots(self, group: str) -> list[int]:
        offsets, i = self._slot_offsets, self.group_index(group)
        return list(range(offsets[i], offsets[i] + len(self.groups[i].values or ())))

    def group_mask(self, groups_on: Iterable[str]) -> np.ndarray:
        """``bool [n_groups]``: True for the named groups (an unknown name is an error)."""
        on = set(groups_on) if not isinstance(groups_on, str) else {groups_on}
        unknown = sorted(on - set(self.group_names))
        if unknown:
            raise SchemaError(
                f"Schema {self.name!r} has no attribute group {unknown[0]!r}; it has "
                f"{self.group_names}."
            )
        return np.array([g in on for g in self.group_names], dtype=bool)

    @cached_property
    def slot_group(self) -> np.ndarray:
        """Group index of every slot, shape ``[n_slots]`` (read-only)."""
        self.require_experts()
        return _readonly(
            np.concatenate(
                [np.full(len(g.values or ()), i, dtype=np.int64) for i, g in enumerate(self.groups)]
            )
        )

    @cached_property
    def expert_slots(self) -> np.ndarray:
        """Slot index of every expert (the bank's row order), shape ``[n_experts]`` (read-only)."""
        self.require_experts()
        return _readonly(
            np.array(
                [self.slot(g.name, v) for g in self.groups for v in g.expert_values], dtype=np.int64
            )
        )

    @property
    def expert_names(self) -> list[str]:
        self.require_experts()
        return [f"{g.name}={v}" for g in self.groups for v in g.expert_values]

    @property
    def n_experts(self) -> int:
        return len(self.expert_slots)

    @cached_property
    def expert_group(self) -> np.ndarray:
        """Group index of every expert, shape ``[n_experts]`` (read-only)."""
        return _readonly(self.slot_group[self.expert_slots])

    # ----- encoding -------------------------------------------------------------------------
    def marks(
        self, table: Mapping[str, Sequence[int]], *, source: str = "annotations"
    ) -> np.ndarray:
        """Raw annotation columns -> ``bool [n, n_slots]``: which values are marked, *before*
        the missing / multiple policies (so priors can count "multiple" as its own value).

        Every code must be declared: a value code, a binary column's positive / negative code,
        or a ``missing_code``. Anything else is an error naming the column and the code, since
        silently reading a typo as "no" would alter the data.
        """
        cols = list(table.keys())
        need = self.source_columns
        absent = [c for c in need if c not in cols]
        if absent:
            raise SchemaError(
                f"{source} lacks the column {absent[0]!r} that schema {self.name!r} needs "
                f"({len(absent)} missing in all)."
            )
        n = len(np.asarray(table[need[0]]))
        out = np.zeros((n, self.n_slots), dtype=bool)
        for gi, g in enumerate(self.groups):
            off = self._slot_offsets[gi]
            if g.column is not None:
                raw = _column(table, g.column, n, source)
                codes = tuple(g.codes or ())
                for vi, code in enumerate(codes):
                    out[:, off + vi] = raw == code
                _check_codes(raw, codes + g.missing_codes, g.column, g, source)
            else:
                assert g.negative is not None
                for vi, col in enumerate(g.columns or ()):
                    raw = _column(table, col, n, source)
                    out[:, off + vi] = raw == g.positive
                    _check_codes(raw, (g.negative, g.positive, *g.missing_codes), col, g, source)
        return out

    def encode(
        self, table: Mapping[str, Sequence[int]], *, source: str = "annotations"
    ) -> np.ndarray:
        """Raw annotation columns -> multi-hot ``float32 [n, n_slots]``, policies applied.

        ``table`` maps column names to integer codes (a DataFrame works). See `marks` for the
        code checks; then ``missing`` / ``multiple`` decide what an empty or multiply-marked
        group becomes (off = all its slots 0).
        """
        out = self.marks(table, source=source).astype(np.float32)
        for gi, g in enumerate(self.groups):
            off = self._slot_offsets[gi]
            block = out[:, off : off + len(g.values)]
            marked = block.sum(axis=1)
            if self.missing is MissingPolicy.ERROR and (marked == 0).any():
                row = int(np.flatnonzero(marked == 0)[0])
                raise SchemaError(
                    f"{source}: row {row} has no value for group {g.name!r} and schema "
                    f"{self.name!r} sets missing = 'error'."
                )
            multi = marked > 1
            if multi.any():
                if self.multiple is MultiplePolicy.ERROR:
                    row = int(np.flatnonzero(multi)[0])
                    raise SchemaError(
                        f"{source}: row {row} marks several values of group {g.name!r} and schema "
                        f"{self.name!r} sets multiple = 'error'."
                    )
                if self.multiple is MultiplePolicy.OFF:
                    block[multi] = 0.0
        return out

    def decode(self, multihot: np.ndarray) -> dict[str, list[str]]:
        """Multi-hot rows -> one value name per group (``unknown`` / ``multiple`` otherwise)."""
        multihot = np.asarray(multihot)
        result: dict[str, list[str]] = {}
        for gi, g in enumerate(self.groups):
            off = self._slot_offsets[gi]
            block = multihot[:, off : off + len(g.values)] > 0
            marked = block.sum(axis=1)
            first = block.argmax(axis=1)
            names = np.array(list(g.values) + [UNKNOWN, MULTIPLE], dtype=object)
            pick = np.where(
                marked == 0, len(g.values), np.where(marked > 1, len(g.values) + 1, first)
            )
            result[g.name] = names[pick].tolist()
        return result

    # ----- I/O ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The TOML / JSON form; `from_dict` reads it back to an equal schema."""
        return {
            "name": self.name,
            "description": self.description,
            "missing": self.missing.value,
            "multiple": self.multiple.value,
            "groups": [_group_to_dict(g) for g in self.groups],
        }

    @classmethod
    def from_dict(cls, data: Mapping, *, source: str = "schema") -> AttributeSchema:
        """A schema from parsed TOML / JSON; every mistake is a SchemaError naming ``source``."""
        if not isinstance(data, Mapping):
            raise SchemaError(
                f"{source}: a schema must be a table of keys, not {type(data).__name__}."
            )
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise SchemaError(
                f"{source}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_TOP_KEYS))})."
            )
        if "groups" not in data:
            raise SchemaError(f"{source}: a required key 'groups' is missing.")
        raw_groups = data["groups"]
        if not isinstance(raw_groups, list) or not all(isinstance(g, Mapping) for g in raw_groups):
            raise SchemaError(f"{source}: `groups` must be a list of tables ([[groups]] in TOML).")
        groups = [_group_from_dict(g, i, source) for i, g in enumerate(raw_groups)]
        missing = _policy(MissingPolicy, data.get("missing", "off"), "missing", source)
        multiple = _policy(MultiplePolicy, data.get("multiple", "all"), "multiple", source)
        try:
            return cls(
                name=str(data.get("name", "custom")),
                groups=tuple(groups),
                missing=missing,
                multiple=multiple,
                description=str(data.get("description", "")),
                source=source,
            )
        except SchemaError as e:
            raise SchemaError(f"{source}: {e}") from None

    @classmethod
    def from_toml_text(cls, text: str, *, source: str = "schema") -> AttributeSchema:
        """A schema from TOML text; invalid TOML is one sentence naming ``source``."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SchemaError(f"{_capital(source)} is not valid TOML: {e}.") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_toml(cls, path: str | Path) -> AttributeSchema:
        """A schema file; an absent, unreadable or invalid file is one sentence naming it."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SchemaError(f"Schema file {str(path)!r} does not exist.") from None
        except (IsADirectoryError, UnicodeDecodeError):
            raise SchemaError(f"Schema file {str(path)!r} is not a readable text file.") from None
        return cls.from_toml_text(text, source=f"schema file {str(path)!r}")


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _group_to_dict(g: AttributeGroup) -> dict:
    d: dict = {"name": g.name}
    if g.kind is not None:
        d["kind"] = g.kind.value
    if g.values is not None:
        d["values"] = list(g.values)
    if g.column is not None:
        d["column"] = g.column
        if g.codes is not None:
            d["codes"] = list(g.codes)
    else:
        d["columns"] = list(g.columns or ())
        d["positive"] = g.positive
        if g.negative is not None:
            d["negative"] = g.negative
    if g.missing_codes:
        d["missing_codes"] = list(g.missing_codes)
    if g.description:
        d["description"] = g.description
    return d


_TOP_KEYS = {"name", "description", "missing", "multiple", "groups"}
_GROUP_KEYS = {
    "name", "kind", "values", "column", "codes", "columns", "positive", "negative",
    "missing_codes", "description",
}  # fmt: skip


def _column(table: Mapping, col: str, n: int, source: str) -> np.ndarray:
    raw = np.asarray(table[col])
    if raw.ndim != 1 or len(raw) != n:
        raise SchemaError(f"{source}: column {col!r} has {raw.shape} entries, expected {n}.")
    return raw


def _check_codes(
    raw: np.ndarray, allowed: tuple[int, ...], col: str, g: AttributeGroup, source: str
) -> None:
    try:
        known = np.isin(raw, np.asarray(allowed))
    except TypeError:  # e.g. strings in the column
        known = np.array([v in allowed for v in raw.tolist()], dtype=bool)
    if not known.all():
        row = int(np.flatnonzero(~known)[0])
        bad = raw[row]
        bad = bad.item() if hasattr(bad, "item") else bad
        raise SchemaError(
            f"{source}: column {col!r} holds the code {bad!r} (row {row}), which group "
            f"{g.name!r} does not declare (it accepts {sorted(allowed)})."
        )


def _policy(enum: type[Enum], value, key: str, source: str):
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum)
        raise SchemaError(f"{source}: `{key}` is {value!r}; use one of {allowed}.") from None


def _is_code(v: object) -> bool:
    return isinstance(v, (int, str)) and not isinstance(v, bool)


def _code_list(g: Mapping, key: str, where: str) -> tuple[Code, ...]:
    value = g[key]
    if not isinstance(value, list) or not all(_is_code(v) for v in value):
        raise SchemaError(
            f"{where}: `{key}` must be a list of integers (or strings), not {value!r}."
        )
    return tuple(value)


def _str_list(g: Mapping, key: str, where: str) -> tuple[str, ...]:
    value = g[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SchemaError(f"{where}: `{key}` must be a list of strings, not {value!r}.")
    return tuple(value)


def _check_group_keys(g: Mapping, where: str) -> GroupKind | None:
    """The checks a group's keys need before it is built; returns its kind (None: a grouping)."""
    unknown = set(g) - _GROUP_KEYS
    if unknown:
        raise SchemaError(f"{where} has unknown key {sorted(unknown)[0]!r}.")
    if "name" not in g:
        raise SchemaError(f"{where} lacks the required key 'name'.")
    if "column" in g and ("columns" in g or "positive" in g or "negative" in g):
        raise SchemaError(
            f"{where} mixes `column` (one coded column) with `columns`/`positive`/`negative` "
            "(one binary column per value); pick one."
        )
    for key in ("positive", "negative"):
        if key in g and not _is_code(g[key]):
            raise SchemaError(f"{where}: `{key}` must be an integer (or a string), not {g[key]!r}.")
    if "column" in g and not isinstance(g["column"], str):
        raise SchemaError(f"{where}: `column` must be a string, not {g['column']!r}.")
    if "kind" not in g:
        return None
    try:
        return GroupKind(g["kind"])
    except ValueError:
        raise SchemaError(f"{where} has kind {g['kind']!r}; use {_kinds()}.") from None


def _group_from_dict(g: Mapping, i: int, source: str) -> AttributeGroup:
    where = f"{source}: group {i} ({g.get('name', '?')!r})"
    kind = _check_group_keys(g, where)
    try:
        return AttributeGroup(
            name=str(g["name"]),
            kind=kind,
            values=_str_list(g, "values", where) if "values" in g else None,
            column=g.get("column"),
            codes=_code_list(g, "codes", where) if "codes" in g else None,
            columns=_str_list(g, "columns", where) if "columns" in g else None,
            positive=g.get("positive", 1),
            negative=g.get("negative"),
            missing_codes=_code_list(g, "missing_codes", where) if "missing_codes" in g else (),
            description=str(g.get("description", "")),
        )
    except SchemaError as e:
        if str(e).startswith(source):
            raise
        raise SchemaError(f"{source}: {e}") from None


def builtin_schemas() -> tuple[str, ...]:
    """Names of the schemas shipped with attrimp (the ``attrimp/schemas/*.toml`` resources)."""
    folder = resources.files("attrimp").joinpath("schemas")
    return tuple(
        sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))
    )


#: the built-in schema names (`builtin_schemas()` at import time)
BUILTIN_SCHEMAS = builtin_schemas()


def load_schema(name_or_path: str | Path, *, experts: bool = True) -> AttributeSchema:
    """A built-in schema by name (``market1501``, ``dukemtmc``) or a TOML schema file.

    Built-ins are package resources found by name (`importlib.resources`), so they load from a
    wheel, a zip or a checkout alike. ``experts=False`` also accepts a *grouping* whose groups
    leave out ``kind`` / ``values`` (what ``studies/`` reads); the engine keeps the default.
    """
    key = str(name_or_path).lower().replace("-", "")
    if key in BUILTIN_SCHEMAS:
        text = resources.files("attrimp").joinpath(f"schemas/{key}.toml").read_text("utf-8")
        schema = AttributeSchema.from_toml_text(text, source=f"built-in schema {key!r}")
    else:
        path = Path(name_or_path)
        if not path.suffix and not path.exists():
            raise SchemaError(
                f"{str(name_or_path)!r} is neither a built-in schema "
                f"({', '.join(BUILTIN_SCHEMAS)}) nor a schema file."
            )
        schema = AttributeSchema.from_toml(path)
    return schema.require_experts() if experts else schema


# ----------------------------------------------------------------------------- layout tensors
# The schema's layout (``expert_slots``, ``expert_group``, ``slot_group``) as cached long
# tensors, for the model and every router. They live here, beside the layout they serve, so that
# the model and the routers do not import one router plug-in for them. torch is imported inside
# the functions: this module stays numpy-only for `studies/` and data tooling.

#: every schema a lookup has been asked for, by ``id``. The references keep each schema alive,
#: so its ``id`` cannot be reused by another object while it is listed here.
_SCHEMAS: dict[int, AttributeSchema] = {}


def remember_schema(schema: AttributeSchema) -> int:
    """Register ``schema`` for the layout lookups below and return its key (its ``id``).

    Called eagerly: the model registers its schema at construction, and every eager lookup
    registers again (a dict store, cheaper than hashing the schema). Under ``torch.compile`` the
    registry is only read, never written (writing would make the frozen schema a side effect
    that Dynamo must reconstruct after the graph, which some torch versions cannot do).
    """
    key = id(schema)
    _SCHEMAS[key] = schema
    return key


@lru_cache(maxsize=256)
def _build(key: int, kind: str, device: torch.device) -> torch.Tensor:
    import torch

    schema = _SCHEMAS.get(key)
    if schema is None:
        raise SchemaError(
            "A schema's layout was asked for inside torch.compile before it was registered: "
            "build the model (or call attrimp.model.schema.remember_schema(schema)) before "
            "compiling."
        )
    return torch.tensor(getattr(schema, kind), dtype=torch.long, device=device)


def _layout(key: int, kind: str, device: torch.device) -> torch.Tensor:
    return _build(key, kind, device)


# The lookup is a constant for a given schema and device. Marked so, torch.compile embeds the
# cached tensor in the graph instead of tracing its construction, which would copy the schema's
# layout from the host (a stream synchronisation on a GPU) at every forward. Its arguments are
# an int, a str and a device, never the schema itself: Dynamo turns every argument of such a
# function into a Python constant, and torch <= 2.11 cannot do that for a frozen dataclass
# ("can't reconstruct arbitrary frozen dataclass instances"). The mark is what
# ``torch.compiler.assume_constant_result`` sets (torch 2.x), set here without importing torch;
# tests/test_model.py compiles a model with ``fullgraph=True``, which fails if it stops working.
_layout._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _lookup(schema: AttributeSchema, kind: str, device: torch.device | str) -> torch.Tensor:
    """``getattr(schema, kind)`` as a cached long tensor on ``device``.

    Called on every forward: keyed by the schema's identity, because hashing a frozen schema
    (every group, every value) costs more than the gather it serves. Under torch.compile
    ``id(schema)`` is a constant guarded on the schema's identity, so another schema recompiles.
    """
    import torch

    key = id(schema) if torch.compiler.is_compiling() else remember_schema(schema)
    return _layout(key, kind, torch.device(device))


def expert_slots(schema: AttributeSchema, device: torch.device | str = "cpu") -> torch.Tensor:
    """``schema.expert_slots`` as a cached long tensor on ``device``."""
    return _lookup(schema, "expert_slots", device)


def expert_group(schema: AttributeSchema, device: torch.device | str = "cpu") -> torch.Tensor:
    """``schema.expert_group`` as a cached long tensor on ``device``."""
    return _lookup(schema, "expert_group", device)


def slot_group(schema: AttributeSchema, device: torch.device | str = "cpu") -> torch.Tensor:
    """``schema.slot_group`` as a cached long tensor on ``device``."""
    return _lookup(schema, "slot_group", device)


def check_attributes(attributes: Any, schema: AttributeSchema) -> torch.Tensor:
    """The ``[batch, n_slots]`` multi-hot as a floating tensor (numpy accepted), shape checked."""
    import torch

    if not isinstance(attributes, torch.Tensor):
        attributes = torch.as_tensor(np.asarray(attributes))
    if attributes.ndim != 2 or attributes.shape[1] != schema.n_slots:
        raise SchemaError(
            f"Attributes of shape {tuple(attributes.shape)} do not fit schema {schema.name!r}, "
            f"which needs [batch, {schema.n_slots}] (one column per value slot)."
        )
    if not attributes.is_floating_point():
        attributes = attributes.to(torch.float32)
    return attributes

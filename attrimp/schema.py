"""Attribute schemas: which attributes a dataset annotates and which expert each value owns.

A schema is an ordered list of attribute *groups*. Every value of every group is one *slot* of
the multi-hot attribute vector that datasets emit and routers read; the slots that own an expert
are the rows of the expert bank:

- ``single`` (e.g. ``hat``): values ``(absent, present)``; one expert, for ``present``.
- ``dual`` (e.g. ``gender``): two values, one expert each.
- ``multiclass`` (e.g. ``upcolor``, ``age``): one expert per class.

Annotation files code a group either as one integer column (``column`` + ``codes``, e.g. Market's
``gender`` 1 = male, 2 = female) or as one binary column per value (``columns`` + ``positive``,
e.g. ``upblack … upgreen`` with 2 = yes). Real files have identities with no value marked,
codes that mean "not annotated" and identities with several colours marked; the schema's
``missing`` / ``multiple`` policies and each group's ``missing_codes`` make every such case an
explicit decision (see docs/schemas.md) rather than an accident of field order.

This module is numpy-only so that data tooling can use it without torch.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path

import numpy as np

from attrimp.errors import SchemaError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

UNKNOWN = "unknown"
MULTIPLE = "multiple"


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


@dataclass(frozen=True)
class AttributeGroup:
    name: str
    kind: GroupKind
    values: tuple[str, ...]
    column: str | None = None  # one coded column ...
    codes: tuple[int, ...] | None = None  # ... with one code per value
    columns: tuple[str, ...] | None = None  # or one binary column per value ...
    positive: int = 1  # ... marked by this code
    missing_codes: tuple[int, ...] = ()  # codes that explicitly mean "not annotated"
    description: str = ""

    def __post_init__(self) -> None:
        where = f"attribute group {self.name!r}"
        if not self.name.isidentifier():
            raise SchemaError(f"The {where} needs a name made of letters, digits and underscores.")
        if len(set(self.values)) != len(self.values):
            raise SchemaError(f"The {where} lists a value twice: {list(self.values)}.")
        if self.kind in (GroupKind.SINGLE, GroupKind.DUAL) and len(self.values) != 2:
            raise SchemaError(
                f"The {where} is of kind {self.kind.value!r} and needs exactly 2 values, "
                f"not {len(self.values)}."
            )
        if self.kind is GroupKind.MULTICLASS and len(self.values) < 2:
            raise SchemaError(f"The {where} is multiclass and needs at least 2 values.")
        if (self.column is None) == (self.columns is None):
            raise SchemaError(f"The {where} needs either `column` (with `codes`) or `columns`.")
        if self.column is not None:
            if self.codes is None or len(self.codes) != len(self.values):
                raise SchemaError(f"The {where} needs one code per value in `codes`.")
            if set(self.codes) & set(self.missing_codes):
                raise SchemaError(f"The {where} uses a code both as a value and as missing.")
        if self.columns is not None and len(self.columns) != len(self.values):
            raise SchemaError(f"The {where} needs one column per value in `columns`.")

    @property
    def expert_values(self) -> tuple[str, ...]:
        """Values that own an expert: only ``present`` for a single-state group."""
        return self.values[1:] if self.kind is GroupKind.SINGLE else self.values

    @property
    def source_columns(self) -> tuple[str, ...]:
        return (self.column,) if self.column is not None else tuple(self.columns or ())


@dataclass(frozen=True)
class AttributeSchema:
    name: str
    groups: tuple[AttributeGroup, ...]
    missing: MissingPolicy = MissingPolicy.OFF
    multiple: MultiplePolicy = MultiplePolicy.ALL
    description: str = ""
    # Derived layout, filled in __post_init__.
    _slot_offsets: tuple[int, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [g.name for g in self.groups]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise SchemaError(f"Schema {self.name!r} defines the group {sorted(dup)[0]!r} twice.")
        offsets, total = [], 0
        for g in self.groups:
            offsets.append(total)
            total += len(g.values)
        object.__setattr__(self, "_slot_offsets", tuple(offsets))

    # ----- layout ---------------------------------------------------------------------------
    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def n_slots(self) -> int:
        return sum(len(g.values) for g in self.groups)

    @property
    def n_attributes(self) -> int:
        """Annotated attributes as the papers count them (binary columns, or one per group)."""
        return sum(len(g.source_columns) for g in self.groups)

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
        g = self.group(group)
        if value not in g.values:
            raise SchemaError(f"Group {group!r} has no value {value!r}; it has {list(g.values)}.")
        return self._slot_offsets[self.group_index(group)] + g.values.index(value)

    def group_slots(self, group: str) -> list[int]:
        i = self.group_index(group)
        return list(range(self._slot_offsets[i], self._slot_offsets[i] + len(self.groups[i].values)))

    @property
    def slot_group(self) -> np.ndarray:
        """Group index of every slot, shape ``[n_slots]``."""
        return np.concatenate(
            [np.full(len(g.values), i, dtype=np.int64) for i, g in enumerate(self.groups)]
        )

    @property
    def expert_slots(self) -> np.ndarray:
        """Slot index of every expert (the bank's row order), shape ``[n_experts]``."""
        return np.array(
            [self.slot(g.name, v) for g in self.groups for v in g.expert_values], dtype=np.int64
        )

    @property
    def expert_names(self) -> list[str]:
        return [f"{g.name}={v}" for g in self.groups for v in g.expert_values]

    @property
    def n_experts(self) -> int:
        return len(self.expert_slots)

    @property
    def expert_group(self) -> np.ndarray:
        """Group index of every expert, shape ``[n_experts]``."""
        return self.slot_group[self.expert_slots]

    # ----- encoding -------------------------------------------------------------------------
    def encode(self, table: Mapping[str, Sequence[int]], *, source: str = "annotations") -> np.ndarray:
        """Raw annotation columns -> multi-hot ``float32 [n, n_slots]``, policies applied.

        ``table`` maps column names to integer codes (a DataFrame works). An unknown code that
        is not a declared ``missing_code`` is an error naming the column and value: silently
        treating a typo as "unknown" would lose data.
        """
        cols = list(table.keys())
        need = [c for g in self.groups for c in g.source_columns]
        absent = [c for c in need if c not in cols]
        if absent:
            raise SchemaError(
                f"{source} lacks the column {absent[0]!r} that schema {self.name!r} needs "
                f"({len(absent)} missing in all)."
            )
        n = len(np.asarray(table[need[0]])) if need else 0
        out = np.zeros((n, self.n_slots), dtype=np.float32)
        for gi, g in enumerate(self.groups):
            off = self._slot_offsets[gi]
            block = out[:, off : off + len(g.values)]
            if g.column is not None:
                raw = np.asarray(table[g.column])
                codes = np.asarray(g.codes)
                for vi, code in enumerate(codes):
                    block[raw == code, vi] = 1.0
                known = np.isin(raw, np.concatenate([codes, np.asarray(g.missing_codes, dtype=codes.dtype)]))
                if not known.all():
                    bad = raw[~known][0]
                    raise SchemaError(
                        f"{source}: column {g.column!r} holds the code {bad!r}, which group "
                        f"{g.name!r} does not define (codes {list(g.codes)}, missing codes "
                        f"{list(g.missing_codes)})."
                    )
            else:
                for vi, col in enumerate(g.columns or ()):
                    raw = np.asarray(table[col])
                    block[:, vi] = raw == g.positive
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
            result[g.name] = [
                UNKNOWN if m == 0 else (g.values[f] if m == 1 else MULTIPLE)
                for m, f in zip(marked, first)
            ]
        return result

    # ----- I/O ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        groups = []
        for g in self.groups:
            d: dict = {"name": g.name, "kind": g.kind.value, "values": list(g.values)}
            if g.column is not None:
                d["column"] = g.column
                d["codes"] = list(g.codes or ())
            else:
                d["columns"] = list(g.columns or ())
                d["positive"] = g.positive
            if g.missing_codes:
                d["missing_codes"] = list(g.missing_codes)
            if g.description:
                d["description"] = g.description
            groups.append(d)
        return {
            "name": self.name,
            "description": self.description,
            "missing": self.missing.value,
            "multiple": self.multiple.value,
            "groups": groups,
        }

    @classmethod
    def from_dict(cls, data: Mapping, *, source: str = "schema") -> AttributeSchema:
        try:
            groups = []
            for i, g in enumerate(data["groups"]):
                unknown = set(g) - {
                    "name", "kind", "values", "column", "codes", "columns", "positive",
                    "missing_codes", "description",
                }
                if unknown:
                    raise SchemaError(
                        f"{source}: group {i} ({g.get('name', '?')!r}) has unknown key "
                        f"{sorted(unknown)[0]!r}."
                    )
                try:
                    kind = GroupKind(g["kind"])
                except ValueError:
                    raise SchemaError(
                        f"{source}: group {g.get('name', i)!r} has kind {g['kind']!r}; "
                        "use 'single', 'dual' or 'multiclass'."
                    ) from None
                groups.append(
                    AttributeGroup(
                        name=str(g["name"]),
                        kind=kind,
                        values=tuple(str(v) for v in g["values"]),
                        column=g.get("column"),
                        codes=tuple(int(c) for c in g["codes"]) if "codes" in g else None,
                        columns=tuple(g["columns"]) if "columns" in g else None,
                        positive=int(g.get("positive", 1)),
                        missing_codes=tuple(int(c) for c in g.get("missing_codes", ())),
                        description=str(g.get("description", "")),
                    )
                )
            return cls(
                name=str(data.get("name", "custom")),
                groups=tuple(groups),
                missing=MissingPolicy(data.get("missing", "off")),
                multiple=MultiplePolicy(data.get("multiple", "all")),
                description=str(data.get("description", "")),
            )
        except KeyError as e:
            raise SchemaError(f"{source}: a required key {e.args[0]!r} is missing.") from None
        except ValueError as e:
            if isinstance(e, SchemaError):
                raise
            raise SchemaError(f"{source}: {e}.") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> AttributeSchema:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SchemaError(f"Schema file {str(path)!r} does not exist.") from None
        except tomllib.TOMLDecodeError as e:
            raise SchemaError(f"Schema file {str(path)!r} is not valid TOML: {e}.") from None
        return cls.from_dict(data, source=f"schema file {str(path)!r}")


BUILTIN_SCHEMAS = ("market1501", "dukemtmc")


def load_schema(name_or_path: str | Path) -> AttributeSchema:
    """A built-in schema by name (``market1501``, ``dukemtmc``) or a TOML schema file."""
    key = str(name_or_path).lower().replace("-", "")
    if key in BUILTIN_SCHEMAS:
        text = resources.files("attrimp").joinpath(f"schemas/{key}.toml").read_text("utf-8")
        return AttributeSchema.from_dict(tomllib.loads(text), source=f"built-in schema {key!r}")
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        raise SchemaError(
            f"{str(name_or_path)!r} is neither a built-in schema ({', '.join(BUILTIN_SCHEMAS)}) "
            "nor a schema file."
        )
    return AttributeSchema.from_toml(path)

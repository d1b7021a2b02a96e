"""Ablation designs as objects: each one knows its conditions, its label and its role in a study.

A *design* is a family of test-time conditions (one trained MoSAIC model, its experts switched or
its router bent): the full oracle, backbone only, leave-one-group-out, ... A `Design` carries
everything the engine needs to know about it, so that the config, the sweep, the analyses and the
report read the object instead of keeping their own name lists, and no condition name is parsed
back from a string (a condition that concerns one group says so in `Condition.group`).

Designs live in `DESIGNS`, an `attrimp.registry.Registry` over the ``attrimp.designs``
entry-point group. attrimp declares its built-ins in its ``pyproject.toml`` exactly as a third
party declares one, pointing at a `Design` object::

    [project.entry-points."attrimp.designs"]
    shuffled = "my_pkg.designs:SHUFFLED"

    # my_pkg/designs.py
    from attrimp.evaluate.designs import Condition, Design, DesignOptions

    def _shuffled(schema, options: DesignOptions) -> list[Condition]:
        groups = tuple(schema.group_names)
        return [Condition(f"shuffled:{g}", "shuffled", groups, group=g, seed=options.seed)
                for g in groups]

    SHUFFLED = Design("shuffled", _shuffled, label="each group shuffled", role="other")

A study runs it when its config names it (``ablation.designs = [..., "shuffled"]``): only the
built-ins are in the default list (``default=True``), so installing a plug-in never changes what
an existing study computes. The module is torch-free; loading a design imports only its module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from attrimp.model.schema import AttributeSchema
from attrimp.registry import Registry

ENTRY_POINT_GROUP = "attrimp.designs"


@dataclass(frozen=True)
class Condition:
    """One test-time configuration of a trained model (a row family of the result tables)."""

    name: str
    design: str
    #: groups whose experts may be on (the router decides which of their experts are)
    groups_on: tuple[str, ...]
    #: ("group", "value"): every sample's group is forced to that value
    counterfactual: tuple[str, str] | None = None
    #: probability with which the oracle's value of each group is replaced by another
    noise_p: float | None = None
    router: str = "oracle"
    seed: int = 0
    #: for router "partial_oracle": the groups gated from the annotation; every other group is
    #: gated from the learned router's prediction
    oracle_groups: tuple[str, ...] | None = None
    #: the one group this condition concerns (switched off, alone, intervened on, ...), as its
    #: design's `Design.per_group` says; None for a condition about no single group. A label,
    #: not an input of the computation, so it does not enter `key`.
    group: str | None = None

    def key(self) -> str:
        """A hash of the condition (its cache file name). Fields added after the first release
        enter it only when set, so every older condition keeps its key and its cached table;
        `group` never does (it describes the condition, the other fields define it)."""
        fields = asdict(self)
        del fields["group"]
        if fields["oracle_groups"] is None:
            del fields["oracle_groups"]
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def group_mask(self, schema: AttributeSchema) -> dict[str, int]:
        return {g: int(g in self.groups_on) for g in schema.group_names}


@dataclass(frozen=True)
class DesignOptions:
    """The study's settings a design may read when it expands (``[ablation]`` of the config)."""

    #: how many balanced random group subsets ``random_subsets`` draws
    random_subsets: int = 16
    #: the annotation-noise probabilities of ``noisy``
    noisy_p: tuple[float, ...] = (0.1, 0.25, 0.5)
    seed: int = 0


#: a design's expansion: the schema and the options -> its conditions, in a stable order
Expand = Callable[[AttributeSchema, DesignOptions], list[Condition]]

#: what a design's conditions are for in a study's analyses and report
Role = Literal["switching", "counterfactual", "noise", "learned", "annotation", "other"]

#: what each condition of a per-group design does to its `Condition.group`
PerGroup = Literal["off", "only", "value", "oracle"]


@dataclass(frozen=True)
class Design:
    """One ablation design: how it expands into conditions and what a study does with them.

    ``role`` places it in the analyses: ``"switching"`` designs switch expert groups on and off
    with the oracle router (their rows feed the switching battery, the configuration GLM and
    Shapley values); ``"counterfactual"``, ``"noise"``, ``"learned"`` bend the router;
    ``"annotation"`` runs no model configuration (the attribute-only baseline). ``per_group``
    says what a condition does to its `Condition.group`: ``"off"`` (the paired
    leave-one-group-out tests read these against the full oracle), ``"only"``, ``"value"``,
    ``"oracle"``. ``sampled``: a switching design whose coalitions are a random draw. ``order`` sorts designs in the default run and in the report (built-ins
    10-110; a plug-in after them unless it says otherwise). ``default``: in the study's default
    design list (built-ins only, so installing a plug-in changes no existing study).
    """

    name: str
    conditions: Expand
    label: str
    role: Role = "other"
    retrainable: bool = False
    per_group: PerGroup | None = None
    order: float = 1000.0
    default: bool = False
    #: its coalitions are drawn at random (the Shapley bootstrap resamples them), not enumerated
    sampled: bool = False

    def expand(self, schema: AttributeSchema, options: DesignOptions) -> list[Condition]:
        """The design's conditions for ``schema``; each one names this design."""
        return list(self.conditions(schema, options))


def _as_design(name: str, obj: Any) -> Design:
    """A registered design must be a `Design` registered under its own name."""
    if not isinstance(obj, Design):
        raise TypeError(f"{obj!r} is not an attrimp.evaluate.designs.Design")
    if obj.name != name:
        raise TypeError(f"the design object is named {obj.name!r}, not {name!r}")
    return obj


#: every ablation design by name; the built-ins as pyproject.toml declares them (for a checkout
#: without installed metadata)
DESIGNS: Registry[Design] = Registry(
    ENTRY_POINT_GROUP,
    kind="ablation design",
    plural="ablation designs",
    builtins={
        "full": "attrimp.evaluate.designs:FULL",
        "backbone": "attrimp.evaluate.designs:BACKBONE",
        "leave_one_out": "attrimp.evaluate.designs:LEAVE_ONE_OUT",
        "only_one": "attrimp.evaluate.designs:ONLY_ONE",
        "random_subsets": "attrimp.evaluate.designs:RANDOM_SUBSETS",
        "counterfactual": "attrimp.evaluate.designs:COUNTERFACTUAL",
        "noisy": "attrimp.evaluate.designs:NOISY",
        "learned": "attrimp.evaluate.designs:LEARNED",
        "matched_noisy": "attrimp.evaluate.designs:MATCHED_NOISY",
        "partial_oracle": "attrimp.evaluate.designs:PARTIAL_ORACLE",
        "attribute_only": "attrimp.evaluate.designs:ATTRIBUTE_ONLY",
    },
    coerce=_as_design,
)


def register_design(design: Design) -> Design:
    """Register ``design`` under its name in this process (notebooks, tests)."""
    return DESIGNS.register(design.name, design)


# ----- what the config, the sweep, the analyses and the report ask ----------------------------
def ordered(names: Iterable[str] | None = None) -> list[Design]:
    """The designs (every loadable one, or those of ``names``), in run and report order."""
    found = DESIGNS.load_all().values() if names is None else [DESIGNS.load(n) for n in names]
    return sorted(found, key=lambda d: (d.order, d.name))


def default_designs() -> list[str]:
    """The designs a study runs when its config names none, in order."""
    return [d.name for d in ordered() if d.default]


def retrainable_designs() -> list[str]:
    """The designs whose configurations can each be trained as a model of its own."""
    return [d.name for d in ordered() if d.retrainable]


def designs_with_role(role: str) -> tuple[str, ...]:
    """The names of the designs with ``role`` (e.g. the switching designs of the analyses)."""
    return tuple(d.name for d in ordered() if d.role == role)


def sampled_designs() -> tuple[str, ...]:
    """The switching designs whose coalitions were drawn at random (`Design.sampled`)."""
    return tuple(d.name for d in ordered() if d.sampled)


def group_conditions(
    groups: AttributeSchema | Sequence[str],
    per_group: PerGroup,
    options: DesignOptions | None = None,
) -> dict[str, str]:
    """Group -> the name of its condition in the first design (in order) whose `Design.per_group`
    is ``per_group``: how the analyses find "the condition with only that group off" (``"off"``)
    or "that group's partial oracle" (``"oracle"``) without rebuilding a name by hand.

    Given group names instead of a schema (the analyses of a result table know only those), the
    design expands against a stand-in that has ``group_names`` and no values: a per-group design
    read this way must name its conditions from the groups alone. {} when no design has it.
    """
    schema = groups if isinstance(groups, AttributeSchema) else _GroupNames(tuple(groups))
    for design in ordered():
        if design.per_group == per_group:
            conds = design.expand(schema, options or DesignOptions())  # type: ignore[arg-type]
            return {c.group: c.name for c in conds if c.group is not None}
    return {}


def off_conditions(
    groups: AttributeSchema | Sequence[str], options: DesignOptions | None = None
) -> dict[str, str]:
    """Group -> the condition that switches only that group off (``"without:<g>"`` built-in)."""
    return group_conditions(groups, "off", options)


@dataclass(frozen=True)
class _GroupNames:
    """The part of a schema an ``"off"`` design reads: its group names (no values)."""

    group_names: tuple[str, ...]
    groups: tuple[()] = ()


# ----- the built-in designs ---------------------------------------------------------------------
def balanced_subsets(groups: Sequence[str], n: int, seed: int) -> list[tuple[str, ...]]:
    """``n`` random group subsets in which every group is on in ⌊n/2⌋ or ⌈n/2⌉ of them.

    Independent coin flips leave some groups on far more often than others at small ``n``; a
    shuffled balanced column per group keeps each indicator's variance maximal, which is what
    the configuration-level GLM needs. Duplicate subsets and the empty / full subsets (already
    separate designs) are redrawn a bounded number of times.
    """
    rng = np.random.default_rng(seed)
    n_groups = len(groups)
    seen: set[tuple[int, ...]] = {(0,) * n_groups, (1,) * n_groups}
    for _attempt in range(50):
        cols = []
        for _ in range(n_groups):
            col = np.zeros(n, dtype=int)
            col[: n // 2 + int(rng.integers(0, 2)) * (n % 2)] = 1
            rng.shuffle(col)
            cols.append(col)
        rows = [tuple(int(c[i]) for c in cols) for i in range(n)]
        if len(set(rows)) == n and not (set(rows) & seen):
            break
    return [tuple(g for g, on in zip(groups, row) if on) for row in rows]


def _full(schema: AttributeSchema, o: DesignOptions) -> list[Condition]:
    return [Condition("full", "full", tuple(schema.group_names))]


def _backbone(schema: AttributeSchema, o: DesignOptions) -> list[Condition]:
    return [Condition("backbone", "backbone", ())]


def _leave_one_out(schema: AttributeSchema, o: DesignOptions) -> list[Condition]:
    groups = tuple(schema.group_names)
    return [
        Condition(f"without:{g}", "leave_one_out", tuple(x for x in groups if x != g), group=g)
        for g in groups
    ]


def _only_one(schema: AttributeSchema, o: DesignOptions) -> list[Condition]:
    return [Condition(f"only:{g}", "only_one", (g,), group=g) for g in schema.group_names]


def _random_subsets(schema: AttributeSchema, o: DesignOptions) -> list[Condition]:
    if o.random_subsets <= 0:
        return []
    subsets = balanced_subsets(tuple(schema.group_names), o.random_subsets, o.seed)
    return [
        Condition(f"subset:{i:03d}", "random_subsets", s, seed=o.seed)
        for i, s in enumerate(subsets)
    ]


def _counterfactual(schema: AttributeSchema, o: DesignOptions) -> list[Condition]:
    groups = tuple(schema.group_names)
    return [
        Condition(
            f"cf:{g.name}={v}", "counterfactual", groups, counterfactual=(g.name, v), group=g.name
        )
        for g in schema.groups
        for v in g.values
    ]


def _noisy(schema: AttributeSchema, o: DesignOptions) -> list[Condition]:
    groups = tuple(schema.group_names)
    return [
        Condition(f"noisy:p={p:g}", "noisy", groups, noise_p=float(p), seed=o.seed)
        for p in o.noisy_p
    ]


def _learned(schema: AttributeSchema, o: DesignOptions) -> list[Condition]:
    return [Condition("learned", "learned", tuple(schema.group_names), router="learned")]


def _matched_noisy(schema: AttributeSchema, o: DesignOptions) -> list[Condition]:
    groups = tuple(schema.group_names)
    return [
        Condition("matched_noisy", "matched_noisy", groups, router="matched_noisy", seed=o.seed)
    ]


def _partial_oracle(schema: AttributeSchema, o: DesignOptions) -> list[Condition]:
    groups = tuple(schema.group_names)
    return [
        Condition(
            f"partial_oracle:{g}",
            "partial_oracle",
            groups,
            router="partial_oracle",
            oracle_groups=(g,),
            group=g,
        )
        for g in groups
    ]


def _no_conditions(schema: AttributeSchema, o: DesignOptions) -> list[Condition]:
    return []  # not a model configuration: the study computes it from annotations alone


FULL = Design("full", _full, "full oracle", "switching", True, order=10, default=True)
BACKBONE = Design("backbone", _backbone, "backbone only", "switching", True, order=20, default=True)
LEAVE_ONE_OUT = Design(
    "leave_one_out", _leave_one_out, "each group off (without:)", "switching", True,
    per_group="off", order=30, default=True,
)  # fmt: skip
ONLY_ONE = Design(
    "only_one", _only_one, "each group alone (only:)", "switching", True,
    per_group="only", order=40, default=True,
)  # fmt: skip
RANDOM_SUBSETS = Design(
    "random_subsets", _random_subsets, "random subsets", "switching", True, order=50,
    default=True, sampled=True,
)  # fmt: skip
COUNTERFACTUAL = Design(
    "counterfactual", _counterfactual, "counterfactual values (cf:)", "counterfactual",
    per_group="value", order=60, default=True,
)  # fmt: skip
NOISY = Design("noisy", _noisy, "noisy annotations", "noise", True, order=70, default=True)
LEARNED = Design("learned", _learned, "the learned router", "learned", order=80, default=True)
MATCHED_NOISY = Design(
    "matched_noisy", _matched_noisy, "oracle at the learned router's error rates", "learned",
    order=90, default=True,
)  # fmt: skip
PARTIAL_ORACLE = Design(
    "partial_oracle", _partial_oracle, "partial oracle (one group true, the rest predicted)",
    "learned", per_group="oracle", order=100, default=True,
)  # fmt: skip
ATTRIBUTE_ONLY = Design(
    "attribute_only", _no_conditions, "attribute-only baseline", "annotation", order=110,
    default=True,
)  # fmt: skip

"""The oracle router: ground-truth attributes switch their experts on.

The schema's ``encode`` has already applied its missing / multiple policies, so the oracle is a
pure gather: gate ``e`` = multi-hot value of slot ``schema.expert_slots[e]``. A ``single``
group's absent slot owns no expert, so "no hat" switches nothing on; a group with no value
leaves all its experts off; several marked colours (policy ``all``) switch each one on.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from attrimp.errors import SchemaError
from attrimp.model.interfaces import Router
from attrimp.model.schema import AttributeSchema


def check_attributes(attributes, schema: AttributeSchema) -> torch.Tensor:
    """The ``[batch, n_slots]`` multi-hot as a floating tensor (numpy accepted), shape checked."""
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
    schema = _SCHEMAS.get(key)
    if schema is None:
        raise SchemaError(
            "A schema's layout was asked for inside torch.compile before it was registered: "
            "build the model (or call routers.oracle.remember_schema(schema)) before compiling."
        )
    return torch.tensor(getattr(schema, kind), dtype=torch.long, device=device)


# The lookup is a constant for a given schema and device. Marked so, torch.compile embeds the
# cached tensor in the graph instead of tracing its construction, which would copy the schema's
# layout from the host (a stream synchronisation on a GPU) at every forward. Its arguments are
# an int, a str and a device, never the schema itself: Dynamo turns every argument of an
# ``assume_constant_result`` function into a Python constant, and torch <= 2.11 cannot do that
# for a frozen dataclass ("can't reconstruct arbitrary frozen dataclass instances").
@torch.compiler.assume_constant_result
def _layout(key: int, kind: str, device: torch.device) -> torch.Tensor:
    return _build(key, kind, device)


def _lookup(schema: AttributeSchema, kind: str, device: torch.device | str) -> torch.Tensor:
    """``getattr(schema, kind)`` as a cached long tensor on ``device``.

    Called on every forward: keyed by the schema's identity, because hashing a frozen schema
    (every group, every value) costs more than the gather it serves. Under torch.compile
    ``id(schema)`` is a constant guarded on the schema's identity, so another schema recompiles.
    """
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


class OracleRouter(Router):
    """Gates = the annotation's multi-hot at the expert slots."""

    name = "oracle"

    def route(
        self,
        attributes: torch.Tensor,
        schema: AttributeSchema,
        *,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attributes = check_attributes(attributes, schema)
        return attributes.index_select(1, expert_slots(schema, attributes.device))

    def __repr__(self) -> str:
        return "OracleRouter()"

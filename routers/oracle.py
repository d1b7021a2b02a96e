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
from attrimp.interfaces import Router
from attrimp.schema import AttributeSchema


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


@lru_cache(maxsize=64)
def _index(schema: AttributeSchema, kind: str, device: torch.device) -> torch.Tensor:
    source = {
        "expert_slots": schema.expert_slots,
        "expert_group": schema.expert_group,
        "slot_group": schema.slot_group,
    }[kind]
    return torch.tensor(source, dtype=torch.long, device=device)


_FAST: dict[tuple[int, torch.device], tuple[AttributeSchema, torch.Tensor]] = {}


# The three lookups below are constants for a given schema and device. Marked so, torch.compile
# embeds the cached tensor in the graph instead of tracing its construction, which would copy
# the schema's layout from the host (a stream synchronisation on a GPU) at every forward.
@torch.compiler.assume_constant_result
def expert_slots(schema: AttributeSchema, device: torch.device | str = "cpu") -> torch.Tensor:
    """``schema.expert_slots`` as a cached long tensor on ``device``.

    Called on every forward: looked up by the schema's identity first, because hashing a frozen
    schema (every group, every value) costs more than the gather it serves.
    """
    device = torch.device(device)
    hit = _FAST.get((id(schema), device))
    if hit is not None and hit[0] is schema:
        return hit[1]
    index = _index(schema, "expert_slots", device)
    _FAST[(id(schema), device)] = (schema, index)
    return index


@torch.compiler.assume_constant_result
def expert_group(schema: AttributeSchema, device: torch.device | str = "cpu") -> torch.Tensor:
    """``schema.expert_group`` as a cached long tensor on ``device``."""
    return _index(schema, "expert_group", torch.device(device))


@torch.compiler.assume_constant_result
def slot_group(schema: AttributeSchema, device: torch.device | str = "cpu") -> torch.Tensor:
    """``schema.slot_group`` as a cached long tensor on ``device``."""
    return _index(schema, "slot_group", torch.device(device))


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

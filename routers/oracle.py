"""The oracle router: ground-truth attributes switch their experts on.

The schema's ``encode`` has already applied its missing / multiple policies, so the oracle is a
pure gather: gate ``e`` = multi-hot value of slot ``schema.expert_slots[e]``. A ``single``
group's absent slot owns no expert, so "no hat" switches nothing on; a group with no value
leaves all its experts off; several marked colours (policy ``all``) switch each one on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attrimp.model.interfaces import Router

# The schema-layout helpers live in the schema module; re-exported here for code written when
# they lived in this plug-in (``from routers.oracle import check_attributes`` keeps working).
from attrimp.model.schema import (
    AttributeSchema,
    check_attributes,
    expert_group,
    expert_slots,
    remember_schema,
    slot_group,
)

__all__ = [
    "OracleRouter",
    "check_attributes",
    "expert_group",
    "expert_slots",
    "remember_schema",
    "slot_group",
]


class OracleRouter(Router):
    """Gates = the annotation's multi-hot at the expert slots."""

    name = "oracle"

    @dataclass
    class Options:
        """The oracle takes no options (``[router.options]`` must stay empty)."""

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

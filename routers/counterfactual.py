"""The counterfactual router: "what if every sample had value v of group g?"

The annotations are edited (a copy: the caller's tensor is never modified) so that group ``g``
holds exactly value ``v`` for every sample, then the base router (the oracle by default) gates
from the edited annotations. ``v = "unknown"`` erases the group instead: its experts go off as
for an unannotated identity, while every other group keeps its true value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attrimp.errors import SchemaError
from attrimp.model.interfaces import Router
from attrimp.model.schema import UNKNOWN, AttributeSchema, check_attributes
from routers.oracle import OracleRouter


class CounterfactualRouter(Router):
    name = "counterfactual"

    @dataclass
    class Options:
        """``[router.options]``: the group whose value is replaced, and the value it gets."""

        group: str
        value: str

    def __init__(
        self,
        group: str,
        value: str,
        *,
        base: Router | None = None,
        schema: AttributeSchema | None = None,
    ) -> None:
        if not isinstance(group, str) or not isinstance(value, str):
            raise SchemaError("A counterfactual router needs a group name and a value name.")
        self.group = group
        self.value = value
        self.base = base if base is not None else OracleRouter()
        if schema is not None:
            self._slots(schema)

    def _slots(self, schema: AttributeSchema) -> tuple[list[int], int | None]:
        slots = schema.group_slots(self.group)  # unknown group -> SchemaError listing the groups
        if self.value == UNKNOWN:
            return slots, None
        g = schema.group(self.group)
        if self.value not in g.values:
            raise SchemaError(
                f"Group {self.group!r} has no value {self.value!r}; it has {[*g.values, UNKNOWN]}."
            )
        return slots, schema.slot(self.group, self.value)

    def counterfactual(self, attributes: torch.Tensor, schema: AttributeSchema) -> torch.Tensor:
        """The edited annotations (a new tensor)."""
        attributes = check_attributes(attributes, schema)
        slots, target = self._slots(schema)
        edited = attributes.clone()
        edited[:, slots[0] : slots[-1] + 1] = 0
        if target is not None:
            edited[:, target] = 1
        return edited

    def route(
        self,
        attributes: torch.Tensor,
        schema: AttributeSchema,
        *,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.base.route(self.counterfactual(attributes, schema), schema, features=features)

    def __repr__(self) -> str:
        return f"CounterfactualRouter({self.group!r}, {self.value!r}, base={self.base!r})"

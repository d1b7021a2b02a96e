"""A router plug-in: the oracle's gates with one attribute group always off.

It builds the oracle through attrimp's router registry (so it needs no import path inside
attrimp's routers) and zeroes every expert of ``group``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import routers
from attrimp.model.interfaces import Router
from attrimp.model.schema import AttributeSchema


class OneGroupOffRouter(Router):
    """Gates from the annotation, except that ``group``'s experts never fire."""

    name = "plugex_one_off"

    @dataclass
    class Options:
        """``[router.options]``: the group whose experts stay off."""

        group: str = "hat"

    def __init__(self, group: str = "hat") -> None:
        self.group = group
        self.base = routers.build_router("oracle")

    def route(
        self,
        attributes: torch.Tensor,
        schema: AttributeSchema,
        *,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        gates = self.base.route(attributes, schema, features=features)
        off = np.asarray(schema.expert_group) == schema.group_index(self.group)
        return gates * torch.from_numpy(~off).to(gates)

    def __repr__(self) -> str:
        return f"OneGroupOffRouter(group={self.group!r})"

"""The ablation mask: switch whole attribute groups off.

This is the primitive of every ablation table: the base router (the oracle by default) decides
the gates, then every expert of a group that is off gets gate exactly 0. Groups are named (an
unknown name is an error listing the schema's groups) or given as a 0/1 mask over the schema's
groups, either one mask for the whole batch ``[n_groups]`` or one per sample
``[batch, n_groups]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from attrimp.errors import SchemaError
from attrimp.model.interfaces import Router
from attrimp.model.schema import AttributeSchema, check_attributes, expert_group
from routers.oracle import OracleRouter

GroupSpec = Iterable[str] | str | np.ndarray | torch.Tensor


class MaskRouter(Router):
    """``MaskRouter({"gender", "hat"})`` keeps only those groups' experts;
    ``MaskRouter(groups_off={"upcolor"})`` switches one group off; ``MaskRouter([1, 0, ...])``
    takes a group mask in the schema's group order."""

    name = "mask"

    @dataclass
    class Options:
        """``[router.options]``: exactly one of the two lists of group names."""

        groups_on: list[str] | None = None
        groups_off: list[str] | None = None

    def __init__(
        self,
        groups_on: GroupSpec | None = None,
        *,
        groups_off: Iterable[str] | str | None = None,
        base: Router | None = None,
        schema: AttributeSchema | None = None,
    ) -> None:
        if (groups_on is None) == (groups_off is None):
            raise SchemaError("A mask router needs exactly one of groups_on and groups_off.")
        self.base = base if base is not None else OracleRouter()
        self._names: frozenset[str] | None = None
        self._mask: torch.Tensor | None = None
        self._invert = groups_off is not None
        spec = groups_off if groups_off is not None else groups_on
        if isinstance(spec, str):
            self._names = frozenset({spec})
        elif isinstance(spec, (np.ndarray, torch.Tensor)):
            self._mask = torch.as_tensor(np.asarray(spec) if isinstance(spec, np.ndarray) else spec)
        else:
            items = list(spec)  # type: ignore[arg-type]
            if all(isinstance(x, str) for x in items):
                self._names = frozenset(items)
            elif all(isinstance(x, (bool, int, float, np.integer, np.floating)) for x in items):
                self._mask = torch.as_tensor(items)
            else:
                raise SchemaError(
                    f"A mask router takes group names or a 0/1 group mask, not {items!r}."
                )
        if self._mask is not None:
            if self._invert:
                raise SchemaError("groups_off takes group names; pass a 0/1 mask as groups_on.")
            if self._mask.ndim not in (1, 2):
                raise SchemaError(
                    f"A group mask is [n_groups] or [batch, n_groups], not {tuple(self._mask.shape)}."
                )
            bad = ~((self._mask == 0) | (self._mask == 1))
            if bad.any():
                raise SchemaError(
                    f"A group mask holds only 0 and 1, not {self._mask[bad].flatten()[0].item()}."
                )
            self._mask = self._mask.to(torch.bool)
        if schema is not None:
            self.group_mask(schema)  # fail now, naming the bad group, rather than mid-evaluation

    def group_mask(self, schema: AttributeSchema) -> torch.Tensor:
        """Bool ``[n_groups]`` (or ``[batch, n_groups]``): True = the group's experts may fire."""
        if self._names is not None:
            on = torch.from_numpy(schema.group_mask(self._names).copy())
            return ~on if self._invert else on
        assert self._mask is not None
        if self._mask.shape[-1] != schema.n_groups:
            raise SchemaError(
                f"The group mask has {self._mask.shape[-1]} entries but schema {schema.name!r} "
                f"has {schema.n_groups} groups {schema.group_names}."
            )
        return self._mask

    def route(
        self,
        attributes: torch.Tensor,
        schema: AttributeSchema,
        *,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attributes = check_attributes(attributes, schema)
        gates = self.base.route(attributes, schema, features=features)
        mask = self.group_mask(schema).to(gates.device)
        if mask.ndim == 2 and mask.shape[0] != gates.shape[0]:
            raise SchemaError(
                f"The per-sample group mask has {mask.shape[0]} rows for a batch of {gates.shape[0]}."
            )
        keep = mask.index_select(-1, expert_group(schema, gates.device))
        return torch.where(keep, gates, torch.zeros((), dtype=gates.dtype, device=gates.device))

    def __repr__(self) -> str:
        what = sorted(self._names) if self._names is not None else self._mask.int().tolist()
        key = "groups_off" if self._invert else "groups_on"
        return f"MaskRouter({key}={what}, base={self.base!r})"

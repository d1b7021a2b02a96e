"""The noisy router: annotation errors at a known rate, to ask how much the experts need
correct attributes.

For every sample and every group that has a value, with probability ``p`` the value is replaced
by one drawn uniformly from the group's *other* values (so a corrupted value always changes);
then the base router (the oracle by default) gates from the corrupted annotations.

Decisions:
- missing stays missing: a group with no value (unannotated, or switched off by the schema's
  policies) is never given one, since noise models a wrong label, not an invented one;
- a group with several values marked, when corrupted, becomes one value drawn among the
  unmarked ones (if every value is marked, it is left as is);
- randomness comes from the router's own seeded ``torch.Generator`` on the CPU, so a run is
  reproducible whatever the device; ``reset()`` rewinds it to the seed.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from attrimp.errors import ConfigError
from attrimp.model.interfaces import Router
from attrimp.model.schema import AttributeSchema
from routers.oracle import OracleRouter, check_attributes, slot_group


@lru_cache(maxsize=32)
def _group_table(schema: AttributeSchema) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n_groups, max_values]`` slot of each group's k-th value (padded with 0) and a validity
    mask, so a per-group argmax runs as one tensor op."""
    width = max(len(g.values) for g in schema.groups)
    index = torch.zeros(schema.n_groups, width, dtype=torch.long)
    valid = torch.zeros(schema.n_groups, width, dtype=torch.bool)
    for gi, g in enumerate(schema.groups):
        slots = schema.group_slots(g.name)
        index[gi, : len(slots)] = torch.tensor(slots)
        valid[gi, : len(slots)] = True
    return index, valid


def corrupt(
    attributes: torch.Tensor,
    schema: AttributeSchema,
    p: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A corrupted copy of the multi-hot ``attributes`` (see the module docstring)."""
    x = check_attributes(attributes, schema)
    batch, device = x.shape[0], x.device
    marked = (x > 0).cpu()
    sg = slot_group(schema)
    counts = torch.zeros(batch, schema.n_groups).index_add_(1, sg, marked.float())
    present = counts > 0
    draw = torch.rand(batch, schema.n_groups, generator=generator)
    score = torch.rand(batch, schema.n_slots, generator=generator)
    score = score.masked_fill(marked, -1.0)  # never "replace" a value by itself
    index, valid = _group_table(schema)
    grouped = score[:, index].masked_fill(~valid, -2.0)  # [batch, n_groups, max_values]
    best, pick = grouped.max(dim=2)
    flip = (draw < p) & present & (best >= 0)  # best < 0: every value already marked
    chosen = index.gather(1, pick.T).T  # slot of the new value, [batch, n_groups]
    flip_slots = flip[:, sg]
    out = x.clone()
    out[flip_slots.to(device)] = 0
    out.scatter_add_(1, chosen.to(device), flip.to(device=device, dtype=out.dtype))
    return out


class NoisyRouter(Router):
    name = "noisy"

    def __init__(self, p: float, seed: int = 0, *, base: Router | None = None) -> None:
        if not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
            raise ConfigError(f"The noise rate p must be a probability in [0, 1], not {p!r}.")
        self.p = float(p)
        self.seed = int(seed)
        self.base = base if base is not None else OracleRouter()
        self.generator = torch.Generator(device="cpu")
        self.reset()

    def reset(self) -> None:
        """Rewind the random stream to ``seed``."""
        self.generator.manual_seed(self.seed)

    def route(
        self,
        attributes: torch.Tensor,
        schema: AttributeSchema,
        *,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        noisy = corrupt(attributes, schema, self.p, self.generator)
        return self.base.route(noisy, schema, features=features)

    def __repr__(self) -> str:
        return f"NoisyRouter(p={self.p}, seed={self.seed}, base={self.base!r})"

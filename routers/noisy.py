"""The noisy router: annotation errors at a known rate, to ask how much the experts need
correct attributes.

For every sample and every group that has a value, with probability ``p`` the value is replaced
by one drawn uniformly from the group's *other* values (so a corrupted value always changes);
then the base router (the oracle by default) gates from the corrupted annotations.

``p`` is one rate for every group, or a rate per group (a mapping group -> probability; groups
not named are left clean). Per-group rates give the *matched-noise* oracle of a study: each
group corrupted at the learned router's own error rate on the test split, which asks whether
the learned router loses more than random errors at the same rates would cost.

Decisions:
- missing stays missing: a group with no value (unannotated, or switched off by the schema's
  policies) is never given one, since noise models a wrong label, not an invented one;
- a group with several values marked, when corrupted, becomes one value drawn among the
  unmarked ones (if every value is marked, it is left as is);
- randomness comes from the router's own seeded ``torch.Generator`` on the CPU, so a run is
  reproducible whatever the device; ``reset()`` rewinds it to the seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import torch

from attrimp.errors import ConfigError
from attrimp.model.interfaces import Router
from attrimp.model.schema import AttributeSchema, check_attributes, slot_group
from routers.oracle import OracleRouter


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


def group_rates(p: float | Mapping[str, float], schema: AttributeSchema) -> float | torch.Tensor:
    """``p`` as `corrupt` uses it: a float as is, a per-group mapping as a ``[n_groups]`` tensor
    in the schema's group order (unnamed groups 0). An unknown group name or a rate outside
    [0, 1] is a `ConfigError`."""
    if not isinstance(p, Mapping):
        return float(p)
    unknown = sorted(set(p) - set(schema.group_names))
    if unknown:
        raise ConfigError(
            f"Noise rate for unknown group {unknown[0]!r}; the schema {schema.name!r} has "
            f"{list(schema.group_names)}."
        )
    _check_rates(p)
    return torch.tensor([float(p.get(g, 0.0)) for g in schema.group_names])


def _check_rates(p: float | Mapping[str, float]) -> None:
    values = p.values() if isinstance(p, Mapping) else [p]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise ConfigError(f"The noise rate p must be a probability in [0, 1], not {v!r}.")


def corrupt(
    attributes: torch.Tensor,
    schema: AttributeSchema,
    p: float | Mapping[str, float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A corrupted copy of the multi-hot ``attributes`` (see the module docstring). ``p`` is
    one rate, or a rate per group name; the random draws are the same either way, so a mapping
    that gives every group the same rate corrupts exactly as that float does."""
    rate = group_rates(p, schema)
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
    flip = (draw < rate) & present & (best >= 0)  # best < 0: every value already marked
    chosen = index.gather(1, pick.T).T  # slot of the new value, [batch, n_groups]
    flip_slots = flip[:, sg]
    out = x.clone()
    out[flip_slots.to(device)] = 0
    out.scatter_add_(1, chosen.to(device), flip.to(device=device, dtype=out.dtype))
    return out


class NoisyRouter(Router):
    name = "noisy"

    @dataclass
    class Options:
        """``[router.options]``: the corruption probability (one, or per group) and its seed."""

        p: float | dict[str, float]
        seed: int = 0

    def __init__(
        self, p: float | Mapping[str, float], seed: int = 0, *, base: Router | None = None
    ) -> None:
        _check_rates(p)
        self.p = {str(k): float(v) for k, v in p.items()} if isinstance(p, Mapping) else float(p)
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

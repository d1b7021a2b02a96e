"""Ablation designs: which expert groups are on, and how the router is bent, per configuration.

A *condition* is one test-time configuration of a trained MoSAIC model. The designs follow
MoSAIC-ReID's controlled switching (full oracle, backbone only, leave-one-group-out,
only-one-group), plus a seeded balanced random-subset design whose group-on indicators are
orthogonal enough for a GLM of configuration-level metrics, counterfactual interventions, a noisy
oracle sweep and the learned router.

Two designs read the learned router against the oracle (they run only on a model trained with
the learned router; `LEARNED_ROUTERS` names the routers that need one):

- ``matched_noisy``: the oracle with each group's annotation corrupted at the learned router's
  own per-group error rate on the test split (the rates are measured by the evaluator on the
  trained model, so the condition itself names no rate). If it does as well as the learned
  router, the router's errors cost what random errors at those rates cost; if better, the
  router's errors are worse than random (e.g. always the majority value).
- ``partial_oracle``: one condition per group, ``partial_oracle:<group>``: true attributes for
  that group, the learned router's predicted values for every other. Its gain over the learned
  router is what that group's prediction errors cost.

Each design is a `attrimp.evaluate.designs.Design` in the ``attrimp.designs`` registry (the
built-ins are declared there as a plug-in declares its own); `make_conditions` only walks it.
"""

from __future__ import annotations

from collections.abc import Sequence

from attrimp.errors import ConfigError
from attrimp.evaluate.designs import (
    DESIGNS,
    Condition,
    DesignOptions,
    balanced_subsets,
)
from attrimp.model.schema import AttributeSchema

#: routers of conditions that need a model trained with the learned router
LEARNED_ROUTERS = ("learned", "matched_noisy", "partial_oracle")


def make_conditions(
    schema: AttributeSchema,
    designs: Sequence[str],
    *,
    random_subsets: int = 16,
    noisy_p: Sequence[float] = (0.1, 0.25, 0.5),
    seed: int = 0,
) -> list[Condition]:
    """Expand design names into the list of conditions, in a stable order, without duplicates.

    An unknown name is a `ConfigError` listing the registered designs; a plug-in whose
    conditions do not name their design is refused (the tables group rows by that name).
    """
    options = DesignOptions(
        random_subsets=random_subsets, noisy_p=tuple(float(p) for p in noisy_p), seed=seed
    )
    out: list[Condition] = []
    for name in designs:
        conds = DESIGNS.load(name).expand(schema, options)
        wrong = [c.name for c in conds if c.design != name]
        if wrong:
            raise ConfigError(
                f"The ablation design {name!r} made the condition {wrong[0]!r} of another design."
            )
        out += conds
    names = [c.name for c in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"Ablation design lists the condition {sorted(dup)[0]!r} twice.")
    return out


__all__ = [
    "LEARNED_ROUTERS",
    "Condition",
    "DesignOptions",
    "balanced_subsets",
    "make_conditions",
]

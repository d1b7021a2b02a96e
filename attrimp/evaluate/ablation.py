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
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from attrimp.errors import ConfigError
from attrimp.model.schema import AttributeSchema


@dataclass(frozen=True)
class Condition:
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

    def key(self) -> str:
        """A hash of the condition (its cache file name). Fields added after the first release
        enter it only when set, so every older condition keeps its key and its cached table."""
        fields = asdict(self)
        if fields["oracle_groups"] is None:
            del fields["oracle_groups"]
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def group_mask(self, schema: AttributeSchema) -> dict[str, int]:
        return {g: int(g in self.groups_on) for g in schema.group_names}


#: routers of conditions that need a model trained with the learned router
LEARNED_ROUTERS = ("learned", "matched_noisy", "partial_oracle")


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


def make_conditions(
    schema: AttributeSchema,
    designs: Sequence[str],
    *,
    random_subsets: int = 16,
    noisy_p: Sequence[float] = (0.1, 0.25, 0.5),
    seed: int = 0,
) -> list[Condition]:
    """Expand design names into the list of conditions, in a stable order, without duplicates."""
    groups = tuple(schema.group_names)
    out: list[Condition] = []
    for design in designs:
        if design == "full":
            out.append(Condition("full", design, groups))
        elif design == "backbone":
            out.append(Condition("backbone", design, ()))
        elif design == "leave_one_out":
            out += [
                Condition(f"without:{g}", design, tuple(x for x in groups if x != g))
                for g in groups
            ]
        elif design == "only_one":
            out += [Condition(f"only:{g}", design, (g,)) for g in groups]
        elif design == "random_subsets":
            if random_subsets > 0:
                subsets = balanced_subsets(groups, random_subsets, seed)
                out += [
                    Condition(f"subset:{i:03d}", design, s, seed=seed)
                    for i, s in enumerate(subsets)
                ]
        elif design == "counterfactual":
            for g in schema.groups:
                for v in g.values:
                    out.append(
                        Condition(f"cf:{g.name}={v}", design, groups, counterfactual=(g.name, v))
                    )
        elif design == "noisy":
            out += [
                Condition(f"noisy:p={p:g}", design, groups, noise_p=float(p), seed=seed)
                for p in noisy_p
            ]
        elif design == "learned":
            out.append(Condition("learned", design, groups, router="learned"))
        elif design == "matched_noisy":
            out.append(Condition("matched_noisy", design, groups, router=design, seed=seed))
        elif design == "partial_oracle":
            out += [
                Condition(f"partial_oracle:{g}", design, groups, router=design, oracle_groups=(g,))
                for g in groups
            ]
        elif design == "attribute_only":
            continue  # not a model configuration: the study computes it from annotations alone
        else:
            raise ConfigError(f"Unknown ablation design {design!r}.")
    names = [c.name for c in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"Ablation design lists the condition {sorted(dup)[0]!r} twice.")
    return out

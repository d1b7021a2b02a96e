"""A design plug-in: every other attribute group off.

Two conditions, one with the groups at even positions of the schema on and one with those at
odd positions on (the other half off in each). Each is a switching configuration of the oracle
router, so its rows join the study's configuration table and the switching analyses.
"""

from __future__ import annotations

from attrimp.evaluate.designs import Condition, Design, DesignOptions
from attrimp.model.schema import AttributeSchema

NAME = "plugex_every_other"


def every_other(schema: AttributeSchema, options: DesignOptions) -> list[Condition]:
    """``plugex_every_other:even`` keeps groups 0, 2, 4, ... on; ``:odd`` keeps 1, 3, 5, ..."""
    groups = tuple(schema.group_names)
    return [
        Condition(f"{NAME}:{half}", NAME, groups[start::2])
        for start, half in ((0, "even"), (1, "odd"))
    ]


EVERY_OTHER = Design(NAME, every_other, label="every other group on", role="switching")

"""The common currency of the battery: a validated table with one factor per attribute group.

`studies.design.build_analysis_frame` makes it from any result table; every analysis (GLM,
tests, permutation importance, SHAP, consensus) reads it, so grouping, reference levels, dropped
rows and cluster labels are decided once, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class AnalysisFrame:
    #: Rows used, index reset. Outcome columns are float; each attribute group is one
    #: ``pd.Categorical`` column of string levels whose *first* category is the reference level
    #: (the most frequent one); cluster / paired_by / condition columns are kept as given.
    data: pd.DataFrame
    outcomes: list[str]
    #: attribute group names, which are also their column names in ``data``
    groups: list[str]
    #: source columns of each group in the input table (several for a collapsed one-hot group)
    group_columns: dict[str, list[str]]
    cluster: str | None = None
    paired_by: str | None = None
    condition: str | None = None
    #: rows in the input table
    rows_read: int = 0
    #: rows dropped, by reason (e.g. ``{"NaN in outcome 'ap'": 3}``); nothing is dropped silently
    rows_dropped: dict[str, int] = field(default_factory=dict)
    #: degenerate-but-legal findings (constant attribute, empty level, ...), one sentence each
    warnings: list[str] = field(default_factory=list)
    #: where the table came from, for messages and the report
    source: str = "table"
    #: attribute groups left out of every analysis (e.g. single-level), name -> reason
    excluded_groups: dict[str, str] = field(default_factory=dict)
    #: crossed designs: the condition values whose assignment the design drew at random (the
    #: randomisation test re-draws only these); None = not said (every condition assumed)
    randomized_conditions: tuple | None = None

    @property
    def rows_used(self) -> int:
        return len(self.data)

    def levels(self, group: str) -> list[str]:
        """Levels of a group, reference first."""
        return [str(c) for c in self.data[group].cat.categories]

    def clusters(self) -> pd.Series | None:
        """Cluster labels aligned with ``data`` rows (None when rows are independent)."""
        return None if self.cluster is None else self.data[self.cluster]

"""A battery-analysis plug-in: the mean outcome at each level of a group, minus its reference's.

The plainest effect size there is, one row per non-reference level: ``mean_difference`` is the
mean outcome of the rows at that level minus the mean at the group's reference level (the
battery's reference, its most frequent level). It reports no test and no consensus score, only
a table and its report section; attrimp's battery runs it for every outcome because the package
declares it under ``attrimp.analyses``.
"""

from __future__ import annotations

import pandas as pd

from studies.analysis import Analysis, AnalysisContext, AnalysisResult, Section, Table
from studies.frame import AnalysisFrame

NAME = "plugex_group_means"


def mean_differences(frame: AnalysisFrame, outcome: str) -> pd.DataFrame:
    """One row per attribute group and non-reference level: its mean outcome, the reference
    level's, their difference and the row counts."""
    rows = []
    for group in frame.groups:
        if group in frame.excluded_groups:
            continue
        stats = frame.data.groupby(group, observed=True)[outcome].agg(["mean", "size"])
        reference, *others = frame.levels(group)
        if reference not in stats.index:
            continue
        for level in others:
            if level not in stats.index:
                continue
            rows.append(
                {
                    "attribute": group,
                    "level": level,
                    "reference": reference,
                    "mean": float(stats.loc[level, "mean"]),
                    "reference_mean": float(stats.loc[reference, "mean"]),
                    "mean_difference": float(
                        stats.loc[level, "mean"] - stats.loc[reference, "mean"]
                    ),
                    "n": int(stats.loc[level, "size"]),
                    "n_reference": int(stats.loc[reference, "size"]),
                }
            )
    return pd.DataFrame(rows)


class GroupMeanDifference(Analysis):
    """The per-level mean outcome difference table, after the consensus (it feeds nothing)."""

    name = NAME
    order = 95.0
    tables = (Table(NAME),)
    sections = (
        Section(
            NAME,
            "Mean outcome difference per level (example plug-in)",
            "Each level's mean outcome minus its group's reference level's; no adjustment for "
            "the other groups, no test: the plainest effect size, from a third-party package.",
        ),
    )

    def run(self, ctx: AnalysisContext) -> AnalysisResult | None:
        table = ctx.step("mean outcome per level", lambda: mean_differences(ctx.frame, ctx.outcome))
        if table is None:  # the step failed: the battery has already warned
            return None
        return AnalysisResult(tables={NAME: table})

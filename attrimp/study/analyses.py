"""The statistics of a study: the studies battery on each ablation table, with its right design.

| analysis         | table                                   | outcome | attributes            | design             |
| ---------------- | --------------------------------------- | ------- | --------------------- | ------------------ |
| ``switching``    | per query × configuration (full, backbone, leave-one-out, only-one, random subsets) | AP | group-on indicators | rows clustered by identity |
| ``paired``       | per query, full vs each leave-one-out   | AP      | the configuration     | paired by query, clustered by identity |
| ``configurations`` | one row per configuration             | mAP, rank-1 | group-on indicators | independent rows |
| ``attributes``   | per query, full oracle                  | AP      | the query's attribute values | clustered by identity |

``switching`` answers "which experts does the model rely on" per query; ``configurations`` the
same at the level the paper reports (mAP); ``paired`` is the leave-one-group-out test with a
p-value that respects identity clustering; ``attributes`` says which attribute *values* make a
query hard, which is a different question (difficulty, not reliance) and is reported apart.
The study's consensus ranks the groups over the reliance analyses only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attrimp.config import StudyConfig
from attrimp.model.schema import AttributeSchema

SWITCHING_DESIGNS = ("full", "backbone", "leave_one_out", "only_one", "random_subsets")


@dataclass
class StudyAnalyses:
    #: name -> the studies BatteryResult
    batteries: dict[str, Any] = field(default_factory=dict)
    paired: pd.DataFrame | None = None
    consensus: pd.DataFrame | None = None
    kendall_w: float | None = None
    warnings: list[str] = field(default_factory=list)


def on_off(table: pd.DataFrame, groups: list[str]) -> pd.DataFrame:
    """Group-on indicators (0/1) as the levels "off" / "on", so the batteries' reports read
    "on instead of off (the reference)" rather than "1 instead of 0"."""
    out = table.copy()
    for g in groups:
        out[g] = np.where(out[g].astype(bool), "on", "off")
    return out


def _battery(frame, cfg: StudyConfig, progress: bool, **overrides):
    from studies.battery import run_battery

    kwargs = dict(
        alpha=cfg.analysis.alpha,
        seed=cfg.analysis.seed,
        n_repeats=cfg.analysis.repeats,
        progress=progress,
    )
    kwargs.update(overrides)
    return run_battery(frame, **kwargs)


def run_study_analyses(
    per_query: pd.DataFrame,
    configs: pd.DataFrame,
    schema: AttributeSchema,
    cfg: StudyConfig,
    out: Path,
    *,
    progress: bool = True,
    clock=None,
) -> StudyAnalyses:
    """The battery on each table; ``clock`` (the study's stage clock, with ``begin``/``end``)
    times each battery and the paired tests as nested stages (``analyses.<name>``)."""
    from studies.consensus import consensus_ranking
    from studies.design import build_analysis_frame
    from studies.errors import StudyInputError
    from studies.hypothesis import paired_tests
    from studies.report import write_report

    groups = schema.group_names
    result = StudyAnalyses()
    valid = per_query[per_query["valid"]]

    def record(name: str, frame_fn, **battery_kwargs) -> None:
        timing = clock.begin(f"analyses.{name}") if clock is not None else {}
        try:
            try:
                frame = frame_fn()
                timing["rows"] = frame.rows_used
                battery = _battery(frame, cfg, progress, **battery_kwargs)
            except StudyInputError as e:  # degenerate design (e.g. one configuration): say so
                result.warnings.append(f"{name}: not analysed: {e}")
                return
            result.batteries[name] = battery
            write_report(battery, out / name, input_info={"path": f"study table '{name}'"})
        finally:
            if clock is not None:
                clock.end()

    # switching: per query x configuration, group-on indicators as the attributes.
    switching = valid[valid["design"].isin(SWITCHING_DESIGNS)]
    if switching["config"].nunique() > 2:
        table = switching[["pid", "ap"] + [f"on_{g}" for g in groups]].rename(
            columns={f"on_{g}": g for g in groups}
        )
        table = on_off(table, groups)
        record(
            "switching",
            lambda: build_analysis_frame(
                table, outcomes=["ap"], cluster="pid", source="study table 'switching'"
            ),
        )

    # paired leave-one-group-out tests (clustered by identity).
    loo = valid[valid["config"].isin(["full"] + [f"without:{g}" for g in groups])]
    if loo["config"].nunique() > 1:
        if clock is not None:
            clock.begin("analyses.paired", rows=len(loo))
        frame = build_analysis_frame(
            loo[["query", "pid", "config", "ap"]],
            outcomes=["ap"],
            cluster="pid",
            paired_by="query",
            condition="config",
            source="study table 'paired'",
        )
        paired = paired_tests(frame, "ap", reference="full", alpha=cfg.analysis.alpha)
        paired["attribute"] = paired["attribute"].str.removeprefix("without:")
        result.paired = paired.reset_index(drop=True)
        out.mkdir(parents=True, exist_ok=True)
        result.paired.to_csv(out / "paired_tests.csv", index=False, lineterminator="\n")
        if clock is not None:
            clock.end()

    # configuration level: mAP / rank-1 on the group-on indicators.
    cfg_rows = configs[configs["design"].isin(SWITCHING_DESIGNS)]
    if len(cfg_rows) > len(groups) + 1:
        record(
            "configurations",
            lambda: build_analysis_frame(
                on_off(cfg_rows[["mAP", "rank1"] + groups], groups),
                outcomes=["mAP", "rank1"],
                source="study table 'configurations'",
            ),
            cv=min(5, max(2, len(cfg_rows) // 5)),
        )
    else:
        result.warnings.append(
            f"configurations: {len(cfg_rows)} configurations are too few for a GLM on "
            f"{len(groups)} group indicators; add random subsets (ablation.random_subsets)."
        )

    # attribute values of the query under the full oracle: what makes a query hard.
    full = valid[valid["config"] == "full"]
    if len(full):
        record(
            "attributes",
            lambda: build_analysis_frame(
                full[["pid", "ap"] + groups],
                outcomes=["ap"],
                cluster="pid",
                source="study table 'attributes'",
            ),
        )

    # the study's consensus over the reliance analyses.
    scores: dict[str, pd.Series] = {}
    for name in ("switching", "configurations"):
        battery = result.batteries.get(name)
        if battery is None:
            continue
        cons = battery.outcomes[0].table("consensus")
        if not cons.empty:
            scores[name] = cons.set_index("attribute")["score"].astype(float)
    if result.paired is not None:
        wil = result.paired[result.paired["test"] == result.paired["test"].iloc[0]]
        # importance = how much AP drops without the group: the paired tests' mean difference
        # (full - without, positive = the group helps)
        scores["leave_one_out"] = wil.set_index("attribute")["mean_difference"].astype(float)
    if scores:
        cons = consensus_ranking(scores)
        result.consensus = cons.ranking.reset_index(drop=True)
        result.kendall_w = None if np.isnan(cons.kendall_w) else float(cons.kendall_w)
        result.warnings += list(cons.warnings)
        result.consensus.to_csv(out / "consensus.csv", index=False, lineterminator="\n")
    return result

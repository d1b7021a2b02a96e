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

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attrimp.config import StudyConfig
from attrimp.io import atomic_write_frame
from attrimp.model.schema import AttributeSchema
from studies.design import build_analysis_frame
from studies.report import write_report

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


def run_study_analyses(
    per_query: pd.DataFrame,
    configs: pd.DataFrame,
    schema: AttributeSchema,
    cfg: StudyConfig,
    out: Path,
    *,
    progress: bool = False,
    clock=None,
) -> StudyAnalyses:
    """The battery on each table (see the module docstring), each battery's own report under
    ``out/<name>/``, the paired tests and the study consensus as CSV in ``out``.

    ``clock`` (the study's stage clock, with ``begin``/``end``) times each battery and the
    paired tests as nested stages (``analyses.<name>``); ``progress`` shows the batteries'
    progress bars (off: the library is quiet)."""
    runner = _Batteries(cfg, out, progress=progress, clock=clock)
    groups = schema.group_names
    valid = per_query[per_query["valid"]]
    switching = valid[valid["design"].isin(SWITCHING_DESIGNS)]
    if switching["config"].nunique() > 2:
        runner.run("switching", lambda: _switching_frame(switching, groups))
    runner.result.paired = _paired(valid, groups, cfg, out, clock)
    cfg_rows = configs[configs["design"].isin(SWITCHING_DESIGNS)]
    if len(cfg_rows) > len(groups) + 1:
        cv = min(5, max(2, len(cfg_rows) // 5))
        runner.run("configurations", lambda: _configurations_frame(cfg_rows, groups), cv=cv)
    else:
        runner.result.warnings.append(
            f"configurations: {len(cfg_rows)} configurations are too few for a GLM on "
            f"{len(groups)} group indicators; add random subsets (ablation.random_subsets)."
        )
    full = valid[valid["config"] == "full"]
    if len(full):
        runner.run("attributes", lambda: _attributes_frame(full, groups))
    _study_consensus(runner.result, out)
    return runner.result


@contextmanager
def _timed(clock, stage: str, **info: Any) -> Iterator[dict[str, Any]]:
    """A nested stage of the study's clock (a throwaway record when there is no clock)."""
    if clock is None:
        yield dict(info)
        return
    record = clock.begin(stage, **info)
    try:
        yield record
    finally:
        clock.end()


class _Batteries:
    """Runs the studies battery on one study table at a time, timed, writing its report; a
    degenerate table (e.g. one configuration) becomes a warning instead of an error."""

    def __init__(self, cfg: StudyConfig, out: Path, *, progress: bool, clock) -> None:
        self.cfg, self.out, self.progress, self.clock = cfg, out, progress, clock
        self.result = StudyAnalyses()

    def run(self, name: str, make_frame: Callable[[], Any], **battery_options: Any) -> None:
        """Build the analysis frame, run the battery on it and write ``out/<name>/``."""
        from studies.battery import run_battery
        from studies.errors import StudyInputError

        with _timed(self.clock, f"analyses.{name}") as timing:
            try:
                frame = make_frame()
                timing["rows"] = frame.rows_used
                options = {
                    "alpha": self.cfg.analysis.alpha,
                    "seed": self.cfg.analysis.seed,
                    "n_repeats": self.cfg.analysis.repeats,
                    "progress": self.progress,
                    **battery_options,
                }
                battery = run_battery(frame, **options)
            except StudyInputError as e:
                self.result.warnings.append(f"{name}: not analysed: {e}")
                return
            self.result.batteries[name] = battery
            write_report(battery, self.out / name, input_info={"path": f"study table '{name}'"})


def _switching_frame(switching: pd.DataFrame, groups: list[str]):
    """Per query x configuration: AP on the group-on indicators ("off"/"on"), by identity."""
    table = switching[["pid", "ap"] + [f"on_{g}" for g in groups]].rename(
        columns={f"on_{g}": g for g in groups}
    )
    return build_analysis_frame(
        on_off(table, groups), outcomes=["ap"], cluster="pid", source="study table 'switching'"
    )


def _configurations_frame(cfg_rows: pd.DataFrame, groups: list[str]):
    """One row per configuration: mAP and rank-1 on the group-on indicators."""
    return build_analysis_frame(
        on_off(cfg_rows[["mAP", "rank1"] + groups], groups),
        outcomes=["mAP", "rank1"],
        source="study table 'configurations'",
    )


def _attributes_frame(full: pd.DataFrame, groups: list[str]):
    """Per query under the full oracle: AP on the query's attribute values, by identity."""
    return build_analysis_frame(
        full[["pid", "ap"] + groups],
        outcomes=["ap"],
        cluster="pid",
        source="study table 'attributes'",
    )


def _paired(
    valid: pd.DataFrame, groups: list[str], cfg: StudyConfig, out: Path, clock
) -> pd.DataFrame | None:
    """The paired leave-one-group-out tests (full vs without each group, paired by query,
    clustered by identity), written to ``out/paired_tests.csv``; None without a pair."""
    from studies.hypothesis import paired_tests

    loo = valid[valid["config"].isin(["full"] + [f"without:{g}" for g in groups])]
    if loo["config"].nunique() <= 1:
        return None
    with _timed(clock, "analyses.paired", rows=len(loo)):
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
        paired = paired.reset_index(drop=True)
        atomic_write_frame(paired, out / "paired_tests.csv")
    return paired


def _study_consensus(result: StudyAnalyses, out: Path) -> None:
    """Rank the groups over the reliance analyses (switching, configurations, leave-one-out)
    into ``result.consensus`` / ``kendall_w`` and ``out/consensus.csv``."""
    from studies.consensus import consensus_ranking

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
    if not scores:
        return
    cons = consensus_ranking(scores)
    result.consensus = cons.ranking.reset_index(drop=True)
    result.kendall_w = None if np.isnan(cons.kendall_w) else float(cons.kendall_w)
    result.warnings += list(cons.warnings)
    atomic_write_frame(result.consensus, out / "consensus.csv")

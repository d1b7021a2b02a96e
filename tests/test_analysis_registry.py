"""studies.analysis: one contract and one registry for the battery's analyses.

The built-ins are declared in pyproject.toml (``attrimp.analyses``) exactly as a plug-in's are,
and their declarations reproduce the battery's long-standing table, method and section order
(written out here as they were hard-coded before the registry). A test analysis registered in
this process — with a planted effect it must find — appears in the battery's tables, its
progress-step count, the report's sections, the method scores and the consensus, without any
change to studies/battery.py.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import studies
import studies.battery
from studies.analysis import (
    ANALYSES,
    BUILTIN_ANALYSES,
    Analysis,
    AnalysisContext,
    AnalysisResult,
    Method,
    Section,
    Table,
    methods,
    report_sections,
    table_names,
)
from studies.report_md import render_markdown

REPO = Path(__file__).resolve().parents[1]

#: the battery's table order before the registry (studies.battery.TABLES, hard-coded then)
OLD_TABLES = (
    "glm_fits",
    "glm_coefficients",
    "glm_group_tests",
    "tests",
    "paired_tests",
    "randomization",
    "permutation_importance",
    "model_quality",
    "shap",
    "shap_levels",
    "prevalence",
    "method_scores",
    "method_agreement",
    "stability",
    "verdicts",
    "consensus",
)
OLD_METHODS = ("glm", "tests", "rf", "xgb", "shap", "randomization")
#: studies.report_md.SECTIONS' table keys before the registry
OLD_SECTIONS = (
    "method_agreement",
    "glm_fits",
    "glm_group_tests",
    "glm_coefficients",
    "tests",
    "paired_tests",
    "permutation_importance",
    "model_quality",
    "shap",
    "shap_levels",
    "prevalence",
    "stability",
)


def test_builtins_are_declared_in_pyproject_as_entry_points():
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    declared = data["project"]["entry-points"]["attrimp.analyses"]
    assert declared == BUILTIN_ANALYSES == ANALYSES.builtins
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ANALYSES.group)}
    if installed:  # an installed (editable) checkout registers them through its metadata
        assert {k: installed[k] for k in declared if k in installed} == declared
    for name in declared:
        assert ANALYSES.load(name).name == name


def test_builtin_declarations_keep_the_reports_order():
    assert table_names() == OLD_TABLES
    assert tuple(methods()) == OLD_METHODS
    assert tuple(key for key, _, _ in report_sections()) == OLD_SECTIONS
    assert studies.battery.TABLES == OLD_TABLES  # the old names still answer
    assert tuple(studies.battery.METHODS) == OLD_METHODS


class SpreadAnalysis(Analysis):
    """A plug-in: per group, the range of the outcome's level means (a planted effect has the
    largest), as a table, a report section and a consensus method."""

    name = "spread"
    order = 65.0  # after the verdicts (60), before the method scores (70)
    tables = (Table("spread"),)
    sections = (Section("spread", "Outcome spread per group", "Range of the level means."),)
    methods = (Method("spread", "range of the outcome's level means"),)

    def run(self, ctx: AnalysisContext) -> AnalysisResult | None:
        def compute() -> pd.DataFrame:
            data = ctx.frame.data
            rows = [
                {"attribute": g, "range": float(np.ptp(data.groupby(g)[ctx.outcome].mean()))}
                for g in ctx.frame.groups
            ]
            return pd.DataFrame(rows)

        table = ctx.step("outcome spread", compute)
        if table is None:
            return None
        score = table.set_index("attribute")["range"]
        return AnalysisResult(
            tables={"spread": table},
            warnings=["spread is a toy analysis"],
            scores={"spread": score},
        )


def _table(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "a": rng.integers(0, 2, n),
            "b": rng.integers(0, 2, n),
            "c": rng.integers(0, 3, n),
        }
    )
    df["y"] = 0.5 + 0.3 * df["a"] + rng.normal(0, 0.05, n)  # only a matters
    return df


def _analyze(df: pd.DataFrame) -> tuple[studies.StudyReport, list[tuple[str, int, int]]]:
    steps: list[tuple[str, int, int]] = []
    report = studies.analyze(
        df,
        outcome="y",
        models=("rf",),
        n_repeats=1,
        cv=2,
        n_bootstrap=0,
        figures=False,
        progress=lambda label, done, total: steps.append((label, done, total)),
    )
    return report, steps


def test_a_registered_analysis_joins_tables_steps_sections_and_consensus():
    df = _table()
    _, before = _analyze(df)
    with ANALYSES.isolated():
        ANALYSES.register("spread", SpreadAnalysis)
        report, after = _analyze(df)
        assert "spread" in studies.battery.TABLES
        page = render_markdown(report.to_dict())
    assert "spread" not in studies.battery.TABLES  # gone with the block

    # one more progress step, in its place (after the verdicts), and the bar completes
    assert after[-1][1:] == (before[-1][2] + 1, before[-1][2] + 1)
    labels = [label.split(": ", 1)[-1] for label, _, _ in after]
    assert labels.index("outcome spread") == labels.index("verdicts") + 1
    # its table, with the outcome column the battery adds, finds the planted group
    spread = report.table("spread")
    assert list(spread.columns) == ["outcome", "attribute", "range"]
    assert spread.sort_values("range").iloc[-1]["attribute"] == "a"
    assert spread.set_index("attribute").loc["a", "range"] == pytest.approx(0.3, abs=0.03)
    # a consensus method like the built-ins: scored, ranked, counted
    ms = report.table("method_scores")
    assert ms.loc[ms["method"] == "spread"].set_index("attribute").loc["a", "rank"] == 1
    assert "spread" in report.to_dict()["outcomes"][0]["methods"]
    assert report.consensus.iloc[0]["attribute"] == "a"
    # its warning under its name, and its report section
    assert "[spread, y] spread is a toy analysis" in report.warnings
    assert "Outcome spread per group" in page
    assert "spread" in report.to_dict()["analyses"]


class PairedOnly(SpreadAnalysis):
    name = "paired_spread"
    tables = (Table("paired_spread"),)
    sections = ()
    methods = ()

    def applies(self, frame) -> bool:
        return frame.paired_by is not None


def test_an_analysis_that_does_not_apply_takes_no_step_and_writes_nothing():
    df = _table(200)
    _, before = _analyze(df)
    with ANALYSES.isolated():
        ANALYSES.register("paired_spread", PairedOnly)
        report, after = _analyze(df)
    assert after[-1][2] == before[-1][2]
    assert report.table("paired_spread").empty


def test_a_broken_plugin_is_a_warning_not_a_crash():
    with ANALYSES.isolated():
        ANALYSES.register("broken", "no_such_module_for_attrimp:Nothing")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = table_names()
    assert names == OLD_TABLES
    assert any("broken" in str(w.message) for w in caught)


def test_a_registered_object_must_be_an_analysis():
    with ANALYSES.isolated():
        ANALYSES.register("bad", "studies.battery:BatterySettings")
        with pytest.raises(Exception, match="not a studies.analysis.Analysis"):
            ANALYSES.load("bad")

"""One contract for the battery's analyses, and their registry (entry-point group
``attrimp.analyses``).

An analysis is a class with a few declarations and one method, ``run(ctx) -> AnalysisResult``;
the battery (`studies.battery.run_battery`) walks the registry in declared ``order``, runs every
analysis that ``applies`` to the frame, stores its tables, passes its warnings on, collects its
scores for the consensus, and derives from the declarations its progress-step count, the table
list of report.json (:func:`table_names`), the consensus methods (:func:`methods`) and the
report's per-outcome sections (:func:`report_sections`). Adding an analysis is one file plus one
entry-point line; nothing in the battery names it::

    # my_pkg/effect.py
    from studies.analysis import Analysis, AnalysisResult, Method, Section, Table

    class SpreadAnalysis(Analysis):
        name = "spread"                         # also its warnings' and timings' source
        order = 65.0                            # after the verdicts (60), before the method
                                                # scores (70): its scores feed the consensus
        tables = (Table("spread"),)
        sections = (Section("spread", "Outcome spread per group", "Why one reads it."),)
        methods = (Method("spread", "range of the level means"),)

        def run(self, ctx):
            table = ctx.step("outcome spread", lambda: my_table(ctx.frame, ctx.outcome))
            if table is None:                   # the step failed: already a warning
                return None
            score = table.set_index("attribute")["range"]
            return AnalysisResult(tables={"spread": table}, scores={"spread": score})

    # my_pkg's pyproject.toml
    [project.entry-points."attrimp.analyses"]
    spread = "my_pkg.effect:SpreadAnalysis"

(or ``studies.analysis.ANALYSES.register("spread", SpreadAnalysis)`` in a notebook or test).

Why the declarations carry *positions*: the built-in run order (verdicts before the scores,
the bootstrap before the consensus) differs from the order in which report.json has always
listed tables, methods and sections; a position keeps that output byte-identical, and a plug-in
that declares none lands at its own ``order``.

The registry is attrimp's one plug-in mechanism (`attrimp.registry.Registry`: built-in list +
entry-point group + ``register``); ``attrimp.registry`` is a stage-0 leaf (it imports only
``attrimp.errors``, no torch, no engine), which ``tests/test_architecture.py`` lets every package
import. A plug-in that fails to import is a warning when the battery loads every analysis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd

from attrimp.registry import Registry
from studies.frame import AnalysisFrame

#: the built-in analyses, name -> "module:attr": the same declarations as pyproject.toml's
#: ``[project.entry-points."attrimp.analyses"]`` (tests/test_analysis_registry.py keeps them
#: equal), so a plain checkout without installed metadata still finds them
BUILTIN_ANALYSES: dict[str, str] = {
    "glm": "studies.builtin_analyses:GLMAnalysis",
    "tests": "studies.builtin_analyses:RankTestsAnalysis",
    "paired_tests": "studies.builtin_analyses:PairedTestsAnalysis",
    "randomization": "studies.builtin_analyses:RandomizationAnalysis",
    "tree_models": "studies.builtin_analyses:TreeModelsAnalysis",
    "prevalence": "studies.builtin_analyses:PrevalenceAnalysis",
    "verdicts": "studies.builtin_analyses:VerdictsAnalysis",
    "method_scores": "studies.builtin_analyses:MethodScoresAnalysis",
    "stability": "studies.builtin_analyses:StabilityAnalysis",
    "consensus": "studies.builtin_analyses:ConsensusAnalysis",
}


@dataclass(frozen=True)
class Table:
    """A table an analysis writes (report.json ``analyses.<name>``, tables/<name>.csv).

    ``adjusted``: add Holm and Benjamini-Hochberg columns where the table has raw p-values only;
    ``position``: where it is listed among all tables (None: at its analysis's ``order``)."""

    name: str
    adjusted: bool = False
    position: float | None = None


@dataclass(frozen=True)
class Section:
    """A per-outcome section of report.md / report.html: the rows of ``table`` under ``title``
    with the one-line ``why``; ``position`` as for `Table`."""

    table: str
    title: str
    why: str
    position: float | None = None


@dataclass(frozen=True)
class Method:
    """A consensus method: its scores (unsigned evidence per group) are ranked with the
    others'; ``position`` as for `Table` (the order of methods in every table)."""

    name: str
    description: str
    position: float | None = None


@dataclass
class AnalysisResult:
    """What every analysis returns (None instead: it did not run, e.g. its step failed).

    tables: name -> tidy table (one of the analysis's declared `Table` names; the battery adds
    the ``outcome`` column). warnings: one sentence each, passed on under the analysis's name.
    scores: consensus method -> unsigned score per attribute group (a Series indexed by group;
    higher = stronger evidence that the group changes the outcome). signals: records of
    ``attribute, method, direction (+1 / -1 / NaN), significant (bool / NaN)``. raw: result
    objects for plots and later analyses. facts: outcome-level values of report.json's outcome
    block (``family``, ``kendall_w``, ``kendall_w_p``, ``excluded_methods``).
    """

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    scores: dict[str, pd.Series] = field(default_factory=dict)
    signals: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


class AnalysisContext:
    """What an analysis sees of one outcome's pass: the frame, the settings, the earlier
    analyses' results and tables, the scores so far, and the battery's step runner."""

    def __init__(
        self,
        frame: AnalysisFrame,
        outcome: str,
        settings: Any,
        runner: Callable[[str, str, Callable[[], Any]], Any],
        warn: Callable[[str, str], None],
        skip: Callable[[], None],
    ) -> None:
        self.frame = frame
        self.outcome = outcome
        #: the battery's `studies.battery.BatterySettings`
        self.settings = settings
        #: earlier analyses' results by analysis name (absent: did not apply or did not run)
        self.results: dict[str, AnalysisResult] = {}
        #: every table stored so far, with its ``outcome`` column
        self.tables: dict[str, pd.DataFrame] = {}
        #: every consensus score reported so far, by method (superseded methods removed)
        self.candidate_scores: dict[str, pd.Series] = {}
        #: the scores the consensus ranks, set by the ``method_scores`` analysis
        self.scores: dict[str, pd.Series] = {}
        self.source = ""
        self._runner, self._warn, self._skip = runner, warn, skip
        self.steps_done = 0

    def step(self, label: str, fn: Callable[[], Any], *, source: str | None = None) -> Any:
        """Run ``fn`` as one progress step labelled ``label``: timed, its warnings captured, and
        an exception (other than a `StudyInputError`) turned into a warning and None."""
        self.steps_done += 1
        return self._runner(label, source or self.source, fn)

    def skip(self) -> None:
        """Count a declared step that does not apply this time, so the progress bar completes."""
        self.steps_done += 1
        self._skip()

    def warn(self, message: str, *, source: str | None = None) -> None:
        """Pass a warning on now (an analysis of several steps places its sub-steps' warnings)."""
        self._warn(source or self.source, message)


class Analysis:
    """Base class of a battery analysis: override the declarations and :meth:`run`."""

    #: the registry name; also the source of its warnings and timings
    name: ClassVar[str] = ""
    #: when it runs among the analyses (built-ins: glm 10, tests 20, paired_tests 25,
    #: randomization 30, tree_models 40, prevalence 50, verdicts 60, method_scores 70,
    #: stability 80, consensus 90); scores of analyses before 70 enter the consensus
    order: ClassVar[float] = 50.0
    tables: ClassVar[tuple[Table, ...]] = ()
    sections: ClassVar[tuple[Section, ...]] = ()
    methods: ClassVar[tuple[Method, ...]] = ()
    #: consensus methods whose scores this one replaces when it returns a result
    supersedes: ClassVar[tuple[str, ...]] = ()

    def applies(self, frame: AnalysisFrame) -> bool:
        """Whether it runs on this frame at all (e.g. paired designs only)."""
        return True

    def steps(self, frame: AnalysisFrame, settings: Any) -> int:
        """How many progress steps it takes (steps it does not take are counted as skipped)."""
        return 1

    def run(self, ctx: AnalysisContext) -> AnalysisResult | None:
        raise NotImplementedError


def stored_table(
    table: pd.DataFrame | None, outcome: str, *, adjusted: bool = False, **extra: Any
) -> pd.DataFrame:
    """A tidy table as the battery stores it: prefixed with ``outcome`` (and any ``extra``
    constant columns) and, when ``adjusted``, with Holm and Benjamini-Hochberg columns where it
    has raw p-values only. Idempotent, so an analysis may apply it itself to read its table as
    stored (e.g. its signals read the adjusted p-values)."""
    if table is None:
        return pd.DataFrame()
    out = table.reset_index(drop=True).copy()
    for key, value in reversed(list({"outcome": outcome, **extra}.items())):
        if key in out.columns:
            out = out.drop(columns=key)
        out.insert(0, key, value)
    return ensure_adjusted(out) if adjusted else out


def ensure_adjusted(df: pd.DataFrame) -> pd.DataFrame:
    """Add Holm and Benjamini-Hochberg columns where a table has raw p-values but no adjusted
    ones (e.g. GLM level coefficients): the family is the table's non-missing p-values, which
    for one outcome's table is one analysis on one outcome."""
    if df.empty or "p_value" not in df.columns:
        return df
    if {"p_holm", "p_fdr_bh"} <= set(df.columns):
        return df
    from studies.corrections import add_adjusted

    return add_adjusted(df)


def _as_analysis(name: str, obj: Any) -> Analysis:
    """A registered class is instantiated; an instance is kept; anything else is refused."""
    if isinstance(obj, type) and issubclass(obj, Analysis):
        obj = obj()
    if not isinstance(obj, Analysis):
        raise TypeError(f"{obj!r} is not a studies.analysis.Analysis (class or instance)")
    if not obj.name:
        type(obj).name = name  # a class that leaves ``name`` empty takes its registry name
    return obj


#: every battery analysis: built-ins, the ``attrimp.analyses`` entry points, ``register``
ANALYSES: Registry[Analysis] = Registry(
    "attrimp.analyses",
    kind="battery analysis",
    plural="battery analyses",
    builtins=BUILTIN_ANALYSES,
    coerce=_as_analysis,
)


def ordered() -> list[Analysis]:
    """Every analysis that loads, in run order (``order``, then name)."""
    return sorted(ANALYSES.load_all().values(), key=lambda a: (a.order, a.name))


def _listed(kind: str) -> list[tuple[float, int, Any]]:
    items: list[tuple[float, int, Any]] = []
    for a in ordered():
        for item in getattr(a, kind):
            pos = item.position if item.position is not None else a.order
            items.append((pos, len(items), item))
    return sorted(items, key=lambda t: (t[0], t[1]))


def table_specs() -> dict[str, Table]:
    """Every declared table by name, in report order."""
    return {t.name: t for _, _, t in _listed("tables")}


def table_names() -> tuple[str, ...]:
    """The table names of one outcome's results, in report order (report.json's keys)."""
    return tuple(table_specs())


def methods() -> dict[str, str]:
    """The consensus methods in report order, and what each one's score is."""
    return {m.name: m.description for _, _, m in _listed("methods")}


def report_sections() -> tuple[tuple[str, str, str], ...]:
    """The per-outcome report sections: (table, title, why), in page order."""
    return tuple((s.table, s.title, s.why) for _, _, s in _listed("sections"))


def total_steps(frame: AnalysisFrame, settings: Any) -> int:
    """Progress steps of one outcome: the sum over the analyses that apply to ``frame``."""
    return sum(a.steps(frame, settings) for a in ordered() if a.applies(frame))


__all__ = [
    "ANALYSES",
    "BUILTIN_ANALYSES",
    "Analysis",
    "AnalysisContext",
    "AnalysisResult",
    "Method",
    "Section",
    "Table",
    "methods",
    "ensure_adjusted",
    "ordered",
    "report_sections",
    "stored_table",
    "table_names",
    "table_specs",
    "total_steps",
]

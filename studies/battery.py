"""The whole statistical battery on one AnalysisFrame: every analysis, every outcome, one result.

The analyses are plug-ins (`studies.analysis`: one contract, the ``attrimp.analyses``
registry); this module only walks them in their declared order for each outcome, counts the
progress steps they declare, stores their tables, collects every warning — including a step that
failed on degenerate data, which is reported instead of taking the whole report down
(``strict=True`` re-raises, for tests) — and hands each analysis the results of the earlier
ones (the fitted GLM to the verdicts, the scores to the consensus). The score maths lives in
`studies.scores`.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from studies.analysis import (
    Analysis,
    AnalysisContext,
    AnalysisResult,
    Table,
    methods,
    ordered,
    stored_table,
    table_names,
    table_specs,
)
from studies.analysis import ensure_adjusted as _ensure_adjusted  # noqa: F401  (tests)
from studies.errors import StudyInputError
from studies.frame import AnalysisFrame
from studies.scores import (  # noqa: F401  (re-exported: tests and older callers import them here)
    _glm_score,
    _tests_score,
    headline_levels,
    log_sf,
    method_signals,
)

logger = logging.getLogger(__name__)

#: what a progress callback receives: (label of the step about to run, steps done, steps total)
ProgressCallback = Callable[[str, int, int], None]


def __getattr__(name: str) -> Any:
    """``TABLES`` (table names of one outcome's results, in report order: report.json's
    ``analyses`` keys) and ``METHODS`` (the consensus methods in report order -> what each
    score is), read from the analysis registry when asked, so a plug-in registered after this
    module was imported is listed."""
    if name == "TABLES":
        return table_names()
    if name == "METHODS":
        return methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class BatterySettings:
    """Knobs of one battery run; all of them go into report.json so a run can be repeated."""

    alpha: float = 0.05
    seed: int = 0
    models: tuple[str, ...] = ("rf", "xgb")
    #: the GLM's family: "auto" (never a silent Gaussian, see ``studies.glm``) or one of
    #: ``studies.glm.FAMILIES``
    glm_family: str = "auto"
    #: permutation repeats per group and fold
    n_repeats: int = 5
    #: cross-validation folds for the tree models (grouped by cluster when there is one)
    cv: int = 5
    #: SHAP explains at most this many *distinct* attribute rows (split over the CV models; a
    #: seeded sample beyond it). TreeSHAP costs O(rows x trees x leaves x depth^2); a ReID table
    #: has one distinct row per identity, so only tables with very many combinations reach it
    shap_rows: int = 20_000
    #: cluster-bootstrap replicates for the stability of the consensus ranks
    n_bootstrap: int = 50
    n_jobs: int = 1
    #: equivalence margin of the verdicts on the outcome's scale; None = per outcome,
    #: ``studies.verdicts.default_margin`` (0.01 for an outcome in [0, 1], else 0.1 SD)
    margin: float | None = None
    #: re-draws of the randomisation test on crossed frames
    n_perm: int = 999

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise StudyInputError(f"--alpha must lie strictly between 0 and 1, not {self.alpha}.")
        unknown = set(self.models) - {"rf", "xgb"}
        if unknown:
            raise StudyInputError(f"Unknown model(s) {sorted(unknown)}; choose from 'rf', 'xgb'.")
        for name in ("n_repeats", "cv", "shap_rows", "n_jobs"):
            if getattr(self, name) < 1:
                raise StudyInputError(f"The setting {name} must be at least 1.")
        if self.cv < 2:
            raise StudyInputError("Cross-validation needs at least 2 folds (cv >= 2).")
        if self.n_bootstrap < 0:
            raise StudyInputError("The number of bootstrap replicates cannot be negative.")
        if self.margin is not None and not (np.isfinite(self.margin) and self.margin > 0):
            raise StudyInputError(f"--margin must be a positive number, not {self.margin}.")

    def as_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "seed": self.seed,
            "models": list(self.models),
            "n_repeats": self.n_repeats,
            "cv": self.cv,
            "shap_rows": self.shap_rows,
            "n_bootstrap": self.n_bootstrap,
            "margin": self.margin,
        }


@dataclass
class BatteryWarning:
    """One degenerate-but-legal finding or a step that could not run; shown in every report."""

    source: str
    message: str
    outcome: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "outcome": self.outcome, "message": self.message}


@dataclass
class OutcomeResult:
    """Every table the battery made for one outcome (keys from :data:`TABLES`), plus the raw
    result objects (``raw``) for plots that need more than a table."""

    outcome: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    family: str | None = None
    kendall_w: float | None = None
    kendall_w_p: float | None = None
    #: consensus methods left out of the consensus because their scores rank nothing
    #: (method -> reason; studies.consensus)
    excluded_methods: dict[str, str] = field(default_factory=dict)
    #: wall seconds per step, and CPU seconds of the process during it (threads included)
    timings: dict[str, float] = field(default_factory=dict)
    cpu_timings: dict[str, float] = field(default_factory=dict)

    def table(self, name: str) -> pd.DataFrame:
        return self.tables.get(name, pd.DataFrame())


@dataclass
class BatteryResult:
    frame: AnalysisFrame
    settings: BatterySettings
    outcomes: list[OutcomeResult]
    warnings: list[BatteryWarning]
    timings: dict[str, float] = field(default_factory=dict)
    #: the tables and consensus methods the run's analyses declared, in report order (kept
    #: with the result, so its report lists them even once a plug-in is unregistered)
    table_order: tuple[str, ...] = field(default_factory=table_names)
    method_order: tuple[str, ...] = field(default_factory=lambda: tuple(methods()))

    def outcome(self, name: str) -> OutcomeResult:
        for o in self.outcomes:
            if o.outcome == name:
                return o
        raise KeyError(name)

    def combined(self, name: str) -> pd.DataFrame:
        """One table across outcomes (each table already carries an ``outcome`` column)."""
        parts = [
            o.tables[name] for o in self.outcomes if name in o.tables and not o.tables[name].empty
        ]
        if not parts:
            return pd.DataFrame()
        return pd.concat(parts, ignore_index=True, sort=False)


# --------------------------------------------------------------------------- steps


class _Runner:
    """Runs steps with progress, timing, warning capture and failure isolation."""

    def __init__(self, total: int, progress: bool | ProgressCallback, strict: bool) -> None:
        self.total = total
        self.done = 0
        self.strict = strict
        self.warnings: list[BatteryWarning] = []
        self._callback: ProgressCallback | None = None
        self._rich = None
        if callable(progress):
            self._callback = progress
        elif progress:
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

            from attrimp.progress import progress_bar  # the one bar: stderr, transient

            self._rich = progress_bar(
                True,
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
            )
            self._task = self._rich.add_task("battery", total=total)

    def __enter__(self) -> _Runner:
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()

    def warn(self, source: str, message: str, outcome: str | None) -> None:
        w = BatteryWarning(source=source, message=str(message), outcome=outcome)
        if all(w != old for old in self.warnings):
            self.warnings.append(w)

    def skip(self) -> None:
        """Count a step that does not apply (e.g. no bootstrap), so the bar still completes."""
        self.done += 1
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done)
        if self._callback is not None and self.done == self.total:
            self._callback("done", self.done, self.total)

    def step(
        self,
        label: str,
        source: str,
        outcome: str | None,
        fn: Callable[[], Any],
        res: OutcomeResult,
    ) -> Any:
        where = f"{outcome}: {label}" if outcome else label
        if self._callback is not None:
            self._callback(where, self.done, self.total)
        if self._rich is not None:
            self._rich.update(self._task, description=where)
        t0, c0 = time.perf_counter(), time.process_time()
        result = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = fn()
            except StudyInputError:
                raise
            except Exception as exc:  # degenerate data must not take the whole report down
                if self.strict:
                    raise
                self.warn(
                    source,
                    f"{label} could not be computed and is left out: "
                    f"{type(exc).__name__}: {' '.join(str(exc).split())}",
                    outcome,
                )
        for w in caught:
            if issubclass(
                w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
            ):
                continue
            self.warn(source, f"{w.category.__name__}: {' '.join(str(w.message).split())}", outcome)
        elapsed = time.perf_counter() - t0
        logger.info("%s took %.2f s", where, elapsed)
        res.timings[source] = res.timings.get(source, 0.0) + elapsed
        res.cpu_timings[source] = res.cpu_timings.get(source, 0.0) + time.process_time() - c0
        self.done += 1
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done)
        if self._callback is not None and self.done == self.total:
            self._callback("done", self.done, self.total)
        return result


# --------------------------------------------------------------------------- the battery


def run_battery(
    frame: AnalysisFrame,
    *,
    alpha: float = 0.05,
    seed: int = 0,
    models: tuple[str, ...] | list[str] = ("rf", "xgb"),
    n_repeats: int = 5,
    cv: int = 5,
    shap_rows: int = 20_000,
    n_bootstrap: int = 50,
    n_jobs: int = 1,
    progress: bool | ProgressCallback = False,
    strict: bool = False,
    glm_family: str = "auto",
    margin: float | None = None,
    n_perm: int = 999,
) -> BatteryResult:
    """Run every analysis on every outcome of ``frame``; same ``seed``, same result.

    Quiet by default: each step is logged (``logging``, logger ``studies.battery``) and its
    warnings are collected in the result. ``progress=True`` shows a transient progress bar on
    stderr (what the CLI asks for); a callable receives ``(label, steps done, steps total)``.
    ``strict=True`` re-raises a step that failed instead of reporting it as a warning.
    ``margin``: the verdicts' equivalence margin on the outcome's scale (None: per outcome,
    ``studies.verdicts.default_margin``). On a crossed frame (a condition, no paired_by) the
    randomisation test across conditions (``n_perm`` re-draws) is the primary group test.
    """
    settings = BatterySettings(
        glm_family=glm_family,
        alpha=alpha,
        seed=seed,
        models=tuple(models),
        n_repeats=n_repeats,
        cv=cv,
        shap_rows=shap_rows,
        n_bootstrap=n_bootstrap,
        n_jobs=n_jobs,
        margin=margin,
        n_perm=n_perm,
    )
    if not frame.groups:
        raise StudyInputError(
            f"No attribute of {frame.source} has two or more levels in the {frame.rows_used} rows "
            "used, so there is nothing to analyse."
        )
    analyses = [a for a in ordered() if a.applies(frame)]
    per_outcome = sum(a.steps(frame, settings) for a in analyses)
    t_start = time.perf_counter()
    results: list[OutcomeResult] = []
    with _Runner(per_outcome * len(frame.outcomes), progress, strict) as run:
        for w in frame.warnings:
            run.warn("input", w, None)
        if frame.paired_by is not None and frame.condition is not None and frame.cluster is None:
            run.warn(
                "input",
                f"Each {frame.paired_by!r} appears under several conditions, but no --cluster "
                "was given: the per-attribute analyses treat those rows as independent. Pass "
                f"--cluster {frame.paired_by} (or the identity column) to account for it.",
                None,
            )
        for outcome in frame.outcomes:
            results.append(_run_outcome(frame, outcome, settings, analyses, run))
    timings = {"total": time.perf_counter() - t_start}
    return BatteryResult(
        frame=frame,
        settings=settings,
        outcomes=results,
        warnings=run.warnings,
        timings=timings,
        table_order=table_names(),
        method_order=tuple(methods()),
    )


#: the fields of `OutcomeResult` an analysis may set through `AnalysisResult.facts`
_FACTS = ("family", "kendall_w", "kendall_w_p", "excluded_methods")


def _run_outcome(
    frame: AnalysisFrame,
    outcome: str,
    s: BatterySettings,
    analyses: list[Analysis],
    run: _Runner,
) -> OutcomeResult:
    """Every analysis on one outcome, in registry order (built-ins: GLM, rank tests, paired or
    randomisation tests, tree models and SHAP, effect vs prevalence, verdicts, method scores,
    stability, consensus); steps an analysis declared but did not take count as skipped."""
    res = OutcomeResult(outcome=outcome)
    ctx = AnalysisContext(
        frame,
        outcome,
        s,
        runner=lambda label, source, fn: run.step(label, source, outcome, fn, res),
        warn=lambda source, message: run.warn(source, message, outcome),
        skip=run.skip,
    )
    specs = table_specs()
    superseded: set[str] = set()
    for analysis in analyses:
        ctx.source, ctx.steps_done = analysis.name, 0
        result = analysis.run(ctx)
        for _ in range(analysis.steps(frame, s) - ctx.steps_done):
            run.skip()
        if result is None:
            continue
        for w in result.warnings:
            run.warn(analysis.name, w, outcome)
        _store(ctx, res, analysis.name, result, specs)
        superseded |= set(analysis.supersedes)
        for method in superseded:
            ctx.candidate_scores.pop(method, None)
        ctx.candidate_scores.update(
            {m: sc for m, sc in result.scores.items() if m not in superseded}
        )
        ctx.results[analysis.name] = result
    return res


def _store(
    ctx: AnalysisContext,
    res: OutcomeResult,
    name: str,
    result: AnalysisResult,
    specs: dict[str, Table],
) -> None:
    """An analysis's tables (with their outcome column), raw objects and outcome facts."""
    res.raw.update(result.raw)
    for key, value in result.facts.items():
        if key not in _FACTS:
            raise TypeError(f"The analysis {name!r} sets the unknown outcome fact {key!r}.")
        setattr(res, key, value)
    for key, table in result.tables.items():
        spec = specs.get(key)
        if spec is None:
            raise TypeError(f"The analysis {name!r} returned the undeclared table {key!r}.")
        stored = stored_table(table, ctx.outcome, adjusted=spec.adjusted)
        res.tables[key] = stored
        ctx.tables[key] = stored


__all__ = [  # also TABLES and METHODS, read from the registry (module __getattr__)
    "headline_levels",
    "log_sf",
    "method_signals",
    "BatteryResult",
    "BatterySettings",
    "BatteryWarning",
    "OutcomeResult",
    "run_battery",
]

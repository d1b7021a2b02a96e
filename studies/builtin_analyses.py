"""The battery's built-in analyses, each declared under ``attrimp.analyses`` exactly as a
plug-in would be (pyproject.toml and `studies.analysis.BUILTIN_ANALYSES`).

Each class adapts one analysis module (``studies.glm``, ``studies.hypothesis``, ...) to the one
contract of `studies.analysis`: its result objects (a ``GLMResult``, tables carrying warnings in
``attrs``, ``BootstrapScores``, ...) become an `AnalysisResult`, so the battery never needs to
know which shape an analysis returns. ``order`` is the run order (10 ... 100); ``position`` keeps
report.json's long-standing order of tables, methods and sections (see `studies.analysis`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from studies import scores as sc
from studies.analysis import (
    Analysis,
    AnalysisContext,
    AnalysisResult,
    Method,
    Section,
    Table,
    methods,
    stored_table,
)
from studies.frame import AnalysisFrame
from studies.verdicts import finite_or_none


def _warnings_of(obj: Any) -> list[str]:
    """The warnings a module's result object carries (an attribute, or a table's ``attrs``)."""
    if isinstance(obj, pd.DataFrame):
        return [str(w) for w in obj.attrs.get("warnings", None) or []]
    return [str(w) for w in getattr(obj, "warnings", None) or []]


def _paired(frame: AnalysisFrame) -> bool:
    return frame.paired_by is not None and frame.condition is not None


def _crossed(frame: AnalysisFrame) -> bool:
    return frame.condition is not None and frame.paired_by is None


class GLMAnalysis(Analysis):
    """1. The GLM: its fit summary, level coefficients and joint group tests."""

    name = "glm"
    order = 10.0
    tables = (
        Table("glm_fits"),
        Table("glm_coefficients", adjusted=True),
        Table("glm_group_tests", adjusted=True),
    )
    sections = (
        Section(
            "glm_fits",
            "GLM fit",
            "The generalised linear model of the outcome on all attribute groups.",
        ),
        Section(
            "glm_group_tests",
            "GLM: joint Wald test per attribute group",
            "Does the group matter at all, adjusting for the other groups? Robust (cluster-robust "
            "when a cluster column is given) covariance; Holm and Benjamini-Hochberg adjusted.",
        ),
        Section(
            "glm_coefficients",
            "GLM coefficients",
            "Each level against its group's reference level (the most frequent one), link scale.",
        ),
    )
    methods = (
        Method("glm", "-log10 p of the GLM's joint (cluster-)robust Wald test of the group"),
    )

    def run(self, ctx: AnalysisContext) -> AnalysisResult | None:
        from studies import glm as glm_mod

        s, outcome = ctx.settings, ctx.outcome
        glm = ctx.step(
            "GLM", lambda: glm_mod.fit_glm(ctx.frame, outcome, alpha=s.alpha, family=s.glm_family)
        )
        if glm is None:
            return None
        fits = pd.DataFrame(
            [
                {
                    "outcome": outcome,
                    "family": str(glm.family),
                    "n_obs": glm.n_obs,
                    "n_clusters": glm.n_clusters,
                    "covariance": str(glm.covariance),
                    "n_cells": getattr(glm, "n_cells", None),
                    "dispersion": getattr(glm, "dispersion", None),
                    "converged": getattr(glm, "converged", None),
                }
            ]
        )
        tables = {
            "glm_fits": fits,
            "glm_coefficients": stored_table(
                glm.coefficients, outcome, adjusted=True, family=str(glm.family)
            ),
            "glm_group_tests": stored_table(glm.group_tests, outcome, adjusted=True),
        }
        score = sc._glm_score(glm.group_tests)
        return AnalysisResult(
            tables=tables,
            warnings=_warnings_of(glm),
            scores={} if score is None else {"glm": score},
            signals=sc._glm_signals(tables, s.alpha),
            raw={"glm": glm},
            facts={"family": str(glm.family)},
        )


class RankTestsAnalysis(Analysis):
    """2. The per-group rank tests (Mann-Whitney U / Kruskal-Wallis)."""

    name = "tests"
    order = 20.0
    tables = (Table("tests", adjusted=True),)
    sections = (
        Section(
            "tests",
            "Rank tests per attribute group",
            "Mann-Whitney U (two levels) or Kruskal-Wallis (more), with effect sizes; clustered "
            "rows are handled as described in docs/studies.md.",
        ),
    )
    methods = (
        Method("tests", "-log10 p of the group's rank test (Mann-Whitney U / Kruskal-Wallis)"),
    )

    def run(self, ctx: AnalysisContext) -> AnalysisResult | None:
        from studies import hypothesis

        s = ctx.settings
        tests = ctx.step(
            "rank tests",
            lambda: hypothesis.group_tests(ctx.frame, ctx.outcome, alpha=s.alpha, seed=s.seed),
        )
        if tests is None:
            return None
        stored = stored_table(tests, ctx.outcome, adjusted=True)
        score = sc._tests_score(tests)
        return AnalysisResult(
            tables={"tests": stored},
            warnings=_warnings_of(tests),
            scores={} if score is None else {"tests": score},
            signals=sc._test_signals({"tests": stored}, s.alpha),
        )


class PairedTestsAnalysis(Analysis):
    """2a. On a paired frame: the same units under different conditions."""

    name = "paired_tests"
    order = 25.0
    tables = (Table("paired_tests", adjusted=True),)
    sections = (
        Section(
            "paired_tests",
            "Paired tests between conditions",
            "The same units under different conditions: Wilcoxon signed-rank and paired t.",
        ),
    )

    def applies(self, frame: AnalysisFrame) -> bool:
        return _paired(frame)

    def run(self, ctx: AnalysisContext) -> AnalysisResult | None:
        from studies import hypothesis

        alpha = ctx.settings.alpha
        pt = ctx.step(
            "paired tests", lambda: hypothesis.paired_tests(ctx.frame, ctx.outcome, alpha=alpha)
        )
        if pt is None:
            return None
        return AnalysisResult(tables={"paired_tests": pt}, warnings=_warnings_of(pt))


class RandomizationAnalysis(Analysis):
    """2b. On a crossed frame (a condition column, no paired_by): the randomisation test of each
    group across the conditions (``studies.randomization``), the primary group test there; its
    score replaces the rank tests', which count every query as independent of its
    configuration."""

    name = "randomization"
    order = 30.0
    tables = (Table("randomization"),)
    methods = (
        Method(
            "randomization",
            "-log10 p of the group's randomisation test across configurations "
            "(crossed designs; it replaces the rank tests there)",
            position=45.0,
        ),
    )
    supersedes = ("tests",)

    def applies(self, frame: AnalysisFrame) -> bool:
        return _crossed(frame)

    def run(self, ctx: AnalysisContext) -> AnalysisResult | None:
        from studies import randomization

        s = ctx.settings
        rand = ctx.step(
            "randomisation tests",
            lambda: randomization.randomization_tests(
                ctx.frame, ctx.outcome, n_perm=s.n_perm, seed=s.seed, alpha=s.alpha
            ),
        )
        if rand is None:
            return None
        score = sc._randomization_score(rand)
        return AnalysisResult(
            tables={"randomization": rand},
            warnings=_warnings_of(rand),
            scores={} if score is None else {"randomization": score},
            signals=sc._randomization_signals({"randomization": rand}, s.alpha),
        )


class TreeModelsAnalysis(Analysis):
    """3. Grouped permutation importance per tree model, 4. SHAP of the same fitted models.

    One analysis, not two, because SHAP explains the forests the importance step fitted (no
    forest is fitted twice) and the steps interleave per model (rf importance, rf SHAP, xgb
    ...); each step keeps its own warning / timing source (``importance_rf``, ``shap_rf``)."""

    name = "tree_models"
    order = 40.0
    tables = (
        Table("permutation_importance"),
        Table("model_quality"),
        Table("shap"),
        Table("shap_levels"),
    )
    sections = (
        Section(
            "permutation_importance",
            "Grouped permutation importance",
            "Drop in held-out model quality when a whole attribute group is permuted.",
        ),
        Section(
            "model_quality",
            "Held-out quality of the tree models",
            "A model that explains nothing has no importance worth reading.",
        ),
        Section(
            "shap",
            "SHAP importance per attribute group",
            "Mean over rows of |sum of the group's columns' SHAP values|.",
        ),
        Section(
            "shap_levels",
            "SHAP: signed effect per level",
            "Mean SHAP value of the rows at each level.",
        ),
    )
    methods = (
        Method("rf", "random-forest grouped permutation importance"),
        Method("xgb", "XGBoost grouped permutation importance"),
        Method(
            "shap",
            "mean |SHAP| of the group, as a share of the model's total, averaged over models",
        ),
    )

    def steps(self, frame: AnalysisFrame, settings: Any) -> int:
        return 2 * len(settings.models)

    def run(self, ctx: AnalysisContext) -> AnalysisResult | None:
        out = AnalysisResult()
        imp_tables, quality, shap_tables, shap_levels = [], [], [], []
        for model in ctx.settings.models:
            imp = self._importance(ctx, model, out)
            if imp is not None:
                imp_tables.append(imp.table)
                quality.append({"outcome": ctx.outcome, "model": model, **dict(imp.quality or {})})
            sh = self._shap(ctx, model, None if imp is None else imp.fitted_models, out)
            if sh is not None:
                shap_tables.append(sh.group_table)
                shap_levels.append(sh.level_table)
        if imp_tables:
            out.tables["permutation_importance"] = stored_table(
                pd.concat(imp_tables, ignore_index=True), ctx.outcome
            )
        if quality:
            out.tables["model_quality"] = pd.DataFrame(quality)
        if shap_tables:
            out.tables["shap"] = stored_table(
                pd.concat(shap_tables, ignore_index=True), ctx.outcome
            )
        if shap_levels:
            out.tables["shap_levels"] = stored_table(
                pd.concat(shap_levels, ignore_index=True), ctx.outcome
            )
        for model in ctx.settings.models:
            score = sc._importance_score(out.tables.get("permutation_importance"), model)
            if score is not None:
                out.scores[model] = score
        shap_score = sc._shap_score(shap_tables)
        if shap_score is not None:
            out.scores["shap"] = shap_score
        out.signals = sc._importance_signals(out.tables, ctx.settings.models) + sc._shap_signals(
            out.tables
        )
        return out

    @staticmethod
    def _importance(ctx: AnalysisContext, model: str, out: AnalysisResult) -> Any:
        from studies import importance

        s, source = ctx.settings, f"importance_{model}"
        label = {"rf": "random forest", "xgb": "XGBoost"}[model]
        imp = ctx.step(
            f"{label} permutation importance",
            lambda: importance.grouped_permutation_importance(
                ctx.frame,
                ctx.outcome,
                model=model,
                n_repeats=s.n_repeats,
                cv=s.cv,
                seed=s.seed,
                n_jobs=s.n_jobs,
            ),
            source=source,
        )
        if imp is not None:
            for w in _warnings_of(imp):
                ctx.warn(w, source=source)
            out.raw[source] = imp
        return imp

    @staticmethod
    def _shap(ctx: AnalysisContext, model: str, fitted: Any, out: AnalysisResult) -> Any:
        from studies import shap_groups

        s, source = ctx.settings, f"shap_{model}"
        label = {"rf": "random forest", "xgb": "XGBoost"}[model]
        sh = ctx.step(
            f"{label} SHAP",
            lambda: shap_groups.shap_group_importance(
                ctx.frame,
                ctx.outcome,
                model=model,
                fitted=fitted,
                max_rows=s.shap_rows,
                seed=s.seed,
            ),
            source=source,
        )
        if sh is not None:
            for w in _warnings_of(sh):
                ctx.warn(w, source=source)
            out.raw[source] = sh
        return sh


def _raw(ctx: AnalysisContext, analysis: str, key: str) -> Any:
    """An earlier analysis's raw object or its own (unprefixed) table; None when it did not run."""
    result = ctx.results.get(analysis)
    if result is None:
        return None
    return result.raw.get(key, result.tables.get(key))


class PrevalenceAnalysis(Analysis):
    """5. Per-instance effect beside prevalence (the GLM's marginal effects where it ran)."""

    name = "prevalence"
    order = 50.0
    tables = (Table("prevalence", adjusted=True),)
    sections = (
        Section(
            "prevalence",
            "Effect vs. prevalence",
            "Per-instance effect beside population-level importance: rare but strong groups "
            "stand out.",
        ),
    )

    def run(self, ctx: AnalysisContext) -> AnalysisResult | None:
        from studies import prevalence

        glm = _raw(ctx, "glm", "glm")
        prev = ctx.step(
            "effect vs prevalence",
            lambda: prevalence.effect_vs_prevalence(
                ctx.frame,
                ctx.outcome,
                glm_coefficients=glm.coefficients if glm is not None else None,
                importance=ctx.tables.get("permutation_importance"),
            ),
        )
        return None if prev is None else AnalysisResult(tables={"prevalence": prev})


class VerdictsAnalysis(Analysis):
    """5b. One verdict per group (``studies.verdicts``): helps / hurts from the primary group
    test (the GLM's Wald test; the randomisation test on a crossed frame), negligible from TOST
    on the GLM's average marginal effects within ±margin, the MDE at 80 % power, and the groups
    the frame left out as not testable. Needs the GLM's level effects (skipped without)."""

    name = "verdicts"
    order = 60.0
    tables = (Table("verdicts", position=85.0),)

    def run(self, ctx: AnalysisContext) -> AnalysisResult | None:
        from studies import verdicts as v

        glm = _raw(ctx, "glm", "glm")
        if glm is None:
            return None
        rand = _raw(ctx, "randomization", "randomization")
        s = ctx.settings

        def compute() -> pd.DataFrame:
            y = ctx.frame.data[ctx.outcome]
            margin = s.margin if s.margin is not None else v.default_margin(y)
            primary = (
                v.tests_from_glm(glm.group_tests)
                if rand is None
                else v.tests_from_randomization(rand)
            )
            excluded = v.excluded_tests(ctx.frame.excluded_groups)
            tests = pd.concat([primary, excluded], ignore_index=True)
            levels = v.levels_from_glm(glm.coefficients)
            return v.group_verdicts(levels, tests, margin=margin, alpha=s.alpha)

        table = ctx.step("verdicts", compute)
        return None if table is None else AnalysisResult(tables={"verdicts": table})


class MethodScoresAnalysis(Analysis):
    """6. The scores the consensus ranks: every earlier analysis's scores, for the declared
    methods that scored something (in method order, on the frame's groups), stored as the long
    ``method_scores`` table with ranks, directions and evidence. Every score is unsigned. Takes
    no progress step; analyses ordered after it do not feed the consensus."""

    name = "method_scores"
    order = 70.0
    tables = (Table("method_scores"),)

    def steps(self, frame: AnalysisFrame, settings: Any) -> int:
        return 0

    def run(self, ctx: AnalysisContext) -> AnalysisResult | None:
        scores: dict[str, pd.Series] = {}
        for method in methods():
            score = ctx.candidate_scores.get(method)
            if score is not None and score.notna().any():
                scores[method] = score.reindex(ctx.frame.groups)
        ctx.scores = scores
        if not scores:
            return None
        signals = [record for r in ctx.results.values() for record in r.signals]
        return AnalysisResult(tables={"method_scores": sc.score_table(scores, signals)})


class StabilityAnalysis(Analysis):
    """7. The cheap scores on cluster-bootstrap replicates (skipped without scores or
    replicates)."""

    name = "stability"
    order = 80.0
    tables = (Table("stability", adjusted=True),)
    sections = (
        Section(
            "stability",
            "Stability under cluster resampling",
            "How each group's rank moves when clusters are resampled.",
        ),
    )

    def run(self, ctx: AnalysisContext) -> AnalysisResult | None:
        from studies import consensus as consensus_mod

        s = ctx.settings
        if not (ctx.scores and s.n_bootstrap > 0):
            return None
        boot = ctx.step(
            "stability (cluster bootstrap)",
            lambda: consensus_mod.stability_by_cluster_bootstrap(
                ctx.frame, ctx.outcome, n_boot=s.n_bootstrap, seed=s.seed
            ),
        )
        if boot is None:
            return None
        table = getattr(boot, "table", boot)
        tables = {"stability": table} if isinstance(table, pd.DataFrame) else {}
        return AnalysisResult(tables=tables, warnings=_warnings_of(boot), raw={"stability": boot})


class ConsensusAnalysis(Analysis):
    """8. The consensus ranking of the groups across methods (``studies.consensus``'s ranking
    rule: not-testable groups unranked, last), with each group's verdict and the methods'
    agreement."""

    name = "consensus"
    order = 90.0
    tables = (Table("method_agreement", position=75.0), Table("consensus"))
    sections = (
        Section(
            "method_agreement",
            "Agreement between methods",
            "How similarly the methods rank the attribute groups.",
            position=0.0,
        ),
    )

    def run(self, ctx: AnalysisContext) -> AnalysisResult | None:
        from studies import consensus as consensus_mod

        if not ctx.scores:
            ctx.warn("No method produced scores, so there is no consensus ranking.")
            return None
        boot = _raw(ctx, "stability", "stability")
        boot_scores = getattr(boot, "bootstrap_scores", None) if boot is not None else None
        verdicts = _raw(ctx, "verdicts", "verdicts")
        cons = ctx.step(
            "consensus",
            lambda: consensus_mod.rank_with_verdicts(
                ctx.scores, verdicts, bootstrap_scores=boot_scores
            ),
        )
        if cons is None:
            return None
        ranking = cons.ranking.sort_values("rank", kind="stable", na_position="last")
        return AnalysisResult(
            tables={
                "consensus": ranking.reset_index(drop=True),
                "method_agreement": cons.agreement,
            },
            warnings=_warnings_of(cons),
            raw={"consensus": cons},
            facts={
                "excluded_methods": dict(getattr(cons, "excluded", None) or {}),
                "kendall_w": finite_or_none(cons.kendall_w),
                "kendall_w_p": finite_or_none(cons.kendall_w_p),
            },
        )


__all__ = [
    "ConsensusAnalysis",
    "GLMAnalysis",
    "MethodScoresAnalysis",
    "PairedTestsAnalysis",
    "PrevalenceAnalysis",
    "RandomizationAnalysis",
    "RankTestsAnalysis",
    "StabilityAnalysis",
    "TreeModelsAnalysis",
    "VerdictsAnalysis",
]

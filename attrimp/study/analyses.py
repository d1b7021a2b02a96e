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

The switching table crosses queries with configurations, and a configuration switches a group
for every query at once: the configuration is a unit the design varied, so its frame names the
configuration as the condition and the random-subset configurations as randomised; the battery
then adds a randomisation test across configurations (table ``randomization``), the test the
answer trusts for that analysis.

Every group gets a verdict from the leave-one-out design (``verdicts``: helps / hurts /
negligible within ±``analysis.margin`` / inconclusive with its minimum detectable effect / not
testable with the reason), and ``shapley`` sets the conditional leave-one-out effect beside the
average (Shapley) effect over the sampled coalitions, saying where they disagree and why.

The study's consensus ranks the groups over the reliance analyses only, on unsigned evidence
(−log10 p of leave-one-out's clustered paired test and of the switching analysis's randomisation
test, the configuration battery's consensus score), so a group whose experts significantly
*hurt* ranks as high as one that helps; the direction is shown beside the rank. A group that is
not testable gets no rank and is listed after the ranked ones with its reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from attrimp.config import StudyConfig
from attrimp.io import atomic_write_frame
from attrimp.model.schema import AttributeSchema
from studies.design import build_analysis_frame
from studies.report import write_report


def _switching_designs() -> tuple[str, ...]:
    """The designs that switch expert groups on and off (their `Design.role`), read from the
    design registry so that a plug-in coalition design joins the switching analyses."""
    from attrimp.evaluate.designs import designs_with_role

    return designs_with_role("switching")


@dataclass
class StudyAnalyses:
    #: name -> the studies BatteryResult
    batteries: dict[str, Any] = field(default_factory=dict)
    paired: pd.DataFrame | None = None
    consensus: pd.DataFrame | None = None
    kendall_w: float | None = None
    warnings: list[str] = field(default_factory=list)
    #: one row per group: the leave-one-out verdict (`loo_verdicts`)
    verdicts: pd.DataFrame | None = None
    #: leave-one-out beside Shapley per group (`studies.shapley.conditional_vs_average`)
    shapley: pd.DataFrame | None = None
    #: per group: the switching battery's identity-clustered p and the randomisation p
    switching_tests: pd.DataFrame | None = None


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
    switching_designs = _switching_designs()
    switching = valid[valid["design"].isin(switching_designs)]
    if switching["config"].nunique() > 2:
        # 9,999 re-draws: with 999 the smallest p is 0.001 and most groups of the built-in
        # study tie there (0.012 after Holm over 12), so the ranking could not order them
        runner.run("switching", lambda: _switching_frame(switching, groups), n_perm=9_999)
    runner.result.paired = _paired(valid, groups, cfg, out, clock)
    runner.result.verdicts = loo_verdicts(
        valid, groups, alpha=cfg.analysis.alpha, margin=cfg.analysis.margin
    )
    if runner.result.verdicts is not None:
        atomic_write_frame(runner.result.verdicts, out / "verdicts.csv")
    if switching["config"].nunique() > 2:
        runner.result.shapley = _shapley(switching, groups, cfg, out, clock, runner.result)
    cfg_rows = configs[configs["design"].isin(switching_designs)]
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
    runner.result.switching_tests = switching_tests(runner.result, cfg.analysis.alpha)
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
    """Per query x configuration: AP on the group-on indicators ("off"/"on"), by identity and
    by configuration (crossed: a configuration switches a group for every query at once); the
    random-subset configurations are the ones whose switches the design drew at random, so a
    randomisation test may re-draw exactly those."""
    table = switching[["pid", "config", "ap"] + [f"on_{g}" for g in groups]].rename(
        columns={f"on_{g}": g for g in groups}
    )
    from attrimp.evaluate.designs import sampled_designs

    drawn = switching["design"].isin(sampled_designs())  # `Design.sampled`: drawn at random
    randomized = pd.unique(switching.loc[drawn, "config"])
    return build_analysis_frame(
        on_off(table, groups),
        outcomes=["ap"],
        cluster="pid",
        condition="config",
        randomized=list(randomized) if len(randomized) else None,
        source="study table 'switching'",
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
    from attrimp.evaluate.designs import off_conditions
    from studies.hypothesis import paired_tests

    group_of = {name: g for g, name in off_conditions(groups).items()}
    loo = valid[valid["config"].isin(["full", *group_of])]
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
        paired["attribute"] = paired["attribute"].map(group_of)
        paired = paired.reset_index(drop=True)
        atomic_write_frame(paired, out / "paired_tests.csv")
    return paired


def loo_verdicts(
    valid: pd.DataFrame, groups: list[str], *, alpha: float, margin: float
) -> pd.DataFrame | None:
    """One verdict per group from the leave-one-out design (None without a ``full`` row).

    Per query, ΔAP = AP with every expert on minus AP without the group's experts (paired by
    query; positive = the group helps); its mean is the group's ΔmAP, with an identity-cluster
    robust (CR1) standard error on G - 1 df, because the queries of one identity share its
    annotation and its experts. The two-sided t test's p is Holm-adjusted over the testable
    groups; `studies.verdicts.group_verdicts` turns it, the TOST within ±``margin`` and the
    minimum detectable effect into the verdict. A group is not testable when no leave-one-out
    configuration switched it, or when switching it off changed no query's AP at all."""
    from attrimp.evaluate.designs import off_conditions
    from studies.verdicts import clustered_mean, group_verdicts

    full = valid[valid["config"] == "full"].set_index("query")
    if full.empty:
        return None
    off = off_conditions(groups)  # group -> its leave-one-out condition's name
    tests, levels = [], []
    for g in groups:
        other = valid[valid["config"] == off.get(g)].set_index("query")
        both = full[["pid", "ap", *([g] if g in full else [])]].merge(
            other[["ap"]], left_index=True, right_index=True, suffixes=("", "_without")
        )
        d = (both["ap"] - both["ap_without"]).to_numpy(dtype=float)
        reason = _untestable_reason(both, g, d)
        row = {"attribute": g, "queries": len(d), "identities": both["pid"].nunique()}
        if reason is None:
            mean, se, df = clustered_mean(d, both["pid"].to_numpy())
            if np.isfinite(se) and se > 0:
                p = float(2 * stats.t.sf(abs(mean / se), df))
                row.update(estimate=mean, std_err=se, df=df, p_value=p, testable=True)
                levels.append({"attribute": g, "level": "without", **row})
            else:
                reason = "its paired differences do not vary between identities"
        if reason is not None:
            row.update(testable=False, reason=reason)
        tests.append(row)
    tests_df = pd.DataFrame(tests)
    tests_df["p_holm"] = _holm(tests_df.get("p_value", pd.Series(np.nan, index=tests_df.index)))
    level_df = pd.DataFrame(levels, columns=["attribute", "level", "estimate", "std_err", "df"])
    verdicts = group_verdicts(level_df, tests_df, margin=margin, alpha=alpha)
    extra = tests_df.reindex(
        columns=["attribute", "std_err", "df", "p_value", "testable", "queries", "identities"]
    )
    out = verdicts.merge(extra, on="attribute", how="left")
    out["testable"] = out["verdict"] != "not testable"
    return out


def _untestable_reason(both: pd.DataFrame, group: str, d: np.ndarray) -> str | None:
    """Why a group's leave-one-out cannot be tested (None when it can)."""
    if not len(d):
        return "no leave-one-out configuration switched it off on a valid query"
    if np.all(d == 0):
        values = pd.unique(both[group].dropna()) if group in both else []
        if len(values) == 1:
            return (
                f"every test query has {group} = {values[0]}, and switching its experts off "
                "changed no query's AP (every paired difference is exactly 0)"
            )
        return (
            "switching its experts off changed no query's AP (every paired difference is "
            "exactly 0): no test query activates them"
        )
    return None


def _holm(p: pd.Series) -> np.ndarray:
    """Holm-adjusted p over the finite entries (NaN stays NaN: an untestable group is not in
    the family)."""
    from statsmodels.stats.multitest import multipletests

    p = pd.to_numeric(p, errors="coerce").to_numpy(dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def _shapley(
    switching: pd.DataFrame,
    groups: list[str],
    cfg: StudyConfig,
    out: Path,
    clock,
    result: StudyAnalyses,
) -> pd.DataFrame | None:
    """Leave-one-out beside each group's Shapley value on mAP over the sampled coalitions
    (`studies.shapley.conditional_vs_average`, CI by resampling identities), written to
    ``out/shapley.csv``; a design it cannot use becomes a warning."""
    from studies.errors import StudyInputError
    from studies.shapley import conditional_vs_average

    table = switching[["pid", "config", "design", "ap"] + [f"on_{g}" for g in groups]]
    with _timed(clock, "analyses.shapley", rows=len(table)):
        try:
            shap = conditional_vs_average(
                table, groups, alpha=cfg.analysis.alpha, seed=cfg.analysis.seed
            )
        except StudyInputError as e:
            result.warnings.append(f"shapley: not analysed: {e}")
            return None
    shap = shap.reset_index(drop=True)
    atomic_write_frame(shap, out / "shapley.csv")
    return shap


def switching_tests(result: StudyAnalyses, alpha: float = 0.05) -> pd.DataFrame | None:
    """Per group, three tests of the switching table side by side: the GLM group test
    clustered by identity only (``p_switching_identity``: the test before the design's second
    unit was seen, which counts every query under every configuration as fresh evidence, kept
    for contrast), the battery's own group test (``p_switching_battery``: two-way clustered by
    identity and configuration on a crossed frame) and the randomisation test across
    configurations (``p_switching_randomization`` and its Holm p; the battery's
    ``randomization`` table), the one the answer trusts. None without a switching battery."""
    from studies.glm import fit_glm
    from studies.report import build_summary

    battery = result.batteries.get("switching")
    if battery is None or not battery.outcomes:
        return None
    out = battery.outcomes[0]
    first = out.outcome
    groups = [r["attribute"] for r in build_summary(battery) if r["outcome"] == first]
    table = pd.DataFrame({"attribute": groups})
    table["p_switching_battery"] = _by_attribute(table, out.table("glm_group_tests"), "p_holm")
    # how large an average effect the configurations design could detect (the battery's
    # verdicts: the two-way GLM's standard error), and how many configurations it drew
    table["mde_switching"] = _by_attribute(table, out.table("verdicts"), "mde")
    try:
        identity = fit_glm(battery.frame, first, alpha=alpha, cov_type="CR2").group_tests
        table["p_switching_identity"] = table["attribute"].map(
            identity.drop_duplicates("attribute").set_index("attribute")["p_holm"]
        )
    except Exception as e:  # noqa: BLE001 - a contrast column; its failure must not stop the study
        result.warnings.append(f"switching: no identity-clustered GLM for contrast: {e}")
        table["p_switching_identity"] = np.nan
    rand = battery.outcomes[0].table("randomization")
    if rand.empty or "attribute" not in rand:
        table["p_switching_randomization"] = np.nan
        table["p_switching_randomization_holm"] = np.nan
        return table
    table["n_randomized"] = _by_attribute(table, rand, "n_randomized")
    rand = rand.drop_duplicates("attribute").set_index("attribute")
    table["p_switching_randomization"] = table["attribute"].map(
        pd.to_numeric(rand["p_value"], errors="coerce")
    )
    table["p_switching_randomization_holm"] = table["attribute"].map(
        pd.to_numeric(rand["p_holm"], errors="coerce")
    )
    return table


def _by_attribute(table: pd.DataFrame, source: pd.DataFrame, column: str) -> pd.Series:
    """``source[column]`` per attribute of ``table`` (NaN where the source has none)."""
    if source.empty or column not in source.columns:
        return pd.Series(np.nan, index=table.index)
    values = source.drop_duplicates("attribute").set_index("attribute")[column]
    return table["attribute"].map(pd.to_numeric(values, errors="coerce"))


def _evidence(p: pd.Series) -> pd.Series:
    """−log10 p: unsigned evidence that a group matters (p floored at 1e-300)."""
    p = pd.to_numeric(p, errors="coerce")
    return -np.log10(p.clip(lower=1e-300))


def _reliance_scores(result: StudyAnalyses) -> dict[str, pd.Series]:
    """Each reliance analysis's unsigned score per group (higher = stronger evidence that
    switching the group changes re-identification, in either direction)."""
    scores: dict[str, pd.Series] = {}
    tests = result.switching_tests
    if tests is not None and tests["p_switching_randomization"].notna().any():
        # the test at the unit the design varied; the identity-clustered one overstates
        scores["switching"] = _evidence(
            tests.set_index("attribute")["p_switching_randomization"]
        ).dropna()
    elif "switching" in result.batteries:
        cons = result.batteries["switching"].outcomes[0].table("consensus")
        if not cons.empty:
            scores["switching"] = cons.set_index("attribute")["score"].astype(float)
    battery = result.batteries.get("configurations")
    if battery is not None:
        cons = battery.outcomes[0].table("consensus")
        if not cons.empty:
            scores["configurations"] = cons.set_index("attribute")["score"].astype(float)
    if result.verdicts is not None:
        scores["leave_one_out"] = _evidence(
            result.verdicts.set_index("attribute")["p_value"]
        ).dropna()
    return scores


def _study_consensus(result: StudyAnalyses, out: Path) -> None:
    """Rank the testable groups over the reliance analyses (switching, configurations,
    leave-one-out) on unsigned evidence into ``result.consensus`` / ``kendall_w`` and
    ``out/consensus.csv`` by the battery's one rule (`studies.consensus.rank_with_verdicts`:
    verdict tier first, the consensus within a tier); each row carries the leave-one-out
    verdict, direction, MDE and TOST p beside its rank, and the untestable groups follow,
    unranked, with their reason."""
    from studies.consensus import rank_with_verdicts

    scores = {k: s for k, s in _reliance_scores(result).items() if len(s)}
    if not scores:
        return
    verdicts = result.verdicts
    cons = rank_with_verdicts(scores, verdicts)
    table = cons.ranking
    if verdicts is not None and "testable" in verdicts.columns:
        table["testable"] = table["attribute"].map(verdicts.set_index("attribute")["testable"])
    result.consensus = table
    result.kendall_w = None if np.isnan(cons.kendall_w) else float(cons.kendall_w)
    result.warnings += list(cons.warnings)
    atomic_write_frame(result.consensus, out / "consensus.csv")

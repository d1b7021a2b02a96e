"""The whole statistical battery on one AnalysisFrame: every analysis, every outcome, one result.

Each analysis lives in its own module and returns tidy DataFrames; this module only orders them,
hands the fitted tree models from permutation importance to SHAP (so no forest is fitted twice),
turns each method's per-group numbers into the scores the consensus ranks, and collects every
warning — including a step that failed on degenerate data, which is reported instead of taking
the whole report down (``strict=True`` re-raises, for tests).
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

from studies.errors import StudyInputError
from studies.frame import AnalysisFrame

logger = logging.getLogger(__name__)

#: what a progress callback receives: (label of the step about to run, steps done, steps total)
ProgressCallback = Callable[[str, int, int], None]

#: the consensus methods, in report order, and what each one's score is
METHODS: dict[str, str] = {
    "glm": "-log10 p of the GLM's joint (cluster-)robust Wald test of the group",
    "tests": "-log10 p of the group's rank test (Mann-Whitney U / Kruskal-Wallis)",
    "rf": "random-forest grouped permutation importance",
    "xgb": "XGBoost grouped permutation importance",
    "shap": "mean |SHAP| of the group, as a share of the model's total, averaged over models",
    "randomization": "-log10 p of the group's randomisation test across configurations "
    "(crossed designs; it replaces the rank tests there)",
}

#: table names of one outcome's results, in report order (report.json ``analyses`` keys)
TABLES: tuple[str, ...] = (
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
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._rich = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
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


def _with_outcome(df: pd.DataFrame | None, outcome: str, **extra: Any) -> pd.DataFrame:
    """Prefix a tidy table with ``outcome`` (and any extra constant columns)."""
    if df is None:
        return pd.DataFrame()
    out = df.reset_index(drop=True).copy()
    for key, value in reversed(list({"outcome": outcome, **extra}.items())):
        if key in out.columns:
            out = out.drop(columns=key)
        out.insert(0, key, value)
    return out


def _ensure_adjusted(df: pd.DataFrame) -> pd.DataFrame:
    """Add Holm and Benjamini-Hochberg columns where a table has raw p-values but no adjusted
    ones (e.g. GLM level coefficients): the family is the table's non-missing p-values, which
    for one outcome's table is one analysis on one outcome."""
    if df.empty or "p_value" not in df.columns:
        return df
    if {"p_holm", "p_fdr_bh"} <= set(df.columns):
        return df
    from studies.corrections import add_adjusted

    return add_adjusted(df)


# --------------------------------------------------------------------------- scores


_LN10 = float(np.log(10.0))
#: -log10 of the smallest positive double: a p-value that underflowed to 0 scores this
_MAX_LOG10 = 323.3
#: below this p-value the reported number has lost digits (or underflowed to 0): the score is
#: recomputed from the test statistic in log space instead
_P_TINY = 1e-300


def log_sf(dist: Any, x: float) -> float:
    """ln P(X > x) of a frozen continuous scipy distribution, also where P underflows.

    scipy's ``f.logsf`` / ``chi2.logsf`` are ``log(sf)`` and return -inf once sf < 1e-308 (a
    strong group on a 1M-row table). Beyond that, ``ln sf(x) = ln pdf(x) + ln ∫_0^∞ pdf(x + s) /
    pdf(x) ds``: the log-density is exact far into the tail, and the integrand starts at 1 and
    decays over a length ``h`` (the inverse slope of the log-density at x), so quadrature in
    units of ``h`` is accurate."""
    from scipy.integrate import quad

    direct = float(dist.logsf(x))
    if np.isfinite(direct) and direct > -700.0:
        return direct
    lp0 = float(dist.logpdf(x))
    if not np.isfinite(lp0):
        return direct
    eps = 1e-6 * max(abs(x), 1.0)
    slope = (float(dist.logpdf(x + eps)) - lp0) / eps
    h = 1.0 / -slope if slope < 0 else max(abs(x), 1.0)

    def ratio(u: float) -> float:
        return float(np.exp(dist.logpdf(x + h * u) - lp0))

    integral, _ = quad(ratio, 0.0, np.inf, limit=200)
    return lp0 + float(np.log(h * integral)) if integral > 0 else direct


def _glm_score(group_tests: pd.DataFrame | None) -> pd.Series | None:
    """-log10 p of each group's Wald test. The reported p-value is used as it is; where it is
    below 1e-300 or underflowed to 0 (a strong group on a large table), the score is
    recomputed in log space from the test's F statistic and degrees of freedom (the same
    reference distribution as the p-value: F(df, df_denom), chi²(df) when df_denom is
    infinite), so very strong groups keep a finite score and their order instead of tying or
    dropping out of the consensus."""
    if group_tests is None or group_tests.empty:
        return None
    from scipy import stats

    out = {}
    for row in group_tests.to_dict("records"):
        p = _as_float(row.get("p_value"))
        if np.isfinite(p) and p >= _P_TINY:
            out[row["attribute"]] = float(-np.log10(p))
            continue
        q = _as_float(row.get("df"))
        nu = _as_float(row.get("df_denom"))
        f = _as_float(row.get("f_statistic"))
        if not np.isfinite(f):
            f = _as_float(row.get("statistic")) / q if q > 0 else np.nan
        if not (np.isfinite(f) and q > 0):
            out[row["attribute"]] = np.nan if not np.isfinite(p) else _MAX_LOG10
            continue
        if np.isfinite(nu) and nu > 0:
            logp = log_sf(stats.f(q, nu), f)
        else:
            logp = log_sf(stats.chi2(q), f * q)
        score = -logp / _LN10
        out[row["attribute"]] = float(score) if np.isfinite(score) else _MAX_LOG10
    return pd.Series(out, name="glm", dtype=float)


def _as_float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _tests_score(tests: pd.DataFrame | None) -> pd.Series | None:
    """-log10 p of each group's rank test. A within-cluster test with the chi² reference whose
    p-value is below 1e-300 (or underflowed to 0: a strong switch on a Market-size table) is
    scored in log space from its statistic Q on ``n_levels - 1`` df, as the GLM is, so strong
    groups keep their order instead of tying at the maximum; any other p of 0 scores the
    maximum."""
    if tests is None or tests.empty or "p_value" not in tests.columns:
        return None
    from scipy import stats

    df = tests.drop_duplicates("attribute").set_index("attribute")
    p = pd.to_numeric(df["p_value"], errors="coerce")
    with np.errstate(divide="ignore"):
        score = -np.log10(p)
    asymptotic = df.get("test", pd.Series("", index=df.index)).astype(str)
    tiny = asymptotic.str.endswith("+stratified_asymptotic") & (p < _P_TINY)
    for name in df.index[tiny]:
        q, k = _as_float(df.at[name, "statistic"]), _as_float(df.at[name, "n_levels"])
        if np.isfinite(q) and k >= 2:
            score[name] = -log_sf(stats.chi2(k - 1), q) / _LN10
    return score.clip(upper=_MAX_LOG10).rename("tests")


def _importance_score(table: pd.DataFrame | None, model: str) -> pd.Series | None:
    if table is None or table.empty:
        return None
    df = table[table["model"] == model] if "model" in table.columns else table
    return pd.to_numeric(df.set_index("attribute")["importance"], errors="coerce").rename(model)


def _shap_score(group_tables: list[pd.DataFrame]) -> pd.Series | None:
    shares = []
    for t in group_tables:
        if t is None or t.empty:
            continue
        s = pd.to_numeric(t.set_index("attribute")["mean_abs_shap"], errors="coerce")
        total = s.sum()
        if np.isfinite(total) and total > 0:
            shares.append(s / total)
    if not shares:
        return None
    return pd.concat(shares, axis=1).mean(axis=1).rename("shap")


# --------------------------------------------------------------------------- direction, evidence


def headline_levels(coefficients: pd.DataFrame | None) -> pd.DataFrame:
    """Per attribute group, the GLM level that carries its story: the tested, non-separated
    level with the smallest p-value (ties: the largest |coefficient|). Its sign is the group's direction
    (positive = the level has a higher outcome than the group's reference level)."""
    cols = ["attribute", "level", "coef", "p_value"]
    if coefficients is None or coefficients.empty or not set(cols) <= set(coefficients.columns):
        return pd.DataFrame(columns=cols)
    df = coefficients[coefficients["attribute"].notna()].copy()
    if "term_kind" in df.columns:
        df = df[df["term_kind"].fillna("level") != "intercept"]
    df["_p"] = pd.to_numeric(df["p_value"], errors="coerce")
    df["_c"] = pd.to_numeric(df["coef"], errors="coerce").abs()
    df = df[df["_p"].notna() & df["_c"].notna()]
    if "separation" in df.columns:  # a separated level's estimate is meaningless
        df = df[~df["separation"].fillna(False).astype(bool)]
    df = df.sort_values(["attribute", "_p", "_c"], ascending=[True, True, False], kind="stable")
    return df.drop_duplicates("attribute").drop(columns=["_p", "_c"]).reset_index(drop=True)


def _sign(x: Any) -> float:
    v = _as_float(x)
    return float(np.sign(v)) if np.isfinite(v) and v != 0 else np.nan


def _glm_signals(res: OutcomeResult, alpha: float) -> list[dict[str, Any]]:
    """GLM: the sign of the group's headline level; found when its Holm p < alpha."""
    head = headline_levels(res.table("glm_coefficients")).set_index("attribute")
    out = []
    for row in res.table("glm_group_tests").to_dict("records"):
        a = row["attribute"]
        p = _as_float(row.get("p_holm"))
        out.append(
            {
                "attribute": a,
                "method": "glm",
                "direction": _sign(head["coef"].get(a)) if a in head.index else np.nan,
                "significant": (p < alpha) if np.isfinite(p) else np.nan,
            }
        )
    return out


def _test_signals(res: OutcomeResult, alpha: float) -> list[dict[str, Any]]:
    """Rank tests: the sign of a rank-biserial effect (none for Kruskal-Wallis); Holm p < alpha."""
    tests = res.table("tests")
    if tests.empty:
        return []
    out = []
    for row in tests.drop_duplicates("attribute").to_dict("records"):
        p = _as_float(row.get("p_holm"))
        signed = row.get("effect_name") == "rank_biserial"
        out.append(
            {
                "attribute": row["attribute"],
                "method": "tests",
                "direction": _sign(row.get("effect_size")) if signed else np.nan,
                "significant": (p < alpha) if np.isfinite(p) else np.nan,
            }
        )
    return out


def _randomization_signals(res: OutcomeResult, alpha: float) -> list[dict[str, Any]]:
    """Randomisation tests (crossed frames): no sign; found when Holm p < alpha."""
    out = []
    for row in res.table("randomization").to_dict("records"):
        p = _as_float(row.get("p_holm"))
        out.append(
            {
                "attribute": row["attribute"],
                "method": "randomization",
                "direction": np.nan,
                "significant": (p < alpha) if np.isfinite(p) else np.nan,
            }
        )
    return out


def _importance_signals(res: OutcomeResult, models: tuple[str, ...]) -> list[dict[str, Any]]:
    """Permutation importance: no sign; found when the CI's lower end is above 0."""
    out = []
    for row in res.table("permutation_importance").to_dict("records"):
        if row.get("model") not in models:
            continue
        lo = _as_float(row.get("ci_low"))
        out.append(
            {
                "attribute": row["attribute"],
                "method": row["model"],
                "direction": np.nan,
                "significant": (lo > 0) if np.isfinite(lo) else np.nan,
            }
        )
    return out


def _shap_signals(res: OutcomeResult) -> list[dict[str, Any]]:
    """SHAP: the sign of a two-level group's level effect (none for more levels); no test."""
    lv = res.table("shap_levels")
    if lv.empty or "is_reference" not in lv.columns:
        return []
    lv = lv[~lv["is_reference"].astype(bool)]
    out = []
    for a, part in lv.groupby("attribute", sort=False):
        per_level = part.groupby("level", sort=False)["mean_shap"].mean()
        direction = _sign(per_level.iloc[0]) if len(per_level) == 1 else np.nan
        out.append(
            {"attribute": a, "method": "shap", "direction": direction, "significant": np.nan}
        )
    return out


def method_signals(
    res: OutcomeResult, alpha: float, *, models: tuple[str, ...] = ("rf", "xgb")
) -> pd.DataFrame:
    """For every (attribute, method): the direction the method gives the group (+1: its
    headline level raises the outcome against the reference, -1: lowers it, NaN: the method has
    no sign — permutation importance, Kruskal-Wallis, a multi-level SHAP group) and whether the
    method finds the group at all (GLM and rank tests: Holm p < alpha; permutation importance:
    the CI's lower end above 0; SHAP has no test: NaN). The report's heat map and summary read
    these, so every page states direction and evidence the same way."""
    out = (
        _glm_signals(res, alpha)
        + _test_signals(res, alpha)
        + _randomization_signals(res, alpha)
        + _importance_signals(res, models)
        + _shap_signals(res)
    )
    return pd.DataFrame(out, columns=["attribute", "method", "direction", "significant"])


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
    paired = frame.paired_by is not None and frame.condition is not None
    crossed = frame.condition is not None and frame.paired_by is None
    per_outcome = 2 + int(paired) + int(crossed) + 2 * len(settings.models) + 4
    t_start = time.perf_counter()
    results: list[OutcomeResult] = []
    with _Runner(per_outcome * len(frame.outcomes), progress, strict) as run:
        for w in frame.warnings:
            run.warn("input", w, None)
        if paired and frame.cluster is None:
            run.warn(
                "input",
                f"Each {frame.paired_by!r} appears under several conditions, but no --cluster "
                "was given: the per-attribute analyses treat those rows as independent. Pass "
                f"--cluster {frame.paired_by} (or the identity column) to account for it.",
                None,
            )
        for outcome in frame.outcomes:
            results.append(_run_outcome(frame, outcome, settings, paired, run))
    timings = {"total": time.perf_counter() - t_start}
    return BatteryResult(
        frame=frame, settings=settings, outcomes=results, warnings=run.warnings, timings=timings
    )


@dataclass
class _OutcomeRun:
    """One outcome's pass through the battery: what every step needs, and the result it fills."""

    frame: AnalysisFrame
    outcome: str
    s: BatterySettings
    run: _Runner
    res: OutcomeResult

    def step(self, label: str, source: str, fn: Callable[[], Any]) -> Any:
        return self.run.step(label, source, self.outcome, fn, self.res)

    def absorb(self, source: str, obj: Any) -> None:
        """Pass on the warnings of a result object."""
        for w in getattr(obj, "warnings", None) or []:
            self.run.warn(source, w, self.outcome)

    def absorb_attrs(self, source: str, table: pd.DataFrame) -> None:
        """Pass on the warnings a table carries in ``attrs``."""
        for w in table.attrs.get("warnings", None) or []:
            self.run.warn(source, w, self.outcome)

    def put(self, name: str, table: pd.DataFrame | None, *, adjusted: bool = False) -> None:
        """Store a tidy table under ``name`` with its outcome column (and Holm / BH columns)."""
        out = _with_outcome(table, self.outcome)
        self.res.tables[name] = _ensure_adjusted(out) if adjusted else out


def _run_outcome(
    frame: AnalysisFrame,
    outcome: str,
    s: BatterySettings,
    paired: bool,
    run: _Runner,
) -> OutcomeResult:
    """Every step on one outcome, in order: GLM, rank tests (and the randomisation test on a
    crossed frame), tree models and SHAP, effect vs prevalence, the verdicts, then the method
    scores, their stability and the consensus."""
    o = _OutcomeRun(frame, outcome, s, run, OutcomeResult(outcome=outcome))
    glm = _glm_step(o)
    tests = _test_steps(o, paired)
    rand = _randomization_step(o)
    shap_tables = _tree_steps(o)
    _prevalence_step(o, glm)
    verdicts = _verdict_step(o, glm, rand)
    scores = _method_scores(o, glm, tests, shap_tables, rand)
    boot = _stability_step(o, scores)
    _consensus_step(o, scores, boot, verdicts)
    return o.res


def _glm_step(o: _OutcomeRun) -> Any:
    """1. The GLM: its fit summary, level coefficients and joint group tests."""
    from studies import glm as glm_mod

    s = o.s
    glm = o.step(
        "GLM",
        "glm",
        lambda: glm_mod.fit_glm(o.frame, o.outcome, alpha=s.alpha, family=s.glm_family),
    )
    if glm is None:
        return None
    o.absorb("glm", glm)
    o.res.raw["glm"] = glm
    o.res.family = str(glm.family)
    o.res.tables["glm_fits"] = pd.DataFrame(
        [
            {
                "outcome": o.outcome,
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
    o.res.tables["glm_coefficients"] = _ensure_adjusted(
        _with_outcome(glm.coefficients, o.outcome, family=str(glm.family))
    )
    o.put("glm_group_tests", glm.group_tests, adjusted=True)
    return glm


def _test_steps(o: _OutcomeRun, paired: bool) -> pd.DataFrame | None:
    """2. The per-group rank tests, and the paired tests when the design has pairs."""
    from studies import hypothesis

    s = o.s
    tests = o.step(
        "rank tests",
        "tests",
        lambda: hypothesis.group_tests(o.frame, o.outcome, alpha=s.alpha, seed=s.seed),
    )
    if tests is not None:
        o.absorb_attrs("tests", tests)
        o.put("tests", tests, adjusted=True)
    if paired:
        pt = o.step(
            "paired tests",
            "paired_tests",
            lambda: hypothesis.paired_tests(o.frame, o.outcome, alpha=s.alpha),
        )
        if pt is not None:
            o.absorb_attrs("paired_tests", pt)
            o.put("paired_tests", pt, adjusted=True)
    return tests


def _randomization_step(o: _OutcomeRun) -> pd.DataFrame | None:
    """2b. On a crossed frame (a condition column, no paired_by): the randomisation test of each
    group across the conditions (``studies.randomization``), the primary group test there. Not
    a step on other frames."""
    if o.frame.condition is None or o.frame.paired_by is not None:
        return None
    from studies import randomization

    s = o.s
    rand = o.step(
        "randomisation tests",
        "randomization",
        lambda: randomization.randomization_tests(
            o.frame, o.outcome, n_perm=s.n_perm, seed=s.seed, alpha=s.alpha
        ),
    )
    if rand is not None:
        o.absorb_attrs("randomization", rand)
        o.put("randomization", rand)
    return rand


def _verdict_step(o: _OutcomeRun, glm: Any, rand: pd.DataFrame | None) -> pd.DataFrame | None:
    """5b. One verdict per group (``studies.verdicts``): helps / hurts from the primary group
    test (the GLM's Wald test; the randomisation test on a crossed frame), negligible from TOST
    on the GLM's average marginal effects within ±margin, the MDE at 80 % power, and the groups
    the frame left out as not testable. Needs the GLM's level effects."""
    from studies import verdicts as v

    if glm is None:
        o.run.skip()
        return None
    s = o.s

    def compute() -> pd.DataFrame:
        margin = s.margin if s.margin is not None else v.default_margin(o.frame.data[o.outcome])
        primary = (
            v.tests_from_glm(glm.group_tests)
            if rand is None
            else (v.tests_from_randomization(rand))
        )
        tests = pd.concat([primary, v.excluded_tests(o.frame.excluded_groups)], ignore_index=True)
        levels = v.levels_from_glm(glm.coefficients)
        return v.group_verdicts(levels, tests, margin=margin, alpha=s.alpha)

    table = o.step("verdicts", "verdicts", compute)
    if table is not None:
        o.put("verdicts", table)
    return table


def _randomization_score(rand: pd.DataFrame | None) -> pd.Series | None:
    """-log10 p of each group's randomisation test (a Monte-Carlo p is never below
    1 / (n_perm + 1), so no log-space recomputation is needed)."""
    if rand is None or rand.empty:
        return None
    p = pd.to_numeric(rand.set_index("attribute")["p_value"], errors="coerce")
    return (-np.log10(p)).rename("randomization")


def _tree_steps(o: _OutcomeRun) -> list[pd.DataFrame]:
    """3. Permutation importance per tree model, 4. SHAP of the same fitted models (no forest
    is fitted twice). Returns the SHAP group tables, which the SHAP score reads."""
    from studies import importance, shap_groups

    s = o.s
    imp_tables, quality, shap_tables, shap_levels = [], [], [], []
    for model in s.models:
        label = {"rf": "random forest", "xgb": "XGBoost"}[model]
        imp = o.step(
            f"{label} permutation importance",
            f"importance_{model}",
            lambda model=model: importance.grouped_permutation_importance(
                o.frame,
                o.outcome,
                model=model,
                n_repeats=s.n_repeats,
                cv=s.cv,
                seed=s.seed,
                n_jobs=s.n_jobs,
            ),
        )
        fitted = None
        if imp is not None:
            o.absorb(f"importance_{model}", imp)
            o.res.raw[f"importance_{model}"] = imp
            imp_tables.append(imp.table)
            quality.append({"outcome": o.outcome, "model": model, **dict(imp.quality or {})})
            fitted = imp.fitted_models
        sh = o.step(
            f"{label} SHAP",
            f"shap_{model}",
            lambda model=model, fitted=fitted: shap_groups.shap_group_importance(
                o.frame, o.outcome, model=model, fitted=fitted, max_rows=s.shap_rows, seed=s.seed
            ),
        )
        if sh is not None:
            o.absorb(f"shap_{model}", sh)
            o.res.raw[f"shap_{model}"] = sh
            shap_tables.append(sh.group_table)
            shap_levels.append(sh.level_table)
    if imp_tables:
        o.put("permutation_importance", pd.concat(imp_tables, ignore_index=True))
    if quality:
        o.res.tables["model_quality"] = pd.DataFrame(quality)
    if shap_tables:
        o.put("shap", pd.concat(shap_tables, ignore_index=True))
    if shap_levels:
        o.put("shap_levels", pd.concat(shap_levels, ignore_index=True))
    return shap_tables


def _prevalence_step(o: _OutcomeRun, glm: Any) -> None:
    """5. Per-instance effect beside prevalence (the GLM's marginal effects where it ran)."""
    from studies import prevalence

    prev = o.step(
        "effect vs prevalence",
        "prevalence",
        lambda: prevalence.effect_vs_prevalence(
            o.frame,
            o.outcome,
            glm_coefficients=glm.coefficients if glm is not None else None,
            importance=o.res.tables.get("permutation_importance"),
        ),
    )
    if prev is not None:
        o.put("prevalence", prev, adjusted=True)


def _method_scores(
    o: _OutcomeRun,
    glm: Any,
    tests: pd.DataFrame | None,
    shap_tables: list[pd.DataFrame],
    rand: pd.DataFrame | None = None,
) -> dict[str, pd.Series]:
    """6. Each method's score per group (the methods that scored something, in ``METHODS``
    order), stored as the long ``method_scores`` table with ranks, directions and evidence.
    Every score is unsigned (evidence that the group changes the outcome, either way). On a
    crossed frame the randomisation test's score replaces the rank tests', which count every
    query as independent of its configuration."""
    candidates = {
        "glm": _glm_score(glm.group_tests if glm is not None else None),
        "tests": _tests_score(tests) if rand is None else None,
        "randomization": _randomization_score(rand),
        "shap": _shap_score(shap_tables),
    }
    for model in o.s.models:
        candidates[model] = _importance_score(o.res.tables.get("permutation_importance"), model)
    scores: dict[str, pd.Series] = {}
    for method in METHODS:
        sc = candidates.get(method)
        if sc is not None and sc.notna().any():
            scores[method] = sc.reindex(o.frame.groups)
    if not scores:
        return scores
    long = [
        pd.DataFrame(
            {
                "attribute": sc.index,
                "method": method,
                "score": sc.to_numpy(),
                "rank": sc.rank(ascending=False, method="average").to_numpy(),
            }
        )
        for method, sc in scores.items()
    ]
    table = pd.concat(long, ignore_index=True)
    signals = method_signals(o.res, o.s.alpha, models=o.s.models)
    o.put("method_scores", table.merge(signals, on=["attribute", "method"], how="left"))
    return scores


def _stability_step(o: _OutcomeRun, scores: dict[str, pd.Series]) -> Any:
    """7. The cheap scores on cluster-bootstrap replicates (skipped without scores or
    replicates)."""
    from studies import consensus as consensus_mod

    if not (scores and o.s.n_bootstrap > 0):
        o.run.skip()
        return None
    boot = o.step(
        "stability (cluster bootstrap)",
        "stability",
        lambda: consensus_mod.stability_by_cluster_bootstrap(
            o.frame, o.outcome, n_boot=o.s.n_bootstrap, seed=o.s.seed
        ),
    )
    if boot is not None:
        o.absorb("stability", boot)
        o.res.raw["stability"] = boot
        table = getattr(boot, "table", boot)
        if isinstance(table, pd.DataFrame):
            o.put("stability", table, adjusted=True)
    return boot


def _consensus_step(
    o: _OutcomeRun, scores: dict[str, pd.Series], boot: Any, verdicts: pd.DataFrame | None = None
) -> None:
    """8. The consensus ranking of the groups across methods (``studies.consensus``'s ranking
    rule: not-testable groups unranked, last), with each group's verdict and the methods'
    agreement."""
    from studies import consensus as consensus_mod

    if not scores:
        o.run.warn(
            "consensus", "No method produced scores, so there is no consensus ranking.", o.outcome
        )
        o.run.skip()
        return
    boot_scores = getattr(boot, "bootstrap_scores", None) if boot is not None else None
    cons = o.step(
        "consensus",
        "consensus",
        lambda: consensus_mod.rank_with_verdicts(scores, verdicts, bootstrap_scores=boot_scores),
    )
    if cons is None:
        return
    o.absorb("consensus", cons)
    res = o.res
    res.raw["consensus"] = cons
    ranking = cons.ranking.sort_values("rank", kind="stable", na_position="last")
    ranking = ranking.reset_index(drop=True)
    o.put("consensus", ranking)
    o.put("method_agreement", cons.agreement)
    res.excluded_methods = dict(getattr(cons, "excluded", None) or {})
    res.kendall_w = _float_or_none(cons.kendall_w)
    res.kendall_w_p = _float_or_none(cons.kendall_w_p)


def _float_or_none(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


__all__ = [
    "METHODS",
    "TABLES",
    "BatteryResult",
    "BatterySettings",
    "BatteryWarning",
    "OutcomeResult",
    "run_battery",
]

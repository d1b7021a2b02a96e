"""The battery in three lines of Python: ``studies.analyze(table, outcome=...)`` -> `StudyReport`.

This is the same battery `attrimp study analyze` runs — that command is
``studies.analyze(...).save(out)`` plus a printed summary — so a notebook and the command line
cannot drift apart. The call is quiet: nothing is printed, steps are logged through
``logging.getLogger("studies.api")``, and a progress bar appears only with ``progress=True``.

    >>> import studies
    >>> report = studies.analyze("results.csv", outcome="ap", cluster="pid")   # doctest: +SKIP
    >>> report.consensus.head()                                                 # doctest: +SKIP
    >>> report.save("runs/analysis")                                            # doctest: +SKIP

Every analysis is a tidy DataFrame attribute of the report (``report.glm``, ``report.tests``,
``report.importance``, ``report.shap``, ...; their report.json names work too), every warning
from every step is one list of sentences (``report.warnings``), and ``report.to_dict()`` is the
content of report.json.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from studies.battery import BatteryResult
from studies.errors import StudyInputError

if TYPE_CHECKING:
    from studies.design import GroupSpec

log = logging.getLogger(__name__)

#: settings of ``quick=True`` (the CLI's --quick): a first look in seconds
QUICK: dict[str, int] = {"n_repeats": 2, "cv": 3, "shap_rows": 5000, "n_bootstrap": 20}

#: names a user guesses for a table -> its report.json name (`BatteryResult.table_order`)
ALIASES: dict[str, str] = {
    "glm": "glm_coefficients",
    "glm_tests": "glm_group_tests",
    "importance": "permutation_importance",
    "agreement": "method_agreement",
    "scores": "method_scores",
}

#: what a table is called in ``input.path`` of report.json when it was passed as a DataFrame
DATAFRAME_SOURCE = "<DataFrame>"


@dataclass(eq=False)
class StudyReport:
    """What ``studies.analyze`` found: every table, every warning, the report.json content.

    Tables are combined across outcomes (each carries an ``outcome`` column). The ones of
    report.json are attributes under their report.json names (``glm_coefficients``,
    ``permutation_importance``, ...) and under the short names of :data:`ALIASES`.
    """

    result: BatteryResult
    #: the ``input`` block of report.json beyond what the frame knows (path, format, ...)
    input_info: dict[str, Any] = field(default_factory=dict)
    #: whether :meth:`save` draws the PNG figures (the CLI's --no-figures sets it off)
    figures: bool = True

    # ------------------------------------------------------------------ tables
    @property
    def consensus(self) -> pd.DataFrame:
        """The consensus ranking: ``outcome, attribute, score, rank, ...``, most important first."""
        return self.table("consensus")

    @property
    def summary(self) -> pd.DataFrame:
        """One row per attribute and outcome: does it matter, which way, how much (report.json's
        ``summary``)."""
        from studies.report import SUMMARY_COLUMNS, build_summary

        return pd.DataFrame(build_summary(self.result), columns=list(SUMMARY_COLUMNS))

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """Every table by its report.json name (also the CSV names the report writes)."""
        return {name: self.table(name) for name in self.result.table_order}

    def table(self, name: str) -> pd.DataFrame:
        """One table by its report.json name or its short name (``glm``, ``importance``, ...)."""
        key = ALIASES.get(name, name)
        tables = self.result.table_order
        if key not in tables:
            known = sorted({*tables, *ALIASES})
            raise KeyError(f"The report has no table {name!r}; it has {known}.")
        return self.result.combined(key)

    def __getattr__(self, name: str) -> pd.DataFrame:
        # only called for names a dataclass field or property did not answer
        if name.startswith("_") or name == "result":
            raise AttributeError(name)
        if name in ALIASES or name in self.result.table_order:
            return self.table(name)
        raise AttributeError(f"StudyReport has no attribute or table {name!r}.")

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self.result.table_order, *ALIASES})

    # ------------------------------------------------------------------ the rest
    @property
    def outcomes(self) -> list[str]:
        return [o.outcome for o in self.result.outcomes]

    @property
    def warnings(self) -> list[str]:
        """Every warning of every step (input checks included), one sentence each, tagged with
        the step and outcome it came from."""
        return [_warning_text(w.source, w.outcome, w.message) for w in self.result.warnings]

    @property
    def warnings_table(self) -> pd.DataFrame:
        """The same warnings as a table (``source, outcome, message``; tables/warnings.csv)."""
        rows = [w.as_dict() for w in self.result.warnings]
        return pd.DataFrame(rows, columns=["source", "outcome", "message"])

    def to_dict(self) -> dict[str, Any]:
        """The content of report.json (JSON-safe: NaN is None; docs/report-schema.md)."""
        from studies.report import build_report

        return build_report(self.result, input_info=self.input_info)

    def save(self, out_dir: str | Path, *, figures: bool | None = None):
        """Write report.json, report.md, report.html, tables/*.csv and figures/*.png into
        ``out_dir`` — exactly what `attrimp study analyze` writes; returns the paths
        (`studies.report.ReportFiles`)."""
        from studies.report import write_report

        draw = self.figures if figures is None else figures
        files = write_report(self.result, out_dir, input_info=self.input_info, figures=draw)
        log.info("report written to %s", files.out_dir)
        return files

    def __repr__(self) -> str:
        lines = [f"StudyReport({self._shape()})"]
        for outcome, ranking in self._top():
            lines.append(f"  {outcome}: " + ", ".join(f"{r}. {a}" for r, a in ranking))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        parts = [f"<p><b>StudyReport</b> ({html.escape(self._shape())})</p>"]
        cons = self.consensus
        if not cons.empty:
            cols = [c for c in ("outcome", "rank", "attribute", "score") if c in cons.columns]
            parts.append(cons[cols].to_html(index=False, float_format=lambda x: f"{x:.3g}"))
        return "\n".join(parts)

    def _shape(self) -> str:
        frame = self.result.frame
        n = len(self.result.warnings)
        return (
            f"{frame.rows_used} rows, {len(frame.groups)} attribute groups, "
            f"outcome{'s' if len(frame.outcomes) != 1 else ''} {', '.join(frame.outcomes)}; "
            f"{n} warning{'s' if n != 1 else ''}"
        )

    def _top(self, k: int = 5) -> list[tuple[str, list[tuple[str, str]]]]:
        """The first ``k`` of each outcome's consensus ranking, as (rank, attribute) text."""
        found = []
        for o in self.result.outcomes:
            cons = o.table("consensus")
            if cons.empty:
                found.append((o.outcome, [("-", "no consensus ranking")]))
                continue
            head = cons.head(k)
            found.append(
                (o.outcome, [(f"{r:g}", str(a)) for r, a in zip(head["rank"], head["attribute"])])
            )
        return found


def _warning_text(source: str, outcome: str | None, message: str) -> str:
    where = f"{source}, {outcome}" if outcome else source
    return f"[{where}] {message}"


# --------------------------------------------------------------------------- analyze


def analyze(
    table: pd.DataFrame | str | Path,
    *,
    outcome: str | Sequence[str],
    cluster: str | None = None,
    schema: GroupSpec | str | Path | None = None,
    exclude: Iterable[str] = (),
    paired_by: str | None = None,
    condition: str | None = None,
    randomized: Iterable[Any] | None = None,
    margin: float | None = None,
    alpha: float = 0.05,
    seed: int = 0,
    family: str = "auto",
    models: Sequence[str] = ("rf", "xgb"),
    n_repeats: int | None = None,
    cv: int | None = None,
    shap_rows: int | None = None,
    n_bootstrap: int | None = None,
    quick: bool = False,
    n_jobs: int = 1,
    figures: bool = True,
    progress: bool | Callable[[str, int, int], None] = False,
) -> StudyReport:
    """Run the whole statistical battery on a result table; same ``seed``, same report.

    Args:
        table: a DataFrame, or a .csv/.tsv/.parquet/.jsonl file (.gz for text formats).
        outcome: the outcome column(s), e.g. ``"ap"`` or ``["ap", "rank1"]``. cluster: rows
            sharing this column are not independent (ReID: ``"pid"``). schema: a TOML file, a
            built-in schema name (``"market1501"``) or a `studies.design.GroupSpec`; None =
            one group per column. exclude: neither outcome nor attribute (e.g. ``"query"``).
        paired_by, condition: a paired design names both; ``condition`` alone is a crossed
            design (every query under every configuration), tested across conditions;
            randomized: the condition values its design drew at random (None: all).
        margin: the ``negligible`` verdict's margin on the outcome's scale (None: 0.01 on
            [0, 1], else 0.1 SD). alpha: family-wise / FDR level. family: the GLM family.
        models, n_repeats, cv, shap_rows, n_bootstrap: tree models and battery sizes (None =
            the default, or the ``quick`` value: a first look). figures: whether
            :meth:`StudyReport.save` draws figures. progress: a rich progress bar (True) or a
            ``callback(step, done, total)``; off by default.

    Raises:
        StudyInputError: one sentence naming the file, column, value or option at fault.
    """
    from studies.battery import run_battery

    _check_options(paired_by, condition, alpha, family, margin)
    settings = _battery_sizes(
        quick, n_repeats=n_repeats, cv=cv, shap_rows=shap_rows, n_bootstrap=n_bootstrap
    )
    frame, input_info = _frame(
        table, outcome, cluster, schema, exclude, paired_by, condition, randomized
    )
    log.info("battery on %s: %d rows, %d groups", frame.source, frame.rows_used, len(frame.groups))
    result = run_battery(
        frame,
        alpha=alpha,
        seed=seed,
        models=tuple(dict.fromkeys(models)),
        n_jobs=n_jobs,
        progress=progress,
        glm_family=family,
        margin=margin,
        **settings,
    )
    report = StudyReport(result, input_info=input_info, figures=figures)
    log.info("battery done in %.1f s", result.timings.get("total", 0.0))
    return report


def _check_options(
    paired_by: str | None,
    condition: str | None,
    alpha: float,
    family: str,
    margin: float | None = None,
) -> None:
    """The options that need no table: a paired design names its condition (a condition alone
    is a crossed design), alpha in (0, 1), a positive margin, a known GLM family (checked
    before a large table is read)."""
    from studies.glm import FAMILIES

    if paired_by is not None and condition is None:
        raise StudyInputError(
            "paired_by needs condition as well: a paired design names both "
            "(condition alone is a crossed design)."
        )
    if margin is not None and not (isinstance(margin, (int, float)) and 0 < margin < float("inf")):
        raise StudyInputError(
            f"The margin must be a positive number on the outcome's scale, not {margin}."
        )
    if not 0.0 < alpha < 1.0:
        raise StudyInputError(f"alpha must lie strictly between 0 and 1, not {alpha}.")
    if family not in ("auto", *FAMILIES):
        raise StudyInputError(
            f"The GLM family {family!r} is unknown; use auto or one of {FAMILIES}."
        )


def _battery_sizes(quick: bool, **given: int | None) -> dict[str, int]:
    """The battery's size settings: the ``quick`` preset, then every one given explicitly."""
    for name, value in given.items():
        if value is not None and value < (0 if name == "n_bootstrap" else 1):
            raise StudyInputError(f"The option for {name} cannot be {value}.")
    settings = dict(QUICK) if quick else {}
    settings.update({k: v for k, v in given.items() if v is not None})
    return settings


def _frame(table, outcome, cluster, schema, exclude, paired_by, condition, randomized=None):
    """Read the table (a path) and build the analysis frame; also the report's ``input`` info."""
    from studies.design import build_analysis_frame, load_group_spec
    from studies.io import read_table, table_format

    if isinstance(table, pd.DataFrame):
        df, source, fmt = table, DATAFRAME_SOURCE, None
    elif isinstance(table, (str, Path)):
        df, source, fmt = read_table(table), str(table), table_format(table)
    else:
        raise StudyInputError(
            f"The table must be a pandas DataFrame or a file path, not a {type(table).__name__}."
        )
    spec = load_group_spec(schema) if isinstance(schema, (str, Path)) else schema
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    frame = build_analysis_frame(
        df,
        outcomes=outcome,
        cluster=cluster,
        exclude=exclude,
        spec=spec,
        paired_by=paired_by,
        condition=condition,
        source=source,
        randomized=(
            randomized if randomized is None or isinstance(randomized, str) else list(randomized)
        ),
    )
    info = {
        "path": source,
        "format": fmt,
        "excluded": exclude,
        "schema": _schema_label(schema),
    }
    return frame, info


def _schema_label(schema: GroupSpec | str | Path | None) -> str | None:
    if schema is None:
        return None
    if isinstance(schema, (str, Path)):
        return str(schema)
    return getattr(schema, "source", None) or type(schema).__name__


__all__ = ["ALIASES", "QUICK", "StudyReport", "analyze"]

"""The battery report of `attrimp study analyze`: report.json (the versioned record), report.md,
report.html, CSVs, figures.

report.json is the source of truth and is built first; the Markdown and HTML pages are rendered
from that same dictionary (the page of `studies.report_md`, rendered by `studies.page`, the
renderer the study report of `attrimp study run` uses too), so the three can never disagree.
Every file is written atomically through `attrimp.io` (torch-free). It is deterministic — no timestamps,
no timings, keys in a fixed order, NaN written as ``null`` — so the same seed on the same table
gives byte-identical files. The layout is documented in docs/report-schema.md; change
:data:`SCHEMA_VERSION` with it (see the version policy there).
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attrimp.io import atomic_write_bytes, atomic_write_frame, atomic_write_text
from studies.analysis import methods, table_names
from studies.battery import BatteryResult
from studies.page import Link
from studies.report_html import render_html
from studies.report_md import (
    HIGHER_IS_BETTER,
    LOWER_IS_BETTER,
    figure_tag,
    outcome_sense,
    render_markdown,
)

#: major.minor: a new optional key bumps minor; a renamed/removed key or changed meaning, major
SCHEMA_VERSION = "1.2"


def analysis_tables(result: BatteryResult | None = None) -> tuple[str, ...]:
    """The tables that go under ``analyses`` in report.json, in report order: those of
    ``result``'s analyses, or without one the registry's (`studies.analysis.table_names`; the
    consensus ranking is top-level)."""
    names = table_names() if result is None else result.table_order
    return tuple(t for t in names if t != "consensus")


def __getattr__(name: str) -> Any:
    """``ANALYSES``: :func:`analysis_tables`, read when asked, so a plug-in analysis registered
    after this module was imported is listed."""
    if name == "ANALYSES":
        return analysis_tables()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_LIBRARIES = ("numpy", "pandas", "scipy", "statsmodels", "scikit-learn", "xgboost", "shap")


@dataclass
class ReportFiles:
    """Where :func:`write_report` put everything."""

    out_dir: Path
    json: Path
    markdown: Path
    html: Path
    tables: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)


# --------------------------------------------------------------------------- JSON values


def clean_value(value: Any) -> Any:
    """A JSON-safe Python value: NaN/inf/NA -> None, numpy scalars -> Python, containers recursed."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return {str(k): clean_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, np.ndarray, pd.Index, pd.Series)):
        return [clean_value(v) for v in list(value)]
    if isinstance(value, pd.DataFrame):  # one record per row
        cols = [str(c) for c in value.columns]
        return [
            {c: clean_value(v) for c, v in zip(cols, row)}
            for row in value.itertuples(index=False, name=None)
        ]
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def records(df: pd.DataFrame | None) -> list[dict[str, Any]]:
    """A tidy table as JSON-safe records (column order kept)."""
    if df is None or df.empty:
        return []
    cols = [str(c) for c in df.columns]
    out = []
    for row in df.itertuples(index=False, name=None):
        out.append({c: clean_value(v) for c, v in zip(cols, row)})
    return out


def _versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for name in ("attrimp", *_LIBRARIES):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


# --------------------------------------------------------------------------- the answer


#: the columns of one ``summary`` record (docs/report-schema.md)
SUMMARY_COLUMNS: tuple[str, ...] = (
    "outcome",
    "attribute",
    "rank",
    "score",
    "matters",
    "p_holm",
    "p_source",
    "level",
    "reference",
    "direction",
    "effect",
    "effect_ci_low",
    "effect_ci_high",
    "effect_name",
    "methods_finding",
    "methods_testing",
    "verdict",
    "mde",
    "p_tost",
)


def build_summary(result: BatteryResult) -> list[dict[str, Any]]:
    """One record per attribute group per outcome, in consensus order: the group's verdict
    (helps / hurts / negligible / inconclusive / not testable) and its minimum detectable effect,
    does it matter (the Holm-adjusted primary test that gave the verdict: the GLM group test, the
    randomisation test on a crossed table, the rank test where neither ran), which way (the
    headline level against the reference), how much (its average marginal effect on the
    outcome's scale, with CI), and how many of the methods that test find it (a method left out
    of the consensus because its scores rank nothing is left out of that count too)."""
    from studies.battery import headline_levels

    rows: list[dict[str, Any]] = []
    for o in result.outcomes:
        cons = o.table("consensus")
        order = list(cons["attribute"]) if not cons.empty else list(result.frame.groups)
        head = headline_levels(o.table("glm_coefficients")).set_index("attribute")
        primary = _primary_p(o)
        verdicts = o.table("verdicts")
        verdicts = verdicts.set_index("attribute") if not verdicts.empty else verdicts
        for a in order:
            rec: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
            rec.update(outcome=o.outcome, attribute=a)
            if not cons.empty:
                c = cons.set_index("attribute").loc[a]
                rec.update(rank=c.get("rank"), score=c.get("score"))
            levels = result.frame.levels(a) if a in result.frame.groups else []
            rec["reference"] = levels[0] if levels else None
            p, src = primary.get(a, (np.nan, None))
            if np.isfinite(p):
                rec.update(p_holm=float(p), p_source=src, matters=bool(p < result.settings.alpha))
            if a in verdicts.index:
                v = verdicts.loc[a]
                rec.update(verdict=v.get("verdict"), mde=_num(v.get("mde")))
                rec["p_tost"] = _num(v.get("p_tost"))
            if a in head.index:
                rec.update(_headline_effect(head.loc[a]))
            rec.update(_methods_finding(o, a))
            rows.append(rec)
    return rows


def _primary_p(o) -> dict[str, tuple[float, str]]:
    """attribute -> (Holm p, source) of the test that gives the verdict: the randomisation test
    on a crossed table, else the GLM group test, else the rank test."""
    out: dict[str, tuple[float, str]] = {}
    for source, table in (
        ("tests", "tests"),
        ("glm", "glm_group_tests"),
        ("randomization", "randomization"),
    ):
        for a, p in _column(o.table(table), "p_holm").items():
            if np.isfinite(p):
                out[a] = (p, source)
    return out


def _headline_effect(h: Mapping[str, Any]) -> dict[str, Any]:
    """The headline level's average marginal effect (its coefficient where there is no AME)."""
    use_ame = np.isfinite(_num(h.get("ame")))
    eff = _num(h.get("ame")) if use_ame else _num(h.get("coef"))
    return {
        "level": h.get("level"),
        "effect": eff,
        "effect_ci_low": _num(h.get("ame_ci_low" if use_ame else "ci_low")),
        "effect_ci_high": _num(h.get("ame_ci_high" if use_ame else "ci_high")),
        "effect_name": "average_marginal_effect" if use_ame else "coefficient",
        "direction": "raises" if eff > 0 else "lowers" if eff < 0 else None,
    }


def _methods_finding(o, attribute: str) -> dict[str, int]:
    """How many of the methods that test the group find it (consensus-excluded ones left out)."""
    scores = o.table("method_scores")
    if scores.empty or "significant" not in scores.columns:
        return {}
    keep = (scores["attribute"] == attribute) & ~scores["method"].isin(o.excluded_methods)
    tested = scores[keep]["significant"].dropna()
    return {
        "methods_finding": int(sum(bool(v) for v in tested)),
        "methods_testing": int(len(tested)),
    }


def _column(df: pd.DataFrame, col: str) -> dict[str, float]:
    if df.empty or col not in df.columns:
        return {}
    d = df.drop_duplicates("attribute")
    return {a: _num(v) for a, v in zip(d["attribute"], d[col])}


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


# --------------------------------------------------------------------------- report.json


def build_report(result: BatteryResult, *, input_info: Mapping[str, Any] | None = None) -> dict:
    """The report.json dictionary (see docs/report-schema.md)."""
    frame = result.frame
    info = dict(input_info or {})
    n_clusters = None
    if frame.cluster is not None:
        n_clusters = int(frame.data[frame.cluster].nunique())
    input_block = {
        "path": info.pop("path", frame.source),
        "format": info.pop("format", None),
        "rows_read": int(frame.rows_read),
        "rows_used": int(frame.rows_used),
        "rows_dropped": {str(k): int(v) for k, v in frame.rows_dropped.items()},
        "outcomes": list(frame.outcomes),
        "cluster": frame.cluster,
        "n_clusters": n_clusters,
        "paired_by": frame.paired_by,
        "condition": frame.condition,
        "excluded": list(info.pop("excluded", [])),
        "schema": info.pop("schema", None),
    }
    input_block.update(info)
    levels = {}
    for g in frame.groups:
        counts = frame.data[g].value_counts(sort=False)
        levels[g] = {
            "reference": frame.levels(g)[0] if frame.levels(g) else None,
            "levels": frame.levels(g),
            "counts": {str(k): int(v) for k, v in counts.items()},
        }
    outcomes = [
        {
            "outcome": o.outcome,
            "family": o.family,
            "methods": [
                m
                for m in result.method_order
                if m in set(o.table("method_scores").get("method", []))
            ],
            "excluded_methods": dict(o.excluded_methods),
            "kendall_w": o.kendall_w,
            "kendall_w_p": o.kendall_w_p,
        }
        for o in result.outcomes
    ]
    report = {
        "schema_version": SCHEMA_VERSION,
        "generator": {
            "name": "attrimp.studies",
            "python": platform.python_version(),
            "versions": _versions(),
        },
        "settings": result.settings.as_dict(),
        "input": input_block,
        "attributes": {g: list(frame.group_columns.get(g, [g])) for g in frame.groups},
        "attribute_levels": levels,
        "excluded_attributes": {str(k): str(v) for k, v in frame.excluded_groups.items()},
        "outcomes": outcomes,
        "summary": build_summary(result),
        "analyses": {name: records(result.combined(name)) for name in analysis_tables(result)},
        "consensus": records(result.combined("consensus")),
        "warnings": [w.as_dict() for w in result.warnings],
    }
    return clean_value(report)


def dumps(report: Mapping[str, Any]) -> str:
    """Canonical JSON text: strict (NaN and inf become null), indented, newline-terminated."""
    return json.dumps(clean_value(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# --------------------------------------------------------------------------- figures


def make_figures(result: BatteryResult) -> dict[str, bytes]:
    """Every figure's bytes (`studies.plots.figure_bytes`: SVG where small, else PNG at 2x),
    keyed ``"<outcome>_<figure>"``."""
    from studies import plots

    figs: dict[str, bytes] = {}
    summary = pd.DataFrame(build_summary(result), columns=list(SUMMARY_COLUMNS))
    for o in result.outcomes:
        tag = figure_tag(o.outcome)
        family = o.family or ""
        xlabel = {
            "logit": "log-odds ratio vs reference (95% CI)",
            "fractional_logit": "log-odds ratio vs reference (95% CI)",
            "poisson": "log rate ratio vs reference (95% CI)",
            "negative_binomial": "log rate ratio vs reference (95% CI)",
        }.get(family, "")
        candidates = {
            "glm_forest": lambda o=o, xlabel=xlabel: plots.glm_forest(
                o.table("glm_coefficients"),
                xlabel=xlabel,
                title=f"GLM ({o.family}) coefficients for {o.outcome}",
            ),
            "importance": lambda o=o: plots.importance_bars(
                o.table("permutation_importance"),
                title=f"Grouped permutation importance for {o.outcome}",
            ),
            "shap": lambda o=o: plots.shap_summary(
                o.table("shap"),
                o.table("shap_levels"),
                title=f"SHAP by attribute group ({o.outcome})",
            ),
            "consensus": lambda o=o: plots.consensus_heatmap(
                *_method_matrices(
                    o.table("method_scores"), o.table("consensus"), summary, o.excluded_methods
                ),
                effects=plots.method_effects(o.table("method_scores"), o.table("shap_levels")),
                title=f"Each method's rank of each attribute group ({o.outcome})",
                legend=f"consensus row: colour = direction of the GLM's headline level, * = Holm "
                f"p < {result.settings.alpha:g} in the GLM group test",
            ),
            "prevalence": lambda o=o: plots.prevalence_scatter(
                o.table("prevalence"), title=f"Per-instance effect vs prevalence ({o.outcome})"
            ),
        }
        for name, make in candidates.items():
            fig = make()
            if fig is not None:
                figs[f"{tag}_{name}"] = plots.figure_bytes(fig)
    return figs


def _method_matrices(
    method_scores: pd.DataFrame,
    consensus: pd.DataFrame,
    summary: pd.DataFrame,
    excluded: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Methods x groups matrices of rank, direction (+1/-1/NaN) and found (1/0/NaN), with the
    consensus as the last row (its direction and "found" from the summary), groups in
    consensus order; a method left out of the consensus is labelled so."""
    if method_scores.empty:
        return pd.DataFrame(), pd.DataFrame(), pd.DataFrame()
    ms = method_scores.copy()
    for col in ("direction", "significant"):
        ms[col] = pd.to_numeric(ms[col], errors="coerce") if col in ms else np.nan
        ms[col] = ms[col].astype(float)
    order = [m for m in methods() if m in set(ms["method"])]
    mats = [
        ms.pivot_table(
            index="method", columns="attribute", values=v, sort=False, dropna=False
        ).reindex(order)
        for v in ("rank", "direction", "significant")
    ]
    if not consensus.empty:
        cols = [a for a in consensus["attribute"] if a in mats[0].columns]
        cols += [c for c in mats[0].columns if c not in cols]
        mats = [m.reindex(columns=cols) for m in mats]
        mats[0].loc["consensus"] = consensus.set_index("attribute")["rank"].reindex(cols)
        s = summary[summary["outcome"] == consensus["outcome"].iloc[0]].set_index("attribute")
        eff = pd.to_numeric(s["effect"], errors="coerce").reindex(cols)
        mats[1].loc["consensus"] = np.sign(eff).replace(0.0, np.nan)
        mats[2].loc["consensus"] = (
            s["matters"]
            .reindex(cols)
            .map(lambda v: np.nan if v is None or v != v else float(bool(v)))
        )
    labels = {m: f"{m} (left out)" for m in excluded or {}}
    return tuple(m.rename(index=labels) for m in mats)  # type: ignore[return-value]


# --------------------------------------------------------------------------- writing


def write_report(
    result: BatteryResult,
    out_dir: str | Path,
    *,
    input_info: Mapping[str, Any] | None = None,
    figures: bool = True,
    title: str | None = None,
    home: Link | None = None,
) -> ReportFiles:
    """Write report.json, report.md, report.html, tables/*.csv and figures/*.png into out_dir.

    ``title`` / ``home``: the pages' own title and link back to the report they belong to
    (default: `studies.report_md.page_identity`, which knows the study's batteries). Every file
    goes through `attrimp.io`'s atomic writers: a reader (or a killed run) sees a file's old
    contents or its new ones, never half of it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(result, input_info=input_info)
    files = ReportFiles(
        out_dir=out, json=out / "report.json", markdown=out / "report.md", html=out / "report.html"
    )
    atomic_write_text(files.json, dumps(report))
    files.tables = write_tables(result, report["warnings"], out / "tables")
    pngs = make_figures(result) if figures else {}
    files.figures = write_figures(pngs, out / "figures")
    rel = {name: f"figures/{p.name}" for name, p in files.figures.items()}  # .svg or .png
    page = {"title": title, "home": home}
    atomic_write_text(files.markdown, render_markdown(report, figures=rel, **page))
    atomic_write_text(files.html, render_html(report, figures=pngs, figure_links=rel, **page))
    return files


def read_figures(fig_dir: Path) -> dict[str, bytes]:
    """The figures a report folder holds (``figures/<name>.png`` or ``.svg``), keyed by name."""
    if not fig_dir.is_dir():
        return {}
    return {
        p.stem: p.read_bytes()
        for p in sorted(fig_dir.iterdir())
        if p.suffix in (".png", ".svg") and p.is_file()
    }


def write_single_file(out_dir: str | Path) -> Path:
    """``report-single.html`` beside a written report: the same page from its report.json with
    every figure embedded and no link to a file beside it, for sharing as one file (the battery
    report has no sub-reports to inline; `attrimp study run` has its own)."""
    out = Path(out_dir)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    path = out / "report-single.html"
    atomic_write_text(path, render_html(report, figures=read_figures(out / "figures")))
    return path


def write_tables(
    result: BatteryResult, warnings: list[Mapping[str, Any]], tables_dir: Path
) -> dict[str, Path]:
    """Every battery table as ``<name>.csv`` (infinite values blank, like NaN) and the warnings
    as ``warnings.csv``; returns name -> path."""
    paths: dict[str, Path] = {}
    for name in result.table_order:
        paths[name] = tables_dir / f"{name}.csv"
        atomic_write_frame(_frame_for_csv(result.combined(name)), paths[name])
    paths["warnings"] = tables_dir / "warnings.csv"
    frame = pd.DataFrame(warnings, columns=["source", "outcome", "message"])
    atomic_write_frame(frame, paths["warnings"])
    return paths


def write_figures(pngs: Mapping[str, bytes], fig_dir: Path) -> dict[str, Path]:
    """Each figure as ``<name>.svg`` or ``<name>.png`` by its bytes (no folder when there is
    none); returns name -> path."""
    paths: dict[str, Path] = {}
    for name, data in pngs.items():
        suffix = ".svg" if data[:256].lstrip().startswith((b"<?xml", b"<svg")) else ".png"
        paths[name] = fig_dir / f"{name}{suffix}"
        atomic_write_bytes(paths[name], data)
    return paths


def _frame_for_csv(df: pd.DataFrame) -> pd.DataFrame:
    """Infinite values become empty cells like NaN (JSON has no inf either)."""
    if df.empty:
        return df
    out = df.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].where(np.isfinite(out[c].to_numpy(float)))
    return out


__all__ = [  # also ANALYSES (module __getattr__)
    "HIGHER_IS_BETTER",
    "LOWER_IS_BETTER",
    "SCHEMA_VERSION",
    "ReportFiles",
    "analysis_tables",
    "build_report",
    "clean_value",
    "dumps",
    "make_figures",
    "outcome_sense",
    "records",
    "read_figures",
    "write_figures",
    "write_report",
    "write_single_file",
    "write_tables",
]

"""The study report: report.json (the versioned record), report.md, report.html, CSVs, figures.

report.json is the source of truth and is built first; the Markdown and HTML pages are rendered
from that same dictionary, so the three can never disagree. It is deterministic — no timestamps,
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

from studies.battery import METHODS, TABLES, BatteryResult
from studies.report_md import figure_tag

#: major.minor: a new optional key bumps minor; a renamed/removed key or changed meaning, major
SCHEMA_VERSION = "1.0"

#: tables that go under ``analyses`` in report.json (the consensus ranking is top-level)
ANALYSES: tuple[str, ...] = tuple(t for t in TABLES if t != "consensus")

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
    if isinstance(value, (list, tuple, np.ndarray, pd.Index, pd.Series)):
        return [clean_value(v) for v in list(value)]
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
            "methods": [m for m in METHODS if m in set(o.table("method_scores").get("method", []))],
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
        "analyses": {name: records(result.combined(name)) for name in ANALYSES},
        "consensus": records(result.combined("consensus")),
        "warnings": [w.as_dict() for w in result.warnings],
    }
    return clean_value(report)


def dumps(report: Mapping[str, Any]) -> str:
    """Canonical JSON text: strict (NaN and inf become null), indented, newline-terminated."""
    return json.dumps(clean_value(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# --------------------------------------------------------------------------- figures


def make_figures(result: BatteryResult) -> dict[str, bytes]:
    """PNG bytes of every figure, keyed ``"<outcome>_<figure>"``."""
    from studies import plots

    figs: dict[str, bytes] = {}
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
                _rank_matrix(o.table("method_scores"), o.table("consensus")),
                title=f"Rank of each attribute group by method ({o.outcome})",
            ),
        }
        for name, make in candidates.items():
            fig = make()
            if fig is not None:
                figs[f"{tag}_{name}"] = plots.png_bytes(fig)
    return figs


def _rank_matrix(method_scores: pd.DataFrame, consensus: pd.DataFrame) -> pd.DataFrame:
    if method_scores.empty:
        return pd.DataFrame()
    mat = method_scores.pivot_table(index="method", columns="attribute", values="rank", sort=False)
    order = [m for m in METHODS if m in mat.index]
    mat = mat.reindex(order)
    if not consensus.empty:
        mat.loc["consensus"] = consensus.set_index("attribute")["rank"].reindex(mat.columns)
        cols = [a for a in consensus["attribute"] if a in mat.columns]
        mat = mat[cols + [c for c in mat.columns if c not in cols]]
    return mat


# --------------------------------------------------------------------------- writing


def write_report(
    result: BatteryResult,
    out_dir: str | Path,
    *,
    input_info: Mapping[str, Any] | None = None,
    figures: bool = True,
) -> ReportFiles:
    """Write report.json, report.md, report.html, tables/*.csv and figures/*.png into out_dir."""
    from studies.report_html import render_html
    from studies.report_md import render_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(result, input_info=input_info)
    files = ReportFiles(
        out_dir=out, json=out / "report.json", markdown=out / "report.md", html=out / "report.html"
    )
    files.json.write_text(dumps(report), encoding="utf-8")

    tables_dir = out / "tables"
    tables_dir.mkdir(exist_ok=True)
    for name in TABLES:
        df = result.combined(name)
        path = tables_dir / f"{name}.csv"
        _frame_for_csv(df).to_csv(path, index=False, lineterminator="\n")
        files.tables[name] = path
    warn_path = tables_dir / "warnings.csv"
    pd.DataFrame(report["warnings"], columns=["source", "outcome", "message"]).to_csv(
        warn_path, index=False, lineterminator="\n"
    )
    files.tables["warnings"] = warn_path

    pngs = make_figures(result) if figures else {}
    if pngs:
        fig_dir = out / "figures"
        fig_dir.mkdir(exist_ok=True)
        for name, data in pngs.items():
            path = fig_dir / f"{name}.png"
            path.write_bytes(data)
            files.figures[name] = path
    rel = {name: f"figures/{p.name}" for name, p in files.figures.items()}
    files.markdown.write_text(render_markdown(report, figures=rel), encoding="utf-8")
    files.html.write_text(render_html(report, figures=pngs), encoding="utf-8")
    return files


def _frame_for_csv(df: pd.DataFrame) -> pd.DataFrame:
    """Infinite values become empty cells like NaN (JSON has no inf either)."""
    if df.empty:
        return df
    out = df.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].where(np.isfinite(out[c].to_numpy(float)))
    return out


__all__ = [
    "ANALYSES",
    "SCHEMA_VERSION",
    "ReportFiles",
    "build_report",
    "clean_value",
    "dumps",
    "make_figures",
    "records",
    "write_report",
]

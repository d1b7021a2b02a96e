"""The study report: report.json (versioned, see docs/study.md), report.md, a self-contained
report.html and its figures; the batteries' own full reports sit under ``analyses/<name>/``."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attrimp.config import DESIGNS, StudyConfig
from attrimp.study_analyses import StudyAnalyses
from studies.report import clean_value, records
from studies.report_md import md_escape as _md_escape

SCHEMA_VERSION = "attrimp.study-report/1"

DESIGN_ORDER = DESIGNS


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _figures(
    configs: pd.DataFrame, importance: pd.DataFrame, consensus: pd.DataFrame | None
) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, bytes] = {}
    main = configs[
        configs["design"].isin(("full", "backbone", "leave_one_out", "learned", "noisy"))
    ]
    if len(main):
        fig, ax = plt.subplots(figsize=(7, 0.28 * len(main) + 1.2))
        order = main.iloc[::-1]
        colors = ["#1f77b4" if d == "leave_one_out" else "#ff7f0e" for d in order["design"]]
        ax.barh(order["config"], order["mAP"], color=colors)
        full = configs.loc[configs["config"] == "full", "mAP"]
        if len(full):
            ax.axvline(float(full.iloc[0]), color="k", lw=0.8, ls="--", label="full oracle")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel("mAP")
        ax.set_title("Re-ID accuracy per configuration")
        figs["accuracy"] = _png(fig)
    if len(importance):
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(importance) + 1.2))
        order = importance.iloc[::-1]
        err = np.vstack(
            [order["delta_map"] - order["ci_low"], order["ci_high"] - order["delta_map"]]
        )
        ax.barh(order["attribute"], order["delta_map"], xerr=err, color="#2ca02c", capsize=3)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel(
            "mAP lost when the group's experts are switched off (95% identity-bootstrap CI)"
        )
        ax.set_title("Leave-one-group-out importance")
        figs["leave_one_out"] = _png(fig)
    if consensus is not None and len(consensus):
        rank_cols = [
            c
            for c in consensus.columns
            if c.startswith("rank_") and c not in ("rank_ci_low", "rank_ci_high", "rank_stability")
        ]
        if rank_cols:
            mat = consensus.set_index("attribute")[rank_cols].astype(float)
            fig, ax = plt.subplots(figsize=(1.4 * len(rank_cols) + 2.5, 0.35 * len(mat) + 1.2))
            im = ax.imshow(mat.to_numpy(), cmap="viridis_r", aspect="auto")
            ax.set_xticks(range(len(rank_cols)), [c.removeprefix("rank_") for c in rank_cols])
            ax.set_yticks(range(len(mat)), mat.index)
            for (i, j), v in np.ndenumerate(mat.to_numpy()):
                if np.isfinite(v):
                    dark = v > 0.4 * np.nanmax(mat.to_numpy())  # viridis_r: light at low ranks
                    ax.text(
                        j,
                        i,
                        f"{v:g}",
                        ha="center",
                        va="center",
                        color="w" if dark else "k",
                        fontsize=8,
                    )
            fig.colorbar(im, ax=ax, label="rank (1 = most important)")
            ax.set_title("Consensus: rank of each group per method")
            figs["consensus"] = _png(fig)
    return figs


def _md_table(df: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    if df is None or df.empty:
        return "_(empty)_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(_md_escape(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, (float, np.floating)):
                if not np.isfinite(v):
                    cells.append("")
                elif float(v).is_integer() and abs(v) < 1e6:
                    cells.append(str(int(v)))
                else:
                    cells.append(floatfmt.format(v))
            else:
                cells.append(_md_escape(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _html_table(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return "<p><em>(empty)</em></p>"
    return df.to_html(
        index=False,
        escape=True,
        float_format=lambda v: str(int(v)) if float(v).is_integer() else f"{v:.4f}",
        na_rep="",
        border=0,
    )


def write_study_report(
    out: Path,
    *,
    cfg: StudyConfig,
    data,
    configs: pd.DataFrame,
    importance: pd.DataFrame,
    analyses: StudyAnalyses,
    baseline: dict[str, Any] | None,
    importance_retrained: pd.DataFrame | None = None,
    learned: dict[str, Any] | None,
    planted: dict[str, Any] | None,
    model_info: dict[str, Any],
) -> dict[str, Any]:
    from attrimp.study import atomic_write_bytes, atomic_write_text

    full = configs.loc[configs["config"] == "full"]
    learned_row = configs.loc[configs["config"] == "learned"]
    backbone_row = configs.loc[configs["config"] == "backbone"]
    headline = {
        "full_mAP": float(full["mAP"].iloc[0]) if len(full) else None,
        "backbone_mAP": float(backbone_row["mAP"].iloc[0]) if len(backbone_row) else None,
        "learned_mAP": float(learned_row["mAP"].iloc[0]) if len(learned_row) else None,
        "attribute_only_mAP": baseline.get("mAP") if baseline else None,
    }
    if headline["full_mAP"] is not None and headline["learned_mAP"] is not None:
        headline["learned_vs_oracle_gap"] = headline["full_mAP"] - headline["learned_mAP"]
    signatures = baseline.get("signatures") if baseline else None
    unique_share = None
    if signatures is not None and len(signatures):
        total = signatures["identities"].sum()
        unique_share = float(
            signatures.loc[signatures["identities_sharing_signature"] == 1, "identities"].sum()
            / total
        )
    consensus = analyses.consensus
    report = {
        "schema_version": SCHEMA_VERSION,
        "study": {
            "name": cfg.name,
            "description": cfg.description,
            "fingerprint": cfg.fingerprint(),
        },
        "data": {
            "dataset": cfg.data.dataset,
            "schema": data.schema.name,
            "groups": data.schema.group_names,
            "n_experts": data.schema.n_experts,
            "train_images": len(data.train),
            "query_images": len(data.query),
            "gallery_images": len(data.gallery),
            "train_identities": data.num_train_pids,
            "report": {"counts": data.report.counts, "warnings": data.report.warnings},
        },
        "model": model_info,
        "planted_design": planted,
        "headline": headline,
        "configurations": records(configs),
        "leave_one_out": records(importance),
        "leave_one_out_retrained": records(importance_retrained),
        "paired_tests": records(analyses.paired),
        "consensus": records(
            consensus[
                ["attribute", "score", "rank"]
                + [c for c in consensus.columns if c.startswith("rank_")]
            ]
            if consensus is not None
            else None
        ),
        "kendall_w": analyses.kendall_w,
        "learned_router": learned,
        "attribute_only": {
            **({k: v for k, v in baseline.items() if k != "signatures"} if baseline else {}),
            "signatures": records(signatures),
            "unique_signature_share": unique_share,
        },
        "analyses": {name: f"analyses/{name}/report.json" for name in analyses.batteries},
        "warnings": analyses.warnings + list(data.report.warnings),
    }
    report = clean_value(report)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")

    figs = _figures(configs, importance, consensus)
    for name, png in figs.items():
        atomic_write_bytes(out / "figures" / f"{name}.png", png)
    priors_png = out / "figures" / "priors.png"
    if priors_png.exists():
        figs = {"priors": priors_png.read_bytes(), **figs}

    md = _markdown(report, cfg, configs, importance, analyses, figs)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", _html(report, cfg, configs, importance, analyses, figs))
    return report


def _design_sorted(configs: pd.DataFrame) -> pd.DataFrame:
    key = {d: i for i, d in enumerate(DESIGN_ORDER)}
    cols = ["config", "design", "mAP", "rank1", "rank5", "rank10", "mINP", "queries"]
    return configs.assign(_k=configs["design"].map(key)).sort_values("_k", kind="stable")[cols]


def _sections(report, cfg, configs, importance, analyses):
    """(title, intro, table) per section, shared by the Markdown and HTML writers."""
    h = report["headline"]
    consensus = analyses.consensus
    sections = []
    planted = report.get("planted_design")
    if planted:
        vis = {k: v for k, v in (planted.get("visibility") or {}).items() if v < 1}
        intro = (
            f"Synthetic world, seed {planted.get('seed')}, {planted.get('n_identities')} identities × "
            f"{planted.get('n_cameras')} cameras. Groups drawn with reduced visibility in the pixels "
            f"(annotation unchanged): {vis or 'none'}. A group that is invisible in the pixels but "
            "annotated should come out MORE important: its expert carries what the image lacks."
        )
        sections.append(("Planted design", intro, None))
    cons_table = None
    if consensus is not None:
        cons_table = consensus[
            ["attribute", "score", "rank"]
            + [
                c
                for c in consensus.columns
                if c.startswith("rank_")
                and c not in ("rank_ci_low", "rank_ci_high", "rank_stability")
            ]
        ]
    sections.append(
        (
            "Which attributes matter (consensus)",
            "Groups ranked over the reliance analyses: leave-one-group-out paired Δ, the per-query "
            "switching battery (GLM, rank tests, RF/XGBoost permutation importance, SHAP over "
            f"group-on indicators) and the configuration-level battery. Kendall's W = "
            f"{_f(report['kendall_w'])} (1 = all methods rank the groups alike).",
            cons_table,
        )
    )
    sections.append(
        (
            "Accuracy per configuration",
            f"Full oracle mAP {_f(h['full_mAP'])}, backbone only {_f(h['backbone_mAP'])}, "
            f"learned router {_f(h['learned_mAP'])}"
            + (
                f" (gap to the oracle {_f(h.get('learned_vs_oracle_gap'))})"
                if h.get("learned_vs_oracle_gap") is not None
                else ""
            )
            + ".",
            _design_sorted(configs),
        )
    )
    sections.append(
        (
            "Leave-one-group-out",
            "mAP lost when one group's experts are switched off, with a 95% CI from resampling identities.",
            importance,
        )
    )
    if report.get("leave_one_out_retrained"):
        sections.append(
            (
                "Leave-one-group-out, retrained per configuration",
                "One model trained and tested without each group: what the model can do without it, "
                "as opposed to how much the one trained model relies on it (above).",
                pd.DataFrame(report["leave_one_out_retrained"]),
            )
        )
    if analyses.paired is not None:
        sections.append(
            (
                "Paired tests (full vs without the group, clustered by identity)",
                "Per-identity mean differences of AP; Holm and Benjamini–Hochberg adjusted.",
                analyses.paired[
                    ["attribute", "test", "mean_difference", "p_value", "p_holm", "p_fdr_bh", "n"]
                ],
            )
        )
    ao = report["attribute_only"]
    if ao.get("mAP") is not None:
        sections.append(
            (
                "Attribute-only baseline (identity leak through the oracle)",
                f"Ranking the gallery by agreement of the annotations alone gives mAP {_f(ao.get('mAP'))} "
                f"and rank-1 {_f(ao.get('rank1'))}; {_pct(ao.get('unique_signature_share'))} of identities "
                "have an attribute signature no other identity shares. This is the accuracy an oracle "
                "router could hand the model without looking at the image.",
                pd.DataFrame(ao.get("signatures") or []),
            )
        )
    lr = report.get("learned_router")
    if lr:
        per_group = lr.get("per_group") or lr.get("groups")
        table = pd.DataFrame(per_group) if isinstance(per_group, list) else None
        if isinstance(per_group, dict):
            table = pd.DataFrame(
                [
                    {"attribute": k, **(v if isinstance(v, dict) else {"accuracy": v})}
                    for k, v in per_group.items()
                ]
            )
        sections.append(
            (
                "Learned router vs oracle",
                f"The learned router predicts attributes from the image (mean accuracy mA "
                f"{_f(lr.get('mA'))}) and reaches mAP {_f(h['learned_mAP'])} against the oracle's {_f(h['full_mAP'])}.",
                table,
            )
        )
    for name in analyses.batteries:
        sections.append((f"Battery: {name}", f"Full report: analyses/{name}/report.html", None))
    if report["warnings"]:
        sections.append(("Warnings", "\n".join(f"- {w}" for w in report["warnings"]), None))
    return sections


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _markdown(report, cfg, configs, importance, analyses, figs) -> str:
    parts = [f"# attrimp study: {_md_escape(cfg.name)}\n"]
    if cfg.description:
        parts.append(_md_escape(cfg.description) + "\n")
    for title, intro, table in _sections(report, cfg, configs, importance, analyses):
        parts.append(
            f"## {_md_escape(title)}\n\n{intro if title == 'Warnings' else _md_escape(intro)}\n"
        )
        if table is not None:
            parts.append(_md_table(table))
    for name in figs:
        parts.append(f"![{name}](figures/{name}.png)\n")
    return "\n".join(parts)


def _html(report, cfg, configs, importance, analyses, figs) -> str:
    body = [f"<h1>attrimp study: {html.escape(cfg.name)}</h1>"]
    if cfg.description:
        body.append(f"<p>{html.escape(cfg.description)}</p>")
    fig_of = {
        "Accuracy per configuration": "accuracy",
        "Leave-one-group-out": "leave_one_out",
        "Which attributes matter (consensus)": "consensus",
    }
    if "priors" in figs:
        body.append("<h2>Attribute priors</h2>" + _img(figs["priors"], "priors"))
    for title, intro, table in _sections(report, cfg, configs, importance, analyses):
        body.append(f"<h2>{html.escape(title)}</h2>")
        body.append("<p>" + html.escape(intro).replace("\n", "<br>") + "</p>")
        if title in fig_of and fig_of[title] in figs:
            body.append(_img(figs[fig_of[title]], fig_of[title]))
        if table is not None:
            body.append(_html_table(table))
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #ddd}"
        "img{max-width:100%}"
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>attrimp study: {html.escape(cfg.name)}</title><style>{style}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"

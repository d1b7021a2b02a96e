"""The study report: report.json (versioned, see docs/study.md), report.md, a self-contained
report.html and its figures; the batteries' own full reports sit under ``analyses/<name>/``.

report.json is built first and both pages are rendered from it alone, so they cannot disagree.
The pages open with the answer in plain words (which groups the model relies on, which way, by
how much with a CI, the Holm p-value, how much the analyses agree), then a glossary, then the
detail. One sign convention holds everywhere: a positive ΔmAP / ΔAP is what the model loses when
a group's experts are switched off, i.e. positive = the attribute helps re-identification.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attrimp.config import DESIGNS, StudyConfig
from attrimp.study.analyses import StudyAnalyses
from studies.report import clean_value, records
from studies.report_md import md_escape as _md_escape

#: /2 added ``answer`` (the plain-words answer as data) and ``battery_warnings``
SCHEMA_VERSION = "attrimp.study.run-report/2"

DESIGN_ORDER = DESIGNS

#: the reliance analyses of the study consensus, as the pages name them
ANALYSIS_NAMES = {
    "leave_one_out": "leave-one-group-out (paired)",
    "switching": "per-query switching battery",
    "configurations": "configuration-level battery",
}

#: what each battery under analyses/ asks (attrimp.study.analyses)
BATTERY_ABOUT = {
    "switching": "per query × configuration, AP on the group-on indicators, clustered by "
    "identity: which experts the model relies on, query by query",
    "configurations": "one row per configuration, mAP and rank-1 on the group-on indicators: "
    "the same question at the level the paper reports",
    "attributes": "per query under the full oracle, AP on the query's attribute values: which "
    "values make a query hard (difficulty, not reliance; not in the consensus)",
}

#: terms used on the pages, explained once
GLOSSARY: tuple[tuple[str, str], ...] = (
    (
        "mAP",
        "mean average precision over the queries, as a fraction from 0 to 1 (every command "
        "reports it this way); AP is one query's average precision.",
    ),
    ("rank-1 / rank-5 / rank-10", "share of queries with a correct match in the top 1 / 5 / 10."),
    (
        "mINP",
        "mean inverse negative penalty (Ye et al. 2021): per query, the number of correct "
        "gallery matches divided by the position of the hardest one, averaged; 1 = every "
        "correct match comes before every wrong one.",
    ),
    (
        "ΔmAP / ΔAP",
        "mAP (or a query's AP) with every expert on minus without the group's experts: what "
        "the model loses when the group is switched off. Positive = the attribute helps.",
    ),
    (
        "share_hurt",
        "share of queries whose AP drops when the group's experts are switched off (ΔAP > 0).",
    ),
    (
        "oracle router",
        "switches each query's experts from its annotated attributes; the learned router "
        "predicts them from the image instead (mA = its mean per-group attribute accuracy).",
    ),
    (
        "Holm p",
        "p-value adjusted with Holm's step-down method over the 12 or so groups of one test, so "
        "that the chance of any false finding stays below alpha.",
    ),
    (
        "BH (p_fdr_bh)",
        "Benjamini–Hochberg adjusted p-value: bounds the expected share of false findings among "
        "the findings (false discovery rate); less strict than Holm.",
    ),
    (
        "Kendall's W",
        "agreement of the analyses' rankings of the groups: 1 = they rank them the same, "
        "0 = no agreement.",
    ),
    (
        "consensus score",
        "mean over the analyses of the rank-normalised score (1 = every analysis's top group, "
        "0 = every analysis's last).",
    ),
    (
        "blank p-value",
        "no test was possible: every paired difference is 0 (switching the group off changed "
        "no query, e.g. no test identity has the attribute); such groups are left out of the "
        "Holm/BH adjustment.",
    ),
)

SIGN_NOTE = (
    "Signs: ΔmAP and the paired tests' mean difference are full minus without the group, so "
    "positive = the attribute helps re-identification, negative = its experts hurt it."
)

_ON = {"1", "1.0", "true", "yes", "on"}


# --------------------------------------------------------------------------- figures


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _figures(report: Mapping[str, Any], priors: pd.DataFrame | None) -> dict[str, bytes]:
    """Every figure of the page, drawn from report.json's records (and the priors table)."""
    from matplotlib.figure import Figure

    from studies.plots import consensus_heatmap, png_bytes

    figs: dict[str, bytes] = {}
    configs = pd.DataFrame(report.get("configurations") or [])
    if len(configs):
        main = configs[
            configs["design"].isin(("full", "backbone", "leave_one_out", "learned", "noisy"))
        ]
        if len(main):
            fig = Figure(figsize=(7, 0.28 * len(main) + 1.2))
            ax = fig.subplots()
            order = main.iloc[::-1]
            colors = ["#1f77b4" if d == "leave_one_out" else "#ff7f0e" for d in order["design"]]
            ax.barh(order["config"], order["mAP"], color=colors)
            full = configs.loc[configs["config"] == "full", "mAP"]
            if len(full):
                ax.axvline(float(full.iloc[0]), color="k", lw=0.8, ls="--", label="full oracle")
                ax.legend(loc="lower right", fontsize=8)
            ax.set_xlim(0, 1)
            ax.set_xlabel("mAP (fraction)")
            ax.set_title("Re-ID accuracy per configuration")
            figs["accuracy"] = _png(fig)
    loo = pd.DataFrame(report.get("leave_one_out") or [])
    if len(loo):
        fig = Figure(figsize=(7, 0.35 * len(loo) + 1.3))
        ax = fig.subplots()
        order = loo.iloc[::-1]
        err = np.vstack(
            [order["delta_map"] - order["ci_low"], order["ci_high"] - order["delta_map"]]
        )
        colors = ["#1f77b4" if v > 0 else "#d62728" for v in order["delta_map"]]
        ax.barh(order["attribute"], order["delta_map"], xerr=err, color=colors, capsize=3)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel(
            "ΔmAP: mAP lost when the group's experts are switched off (95% identity-bootstrap "
            "CI)\npositive (blue) = the attribute helps, negative (red) = its experts hurt"
        )
        ax.set_title("Leave-one-group-out")
        figs["leave_one_out"] = _png(fig)
    mats = _consensus_matrices(report)
    if mats is not None:
        alpha = (report.get("answer") or {}).get("alpha", 0.05)
        fig = consensus_heatmap(
            *mats,
            title="Rank of each group per reliance analysis",
            legend=f"* = found (leave-one-out: paired Wilcoxon Holm p < {alpha:g}; batteries: "
            f"Holm p < {alpha:g} in their GLM group test). Consensus row: colour = the "
            "leave-one-out direction where its CI excludes 0, grey where it is unclear.",
            positive_label="switching it on helps",
            negative_label="hurts",
        )
        if fig is not None:
            figs["consensus"] = png_bytes(fig)
    if priors is not None and len(priors):
        figs.update(_prior_figures(priors))
    return figs


def _prior_figures(priors: pd.DataFrame) -> dict[str, bytes]:
    """One prior-bar figure per split (attrimp.data.priors draws the splits side by side: 17 inches
    wide, its segment labels shrink to ~3 pt at page width; one split per figure is drawn at
    about the page's own width, so every label stays readable)."""
    import tempfile

    from attrimp.data.priors import plot_priors

    figs: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for split in dict.fromkeys(priors["split"]):
            # no suptitle: the panel's own title names the split and its identities
            path = plot_priors(priors[priors["split"] == split], Path(tmp) / "priors.png")
            figs[f"priors_{split}"] = path.read_bytes()
    return figs


def _analysis_names(consensus_record: Mapping[str, Any]) -> list[str]:
    """The analyses that ranked the groups, from a consensus record's ``rank_<analysis>``."""
    names = [c.removeprefix("rank_") for c in consensus_record if c.startswith("rank_")]
    return [n for n in names if n not in ("ci_low", "ci_high", "stability")]


def _consensus_matrices(report: Mapping[str, Any]):
    """Rank, direction (+1 helps / -1 hurts) and found (1/0) per analysis x group, with the
    consensus row; None without a consensus."""
    cons = report.get("consensus") or []
    if not cons:
        return None
    groups = [r["attribute"] for r in cons]
    rows = _analysis_names(cons[0])
    ranks = pd.DataFrame(index=rows + ["consensus"], columns=groups, dtype=float)
    direction = pd.DataFrame(index=ranks.index, columns=groups, dtype=float)
    found = pd.DataFrame(index=ranks.index, columns=groups, dtype=float)
    for r in cons:
        for m in rows:
            ranks.loc[m, r["attribute"]] = r.get(f"rank_{m}")
        ranks.loc["consensus", r["attribute"]] = r.get("rank")
    for rec in (report.get("answer") or {}).get("groups", []):
        a = rec["attribute"]
        if a not in groups:
            continue
        for m in rows:
            sig = rec.get("signals", {}).get(m, {})
            direction.loc[m, a] = sig.get("direction")
            found.loc[m, a] = None if sig.get("found") is None else float(sig["found"])
        direction.loc["consensus", a] = {"helps": 1.0, "hurts": -1.0}.get(rec.get("effect"))
        found.loc["consensus", a] = None if rec.get("matters") is None else float(rec["matters"])
    return ranks, direction, found


# --------------------------------------------------------------------------- the answer


def _on_direction(rec: Mapping[str, Any]) -> float | None:
    """+1 when switching a group's experts on raises the battery's outcome, -1 when it lowers
    it (the battery compares a level with its reference; which of on/off is the reference
    depends on the table)."""
    eff = rec.get("effect")
    if eff is None or not np.isfinite(eff) or eff == 0:
        return None
    s = float(np.sign(eff))
    if str(rec.get("level")).lower() in _ON:
        return s
    if str(rec.get("reference")).lower() in _ON:
        return -s
    return None


def _battery_signals(analyses: StudyAnalyses) -> dict[str, dict[str, dict[str, Any]]]:
    """analysis -> group -> {direction, found} from each reliance battery's summary (its first
    outcome: AP for switching, mAP for configurations)."""
    from studies.report import build_summary

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in ("switching", "configurations"):
        battery = analyses.batteries.get(name)
        if battery is None:
            continue
        first = battery.outcomes[0].outcome if battery.outcomes else None
        out[name] = {
            r["attribute"]: {"direction": _on_direction(r), "found": r.get("matters")}
            for r in build_summary(battery)
            if r["outcome"] == first
        }
    return out


def build_answer(
    importance: pd.DataFrame,
    paired: pd.DataFrame | None,
    consensus: pd.DataFrame | None,
    kendall_w: float | None,
    signals: Mapping[str, Mapping[str, Mapping[str, Any]]],
    *,
    alpha: float,
) -> dict[str, Any]:
    """The answer as data: per group (consensus order) its leave-one-out ΔmAP with CI, whether
    it helps or hurts, the Holm p of the paired Wilcoxon test (and of the paired t test), and
    what each reliance analysis says (direction, found)."""
    wil = t = {}
    if paired is not None and len(paired):
        by_test = {k: v.set_index("attribute") for k, v in paired.groupby("test", sort=False)}
        wil = by_test.get("wilcoxon_signed_rank", pd.DataFrame()).to_dict("index")
        t = by_test.get("paired_t", pd.DataFrame()).to_dict("index")
    loo = importance.set_index("attribute").to_dict("index") if len(importance) else {}
    if consensus is not None and len(consensus):
        order = list(consensus["attribute"])
        ranks = consensus.set_index("attribute")["rank"].to_dict()
    else:
        order, ranks = list(loo), {}
    groups = []
    for a in order:
        d = loo.get(a, {})
        w = wil.get(a, {})
        p = _finite(w.get("p_holm"))
        delta = _finite(d.get("delta_map"))
        lo, hi = _finite(d.get("ci_low")), _finite(d.get("ci_high"))
        effect = None
        if delta is not None and lo is not None and hi is not None:
            effect = "helps" if lo > 0 else "hurts" if hi < 0 else "unclear"
            if lo == hi == 0:
                effect = "none"  # switching the group off changed no query
        sig = {name: dict(s.get(a, {})) for name, s in signals.items()}
        sig["leave_one_out"] = {
            "direction": None if not delta else float(np.sign(delta)),
            "found": None if p is None else bool(p < alpha),
        }
        groups.append(
            {
                "attribute": a,
                "rank": _finite(ranks.get(a)),
                "delta_map": delta,
                "ci_low": lo,
                "ci_high": hi,
                "effect": effect,
                "p_holm": p,
                "p_holm_paired_t": _finite(t.get(a, {}).get("p_holm")),
                "matters": None if p is None else bool(p < alpha),
                "share_hurt": _finite(d.get("share_hurt")),
                "signals": sig,
            }
        )
    return {
        "alpha": alpha,
        "test": "wilcoxon_signed_rank",
        "kendall_w": kendall_w,
        "groups": groups,
    }


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def answer_text(report: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The answer in plain words: a paragraph and one sentence per group that matters."""
    ans = report.get("answer") or {}
    alpha = ans.get("alpha", 0.05)
    groups = ans.get("groups", [])
    found = [g for g in groups if g.get("matters")]
    tested = [g for g in groups if g.get("p_holm") is not None]
    lead = (
        f"{len(found)} of {len(groups)} attribute groups change re-identification when their "
        f"experts are switched off (paired Wilcoxon signed-rank test per identity, Holm-adjusted "
        f"p < {alpha:g})"
    )
    if found:
        helps = [g["attribute"] for g in found if (g.get("delta_map") or 0) > 0]
        hurts = [g["attribute"] for g in found if (g.get("delta_map") or 0) < 0]
        parts = []
        if helps:
            parts.append(f"the model relies on {', '.join(helps)} (switching it off costs mAP)")
        if hurts:
            parts.append(
                f"the experts of {', '.join(hurts)} hurt it (switching them off raises mAP)"
            )
        lead += ": " + "; ".join(parts) + "."
    elif tested:
        best = min(tested, key=lambda g: g["p_holm"])
        lead += f"; none does, the closest is {best['attribute']} (Holm p = {_p(best['p_holm'])})."
    else:
        lead += "; no group could be tested."
    w = ans.get("kendall_w")
    cons = report.get("consensus") or []
    n_methods = len(_analysis_names(cons[0])) if cons else 0
    if w is not None:
        word = "strongly" if w >= 0.7 else "moderately" if w >= 0.4 else "weakly"
        lead += (
            f" The {n_methods} reliance analyses agree {word} on the order of the groups "
            f"(Kendall's W = {w:.2f}; 1 = the same ranking)."
        )
    h = report.get("headline") or {}
    if h.get("full_mAP") is not None:
        lead += (
            f" Accuracy (mAP, fraction): full oracle {_f(h['full_mAP'])}, backbone only "
            f"{_f(h.get('backbone_mAP'))}"
            + (
                f", learned router {_f(h['learned_mAP'])}"
                if h.get("learned_mAP") is not None
                else ""
            )
            + "."
        )
    lines = []
    for g in found:
        delta = g["delta_map"]
        verb = "costs" if delta > 0 else "gains"
        lines.append(
            f"{g['attribute']} {'helps' if delta > 0 else 'hurts'}: switching its experts off "
            f"{verb} {abs(delta):.3f} mAP (ΔmAP = {delta:+.3f}, 95% CI {g['ci_low']:+.3f} to "
            f"{g['ci_high']:+.3f}); Holm p = {_p(g['p_holm'])}"
            + (
                f" (paired t: {_p(g['p_holm_paired_t'])})"
                if g.get("p_holm_paired_t") is not None
                else ""
            )
            + f"; consensus rank {g['rank']:g}; {_found_text(g)}."
        )
    return lead, lines


def _found_text(g: Mapping[str, Any]) -> str:
    """How many reliance analyses find the group, and which of them that find it point the
    other way (a real disagreement the reader should see, e.g. switching vs leave-one-out)."""
    sig = g.get("signals", {})
    tested = [k for k, v in sig.items() if v.get("found") is not None]
    hits = [k for k in tested if sig[k]["found"]]
    text = f"found by {len(hits)} of the {len(tested)} reliance analyses that test it"
    own = np.sign(g.get("delta_map") or 0.0)
    against = [
        ANALYSIS_NAMES.get(k, k)
        for k in hits
        if k != "leave_one_out" and own and sig[k].get("direction") == -own
    ]
    if against:
        text += f", but the {' and the '.join(against)} finds the opposite direction"
    return text


def planted_sentence(planted: Mapping[str, Any] | None) -> str | None:
    """The planted design of the synthetic world in words (None for real data)."""
    if not planted:
        return None
    vis = planted.get("visibility") or {}
    hidden = [g for g, v in vis.items() if v == 0]
    dim = [f"{g} ({100 * v:.0f}% visible)" for g, v in vis.items() if 0 < v < 1]
    counts = planted.get("counts") or {}
    split = ""
    if counts.get("train_identities") is not None:
        split = (
            f" ({counts['train_identities']} for training, "
            f"{counts.get('test_identities')} for testing)"
        )
    text = (
        f"Synthetic world (seed {planted.get('seed')}): {planted.get('n_identities')} identities "
        f"seen by {planted.get('n_cameras')} cameras{split}, attributes drawn with "
        f"{planted.get('priors', 'the dataset')} priors."
    )
    if hidden or dim:
        what = [*(f"{g} (invisible)" for g in hidden), *dim]
        one = len(what) == 1
        text += (
            f" Planted truth: {', '.join(what)} {'stays' if one else 'stay'} in the annotations "
            f"but not in the pixels, so only {'its expert' if one else 'their experts'} can "
            f"carry {'it' if one else 'them'}: {'it' if one else 'they'} should come out among "
            "the most important groups. Every other attribute is drawn visibly."
        )
    else:
        text += " Every attribute is drawn visibly (no planted reliance)."
    return text


def planted_check(report: Mapping[str, Any]) -> str | None:
    """Where the planted (invisible) groups landed in the consensus."""
    planted = report.get("planted_design") or {}
    hidden = [g for g, v in (planted.get("visibility") or {}).items() if v < 1]
    cons = {r["attribute"]: r for r in report.get("consensus") or []}
    if not hidden or not cons:
        return None
    n = len(cons)
    where = [f"{g} ranks {cons[g]['rank']:g} of {n}" for g in hidden if g in cons]
    return "Planted truth check: " + "; ".join(where) + "." if where else None


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def answer_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The answer as a compact table, every group in consensus order."""
    rows = []
    for g in (report.get("answer") or {}).get("groups", []):
        ci = (
            f"{g['delta_map']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]"
            if g.get("delta_map") is not None and g.get("ci_low") is not None
            else ""
        )
        sig = g.get("signals", {})
        rows.append(
            {
                "attribute": g["attribute"],
                "rank": g.get("rank"),
                "ΔmAP without it [95% CI]": ci,
                "effect": g.get("effect") or "",
                "Holm p (Wilcoxon)": g.get("p_holm"),
                "share_hurt": g.get("share_hurt"),
                **{
                    f"found: {k}": ("yes" if v.get("found") else "no")
                    if v.get("found") is not None
                    else ""
                    for k, v in sig.items()
                },
            }
        )
    return rows


# --------------------------------------------------------------------------- report.json


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
    from attrimp.study.run import atomic_write_bytes, atomic_write_text

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
    answer = build_answer(
        importance,
        analyses.paired,
        consensus,
        analyses.kendall_w,
        _battery_signals(analyses),
        alpha=cfg.analysis.alpha,
    )
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
        "answer": answer,
        "configurations": records(configs),
        "leave_one_out": records(importance),
        "leave_one_out_retrained": records(importance_retrained),
        "paired_tests": records(analyses.paired),
        "consensus": records(
            consensus[
                ["attribute", "score", "rank"]
                + [
                    c
                    for c in consensus.columns
                    if c.startswith("rank_")
                    and c not in ("rank_ci_low", "rank_ci_high", "rank_stability")
                ]
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
        "battery_warnings": {name: len(b.warnings) for name, b in analyses.batteries.items()},
        "warnings": analyses.warnings + list(data.report.warnings),
    }
    report = clean_value(report)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")

    priors_csv = out / "tables" / "priors.csv"
    priors = pd.read_csv(priors_csv) if priors_csv.exists() else None
    figs = _figures(report, priors)
    for name, png in figs.items():
        atomic_write_bytes(out / "figures" / f"{name}.png", png)
    atomic_write_text(out / "report.md", render_markdown(report, list(figs)))
    atomic_write_text(out / "report.html", render_html(report, figs))
    return report


# --------------------------------------------------------------------------- pages


def _design_sorted(configs: pd.DataFrame) -> pd.DataFrame:
    key = {d: i for i, d in enumerate(DESIGN_ORDER)}
    cols = [
        c
        for c in ["config", "design", "mAP", "rank1", "rank5", "rank10", "mINP", "queries"]
        if c in configs.columns
    ]
    return configs.assign(_k=configs["design"].map(key)).sort_values("_k", kind="stable")[cols]


def _sections(report: Mapping[str, Any]) -> list[tuple[str, str, Any, str | None]]:
    """(title, intro, table, figure) per section after the answer, shared by both pages."""
    h = report["headline"]
    sections: list[tuple[str, str, Any, str | None]] = []
    planted = planted_sentence(report.get("planted_design"))
    if planted:
        sections.append(("Planted design", planted, None, None))
    sections.append(
        (
            "Leave-one-group-out",
            "ΔmAP: mAP lost when one group's experts are switched off (full minus without; "
            "positive = the attribute helps), with a 95% CI from resampling identities; "
            "share_hurt: share of queries losing AP without the group.",
            pd.DataFrame(report.get("leave_one_out") or []),
            "leave_one_out",
        )
    )
    paired = pd.DataFrame(report.get("paired_tests") or [])
    if len(paired):
        cols = [
            c
            for c in ["attribute", "test", "mean_difference", "p_value", "p_holm", "p_fdr_bh", "n"]
            if c in paired.columns
        ]
        blank = paired["p_value"].isna().any() if "p_value" in paired.columns else False
        sections.append(
            (
                "Paired tests (full vs without the group, clustered by identity)",
                "Per-identity mean differences of AP, full minus without the group (the sign of "
                "ΔmAP: positive = helps); Wilcoxon signed-rank and paired t, Holm and "
                "Benjamini–Hochberg adjusted over the groups."
                + (
                    " A blank p-value: every difference is 0 (switching the group off changed "
                    "no query), so there is nothing to test; it is left out of the adjustment."
                    if blank
                    else ""
                ),
                paired[cols],
                None,
            )
        )
    cons = pd.DataFrame(report.get("consensus") or [])
    sections.append(
        (
            "Which attributes matter (consensus of the reliance analyses)",
            "Groups ranked over the reliance analyses: "
            + ", ".join(ANALYSIS_NAMES.values())
            + f". Kendall's W = {_f(report.get('kendall_w'))}. rank_<analysis>: each analysis's "
            "own rank. In the heat map, colour = direction (blue: switching the group on helps, "
            "red: hurts, grey: no sign), * = the analysis finds the group.",
            cons if len(cons) else None,
            "consensus",
        )
    )
    configs = pd.DataFrame(report.get("configurations") or [])
    sections.append(
        (
            "Accuracy per configuration",
            f"mAP (fraction): full oracle {_f(h['full_mAP'])}, backbone only "
            f"{_f(h['backbone_mAP'])}, learned router {_f(h['learned_mAP'])}"
            + (
                f" (gap to the oracle {_f(h.get('learned_vs_oracle_gap'))})"
                if h.get("learned_vs_oracle_gap") is not None
                else ""
            )
            + ". One row per configuration: full, backbone only, each group off (without:), "
            "each group alone (only:), random subsets, counterfactual values (cf:), noisy "
            "annotations and the learned router.",
            _design_sorted(configs) if len(configs) else None,
            "accuracy",
        )
    )
    if report.get("leave_one_out_retrained"):
        sections.append(
            (
                "Leave-one-group-out, retrained per configuration",
                "One model trained and tested without each group: what the model can do without "
                "it, as opposed to how much the one trained model relies on it (above).",
                pd.DataFrame(report["leave_one_out_retrained"]),
                None,
            )
        )
    ao = report["attribute_only"]
    if ao.get("mAP") is not None:
        sections.append(
            (
                "Attribute-only baseline (identity leak through the oracle)",
                f"Ranking the gallery by agreement of the annotations alone gives mAP "
                f"{_f(ao.get('mAP'))} and rank-1 {_f(ao.get('rank1'))}; "
                f"{_pct(ao.get('unique_signature_share'))} of identities have an attribute "
                "signature no other identity shares. This is the accuracy an oracle router "
                "could hand the model without looking at the image.",
                pd.DataFrame(ao.get("signatures") or []),
                None,
            )
        )
    lr = report.get("learned_router")
    if lr:
        acc = lr.get("group_accuracy") or {}
        table = (
            pd.DataFrame({"attribute": list(acc), "accuracy": list(acc.values())})
            if isinstance(acc, dict) and acc
            else None
        )
        sections.append(
            (
                "Learned router vs oracle",
                f"The learned router predicts attributes from the image (mean accuracy mA "
                f"{_f(lr.get('mA'))}) and reaches mAP {_f(h['learned_mAP'])} against the "
                f"oracle's {_f(h['full_mAP'])}.",
                table,
                None,
            )
        )
    return sections


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _cell(v: Any, column: str = "") -> str:
    """A table cell: p-values to 3 decimals or scientific below 0.001, other numbers to 4
    decimals (so a column of ΔmAP or CI bounds reads alike), integers as integers."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        if float(v).is_integer() and abs(v) < 1e6:
            return str(int(v))
        if column.startswith("p_") or column.startswith("Holm p"):
            return _p(float(v))
        return f"{v:.4f}"
    return str(v)


def _rows(table: Any) -> tuple[list[str], list[list[str]]]:
    if isinstance(table, pd.DataFrame):
        cols = [str(c) for c in table.columns]
        return cols, [
            [_cell(v, c) for v, c in zip(row, cols)] for row in table.itertuples(index=False)
        ]
    rows = list(table)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return cols, [[_cell(r.get(c), c) for c in cols] for r in rows]


def _md_table(table: Any) -> str:
    cols, rows = _rows(table)
    if not rows:
        return "_(empty)_\n"
    lines = ["| " + " | ".join(_md_escape(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_md_escape(v) for v in r) + " |")
    return "\n".join(lines) + "\n"


def _html_table(table: Any) -> str:
    cols, rows = _rows(table)
    if not rows:
        return "<p><em>(empty)</em></p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in rows
    )
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


def _battery_links(report: Mapping[str, Any]) -> list[tuple[str, str, str, int]]:
    """(name, html path, md path, warnings) of each battery's own full report."""
    counts = report.get("battery_warnings") or {}
    return [
        (name, f"analyses/{name}/report.html", f"analyses/{name}/report.md", counts.get(name, 0))
        for name in (report.get("analyses") or {})
    ]


def render_markdown(report: Mapping[str, Any], figures: Sequence[str] = ()) -> str:
    """report.md from report.json; ``figures`` names the PNGs under figures/."""
    figs = set(figures)
    study = report["study"]
    parts = [f"# attrimp study: {_md_escape(study['name'])}\n"]
    if study.get("description"):
        parts.append(_md_escape(study["description"]) + "\n")
    lead, lines = answer_text(report)
    parts.append("## Answer\n")
    parts.append(_md_escape(lead) + "\n")
    parts.extend(f"- {_md_escape(x)}" for x in lines)
    if lines:
        parts.append("")
    check = planted_check(report)
    if check:
        parts.append(_md_escape(check) + "\n")
    parts.append(_md_table(answer_rows(report)))
    parts.append(_md_escape(SIGN_NOTE) + "\n")
    if "consensus" in figs:
        parts.append("![consensus](figures/consensus.png)\n")
    parts.append("## How to read this report\n")
    parts.extend(f"- **{_md_escape(t)}**: {_md_escape(m)}" for t, m in GLOSSARY)
    parts.append("")
    for title, intro, table, fig in _sections(report):
        parts.append(f"## {_md_escape(title)}\n\n{_md_escape(intro)}\n")
        if fig and fig in figs and fig != "consensus":
            parts.append(f"![{fig}](figures/{fig}.png)\n")
        if table is not None:
            parts.append(_md_table(table))
    priors = [f for f in figures if f.startswith("priors_")]
    if priors:
        parts.append("## Attribute priors\n")
        parts.extend(f"![{f}](figures/{f}.png)\n" for f in priors)
    parts.append("## Detailed batteries\n")
    for name, html_path, md_path, n in _battery_links(report):
        about = BATTERY_ABOUT.get(name, "")
        parts.append(
            f"- [{_md_escape(name)}]({md_path}) ([HTML]({html_path})): {_md_escape(about)}; "
            f"{n} warning(s) of its own."
        )
    parts.append("")
    warns = report.get("warnings") or []
    parts.append(f"## Warnings ({len(warns)})\n")
    parts.append("\n".join(f"- {_md_escape(w)}" for w in warns) if warns else "None.")
    return "\n".join(parts).rstrip() + "\n"


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
    "line-height:1.45;color:#222}table{border-collapse:collapse;font-size:13px}"
    "td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}"
    ".scroll{overflow-x:auto;max-width:100%}img{max-width:100%;height:auto}"
    "p,li,dd,h1,h2{overflow-wrap:anywhere}"
    ".answer{background:#eef5fb;border-left:4px solid #1f77b4;padding:.4em 1em}"
    "dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:bold}"
    ".note{color:#555;font-size:.9em}"
)


def render_html(report: Mapping[str, Any], figs: Mapping[str, bytes]) -> str:
    """report.html from report.json and the figures' PNG bytes (embedded, no links to fetch)."""
    study = report["study"]
    body = [f"<h1>attrimp study: {html.escape(study['name'])}</h1>"]
    if study.get("description"):
        body.append(f"<p>{html.escape(study['description'])}</p>")
    lead, lines = answer_text(report)
    body.append("<h2>Answer</h2>")
    body.append(f'<div class="answer"><p>{html.escape(lead)}</p>')
    if lines:
        body.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>")
    check = planted_check(report)
    if check:
        body.append(f"<p>{html.escape(check)}</p>")
    body.append("</div>")
    body.append(_html_table(answer_rows(report)))
    body.append(f'<p class="note">{html.escape(SIGN_NOTE)}</p>')
    if "consensus" in figs:
        body.append(_img(figs["consensus"], "consensus heat map"))
    body.append("<h2>How to read this report</h2><dl>")
    body.extend(f"<dt>{html.escape(t)}</dt><dd>{html.escape(m)}</dd>" for t, m in GLOSSARY)
    body.append("</dl>")
    for title, intro, table, fig in _sections(report):
        body.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(intro)}</p>")
        if fig and fig in figs and fig != "consensus":
            body.append(_img(figs[fig], fig))
        if table is not None:
            body.append(_html_table(table))
    priors = [f for f in figs if f.startswith("priors_")]
    if priors:
        body.append("<h2>Attribute priors</h2>")
        body.extend(_img(figs[f], f) for f in priors)
    body.append("<h2>Detailed batteries</h2><ul>")
    for name, html_path, md_path, n in _battery_links(report):
        about = BATTERY_ABOUT.get(name, "")
        body.append(
            f'<li><a href="{html.escape(html_path)}">{html.escape(name)}</a> '
            f'(<a href="{html.escape(md_path)}">Markdown</a>): {html.escape(about)}; '
            f"{n} warning(s) of its own.</li>"
        )
    body.append("</ul>")
    warns = report.get("warnings") or []
    body.append(f"<h2>Warnings ({len(warns)})</h2>")
    body.append(
        "<ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in warns) + "</ul>"
        if warns
        else "<p>None.</p>"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>attrimp study: {html.escape(study['name'])}</title><style>{_CSS}</style>"
        "</head><body>" + "\n".join(body) + "</body></html>\n"
    )


def _img(png: bytes, alt: str) -> str:
    return (
        f"<img alt='{html.escape(alt)}' "
        f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
    )

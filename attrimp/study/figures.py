"""The figures of the study report (`attrimp study run`), drawn from report.json's records and
the priors table alone, so the pages and the figures cannot disagree.

Every figure is drawn by `studies.plots` (one visual language with the battery pages: blue =
helps, orange = hurts, grey = no established direction, colour depth = effect size) and handed
back as bytes, SVG where that stays small and PNG at 2x otherwise (`studies.plots.figure_bytes`;
`studies.plots.figure_suffix` names the file). The priors are drawn here, not in `studies`,
because they use the engine's own value colours (`attrimp.data.priors`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

#: the configurations of the accuracy figure (the random subsets and only-one runs are left out)
ACCURACY_DESIGNS = ("full", "backbone", "leave_one_out", "learned", "noisy")

#: the key of the one priors panel: the study page shows the figures named ``priors_<what>``
#: under "Attribute priors" (alt text "attribute priors, every split")
PRIORS_KEY = "priors_every"

#: the two kinds of bar in the accuracy figure (categorical colours, not helps / hurts)
_LOO_COLOUR = "#88CCEE"
_OTHER_COLOUR = "#555555"


def study_figures(report: Mapping[str, Any], priors: pd.DataFrame | None) -> dict[str, bytes]:
    """Every figure of the study page as bytes (SVG or PNG), keyed by the name the page uses:
    ``accuracy``, ``leave_one_out``, ``counterfactual``, ``consensus`` and ``priors_every``
    (:data:`PRIORS_KEY`, one compact panel for all splits); a figure without data is left
    out."""
    from studies.plots import figure_bytes  # matplotlib is imported when a figure is drawn

    configs = pd.DataFrame(report.get("configurations") or [])
    drawn = {
        "accuracy": accuracy_figure(configs),
        "leave_one_out": leave_one_out_figure(pd.DataFrame(report.get("leave_one_out") or [])),
        "counterfactual": counterfactual_figure(configs),
        "consensus": consensus_figure(report),
        PRIORS_KEY: priors_figure(priors) if priors is not None and len(priors) else None,
    }
    return {name: figure_bytes(fig) for name, fig in drawn.items() if fig is not None}


def accuracy_figure(configs: pd.DataFrame):
    """mAP of the main configurations against the full oracle (dashed), the leave-one-out runs
    in one colour and the reference runs in another, both named in the legend."""
    from studies.plots import value_bars

    if not len(configs):
        return None
    main = configs[configs["design"].isin(ACCURACY_DESIGNS)]
    full = configs.loc[configs["config"] == "full", "mAP"]
    return value_bars(
        list(main["config"]),
        main["mAP"].to_numpy(float),
        colors=[_LOO_COLOUR if d == "leave_one_out" else _OTHER_COLOUR for d in main["design"]],
        legend=[
            (_LOO_COLOUR, "one group switched off (without:)"),
            (_OTHER_COLOUR, "reference runs (full, backbone, learned, noisy)"),
        ],
        reference=float(full.iloc[0]) if len(full) else None,
        reference_label="full oracle",
        xlim=(0, 1),
        xlabel="mAP (fraction)",
        title="Re-ID accuracy per configuration",
    )


def leave_one_out_figure(loo: pd.DataFrame):
    """ΔmAP per group with its identity-bootstrap CI (positive = the attribute helps)."""
    from studies.plots import interval_bars

    if not len(loo):
        return None
    return interval_bars(
        list(loo["attribute"]),
        loo["delta_map"].to_numpy(float),
        loo["ci_low"].to_numpy(float),
        loo["ci_high"].to_numpy(float),
        xlabel="ΔmAP: mAP lost when the group's experts are switched off "
        "(95% identity-bootstrap CI)",
        title="Leave-one-group-out",
        positive_label="helps (CI above 0)",
        negative_label="its experts hurt (CI below 0)",
    )


def counterfactual_figure(configs: pd.DataFrame):
    """ΔmAP of every counterfactual run (``cf:<group>=<value>``: the group's annotation set to
    one value everywhere) against the full oracle; None when the study ran none."""
    from studies.plots import counterfactual_bars

    if not len(configs) or "config" not in configs.columns:
        return None
    full = configs.loc[configs["config"] == "full", "mAP"]
    if not len(full):
        return None
    return counterfactual_bars(configs, float(full.iloc[0]))


def consensus_figure(report: Mapping[str, Any]):
    """Each reliance analysis's rank of each group: colour = direction, depth = the
    leave-one-out ΔmAP's size where the study has it, found starred."""
    from studies.plots import consensus_heatmap

    mats = consensus_matrices(report)
    if mats is None:
        return None
    alpha = (report.get("answer") or {}).get("alpha", 0.05)
    effects = _effect_sizes(report, mats[0])
    # a group no analysis could rank (not testable) is named so rather than left a blank column
    untested = {a: f"{a} (not testable)" for a in mats[0].columns if mats[0][a].isna().all()}
    mats = tuple(m.rename(columns=untested) for m in mats)
    return consensus_heatmap(
        *mats,
        effects=effects.rename(columns=untested),
        title="Rank of each group per reliance analysis",
        legend="The batteries' rows give a direction only (one middle depth). * = found: the "
        f"analysis's own test, Holm p < {alpha:g} (leave-one-out: the paired test over "
        "identities; batteries: their group test). Consensus row: colour = the group's verdict "
        "(helps / hurts), grey where it is negligible or inconclusive.",
        positive_label="switching it on helps",
        negative_label="hurts",
    )


def _effect_sizes(report: Mapping[str, Any], ranks: pd.DataFrame) -> pd.DataFrame:
    """The leave-one-out ΔmAP on its own row and the consensus row (whose colour follows it);
    the batteries' rows carry no size in report.json and stay NaN."""
    eff = pd.DataFrame(np.nan, index=ranks.index, columns=ranks.columns)
    for r in report.get("leave_one_out") or []:
        a = r.get("attribute")
        if a in eff.columns and r.get("delta_map") is not None:
            for row in ("leave_one_out", "consensus"):
                if row in eff.index:
                    eff.loc[row, a] = float(r["delta_map"])
    return eff


def analysis_names(consensus_record: Mapping[str, Any]) -> list[str]:
    """The analyses that ranked the groups, from a consensus record's ``rank_<analysis>``."""
    names = [c.removeprefix("rank_") for c in consensus_record if c.startswith("rank_")]
    return [n for n in names if n not in ("ci_low", "ci_high", "stability")]


def consensus_matrices(report: Mapping[str, Any]):
    """Rank, direction (+1 helps / -1 hurts) and found (1/0) per analysis x group, with the
    consensus row; None without a consensus."""
    cons = report.get("consensus") or []
    if not cons:
        return None
    groups = [r["attribute"] for r in cons]
    rows = analysis_names(cons[0])
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
        # report.json /3: the group's verdict (helps / hurts / negligible / inconclusive / not
        # testable); /2 called it "effect"
        word = rec.get("verdict", rec.get("effect"))
        direction.loc["consensus", a] = {"helps": 1.0, "hurts": -1.0}.get(word)
        found.loc["consensus", a] = None if rec.get("matters") is None else float(rec["matters"])
    return ranks, direction, found


def priors_figure(priors: pd.DataFrame):
    """The attribute priors as ONE compact panel: per group, one thin stacked bar per split
    (train, test, all; the split named at the bar's end), values named on the ``all`` bar. The
    splits are near-identical by design, so three full panels said the same thing three times;
    stacked together a split that differs shows at a glance."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import PercentFormatter

    from attrimp.data.priors import _text_colour
    from attrimp.model.schema import MULTIPLE, UNKNOWN
    from studies.plots import _figure

    splits = list(dict.fromkeys(priors["split"]))
    groups = list(dict.fromkeys(priors["attribute"]))
    h = 0.8 / len(splits)
    fig = _figure(8.0, 0.3 * len(groups) * max(1.0, len(splits) / 2.5) + 1.3)
    ax = fig.subplots()
    for y, group in enumerate(groups):
        for k, split in enumerate(splits):
            rows = priors[(priors["split"] == split) & (priors["attribute"] == group)]
            pos = y + (k - (len(splits) - 1) / 2) * h
            _prior_bar(ax, rows, pos, h * 0.92, label=k == len(splits) - 1, colours=_value_colours,
                       text_colour=_text_colour, hatched=(UNKNOWN, MULTIPLE))  # fmt: skip
            if y == 0:
                ax.text(1.01, pos, split, va="center", ha="left", fontsize=6, color="#555")
    n = priors.groupby("split")["count"].sum() / max(1, len(groups))
    ax.set_xlim(0, 1)
    ax.set_ylim(len(groups) - 0.5, -0.5)
    ax.set_yticks(range(len(groups)), groups, fontsize=8)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("share of identities with the value")
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(
        "Attribute priors per split ("
        + ", ".join(f"{s}: {int(round(n.get(s, 0)))} identities" for s in splits)
        + "); values named on the last bar",
        fontsize=9,
    )
    handles = [
        Patch(facecolor="#d9d9d9", hatch="//", label=UNKNOWN),
        Patch(facecolor="#8c8c8c", hatch="//", label=MULTIPLE),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False, fontsize=7)
    return fig


#: colour names in the annotations drawn in their own colour; other values get Paul Tol's muted
#: qualitative set without its blue and orange (those mean helps / hurts in every other figure)
_NAMED = {"black": "#222222", "white": "#f4f4f4", "red": "#d62728", "purple": "#8e44ad",
          "yellow": "#f2d21b", "gray": "#9e9e9e", "blue": "#3b6fd6", "green": "#2ca02c",
          "brown": "#8c564b", "pink": "#f4a6c0"}  # fmt: skip
_QUALITATIVE = ("#44AA99", "#DDCC77", "#AA4499", "#117733", "#882255", "#999933", "#CC6677")


def _value_colours(values: list[str]) -> list[str]:
    """A colour per value: unknown / multiple light and dark grey, colour names their colour,
    the rest the qualitative set in order."""
    from attrimp.model.schema import MULTIPLE, UNKNOWN

    out, k = [], 0
    for v in values:
        if v in (UNKNOWN, MULTIPLE):
            out.append("#d9d9d9" if v == UNKNOWN else "#8c8c8c")
        elif v in _NAMED:
            out.append(_NAMED[v])
        else:
            out.append(_QUALITATIVE[k % len(_QUALITATIVE)])
            k += 1
    return out


def _prior_bar(ax, rows: pd.DataFrame, pos: float, height: float, *, label: bool, colours,
               text_colour, hatched) -> None:  # fmt: skip
    """One stacked bar of a group's value shares; names inside the segments wide enough."""
    left = 0.0
    for (value, share), colour in zip(
        rows[["value", "probability"]].itertuples(index=False), colours(list(rows["value"]))
    ):
        if not share or share <= 0 or not np.isfinite(share):
            continue
        hatch = "//" if value in hatched else None
        ax.barh(pos, share, left=left, height=height, color=colour, edgecolor="0.35",
                linewidth=0.3, hatch=hatch)  # fmt: skip
        if label and share >= 0.07:
            ax.text(left + share / 2, pos, f"{value} {share:.0%}", ha="center", va="center",
                    fontsize=5.5 if share < 0.14 else 6.5, color=text_colour(colour))  # fmt: skip
        left += share


__all__ = [
    "ACCURACY_DESIGNS",
    "PRIORS_KEY",
    "accuracy_figure",
    "analysis_names",
    "consensus_figure",
    "consensus_matrices",
    "counterfactual_figure",
    "leave_one_out_figure",
    "priors_figure",
    "study_figures",
]

"""Attribute priors — the paper's Figure 4: how often each value of each attribute group occurs.

Counted per identity (the annotations are identity-level), per split (``train``, ``test``) and
over both (``all`` = every row of the table, i.e. train + test identities). An identity whose
group has no value counts as ``unknown`` and one with several values marked as ``multiple``:
both are values of their own, read from the raw marks *before* the schema's policies, so the
shares always sum to 1 and nothing is hidden. ``unknown`` / ``multiple`` rows appear only for
groups whose annotation format can produce them (one column per value, or declared missing
codes); every schema value appears even when its count is 0 (Market's test split never marks
``downcolor=purple``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from attrimp.data.annotations import NO_SPLIT, SPLITS, AttributeTable, value_names
from attrimp.io import atomic_write_frame
from attrimp.model.schema import MULTIPLE, UNKNOWN

PRIOR_COLUMNS = ["split", "attribute", "value", "count", "probability"]


def compute_priors(table: AttributeTable) -> pd.DataFrame:
    """``split, attribute, value, count, probability``: one row per value of every group."""
    values = table.values()
    names = value_names(table.schema)
    pools: list[tuple[str, pd.DataFrame]] = [
        (s, values[values["split"] == s]) for s in SPLITS if (values["split"] == s).any()
    ]
    pools.append((NO_SPLIT, values))
    rows = []
    for split, pool in pools:
        n = len(pool)
        for group in table.schema.group_names:
            counts = pool[group].value_counts()
            unexpected = set(counts.index) - set(names[group])
            assert not unexpected, f"decode produced {unexpected} for {group}"  # a bug, not input
            for value in names[group]:
                c = int(counts.get(value, 0))
                rows.append((split, group, value, c, c / n if n else float("nan")))
    return pd.DataFrame(rows, columns=PRIOR_COLUMNS)


# Colour names in the annotations that matplotlib knows; other values get a qualitative palette.
_NAMED = {"black", "white", "red", "purple", "yellow", "gray", "blue", "green", "brown", "pink"}


def _colours(values: list[str]) -> list:
    import matplotlib as mpl

    palette = mpl.colormaps["tab10"].colors
    out, k = [], 0
    for v in values:
        if v == UNKNOWN:
            out.append("#d9d9d9")
        elif v == MULTIPLE:
            out.append("#8c8c8c")
        elif v in _NAMED:
            out.append({"white": "#f4f4f4", "yellow": "#f2d21b", "gray": "#9e9e9e"}.get(v, v))
        else:
            out.append(palette[k % len(palette)])
            k += 1
    return out


def _text_colour(colour) -> str:
    import matplotlib.colors as mcolors

    r, g, b = mcolors.to_rgb(colour)
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def plot_priors(priors: pd.DataFrame, path: str | Path, *, title: str | None = None) -> Path:
    """Stacked horizontal bars, one per attribute group, one panel per split; each segment is a
    value, labelled inside when wide enough to read (values under 6% stay unlabelled)."""
    # The object API (no pyplot) renders with Agg and leaves the caller's backend alone.
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import PercentFormatter

    path = Path(path)
    splits = list(dict.fromkeys(priors["split"]))
    groups = list(dict.fromkeys(priors["attribute"]))
    fig = Figure(figsize=(5.5 * len(splits) + 1, 0.55 * len(groups) + 1.6))
    axes = fig.subplots(1, len(splits), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, split in zip(axes, splits):
        part = priors[priors["split"] == split]
        n = int(part.groupby("attribute")["count"].sum().max())
        for y, group in enumerate(groups):
            rows = part[part["attribute"] == group]
            left = 0.0
            for (value, share), colour in zip(
                rows[["value", "probability"]].itertuples(index=False),
                _colours(list(rows["value"])),
                strict=True,
            ):
                if share <= 0:
                    continue
                hatch = "//" if value in (UNKNOWN, MULTIPLE) else None
                ax.barh(
                    y, share, left=left, color=colour, edgecolor="0.35", linewidth=0.4, hatch=hatch
                )
                if share >= 0.06:
                    ax.text(
                        left + share / 2, y, f"{value}\n{share:.0%}", ha="center", va="center",
                        fontsize=7 if share >= 0.12 else 5.5, color=_text_colour(colour),
                        linespacing=0.9,
                    )  # fmt: skip
                left += share
        ax.set_xlim(0, 1)
        ax.set_ylim(len(groups) - 0.5, -0.5)
        ax.set_xlabel("prior probability")
        ax.set_title(f"{split} ({n} identities)")
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_yticks(range(len(groups)), groups)
    handles = [
        Patch(facecolor="#d9d9d9", hatch="//", label=UNKNOWN),
        Patch(facecolor="#8c8c8c", hatch="//", label=MULTIPLE),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


def write_priors(
    table: AttributeTable, out_dir: str | Path, *, title: str | None = None
) -> tuple[Path, Path]:
    """``priors.csv`` and ``priors.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    priors = compute_priors(table)
    csv_path = out_dir / "priors.csv"
    atomic_write_frame(priors, csv_path)
    png_path = plot_priors(
        priors, out_dir / "priors.png", title=title or f"Attribute priors — {table.schema.name}"
    )
    return csv_path, png_path

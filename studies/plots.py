"""The figures of both report pages (`attrimp study analyze` and `attrimp study run`), drawn
from the same tidy tables that go into report.json.

Figures are built with :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot), so no
global state or GUI backend is touched and the battery can run in a worker or a headless CI.
Every function returns a Figure or None when its table is empty; :func:`png_bytes` renders it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # belt and braces: nothing here may open a window

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

_WIDTH = 8.0
_COLORS = {"rf": "#1f77b4", "xgb": "#ff7f0e"}
_FALLBACK = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def png_bytes(fig: Figure, *, dpi: int = 110) -> bytes:
    """PNG of a figure without the software/date metadata, so equal figures give equal bytes."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # every figure calls tight_layout itself; bbox_inches="tight" would draw it twice
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


#: tick labels longer than this are shortened with an ellipsis (the tables carry full names)
LABEL_CHARS = 32


def short_label(text: object, limit: int = LABEL_CHARS) -> str:
    """A tick label that fits beside a plot: long user names keep their start and end."""
    s = " ".join(str(text).split())
    if len(s) <= limit:
        return s
    keep = limit - 1
    return s[: keep - keep // 3] + "…" + s[-(keep // 3) :]


def _tight(fig: Figure, **kwargs: object) -> None:
    """tight_layout without matplotlib's warning when a label is too long for it (the figure is
    still drawn; library calls stay quiet)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout(**kwargs)


def _model_color(model: str, i: int) -> str:
    return _COLORS.get(model, _FALLBACK[i % len(_FALLBACK)])


def _finite(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    keep = np.ones(len(df), dtype=bool)
    for c in cols:
        keep &= np.isfinite(pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float))
    return df.loc[keep]


def glm_forest(coefficients: pd.DataFrame, *, title: str = "", xlabel: str = "") -> Figure | None:
    """Forest plot: one row per attribute level (against its reference), estimate and CI."""
    if coefficients is None or coefficients.empty:
        return None
    df = coefficients
    if "term_kind" in df.columns:
        df = df[df["term_kind"].fillna("level") != "intercept"]
    df = df[df["attribute"].notna()]
    df = _finite(df, ["coef", "ci_low", "ci_high"])
    if df.empty:
        return None
    labels = [
        f"{a} = {lv}" if str(lv) != "" else str(a) for a, lv in zip(df["attribute"], df["level"])
    ]
    y = np.arange(len(df))[::-1]
    fig = Figure(figsize=(_WIDTH, 1.2 + 0.24 * len(df)))
    ax = fig.subplots()
    coef = df["coef"].to_numpy(float)
    lo = df["ci_low"].to_numpy(float)
    hi = df["ci_high"].to_numpy(float)
    groups = pd.factorize(df["attribute"])[0]
    colors = np.where(groups % 2 == 0, "#1f77b4", "#d62728")
    ax.hlines(y, lo, hi, colors=colors, linewidth=1.5)
    ax.scatter(coef, y, c=colors, s=18, zorder=3)
    ax.axvline(0.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_yticks(y)
    ax.set_yticklabels([short_label(x) for x in labels], fontsize=7)
    ax.set_xlabel(xlabel or "coefficient (link scale) with 95% CI")
    ax.set_title(title or "GLM coefficients against each attribute's reference level", fontsize=10)
    ax.set_ylim(-1, len(df))
    _tight(fig)
    return fig


def importance_bars(importance: pd.DataFrame, *, title: str = "") -> Figure | None:
    """Grouped horizontal bars: permutation importance per attribute group and model, with CIs."""
    if importance is None or importance.empty:
        return None
    df = importance.copy()
    models = list(dict.fromkeys(df["model"]))
    order = df.groupby("attribute", sort=False)["importance"].mean().sort_values(ascending=True)
    attrs = list(order.index)
    fig = Figure(figsize=(_WIDTH, 1.2 + 0.32 * len(attrs) * max(1, len(models)) / 1.5))
    ax = fig.subplots()
    h = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        sub = df[df["model"] == m].set_index("attribute").reindex(attrs)
        val = sub["importance"].to_numpy(float)
        lo = sub.get("ci_low", sub["importance"]).to_numpy(float)
        hi = sub.get("ci_high", sub["importance"]).to_numpy(float)
        pos = np.arange(len(attrs)) + (i - (len(models) - 1) / 2) * h
        err = np.vstack([np.clip(val - lo, 0, None), np.clip(hi - val, 0, None)])
        err = np.where(np.isfinite(err), err, 0.0)
        ax.barh(
            pos,
            np.nan_to_num(val),
            height=h,
            xerr=err,
            color=_model_color(str(m), i),
            label=str(m),
            error_kw={"elinewidth": 0.8, "capsize": 2},
        )
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_yticks(np.arange(len(attrs)))
    ax.set_yticklabels([short_label(a) for a in attrs], fontsize=8)
    ax.set_xlabel("drop in held-out score when the whole group is permuted (95% CI)")
    ax.set_title(title or "Grouped permutation importance", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    _tight(fig)
    return fig


def shap_summary(
    group_table: pd.DataFrame, level_table: pd.DataFrame | None = None, *, title: str = ""
) -> Figure | None:
    """Left: mean |SHAP| per attribute group and model. Right: signed mean SHAP per level."""
    if group_table is None or group_table.empty:
        return None
    has_levels = level_table is not None and not level_table.empty
    fig = Figure(
        figsize=(
            _WIDTH + (4.0 if has_levels else 0.0),
            1.4 + 0.3 * group_table["attribute"].nunique(),
        )
    )
    axes = fig.subplots(1, 2 if has_levels else 1, squeeze=False)[0]
    ax = axes[0]
    models = list(dict.fromkeys(group_table["model"]))
    order = group_table.groupby("attribute", sort=False)["mean_abs_shap"].mean().sort_values()
    attrs = list(order.index)
    h = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        sub = group_table[group_table["model"] == m].set_index("attribute").reindex(attrs)
        pos = np.arange(len(attrs)) + (i - (len(models) - 1) / 2) * h
        ax.barh(
            pos,
            np.nan_to_num(sub["mean_abs_shap"].to_numpy(float)),
            height=h,
            color=_model_color(str(m), i),
            label=str(m),
        )
    ax.set_yticks(np.arange(len(attrs)))
    ax.set_yticklabels([short_label(a) for a in attrs], fontsize=8)
    ax.set_xlabel("mean |SHAP| of the group (sum of its columns per row)")
    ax.set_title(title or "SHAP importance by attribute group", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    if has_levels:
        ax2 = axes[1]
        lv = level_table.copy()
        first = models[0] if models else lv["model"].iloc[0]
        if "model" in lv.columns and (lv["model"] == first).any():
            lv = lv[lv["model"] == first]
        rank = {a: i for i, a in enumerate(attrs)}
        lv = lv[lv["attribute"].isin(rank)]
        ys = lv["attribute"].map(rank).to_numpy(float)
        vals = lv["mean_shap"].to_numpy(float)
        sizes = 8 + 40 * np.sqrt(lv["n"].to_numpy(float) / max(1.0, float(lv["n"].max())))
        ax2.scatter(vals, ys, s=sizes, c=np.where(vals >= 0, "#2ca02c", "#d62728"), alpha=0.7)
        ax2.axvline(0.0, color="grey", linewidth=0.8)
        ax2.set_yticks(np.arange(len(attrs)))
        ax2.set_yticklabels([])
        ax2.set_ylim(ax.get_ylim())
        ax2.set_xlabel(f"mean signed SHAP per level ({first}; dot size ~ rows)")
        ax2.set_title("Direction of each level", fontsize=10)
    _tight(fig)
    return fig


def consensus_heatmap(
    ranks: pd.DataFrame,
    direction: pd.DataFrame | None = None,
    significant: pd.DataFrame | None = None,
    *,
    title: str = "",
    legend: str = "",
    positive_label: str = "raises the outcome",
    negative_label: str = "lowers it",
) -> Figure | None:
    """Methods (rows) x attribute groups (columns, consensus order).

    Each cell shows the method's rank of the group (1 = most important) and encodes three
    things: the hue is the direction the method gives the group (blue: its headline level
    raises the outcome against the reference, red: lowers it, grey: the method has no sign,
    e.g. permutation importance), the depth of colour is the rank (deep = near the top), and a
    star plus a black frame mark the groups the method finds (Holm p < alpha, or an importance
    CI above 0). ``direction`` and ``significant`` are aligned with ``ranks`` (NaN = none)."""
    if ranks is None or ranks.empty:
        return None
    mat = ranks.to_numpy(float)
    n = max(2.0, float(np.nanmax(mat)) if np.isfinite(mat).any() else 2.0)
    strength = np.clip((n - mat) / (n - 1.0), 0.0, 1.0)  # 1 = top rank
    n_rows, n_cols = mat.shape
    fig = Figure(figsize=(max(_WIDTH, 0.6 * n_cols + 2.5), 1.9 + 0.5 * n_rows))
    ax = fig.subplots()
    ax.imshow(
        _heat_colours(mat, _aligned(direction, ranks), strength),
        aspect="auto",
        interpolation="nearest",
    )
    ax.set_xticks(np.arange(n_cols))
    ax.set_xticklabels([short_label(c) for c in ranks.columns], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(np.arange(n_rows))
    ax.set_yticklabels([short_label(i) for i in ranks.index], fontsize=8)
    _mark_ranks(ax, mat, _aligned(significant, ranks), strength)
    ax.set_title(
        title or "Rank of each attribute group by method (number = rank, deeper = higher)",
        fontsize=10,
    )
    _heat_legend(fig, legend, positive_label, negative_label)
    return fig


_HUES = ("Blues", "Reds", "Greys")


def _heat_colours(mat: np.ndarray, dirs: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """RGBA per cell: the hue from the direction (blue +, red -, grey none), the depth from the
    rank; white where there is no rank."""
    blues, reds, greys = (matplotlib.colormaps[c] for c in _HUES)
    rgba = np.ones((*mat.shape, 4))
    for (r, c), s in np.ndenumerate(strength):
        if not np.isfinite(mat[r, c]):
            continue
        level = 0.15 + 0.7 * s
        d = dirs[r, c]
        cmap = blues if d > 0 else reds if d < 0 else greys
        rgba[r, c] = cmap(level * (0.75 if cmap is greys else 1.0))
    return rgba


def _mark_ranks(ax, mat: np.ndarray, sig: np.ndarray, strength: np.ndarray) -> None:
    """Write each rank in its cell (white on deep colour); a found group gets a star, bold
    text and a black frame."""
    from matplotlib.patches import Rectangle

    for (r, c), v in np.ndenumerate(mat):
        if not np.isfinite(v):
            continue
        star = sig[r, c] > 0
        dark = 0.15 + 0.7 * strength[r, c] > 0.55
        ax.text(
            c,
            r,
            f"{v:g}{'*' if star else ''}",
            ha="center",
            va="center",
            fontsize=7,
            fontweight="bold" if star else "normal",
            color="white" if dark else "black",
        )
        if star:
            ax.add_patch(
                Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.2)
            )


def _heat_legend(fig: Figure, note: str, positive_label: str, negative_label: str) -> None:
    """The colour key in a strip under the plot, the caller's note under it, then the layout."""
    from matplotlib.patches import Patch

    blues, reds, greys = (matplotlib.colormaps[c] for c in _HUES)
    handles = [
        Patch(color=blues(0.7), label=positive_label),
        Patch(color=reds(0.7), label=negative_label),
        Patch(color=greys(0.5), label="no direction (unsigned method)"),
        Patch(facecolor="white", edgecolor="black", label="* found (Holm p < α / CI > 0)"),
    ]
    height_in = fig.get_figheight()
    foot = (0.55 if note else 0.35) / height_in  # legend (and note) strip, in figure units
    fig.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, (0.2 if note else 0.02) / height_in),
        ncol=4,
        fontsize=7,
        frameon=False,
    )
    if note:
        fig.text(0.5, 0.04 / height_in, note, ha="center", va="bottom", fontsize=7, color="#444")
    _tight(fig, rect=(0, foot, 1, 1))


def _aligned(values: pd.DataFrame | None, like: pd.DataFrame) -> np.ndarray:
    """``values`` reindexed to ``like``'s rows and columns as floats (NaN where missing)."""
    if values is None or values.empty:
        return np.full(like.shape, np.nan)
    v = values.reindex(index=like.index, columns=like.columns)
    return v.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)


def value_bars(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    colors: Sequence[str] | None = None,
    reference: float | None = None,
    reference_label: str = "",
    xlim: tuple[float, float] | None = None,
    xlabel: str = "",
    title: str = "",
) -> Figure | None:
    """Horizontal bars, the first label on top, with an optional dashed reference line (e.g.
    each configuration's mAP against the full model's)."""
    if len(labels) == 0:
        return None
    fig = Figure(figsize=(7, 0.28 * len(labels) + 1.2))
    ax = fig.subplots()
    colors = list(colors) if colors is not None else ["#1f77b4"] * len(labels)
    ax.barh([short_label(x) for x in labels][::-1], list(values)[::-1], color=colors[::-1])
    if reference is not None:
        ax.axvline(reference, color="k", lw=0.8, ls="--", label=reference_label)
        ax.legend(loc="lower right", fontsize=8)
    if xlim is not None:
        ax.set_xlim(*xlim)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    _tight(fig)
    return fig


def interval_bars(
    labels: Sequence[str],
    values: Sequence[float],
    ci_low: Sequence[float],
    ci_high: Sequence[float],
    *,
    xlabel: str = "",
    title: str = "",
) -> Figure | None:
    """Signed horizontal bars with their CIs, the first label on top: blue where the value is
    positive, red where it is negative, a line at 0 (e.g. the leave-one-group-out ΔmAP)."""
    if len(labels) == 0:
        return None
    val = np.asarray(values, float)[::-1]
    err = np.vstack([val - np.asarray(ci_low, float)[::-1], np.asarray(ci_high, float)[::-1] - val])
    fig = Figure(figsize=(7, 0.35 * len(labels) + 1.3))
    ax = fig.subplots()
    colors = ["#1f77b4" if v > 0 else "#d62728" for v in val]
    ax.barh([short_label(x) for x in labels][::-1], val, xerr=err, color=colors, capsize=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    _tight(fig)
    return fig


def prevalence_scatter(prev: pd.DataFrame, *, x: str, y: str, title: str = "") -> Figure | None:
    """Per-instance effect against population-level importance: a rare strong group stands out."""
    if prev is None or prev.empty or x not in prev.columns or y not in prev.columns:
        return None
    df = _finite(prev, [x, y])
    if df.empty:
        return None
    fig = Figure(figsize=(_WIDTH * 0.8, 5.0))
    ax = fig.subplots()
    ax.scatter(df[x].to_numpy(float), df[y].to_numpy(float), color="#1f77b4")
    for _, row in df.iterrows():
        ax.annotate(
            str(row["attribute"]),
            (float(row[x]), float(row[y])),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title or "Effect vs. prevalence", fontsize=10)
    _tight(fig)
    return fig


__all__ = [
    "consensus_heatmap",
    "glm_forest",
    "importance_bars",
    "interval_bars",
    "png_bytes",
    "prevalence_scatter",
    "shap_summary",
    "short_label",
    "value_bars",
]

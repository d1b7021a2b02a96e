"""The figures of both report pages (`attrimp study analyze` and `attrimp study run`), drawn
from the same tidy tables that go into report.json.

Figures are built with :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot), so no
global state or GUI backend is touched and the battery can run in a worker or a headless CI.
Every function returns a Figure or None when its table is empty; :func:`png_bytes` renders it.
"""

from __future__ import annotations

import io
import textwrap
import warnings
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # belt and braces: nothing here may open a window

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

_WIDTH = 8.0

# --------------------------------------------------------------------------- one visual language
#: The one diverging palette of every figure: blue = helps / raises the outcome, orange = hurts /
#: lowers it, a near-white middle for "about zero". Blue-orange (ColorBrewer PuOr/BrBG family) is
#: told apart under every common colour-vision deficiency, unlike blue-red or green-red.
DIVERGING_COLOURS = (
    "#b35806", "#e08214", "#fdb863", "#fee0b6", "#f7f7f7", "#d1e5f0", "#92c5de", "#4393c3",
    "#2166ac",
)  # fmt: skip
HELPS = "#2166ac"
HURTS = "#c4620b"
#: no direction, or a CI that includes 0
NEUTRAL = "#9a9a9a"
#: categorical colours for models and configuration kinds (Paul Tol's muted set, without its
#: blue and orange so that nothing categorical reads as helps / hurts)
_COLORS = {"rf": "#44AA99", "xgb": "#AA4499"}
_FALLBACK = ["#DDCC77", "#117733", "#882255", "#999933", "#CC6677"]


def diverging_cmap():
    """The palette as a matplotlib colormap (0 = hurts, 0.5 = neutral white, 1 = helps)."""
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("attrimp_diverging", DIVERGING_COLOURS)


def direction_colour(value: float, lo: float | None = None, hi: float | None = None) -> str:
    """HELPS for a positive value, HURTS for a negative one, NEUTRAL for 0 / NaN or when a
    given CI [lo, hi] includes 0 (the direction is then not established)."""
    if value is None or not np.isfinite(value) or value == 0:
        return NEUTRAL
    if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi) and lo <= 0 <= hi:
        return NEUTRAL
    return HELPS if value > 0 else HURTS


# --------------------------------------------------------------------------- rendering

#: SVG larger than this is replaced by a 2x PNG (a scatter of thousands of points)
SVG_LIMIT = 250_000
_PAD = 0.08


def png_bytes(fig: Figure, *, dpi: int = 110) -> bytes:
    """PNG of a figure without the software/date metadata, so equal figures give equal bytes;
    ``bbox_inches="tight"`` keeps any text the layout could not fit inside the image."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(
        buf,
        format="png",
        dpi=dpi,
        metadata={"Software": None},
        bbox_inches="tight",
        pad_inches=_PAD,
    )
    return buf.getvalue()


def svg_bytes(fig: Figure) -> bytes:
    """SVG of a figure, text drawn as glyph paths (every browser shows the fonts measured here,
    so nothing drawn can overflow), without date or random ids (equal figures, equal bytes)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "attrimp"}):
        fig.savefig(
            buf, format="svg", metadata={"Date": None}, bbox_inches="tight", pad_inches=_PAD
        )
    return buf.getvalue()


def figure_bytes(fig: Figure) -> bytes:
    """The figure for a page: vector SVG where that stays under :data:`SVG_LIMIT` bytes (bars,
    heat maps), else PNG at twice the screen resolution (220 dpi) so it stays sharp when opened
    full size. :func:`figure_suffix` tells the two apart."""
    svg = svg_bytes(fig)
    return svg if len(svg) <= SVG_LIMIT else png_bytes(fig, dpi=220)


def figure_suffix(data: bytes) -> str:
    """``".svg"`` for SVG bytes, ``".png"`` otherwise (the file name and MIME type to use)."""
    head = data[:256].lstrip()
    return ".svg" if head.startswith((b"<?xml", b"<svg")) else ".png"


def figure_mime(data: bytes) -> str:
    """The MIME type of figure bytes (``image/svg+xml`` or ``image/png``)."""
    return "image/svg+xml" if figure_suffix(data) == ".svg" else "image/png"


#: tick labels longer than this are shortened with an ellipsis (the tables carry full names)
LABEL_CHARS = 32


def short_label(text: object, limit: int = LABEL_CHARS) -> str:
    """A tick label that fits beside a plot: long user names keep their start and end."""
    s = " ".join(str(text).split())
    if len(s) <= limit:
        return s
    keep = limit - 1
    return s[: keep - keep // 3] + "…" + s[-(keep // 3) :]


def wrap_note(text: str, fig: Figure, fontsize: float = 7.0) -> str:
    """A footnote wrapped to the figure's width (DejaVu Sans averages ~0.6 em per character; 0.65
    leaves a margin), so it never runs past the canvas however long the caller's note is."""
    chars = max(30, int(fig.get_figwidth() * 72 / (0.65 * fontsize)))
    return "\n".join(textwrap.wrap(" ".join(text.split()), chars))


def _figure(width: float, height: float) -> Figure:
    """A figure with constrained layout: titles, tick labels, legends placed "outside" and
    ``supxlabel`` footnotes are measured into the canvas rather than clipped."""
    return Figure(figsize=(width, height), layout="constrained")


def _tight(fig: Figure, **kwargs: object) -> None:
    """Kept for callers that draw their own figures: constrained layout does the work now; a
    figure without it gets tight_layout, quietly."""
    if fig.get_layout_engine() is not None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout(**kwargs)


def _model_color(model: str, i: int) -> str:
    return _COLORS.get(model, _FALLBACK[i % len(_FALLBACK)])


def _direction_legend(ax, *, positive: str, negative: str, neutral: str | None, **kw) -> None:
    """The key of the direction colours."""
    from matplotlib.patches import Patch

    handles = [Patch(color=HELPS, label=positive), Patch(color=HURTS, label=negative)]
    if neutral:
        handles.append(Patch(color=NEUTRAL, label=neutral))
    ax.legend(handles=handles, fontsize=7, **kw)


def _finite(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    keep = np.ones(len(df), dtype=bool)
    for c in cols:
        keep &= np.isfinite(pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float))
    return df.loc[keep]


def glm_forest(coefficients: pd.DataFrame, *, title: str = "", xlabel: str = "") -> Figure | None:
    """Forest plot: one row per attribute level (against its reference), estimate and CI,
    coloured by direction (blue raises, orange lowers the outcome, grey: the CI includes 0)."""
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
    fig = _figure(_WIDTH, 1.6 + 0.22 * len(df))
    ax = fig.subplots()
    coef = df["coef"].to_numpy(float)
    lo = df["ci_low"].to_numpy(float)
    hi = df["ci_high"].to_numpy(float)
    colors = [direction_colour(c, a, b) for c, a, b in zip(coef, lo, hi)]
    ax.hlines(y, lo, hi, colors=colors, linewidth=1.5)
    ax.scatter(coef, y, c=colors, s=18, zorder=3)
    ax.axvline(0.0, color="grey", linewidth=0.8, linestyle="--")
    # a thin band per attribute group, so the levels of one group read together (no colour)
    starts = np.flatnonzero(
        np.r_[True, df["attribute"].to_numpy()[1:] != df["attribute"].to_numpy()[:-1]]
    )
    for k, s0 in enumerate(starts):
        if k % 2 == 1:
            s1 = starts[k + 1] if k + 1 < len(starts) else len(df)
            ax.axhspan(y[s1 - 1] - 0.5, y[s0] + 0.5, color="#f2f2f2", zorder=0, linewidth=0)
    ax.set_yticks(y)
    ax.set_yticklabels([short_label(x) for x in labels], fontsize=7)
    ax.set_xlabel(xlabel or "coefficient (link scale) with 95% CI")
    ax.set_title(title or "GLM coefficients against each attribute's reference level", fontsize=10)
    ax.set_ylim(-1, len(df))
    _direction_legend(
        ax,
        positive="raises the outcome (CI > 0)",
        negative="lowers it (CI < 0)",
        neutral="CI includes 0",
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0 + 0.25 / fig.get_figheight()),
        ncol=3,
        frameon=False,
    )
    return fig


def importance_bars(importance: pd.DataFrame, *, title: str = "") -> Figure | None:
    """Grouped horizontal bars: permutation importance per attribute group and model, with CIs
    (models in categorical colours that never read as helps / hurts)."""
    if importance is None or importance.empty:
        return None
    df = importance.copy()
    models = list(dict.fromkeys(df["model"]))
    order = df.groupby("attribute", sort=False)["importance"].mean().sort_values(ascending=True)
    attrs = list(order.index)
    fig = _figure(_WIDTH, 1.4 + 0.32 * len(attrs) * max(1, len(models)) / 1.5)
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
    ax.legend(fontsize=8, loc="lower right", title="model", title_fontsize=8)
    return fig


def shap_summary(
    group_table: pd.DataFrame, level_table: pd.DataFrame | None = None, *, title: str = ""
) -> Figure | None:
    """Left: mean |SHAP| per attribute group and model. Right: signed mean SHAP per level, each
    dot named by its level and coloured by direction."""
    if group_table is None or group_table.empty:
        return None
    has_levels = level_table is not None and not level_table.empty
    fig = _figure(
        _WIDTH + (4.0 if has_levels else 0.0), 1.8 + 0.3 * group_table["attribute"].nunique()
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
    ax.legend(fontsize=8, loc="lower right", title="model", title_fontsize=8)
    if has_levels:
        _shap_levels(axes[1], level_table, attrs, models, ax.get_ylim())
    return fig


def _shap_levels(ax, level_table: pd.DataFrame, attrs: list, models: list, ylim) -> None:
    """The direction panel: one dot per level (size ~ rows), named, blue raises / orange lowers."""
    lv = level_table.copy()
    first = models[0] if models else lv["model"].iloc[0]
    if "model" in lv.columns and (lv["model"] == first).any():
        lv = lv[lv["model"] == first]
    rank = {a: i for i, a in enumerate(attrs)}
    lv = lv[lv["attribute"].isin(rank)]
    if "is_reference" in lv.columns:  # the reference level's SHAP is ~0 by construction
        lv = lv[~lv["is_reference"].fillna(False).astype(bool)]
    ys = lv["attribute"].map(rank).to_numpy(float)
    vals = lv["mean_shap"].to_numpy(float)
    sizes = 8 + 40 * np.sqrt(lv["n"].to_numpy(float) / max(1.0, float(lv["n"].max())))
    ax.scatter(vals, ys, s=sizes, c=[direction_colour(v) for v in vals], alpha=0.8)
    top = np.nanmax(np.abs(vals)) if np.isfinite(vals).any() else 0.0
    for k, (v, yy, name) in enumerate(zip(vals, ys, lv["level"].astype(str))):
        if np.isfinite(v) and abs(v) >= 0.05 * top:  # near-zero levels crowd at 0 unnamed
            ax.annotate(
                short_label(name, 14), (v, yy), fontsize=6, xytext=(0, 4 if k % 2 else -9),
                textcoords="offset points", ha="center", color="#333",
            )  # fmt: skip
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_yticks(np.arange(len(attrs)))
    ax.set_yticklabels([])
    ax.set_ylim(ylim)
    ax.set_xlabel(f"mean signed SHAP per level ({first}; dot size ~ rows)")
    ax.set_title("Direction of each level", fontsize=10)
    _direction_legend(
        ax, positive="raises the prediction", negative="lowers it", neutral=None,
        loc="lower right",
    )  # fmt: skip


def consensus_heatmap(
    ranks: pd.DataFrame,
    direction: pd.DataFrame | None = None,
    significant: pd.DataFrame | None = None,
    *,
    effects: pd.DataFrame | None = None,
    title: str = "",
    legend: str = "",
    positive_label: str = "raises the outcome",
    negative_label: str = "lowers it",
) -> Figure | None:
    """Methods (rows) x attribute groups (columns, consensus order).

    Each cell shows the method's rank of the group (1 = most important). Its colour is the
    direction (blue: the group raises the outcome, orange: lowers it, grey: the method has no
    sign) and the depth of the colour is the size of the effect relative to the largest in the
    row (``effects``: the signed effect, or an unsigned score where the method has no sign), so
    an effect of -3e-6 beside one of 0.002 is near-white whatever its rank. Without ``effects``
    every signed cell gets one middle depth: rank alone never sets the colour. A star plus a
    black frame mark the groups the method finds. ``direction``, ``significant`` and
    ``effects`` are aligned with ``ranks`` (NaN = none)."""
    if ranks is None or ranks.empty:
        return None
    mat = ranks.to_numpy(float)
    n_rows, n_cols = mat.shape
    fig = _figure(max(_WIDTH, 0.6 * n_cols + 2.5), 2.4 + 0.5 * n_rows)
    ax = fig.subplots()
    rgba = _heat_colours(mat, _aligned(direction, ranks), _row_sizes(_aligned(effects, ranks)))
    ax.imshow(rgba, aspect="auto", interpolation="nearest")
    ax.set_xticks(np.arange(n_cols))
    ax.set_xticklabels([short_label(c) for c in ranks.columns], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(np.arange(n_rows))
    ax.set_yticklabels([short_label(i) for i in ranks.index], fontsize=8)
    _mark_ranks(ax, mat, _aligned(significant, ranks), rgba)
    ax.set_title(title or "Rank of each attribute group by method (number = rank)", fontsize=10)
    _heat_legend(fig, ax, legend, positive_label, negative_label, effects is not None)
    return fig


def _row_sizes(eff: np.ndarray) -> np.ndarray:
    """|effect| / the row's largest |effect| (methods have different units); NaN where none."""
    size = np.full(eff.shape, np.nan)
    for r in range(eff.shape[0]):
        row = np.abs(eff[r])
        top = np.nanmax(row) if np.isfinite(row).any() else np.nan
        if np.isfinite(top) and top > 0:
            size[r] = row / top
    return size


def _heat_colours(mat: np.ndarray, dirs: np.ndarray, size: np.ndarray) -> np.ndarray:
    """RGBA per cell: the diverging palette at 0.5 +/- 0.45 x size (blue +, orange -), grey
    depth by size for a method without sign, white where there is no rank."""
    from matplotlib.colors import to_rgba

    cmap = diverging_cmap()
    greys = matplotlib.colormaps["Greys"]
    rgba = np.ones((*mat.shape, 4))
    for (r, c), v in np.ndenumerate(mat):
        if not np.isfinite(v):
            continue
        s = size[r, c] if np.isfinite(size[r, c]) else 0.6
        d = dirs[r, c]
        if np.isfinite(d) and d != 0:
            rgba[r, c] = cmap(0.5 + 0.45 * np.sign(d) * s)
        else:
            rgba[r, c] = greys(0.05 + 0.45 * s) if np.isfinite(size[r, c]) else to_rgba("#cfcfcf")
    return rgba


def _mark_ranks(ax, mat: np.ndarray, sig: np.ndarray, rgba: np.ndarray) -> None:
    """Write each rank in its cell (white on a dark cell); a found group gets a star, bold
    text and a black frame. Ranks print as integers, "4.5" only for a true tie."""
    from matplotlib.patches import Rectangle

    for (r, c), v in np.ndenumerate(mat):
        if not np.isfinite(v):
            continue
        star = sig[r, c] > 0
        lum = 0.299 * rgba[r, c, 0] + 0.587 * rgba[r, c, 1] + 0.114 * rgba[r, c, 2]
        ax.text(
            c,
            r,
            f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}",
            ha="center",
            va="center",
            fontsize=7,
            fontweight="bold" if star else "normal",
            color="white" if lum < 0.5 else "black",
        )
        if star:
            ax.text(c + 0.42, r - 0.42, "*", ha="right", va="top", fontsize=8, fontweight="bold",
                    color="white" if lum < 0.5 else "black")  # fmt: skip
            ax.add_patch(
                Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.2)
            )


def _heat_legend(
    fig: Figure, ax, note: str, positive_label: str, negative_label: str, sized: bool
) -> None:
    """The colour key outside the plot and the caller's note wrapped above it as the axes'
    x label; constrained layout measures both into the canvas."""
    from matplotlib.patches import Patch

    handles = [
        Patch(color=HELPS, label=positive_label),
        Patch(color=HURTS, label=negative_label),
        Patch(color="#bdbdbd", label="no direction (unsigned method)"),
        Patch(facecolor="white", edgecolor="black", label="* found"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=7, frameon=False)
    depth = (
        "Colour depth = the size of the effect relative to the largest in its row (near-white: "
        "about zero). "
        if sized
        else ""
    )
    text = depth + (note or "")
    if text:
        ax.set_xlabel(wrap_note(text, fig), fontsize=7, color="#444", labelpad=6)


def _aligned(values: pd.DataFrame | None, like: pd.DataFrame) -> np.ndarray:
    """``values`` reindexed to ``like``'s rows and columns as floats (NaN where missing)."""
    if values is None or values.empty:
        return np.full(like.shape, np.nan)
    v = values.reindex(index=like.index, columns=like.columns)
    return v.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)


def method_effects(
    method_scores: pd.DataFrame, shap_levels: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Methods x groups: the effect sizes a consensus heat map colours by. Each method's score
    (its importance, >= 0) signed by its direction; SHAP's two-level groups take the signed mean
    SHAP of their level (averaged over models), so +0.0023 and -0.0023 that average to -3e-6
    give a near-white cell, not a deep one."""
    if method_scores is None or method_scores.empty:
        return pd.DataFrame()
    ms = method_scores.copy()
    d = pd.to_numeric(ms.get("direction"), errors="coerce")
    score = pd.to_numeric(ms["score"], errors="coerce").abs()
    ms["effect"] = np.where(np.isfinite(d), score * np.sign(d), score)
    out = ms.pivot_table(index="method", columns="attribute", values="effect", sort=False)
    if shap_levels is not None and not shap_levels.empty and "shap" in out.index:
        lv = shap_levels
        if "is_reference" in lv.columns:
            lv = lv[~lv["is_reference"].astype(bool)]
        for a, part in lv.groupby("attribute", sort=False):
            per_level = part.groupby("level", sort=False)["mean_shap"].mean()
            if len(per_level) == 1 and a in out.columns:
                out.loc["shap", a] = float(per_level.iloc[0])
    return out


def value_bars(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    colors: Sequence[str] | None = None,
    legend: Sequence[tuple[str, str]] = (),
    reference: float | None = None,
    reference_label: str = "",
    xlim: tuple[float, float] | None = None,
    xlabel: str = "",
    title: str = "",
) -> Figure | None:
    """Horizontal bars, the first label on top, with an optional dashed reference line (e.g.
    each configuration's mAP against the full model's); ``legend`` explains the colours as
    ``(colour, label)`` pairs."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if len(labels) == 0:
        return None
    fig = _figure(7, 0.26 * len(labels) + 1.5)
    ax = fig.subplots()
    colors = list(colors) if colors is not None else [_FALLBACK[1]] * len(labels)
    ax.barh([short_label(x) for x in labels][::-1], list(values)[::-1], color=colors[::-1])
    ax.tick_params(axis="y", labelsize=8)
    handles = [Patch(color=c, label=lab) for c, lab in legend]
    if reference is not None:
        ax.axvline(reference, color="k", lw=0.8, ls="--")
        handles.append(Line2D([], [], color="k", lw=0.8, ls="--", label=reference_label))
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=7)
    if xlim is not None:
        ax.set_xlim(*xlim)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    return fig


def interval_bars(
    labels: Sequence[str],
    values: Sequence[float],
    ci_low: Sequence[float],
    ci_high: Sequence[float],
    *,
    xlabel: str = "",
    title: str = "",
    positive_label: str = "helps (CI > 0)",
    negative_label: str = "hurts (CI < 0)",
) -> Figure | None:
    """Signed horizontal bars with their CIs, the first label on top: blue where the CI is
    above 0, orange where below, grey where it includes 0, a line at 0 and the key (e.g. the
    leave-one-group-out ΔmAP)."""
    if len(labels) == 0:
        return None
    val = np.asarray(values, float)[::-1]
    lo = np.asarray(ci_low, float)[::-1]
    hi = np.asarray(ci_high, float)[::-1]
    err = np.vstack([val - lo, hi - val])
    err = np.where(np.isfinite(err), np.clip(err, 0, None), 0.0)
    fig = _figure(7, 0.32 * len(labels) + 1.6)
    ax = fig.subplots()
    colors = [direction_colour(v, a, b) for v, a, b in zip(val, lo, hi)]
    ax.barh([short_label(x) for x in labels][::-1], val, xerr=err, color=colors, capsize=3)
    ax.tick_params(axis="y", labelsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    _direction_legend(
        ax, positive=positive_label, negative=negative_label, neutral="CI includes 0",
        loc="best",
    )  # fmt: skip
    return fig


def counterfactual_bars(
    configs: pd.DataFrame, full_map: float, *, title: str = ""
) -> Figure | None:
    """ΔmAP = full mAP minus the mAP when a group's annotation is swapped to another value for
    every query and gallery image (the ``cf:<group>=<value>`` configurations), one row per
    swap, grouped by attribute group: positive (blue) = the true value helps, negative (orange)
    = the swapped value does better."""
    if configs is None or configs.empty or not np.isfinite(full_map):
        return None
    cf = configs[configs["config"].astype(str).str.startswith("cf:")]
    cf = _finite(cf, ["mAP"])
    if cf.empty:
        return None
    parts = cf["config"].str.removeprefix("cf:").str.split("=", n=1, expand=True)
    df = pd.DataFrame(
        {"group": parts[0], "value": parts[1], "delta": full_map - cf["mAP"].to_numpy(float)}
    )
    order = df.groupby("group", sort=False)["delta"].apply(lambda d: d.abs().max())
    df["_o"] = df["group"].map(
        {g: i for i, g in enumerate(order.sort_values(ascending=False).index)}
    )
    df = df.sort_values(["_o", "delta"], ascending=[True, False], kind="stable")
    y = np.arange(len(df))[::-1]
    fig = _figure(7, 0.2 * len(df) + 1.7)
    ax = fig.subplots()
    delta = df["delta"].to_numpy(float)
    ax.barh(y, delta, color=[direction_colour(v) for v in delta], height=0.75)
    ax.set_yticks(y)
    ax.set_yticklabels(
        [short_label(f"{g} → {v}") for g, v in zip(df["group"], df["value"])], fontsize=7
    )
    codes = df["_o"].to_numpy()
    for k in np.flatnonzero(codes[1:] != codes[:-1]):
        ax.axhline(y[k] - 0.5, color="#bbb", lw=0.6)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_ylim(-0.7, len(df) - 0.3)
    ax.set_xlabel("ΔmAP = full mAP − mAP with the group's annotation swapped to the value")
    ax.set_title(title or "Counterfactual: each group's attribute swapped", fontsize=10)
    _direction_legend(
        ax, positive="the true value helps", negative="the swapped value does better",
        neutral=None, loc="best",
    )  # fmt: skip
    return fig


def prevalence_scatter(
    prev: pd.DataFrame,
    *,
    x: str = "prevalence",
    y: str = "per_instance_effect",
    title: str = "",
    max_labels: int = 20,
) -> Figure | None:
    """Per-instance effect against prevalence, one dot per non-reference level with its CI:
    a rare strong level stands out at the left, far from 0. Coloured by direction (grey: the
    CI includes 0); the ``max_labels`` levels with the largest |effect| are named."""
    if prev is None or prev.empty or x not in prev.columns or y not in prev.columns:
        return None
    df = _finite(prev, [x, y])
    if "is_reference" in df.columns:
        df = df[~df["is_reference"].fillna(False).astype(bool)]
    if df.empty:
        return None
    from matplotlib.ticker import PercentFormatter

    fig = _figure(_WIDTH * 0.85, 5.0)
    ax = fig.subplots()
    xs, ys = df[x].to_numpy(float), df[y].to_numpy(float)
    lo = df.get("effect_ci_low", df[y]).to_numpy(float)
    hi = df.get("effect_ci_high", df[y]).to_numpy(float)
    colors = [direction_colour(v, a, b) for v, a, b in zip(ys, lo, hi)]
    err = np.where(np.isfinite(np.vstack([ys - lo, hi - ys])), np.vstack([ys - lo, hi - ys]), 0)
    ax.errorbar(xs, ys, yerr=np.clip(err, 0, None), fmt="none", ecolor="#ccc", lw=0.8, zorder=1)
    ax.scatter(xs, ys, c=colors, s=22, zorder=3, edgecolors="white", linewidths=0.4)
    names = [f"{a} = {lv}" for a, lv in zip(df["attribute"], df.get("level", df["attribute"]))]
    for i in np.argsort(-np.abs(ys))[:max_labels]:
        ax.annotate(
            short_label(names[i], 24), (xs[i], ys[i]), fontsize=6, xytext=(3, 3),
            textcoords="offset points", color="#333",
        )  # fmt: skip
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    if x.startswith("prevalence"):
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_xlabel("prevalence (share of rows at the level)" if x == "prevalence" else x)
    ax.set_ylabel(
        "per-instance effect vs the reference level (95% CI)" if y == "per_instance_effect" else y
    )
    ax.set_title(title or "Effect vs. prevalence", fontsize=10)
    _direction_legend(
        ax, positive="raises the outcome", negative="lowers it", neutral="CI includes 0",
        loc="best",
    )  # fmt: skip
    return fig


# --------------------------------------------------------------------------- comparisons of arms

#: one colour per arm (Paul Tol's muted set without its blue and orange, so an arm never reads as
#: helps / hurts) and one marker per arm, so arms stay apart in greyscale and for every
#: colour-vision deficiency
ARM_COLOURS = ("#117733", "#882255", "#44AA99", "#AA4499", "#999933", "#332288", "#CC6677")
ARM_MARKERS = ("o", "s", "D", "^", "v", "P", "X")

#: how each verdict of a between-arm difference is drawn: (colour, marker, filled, label)
VERDICT_STYLES = {
    "differs": ("#222222", "D", True, "differs (Holm p < alpha)"),
    "negligible": ("#44AA99", "o", True, "negligible (within ±margin)"),
    "inconclusive": (NEUTRAL, "o", False, "inconclusive"),
    "not testable": (NEUTRAL, "x", True, "not testable"),
}


def _comparison_label(attribute: object, level: object) -> str:
    """A row of a comparison figure: ``group = level`` (the level the effect is about), or the
    group alone where it has no level (a table of paired effects)."""
    lv = "" if level is None or (isinstance(level, float) and not np.isfinite(level)) else level
    if str(lv) in ("", str(attribute)):
        return short_label(attribute)
    return short_label(f"{attribute} = {lv}")


def _numbers(df: pd.DataFrame, col: str) -> np.ndarray:
    """A column as floats (NaN where missing or not a number; all NaN when absent)."""
    if col not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)


def _interval(ax, x, lo, hi, y, *, colour: str, marker: str, filled: bool, label=None) -> bool:
    """One estimate with its CI at height y (the CI only where both bounds are finite); False
    when the estimate itself is missing (nothing drawn)."""
    if not np.isfinite(x):
        return False
    if np.isfinite(lo) and np.isfinite(hi):
        ax.hlines(y, lo, hi, colors=colour, linewidth=1.4, zorder=2)
    if marker in ("x", "+"):  # line markers have no face: colour them whole (no warning)
        ax.scatter([x], [y], s=26, marker=marker, c=colour, linewidths=1.1, zorder=3, label=label)
    else:
        face = colour if filled else "white"
        ax.scatter([x], [y], s=26, marker=marker, facecolors=face, edgecolors=colour,
                   linewidths=1.1, zorder=3, label=label)  # fmt: skip
    return True


def comparison_forest(
    effects: pd.DataFrame,
    order: Sequence[str],
    arms: Sequence[str],
    *,
    title: str = "",
    xlabel: str = "",
) -> Figure | None:
    """Every group's effect in every arm side by side: one row per group (``order``, top
    first), each arm's estimate and 95% CI dodged around the row in the arm's own colour and
    marker. Where ``effects`` has a finite ``relative`` column (the effect as a share of the
    arm's oracle gain), a second panel shows it on the same rows. None when no effect is
    finite."""
    if effects is None or effects.empty or not np.isfinite(_numbers(effects, "effect")).any():
        return None
    rows = [a for a in order if a in set(effects["attribute"])]
    rel = np.isfinite(_numbers(effects, "relative")).any()
    n = len(rows)
    fig = _figure(_WIDTH + (3.5 if rel else 0.0), 1.7 + 0.22 * n * max(2, len(arms)) / 1.6)
    axes = fig.subplots(1, 2 if rel else 1, squeeze=False, sharey=True)[0]
    panels = [("effect", "ci_low", "ci_high")]
    if rel:
        panels.append(("relative", "relative_low", "relative_high"))
    y0 = np.arange(n)[::-1].astype(float)
    step = 0.7 / max(1, len(arms))
    pos = {a: y0 + (len(arms) - 1) / 2 * step - i * step for i, a in enumerate(arms)}
    for ax, (val, lo, hi) in zip(axes, panels):
        for i, arm in enumerate(arms):
            sub = effects[effects["arm"].astype(str) == str(arm)].set_index("attribute")
            sub = sub[~sub.index.duplicated()].reindex(rows)
            colour, marker = ARM_COLOURS[i % len(ARM_COLOURS)], ARM_MARKERS[i % len(ARM_MARKERS)]
            for x, a, b, y in zip(
                _numbers(sub, val), _numbers(sub, lo), _numbers(sub, hi), pos[arm]
            ):
                _interval(ax, x, a, b, y, colour=colour, marker=marker, filled=True)
        ax.axvline(0.0, color="grey", linewidth=0.8, linestyle="--")
        ax.tick_params(axis="x", labelsize=7)
        for k in range(1, n, 2):  # a pale band on every other row, so each row reads as one
            ax.axhspan(y0[k] - 0.5, y0[k] + 0.5, color="#f4f4f4", zorder=0, linewidth=0)
        ax.set_ylim(-0.6, n - 0.4)
    first = effects.drop_duplicates("attribute").set_index("attribute")
    labels = [_comparison_label(a, first["level"].get(a) if "level" in first else None)
              for a in rows]  # fmt: skip
    axes[0].set_yticks(y0)
    axes[0].set_yticklabels(labels, fontsize=7)
    axes[0].set_xlabel(xlabel or "effect in each arm (95% CI)", fontsize=8)
    axes[0].set_title(title or "Each group's effect, arm by arm", fontsize=10)
    if rel:
        from matplotlib.ticker import PercentFormatter

        axes[1].xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        axes[1].set_xlabel("share of the arm's oracle gain (95% CI)", fontsize=8)
        axes[1].set_title("Relative to each arm's own gain", fontsize=10)
    _arm_legend(fig, arms)
    return fig


def _arm_legend(fig: Figure, arms: Sequence[str]) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=ARM_COLOURS[i % len(ARM_COLOURS)], lw=1.4,
               marker=ARM_MARKERS[i % len(ARM_MARKERS)], markersize=5, label=short_label(a, 40))
        for i, a in enumerate(arms)
    ]  # fmt: skip
    fig.legend(handles=handles, loc="outside upper center", ncol=min(len(arms), 4), fontsize=7,
               frameon=False, title="arm", title_fontsize=7)  # fmt: skip


def comparison_differences(
    differences: pd.DataFrame,
    order: Sequence[str],
    *,
    title: str = "",
    xlabel: str = "",
) -> Figure | None:
    """Each arm pair's difference of effects per group with its 95% CI (one panel per pair,
    rows in ``order``, top first), the marker showing the verdict (differs / negligible /
    inconclusive / not testable) and the ±margin within which a difference is negligible
    shaded. None when no difference is finite."""
    if (
        differences is None
        or differences.empty
        or not np.isfinite(_numbers(differences, "difference")).any()
    ):
        return None
    rows = [a for a in order if a in set(differences["attribute"])]
    pairs = list(
        dict.fromkeys(zip(differences["arm_a"].astype(str), differences["arm_b"].astype(str)))
    )
    ncol = min(len(pairs), 3)
    nrow = -(-len(pairs) // ncol)
    n = len(rows)
    fig = _figure(max(_WIDTH, 3.0 * ncol + 2.0), nrow * (1.0 + 0.24 * n) + 1.0)
    axes = fig.subplots(nrow, ncol, squeeze=False, sharey=True).ravel()
    y0 = np.arange(n)[::-1].astype(float)
    margin = _numbers(differences, "margin")
    margin = float(np.nanmax(margin)) if np.isfinite(margin).any() else float("nan")
    for ax, (a, b) in zip(axes, pairs):
        sub = differences[
            (differences["arm_a"].astype(str) == a) & (differences["arm_b"].astype(str) == b)
        ]
        sub = sub.set_index("attribute")
        sub = sub[~sub.index.duplicated()].reindex(rows)
        verdicts = sub["verdict"].tolist() if "verdict" in sub else [None] * n
        for x, lo, hi, y, v in zip(_numbers(sub, "difference"), _numbers(sub, "ci_low"),
                                   _numbers(sub, "ci_high"), y0, verdicts):  # fmt: skip
            colour, marker, filled, _ = VERDICT_STYLES.get(str(v), VERDICT_STYLES["inconclusive"])
            _interval(ax, x, lo, hi, y, colour=colour, marker=marker, filled=filled)
        if np.isfinite(margin) and margin > 0:
            ax.axvspan(-margin, margin, color="#e6e6e6", zorder=0, linewidth=0)
        ax.axvline(0.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_ylim(-0.6, n - 0.4)
        ax.set_title(f"{short_label(a, 40)}\n− {short_label(b, 40)}", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    for ax in axes[len(pairs) :]:
        ax.set_visible(False)
    first = differences.drop_duplicates("attribute").set_index("attribute")
    labels = [_comparison_label(a, first["level"].get(a) if "level" in first else None)
              for a in rows]  # fmt: skip
    for ax in axes[::ncol]:
        ax.set_yticks(y0)
        ax.set_yticklabels(labels, fontsize=7)
    fig.supxlabel(xlabel or "difference of effects, first arm − second (95% CI)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    _verdict_legend(fig, differences, margin)
    return fig


def _verdict_legend(fig: Figure, differences: pd.DataFrame, margin: float) -> None:
    """The key of the verdicts present (and of the margin band)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    present = set(differences["verdict"].astype(str)) if "verdict" in differences else set()
    handles: list = [
        Line2D([], [], color=c, marker=m, markerfacecolor=c if f else "white", lw=1.4,
               markersize=5, label=lab)
        for v, (c, m, f, lab) in VERDICT_STYLES.items() if v in present
    ]  # fmt: skip
    if np.isfinite(margin) and margin > 0:
        handles.append(Patch(color="#e6e6e6", label=f"±margin ({margin:.3g})"))
    if handles:
        fig.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 3),
                   fontsize=7, frameon=False)  # fmt: skip


__all__ = [
    "ARM_COLOURS",
    "ARM_MARKERS",
    "VERDICT_STYLES",
    "comparison_differences",
    "comparison_forest",
    "DIVERGING_COLOURS",
    "HELPS",
    "HURTS",
    "NEUTRAL",
    "consensus_heatmap",
    "counterfactual_bars",
    "direction_colour",
    "diverging_cmap",
    "figure_bytes",
    "figure_mime",
    "figure_suffix",
    "glm_forest",
    "importance_bars",
    "interval_bars",
    "method_effects",
    "png_bytes",
    "prevalence_scatter",
    "shap_summary",
    "short_label",
    "svg_bytes",
    "value_bars",
    "wrap_note",
]

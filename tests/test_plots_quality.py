"""The figures at paper quality, checked from what matplotlib draws (known inputs, known colours):

- one palette for direction everywhere: blue (HELPS) for a CI above 0, orange (HURTS) below,
  grey (NEUTRAL) where the CI includes 0, in the forest plot, the interval bars, the SHAP
  direction panel, the counterfactual bars and the prevalence scatter; models and
  configuration kinds never wear those colours;
- the consensus heat map's colour depth follows the effect's size: -3e-6 beside +/-0.0023 is
  near-white, whatever its rank (the issue's SHAP row painted it deep red);
- nothing clipped: every visible text artist lies inside the canvas once laid out (measured
  with the renderer), long footnotes included;
- SVG where small (text as glyph paths, deterministic), a 2x PNG otherwise;
- the counterfactual and effect-vs-prevalence figures reach the pages.
"""

from __future__ import annotations

import base64

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex, to_rgb
from matplotlib.text import Text

from studies import plots
from studies.plots import HELPS, HURTS, NEUTRAL

DIRECTION = {HELPS, HURTS, NEUTRAL}


def _hexes(colours) -> list[str]:
    return [to_hex(c) for c in np.atleast_2d(colours)]


def _texts_outside(fig) -> list[str]:
    """What the renderer draws outside the figure's canvas: every visible, non-empty text
    artist that is not a tick label (titles, axis labels, legends, annotations, footnotes)
    measured one by one, and the drawn tick labels through the figure's tight bbox (matplotlib
    keeps labels of ticks outside the view as invisible-in-practice artists)."""
    from matplotlib.axis import Tick
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box = fig.bbox
    out = []
    for t in fig.findobj(Text):
        if not t.get_visible() or not t.get_text().strip():
            continue
        if any(isinstance(p, Tick) for p in _parents(t)):
            continue
        e = t.get_window_extent(renderer)
        if e.x0 < box.x0 - 1 or e.y0 < box.y0 - 1 or e.x1 > box.x1 + 1 or e.y1 > box.y1 + 1:
            out.append(t.get_text()[:40])
    tight = fig.get_tightbbox(renderer)  # inches, everything drawn
    w, h = fig.get_size_inches()
    eps = 1 / fig.dpi
    if tight.x0 < -eps or tight.y0 < -eps or tight.x1 > w + eps or tight.y1 > h + eps:
        out.append(f"drawn area {tight.bounds} beyond the {w}x{h} in canvas")
    return out


def _parents(t):
    """The tick a tick label belongs to, if any (matplotlib keeps no back-reference)."""
    for ax in t.figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if t in (tick.label1, tick.label2):
                    return [tick]
    return []


def _coefficients() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "attribute": ["colour", "colour", "hat", "a_long_attribute_name_" * 3],
            "level": ["red", "white", "yes", "x"],
            "coef": [0.5, -0.4, 0.1, 0.2],
            "ci_low": [0.2, -0.7, -0.2, 0.05],
            "ci_high": [0.8, -0.1, 0.4, 0.35],
        }
    )


def test_forest_plot_colours_follow_the_sign_with_a_legend():
    fig = plots.glm_forest(_coefficients())
    ax = fig.axes[0]
    # rows are drawn top to bottom: colour=red (CI > 0), colour=white (< 0), hat (spans 0), long
    dots = _hexes(ax.collections[-1].get_facecolors())
    assert dots == [HELPS, HURTS, NEUTRAL, HELPS]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("raises" in s for s in labels) and any("lowers" in s for s in labels)
    assert any("includes 0" in s for s in labels)


def test_every_direction_figure_uses_the_one_palette_and_models_do_not():
    bars = plots.interval_bars(["a", "b", "c"], [0.1, -0.1, 0.01], [0.05, -0.2, -0.02],
                               [0.2, -0.05, 0.04])  # fmt: skip
    # bars are drawn bottom-up (first label on top)
    assert _hexes([p.get_facecolor() for p in bars.axes[0].patches]) == [NEUTRAL, HURTS, HELPS]
    configs = pd.DataFrame(
        {"config": ["full", "cf:hat=yes", "cf:hat=no"], "design": "x", "mAP": [0.8, 0.7, 0.85]}
    )
    cf = plots.counterfactual_bars(configs, 0.8)
    assert set(_hexes([p.get_facecolor() for p in cf.axes[0].patches])) == {HELPS, HURTS}
    imp = pd.DataFrame(
        {"attribute": ["a", "b"] * 2, "model": ["rf", "rf", "xgb", "xgb"],
         "importance": [0.1, 0.2, 0.1, 0.3], "ci_low": 0.0, "ci_high": 0.4}
    )  # fmt: skip
    model_colours = {to_hex(p.get_facecolor()) for p in plots.importance_bars(imp).axes[0].patches}
    assert model_colours and not model_colours & DIRECTION


def test_shap_direction_panel_is_coloured_by_sign_named_and_keyed():
    groups = pd.DataFrame({"attribute": ["g", "h"], "model": "rf", "mean_abs_shap": [0.2, 0.1]})
    levels = pd.DataFrame(
        {"attribute": ["g", "g", "h"], "level": ["up", "down", "x"], "model": "rf",
         "mean_shap": [0.3, -0.2, 0.1], "n": [10, 20, 5], "is_reference": False}
    )  # fmt: skip
    ax = plots.shap_summary(groups, levels).axes[1]
    assert _hexes(ax.collections[0].get_facecolors()) == [HELPS, HURTS, HELPS]
    assert {t.get_text() for t in ax.texts} >= {"up", "down", "x"}
    assert ax.get_legend() is not None


def test_heat_map_colour_depth_follows_effect_size_not_rank():
    ranks = pd.DataFrame([[1.0, 2.0, 3.0]], index=["shap"], columns=["a", "b", "c"])
    direction = pd.DataFrame([[1.0, -1.0, -1.0]], index=ranks.index, columns=ranks.columns)
    effects = pd.DataFrame([[0.0023, -3e-6, -0.0023]], index=ranks.index, columns=ranks.columns)
    fig = plots.consensus_heatmap(ranks, direction, effects=effects)
    cells = fig.axes[0].images[0].get_array()[0, :, :3]
    white = np.array(to_rgb("#f7f7f7"))
    assert np.abs(cells[1] - white).max() < 0.02  # -3e-6: near-neutral though ranked 2nd
    cmap = plots.diverging_cmap()
    assert np.allclose(cells[0], cmap(0.95)[:3], atol=0.01)  # +0.0023: deep blue
    assert np.allclose(cells[2], cmap(0.05)[:3], atol=0.01)  # -0.0023: deep orange
    # the rank alone (no sizes) gives one middle depth, never a deep colour for rank 1
    plain = plots.consensus_heatmap(ranks, direction).axes[0].images[0].get_array()[0, :, :3]
    assert np.allclose(plain[1], plain[2])


def test_method_effects_sign_scores_and_use_the_signed_shap_level_mean():
    ms = pd.DataFrame(
        {"attribute": ["a", "b", "a", "b"], "method": ["glm", "glm", "shap", "shap"],
         "score": [5.0, 2.0, 0.0023, 0.0023], "direction": [1.0, -1.0, 1.0, -1.0]}
    )  # fmt: skip
    levels = pd.DataFrame(
        {"attribute": ["a", "b", "b"], "level": ["on", "on", "on"], "model": ["rf", "rf", "xgb"],
         "mean_shap": [0.0023, 0.0023, -0.002306], "is_reference": False}
    )  # fmt: skip
    eff = plots.method_effects(ms, levels)
    assert eff.loc["glm", "a"] == 5.0 and eff.loc["glm", "b"] == -2.0
    assert eff.loc["shap", "a"] == pytest.approx(0.0023)
    assert eff.loc["shap", "b"] == pytest.approx(-3e-6)


def _all_figures():
    ranks = pd.DataFrame(
        [[1.0, 2.0, 3.0], [2.0, 1.0, 3.0]],
        index=["leave_one_out", "consensus"],
        columns=["upcolor", "a_very_long_attribute_name_" * 2, "hat"],
    )
    long_note = "* = found (leave-one-out: paired Wilcoxon Holm p < 0.05; batteries: " * 4
    prev = pd.DataFrame(
        {"attribute": ["hat", "colour", "colour"], "level": ["yes", "red", "a_long_level_" * 3],
         "prevalence": [0.04, 0.3, 0.5], "per_instance_effect": [-0.2, 0.05, 0.0],
         "effect_ci_low": [-0.3, 0.01, -0.02], "effect_ci_high": [-0.1, 0.09, 0.02]}
    )  # fmt: skip
    return {
        "forest": plots.glm_forest(_coefficients()),
        "heat": plots.consensus_heatmap(ranks, ranks * 0 + 1, ranks * 0, legend=long_note),
        "bars": plots.value_bars(["full", "x" * 60], [0.9, 0.5], legend=[("#555555", "ref")]),
        "prevalence": plots.prevalence_scatter(prev),
    }


@pytest.mark.parametrize("name", ["forest", "heat", "bars", "prevalence"])
def test_no_text_leaves_the_canvas(name):
    fig = _all_figures()[name]
    assert _texts_outside(fig) == []


def test_the_measure_sees_a_clipped_footnote():
    """The check can fail: a footnote placed the old way (fig.text at the bottom, centred,
    unwrapped) runs past both edges, as the issue's consensus figure did."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3))
    fig.subplots()
    fig.text(0.5, 0.01, "leave-one-out: " + "long words " * 40, ha="center", fontsize=7)
    assert _texts_outside(fig)


def test_svg_where_small_png_at_2x_otherwise(monkeypatch):
    fig = plots.value_bars(["a", "b"], [0.2, 0.4])
    svg = plots.figure_bytes(fig)
    assert plots.figure_suffix(svg) == ".svg" and plots.figure_mime(svg) == "image/svg+xml"
    assert b"<text" not in svg  # glyphs as paths: every browser shows what was measured
    assert plots.figure_bytes(plots.value_bars(["a", "b"], [0.2, 0.4])) == svg  # deterministic
    monkeypatch.setattr(plots, "SVG_LIMIT", 1000)
    png = plots.figure_bytes(fig)
    assert plots.figure_suffix(png) == ".png" and png[:4] == b"\x89PNG"
    at = png.find(b"pHYs")  # 220 dpi = 8661 pixels per metre
    assert int.from_bytes(png[at + 4 : at + 8], "big") == round(220 / 0.0254)


def test_wrapped_note_fits_the_figure_width():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 2))
    lines = plots.wrap_note("word " * 200, fig).splitlines()
    assert len(lines) > 3 and max(map(len, lines)) <= int(6 * 72 / (0.65 * 7))


def test_study_page_shows_counterfactual_priors_in_one_panel(tmp_path):
    """The study page embeds the counterfactual figure and one priors panel (not three)."""
    from tests.test_report_html import study_dir

    out = study_dir.__wrapped__(_Factory(tmp_path))
    html = (out / "report.html").read_text(encoding="utf-8")
    files = {p.stem: p for p in (out / "figures").iterdir()}
    assert {"counterfactual", "priors_every", "consensus", "leave_one_out", "accuracy"} <= set(
        files
    )
    assert [k for k in files if k.startswith("priors")] == ["priors_every"]
    for key in ("priors_every", "counterfactual"):
        embedded = base64.b64encode(files[key].read_bytes()).decode() in html
        assert embedded, f"the {key} figure is drawn but not on the page"


def test_analyze_page_shows_effect_vs_prevalence(tmp_path):
    """The battery page (attrimp study analyze) embeds the effect-vs-prevalence scatter."""
    from tests.test_report_html import report_dir

    out = report_dir.__wrapped__(_Factory(tmp_path))
    figs = {p.stem: p for p in (out / "figures").iterdir()}
    prevalence = [k for k in figs if k.endswith("_prevalence")]
    assert prevalence, sorted(figs)
    html = (out / "report.html").read_text(encoding="utf-8")
    embedded = base64.b64encode(figs[prevalence[0]].read_bytes()).decode() in html
    assert embedded, "the prevalence figure is drawn but not on the page"


class _Factory:
    """Stands in for pytest's tmp_path_factory when a module fixture is called directly."""

    def __init__(self, root):
        self.root = root

    def mktemp(self, name):
        path = self.root / name
        path.mkdir()
        return path


def test_priors_are_one_compact_panel_with_every_split():
    """One figure for all splits (the three near-identical full panels took more of the page
    than the results): one bar per split and group, no taller than one old panel per group
    row, values named once, nothing outside the canvas."""
    from attrimp.study.figures import priors_figure, study_figures

    rows = [
        {"split": s, "attribute": g, "value": v, "count": 10, "probability": 1 / len(vs)}
        for s in ("train", "test", "all")
        for g, vs in (("gender", ["male", "female"]), ("upcolor", ["black", "white", "red"]))
        for v in vs
    ]
    priors = pd.DataFrame(rows)
    fig = priors_figure(priors)
    ax = fig.axes[0]
    assert len(ax.patches) == 3 * (2 + 3)  # every split's segments in the one panel
    names = [t.get_text() for t in ax.texts]
    assert {"train", "test", "all"} <= set(names)
    assert sum("male" in n for n in names) == 2  # male and female, named on one bar only
    # the old plot_priors: 0.55 in per group + 1.6, per panel, three panels
    assert fig.get_figheight() < 0.55 * 2 + 1.6 and fig.get_figwidth() <= 8.0
    assert _texts_outside(fig) == []
    assert [k for k in study_figures({}, priors) if k.startswith("priors")] == ["priors_every"]

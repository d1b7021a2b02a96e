"""The report pages as people read them (issue 18, tables and navigation): numbers formatted by
kind (hand-written expected strings), human column headers with report.json keeping the machine
names, intervals as one unbreakable cell, no break inside a word, tables in the ranking's
order, each sub-page with its own title and a link back, the main page counting and linking
its batteries' warnings, and a single-file export with nothing relative left to break."""

from __future__ import annotations

import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from studies.format import (
    CI,
    column_kind,
    format_cell,
    format_ci,
    human_header,
    human_value,
    merge_ci_columns,
)
from studies.page import CSS, Image, Page, Section, Table, figure_css_width, to_html, to_markdown
from studies.report_html import render_html
from studies.report_md import battery_page, render_markdown

M = "\u2212"  # the true minus sign the pages print


# --------------------------------------------------------------------------- numbers by kind


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        # p-values: 2 significant digits in scientific notation below 0.001, else 3 decimals
        ("p_holm", 4.4e-05, "4.4e-05"),
        ("p_value", 0.0362, "0.036"),
        ("p_fdr_bh", 0.00095, "9.5e-04"),
        ("Holm p (Wilcoxon)", 0.116, "0.116"),
        ("p_tost", 1.0, "1.000"),
        ("TOST p (±0.010)", 2e-7, "2.0e-07"),
        ("switching p (randomisation)", 0.05, "0.050"),
        # effects: signed, 3 decimals, true minus; a tiny non-zero one is never "-0.000"
        ("coef", -0.04523, f"{M}0.045"),
        ("ame", 0.0124, "+0.012"),
        ("delta_map", 0.0, "0.000"),
        ("mean_shap", -3e-06, f"{M}3.0e-06"),
        ("mean_difference", 0.1291, "+0.129"),
        # ranks: integers, .5 for a true tie, one decimal for a bootstrap mean or bound
        ("rank", 4.0, "4"),
        ("rank", 4.5, "4.5"),
        ("rank_ci_low", 7.775, "7.8"),
        ("rank_glm", 10.0, "10"),
        # counts: integers with thousands separated
        ("n", 88090, "88,090"),
        ("n_clusters", 750.0, "750"),
        ("queries", 144, "144"),
        # any other number: 3 decimals, big ones as integers with separators
        ("statistic", 88090.3, "88,090"),
        ("mAP", 0.8956, "0.896"),
        ("importance", 0.09289, "0.093"),
        ("rank_stability", 0.85, "0.850"),
        ("std_err", 0.00041, "4.1e-04"),
        # not numbers
        ("matters", True, "yes"),
        ("coef", None, ""),
        ("coef", float("nan"), ""),
        ("test", "wald_htz", "Wald (HTZ)"),
        ("attribute", "mann_whitney_u", "mann_whitney_u"),  # a user's value is left alone
    ],
)
def test_numbers_are_formatted_by_their_kind(key, value, expected):
    assert format_cell(key, value) == expected


def test_an_interval_is_one_unit_and_rank_intervals_read_as_ranks():
    assert format_ci(CI(-0.0452, -0.0301)) == f"[{M}0.045, {M}0.030]"
    assert format_ci(CI(7.775, 10.77, "rank")) == "[7.8, 10.8]"
    assert format_ci(CI(0.1, None)) == "" and format_cell("ci", CI(np.nan, 1.0)) == ""
    cols, rows = merge_ci_columns(
        ["attribute", "ame", "ame_ci_low", "ame_ci_high", "rank_ci_low", "rank_ci_high", "n"],
        [{"attribute": "hat", "ame": 0.1, "ame_ci_low": 0.05, "ame_ci_high": 0.15,
          "rank_ci_low": 1.0, "rank_ci_high": 2.5, "n": 3}],
    )  # fmt: skip
    assert cols == ["attribute", "ame", "ame_ci", "rank_ci", "n"]
    assert rows[0]["ame_ci"] == CI(0.05, 0.15) and rows[0]["rank_ci"] == CI(1.0, 2.5, "rank")
    assert column_kind("rank1") == "number" and column_kind("rank_mean") == "rank"
    assert column_kind("MDE (80% power)") == "number" and column_kind("prevalence") == "number"


def test_machine_column_names_read_as_words():
    expected = {
        "rank_ci_low": "rank CI low",
        "mean_abs_shap": "mean |SHAP| of the group",
        "p_holm": "Holm p (adjusted)",
        "p_value": "p (unadjusted)",
        "p_fdr_bh": "BH p (adjusted)",
        "verdict": "verdict",
        "mde": "min. detectable effect",
        "p_tost": "TOST p (equivalence)",
        "rank_glm": "rank by glm",
        "rank_leave_one_out": "rank by leave one out",
        "my_own_column": "my_own_column",  # a user's name is not rewritten
    }
    assert {k: human_header(k) for k in expected} == expected
    assert human_value("effect_source", "glm_ame") == "GLM average marginal effect"
    assert human_value("permuted", "across_clusters") == "across clusters"


# --------------------------------------------------------------------------- rendered tables


class _Cells(HTMLParser):
    """Each table's header texts and, per body cell, its class and text."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[str] = []
        self.cells: list[tuple[str, str]] = []
        self._in: str | None = None
        self._cls = ""
        self._text = ""

    def handle_starttag(self, tag, attrs):
        if tag in ("th", "td"):
            self._in, self._cls, self._text = tag, dict(attrs).get("class") or "", ""

    def handle_data(self, data):
        if self._in:
            self._text += data

    def handle_endtag(self, tag):
        if tag == self._in:
            if tag == "th":
                self.headers.append(self._text)
            else:
                self.cells.append((self._cls, self._text))
            self._in = None


def _battery_report(path: str = "results/table.csv", warnings: int = 0) -> dict:
    """A small battery report.json: three groups ranked b, a, c; the rank tests listed a, b, c."""
    groups = ["a", "b", "c"]
    return {
        "schema_version": "1.1",
        "settings": {"alpha": 0.05},
        "input": {"path": path, "outcomes": ["ap"], "rows_read": 9, "rows_used": 9},
        "attributes": {g: [g] for g in groups},
        "attribute_levels": {g: {"reference": "no", "levels": ["no", "yes"]} for g in groups},
        "outcomes": [{"outcome": "ap", "methods": ["glm"], "kendall_w": None}],
        "summary": [
            {
                "outcome": "ap",
                "attribute": g,
                "rank": r,
                "matters": r == 1,
                "p_holm": p,
                "p_source": "glm",
                "level": "yes",
                "reference": "no",
                "effect": e,
                "effect_ci_low": e - 0.02,
                "effect_ci_high": e + 0.02,
                "effect_name": "average_marginal_effect",
            }
            for g, r, p, e in (("b", 1, 4.4e-05, -0.0452), ("a", 2, 0.2, 0.01), ("c", 3, 0.9, 0.0))
        ],  # fmt: skip
        "analyses": {
            "tests": [
                {
                    "outcome": "ap",
                    "attribute": g,
                    "test": "mann_whitney_u",
                    "statistic": s,
                    "p_value": p,
                    "ci_low": -0.1,
                    "ci_high": 0.2,
                    "p_holm": p,
                }
                for g, s, p in (("a", 12.0, 0.2), ("b", 88090.0, 1e-5), ("c", 3.0, 0.9))
            ],  # fmt: skip
            "glm_coefficients": [
                {
                    "outcome": "ap",
                    "attribute": "b",
                    "level": "yes",
                    "coef": -0.2,
                    "ci_low": -0.3,
                    "ci_high": -0.1,
                    "p_value": 1e-5,
                    "ame": -0.0452,
                    "ame_ci_low": -0.0652,
                    "ame_ci_high": -0.0252,
                }
            ],  # fmt: skip
        },
        "consensus": [
            {
                "outcome": "ap",
                "attribute": g,
                "score": s,
                "rank": r,
                "rank_ci_low": r - 0.225,
                "rank_ci_high": r + 0.77,
            }
            for g, s, r in (("b", 1.0, 1.0), ("a", 0.5, 2.0), ("c", 0.0, 3.0))
        ],  # fmt: skip
        "warnings": [
            {"source": "glm", "outcome": "ap", "message": f"w{i}"} for i in range(warnings)
        ],
    }


def test_battery_page_tables_read_like_a_paper():
    page = render_html(_battery_report(), figures={})
    assert "overflow-wrap:anywhere" not in page.replace(" ", "")
    assert "white-space:nowrap" in CSS  # numbers and intervals never wrap
    scan = _Cells()
    scan.feed(page)
    # headers in words, machine names kept out of them
    assert "Holm p (adjusted)" in scan.headers and "p (unadjusted)" in scan.headers
    assert "rank 95% CI" in scan.headers and "rank by glm" not in scan.headers
    for machine in ("p_holm", "p_value", "rank_ci_low", "ci_low", "ame_ci_high"):
        assert machine not in scan.headers, machine
    # an interval is one right-aligned cell that does not wrap; numbers formatted by kind
    nums = {text for cls, text in scan.cells if "num" in cls.split()}
    assert f"[{M}0.065, {M}0.025]" in nums  # the AME's CI
    assert "[0.8, 1.8]" in nums  # consensus rank CI of b: 1 - 0.225 .. 1 + 0.77
    assert "88,090" in nums and "4.4e-05" in nums and f"{M}0.045" in nums
    assert ("text", "Mann–Whitney U") in scan.cells
    # the rank tests are listed in the consensus order (b, a, c), not the table's own (a, b, c)
    tests = page[page.index("Rank tests per attribute group") :]
    order = [m.group(1) for m in re.finditer(r'data-label="attribute">([abc])<', tests)]
    assert order == ["b", "a", "c"]
    # report.json is not touched by the page: its keys stay machine names
    assert "p_holm" in _battery_report()["analyses"]["tests"][0]


def test_markdown_headers_are_in_words_too():
    md = render_markdown(_battery_report())
    assert "| Holm p (adjusted) |" in md and "rank 95% CI" in md
    assert f"[{M}0.065, {M}0.025]" in md


def test_summary_and_glossary_restack_on_a_narrow_screen():
    page = render_html(_battery_report(), figures={})
    narrow = CSS[CSS.index("@media (max-width:600px)") :]
    assert "dl{display:block}" in narrow and "table.stack" in narrow
    answer = page[page.index("<h2>Answer</h2>") : page.index("How to read this report")]
    assert '<table class="stack">' in answer
    # every cell carries its header, which the stacked layout shows beside the value
    assert 'data-label="Holm p (adjusted)"' in answer


def test_wide_tables_say_they_scroll():
    wide = [{f"column {i}": float(i) for i in range(9)}]
    narrow = [{"a": 1.0, "b": 2.0}]
    page = to_html(Page("t", sections=[Section("s", [Table(wide), Table(narrow)])]))
    assert page.count('<p class="hint wide">') == 1
    assert page.count('class="hint') == 1  # two columns need no hint at any width


def test_a_number_written_as_text_by_a_page_builder_does_not_wrap():
    page = to_html(
        Page("t", sections=[Section("s", [Table([{"interval": "+0.123 [-0.01, +0.2]"}])])])
    )
    assert '<td class="num" data-label="interval">' in page
    page = to_html(Page("t", sections=[Section("s", [Table([{"x": "two words"}])])]))
    assert '<td class="text" data-label="x">' in page


# --------------------------------------------------------------------------- navigation


def _titles_and_home(report: dict) -> tuple[str, str | None]:
    page = battery_page(report)
    return page.title, page.home.html if page.home else None


def test_each_sub_page_has_its_own_title_and_a_link_back():
    pages = [
        _battery_report("study table 'switching'"),
        _battery_report("study table 'configurations'"),
        _battery_report("study table 'attributes'"),
        _battery_report("/data/results/market.csv"),
    ]
    found = [_titles_and_home(r) for r in pages]
    titles = [t for t, _ in found]
    assert len(set(titles)) == 4 and "attrimp study report" not in titles
    assert titles[0] == "Study battery: switching"
    assert titles[3] == "attrimp study analyze: market.csv"
    assert [h for _, h in found] == ["../../report.html"] * 3 + [None]
    html = render_html(pages[0], figures={})
    assert "<title>Study battery: switching</title>" in html
    assert '<nav class="home"><a href="../../report.html">' in html
    assert "[← back to the study report](../../report.md)" in render_markdown(pages[0])
    # the battery's warnings section can be linked to
    assert '<h2 id="warnings">Warnings (0)</h2>' in html


def _study_report(counts: dict[str, int]) -> dict:
    from tests.test_report_study import _report

    report = _report()
    report["analyses"] = {name: f"analyses/{name}/report.json" for name in counts}
    report["battery_warnings"] = counts
    return report


def test_the_study_page_counts_and_links_its_batteries_warnings():
    from attrimp.study import report as sr

    report = _study_report({"switching": 3, "configurations": 0, "attributes": 29})
    page = sr.render_html(report, {})
    assert "Warnings (0 here, 32 in the batteries)" in page
    assert '<a href="analyses/switching/report.html#warnings">switching: 3 warnings</a>' in page
    assert '<a href="analyses/attributes/report.html#warnings">attributes: 29 warnings</a>' in page
    assert "configurations: 0" not in page
    # a link to a file beside the page says where it points, for a page copied alone
    assert '<span class="where">(analyses/switching/report.html)</span>' in page
    assert "copy that folder with report.html" in page


def _png(inches: float = 2.0, dpi: int = 100, fmt: str = "png") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(inches, 1))
    ax.plot([0, 1], [0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def test_a_figure_is_shown_at_the_width_it_was_drawn_for():
    # 7 inches are 672 CSS pixels (96 per inch) whether saved at 1x (100 dpi) or 2x (192 dpi)
    for dpi in (100, 192):
        assert figure_css_width(_png(7.0, dpi)) == 672
    assert figure_css_width(_png(7.0, fmt="svg")) == 672 and figure_css_width(b"GIF89a") is None
    page = to_html(
        Page("t", sections=[Section("s", [Image("f", "a figure")])]), {"f": _png(7.0, 192)}
    )
    assert 'width="672" style="min-width:350px"' in page  # 52 % of 672, rounded up


def test_single_file_holds_the_sub_reports_and_no_relative_links(tmp_path: Path):
    from attrimp.study import report as sr

    counts = {"switching": 2, "attributes": 1}
    report = _study_report(counts)
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "consensus.png").write_bytes(_png())
    (tmp_path / "report.json").write_text(json.dumps(report), encoding="utf-8")
    for name, n in counts.items():
        folder = tmp_path / "analyses" / name
        (folder / "figures").mkdir(parents=True)
        (folder / "figures" / "ap_consensus.png").write_bytes(_png())
        sub = _battery_report(f"study table '{name}'", warnings=n)
        (folder / "report.json").write_text(json.dumps(sub), encoding="utf-8")
    path = sr.write_single_file(tmp_path)
    assert path == tmp_path / "report-single.html"
    html = path.read_text(encoding="utf-8")
    # the sub-reports are inside, each under its own anchor, their warnings reachable
    for name, n in counts.items():
        assert f'<section id="battery-{name}" class="subreport">' in html
        assert f"<h1>Study battery: {name}</h1>" in html
        assert f'<h2 id="battery-{name}-warnings">Warnings ({n})</h2>' in html
        assert f'href="#battery-{name}-warnings"' in html and f'href="#battery-{name}"' in html
    # nothing points at a file: no relative link, every image embedded
    hrefs = re.findall(r'href="([^"]*)"', html)
    assert hrefs and all(h.startswith("#") for h in hrefs), hrefs
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "analyses/" not in "".join(hrefs) and "overflow-wrap:anywhere" not in html
    assert "copy that folder" not in html  # the links no longer point at files


def test_report_html_figures_open_their_full_size_file():
    from attrimp.study import report as sr

    page = sr.render_html(_study_report({"switching": 0}), {"consensus": _png()})
    assert '<a href="figures/consensus.png"><img' in page
    assert "Open full size" in page
    single = sr.render_html(_study_report({"switching": 0}), {"consensus": _png()}, links=False)
    assert "figures/consensus.png" not in single


def test_markdown_of_a_table_keeps_its_columns_with_an_interval_cell():
    md = to_markdown(
        Page("t", sections=[Section("s", [Table([{"x": 1.0, "ci_low": -0.5, "ci_high": 0.5}])])])
    )
    rows = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert rows[0] == "| x | 95% CI |" and rows[2] == f"| 1.000 | [{M}0.500, +0.500] |"


def test_the_study_tables_follow_the_consensus_ranking():
    from attrimp.study import report as sr

    report = _study_report({"switching": 0})
    ranked = [r["attribute"] for r in report["consensus"]]
    report["leave_one_out"] = list(reversed(report["leave_one_out"]))
    report["paired_tests"] = list(reversed(report["paired_tests"]))
    md = sr.render_markdown(report, [])
    for start, end in (
        ("## Leave-one-group-out", "## Paired tests"),
        ("## Paired tests", "## Which"),
    ):
        section = md[md.index(start) : md.index(end)]
        rows = [ln.split("|")[1].strip() for ln in section.splitlines() if ln.startswith("| ")]
        order = list(dict.fromkeys(a for a in rows[1:] if a in ranked))
        assert order == ranked, (start, order)


def test_input_facts_read_as_counts_and_unset_settings_are_left_out():
    report = _battery_report()
    report["input"]["rows_read"] = 4000
    report["settings"] = {"alpha": 0.05, "margin": None}
    md = render_markdown(report)
    assert "- **rows read**: 4,000" in md
    assert "alpha=0.05" in md and "margin=" not in md

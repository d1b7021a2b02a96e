"""studies.page, the one renderer of both report pages (`attrimp study analyze`'s battery report
and `attrimp study run`'s study report): user text is escaped in Markdown and HTML, a table keeps
its columns whatever a cell holds, figures are embedded as PNGs that decode to the same bytes,
links point at both formats, numbers follow the documented formats; and the study run's stage
log is quiet unless progress is asked for."""

from __future__ import annotations

import base64
import io
import logging
import re

import numpy as np
import pandas as pd
from rich.console import Console

from studies.page import (
    CSS,
    Box,
    Bullets,
    Definitions,
    Image,
    Link,
    Links,
    Page,
    Section,
    Strong,
    Table,
    Text,
    format_fixed,
    format_p,
    format_value,
    md_escape,
    to_html,
    to_markdown,
)

EVIL = "<b onmouseover=x>|*_[a](b)"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16  # the renderer embeds bytes; it does not decode them


def _page() -> Page:
    rows = [{"attribute": EVIL, "p_holm": 0.0004, "n": 3}, {"attribute": "hat", "p_holm": 0.2}]
    return Page(
        title=f"study {EVIL}",
        intro=[Text("intro")],
        sections=[
            Section(
                "Answer",
                [
                    Box([Text([Strong(f"{EVIL}."), " leads"]), Bullets([EVIL, "two"])]),
                    Table(rows),
                    Image("fig", f"alt {EVIL}"),
                    Image("missing", "never shown"),
                    Bullets([]),
                ],
            ),
            Section("Glossary", [Definitions([(EVIL, "a term")])], level=3),
            Section("Links", [Links([Link(EVIL, "a/report.md", "a/report.html", "3 warnings")])]),
        ],
        highlight_alpha=0.05,
    )


def test_markdown_escapes_user_text_and_keeps_table_columns():
    md = to_markdown(_page(), {"fig": "figures/fig.png"})
    esc = md_escape(EVIL)
    assert md.startswith(f"# study {esc}\n")
    assert f"**{esc}.** leads" in md
    assert f"- {esc}" in md and f"- **{esc}**: a term" in md
    assert not re.search(r"(?<!\\)<b", md)
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(table) == 4  # header, rule, two rows
    assert {len(re.split(r"(?<!\\)\|", ln)) for ln in table} == {5}
    assert "| 4.0e-04 | 3 |" in table[2] and table[3].endswith("| 0.200 |  |")
    assert f"![alt {esc}](figures/fig.png)" in md and "never shown" not in md
    assert f"- [{esc}](a/report.md) ([HTML](a/report.html)): 3 warnings" in md
    assert "### Glossary" in md


def test_html_escapes_user_text_embeds_figures_and_highlights_p_values():
    page = to_html(_page(), {"fig": PNG})
    assert "<b onmouseover" not in page and "&lt;b onmouseover=x&gt;" in page
    assert page.count("<img") == 1 and "never shown" not in page
    src = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(src) == PNG
    assert '<div class="answer"><p><b>&lt;b onmouseover=x&gt;|*_[a](b).</b> leads</p>' in page
    assert '<td class="num sig" data-label="Holm p (adjusted)"><span>4.0e-04</span></td>' in page
    assert '<td class="num" data-label="Holm p (adjusted)"><span>0.200</span></td>' in page
    assert "Bold red adjusted p-values are below alpha = 0.05" in page
    assert (
        '<a href="a/report.html">&lt;b' in page and '(<a href="a/report.md">Markdown</a>)' in page
    )
    assert "<ul>\n</ul>" not in page  # an empty list is left out
    assert "<script" not in page.lower() and CSS in page


def test_number_formats_known_answers():
    assert [format_p(p) for p in (0.0, 0.0004, 0.01234, 1.0)] == ["0", "4.0e-04", "0.012", "1.000"]
    assert format_value("p_holm", 0.04) == "0.040" and format_value("coef", 0.123456) == "0.1235"
    assert format_value("coef", 123456.0) == "1.235e+05" and format_value("n", True) == "yes"
    assert format_value("levels", ["a", 1]) == "a, 1" and format_value("x", None) == ""
    assert format_fixed("delta_map", 0.12345678) == "0.1235" and format_fixed("rank", 2.0) == "2"
    assert (
        format_fixed("p_holm", 0.00012) == "1.2e-04" and format_fixed("Holm p (x)", 0.5) == "0.500"
    )
    assert format_fixed("x", np.nan) == "" and format_fixed("x", None) == ""
    assert format_fixed("flag", np.bool_(False)) == "no" and format_fixed("n", 7) == "7"


def test_a_dataframe_table_reads_like_its_records():
    df = pd.DataFrame({"attribute": ["a", "b"], "delta_map": [0.1, np.nan]})
    by_frame = to_markdown(Page("t", sections=[Section("s", [Table(df, fmt=format_fixed)])]))
    by_rows = to_markdown(
        Page(
            "t",
            sections=[Section("s", [Table(df.to_dict("records"), fmt=format_fixed)])],
        )
    )
    assert by_frame == by_rows and "| a | 0.1000 |" in by_frame and "| b |  |" in by_frame


def test_both_report_pages_are_rendered_by_the_one_stack():
    from attrimp.study import report as sr
    from studies.report_html import render_html
    from tests.test_report_answer import _report as battery_report
    from tests.test_report_study import _report as study_report

    study = sr.render_html(study_report(), {})
    battery = render_html(battery_report(p_value=0.01), figures={})
    for page in (study, battery):
        assert CSS in page and '<div class="scroll"><table>' in page


def test_study_stage_lines_are_logged_and_printed_only_with_progress(caplog):
    from attrimp.study.run import _Stages

    for progress in (False, True):
        buffer = io.StringIO()
        stages = _Stages(progress, Console(file=buffer, width=200))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="attrimp.study.run"), stages.stage("data"):
            stages.say("data", "48 train images [not markup]")
        printed = buffer.getvalue()
        assert "48 train images [not markup]" in caplog.text
        assert ("48 train images [not markup]" in printed) is progress
        assert ("peak RSS" in printed) is progress
        assert [r["stage"] for r in stages.clock.records] == ["data"]


def test_prose_keeps_numbers_magnitudes_and_rank_names_on_one_line():
    """At 412 px the study page broke '2.4e-|04', '|ΔmAP|' and 'rank-|1' in its prose (a browser
    may break after a hyphen): such tokens are nowrap spans in paragraphs, lists, glossary
    entries and link texts, and the rest of the prose still wraps between words."""
    from studies.page import Definitions, Page, Section, Text, to_html

    prose = "Holm p = 2.4e-04; |ΔmAP| ≥ 0.016 at rank-1, ΔmAP = -0.030 for a & b"
    page = Page(
        "t",
        sections=[
            Section("s", [Text(prose), Definitions([("rank-1 / rank-5", "top 1 / 5, -0.5e-3")])])
        ],
    )
    html = to_html(page, {})
    for token in ("2.4e-04", "|ΔmAP|", "0.016", "rank-1", "-0.030", "rank-5", "-0.5e-3"):
        assert f'<span class="nw">{token}</span>' in html, token
    assert ".nw{white-space:nowrap}" in html and "a &amp; b" in html

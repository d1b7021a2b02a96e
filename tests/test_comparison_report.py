"""The comparison report (`studies.write_comparison_report`) of `studies.compare` results with
known answers: a planted arm x group interaction (upcolor = red helps one arm only) must be the
first sentence of the answer on both pages; report.json must hold the result's own numbers; every
figure must exist and be shown; the arms' reports must be linked; NaN-only columns must not break
anything; the single-file page must reference nothing outside itself; and, where a headless
Chromium exists, the page must read well at 412 and 1400 px (the checks of
tests/test_report_html.py)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import studies
from studies.comparison_report import SCHEMA_VERSION, SINGLE_FILE, group_order
from tests.test_report_html import check_page, find_browser, report_html_problems
from tests.test_studies_compare import run, stacked

ARM_REPORTS = {
    "vit": [("seed 0", "arms/vit/seed-0/report.html")],
    "dino": [("seed 0", "arms/dino/seed-0/report.html")],
}
SETUP = ["Two backbones on the same queries (paired by identity), one training run each."]


@pytest.fixture(scope="module")
def planted() -> studies.ComparisonResult:
    """vit relies on upcolor = red, dino does not; both on gender alike."""
    df = stacked(
        {"vit": {"upcolor": 1.2, "gender": 0.3}, "dino": {"gender": 0.3}}, n_id=300, seed=1
    )
    return run(df)


@pytest.fixture(scope="module")
def written(planted, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("comparison")
    path = studies.write_comparison_report(
        planted,
        out,
        title="ViT vs DINOv2",
        setup=SETUP,
        arm_reports=ARM_REPORTS,
        single_file=True,
    )
    assert path == out / "report.html"
    return out


class _Refs(HTMLParser):
    """Every src / href of a page, and the text of each <p> inside the answer box in order."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.answer: list[str] = []
        self._depth = 0  # >0 inside <div class="answer">
        self._in_p = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if tag == "div" and self._depth:
            self._depth += 1
        elif tag == "div" and "answer" in (a.get("class") or "").split():
            self._depth = 1
        if tag == "p" and self._depth:
            self._in_p = True
            self.answer.append("")

    def handle_endtag(self, tag):
        if tag == "div" and self._depth:
            self._depth -= 1
        if tag == "p":
            self._in_p = False

    def handle_data(self, data):
        if self._in_p:
            self.answer[-1] += data


def _refs(text: str) -> _Refs:
    p = _Refs()
    p.feed(text)
    return p


def _same(a, b) -> bool:
    if a is None or b is None:
        return (a is None or not np.isfinite(a)) and (b is None or not np.isfinite(b))
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return a == pytest.approx(b, rel=1e-12, abs=1e-15)


def test_the_planted_interaction_is_found(planted) -> None:
    """The fixture's known answer, so the page tests below test a page about a true finding."""
    d = planted.differences.set_index("attribute")
    assert d.loc["upcolor", "verdict"] == "differs"
    assert (d.drop(index="upcolor")["verdict"] != "differs").all()
    assert "upcolor" in planted.summary[0]


def test_report_json_holds_the_results_numbers(planted, written) -> None:
    report = json.loads((written / "report.json").read_text(encoding="utf-8"))
    assert report["schema_version"] == SCHEMA_VERSION == "studies.comparison/1"
    assert report["title"] == "ViT vs DINOv2" and report["setup"] == SETUP
    assert report["links"] == {
        arm: [{"label": lab, "href": h} for lab, h in items] for arm, items in ARM_REPORTS.items()
    }
    for key in ("effects", "differences", "agreement", "gains", "summary", "arms", "unshared"):
        assert key in report, key
    assert "paired" in report
    assert report["summary"] == planted.summary and report["arms"] == planted.arms
    for name in ("effects", "differences", "agreement"):
        df = getattr(planted, name)
        recs = report[name]
        assert len(recs) == len(df) and list(recs[0]) == [str(c) for c in df.columns]
        for rec, row in zip(recs, df.to_dict("records")):
            for col, value in row.items():
                assert _same(rec[col], value), (name, col, rec[col], value)
        # the CSVs say the same (NaN as an empty cell)
        csv = pd.read_csv(written / "tables" / f"{name}.csv")
        num = df.select_dtypes("number").columns
        np.testing.assert_allclose(csv[num].to_numpy(float), df[num].to_numpy(float), rtol=1e-9)
    assert (written / "tables" / "gains.csv").exists()
    text = (written / "report.json").read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text


def test_the_answer_comes_first_and_names_the_planted_group(planted, written) -> None:
    md = (written / "report.md").read_text(encoding="utf-8")
    body = md.split("## Answer", 1)[1]
    first = next(p for p in body.split("\n\n") if p.strip())
    assert "upcolor" in first and "relies on" in first
    # before the answer only the title and setup; the answer before any table or figure
    head = md.split("## Answer", 1)[0]
    assert "|" not in head and "![" not in head and "Two backbones" in head
    assert md.index("## Answer") < md.index("![") < md.index("| group")
    html = (written / "report.html").read_text(encoding="utf-8")
    answer = _refs(html).answer
    assert answer and "upcolor" in answer[0] and "relies on" in answer[0]
    assert html.index('class="answer"') < html.index("<img") < html.index("<table")
    # the differences table leads with the largest difference
    rows = re.findall(r"^\| (\w+) \| red|^\| (\w+) \|", body, flags=re.M)
    assert group_order(planted.differences)[0] == "upcolor"
    assert md.split("| group |", 1)[1].split("\n")[2].startswith("| upcolor")
    assert rows


def test_every_figure_exists_and_is_shown(written) -> None:
    files = sorted(p.name for p in (written / "figures").iterdir())
    assert {Path(f).stem for f in files} == {"forest", "differences"}
    md = (written / "report.md").read_text(encoding="utf-8")
    html = (written / "report.html").read_text(encoding="utf-8")
    for f in files:
        assert f"(figures/{f})" in md, f
        assert f'href="figures/{f}"' in html, f
    images = [r for r in _refs(html).refs if r.startswith("data:image/")]
    assert len(images) == len(files)
    assert report_html_problems(html) == []


def test_arm_reports_are_linked(written) -> None:
    md = (written / "report.md").read_text(encoding="utf-8")
    html = (written / "report.html").read_text(encoding="utf-8")
    for items in ARM_REPORTS.values():
        for _, href in items:
            assert f'href="{href}"' in html
            assert f"]({href.removesuffix('.html')}.md)" in md and f"]({href})" in md


def test_single_file_references_nothing_outside_itself(written) -> None:
    text = (written / SINGLE_FILE).read_text(encoding="utf-8")
    refs = _refs(text).refs
    assert refs, "the single-file page embeds its figures"
    outside = [r for r in refs if not r.startswith(("data:", "#"))]
    assert outside == []
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert report_html_problems(text) == []
    plain = re.sub(r"<[^>]+>", "", text)
    assert "arms/vit/seed-0/report.html" in plain  # listed as a path to copy, not linked


def test_nan_only_columns_and_missing_tables_do_not_break_the_report(planted, tmp_path) -> None:
    """One run per arm leaves seed_sd NaN everywhere; here every interval, p-value and MDD is
    NaN too, relative columns are all NaN and the agreement table is empty."""
    eff = planted.effects.assign(
        ci_low=np.nan, ci_high=np.nan, seed_sd=np.nan, relative=np.nan,
        relative_low=np.nan, relative_high=np.nan,
    )  # fmt: skip
    diffs = planted.differences.assign(
        ci_low=np.nan, ci_high=np.nan, p_holm=np.nan, p_interaction=np.nan, mdd=np.nan,
        margin=np.nan, relative_a=np.nan, relative_b=np.nan, verdict="not testable",
    )  # fmt: skip
    broken = dataclasses.replace(
        planted, effects=eff, differences=diffs, agreement=pd.DataFrame(), summary=[]
    )
    html = studies.write_comparison_report(broken, tmp_path / "a", single_file=True)
    report = json.loads((tmp_path / "a" / "report.json").read_text(encoding="utf-8"))
    assert all(r["ci_low"] is None and r["relative"] is None for r in report["effects"])
    assert report["agreement"] == []
    assert report_html_problems(html.read_text(encoding="utf-8")) == []
    # nothing finite to draw: no figure, no image, and the page still says so in words
    none = dataclasses.replace(
        broken, effects=eff.assign(effect=np.nan), differences=diffs.assign(difference=np.nan)
    )
    studies.write_comparison_report(none, tmp_path / "b")
    assert not (tmp_path / "b" / "figures").exists()
    md = (tmp_path / "b" / "report.md").read_text(encoding="utf-8")
    assert "![" not in md and "No comparison was made." in md


def test_gains_relative_effects_and_unshared_groups_are_shown(planted, tmp_path) -> None:
    """With oracle gains (relative_to=): the gains table, the relative columns in percent and
    the second forest panel; groups only some arms have are listed."""
    gains = pd.DataFrame(
        {"arm": ["vit", "dino"], "gain": [0.25, 0.16], "ci_low": [0.2, 0.12],
         "ci_high": [0.3, 0.2], "seed_sd": [np.nan, np.nan], "n_seeds": [1, 1]}
    )  # fmt: skip
    g = planted.effects["arm"].map({"vit": 0.25, "dino": 0.16})
    eff = planted.effects.assign(
        relative=planted.effects["effect"] / g,
        relative_low=planted.effects["ci_low"] / g,
        relative_high=planted.effects["ci_high"] / g,
    )
    res = dataclasses.replace(planted, effects=eff)
    res.gains = gains
    res.unshared = {"vit": ["backpack"], "dino": []}
    studies.write_comparison_report(res, tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Oracle gains" in md and "+0.250 \\[\\+0.200, \\+0.300\\]" in md
    up = eff.set_index(["arm", "attribute"]).loc[("vit", "upcolor"), "relative"]
    assert f"{100 * up:+.1f}%".replace("+", "\\+") in md
    assert "## Groups not in every arm" in md and "vit: backpack" in md
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert report["gains"][0]["gain"] == 0.25 and report["unshared"]["vit"] == ["backpack"]
    svg = (tmp_path / "figures" / "forest.svg").read_bytes()
    assert svg.count(b'<g id="axes_') == 2  # effect and relative panels


def test_three_arms_one_panel_per_pair(tmp_path) -> None:
    df = stacked({"a": {"upcolor": 1.2}, "b": {}, "c": {"hat": 0.8}}, n_id=200, seed=4)
    res = run(df)
    studies.write_comparison_report(res, tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| group | level | arms | effect (first) | effect (second) |" in md
    assert "Every row's test: identities (CR1 Wald)." in md  # said once, not per row
    svg = (tmp_path / "figures" / "differences.svg").read_bytes()
    assert svg.count(b'<g id="axes_') == 3


def test_group_mode_table_of_paired_effects(tmp_path) -> None:
    """A table of per-query effects (group=, relative_to=): the oracle gain is not a compared
    group, the gains table and relative effects appear."""
    if "group" not in inspect.signature(studies.compare).parameters:
        pytest.skip("studies.compare has no group= mode yet")
    rng = np.random.default_rng(5)
    n_id, per = 150, 2
    pid = np.repeat(np.arange(n_id), per)
    rows = []
    for arm, up in (("vit", 0.12), ("dino", 0.02)):
        for s in range(2):
            for g, eff in (("upcolor", up), ("gender", 0.03), ("hat", 0.0), ("all experts", 0.25)):
                d = eff + rng.normal(0, 0.05, n_id)[pid] + rng.normal(0, 0.05, len(pid))
                rows.append(
                    pd.DataFrame(
                        {
                            "pid": pid,
                            "query": np.arange(len(pid)),
                            "group": g,
                            "delta_ap": d,
                            "backbone": arm,
                            "seed": s,
                        }
                    )  # fmt: skip
                )
    table = pd.concat(rows, ignore_index=True)
    res = studies.compare(
        table, by="backbone", outcome="delta_ap", cluster="pid", seed="seed", group="group",
        relative_to="all experts", exclude=["query"], n_boot=200,
    )  # fmt: skip
    assert "all experts" not in set(res.effects["attribute"])
    studies.write_comparison_report(res, tmp_path, arm_reports=ARM_REPORTS)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Oracle gains" in md and "share of oracle gain" in md
    assert "| level |" not in md  # a paired-effects table has no levels: no blank column
    assert "per-query effects" in md.split("## How to read", 1)[1].split("##", 1)[0]
    answer = md.split("## Answer", 1)[1].strip().split("\n\n")[0]
    assert "upcolor" in answer


WIDTHS = (412, 1400)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("page", ["report.html", SINGLE_FILE])
def test_what_a_reader_sees_in_a_headless_browser(written, page, width, tmp_path) -> None:
    """The checks of every report page (tests/test_report_html.py): no sideways page scroll, no
    word or number broken across lines, no image missing, clipped or shrunk, no request."""
    browser = find_browser()
    if browser is None:
        pytest.skip("no headless Chromium/Chrome installed here; the parsed checks still ran")
    problems = check_page(browser, written / page, width, tmp_path)
    assert not problems, "\n".join(problems)


def test_the_same_result_gives_the_same_files(planted, written, tmp_path) -> None:
    """No timestamps or random ids: a second write is byte-identical."""
    studies.write_comparison_report(
        planted, tmp_path, title="ViT vs DINOv2", setup=SETUP, arm_reports=ARM_REPORTS,
        single_file=True,
    )  # fmt: skip
    for p in sorted(written.rglob("*")):
        if p.is_file():
            assert (tmp_path / p.relative_to(written)).read_bytes() == p.read_bytes(), p.name


def test_long_arm_names_keep_the_difference_in_view(tmp_path) -> None:
    """Arm names too long for a header: effect columns "first" / "second", the arms named once
    above the table; no setup given: the page states what was compared from the data."""
    long_a, long_b = "timm:vit_tiny_patch16_224", "timm:vit_small_patch16_224"
    df = stacked({long_a: {"upcolor": 1.2}, long_b: {}}, n_id=200, seed=6)
    studies.write_comparison_report(run(df), tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| group | level | effect (first) | effect (second) | difference" in md
    assert "First arm: timm:vit\\_tiny\\_patch16\\_224; second arm:" in md
    head = md.split("## Answer", 1)[0]
    assert "Compared: timm:vit\\_tiny\\_patch16\\_224 (1 training run)" in head

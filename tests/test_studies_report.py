"""The battery's orchestration and the report writers: report.json is strict, complete,
documented and deterministic; the pages are self-contained and escape user text; the CSVs say
what the JSON says; a failing step becomes a warning instead of a crash."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from studies.battery import TABLES, _ensure_adjusted, run_battery
from studies.design import build_analysis_frame, spec_from_toml
from studies.report import ANALYSES, SCHEMA_VERSION, clean_value, dumps, records, write_report
from studies.report_html import render_html
from studies.report_md import md_escape, render_markdown
from studies.simulate import market_like_schema_toml, simulate_reid_table

PLANTED = {"downcolor": 1.5, "upcolor": 1.2, "gender": 1.0}
QUICK = {"n_repeats": 2, "cv": 3, "n_bootstrap": 10}
N_ROWS, N_NAN = 1500, 7


@pytest.fixture(scope="module")
def frame():
    df = simulate_reid_table(N_ROWS, n_identities=250, effects=PLANTED, seed=3)
    df.loc[df.index[:N_NAN], "ap"] = np.nan  # dropped and counted, never silently
    return build_analysis_frame(
        df,
        outcomes=["ap"],
        cluster="pid",
        exclude=["query"],
        spec=spec_from_toml(market_like_schema_toml()),
        source="sim.csv",
    )


@pytest.fixture(scope="module")
def result(frame):
    return run_battery(frame, seed=0, progress=False, strict=True, **QUICK)


@pytest.fixture(scope="module")
def written(result, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    files = write_report(result, out, input_info={"path": "sim.csv", "format": "csv"})
    return files


def _strict_json(text: str):
    def no_constants(name):
        raise AssertionError(f"report.json contains the non-JSON token {name}")

    return json.loads(text, parse_constant=no_constants)


def test_report_json_has_the_documented_layout(written, frame):
    report = _strict_json(written.json.read_text(encoding="utf-8"))
    assert list(report) == [
        "schema_version",
        "generator",
        "settings",
        "input",
        "attributes",
        "attribute_levels",
        "excluded_attributes",
        "outcomes",
        "summary",
        "analyses",
        "consensus",
        "warnings",
    ]
    assert report["schema_version"] == SCHEMA_VERSION
    inp = report["input"]
    assert inp["rows_read"] == N_ROWS
    assert inp["rows_dropped"] == {"NaN in outcome 'ap'": N_NAN}
    assert inp["rows_used"] == N_ROWS - N_NAN
    assert inp["cluster"] == "pid" and inp["n_clusters"] == frame.data["pid"].nunique()
    assert report["attributes"]["upcolor"] == [
        f"up{c}" for c in ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")
    ]
    assert set(report["attributes"]) == set(frame.groups)
    assert list(report["analyses"]) == list(ANALYSES)
    for key in (
        "glm_coefficients",
        "glm_group_tests",
        "tests",
        "permutation_importance",
        "shap",
        "shap_levels",
        "prevalence",
        "method_scores",
    ):
        assert report["analyses"][key], f"analysis {key} is empty"
    # every record with a p-value names its attribute and carries both corrections
    n_p = 0
    for key, rows in report["analyses"].items():
        for r in rows:
            if "p_value" in r:
                n_p += 1
                assert {"attribute", "p_holm", "p_fdr_bh"} <= set(r), key
                assert isinstance(r["attribute"], str)
    assert n_p > 20
    cons = report["consensus"]
    assert [r["attribute"] for r in cons] and all(
        {"attribute", "score", "rank"} <= set(r) for r in cons
    )
    ranks = [r["rank"] for r in cons]
    assert ranks == sorted(ranks), "consensus is listed most important first"
    assert {r["attribute"] for r in cons} == set(frame.groups)
    assert all({"source", "outcome", "message"} == set(w) for w in report["warnings"])


def test_planted_groups_lead_the_consensus(written):
    report = _strict_json(written.json.read_text(encoding="utf-8"))
    top3 = {r["attribute"] for r in report["consensus"][:3]}
    assert top3 == set(PLANTED)


def test_csv_tables_say_what_the_json_says(written):
    report = _strict_json(written.json.read_text(encoding="utf-8"))
    for name in TABLES:
        path = written.tables[name]
        rows = report["consensus"] if name == "consensus" else report["analyses"][name]
        if not rows:
            assert path.read_text().strip() == ""
            continue
        df = pd.read_csv(path)
        assert len(df) == len(rows), name
        if "p_value" in df.columns:
            got = df["p_value"].to_numpy(float)
            want = np.array([np.nan if r["p_value"] is None else r["p_value"] for r in rows])
            np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)
    assert len(pd.read_csv(written.tables["warnings"])) == len(report["warnings"])


def test_html_is_self_contained_with_all_figures(written):
    html = written.html.read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/(png|svg\+xml);base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) >= 4  # forest plot, importance bars, SHAP summary, consensus heat map
    for mime, b64 in images:  # a 2x PNG, or SVG where that stays small (studies.plots)
        data = base64.b64decode(b64)
        if mime == "png":
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert b"<svg" in data[:512] and data.rstrip().endswith(b"</svg>")
    assert "<script" not in html.lower()
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert set(written.figures) >= {"ap_glm_forest", "ap_importance", "ap_shap", "ap_consensus"}
    md = written.markdown.read_text(encoding="utf-8")
    consensus = written.figures["ap_consensus"]
    assert consensus.suffix in (".png", ".svg") and consensus.exists()
    assert f"](figures/{consensus.name})" in md and "## Outcome ap" in md
    # each figure opens its own file, named by what it holds
    assert f'<a href="figures/{consensus.name}">' in html


def test_same_seed_gives_byte_identical_json(frame, written, tmp_path):
    again = run_battery(frame, seed=0, progress=False, strict=True, **QUICK)
    files = write_report(
        again, tmp_path / "same", input_info={"path": "sim.csv", "format": "csv"}, figures=False
    )
    assert files.json.read_bytes() == written.json.read_bytes()
    other = run_battery(frame, seed=1, progress=False, strict=True, **QUICK)
    files = write_report(
        other, tmp_path / "other", input_info={"path": "sim.csv", "format": "csv"}, figures=False
    )
    assert files.json.read_bytes() != written.json.read_bytes()


EVIL = "<img src=x onerror=alert(1)>|*_[x](y)"


def test_user_text_is_escaped_in_html_and_markdown(written):
    report = _strict_json(written.json.read_text(encoding="utf-8"))
    # Rename an attribute group everywhere to a name full of markup.
    evil = json.loads(json.dumps(report).replace('"gender"', json.dumps(EVIL)))
    html = render_html(evil, figures={})
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;|*_[x](y)" in html
    md = render_markdown(evil)
    assert md_escape(EVIL) in md
    assert not re.search(r"(?<!\\)<img", md)
    # an escaped pipe must not split a cell: every row of a table has the header's cell count
    header_cells, checked = None, 0
    for line in md.splitlines():
        if not line.startswith("|"):
            header_cells = None
            continue
        cells = len(re.split(r"(?<!\\)\|", line))
        if header_cells is None:
            header_cells = cells
        assert cells == header_cells, line
        checked += md_escape(EVIL) in line
    assert checked >= 3


def test_markdown_escape_known_answers():
    assert md_escape("a|b") == r"a\|b"
    assert md_escape("x_y*z") == r"x\_y\*z"
    assert md_escape("<b>") == r"\<b\>"
    assert md_escape("two\nlines") == "two lines"
    assert md_escape("plain 0.5") == "plain 0.5"


def test_nan_and_numpy_values_become_json():
    df = pd.DataFrame(
        {
            "attribute": pd.Categorical(["a", "b"]),
            "x": [np.nan, np.inf],
            "n": np.array([1, 2], dtype=np.int64),
            "flag": np.array([True, False]),
        }
    )
    assert records(df) == [
        {"attribute": "a", "x": None, "n": 1, "flag": True},
        {"attribute": "b", "x": None, "n": 2, "flag": False},
    ]
    assert clean_value({"v": np.float32(0.5), "l": [np.nan, 1]}) == {"v": 0.5, "l": [None, 1]}
    assert dumps({"a": float("nan")}) == '{\n  "a": null\n}\n'
    with pytest.raises(ValueError):
        json.dumps({"a": float("nan")}, allow_nan=False)  # the guard dumps relies on


def test_missing_corrections_are_added_with_known_answers():
    df = pd.DataFrame({"attribute": ["a", "b", "c", "d"], "p_value": [0.01, 0.04, 0.03, np.nan]})
    out = _ensure_adjusted(df)
    # Holm: sorted 0.01*3, 0.03*2, max(0.04*1, 0.06); BH: 0.01*3/1, 0.03*3/2, 0.04*3/3
    np.testing.assert_allclose(out["p_holm"], [0.03, 0.06, 0.06, np.nan], equal_nan=True)
    np.testing.assert_allclose(out["p_fdr_bh"], [0.03, 0.04, 0.04, np.nan], equal_nan=True)


def test_a_failing_step_becomes_a_warning(frame, monkeypatch, tmp_path):
    import studies.glm

    def boom(*args, **kwargs):
        raise RuntimeError("singular design in the test")

    monkeypatch.setattr(studies.glm, "fit_glm", boom)
    small = dict(QUICK, n_bootstrap=0)
    result = run_battery(frame, models=("xgb",), progress=False, **small)
    msgs = [w.message for w in result.warnings if w.source == "glm"]
    assert any("singular design in the test" in m for m in msgs)
    assert result.outcome("ap").table("glm_coefficients").empty
    assert not result.outcome("ap").table("consensus").empty  # the other methods still rank
    files = write_report(result, tmp_path, figures=False)
    report = _strict_json(files.json.read_text(encoding="utf-8"))
    assert any("singular design" in w["message"] for w in report["warnings"])
    with pytest.raises(RuntimeError, match="singular design"):
        run_battery(frame, models=("xgb",), progress=False, strict=True, **small)


def test_progress_callback_reaches_the_total(frame, monkeypatch):
    import studies.importance

    calls = []
    real = studies.importance.grouped_permutation_importance
    monkeypatch.setattr(
        studies.importance,
        "grouped_permutation_importance",
        lambda *a, **k: real(*a, **{**k, "n_repeats": 1}),
    )
    run_battery(
        frame, models=("xgb",), progress=lambda *c: calls.append(c), **dict(QUICK, n_bootstrap=0)
    )
    totals = {c[2] for c in calls}
    assert len(totals) == 1
    done = [c[1] for c in calls]
    assert done == sorted(done) and done[-1] == totals.pop()
    assert any("GLM" in c[0] for c in calls)


def test_every_report_key_is_documented(written):
    """docs/report-schema.md names every key the writer produces (catches silent drift)."""
    from studies.battery import METHODS
    from tests.conftest import REPO

    doc = (REPO / "docs" / "report-schema.md").read_text(encoding="utf-8")
    report = _strict_json(written.json.read_text(encoding="utf-8"))
    keys = set(report) | set(report["settings"]) | set(report["input"]) | set(report["analyses"])
    keys |= {k for o in report["outcomes"] for k in o} | {k for w in report["warnings"] for k in w}
    keys |= {k for rows in report["analyses"].values() for r in rows for k in r}
    keys |= {k for r in report["summary"] for k in r}
    keys |= {k for r in report["consensus"] for k in r if k not in {f"rank_{m}" for m in METHODS}}
    missing = sorted(k for k in keys if f"`{k}`" not in doc)
    assert not missing, f"undocumented report keys: {missing}"
    assert f'`"{SCHEMA_VERSION}"`' in doc

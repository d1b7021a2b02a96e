"""`attrimp study analyze`: the bundled example works, a user's mistake is one sentence and exit
code 2 (never a traceback), and degenerate-but-legal tables give a report with warnings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from attrimp.cli import app
from studies.simulate import market_like_schema_toml, simulate_reid_table
from tests.conftest import REPO

EXAMPLE = REPO / "studies" / "examples" / "market_like.csv"
EXAMPLE_SCHEMA = REPO / "studies" / "examples" / "market_like_schema.toml"
FAST = ["--quick", "--no-progress", "--no-figures", "--repeats", "1", "--bootstrap", "0"]


def _invoke(*args: str):
    return CliRunner().invoke(app, ["study", "analyze", *map(str, args)])


def _report(out) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def small_table(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables")
    df = simulate_reid_table(600, n_identities=120, effects={"upcolor": 1.5}, seed=5)
    path = d / "small.csv"
    df.to_csv(path, index=False)
    schema = d / "schema.toml"
    schema.write_text(market_like_schema_toml())
    return path, schema, df


def test_bundled_example_runs(tmp_path):
    """The README's first command, in its fast form (the full one is the slow test below)."""
    assert EXAMPLE.stat().st_size < 1_000_000
    out = tmp_path / "example"
    res = _invoke(
        EXAMPLE,
        "--outcome",
        "ap",
        "--cluster",
        "pid",
        "--exclude",
        "query",
        "--schema",
        EXAMPLE_SCHEMA,
        "--out",
        out,
        "--quick",
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    assert "Which attributes matter for ap" in res.stdout
    for name in ("report.json", "report.md", "report.html", "tables/consensus.csv"):
        assert (out / name).is_file(), name
    report = _report(out)
    top = [r["attribute"] for r in report["consensus"][:3]]
    # the example plants its strongest effects on the two colour groups and gender
    assert set(top) == {"downcolor", "upcolor", "gender"}, top


@pytest.mark.slow
def test_readme_command_verbatim(tmp_path):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    line = next(ln for ln in readme.splitlines() if "attrimp study analyze studies/" in ln)
    cmd = line[line.index("attrimp study analyze") :].replace("runs/example", str(tmp_path / "ex"))
    cmd = cmd.replace("attrimp", f"{sys.executable} -m attrimp", 1)
    proc = subprocess.run(cmd, shell=True, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ex" / "report.html").is_file()


def _bad_tables(tmp_path, small_table):
    path, schema, df = small_table
    t = {}
    t["missing file"] = ([tmp_path / "nope.csv", "--outcome", "ap"], "does not exist")
    t["unknown suffix"] = (
        [_write(tmp_path / "t.xlsx", "a,ap\n1,0.5\n"), "--outcome", "ap"],
        "suffix",
    )
    t["missing column"] = (
        [path, "--outcome", "ap", "--cluster", "person", "--schema", schema],
        "no column 'person'",
    )
    nonnum = df.astype({"ap": object})
    nonnum.loc[3, "ap"] = "high"
    t["non-numeric outcome"] = (
        [_csv(tmp_path / "nonnum.csv", nonnum), "--outcome", "ap", "--schema", schema],
        "not numeric",
    )
    allnan = df.assign(ap=np.nan)
    t["all-NaN outcome"] = (
        [_csv(tmp_path / "allnan.csv", allnan), "--outcome", "ap", "--schema", schema],
        "all NaN",
    )
    few = df.drop_duplicates("pid").head(8)  # 8 identities, ~20 model parameters
    t["too few rows"] = (
        [_csv(tmp_path / "few.csv", few), "--outcome", "ap", "--schema", schema],
        "usable rows",
    )
    t["nothing varies"] = (
        [
            _csv(tmp_path / "one.csv", df[df["pid"] == df["pid"].iloc[0]]),
            "--outcome",
            "ap",
            "--schema",
            schema,
        ],
        "No attribute",
    )
    t["duplicated column"] = (
        [_write(tmp_path / "dup.csv", "pid,hat,hat,ap\n1,1,2,0.5\n2,2,1,0.4\n"), "--outcome", "ap"],
        "repeats the column name",
    )
    t["paired-by without condition"] = (
        [path, "--outcome", "ap", "--paired-by", "query"],
        "--condition",
    )
    t["bad margin"] = (
        [path, "--outcome", "ap", "--margin", "-1", "--schema", schema],
        "margin",
    )
    t["bad alpha"] = ([path, "--outcome", "ap", "--alpha", "1.5", "--schema", schema], "--alpha")
    t["missing schema"] = ([path, "--outcome", "ap", "--schema", tmp_path / "no.toml"], "no.toml")
    return t


def _write(path, text):
    path.write_text(text)
    return path


def _csv(path, df):
    df.to_csv(path, index=False)
    return path


BAD = [
    "missing file",
    "unknown suffix",
    "missing column",
    "non-numeric outcome",
    "all-NaN outcome",
    "too few rows",
    "nothing varies",
    "duplicated column",
    "paired-by without condition",
    "bad margin",
    "bad alpha",
    "missing schema",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_sentence_and_exit_2(case, tmp_path, small_table):
    args, fragment = _bad_tables(tmp_path, small_table)[case]
    res = _invoke(*args, "--out", tmp_path / "out", *FAST)
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert err.startswith("error:"), err
    assert len(err.splitlines()) == 1, err
    assert fragment in err, err
    assert "Traceback" not in res.output
    # a refused input leaves nothing behind: no --out folder holding only .attrimp.lock
    assert not (tmp_path / "out").exists(), sorted((tmp_path / "out").iterdir())


@pytest.mark.parametrize("case", ["missing file", "missing column"])
def test_refused_input_leaves_an_existing_out_as_it_was(case, tmp_path, small_table):
    """Refused before (missing file) or after (missing column) --out is locked: a folder that
    was there keeps its files and gains no lock file; one made for the run is removed,
    parents included."""
    args, _ = _bad_tables(tmp_path, small_table)[case]
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    res = _invoke(*args, "--out", kept, *FAST)
    assert res.exit_code == 2, res.output
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
    res = _invoke(*args, "--out", tmp_path / "new" / "deeper", *FAST)
    assert res.exit_code == 2, res.output
    assert not (tmp_path / "new").exists()


def test_bad_input_through_the_console_script(tmp_path):
    """The real entry point (not typer's runner): same sentence, exit 2, no traceback, and
    nothing written: run from a scratch folder with the default --out (runs/analyze), which
    must not appear."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "attrimp",
            "study",
            "analyze",
            str(tmp_path / "nope.csv"),
            "--outcome",
            "ap",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def _degenerate_table(seed: int = 0) -> pd.DataFrame:
    """Clustered rows with a planted effect plus four degenerate-but-legal attributes."""
    rng = np.random.default_rng(seed)
    n_id, per = 80, 5
    pid = np.repeat(np.arange(n_id), per)
    g = rng.integers(0, 2, n_id)
    colour = rng.integers(0, 3, n_id)
    df = pd.DataFrame(
        {
            "pid": pid,
            "gender": np.where(g[pid] == 1, "female", "male"),
            "constant": "same",  # a single-level attribute
            "gender_copy": np.where(g[pid] == 1, "f", "m"),  # collinear with gender
            "rare": np.where(pid == 0, "yes", "no"),  # one cluster only
        }
    )
    for k, name in enumerate(("red", "blue", "green", "never")):  # 'never' is an empty category
        df[f"col_{name}"] = (colour[pid] == k).astype(int)
    ap = 1 / (1 + np.exp(-(0.5 + 1.0 * g[pid] + rng.normal(0, 1, len(pid)))))
    ap[df["rare"].to_numpy() == "yes"] = 1.0  # perfect separation of rare=yes
    df["ap"] = ap
    return df


def test_degenerate_but_legal_input_gives_report_with_warnings(tmp_path):
    df = _degenerate_table()
    table = _csv(tmp_path / "degenerate.csv", df)
    schema = tmp_path / "groups.toml"
    schema.write_text(
        "[[groups]]\nname = 'gender'\ncolumn = 'gender'\n"
        "[[groups]]\nname = 'constant'\ncolumn = 'constant'\n"
        "[[groups]]\nname = 'gender_copy'\ncolumn = 'gender_copy'\n"
        "[[groups]]\nname = 'rare'\ncolumn = 'rare'\n"
        "[[groups]]\nname = 'colour'\ncolumns = ['col_red', 'col_blue', 'col_green', 'col_never']\n"
        "values = ['red', 'blue', 'green', 'never']\npositive = 1\n"
    )
    out = tmp_path / "out"
    res = _invoke(
        table, "--outcome", "ap", "--cluster", "pid", "--schema", schema, "--out", out, *FAST
    )
    assert res.exit_code == 0, res.output
    report = _report(out)
    text = " ".join(w["message"] for w in report["warnings"])
    assert "'constant'" in text and "single value" in text
    assert "'gender' and 'gender_copy'" in text and "collinear" in text
    assert "'never'" in text  # the empty category
    assert "'rare'" in text and "Separation" in text  # one cluster, all ap = 1
    assert "constant" in report["excluded_attributes"]
    assert report["consensus"], "the other attributes are still ranked"
    assert report["consensus"][0]["attribute"] in {"gender", "gender_copy"}


def test_user_text_with_markup_is_escaped_end_to_end(tmp_path):
    df = _degenerate_table().rename(columns={"gender": "<b>gen|der*</b>"})
    df = df.drop(columns=["gender_copy", "constant", "rare"])
    table = _csv(tmp_path / "markup.csv", df)
    out = tmp_path / "out"
    res = _invoke(
        table,
        "--outcome",
        "ap",
        "--cluster",
        "pid",
        "--out",
        out,
        "--quick",
        "--no-progress",
        "--repeats",
        "1",
        "--bootstrap",
        "0",
    )
    assert res.exit_code == 0, res.output
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<b>gen" not in html and "&lt;b&gt;gen|der*&lt;/b&gt;" in html
    md = (out / "report.md").read_text(encoding="utf-8")
    assert r"\<b\>gen\|der\*\</b\>" in md


def test_paired_design(tmp_path):
    """The same queries under two configurations: paired tests between the conditions."""
    base = simulate_reid_table(400, n_identities=80, effects={"gender": 1.0}, seed=9)
    a = base.assign(config="full")
    b = base.assign(config="no_gender", ap=np.clip(base["ap"] - 0.05, 0, 1))
    table = _csv(tmp_path / "paired.csv", pd.concat([a, b], ignore_index=True))
    schema = tmp_path / "schema.toml"
    schema.write_text(market_like_schema_toml())
    out = tmp_path / "out"
    res = _invoke(
        table,
        "--outcome",
        "ap",
        "--cluster",
        "pid",
        "--paired-by",
        "query",
        "--condition",
        "config",
        "--schema",
        schema,
        "--out",
        out,
        *FAST,
    )
    assert res.exit_code == 0, res.output
    report = _report(out)
    assert report["input"]["paired_by"] == "query" and report["input"]["condition"] == "config"
    paired = report["analyses"]["paired_tests"]
    assert paired, "paired tests are reported"
    assert all({"attribute", "p_value", "p_holm", "p_fdr_bh"} <= set(r) for r in paired)
    # every pair differs by -0.05 (or less at the clip): the shift is found
    assert min(r["p_value"] for r in paired) < 1e-6


@pytest.mark.slow
def test_same_seed_same_report_across_processes(tmp_path, small_table):
    """Byte-identical report.json from two processes with different hash seeds."""
    path, schema, _ = small_table
    outs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"run{hash_seed}"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "attrimp",
                "study",
                "analyze",
                str(path),
                "--outcome",
                "ap",
                "--cluster",
                "pid",
                "--schema",
                str(schema),
                "--out",
                str(out),
                *FAST[:-4],
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        )
        assert proc.returncode == 0, proc.stderr
        outs.append((out / "report.json").read_bytes())
    assert outs[0] == outs[1]


def test_study_run_prints_its_answer_to_stdout_and_progress_to_stderr(monkeypatch, tmp_path):
    """Results to stdout, progress to stderr, as `study analyze` does: the answer table and the
    report path on stdout (so `attrimp study run > answer.txt` keeps them), what run_study
    prints on the console it is handed on stderr. run_study is replaced by a stand-in that
    prints one progress line and returns a known answer, so no study runs."""
    from types import SimpleNamespace

    import attrimp.study.run

    def fake_run_study(cfg, out, *, resume, progress, console):
        console.print("      data synthetic → stage line")
        groups = [
            {"rank": 1, "attribute": "upcolor", "verdict": "helps", "direction": "helps",
             "delta_map": 0.0123, "mde": 0.004},
        ]  # fmt: skip
        report = {"answer": {"groups": groups}, "headline": {"full_mAP": 0.89}}
        return SimpleNamespace(report=report, out=Path(out))

    monkeypatch.setattr(attrimp.study.run, "run_study", fake_run_study)
    res = CliRunner().invoke(app, ["study", "run", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert "upcolor" in res.stdout and "+0.0123" in res.stdout and "report.html" in res.stdout
    assert "stage line" in res.stderr and "upcolor" not in res.stderr


def test_study_analyze_prints_its_answer_to_stdout(tmp_path, small_table):
    path, schema, _ = small_table
    res = _invoke(path, "--outcome", "ap", "--schema", schema, "--out", tmp_path / "o", *FAST)
    assert res.exit_code == 0, res.output
    assert "Which attributes matter for ap" in res.stdout and "upcolor" in res.stdout
    assert "upcolor" not in res.stderr

"""The Python API: `studies.analyze` finds a planted effect and writes exactly what `attrimp
study analyze` writes; `attrimp.create_model` builds a working model and refuses an unknown
option in one sentence; `attrimp.study_config` merges overrides; `import studies, attrimp`
stays torch-free; library calls print nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

import attrimp
import studies
from attrimp.cli import app
from attrimp.errors import ConfigError
from attrimp.io import LOCK_FILE
from studies.battery import TABLES
from studies.simulate import market_like_schema_toml, simulate_reid_table
from tests.conftest import REPO

#: small battery sizes: seconds, not minutes
FAST = dict(quick=True, n_repeats=1, n_bootstrap=0, models=("rf",))
FAST_FLAGS = ["--quick", "--repeats", "1", "--bootstrap", "0", "--model", "rf", "--no-progress"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A clustered table whose only planted effect is the upper-body colour, with its schema."""
    d = tmp_path_factory.mktemp("planted")
    df = simulate_reid_table(800, n_identities=160, effects={"upcolor": 2.0}, seed=11)
    table, schema = d / "planted.csv", d / "schema.toml"
    df.to_csv(table, index=False)
    schema.write_text(market_like_schema_toml())
    return table, schema, df


@pytest.fixture(scope="module")
def api_and_cli(planted, tmp_path_factory):
    """The same table through the API (saved) and through the CLI, figures included."""
    table, schema, _ = planted
    d = tmp_path_factory.mktemp("both")
    report = studies.analyze(
        table,
        outcome="ap",
        cluster="pid",
        exclude=["query", "camid", "rank1", "first_hit"],
        schema=schema,
        seed=3,
        **FAST,
    )
    report.save(d / "api")
    args = [str(table), "--outcome", "ap", "--cluster", "pid", "--schema", str(schema)]
    for col in ("query", "camid", "rank1", "first_hit"):
        args += ["--exclude", col]
    res = CliRunner().invoke(
        app, ["study", "analyze", *args, "--seed", "3", "--out", str(d / "cli"), *FAST_FLAGS]
    )
    assert res.exit_code == 0, res.output
    return report, d / "api", d / "cli"


def test_analyze_ranks_the_planted_attribute_first(api_and_cli):
    report = api_and_cli[0]
    cons = report.consensus
    assert {"attribute", "score", "rank"} <= set(cons.columns)
    assert cons.iloc[0]["attribute"] == "upcolor", cons[["attribute", "rank"]]
    assert cons["rank"].dropna().is_monotonic_increasing
    assert cons["rank"].isna().sum() == (cons["verdict"] == "not testable").sum()
    glm = report.glm_tests.set_index("attribute")
    assert glm.loc["upcolor", "p_holm"] < 1e-3
    # the planted group tops the model-based methods too, not only the consensus
    imp = report.importance
    assert imp.loc[imp["importance"].idxmax(), "attribute"] == "upcolor"


def test_to_dict_is_the_report_json_the_cli_writes(api_and_cli):
    report, _, cli = api_and_cli
    assert report.to_dict() == json.loads((cli / "report.json").read_text(encoding="utf-8"))


def test_save_writes_the_same_files_as_the_cli(api_and_cli):
    _, api, cli = api_and_cli

    def files(folder):
        return sorted(
            str(p.relative_to(folder))
            for p in folder.rglob("*")
            if p.is_file()
            if p.name != LOCK_FILE
        )

    assert files(api) == files(cli)
    assert {"report.json", "report.md", "report.html", "tables/consensus.csv"} <= set(files(api))
    assert any(name.startswith("figures/") for name in files(api))
    for name in ("report.json", "report.md", "tables/consensus.csv", "tables/warnings.csv"):
        assert (api / name).read_bytes() == (cli / name).read_bytes(), name


def test_every_table_is_a_tidy_attribute(api_and_cli):
    report = api_and_cli[0]
    assert set(report.tables) == set(TABLES)
    for name in TABLES:
        assert isinstance(getattr(report, name), pd.DataFrame), name
    pd.testing.assert_frame_equal(report.glm, report.glm_coefficients)
    pd.testing.assert_frame_equal(report.importance, report.permutation_importance)
    assert not report.glm.empty and not report.shap.empty and not report.prevalence.empty
    assert set(report.summary["attribute"]) == set(report.consensus["attribute"])
    with pytest.raises(KeyError, match="no table 'anova'"):
        report.table("anova")
    with pytest.raises(AttributeError, match="anova"):
        report.anova  # noqa: B018


def test_repr_shows_the_consensus_ranking(api_and_cli):
    report = api_and_cli[0]
    text = repr(report)
    assert text.startswith("StudyReport(800 rows, 12 attribute groups, outcome ap")
    assert "ap: 1. upcolor" in text
    html = report._repr_html_()
    assert "<table" in html and "upcolor" in html


def test_warnings_collects_input_and_analysis_warnings_in_one_list(planted, tmp_path):
    """Columns the schema does not name are an input warning; it reaches ``.warnings`` beside the
    analyses' ones, and the same list is tables/warnings.csv."""
    _, schema, df = planted
    report = studies.analyze(
        df, outcome="ap", cluster="pid", exclude=["query", "camid"], schema=schema, **FAST
    )
    assert any(
        w.startswith("[input]") and "not in the schema are not analysed: 'rank1'" in w
        for w in report.warnings
    ), report.warnings
    assert len(report.warnings) == len(report.warnings_table)
    assert report.to_dict()["input"]["path"] == "<DataFrame>"
    saved = report.save(tmp_path / "r", figures=False)
    assert len(pd.read_csv(saved.tables["warnings"])) == len(report.warnings)


def test_analysis_step_warning_reaches_the_list(monkeypatch, planted):
    import studies.prevalence

    def broken(*args, **kwargs):
        raise FloatingPointError("degenerate")

    monkeypatch.setattr(studies.prevalence, "effect_vs_prevalence", broken)
    _, schema, df = planted
    report = studies.analyze(
        df,
        outcome="ap",
        cluster="pid",
        exclude=["query", "camid", "rank1", "first_hit"],
        schema=schema,
        **FAST,
    )
    hits = [w for w in report.warnings if w.startswith("[prevalence, ap]")]
    assert hits and "FloatingPointError: degenerate" in hits[0], report.warnings


def test_analyze_is_quiet_and_refuses_bad_options_in_one_sentence(planted, capsys):
    _, schema, df = planted
    studies.analyze(df.head(300), outcome="ap", cluster="pid", exclude=["query"], **FAST)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    with pytest.raises(studies.StudyInputError, match="paired_by needs condition"):
        studies.analyze(df, outcome="ap", paired_by="query")
    with pytest.raises(studies.StudyInputError, match="alpha must lie strictly between"):
        studies.analyze(df, outcome="ap", alpha=2.0)
    with pytest.raises(studies.StudyInputError, match="has no column 'mAP'"):
        studies.analyze(df, outcome="mAP")
    with pytest.raises(studies.StudyInputError, match="DataFrame or a file path"):
        studies.analyze([1, 2], outcome="ap")


def test_import_stays_torch_free():
    code = (
        "import sys, studies, attrimp\n"
        "studies.analyze, studies.StudyReport, attrimp.create_model, attrimp.run_study\n"
        "bad = [m for m in ('torch', 'torchvision', 'timm', 'open_clip') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- attrimp


def test_create_model_builds_a_model_whose_forward_runs():
    import torch

    from attrimp.model.mosaic import MoSAICReID

    torch.manual_seed(0)
    model = attrimp.create_model(
        "timm:vit_tiny_patch16_224",
        schema="dukemtmc",
        pretrained=False,
        img_size=(32, 16),
        backbone_kwargs={"tiny": True},
        rank=2,
        num_classes=5,
    )
    assert isinstance(model, MoSAICReID)
    assert model.schema.name == "dukemtmc" and model.config.rank == 2
    assert model.config.pretrained is None
    attrs = torch.zeros(2, model.schema.n_slots)
    attrs[:, model.schema.slot("gender", "female")] = 1.0
    out = model(torch.randn(2, 3, 32, 16), attrs)
    assert out.features.shape == (2, model.backbone.width)
    assert out.logits.shape == (2, 5)


def test_create_model_unknown_option_is_one_sentence_listing_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        attrimp.create_model("timm:vit_tiny_patch16_224", pretrained=False, tiny=True)
    message = str(info.value)
    assert message.startswith("create_model has no option 'tiny'; valid options are ")
    assert "rank" in message and "backbone_kwargs" in message and "\n" not in message


def test_study_config_merges_sections_and_dotted_overrides():
    base = attrimp.study_config()
    cfg = attrimp.study_config(None, device="cpu", train={"epochs": 1}, **{"eval.max_rank": 5})
    assert cfg.device == "cpu" and cfg.train.epochs == 1 and cfg.eval.max_rank == 5
    assert cfg.train.lr == base.train.lr  # the rest of the section is kept
    tiny = attrimp.study_config(REPO / "studies" / "configs" / "synthetic_tiny.toml")
    assert tiny.name == "synthetic_tiny"
    with pytest.raises(ConfigError, match=r"run_study overrides: Unknown setting train\.epoch;"):
        attrimp.study_config(None, train={"epoch": 1})
    with pytest.raises(ConfigError, match="device must be one of"):
        attrimp.study_config(None, device="tpu")


def test_run_study_is_quiet_by_default_and_wraps_the_result(monkeypatch, tmp_path):
    """`attrimp.run_study` hands `attrimp.study.run.run_study` the merged config with progress
    off (the slow README example runs a real study); its result exposes the consensus."""
    import attrimp.study.run as study_run

    seen = {}

    def fake_run(cfg, out, *, resume, progress, **kwargs):
        seen.update(cfg=cfg, out=out, resume=resume, progress=progress)
        report = {"consensus": [{"attribute": "upcolor", "rank": 1.0, "score": 0.9}]}
        empty = pd.DataFrame()
        return study_run.StudyResult(
            out=out, configs=empty, per_query=empty, deltas=empty, importance=empty, report=report
        )

    monkeypatch.setattr(study_run, "run_study", fake_run)
    result = attrimp.run_study(out=tmp_path / "s", train={"epochs": 1}, resume=False)
    assert seen["progress"] is False and seen["resume"] is False
    assert seen["cfg"].train.epochs == 1 and seen["cfg"].name == "synthetic"
    assert result.consensus["attribute"].tolist() == ["upcolor"]
    assert result.report_html == tmp_path / "s" / "report.html"
    assert "1. upcolor" in repr(result)

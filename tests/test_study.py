"""`attrimp study run`: end to end on a tiny config, exact resume after kill -9, the planted truth."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import tomllib

import pandas as pd
import pytest
from typer.testing import CliRunner

from attrimp.cli import app
from attrimp.config import config_from_dict
from attrimp.study.run import run_study
from tests.conftest import REPO

TINY = tomllib.loads((REPO / "studies" / "configs" / "synthetic_tiny.toml").read_text())
TINY["ablation"] = {
    "designs": ["full", "backbone", "leave_one_out", "random_subsets", "noisy", "attribute_only"],
    "random_subsets": 8,
    "noisy_p": [0.5],
}
TINY["analysis"] = {"repeats": 2}
TINY_GROUPS = [
    "gender",
    "hair",
    "up",
    "down",
    "clothes",
    "hat",
    "backpack",
    "bag",
    "handbag",
    "age",
    "upcolor",
    "downcolor",
]
TINY["train"]["epochs"] = 2


def test_tiny_study_end_to_end(tmp_path):
    cfg = config_from_dict(TINY)
    result = run_study(cfg, tmp_path, progress=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["schema_version"] == "attrimp.study.run-report/3"
    groups = report["data"]["groups"]
    assert len(groups) == 12
    configs = pd.read_csv(tmp_path / "tables" / "configs.csv")
    # full + backbone + 12 leave-one-out + 8 subsets + 1 noisy
    assert len(configs) == 1 + 1 + 12 + 8 + 1
    assert set(["mAP", "rank1", "rank5", "rank10", "mINP"]) <= set(configs.columns)
    assert configs.loc[configs["config"] == "backbone", groups].to_numpy().sum() == 0
    per_query = pd.read_parquet(tmp_path / "tables" / "per_query.parquet")
    for col in ("config", "query", "pid", "camid", "ap", "rank1", "first_hit", "inp"):
        assert col in per_query.columns
    # the per-query table and the config table agree
    full = per_query[(per_query["config"] == "full") & per_query["valid"]]
    assert configs.loc[configs["config"] == "full", "mAP"].item() == pytest.approx(
        full["ap"].mean()
    )
    # every leave-one-out group has an importance row; the consensus lists every group, the
    # testable ones ranked in order, an untestable one (no rank) after them
    assert set(result.importance["attribute"]) == set(groups)
    ranked = [r["rank"] for r in report["consensus"] if r["rank"] is not None]
    assert ranked == sorted(ranked)
    assert all(r["rank"] is not None for r in report["consensus"][: len(ranked)])
    assert {r["attribute"] for r in report["consensus"]} == set(groups)
    assert report["attribute_only"]["mAP"] is not None
    assert report["model"]["bank"] == "adapter" and report["model"]["n_experts"] == 35
    html = (tmp_path / "report.html").read_text()
    # figures are embedded (SVG where small, else PNG) and written beside the page
    assert "data:image/svg+xml;base64," in html or "data:image/png;base64," in html
    assert "Leave-one-group-out" in html
    assert list((tmp_path / "figures").glob("priors_every.*"))
    assert (tmp_path / "analyses" / "switching" / "report.json").exists()
    _check_stage_timings(report["timings"], report["data"], n_conditions=len(configs))


def _check_stage_timings(timings, data, *, n_conditions):
    """Every stage's wall time and peak memory are in report.json, in the order they ran."""
    stages = {r["stage"]: r for r in timings["stages"]}
    top = ["data", "train", "prefix_cache", "sweep", "tables", "analyses", "report"]
    batteries = ["analyses.switching", "analyses.paired", "analyses.configurations"]
    assert [r["stage"] for r in timings["stages"] if "." not in r["stage"]] == top
    assert set(batteries + ["analyses.attributes"]) <= set(stages)
    for r in timings["stages"]:
        assert r["seconds"] >= 0 and r["peak_rss_mb"] > 0, r
    assert timings["total_seconds"] == pytest.approx(sum(stages[s]["seconds"] for s in top))
    nested = sum(r["seconds"] for s, r in stages.items() if s.startswith("analyses."))
    assert nested <= stages["analyses"]["seconds"]
    # a nested stage's peak counts in its parent's
    assert stages["analyses"]["peak_rss_mb"] >= max(stages[b]["peak_rss_mb"] for b in batteries)
    assert stages["sweep"]["conditions"] == n_conditions
    assert stages["sweep"]["seconds_per_condition"] == pytest.approx(
        stages["sweep"]["seconds"] / n_conditions
    )
    assert stages["analyses.switching"]["rows"] > stages["analyses.attributes"]["rows"] > 0
    prefix = stages["prefix_cache"]
    images = data["query_images"] + data["gallery_images"]
    assert prefix["images"] == images and prefix["prefix_dtype"] == "float32"
    assert prefix["prefix_bytes"] == images * prefix["prefix_tokens"] * prefix["prefix_width"] * 4


KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from attrimp.config import config_from_dict
    from attrimp.study.run import run_study

    def die(i, name):
        if i == 3:
            os.kill(os.getpid(), signal.SIGKILL)

    run_study(config_from_dict(json.loads(sys.argv[1])), sys.argv[2], progress=False, on_condition=die)
    """
)


def test_killed_study_resumes_without_redoing_work_and_gives_the_same_report(tmp_path):
    cfg_dict = json.loads(json.dumps(TINY))
    cfg_dict["ablation"]["designs"] = ["full", "backbone", "leave_one_out", "attribute_only"]
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, json.dumps(cfg_dict), str(tmp_path / "run")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (tmp_path / "run" / "report.json").exists()
    resumed = run_study(config_from_dict(cfg_dict), tmp_path / "run", progress=False)
    assert resumed.cached["train"] == 1  # the model was not retrained
    assert resumed.cached["conditions"] == 4  # conditions 0..3 were written before the kill
    straight = run_study(config_from_dict(cfg_dict), tmp_path / "straight", progress=False)
    assert "train" not in straight.cached and straight.cached["conditions"] == 0
    for name in ("tables/configs.csv", "tables/leave_one_out_importance.csv"):
        assert (tmp_path / "run" / name).read_bytes() == (
            tmp_path / "straight" / name
        ).read_bytes(), name
    # the same report, apart from the wall times and memory of this run's stages
    reports = [json.loads((tmp_path / r / "report.json").read_text()) for r in ("run", "straight")]
    assert "timings" in reports[0] and "timings" in reports[1]
    assert {k: v for k, v in reports[0].items() if k != "timings"} == {
        k: v for k, v in reports[1].items() if k != "timings"
    }


def test_study_cli_bad_config_is_one_sentence(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochz = 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "attrimp", "study", "run", str(bad), "--out", str(tmp_path / "o")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Unknown setting train.epochz" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) <= 3  # one sentence (rich may wrap it)


def test_study_run_help_lists_the_builtin_default():
    result = CliRunner().invoke(app, ["study", "run", "--help"])
    assert result.exit_code == 0
    assert "built-in synthetic study" in result.output


def _loo_upcolor(tmp_path, visibility: float, seed: int) -> float:
    text = (REPO / "studies" / "configs" / "synthetic_study.toml").read_text()
    cfg = tomllib.loads(text)
    cfg["data"]["synthetic"].update(visibility={"upcolor": visibility}, seed=seed)
    cfg["train"]["seed"] = seed
    cfg["ablation"] = {"designs": ["full", "leave_one_out"]}
    cfg["device"] = "cpu"
    out = tmp_path / f"v{visibility}-s{seed}"
    run_study(config_from_dict(cfg), out, progress=False, stop_after="tables")
    imp = pd.read_csv(out / "tables" / "leave_one_out_importance.csv").set_index("attribute")
    return float(imp.loc["upcolor", "delta_map"])


@pytest.mark.slow
def test_planted_truth_invisible_attribute_matters_more(tmp_path):
    """The expert of a group the pixels do not show carries information the image lacks: with
    the upper colour annotated but not drawn, switching its experts off costs more mAP than when
    the colour is drawn, for every seed."""
    for seed in (0, 1, 2):
        invisible = _loo_upcolor(tmp_path, 0.0, seed)
        visible = _loo_upcolor(tmp_path, 1.0, seed)
        assert invisible > visible, (seed, invisible, visible)


@pytest.mark.slow
def test_readme_main_command_runs_the_builtin_study(tmp_path):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    line = next(ln for ln in readme.splitlines() if ".venv/bin/attrimp study run" in ln)
    cmd = line[line.index(".venv/bin/attrimp") :].replace("runs/study", str(tmp_path / "study"))
    cmd = cmd.replace(".venv/bin/attrimp", f"{sys.executable} -m attrimp", 1)
    proc = subprocess.run(cmd, shell=True, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "study" / "report.json").read_text())
    # the planted truth: the annotated-but-invisible upper colour leads the consensus
    assert report["consensus"][0]["attribute"] == "upcolor"


def test_train_time_ablation_retrains_per_configuration(tmp_path):
    cfg_dict = json.loads(json.dumps(TINY))
    cfg_dict["ablation"] = {"designs": ["full", "backbone"], "retrain": ["full", "backbone"]}
    cfg_dict["train"]["epochs"] = 1
    run_study(config_from_dict(cfg_dict), tmp_path, progress=False, stop_after="tables")
    configs = pd.read_csv(tmp_path / "tables" / "configs.csv").set_index("config")
    assert {"full", "backbone", "retrain:full", "retrain:backbone"} <= set(configs.index)
    groups = TINY_GROUPS
    assert configs.loc["retrain:backbone", groups].sum() == 0
    assert configs.loc["retrain:full", groups].sum() == len(groups)
    # two separately trained models: their accuracies are not the test-time ones
    assert len(list((tmp_path / "cache").glob("retrain-*/*.parquet"))) == 2


def test_retrain_refuses_test_time_only_designs():
    cfg_dict = json.loads(json.dumps(TINY))
    cfg_dict["ablation"]["retrain"] = ["counterfactual"]
    with pytest.raises(Exception, match="cannot retrain the design 'counterfactual'"):
        config_from_dict(cfg_dict)


def test_ablate_command_on_a_trained_checkpoint(tmp_path):
    cfg_dict = json.loads(json.dumps(TINY))
    cfg_dict["train"]["epochs"] = 1
    run_study(config_from_dict(cfg_dict), tmp_path / "study", progress=False, stop_after="train")
    run_dir = next((tmp_path / "study" / "cache").glob("train-*"))
    config = tmp_path / "tiny.toml"
    config.write_text((REPO / "studies" / "configs" / "synthetic_tiny.toml").read_text())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "attrimp",
            "ablate",
            str(config),
            "--checkpoint",
            str(run_dir),
            "--out",
            str(tmp_path / "ablate"),
            "--design",
            "full",
            "--design",
            "leave_one_out",
            "--device",
            "cpu",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    configs = pd.read_csv(tmp_path / "ablate" / "configs.csv")
    assert len(configs) == 1 + 12
    importance = pd.read_csv(tmp_path / "ablate" / "leave_one_out_importance.csv")
    assert len(importance) == 12


@pytest.mark.slow
def test_study_under_torchrun_shards_the_sweep_and_merges(tmp_path):
    """Two CPU processes (gloo): DDP training, the condition sweep split between the ranks, one
    merged report written by rank 0."""
    text = (REPO / "studies" / "configs" / "synthetic_tiny.toml").read_text()
    config = tmp_path / "tiny.toml"
    config.write_text(
        text.replace("epochs = 2", "epochs = 1")
        + '\n[ablation]\ndesigns = ["full", "backbone", "leave_one_out"]\n'
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "attrimp",
            "study",
            "run",
            str(config),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    configs = pd.read_csv(tmp_path / "out" / "tables" / "configs.csv")
    assert len(configs) == 2 + 12
    assert len(list((tmp_path / "out" / "cache").glob("conditions-*/*.parquet"))) == 14
    assert json.loads((tmp_path / "out" / "report.json").read_text())["consensus"]


def test_manifest_study_priors_count_each_identity_once(tmp_path):
    """A manifest dataset's priors come from its images' identity-level attributes."""
    from attrimp.data import load_reid_dataset, make_synthetic_world

    world = make_synthetic_world(
        tmp_path / "world",
        n_identities=12,
        n_cameras=2,
        images_per_identity_per_camera=2,
        size=(64, 32),
    )
    attrs = pd.read_csv(world / "market_attribute.csv").drop(columns="split")
    data = load_reid_dataset(world, "market1501", world / "market_attribute.mat")
    rows = [
        {"absolute_path": str(r.path), "pid": r.pid, "camid": r.camid, "split": r.split}
        for r in data.train + data.query + data.gallery
    ]
    manifest = pd.DataFrame(rows).merge(attrs, on="pid")
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    cfg_dict = json.loads(json.dumps(TINY))
    cfg_dict["data"] = {
        "dataset": "manifest",
        "root": str(tmp_path / "manifest.csv"),
        "schema": "market1501",
    }
    run_study(config_from_dict(cfg_dict), tmp_path / "out", progress=False, stop_after="data")
    priors = pd.read_csv(tmp_path / "out" / "tables" / "priors.csv")
    gender = priors[(priors["split"] == "all") & (priors["attribute"] == "gender")]
    assert gender["count"].sum() == 12  # identities, not images
    assert (tmp_path / "out" / "figures" / "priors.png").exists()

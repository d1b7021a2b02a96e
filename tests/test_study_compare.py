"""`attrimp.compare_studies` / `attrimp study compare`: finished study folders stacked into one
table of paired effects, arms named, pairing checked, and a planted difference found alone.

The fast tests write fake finished study folders (config.json, report.json, tables/deltas.csv,
tables/per_query.parquet, laid out as `attrimp study run` writes them) with planted leave-one-
out effects, so no model is trained; one slow test compares two real tiny studies.
"""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from attrimp.cli import app
from attrimp.config import config_from_dict
from attrimp.study.compare import ALL_EXPERTS, StudyFolderError, compare_studies, load_run
from tests.conftest import REPO

TINY = tomllib.loads((REPO / "studies" / "configs" / "synthetic_tiny.toml").read_text())
MARKET = ["gender", "hair", "up", "down", "clothes", "hat", "backpack", "bag", "handbag", "age"]
MARKET += ["upcolor", "downcolor"]
DUKE = ["gender", "top", "boots", "shoes", "hat", "backpack", "bag", "handbag"]
DUKE += ["upcolor", "downcolor"]
SHARED = [g for g in MARKET if g in DUKE]


def _config(**overrides) -> dict:
    """A real study config (every default filled in), with dotted-key overrides."""
    raw = copy.deepcopy(TINY)
    for key, value in overrides.items():
        *path, last = key.split(".")
        node = raw
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return config_from_dict(raw).to_dict()


def make_study(
    folder: Path,
    *,
    seed: int = 0,
    effects: dict[str, float] | None = None,
    dataset: str = "synthetic",
    schema: str = "market1501",
    groups: list[str] = MARKET,
    identities: int = 40,
    pid_offset: int = 0,
    config: dict | None = None,
    arm_json: dict | None = None,
) -> Path:
    """A finished study folder whose leave-one-out Δ of each group is ``effects[group]``
    (default 0.02) plus identity and query noise, and a seed-level jitter (training noise)."""
    rng = np.random.default_rng([seed, identities, pid_offset, len(groups), len(dataset)])
    effects = effects or {}
    pids = np.repeat(np.arange(identities) + pid_offset, 3)
    queries = [f"{p:04d}_c{i % 3 + 1}s1_{i:06d}_00.jpg" for i, p in enumerate(pids)]
    n = len(pids)
    ap_full = np.clip(0.75 + 0.1 * rng.standard_normal(n), 0, 1)
    gain = 0.3 + 0.05 * rng.standard_normal(n)
    rows = []
    for g in groups:
        mu = effects.get(g, 0.02) + 0.004 * rng.standard_normal()  # training-run jitter
        ident = 0.02 * rng.standard_normal(identities)[pids - pid_offset]
        delta = mu + ident + 0.04 * rng.standard_normal(n)
        rows.append(
            pd.DataFrame(
                {
                    "query": queries,
                    "pid": pids,
                    "group": g,
                    "ap_full": ap_full,
                    "ap_without": ap_full - delta,
                    "delta_ap": delta,
                }
            )
        )
    tables = folder / "tables"
    tables.mkdir(parents=True)
    pd.concat(rows).to_csv(tables / "deltas.csv", index=False)
    per_query = pd.concat(
        [
            pd.DataFrame({"config": "full", "query": queries, "pid": pids, "ap": ap_full}),
            pd.DataFrame(
                {"config": "backbone", "query": queries, "pid": pids, "ap": ap_full - gain}
            ),
        ]
    ).assign(valid=True)
    per_query.to_parquet(tables / "per_query.parquet", index=False)
    cfg = config if config is not None else _config(**{"train.seed": seed})
    cfg["train"]["seed"] = seed
    (folder / "config.json").write_text(json.dumps(cfg))
    report = {
        "schema_version": "attrimp.study.run-report/3",
        "data": {"dataset": dataset, "schema": schema, "groups": groups},
        "timings": {"total_seconds": 1.0, "stages": []},
    }
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "report.html").write_text("<html></html>")
    if arm_json is not None:
        (folder / "arm.json").write_text(json.dumps(arm_json))
    return folder


def _two_backbones(tmp_path: Path, seeds=(0, 1, 2), planted: float = 0.12) -> list[Path]:
    """Arm A: the tiny ViT; arm B: another backbone whose downcolor Δ is ``planted``."""
    runs = []
    for s in seeds:
        runs.append(make_study(tmp_path / f"a{s}", seed=s))
        cfg = _config(**{"model.backbone": "timm:vit_small_patch16_224"})
        runs.append(
            make_study(tmp_path / f"b{s}", seed=s, config=cfg, effects={"downcolor": planted})
        )
    return runs


# --------------------------------------------------------------------------- stacking, arms
def test_stacks_paired_effects_with_the_oracle_gain_and_names_arms_by_backbone(tmp_path):
    cmp = compare_studies(_two_backbones(tmp_path), n_boot=50)
    t = cmp.table
    assert list(t.columns) == ["arm", "seed", "query", "pid", "group", "delta_ap"]
    assert set(t["arm"]) == {"timm:vit_tiny_patch16_224", "timm:vit_small_patch16_224"}
    assert sorted(t["seed"].unique()) == [0, 1, 2]
    # one row per (run, query, group), the oracle gain as one more group
    assert len(t) == 6 * 120 * (len(MARKET) + 1)
    assert set(t["group"]) == set(MARKET) | {ALL_EXPERTS}
    # the oracle gain = AP(full) - AP(backbone), read from per_query.parquet
    pq = pd.read_parquet(tmp_path / "a0" / "tables" / "per_query.parquet")
    full = pq[pq["config"] == "full"].set_index("query")["ap"]
    back = pq[pq["config"] == "backbone"].set_index("query")["ap"]
    gain = t[(t["group"] == ALL_EXPERTS) & (t["seed"] == 0)]
    gain = gain[gain["arm"] == "timm:vit_tiny_patch16_224"].set_index("query")["delta_ap"]
    assert np.allclose(gain.sort_index(), (full - back).sort_index())
    assert cmp.paired
    assert cmp.arms["timm:vit_small_patch16_224"][2] == (2, tmp_path / "b2")


def test_the_planted_group_is_the_only_difference_found(tmp_path):
    cmp = compare_studies(_two_backbones(tmp_path), n_boot=200)
    found = cmp.differences[cmp.differences["verdict"] == "differs"]
    assert list(found["attribute"]) == ["downcolor"]
    row = found.iloc[0]
    assert abs(row["difference"]) == pytest.approx(0.10, abs=0.02)
    assert ALL_EXPERTS not in set(cmp.differences["attribute"])  # not in the family
    # each arm's oracle gain (planted 0.3) is the reference of its relative effects
    assert cmp.gains.set_index("arm")["gain"].to_numpy() == pytest.approx([0.3, 0.3], abs=0.02)
    b = cmp.effects.set_index(["arm", "attribute"]).loc[("timm:vit_small_patch16_224", "downcolor")]
    assert b["relative"] == pytest.approx(0.12 / 0.3, abs=0.05)
    assert "downcolor" in cmp.summary[0]


def test_arm_named_by_the_setting_that_differs(tmp_path):
    runs = [make_study(tmp_path / f"rgb{s}", seed=s) for s in (0, 1)]
    grey = _config(**{"data.color": "grayscale"})
    runs += [make_study(tmp_path / f"grey{s}", seed=s, config=grey) for s in (0, 1)]
    cmp = compare_studies(runs, n_boot=20)
    assert set(cmp.arms) == {"data.color=rgb", "data.color=grayscale"}
    assert [s for s, _ in cmp.arms["data.color=grayscale"]] == [0, 1]


def test_arm_json_wins_over_arms_and_settings(tmp_path):
    a = make_study(tmp_path / "x", arm_json={"arm": "clip", "seed": 7})
    b = make_study(tmp_path / "y", seed=0)
    cmp = compare_studies([a, b], arms={a: "ignored", b: "dinov2"}, n_boot=20)
    assert set(cmp.arms) == {"clip", "dinov2"}
    assert cmp.arms["clip"] == [(7, a)]
    assert set(cmp.table.loc[cmp.table["arm"] == "clip", "seed"]) == {7}


def test_runs_differing_only_in_seed_are_one_arm_and_refused(tmp_path):
    runs = [make_study(tmp_path / f"r{s}", seed=s) for s in (0, 1)]
    other_analysis = _config(**{"analysis.seed": 5, "ablation.seed": 3})
    runs.append(make_study(tmp_path / "r2", seed=2, config=other_analysis))
    with pytest.raises(StudyFolderError, match="differ only in their training seed"):
        compare_studies(runs)
    same = [runs[0], make_study(tmp_path / "again", seed=0)]
    with pytest.raises(StudyFolderError, match="have the same settings"):
        compare_studies(same)
    # named by the caller, they are two arms
    cmp = compare_studies(runs[:2], arms={runs[0]: "first", runs[1]: "second"}, n_boot=20)
    assert set(cmp.arms) == {"first", "second"}
    with pytest.raises(StudyFolderError, match="both seed 0 of arm 'x'"):
        compare_studies(same + [runs[1]], arms={same[0]: "x", same[1]: "x", runs[1]: "y"})


def test_unfinished_missing_and_non_study_folders_are_refused(tmp_path):
    good = make_study(tmp_path / "good")
    with pytest.raises(StudyFolderError, match="does not exist"):
        compare_studies([good, tmp_path / "nowhere"])
    (tmp_path / "plain").mkdir()
    with pytest.raises(StudyFolderError, match="is not a study folder"):
        load_run(tmp_path / "plain")
    half = make_study(tmp_path / "half")
    (half / "report.json").unlink()
    with pytest.raises(StudyFolderError, match="is not finished .*report.json"):
        load_run(half)
    from attrimp.io import output_folder

    with output_folder(good), pytest.raises(StudyFolderError, match="being written"):
        load_run(good)  # a study running there right now (its lock held)
    assert load_run(good).n_queries == 120  # lock released: readable again
    with pytest.raises(StudyFolderError, match="at least two study folders"):
        compare_studies([good])
    with pytest.raises(StudyFolderError, match="one of the compared study folders"):
        compare_studies([good, make_study(tmp_path / "other", seed=1)], out=good)


# --------------------------------------------------------------------------- pairing
def test_pairing_fingerprint_same_dataset_other_query_set_is_unpaired(tmp_path):
    a = make_study(tmp_path / "a")
    b = make_study(tmp_path / "b", identities=30, config=_config(**{"data.synthetic.seed": 1}))
    cmp = compare_studies([a, b], n_boot=20)
    assert not cmp.paired
    assert any("different query sets" in s for s in cmp.setup)
    # identity 5 of one query set is not identity 5 of the other
    pids = cmp.table.groupby("arm")["pid"].apply(set)
    assert not (pids.iloc[0] & pids.iloc[1])
    assert load_run(a).fingerprint != load_run(b).fingerprint
    assert load_run(a).fingerprint == load_run(make_study(tmp_path / "a2", seed=3)).fingerprint


def test_different_datasets_are_unpaired_on_their_shared_groups(tmp_path):
    market = make_study(tmp_path / "market", dataset="market1501")
    duke_cfg = _config(**{"data.dataset": "synthetic", "experts.rank": 8})
    duke = make_study(
        tmp_path / "duke", dataset="dukemtmc", schema="dukemtmc", groups=DUKE, config=duke_cfg
    )
    cmp = compare_studies([market, duke], arms={market: "market", duke: "duke"}, n_boot=50)
    assert not cmp.paired
    assert set(cmp.table.loc[cmp.table["arm"] == "duke", "pid"].str.split(":").str[0]) == {
        "dukemtmc"
    }
    assert set(cmp.differences["attribute"]) == set(SHARED)
    assert set(cmp.result.unshared["market"]) == set(MARKET) - set(DUKE)
    assert set(cmp.result.unshared["duke"]) == set(DUKE) - set(MARKET)
    assert any("different datasets" in s for s in cmp.setup)
    assert any("not compared" in s and "boots" in s for s in cmp.setup)


# --------------------------------------------------------------------------- report, CLI
def test_writes_the_report_with_links_to_each_run(tmp_path):
    runs = _two_backbones(tmp_path / "runs", seeds=(0, 1))
    out = tmp_path / "cmp"
    cmp = compare_studies(runs, out, n_boot=50)
    assert cmp.out == out
    assert cmp.report_html.exists()
    html = cmp.report_html.read_text()
    assert "../runs/b1/report.html" in html
    report = json.loads((out / "report.json").read_text())
    assert report["title"] == "Comparison: timm:vit_tiny_patch16_224 vs timm:vit_small_patch16_224"
    assert report["setup"] == cmp.setup and report["setup"][1].startswith("Paired")
    assert "'timm:vit_small_patch16_224': 2 training runs (seeds 0, 1)" in report["setup"][-1]


def _cli(*args: str):
    return CliRunner().invoke(app, ["study", "compare", *args])


def test_cli_compares_folders_and_prints_the_summary(tmp_path):
    runs = _two_backbones(tmp_path / "runs")
    out = tmp_path / "cmp"
    res = _cli(*map(str, runs), "--out", str(out), "--boot", "50", "--no-progress", "--single-file")
    assert res.exit_code == 0, res.output
    assert "downcolor" in res.output
    assert f"report: {out / 'report.html'}" in res.output
    assert (out / "report-single.html").exists()


def test_cli_on_the_stacked_table_gives_what_the_folders_give(tmp_path):
    """The stacked paired-effects table, written out and compared by `--group`, is the same
    comparison as the study folders it came from."""
    cmp = compare_studies(_two_backbones(tmp_path / "runs"), n_boot=50)
    table = tmp_path / "effects.csv"
    cmp.table.to_csv(table, index=False)
    out = tmp_path / "cmp"
    args = ["--by", "arm", "--outcome", "delta_ap", "--cluster", "pid", "--seed-column", "seed"]
    args += ["--group", "group", "--relative-to", ALL_EXPERTS, "--boot", "50", "--margin", "0.01"]
    res = _cli(str(table), *args, "--out", str(out))
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["summary"] == cmp.summary
    assert res.output.splitlines()[0] == f"- {cmp.summary[0]}"


def test_cli_arm_option_and_one_sentence_errors(tmp_path):
    a, b = make_study(tmp_path / "a"), make_study(tmp_path / "b", seed=1)
    res = _cli(str(a), str(b), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2
    assert "differ only in their training seed" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "o").exists()  # a refused comparison leaves no --out behind
    res = _cli("--arm", f"one={a}", "--arm", f"two={b}", "--out", str(tmp_path / "o2"))
    assert res.exit_code == 0, res.output
    res = _cli(str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "o3"))
    assert res.exit_code == 2 and "does not exist" in res.output
    res = _cli("--arm", "nonsense", str(a), "--out", str(tmp_path / "o4"))
    assert res.exit_code == 2 and "NAME=RUN" in res.output


def test_cli_compares_a_stacked_table(tmp_path):
    """A per-query table with a backbone column: colour matters more in one arm (planted), the
    bag and hat do not."""
    rng = np.random.default_rng(0)
    rows = []
    for arm, shift in (("vit", 0.0), ("dino", 0.15)):
        for pid in range(60):
            red, bag, hat = (int(x) for x in rng.random(3) < 0.5)
            for _q in range(3):
                ap = 0.5 + (0.02 + shift) * red + 0.03 * bag + 0.05 * rng.standard_normal()
                rows.append(
                    {
                        "backbone": arm,
                        "pid": pid,
                        "color": "red" if red else "blue",
                        "bag": bag,
                        "hat": hat,
                        "ap": ap,
                    }
                )
    table = tmp_path / "stacked.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    res = _cli(
        str(table),
        "--by",
        "backbone",
        "--outcome",
        "ap",
        "--cluster",
        "pid",
        "--out",
        str(tmp_path / "o"),
        "--boot",
        "50",
    )
    assert res.exit_code == 0, res.output
    found = pd.read_csv(tmp_path / "o" / "tables" / "differences.csv")
    assert list(found.loc[found["verdict"] == "differs", "attribute"]) == ["color"]
    # the headline level may be either colour: "dino relies on color (red)" or, read from
    # blue, "dino is hurt by color (blue)"; dino is the arm named first either way
    assert "dino relies on color" in res.output or "dino is hurt by color" in res.output
    res = _cli(str(table), "--outcome", "ap", "--out", str(tmp_path / "o2"))
    assert res.exit_code == 2 and "--by" in res.output


# --------------------------------------------------------------------------- two real studies
@pytest.mark.slow
def test_two_real_tiny_studies_differing_in_backbone_kwargs(tmp_path):
    """Two real (tiny, one-epoch) studies on the same world, one with a deeper ViT: one arm
    each, named by the setting that differs, paired by query, every group compared."""
    from attrimp.study.run import run_study

    tiny = copy.deepcopy(TINY)
    tiny["ablation"] = {"designs": ["full", "backbone", "leave_one_out"]}
    tiny["analysis"] = {"repeats": 2}
    tiny["train"]["epochs"] = 1
    runs = []
    for name, depth in (("shallow", None), ("deep", 3)):
        raw = copy.deepcopy(tiny)
        if depth is not None:
            raw["model"]["backbone_kwargs"]["depth"] = depth
        run_study(config_from_dict(raw), tmp_path / name, progress=False)
        runs.append(tmp_path / name)
    out = tmp_path / "cmp"
    cmp = compare_studies(runs, out, n_boot=100)
    assert set(cmp.arms) == {"model.backbone_kwargs.depth=default", "model.backbone_kwargs.depth=3"}
    assert cmp.paired and any(s.startswith("Paired") for s in cmp.setup)
    assert set(cmp.differences["attribute"]) == set(MARKET)
    assert set(cmp.differences["verdict"]) <= {
        "differs",
        "negligible",
        "inconclusive",
        "not testable",
    }
    assert ALL_EXPERTS in set(cmp.table["group"])
    html = cmp.report_html.read_text()
    assert "../shallow/report.html" in html and "../deep/report.html" in html
    assert (out / "report.json").exists()

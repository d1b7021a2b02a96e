"""Arms and seeds in one study (``[compare]``): the config, its expansion into ordinary studies
sharing one synthetic world, the folder layout and resume, and end to end on planted truth."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from typer.testing import CliRunner

from attrimp.config import StudyConfig, arm_config, config_from_dict, load_config
from attrimp.errors import ConfigError
from attrimp.study import arms as arms_mod
from attrimp.study.arms import ARM_FILE, arm_seeds, run_arm_seeds, run_comparison
from tests.conftest import REPO

CONFIGS = REPO / "studies" / "configs"
TINY_TEXT = (CONFIGS / "synthetic_tiny.toml").read_text()


def _tiny(**compare) -> dict:
    """The tiny study (one epoch, the designs the comparison reads) with ``[compare]``."""
    d = tomllib.loads(TINY_TEXT)
    d["train"]["epochs"] = 1
    d["ablation"] = {"designs": ["full", "backbone", "leave_one_out"]}
    d["analysis"] = {"repeats": 2}
    d["compare"] = compare
    return d


COLOUR_ARMS = [{"name": "colour"}, {"name": "grayscale", "data": {"color": "grayscale"}}]


# --------------------------------------------------------------------------- the config
def test_a_config_without_compare_is_what_it_was():
    cfg = load_config(CONFIGS / "synthetic_study.toml")
    assert cfg.compare is None and "compare" not in cfg.to_dict()
    assert cfg.fingerprint() == "f2d06d9a7699b74b"  # cached runs and reports stay valid


def test_long_form_arms_and_seeds():
    cfg = config_from_dict(_tiny(seeds=[3, 5], arms=COLOUR_ARMS))
    arms = cfg.compare.arm_list()
    assert [a.name for a in arms] == ["colour", "grayscale"]
    assert arms[1].overrides == {"data": {"color": "grayscale"}}
    assert cfg.compare.seed_list(cfg.train.seed) == [3, 5]
    # the TOML form round-trips (attrimp.run_study's overrides go through to_dict)
    again = config_from_dict(cfg.to_dict())
    assert again.compare == cfg.compare and again.fingerprint() == cfg.fingerprint()


def test_seeds_default_to_the_studys_own():
    cfg = config_from_dict(_tiny(arms=COLOUR_ARMS))
    assert cfg.compare.seed_list(cfg.train.seed) == [cfg.train.seed]


def test_short_form_names_arms_by_backbone_with_safe_folders():
    cfg = config_from_dict(
        _tiny(backbones=["timm:vit_tiny_patch16_224", "timm:vit_small_patch16_224"])
    )
    arms = cfg.compare.arm_list()
    assert [a.name for a in arms] == ["timm:vit_tiny_patch16_224", "timm:vit_small_patch16_224"]
    assert [a.folder for a in arms] == ["timm-vit_tiny_patch16_224", "timm-vit_small_patch16_224"]
    study = arm_config(cfg, arms[1], 0)
    assert study.model.backbone == "timm:vit_small_patch16_224" and study.compare is None
    assert study.model.backbone_kwargs == {"tiny": True}  # the rest of [model] is kept


def test_an_override_replaces_a_table_valued_setting_whole():
    """Sections merge key by key; a setting whose value is a table (visibility,
    backbone_kwargs) is replaced, so an arm states the whole value it runs with."""
    d = _tiny(
        arms=[{"name": "a"}, {"name": "b", "data": {"synthetic": {"visibility": {"hat": 0.0}}}}]
    )
    d["data"]["synthetic"]["visibility"] = {"upcolor": 0.0}
    cfg = config_from_dict(d)
    b = arm_config(cfg, cfg.compare.arm_list()[1], 0)
    assert b.data.synthetic.visibility == {"hat": 0.0}
    assert b.data.synthetic.identities == cfg.data.synthetic.identities


@pytest.mark.parametrize(
    ("compare", "words"),
    [
        ({"arms": [{"name": "a"}]}, "at least two arms"),
        ({"backbones": ["timm:a"], "arms": COLOUR_ARMS}, "both backbones and [[compare.arms]]"),
        ({"arms": [{"name": "a"}, {"name": "a"}]}, "two arms named 'a'"),
        ({"arms": [{"name": "a"}, {"name": "A"}]}, "two arms named 'A'"),
        ({"arms": [{"name": "a"}, {"name": "b/c"}]}, "'b/c', which cannot be a folder name"),
        ({"arms": [{"name": "a"}, {"name": ".."}]}, "cannot be a folder name"),
        ({"arms": [{"name": "a"}, {"data": {}}]}, "compare.arms[1] needs a name"),
        ({"arms": [{"name": "a"}, {"name": "b", "train": {"seed": 1}}]}, "arm 'b' sets train.seed"),
        ({"arms": [{"name": "a"}, {"name": "b", "foo": {}}]}, "arm 'b' has the unknown key 'foo'"),
        ({"arms": [{"name": "a"}, {"name": "b", "data": 3}]}, "arm 'b': data must be a table"),
        (
            {"arms": [{"name": "a"}, {"name": "b", "data": {"colour": "grayscale"}}]},
            "arm 'b': Unknown setting data.colour",
        ),
        (
            {"arms": [{"name": "a"}, {"name": "b", "data": {"color": "sepia"}}]},
            "arm 'b': data.color must be one of",
        ),
        (
            {"arms": [{"name": "a"}, {"name": "b", "train": {"lr": -1.0}}]},
            "arm 'b': train.lr must be",
        ),
        ({"seeds": [1, 1], "arms": COLOUR_ARMS}, "lists a seed twice"),
        ({"seeds": [-1], "arms": COLOUR_ARMS}, "compare.seeds must be from 0"),
        ({"arm": COLOUR_ARMS}, "Unknown setting compare.arm"),
    ],
)
def test_compare_mistakes_are_one_sentence_naming_the_arm_and_key(compare, words):
    with pytest.raises(ConfigError) as err:
        config_from_dict(_tiny(**compare), source="config file 'c.toml'")
    message = str(err.value)
    assert message.startswith("config file 'c.toml': ") and words in message
    assert "\n" not in message


# --------------------------------------------------------------------------- expansion
def test_arm_seeds_share_one_world_per_synthetic_table(tmp_path):
    d = _tiny(
        seeds=[0, 1, 2],
        arms=[
            *COLOUR_ARMS,
            {"name": "other-world", "data": {"synthetic": {"seed": 7}}},
            {"name": "own-root", "data": {"root": str(tmp_path / "mine")}},
        ],
    )
    runs = arm_seeds(config_from_dict(d), tmp_path / "out")
    assert [(r.arm, r.seed) for r in runs] == [
        (arm, seed)
        for arm in ("colour", "grayscale", "other-world", "own-root")
        for seed in (0, 1, 2)
    ]
    for r in runs:
        assert r.folder == tmp_path / "out" / "arms" / r.arm / f"seed-{r.seed}"
        assert r.config.train.seed == r.seed and r.config.compare is None
    by_arm = {arm: [r for r in runs if r.arm == arm] for arm in ("colour", "grayscale")}
    shared = {r.config.data.root for rs in by_arm.values() for r in rs}
    assert len(shared) == 1  # colour and grayscale: one world, six studies
    (root,) = shared
    assert root.startswith(str((tmp_path / "out" / "work").resolve()) + "/world-")
    assert {r.config.data.color for r in by_arm["grayscale"]} == {"grayscale"}
    other = {r.config.data.root for r in runs if r.arm == "other-world"}
    assert len(other) == 1 and other != shared  # a different world is drawn apart
    assert {r.config.data.root for r in runs if r.arm == "own-root"} == {str(tmp_path / "mine")}
    assert all(r.world is None for r in runs if r.arm == "own-root")


def test_a_config_without_compare_has_no_arms(tmp_path):
    with pytest.raises(ConfigError, match="no \\[compare\\] table"):
        arm_seeds(StudyConfig(), tmp_path)


# --------------------------------------------------------------------------- layout and resume
#: what the faked comparison returns
COMPARISON = SimpleNamespace(summary=["No group differs."], report_html=Path("cmp/report.html"))


@pytest.fixture
def fake_study(monkeypatch):
    """`run_study` replaced by one that writes a finished study's config.json and report.json
    (recording each call), and the comparison by one that records its folders."""
    calls: list = []
    compared: list = []

    def run_study(cfg, out, *, resume=True, progress=False, **_):
        calls.append((cfg, out, (os.environ.get("WORLD_SIZE"), os.environ.get("RANK"))))
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), default=list))
        report = {"study": {"fingerprint": cfg.fingerprint()}, "timings": {}}
        (out / "report.json").write_text(json.dumps(report))

    def compare_studies(folders, out=None, *, arms=None, **kwargs):
        compared.append((list(folders), out, arms))
        return COMPARISON

    monkeypatch.setattr("attrimp.study.run.run_study", run_study)
    monkeypatch.setattr("attrimp.study.compare.compare_studies", compare_studies)
    return calls, compared


def test_layout_arm_json_and_finished_arm_seeds_skipped(tmp_path, fake_study):
    calls, compared = fake_study
    cfg = config_from_dict(_tiny(seeds=[0, 1], arms=COLOUR_ARMS))
    out = tmp_path / "cmp"
    assert run_comparison(cfg, out) is COMPARISON
    assert [(c.data.color, c.train.seed) for c, _, _ in calls] == [
        ("rgb", 0), ("rgb", 1), ("grayscale", 0), ("grayscale", 1),
    ]  # fmt: skip
    folders = [out / "arms" / a / f"seed-{s}" for a in ("colour", "grayscale") for s in (0, 1)]
    assert [f for _, f, _ in calls] == folders
    for folder in folders:
        arm, seed = folder.parent.name, int(folder.name.split("-")[1])
        assert json.loads((folder / ARM_FILE).read_text()) == {"arm": arm, "seed": seed}
    # the world was drawn once, before the studies, where every arm reads it
    (world,) = {c.data.root for c, _, _ in calls}
    assert (out / "work").resolve() in Path(world).parents
    assert (Path(world) / "synth.json").is_file()
    assert compared[0][0] == folders and compared[0][1] == out
    # resumed: every arm-seed finished, none is run again; the comparison is made again
    assert run_comparison(cfg, out) is COMPARISON
    assert len(calls) == 4 and len(compared) == 2
    # an unfinished arm-seed (no timings yet) and a changed config are run again
    (folders[1] / "report.json").write_text("{}")
    cfg2 = config_from_dict({**_tiny(seeds=[0, 1], arms=COLOUR_ARMS), "eval": {"max_rank": 5}})
    run_comparison(cfg2, out)
    assert len(calls) == 8
    run_comparison(cfg2, out, resume=False)  # --fresh: everything again
    assert len(calls) == 12


def test_arm_seeds_split_between_torchrun_ranks_run_alone(tmp_path, fake_study, monkeypatch):
    """Rank r of W runs arm-seeds i % W == r, each as a plain process (WORLD_SIZE 1, RANK 0
    while it runs), and only rank 0 compares. The process group is faked: barriers only."""
    calls, compared = fake_study
    monkeypatch.setattr(arms_mod._ProcessGroup, "__init__", lambda self, world: None)
    monkeypatch.setattr(arms_mod._ProcessGroup, "barrier", lambda self: None)
    monkeypatch.setattr(arms_mod._ProcessGroup, "close", lambda self: None)
    cfg = config_from_dict(_tiny(seeds=[0, 1, 2], arms=COLOUR_ARMS))
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "1")
    assert run_comparison(cfg, tmp_path / "cmp") is None  # not rank 0: no comparison
    assert [(c.data.color, c.train.seed) for c, _, _ in calls] == [("rgb", 1), ("grayscale", 2)]
    assert [env for _, _, env in calls] == [("1", "0"), ("1", "0")] and not compared
    assert (os.environ["WORLD_SIZE"], os.environ["RANK"]) == ("4", "1")  # restored


def test_run_study_and_the_cli_run_the_comparison_of_a_compare_config(tmp_path, fake_study):
    """`attrimp.run_study` returns the comparison; `attrimp study run` prints its answer."""
    import attrimp
    from attrimp.cli import app

    calls, compared = fake_study
    d = _tiny(seeds=[0, 1], arms=COLOUR_ARMS)
    assert attrimp.run_study(d, out=tmp_path / "api") is COMPARISON
    assert len(calls) == 4 and compared[0][1] == tmp_path / "api"
    config = tmp_path / "c.toml"
    config.write_text(TINY_TEXT + '\n[compare]\nbackbones = ["timm:vit_tiny_patch16_224", '
                      '"timm:vit_small_patch16_224"]\n')  # fmt: skip
    result = CliRunner().invoke(app, ["study", "run", str(config), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "No group differs." in result.output and "report.html" in result.output
    backbones = [c.model.backbone for c, _, _ in calls[4:]]
    assert backbones == ["timm:vit_tiny_patch16_224", "timm:vit_small_patch16_224"]
    assert (tmp_path / "cli" / "arms" / "timm-vit_small_patch16_224" / "seed-0").is_dir()


def test_the_cli_checks_every_arm_before_any_work(tmp_path, fake_study):
    """A misspelt backbone in one arm stops `attrimp study run` in seconds, naming it."""
    from attrimp.cli import app

    calls, _ = fake_study
    config = tmp_path / "c.toml"
    config.write_text(TINY_TEXT + '\n[compare]\nbackbones = ["timm:vit_tiny_patch16_224", '
                      '"timm:no_such_vit"]\n')  # fmt: skip
    result = CliRunner().invoke(app, ["study", "run", str(config), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "no_such_vit" in result.output
    assert not calls and not (tmp_path / "o").exists()


def test_compare_studies_is_exported_lazily():
    import attrimp
    from attrimp.study.compare import compare_studies

    assert "compare_studies" in attrimp.__all__ and attrimp.compare_studies is compare_studies


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_tiny_comparison_end_to_end_and_resume(tmp_path, monkeypatch):
    """Two arms x one seed on the tiny world: real studies, arm.json, the comparison report;
    a second run trains nothing."""
    cfg = config_from_dict(_tiny(arms=COLOUR_ARMS))
    out = tmp_path / "cmp"
    cmp = run_comparison(cfg, out)
    assert cmp.report_html == out / "report.html" and cmp.report_html.is_file()
    assert set(cmp.arms) == {"colour", "grayscale"}
    for arm in ("colour", "grayscale"):
        folder = out / "arms" / arm / "seed-0"
        assert (folder / "report.html").is_file()
        assert json.loads((folder / ARM_FILE).read_text()) == {"arm": arm, "seed": 0}
    assert len(list((out / "work").glob("world-*"))) == 1
    assert not list((out / "arms").glob("*/seed-0/work"))  # no arm drew a world of its own

    def refuse(*args, **kwargs):
        raise AssertionError("a finished arm-seed was run again")

    monkeypatch.setattr("attrimp.study.run.run_study", refuse)
    again = run_comparison(cfg, out)
    pd.testing.assert_frame_equal(again.differences, cmp.differences)


#: the planted-truth runs use compare_synthetic.toml's world and model at full size: smaller or
#: shorter (48 identities, 15 epochs) the colour arm has not yet learned the colours from the
#: pixels, and both arms lean on the colour experts alike (measured: no difference found)


def _compare_world(**compare) -> dict:
    """compare_synthetic.toml (the built-in world with every group drawn, experts summed) with
    only the designs the comparison reads, and ``[compare]`` as given."""
    d = tomllib.loads((CONFIGS / "compare_synthetic.toml").read_text())
    d["ablation"] = {"designs": ["full", "backbone", "leave_one_out"]}
    d["analysis"] = {"repeats": 2}
    d["compare"] = compare
    return d


@pytest.mark.slow
def test_grayscale_arm_relies_on_the_colour_groups_more_and_nothing_else_differs(tmp_path):
    """Planted: the grayscale arm sees the colour groups only through their experts. Both are
    found, grayscale relying on them more, and no other group differs (with summed experts each
    group's leave-one-out delta is its own expert's; see compare_synthetic.toml for the mean)."""
    cfg = config_from_dict(_compare_world(seeds=[0, 1, 2], arms=COLOUR_ARMS))
    assert cfg.experts.pooling == "sum"
    cmp = run_comparison(cfg, tmp_path / "cmp")
    d = cmp.differences.set_index("attribute")
    assert set(d["arm_a"]) == {"colour"} and set(d["arm_b"]) == {"grayscale"}
    for group in ("upcolor", "downcolor"):
        assert d.loc[group, "verdict"] == "differs", d.loc[group].to_dict()
        assert d.loc[group, "effect_b"] > d.loc[group, "effect_a"]
    others = d.drop(index=["upcolor", "downcolor"])
    assert "differs" not in set(others["verdict"]), others["verdict"].to_dict()
    assert set(d["difference"].abs().nlargest(2).index) == {"upcolor", "downcolor"}


@pytest.mark.slow
def test_arms_that_differ_only_in_seed_show_no_difference(tmp_path):
    """The null: arms "a" and "b" are the same study, "a" trained with seeds 0-2 and "b" with
    seeds 3-5 (six different training runs; with the same seeds the arms would be the same
    runs). No group may differ."""
    cfg = config_from_dict(_compare_world(seeds=[0, 1, 2], arms=[{"name": "a"}, {"name": "b"}]))
    runs = arm_seeds(cfg, tmp_path / "cmp")
    for run in runs:
        if run.arm == "b":
            run.seed += 3
            run.config.train.seed = run.seed
            run.folder = run.folder.parent / f"seed-{run.seed}"
    cmp = run_arm_seeds(cfg, runs, tmp_path / "cmp")
    assert {s for s, _ in cmp.arms["b"]} == {3, 4, 5}
    verdicts = cmp.differences.set_index("attribute")["verdict"]
    assert "differs" not in set(verdicts), verdicts.to_dict()


@pytest.mark.slow
def test_compare_under_torchrun_runs_one_arm_seed_per_rank(tmp_path):
    """Two CPU processes: rank 0 draws the world, each rank trains one arm-seed as a plain
    single-process study (no DDP between them), rank 0 writes the comparison."""
    import subprocess
    import sys

    config = tmp_path / "c.toml"
    config.write_text(
        TINY_TEXT.replace("epochs = 2", "epochs = 1")
        + '\n[ablation]\ndesigns = ["full", "backbone", "leave_one_out"]\n'
        + '\n[[compare.arms]]\nname = "colour"\n'
        + '\n[[compare.arms]]\nname = "grayscale"\ndata = { color = "grayscale" }\n'
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "attrimp", "study", "run", str(config), "--out", str(out), "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "report.html").is_file() and len(list((out / "work").glob("world-*"))) == 1
    for arm in ("colour", "grayscale"):
        folder = out / "arms" / arm / "seed-0"
        assert json.loads((folder / ARM_FILE).read_text()) == {"arm": arm, "seed": 0}
        # each was its own main process (a rank > 0 of a DDP run writes no done.json)
        assert (folder / "report.json").is_file() and list(folder.glob("cache/train-*/done.json"))

"""The joint attribute draw of the synthetic world (real identities' whole vectors resampled from
market_attribute.mat), the cheap attribute-only path of benchmarks/bench_leak.py, uniqueness, and
the default world left exactly as it was.

Tests that need the real file take the `shared_data` fixture (tests/conftest.py): they skip, with
the reason and the way to get the files, where ../shared/data is absent.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from attrimp.config import config_from_dict
from attrimp.data import synth
from attrimp.data.annotations import load_attribute_file
from attrimp.data.market import load_reid_dataset
from attrimp.errors import ConfigError, DataError
from attrimp.io import sha256_file
from attrimp.model.schema import load_schema

MARKET = "market_attribute.mat"


def _one_sentence(message: str) -> None:
    """A user's mistake reads as one sentence: no traceback, no second line, one full stop
    at the end (dots inside quoted paths and numbers aside)."""
    assert "\n" not in message and "Traceback" not in message
    assert message.endswith(".") and ". " not in message.replace("e.g. ", ""), message


# --- the default world is the world it always was ----------------------------------------------
def _world_hash(root: Path) -> str:
    h = hashlib.sha256()
    h.update((root / synth.ATTRIBUTE_CSV).read_bytes())
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(np.asarray(Image.open(p)).tobytes())
    return h.hexdigest()


#: Produced by running this same recipe (make_synthetic_world with the arguments below, then
#: `_world_hash`: market_attribute.csv bytes + every PNG's name and decoded pixels) on the
#: committed code of attrimp/data/synth.py at 3fc39ad, before the joint draw existed
#: (/tmp/leak/hash_default.py in the session that added it). PNG keeps the pixels exact; a JPEG
#: hash would pin the libjpeg build instead of the world.
DEFAULT_WORLD_SHA256 = "c984ec85f828a76f03b9e006706c43ab4285a8b8bd80e1a89a11d197a852d98a"


def test_the_default_independent_world_is_unchanged(tmp_path):
    root = synth.make_synthetic_world(
        tmp_path / "w",
        n_identities=40,
        n_cameras=2,
        images_per_identity_per_camera=1,
        size=(64, 32),
        seed=11,
        distractors=2,
        junk=1,
        visibility={"upcolor": 0.5, "hat": 0.0},
        image_format="png",
    )
    assert _world_hash(root) == DEFAULT_WORLD_SHA256
    # and its synth.json names no draw: a world made before the option reads as the same world
    assert "attributes" not in (root / synth.DESIGN_FILE).read_text()


# --- uniqueness: known answers ------------------------------------------------------------------
def test_uniqueness_counts_a_hand_made_table():
    # vectors A A B C C C: 3 distinct; 5 identities share theirs; B alone; C the largest class
    frame = pd.DataFrame({"x": [1, 1, 2, 1, 1, 1], "y": [1, 1, 1, 2, 2, 2]})
    u = synth.attribute_uniqueness(frame)
    assert u.as_dict() == {"identities": 6, "distinct": 3, "sharing": 5, "unique": 1, "largest": 3}
    assert synth.attribute_uniqueness(frame.iloc[:0]).identities == 0


def test_uniqueness_of_the_real_files_is_the_issue_s(shared_data):
    # the counts issue 16 reports, found independently with a plain set of tuples
    for name, dataset, distinct in (
        (MARKET, "market1501", 484),
        ("duke_attribute.mat", "dukemtmc", 387),
    ):
        t = load_attribute_file(shared_data / name, dataset)
        test = t.frame[t.frame["split"] == "test"][list(t.schema.source_columns)]
        tuples = [tuple(r) for r in test.to_numpy()]
        assert len(set(tuples)) == distinct
        u = synth.attribute_uniqueness(test)
        assert u.distinct == distinct and u.identities == len(tuples)
        assert u.unique == sum(tuples.count(v) == 1 for v in set(tuples))
        assert u.unique + u.sharing == u.identities
    assert (
        synth.attribute_uniqueness(
            load_attribute_file(shared_data / MARKET, "market1501").frame.query("split == 'test'")[
                synth.MAT_COLUMNS
            ]
        ).sharing
        == 401
    )


# --- the joint draw reproduces the file ---------------------------------------------------------
def _split_vectors(frame: pd.DataFrame, split: str) -> list[tuple[int, ...]]:
    part = frame[frame["split"] == split]
    return [tuple(int(v) for v in r) for r in part[synth.MAT_COLUMNS].to_numpy()]


def test_joint_market_size_world_carries_exactly_the_real_vectors(shared_data):
    real = load_attribute_file(shared_data / MARKET, "market1501").frame
    world = synth.preset_world("market1501", attributes_file=shared_data / MARKET)
    assert world["attributes"] == "joint"
    drawn = synth.world_attributes(**world, seed=5)
    for split in ("train", "test"):
        # 751 / 750 identities, the file's split sizes: a permutation of the real vectors
        assert sorted(_split_vectors(drawn, split)) == sorted(_split_vectors(real, split))
    u = synth.attribute_uniqueness(drawn[drawn["split"] == "test"][synth.MAT_COLUMNS])
    assert (u.identities, u.distinct, u.sharing) == (750, 484, 401)
    # without the file the preset is the independent world, more unique than Market
    plain = synth.world_attributes(**synth.preset_world("market1501"), seed=5)
    assert (
        synth.attribute_uniqueness(plain[plain["split"] == "test"][synth.MAT_COLUMNS]).distinct
        > 550
    )


def test_every_drawn_identity_is_a_real_one_of_its_split(shared_data):
    real = load_attribute_file(shared_data / MARKET, "market1501").frame
    drawn = synth.world_attributes(
        n_identities=120, seed=2, attributes="joint", attributes_file=shared_data / MARKET
    )
    for split in ("train", "test"):
        vectors = _split_vectors(drawn, split)
        assert set(vectors) <= set(_split_vectors(real, split))
    # fewer identities than the split: drawn without replacement, so the drawn vectors are a
    # sub-multiset of the file's (a vector appears at most as often as the file holds it)
    test = Counter(_split_vectors(drawn, "test"))
    assert sum(test.values()) == 60
    assert not test - Counter(_split_vectors(real, "test"))
    # a world larger than the file starts the permutation again (every vector used once first)
    big = synth.world_attributes(
        n_identities=1600, seed=2, attributes="joint", attributes_file=shared_data / MARKET
    )
    assert set(_split_vectors(big, "test")) == set(_split_vectors(real, "test"))


def test_joint_draw_keeps_the_file_s_correlations(shared_data):
    """Pairwise correlations of the world's test identities against the file's test split, for
    every pair of columns with a prevalence of 5-95 % (rarer columns' correlations are not
    near-normal at this n). Sampling error of r for n of N drawn without replacement is at most
    sqrt((1 - n/N) / n) (since 1 - r^2 <= 1); 4.5 of them bounds 210 pairs at a family-wise
    rate under 1e-3. The independent draw fails the same check (gender with long hair: r = 0.84
    in the file, 0 by construction there), so the check can fail."""
    real = load_attribute_file(shared_data / MARKET, "market1501").frame
    real = real[real["split"] == "test"][synth.MAT_COLUMNS].to_numpy(float)
    prevalence = [
        0.5 if c == "age" else (real[:, i] == 2).mean() for i, c in enumerate(synth.MAT_COLUMNS)
    ]
    keep = [i for i, p in enumerate(prevalence) if 0.05 <= p <= 0.95]
    assert len(keep) == 21
    n, big_n = 300, len(real)
    tolerance = 4.5 * np.sqrt((1 - n / big_n) / n)
    pairs = np.triu_indices(len(keep), 1)

    def worst(**draw) -> float:
        drawn = synth.world_attributes(n_identities=2 * n, seed=1, **draw)
        w = drawn[drawn["split"] == "test"][synth.MAT_COLUMNS].to_numpy(float)
        diff = np.corrcoef(w[:, keep].T) - np.corrcoef(real[:, keep].T)
        return float(np.abs(diff[pairs]).max())

    assert worst(attributes="joint", attributes_file=shared_data / MARKET) < tolerance
    assert worst() > 3 * tolerance


def test_written_joint_world_round_trips_through_the_loader(shared_data, tmp_path):
    """Written and read back as any Market dataset: the file the world writes holds the drawn
    vectors, and an identity whose real colour is unmarked is unmarked (unknown) there too."""
    root = synth.make_synthetic_world(
        tmp_path / "w",
        n_identities=160,
        n_cameras=2,
        images_per_identity_per_camera=1,
        size=(32, 16),
        seed=4,
        attributes="joint",
        attributes_file=shared_data / MARKET,
    )
    drawn = synth.world_attributes(
        n_identities=160, seed=4, attributes="joint", attributes_file=shared_data / MARKET
    )
    written = pd.read_csv(root / synth.ATTRIBUTE_CSV)
    pd.testing.assert_frame_equal(written, drawn, check_dtype=False)
    values = load_attribute_file(root / synth.ATTRIBUTE_FILE, "market1501").values()
    real = load_attribute_file(shared_data / MARKET, "market1501").values()
    # 160 of 1,501 identities, ~10 % of which have an unmarked colour: some are drawn
    assert (values["upcolor"] == "unknown").sum() + (values["downcolor"] == "unknown").sum() > 0
    groups = load_schema("market1501").group_names
    real_rows = {tuple(r) for r in real[groups].to_numpy()}
    assert all(tuple(r) in real_rows for r in values[groups].to_numpy())
    design = (root / synth.DESIGN_FILE).read_text()
    assert '"attributes": "joint"' in design and sha256_file(shared_data / MARKET) in design


# --- the cheap path equals the written world ------------------------------------------------------
def _loaded_ids(root: Path) -> dict[str, pd.DataFrame]:
    data = load_reid_dataset(root, "market1501", root / synth.ATTRIBUTE_FILE)
    return {
        folder: pd.DataFrame(
            {
                "name": [r.path.name for r in records],
                "pid": [r.pid for r in records],
                "camid": [r.camid for r in records],
            }
        )
        for folder, records in (("query", data.query), ("bounding_box_test", data.gallery))
    }


@pytest.mark.parametrize("preset", [False, True])
def test_world_images_lists_what_the_loader_reads(tmp_path, preset):
    """`world_images` (no pixel drawn) lists the query and gallery exactly as the loader reads
    them from the written world, distractors' cameras and the junk it drops included — so the
    attribute-only mAP that bench_leak.py computes from it is the study's."""
    if preset:
        world = {**synth.preset_world("market1501", 0.01), "size": (32, 16)}
    else:
        world = dict(n_identities=10, n_cameras=3, images_per_identity_per_camera=2, size=(32, 16))
        world.update(distractors=4, junk=3)
    root = synth.make_synthetic_world(tmp_path / "w", seed=9, **world)
    listed = synth.world_images(seed=9, **world)
    for folder, loaded in _loaded_ids(root).items():
        mine = listed[listed["folder"] == folder][["name", "pid", "camid"]].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, loaded, check_dtype=False)
    written = pd.read_csv(root / synth.ATTRIBUTE_CSV)
    pd.testing.assert_frame_equal(
        synth.world_attributes(seed=9, **world), written, check_dtype=False
    )


# --- bad options: one sentence -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"attributes": "joint"}, "needs attributes_file"),
        ({"attributes_file": "x.mat"}, "read only by the joint draw"),
        ({"attributes": "real"}, "attributes must be one of independent, joint"),
        ({"attributes": "joint", "attributes_file": "/no/such.mat"}, "does not exist"),
    ],
)
def test_bad_draw_options_are_one_sentence(tmp_path, kwargs, fragment):
    with pytest.raises(DataError) as e:
        synth.make_synthetic_world(tmp_path / "w", n_identities=4, **kwargs)
    assert fragment in str(e.value)
    _one_sentence(str(e.value))
    assert not (tmp_path / "w").exists()


def test_joint_draw_refuses_another_dataset_s_file_and_uniform_priors(shared_data, tmp_path):
    with pytest.raises(DataError) as e:
        synth.world_attributes(
            n_identities=4, attributes="joint", attributes_file=shared_data / "duke_attribute.mat"
        )
    assert "dukemtmc" in str(e.value) and "Market-1501 attribute file" in str(e.value)
    _one_sentence(str(e.value))
    with pytest.raises(DataError) as e:
        synth.world_attributes(
            n_identities=4,
            priors="uniform",
            attributes="joint",
            attributes_file=shared_data / MARKET,
        )
    assert "independent draw only" in str(e.value)
    _one_sentence(str(e.value))


def test_joint_draw_refuses_several_colours_marked(tmp_path):
    """A CSV in Market's columns may mark two colours (Duke's file does, 23 times); the world
    draws one colour per group, so it says so rather than picking one."""
    row = {
        "pid": 1,
        "split": "test",
        **synth.attribute_codes(synth.draw_attributes(np.random.default_rng(0))),
    }
    row["upblack"] = row["upwhite"] = 2
    path = tmp_path / "two.csv"
    pd.DataFrame([row]).to_csv(path, index=False)
    with pytest.raises(DataError) as e:
        synth.load_attribute_pool(path)
    assert "several upcolor values" in str(e.value)
    _one_sentence(str(e.value))


@pytest.mark.parametrize(
    ("synthetic", "fragment"),
    [
        ({"attributes": "joint"}, "needs data.synthetic.attributes_file"),
        ({"attributes_file": "m.mat"}, "read only by the joint draw"),
        ({"attributes": "copula"}, "data.synthetic.attributes must be one of"),
    ],
)
def test_config_checks_the_draw_options(synthetic, fragment):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"data": {"synthetic": synthetic}})
    assert fragment in str(e.value)
    cfg = config_from_dict(
        {"data": {"synthetic": {"attributes": "joint", "attributes_file": "m.mat"}}}
    )
    assert cfg.data.synthetic.attributes == "joint"
    assert config_from_dict({}).data.synthetic.attributes == "independent"


# --- the command line: the Market-size preset draws jointly where the file is given -------------
def test_cli_preset_with_an_attribute_file_draws_jointly(
    shared_data, tmp_path, monkeypatch, capsys
):
    import json
    import sys

    from attrimp.cli import main

    out = tmp_path / "w"
    argv = ["attrimp", "data", "synth", "--preset", "market1501", "--scale", "0.01"]
    argv += ["--size", "32x16", "--out", str(out), "--attributes-file", str(shared_data / MARKET)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        main()
    assert (e.value.code or 0) == 0, capsys.readouterr().err
    design = json.loads((out / synth.DESIGN_FILE).read_text())
    assert design["attributes"] == "joint" and design["split_sizes"]["train_identities"] == 8
    real = load_attribute_file(shared_data / MARKET, "market1501").frame
    written = pd.read_csv(out / synth.ATTRIBUTE_CSV)
    assert set(_split_vectors(written, "test")) <= set(_split_vectors(real, "test"))
    # a bad file is one sentence on stderr, exit 2, no traceback
    monkeypatch.setattr(sys, "argv", [*argv[:-1], str(tmp_path / "none.mat"), "--overwrite"])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "does not exist" in err and "Traceback" not in err


# --- bench_leak.py computes the study's attribute-only mAP ---------------------------------------
def test_bench_leak_attribute_only_equals_the_loaded_world_s(tmp_path):
    """The image-free path of benchmarks/bench_leak.py against the study's path: the world
    written, read by the Market loader, its query and gallery records' annotations ranked by
    `attribute_only_baseline`. 100 test identities at Market's priors: 13 share their vector with
    another (mAP 0.952), so ties and their order in the gallery are exercised, and distractors
    (unannotated, pid 0) sort first in the gallery."""
    import importlib.util

    import torch

    from attrimp.evaluate.conditions import SplitTensors, attribute_only_baseline
    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location(
        "bench_leak", REPO / "benchmarks" / "bench_leak.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    world = dict(n_identities=200, n_cameras=2, images_per_identity_per_camera=2, size=(32, 16))
    world.update(distractors=5, seed=3)
    root = synth.make_synthetic_world(tmp_path / "w", **world)
    data = load_reid_dataset(root, "market1501", root / synth.ATTRIBUTE_FILE)

    def tensors(records) -> SplitTensors:
        return SplitTensors(
            attributes=torch.from_numpy(np.stack([r.attributes for r in records])),
            pids=np.array([r.pid for r in records]),
            camids=np.array([r.camid for r in records]),
            names=[r.path.name for r in records],
        )

    schema = load_schema("market1501")
    study, _ = attribute_only_baseline(schema, tensors(data.query), tensors(data.gallery))
    mine = bench.attribute_only(world)
    assert mine["mAP"] == pytest.approx(study.summary()["mAP"], abs=1e-12)
    assert mine["rank1"] == pytest.approx(study.summary()["rank1"], abs=1e-12)
    assert mine["uniqueness"]["identities"] == 100 and mine["uniqueness"]["sharing"] == 13
    assert mine["mAP"] < 0.96


def test_reference_bench_draws_the_preset_jointly_where_the_file_is_given(shared_data, tmp_path):
    """bench_reference_study.py passes --attributes-file to the preset and does not reuse a
    world drawn the other way."""
    import importlib.util
    import json

    from tests.conftest import REPO

    path = REPO / "benchmarks" / "bench_reference_study.py"
    spec = importlib.util.spec_from_file_location("bench_reference_study", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    world, market = tmp_path / "world", shared_data / MARKET
    first = bench.draw_world(world, "tiny", tmp_path, 0.005, attributes_file=market)
    assert first["reused"] is False and first["design"]["attributes"] == "joint"
    assert bench.draw_world(world, "tiny", tmp_path, 0.005, attributes_file=market)["reused"]
    plain = bench.draw_world(world, "tiny", tmp_path, 0.005)
    assert plain["reused"] is False
    assert "attributes" not in json.loads((world / synth.DESIGN_FILE).read_text())


# --- the study's data stage passes the draw on -------------------------------------------------
def test_prepare_data_draws_the_configured_joint_world_and_redraws_on_a_change(
    tmp_path, shared_data
):
    """`attrimp study run` / `train` build the world through prepare_data: a joint [data.synthetic]
    must reach the world (synth.json says joint), and switching back to the independent draw
    must redraw it instead of reusing the joint one."""
    import json

    from attrimp.train.pipeline import prepare_data

    def config(**synthetic):
        return config_from_dict(
            {
                "data": {
                    "dataset": "synthetic",
                    "synthetic": {
                        "identities": 24,
                        "cameras": 2,
                        "images_per_camera": 1,
                        "size": [32, 16],
                        **synthetic,
                    },
                },
                "model": {"backbone": "timm:vit_tiny_patch16_224", "pretrained": False},
            }
        )

    joint = config(attributes="joint", attributes_file=str(shared_data / MARKET))
    prepare_data(joint, tmp_path, model_check=False)
    design = json.loads((tmp_path / "world" / synth.DESIGN_FILE).read_text())
    assert design["attributes"] == "joint"
    prepare_data(config(), tmp_path, model_check=False)
    design = json.loads((tmp_path / "world" / synth.DESIGN_FILE).read_text())
    assert design.get("attributes", "independent") == "independent"

"""Market-1501 / DukeMTMC-reID folder loaders on tiny fake trees written here with PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from attrimp.data.market import load_reid_dataset, parse_image_name
from attrimp.data.records import load_image
from attrimp.errors import AttrimpError, DataError
from attrimp.model.schema import load_schema

MARKET = load_schema("market1501")
DUKE = load_schema("dukemtmc")


def _jpg(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 4, 3), value, np.uint8)).save(path, format="JPEG")


def _attr_rows(schema, pids_splits, overrides=None):
    """Every column coded 1 ('no' / first value), plus one colour marked per colour group."""
    overrides = overrides or {}
    rows = []
    for pid, split in pids_splits:
        row = {"pid": pid, "split": split}
        for g in schema.groups:
            for c in g.source_columns:
                row[c] = 1
            if g.columns:
                row[g.columns[0]] = 2
        row.update(overrides.get(pid, {}))
        rows.append(row)
    return pd.DataFrame(rows)


def _market_tree(root: Path) -> None:
    """Train ids 2, 7; test ids 3, 5; junk (-1) and distractors (0000) in the gallery."""
    tr, q, g = root / "bounding_box_train", root / "query", root / "bounding_box_test"
    for name in ("0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s2_001234_02.jpg"):
        _jpg(tr / name)
    for name in ("0003_c1s1_000100_00.jpg", "0005_c2s1_000200_00.jpg"):
        _jpg(q / name)
    for name in (
        "0003_c2s1_000300_00.jpg",
        "0003_c4s1_000310_00.jpg",
        "0005_c6s1_000400_00.jpg",
        "-1_c1s1_000500_00.jpg",
        "-1_c2s1_000501_00.jpg",
        "0000_c3s1_000600_00.jpg",
    ):
        _jpg(g / name)
    (tr / "Thumbs.db").write_bytes(b"not an image")


@pytest.fixture
def market(tmp_path):
    root = tmp_path / "Market-1501-v15.09.15"
    _market_tree(root)
    attrs = tmp_path / "market_attribute.csv"
    _attr_rows(
        MARKET,
        [(2, "train"), (7, "train"), (3, "test"), (5, "test")],
        {7: {"gender": 2, "age": 3}, 3: {"hat": 2}},
    ).to_csv(attrs, index=False)
    return root, attrs


def test_parse_market_and_duke_names():
    assert parse_image_name("0002_c1s1_000451_03.jpg") == (2, 1)
    assert parse_image_name("-1_c3s2_000451_03.jpg") == (-1, 3)
    assert parse_image_name("0001_c2_f0046182.jpg", "dukemtmc") == (1, 2)
    with pytest.raises(DataError, match="0001_c2_f0046182.jpg"):
        parse_image_name("0001_c2_f0046182.jpg", "market1501")
    with pytest.raises(DataError, match="cameras count from c1"):
        parse_image_name("0001_c0s1_000451_03.jpg")


def test_market_layout_parsed_with_junk_distractors_and_relabelling(market):
    root, attrs = market
    data = load_reid_dataset(root.parent, "market1501", attrs)  # parent: finds the subfolder
    assert data.root == root
    assert [(r.pid, r.camid, r.label) for r in data.train] == [(2, 0, 0), (2, 1, 0), (7, 2, 1)]
    assert data.pid_to_label == {2: 0, 7: 1} and data.label_to_pid == {0: 2, 1: 7}
    assert [(r.pid, r.camid, r.label) for r in data.query] == [(3, 0, -1), (5, 1, -1)]
    # junk excluded (counted), distractor kept in the gallery only
    assert sorted(r.pid for r in data.gallery) == [0, 3, 3, 5]
    assert data.report.counts["junk_images_gallery"] == 2
    assert data.report.counts["distractor_images"] == 1
    assert data.report.counts["ignored_non_image_files"] == 1
    assert data.num_cameras == 6
    # attributes joined by identity; the distractor is all-unknown
    dec = {
        r.pid: {g: v[0] for g, v in MARKET.decode(r.attributes[None]).items()} for r in data.gallery
    }
    assert dec[3]["hat"] == "yes" and dec[5]["hat"] == "no"
    assert dec[3]["upcolor"] == "black"
    assert set(dec[0].values()) == {"unknown"}
    train7 = MARKET.decode(data.train[2].attributes[None])
    assert train7["gender"] == ["female"] and train7["age"] == ["adult"]
    assert not data.report.warnings


def test_duke_layout(tmp_path):
    root = tmp_path / "DukeMTMC-reID"
    _jpg(root / "bounding_box_train" / "0001_c2_f0046182.jpg")
    _jpg(root / "bounding_box_train" / "0008_c1_f0000001.jpg")
    _jpg(root / "query" / "0002_c1_f0000100.jpg")
    _jpg(root / "bounding_box_test" / "0002_c5_f0000200.jpg")
    _jpg(root / "bounding_box_test" / "0009_c8_f0000300.jpg")  # a gallery-only identity
    attrs = tmp_path / "duke.csv"
    _attr_rows(
        DUKE, [(1, "train"), (8, "train"), (2, "test"), (9, "test")], {2: {"boots": 2}}
    ).to_csv(attrs, index=False)
    data = load_reid_dataset(root, "dukemtmc", attrs)
    assert data.schema.name == "dukemtmc"
    assert [(r.pid, r.camid) for r in data.train] == [(1, 1), (8, 0)]
    assert [(r.pid, r.camid) for r in data.gallery] == [(2, 4), (9, 7)]
    assert DUKE.decode(data.query[0].attributes[None])["boots"] == ["yes"]


def test_identities_without_attributes_error_or_counted_skip(market):
    root, attrs = market
    frame = pd.read_csv(attrs)
    frame[frame["pid"] != 5].to_csv(attrs, index=False)
    with pytest.raises(DataError, match=r"1 identities with images .* no row .*: 0005"):
        load_reid_dataset(root, "market1501", attrs)
    data = load_reid_dataset(root, "market1501", attrs, missing_policy="skip")
    assert 5 not in {r.pid for r in data.all_records()}
    assert data.report.counts["identities_without_attributes"] == 1
    assert data.report.counts["images_without_attributes"] == 2  # 1 query + 1 gallery
    assert any("0005" in w for w in data.report.warnings)


def test_attributes_without_images_error_or_counted_skip(market):
    root, attrs = market
    extra = [(p, "test") for p in range(100, 108)]
    frame = pd.concat([pd.read_csv(attrs), _attr_rows(MARKET, extra)])
    frame.to_csv(attrs, index=False)
    with pytest.raises(DataError, match=r"8 identities that have no image: 0100, .* and 3 more"):
        load_reid_dataset(root, "market1501", attrs)
    data = load_reid_dataset(root, "market1501", attrs, missing_policy="skip")
    assert data.report.counts["attributes_without_images"] == 8
    assert len(data.train) == 3


def test_unparseable_name_error_or_counted_skip(market):
    root, attrs = market
    _jpg(root / "query" / "holiday_photo.jpg")
    with pytest.raises(DataError, match="holiday_photo.jpg"):
        load_reid_dataset(root, "market1501", attrs)
    data = load_reid_dataset(root, "market1501", attrs, bad_names="skip")
    assert data.report.counts["skipped_bad_names"] == 1
    assert len(data.query) == 2


def test_distractor_outside_gallery_is_refused(market):
    root, attrs = market
    _jpg(root / "query" / "0000_c1s1_000001_00.jpg")
    with pytest.raises(DataError, match="distractor identity 0000"):
        load_reid_dataset(root, "market1501", attrs)


def test_missing_folder_named(market):
    root, attrs = market
    for f in (root / "query").iterdir():
        f.unlink()
    (root / "query").rmdir()
    with pytest.raises(DataError, match=r"has no 'query' folder \(it has: bounding_box_test"):
        load_reid_dataset(root, "market1501", attrs)
    with pytest.raises(DataError, match="does not exist"):
        load_reid_dataset(root / "nope", "market1501", attrs)


def test_query_identity_absent_from_gallery_is_a_counted_warning(market):
    root, attrs = market
    (root / "bounding_box_test" / "0005_c6s1_000400_00.jpg").unlink()
    data = load_reid_dataset(root, "market1501", attrs)
    assert data.report.counts["query_identities_absent_from_gallery"] == 1
    assert any("0005" in w and "no gallery image" in w for w in data.report.warnings)


def test_undecodable_image_fails_lazily_naming_the_file(market):
    root, attrs = market
    bad = root / "bounding_box_train" / "0002_c1s1_000451_03.jpg"
    bad.write_bytes(b"\xff\xd8 garbage")
    data = load_reid_dataset(root, "market1501", attrs)  # listing does not decode
    with pytest.raises(DataError, match="0002_c1s1_000451_03.jpg.*cannot be decoded"):
        load_image(data.train[0].path)


def test_attribute_file_of_another_dataset_is_refused(market, tmp_path):
    root, _ = market
    duke = tmp_path / "duke.csv"
    _attr_rows(DUKE, [(2, "train"), (7, "train"), (3, "test"), (5, "test")]).to_csv(
        duke, index=False
    )
    with pytest.raises(AttrimpError, match="lacks the column 'hair'"):
        load_reid_dataset(root, "market1501", duke)


def test_no_attribute_file_means_all_unknown_with_a_warning(market):
    root, _ = market
    data = load_reid_dataset(root, "market1501")
    assert all(not r.attributes.any() for r in data.all_records())
    assert any("unknown" in w for w in data.report.warnings)


def test_real_market_attribute_file_joins(tmp_path, shared_data):
    """The released .mat joins to a tree holding a few of its identities (rest: counted skip)."""
    root = tmp_path / "m"
    _jpg(root / "bounding_box_train" / "0002_c1s1_000451_03.jpg")
    _jpg(root / "query" / "0001_c1s1_000151_01.jpg")
    _jpg(root / "bounding_box_test" / "0001_c2s1_000301_01.jpg")
    data = load_reid_dataset(
        root, "market1501", shared_data / "market_attribute.mat", missing_policy="skip"
    )
    assert data.report.counts["attributes_without_images"] == 1501 - 2
    assert data.train[0].attributes.shape == (MARKET.n_slots,)
    assert data.train[0].attributes.any()


def test_torch_dataset_items_and_transforms(market):
    import torch

    from attrimp.data.dataset import ReIDImageDataset, build_transforms

    root, attrs = market
    data = load_reid_dataset(root, "market1501", attrs)
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    test_tf = build_transforms(train=False, size=(32, 16), mean=mean, std=std)
    ds = ReIDImageDataset(data.gallery, test_tf)  # target = original pid
    image, target, camid, attributes, index = ds[1]
    assert image.shape == (3, 32, 16) and image.dtype == torch.float32
    # the fake images are flat grey 100/255: normalised with the given mean/std, per channel
    expected = (torch.tensor([100 / 255] * 3) - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(image.mean((1, 2)), expected, atol=0.02)
    assert (target, camid, index) == (data.gallery[1].pid, data.gallery[1].camid, 1)
    assert torch.equal(attributes, torch.from_numpy(data.gallery[1].attributes))

    torch.manual_seed(0)
    train = ReIDImageDataset(
        data.train, build_transforms(train=True, size=(32, 16), erasing_p=1.0), target="label"
    )
    image, target, *_ = train[2]
    assert image.shape == (3, 32, 16) and target == 1  # pid 7 -> label 1
    assert train.targets == [0, 0, 1]
    with pytest.raises(DataError, match="target='label' needs training records"):
        ReIDImageDataset(data.query, test_tf, target="label")


def test_torch_dataset_names_an_undecodable_image(market):
    from attrimp.data.dataset import ReIDImageDataset

    root, attrs = market
    (root / "query" / "0003_c1s1_000100_00.jpg").write_bytes(b"")
    ds = ReIDImageDataset(load_reid_dataset(root, "market1501", attrs).query)
    with pytest.raises(DataError, match="0003_c1s1_000100_00.jpg"):
        ds[0]


def test_loader_reads_a_market_preset_world_as_it_reads_the_real_folder(tmp_path):
    """The synthetic world of `--preset market1501` (scaled down, small images: the same code
    path as the full preset) has the real folder's layout: the loader finds the planned counts,
    cameras c1..c6, junk (-1) dropped and counted, distractors (0000) kept in the gallery only
    and unannotated, every query matched in another camera."""
    from attrimp.data.records import DISTRACTOR_PID
    from attrimp.data.synth import make_synthetic_world, preset_world

    preset = {**preset_world("market1501", 0.01), "size": (64, 32)}
    sizes = preset["split_sizes"]
    root = make_synthetic_world(tmp_path / "w", **preset)
    files = {
        f: sorted(p.name for p in (root / f).iterdir())
        for f in ("bounding_box_train", "query", "bounding_box_test")
    }
    assert sum(n.startswith("-1_") for n in files["bounding_box_test"]) == preset["junk"]
    assert len(files["bounding_box_test"]) == sizes.gallery + preset["distractors"] + preset["junk"]
    data = load_reid_dataset(root, "market1501", root / "market_attribute.mat")
    assert (len(data.train), len(data.query)) == (sizes.train, sizes.query)
    assert len(data.gallery) == sizes.gallery + preset["distractors"]
    assert data.report.counts == {
        "junk_images_gallery": preset["junk"],
        "distractor_images": preset["distractors"],
    }
    assert data.report.warnings == []  # every query has a gallery match in another camera
    assert data.num_train_pids == sizes.train_identities
    assert sorted(data.pid_to_label.values()) == list(range(sizes.train_identities))
    test_ids = set(range(sizes.train_identities + 1, preset["n_identities"] + 1))
    assert {r.pid for r in data.query} == test_ids
    assert {r.pid for r in data.gallery} == test_ids | {DISTRACTOR_PID}
    for split in (data.train, data.query, data.gallery):
        assert {r.camid for r in split} <= set(range(6))
    assert {r.camid for r in data.all_records()} == set(range(6))
    distractors = [r for r in data.gallery if r.pid == DISTRACTOR_PID]
    assert len(distractors) == preset["distractors"]
    assert all(not r.attributes.any() for r in distractors)
    assert all(r.attributes.any() for r in data.query)

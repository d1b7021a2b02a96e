"""The synthetic world: determinism, layout, planted attributes, visibility, embedded priors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attrimp.data import synth
from attrimp.data.market import load_reid_dataset
from attrimp.errors import DataError
from attrimp.model.schema import load_schema

SMALL = dict(n_identities=6, n_cameras=2, images_per_identity_per_camera=2, size=(64, 32))


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = synth.make_synthetic_world(tmp_path / "a", seed=3, **SMALL)
    b = synth.make_synthetic_world(tmp_path / "b", seed=3, **SMALL)
    c = synth.make_synthetic_world(tmp_path / "c", seed=4, **SMALL)
    ha, hb, hc = _hashes(a), _hashes(b), _hashes(c)
    assert ha == hb
    assert len(ha) == 6 * 2 * 2 + 3  # images + .mat + .csv + synth.json, nothing else
    images = [k for k in ha if k.endswith(".jpg")]
    assert all(ha[k] != hc[k] for k in images)


def test_layout_is_read_by_the_market_loader_and_every_identity_joins(tmp_path):
    root = synth.make_synthetic_world(tmp_path / "w", seed=0, distractors=3, **SMALL)
    schema = load_schema("market1501")
    for attr_file in (synth.ATTRIBUTE_FILE, synth.ATTRIBUTE_CSV):
        data = load_reid_dataset(root, "market1501", root / attr_file)  # missing_policy="error"
        assert not data.report.warnings
        assert len(data.train) == 3 * 2 * 2 and data.num_train_pids == 3
        # one query per camera per test identity, the rest + distractors in the gallery
        assert len(data.query) == 3 * 2 and len(data.gallery) == 3 * 2 + 3
        assert data.report.counts["distractor_images"] == 3
        assert {r.camid for r in data.query} == {0, 1}
        # the annotations are the planted ones (drawn from the seed per identity)
        for r in [*data.train, *data.query]:
            planted = synth.draw_attributes(np.random.default_rng([0, 0, r.pid]), "market")
            decoded = schema.decode(r.attributes[None])
            assert {g: synth.GROUPS[g][i] for g, i in planted.items()} == {
                g: v[0] for g, v in decoded.items()
            }
    assert len(synth.load_synthetic_world(root).train) == 12
    design = json.loads((root / synth.DESIGN_FILE).read_text())
    assert design["seed"] == 0 and design["visibility"] == {g: 1.0 for g in synth.GROUPS}
    assert design["counts"]["train"] == 12 and design["counts"]["gallery"] == 9
    with Image.open(data.train[0].path) as im:
        assert im.size == (32, 64)


def test_embedded_priors_match_the_real_market_file(shared_data):
    import scipy.io

    m = scipy.io.loadmat(shared_data / "market_attribute.mat")["market_attribute"]
    for col, probs in synth.MARKET_PRIORS.items():
        values = np.concatenate([m[s][0, 0][col][0, 0].ravel() for s in ("train", "test")])
        assert len(values) == 1501
        codes, counts = np.unique(values, return_counts=True)
        real = dict(zip(codes.tolist(), (counts / len(values)).tolist()))
        assert set(real) == set(probs), col
        for code, p in probs.items():
            assert p == pytest.approx(real[code], abs=5e-5), (col, code)
    fields = set(m["train"][0, 0].dtype.names) - {"image_index"}
    assert fields == set(synth.MARKET_PRIORS) == set(synth.MAT_COLUMNS)


def _render(attrs, visible, seed=0):
    rng = np.random.default_rng(seed)
    detail = synth.draw_identity_detail(rng)
    pose = synth.draw_pose(rng)
    camera = synth.draw_camera(rng)
    return synth.render_person(attrs, detail, pose, camera, visible, (128, 64))


@pytest.mark.parametrize("group", list(synth.GROUPS))
def test_invisible_group_does_not_change_a_pixel_visible_one_does(group):
    base = {g: 0 for g in synth.GROUPS}
    base["clothes"] = 1  # pants, so a change of `down` length shows in both renderings
    other = dict(base, **{group: (base[group] + 1) % len(synth.GROUPS[group])})
    for seed in range(3):  # front and back views, different poses and cameras
        hidden = {group: False}
        assert np.array_equal(_render(base, hidden, seed), _render(other, hidden, seed))
    assert any(
        not np.array_equal(_render(base, {}, seed), _render(other, {}, seed)) for seed in range(3)
    )


def _torso_colour(path: Path) -> np.ndarray:
    """Median chromaticity (colour with the camera's brightness divided out) of the chest."""
    a = np.asarray(Image.open(path), dtype=float)
    H, W = a.shape[:2]
    rgb = np.median(a[int(H * 0.38) : int(H * 0.5), W // 2 - 3 : W // 2 + 3].reshape(-1, 3), 0)
    return np.append(rgb / (rgb.sum() + 1.0), rgb.sum() / 765)


def _eta2(values: np.ndarray, groups: list[str]) -> float:
    """Share of the variance of a pixel statistic explained by the annotated value."""
    groups = np.asarray(groups)
    total = ((values - values.mean(0)) ** 2).sum(0)
    between = sum(
        (groups == g).sum() * (values[groups == g].mean(0) - values.mean(0)) ** 2
        for g in np.unique(groups)
    )
    return float((between / total).max())


def _permutation_p(stats: np.ndarray, colours: list[str], pids: list[int], n: int = 200) -> float:
    """How often shuffling the colour annotations across identities (an identity's images stay
    together) explains the chest colour at least as well as the real annotations do."""
    observed = _eta2(stats, colours)
    ids = sorted(set(pids))
    colour_of = dict(zip(pids, colours))
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(n):
        shuffled = dict(zip(ids, rng.permutation([colour_of[i] for i in ids])))
        hits += _eta2(stats, [shuffled[p] for p in pids]) >= observed
    return (hits + 1) / (n + 1)


def test_world_level_pixel_statistic_separates_upcolor_only_when_visible(tmp_path):
    kw = dict(n_identities=60, n_cameras=2, images_per_identity_per_camera=1, seed=5)
    schema = load_schema("market1501")
    p_value = {}
    for v in (1.0, 0.0):
        root = synth.make_synthetic_world(tmp_path / f"v{v}", visibility={"upcolor": v}, **kw)
        data = load_reid_dataset(root, "market1501", root / synth.ATTRIBUTE_FILE)
        recs = [*data.train, *data.query, *data.gallery]
        colours = schema.decode(np.stack([r.attributes for r in recs]))["upcolor"]
        assert len(set(colours)) >= 4  # the annotation keeps the true, varied value
        stats = np.stack([_torso_colour(r.path) for r in recs])
        p_value[v] = _permutation_p(stats, colours, [r.pid for r in recs])
    assert p_value[1.0] < 0.01, p_value  # no shuffle comes close: the colour shows
    assert p_value[0.0] > 0.01, p_value  # the real annotation does no better than chance
    # and the attribute files, i.e. the annotations, are the same bytes either way
    assert (tmp_path / "v1.0" / synth.ATTRIBUTE_FILE).read_bytes() == (
        tmp_path / "v0.0" / synth.ATTRIBUTE_FILE
    ).read_bytes()


def test_visibility_changes_only_that_groups_pixels_and_fractions_mix_per_image(tmp_path):
    kw = dict(SMALL, n_identities=12, priors="uniform", seed=2)
    worlds = {
        v: synth.make_synthetic_world(tmp_path / str(v), visibility={"hat": v}, **kw)
        for v in (0.0, 0.5, 1.0)
    }
    hats = {
        int(line.split(",")[0])
        for line in (worlds[1.0] / synth.ATTRIBUTE_CSV).read_text().splitlines()[1:]
        if line.split(",")[2 + synth.MAT_COLUMNS.index("hat")] == "2"
    }
    assert hats and len(hats) < 12
    h = {v: _hashes(w) for v, w in worlds.items()}
    images = [k for k in h[1.0] if k.endswith(".jpg")]
    picked = []
    for k in images:
        pid = int(Path(k).name[:4])
        if pid in hats:
            assert h[0.0][k] != h[1.0][k]
            assert h[0.5][k] in (h[0.0][k], h[1.0][k])
            picked.append(h[0.5][k] == h[1.0][k])
        else:  # no hat to hide: identical bytes whatever the hat's visibility
            assert h[0.0][k] == h[0.5][k] == h[1.0][k]
    assert any(picked) and not all(picked)  # v = 0.5 shows the hat in some images, not all


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no attribute group 'hats'"):
        synth.make_synthetic_world(tmp_path / "x", visibility={"hats": 0.0})
    with pytest.raises(DataError, match=r"'hat' is 1.5; it must lie in \[0, 1\]"):
        synth.make_synthetic_world(tmp_path / "x", visibility={"hat": 1.5})
    with pytest.raises(DataError, match="at least 2 identities"):
        synth.make_synthetic_world(tmp_path / "x", n_identities=1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    for overwrite in (False, True):  # never replaces a folder that is not a world
        with pytest.raises(DataError, match="not empty and holds no synthetic world"):
            synth.make_synthetic_world(tmp_path / "full", overwrite=overwrite, **SMALL)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    world = synth.make_synthetic_world(tmp_path / "w", seed=1, **SMALL)
    with pytest.raises(DataError, match="already holds a synthetic world; pass overwrite"):
        synth.make_synthetic_world(world, seed=2, **SMALL)
    synth.make_synthetic_world(world, seed=2, overwrite=True, **SMALL)
    assert json.loads((world / synth.DESIGN_FILE).read_text())["seed"] == 2
    assert not list(tmp_path.glob(".*"))  # no temporary folder left behind


# --- the Market-1501 preset --------------------------------------------------------------------
def test_market_preset_plans_exactly_markets_published_counts():
    """Pure arithmetic: the full preset's planned images are Market-1501's split sizes
    (Zheng et al. 2015: 751 / 12,936 train, 750 ids with 3,368 query and 19,732 gallery files,
    2,793 of them distractors and 3,819 junk, 6 cameras)."""
    p = synth.preset_world("market1501")
    assert (p["n_identities"], p["n_cameras"], tuple(p["size"])) == (1501, 6, (256, 128))
    assert (p["distractors"], p["junk"]) == (2793, 3819)
    cells = synth.plan_images(p["n_identities"], p["n_cameras"], p["split_sizes"])
    totals = {s: sum(n for _, _, split, n in cells if split == s) for s in ("train", "query")}
    totals["gallery"] = sum(n for _, _, split, n in cells if split == "gallery")
    assert totals == {"train": 12936, "query": 3368, "gallery": 13120}
    assert totals["gallery"] + p["distractors"] == 15913  # what the protocol keeps
    assert totals["gallery"] + p["distractors"] + p["junk"] == 19732  # files on disk
    ids = {s: {pid for pid, _, split, _ in cells if split == s} for s in ("train", "query")}
    assert len(ids["train"]) == 751 and len(ids["query"]) == 750
    assert ids["train"].isdisjoint(ids["query"])
    assert {cam for _, cam, _, _ in cells} == set(range(6))
    # one query per identity and camera, and a gallery match in another camera for each
    queries = [(pid, cam) for pid, cam, split, _ in cells if split == "query"]
    assert len(queries) == len(set(queries))
    gallery = {}
    for pid, cam, split, n in cells:
        if split == "gallery" and n > 0:
            gallery.setdefault(pid, set()).add(cam)
    assert all(gallery[pid] - {cam} for pid, cam in queries)


def test_preset_scale_keeps_markets_shape():
    p = synth.preset_world("market1501", 0.1)
    s = p["split_sizes"]
    assert (p["n_identities"], s.train_identities) == (150, 75)
    assert s.train / s.train_identities == pytest.approx(12936 / 751, rel=0.01)
    assert s.query / (150 - 75) == pytest.approx(3368 / 750, rel=0.01)
    assert (p["distractors"], p["junk"]) == (279, 382)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: synth.preset_world("duke"), "Unknown preset 'duke'"),
        (lambda: synth.preset_world("market1501", 0), "must lie in (0, 1]"),
        (
            lambda: synth.plan_images(10, 2, synth.SplitSizes(5, 10, 20, 40)),
            "20 query images do not fit 5 test identities",
        ),
        (
            lambda: synth.plan_images(10, 6, synth.SplitSizes(5, 10, 10, 5)),
            "5 gallery images are too few",
        ),
        (
            lambda: synth.plan_images(10, 6, synth.SplitSizes(5, 3, 10, 50)),
            "3 training images cannot give each of 5 identities one",
        ),
    ],
)
def test_preset_and_plan_mistakes_are_one_sentence(call, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_synth_cli_preset_writes_the_scaled_market_world(tmp_path, monkeypatch, capsys):
    import sys

    from attrimp.cli import main

    out = tmp_path / "w"
    argv = ["attrimp", "data", "synth", "--preset", "market1501", "--scale", "0.01"]
    monkeypatch.setattr(sys, "argv", [*argv, "--size", "64x32", "--out", str(out)])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        main()
    printed = capsys.readouterr()
    assert (e.value.code or 0) == 0, printed.err
    p = synth.preset_world("market1501", 0.01)
    s = p["split_sizes"]
    gallery = s.gallery + p["distractors"]
    assert (
        f"15 identities × 6 cameras, {s.train} train / {s.query} query / {gallery} gallery "
        f"images (+ {p['junk']} junk)" in printed.out
    )
    design = json.loads((out / "synth.json").read_text())
    assert design["split_sizes"]["train"] == s.train and design["junk"] == p["junk"]
    assert design["size"] == [64, 32]
    # --scale without --preset is a one-sentence mistake
    monkeypatch.setattr(sys, "argv", ["attrimp", "data", "synth", "--scale", "0.5", "--out", "x"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2 and "--scale applies to a --preset" in capsys.readouterr().err


def test_workers_draw_the_same_bytes(tmp_path):
    """Images drawn in two processes are the images drawn in one (every draw is keyed by its
    image), junk and distractors included."""
    kw = {**synth.preset_world("market1501", 0.01), "size": (64, 32)}
    one = synth.make_synthetic_world(tmp_path / "one", **kw)
    two = synth.make_synthetic_world(tmp_path / "two", workers=2, **kw)
    assert _hashes(one) == _hashes(two)
    assert sum(k.startswith("bounding_box_test/-1_") for k in _hashes(one)) == kw["junk"]

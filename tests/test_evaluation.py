"""`attrimp.evaluate.evaluation` (feature extraction, result tables, feature files) and `attrimp evaluate`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from attrimp.cli import app
from attrimp.errors import DataError
from attrimp.evaluate.evaluation import (
    FeatureSet,
    attribute_frame,
    config_table,
    evaluate_features,
    extract_features,
    gate_columns,
    load_features,
    mask_columns,
    per_query_table,
    save_features,
)
from attrimp.evaluate.metrics import evaluate
from attrimp.model.mosaic import ModelOutput, MoSAICConfig, MoSAICReID
from attrimp.model.schema import load_schema
from tests.test_metrics import HAND_D, HAND_GC, HAND_GP, HAND_QC, HAND_QP


@pytest.fixture
def hand():
    return evaluate(HAND_D, HAND_QP, HAND_GP, HAND_QC, HAND_GC, max_rank=10)


# --------------------------------------------------------------------------------------------
# tables


def test_per_query_table_columns_and_values(hand):
    attrs = pd.DataFrame({"gender": ["male", "female", "male", "unknown"], "hat": ["no"] * 4})
    frame = per_query_table(
        hand,
        query_ids=["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
        q_pids=HAND_QP,
        q_camids=HAND_QC,
        attributes=attrs,
        config="full",
        gates_or_mask={**mask_columns({"gender": True, "hat": False}), "noise": [0, 1, 2, 3]},
    )
    assert list(frame.columns) == [
        "config", "query", "pid", "camid", "gender", "hat",
        "ap", "rank1", "first_hit", "inp", "on_gender", "on_hat", "noise",
    ]  # fmt: skip
    # the skipped query (d.jpg, identity 3 absent from the gallery) is left out and counted
    assert frame["query"].tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    assert frame.attrs["num_skipped"] == 1
    np.testing.assert_allclose(frame["ap"], [1 / 3, 0.45, 0.5])
    np.testing.assert_allclose(frame["inp"], [1 / 3, 0.4, 0.5])
    assert frame["first_hit"].tolist() == [3, 2, 2]
    assert frame["rank1"].tolist() == [0, 0, 0]
    assert frame["gender"].tolist() == ["male", "female", "male"]
    assert frame["on_gender"].tolist() == [1, 1, 1] and frame["on_hat"].tolist() == [0, 0, 0]
    assert frame["noise"].tolist() == [0, 1, 2]  # per-query values follow their query
    assert (frame["config"] == "full").all() and frame["pid"].tolist() == [1, 2, 2]

    everything = per_query_table(
        hand,
        query_ids=None,
        q_pids=HAND_QP,
        q_camids=HAND_QC,
        attributes=None,
        config="x",
        include_skipped=True,
    )
    assert len(everything) == 4 and np.isnan(everything["ap"].iloc[3])
    assert everything["query"].tolist() == [0, 1, 2, 3]


def test_per_query_table_rejects_misaligned_inputs(hand):
    kw = dict(query_ids=None, q_pids=HAND_QP, q_camids=HAND_QC, config="c")
    with pytest.raises(DataError, match="3 rows but there are 4 queries"):
        per_query_table(hand, attributes=pd.DataFrame({"a": [1, 2, 3]}), **kw)
    with pytest.raises(DataError, match="'ap' clashes"):
        per_query_table(hand, attributes=pd.DataFrame({"ap": [1, 2, 3, 4]}), **kw)
    with pytest.raises(DataError, match="'g' has \\(2,\\) values but the table has 4"):
        per_query_table(hand, attributes=None, gates_or_mask={"g": [1, 2]}, **kw)
    with pytest.raises(DataError, match="3 pids"):
        per_query_table(hand, attributes=None, **{**kw, "q_pids": HAND_QP[:3]})


def test_gate_columns_and_attribute_frame():
    schema = load_schema("market1501")
    gates = torch.zeros(2, schema.n_experts)
    gates[1, 0] = 1.0
    cols = gate_columns(gates, schema.expert_names)
    assert len(cols) == schema.n_experts
    first = f"gate_{schema.expert_names[0]}"
    assert cols[first].tolist() == [0.0, 1.0]
    with pytest.raises(DataError, match="expert names"):
        gate_columns(gates, schema.expert_names[:-1])
    multihot = np.zeros((2, schema.n_slots), dtype=np.float32)
    g0 = schema.groups[0]
    multihot[0, schema.slot(g0.name, g0.values[0])] = 1
    frame = attribute_frame(multihot, schema)
    assert list(frame.columns) == schema.group_names
    assert frame[g0.name].tolist() == [g0.values[0], "unknown"]


def test_config_table(hand):
    row = config_table(hand, config="no-hat", group_mask={"gender": True, "hat": False})
    assert list(row.columns) == [
        "config", "mAP", "rank1", "rank5", "rank10", "mINP", "gender", "hat",
        "num_valid", "num_skipped",
    ]  # fmt: skip
    r = row.iloc[0]
    assert r["mAP"] == pytest.approx(1.2833333333333333 / 3)
    assert r["mINP"] == pytest.approx(1.2333333333333333 / 3)
    assert (r["rank1"], r["rank5"], r["rank10"]) == (0.0, 1.0, 1.0)
    assert (r["gender"], r["hat"], r["num_valid"], r["num_skipped"]) == (1, 0, 3, 1)
    with pytest.raises(DataError, match="'mAP' clashes"):
        config_table(hand, config="c", group_mask={"mAP": 1})


# --------------------------------------------------------------------------------------------
# features


class TinyModel(torch.nn.Module):
    """Records what it was called with; its feature is linear in the image (+ attributes)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(12, 4)
        self.calls = []

    def forward(self, images, attributes=None, camids=None, **kw):
        self.calls.append((self.training, torch.is_grad_enabled(), attributes, camids, kw))
        f = self.lin(images.flatten(1))
        if attributes is not None:
            f = f + attributes.sum(1, keepdim=True)
        return ModelOutput(f, f, None, f.new_zeros(len(f), 0), None)


def test_extract_features_from_tuple_and_dict_batches():
    torch.manual_seed(0)
    model = TinyModel().train()
    images = torch.randn(5, 3, 2, 2)
    attrs = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    pids, cams = torch.tensor([1, 1, 2, 3, 3]), torch.tensor([0, 1, 0, 1, 2])
    tuples = [
        (images[:3], pids[:3], cams[:3], attrs[:3], torch.arange(3)),
        (images[3:], pids[3:], cams[3:], attrs[3:], torch.arange(3, 5)),
    ]
    fs = extract_features(model, tuples, "cpu", progress=False, model_kwargs={"router": "r"})
    with torch.no_grad():
        expected = model.lin(images.flatten(1)) + attrs.sum(1, keepdim=True)
    torch.testing.assert_close(fs.features, expected)
    assert fs.features.dtype == torch.float32 and not fs.features.requires_grad
    assert fs.pids.tolist() == [1, 1, 2, 3, 3] and fs.camids.tolist() == [0, 1, 0, 1, 2]
    assert fs.attributes.shape == (5, 2) and fs.ids == ["0", "1", "2", "3", "4"]
    training, grad, a, c, kw = model.calls[0]
    assert not training and not grad and kw == {"router": "r"} and c.tolist() == [0, 1, 0]
    assert model.training  # mode restored

    dicts = [
        {"images": images, "pids": pids, "camids": cams, "paths": [f"{i}.jpg" for i in range(5)]}
    ]
    fs2 = extract_features(model, dicts, "cpu", progress=False)
    assert fs2.attributes is None and fs2.ids[0] == "0.jpg"
    assert model.calls[-1][2] is None

    with pytest.raises(DataError, match="no batch"):
        extract_features(model, [], "cpu", progress=False)
    with pytest.raises(DataError, match="no 'images'"):
        extract_features(model, [{"x": 1}], "cpu", progress=False)


def test_extract_features_skips_camids_for_a_camera_free_model():
    calls = []

    def mosaic(camera_count: int) -> MoSAICReID:
        cfg = MoSAICConfig(
            backbone="timm:vit_tiny_patch16_224",
            pretrained=None,
            img_size=(32, 16),
            backbone_kwargs={"tiny": True, "depth": 2},
            camera_count=camera_count,
        )
        model = MoSAICReID(cfg)
        model.register_forward_pre_hook(lambda m, args: calls.append(args[2]))
        return model

    free, with_cameras = mosaic(0), mosaic(2)
    no_attributes = torch.zeros(2, free.schema.n_slots)  # every group missing: gates off
    batches = [(torch.randn(2, 3, 32, 16), [1, 2], [0, 1], no_attributes)]
    fs = extract_features(free, batches, "cpu")
    assert calls[-1] is None and fs.features.shape[0] == 2
    extract_features(with_cameras, batches, "cpu")
    assert calls[-1].tolist() == [0, 1]


class PlainExtractor(torch.nn.Module):
    """Not a MoSAICReID: returns a bare feature tensor and is given the camera ids."""

    def forward(self, images, attributes=None, camids=None):
        self.camids = camids
        return images.flatten(1)[:, :4]


def test_extract_features_of_a_plain_feature_extractor():
    model = PlainExtractor()
    fs = extract_features(model, [(torch.randn(2, 3, 2, 2), [1, 2], [0, 1])], "cpu")
    assert fs.features.shape == (2, 4) and model.camids.tolist() == [0, 1]


def _sets(rng, nq=12, ng=40):
    centres = rng.normal(size=(6, 8))
    qp, gp = rng.integers(1, 7, nq), rng.integers(1, 7, ng)
    q = FeatureSet(
        torch.from_numpy(centres[qp - 1] + 0.5 * rng.normal(size=(nq, 8))).float(),
        qp,
        np.zeros(nq, int),
        rng.integers(0, 2, (nq, 3)).astype(np.float32),
        [f"q{i}.jpg" for i in range(nq)],
    )
    g = FeatureSet(
        torch.from_numpy(centres[gp - 1] + 0.5 * rng.normal(size=(ng, 8))).float(),
        gp,
        np.ones(ng, int),
    )
    return q, g


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_feature_file_round_trip(tmp_path, suffix):
    q, g = _sets(np.random.default_rng(0))
    path = save_features(tmp_path / f"f{suffix}", q, g)
    q2, g2 = load_features(path)
    torch.testing.assert_close(q2.features, q.features)
    assert q2.pids.tolist() == q.pids.tolist() and g2.camids.tolist() == g.camids.tolist()
    np.testing.assert_array_equal(q2.attributes, q.attributes)
    assert g2.attributes is None
    assert q2.ids == (q.ids if suffix == ".npz" else None)  # safetensors holds no strings


def test_feature_file_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_features(tmp_path / "nope.npz")
    np.savez(tmp_path / "bad.npz", query_features=np.zeros((2, 3)))
    with pytest.raises(DataError, match="lacks 'query_pids'"):
        load_features(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot be read"):
        load_features(tmp_path / "junk.npz")
    q, g = _sets(np.random.default_rng(0))
    with pytest.raises(DataError, match=r"\.npz or \.safetensors"):
        save_features(tmp_path / "f.pt", q, g)


def test_evaluate_features_plain_and_reranked():
    q, g = _sets(np.random.default_rng(1))
    plain = evaluate_features(q, g, max_rank=5)
    direct = evaluate(
        torch.cdist(q.features, g.features), q.pids, g.pids, q.camids, g.camids, max_rank=5
    )
    assert plain.mAP == pytest.approx(direct.mAP, abs=1e-6)
    rr = evaluate_features(q, g, rerank=True, k1=5, k2=2, max_rank=5)
    assert 0 < rr.mAP <= 1 and rr.num_valid == plain.num_valid


# --------------------------------------------------------------------------------------------
# CLI

runner = CliRunner()


def test_cli_evaluate_writes_tables(tmp_path):
    q, g = _sets(np.random.default_rng(2))
    feats = save_features(tmp_path / "run1.npz", q, g)
    attr_csv = tmp_path / "attrs.csv"
    pd.DataFrame({"pid": range(1, 7), "gender": list("mfmfmf")}).to_csv(attr_csv, index=False)
    res = runner.invoke(
        app,
        [
            "evaluate", str(feats), "--table", str(tmp_path / "t.csv"),
            "--summary", str(tmp_path / "s.json"), "--attributes", str(attr_csv), "--max-rank", "5",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    expected = evaluate_features(q, g, max_rank=5)
    assert f"{expected.mAP:.4f}" in res.output  # a fraction, as in every command
    table = pd.read_csv(tmp_path / "t.csv")
    assert list(table.columns[:5]) == ["config", "query", "pid", "camid", "gender"]
    assert (table["config"] == "run1").all() and len(table) == expected.num_valid
    assert table["gender"].tolist() == ["mfmfmf"[p - 1] for p in table["pid"]]
    np.testing.assert_allclose(table["ap"], expected.ap[expected.valid])
    summary = json.loads((tmp_path / "s.json").read_text())[0]
    assert summary["mAP"] == pytest.approx(expected.mAP) and summary["reranked"] == 0


def test_cli_evaluate_decodes_attributes_with_a_schema(tmp_path):
    schema = load_schema("market1501")
    rng = np.random.default_rng(3)
    q, g = _sets(rng)
    q = q._replace(attributes=np.zeros((len(q.pids), schema.n_slots), dtype=np.float32))
    feats = save_features(tmp_path / "f.npz", q, g)
    res = runner.invoke(
        app,
        ["evaluate", str(feats), "--schema", "market1501", "--table", str(tmp_path / "t.parquet")],
    )
    assert res.exit_code == 0, res.output
    table = pd.read_parquet(tmp_path / "t.parquet")
    assert set(schema.group_names) <= set(table.columns)
    assert (table[schema.group_names[0]] == "unknown").all()


def test_cli_evaluate_user_errors_are_one_sentence(tmp_path):
    res = runner.invoke(app, ["evaluate", str(tmp_path / "missing.npz")])
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    q, g = _sets(np.random.default_rng(4))
    feats = save_features(tmp_path / "f.npz", q, g)
    pd.DataFrame({"pid": [1, 2], "gender": ["m", "f"]}).to_csv(tmp_path / "a.csv", index=False)
    res = runner.invoke(
        app,
        [
            "evaluate",
            str(feats),
            "--attributes",
            str(tmp_path / "a.csv"),
            "--table",
            str(tmp_path / "t.csv"),
        ],
    )
    assert res.exit_code == 2 and "has no row for" in res.output
    res = runner.invoke(app, ["evaluate", str(feats), "--metric", "manhattan"])
    assert res.exit_code == 2 and "Unknown distance metric 'manhattan'" in res.output

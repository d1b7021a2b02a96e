"""MoSAIC-ReID: backbone + experts + router + BNNeck, its config, checkpoints, parameter share."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import backbones
from attrimp.errors import CheckpointError, ConfigError, DataError, SchemaError
from attrimp.model.checkpoint import load_model, load_weights, read_checkpoint, save_checkpoint
from attrimp.model.mosaic import BANKS, ModelOutput, MoSAICConfig, MoSAICReID
from attrimp.model.schema import load_schema
from attrimp.model.weight_lora import WeightLoRABank

IMG = (32, 16)
TINY = {
    "timm": MoSAICConfig(
        backbone="timm:vit_tiny_patch16_224",
        pretrained=None,
        img_size=IMG,
        backbone_kwargs={"tiny": True, "depth": 3},
        num_classes=6,
    ),
    "clip": MoSAICConfig(
        backbone="clip:ViT-B-16",
        pretrained=None,
        img_size=IMG,
        backbone_kwargs={"tiny": True, "layers": 3},
        num_classes=6,
    ),
}


def tiny_model(family: str = "timm", seed: int = 0, **overrides) -> MoSAICReID:
    torch.manual_seed(seed)
    cfg = MoSAICConfig.from_dict({**TINY[family].to_dict(), **overrides})
    return MoSAICReID(cfg)


def batch(schema, n: int = 6, seed: int = 0):
    """Random images and a multi-hot with one value per group, some missing, some multiple."""
    g = torch.Generator().manual_seed(seed)
    attrs = torch.zeros(n, schema.n_slots)
    for grp in schema.groups:
        slots = schema.group_slots(grp.name)
        pick = torch.randint(len(slots) + 1, (n,), generator=g)  # == len(slots): missing
        for i, k in enumerate(pick.tolist()):
            if k < len(slots):
                attrs[i, slots[k]] = 1.0
        if len(slots) > 2:
            attrs[0, slots[:2]] = 1.0  # a multiply-marked colour
    return torch.randn(n, 3, *IMG, generator=g), attrs


def randomise(model: MoSAICReID, seed: int = 5) -> None:
    """Non-trivial experts and BN statistics, so a round trip has something to lose."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.experts.layers:
            layer.B.copy_(torch.randn(layer.B.shape, generator=g))
        model.neck.running_mean.copy_(torch.randn(model.neck.running_mean.shape, generator=g))
        model.neck.running_var.uniform_(0.5, 2.0, generator=g)
        model.neck.weight.uniform_(0.5, 2.0, generator=g)


@pytest.mark.parametrize("family", ["timm", "clip"])
def test_forward_shapes_and_oracle_gates(family):
    model = tiny_model(family)
    x, attrs = batch(model.schema)
    out = model(x, attrs)
    assert isinstance(out, ModelOutput)
    assert out.features.shape == out.global_features.shape == (6, 48)
    assert out.logits.shape == (6, 6)
    assert out.attr_logits is None
    assert torch.equal(out.gates, attrs[:, model.schema.expert_slots.tolist()])
    assert model.experts.gates is None  # cleared after the pass


@pytest.mark.parametrize("bank", ["adapter", "lora"])
def test_experts_off_model_equals_backbone_plus_neck_exactly(bank):
    model = tiny_model("clip", bank=bank)
    assert isinstance(model.experts, BANKS[bank])
    randomise(model)
    model.eval()
    x, attrs = batch(model.schema)
    with torch.no_grad():
        off = model(x, gates=torch.zeros(6, model.schema.n_experts))
        on = model(x, attrs)
        model.experts.detach()
        plain = model.backbone(x)
    assert torch.equal(off.global_features, plain)
    assert torch.equal(off.features, model.neck(plain))
    assert not torch.allclose(on.global_features, plain)


def test_bnneck_head():
    model = tiny_model()
    assert not model.neck.bias.requires_grad
    assert model.classifier.bias is None
    x, attrs = batch(model.schema)
    model.train()
    out = model(x, attrs)
    # training-mode BN normalises with batch statistics: zero mean per channel, weight 1
    torch.testing.assert_close(out.features.mean(0), torch.zeros(48), atol=1e-5, rtol=0)
    (out.logits.sum() + out.global_features.sum()).backward()
    assert model.neck.bias.grad is None
    assert model.classifier.weight.grad is not None
    assert tiny_model(num_classes=0)(x, attrs).logits is None


def test_router_override_and_missing_annotations():
    import routers

    model = tiny_model()
    x, attrs = batch(model.schema)
    mask = routers.build_router("mask", groups_on={"gender"})
    out = model(x, attrs, router=mask)
    gender = model.schema.expert_group == model.schema.group_index("gender")
    assert torch.equal(out.gates[:, ~gender], torch.zeros(6, int((~gender).sum())))
    assert torch.equal(out.gates[:, gender], attrs[:, model.schema.expert_slots[gender]])
    with pytest.raises(ConfigError, match="needs the attribute annotations"):
        model(x)
    with pytest.raises(SchemaError, match=r"shape \[6, 26\] do not fit schema 'market1501'"):
        model(x, attrs[:, :26])
    # a numpy multi-hot is accepted as well
    assert torch.equal(model(x, attrs.numpy()).gates, model(x, attrs).gates)


def test_config_json_round_trip_and_typos():
    cfg = MoSAICConfig(backbone="timm:x", img_size=(256, 128), router_kwargs={"gates": "soft"})
    again = MoSAICConfig.from_json(cfg.to_json())
    assert again == cfg and again.img_size == (256, 128)
    with pytest.raises(ConfigError, match="'ranks'"):
        MoSAICConfig.from_dict({"ranks": 4})
    with pytest.raises(ConfigError, match="pooling"):
        MoSAICConfig(pooling="avg")
    with pytest.raises(ConfigError, match="alpha must be float"):
        MoSAICConfig.from_dict({"alpha": "high"})


def test_model_takes_any_bank_built_or_as_a_factory():
    torch.manual_seed(0)
    cfg = MoSAICConfig.from_dict({**TINY["timm"].to_dict(), "bank": "lora"})
    bb = backbones.build(cfg.backbone, pretrained=None, img_size=IMG, **cfg.backbone_kwargs)
    built = WeightLoRABank(bb, load_schema("market1501").n_experts, blocks=1, rank=2)
    model = MoSAICReID(cfg, backbone=bb, bank=built)
    assert model.experts is built
    x, attrs = batch(model.schema)
    assert model(x, attrs).features.shape == (6, 48)

    calls = []

    def factory(backbone, n_experts, **options):
        calls.append(options)
        return WeightLoRABank(backbone, n_experts, **options)

    model = MoSAICReID(cfg, bank=factory)
    assert isinstance(model.experts, WeightLoRABank)
    assert calls == [
        {"blocks": 2, "rank": 8, "alpha": 16.0, "site": "mlp", "pooling": "mean", "dropout": 0.0}
    ]
    with pytest.raises(ConfigError, match="names the expert bank 'adapter' but the bank given"):
        MoSAICReID(TINY["timm"], bank=WeightLoRABank)
    with pytest.raises(ConfigError, match="ExpertBank with 35 experts"):
        MoSAICReID(cfg, bank=lambda backbone, n, **o: WeightLoRABank(backbone, 3, **o))
    with pytest.raises(ConfigError, match="experts.bank must be one of"):
        tiny_model(bank="peft")


def test_expert_share_market_rank8_vit_b16_adapter_under_two_percent_lora_five():
    # The real ViT-B/16 architecture (random init, no download), built on the meta device so
    # no memory is allocated; the count is compared with the closed form K·E·r·(D_in + D_out).
    with torch.device("meta"):
        bb = backbones.build("clip:ViT-B-16", pretrained=None, img_size=(256, 128))
        model = MoSAICReID(MoSAICConfig(pretrained=None, rank=8), backbone=bb)
    schema = load_schema("market1501")
    assert model.expert_parameter_count() == 2 * schema.n_experts * 8 * (768 + 768) == 860_160
    share = model.expert_parameter_share()
    assert 80e6 < model.backbone_parameter_count() < 90e6
    assert share < 0.02
    assert share == pytest.approx(860_160 / model.backbone_parameter_count())
    # the lora bank adapts the MLP's own D -> 4D -> D linears: 5x the parameters at rank 8
    with torch.device("meta"):
        bb = backbones.build("clip:ViT-B-16", pretrained=None, img_size=(256, 128))
        lora = MoSAICReID(MoSAICConfig(pretrained=None, bank="lora"), backbone=bb)
    assert lora.expert_parameter_count() == 2 * schema.n_experts * 8 * (2 * (768 + 3072))
    assert lora.expert_parameter_share() == pytest.approx(0.0502, abs=1e-4)


def test_model_compiles_without_graph_breaks():
    model = tiny_model()
    x, attrs = batch(model.schema)
    explained = torch._dynamo.explain(model)(x, attrs)
    assert explained.graph_break_count == 0, explained.break_reasons
    # the router's schema index is a graph constant, not rebuilt from host data every forward
    # (on a GPU that rebuild is a host-to-device copy and a stream synchronisation)
    code = "\n".join(graph.code for graph in explained.graphs)
    assert "torch.tensor(" not in code
    randomise(model)  # B != 0, so the features depend on the gates
    model.eval()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    for seed in (0, 1):  # new gates each call: the expert weights follow them inside the graph
        x, attrs = batch(model.schema, seed=seed)
        torch.testing.assert_close(compiled(x, attrs).features, model(x, attrs).features)


# ------------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("router", ["oracle", "learned"])
def test_checkpoint_round_trip_is_exact(tmp_path, router):
    model = tiny_model("clip", router=router, blocks=2, pooling="max")
    randomise(model)
    model.eval()
    x, attrs = batch(model.schema)
    with torch.no_grad():
        before = model(x, attrs)
    save_checkpoint(model, tmp_path / "ckpt", metadata={"epoch": 3, "mAP": 0.5})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    info = read_checkpoint(tmp_path / "ckpt")
    assert info.metadata == {"epoch": 3, "mAP": 0.5}
    assert info.schema == model.schema and info.config == model.config
    again = load_model(tmp_path / "ckpt").eval()
    with torch.no_grad():
        after = again(x, attrs)
    for a, b in zip(before, after):
        assert (a is None and b is None) or torch.equal(a, b)
    # and a differently initialised model really differs before loading
    other = tiny_model("clip", seed=1, router=router, blocks=2, pooling="max").eval()
    with torch.no_grad():
        assert not torch.equal(other(x, attrs).features, before.features)
    load_weights(other, tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(other(x, attrs).features, before.features)


def test_lora_bank_checkpoint_round_trip_is_exact(tmp_path):
    model = tiny_model("timm", bank="lora", site="attn", pooling="sum")
    randomise(model)
    model.eval()
    x, attrs = batch(model.schema)
    with torch.no_grad():
        before = model(x, attrs).features
    folder = save_checkpoint(model, tmp_path / "ckpt")
    assert json.loads((folder / "config.json").read_text())["model"]["bank"] == "lora"
    again = load_model(folder).eval()
    assert isinstance(again.experts, WeightLoRABank) and again.config == model.config
    with torch.no_grad():
        assert torch.equal(again(x, attrs).features, before)
    with pytest.raises(CheckpointError, match="bank 'lora' in the checkpoint but 'adapter'"):
        load_weights(tiny_model("timm", site="attn", pooling="sum"), folder)


def test_checkpoint_with_the_old_key_names_loads_as_an_adapter_bank(tmp_path):
    """config.json files written before the model config took the TOML names (expert_blocks,
    expert_dropout; no bank, no camera_embedding) still load, with the same weights."""
    model = tiny_model(blocks=1, dropout=0.1, camera_count=3)
    randomise(model)
    model.eval()
    folder = save_checkpoint(model, tmp_path / "old")
    doc = json.loads((folder / "config.json").read_text())
    saved = doc["model"]
    for old, new in {"expert_blocks": "blocks", "expert_dropout": "dropout"}.items():
        saved[old] = saved.pop(new)
    del saved["bank"], saved["camera_embedding"]
    (folder / "config.json").write_text(json.dumps(doc))
    again = load_model(folder).eval()
    assert again.config == model.config
    assert again.config.bank == "adapter" and again.config.camera_embedding
    x, attrs = batch(model.schema)
    with torch.no_grad():
        assert torch.equal(again(x, attrs).features, model(x, attrs).features)


def test_checkpoint_into_another_schema_or_shape_names_the_keys(tmp_path):
    save_checkpoint(tiny_model(), tmp_path / "market")
    duke = tiny_model(schema="dukemtmc")
    with pytest.raises(
        CheckpointError,
        match=r"schema 'market1501' \(35 experts\) in the checkpoint but 'dukemtmc' \(26 experts\)",
    ):
        load_weights(duke, tmp_path / "market")
    with pytest.raises(CheckpointError, match=r": rank 8 in the checkpoint but 2 in the model\."):
        load_weights(tiny_model(rank=2), tmp_path / "market")
    with pytest.raises(CheckpointError, match=r"blocks \d in the checkpoint but 3 in"):
        load_weights(tiny_model(blocks=3), tmp_path / "market")


def test_checkpoint_rejects_tampering_and_never_unpickles(tmp_path):
    folder = save_checkpoint(tiny_model(), tmp_path / "c")
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\x80\x04 not a safetensors file, maybe a pickle")
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_model(folder)
    doc = json.loads((folder / "config.json").read_text())
    import hashlib

    doc["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (folder / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(folder)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    (folder / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_checkpoint(folder)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_saving_twice_replaces_atomically(tmp_path):
    model = tiny_model()
    save_checkpoint(model, tmp_path / "c", metadata={"epoch": 1})
    randomise(model)
    save_checkpoint(model, tmp_path / "c", metadata={"epoch": 2})
    assert read_checkpoint(tmp_path / "c").metadata == {"epoch": 2}
    again = load_model(tmp_path / "c")
    assert torch.equal(again.experts.layers[0].B, model.experts.layers[0].B)
    with pytest.raises(CheckpointError, match="JSON-serialisable"):
        save_checkpoint(model, tmp_path / "c", metadata={"x": object()})
    assert read_checkpoint(tmp_path / "c").metadata == {"epoch": 2}
    assert copy.deepcopy(again.config) == model.config


@pytest.mark.parametrize("bank", ["adapter", "lora"])
def test_deepcopy_rewires_the_experts_to_the_copy(bank):
    # EMA teachers and ablation copies deep-copy the model: the copy's wrapped sites must use
    # the copy's experts and gate state, not the original's.
    model = tiny_model(router="learned", bank=bank)
    randomise(model)
    model.eval()
    x, _ = batch(model.schema)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        before = model(x).features
        assert torch.equal(twin(x).features, before)
        twin.experts.layers[-1].B.add_(1.0)
        assert torch.equal(model(x).features, before)
        assert not torch.equal(twin(x).features, before)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_model_matches_cpu_and_compiles_with_inductor():
    model = tiny_model("clip")
    randomise(model)
    model.eval()
    x, attrs = batch(model.schema)
    with torch.no_grad():
        want = model(x, attrs).features
        gpu = copy.deepcopy(model).cuda()
        xc, ac = x.cuda(), attrs.cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            eager = gpu(xc, ac).features
            off = gpu(xc, ac, gates=torch.zeros(len(x), model.schema.n_experts, device="cuda"))
            compiled = torch.compile(gpu, fullgraph=True)(xc, ac).features
        gpu.experts.detach()  # the bare backbone + neck: what every gate off must equal
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bare = gpu.neck(gpu.backbone.forward_tokens(xc)[:, 0].float())
    torch.testing.assert_close(eager.float().cpu(), want, atol=0.1, rtol=0.05)
    torch.testing.assert_close(compiled.float(), eager.float(), atol=0.05, rtol=0.02)
    assert torch.equal(off.features, bare)


def _strict_constant_arguments(monkeypatch):
    """Make Dynamo convert every argument of an ``assume_constant_result`` function with
    ``as_python_constant``, as torch <= 2.11 did (2.12+ passes a user object through with an
    identity guard). There a frozen dataclass argument, such as a schema, fails with
    "currently can't reconstruct arbitrary frozen dataclass instances"."""
    functions = pytest.importorskip("torch._dynamo.variables.functions")
    original = getattr(functions, "invoke_and_store_as_constant", None)
    if original is None:
        pytest.skip("this torch has no invoke_and_store_as_constant to make strict")

    def strict(tx, fn, name, args, kwargs):
        for arg in [*args, *kwargs.values()]:
            if not arg.is_tensor():
                arg.as_python_constant()
        return original(tx, fn, name, args, kwargs)

    monkeypatch.setattr(functions, "invoke_and_store_as_constant", strict)


@pytest.mark.parametrize("router", ["oracle", "mask"])
def test_model_compiles_when_constant_arguments_must_be_python_constants(monkeypatch, router):
    """The torch 2.11 failure: the router's schema layout lookup took the frozen schema as an
    argument of an assume_constant_result function. Its arguments are now plain constants."""
    _strict_constant_arguments(monkeypatch)
    torch._dynamo.reset()
    kwargs = (
        {"router": "mask", "router_kwargs": {"groups_off": ["gender"]}} if router == "mask" else {}
    )
    model = tiny_model(**kwargs)
    randomise(model)
    model.eval()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x, attrs = batch(model.schema)
    torch.testing.assert_close(compiled(x, attrs).features, model(x, attrs).features)
    torch._dynamo.reset()


def test_no_schema_reaches_a_constant_result_function(monkeypatch):
    """Version-independent form of the check above: spy on every assume_constant_result
    function the schema-layout helpers define and look at what an eager forward hands them."""
    import dataclasses

    import attrimp.model.schema as oracle  # the layout helpers' home (once routers/oracle.py)

    seen = []
    for name, fn in list(vars(oracle).items()):
        if callable(fn) and getattr(fn, "_dynamo_marked_constant", False):

            def spy(*args, _fn=fn, **kwargs):
                seen.extend([*args, *kwargs.values()])
                return _fn(*args, **kwargs)

            monkeypatch.setattr(oracle, name, spy)
    model = tiny_model()
    x, attrs = batch(model.schema)
    model(x, attrs)
    assert seen, "no assume_constant_result function was called: the spy saw nothing"
    assert not [a for a in seen if dataclasses.is_dataclass(a)], seen


# ------------------------------------------------------------------------------ camera ids


def test_forward_reads_no_camera_id_on_the_device():
    """Camera ids on an accelerator are not read back by the forward (two stream
    synchronisations per step, as the old min/max check cost). The meta device stands in for a
    GPU here: a host read of a meta tensor is impossible, and the dispatch spy sees none."""
    from torch.utils._python_dispatch import TorchDispatchMode

    reads = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in {"_local_scalar_dense", "is_nonzero", "nonzero"}:
                reads.append(func)
            return func(*args, **(kwargs or {}))

    from attrimp.model.mosaic import build_backbone

    cfg = MoSAICConfig.from_dict({**TINY["timm"].to_dict(), "camera_count": 3})
    with torch.device("meta"):  # the bare backbone: the expert bank's autocast has no meta
        bb = build_backbone(cfg)
    x, _ = batch(load_schema("market1501"))
    cams = torch.tensor([0, 1, 2, 0, 1, 2], device="meta")
    with Spy():
        tokens = bb.forward_tokens(x.to("meta"), cams)
    assert tokens.shape[0] == 6 and tokens.shape[-1] == bb.width
    assert reads == []


def test_a_bad_camera_id_is_one_clear_error_at_the_validation_point():
    model = tiny_model(camera_count=3)
    model.check_camids([0, 1, 2])
    with pytest.raises(DataError, match=r"camera id 3 is outside the camera table of 3"):
        model.check_camids(np.array([0, 3]))
    with pytest.raises(DataError, match=r"camera id -1"):
        model.check_camids(torch.tensor([-1, 0]))
    x, attrs = batch(model.schema)
    with pytest.raises(DataError, match="camera id 5"):  # host ids are still checked in forward
        model(x, attrs, torch.tensor([0, 1, 2, 0, 1, 5]))
    tiny_model().check_camids([7])  # no camera table: ids are ignored, as in the forward

"""ViTs whose embedding is not the class token: read through their own pooling.

An average-pooled timm ViT (EVA-02, DINOv3, a ``*_gap`` ViT) and an attention-pooled one
(SigLIP's MAP head) must yield exactly what timm itself computes as the pooled features
(``forward_head(forward_features(x), pre_logits=True)``, or the forward of a timm model built
with no classifier), in the whole forward and in the sweep's split forward; the MoSAIC model
with every expert gate off must output the backbone's embedding bit for bit; a training step
must move the weights. open_clip's SigLIP / EVA-CLIP / CLIPA towers build by ``clip:`` name
with random weights and read the tower's own pooled output before its projection, as
``clip:ViT-B-16`` does. Tiny random models only: nothing is downloaded.
"""

from __future__ import annotations

import copy

import pytest
import torch

import backbones
from attrimp.model.mosaic import MoSAICConfig, MoSAICReID
from attrimp.train.losses import batch_hard_triplet_loss, identity_loss

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 3}

#: timm models by how they pool, with a patch size that keeps them small
AVG = ["timm:eva02_base_patch14_224", "timm:vit_small_patch16_dinov3"]
GAP_NO_CLS = ["timm:vit_medium_patch16_gap_256"]
MAP = ["timm:vit_base_patch16_siglip_224", "timm:vit_pe_core_base_patch16_224"]


def _images(size: tuple[int, int], n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def _randomise(module: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial values everywhere (timm zero-initialises some heads and layer scales)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 else 0.0))


def _timm_reference(name: str, native: tuple[int, int], **kw):
    """Our backbone at the model's native size and timm's own model with the same weights."""
    import timm

    torch.manual_seed(0)
    bb = backbones.build(name, img_size=native, **TINY, **kw).eval()
    _randomise(bb.inner)
    arch = name.split(":", 1)[1]
    ref = timm.create_model(arch, pretrained=False, num_classes=0, **TINY, **kw).eval()
    missing, unexpected = ref.load_state_dict(bb.inner.state_dict(), strict=False)
    assert not unexpected and not [k for k in missing if not k.startswith("head")]
    return bb, ref


@pytest.mark.parametrize(
    "name, native, pools",
    [
        ("timm:eva02_base_patch14_224", (224, 224), "avg"),
        ("timm:vit_small_patch16_dinov3", (224, 224), "avg"),
        ("timm:vit_medium_patch16_gap_256", (256, 256), "avg"),
        ("timm:vit_base_patch16_siglip_224", (224, 224), "map"),
        ("timm:vit_pe_core_base_patch16_224", (224, 224), "map"),
    ],
)
def test_the_embedding_is_timms_own_pooled_output(name, native, pools):
    bb, ref = _timm_reference(name, native)
    assert bb.pools and ref.global_pool == pools
    x = _images(native, n=2)
    with torch.no_grad():
        ours, theirs = bb(x), ref(x)  # timm's forward with no classifier: pooled pre-logits
        also = ref.forward_head(ref.forward_features(x), pre_logits=True)
        cls = bb.inner.forward_features(x)[:, 0]
    assert ours.shape == (2, bb.width)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, also, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, cls, atol=1e-3)  # not the first token, really pooled


@pytest.mark.parametrize("name", AVG + GAP_NO_CLS + MAP)
def test_at_the_reid_size_whole_and_split_forwards_give_timms_pooled_output(name):
    torch.manual_seed(0)
    bb = backbones.build(name, tiny=True, img_size=(64, 32), patch_size=8).eval()
    _randomise(bb.inner)
    x = _images((64, 32))
    inner = bb.inner
    with torch.no_grad():
        theirs = inner.forward_head(inner.forward_features(x), pre_logits=True)
        whole = bb.forward_tokens(x)
        assert torch.equal(whole[:, 0], bb(x))
        torch.testing.assert_close(whole[:, 0], theirs, rtol=0, atol=0)
        for split in (0, 1, 2):
            xs, ctx = bb.forward_prefix(x, stop=split)
            assert torch.equal(bb.forward_suffix(xs, ctx, start=split), whole)


def test_the_average_is_over_the_patch_tokens_after_the_final_norm():
    """Known answer, by hand: EVA-02 averages the patch tokens, then applies fc_norm."""
    torch.manual_seed(0)
    bb = backbones.build("timm:eva02_base_patch14_224", tiny=True, img_size=(56, 28)).eval()
    _randomise(bb.inner)
    x = _images((56, 28))
    with torch.no_grad():
        tokens = bb.forward_tokens(x)[:, 1:]  # the model's own tokens after the embedding
        by_hand = bb.inner.fc_norm(tokens[:, bb.num_prefix_tokens :].mean(1))
        torch.testing.assert_close(bb(x), by_hand, rtol=1e-6, atol=1e-6)


def test_class_token_models_are_read_as_before():
    torch.manual_seed(0)
    bb = backbones.build("timm:vit_tiny_patch16_224", tiny=True, img_size=(64, 32)).eval()
    x = _images((64, 32))
    with torch.no_grad():
        tokens = bb.forward_tokens(x)
        assert not bb.pools and tokens.shape[1] == 1 + 4 * 2
        torch.testing.assert_close(bb(x), bb.inner.forward_features(x)[:, 0], rtol=0, atol=0)


def _model(name: str, bank: str = "adapter", **kw) -> MoSAICReID:
    torch.manual_seed(0)
    cfg = MoSAICConfig(
        backbone=name,
        pretrained=None,
        img_size=(64, 32),
        backbone_kwargs={"tiny": True, "patch_size": 8, **kw},
        blocks=1,
        rank=4,
        num_classes=3,
        bank=bank,
    )
    return MoSAICReID(cfg)


@pytest.mark.parametrize("name", AVG[:1] + GAP_NO_CLS + MAP[:1])
@pytest.mark.parametrize("bank", ["adapter", "lora"])
def test_with_every_gate_off_the_model_outputs_the_backbones_embedding(name, bank):
    model = _model(name, bank).eval()
    with torch.no_grad():  # experts that would change the output if they ran
        for p in model.experts.parameters():
            p.normal_(0, 0.5)
    x = _images((64, 32), n=4)
    n = model.schema.n_experts
    bare = copy.deepcopy(model)
    bare.experts.detach()  # the backbone's own modules back: no expert anywhere
    with torch.no_grad():
        off = model(x, gates=torch.zeros(4, n))
        on = model(x, gates=torch.ones(4, n))
        alone = bare.backbone(x)
    assert torch.equal(off.global_features, alone)
    assert not torch.allclose(on.global_features, alone)
    # the sweep's split forward (prefix once, suffix per condition) reads the same embedding
    first = model.experts.block_indices[0]
    with torch.no_grad(), model.experts.gated(torch.ones(4, n)):
        xs, ctx = model.backbone.forward_prefix(x, stop=first)
        split = model.backbone.forward_suffix(xs, ctx, start=first)[:, 0]
    torch.testing.assert_close(split, on.global_features, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", AVG[:1] + MAP[:1] + ["clip:ViT-B-16-SigLIP"])
def test_a_training_step_moves_the_pooling_head_and_the_experts(name):
    model = _model(name).train()
    x = _images((64, 32), n=6)
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    attrs = torch.zeros(6, model.schema.n_slots)
    attrs[:, ::3] = 1
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = copy.deepcopy(model.state_dict())
    out = model(x, attrs)
    loss = identity_loss(out.logits, pids) + batch_hard_triplet_loss(out.global_features, pids)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    head = [k for k in changed if "attn_pool" in k or "fc_norm" in k]
    assert any(k.startswith("experts.") for k in changed)
    if "siglip" in name.lower() or "eva02" in name:
        assert head, "the pooling head trained"


def test_a_feature_router_reads_the_mean_patch_token_without_a_class_token():
    bb = backbones.build("timm:vit_base_patch16_siglip_224", tiny=True, img_size=(64, 32))
    assert not bb.has_class_token and bb.num_prefix_tokens == 0
    x = torch.randn(2, 5, bb.width)
    torch.testing.assert_close(bb.route_feature(x), x.mean(1))
    cls = backbones.build("timm:eva02_base_patch14_224", tiny=True, img_size=(56, 28))
    assert torch.equal(cls.route_feature(x), x[:, 0])


# --------------------------------------------------------------------------- open_clip towers


def _open_clip_config(model: str) -> dict:
    open_clip = pytest.importorskip("open_clip")
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        pytest.skip(f"this open_clip ships no config for {model}")
    return cfg


@pytest.mark.parametrize(
    "model, pooled",
    [("ViT-B-16-SigLIP", True), ("EVA02-B-16", False), ("PE-Core-B-16", True)],
)
def test_open_clip_timm_towers_equal_open_clips_own_tower(monkeypatch, model, pooled):
    """open_clip's tower (a timm trunk + its head) built with tiny random weights; ours reads the
    trunk's pooled features before the projection, as clip:ViT-B-16 reads ln_post's CLS."""
    import open_clip.timm_model as oc_timm
    from open_clip.model import _build_vision_tower

    cfg = _open_clip_config(model)
    create = oc_timm.timm.create_model
    monkeypatch.setattr(oc_timm.timm, "create_model", lambda *a, **k: create(*a, **{**k, **TINY}))
    torch.manual_seed(0)
    tower = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"]).eval()
    monkeypatch.undo()
    _randomise(tower)
    size = cfg["vision_cfg"]["image_size"]
    native = (size, size) if isinstance(size, int) else tuple(size)
    bb = backbones.build(f"clip:{model}", tiny=True, img_size=native).eval()
    assert type(bb).__name__ == "ClipTimmViT" and bb.pools is pooled
    state = {f"visual.{k}": v for k, v in tower.state_dict().items()}
    missing, _ = bb.load_state_dict(bb.convert_state_dict(state), strict=False)
    assert not [k for k in missing if "head" not in k]
    x = _images(native, n=2)
    with torch.no_grad():
        trunk = tower.trunk
        expected = trunk.forward_head(trunk.forward_features(x), pre_logits=True)
        torch.testing.assert_close(bb(x), expected, rtol=1e-5, atol=1e-5)
        if cfg["vision_cfg"].get("timm_proj") == "none":  # no projection: the tower's output
            torch.testing.assert_close(bb(x), tower(x), rtol=1e-5, atol=1e-5)


def test_clipa_averages_as_open_clip_does():
    from open_clip.model import _build_vision_tower

    cfg = _open_clip_config("ViT-L-14-CLIPA")
    vision = {**cfg["vision_cfg"], "layers": 2, "width": 48, "head_width": 16}
    torch.manual_seed(0)
    tower = _build_vision_tower(cfg["embed_dim"], vision).eval()
    _randomise(tower)
    from backbones.base import PretrainedCfg
    from backbones.clip import ClipViT

    pcfg = PretrainedCfg(name="clip:x", family="clip", model="x", img_size=(224, 224))
    bb = ClipViT(copy.deepcopy(tower), cfg=pcfg, stride=None, camera_count=0).eval()
    tower.proj = None  # the ReID embedding is taken before CLIP's projection
    x = _images((224, 224), n=2)
    with torch.no_grad():
        assert bb.pools and vision["final_ln_after_pool"]
        torch.testing.assert_close(bb(x), tower(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name", ["clip:ViT-B-16-SigLIP", "clip:EVA02-B-16", "clip:ViT-B-16-SigLIP2", "clip:EVA02-L-14"]
)
def test_open_clip_towers_build_by_name_with_random_weights(name):
    _open_clip_config(name.split(":", 1)[1])
    assert name in backbones.list_backbones("clip", all=True)
    backbones.check(name, tiny=True, img_size=(64, 32))
    bb = backbones.build(name, tiny=True, img_size=(64, 32)).eval()
    assert bb.pretrained_cfg.name == name and bb.pretrained_cfg.tag is None
    with torch.no_grad():
        assert bb(_images((64, 32))).shape == (3, bb.width)


def test_what_stays_refused_says_why():
    from attrimp.errors import ConfigError

    with pytest.raises(ConfigError, match="attentional pooler"):
        backbones.check("clip:coca_ViT-B-32")
    with pytest.raises(ConfigError, match="no class token and does not pool"):
        backbones.build("timm:vit_tiny_patch16_224", tiny=True, class_token=False, global_pool="")


@pytest.mark.parametrize("name", ["timm:vit_base_patch16_siglip_224", "clip:ViT-B-16-SigLIP"])
def test_a_checkpoint_of_a_pooled_model_rebuilds_its_pooling_head(tmp_path, name):
    from attrimp.model.checkpoint import load_model, save_checkpoint

    model = _model(name).eval()
    _randomise(model.backbone.inner.attn_pool)
    x = _images((64, 32))
    folder = save_checkpoint(model, tmp_path / "ckpt")
    again = load_model(folder).eval()
    gates = torch.ones(3, model.schema.n_experts)
    with torch.no_grad():
        assert torch.equal(again(x, gates=gates).features, model(x, gates=gates).features)

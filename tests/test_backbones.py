"""Backbones: registry, ReID grids, expert sites, camera embedding, adaptation, weight loading.

Everything runs on tiny random-initialised models (2 blocks, width 48) and never downloads.
"""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

import backbones
from attrimp.errors import AttrimpError, CheckpointError, ConfigError, DataError
from attrimp.model.interfaces import Backbone
from backbones.base import CLIP_MEAN, infer_grid, resample_pos_embed
from backbones.weights import load_weights, save_weights

TIMM = "timm:vit_tiny_patch16_224"
CLIP = "clip:ViT-B-16"
FAMILIES = [TIMM, CLIP]


def _tiny(name: str, seed: int = 0, **kw) -> backbones.ViTBackbone:
    torch.manual_seed(seed)
    return backbones.build(name, tiny=True, **kw).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 256, 128, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- building & grids


@pytest.mark.parametrize("name", FAMILIES)
def test_tiny_build_has_the_reid_grid_and_cls_first(name, images):
    bb = _tiny(name)
    assert isinstance(bb, Backbone)
    assert bb.img_size == (256, 128) and bb.grid_size == (16, 8)
    assert bb.width == 48 and len(bb.blocks) == 2 and bb.num_prefix_tokens == 1
    tokens = bb.forward_tokens(images)
    assert tokens.shape == (2, 1 + 16 * 8, 48)
    torch.testing.assert_close(bb(images), tokens[:, 0])


def test_timm_tokens_equal_timm_forward_features(images):
    # our forward (embeddings, blocks, final norm) must be timm's own, not a re-implementation drift
    bb = _tiny(TIMM)
    torch.testing.assert_close(bb.forward_tokens(images), bb.inner.forward_features(images))


@pytest.mark.parametrize(
    "name, prefix, grid",
    [
        ("timm:deit_tiny_distilled_patch16_224", 2, (16, 8)),  # CLS + distillation token
        ("timm:vit_small_patch14_reg4_dinov2", 5, (18, 9)),  # CLS + 4 registers, patch 14
    ],
)
def test_timm_prefix_tokens_and_patch14(name, prefix, grid, images):
    bb = _tiny(name)
    assert bb.num_prefix_tokens == prefix and bb.grid_size == grid
    torch.testing.assert_close(bb.forward_tokens(images), bb.inner.forward_features(images))


def test_clip_tokens_equal_open_clip_forward(images):
    bb = _tiny(CLIP)
    v = bb.inner
    expected = v.ln_post(v.transformer(v._embeds(images)))  # open_clip's own path, proj dropped
    torch.testing.assert_close(bb.forward_tokens(images), expected)
    torch.testing.assert_close(bb(images), v(images))  # pooled CLS, proj=None


def test_sequence_first_open_clip_is_normalised_to_batch_first():
    """Older open_clip ran blocks as [N, B, D]; the wrapper must give the same result batch-first."""
    from open_clip.model import _build_vision_tower

    from backbones.base import PretrainedCfg
    from backbones.clip import ClipViT

    torch.manual_seed(0)
    visual = _build_vision_tower(
        32, {"layers": 2, "width": 48, "head_width": 16, "patch_size": 16, "image_size": 64}
    )
    visual.proj = None
    visual.transformer.batch_first = False
    for blk in visual.transformer.resblocks:
        blk.attn.batch_first = False
    x = torch.randn(3, 3, 64, 64)
    reference = visual(x)  # open_clip transposes to sequence-first itself
    cfg = PretrainedCfg(name="clip:test", family="clip", model="test", img_size=(64, 64))
    bb = ClipViT(visual, cfg=cfg, stride=None, camera_count=0).eval()
    seen = []
    bb.blocks[0].attn.register_forward_hook(lambda m, a, o: seen.append(a[0].shape))
    torch.testing.assert_close(bb(x), reference)
    assert seen == [torch.Size([3, 1 + 16, 48])]  # batch first at the expert site


def test_native_size_keeps_the_pos_embed_and_reid_size_resamples_it():
    import timm

    torch.manual_seed(0)
    ref = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, depth=2, embed_dim=48, num_heads=3
    )
    native = _tiny(TIMM, img_size=224)
    assert native.grid_size == (14, 14)
    torch.testing.assert_close(native.inner.pos_embed, ref.pos_embed)
    reid = _tiny(TIMM)
    torch.testing.assert_close(
        reid.inner.pos_embed,
        resample_pos_embed(ref.pos_embed, (16, 8), (14, 14), num_prefix_tokens=1),
    )


@pytest.mark.parametrize("name", FAMILIES)
def test_overlapping_stride_grid(name, images):
    bb = _tiny(name, stride=12)
    assert bb.grid_size == (21, 10)  # (256-16)//12+1, (128-16)//12+1, as in TransReID
    assert bb.forward_tokens(images).shape == (2, 1 + 210, 48)


def test_any_input_size_works():
    bb = _tiny(CLIP, img_size=(384, 192))
    assert bb.grid_size == (24, 12)
    assert bb(torch.randn(1, 3, 384, 192)).shape == (1, 48)
    with pytest.raises(DataError, match=r"\(256, 128\)"):
        bb(torch.randn(1, 3, 256, 128))


# --------------------------------------------------------------------------- pos-embed resampling


def _linear_pos_embed(rows: int, cols: int, dim: int = 2) -> torch.Tensor:
    """A pos-embed whose channel 0 is 3*row and channel 1 is 5*col, with one prefix row of 7s."""
    r, c = torch.meshgrid(
        torch.arange(rows, dtype=torch.float32),
        torch.arange(cols, dtype=torch.float32),
        indexing="ij",
    )
    grid = torch.stack([3 * r, 5 * c], dim=-1).reshape(1, rows * cols, dim)
    return torch.cat([torch.full((1, 1, dim), 7.0), grid], dim=1)


def test_resampling_a_linear_field_gives_the_linear_field_on_the_new_grid():
    old, new = (16, 8), (21, 10)  # non-square source, upsampled; bilinear is exact on a plane
    out = resample_pos_embed(
        _linear_pos_embed(*old),
        new,
        old,
        num_prefix_tokens=1,
        interpolation="bilinear",
        antialias=False,
    )
    assert out.shape == (1, 1 + 21 * 10, 2)
    torch.testing.assert_close(out[0, 0], torch.tensor([7.0, 7.0]))  # prefix untouched
    grid = out[0, 1:].reshape(*new, 2)
    # half-pixel-centre mapping: new cell i sits at old coordinate (i + 0.5) * old / new - 0.5
    src_r = (torch.arange(new[0]) + 0.5) * old[0] / new[0] - 0.5
    src_c = (torch.arange(new[1]) + 0.5) * old[1] / new[1] - 0.5
    rows = (src_r >= 0) & (src_r <= old[0] - 1)  # interior: no edge clamping
    cols = (src_c >= 0) & (src_c <= old[1] - 1)
    assert rows.sum() >= 15 and cols.sum() >= 6
    torch.testing.assert_close(
        grid[rows, :, 0], (3 * src_r[rows]).unsqueeze(1).expand(-1, new[1]), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        grid[:, cols, 1], (5 * src_c[cols]).unsqueeze(0).expand(new[0], -1), atol=1e-4, rtol=0
    )


def test_default_resampling_keeps_a_constant_field_and_follows_a_plane():
    # the default (bicubic, antialiased) kernel is not exact on a plane, but close, and exact on
    # a constant; a transposed or square-assumed reshape would be far off on both channels
    old, new = (16, 8), (24, 12)
    out = resample_pos_embed(_linear_pos_embed(*old), new, old)[0, 1:].reshape(*new, 2)
    src_r = (torch.arange(new[0]) + 0.5) * old[0] / new[0] - 0.5
    src_c = (torch.arange(new[1]) + 0.5) * old[1] / new[1] - 0.5
    torch.testing.assert_close(
        out[2:-2, :, 0], (3 * src_r[2:-2]).unsqueeze(1).expand(-1, new[1]), atol=0.3, rtol=0
    )
    torch.testing.assert_close(
        out[:, 2:-2, 1], (5 * src_c[2:-2]).unsqueeze(0).expand(new[0], -1), atol=0.5, rtol=0
    )
    const = torch.full((1, 1 + 128, 4), 0.25)
    torch.testing.assert_close(
        resample_pos_embed(const, (21, 10), (16, 8)), torch.full((1, 211, 4), 0.25)
    )


def test_resampling_a_square_assumption_would_be_caught():
    pe = _linear_pos_embed(16, 8)
    with pytest.raises(CheckpointError, match="does not fit the grid"):
        resample_pos_embed(pe, (16, 8), (12, 12), num_prefix_tokens=1)
    same = resample_pos_embed(pe[0], (16, 8), (16, 8), num_prefix_tokens=1)  # [N, D] form
    assert same.shape == pe[0].shape


def test_infer_grid():
    assert infer_grid(196, like=(16, 8)) == (14, 14)
    assert infer_grid(128, like=(21, 10)) == (16, 8)
    assert infer_grid(210, like=(16, 8)) == (21, 10)
    with pytest.raises(CheckpointError, match="pretrained_grid"):
        infer_grid(127, like=(16, 8))


# --------------------------------------------------------------------------- expert sites


class _Delta(nn.Module):
    """Stands in for the expert bank: original output plus a fixed delta (tuple -> element 0)."""

    def __init__(self, inner: nn.Module, delta: torch.Tensor):
        super().__init__()
        self.inner, self.delta, self.inputs = inner, delta, []

    def forward(self, h, *args, **kwargs):
        self.inputs.append(h)
        out = self.inner(h, *args, **kwargs)
        if isinstance(out, tuple):
            return (out[0] + self.delta, *out[1:])
        return out + self.delta


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("site", ["mlp", "attn"])
def test_expert_site_zero_delta_is_identity_and_a_delta_changes_the_output(name, site, images):
    bb = _tiny(name)
    reference = bb.forward_tokens(images)
    s = bb.expert_site(-1, site)
    assert (s.in_features, s.out_features) == (48, 48)
    original = getattr(s.parent, s.attr)
    wrapper = _Delta(original, torch.zeros(48))
    setattr(s.parent, s.attr, wrapper)
    torch.testing.assert_close(bb.forward_tokens(images), reference, rtol=0, atol=0)
    h = wrapper.inputs[0]
    assert h.shape == (2, 129, 48)  # batch-first, normalised input of the sub-layer
    torch.testing.assert_close(h.mean(-1), torch.zeros(2, 129), atol=1e-5, rtol=0)
    wrapper.delta = torch.linspace(-1, 1, 48)
    changed = bb.forward_tokens(images)
    assert (changed - reference).abs().max() > 1e-2


@pytest.mark.parametrize("name", FAMILIES)
def test_mlp_delta_in_the_last_block_is_added_to_the_residual_stream(name, images):
    bb = _tiny(name)
    pre_norm = []
    bb.blocks[-1].register_forward_hook(lambda m, a, o: pre_norm.append(o))
    bb.forward_tokens(images)
    s = bb.expert_site(len(bb.blocks) - 1, "mlp")
    delta = torch.linspace(-0.5, 0.5, 48)
    setattr(s.parent, s.attr, _Delta(getattr(s.parent, s.attr), delta))
    expected = bb._final_norm(pre_norm[0] + delta)
    torch.testing.assert_close(bb.forward_tokens(images), expected)


def test_expert_site_errors():
    bb = _tiny(TIMM)
    with pytest.raises(ConfigError, match="out of range"):
        bb.expert_site(5, "mlp")
    with pytest.raises(ConfigError, match="unknown expert site"):
        bb.expert_site(0, "ffn")


# --------------------------------------------------------------------------- camera embedding


@pytest.mark.parametrize("name", FAMILIES)
def test_camera_embedding_adds_a_per_camera_vector(name, images):
    bb = _tiny(name, camera_count=3)
    plain = bb.forward_tokens(images)
    torch.testing.assert_close(bb.forward_tokens(images, torch.tensor([0, 2])), plain)  # zero init
    vec = torch.linspace(-1, 1, 48)
    with torch.no_grad():
        bb.camera_embed[2] = vec
    with_cam = bb.forward_tokens(images, torch.tensor([2, 2]))
    # the same as adding the vector to every position embedding (CLS included)
    with torch.no_grad():
        pe = bb.get_parameter(bb.pos_embed_key)
        pe += vec
    torch.testing.assert_close(with_cam, bb.forward_tokens(images))
    assert not torch.allclose(with_cam, plain)
    with pytest.raises(DataError, match="camera id 3"):
        bb.forward_tokens(images, torch.tensor([0, 3]))
    with pytest.raises(DataError, match="2 images"):
        bb.forward_tokens(images, torch.tensor([0]))


def test_no_camera_table_ignores_camids(images):
    bb = _tiny(TIMM)
    torch.testing.assert_close(
        bb.forward_tokens(images, torch.tensor([5, 9])), bb.forward_tokens(images)
    )


# --------------------------------------------------------------------------- adaptation modes


def _trainable(bb):
    return {n for n, p in bb.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", FAMILIES)
def test_full_and_frozen(name):
    full = _tiny(name, camera_count=2)
    assert full.count_parameters(trainable_only=True) == full.count_parameters() > 0
    frozen = _tiny(name, camera_count=2, adapt="frozen")
    assert _trainable(frozen) == {"camera_embed"}  # the new camera table still learns
    assert frozen.count_parameters(trainable_only=True) == 2 * 48
    assert _tiny(name, adapt="frozen").count_parameters(trainable_only=True) == 0


@pytest.mark.parametrize(
    "name, per_block",
    [
        # rank 4 * (in + out) for qkv 48->144, proj 48->48, fc1 48->192, fc2 192->48
        (TIMM, 4 * ((48 + 144) + (48 + 48) + (48 + 192) + (192 + 48))),
        # open_clip: peft's MultiheadAttention adapts in_proj (48->144) and out_proj (48->48)
        (CLIP, 4 * ((48 + 144) + (48 + 48) + (48 + 192) + (192 + 48))),
    ],
)
def test_lora_trains_only_the_adapters(name, per_block, images):
    base = _tiny(name)
    reference = base(images)
    bb = _tiny(name, adapt="lora", lora_rank=4)
    names = _trainable(bb)
    assert names and all("lora_" in n for n in names)
    assert bb.count_parameters(trainable_only=True) == 2 * per_block
    assert bb.count_parameters() == base.count_parameters() + 2 * per_block
    out = bb(images)
    torch.testing.assert_close(out, reference)  # B starts at zero
    out.pow(2).sum().backward()
    grads = {n for n, p in bb.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all("lora_B" in n for n in grads)


def test_lora_only_on_mlp():
    bb = _tiny(TIMM, adapt="lora", lora_rank=2, lora_targets=("mlp",))
    assert all(".mlp." in n for n in _trainable(bb))
    with pytest.raises(ConfigError, match="unknown LoRA target"):
        _tiny(TIMM, adapt="lora", lora_targets=("ffn",))


def test_unknown_adapt_mode():
    with pytest.raises(ConfigError, match="full, frozen, lora"):
        backbones.build(TIMM, tiny=True, adapt="partial")


# --------------------------------------------------------------------------- weight files


def test_load_from_another_image_size_resamples_the_pos_embed(tmp_path):
    src = _tiny(TIMM, seed=3, img_size=224)
    path = save_weights(src, tmp_path / "vit224.safetensors")
    bb = backbones.build(TIMM, tiny=True, pretrained=path)
    expected = resample_pos_embed(src.inner.pos_embed, (16, 8), (14, 14), num_prefix_tokens=1)
    torch.testing.assert_close(bb.inner.pos_embed, expected)
    torch.testing.assert_close(
        bb.inner.blocks[1].mlp.fc2.weight, src.inner.blocks[1].mlp.fc2.weight
    )
    assert bb.pretrained_cfg.file == str(path)


def test_load_a_non_square_grid_uses_the_file_metadata_or_infers_it(tmp_path):
    src = _tiny(TIMM, seed=4)  # 16x8
    path = save_weights(src, tmp_path / "reid.safetensors")
    bb = backbones.build(TIMM, tiny=True, stride=12, pretrained=path)
    expected = resample_pos_embed(src.inner.pos_embed, (21, 10), (16, 8), num_prefix_tokens=1)
    torch.testing.assert_close(bb.inner.pos_embed, expected)
    # a raw timm .pth without metadata (inner keys, classifier head included): grid inferred
    import timm

    torch.manual_seed(4)
    raw = timm.create_model(
        "vit_tiny_patch16_224",
        depth=2,
        embed_dim=48,
        num_heads=3,
        num_classes=10,
        img_size=(256, 128),
    )
    torch.save(raw.state_dict(), tmp_path / "raw.pth")
    bb2 = backbones.build(TIMM, tiny=True, stride=12, pretrained=str(tmp_path / "raw.pth"))
    expected = resample_pos_embed(raw.pos_embed, (21, 10), (16, 8), num_prefix_tokens=1)
    torch.testing.assert_close(bb2.inner.pos_embed, expected)
    assert "head.weight" not in bb2.state_dict() and "inner.head.weight" not in bb2.state_dict()
    notes = load_weights(bb2, tmp_path / "raw.pth")  # the same load, called directly
    assert any("dropped classifier tensor inner.head.weight" in n for n in notes)
    assert any("from the grid (16, 8) in the file to (21, 10)" in n for n in notes)


def test_load_a_camera_table_of_another_size_warns_and_copies(tmp_path):
    src = _tiny(CLIP, seed=5, camera_count=3)
    with torch.no_grad():
        src.camera_embed.copy_(torch.randn(3, 48))
    path = save_weights(src, tmp_path / "cams.safetensors")
    with pytest.warns(UserWarning, match="3 cameras in the file and 5 in the model"):
        bb = backbones.build(CLIP, tiny=True, camera_count=5, pretrained=path)
    torch.testing.assert_close(bb.camera_embed[:3], src.camera_embed)
    assert bb.camera_embed[3:].abs().sum() == 0
    with pytest.warns(UserWarning, match="camera_count=0"):
        backbones.build(CLIP, tiny=True, pretrained=path)


def test_load_a_whole_open_clip_checkpoint_keeps_the_image_tower(tmp_path):
    from open_clip.model import CLIP as OpenClipModel

    torch.manual_seed(6)
    vision = {"layers": 2, "width": 48, "head_width": 16, "patch_size": 16, "image_size": 224}
    text = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
    clip = OpenClipModel(32, vision, text)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    bb = backbones.build(CLIP, tiny=True, pretrained=tmp_path / "clip.pt")
    torch.testing.assert_close(bb.inner.conv1.weight, clip.visual.conv1.weight)
    expected = resample_pos_embed(
        clip.visual.positional_embedding, (16, 8), (14, 14), num_prefix_tokens=1
    )
    torch.testing.assert_close(bb.inner.positional_embedding, expected)


def test_a_mismatched_tensor_is_named_with_both_shapes(tmp_path):
    src = backbones.build(TIMM, tiny=True, embed_dim=64, num_heads=4)
    path = save_weights(src, tmp_path / "wide.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"tensor inner\.\S+ has (shape|width) .*64.* in the file but .*48.* in the model",
    ):
        backbones.build(TIMM, tiny=True, pretrained=path)
    shallow = save_weights(backbones.build(TIMM, tiny=True, depth=1), tmp_path / "d1.safetensors")
    with pytest.raises(CheckpointError, match=r"lacks \d+ tensor\(s\).*inner\.blocks\.1"):
        backbones.build(TIMM, tiny=True, pretrained=shallow)


def test_unsafe_or_unknown_files_are_refused(tmp_path):
    import datetime

    torch.save({"x": datetime.date(2020, 1, 1)}, tmp_path / "pickle.pt")  # needs a real unpickler
    with pytest.raises(CheckpointError, match="weights_only=True"):
        backbones.build(TIMM, tiny=True, pretrained=tmp_path / "pickle.pt")
    (tmp_path / "w.npz").write_bytes(b"0")
    with pytest.raises(CheckpointError, match="unknown extension"):
        backbones.build(TIMM, tiny=True, pretrained=tmp_path / "w.npz")
    with pytest.raises(AttrimpError, match="does not exist"):
        backbones.build(TIMM, tiny=True, pretrained=tmp_path / "missing.safetensors")


# --------------------------------------------------------------------------- registry & names


def test_unknown_family_model_and_tag_list_the_known_ones():
    with pytest.raises(AttrimpError, match="known families: clip, timm"):
        backbones.build("nope:ViT-B-16")
    with pytest.raises(AttrimpError, match="ViT-B-16"):
        backbones.build("clip:ViT-B-61")  # closest matches listed
    with pytest.raises(AttrimpError, match="known tags: .*openai"):
        backbones.build(CLIP, pretrained="openay")  # checked before any download
    with pytest.raises(AttrimpError, match="known tags: .*augreg_in21k"):
        backbones.build(TIMM, pretrained="imagenet")
    with pytest.raises(AttrimpError, match="family:model"):
        backbones.build("ViT-B-16")
    with pytest.raises(ConfigError, match="tiny=True"):
        backbones.build(CLIP, tiny=True, pretrained="openai")


def test_list_backbones_and_pretrained_cfg():
    names = backbones.list_backbones()
    assert CLIP in names and any(n.startswith("timm:") for n in names)
    assert len(backbones.list_backbones("timm", all=True)) > 100
    assert _tiny(CLIP).pretrained_cfg.mean == CLIP_MEAN
    assert _tiny("timm:vit_base_patch16_clip_224.openai").pretrained_cfg.mean == CLIP_MEAN
    override = backbones.build(TIMM, tiny=True, mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0))
    assert override.pretrained_cfg.mean == (0.1, 0.2, 0.3)  # the user wins


def test_a_family_registered_through_an_entry_point(monkeypatch, tmp_path, images):
    (tmp_path / "fake_bb_plugin.py").write_text(
        textwrap.dedent(
            """
            from backbones import BackboneFamily, build

            class FakeFamily(BackboneFamily):
                description = "a plug-in that reuses the timm family"
                def list_models(self):
                    return ["mini"]
                def list_pretrained(self, model):
                    return ["fake-tag"]
                def build(self, model, *, tag, img_size, stride, camera_count, tiny, **kw):
                    return build("timm:vit_tiny_patch16_224", img_size=img_size, stride=stride,
                                 camera_count=camera_count, depth=1, embed_dim=32, num_heads=2)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint(
        name="fake", value="fake_bb_plugin:FakeFamily", group=backbones.ENTRY_POINT_GROUP
    )
    real = importlib.metadata.entry_points

    def entry_points(**kw):
        return [ep] if kw.get("group") == backbones.ENTRY_POINT_GROUP else real(**kw)

    with backbones.FAMILIES.isolated():
        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
        backbones.FAMILIES.refresh()
        assert "fake" in backbones.list_families()
        bb = backbones.build("fake:mini", stride=12)
        assert bb.width == 32 and bb.grid_size == (21, 10)
        assert bb(images).shape == (2, 32)
        with pytest.raises(AttrimpError, match="known tags: fake-tag"):
            backbones.build("fake:mini", pretrained="other")
    assert "fake" not in backbones.FAMILIES
    sys.modules.pop("fake_bb_plugin", None)


def test_a_broken_plugin_warns_but_keeps_the_builtins(monkeypatch):
    ep = importlib.metadata.EntryPoint(
        name="broken", value="no_such_module_xyz:Fam", group=backbones.ENTRY_POINT_GROUP
    )
    real = importlib.metadata.entry_points

    def entry_points(**kw):
        return [ep] if kw.get("group") == backbones.ENTRY_POINT_GROUP else real(**kw)

    with backbones.FAMILIES.isolated(), warnings.catch_warnings(record=True) as caught:
        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
        backbones.FAMILIES.refresh()
        warnings.simplefilter("always")
        assert backbones.list_families() == ["clip", "timm"]
        # asked for by name, it is one sentence naming the plug-in and why
        with pytest.raises(AttrimpError, match=r"'broken' \(no_such_module_xyz:Fam\) could not"):
            backbones.get_family("broken")
    assert any("broken" in str(w.message) for w in caught)


# --------------------------------------------------------------------------- precision


@pytest.mark.parametrize("name", FAMILIES)
def test_bf16_autocast_on_cpu(name, images):
    bb = _tiny(name, camera_count=2)
    ref = bb(images, torch.tensor([0, 1]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bb(images, torch.tensor([0, 1]))
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert torch.nn.functional.cosine_similarity(out.float(), ref).min() > 0.98


def test_weight_file_names_import_from_weights_base_and_the_package():
    import backbones.base as base
    import backbones.weights as weights

    for name in ("load_weights", "read_state_dict", "save_weights", "unwrap_site_keys"):
        assert getattr(base, name) is getattr(weights, name)
    assert backbones.load_weights is weights.load_weights
    with pytest.raises(AttributeError):
        base.no_such_name  # noqa: B018


def test_one_pooling_check_words_every_refusal():
    from backbones.base import pooling_refusal

    kw = dict(setting="global_pool", cls_pools=("token", ""), attention_pools=("map",))
    assert pooling_refusal("token", **kw) is None and pooling_refusal("", **kw) is None
    assert pooling_refusal("map", **kw).startswith(
        "pools with an attention head (global_pool='map')"
    )
    assert pooling_refusal("avg", **kw).startswith("pools by averaging its patch tokens")
    # open_clip's option and values: None and "tok" read the class token
    assert pooling_refusal(None, setting="pool_type", cls_pools=(None, "tok")) is None
    assert "(pool_type='avg')" in pooling_refusal(
        "avg", setting="pool_type", cls_pools=(None, "tok")
    )

"""The ``timm`` family: any timm ViT (ViT, DeiT, DINOv2-style with registers, CLIP-in-timm, EVA).

Names are timm's own ``arch[.tag]`` (``timm:vit_base_patch16_clip_224.openai``,
``timm:deit_small_patch16_224``); ``pretrained="tag"`` is the same as naming the tag. The model
is created at its native size through ``timm.create_model`` (so hub weights load through timm's
own, tested path), then moved to the ReID grid by `TimmViT._retarget`, which resamples the
position embedding with the old grid passed explicitly.

The embedding is what the model was built to produce: its class token after the final norm
(``global_pool='token'``), or, for a model that pools (``'avg'``, ``'avgmax'``, ``'max'``: EVA-02,
DINOv3, the ``*_gap`` ViTs; ``'map'``: SigLIP's and PE's attention-pool heads), timm's own
``forward_head(tokens, pre_logits=True)`` on the final-normalised tokens: its pooling, its
``fc_norm``, no classifier. The expert sites (the blocks) are the same either way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attrimp.errors import ConfigError
from backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneFamily,
    PretrainedCfg,
    ViTBackbone,
    grid_for,
)

#: timm modules whose models share VisionTransformer's layout (patch_embed, blocks, norm)
_TIMM_MODULES = ("vision_transformer", "deit", "eva")

#: architecture overrides for ``tiny=True``: a 2-block, 48-wide model that builds in
#: milliseconds; the user's own kwargs still win
TINY_KWARGS = {"depth": 2, "embed_dim": 48, "num_heads": 3}

#: what keeps the models of other timm modules out, for "known, but not supported because ..."
_NOT_A_PLAIN_VIT = {
    "swin_transformer": "a hierarchical transformer with windowed attention and no class token",
    "swin_transformer_v2": "a hierarchical transformer with windowed attention and no class token",
    "convnext": "a convolutional network",
    "resnet": "a convolutional network",
    "efficientnet": "a convolutional network",
    "beit": "a BEiT whose relative position bias is tied to its square pretraining grid",
    "naflexvit": "a NaFlex ViT that runs variable-length patch sequences",
}

#: pooling modes that read the class token (``""`` = no pooling: the wrapper reads it)
_CLS_POOLS = ("token", "")
#: pooling modes over the patch tokens that timm's own head runs (``global_pool_nlc``)
_AVG_POOLS = ("avg", "avgmax", "max")

_FEATURED = [
    "vit_base_patch16_clip_224",
    "vit_base_patch16_224",
    "deit_small_patch16_224",
    "deit_base_patch16_224",
    "vit_small_patch14_dinov2",
    "vit_small_patch14_reg4_dinov2",
    "vit_tiny_patch16_224",
    "eva02_base_patch16_clip_224",
    "eva02_base_patch14_224",
    "vit_small_patch16_dinov3",
    "vit_base_patch16_siglip_224",
]


class TimmViT(ViTBackbone):
    """A timm VisionTransformer / Eva run at the ReID grid; the readout is its own pooling."""

    family = "timm"

    def __init__(
        self,
        inner: nn.Module,
        *,
        cfg: PretrainedCfg,
        stride: int | None,
        camera_count: int,
    ) -> None:
        from timm.models.eva import Eva
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(inner, (VisionTransformer, Eva)):
            raise ConfigError(
                f"timm model {cfg.model!r} is a {type(inner).__name__}, not a ViT the timm family "
                "supports (VisionTransformer, DeiT, Eva)."
            )
        pools = _check_readout(inner, cfg.model)
        patch = tuple(inner.patch_embed.patch_size)
        step = (stride, stride) if stride else patch
        grid = grid_for(cfg.img_size, patch, step)
        super().__init__(
            cfg=cfg,
            width=inner.embed_dim,
            grid_size=grid,
            num_prefix_tokens=inner.num_prefix_tokens,
            camera_count=camera_count,
        )
        self.inner = inner
        self.pools = pools
        self.has_class_token = getattr(inner, "cls_token", None) is not None
        self._is_eva = isinstance(inner, Eva)
        self.pos_embed_key = "inner.pos_embed" if inner.pos_embed is not None else None
        self.pos_embed_prefix = 0 if inner.no_embed_class else inner.num_prefix_tokens
        self.head_keys = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")
        # a class-token model whose final norm sits after pooling normalises tokens with fc_norm
        # instead; per-token LayerNorm, so applying it to every token is the same thing. A model
        # that pools keeps timm's order: norm on the tokens, pool, then fc_norm (in `_pool`).
        fc_norm = getattr(inner, "fc_norm", None)
        use_fc = (
            not pools
            and isinstance(inner.norm, nn.Identity)
            and not isinstance(fc_norm, (type(None), nn.Identity))
        )
        self._norm_attr = "fc_norm" if use_fc else "norm"
        self._retarget(step, grid)

    def _retarget(self, step: tuple[int, int], grid: tuple[int, int]) -> None:
        """Move the patch embedding and position grid from the native size to ours."""
        pe = self.inner.patch_embed
        self._check_dynamic_size(step)
        if getattr(pe, "dynamic_img_pad", False) and step != tuple(pe.patch_size):
            raise ConfigError(
                "an overlapping stride cannot be combined with timm's dynamic_img_pad."
            )
        old_grid = tuple(pe.grid_size)
        pe.proj.stride = step
        pe.img_size = tuple(self.img_size)
        pe.grid_size = grid
        pe.num_patches = grid[0] * grid[1]
        self._resample_own_pos_embed(old_grid, grid)
        rope = getattr(self.inner, "rope", None)
        if rope is not None and hasattr(rope, "update_feat_shape"):
            rope.update_feat_shape(grid)

    def _check_dynamic_size(self, step: tuple[int, int]) -> None:
        """timm's dynamic_img_size / dynamic_img_pad need an input that fits the patch grid.

        Otherwise the first forward ends in timm's AssertionError (DINOv2 at 256x128 with patch
        14: 256 is no multiple of 14) or pads to a grid other than the one the position
        embedding was resampled to. Refused here with the sizes that fit.
        """
        pe = self.inner.patch_embed
        dynamic = getattr(self.inner, "dynamic_img_size", False) or getattr(
            pe, "dynamic_img_pad", False
        )
        patch = tuple(pe.patch_size)
        if not dynamic or all((s - p) % st == 0 for s, p, st in zip(self.img_size, patch, step)):
            return
        down = [(s - p) // st * st + p for s, p, st in zip(self.img_size, patch, step)]
        up = [
            d + st if (s - p) % st else d for d, s, p, st in zip(down, self.img_size, patch, step)
        ]
        raise ConfigError(
            f"timm model {self.pretrained_cfg.model!r} with dynamic_img_size/dynamic_img_pad needs "
            f"an input that fits its patch grid (patch {patch[0]}, step {step[0]}), and img_size "
            f"{self.img_size[0]}x{self.img_size[1]} does not: use img_size = {down} or {up}, or "
            "leave dynamic_img_size off (attrimp runs one fixed size and resamples the position "
            "embedding itself)."
        )

    @property
    def blocks(self) -> nn.ModuleList:
        # timm keeps blocks in an nn.Sequential; a ModuleList view shares the same modules
        blocks = self.inner.blocks
        return blocks if isinstance(blocks, nn.ModuleList) else nn.ModuleList(list(blocks))

    def _tokens_before_blocks(self, images: torch.Tensor) -> tuple[torch.Tensor, Any]:
        x = self.inner.patch_embed(images)
        if self._is_eva:
            return self.inner._pos_embed(x)  # (tokens, rotary embedding)
        return self.inner._pos_embed(x), None

    def _pre_blocks(self, x: torch.Tensor) -> torch.Tensor:
        if not self._is_eva:
            x = self.inner.patch_drop(x)
        return self.inner.norm_pre(x)

    def _run_blocks(
        self, x: torch.Tensor, rope: Any = None, start: int = 0, stop: int | None = None
    ) -> torch.Tensor:
        stop = len(self.inner.blocks) if stop is None else stop
        if not self._is_eva:
            for blk in self.inner.blocks[start:stop]:
                x = blk(x)
            return x
        mixed = getattr(self.inner, "rope_mixed", False) and rope is not None
        for i in range(start, stop):
            x = self.inner.blocks[i](x, rope=rope[i] if mixed else rope)
        return x

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.inner, self._norm_attr)(x)

    def _pool(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        # timm's own head on its forward_features output: pool (avg / avgmax / max over the
        # patch tokens, or the attention-pool head), fc_norm, head dropout; no classifier
        return self.inner.forward_head(tokens, pre_logits=True)

    def _site_module(self, block: nn.Module, site: str) -> tuple[str, nn.Module]:
        module = getattr(block, site, None)
        if module is None:
            raise ConfigError(
                f"this timm block ({type(block).__name__}) {_why_no_site(block)}, so it has no "
                f"separate {site!r} sub-layer for the experts to wrap."
            )
        return site, module


def _why_no_site(block: nn.Module) -> str:
    """What a block without an ``attn`` / ``mlp`` sub-layer does instead, in words."""
    if hasattr(block, "in_proj"):
        return "computes attention and MLP in parallel from one fused input projection"
    if hasattr(block, "attns") and hasattr(block, "ffns"):
        return f"runs {len(block.ffns)} attention and MLP branches in parallel"
    return "is not a pre-norm attention + MLP block"


def create_timm_model(name: str, *, pretrained: bool, tiny: bool, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` without a classifier; a tiny build of a model whose per-block
    grouped-query table (``num_kv_heads``, Sapiens2) is sized for its full depth gets plain
    multi-head attention in its few blocks instead of timm's assertion."""
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except AssertionError as exc:
        heads = kwargs.get("num_heads")
        if not (tiny and "num_kv_heads" in str(exc) and "num_kv_heads" not in kwargs and heads):
            raise
        # as many key/value heads as query heads: multi-head attention (timm drops None kwargs)
        return timm.create_model(
            name, pretrained=pretrained, num_classes=0, num_kv_heads=heads, **kwargs
        )


def readout_of(net: nn.Module) -> str:
    """What a timm ViT's embedding is, in words: ``class token``, ``average`` (``avgmax``,
    ``max``) or ``attention head``."""
    if getattr(net, "attn_pool", None) is not None:
        return "attention head"
    pool = getattr(net, "global_pool", "token")
    return "class token" if pool in _CLS_POOLS else str(pool).replace("avg", "average")


def _check_readout(inner: nn.Module, model: str) -> bool:
    """Whether ``inner`` pools (True) or is read through its class token (False).

    Refused, each for the reason that holds: a class-token readout without a class token, a
    pooling mode timm's own head does not run, and a pooled embedding whose width is not the
    tokens' (attrimp's ReID head and expert sites share one width).
    """
    pool = getattr(inner, "global_pool", "token")
    attention = getattr(inner, "attn_pool", None) is not None
    if pool in _CLS_POOLS and not attention:
        if getattr(inner, "cls_token", None) is None:
            raise ConfigError(
                f"timm model {model!r} has no class token and does not pool its tokens "
                f"(global_pool={pool!r}), so it yields no image embedding to read."
            )
        return False
    if not attention and pool not in _AVG_POOLS:
        raise ConfigError(
            f"timm model {model!r} pools with global_pool={pool!r}, which the timm family does "
            f"not run; known: 'token', {', '.join(repr(p) for p in _AVG_POOLS)}, 'map'."
        )
    width = getattr(inner, "head_hidden_size", None) or getattr(inner, "num_features", None)
    if width is not None and width != inner.embed_dim:
        raise ConfigError(
            f"timm model {model!r} pools into a {width}-wide embedding, not its token width "
            f"{inner.embed_dim}; attrimp's ReID head reads an embedding as wide as the tokens."
        )
    return True


class TimmFamily(BackboneFamily):
    """Any timm ViT by its timm name; weights by timm pretrained tag or a local file."""

    name = "timm"
    description = "timm ViTs: ViT, DeiT, DINOv2/v3, CLIP-in-timm, SigLIP, EVA (timm.create_model)"

    def list_models(self) -> list[str]:
        import timm

        return sorted(set(timm.list_models(module=list(_TIMM_MODULES))))

    def featured_models(self) -> list[str]:
        return list(_FEATURED)

    def has_model(self, model: str) -> bool:
        import timm

        arch = model.split(".", 1)[0]
        return timm.is_model(arch) and arch in self.list_models()

    def unsupported_reason(self, model: str) -> str | None:
        import timm
        from timm.models import model_entrypoint

        arch = model.split(".", 1)[0]
        if not timm.is_model(arch):
            return None
        module = model_entrypoint(arch).__module__.rsplit(".", 1)[-1]
        what = _NOT_A_PLAIN_VIT.get(module, f"a model of timm's {module} module")
        return (
            f"it is {what}, and the timm family wraps only plain ViTs (VisionTransformer, DeiT, "
            "Eva) with one stack of transformer blocks over a fixed token grid, which the "
            "attribute experts need"
        )

    def weight_source(self, model: str, tag: str) -> tuple[str | None, str | None]:
        import timm

        arch = model.split(".", 1)[0]
        try:
            cfg = timm.models.get_pretrained_cfg(f"{arch}.{tag}", allow_unregistered=False)
        except Exception:  # timm raises different types across versions
            return None, None
        if cfg is None:
            return None, None
        return (cfg.hf_hub_id or None), (cfg.url or None)

    def list_pretrained(self, model: str) -> list[str]:
        import timm

        arch = model.split(".", 1)[0]
        # timm lists the default tag first; keep its order
        return [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]

    def _pretrained_cfg(self, model: str) -> dict[str, Any]:
        import timm

        try:
            cfg = timm.models.get_pretrained_cfg(model, allow_unregistered=False)
        except Exception:  # timm raises different types across versions
            cfg = None
        if cfg is None:
            arch = model.split(".", 1)[0]
            tags = self.list_pretrained(arch)
            cfg = timm.models.get_pretrained_cfg(f"{arch}.{tags[0]}") if tags else None
        return cfg.to_dict() if cfg is not None else {}

    def describe(self, model: str) -> dict[str, Any]:
        import timm

        arch = model.split(".", 1)[0]
        # on the meta device nothing is allocated; skipping the init saves most of the time
        with torch.device("meta"):
            try:
                net = timm.create_model(arch, pretrained=False, num_classes=0, weight_init="skip")
            except TypeError:  # Eva and others have no weight_init switch
                net = timm.create_model(arch, pretrained=False, num_classes=0)
        cfg = self._pretrained_cfg(model)
        size = cfg.get("input_size", (3, 224, 224))[1:]
        return {
            "width": net.embed_dim,
            "depth": len(net.blocks),
            "input_size": tuple(size),
            "tags": self.list_pretrained(model),
            "readout": readout_of(net),
        }

    def build(
        self,
        model: str,
        *,
        tag: str | None,
        img_size: tuple[int, int],
        stride: int | None,
        camera_count: int,
        tiny: bool,
        **kwargs: Any,
    ) -> TimmViT:

        arch = model.split(".", 1)[0]
        full = f"{arch}.{tag}" if tag else model
        model_kwargs = {**(TINY_KWARGS if tiny else {}), **kwargs}
        # the ReID wrapper owns these: the size is set by _retarget, the head is never used
        for owned in ("img_size", "num_classes", "pretrained"):
            if owned in model_kwargs:
                raise ConfigError(f"pass {owned} to backbones.build, not as a timm model kwarg.")
        try:
            inner = create_timm_model(full, pretrained=tag is not None, tiny=tiny, **model_kwargs)
        except TypeError as exc:
            raise ConfigError(f"timm model {arch!r} does not accept these kwargs: {exc}.") from None
        pcfg = self._pretrained_cfg(full)
        native = tuple(pcfg.get("input_size", (3,) + tuple(inner.patch_embed.img_size))[1:])
        cfg = PretrainedCfg(
            name=f"timm:{model}",
            family="timm",
            model=model,
            tag=tag,
            native_size=native,
            img_size=img_size,
            stride=stride,
            mean=tuple(pcfg.get("mean", IMAGENET_MEAN)),
            std=tuple(pcfg.get("std", IMAGENET_STD)),
        )
        return TimmViT(inner, cfg=cfg, stride=stride, camera_count=camera_count)

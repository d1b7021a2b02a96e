"""The ``clip`` family: the image tower of any open_clip ViT (``clip:ViT-B-16`` + ``openai``).

Hub weights go through ``open_clip.create_model(name, pretrained=tag)`` (open_clip's own tag
resolution, QuickGELU flag and download) and we keep ``.visual``. Random and file-based builds
construct only the image tower from the model's config, the way open_clip's ``CLIP`` does, so a
ViT-B/16 for a test or a local checkpoint does not pay for a 63M-parameter text tower.

The ReID embedding is the tower's own pooled output *before* CLIP's projection to the shared
image-text space (as in CLIP-ReID's ViT features): for ``clip:ViT-B-16`` the 768-wide CLS token
after ``ln_post``; for an average-pooling tower (``pool_type='avg'``, CLIPA) open_clip's own
``_pool``; for a tower that is a timm ViT (SigLIP's attention-pool head, EVA-CLIP, PE-Core) the
timm trunk's own pooled features, run by the timm family's wrapper (`ClipTimmViT`). Every
projection (``proj``, the trunk's head, ``head.proj``) is dropped, and a file's is ignored on
load like a classifier head.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from attrimp.errors import ConfigError
from backbones.base import (
    CLIP_MEAN,
    CLIP_STD,
    BackboneFamily,
    PretrainedCfg,
    ViTBackbone,
    grid_for,
)
from backbones.timm_vit import TINY_KWARGS, TimmFamily, TimmViT, create_timm_model

#: vision-tower overrides for ``tiny=True`` (2 blocks, width 48, 3 heads); user kwargs win
TINY_VISION = {"layers": 2, "width": 48, "head_width": 16}

#: open_clip ``pool_type`` values that read the class token, and those that average
_CLS_POOLS = (None, "tok")
_AVG_POOLS = ("avg",)

_FEATURED = [
    "ViT-B-16",
    "ViT-B-16-quickgelu",
    "ViT-B-32",
    "ViT-L-14",
    "ViT-L-14-336",
    "ViT-B-16-SigLIP",
    "EVA02-B-16",
]


class ClipViT(ViTBackbone):
    """open_clip's ``VisionTransformer`` at the ReID grid, batch-first, tokens after ``ln_post``."""

    family = "clip"

    def __init__(
        self, visual: nn.Module, *, cfg: PretrainedCfg, stride: int | None, camera_count: int
    ):
        from open_clip.transformer import VisionTransformer

        if not isinstance(visual, VisionTransformer):
            raise ConfigError(
                f"open_clip model {cfg.model!r} has a {type(visual).__name__} image tower, not the "
                "ViT the clip family supports."
            )
        if getattr(visual, "attn_pool", None) is not None:
            raise ConfigError(f"open_clip model {cfg.model!r} {_attn_pool_refusal(visual)}.")
        if visual.pool_type not in _CLS_POOLS + _AVG_POOLS:
            raise ConfigError(
                f"open_clip model {cfg.model!r} does not pool its tokens "
                f"(pool_type={visual.pool_type!r}), so it yields no image embedding to read."
            )
        patch = tuple(visual.conv1.kernel_size)
        step = (stride, stride) if stride else patch
        grid = grid_for(cfg.img_size, patch, step)
        width = visual.conv1.out_channels
        super().__init__(
            cfg=cfg, width=width, grid_size=grid, num_prefix_tokens=1, camera_count=camera_count
        )
        visual.proj = None  # unused by a ReID backbone; see the module docstring
        self.inner = visual
        self.pools = visual.pool_type in _AVG_POOLS
        self.pos_embed_key = "inner.positional_embedding"
        self.pos_embed_prefix = 1
        self.head_keys = ("proj",)
        # normalise the sequence layout: older open_clip ran blocks sequence-first ([N, B, D]);
        # here every block (and so every expert site) sees batch-first [B, N, D] tokens
        visual.transformer.batch_first = True
        for blk in visual.transformer.resblocks:
            if isinstance(getattr(blk, "attn", None), nn.MultiheadAttention):
                blk.attn.batch_first = True
        old_grid = tuple(visual.grid_size)
        visual.conv1.stride = step
        visual.grid_size = grid
        visual.image_size = tuple(cfg.img_size)
        self._resample_own_pos_embed(old_grid, grid)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.inner.transformer.resblocks

    def _tokens_before_blocks(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        v = self.inner
        x = v.conv1(images)  # [B, D, rows, cols]
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        return x + v.positional_embedding.to(x.dtype), None

    def _pre_blocks(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.ln_pre(self.inner.patch_dropout(x))

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.ln_post(x)

    def _pool(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        # open_clip's own pooling on the last block's output (with ``final_ln_after_pool`` it
        # normalises the average, else it averages the normalised tokens); proj is None here
        return self.inner._pool(x)[0]

    def _site_module(self, block: nn.Module, site: str) -> tuple[str, nn.Module]:
        module = getattr(block, site, None)
        if module is None:
            raise ConfigError(
                f"this open_clip block ({type(block).__name__}) has no {site!r} sub-layer."
            )
        return site, module

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # a whole CLIP checkpoint: keep the image tower, drop the text tower and logit scale
        state = {k.removeprefix("module."): v for k, v in state.items()}
        if any(k.startswith("visual.") for k in state):
            state = {
                k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")
            }
        return super().convert_state_dict(state)


class ClipTimmViT(TimmViT):
    """An open_clip image tower that is a timm ViT (SigLIP, EVA-CLIP, PE-Core): its ``trunk``,
    wrapped as the timm family wraps it, named and normalised as the clip model."""

    family = "clip"

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # a whole CLIP checkpoint or its tower: keep the trunk (``visual.trunk.*``); the text
        # tower and the tower's projection head (``visual.head.*``) are not part of the backbone
        state = {k.removeprefix("module.").removeprefix("visual."): v for k, v in state.items()}
        if any(k.startswith("trunk.") for k in state):
            state = {
                k.removeprefix("trunk."): v for k, v in state.items() if k.startswith("trunk.")
            }
        return super().convert_state_dict(state)


def _attn_pool_refusal(visual: nn.Module) -> str:
    """The true reason an open_clip tower with an attentional pooler (CoCa) is refused."""
    out = visual.ln_post.normalized_shape[0] if hasattr(visual.ln_post, "normalized_shape") else "?"
    return (
        f"pools with an attentional pooler (CoCa) into {out}-wide query tokens, not its token "
        f"width {visual.conv1.out_channels}, and attrimp's ReID head reads an embedding as wide "
        "as the tokens"
    )


def _vision(model: str) -> dict[str, Any]:
    import open_clip

    return (open_clip.get_model_config(model) or {}).get("vision_cfg", {})


def _timm_arch(vision: dict[str, Any]) -> str | None:
    """The timm architecture of a tower that is a timm model, else None."""
    return vision.get("timm_model_name") or None


def _is_vit_tower(vision: dict[str, Any]) -> bool:
    """A native open_clip ViT tower, or a timm tower the timm family can wrap."""
    arch = _timm_arch(vision)
    if arch:
        return TimmFamily().has_model(arch)
    return isinstance(vision.get("layers"), int)


def _native_refusal(vision: dict[str, Any]) -> str | None:
    """Why a native open_clip ViT tower cannot be built (None: it can), from its config."""
    if vision.get("attentional_pool"):
        width = vision.get("width")
        return (
            f"it pools with an attentional pooler (CoCa) into query tokens of the CLIP embedding "
            f"width, not its token width {width}, and attrimp's ReID head reads an embedding as "
            "wide as the tokens"
        )
    pool = vision.get("pool_type")
    if pool not in _CLS_POOLS + _AVG_POOLS:
        return f"it does not pool its tokens (pool_type={pool!r}), so it yields no embedding"
    return None


def _timm_pool(vision: dict[str, Any]) -> str | None:
    """The ``global_pool`` open_clip gives its timm trunk (None: the trunk's default).

    open_clip passes ``timm_pool`` to timm unless it adds its own head (a linear/MLP
    projection), where an empty ``timm_pool`` keeps the network's default pooling."""
    pool = vision.get("timm_pool", "avg")
    if vision.get("timm_proj", "linear") in ("linear", "mlp") and not pool:
        return None
    return pool


class ClipFamily(BackboneFamily):
    """open_clip ViTs by open_clip name; weights by open_clip pretrained tag or a local file."""

    name = "clip"
    description = "open_clip image towers (CLIP, OpenCLIP, ...): clip:ViT-B-16 + 'openai'"

    def list_models(self) -> list[str]:
        import open_clip

        return [m for m in open_clip.list_models() if _is_vit_tower(_vision(m))]

    def featured_models(self) -> list[str]:
        known = set(self.list_models())
        return [m for m in _FEATURED if m in known]

    def has_model(self, model: str) -> bool:
        import open_clip

        if model not in open_clip.list_models():
            return False
        vision = _vision(model)
        if not _is_vit_tower(vision):
            return False
        return _timm_arch(vision) is not None or _native_refusal(vision) is None

    def unsupported_reason(self, model: str) -> str | None:
        import open_clip

        if model not in open_clip.list_models() or self.has_model(model):
            return None
        vision = _vision(model)
        arch = _timm_arch(vision)
        if arch:
            why = TimmFamily().unsupported_reason(arch)
            return f"its image tower is timm's {arch!r}" + (f": {why}" if why else "")
        if not isinstance(vision.get("layers"), int):
            return "its image tower is a ResNet, not a ViT"
        return _native_refusal(vision)

    def weight_source(self, model: str, tag: str) -> tuple[str | None, str | None]:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(model, tag) or {}
        hub = [part for part in str(cfg.get("hf_hub") or "").split("/") if part]
        return ("/".join(hub[:2]) if len(hub) >= 2 else None), (cfg.get("url") or None)

    def list_pretrained(self, model: str) -> list[str]:
        import open_clip

        return list(open_clip.list_pretrained_tags_by_model(model))

    def describe(self, model: str) -> dict[str, Any]:
        vision = _vision(model)
        size = vision.get("image_size", 224)
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        if _timm_arch(vision):
            trunk = TimmFamily().describe(_timm_arch(vision))
            pool = _timm_pool(vision)
            if pool is not None and pool != "map":
                trunk["readout"] = "class token" if pool == "token" else "average"
            return {**trunk, "input_size": size, "tags": self.list_pretrained(model)}
        pool = vision.get("pool_type")
        return {
            "width": vision["width"],
            "depth": vision["layers"],
            "input_size": size,
            "tags": self.list_pretrained(model),
            "readout": "attention head"
            if vision.get("attentional_pool")
            else ("average" if pool in _AVG_POOLS else "class token"),
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
    ) -> ClipViT | ClipTimmViT:
        import open_clip
        from open_clip.model import _build_vision_tower

        model_cfg = copy.deepcopy(open_clip.get_model_config(model))
        tag_cfg = open_clip.get_pretrained_cfg(model, tag) if tag else {}
        if _timm_arch(model_cfg["vision_cfg"]):
            return self._build_timm_tower(
                model,
                model_cfg["vision_cfg"],
                tag=tag,
                tag_cfg=tag_cfg,
                img_size=img_size,
                stride=stride,
                camera_count=camera_count,
                tiny=tiny,
                **kwargs,
            )
        quick_gelu = bool(
            kwargs.pop(
                "quick_gelu", model_cfg.get("quick_gelu", False) or tag_cfg.get("quick_gelu", False)
            )
        )
        vision = {**model_cfg["vision_cfg"], **(TINY_VISION if tiny else {}), **kwargs}
        if tag:
            if kwargs:
                raise ConfigError(
                    f"model kwargs {sorted(kwargs)} change the architecture and cannot be combined "
                    f"with the pretrained tag {tag!r}."
                )
            # the real open_clip path: tag resolution, QuickGELU flag, download, checksum
            clip = open_clip.create_model(model, pretrained=tag, force_quick_gelu=quick_gelu)
            visual = clip.visual
            del clip
        else:
            # open_clip's CLIP builds its image tower with this helper; calling it directly
            # skips the text tower we would throw away
            try:
                visual = _build_vision_tower(model_cfg["embed_dim"], vision, quick_gelu=quick_gelu)
            except TypeError as exc:
                raise ConfigError(
                    f"open_clip vision config for {model!r} rejected the kwargs: {exc}."
                ) from None
        cfg = _tower_cfg(model, vision, tag, tag_cfg, img_size, stride, quick_gelu=quick_gelu)
        return ClipViT(visual, cfg=cfg, stride=stride, camera_count=camera_count)

    def _build_timm_tower(
        self,
        model: str,
        vision: dict[str, Any],
        *,
        tag: str | None,
        tag_cfg: dict[str, Any],
        img_size: tuple[int, int],
        stride: int | None,
        camera_count: int,
        tiny: bool,
        **kwargs: Any,
    ) -> ClipTimmViT:
        """A tower that is a timm ViT: the trunk open_clip builds, without its projection.

        Random: ``timm.create_model(arch, global_pool=<open_clip's>, num_classes=0)``, the
        trunk open_clip builds minus its head (``tiny`` and the user's kwargs are timm kwargs
        here, as in the timm family). A tag: open_clip's own model and download, then its
        ``visual.trunk`` with the classifier/projection head removed."""
        import open_clip

        arch = _timm_arch(vision)
        pool = _timm_pool(vision)
        pool_kwargs = {} if pool is None else {"global_pool": pool}
        kwargs.pop("quick_gelu", None)  # timm towers always use their own GELU
        if tag:
            if kwargs:
                raise ConfigError(
                    f"model kwargs {sorted(kwargs)} change the architecture and cannot be combined "
                    f"with the pretrained tag {tag!r}."
                )
            clip = open_clip.create_model(model, pretrained=tag)
            trunk = clip.visual.trunk
            del clip
            trunk.reset_classifier(0, **pool_kwargs)
        else:
            model_kwargs = {**(TINY_KWARGS if tiny else {}), **pool_kwargs, **kwargs}
            for owned in ("img_size", "num_classes", "pretrained"):
                if owned in model_kwargs:
                    raise ConfigError(f"pass {owned} to backbones.build, not as a model kwarg.")
            try:
                trunk = create_timm_model(arch, pretrained=False, tiny=tiny, **model_kwargs)
            except TypeError as exc:
                raise ConfigError(
                    f"timm model {arch!r} (the image tower of {model!r}) does not accept these "
                    f"kwargs: {exc}."
                ) from None
        cfg = _tower_cfg(model, vision, tag, tag_cfg, img_size, stride, timm_model=arch)
        return ClipTimmViT(trunk, cfg=cfg, stride=stride, camera_count=camera_count)


def _tower_cfg(
    model: str,
    vision: dict[str, Any],
    tag: str | None,
    tag_cfg: dict[str, Any],
    img_size: tuple[int, int],
    stride: int | None,
    **extra: Any,
) -> PretrainedCfg:
    """The weight/input record of an open_clip image tower (either kind): its native size from
    the vision config, normalisation from the tag (CLIP's when the tag has none)."""
    size = vision.get("image_size", 224)
    native = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    return PretrainedCfg(
        name=f"clip:{model}",
        family="clip",
        model=model,
        tag=tag,
        native_size=native,
        img_size=img_size,
        stride=stride,
        mean=tuple(tag_cfg.get("mean", CLIP_MEAN)),
        std=tuple(tag_cfg.get("std", CLIP_STD)),
        extra=extra,
    )

"""The ``clip`` family: the image tower of any open_clip ViT (``clip:ViT-B-16`` + ``openai``).

Hub weights go through ``open_clip.create_model(name, pretrained=tag)`` (open_clip's own tag
resolution, QuickGELU flag and download) and we keep ``.visual``. Random and file-based builds
construct only the image tower from the model's config, the way open_clip's ``CLIP`` does, so a
ViT-B/16 for a test or a local checkpoint does not pay for a 63M-parameter text tower.

The ReID embedding is the 768-wide CLS token after ``ln_post``, before CLIP's 512-wide
projection ``proj`` (as in CLIP-ReID's ViT features); the projection is dropped, and a file's
``proj`` is ignored on load like a classifier head.
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
    pooling_refusal,
)

#: vision-tower overrides for ``tiny=True`` (2 blocks, width 48, 3 heads); user kwargs win
TINY_VISION = {"layers": 2, "width": 48, "head_width": 16}

#: open_clip ``pool_type`` values that read the class token
_CLS_POOLS = (None, "tok")

_FEATURED = ["ViT-B-16", "ViT-B-16-quickgelu", "ViT-B-32", "ViT-L-14", "ViT-L-14-336"]


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
            raise ConfigError(
                f"open_clip model {cfg.model!r} pools with attention (CoCa-style) and has no CLS token to read."
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


def _is_plain_vit(cfg: dict[str, Any] | None) -> bool:
    vision = (cfg or {}).get("vision_cfg", {})
    return (
        isinstance(vision.get("layers"), int)
        and not vision.get("timm_model_name")
        and not vision.get("attentional_pool")
        and _pooling_refusal(vision) is None
    )


def _pooling_refusal(vision: dict[str, Any]) -> str | None:
    """`pooling_refusal` for an open_clip vision config (its option is ``pool_type``)."""
    return pooling_refusal(vision.get("pool_type"), setting="pool_type", cls_pools=_CLS_POOLS)


class ClipFamily(BackboneFamily):
    """open_clip ViTs by open_clip name; weights by open_clip pretrained tag or a local file."""

    name = "clip"
    description = "open_clip image towers (CLIP, OpenCLIP, ...): clip:ViT-B-16 + 'openai'"

    def list_models(self) -> list[str]:
        import open_clip

        return [m for m in open_clip.list_models() if _is_plain_vit(open_clip.get_model_config(m))]

    def featured_models(self) -> list[str]:
        known = set(self.list_models())
        return [m for m in _FEATURED if m in known]

    def has_model(self, model: str) -> bool:
        import open_clip

        return _is_plain_vit(open_clip.get_model_config(model))

    def unsupported_reason(self, model: str) -> str | None:
        import open_clip

        if model not in open_clip.list_models():
            return None
        vision = (open_clip.get_model_config(model) or {}).get("vision_cfg", {})
        timm_name = vision.get("timm_model_name")
        if timm_name:
            return (
                f"its image tower is timm's {timm_name!r}, which the clip family does not wrap "
                f"(timm:{timm_name} says whether the timm family can)"
            )
        if not isinstance(vision.get("layers"), int):
            return "its image tower is a ResNet, not a ViT"
        if vision.get("attentional_pool"):
            return "it pools with attention (CoCa-style) and has no class token to read"
        refusal = _pooling_refusal(vision)
        return f"it {refusal}" if refusal else None

    def weight_source(self, model: str, tag: str) -> tuple[str | None, str | None]:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(model, tag) or {}
        hub = [part for part in str(cfg.get("hf_hub") or "").split("/") if part]
        return ("/".join(hub[:2]) if len(hub) >= 2 else None), (cfg.get("url") or None)

    def list_pretrained(self, model: str) -> list[str]:
        import open_clip

        return list(open_clip.list_pretrained_tags_by_model(model))

    def describe(self, model: str) -> dict[str, Any]:
        import open_clip

        vision = open_clip.get_model_config(model)["vision_cfg"]
        size = vision.get("image_size", 224)
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        return {
            "width": vision["width"],
            "depth": vision["layers"],
            "input_size": size,
            "tags": self.list_pretrained(model),
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
    ) -> ClipViT:
        import open_clip
        from open_clip.model import _build_vision_tower

        model_cfg = copy.deepcopy(open_clip.get_model_config(model))
        tag_cfg = open_clip.get_pretrained_cfg(model, tag) if tag else {}
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
        size = vision.get("image_size", 224)
        native = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        cfg = PretrainedCfg(
            name=f"clip:{model}",
            family="clip",
            model=model,
            tag=tag,
            native_size=native,
            img_size=img_size,
            stride=stride,
            mean=tuple(tag_cfg.get("mean", CLIP_MEAN)),
            std=tuple(tag_cfg.get("std", CLIP_STD)),
            extra={"quick_gelu": quick_gelu},
        )
        return ClipViT(visual, cfg=cfg, stride=stride, camera_count=camera_count)

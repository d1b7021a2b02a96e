"""LoRA on the backbone itself, through peft (``adapt="lora"``).

This is the *backbone* adaptation mode, separate from attrimp's gated expert bank: one shared
low-rank update per targeted linear, trained for every sample. peft does the work
(``inject_adapter_in_model``: zero-init B, scale alpha/r); we only pick the targets from the
same sub-layers the expert sites name, so it is family-independent: every ``nn.Linear`` inside
each block's attention (``attn``) and/or MLP (``mlp``). open_clip's attention is an
``nn.MultiheadAttention`` that never calls its ``out_proj`` as a module, so there we target the
attention module itself and peft's MultiheadAttention layer adapts its in/out projections.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from attrimp.errors import ConfigError
from backbones.base import ViTBackbone, freeze

#: what stays trainable in LoRA mode besides the adapters: the new camera table
_ALWAYS_TRAINABLE = ("camera_embed",)


def _refuse_functional_qkv(module: nn.Module, base: str) -> None:
    """timm's EVA attention with a fused ``qkv`` and q/v biases (EVA-01, the EVA-CLIP giants)
    passes ``qkv.weight`` to ``F.linear`` itself, so a LoRA wrapped around ``qkv`` would never
    run and its parameters would never train: refuse it rather than train nothing. EVA-02's
    separate q/k/v projections are called as modules and are adapted as usual."""
    for name, sub in module.named_modules():
        if (
            isinstance(getattr(sub, "qkv", None), nn.Linear)
            and getattr(sub, "q_bias", None) is not None
            and not getattr(sub, "qkv_bias_separate", False)
        ):
            where = f"{base}.{name}.qkv" if name else f"{base}.qkv"
            raise ConfigError(
                f"LoRA cannot adapt the attention projection {where!r}: this EVA block applies "
                "its weight functionally (F.linear with the q/v biases), so the LoRA would never "
                "run; adapt the 'mlp' target only (lora_targets=('mlp',) in attrimp.create_model "
                "or backbones.build) or set model.adapt to 'full' or 'frozen'."
            )


def lora_target_names(
    backbone: ViTBackbone,
    targets: Sequence[str] = ("attn", "mlp"),
    blocks: Sequence[int] | None = None,
) -> list[str]:
    """Fully qualified names of the modules LoRA wraps, for ``targets`` in the chosen blocks."""
    unknown = set(targets) - {"attn", "mlp"}
    if unknown or not targets:
        raise ConfigError(
            f"unknown LoRA target(s) {sorted(unknown) or targets}; known targets: attn, mlp."
        )
    names = {id(m): n for n, m in backbone.named_modules()}
    all_blocks = list(backbone.blocks)
    chosen = range(len(all_blocks)) if blocks is None else blocks
    out: list[str] = []
    for i in chosen:
        blk = all_blocks[i]
        for site in targets:
            _attr, module = backbone._site_module(blk, site)
            base = names[id(module)]
            if isinstance(module, nn.MultiheadAttention):
                out.append(base)
                continue
            _refuse_functional_qkv(module, base)
            for sub_name, sub in module.named_modules():
                if isinstance(sub, nn.Linear):
                    out.append(f"{base}.{sub_name}" if sub_name else base)
    if not out:
        raise ConfigError(f"found no linear layer to adapt in the {list(targets)} sub-layers.")
    return out


def apply_lora(
    backbone: ViTBackbone,
    *,
    rank: int = 8,
    alpha: float | None = None,
    targets: Sequence[str] = ("attn", "mlp"),
    dropout: float = 0.0,
    blocks: Sequence[int] | None = None,
) -> ViTBackbone:
    """Inject peft LoRA adapters (rank ``rank``, scale ``alpha / rank``) and freeze the rest.

    Afterwards only the ``lora_`` parameters (and the camera table) have ``requires_grad``.
    A fresh adapter changes nothing: peft initialises B to zero.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if not isinstance(rank, int) or rank <= 0:
        raise ConfigError(f"lora_rank must be a positive int, got {rank!r}.")
    config = LoraConfig(
        r=rank,
        lora_alpha=float(alpha if alpha is not None else rank),
        lora_dropout=dropout,
        target_modules=lora_target_names(backbone, targets, blocks),
        bias="none",
    )
    inject_adapter_in_model(config, backbone)
    freeze(backbone, keep=())
    for name, p in backbone.named_parameters():
        if "lora_" in name or name.startswith(_ALWAYS_TRAINABLE):
            p.requires_grad_(True)
    return backbone

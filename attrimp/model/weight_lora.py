"""The ``lora`` expert bank: gated LoRA on the block's own linear weights.

Where the ``adapter`` bank (`attrimp.model.experts.ParallelAdapterBank`) adds a branch beside a
whole sub-layer, this bank changes the sub-layer's own ``nn.Linear`` layers, the form peft users
mean by LoRA (peft's ``tuners/lora/layer.py``): per expert ``e`` a low-rank update
``ΔW_e = B_e A_e`` (rank ``r``, scale ``α/r``) of each linear ``y = W x + b``, gated per sample::

    y = W x + b + pool_e(g_e · s · B_e A_e x)

over the *active* experts (``g_e != 0``), pooled ``mean`` (default), ``sum`` or ``max``. Which
linears: every ``nn.Linear`` of the site's sub-layer — the MLP's two (``fc1``/``fc2`` in timm,
``c_fc``/``c_proj`` in open_clip) for ``site = "mlp"``; the attention's ``qkv`` and output
projection for ``site = "attn"`` where the backbone calls them as modules (timm). open_clip's
``nn.MultiheadAttention`` applies ``in_proj_weight`` and ``out_proj`` functionally inside
``F.multi_head_attention_forward``; a wrapper around ``out_proj`` would never run, so that
combination is refused with a `ConfigError` rather than silently training nothing. So is timm's
``EvaAttention`` with a fused ``qkv`` and q/v biases (EVA-01 and the EVA-CLIP giants): it computes
``F.linear(x, qkv.weight, cat(q_bias, k_bias, v_bias))``, so a LoRA on ``qkv`` would never run
(`_functional_projection`). EVA-02 (separate ``q_proj`` / ``k_proj`` / ``v_proj``) calls every
projection as a module, and there the ``attn`` site works.

Why our own code and not peft: peft's LoRA layers apply one adapter (or a fixed weighted mix)
to the whole batch, and its mixed-batch ``adapter_names`` forward is inference-only and splits
the batch by adapter. Here every sample has its own gates and the whole thing trains, so all
experts of one linear are computed for the whole batch as one gated pair of matrix products —
`attrimp.model.experts.GatedLoRA`, the same module (and gate-weight derivation, `_GateState`)
that the adapter bank uses; no Python loop over experts.

Exactness is the adapter bank's: the wrapped linear computes ``F.linear(x, W, b)`` exactly as
``nn.Linear`` does and adds a branch that is exactly zero when every gate of a sample is off
(``y + 0 == y``), so with all gates off the backbone's output is unchanged bit for bit, also
after training; ``B`` starts at zero, so a fresh bank changes nothing; an expert that is off for
the whole batch gets an exactly-zero gradient.

The wrapper `GatedLinear` *is* an ``nn.Linear`` that registers the original layer's own
``weight`` and ``bias`` under the same names, so the backbone's state-dict keys do not change
(a checkpoint's backbone still seeds a plain backbone) and `detach` simply puts the original
layers back. Cost: the MLP's linears are ``D → 4D → D``, so at the same rank this bank has five
times the adapter's parameters (``10·r·D`` per expert and block against ``2·r·D``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attrimp.errors import ConfigError
from attrimp.model.experts import GatedBank, GatedLoRA, _GateState, add_branch
from attrimp.model.interfaces import Backbone


class GatedLinear(nn.Linear):
    """An ``nn.Linear`` whose output carries the gated expert update of its own weight.

    It shares the original layer's ``weight`` and ``bias`` parameters (same state-dict keys);
    the `GatedLoRA` is held without registering it (the bank registers it once).
    """

    def __init__(self, base: nn.Linear, lora: GatedLoRA, state: _GateState) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: no new weight is allocated
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        object.__setattr__(self, "_lora", lora)
        object.__setattr__(self, "_state", state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)  # exactly what nn.Linear.forward computes
        return add_branch(out, self._state.branch(self._lora, x))


class WeightLoRABank(GatedBank):
    """``lora``: gated LoRA experts on the ``nn.Linear`` layers of a sub-layer of the last
    ``blocks`` blocks, one `GatedLoRA` per linear (see the module docstring)."""

    kind = "lora"

    def _attach_block(self, backbone: Backbone, block_index: int, site: str) -> None:
        where = backbone.expert_site(block_index, site)
        found = _module_linears(getattr(where.parent, where.attr), where.parent, where.attr)
        for parent, _attr, layer in found:
            if isinstance(layer, nn.MultiheadAttention) or isinstance(
                parent, nn.MultiheadAttention
            ):
                raise ConfigError(
                    f"The 'lora' expert bank cannot reach the {site!r} projections of "
                    f"{type(backbone).__name__} (block {block_index}): its "
                    "nn.MultiheadAttention applies them functionally, not as nn.Linear modules; "
                    "use experts.site = 'mlp' or experts.bank = 'adapter'."
                )
        skipped = _functional_projection(getattr(where.parent, where.attr))
        if skipped is not None:
            raise ConfigError(
                f"The 'lora' expert bank cannot reach the {site!r} projection {skipped!r} of "
                f"{type(backbone).__name__} (block {block_index}): the model applies its weight "
                "functionally (F.linear with the q/v biases), not as an nn.Linear module, so a "
                "LoRA there would never run; use experts.site = 'mlp' or experts.bank = 'adapter'."
            )
        if not found:
            raise ConfigError(
                f"The 'lora' expert bank found no nn.Linear in the {site!r} sub-layer of "
                f"{type(backbone).__name__} (block {block_index}); use experts.bank = 'adapter'."
            )
        for parent, attr, linear in found:
            lora = self._new_lora(linear.in_features, linear.out_features, like=linear)
            self._replace(parent, attr, GatedLinear(linear, lora, self._state))


def _module_linears(
    module: nn.Module, owner: nn.Module, attr: str
) -> list[tuple[nn.Module, str, nn.Module]]:
    """``(parent, attribute, layer)`` of every ``nn.Linear`` in ``module`` (itself included),
    plus any ``nn.MultiheadAttention`` (so the caller can refuse it).

    Skipped: peft's own adapter matrices (``lora_A``/``lora_B``, with ``adapt = "lora"`` on the
    backbone; the bank wraps peft's ``base_layer`` instead) and layers already gated.
    """
    if isinstance(module, nn.MultiheadAttention):
        return [(owner, attr, module)]
    found: list[tuple[nn.Module, str, nn.Module]] = []
    for name, sub in module.named_modules():
        parts = name.split(".") if name else []
        if any(p.startswith("lora_") for p in parts) or isinstance(sub, GatedLinear):
            continue
        if isinstance(sub, (nn.Linear, nn.MultiheadAttention)):
            if parts:
                parent = module.get_submodule(".".join(parts[:-1])) if len(parts) > 1 else module
                found.append((parent, parts[-1], sub))
            else:
                found.append((owner, attr, sub))
    return found


def _functional_projection(module: nn.Module) -> str | None:
    """The name of a linear that ``module`` applies through its weight, not by calling it, so
    that a wrapper around it would never run; None when every linear is called as a module.

    The one case known: timm's ``EvaAttention`` with a fused ``qkv`` and q/v biases and without
    ``qkv_bias_separate`` passes ``qkv.weight`` to ``F.linear`` itself (timm's ``eva.py``). Read
    from the attributes that decide that branch, so a timm version or a look-alike that calls
    ``qkv`` as a module is not refused.
    """
    for name, sub in module.named_modules():
        qkv = getattr(sub, "qkv", None)
        if (
            isinstance(qkv, nn.Linear)
            and getattr(sub, "q_bias", None) is not None
            and not getattr(sub, "qkv_bias_separate", False)
        ):
            return f"{name}.qkv" if name else "qkv"
    return None

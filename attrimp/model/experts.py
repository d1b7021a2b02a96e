"""The gated LoRA experts: one low-rank expert per attribute value, switched per sample.

This module holds what both expert banks share (`GatedLoRA`: every expert of one layer as one
gated pair of matrix products; `GatedBank`: gates, pooling, detach) and the ``adapter`` bank,
`ParallelAdapterBank`. The ``lora`` bank, a gated low-rank update of the block's own linear
weights, is `attrimp.model.weight_lora.WeightLoRABank`.

In the ``adapter`` bank each expert ``e`` is a LoRA update ``ΔW_e = B_e A_e`` (rank ``r``, scale ``α/r``) placed as a
residual branch parallel to a sub-layer (the MLP by default, the attention as an option) of the
last ``K`` transformer blocks. For one sample with gates ``g`` (from a router, 0 = off) the
sub-layer's output becomes ``f(h) + pool_e(g_e · s · B_e A_e h)`` over the *active* experts
(``g_e != 0``): ``mean`` (sum / number of active experts, the default), ``sum`` or ``max``.

Why our own code and not peft: peft's mixed-batch adapters split the batch by adapter name and
are inference-only. Routing here is per sample and has to train, so every expert of a block is
computed for the whole batch as ONE gated pair of matrix products::

    z = h @ A_all^T                    # A_all = [A_1; …; A_E]  ->  [B, N, E·r]
    z = z * w                          # w [B, E] = gate · α/r / normaliser, per expert's r channels
    out = z @ B_all^T                  # B_all = [B_1 … B_E]    ->  [B, N, D_out]

For ``mean`` and ``sum`` the pooling is folded into ``w``; no Python loop over experts. ``w``
depends on the gates only, so the bank derives it once per forward for every block (inside
``torch.compile`` it is derived inline and fused into the block's kernels): each expert block
then costs two matrix products, one multiply and the residual add. ``max``
needs every expert's output, ``[B, N, E, D_out]``: at ViT-B/16 256×128 (N = 129, D = 768) with
the Market schema's 35 experts that is 3.5 MB per image per block in bf16 (≈ 0.45 GB for a batch
of 64 per block, kept for the backward pass) — use it for ablations, not as the default.

Exactness: a gate of 0 multiplies the expert's ``z`` by an exact 0, so with every gate off the
branch is exactly zero and the output equals the backbone's bit for bit (``x + 0 == x``), also
after training; an expert that is off for the whole batch receives an exactly-zero gradient.
``B`` starts at zero (peft's LoRA init; ``A`` is kaiming-uniform like peft), so a fresh bank
leaves the backbone unchanged whatever the gates.

Default ``K = 2`` blocks: semantic attributes are read out best from the last blocks of a ViT
(MoSAIC-ReID puts its experts there), and at rank 8 two ViT-B/16 blocks with the Market
schema's 35 experts cost 0.86 M parameters, 1.0 % of the 86 M backbone — inside the 2 % budget,
which ``K = 4`` (2.0 %) would already break.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attrimp.errors import ConfigError
from attrimp.model import interfaces
from attrimp.model.interfaces import Backbone

POOLINGS = ("mean", "max", "sum")
SITES = ("mlp", "attn")
DEFAULT_BLOCKS = 2


def check_gates(gates: torch.Tensor, n_experts: int) -> None:
    """Gates must be ``[batch, n_experts]``; anything else is a caller's mistake, named here."""
    if gates.ndim != 2 or gates.shape[1] != n_experts:
        raise ValueError(
            f"Expert gates must have shape [batch, experts={n_experts}], got {list(gates.shape)}."
        )


class GatedLoRA(nn.Module):
    """Every expert of one site: stacked ``A`` ``[E·r, D_in]`` and ``B`` ``[D_out, E·r]``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        n_experts: int,
        *,
        rank: int = 8,
        alpha: float = 16.0,
        pooling: str = "mean",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"Unknown expert pooling {pooling!r}; use one of {list(POOLINGS)}.")
        if rank < 1 or n_experts < 1:
            raise ConfigError(
                f"The expert bank needs rank >= 1 and at least one expert, got rank {rank} "
                f"and {n_experts} experts."
            )
        self.in_features = in_features
        self.out_features = out_features
        self.n_experts = n_experts
        self.rank = rank
        self.alpha = float(alpha)
        self.scale = self.alpha / rank
        self.pooling = pooling
        self.A = nn.Parameter(torch.empty(n_experts * rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, n_experts * rank))
        # None rather than nn.Identity: one module call less on the hot path
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As peft: A kaiming-uniform(a=√5) per expert (the stacked [E·r, D_in] has the same
        # fan-in D_in, so one call gives each A_e peft's distribution); B zero.
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        nn.init.zeros_(self.B)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, experts={self.n_experts}, "
            f"rank={self.rank}, alpha={self.alpha}, pooling={self.pooling!r}"
        )

    def gate_weights(self, gates: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Per-sample expert weights ``[B, E]``: gate · α/r, divided by the number of active
        experts for ``mean`` pooling (so the pooling costs nothing in the matrix products).

        They depend on the gates only, so a bank computes them once per forward for all blocks.
        """
        check_gates(gates, self.n_experts)
        w = gates * self.scale
        if self.pooling == "mean":
            w = w / (gates != 0).sum(dim=1, keepdim=True).clamp_(min=1)
        return w if dtype is None or w.dtype == dtype else w.to(dtype)

    def expand_weights(
        self, weights: torch.Tensor, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """`gate_weights` ``[B, E]`` repeated over each expert's rank: ``[B, 1, E·r]``, the
        per-column factor between the two products (computed once per forward for all blocks).

        One copy kernel repeats and casts to ``dtype`` together (``repeat_interleave`` and a
        cast would be two): eager GPU steps of this size pay per kernel launch.
        """
        batch = weights.shape[0]
        out = weights.new_empty((batch, self.n_experts, self.rank), dtype=dtype or weights.dtype)
        out.copy_(weights.unsqueeze(-1).expand(batch, self.n_experts, self.rank))
        return out.view(batch, 1, self.n_experts * self.rank)

    def branch(
        self, h: torch.Tensor, weights: torch.Tensor, expanded: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The pooled expert branch for ``h`` ``[B, ..., D_in]`` given `gate_weights`.

        ``expanded`` (`expand_weights` of the same weights) saves recomputing it per block. The
        mean/sum path is three kernels — product, scale, product — because in eager mode on a
        GPU the extra cost of the bank is mostly kernel launches, not arithmetic.
        """
        batch = h.shape[0]
        if weights.shape[0] != batch:
            raise ValueError(
                f"Expert gates are for a batch of {weights.shape[0]} but the input has {batch} "
                "samples (tokens must be batch first)."
            )
        x = h if h.ndim == 3 else h.reshape(batch, -1, h.shape[-1])  # [B, N, D_in]
        if self.dropout is not None:
            x = self.dropout(x)
        z = F.linear(x, self.A)  # [B, N, E·r]: every expert's A in one product
        if self.pooling == "max":
            w = weights if weights.dtype == z.dtype else weights.to(z.dtype)
            out = self._max_pool(z.view(batch, z.shape[1], self.n_experts, self.rank), w)
        else:  # gate (and pooling) per sample and expert, then every B in one product
            if expanded is None or expanded.dtype != z.dtype:
                expanded = self.expand_weights(weights, z.dtype)
            out = F.linear(z * expanded, self.B)
        return out if h.ndim == 3 else out.reshape(*h.shape[:-1], self.out_features)

    def forward(self, h: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """The pooled expert branch for ``h`` ``[B, ..., D_in]`` and ``gates`` ``[B, E]``."""
        return self.branch(h, self.gate_weights(gates))

    def _max_pool(self, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        b = self.B.view(self.out_features, self.n_experts, self.rank).to(z.dtype)
        y = torch.einsum("bner,oer->bneo", z, b) * w[:, None, :, None]  # [B, N, E, D_out]
        # A finite floor, not -inf: an all-off row must give a 0 branch and finite gradients.
        active = w != 0
        y = y.masked_fill(~active[:, None, :, None], torch.finfo(y.dtype).min)
        pooled = y.amax(dim=2)
        return torch.where(active.any(dim=1)[:, None, None], pooled, torch.zeros_like(pooled))


class _GateState:
    """The gates of the current forward pass, shared by every site of a bank, and the per-sample
    weights derived from them.

    In eager mode the weights are computed by the first expert block that runs (in the dtype
    its branch computes in: the autocast dtype under autocast) and reused by the others. Inside
    ``torch.compile`` each site derives them inline instead, so that inductor fuses them into
    the block's kernels and the compiled graph has no cache to mutate.
    """

    __slots__ = ("_expanded", "_weights", "gates")

    def __init__(self) -> None:
        self.gates: torch.Tensor | None = None
        self._weights: torch.Tensor | None = None
        self._expanded: torch.Tensor | None = None

    def set(self, gates: torch.Tensor | None) -> None:
        self.gates = gates
        self._weights = self._expanded = None

    def weights_for(
        self, lora: GatedLoRA, gates: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(gate weights, expanded weights or None)`` for ``lora``'s branch."""
        if torch.compiler.is_compiling():
            return lora.gate_weights(gates), None  # the branch expands in its own dtype
        device = gates.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
        else:
            dtype = lora.A.dtype
        # the cached tensor in the compute dtype: the expansion, or for max the weights
        cached = self._weights if self._expanded is None else self._expanded
        if cached is None or cached.dtype != dtype:
            if lora.pooling == "max":
                self._weights, self._expanded = lora.gate_weights(gates, dtype), None
            else:  # float32 weights; the expansion casts them in the same kernel
                self._weights = lora.gate_weights(gates)
                self._expanded = lora.expand_weights(self._weights, dtype)
        return self._weights, self._expanded

    def branch(self, lora: GatedLoRA, h: torch.Tensor) -> torch.Tensor:
        """``lora``'s pooled expert branch of ``h`` under the gates of this forward."""
        gates = self.gates
        if gates is None:
            raise RuntimeError(
                "The expert bank ran without gates: call ExpertBank.set_gates(gates) (or use "
                "MoSAICReID, which routes every forward) before running the backbone."
            )
        weights, expanded = self.weights_for(lora, gates)
        return lora.branch(h, weights, expanded)


class ExpertSiteWrapper(nn.Module):
    """Replaces a block's sub-layer: ``base(h, ...)`` plus the gated expert branch of ``h``.

    The LoRA module is held without registering it (it is registered once, in the bank), so
    the model's state dict lists every expert tensor exactly once.
    """

    def __init__(self, base: nn.Module, lora: GatedLoRA, state: _GateState) -> None:
        super().__init__()
        self.base = base
        object.__setattr__(self, "_lora", lora)
        object.__setattr__(self, "_state", state)

    def forward(self, h: torch.Tensor, *args, **kwargs):
        out = self.base(h, *args, **kwargs)
        delta = self._state.branch(self._lora, h)
        if isinstance(out, tuple):  # e.g. nn.MultiheadAttention -> (output, weights)
            first = out[0]
            return (first + delta.to(first.dtype), *out[1:])
        return add_branch(out, delta)


def add_branch(out: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``out + delta`` in ``out``'s dtype (under autocast the branch may compute in another)."""
    return out + (delta if delta.dtype == out.dtype else delta.to(out.dtype))


class GatedBank(interfaces.ExpertBank):
    """What both gated LoRA banks share: one `GatedLoRA` per wrapped layer, one gate state read
    by all of them, the checks of the options, pooling, and giving the backbone its modules back.

    A subclass says where the experts go in one block (`_attach_block`); it builds each expert
    module with `_new_lora` and puts it in place with `_replace`.
    """

    #: the name of this bank in the model config (``experts.bank``)
    kind: str = ""

    @dataclass
    class Options:
        """``[experts.options]``: none. The gated LoRA banks are set by the common ``[experts]``
        keys (blocks, rank, alpha, site, pooling, dropout) alone; a subclass or a third-party
        bank declares its own dataclass here, and its fields reach ``__init__`` as keywords."""

    def __init__(
        self,
        backbone: Backbone,
        n_experts: int,
        *,
        blocks: int = DEFAULT_BLOCKS,
        rank: int = 8,
        alpha: float = 16.0,
        site: str = "mlp",
        pooling: str = "mean",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if site not in SITES:
            raise ConfigError(f"Unknown expert site {site!r}; use one of {list(SITES)}.")
        depth = len(backbone.blocks)
        if not 0 <= blocks <= depth:
            raise ConfigError(
                f"The expert bank needs between 0 and {depth} blocks (the backbone's depth), "
                f"got {blocks}."
            )
        if pooling not in POOLINGS:
            raise ConfigError(f"Unknown expert pooling {pooling!r}; use one of {list(POOLINGS)}.")
        self.n_experts = n_experts
        self.site = site
        self._pooling = pooling
        self._options = {"rank": rank, "alpha": alpha, "pooling": pooling, "dropout": dropout}
        self.block_indices = tuple(range(depth - blocks, depth))
        self._state = _GateState()
        self.layers = nn.ModuleList()
        self._attached: list[tuple[nn.Module, str, nn.Module]] = []
        try:
            for i in self.block_indices:
                self._attach_block(backbone, i, site)
        except BaseException:
            self.detach()  # a refused block leaves the backbone as it was
            raise

    def _attach_block(self, backbone: Backbone, block_index: int, site: str) -> None:
        """Put this bank's experts into block ``block_index`` at ``site``."""
        raise NotImplementedError

    def _new_lora(self, in_features: int, out_features: int, like: nn.Module) -> GatedLoRA:
        """A registered `GatedLoRA` with the bank's options, on ``like``'s device and dtype."""
        lora = GatedLoRA(in_features, out_features, self.n_experts, **self._options)
        lora.to(device=_device_of(like), dtype=_float_dtype_of(like))
        self.layers.append(lora)
        return lora

    def _replace(self, parent: nn.Module, attr: str, new: nn.Module) -> None:
        """``parent.attr = new``, remembering the original for `detach`."""
        self._attached.append((parent, attr, getattr(parent, attr)))
        setattr(parent, attr, new)

    @property
    def gates(self) -> torch.Tensor | None:
        return self._state.gates

    @property
    def pooling(self) -> str:
        return self._pooling

    @pooling.setter
    def pooling(self, value: str) -> None:
        if value not in POOLINGS:
            raise ConfigError(f"Unknown expert pooling {value!r}; use one of {list(POOLINGS)}.")
        self._pooling = value
        for layer in self.layers:
            layer.pooling = value
        self._state.set(self._state.gates)  # the weights depend on the pooling

    def set_gates(self, gates: torch.Tensor | None) -> None:
        """Gates ``[batch, n_experts]`` for the next forward pass (``None`` clears them).

        The per-sample weights (pooling normaliser and α/r folded in) are derived once per
        forward for every wrapped layer, in the autocast dtype when autocast is on (see
        `_GateState`).
        """
        if gates is not None:
            check_gates(gates, self.n_experts)
        self._state.set(gates)

    def detach(self) -> None:
        """Put the original modules back into the backbone (the experts stay in the bank)."""
        for parent, attr, base in reversed(self._attached):
            setattr(parent, attr, base)
        self._attached = []


class ParallelAdapterBank(GatedBank):
    """``adapter``: LoRA experts as a residual branch parallel to a sub-layer of the last
    ``blocks`` blocks: ``f(h) + pool_e(g_e · s · B_e A_e h)``, one `GatedLoRA` per block.

    Gates are set per forward with `set_gates` (or the `gated` context) and are read by every
    site during that forward, so each sample of a batch is routed to its own experts and the
    whole thing trains end to end.
    """

    kind = "adapter"

    def _attach_block(self, backbone: Backbone, block_index: int, site: str) -> None:
        where = backbone.expert_site(block_index, site)
        base = getattr(where.parent, where.attr)
        lora = self._new_lora(where.in_features, where.out_features, like=base)
        self._replace(where.parent, where.attr, ExpertSiteWrapper(base, lora, self._state))


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _float_dtype_of(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()

"""The abstract contracts between the engine and its plug-ins: backbones, routers, expert banks.

`backbones/` and `routers/` import only this module (and `attrimp.model.schema` / `attrimp.errors`)
from the engine, so the dependency arrows keep pointing one way.

Every optional capability is declared here with its default, so the engine asks a plug-in what it
can do (``router.needs_features``, ``backbone.splits_forward``) instead of probing it with
``getattr``/``hasattr``: a plug-in that forgets a method fails loudly at the call, not silently
down a slower or wrong path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from attrimp.model.schema import AttributeSchema
from attrimp.registry import NoOptions

__all__ = ["Backbone", "ExpertBank", "ExpertSite", "Router"]


@dataclass(frozen=True)
class ExpertSite:
    """Where the expert bank attaches in one transformer block.

    The bank replaces ``getattr(parent, attr)`` by a wrapper whose first positional argument is
    the sub-layer's (normalised) input ``h`` of width ``in_features`` and whose output is the
    original output plus the pooled expert branch (for a tuple output, its first element).
    """

    parent: nn.Module
    attr: str
    in_features: int
    out_features: int


class Backbone(nn.Module, ABC):
    """A ViT that exposes its transformer blocks, its width and its embedding token.

    The embedding is token 0 of `forward_tokens`: the class token, or, for a model built to pool
    its tokens (averaging them, an attention head), that pooled embedding prepended to them.

    Implementations live in ``backbones/`` and are built by name through
    ``backbones.build(name, pretrained=..., img_size=(256, 128), ...)``.
    """

    #: token width
    width: int
    #: (height, width) of the input images
    img_size: tuple[int, int]
    #: (rows, cols) of the patch grid at ``img_size``
    grid_size: tuple[int, int]
    #: tokens before the patch tokens (CLS, registers, ...)
    num_prefix_tokens: int = 1
    #: capability: `forward_prefix` / `forward_suffix` split `forward_tokens` exactly at a block,
    #: so the test-time sweep computes the blocks before the experts once for every condition
    splits_forward: bool = False

    @property
    @abstractmethod
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, in forward order."""

    @abstractmethod
    def forward_tokens(
        self, images: torch.Tensor, camids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B, 3, H, W]`` -> final normalised tokens ``[B, N, width]``, the embedding first."""

    @abstractmethod
    def expert_site(self, block_index: int, site: str) -> ExpertSite:
        """The module of block ``block_index`` that the expert bank wraps (``mlp`` or ``attn``)."""

    def forward(self, images: torch.Tensor, camids: torch.Tensor | None = None) -> torch.Tensor:
        """The embedding ``[B, width]`` (token 0): the ReID embedding before the head."""
        return self.forward_tokens(images, camids)[:, 0]

    def route_feature(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, width]`` from the tokens ``x`` at a block's input, for a router that reads the
        image: the class token (a backbone without one overrides this)."""
        return x[:, 0]

    def forward_prefix(
        self, images: torch.Tensor, camids: torch.Tensor | None = None, *, stop: int
    ) -> tuple[torch.Tensor, Any]:
        """Tokens at the input of block ``stop`` and the blocks' context ``(x, ctx)``.

        Only for ``splits_forward`` backbones; with `forward_suffix` it must equal
        `forward_tokens` exactly."""
        raise NotImplementedError(f"{type(self).__name__} does not split its forward.")

    def forward_suffix(self, x: torch.Tensor, ctx: Any = None, *, start: int) -> torch.Tensor:
        """Blocks ``start`` onwards and the final norm (`forward_tokens`' output, the embedding
        first), on tokens from `forward_prefix`."""
        raise NotImplementedError(f"{type(self).__name__} does not split its forward.")


class Router(ABC):
    """Turns attribute annotations (or predictions) into expert gates.

    ``attributes`` is the schema's multi-hot matrix ``[batch, n_slots]`` (see
    `attrimp.model.schema.AttributeSchema.encode`); the result is a float tensor
    ``[batch, n_experts]`` in the schema's expert order, 0 meaning off. Implementations are
    vectorised over the batch and must not modify ``attributes``.
    """

    name: str = "router"
    #: the dataclass of the router's own options (``[router.options]``); none by default
    Options: ClassVar[type] = NoOptions
    #: capability: the router reads the image (the CLS token at the first expert block) instead
    #: of, or besides, the annotations; the model then calls `route_with_logits` with
    #: ``features`` at that block, and the sweep cannot reuse a prefix routed without them
    needs_features: bool = False

    @abstractmethod
    def route(
        self,
        attributes: torch.Tensor,
        schema: AttributeSchema,
        *,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Gates ``[batch, n_experts]``; ``features`` is for routers that look at the image."""

    def route_with_logits(
        self,
        attributes: torch.Tensor | None,
        schema: AttributeSchema,
        *,
        features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(gates, attribute logits or None)``; routers that predict attributes override it
        so training can supervise the prediction."""
        return self.route(attributes, schema, features=features), None

    def reset(self) -> None:
        """Return to the initial state (e.g. rewind a random stream) so a sweep condition is
        reproducible whatever ran before it. Stateless routers need nothing."""
        return None

    def __call__(self, attributes, schema, *, features=None):
        return self.route(attributes, schema, features=features)


class ExpertBank(nn.Module, ABC):
    """Attribute experts attached to the last blocks of a `Backbone`, switched per sample.

    One expert per schema expert slot (``n_experts``). The model sets the gates
    ``[batch, n_experts]`` before each forward (0 = off) and clears them after; every attached
    block reads them during that forward. Contract, tested for every bank: with all gates off the
    backbone's output is unchanged bit for bit, an expert that is off for the whole batch gets an
    exactly-zero gradient, and a fresh bank leaves the backbone unchanged whatever the gates.

    Implementations: ``attrimp.model.experts`` (``adapter``: a parallel branch beside a
    sub-layer) and ``attrimp.model.weight_lora`` (``lora``: a low-rank update of the block's own
    linear weights).
    """

    #: the dataclass of the bank's own options (``[experts.options]``); none by default
    Options: ClassVar[type] = NoOptions

    #: experts in the schema's expert order
    n_experts: int
    #: indices of the backbone blocks that carry experts, in forward order
    block_indices: tuple[int, ...]

    @property
    @abstractmethod
    def gates(self) -> torch.Tensor | None:
        """The gates of the forward in progress (``None`` between forwards)."""

    @abstractmethod
    def set_gates(self, gates: torch.Tensor | None) -> None:
        """Gates ``[batch, n_experts]`` for the next forward pass (``None`` clears them)."""

    @property
    @abstractmethod
    def pooling(self) -> str:
        """How the active experts' outputs are pooled: ``mean``, ``sum`` or ``max``."""

    @pooling.setter
    @abstractmethod
    def pooling(self, value: str) -> None: ...

    @abstractmethod
    def detach(self) -> None:
        """Give the backbone its original modules back (the experts stay in the bank)."""

    @contextmanager
    def gated(self, gates: torch.Tensor) -> Iterator[None]:
        """``with bank.gated(g):`` -- gates for the forwards inside, the previous ones after."""
        previous = self.gates
        self.set_gates(gates)
        try:
            yield
        finally:
            self.set_gates(previous)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

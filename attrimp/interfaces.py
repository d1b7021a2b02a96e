"""The abstract contracts between the engine and its plug-ins (backbones, routers).

`backbones/` and `routers/` import only this module (and `attrimp.schema` / `attrimp.errors`)
from the engine, so the dependency arrows keep pointing one way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from attrimp.schema import AttributeSchema


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
    """A ViT that exposes its transformer blocks, its width and its CLS token.

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

    @property
    @abstractmethod
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, in forward order."""

    @abstractmethod
    def forward_tokens(
        self, images: torch.Tensor, camids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B, 3, H, W]`` -> final normalised tokens ``[B, N, width]``, CLS first."""

    @abstractmethod
    def expert_site(self, block_index: int, site: str) -> ExpertSite:
        """The module of block ``block_index`` that the expert bank wraps (``mlp`` or ``attn``)."""

    def forward(self, images: torch.Tensor, camids: torch.Tensor | None = None) -> torch.Tensor:
        """The CLS token ``[B, width]``: the ReID embedding before the head."""
        return self.forward_tokens(images, camids)[:, 0]


class Router(ABC):
    """Turns attribute annotations (or predictions) into expert gates.

    ``attributes`` is the schema's multi-hot matrix ``[batch, n_slots]`` (see
    `attrimp.schema.AttributeSchema.encode`); the result is a float tensor
    ``[batch, n_experts]`` in the schema's expert order, 0 meaning off. Implementations are
    vectorised over the batch and must not modify ``attributes``.
    """

    name: str = "router"

    @abstractmethod
    def route(
        self,
        attributes: torch.Tensor,
        schema: AttributeSchema,
        *,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Gates ``[batch, n_experts]``; ``features`` is for routers that look at the image."""

    def __call__(self, attributes, schema, *, features=None):
        return self.route(attributes, schema, features=features)

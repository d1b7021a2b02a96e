"""An expert-bank plug-in: attrimp's parallel adapter bank with one extra option.

``alpha_scale`` multiplies the LoRA scale α of every expert, so the experts' update is
``alpha_scale · α / r · B A h``. The option is declared in ``Options`` (a dataclass), read from
``[experts.options]`` and passed to ``__init__`` as a keyword; the common ``[experts]`` keys
(blocks, rank, alpha, site, pooling, dropout) arrive as they do for the built-in banks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from attrimp.model.experts import ParallelAdapterBank
from attrimp.model.interfaces import Backbone


class ScaledAdapterBank(ParallelAdapterBank):
    """The ``adapter`` bank with its LoRA scale multiplied by ``alpha_scale``."""

    kind = "plugex_scaled_adapter"

    @dataclass
    class Options:
        """``[experts.options]``: the factor on every expert's α."""

        alpha_scale: float = 1.0

    def __init__(
        self, backbone: Backbone, n_experts: int, *, alpha_scale: float = 1.0, **common: Any
    ) -> None:
        common["alpha"] = common.get("alpha", 16.0) * alpha_scale
        super().__init__(backbone, n_experts, **common)
        self.alpha_scale = alpha_scale

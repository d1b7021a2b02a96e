"""MoSAIC-ReID: a ViT backbone + gated LoRA expert bank + router + BNNeck ReID head.

    cfg = MoSAICConfig(backbone="clip:ViT-B-16", pretrained="openai", num_classes=751)
    model = MoSAICReID(cfg)                          # oracle router, Market-1501 schema
    out = model(images, attributes, camids)          # attributes: schema.encode(...) multi-hot
    loss = id_loss(out.logits, pids) + triplet(out.global_features, pids)
    model.eval(); emb = model(images, attributes).features   # retrieval feature

The router turns the attribute multi-hot ``[B, n_slots]`` into gates ``[B, n_experts]`` that the
bank applies per sample. A router that looks at the image (``needs_features = True``, e.g. the
learned router) receives the CLS token (`Backbone.route_feature`: the mean patch token for a
backbone without one) at the *input of the first expert block*, captured by a
forward pre-hook on that block: the backbone runs once, the router decides mid-way, and the
expert blocks that follow use its gates, so no annotation is needed at test time.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from attrimp.config import MoSAICConfig
from attrimp.errors import ConfigError, DataError, SchemaError
from attrimp.model.interfaces import Backbone, ExpertBank, Router
from attrimp.model.schema import AttributeSchema, load_schema, remember_schema
from attrimp.registry import BANKS, option_kwargs, plugin_options

__all__ = ["BANKS", "ModelOutput", "MoSAICConfig", "MoSAICReID", "build_bank"]


#: the expert banks by their config name (``experts.bank``): `attrimp.registry.BANKS`, the
#: ``attrimp.banks`` entry-point group (re-exported here, where banks are built)

#: what ``MoSAICReID(bank=...)`` accepts: a built bank, or a factory called like the bank
#: classes, ``factory(backbone, n_experts, blocks=, rank=, alpha=, site=, pooling=, dropout=,
#: **options)`` (the options only when ``[experts.options]`` sets some)
BankArg = ExpertBank | Callable[..., ExpertBank]


class ModelOutput(NamedTuple):
    """What one forward pass returns (a NamedTuple, so it passes through torch.compile)."""

    #: BNNeck feature ``[B, D]``: the retrieval embedding (BN in eval mode uses running stats)
    features: torch.Tensor
    #: feature before the BNNeck ``[B, D]``: what the triplet loss trains on
    global_features: torch.Tensor
    #: identity logits ``[B, num_classes]``; None when the model has no classifier
    logits: torch.Tensor | None
    #: the gates the expert bank used ``[B, n_experts]``
    gates: torch.Tensor
    #: attribute logits ``[B, n_slots]`` of a router that predicts attributes (learned), else None
    attr_logits: torch.Tensor | None


class MoSAICReID(nn.Module):
    """Backbone + `ExpertBank` + router + BNNeck head.

    ``backbone``, ``schema`` and ``router`` may be passed in already built (tests, custom
    plug-ins); otherwise they are built from ``config`` through the `backbones` and `routers`
    registries. ``bank`` is any `ExpertBank`: one already attached to ``backbone``, or a factory
    called like the bank classes; by default ``config.bank`` names an entry of `BANKS`.
    """

    def __init__(
        self,
        config: MoSAICConfig,
        *,
        backbone: Backbone | None = None,
        schema: AttributeSchema | None = None,
        router: Router | None = None,
        bank: BankArg | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.schema = schema if schema is not None else load_schema(config.schema)
        # Fill the schema's cached layout arrays now, eagerly: a router that reads them inside
        # a torch.compile'd forward then finds plain constants instead of tracing numpy code.
        _ = (self.schema.slot_group, self.schema.expert_slots, self.schema.expert_group)
        # ... and register the schema for the routers' layout lookups, which a compiled forward
        # only reads (see attrimp.model.schema.remember_schema).
        remember_schema(self.schema)
        self.backbone = backbone if backbone is not None else build_backbone(config)
        width = self.backbone.width
        self.experts = build_bank(config, self.backbone, self.schema.n_experts, bank)
        # BNNeck (Luo et al. 2019): BN on the feature with its shift frozen at 0, then a
        # bias-free classifier, so the ID loss acts on a normalised copy of the triplet feature.
        self.neck = nn.BatchNorm1d(width)
        self.neck.bias.requires_grad_(False)
        self.classifier = (
            nn.Linear(width, config.num_classes, bias=False) if config.num_classes else None
        )
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)
        self.router = (
            router if router is not None else build_model_router(config, self.schema, width)
        )
        self._check_feature_router(self.router)
        # The router's decision point: input of the first expert block (or the final tokens
        # when there is no expert block).
        self._route_state: dict[str, Any] = {}
        if self.experts.block_indices:
            first = self.experts.block_indices[0]
            self.backbone.blocks[first].register_forward_pre_hook(
                self._route_hook, with_kwargs=True
            )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        images: torch.Tensor,
        attributes: torch.Tensor | None = None,
        camids: torch.Tensor | None = None,
        *,
        router: Router | None = None,
        gates: torch.Tensor | None = None,
    ) -> ModelOutput:
        """``images`` ``[B, 3, H, W]``; ``attributes`` the schema multi-hot ``[B, n_slots]``.

        ``router`` overrides the model's router for this call (ablations); ``gates`` bypasses
        routing altogether.
        """
        router = router if router is not None else self.router
        if attributes is not None:
            attributes = torch.as_tensor(attributes, dtype=torch.float32, device=images.device)
            if attributes.ndim != 2 or attributes.shape[1] != self.schema.n_slots:
                raise SchemaError(
                    f"Attributes of shape {list(attributes.shape)} do not fit schema "
                    f"{self.schema.name!r}, which needs [batch, {self.schema.n_slots}]."
                )
        feature_router = gates is None and router.needs_features
        if feature_router:
            self._check_feature_router(router)
        if gates is None and not feature_router:
            if attributes is None:
                raise ConfigError(
                    f"The {router.name!r} router needs the "
                    "attribute annotations; pass attributes= or use a router that reads the image "
                    "(e.g. 'learned')."
                )
            gates = router.route(attributes, self.schema)
        state = self._route_state
        if feature_router:
            state["router"], state["attributes"] = router, attributes
        else:
            gates = gates.to(images.device)
            self.experts.set_gates(gates)
        try:
            tokens = self.backbone.forward_tokens(images, camids)
            if feature_router and not self.experts.block_indices:
                self._route(tokens[:, 0])
            if feature_router:
                gates, attr_logits = state["gates"], state["attr_logits"]
            else:
                attr_logits = None
        finally:
            self.experts.set_gates(None)
            state.clear()
        global_features = tokens[:, 0]
        features = self.neck(global_features.float())
        logits = self.classifier(features) if self.classifier is not None else None
        return ModelOutput(features, global_features, logits, gates, attr_logits)

    def check_camids(self, camids: Any) -> None:
        """Raise `DataError` unless every camera id fits the camera table.

        The validation point for camera ids: the training loop calls it once over its training
        set, the condition sweep once per split, feature extraction per batch on the host. The
        forward does not read the values of ids on an accelerator (a stream synchronisation
        per step); ids given as host data are also checked there, at no cost.
        """
        count = self.config.camera_count
        ids = torch.as_tensor(camids).detach().cpu()
        if count <= 0 or ids.numel() == 0:
            return
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= count:
            raise DataError(
                f"camera id {hi if hi >= count else lo} is outside the camera table of {count} "
                f"cameras (ids 0..{count - 1}); set model.camera_count to the number of cameras."
            )

    def _check_feature_router(self, router: Router) -> None:
        if router.needs_features and self.experts.block_indices[:1] == (0,):
            raise ConfigError(
                f"The {router.name!r} router reads the CLS token at the "
                "input of the first expert block, but the experts start at block 0 where that "
                "token has not seen the image yet; use fewer expert blocks than the backbone has."
            )

    def _route_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if "router" not in self._route_state:
            return None
        x = args[0] if args else next(iter(kwargs.values()))
        self._route(self.backbone.route_feature(x))
        return None

    def _route(self, cls_token: torch.Tensor) -> None:
        state = self._route_state
        gates, attr_logits = state["router"].route_with_logits(
            state["attributes"], self.schema, features=cls_token
        )
        state["gates"], state["attr_logits"] = gates, attr_logits
        self.experts.set_gates(gates)

    # ------------------------------------------------------------------ reporting
    def expert_parameter_count(self) -> int:
        return self.experts.num_parameters()

    def backbone_parameter_count(self) -> int:
        """Parameters of the backbone (the sub-layers the bank wraps included, experts not)."""
        return sum(p.numel() for p in self.backbone.parameters())

    def expert_parameter_share(self) -> float:
        """Expert parameters as a fraction of the backbone's (0.0100 = 1.00 %)."""
        return self.expert_parameter_count() / self.backbone_parameter_count()


def build_bank(
    config: MoSAICConfig, backbone: Backbone, n_experts: int, bank: BankArg | None = None
) -> ExpertBank:
    """The expert bank for ``backbone``: ``bank`` as given (built, or a factory), else the
    registered bank that ``config.bank`` names, built with the common ``[experts]`` arguments
    plus its own options (``config.options``, read through its ``Options`` dataclass). A built
    bank must fit the schema, and a registered bank class must be the one the config names, so
    that a checkpoint rebuilds what was trained."""
    if bank is None:
        bank = BANKS.load(config.bank)  # an unknown name: one sentence listing the known ones
    if not isinstance(bank, ExpertBank):
        what = f"expert bank {config.bank!r}"
        options = plugin_options(bank, config.options, where="experts.options", what=what)
        bank = bank(
            backbone,
            n_experts,
            blocks=config.blocks,
            rank=config.rank,
            alpha=config.alpha,
            site=config.site,
            pooling=config.pooling,
            dropout=config.dropout,
            **option_kwargs(options),
        )
    if not isinstance(bank, ExpertBank) or bank.n_experts != n_experts:
        raise ConfigError(
            f"The expert bank must be an ExpertBank with {n_experts} experts (one per schema "
            f"expert), got {type(bank).__name__}"
            + (f" with {bank.n_experts}." if isinstance(bank, ExpertBank) else ".")
        )
    _check_bank_kind(config, bank)
    return bank


def _check_bank_kind(config: MoSAICConfig, bank: ExpertBank) -> None:
    """A bank whose class is registered under another name than ``config.bank`` is refused (a
    checkpoint would rebuild the wrong one); a class registered under no name is accepted."""
    if type(bank) is BANKS.load(config.bank):
        return
    with warnings.catch_warnings():  # a broken third-party bank is not this model's concern
        warnings.simplefilter("ignore")
        kind = next((k for k, cls in BANKS.load_all().items() if type(bank) is cls), None)
    if kind is not None and kind != config.bank:
        raise ConfigError(
            f"The model config names the expert bank {config.bank!r} but the bank given is "
            f"{kind!r}; set bank={kind!r} in the config so a checkpoint rebuilds it."
        )


def build_backbone(config: MoSAICConfig, *, pretrained: str | None | bool = ...) -> Backbone:
    """The config's backbone via `backbones.build` (``pretrained`` overrides the config's)."""
    import backbones

    kwargs = dict(config.backbone_kwargs)
    return backbones.build(
        config.backbone,
        pretrained=config.pretrained if pretrained is ... else pretrained,
        img_size=tuple(config.img_size),
        stride=config.stride,
        camera_count=config.camera_count,
        adapt=config.adapt,
        **kwargs,
    )


def build_model_router(config: MoSAICConfig, schema: AttributeSchema, width: int) -> Router:
    """The config's router via the `routers` registry.

    Routers whose constructor takes ``schema`` and/or ``width`` (the learned router's heads
    are sized by them) receive the model's; the user's ``router_kwargs`` win.
    """
    import routers

    if config.router not in routers.ROUTERS:
        raise ConfigError(
            f"Model config: unknown router {config.router!r}; registered: {sorted(routers.ROUTERS)}."
        )
    params = inspect.signature(routers.ROUTERS[config.router]).parameters
    kwargs: dict[str, Any] = {}
    if "schema" in params:
        kwargs["schema"] = schema
    if "width" in params:
        kwargs["width"] = width
    kwargs.update(config.router_kwargs)
    return routers.build_router(config.router, **kwargs)

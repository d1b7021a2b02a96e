"""What every ViT family shares: the weight-source record, position-embedding resampling,
the camera (SIE) embedding, overlapping-stride grids and the readout (class token or the model's
own pooling).

A family module (``clip.py``, ``timm_vit.py``, a third party's) subclasses `ViTBackbone`, wraps
its library's model as ``self.inner`` and implements the few family-specific hooks; everything
that is the same for all ViTs lives here once. Weight files (reading, saving, loading weights
whose shapes differ) live in `backbones.weights`; their names stay importable from here.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from attrimp.errors import CheckpointError, ConfigError, DataError
from attrimp.model.interfaces import Backbone, ExpertSite

#: normalisation constants: OpenAI CLIP's and ImageNet's (what the weights were trained with)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: state-dict keys that belong to the wrapper, not to the library model inside it
WRAPPER_KEYS = ("camera_embed",)

#: the ReID input size (height, width) of the reference configuration
REID_IMG_SIZE = (256, 128)


@dataclass(frozen=True)
class PretrainedCfg:
    """Where the weights came from, what input they expect and how to normalise images.

    ``native_size`` is the size the weights were trained at (their position grid), ``img_size``
    the size this backbone runs at after resampling. ``mean``/``std`` are what the data pipeline
    must normalise with (CLIP's for CLIP weights, ImageNet's for most timm ones); a user's
    explicit ``mean=``/``std=`` always wins over the family default.
    """

    name: str
    family: str
    model: str
    tag: str | None = None
    file: str | None = None
    native_size: tuple[int, int] = (224, 224)
    img_size: tuple[int, int] = REID_IMG_SIZE
    stride: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict[str, Any] = field(default_factory=dict)

    def with_overrides(self, **overrides: Any) -> PretrainedCfg:
        """A copy with the user's non-None values applied (user kwargs always win)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


# --------------------------------------------------------------------------- grids & resampling


def as_size(value: int | Sequence[int], what: str = "img_size") -> tuple[int, int]:
    """``224`` or ``(256, 128)`` -> ``(h, w)``; anything else is a ConfigError."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    try:
        h, w = (int(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ConfigError(
            f"{what} must be an int or a (height, width) pair, got {value!r}."
        ) from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"{what} must be positive, got {value!r}.")
    return (h, w)


def grid_for(
    img_size: tuple[int, int], patch: tuple[int, int], stride: tuple[int, int]
) -> tuple[int, int]:
    """Patch grid of a conv patch-embedding (kernel ``patch``, step ``stride``, no padding).

    With ``stride == patch`` this is ``img // patch`` (16x8 for 256x128 at patch 16); with an
    overlapping stride 12 it is ``(img - patch) // stride + 1`` (21x10), as in TransReID.
    """
    rows = (img_size[0] - patch[0]) // stride[0] + 1
    cols = (img_size[1] - patch[1]) // stride[1] + 1
    if rows <= 0 or cols <= 0:
        raise ConfigError(
            f"img_size {img_size} is smaller than the patch size {patch}; no patch fits."
        )
    return (rows, cols)


def resample_pos_embed(
    posemb: torch.Tensor,
    new_grid: Sequence[int],
    old_grid: Sequence[int],
    *,
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Resample an absolute position embedding from ``old_grid`` to ``new_grid``.

    Accepts ``[N, D]`` (open_clip) or ``[1, N, D]`` (timm) and returns the same rank. The old grid
    is a required argument on purpose: timm's ``resample_abs_pos_embed`` guesses a square grid
    when it is missing, which silently scrambles a 16x8 ReID grid. Prefix tokens (CLS,
    registers) are kept as they are. Delegates the interpolation itself to timm.
    """
    from timm.layers import resample_abs_pos_embed

    old_grid = tuple(int(v) for v in old_grid)
    new_grid = tuple(int(v) for v in new_grid)
    squeeze = posemb.dim() == 2
    pe = posemb.unsqueeze(0) if squeeze else posemb
    if pe.dim() != 3 or pe.shape[0] != 1:
        raise CheckpointError(
            f"A position embedding must be [N, D] or [1, N, D], got {tuple(posemb.shape)}."
        )
    n_expected = old_grid[0] * old_grid[1] + num_prefix_tokens
    if pe.shape[1] != n_expected:
        raise CheckpointError(
            f"A position embedding of {pe.shape[1]} tokens does not fit the grid {old_grid} with "
            f"{num_prefix_tokens} prefix token(s) ({n_expected} tokens)."
        )
    if old_grid == new_grid:
        return posemb
    out = resample_abs_pos_embed(
        pe,
        new_size=list(new_grid),
        old_size=list(old_grid),
        num_prefix_tokens=num_prefix_tokens,
        interpolation=interpolation,
        antialias=antialias,
    )
    return out[0] if squeeze else out


def infer_grid(n_patches: int, like: tuple[int, int]) -> tuple[int, int]:
    """Guess the (rows, cols) grid of ``n_patches`` position embeddings found in a file.

    Square when ``n_patches`` is a square (every hub checkpoint), else the factor pair whose
    aspect ratio is closest to ``like`` (our own grid: a 16x8 file read by a 21x10 model). A file
    we saved carries its grid in its metadata, and ``pretrained_grid=`` overrides both guesses.
    """
    root = math.isqrt(n_patches)
    if root * root == n_patches:
        return (root, root)
    target = like[0] / like[1]
    pairs = [(r, n_patches // r) for r in range(1, n_patches + 1) if n_patches % r == 0]
    best = min(pairs, key=lambda p: abs(math.log(p[0] / p[1]) - math.log(target)))
    if best[0] == 1 or best[1] == 1:
        raise CheckpointError(
            f"Cannot tell the position grid of {n_patches} patch embeddings in the weight file; "
            "pass pretrained_grid=(rows, cols)."
        )
    return best


# --------------------------------------------------------------------------- the readout


def pooling_refusal(
    pool: Any,
    *,
    setting: str,
    cls_pools: Collection[Any],
    attention_pools: Collection[Any] = (),
) -> str | None:
    """Why a model that pools with ``pool`` cannot serve as a ReID backbone; None: it can.

    Kept for third-party families whose own pooling attrimp cannot run. The built-in families
    read a model's own pooling (`ViTBackbone.pools`) and refuse none by its kind: a model trained
    to average its patch tokens or to pool them with an attention head yields that pooled
    embedding, exactly as its library computes it. ``setting`` is the library's name for the
    option (``global_pool``, ``pool_type``), ``cls_pools`` its values that read the class token.
    """
    if pool in cls_pools:
        return None
    how = "with an attention head" if pool in attention_pools else "by averaging its patch tokens"
    return (
        f"pools {how} ({setting}={pool!r}), not through its class token, and this family "
        "cannot run that pooling"
    )


# --------------------------------------------------------------------------- the shared wrapper


class ViTBackbone(Backbone):
    """The family-independent half of a ViT backbone.

    Subclasses set ``self.inner`` (the library model) and implement `_tokens_before_blocks`,
    `_run_blocks`, `_final_norm`, `blocks`, `_site_module` and the position-embedding hooks.
    The camera embedding (SIE, as in TransReID) is one learned vector per camera added to every
    token after the position embedding. It is zero-initialised so that a fresh backbone with a
    camera table computes exactly what it computes without one; ``camids=None`` adds nothing.
    """

    family: str = "?"
    splits_forward = True  # forward_prefix / forward_suffix below
    #: the model pools its tokens (average, attention head) instead of reading its class token;
    #: the readout then prepends that pooled embedding to the tokens (see `_finish`)
    pools: bool = False
    #: the model has a class token (a feature router reads it at the first expert block)
    has_class_token: bool = True
    #: module-name suffixes of the linears that LoRA-on-the-backbone targets, per kind
    lora_targets: dict[str, tuple[str, ...]] = {}

    def __init__(
        self,
        *,
        cfg: PretrainedCfg,
        width: int,
        grid_size: tuple[int, int],
        num_prefix_tokens: int,
        camera_count: int = 0,
    ) -> None:
        super().__init__()
        self.pretrained_cfg = cfg
        self.width = int(width)
        self.img_size = tuple(cfg.img_size)
        self.grid_size = tuple(grid_size)
        self.num_prefix_tokens = int(num_prefix_tokens)
        if camera_count < 0:
            raise ConfigError(f"camera_count must be >= 0, got {camera_count}.")
        self.camera_count = int(camera_count)
        self.camera_embed = (
            nn.Parameter(torch.zeros(self.camera_count, self.width)) if self.camera_count else None
        )
        self.adapt_mode = "full"

    # ---- hooks for the family
    def _tokens_before_blocks(self, images: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Patch embedding + prefix tokens + position embedding -> ``([B, N, D], ctx)``; ``ctx``
        is whatever the blocks need besides the tokens (EVA's rotary embedding), else None."""
        raise NotImplementedError

    def _pre_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Anything between the embeddings (camera included) and the first block (ln_pre)."""
        return x

    def _run_blocks(
        self, x: torch.Tensor, ctx: Any = None, start: int = 0, stop: int | None = None
    ) -> torch.Tensor:
        """Blocks ``start`` to ``stop - 1`` (all by default)."""
        for blk in self.blocks[start:stop]:
            x = blk(x)
        return x

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _pool(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The model's own pooled embedding ``[B, width]`` from the last block's output ``x``
        and the final-normalised ``tokens``; only for ``pools`` backbones."""
        raise NotImplementedError

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's output -> the readout tokens: the embedding first.

        A class-token model: its final-normalised tokens, the class token first. A model that
        pools: its pooled embedding, computed by the library's own pooling code, prepended to
        the final-normalised tokens (``[B, 1 + N, D]``). So every reader of token 0 (the
        model's forward, the test-time sweep's split forward) gets the embedding the model was
        built to produce, and the expert sites (the blocks) are the same either way.
        """
        tokens = self._final_norm(x)
        if not self.pools:
            return tokens
        pooled = self._pool(x, tokens)
        return torch.cat([pooled.unsqueeze(1).to(tokens.dtype), tokens], dim=1)

    def route_feature(self, x: torch.Tensor) -> torch.Tensor:
        """One vector per image from tokens at a block's input: the class token, or the mean of
        the patch tokens for a model without one (what a feature router reads)."""
        if self.has_class_token:
            return x[:, 0]
        return x[:, self.num_prefix_tokens :].mean(dim=1)

    def _site_module(self, block: nn.Module, site: str) -> tuple[str, nn.Module]:
        """``(attr, module)`` of ``block`` for ``site`` ('mlp' or 'attn')."""
        raise NotImplementedError

    #: key (in this module's state dict) of the absolute position embedding, or None
    pos_embed_key: str | None = None
    #: how many leading rows of that tensor belong to prefix tokens (0 when they have none)
    pos_embed_prefix: int = 1
    #: state-dict keys of a classification head that a ReID backbone drops on load
    head_keys: tuple[str, ...] = ()

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a file's keys (the raw library model's, or ours) into this module's key space."""
        own = set(self.state_dict())
        out = {}
        for k, v in state.items():
            k = k.removeprefix("module.")
            wrapper_level = k in own or k.startswith("inner.") or k in WRAPPER_KEYS
            out[k if wrapper_level else f"inner.{k}"] = v
        return out

    # ---- the Backbone contract
    def forward_tokens(
        self, images: torch.Tensor, camids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, N, width]`` after the final norm, the embedding first
        (the class token; for a model that pools, its pooled embedding, prepended)."""
        if tuple(images.shape[-2:]) != self.img_size:
            raise DataError(
                f"images are {tuple(images.shape[-2:])} (height, width) but the backbone was "
                f"built for {self.img_size}; resize them or build with img_size={tuple(images.shape[-2:])}."
            )
        x, ctx = self._tokens_before_blocks(images)
        x = self._add_camera(x, camids)
        x = self._pre_blocks(x)
        x = self._run_blocks(x, ctx)
        return self._finish(x)

    def forward_prefix(
        self, images: torch.Tensor, camids: torch.Tensor | None = None, *, stop: int
    ) -> tuple[torch.Tensor, Any]:
        """Tokens at the input of block ``stop`` and the blocks' context: ``(x, ctx)``.

        With `forward_suffix` this splits `forward_tokens` exactly. Test-time ablations use it:
        only the expert blocks differ between configurations, so the prefix is computed once.
        """
        x, ctx = self._tokens_before_blocks(images)
        x = self._pre_blocks(self._add_camera(x, camids))
        return self._run_blocks(x, ctx, 0, stop), ctx

    def forward_suffix(self, x: torch.Tensor, ctx: Any = None, *, start: int) -> torch.Tensor:
        """Blocks ``start`` onwards and the readout (`_finish`), on tokens from `forward_prefix`."""
        return self._finish(self._run_blocks(x, ctx, start, None))

    def check_camids(self, camids: Any) -> None:
        """Raise `DataError` unless every camera id is in ``0..camera_count - 1``.

        Reading the ids' values is a host read; for ids that live on a GPU that is a stream
        synchronisation. So the hot paths validate ONCE, on the host, where the ids enter (the
        training loop over its whole training set, the condition sweep per split, feature
        extraction per loader batch before the copy to the device), and the forward itself
        reads no value of ids that are already on an accelerator (see `_add_camera`).
        """
        ids = torch.as_tensor(camids).detach().cpu()
        if ids.numel() == 0 or self.camera_embed is None:
            return
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.camera_count:
            raise DataError(
                f"camera id {hi if hi >= self.camera_count else lo} is outside the camera "
                f"table of {self.camera_count} cameras (ids 0..{self.camera_count - 1})."
            )

    def _add_camera(self, x: torch.Tensor, camids: torch.Tensor | None) -> torch.Tensor:
        """Add each image's camera vector to its tokens.

        The batch size is checked (metadata, free). The ids' values are checked only when they
        are host data (a CPU tensor, a list): reading them there costs no synchronisation. Ids
        on an accelerator were validated where they entered (`check_camids`); an id out of range
        there would otherwise cost two host synchronisations per step to catch.
        """
        if camids is None or self.camera_embed is None:
            return x
        on_host = not torch.is_tensor(camids) or camids.device.type == "cpu"
        camids = torch.as_tensor(camids, device=x.device).long().reshape(-1)
        if not torch.compiler.is_compiling():
            if camids.numel() != x.shape[0]:
                raise DataError(
                    f"got {camids.numel()} camera ids for a batch of {x.shape[0]} images."
                )
            if on_host:
                self.check_camids(camids)
        return x + self.camera_embed[camids].to(x.dtype).unsqueeze(1)

    def expert_site(self, block_index: int, site: str) -> ExpertSite:
        """The sub-layer of block ``block_index`` the expert bank wraps.

        ``mlp``: the block's MLP; its input is the normalised hidden state (``norm2(x)`` /
        ``ln_2(x)``) and its output is added residually (through layer-scale / drop-path where
        the block has them). ``attn``: the attention sub-layer, first positional argument the
        normalised input; in open_clip it is ``nn.MultiheadAttention`` whose output is a tuple
        (the wrapper adds to element 0). Tokens are always batch-first ``[B, N, D]`` here: the
        clip family switches open_clip's sequence-first layout off at build time.
        """
        blocks = self.blocks
        if not -len(blocks) <= block_index < len(blocks):
            raise ConfigError(
                f"block index {block_index} is out of range for a backbone of {len(blocks)} blocks."
            )
        if site not in ("mlp", "attn"):
            raise ConfigError(f"unknown expert site {site!r}; known sites: 'mlp', 'attn'.")
        block = blocks[block_index]
        attr, _module = self._site_module(block, site)
        return ExpertSite(parent=block, attr=attr, in_features=self.width, out_features=self.width)

    # ---- position grid
    def _get_pos_embed(self) -> torch.Tensor | None:
        if self.pos_embed_key is None:
            return None
        return self.get_parameter(self.pos_embed_key)

    def _set_pos_embed(self, value: torch.Tensor) -> None:
        owner_name, _, attr = self.pos_embed_key.rpartition(".")
        owner = self.get_submodule(owner_name) if owner_name else self
        old = getattr(owner, attr)
        setattr(owner, attr, nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad))

    def _resample_own_pos_embed(self, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> None:
        pe = self._get_pos_embed()
        if pe is None:
            return
        with torch.no_grad():
            self._set_pos_embed(
                resample_pos_embed(pe, new_grid, old_grid, num_prefix_tokens=self.pos_embed_prefix)
            )

    # ---- parameter accounting
    def count_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def extra_repr(self) -> str:
        return (
            f"name={self.pretrained_cfg.name!r}, img_size={self.img_size}, grid={self.grid_size}, "
            f"width={self.width}, depth={len(self.blocks)}, cameras={self.camera_count}, "
            f"adapt={self.adapt_mode!r}, readout={'pooled' if self.pools else 'class token'}"
        )


def freeze(module: nn.Module, *, keep: Sequence[str] = ()) -> None:
    """``requires_grad=False`` on every parameter whose name does not start with one of ``keep``."""
    for name, p in module.named_parameters():
        p.requires_grad_(any(name.startswith(k) for k in keep))


# --------------------------------------------------------------------------- families


class BackboneFamily:
    """One library's ViTs, registered under ``name`` (``clip``, ``timm``, a third party's).

    A family validates model names and pretrained tags *before* anything is built or
    downloaded, describes its models for ``attrimp backbones list``, and builds a `ViTBackbone`
    at the ReID input size. Third parties subclass it and register it with
    ``@backbones.register_family("name")`` or the ``attrimp.backbones`` entry-point group.
    """

    name: str = "?"
    description: str = ""

    def list_models(self) -> list[str]:
        """Every model name this family can build (without the ``family:`` prefix)."""
        raise NotImplementedError

    def featured_models(self) -> list[str]:
        """The handful shown by ``attrimp backbones list`` without ``--all``."""
        return self.list_models()[:10]

    def list_pretrained(self, model: str) -> list[str]:
        """The pretrained tags known for ``model`` (may be empty)."""
        return []

    def has_model(self, model: str) -> bool:
        return model in self.list_models()

    def unsupported_reason(self, model: str) -> str | None:
        """Why a model the library knows cannot be built here (None: unknown to the library).

        Lets `build` say "known, but not supported because ..." instead of "unknown model" with
        look-alike suggestions for a real model of the wrong kind (a Swin, a ResNet, ...).
        """
        return None

    def weight_source(self, model: str, tag: str) -> tuple[str | None, str | None]:
        """``(hf_hub_repo, url)`` the library fetches ``tag``'s weights from (None: unknown).

        Used only to check, before a download, that the weights are cached or their host is
        reachable, so that no network fails in seconds instead of a minute of retries.
        """
        return None, None

    def describe(self, model: str) -> dict[str, Any]:
        """``width``, ``depth``, ``input_size`` (native) and ``tags`` of ``model``, cheaply."""
        return {
            "width": None,
            "depth": None,
            "input_size": None,
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
    ) -> ViTBackbone:
        """A backbone at ``img_size`` with random weights (``tag=None``) or the tag's weights."""
        raise NotImplementedError


#: names that moved to `backbones.weights`, still importable from here (``from backbones.base
#: import load_weights``); resolved lazily because `backbones.weights` imports this module
_MOVED_TO_WEIGHTS = frozenset(
    {"load_weights", "read_state_dict", "save_weights", "unwrap_site_keys"}
)


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_WEIGHTS:
        from backbones import weights

        return getattr(weights, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

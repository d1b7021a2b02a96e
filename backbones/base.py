"""What every ViT family shares: the weight-source record, position-embedding resampling,
the camera (SIE) embedding, overlapping-stride grids, and loading weights whose shapes differ.

A family module (``clip.py``, ``timm_vit.py``, a third party's) subclasses `ViTBackbone`, wraps
its library's model as ``self.inner`` and implements the few family-specific hooks; everything
that is the same for all ViTs lives here once.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
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
        """``[B, 3, H, W]`` -> ``[B, N, width]`` after the final norm, CLS first."""
        if tuple(images.shape[-2:]) != self.img_size:
            raise DataError(
                f"images are {tuple(images.shape[-2:])} (height, width) but the backbone was "
                f"built for {self.img_size}; resize them or build with img_size={tuple(images.shape[-2:])}."
            )
        x, ctx = self._tokens_before_blocks(images)
        x = self._add_camera(x, camids)
        x = self._pre_blocks(x)
        x = self._run_blocks(x, ctx)
        return self._final_norm(x)

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
        """Blocks ``start`` onwards and the final norm, on tokens from `forward_prefix`."""
        return self._final_norm(self._run_blocks(x, ctx, start, None))

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
            f"adapt={self.adapt_mode!r}"
        )


# --------------------------------------------------------------------------- weight files


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a weight file: safetensors first, else a torch file loaded with
    ``weights_only=True`` (never a pickle of arbitrary objects)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(
                f"weight file {path} is not a readable safetensors file: {exc}."
            ) from None
    if path.suffix not in (".pt", ".pth", ".bin", ".ckpt"):
        raise CheckpointError(
            f"weight file {path} has an unknown extension; use .safetensors, .pt, .pth or .bin."
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"weight file {path} could not be read as a tensor-only torch file "
            f"(weights_only=True): {str(exc).splitlines()[0]}"
        ) from None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"weight file {path} does not hold a state dict of tensors.")
    return dict(obj), {}


def save_weights(backbone: ViTBackbone, path: str | Path) -> Path:
    """Save a backbone's state dict as safetensors, with its grid and name in the metadata so
    that a model at another input size can resample the position embedding exactly."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}
    state = unwrap_site_keys(state, backbone)  # an attached expert bank leaves no trace
    cfg = backbone.pretrained_cfg
    meta = {
        "format": "attrimp.backbone/1",
        "name": cfg.name,
        "grid_size": f"{backbone.grid_size[0]},{backbone.grid_size[1]}",
        "img_size": f"{backbone.img_size[0]},{backbone.img_size[1]}",
        "camera_count": str(backbone.camera_count),
    }
    save_file(state, str(path), metadata=meta)
    return path


def load_weights(
    backbone: ViTBackbone,
    path: str | Path,
    *,
    pretrained_grid: tuple[int, int] | None = None,
) -> list[str]:
    """Load a weight file into ``backbone``, adapting what can be adapted.

    Adapts: the position embedding (resampled from the file's grid to ours), a classifier head
    (dropped: a ReID backbone has none), a camera table of another size (common rows copied, a
    warning). Anything else whose shape differs, or a tensor the model needs that the file lacks,
    is a CheckpointError that names the tensor, both shapes and why. Returns notes on what was
    adapted (also issued as warnings when they lose information).
    """
    raw, meta = read_state_dict(path)
    raw = _backbone_of_mosaic(raw, meta)
    state = unwrap_site_keys(backbone.convert_state_dict(raw), backbone)
    own = unwrap_site_keys(backbone.state_dict(), backbone)
    file_grid = pretrained_grid
    if file_grid is None and "grid_size" in meta:
        file_grid = tuple(int(v) for v in meta["grid_size"].split(","))
    notes: list[str] = []
    # The helpers warn with stacklevel=3: the warning points at the caller of load_weights.
    adapted = _adapted_tensors(backbone, path, state, own, file_grid, notes)
    _reconcile_camera_table(path, state, own, adapted, notes)
    _check_complete(path, state, own, adapted)
    _note_unexpected(backbone, path, state, own, notes)
    backbone.load_state_dict(_rewrap_site_keys(adapted, backbone), strict=True)
    return notes


def _is_head(backbone: ViTBackbone, key: str) -> bool:
    """A classifier tensor (with or without the wrapper's ``inner.`` prefix)."""
    return key in backbone.head_keys or key.removeprefix("inner.") in backbone.head_keys


def _adapted_tensors(
    backbone: ViTBackbone,
    path: str | Path,
    state: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    file_grid: tuple[int, ...] | None,
    notes: list[str],
) -> dict[str, torch.Tensor]:
    """The file's tensors the model has a place for, each of the model's shape: equal shapes
    as they are, the position embedding resampled, a camera table of another size resized;
    any other shape difference is a `CheckpointError`."""
    adapted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if _is_head(backbone, key):
            notes.append(f"dropped classifier tensor {key} {tuple(value.shape)}")
            continue
        if key not in own:
            continue
        want = own[key]
        if tuple(value.shape) == tuple(want.shape):
            adapted[key] = value
        elif key == backbone.pos_embed_key:
            adapted[key], note = _resampled_pos_embed(backbone, path, key, value, want, file_grid)
            notes.append(note)
        elif key == "camera_embed" and value.dim() == 2 and value.shape[1] == want.shape[1]:
            adapted[key], msg = _resized_camera_table(path, value, want)
            warnings.warn(msg, stacklevel=3)
            notes.append(msg)
        else:
            raise CheckpointError(
                f"{path}: tensor {key} has shape {tuple(value.shape)} in the file but "
                f"{tuple(want.shape)} in the model ({_why(key, backbone)})."
            )
    return adapted


def _resampled_pos_embed(
    backbone: ViTBackbone,
    path: str | Path,
    key: str,
    value: torch.Tensor,
    want: torch.Tensor,
    file_grid: tuple[int, ...] | None,
) -> tuple[torch.Tensor, str]:
    """The file's position embedding resampled from its grid (the file's metadata, or inferred
    from its length) to the backbone's, and a note saying so."""
    n_patch = value.reshape(-1, value.shape[-1]).shape[0] - backbone.pos_embed_prefix
    if value.shape[-1] != want.shape[-1]:
        raise CheckpointError(
            f"{path}: tensor {key} has width {value.shape[-1]} in the file but "
            f"{want.shape[-1]} in the model {tuple(want.shape)}; it is another architecture."
        )
    grid = file_grid or infer_grid(n_patch, backbone.grid_size)
    value = value.reshape(want.shape[:-2] + (-1, value.shape[-1]))
    out = resample_pos_embed(
        value, backbone.grid_size, grid, num_prefix_tokens=backbone.pos_embed_prefix
    )
    return out, f"resampled {key} from the grid {tuple(grid)} in the file to {backbone.grid_size}"


def _resized_camera_table(
    path: str | Path, value: torch.Tensor, want: torch.Tensor
) -> tuple[torch.Tensor, str]:
    """A camera table of another size: the common rows copied, the rest zero (or dropped)."""
    n = min(value.shape[0], want.shape[0])
    new = want.clone()
    new[:n] = value[:n]
    msg = (
        f"{path}: the camera table has {value.shape[0]} cameras in the file and "
        f"{want.shape[0]} in the model; copied the first {n}"
        + (", the rest stay zero" if want.shape[0] > n else ", dropped the rest")
    )
    return new, msg


def _reconcile_camera_table(
    path: str | Path,
    state: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    adapted: dict[str, torch.Tensor],
    notes: list[str],
) -> None:
    """A camera table on one side only: the model's stays zero, or the file's is ignored."""
    if "camera_embed" in own and "camera_embed" not in state:
        msg = f"{path} has no camera table; the camera embedding stays zero-initialised"
        warnings.warn(msg, stacklevel=3)
        notes.append(msg)
        adapted["camera_embed"] = own["camera_embed"]
    if "camera_embed" in state and "camera_embed" not in own:
        msg = (
            f"{path} has a camera table but the backbone was built with camera_count=0; ignored it"
        )
        warnings.warn(msg, stacklevel=3)
        notes.append(msg)


def _check_complete(
    path: str | Path,
    state: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    adapted: Mapping[str, torch.Tensor],
) -> None:
    """A `CheckpointError` naming the first tensor the model needs that the file lacks."""
    missing = [k for k in own if k not in adapted]
    if missing:
        close = difflib.get_close_matches(missing[0], list(state), n=1)
        hint = f" (the file has {close[0]!r})" if close else ""
        raise CheckpointError(
            f"{path} lacks {len(missing)} tensor(s) the model needs, first {missing[0]!r} "
            f"{tuple(own[missing[0]].shape)}{hint}; it was saved from another architecture."
        )


def _note_unexpected(
    backbone: ViTBackbone,
    path: str | Path,
    state: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    notes: list[str],
) -> None:
    """Warn about the file's tensors the backbone has no place for (heads and cameras aside)."""
    unexpected = [
        k for k in state if k not in own and not _is_head(backbone, k) and k != "camera_embed"
    ]
    if unexpected:
        msg = f"{path}: ignored {len(unexpected)} tensor(s) the backbone has no place for, e.g. {unexpected[:3]}"
        warnings.warn(msg, stacklevel=3)
        notes.append(msg)


#: the ``attrimp`` metadata value of a MoSAIC-ReID ``model.safetensors``
_MOSAIC_FORMAT = "attrimp.mosaic-reid/"


def _backbone_of_mosaic(state: dict[str, torch.Tensor], meta: dict[str, str]):
    """The backbone tensors of a MoSAIC-ReID ``model.safetensors`` (experts and head dropped),
    so a fine-tuned model can seed a backbone; any other file is returned as it is."""
    if not str(meta.get("attrimp", "")).startswith(_MOSAIC_FORMAT):
        return state
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


def _site_prefixes(backbone: ViTBackbone) -> list[str]:
    """State-dict prefixes of the sub-layers an expert bank may wrap (``inner.blocks.3.mlp``)."""
    names = {id(m): n for n, m in backbone.named_modules()}
    out = []
    for i in range(len(backbone.blocks)):
        for site in ("mlp", "attn"):
            try:
                where = backbone.expert_site(i, site)
            except (ConfigError, NotImplementedError):  # a site this backbone does not offer
                continue
            out.append(f"{names[id(where.parent)]}.{where.attr}")
    return out


def unwrap_site_keys(state: dict[str, torch.Tensor], backbone: ViTBackbone):
    """Keys as if no expert bank were attached: the bank's wrapper holds the original
    sub-layer as ``base``, so ``<site>.base.<rest>`` becomes ``<site>.<rest>``."""
    renames = {f"{p}.base.": f"{p}." for p in _site_prefixes(backbone)}
    out = {}
    for key, value in state.items():
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


def _rewrap_site_keys(state: dict[str, torch.Tensor], backbone: ViTBackbone):
    """The inverse of `unwrap_site_keys` for this backbone's own (possibly wrapped) keys."""
    own = list(backbone.state_dict())
    to_own = dict(zip(unwrap_site_keys(dict.fromkeys(own), backbone), own))
    return {to_own.get(k, k): v for k, v in state.items()}


def _why(key: str, backbone: ViTBackbone) -> str:
    leaf = key.rsplit(".", 1)[-1]
    if "patch_embed" in key or "conv1" in key:
        return "the patch size or channel count differs"
    if leaf in ("weight", "bias") or "qkv" in key:
        return "the width, depth or MLP ratio differs: it is another architecture"
    return "no rule adapts this tensor"


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

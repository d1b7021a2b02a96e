"""Weight files of a ViT backbone: reading them safely, saving ours, loading a file whose shapes
differ from the model's.

`read_state_dict` opens safetensors first and torch files only with ``weights_only=True``;
`save_weights` writes the grid and name into the metadata so another input size can resample the
position embedding exactly; `load_weights` adapts what can be adapted (position embedding,
classifier head, camera table) and names the tensor, both shapes and why for anything else. An
attached expert bank leaves no trace in a file (`unwrap_site_keys`). Moved out of ``base.py``,
which keeps the ViT wrapper and the grid maths these functions call.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from attrimp.errors import CheckpointError, ConfigError
from backbones.base import infer_grid, resample_pos_embed

if TYPE_CHECKING:
    from backbones.base import ViTBackbone

__all__ = ["load_weights", "read_state_dict", "save_weights", "unwrap_site_keys"]


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

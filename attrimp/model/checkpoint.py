"""MoSAIC-ReID checkpoints: a folder with ``model.safetensors`` and ``config.json``. No pickle.

``config.json`` holds everything needed to rebuild the model without the original files or a
download: the `MoSAICConfig`, the attribute schema itself (not its path), the SHA-256 of the
weight file and the caller's metadata (epoch, metrics, ...). Both files are written to a
temporary name and moved into place with ``os.replace``, weights first, so an interrupted save
never leaves a half-written file under the real name, and the hash catches a weight file that
does not belong to its config. Loading into an existing model compares the saved `MoSAICConfig`
with the model's first: a checkpoint trained with another alpha, pooling, rank, block count,
schema, ... is refused with the differing keys named, even where every tensor shape agrees
(alpha only scales the experts, so a shape check alone would load it silently).

    save_checkpoint(model, "runs/exp1/ckpt", metadata={"epoch": 60})
    model = load_model("runs/exp1/ckpt")            # rebuilt from JSON, weights loaded
    load_weights(other_model, "runs/exp1/ckpt")     # into an existing model, shapes checked
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import attrimp
from attrimp.errors import AttrimpError, CheckpointError
from attrimp.io import atomic_write_text, sha256_file, tmp_name
from attrimp.model.mosaic import MoSAICConfig, MoSAICReID
from attrimp.model.schema import AttributeSchema

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "attrimp.mosaic-reid/1"
#: `MoSAICConfig` fields that do not change what the saved weights compute: where the initial
#: weights came from, and a training-time dropout
IGNORED_ON_LOAD = ("pretrained", "dropout")
#: ``config.json`` model keys written before the model config took the TOML names (and before
#: ``bank``, which such checkpoints lack: their bank was the only one then, ``adapter``)
LEGACY_MODEL_KEYS = {"expert_blocks": "blocks", "expert_dropout": "dropout"}


@dataclass(frozen=True)
class CheckpointInfo:
    """What ``config.json`` says: rebuild recipe, schema, weight file and metadata."""

    path: Path
    config: MoSAICConfig
    schema: AttributeSchema
    metadata: dict[str, Any]
    weights: Path
    sha256: str


def save_checkpoint(
    model: MoSAICReID, path: str | Path, *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` to the folder ``path`` (created if needed); returns the folder."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile'd model: save the original
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        meta_json = json.loads(json.dumps(metadata or {}))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"Checkpoint metadata must be JSON-serialisable: {e}.") from None

    weights = folder / WEIGHTS_FILE
    tmp = tmp_name(weights)
    # the backbone's grid in the metadata lets `backbones.build(pretrained=<this file>)` resample
    # the position embedding exactly at another input size
    grid = ",".join(str(v) for v in model.backbone.grid_size)
    try:
        save_file(
            _plain_state(model),
            str(tmp),
            metadata={"format": "pt", "attrimp": FORMAT, "grid_size": grid},
        )
        digest = sha256_file(tmp)
        os.replace(tmp, weights)
    finally:
        tmp.unlink(missing_ok=True)

    document = {
        "format": FORMAT,
        "attrimp_version": attrimp.__version__,
        "model": model.config.to_dict(),
        "schema": model.schema.to_dict(),
        "router": model.router.name,
        "weights": {"file": WEIGHTS_FILE, "sha256": digest},
        "metadata": meta_json,
    }
    atomic_write_text(folder / CONFIG_FILE, json.dumps(document, indent=2, sort_keys=True))
    return folder


def read_checkpoint(path: str | Path) -> CheckpointInfo:
    """Parse and check ``config.json`` (no weights are read)."""
    folder = _folder(path)
    cfg_path = folder / CONFIG_FILE
    try:
        document = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"Checkpoint folder {str(folder)!r} has no {CONFIG_FILE}.") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"Checkpoint file {str(cfg_path)!r} is not valid JSON: {e}."
        ) from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise CheckpointError(
            f"Checkpoint file {str(cfg_path)!r} has format {found!r}, not {FORMAT!r}."
        )
    try:
        config = MoSAICConfig.from_dict(
            upgrade_model_dict(document["model"]), source=f"checkpoint {str(cfg_path)!r}"
        )
        schema = AttributeSchema.from_dict(
            document["schema"], source=f"checkpoint {str(cfg_path)!r}"
        )
        weights = folder / document["weights"]["file"]
        sha = str(document["weights"]["sha256"])
    except KeyError as e:
        raise CheckpointError(
            f"Checkpoint file {str(cfg_path)!r} lacks the key {e.args[0]!r}."
        ) from None
    except AttrimpError as e:
        raise CheckpointError(str(e)) from None
    return CheckpointInfo(folder, config, schema, dict(document.get("metadata", {})), weights, sha)


def upgrade_model_dict(model: dict[str, Any]) -> dict[str, Any]:
    """A saved model config under today's key names (`LEGACY_MODEL_KEYS` renamed); a missing
    ``bank`` is the default, ``adapter``, the bank every older checkpoint was trained with."""
    return {LEGACY_MODEL_KEYS.get(key, key): value for key, value in model.items()}


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> MoSAICReID:
    """Rebuild the model from ``config.json`` and load its weights (nothing is downloaded)."""
    info = read_checkpoint(path)
    # The weights come from the checkpoint: build the architecture only.
    model = MoSAICReID(dataclasses.replace(info.config, pretrained=None), schema=info.schema)
    model.config = info.config
    _load_into(model, info)
    return model.to(device)


def load_weights(model: MoSAICReID, path: str | Path) -> CheckpointInfo:
    """Load a checkpoint's weights into an existing model; any mismatch is a CheckpointError.

    The saved config must equal the model's in every field that changes what the weights
    compute (all but `IGNORED_ON_LOAD`), and the saved schema must equal the model's.
    """
    info = read_checkpoint(path)
    model = getattr(model, "_orig_mod", model)  # a torch.compile'd model: its original
    differences = config_differences(info, model)
    if differences:
        raise CheckpointError(
            f"Checkpoint {str(info.path)!r} was saved with another model config than the model "
            f"it is loaded into: {'; '.join(differences)}. Build the model with the "
            "checkpoint's settings, or rebuild it from the checkpoint with load_model."
        )
    _load_into(model, info)
    return info


def config_differences(info: CheckpointInfo, model: MoSAICReID) -> list[str]:
    """``"key <saved> in the checkpoint but <value> in the model"`` for each differing field."""
    saved, target = info.config.to_dict(), model.config.to_dict()
    out = []
    for key in saved:
        if key in IGNORED_ON_LOAD or key == "schema":
            continue
        a, b = _comparable(saved[key]), _comparable(target.get(key))
        if a != b:
            out.append(
                f"{key} {saved[key]!r} in the checkpoint but {target.get(key)!r} in the model"
            )
    if info.schema.to_dict() != model.schema.to_dict():
        out.append(
            f"schema {info.schema.name!r} ({info.schema.n_experts} experts) in the checkpoint but "
            f"{model.schema.name!r} ({model.schema.n_experts} experts) in the model"
        )
    return out


def _comparable(value: Any) -> Any:
    """Tuples and lists compare equal (JSON has only lists); ints and floats compare by value."""
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------------- internals


def _load_into(model: MoSAICReID, info: CheckpointInfo) -> None:
    if not info.weights.is_file():
        raise CheckpointError(f"Checkpoint weight file {str(info.weights)!r} does not exist.")
    if sha256_file(info.weights) != info.sha256:
        raise CheckpointError(
            f"Checkpoint weight file {str(info.weights)!r} does not match the SHA-256 recorded in "
            f"its {CONFIG_FILE}; it was replaced or is corrupt."
        )
    try:
        state = load_file(str(info.weights), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{str(info.weights)!r} is not a readable safetensors file: {e}."
        ) from None

    own = model.state_dict()
    schemas = ""
    if info.schema.to_dict() != model.schema.to_dict():
        schemas = (
            f" (the checkpoint has schema {info.schema.name!r} with {info.schema.n_experts} "
            f"experts, the model {model.schema.name!r} with {model.schema.n_experts})"
        )
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"Checkpoint tensor {key!r} has shape {list(value.shape)} but the model's has "
                f"{list(own[key].shape)}{schemas}."
            )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = (
            f"lacks the model's tensor {missing[0]!r} ({len(missing)} missing)"
            if missing
            else f"has the tensor {unexpected[0]!r} that the model lacks ({len(unexpected)} extra)"
        )
        raise CheckpointError(f"Checkpoint {str(info.path)!r} {what}{schemas}.")
    if schemas:
        raise CheckpointError(
            f"Checkpoint {str(info.path)!r} was trained with another schema{schemas}."
        )
    model.load_state_dict(state, strict=True)


def _plain_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors, each owning its memory.

    safetensors refuses tensors that share storage; cloning the second of a shared pair is
    enough, since loading copies the same values into both names.
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in model.state_dict().items():
        t = value.detach().to("cpu").contiguous()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset())
        if ident in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add((t.untyped_storage().data_ptr(), t.storage_offset()))
        out[key] = t
    return out


def _folder(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.name in (CONFIG_FILE, WEIGHTS_FILE):
        p = p.parent
    if not p.is_dir():
        raise CheckpointError(f"Checkpoint folder {str(p)!r} does not exist.")
    return p

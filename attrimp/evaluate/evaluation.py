"""From a model (or saved features) to the ReID result tables of ``docs/architecture.md``.

* `extract_features` runs a model over a loader (no grad, bf16 autocast on CUDA; a progress
  bar when asked, as the CLI does);
* `evaluate_features` turns query/gallery features into an `EvalResult` (distances, optional
  k-reciprocal re-ranking, the Market-1501 protocol of `attrimp.evaluate.metrics.evaluate`);
* `per_query_table` / `config_table` write the two tables the studies battery reads;
* `save_features` / `load_features` keep features in a file (``.npz`` or ``.safetensors``) so
  that evaluation can be rerun, re-ranked or re-tabulated without the model.

The table builders take plain arrays, not a model, so anything that produces a distance matrix
can feed the studies battery.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence, Sized
from functools import partial
from pathlib import Path, PurePath
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from attrimp.errors import DataError
from attrimp.evaluate.metrics import EvalResult, evaluate, pairwise_distance
from attrimp.model.mosaic import ModelOutput, MoSAICReID
from attrimp.progress import progress_bar

__all__ = [
    "FeatureSet",
    "attribute_frame",
    "config_table",
    "evaluate_features",
    "extract_features",
    "gate_columns",
    "load_features",
    "mask_columns",
    "per_query_table",
    "save_features",
]

#: the columns every per-query row carries, in order (attributes and gates/mask follow)
PER_QUERY_COLUMNS = ("config", "query", "pid", "camid")
METRIC_COLUMNS = ("ap", "rank1", "first_hit", "inp")
CONFIG_COLUMNS = ("config", "mAP", "rank1", "rank5", "rank10", "mINP")

logger = logging.getLogger(__name__)


class FeatureSet(NamedTuple):
    """Features of one split with what evaluation needs about each image."""

    features: torch.Tensor  # [N, D] float32 (float64 if loaded so), on the CPU
    pids: np.ndarray  # [N] int64
    camids: np.ndarray  # [N] int64
    attributes: np.ndarray | None = None  # [N, n_slots] float32 multi-hot, when the loader has it
    ids: list[str] | None = None  # image ids (file names) when known


# --------------------------------------------------------------------------------------------
# feature extraction


def _unpack(batch: Any) -> tuple[torch.Tensor, Any, Any, Any, Any]:
    """(images, pids, camids, attributes, ids) from a dict batch or an ``attrimp.data`` tuple
    ``(image, pid, camid, attributes, index)``."""
    if isinstance(batch, Mapping):

        def get(*names):
            return next((batch[n] for n in names if n in batch), None)

        images = get("images", "image", "img")
        if images is None:
            raise DataError(f"A batch has no 'images' entry; its keys are {sorted(batch)}.")
        return (
            images,
            get("pids", "pid"),
            get("camids", "camid"),
            get("attributes", "attrs"),
            get("ids", "paths", "path", "names", "index"),
        )
    if isinstance(batch, (tuple, list)) and len(batch) >= 3:
        rest = list(batch[3:]) + [None, None]
        return batch[0], batch[1], batch[2], rest[0], rest[1]
    raise DataError(
        "A batch must be a mapping with 'images', 'pids', 'camids' or a tuple "
        "(images, pids, camids[, attributes[, ids]])."
    )


def _uses_cameras(model: torch.nn.Module) -> bool:
    """Whether the model is given camera ids: every model except a `MoSAICReID` built without
    camera embeddings (``camera_count = 0``)."""
    return not isinstance(model, MoSAICReID) or model.config.camera_count > 0


def _ids(x: Any) -> list[str]:
    if isinstance(x, torch.Tensor):
        x = x.tolist()
    return [str(v.name if isinstance(v, PurePath) else v) for v in x]


def _features_of(out: Any) -> torch.Tensor:
    """The retrieval feature of a forward's output: a `ModelOutput`'s ``features``, or the
    tensor a plain feature extractor returns."""
    if isinstance(out, ModelOutput):
        return out.features
    if isinstance(out, torch.Tensor):
        return out
    raise TypeError(
        f"The model returned a {type(out).__name__}; extract_features needs a ModelOutput "
        "or a feature tensor."
    )


def _to(x: Any, device: torch.device) -> torch.Tensor | None:
    return None if x is None else torch.as_tensor(x).to(device, non_blocking=True)


class _Batch(NamedTuple):
    """What one forward pass contributes, already on the host."""

    features: torch.Tensor  # [B, D] float32
    pids: np.ndarray  # [B] int64
    camids: np.ndarray  # [B] int64
    attributes: np.ndarray | None  # [B, n_slots] float32
    ids: list[str] | None


def _host_ints(x: Any) -> np.ndarray:
    return np.asarray(torch.as_tensor(x).cpu(), dtype=np.int64)


def _forward_batch(
    model: torch.nn.Module,
    batch: Any,
    device: torch.device,
    *,
    cameras: bool,
    autocast: bool,
    model_kwargs: Mapping[str, Any],
) -> _Batch:
    """One forward pass (bf16 autocast on CUDA when ``autocast``); everything back on the host."""
    images, pid, camid, attr, idx = _unpack(batch)
    images = images.to(device, non_blocking=True)
    if cameras and camid is not None and isinstance(model, MoSAICReID):
        model.check_camids(camid)  # on the host, before the copy to the device
    cam_t, attr_t = _to(camid, device), _to(attr, device)
    with torch.autocast(
        device_type=device.type,
        dtype=torch.bfloat16,
        enabled=autocast and device.type == "cuda",
    ):
        out = model(images, attr_t, cam_t if cameras else None, **model_kwargs)
    return _Batch(
        features=_features_of(out).float().cpu(),
        pids=_host_ints(pid),
        camids=_host_ints(camid),
        attributes=None if attr is None else torch.as_tensor(attr).float().cpu().numpy(),
        ids=None if idx is None else _ids(idx),
    )


def _collect(batches: Sequence[_Batch]) -> FeatureSet:
    """One `FeatureSet` from the batches; attributes and ids only when every batch had them."""
    if not batches:
        raise DataError("The loader yielded no batch: there is nothing to evaluate.")
    attrs = [b.attributes for b in batches if b.attributes is not None]
    ids = [i for b in batches if b.ids is not None for i in b.ids]
    n = sum(len(b.features) for b in batches)
    return FeatureSet(
        features=torch.cat([b.features for b in batches]),
        pids=np.concatenate([b.pids for b in batches]),
        camids=np.concatenate([b.camids for b in batches]),
        attributes=np.concatenate(attrs) if len(attrs) == len(batches) else None,
        ids=ids if len(ids) == n else None,
    )


def _progress_bar(progress: bool) -> Any:
    """The extraction bar (`attrimp.progress`; ``progress=False``: one that draws nothing)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    return progress_bar(progress, *columns)


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    loader: Iterable,
    device: str | torch.device,
    *,
    autocast: bool = True,
    progress: bool = False,
    description: str = "features",
    model_kwargs: Mapping[str, Any] | None = None,
) -> FeatureSet:
    """Run ``model(images, attributes, camids)`` over ``loader`` and collect the features.

    The model returns a `ModelOutput` (its ``features`` are kept) or a feature tensor.  It is
    put in eval mode for the pass (BNNeck uses its running statistics) and its previous mode is
    restored.  On CUDA the forward runs under bf16 autocast; features are returned in float32
    on the CPU.  ``model_kwargs`` go to every call (e.g. ``router=``).  Quiet by default (a
    library call); ``progress=True`` shows a progress bar, as the CLI does.
    """
    device = torch.device(device)
    total = len(loader) if isinstance(loader, Sized) else None
    step = partial(
        _forward_batch,
        model,
        device=device,
        cameras=_uses_cameras(model),
        autocast=autocast,
        model_kwargs=dict(model_kwargs or {}),
    )
    was_training = model.training
    model.eval()
    batches: list[_Batch] = []
    try:
        with _progress_bar(progress) as bar:
            task = bar.add_task(description, total=total)
            for batch in loader:
                batches.append(step(batch))
                bar.advance(task)
    finally:
        model.train(was_training)
    result = _collect(batches)
    logger.info("%s: %d images, %d-dimensional features", description, *result.features.shape)
    return result


# --------------------------------------------------------------------------------------------
# evaluation


def evaluate_features(
    query: FeatureSet,
    gallery: FeatureSet,
    *,
    metric: str = "euclidean",
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    max_rank: int = 50,
    device: str | torch.device | None = None,
) -> EvalResult:
    """Distances (optionally k-reciprocal re-ranked) and the Market-1501 protocol metrics."""
    if rerank:
        from attrimp.evaluate.rerank import rerank_features

        dist = rerank_features(
            query.features,
            gallery.features,
            metric=metric,
            k1=k1,
            k2=k2,
            lambda_value=lambda_value,
            device=device,
        )
    else:
        dist = pairwise_distance(query.features, gallery.features, metric, device=device)
    return evaluate(dist, query.pids, gallery.pids, query.camids, gallery.camids, max_rank)


# --------------------------------------------------------------------------------------------
# tables


def attribute_frame(multihot: np.ndarray | torch.Tensor, schema) -> pd.DataFrame:
    """Multi-hot attributes -> one column per schema group holding the value name (or
    ``unknown`` / ``multiple``), the form the result table stores."""
    a = multihot.detach().cpu().numpy() if isinstance(multihot, torch.Tensor) else multihot
    return pd.DataFrame(schema.decode(np.asarray(a)))


def gate_columns(
    gates: np.ndarray | torch.Tensor, expert_names: Sequence[str], *, prefix: str = "gate_"
) -> dict[str, np.ndarray]:
    """Per-query gates ``[n_query, n_experts]`` as ``{prefix + expert name: column}``."""
    g = gates.detach().float().cpu().numpy() if isinstance(gates, torch.Tensor) else gates
    g = np.asarray(g)
    if g.ndim != 2 or g.shape[1] != len(expert_names):
        raise DataError(
            f"gates have shape {g.shape} but there are {len(expert_names)} expert names."
        )
    return {f"{prefix}{name}": g[:, i] for i, name in enumerate(expert_names)}


def mask_columns(group_mask: Mapping[str, Any], *, prefix: str = "on_") -> dict[str, int]:
    """A group mask ``{group: on}`` as 0/1 columns ``{prefix + group: 0|1}``."""
    return {f"{prefix}{g}": int(bool(on)) for g, on in group_mask.items()}


def _column_values(name: str, value: Any, n: int) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if np.ndim(value) == 0:
        return value
    arr = np.asarray(value)
    if arr.ndim != 1 or len(arr) != n:
        raise DataError(
            f"Column {name!r} has {arr.shape} values but the table has {n} queries; give one "
            "value per query or a single value."
        )
    return arr


def per_query_table(
    result: EvalResult,
    *,
    query_ids: Sequence[Any] | None,
    q_pids: Any,
    q_camids: Any,
    attributes: pd.DataFrame | None,
    config: str,
    gates_or_mask: Mapping[str, Any] | None = None,
    include_skipped: bool = False,
) -> pd.DataFrame:
    """The ReID result table: one row per query of one configuration.

    Columns: ``config``, ``query``, ``pid``, ``camid``, the attribute columns (``attributes``:
    one row per query, in query order — see `attribute_frame`), ``ap``, ``rank1``,
    ``first_hit``, ``inp``, then each entry of ``gates_or_mask`` (a single value or one per
    query; name them with `mask_columns` / `gate_columns`).  Queries the protocol skipped (no
    true match in the gallery) have no metrics; they are left out unless ``include_skipped``,
    and their number is kept in ``table.attrs["num_skipped"]`` either way.
    """
    n = int(result.num_queries)
    ids = list(range(n)) if query_ids is None else list(query_ids)
    qp, qc = np.asarray(q_pids), np.asarray(q_camids)
    if len(ids) != n or len(qp) != n or len(qc) != n:
        raise DataError(
            f"The result has {n} queries but {len(ids)} query ids, {len(qp)} pids and "
            f"{len(qc)} camids were given."
        )
    frame = pd.DataFrame(
        {"config": config, "query": ids, "pid": qp.astype(np.int64), "camid": qc.astype(np.int64)}
    )
    if attributes is not None:
        if len(attributes) != n:
            raise DataError(
                f"The attribute table has {len(attributes)} rows but there are {n} queries."
            )
        clash = sorted(
            set(attributes.columns) & set(frame.columns)
            | set(attributes.columns) & set(METRIC_COLUMNS)
        )
        if clash:
            raise DataError(f"The attribute column {clash[0]!r} clashes with a result column.")
        frame = pd.concat([frame, attributes.reset_index(drop=True)], axis=1)
    frame["ap"] = result.ap
    frame["rank1"] = np.asarray(result.rank1, dtype=np.int64)
    frame["first_hit"] = np.asarray(result.first_hit, dtype=np.int64)
    frame["inp"] = result.inp
    for name, value in (gates_or_mask or {}).items():
        if name in frame.columns:
            raise DataError(f"The gate/mask column {name!r} clashes with a result column.")
        frame[name] = _column_values(name, value, n)
    if not include_skipped:
        frame = frame[np.asarray(result.valid, dtype=bool)].reset_index(drop=True)
    frame.attrs["num_skipped"] = int(result.num_skipped)
    return frame


def config_table(
    result: EvalResult,
    *,
    config: str,
    group_mask: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """One row for one configuration: ``config``, ``mAP``, ``rank1``, ``rank5``, ``rank10``,
    ``mINP``, then one 0/1 column per group of ``group_mask`` (named by the group: was it
    switched on?), then ``extra`` columns, then the query counts.  Concatenate the rows of
    several configurations with ``pd.concat``."""
    s = result.summary()
    row: dict[str, Any] = {"config": config}
    row.update({k: s[k] for k in CONFIG_COLUMNS[1:]})
    for group, on in (group_mask or {}).items():
        if group in row:
            raise DataError(f"The group name {group!r} clashes with a result column.")
        row[group] = int(bool(on))
    for k, v in (extra or {}).items():
        if k in row:
            raise DataError(f"The extra column {k!r} clashes with a result column.")
        row[k] = v
    row["num_valid"] = s["num_valid"]
    row["num_skipped"] = s["num_skipped"]
    return pd.DataFrame([row])


# --------------------------------------------------------------------------------------------
# feature files

_KEYS = ("features", "pids", "camids")


def save_features(path: str | Path, query: FeatureSet, gallery: FeatureSet) -> Path:
    """Write ``query_*`` / ``gallery_*`` arrays (features, pids, camids, and attributes when
    present) to ``.npz`` or ``.safetensors``; ``.npz`` also keeps the image ids."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    for side, fs in (("query", query), ("gallery", gallery)):
        arrays[f"{side}_features"] = fs.features.detach().float().cpu().numpy()
        arrays[f"{side}_pids"] = np.asarray(fs.pids, dtype=np.int64)
        arrays[f"{side}_camids"] = np.asarray(fs.camids, dtype=np.int64)
        if fs.attributes is not None:
            arrays[f"{side}_attributes"] = np.asarray(fs.attributes, dtype=np.float32)
        if fs.ids is not None and path.suffix == ".npz":
            arrays[f"{side}_ids"] = np.asarray(fs.ids, dtype=str)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    elif path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
    else:
        raise DataError(f"Feature file {str(path)!r} must end in .npz or .safetensors.")
    return path


def load_features(path: str | Path) -> tuple[FeatureSet, FeatureSet]:
    """Read a file written by `save_features` (or by hand with the same keys); never unpickles."""
    path = Path(path)
    arrays = _read_arrays(path)
    query, gallery = (_feature_set(arrays, side, path) for side in ("query", "gallery"))
    return query, gallery


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` or ``.safetensors`` file, or a `DataError` saying why not."""
    if not path.is_file():
        raise DataError(f"The feature file {str(path)!r} does not exist.")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            return load_file(str(path))
    except Exception as e:  # corrupt zip / header / pickled object arrays
        raise DataError(f"The feature file {str(path)!r} cannot be read ({e}).") from None
    raise DataError(f"Feature file {str(path)!r} must end in .npz or .safetensors.")


def _feature_set(arrays: Mapping[str, np.ndarray], side: str, path: Path) -> FeatureSet:
    """The ``query`` or ``gallery`` `FeatureSet` of a feature file, its arrays checked."""
    _check_side(arrays, side, path)
    f = arrays[f"{side}_features"]
    if f.dtype != np.float64:
        f = f.astype(np.float32)  # half precision: upcast for the distance computation
    ids = arrays.get(f"{side}_ids")
    return FeatureSet(
        features=torch.from_numpy(np.ascontiguousarray(f)),
        pids=arrays[f"{side}_pids"].astype(np.int64),
        camids=arrays[f"{side}_camids"].astype(np.int64),
        attributes=arrays.get(f"{side}_attributes"),
        ids=[str(x) for x in ids] if ids is not None else None,
    )


def _check_side(arrays: Mapping[str, np.ndarray], side: str, path: Path) -> None:
    """The keys, lengths and dtypes one side of a feature file must have."""
    missing = [f"{side}_{k}" for k in _KEYS if f"{side}_{k}" not in arrays]
    if missing:
        raise DataError(
            f"The feature file {str(path)!r} lacks {missing[0]!r}; it needs query_/gallery_ "
            f"features, pids and camids (it has {sorted(arrays)})."
        )
    f = arrays[f"{side}_features"]
    n = len(f)
    for k in ("pids", "camids", "attributes", "ids"):
        a = arrays.get(f"{side}_{k}")
        if a is not None and len(a) != n:
            raise DataError(
                f"In {str(path)!r}, {side}_{k} has {len(a)} entries but {side}_features "
                f"has {n} rows."
            )
    if f.ndim != 2 or not np.issubdtype(f.dtype, np.floating):
        raise DataError(f"In {str(path)!r}, {side}_features must be a 2-D float matrix.")
    for k in ("pids", "camids"):
        a = arrays[f"{side}_{k}"]
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise DataError(
                f"In {str(path)!r}, {side}_{k} must be a 1-D integer array (got {a.dtype})."
            )

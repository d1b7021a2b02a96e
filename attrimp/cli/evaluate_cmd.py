"""`attrimp evaluate`: ReID metrics and the per-query result table, from saved features or a
trained checkpoint on a config's query/gallery.

    attrimp evaluate features.npz --table per_query.parquet --summary config.csv [--rerank]
    attrimp evaluate --checkpoint runs/tiny --data studies/configs/synthetic_tiny.toml

The feature file holds ``query_features``, ``query_pids``, ``query_camids`` and the same for
``gallery_`` (optionally ``*_attributes`` multi-hot and, in ``.npz``, ``*_ids``); write one with
`attrimp.evaluate.evaluation.save_features`.

Hook for the checkpoint + dataset mode: build the two `FeatureSet`s with
`attrimp.evaluate.evaluation.extract_features` (model + query/gallery loaders) and hand them to
`run_evaluation` exactly as `evaluate_command` does after `load_features`; everything after
that (metrics, re-ranking, tables, printing) is shared.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import typer
from rich.console import Console

from attrimp.errors import DataError


def register(app: typer.Typer) -> None:
    """Attach ``attrimp evaluate`` to the root app."""
    app.command("evaluate")(evaluate_command)


# The options of `attrimp evaluate`, named here so the command's signature reads as a list.
_FEATURES = typer.Argument(
    None,
    help="Feature file (.npz or .safetensors) with query_/gallery_ features, pids, camids; "
    "or leave it out and give --checkpoint and --data.",
    show_default=False,
)
_CHECKPOINT = typer.Option(
    None,
    "--checkpoint",
    help="Evaluate this checkpoint folder (or run folder with checkpoints/latest) ...",
)
_DATA = typer.Option(
    None, "--data", help="... on the query/gallery of this study / training config."
)
_METRIC = typer.Option("euclidean", "--metric", help="euclidean, sqeuclidean or cosine.")
_RERANK = typer.Option(False, "--rerank", help="k-reciprocal re-ranking (Zhong 2017).")
_K1 = typer.Option(20, "--k1", help="Re-ranking: k of the k-reciprocal sets.")
_K2 = typer.Option(6, "--k2", help="Re-ranking: neighbours of the query expansion.")
_LAMBDA = typer.Option(0.3, "--lambda", help="Re-ranking: weight of the original distance.")
_MAX_RANK = typer.Option(50, "--max-rank", help="Length of the CMC curve.")
_DEVICE = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ... or auto.")
_CONFIG = typer.Option(
    None, "--config", help="Name of this configuration in the tables (default: file stem)."
)
_SCHEMA = typer.Option(
    None,
    "--schema",
    help="Schema (market1501, dukemtmc or a TOML) to decode query_attributes into columns.",
)
_ATTRIBUTES = typer.Option(
    None,
    "--attributes",
    help="CSV with a 'pid' column + attribute columns, joined to the queries by identity.",
)
_TABLE = typer.Option(None, "--table", help="Write the per-query result table (.csv or .parquet).")
_SUMMARY = typer.Option(
    None, "--summary", help="Write the config-level row (.csv, .parquet or .json)."
)
_INCLUDE_SKIPPED = typer.Option(
    False, "--include-skipped", help="Keep queries without a true match (NaN metrics)."
)


def evaluate_command(
    features: Path = _FEATURES,
    checkpoint: Path | None = _CHECKPOINT,
    data: Path | None = _DATA,
    metric: str = _METRIC,
    rerank: bool = _RERANK,
    k1: int = _K1,
    k2: int = _K2,
    lambda_value: float = _LAMBDA,
    max_rank: int = _MAX_RANK,
    device: str = _DEVICE,
    config: str | None = _CONFIG,
    schema: str | None = _SCHEMA,
    attributes: Path | None = _ATTRIBUTES,
    table: Path | None = _TABLE,
    summary: Path | None = _SUMMARY,
    include_skipped: bool = _INCLUDE_SKIPPED,
) -> None:
    """mAP, CMC, mINP and the per-query table of saved features or of a trained checkpoint.

    Example: attrimp evaluate --checkpoint runs/tiny --data studies/configs/synthetic_tiny.toml --table runs/tiny/per_query.csv
    """
    if (features is None) == (checkpoint is None):
        raise DataError("Give either a feature file or --checkpoint (with --data), not both.")
    for path in (table, summary):
        _check_suffix(path)
    with _output_folders(table=table, summary=summary):
        if checkpoint is not None:
            query, gallery, schema_name = _features_of_checkpoint(checkpoint, data, device)
            schema = schema if schema is not None or attributes is not None else schema_name
            name = config or checkpoint.name
        else:
            query, gallery = _features_of_file(features)
            name = config or features.stem
        run_evaluation(
            query,
            gallery,
            config=name,
            metric=metric,
            rerank=rerank,
            k1=k1,
            k2=k2,
            lambda_value=lambda_value,
            max_rank=max_rank,
            device=device,
            schema=schema,
            attributes=attributes,
            table=table,
            summary=summary,
            include_skipped=include_skipped,
        )


@contextmanager
def _output_folders(**files: Path | None) -> Iterator[None]:
    """The folders that the --table / --summary files go into, checked and locked as every
    command's --out is (`attrimp.io.run_output`): a second command writing there stops at once
    with one sentence, and a refused input leaves no folder that this command created."""
    from attrimp.io import run_output

    with ExitStack() as stack:
        seen: set[Path] = set()
        for flag, path in files.items():
            if path is None or (folder := path.parent.resolve()) in seen:
                continue
            seen.add(folder)
            stack.enter_context(run_output(path.parent, flag=f"--{flag} folder"))
        yield


def _features_of_file(features: Path):
    """Query and gallery `FeatureSet`s of a feature file, or a sentence on how to make one."""
    from attrimp.evaluate.evaluation import load_features

    if not features.is_file():
        raise DataError(
            f"The feature file {str(features)!r} does not exist: write one with "
            "attrimp.evaluate.evaluation.save_features, or evaluate a trained model directly with "
            "`attrimp evaluate --checkpoint RUN --data CONFIG` (RUN from `attrimp train`)."
        )
    return load_features(features)


def _features_of_checkpoint(checkpoint: Path, data: Path | None, device: str):
    """Query and gallery `FeatureSet`s of a trained model on a config's dataset (with progress
    bars), and the model's schema name when it is a built-in one."""
    from torch.utils.data import DataLoader

    from attrimp.config import load_config
    from attrimp.evaluate.evaluation import extract_features
    from attrimp.model.checkpoint import load_model
    from attrimp.model.schema import BUILTIN_SCHEMAS
    from attrimp.train.pipeline import datasets, prepare_data
    from attrimp.train.training import resolve_checkpoint

    if data is None:
        raise DataError("--checkpoint needs --data CONFIG: the dataset to evaluate on.")
    cfg = load_config(data)
    dev = _device(device)
    folder = resolve_checkpoint(checkpoint)
    model = load_model(folder, device=dev)
    # A synthetic world lives in the training run's folder (attrimp train --out DIR -> DIR/world);
    # from anywhere else it is generated into a temporary folder, never into the checkpoint.
    run_dir = folder.parent.parent if folder.parent.name == "checkpoints" else None
    if run_dir is None:
        import tempfile

        run_dir = Path(tempfile.mkdtemp(prefix="attrimp-eval-"))
    ds = prepare_data(cfg, run_dir, model_check=False)  # the model is the checkpoint's
    _, query_set, gallery_set = datasets(model, ds)
    batch = cfg.eval.batch_size
    query, gallery = (
        extract_features(
            model, DataLoader(split, batch_size=batch), dev, progress=True, description=what
        )
        for split, what in ((query_set, "query"), (gallery_set, "gallery"))
    )
    name = model.schema.name if model.schema.name in BUILTIN_SCHEMAS else None
    return query, gallery, name


def _device(name: str):
    """``--device`` as `attrimp.devices.resolve_device` reads it (the one rule for every command)."""
    from attrimp.devices import resolve_device

    return resolve_device(name)


def _identity_attributes(path: Path, q_pids):
    """Per-query attribute columns from an identity-level CSV, or a clear error."""
    import numpy as np
    import pandas as pd

    if not path.is_file():
        raise DataError(f"The attribute file {str(path)!r} does not exist.")
    df = pd.read_csv(path)
    if "pid" not in df.columns:
        raise DataError(f"The attribute file {str(path)!r} has no 'pid' column.")
    dup = df["pid"][df["pid"].duplicated()]
    if len(dup):
        raise DataError(f"The attribute file {str(path)!r} lists identity {dup.iloc[0]} twice.")
    table = df.set_index("pid")
    missing = sorted(set(np.asarray(q_pids).tolist()) - set(table.index.tolist()))
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise DataError(
            f"The attribute file {str(path)!r} has no row for {len(missing)} query "
            f"identit{'y' if len(missing) == 1 else 'ies'}: {shown}."
        )
    return table.loc[np.asarray(q_pids)].reset_index(drop=True)


def _check_suffix(path: Path | None) -> None:
    """A --table / --summary path ends in a suffix `_write` can write (checked before work)."""
    if path is not None and path.suffix not in (".parquet", ".csv", ".json"):
        raise DataError(f"Cannot write {str(path)!r}: use .csv, .parquet or .json.")


def _write(frame, path: Path) -> None:
    """A table as .parquet, .csv or .json, written atomically (`attrimp.io`)."""
    from attrimp.io import atomic_write_frame, atomic_write_text

    _check_suffix(path)
    if path.suffix == ".json":
        atomic_write_text(path, frame.to_json(orient="records", indent=2))
    else:
        atomic_write_frame(frame, path)


def run_evaluation(
    query,
    gallery,
    *,
    config: str,
    metric: str = "euclidean",
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    max_rank: int = 50,
    device: str = "cpu",
    schema: str | None = None,
    attributes: Path | None = None,
    table: Path | None = None,
    summary: Path | None = None,
    include_skipped: bool = False,
    console: Console | None = None,
):
    """Metrics + tables for two `FeatureSet`s; prints the headline numbers. Returns the
    `EvalResult` (shared by every way of obtaining features)."""
    from attrimp.evaluate.evaluation import config_table, evaluate_features, per_query_table

    console = console or Console()
    if schema is not None and attributes is not None:
        raise DataError("Give --schema or --attributes, not both: each one names the attributes.")
    result = evaluate_features(
        query,
        gallery,
        metric=metric,
        rerank=rerank,
        k1=k1,
        k2=k2,
        lambda_value=lambda_value,
        max_rank=max_rank,
        device=_device(device),
    )
    _print_headline(result, config + (" (re-ranked)" if rerank else ""), console)
    if table is not None:
        frame = per_query_table(
            result,
            query_ids=query.ids,
            q_pids=query.pids,
            q_camids=query.camids,
            attributes=_query_attributes(query, schema, attributes),
            config=config,
            include_skipped=include_skipped,
        )
        _write(frame, table)
        console.print(f"per-query table: {table} ({len(frame)} rows)")
    if summary is not None:
        _write(config_table(result, config=config, extra={"reranked": int(rerank)}), summary)
        console.print(f"summary: {summary}")
    return result


def _print_headline(result, title: str, console: Console) -> None:
    """mAP, rank-1/5/10 and mINP as a table, and how many queries counted."""
    from rich.table import Table

    s = result.summary()
    out = Table(title=title)
    for col in ("mAP", "rank1", "rank5", "rank10", "mINP"):
        out.add_column(col, justify="right")
    out.add_row(*(f"{s[c]:.4f}" for c in ("mAP", "rank1", "rank5", "rank10", "mINP")))
    console.print(out)
    console.print(
        f"{result.num_valid} of {result.num_queries} queries evaluated; {result.num_skipped} "
        f"skipped (no true match in the gallery); {result.num_junk_gallery} junk gallery "
        "images ignored."
    )


def _query_attributes(query, schema: str | None, attributes: Path | None):
    """The per-query attribute columns: decoded from the feature file's multi-hot with
    ``schema``, joined from an identity-level CSV, or None."""
    from attrimp.evaluate.evaluation import attribute_frame

    if schema is not None:
        if query.attributes is None:
            raise DataError("--schema needs query_attributes in the feature file; it has none.")
        from attrimp.model.schema import load_schema

        sch = load_schema(schema)
        if query.attributes.shape[1] != sch.n_slots:
            raise DataError(
                f"query_attributes has {query.attributes.shape[1]} slots but schema "
                f"{sch.name!r} has {sch.n_slots}."
            )
        return attribute_frame(query.attributes, sch)
    if attributes is not None:
        return _identity_attributes(attributes, query.pids)
    return None

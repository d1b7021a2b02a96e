"""`attrimp train CONFIG --out DIR`: train a MoSAIC-ReID model, then evaluate it once.

The same command runs on one process or under ``torchrun`` (any number of GPUs or nodes)
without a change: the training loop shards the PK batches by rank and only rank 0 prints and
writes. The data are prepared by rank 0 first (a synthetic world is generated once) and the
other ranks follow only once it succeeded, so a bad dataset is one error on every rank instead
of a hang at the first collective. The final evaluation runs on rank 0 alone, after the other
ranks have left the process group, because a Market-size query/gallery pass is minutes on one
device and a collective timeout must not depend on it.

What ``--out`` holds afterwards::

    config.json                 the resolved study config (every default filled in)
    checkpoints/latest          name of the newest complete checkpoint folder
    checkpoints/epoch-NNNN/     model.safetensors + config.json + trainer state (resume)
    train_log.csv, tensorboard/ per-epoch losses and learning rate
    metrics.json                mAP, rank-1/5/10, mINP on query/gallery + the checkpoint path
    eval_log.csv                the same every train.eval_every epochs (when set)
    world/                      the generated images (synthetic dataset without data.root)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from attrimp.errors import AttrimpError, ConfigError
from attrimp.io import atomic_write_json, atomic_writer, run_output

T = TypeVar("T")

#: sections that decide what a checkpoint *is*; resuming under a change to one of them would
#: silently mix two different runs (the train section may change: more epochs, say)
RUN_IDENTITY = ("data", "model", "experts", "router")
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
EVAL_LOG = "eval_log.csv"
EVAL_FIELDS = ["epoch", "mAP", "rank1", "rank5", "rank10", "mINP"]


def register(app: typer.Typer) -> None:
    """Attach `attrimp train` to the root app."""
    app.command("train")(train_command)


def train_command(
    config: Path = typer.Argument(..., help="Study config (TOML), e.g. studies/configs/*.toml."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, logs, metrics."),
    device: str | None = typer.Option(
        None, "--device", help="cpu, cuda or cuda:N; default: the config's `device` (auto)."
    ),
    resume: bool = typer.Option(
        True,
        "--resume/--no-resume",
        help="Continue from the run folder's last checkpoint (default), or start afresh.",
    ),
    epochs: int | None = typer.Option(
        None, "--epochs", min=1, help="Override train.epochs (e.g. to extend a finished run)."
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=0, help="DataLoader worker processes; default data.num_workers."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Train a model from a study config, evaluate it on query/gallery, write metrics.json.

    Example: attrimp train studies/configs/synthetic_tiny.toml --out runs/tiny
    """
    run_training(
        config,
        out,
        device=device,
        resume=resume,
        epochs=epochs,
        workers=workers,
        progress=progress,
    )


def run_training(
    config_path: str | Path,
    out: str | Path,
    *,
    device: str | None = None,
    resume: bool = True,
    epochs: int | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any] | None:
    """The command's body as a function; returns the metrics on rank 0 and None elsewhere.

    The whole config is checked before any work: its keys and ranges when it is read, before
    --out; then, once --out is locked (so a second run on the folder stops at once, before
    torch is even imported), the dataset paths and the ``[model]`` section (a misspelt backbone
    name) in seconds, without a download (`attrimp.train.pipeline.check_model`). A config
    refused there leaves no --out behind (`attrimp.io.output_folder`)."""
    from attrimp.config import load_config

    cfg = load_config(config_path)
    if epochs is not None:
        cfg.train.epochs = epochs
    num_workers = cfg.data.num_workers if workers is None else workers
    out = Path(out)
    # before any work: --out must be a folder this process can write, and no other run's
    with run_output(out):
        from attrimp.train.pipeline import check_data_paths, check_model

        check_data_paths(cfg)
        check_model(cfg)
        return _train_locked(cfg, out, device, resume, num_workers, progress)


def _train_locked(
    cfg, out: Path, device: str | None, resume: bool, num_workers: int, progress: bool
) -> dict[str, Any] | None:
    import torch

    from attrimp.train.pipeline import build_model, datasets, prepare_data
    from attrimp.train.training import init_distributed, latest_checkpoint, train

    dev = _device(device or cfg.device)
    dist = init_distributed(dev)
    console = Console(quiet=not dist.is_main)
    found = latest_checkpoint(out) if resume else None
    _check_same_checkpoint(dist, found, out)
    _check_run_folder(out, cfg, found, dist.is_main, console)

    show = progress and dist.is_main
    # the model was checked in run_training, before --out
    data = _main_first(dist, lambda: prepare_data(cfg, out, progress=show, model_check=False))
    _print_data(console, cfg, data, dist.world_size)
    # Same initial weights on every rank (DDP also broadcasts rank 0's at wrap time).
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, data)
    train_set, query, gallery = datasets(model, data)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / CONFIG_FILE, cfg.to_dict())
    if found is not None:
        console.print(f"Resuming from {escape(str(found))}.")

    result = train(
        model,
        train_set,
        cfg.train,
        out,
        device=dev,
        num_workers=num_workers,
        resume=resume,
        progress=progress,
        on_epoch_end=_periodic_evaluation(
            model, query, gallery, cfg, dev, num_workers, out, dist, console
        ),
        attribute_loss_weight=cfg.router.attribute_loss_weight,
    )
    if dist.world_size > 1:
        import torch.distributed as tdist

        tdist.barrier()
        tdist.destroy_process_group()
    if not dist.is_main:
        return None

    _print_history(console, result.history, result.resumed_from)
    summary = _evaluate(model, query, gallery, cfg, dev, num_workers, progress)
    return _report_metrics(console, cfg, out, result, dist.world_size, query, gallery, summary)


# --------------------------------------------------------------------------------- helpers
def _report_metrics(
    console: Console, cfg, out: Path, result, world_size: int, query, gallery, summary: dict
) -> dict[str, Any]:
    """Write metrics.json (the evaluation plus what was trained) and print it."""
    metrics = {
        "config": cfg.name,
        "checkpoint": str(result.checkpoint),
        "epochs": result.epochs,
        "resumed_from": result.resumed_from,
        "world_size": world_size,
        "num_query": len(query),
        "num_gallery": len(gallery),
        **summary,
    }
    _write_json(out / METRICS_FILE, metrics)
    _print_metrics(console, cfg.name, metrics)
    console.print(f"Checkpoint: {escape(str(result.checkpoint))}", soft_wrap=True)
    console.print(f"Metrics: {escape(str(out / METRICS_FILE))}", soft_wrap=True)
    return metrics


def _device(name: str):
    """The device of this process (`attrimp.devices.resolve_device`: under torchrun a bare
    ``cuda`` means ``cuda:LOCAL_RANK``), made the current CUDA device when it is one."""
    import torch

    from attrimp.devices import resolve_device

    dev = resolve_device(name)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def _main_first(dist, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0, then (only if it worked) on the other ranks.

    Rank 0 creates what must exist once (a synthetic world); the others then only read it.
    A user error on rank 0 is sent to every rank and raised there too, so all processes stop
    with the same sentence instead of the others waiting forever at the next collective.
    """
    if dist.world_size <= 1:
        return fn()
    import torch.distributed as tdist

    result, message = None, [None]
    if dist.is_main:
        try:
            result = fn()
        except AttrimpError as exc:
            message = [str(exc)]
        tdist.broadcast_object_list(message, src=0)
        if message[0] is not None:
            raise ConfigError(message[0])
        return result  # type: ignore[return-value]
    tdist.broadcast_object_list(message, src=0)
    if message[0] is not None:
        raise ConfigError(message[0])
    return fn()


def _check_same_checkpoint(dist, found: Path | None, out: Path) -> None:
    """Every rank must resume from the same checkpoint (an --out that is not on a file system
    shared by every node would start some ranks afresh and silently desynchronise them)."""
    if dist.world_size <= 1:
        return
    import torch.distributed as tdist

    seen: list[str | None] = [None] * dist.world_size
    tdist.all_gather_object(seen, found.name if found is not None else None)
    if len(set(seen)) > 1:
        bad = next(r for r, name in enumerate(seen) if name != seen[0])
        raise ConfigError(
            f"Rank 0 resumes from {seen[0] or 'nothing'} but rank {bad} from {seen[bad] or 'nothing'} "
            f"in {str(out)!r}; --out must be on a file system that every node shares."
        )


def _periodic_evaluation(
    model, query, gallery, cfg, device, num_workers, out: Path, dist, console: Console
):
    """``on_epoch_end`` for ``train.eval_every``: rank 0 evaluates every N epochs (not the last,
    which the command evaluates anyway) and appends to eval_log.csv.

    The RNG state is put back afterwards: a DataLoader draws a seed from the global generator,
    and exact resume needs the training stream to be the same whether or not evaluation ran.
    """
    every = cfg.train.eval_every
    if not every or not dist.is_main:
        return None

    import torch

    def on_epoch_end(epoch: int, stats: dict) -> None:
        if epoch % every or epoch >= cfg.train.epochs:
            return
        cpu_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            # no progress bar: the training bar is live, and rich allows one at a time
            summary = _evaluate(model, query, gallery, cfg, device, num_workers, False)
        finally:
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state_all(cuda_state)
        _append_eval_log(out / EVAL_LOG, epoch, summary)
        console.print(f"epoch {epoch}: mAP {summary['mAP']:.4f}, rank-1 {summary['rank1']:.4f}")

    return on_epoch_end


def _append_eval_log(path: Path, epoch: int, summary: dict) -> None:
    """Rewrite eval_log.csv with this epoch's row (replacing an older row of the same epoch)."""
    import csv

    rows = []
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) != epoch]
    rows.append({"epoch": epoch, **{k: summary[k] for k in EVAL_FIELDS[1:]}})
    rows.sort(key=lambda r: int(r["epoch"]))
    with atomic_writer(path, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=EVAL_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _check_run_folder(out: Path, cfg, found: Path | None, is_main: bool, console: Console) -> None:
    """Refuse to resume a run of another model/data; say what a fresh start will replace."""
    previous = out / CONFIG_FILE
    if found is not None and previous.is_file():
        from attrimp.config import config_from_dict

        try:
            old = config_from_dict(json.loads(previous.read_text(encoding="utf-8")))
        except (AttrimpError, json.JSONDecodeError, TypeError):
            old = None
        changed = [
            s for s in RUN_IDENTITY if old is not None and _identity(old, s) != _identity(cfg, s)
        ]
        if changed:
            raise ConfigError(
                f"The run folder {str(out)!r} holds a checkpoint of a different config (its "
                f"[{'], ['.join(changed)}] section differs); use another --out, or --no-resume "
                "to replace that run."
            )
    if found is None and is_main:
        from attrimp.train.training import latest_checkpoint

        old_ckpt = latest_checkpoint(out)
        if old_ckpt is not None:
            console.print(
                f"[yellow]--no-resume:[/] starting afresh; the existing checkpoint "
                f"{escape(str(old_ckpt))} is replaced after the first epoch."
            )


def _identity(cfg, section: str) -> dict:
    """A section as it decides the model and data (loader worker counts do not)."""
    d = dict(cfg.to_dict()[section])
    d.pop("num_workers", None)
    return d


def _evaluate(model, query, gallery, cfg, device, num_workers: int, progress: bool) -> dict:
    """Standard-protocol mAP / CMC / mINP of the trained model (its own, oracle, router)."""
    from torch.utils.data import DataLoader

    from attrimp.evaluate.evaluation import evaluate_features, extract_features

    def features(dataset, what: str):
        loader = DataLoader(
            dataset,
            batch_size=cfg.eval.batch_size,
            shuffle=False,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )
        return extract_features(
            model,
            loader,
            device,
            autocast=cfg.train.amp != "off",
            progress=progress,
            description=f"features: {what}",
        )

    result = evaluate_features(
        features(query, "query"),
        features(gallery, "gallery"),
        metric=cfg.eval.metric,
        rerank=cfg.eval.rerank,
        max_rank=cfg.eval.max_rank,
        device=device,
    )
    summary: dict[str, Any] = {
        k: (float(v) if isinstance(v, float) else int(v)) for k, v in result.summary().items()
    }
    summary["metric"] = cfg.eval.metric
    summary["rerank"] = cfg.eval.rerank
    return summary


def _print_data(console: Console, cfg, data, world_size: int) -> None:
    console.print(
        f"[bold]{escape(cfg.name)}[/]: {escape(data.name)} at {escape(str(data.root))} — "
        f"{len(data.train)} training images of {data.num_train_pids} identities, "
        f"{len(data.query)} query, {len(data.gallery)} gallery; {cfg.train.epochs} epochs"
        + (f" on {world_size} processes" if world_size > 1 else ""),
        soft_wrap=True,
    )
    for line in data.report.warnings:
        console.print(f"[yellow]note:[/] {escape(line)}", soft_wrap=True)


def _print_history(console: Console, history: list[dict], resumed_from: int) -> None:
    if not history:
        return
    last = history[-1]
    note = f" (resumed after epoch {resumed_from})" if resumed_from else ""
    console.print(
        f"Trained {int(last['epoch'])} epochs{note}: loss {history[0]['loss']:.3f} → "
        f"{last['loss']:.3f}."
    )


def _print_metrics(console: Console, name: str, m: dict) -> None:
    table = Table(
        title=f"{escape(name)}: query {m['num_query']} × gallery {m['num_gallery']}",
        title_justify="left",
    )
    for col in ("mAP", "rank-1", "rank-5", "rank-10", "mINP"):
        table.add_column(col, justify="right")
    table.add_row(*(f"{m[k]:.4f}" for k in ("mAP", "rank1", "rank5", "rank10", "mINP")))
    console.print(table)
    if m.get("num_skipped"):
        console.print(
            f"[yellow]note:[/] {m['num_skipped']} queries had no true match in the gallery "
            "and were left out of the averages."
        )


def _write_json(path: Path, document: dict) -> None:
    atomic_write_json(path, document, default=str)

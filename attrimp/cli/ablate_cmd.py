"""`attrimp ablate CONFIG --checkpoint DIR`: the test-time ablation designs on a trained model.

The part of `attrimp study run` between training and statistics, for a model trained elsewhere
(e.g. by `attrimp train`): every condition of ``[ablation] designs`` is evaluated on the
config's query/gallery and written as the ReID result tables of docs/architecture.md. Feed them to
`attrimp study analyze` or let `attrimp study run` do everything.

    OUT/per_query.parquet                one row per query per configuration
    OUT/configs.csv                      mAP, rank-1/5/10, mINP + one 0/1 column per group
    OUT/deltas.csv                       each query's AP with vs without each group
    OUT/leave_one_out_importance.csv     ΔmAP per group with an identity-bootstrap CI
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate_command)


def ablate_command(
    config: Path = typer.Argument(
        ..., help="Study TOML: \\[data], \\[ablation] and \\[eval] are used."
    ),
    checkpoint: Path = typer.Option(
        ...,
        "--checkpoint",
        "-c",
        help="Checkpoint folder (or a run folder with checkpoints/latest).",
    ),
    out: Path = typer.Option(Path("runs/ablate"), "--out", "-o", help="Output folder."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    designs: list[str] = typer.Option(
        None, "--design", help="Override \\[ablation] designs (repeatable)."
    ),
) -> None:
    """Evaluate every ablation condition of CONFIG on a trained checkpoint.

    Example: attrimp ablate studies/configs/synthetic_tiny.toml --checkpoint runs/tiny --out runs/ablate
    """
    from rich.console import Console

    from attrimp.devices import resolve_device
    from attrimp.io import run_output

    cfg = _with_designs(config, designs)  # the config is checked whole before --out
    dev = resolve_device(device)
    with run_output(out):  # --out checked and locked as every command's is
        model, data = _checkpoint_and_data(cfg, checkpoint, out / "work", dev)
        progress = Console(stderr=True)
        per_query, n_conditions = _evaluate_conditions(cfg, model, data, dev, progress)
        configs = _write_tables(per_query, data.schema.group_names, out)
    result = Console()  # the result table to stdout, progress to stderr
    _print_configs(configs, n_conditions, result)
    result.print(f"tables in {out}", highlight=False)


def _with_designs(config: Path, designs: list[str] | None):
    """The study config, its ``[ablation] designs`` replaced by ``--design`` when given."""
    from attrimp.config import config_from_dict, load_config

    cfg = load_config(config)
    if designs:
        cfg = config_from_dict(
            {**cfg.to_dict(), "ablation": {**cfg.to_dict()["ablation"], "designs": designs}},
            source="--design",
        )
    return cfg


def _checkpoint_and_data(cfg, checkpoint: Path, work: Path, dev):
    """The trained model and the config's data, or a `CheckpointError` when their schemas
    differ."""
    from attrimp.errors import CheckpointError
    from attrimp.model.checkpoint import load_model
    from attrimp.train.pipeline import prepare_data
    from attrimp.train.training import resolve_checkpoint

    folder = resolve_checkpoint(checkpoint)
    model = load_model(folder, device=dev)
    data = prepare_data(cfg, work, model_check=False)  # the model is the checkpoint's
    if (
        data.schema.n_slots != model.schema.n_slots
        or data.schema.group_names != model.schema.group_names
    ):
        raise CheckpointError(
            f"The checkpoint {str(folder)!r} was trained on schema {model.schema.name!r} but the "
            f"config's data use schema {data.schema.name!r}."
        )
    return model, data


def _evaluate_conditions(cfg, model, data, dev, console):
    """The per-query table of every condition of the study's designs (with a progress bar),
    and the number of conditions."""
    import pandas as pd
    import torch

    from attrimp.evaluate.conditions import ConditionEvaluator
    from attrimp.progress import progress_bar
    from attrimp.study.run import study_conditions
    from attrimp.train.pipeline import datasets

    conditions = study_conditions(cfg, data.schema, model)
    _, query_set, gallery_set = datasets(model, data)
    evaluator = ConditionEvaluator.from_config(model, query_set, gallery_set, cfg.eval, device=dev)
    tables = []
    with progress_bar(True, console=console) as bar, torch.no_grad():
        task = bar.add_task("ablate", total=len(conditions))
        for cond in conditions:
            bar.update(task, description=cond.name)
            result, _ = evaluator.run(cond)
            tables.append(evaluator.table(cond, result))
            bar.advance(task)
    return pd.concat(tables, ignore_index=True), len(conditions)


def _write_tables(per_query, groups, out: Path):
    """The four tables of the module docstring, written atomically; returns the config-level one."""
    from attrimp.io import atomic_write_frame
    from attrimp.study.run import config_table, delta_table, leave_one_out_importance

    configs = config_table(per_query, groups)
    deltas = delta_table(per_query, groups)
    atomic_write_frame(per_query, out / "per_query.parquet")
    atomic_write_frame(configs, out / "configs.csv")
    atomic_write_frame(deltas, out / "deltas.csv")
    if len(deltas):
        atomic_write_frame(leave_one_out_importance(deltas), out / "leave_one_out_importance.csv")
    return configs


def _print_configs(configs, n_conditions: int, console) -> None:
    from rich.table import Table

    table = Table(title=f"{n_conditions} configurations")
    for col in ("config", "mAP", "rank1", "mINP"):
        table.add_column(col, justify="left" if col == "config" else "right")
    for row in configs.itertuples():
        table.add_row(row.config, f"{row.mAP:.4f}", f"{row.rank1:.4f}", f"{row.mINP:.4f}")
    console.print(table)

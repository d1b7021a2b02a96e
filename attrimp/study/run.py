"""`attrimp study run`: one command from data to a finished attribute-importance report.

Stages (each cached, so a killed run resumes without redoing finished work):

1. **data** — the configured dataset, or the synthetic world generated once into ``work/``;
   the attribute priors (the paper's Figure 4).
2. **train** — one MoSAIC model; its folder is keyed by a hash of the data, model, expert,
   router and training settings, and `attrimp.train.training` resumes inside an epoch sequence.
3. **conditions** — every test-time configuration of `attrimp.evaluate.ablation` evaluated on the trained
   model; one Parquet file per condition, keyed by the condition and the model's hash.
4. **tables** — the per-query long table, the configuration-level table, the paired Δ table
   (built by `attrimp.evaluate.tables`).
5. **analyses** — the studies battery on each table with the design it calls for.
6. **report** — report.json / report.md / report.html (+ CSV tables and PNG figures).

Every file is written through `attrimp.io` (a temporary name moved into place), so a kill -9 at
any point leaves either the old file or the new one. Apart from its ``timings`` section (each
stage's wall time and peak memory: `attrimp.study.clock.StageClock`) the report holds no
timestamps or timings: the same config gives the same report whether the run was interrupted
or not. The run is quiet by
default (each stage's line goes to `logging`); ``progress=True`` — what the CLI passes — prints
the lines and shows progress bars.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from attrimp.config import StudyConfig
from attrimp.evaluate.tables import config_table, delta_table, leave_one_out_importance
from attrimp.io import atomic_write_frame, atomic_write_json, atomic_write_text, run_output
from attrimp.study.analyses import StudyAnalyses, run_study_analyses
from attrimp.study.clock import StageClock as StageClock  # re-exported (benchmarks import it)
from attrimp.study.clock import Stages as _Stages
from attrimp.study.report import build_study_report, write_study_report

logger = logging.getLogger(__name__)

STAGES = ("data", "train", "conditions", "tables", "analyses", "report")


@dataclass
class StudyResult:
    out: Path
    configs: pd.DataFrame
    per_query: pd.DataFrame
    deltas: pd.DataFrame
    importance: pd.DataFrame
    report: dict[str, Any] = field(default_factory=dict)
    cached: dict[str, int] = field(default_factory=dict)


def run_study(
    cfg: StudyConfig,
    out: str | Path,
    *,
    resume: bool = True,
    progress: bool = False,
    console=None,
    stop_after: str | None = None,
    on_condition: Callable[[int, str], None] | None = None,
) -> StudyResult | None:
    """Run the study described by ``cfg`` into ``out``; see the module docstring.

    ``resume=False`` clears ``out/cache`` first. ``progress`` prints each stage and shows
    progress bars on ``console`` (stderr by default); off, the run is quiet apart from
    `logging` (the CLI turns it on). ``stop_after`` ends after the named stage (for inspection
    and tests); ``on_condition(i, name)`` is called after each condition's result is written
    (the kill-and-resume test uses it). Before any work ``out`` is checked to be a writable
    folder and locked for the run (`attrimp.io.output_folder`): a second study on the same
    folder stops at once with an `attrimp.io.OutputFolderError`.
    """
    with run_output(out):
        return _run_study(
            cfg,
            Path(out),
            resume=resume,
            progress=progress,
            console=console,
            stop_after=stop_after,
            on_condition=on_condition,
        )


@dataclass
class _Run:
    """What every stage of one run shares."""

    cfg: StudyConfig
    out: Path
    stages: _Stages
    device: Any
    dist: Any
    progress: bool


@dataclass
class _Sweep:
    """The conditions of the sweep, where their tables are, the evaluator that ran them (rank 0
    keeps it for the baselines) and the retrained models' tables."""

    conditions: list
    cond_dir: Path
    evaluator: Any
    retrained: list[Path]


@dataclass
class _Tables:
    """The tables of stage 4, all written under ``out/tables``."""

    per_query: pd.DataFrame
    configs: pd.DataFrame
    deltas: pd.DataFrame
    importance: pd.DataFrame
    importance_retrained: pd.DataFrame | None = None
    baseline: dict[str, Any] | None = None
    learned: dict[str, Any] | None = None


def _run_study(
    cfg: StudyConfig,
    out: Path,
    *,
    resume: bool,
    progress: bool,
    console,
    stop_after: str | None,
    on_condition: Callable[[int, str], None] | None,
) -> StudyResult | None:
    """The six stages in order (see the module docstring); None when ``stop_after`` ends the
    run early, and on every rank but 0 under ``torchrun`` after the sweep."""
    run = _start_run(cfg, out, resume=resume, progress=progress, console=console)
    data = _data_stage(run)
    if stop_after == "data":
        return None
    model, train_key = _train_stage(run, data)
    if stop_after == "train":
        return None
    sweep = _conditions_stage(run, data, model, train_key, on_condition)
    if not run.dist.is_main or stop_after == "conditions":
        return None
    tables = _tables_stage(run, data, model, sweep)
    if stop_after == "tables":
        return None
    analyses = _analyses_stage(run, data, tables)
    report = _report_stage(run, data, model, tables, analyses)
    return StudyResult(
        out,
        tables.configs,
        tables.per_query,
        tables.deltas,
        tables.importance,
        report,
        run.stages.cached,
    )


def _start_run(cfg: StudyConfig, out: Path, *, resume: bool, progress: bool, console) -> _Run:
    """The output folder (its cache cleared unless resuming), the device and the process
    group, and ``config.json`` (rank 0)."""
    from attrimp.devices import resolve_device
    from attrimp.train.training import init_distributed

    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        shutil.rmtree(out / "cache", ignore_errors=True)
    stages = _Stages(progress, console)
    device = resolve_device(cfg.device)  # under torchrun a bare cuda is cuda:LOCAL_RANK
    dist = init_distributed(device)
    stages.enabled = stages.enabled and dist.is_main
    if dist.is_main:
        atomic_write_json(out / "config.json", cfg.to_dict(), default=list)
    return _Run(cfg, out, stages, device, dist, progress)


# 1. data -----------------------------------------------------------------------------------
def _data_stage(run: _Run):
    """The dataset (rank 0 generates a synthetic world first; the others then read it) and,
    on rank 0, the attribute priors."""
    from attrimp.train.pipeline import prepare_data

    cfg, stages, dist = run.cfg, run.stages, run.dist
    stages.say("data", f"{cfg.data.dataset} → {run.out / 'work'}")
    with stages.stage("data") as record:
        if not dist.is_main:
            _barrier(dist)
        data = prepare_data(cfg, run.out / "work", progress=run.progress and dist.is_main)
        if dist.is_main:
            _barrier(dist)
        stages.say(
            "data",
            f"{len(data.train)} train / {len(data.query)} query / {len(data.gallery)} gallery "
            f"images, {data.num_train_pids} training identities, schema {data.schema.name} "
            f"({data.schema.n_groups} groups, {data.schema.n_experts} experts)",
        )
        if dist.is_main:
            _write_priors(data, cfg, run.out)
    record.update(train_images=len(data.train), query_images=len(data.query))
    record["gallery_images"] = len(data.gallery)
    return data


# 2. train ----------------------------------------------------------------------------------
def _train_stage(run: _Run, data):
    """The trained model (from the cache when its settings were trained before) and its key."""
    with run.stages.stage("train") as record:
        model, train_key = _trained_model(run, data)
    record["cached"] = bool(run.stages.cached.get("train"))
    return model, train_key


# 3. conditions -----------------------------------------------------------------------------
def _conditions_stage(
    run: _Run, data, model, train_key: str, on_condition: Callable[[int, str], None] | None
) -> _Sweep:
    """Every test-time condition not yet on disk evaluated (sharded by rank under torchrun),
    then the retrained configurations; ends when every rank's tables are written."""
    from attrimp.train.pipeline import datasets

    cfg, stages, dist = run.cfg, run.stages, run.dist
    conditions = study_conditions(cfg, data.schema, model)
    if "learned" in cfg.ablation.designs and not model.router.needs_features:
        stages.say(
            "conditions", "the model was trained with the oracle router: no learned-router run"
        )
    cond_dir = run.out / "cache" / f"conditions-{train_key}-{cfg.fingerprint('eval')}"
    todo = [c for c in conditions if not (cond_dir / f"{c.key()}.parquet").exists()]
    stages.cached["conditions"] = len(conditions) - len(todo)
    stages.say("conditions", f"{len(conditions)} conditions, {len(todo)} to evaluate")
    todo = todo[dist.rank :: dist.world_size]  # under torchrun the sweep is sharded by rank
    _, query_set, gallery_set = datasets(model, data)
    evaluator = None
    if todo or dist.is_main:  # rank 0 also needs it for the baselines
        evaluator = _prefix_cache(run, model, query_set, gallery_set)
    _sweep(run, evaluator, todo, len(conditions), cond_dir, on_condition)
    retrained = _retrain_stage(run, data, train_key)
    _barrier(dist)  # every rank's conditions are on disk before rank 0 merges them
    return _Sweep(conditions, cond_dir, evaluator, retrained)


def _prefix_cache(run: _Run, model, query_set, gallery_set):
    """The condition evaluator, with the backbone prefix every condition shares computed once
    for the query and gallery images."""
    from attrimp.evaluate.conditions import ConditionEvaluator

    n_images = len(query_set) + len(gallery_set)
    stages = run.stages
    with stages.stage("prefix_cache", images=n_images) as record, stages.bar("prefix") as bar:
        task = bar.add_task("caching the shared backbone prefix", total=n_images)
        done = {"query": 0, "gallery": 0}

        def advance(label: str, n: int, total: int) -> None:
            done[label.split()[-1]] = n
            bar.update(task, completed=sum(done.values()))

        evaluator = ConditionEvaluator.from_config(
            model, query_set, gallery_set, run.cfg.eval, device=run.device, progress=advance
        )
    record.update(evaluator.prefix_info())
    return evaluator


def _sweep(
    run: _Run,
    evaluator,
    todo: list,
    n_conditions: int,
    cond_dir: Path,
    on_condition: Callable[[int, str], None] | None,
) -> None:
    """Evaluate each condition of ``todo`` and write its per-query table (the cache)."""
    import torch

    stages = run.stages
    cached = n_conditions - len(todo)
    with (
        stages.stage("sweep", conditions=len(todo), cached_conditions=cached) as record,
        stages.bar("conditions") as bar,
    ):
        task = bar.add_task("", total=len(todo))
        for i, cond in enumerate(todo):
            bar.update(task, description=cond.name)
            with torch.no_grad():
                result, _ = evaluator.run(cond)
            atomic_write_frame(evaluator.table(cond, result), cond_dir / f"{cond.key()}.parquet")
            bar.advance(task)
            if on_condition is not None:
                on_condition(i, cond.name)
        record["note"] = f"{len(todo)} conditions evaluated"
    record["seconds_per_condition"] = record["seconds"] / len(todo) if todo else None


def _retrain_stage(run: _Run, data, train_key: str) -> list[Path]:
    """The train-time ablation (``ablation.retrain``), timed as its own stage when asked for."""
    if not run.cfg.ablation.retrain:
        return []
    with run.stages.stage("retrain") as record:
        paths = _retrained_conditions(run, data, train_key)
    record["models"] = len(paths)
    return paths


# 4. tables ---------------------------------------------------------------------------------
def _tables_stage(run: _Run, data, model, sweep: _Sweep) -> _Tables:
    """The per-query long table, the configuration table, the paired Δ tables with the
    leave-one-out importance, and the baselines; all under ``out/tables``."""
    with run.stages.stage("tables") as record:
        per_query = pd.concat(
            [pd.read_parquet(sweep.cond_dir / f"{c.key()}.parquet") for c in sweep.conditions]
            + [pd.read_parquet(path) for path in sweep.retrained],
            ignore_index=True,
        )
        tables = _effect_tables(run, per_query, data.schema.group_names, bool(sweep.retrained))
        tables.baseline = _attribute_only(run, data, sweep.evaluator)
        tables.learned = _learned_router_accuracy(model, sweep.evaluator, data)
        if tables.learned is not None:
            _learned_reading(run, per_query, tables.learned)
    record["per_query_rows"] = len(per_query)
    return tables


def _learned_reading(run: _Run, per_query: pd.DataFrame, learned: dict[str, Any]) -> None:
    """How much of the oracle's gain the learned router keeps and whose prediction errors cost
    most (attrimp.study.learned), added to ``learned`` as ``reading`` and written to
    ``tables/learned_router.json`` and ``tables/partial_oracle.csv``."""
    from attrimp.study.learned import partial_oracle_table, read_learned_router

    a = run.cfg.analysis
    learned["reading"] = read_learned_router(per_query, learned, alpha=a.alpha, seed=a.seed)
    atomic_write_json(run.out / "tables" / "learned_router.json", learned)
    partial = partial_oracle_table(per_query, learned, alpha=a.alpha, seed=a.seed)
    atomic_write_frame(partial, run.out / "tables" / "partial_oracle.csv")


def _effect_tables(run: _Run, per_query: pd.DataFrame, groups: list[str], retrained: bool):
    """per_query.parquet, configs.csv, deltas.csv and the leave-one-out importance (and their
    retrained twins when models were retrained per configuration)."""
    tables_dir, seed = run.out / "tables", run.cfg.analysis.seed
    atomic_write_frame(per_query, tables_dir / "per_query.parquet")
    configs = config_table(per_query, groups)
    atomic_write_frame(configs, tables_dir / "configs.csv")
    deltas = delta_table(per_query, groups)
    atomic_write_frame(deltas, tables_dir / "deltas.csv")
    importance = leave_one_out_importance(deltas, seed=seed)
    atomic_write_frame(importance, tables_dir / "leave_one_out_importance.csv")
    importance_rt = None
    if retrained:
        deltas_rt = delta_table(per_query, groups, prefix=RETRAIN_PREFIX)
        atomic_write_frame(deltas_rt, tables_dir / "deltas_retrained.csv")
        importance_rt = leave_one_out_importance(deltas_rt, seed=seed)
        atomic_write_frame(importance_rt, tables_dir / "leave_one_out_importance_retrained.csv")
    return _Tables(per_query, configs, deltas, importance, importance_rt)


def _attribute_only(run: _Run, data, evaluator) -> dict[str, Any] | None:
    """The attribute-only baseline (ranking the gallery by the annotations alone), when the
    designs ask for it: its metrics and signature table."""
    from attrimp.evaluate.conditions import attribute_only_baseline

    if "attribute_only" not in run.cfg.ablation.designs:
        return None
    result, signatures = attribute_only_baseline(
        data.schema,
        evaluator.splits["query"],
        evaluator.splits["gallery"],
        max_rank=run.cfg.eval.max_rank,
    )
    baseline = {**result.summary(), "signatures": signatures}
    atomic_write_frame(signatures, run.out / "tables" / "attribute_signatures.csv")
    atomic_write_json(
        run.out / "tables" / "attribute_only.json",
        {k: v for k, v in baseline.items() if k != "signatures"},
    )
    return baseline


# 5. analyses -------------------------------------------------------------------------------
def _analyses_stage(run: _Run, data, tables: _Tables) -> StudyAnalyses:
    """The studies battery on each table (`attrimp.study.analyses`), under ``out/analyses``."""
    run.stages.say(
        "analyses", "statistics battery on the per-query, subset, configuration and Δ tables"
    )
    with run.stages.stage("analyses"):
        return run_study_analyses(
            tables.per_query,
            tables.configs,
            data.schema,
            run.cfg,
            run.out / "analyses",
            progress=run.progress,
            clock=run.stages,
        )


# 6. report ---------------------------------------------------------------------------------
def _report_stage(run: _Run, data, model, tables: _Tables, analyses: StudyAnalyses) -> dict:
    """report.json and the pages (`attrimp.study.report`); report.json is written again with
    the run's ``timings`` last, so that they include the report's own stage."""
    design_file = Path(data.root) / "synth.json"
    planted = json.loads(design_file.read_text()) if design_file.exists() else None
    with run.stages.stage("report"):
        report = build_study_report(
            cfg=run.cfg,
            data=data,
            configs=tables.configs,
            importance=tables.importance,
            importance_retrained=tables.importance_retrained,
            analyses=analyses,
            baseline=tables.baseline,
            learned=tables.learned,
            planted=planted,
            model_info=_model_info(model),
        )
        write_study_report(run.out, report)
    report["timings"] = run.stages.clock.to_dict()
    atomic_write_json(run.out / "report.json", report, allow_nan=False)
    total = report["timings"]["total_seconds"]
    run.stages.say("report", f"{run.out / 'report.html'} (total {total:.1f} s)")
    return report


# --------------------------------------------------------------------------- stages
def _write_priors(data, cfg: StudyConfig, out: Path) -> None:
    """The paper's Figure 4 from the dataset's own annotation file (attrimp.data.priors)."""
    from attrimp.data.annotations import load_attribute_file, load_manifest_attributes
    from attrimp.data.priors import compute_priors, plot_priors

    # A manifest's `attribute_source` is the image-level manifest itself: read it per identity.
    if cfg.data.dataset == "manifest":
        table = load_manifest_attributes(data.attribute_source, data.schema)
    elif data.attribute_source is not None:
        table = load_attribute_file(data.attribute_source, data.schema)
    else:
        return
    priors = compute_priors(table)
    atomic_write_frame(priors, out / "tables" / "priors.csv")
    (out / "figures").mkdir(parents=True, exist_ok=True)
    plot_priors(priors, out / "figures" / "priors.png", title=f"Attribute priors ({data.name})")


def study_conditions(cfg: StudyConfig, schema, model) -> list:
    """The test-time conditions of ``cfg.ablation.designs`` that ``model`` can run (the learned
    router's conditions, its matched-noise and partial oracles included, need a model trained
    with the learned router)."""
    from attrimp.evaluate.ablation import LEARNED_ROUTERS, make_conditions

    learned = model.router.needs_features
    return [
        c
        for c in make_conditions(
            schema,
            cfg.ablation.designs,
            random_subsets=cfg.ablation.random_subsets,
            noisy_p=cfg.ablation.noisy_p,
            seed=cfg.ablation.seed,
        )
        if c.router not in LEARNED_ROUTERS or learned
    ]


def _barrier(dist) -> None:
    if dist.world_size > 1:
        import torch.distributed

        torch.distributed.barrier()


def _trained_model(run: _Run, data):
    """The study's model: loaded from ``cache/train-<key>`` when that training finished
    before, trained there otherwise (`attrimp.train.training` resumes inside the epochs)."""
    import torch

    from attrimp.model.checkpoint import load_model
    from attrimp.train.pipeline import build_model, datasets
    from attrimp.train.training import latest_checkpoint, train

    cfg, stages = run.cfg, run.stages
    key = cfg.fingerprint("data", "model", "experts", "router", "train")
    folder = run.out / "cache" / f"train-{key}"
    done = folder / "done.json"
    if done.exists():
        ckpt = latest_checkpoint(folder)
        stages.cached["train"] = 1
        stages.say("train", f"cached model {ckpt}")
        return load_model(ckpt, device=run.device), key
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, data)
    stages.say(
        "train",
        f"{cfg.model.backbone} + {data.schema.n_experts} experts × {model.experts.block_indices} "
        f"blocks (experts = {model.expert_parameter_share():.2%} of the backbone), "
        f"{cfg.train.epochs} epochs on {run.device}",
    )
    result = train(
        model,
        datasets(model, data)[0],
        cfg.train,
        folder,
        device=run.device,
        num_workers=cfg.data.num_workers,
        progress=run.progress,
        attribute_loss_weight=cfg.router.attribute_loss_weight,
    )
    if run.dist.is_main:
        atomic_write_text(
            done, json.dumps({"epochs": result.epochs, "history": result.history}, indent=1)
        )
    if result.history:
        stages.say("train", f"final loss {result.history[-1]['loss']:.3f}")
    return model.eval(), key


def _model_info(model) -> dict[str, Any]:
    return {
        "backbone": model.config.backbone,
        "pretrained": model.config.pretrained,
        "img_size": list(model.config.img_size),
        "bank": model.config.bank,
        "expert_blocks": list(model.experts.block_indices),
        "rank": model.config.rank,
        "site": model.config.site,
        "pooling": model.config.pooling,
        "n_experts": model.schema.n_experts,
        "expert_parameters": model.expert_parameter_count(),
        "backbone_parameters": model.backbone_parameter_count(),
        "expert_share": model.expert_parameter_share(),
        "router": model.router.name,
    }


def _learned_router_accuracy(model, evaluator, data) -> dict[str, Any] | None:
    """How well the learned router predicts each group on the test split (query and gallery
    images), each accuracy beside the majority-class rate a constant guess would score, and
    the balanced accuracy under its own name (`routers.learned.group_accuracy`).

    ``mA_binary`` is the pedestrian-attribute convention: the mean balanced accuracy over the
    binary attributes (one per two-valued group, one per value of a multi-valued group). The
    old keys ``mA`` (= ``mA_binary``) and ``group_accuracy`` (= ``accuracy``) stay until the
    report reads the new names; neither is "mean per-group accuracy"."""
    if not model.router.needs_features:
        return None
    import torch

    from routers.learned import attribute_accuracy

    acc = evaluator.learned_accuracy()
    logits = torch.cat([evaluator.learned_logits(n) for n in ("query", "gallery")])
    truth = torch.cat([evaluator.splits[n].attributes for n in ("query", "gallery")])
    binary = attribute_accuracy(logits, truth, data.schema)
    acc.update(
        split="test (query + gallery images)",
        images=len(truth),
        binary_balanced_accuracy=binary["balanced_accuracy"],
        mA_binary=binary["mA"],
        mA=binary["mA"],
        group_accuracy=acc["accuracy"],
    )
    return json.loads(json.dumps(acc, default=float))


RETRAIN_PREFIX = "retrain:"


def _retrained_conditions(run: _Run, data, train_key: str) -> list[Path]:
    """Train-time ablation: one model trained AND tested under each condition of the designs in
    ``ablation.retrain`` (a group that was never on in training cannot be relied on). Each
    model's per-query table is cached like a test-time condition; returns their paths."""
    from attrimp.evaluate.ablation import make_conditions

    cfg = run.cfg
    conditions = make_conditions(
        data.schema,
        cfg.ablation.retrain,
        random_subsets=cfg.ablation.random_subsets,
        noisy_p=cfg.ablation.noisy_p,
        seed=cfg.ablation.seed,
    )
    folder = run.out / "cache" / f"retrain-{train_key}-{cfg.fingerprint('eval')}"
    paths = [folder / f"{cond.key()}.parquet" for cond in conditions]
    for cond, path in zip(conditions, paths):
        if not path.exists():
            _retrain_one(run, data, cond, path)
    return paths


def _retrain_one(run: _Run, data, cond, path: Path) -> None:
    """Train a model with the oracle router under ``cond`` and (rank 0) write its per-query
    table, its configurations prefixed with `RETRAIN_PREFIX`, to ``path``."""
    import torch

    from attrimp.evaluate.conditions import ConditionEvaluator, build_router
    from attrimp.model.mosaic import MoSAICReID
    from attrimp.train.pipeline import datasets, model_config
    from attrimp.train.training import train

    cfg = run.cfg
    run.stages.say("retrain", f"{cond.name}: training a model under this configuration")
    mcfg = model_config(cfg, data)
    mcfg.router, mcfg.router_kwargs = "oracle", {}
    torch.manual_seed(cfg.train.seed)
    router = build_router(cond, data.schema, query=False)
    model = MoSAICReID(mcfg, schema=data.schema, router=router)
    train_set, query_set, gallery_set = datasets(model, data)
    train(
        model,
        train_set,
        cfg.train,
        path.parent / f"train-{cond.key()}",
        device=run.device,
        num_workers=cfg.data.num_workers,
        progress=run.progress,
    )
    if not run.dist.is_main:
        return
    evaluator = ConditionEvaluator.from_config(
        model, query_set, gallery_set, cfg.eval, device=run.device
    )
    with torch.no_grad():
        result, _ = evaluator.run(cond)
    table = evaluator.table(cond, result)
    table["config"] = RETRAIN_PREFIX + table["config"]
    table["design"] = RETRAIN_PREFIX + table["design"]
    atomic_write_frame(table, path)

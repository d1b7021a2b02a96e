"""ReID training of a MoSAIC model: PK batches, ID + triplet (+ centre, + attribute) losses.

The loop is deliberately plain: one epoch = one pass of the PK sampler; a checkpoint after every
epoch holds the model (``attrimp.model.checkpoint`` format) *and* the trainer state (optimiser moments,
scheduler position, RNG states, log), all safetensors + JSON, so a run killed at any point
resumes from the last finished epoch and continues bit for bit as if it had never stopped.

Checkpoints live in ``out/checkpoints/epoch-NNNN/``; ``out/checkpoints/latest`` names the newest
complete one and is replaced atomically after the folder is fully written, so a kill during a
save leaves the previous checkpoint in charge. Under ``torchrun`` the model is wrapped in
DistributedDataParallel, the PK batches are sharded by rank and only rank 0 writes.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader

from attrimp.config import TrainConfig
from attrimp.data.dataset import ReIDImageDataset
from attrimp.data.sampler import PKSampler
from attrimp.devices import resolve_device
from attrimp.errors import CheckpointError, ConfigError
from attrimp.io import atomic_folder, atomic_write_text, atomic_writer, sha256_file
from attrimp.model.checkpoint import load_weights, save_checkpoint
from attrimp.model.mosaic import MoSAICReID
from attrimp.train.losses import CenterLoss, batch_hard_triplet_loss, identity_loss
from attrimp.train.optim import build_optimizer, warmup_cosine

LOG_FIELDS = [
    "epoch",
    "steps",
    "loss",
    "id_loss",
    "triplet_loss",
    "center_loss",
    "attr_loss",
    "lr",
    "seconds",
]
#: the loss parts summed per epoch, in the order of the on-device accumulator
LOSS_KEYS = ("loss", "id_loss", "triplet_loss", "center_loss", "attr_loss")
#: the progress bar's loss is refreshed every this many steps. The running sums stay on the
#: device and reading them to the host (``float``, ``.item()``, ``.tolist()``) waits for every
#: queued kernel to finish: once per step, that stalls the GPU at every step (the host cannot
#: queue step n+1 while step n runs). So they are read only every LOG_EVERY steps, and once at
#: the end of the epoch for the logged statistics.
LOG_EVERY = 20
STATE_WEIGHTS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"

log = logging.getLogger(__name__)


__all__ = ["TrainResult", "latest_checkpoint", "resolve_checkpoint", "train"]


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when started by ``torchrun`` (WORLD_SIZE > 1); else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


@dataclass
class TrainResult:
    checkpoint: Path
    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0


# --------------------------------------------------------------------------- checkpoints
def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint that ``checkpoints/latest`` names, if it is complete.

    A pointer to a folder that is missing or incomplete (moved, half-deleted by hand) falls back
    to the newest complete ``epoch-NNNN`` folder, with a warning; nothing is deleted. Only when
    no complete checkpoint exists at all is the answer None (a fresh start).
    """
    root = Path(out_dir) / "checkpoints"
    pointer = root / "latest"
    named = None
    if pointer.is_file():
        named = pointer.read_text(encoding="utf-8").strip()
        if named and _complete(root / named):
            return root / named
    elif not root.is_dir():
        return None
    found = sorted((p for p in root.glob("epoch-*") if _complete(p)), key=lambda p: p.name)
    if not found:
        return None
    if str(pointer) not in _WARNED:
        _WARNED.add(str(pointer))
        what = f"names {named!r}, which is missing or incomplete" if named else "is missing"
        log.warning(
            "%s %s; using the newest complete checkpoint %s instead.", pointer, what, found[-1]
        )
    return found[-1]


_WARNED: set[str] = set()


def _complete(folder: Path) -> bool:
    """Whether a checkpoint folder holds every file a resume reads (not their integrity)."""
    return all(
        (folder / name).is_file()
        for name in (STATE_JSON, STATE_WEIGHTS, "config.json", "model.safetensors")
    )


def remove_stale_temporaries(out_dir: str | Path) -> list[Path]:
    """Delete the temporary checkpoint folders and files that a killed run left behind.

    Their names carry the writer's process id; those of a process still alive (another run
    writing here without the ``--out`` lock) are kept. Returns what was removed.
    """
    root = Path(out_dir) / "checkpoints"
    removed = []
    for tmp in (*root.glob(".epoch-*.tmp-*"), *root.glob(".latest.tmp-*")):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    if removed:
        log.info("removed %d temporary checkpoint file(s) left by an interrupted run", len(removed))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder as given, or the newest complete one of a run folder (``--out`` of
    `attrimp train`); a folder that is neither is returned as is, for the loader to explain."""
    path = Path(path)
    if not (path / "model.safetensors").exists() and (found := latest_checkpoint(path)) is not None:
        return found
    return path


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, extra in meta["plain"].items():
        state.setdefault(int(idx), {}).update(extra)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _save_training_state(
    out_dir: Path,
    epoch: int,
    model: MoSAICReID,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    center: CenterLoss | None,
    history: list[dict[str, float]],
    config: TrainConfig,
) -> Path:
    """Write checkpoint ``epoch-NNNN`` (model + trainer state) as one folder, then point
    ``latest`` at it and delete the older ones. The folder is filled under a temporary name and
    renamed into place (`attrimp.io.atomic_folder`), so ``latest`` never names half a folder."""
    root = out_dir / "checkpoints"
    name = f"epoch-{epoch:04d}"
    with atomic_folder(root / name) as tmp:
        save_checkpoint(model, tmp, metadata={"epoch": epoch, "train": config.__dict__})
        _write_trainer_state(tmp, epoch, opt, sched, center, history)
    atomic_write_text(root / "latest", name)
    for old in root.glob("epoch-*"):  # keep only the newest complete checkpoint
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return root / name


def _write_trainer_state(
    folder: Path,
    epoch: int,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    center: CenterLoss | None,
    history: list[dict[str, float]],
) -> None:
    """The optimiser moments, RNG states and centres (safetensors) and the rest (JSON)."""
    tensors, meta = _flatten_optimizer(opt)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    if center is not None:
        tensors["center.centers"] = center.centers.detach().cpu().contiguous()
    save_file(tensors, str(folder / STATE_WEIGHTS))
    document = {
        "epoch": epoch,
        # checked on resume like model.safetensors: a changed or truncated state file is an
        # error, never a silent resume with the wrong optimiser moments or RNG state
        "state_sha256": sha256_file(folder / STATE_WEIGHTS),
        "optimizer": meta,
        "scheduler": {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"},
        "history": history,
    }
    # through attrimp.io like every other file of a run (the folder is published atomically
    # too, but a writer must not depend on where its caller puts it)
    atomic_write_text(folder / STATE_JSON, json.dumps(document, indent=1, default=float))


def _load_training_state(
    folder: Path,
    model: MoSAICReID,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    center: CenterLoss | None,
) -> tuple[int, list[dict[str, float]]]:
    document, tensors = read_training_state(folder)
    load_weights(model, folder)
    _restore_optimizer(opt, tensors, document["optimizer"])
    sched_state = dict(document["scheduler"])
    sched_state["lr_lambdas"] = [None] * len(opt.param_groups)
    sched.load_state_dict(sched_state)
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(tensors["rng.cuda"]))
    if center is not None and "center.centers" in tensors:
        with torch.no_grad():
            center.centers.copy_(tensors["center.centers"])
    return int(document["epoch"]), list(document["history"])


def read_training_state(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The trainer state of a checkpoint folder, after checking it against its SHA-256."""
    state_file = folder / STATE_WEIGHTS
    try:
        document = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
        if not isinstance(document, dict):
            raise json.JSONDecodeError("not a JSON object", "", 0)
        recorded = document.get("state_sha256")
        if recorded is not None and sha256_file(state_file) != recorded:
            raise CheckpointError(
                f"The trainer state {str(state_file)!r} does not match the SHA-256 recorded in "
                f"its {STATE_JSON}: it is corrupt or was replaced. Resume from another copy, or "
                "start afresh with --no-resume."
            )
        tensors = load_file(str(state_file))
    except (OSError, json.JSONDecodeError, SafetensorError) as e:
        raise CheckpointError(
            f"The trainer state in {str(folder)!r} cannot be read ({e}); resume from another "
            "copy, or start afresh with --no-resume."
        ) from None
    missing = [k for k in ("epoch", "optimizer", "scheduler", "history") if k not in document]
    missing += [k for k in ("rng.torch",) if k not in tensors]
    if missing:
        raise CheckpointError(
            f"The trainer state in {str(folder)!r} lacks {missing[0]!r}; resume from another "
            "copy, or start afresh with --no-resume."
        )
    return document, tensors


# --------------------------------------------------------------------------- the loop
def _autocast(device: torch.device, amp: str):
    use = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use)


#: the torch.compile backend of a compiled step ("inductor"; the CPU tests use "aot_eager",
#: which runs the same Dynamo capture and autograd split without generating code)
COMPILE_BACKEND = "inductor"
COMPILE_MODES = ("eager", "default", "reduce-overhead")


def resolve_compile(setting: str, device: torch.device, world_size: int = 1) -> str:
    """The step mode that ``train.compile = setting`` means here: one of `COMPILE_MODES`.

    ``auto`` is ``reduce-overhead`` (a compiled step replayed as CUDA graphs) on a single CUDA
    device: at the reference batch of 64 an eager step is launch-bound (on an H200, 25 ms of
    kernels in a 43 ms step; 2.6x the time of the graph step). The PK sampler yields batches of
    exactly P x K, so the shapes are static and the graph is captured once. Elsewhere ``auto``
    is eager: on a CPU compiling costs more than it saves on a short run, and under torchrun
    DDP's gradient hooks are left to run as DDP schedules them. CUDA graphs need a CUDA
    device, so an explicit ``reduce-overhead`` elsewhere compiles without them.
    """
    if setting == "auto":
        return "reduce-overhead" if device.type == "cuda" and world_size == 1 else "eager"
    if setting not in COMPILE_MODES:
        raise ConfigError(
            f"train.compile must be one of {['auto', *COMPILE_MODES]}, not {setting!r}."
        )
    if setting == "reduce-overhead" and device.type != "cuda":
        log.info("train.compile = reduce-overhead needs a CUDA device; compiling without graphs.")
        return "default"
    return setting


def loss_step(
    net: nn.Module,
    model: MoSAICReID,
    config: TrainConfig,
    center: CenterLoss | None,
    attribute_loss_weight: float,
    device: torch.device,
) -> Callable[..., torch.Tensor]:
    """The differentiable part of a training step: forward and losses, as one function of the
    batch (what `compile_step` compiles). It returns the weighted loss parts stacked in
    `LOSS_KEYS` order, the total first: one tensor, so the caller reads or sums one output.

    Each part is logged weighted, as it enters the total. A weight of 0 leaves the part out (as
    center_loss_weight = 0 does), so its parameters get no gradient at all rather than a zero
    one that AdamW would still decay; its logged value is 0.
    """
    learned = model.router.needs_features

    def step(
        images: torch.Tensor,
        labels: torch.Tensor,
        routed: torch.Tensor,
        attributes: torch.Tensor,
        cams: torch.Tensor | None,
    ) -> torch.Tensor:
        with _autocast(device, config.amp):
            out = net(images, routed, cams)
        parts: dict[str, torch.Tensor] = {}
        if config.id_loss_weight > 0:
            parts["id_loss"] = config.id_loss_weight * identity_loss(
                out.logits, labels, smoothing=config.label_smoothing
            )
        if config.triplet_loss_weight > 0:
            parts["triplet_loss"] = config.triplet_loss_weight * batch_hard_triplet_loss(
                out.global_features, labels, margin=config.triplet_margin
            )
        if center is not None:
            parts["center_loss"] = config.center_loss_weight * center(out.global_features, labels)
        if learned and out.attr_logits is not None:
            parts["attr_loss"] = attribute_loss_weight * model.router.loss(
                out.attr_logits, attributes
            )
        loss = sum(parts.values())
        zero = out.features.new_zeros(())
        return torch.stack([loss, *(parts.get(k, zero) for k in LOSS_KEYS[1:])])

    return step


def compile_step(fn: Callable[..., torch.Tensor], mode: str) -> Callable[..., torch.Tensor]:
    """``fn`` itself (``eager``) or compiled with static shapes (``default``, or
    ``reduce-overhead`` = replayed as CUDA graphs). The backward is compiled with the forward
    (AOTAutograd), the optimiser step stays eager. If compiling fails (a plug-in module Dynamo
    cannot trace), the step falls back to eager with a warning instead of ending the run."""
    if mode == "eager":
        return fn
    # A copy of the function with its own code object: Dynamo caches compiled graphs per code
    # object, so without it every train() of a process (a study's retrained configurations)
    # would add a recompilation to one shared cache, and past torch's recompile limit (8) the
    # step would silently run eagerly; the old graphs would also stay alive with that cache.
    fn = types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    backend = COMPILE_BACKEND
    compiled = torch.compile(
        fn,
        backend=backend,
        mode=mode if backend == "inductor" else None,
        dynamic=False,
    )
    state = {"first": True, "fn": compiled}

    def step(*args: Any) -> torch.Tensor:
        if not state["first"]:
            return state["fn"](*args)
        state["first"] = False
        try:
            return compiled(*args)
        except Exception as e:  # noqa: BLE001 - any compiler failure: train eagerly instead
            log.warning(
                "Compiling the training step (train.compile = %s) failed, training eagerly: %s",
                mode,
                str(e).splitlines()[0] if str(e) else type(e).__name__,
            )
            state["fn"] = fn
            return fn(*args)

    return step


def train(
    model: MoSAICReID,
    train_set: ReIDImageDataset,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    resume: bool = True,
    progress: bool = False,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    attribute_loss_weight: float = 1.0,
) -> TrainResult:
    """Train ``model`` on ``train_set`` (targets = classifier labels) and checkpoint each epoch.

    With ``resume`` (the default) a run whose ``out_dir`` already holds a checkpoint continues
    from it; the result is identical to an uninterrupted run. ``on_epoch_end(epoch, stats)`` is
    called after each epoch's checkpoint is written (the resume test uses it to kill -9 itself).
    ``attribute_loss_weight`` scales a learned router's attribute loss
    (``[router] attribute_loss_weight``); ``config`` weights the others. The history holds, per
    epoch, each weighted loss part's mean per step, over all ranks under DDP. ``progress`` shows
    a progress bar (the CLI turns it on); each epoch is also logged at INFO level.
    """
    out_dir = Path(out_dir)
    device = resolve_device(device)  # a bare "cuda" is this process's GPU (DDP needs one)
    dist_info = init_distributed(device)
    _check_trainable(model, train_set, config)
    _schedule_sampling(model, config)
    # The order of the next steps is fixed: each draws from the seeded RNG, so an exact resume
    # (and the same result as before any refactoring) depends on it.
    seed_everything(config.seed)
    model.to(device)
    run = _build_run(model, train_set, config, device, dist_info, num_workers)
    if dist_info.is_main:
        remove_stale_temporaries(out_dir)
    start_epoch, history = 0, []
    if resume and (found := latest_checkpoint(out_dir)) is not None:
        start_epoch, history = _load_training_state(found, model, run.opt, run.sched, run.center)
    _prepare_step(run, train_set, attribute_loss_weight)
    writer = _tensorboard(out_dir) if dist_info.is_main else None
    with _ProgressBar(progress and dist_info.is_main, run.steps_per_epoch) as bar:
        for epoch in range(start_epoch, config.epochs):
            stats = _train_epoch(run, epoch, bar)
            history.append(stats)
            if dist_info.is_main:
                _save_epoch(run, out_dir, epoch + 1, history, writer)
            if dist_info.world_size > 1:
                torch.distributed.barrier()
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, stats)
    if writer is not None:
        writer.close()
    final = latest_checkpoint(out_dir)
    if final is None:  # zero epochs asked for, nothing written yet
        final = _save_training_state(
            out_dir, 0, model, run.opt, run.sched, run.center, history, config
        )
    return TrainResult(final, config.epochs, history, start_epoch)


def _check_trainable(model: MoSAICReID, train_set: ReIDImageDataset, config: TrainConfig) -> None:
    """One sentence for a training set, model or config that cannot train anything."""
    if train_set.target != "label":
        raise ConfigError("The training set must yield classifier labels (target='label').")
    if model.classifier is None:
        raise ConfigError("The model has no identity classifier: build it with num_classes > 0.")
    if config.weighted_losses_off() and not model.router.needs_features:
        # nothing would train the model: every step a zero loss, and no gradient
        raise ConfigError(
            "Every training loss is switched off: set train.id_loss_weight or "
            "train.triplet_loss_weight above 0."
        )


def _schedule_sampling(model: MoSAICReID, config: TrainConfig) -> None:
    """Hand ``train.predicted_gates_p`` (scheduled sampling) to a learned router.

    The mixing happens inside the router, where both the annotation and the prediction are at
    hand; the probability is a training setting, so the loop sets it on every call (a model
    trained before with another value gets this run's). 0 leaves the router as it is."""
    p = config.predicted_gates_p
    if hasattr(model.router, "predicted_gates_p"):
        model.router.predicted_gates_p = float(p)
    elif p > 0:
        raise ConfigError(
            "train.predicted_gates_p trains the experts on a learned router's predicted gates; "
            f"the model's router {model.router.name!r} predicts none (use router.name = 'learned')."
        )


@dataclass
class _Run:
    """What every epoch of one `train` call shares (built by `_build_run`, `_prepare_step`)."""

    model: MoSAICReID
    config: TrainConfig
    device: torch.device
    dist: DistInfo
    center: CenterLoss | None
    sampler: PKSampler
    loader: DataLoader
    steps_per_epoch: int
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    #: the compiled (or eager) forward + losses, and the model it runs (DDP-wrapped or not)
    step_fn: Callable[..., torch.Tensor] | None = None
    graphs: bool = False
    slot_group: torch.Tensor | None = None
    needs_camids: bool = False


def _build_run(
    model: MoSAICReID,
    train_set: ReIDImageDataset,
    config: TrainConfig,
    device: torch.device,
    dist_info: DistInfo,
    num_workers: int,
) -> _Run:
    """The centre loss, PK sampler and loader, optimiser and learning-rate schedule."""
    center = (
        CenterLoss(model.config.num_classes, model.backbone.width).to(device)
        if config.center_loss_weight > 0
        else None
    )
    sampler = PKSampler(
        train_set.targets,
        config.identities_per_batch,
        config.images_per_identity,
        seed=config.seed,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
    )
    loader = DataLoader(
        train_set,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    steps_per_epoch = len(sampler)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    opt = build_optimizer(
        model,
        name=config.optimizer,
        lr=config.lr,
        weight_decay=config.weight_decay,
        expert_lr_scale=config.expert_lr_scale,
        extra_parameters=list(center.parameters()) if center is not None else None,
    )
    sched = warmup_cosine(
        opt,
        total_steps=config.epochs * steps_per_epoch,
        warmup_steps=config.warmup_epochs * steps_per_epoch,
    )
    return _Run(
        model, config, device, dist_info, center, sampler, loader, steps_per_epoch, opt, sched
    )


def _prepare_step(run: _Run, train_set: ReIDImageDataset, attribute_loss_weight: float) -> None:
    """Wrap the model for DDP (after a resume loaded its weights), check the camera ids once,
    and build the (compiled) step."""
    model, device = run.model, run.device
    net: nn.Module = model
    if run.dist.world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            # The set of parameters that receive a gradient is the same every step (the gated
            # bank computes every expert, an off one gets an exact-zero gradient), so DDP may
            # learn it once instead of traversing the graph each step (find_unused_parameters);
            # a plug-in router whose parameters sit unused is still handled.
            static_graph=True,
        )
    run.needs_camids = model.config.camera_count > 0
    if run.needs_camids:  # once, on the host: the forward does not read ids on the device
        model.check_camids([r.camid for r in train_set.records])
    run.slot_group = torch.tensor(np.array(model.schema.slot_group), device=device)
    mode = resolve_compile(run.config.compile, device, run.dist.world_size)
    run.graphs = mode == "reduce-overhead"
    run.step_fn = compile_step(
        loss_step(net, model, run.config, run.center, attribute_loss_weight, device), mode
    )


def _train_epoch(run: _Run, epoch: int, bar: _ProgressBar) -> dict[str, float]:
    """One pass of the PK sampler; returns the epoch's statistics (a row of the history)."""
    run.model.train()
    run.sampler.set_epoch(epoch)
    bar.start_epoch(epoch + 1)
    # Running sums of LOSS_KEYS, on the device (see LOG_EVERY). float64 so that the sums are
    # exactly the Python float sums of the per-step values they replaced.
    sums = torch.zeros(len(LOSS_KEYS), dtype=_sum_dtype(run.device), device=run.device)
    t0, steps = time.perf_counter(), 0
    for step, batch in enumerate(run.loader):
        if step >= run.steps_per_epoch:
            break
        values = _train_step(run, batch)
        steps += 1
        with torch.no_grad():  # one tiny kernel, queued: no synchronisation
            sums += values.detach().to(sums.dtype)
        bar.step(sums, steps)
    totals = _epoch_totals(sums, steps, run.dist.world_size)
    stats: dict[str, float] = {
        k: total / max(1.0, totals[-1]) for k, total in zip(LOSS_KEYS, totals)
    }
    bar.show_loss(stats["loss"])
    stats.update(
        epoch=epoch + 1,
        steps=steps,
        lr=run.opt.param_groups[0]["lr"],
        seconds=time.perf_counter() - t0,
    )
    log.info(
        "epoch %d: loss %.4f, %d steps, %.1f s", epoch + 1, stats["loss"], steps, stats["seconds"]
    )
    return stats


def _train_step(run: _Run, batch: tuple) -> torch.Tensor:
    """Forward, backward and optimiser step of one PK batch; returns the loss parts (device)."""
    images, labels, camids, attributes, _idx = batch
    device, config = run.device, run.config
    # non-blocking from the loader's pinned memory: a blocking copy would synchronise the GPU
    # stream at every step
    images = images.to(device, non_blocking=True)
    labels = torch.as_tensor(labels).to(device, non_blocking=True)
    attributes = attributes.to(device, non_blocking=True)
    routed = attributes
    if config.group_dropout > 0:
        routed = drop_groups(
            attributes, run.slot_group, config.group_dropout, len(run.model.schema.groups)
        )
    cams = torch.as_tensor(camids).to(device, non_blocking=True) if run.needs_camids else None
    if run.graphs:  # the previous step's graph outputs may now be overwritten
        torch.compiler.cudagraph_mark_step_begin()
    values = run.step_fn(images, labels, routed, attributes, cams)
    run.opt.zero_grad(set_to_none=True)
    values[0].backward()
    if run.center is not None and run.dist.world_size > 1:
        _average_gradients(run.center.parameters(), run.dist.world_size)
    if config.grad_clip:
        nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
    run.opt.step()
    run.sched.step()
    return values


def _save_epoch(
    run: _Run, out_dir: Path, epoch: int, history: list[dict[str, float]], writer
) -> None:
    """Rank 0's end of an epoch: the checkpoint, the CSV log and TensorBoard."""
    _save_training_state(
        out_dir, epoch, run.model, run.opt, run.sched, run.center, history, run.config
    )
    _write_log(out_dir, history)
    if writer is not None:
        for k in (*LOSS_KEYS, "lr"):
            writer.add_scalar(f"train/{k}", history[-1][k], epoch)
        writer.flush()


class _ProgressBar:
    """The training bar (epoch, steps, running loss) when ``show``; a no-op otherwise, so a
    library call prints nothing. The running loss is read from the device only every
    `LOG_EVERY` steps (see there)."""

    def __init__(self, show: bool, total: int) -> None:
        self.show, self.total = show, total
        self._bar = self._task = None
        if show:
            from rich.progress import BarColumn, TextColumn, TimeRemainingColumn

            from attrimp.progress import progress_bar

            self._bar = progress_bar(
                True,
                TextColumn("[bold]train[/] epoch {task.fields[epoch]}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} steps · loss {task.fields[loss]:.3f}"),
                TimeRemainingColumn(),
            )

    def __enter__(self) -> _ProgressBar:
        if self._bar is not None:
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, epoch=0, loss=0.0)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def start_epoch(self, epoch: int) -> None:
        if self._bar is not None:
            self._bar.reset(self._task, total=self.total, epoch=epoch, loss=0.0)

    def step(self, sums: torch.Tensor, steps: int) -> None:
        """One step done; ``sums`` are the epoch's on-device loss sums, total first."""
        if self._bar is None:
            return
        if steps % LOG_EVERY == 0:
            self._bar.update(self._task, advance=1, loss=float(sums[0]) / steps)
        else:
            self._bar.update(self._task, advance=1)

    def show_loss(self, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, loss=loss)


def _sum_dtype(device: torch.device) -> torch.dtype:
    """float64 for the on-device loss sums, so they equal the host's float sums; MPS has no
    float64, so there they are float32 (close, not bit-equal)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _epoch_totals(sums: torch.Tensor, steps: int, world_size: int) -> list[float]:
    """The epoch's loss sums (in LOSS_KEYS order) followed by its step count, summed over all
    ranks, read to the host in one transfer.

    Under DDP every rank trains on its own batches, so rank 0's sums alone would log a loss
    seen on ``1 / world_size`` of the data; one all-reduce per epoch of one stacked tensor
    (sums + steps, so that the quotient is the mean over every rank's batches even if the ranks
    ran different step counts) makes the logged statistics those of the whole epoch, on every
    rank. Every rank must call this at the same point, as for any collective.
    """
    totals = torch.cat([sums, sums.new_tensor([float(steps)])])
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    return totals.tolist()


def _average_gradients(params, world_size: int) -> None:
    """All-reduce the gradients of parameters that live outside the DDP wrapper (the centre
    loss's centres), so every rank applies the same update and the ranks stay identical."""
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world_size)


def drop_groups(
    attributes: torch.Tensor, slot_group: torch.Tensor, p: float, n_groups: int | None = None
) -> torch.Tensor:
    """Annotations with each (sample, group) blanked with probability ``p``: an oracle router
    then switches that group's experts off for that sample. Drawn from the global torch RNG, so
    it is seeded and restored on resume like every other training draw. The attribute loss of a
    learned router still sees the full annotation.

    Pass ``n_groups`` (the schema's) in a training loop: deriving it from ``slot_group`` reads
    the device back to the host, a GPU stream synchronisation at every step."""
    if n_groups is None:
        n_groups = int(slot_group.max()) + 1
    keep = torch.rand(attributes.shape[0], n_groups, device=attributes.device) >= p
    return attributes * keep[:, slot_group].to(attributes.dtype)


def _write_log(out_dir: Path, history: list[dict[str, float]]) -> None:
    """Rewrite the CSV log from the history (so a resumed run never duplicates rows)."""
    with atomic_writer(out_dir / "train_log.csv", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, 0.0) for k in LOG_FIELDS})


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency, but stay usable
        return None
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))

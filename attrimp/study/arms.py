"""Arms and seeds in one study: a ``[compare]`` table run as one ordinary study per arm x seed,
then compared (`attrimp.study.compare.compare_studies`).

Layout of ``OUT``::

    OUT/work/world-<hash>/          the synthetic world, drawn once and read by every arm
    OUT/arms/<arm>/seed-<s>/        one ordinary study (`attrimp.study.run.run_study`) + arm.json
    OUT/report.html, report.json …  the comparison

Why each arm-seed is a whole study: it is resumable and readable on its own (its report), and
the comparison reads finished study folders only, the same as ``attrimp study compare``.

* **One world.** An arm on the synthetic dataset without its own ``data.root`` reads the world
  from ``OUT/work/world-<hash of its [data.synthetic] table>``: arms that differ in the model,
  the experts or ``data.color`` share one draw (the same identities and splits, so the
  comparison is paired by query); arms that change the world get their own.
* **Resume.** A finished arm-seed (its report.json written with the run's timings and the
  fingerprint of the config it would run now) is skipped without loading torch or the data;
  an unfinished one resumes through `run_study`'s own stage cache.
* **torchrun.** With ``WORLD_SIZE`` > 1, rank ``r`` runs the arm-seeds ``i`` with
  ``i % world == r``, each as a *single-process* study on its own device (``cuda:LOCAL_RANK``
  or the CPU): an arm-seed is too small to split, and many in parallel use the ranks fully.
  Rank 0 draws the worlds first; a barrier; the arm-seeds; a barrier; rank 0 compares.
* **Locks.** Rank 0 holds ``OUT``'s lock (`attrimp.io.run_output`) from the first world to
  the comparison's last file (`compare_studies` takes none: its caller owns the folder); each
  arm-seed locks its own folder, another lock file, so the two never wait on each other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from attrimp.config import StudyConfig, arm_config
from attrimp.errors import ConfigError
from attrimp.io import atomic_write_json, run_output
from attrimp.study.compare import ARM_FILE as ARM_FILE  # written here, read by compare_studies
from attrimp.study.compare import StudyComparison

log = logging.getLogger(__name__)


#: how long a rank waits at a barrier for the others' arm-seeds (a real arm trains for hours)
BARRIER_TIMEOUT = timedelta(days=7)


@dataclass
class ArmSeed:
    """One arm with one training seed: the study it runs and where."""

    arm: str
    seed: int
    folder: Path
    config: StudyConfig
    #: the shared synthetic world this study reads (its ``data.root``); None = its own data
    world: Path | None = None

    def finished(self) -> bool:
        """Whether this study ran to its end with this very config: its report.json carries
        the run's timings (written last) and the fingerprint of this config (config.json is
        not enough: a rerun with another config rewrites it first and may then be killed)."""
        try:
            report = json.loads((self.folder / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        study = report.get("study") if isinstance(report, dict) else None
        return (
            "timings" in report
            and isinstance(study, dict)
            and study.get("fingerprint") == self.config.fingerprint()
        )


def arm_seeds(cfg: StudyConfig, out: str | Path) -> list[ArmSeed]:
    """The studies ``cfg``'s ``[compare]`` asks for, arm by arm, seed by seed: each arm's
    overrides merged in, ``train.seed`` set, and the synthetic world shared (`world_root`)."""
    if cfg.compare is None:
        raise ConfigError(f"The study config {cfg.name!r} has no [compare] table to run.")
    out = Path(out)
    seeds = cfg.compare.seed_list(cfg.train.seed)
    runs = []
    for arm in cfg.compare.arm_list():
        for seed in seeds:
            study = arm_config(cfg, arm, seed)
            root = world_root(study, out)
            if root is not None:
                study.data.root = str(root)
            folder = out / "arms" / arm.folder / f"seed-{seed}"
            runs.append(ArmSeed(arm.name, seed, folder, study, root))
    return runs


def world_root(cfg: StudyConfig, out: Path) -> Path | None:
    """Where a synthetic arm reads its world: ``OUT/work/world-<hash>``, the hash of its
    ``[data.synthetic]`` table, made absolute (each arm's config.json then names the world
    wherever it is read from); None when the arm is not synthetic or names its own
    ``data.root``."""
    if cfg.data.dataset != "synthetic" or cfg.data.root is not None:
        return None
    table = json.dumps(dataclasses.asdict(cfg.data.synthetic), sort_keys=True, default=list)
    digest = hashlib.sha256(table.encode()).hexdigest()[:12]
    return (out / "work" / f"world-{digest}").resolve()


def run_comparison(
    cfg: StudyConfig,
    out: str | Path,
    *,
    resume: bool = True,
    progress: bool = False,
    console=None,
    single_file: bool = False,
) -> StudyComparison | None:
    """Run every arm-seed of ``cfg``'s ``[compare]`` (see the module docstring), then compare
    them into ``out``. Returns the comparison on rank 0 (and in a plain process), None on the
    other ``torchrun`` ranks. ``resume=False`` reruns every arm-seed from scratch;
    ``single_file`` also writes the comparison page with its figures inside."""
    runs = arm_seeds(cfg, out)
    return run_arm_seeds(
        cfg, runs, out, resume=resume, progress=progress, console=console, single_file=single_file
    )


def run_arm_seeds(
    cfg: StudyConfig,
    runs: list[ArmSeed],
    out: str | Path,
    *,
    resume: bool = True,
    progress: bool = False,
    console=None,
    single_file: bool = False,
) -> StudyComparison | None:
    """`run_comparison` on a given list of arm-seeds (`arm_seeds`' or one built by hand, e.g.
    arms whose replicates have different seeds); ``cfg`` names the comparison and gives its
    alpha and bootstrap seed."""
    from attrimp.study.clock import Stages

    out = Path(out)
    rank, world = _rank_and_world()
    stages = Stages(progress, console)  # every rank says which arm-seed it runs
    group = _ProcessGroup(world)
    comparison = None
    try:
        with run_output(out):
            if rank == 0:
                _draw_worlds(runs, out, progress=progress)
            group.barrier()  # every world on disk before any rank reads one
            for i, run in enumerate(runs):
                if i % world == rank:
                    label = f"{run.arm}, seed {run.seed} ({i + 1}/{len(runs)}"
                    label += f", rank {rank})" if world > 1 else ")"
                    # one rank's stages and bars on the terminal, not several interleaved
                    _run_arm_seed(run, label, resume, progress and rank == 0, stages)
            group.barrier()  # every arm-seed finished before rank 0 compares them
            if rank == 0:
                comparison = _compare(cfg, runs, out, progress, stages, single_file)
    finally:
        group.close()
    return comparison


def _rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0") or 0), int(os.environ.get("WORLD_SIZE", "1") or 1)


def _draw_worlds(runs: list[ArmSeed], out: Path, *, progress: bool) -> None:
    """Each shared synthetic world drawn once (rank 0, before any arm-seed starts); a world
    already on disk with the same design is only read."""
    from attrimp.train.pipeline import prepare_data

    drawn: set[Path] = set()
    for run in runs:
        if run.world is not None and run.world not in drawn:
            drawn.add(run.world)
            prepare_data(run.config, out / "work", progress=progress, model_check=False)


def _run_arm_seed(run: ArmSeed, where: str, resume: bool, progress: bool, stages) -> None:
    """One arm-seed as an ordinary single-process study in its folder (skipped when finished),
    with its arm.json; ``where`` names it in the progress lines."""
    from attrimp.study.run import run_study

    if resume and run.finished():
        stages.say("arm", f"{where}: finished before, {run.folder}")
        log.info("arm-seed %s: finished before", where)
        return
    stages.say("arm", f"{where} → {run.folder}")
    run.folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.folder / ARM_FILE, {"arm": run.arm, "seed": run.seed})
    with _single_process():
        run_study(run.config, run.folder, resume=resume, progress=progress)
    stages.say("arm", f"{where}: done")


@contextlib.contextmanager
def _single_process() -> Iterator[None]:
    """Run the block as a plain process although ``torchrun`` started this one.

    `run_study` and the trainer decide between one process and a process group from
    ``WORLD_SIZE`` and ``RANK`` (`attrimp.train.training.init_distributed`,
    `attrimp.io.is_main_process`); an arm-seed runs alone on its rank, so both are set to a
    single process for the block (and restored after). Its device is this rank's own GPU when
    there is one: made the current CUDA device, which a bare ``cuda`` then means."""
    saved = {k: os.environ.get(k) for k in ("WORLD_SIZE", "RANK")}
    if saved["WORLD_SIZE"] not in (None, "1"):
        import torch

        from attrimp.devices import local_rank

        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
    os.environ.update(WORLD_SIZE="1", RANK="0")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _ProcessGroup:
    """The ranks' barriers (gloo: only barriers pass through it, and it works beside any
    device); nothing at all in a plain process."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.joined = False
        if world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(backend="gloo", timeout=BARRIER_TIMEOUT)
                self.joined = True

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.joined:
            import torch.distributed as dist

            dist.destroy_process_group()


def _compare(
    cfg: StudyConfig, runs: list[ArmSeed], out: Path, progress: bool, stages, single_file: bool
) -> StudyComparison:
    """The comparison of every arm-seed folder into ``out`` (`compare_studies`, which leaves
    the lock on ``out`` to its caller: this runner holds it), at the study's alpha and seed."""
    from attrimp.study.compare import compare_studies

    names = list(dict.fromkeys(run.arm for run in runs))
    stages.say("compare", f"{len(runs)} studies in {len(names)} arms → {out / 'report.html'}")
    return compare_studies(
        [run.folder for run in runs],
        out=out,
        arms={str(run.folder): run.arm for run in runs},
        alpha=cfg.analysis.alpha,
        seed=cfg.analysis.seed,
        title=f"{cfg.name}: {' vs '.join(names)}",
        single_file=single_file,
        progress=progress,
    )

"""`attrimp study run [CONFIG]`: the whole study, from data to report."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        config: Path = typer.Argument(
            None,
            help="Study TOML (see docs/study.md). Without it: the built-in synthetic study.",
            show_default=False,
        ),
        out: Path = typer.Option(Path("runs/study"), "--out", "-o", help="Output folder."),
        resume: bool = typer.Option(
            True,
            "--resume/--fresh",
            help="Reuse finished stages in OUT/cache (default) or start over.",
        ),
        device: str = typer.Option(
            None, "--device", help="auto, cpu or cuda (overrides the config)."
        ),
        margin: float = typer.Option(
            None,
            "--margin",
            help="Equivalence margin of the verdicts in mAP (fraction, default 0.01): a group "
            "whose ΔmAP is shown to lie within ±margin is 'negligible' (overrides the config).",
            show_default=False,
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
        single_file: bool = typer.Option(
            False,
            "--single-file",
            help="Also write report-single.html: the study page and every battery's page in "
            "one file with its figures inside, for sharing.",
        ),
    ) -> None:
        """Run a study: data, model, training, ablations, statistics battery, report.

        A config with a \\[compare] table runs one study per arm and training seed into
        OUT/arms/ARM/seed-S and then compares them into OUT (see docs/study.md).

        Example: attrimp study run studies/configs/market1501_clip_vitb16.toml --out runs/market
        """
        from rich.console import Console

        from attrimp.api import study_config
        from attrimp.study.run import run_study

        # the same config loading as attrimp.run_study (built-in study when CONFIG is absent)
        overrides: dict[str, object] = {}
        if device is not None:
            overrides["device"] = device
        if margin is not None:
            overrides["analysis.margin"] = margin
        cfg = study_config(config, overrides_source=_flags(overrides), **overrides)
        _check_config(cfg, out)
        progress = Console(stderr=True)  # stages and bars to stderr, results to stdout
        if cfg.compare is not None:  # arms x seeds, then their comparison
            _run_comparison(cfg, out, resume, quiet, single_file, progress)
            return
        result = run_study(cfg, out, resume=resume, progress=not quiet, console=progress)
        _leave_process_group()
        if result is not None:  # under torchrun, ranks other than 0 end after the sweep
            console = Console()
            if single_file:
                from attrimp.study.report import write_single_file

                console.print(f"single file: {write_single_file(result.out)}", highlight=False)
            _summary(result, console)

    return None


def _check_config(cfg, out: Path) -> None:
    """The rest of the whole-config check, before any stage runs: the dataset paths and
    ``[model]`` (a misspelt backbone name) in seconds, without a download.

    It runs under --out's lock, so a second study on a folder in use stops at once (before
    torch is imported), and a config refused here leaves no --out behind
    (`attrimp.io.output_folder`); `run_study` then takes the lock again for the run."""
    from attrimp.io import run_output
    from attrimp.train.pipeline import check_data_paths, check_model

    with run_output(out):
        for study in _studies(cfg):
            check_data_paths(study)
            check_model(study)


def _studies(cfg) -> list:
    """The configs to check: ``cfg``, or one per arm of its ``[compare]`` (the first seed's:
    the seeds change nothing these checks read)."""
    if cfg.compare is None:
        return [cfg]
    from attrimp.config import arm_config

    seed = cfg.compare.seed_list(cfg.train.seed)[0]
    return [arm_config(cfg, arm, seed) for arm in cfg.compare.arm_list()]


def _run_comparison(cfg, out: Path, resume: bool, quiet: bool, single_file: bool, progress):
    """A ``[compare]`` config: every arm-seed study, then the comparison; rank 0 prints its
    answer (one sentence per finding) and where the report is."""
    from rich.console import Console

    from attrimp.study.arms import run_comparison

    cmp = run_comparison(
        cfg, out, resume=resume, progress=not quiet, console=progress, single_file=single_file
    )
    if cmp is None:  # a torchrun rank other than 0
        return
    console = Console()
    for sentence in cmp.summary:
        console.print(f"• {sentence}", highlight=False)
    console.print(f"report: {cmp.report_html}", highlight=False)


def _flags(overrides: dict[str, object]) -> str:
    """The command-line flags an override came from, for a config error's sentence."""
    names = {"device": "--device", "analysis.margin": "--margin"}
    return " / ".join(names[k] for k in overrides) or "the command line"


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _summary(result, console) -> None:
    from rich.table import Table

    answer = result.report.get("answer") or {}
    table = Table(
        title="Which attributes matter (strongest evidence first, either direction; "
        "untestable groups unranked)"
    )
    for name, justify in (
        ("rank", "right"),
        ("attribute", "left"),
        ("verdict", "left"),
        ("direction", "left"),
        ("ΔmAP without it", "right"),
        ("MDE", "right"),
    ):
        table.add_column(name, justify=justify)
    for g in answer.get("groups") or []:
        delta, mde = g.get("delta_map"), g.get("mde")
        table.add_row(
            f"{g['rank']:g}" if g.get("rank") is not None else "–",
            g["attribute"],
            g.get("verdict") or "",
            g.get("direction") or "",
            f"{delta:+.4f}" if delta is not None else "",
            f"{mde:.4f}" if mde is not None else "",
        )
    console.print(table)
    h = result.report.get("headline", {})

    def fmt(key: str) -> str:
        value = h.get(key)
        return "n/a" if value is None else f"{value:.3f}"

    console.print(
        f"mAP: full oracle {fmt('full_mAP')}, backbone only {fmt('backbone_mAP')}, "
        f"learned router {fmt('learned_mAP')}, attribute-only baseline {fmt('attribute_only_mAP')}",
        highlight=False,
    )
    console.print(f"report: {result.out / 'report.html'}", highlight=False)

"""`attrimp study compare RUN_A RUN_B ...`: do the arms rely on different attributes?

Finished study folders go to ``attrimp.study.compare.compare_studies`` (the Python API itself,
so the command and the API cannot drift); one stacked result table with an arm column goes to
``studies.compare``. Both end in the same comparison report. A user's mistake is raised and
`attrimp.cli` turns it into one sentence and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

_TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl", ".gz")

_Runs = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Finished study folders (`attrimp study run --out ...`), or ONE stacked result "
        "table (.csv, .parquet, ...) with an arm column (then --by and --outcome).",
        show_default=False,
        metavar="RUN...",
    ),
]
_Out = Annotated[Path, typer.Option("--out", "-o", help="Folder for the comparison report.")]
_Margin = Annotated[
    float | None,
    typer.Option(
        "--margin",
        help="Equivalence margin of the 'negligible' verdict, on the outcome's scale (default: "
        "the studies' own analysis.margin, 0.01 mAP).",
        show_default=False,
    ),
]
_Alpha = Annotated[float, typer.Option("--alpha", help="Family-wise level (Holm).")]
_Boot = Annotated[int, typer.Option("--boot", help="Bootstrap replicates of every interval.")]
_Seed = Annotated[
    int, typer.Option("--seed", help="Seed of the bootstrap (same seed, same report).")
]
_Arm = Annotated[
    list[str],
    typer.Option(
        "--arm",
        help="NAME=RUN: the arm of a study folder (repeatable; a folder's arm.json wins). "
        "Default: runs with equal settings apart from the training seed are one arm, named by "
        "the setting that differs.",
    ),
]
_SingleFile = Annotated[
    bool,
    typer.Option(
        "--single-file", help="Also write report-single.html, every figure inside, for sharing."
    ),
]
_By = Annotated[
    str | None, typer.Option("--by", help="Table only: the arm column (e.g. backbone).")
]
_Outcome = Annotated[
    str | None, typer.Option("--outcome", "-y", help="Table only: the outcome column (e.g. ap).")
]
_Cluster = Annotated[
    str | None, typer.Option("--cluster", help="Table only: the identity column (ReID: pid).")
]
_SeedColumn = Annotated[
    str | None,
    typer.Option("--seed-column", help="Table only: the training-seed column (replicates)."),
]
_Group = Annotated[
    str | None,
    typer.Option(
        "--group",
        help="Table only: a table of paired effects (one row per query and group): the column "
        "naming the group.",
    ),
]
_RelativeTo = Annotated[
    str | None,
    typer.Option(
        "--relative-to",
        help="Table only, with --group: the group value whose rows hold each query's oracle gain.",
    ),
]
_Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Print each step.")]


def register(app: typer.Typer) -> None:
    @app.command("compare")
    def compare(
        runs: _Runs = None,
        out: _Out = Path("runs/compare"),
        margin: _Margin = None,
        alpha: _Alpha = 0.05,
        boot: _Boot = 1000,
        seed: _Seed = 0,
        arm: _Arm = [],  # noqa: B006 (typer reads the default; it is never mutated)
        single_file: _SingleFile = False,
        by: _By = None,
        outcome: _Outcome = None,
        cluster: _Cluster = None,
        seed_column: _SeedColumn = None,
        group: _Group = None,
        relative_to: _RelativeTo = None,
        progress: _Progress = True,
    ) -> None:
        """Compare studies: do the arms rely on different attributes, beyond training noise?

        The arms are backbones, datasets, expert banks, ... (one arm per setting, its seeds as
        replicates). Writes OUT/report.html (+ report.json, report.md, tables/).

        Example: attrimp study compare runs/vit runs/dinov2 --out runs/cmp

        Example (one stacked table): attrimp study compare results.csv --by backbone --outcome ap --cluster pid --out runs/cmp
        """
        from attrimp.io import run_output

        paths = list(runs or [])
        _check_common(alpha, boot)
        table = _table_path(paths)
        stats = dict(margin=margin, alpha=alpha, n_boot=boot, seed=seed)
        if table is not None:
            columns = dict(
                by=by,
                outcome=outcome,
                cluster=cluster,
                seed_column=seed_column,
                group=group,
                relative_to=relative_to,
            )
            _check_table_flags(table, arm, columns)
            with run_output(out):
                cmp = _compare_table(table, out, columns, stats, single_file)
        else:
            _check_folder_flags(by, outcome, cluster, seed_column, group, relative_to)
            arms = _arms(arm)
            known = {p.resolve() for p in paths}
            paths += [p for p in arms if p.resolve() not in known]
            from attrimp.study.compare import compare_studies

            with run_output(out):
                cmp = compare_studies(
                    paths, out, arms=arms, single_file=single_file, progress=progress, **stats
                )
        _print(cmp)

    return None


def _check_common(alpha: float, boot: int) -> None:
    from studies.errors import StudyInputError

    if not 0.0 < alpha < 1.0:
        raise StudyInputError(f"--alpha must lie strictly between 0 and 1, not {alpha}.")
    if boot < 10:
        raise StudyInputError(f"--boot must be at least 10, not {boot}.")


def _table_path(paths: list[Path]) -> Path | None:
    """The one stacked table given instead of study folders, if that is what was given."""
    tables = [p for p in paths if p.is_file() or p.name.lower().endswith(_TABLE_SUFFIXES)]
    if not tables:
        return None
    if len(paths) > 1:
        from studies.errors import StudyInputError

        raise StudyInputError(
            f"{str(tables[0])!r} is a table, not a study folder: give either study folders or "
            "ONE stacked table."
        )
    return tables[0]


def _check_table_flags(table: Path, arm: list[str], columns: dict) -> None:
    from studies.errors import StudyInputError
    from studies.io import check_table_file

    if arm:
        raise StudyInputError("--arm names study folders; a stacked table names its arms by --by.")
    for flag, key in (("--by", "by"), ("--outcome", "outcome")):
        if columns[key] is None:
            raise StudyInputError(
                f"A stacked table needs {flag}: e.g. attrimp study compare {table} --by backbone "
                "--outcome ap --cluster pid."
            )
    if columns["relative_to"] is not None and columns["group"] is None:
        raise StudyInputError("--relative-to needs --group (a table of paired effects).")
    check_table_file(table)


def _check_folder_flags(*values: str | None) -> None:
    if any(v is not None for v in values):
        from studies.errors import StudyInputError

        raise StudyInputError(
            "--by, --outcome, --cluster, --seed-column, --group and --relative-to describe one "
            "stacked table; study folders need none of them."
        )


def _arms(given: list[str]) -> dict[Path, str]:
    """--arm NAME=RUN options as {folder: name}."""
    from studies.errors import StudyInputError

    arms: dict[Path, str] = {}
    for item in given:
        name, sep, run = item.partition("=")
        if not sep or not name.strip() or not run.strip():
            raise StudyInputError(f"--arm {item!r} is not NAME=RUN (e.g. --arm vit=runs/vit).")
        arms[Path(run.strip())] = name.strip()
    return arms


def _compare_table(table: Path, out: Path, columns: dict, stats: dict, single_file: bool):
    """`studies.compare` on a stacked table, then the same report as for study folders."""
    import studies
    from attrimp.study.compare import StudyComparison, write_report
    from studies.io import read_table

    frame = read_table(table)
    result = studies.compare(
        frame,
        by=columns["by"],
        outcome=columns["outcome"],
        cluster=columns["cluster"],
        seed=columns["seed_column"],
        group=columns["group"],
        relative_to=columns["relative_to"],
        margin=stats["margin"],
        alpha=stats["alpha"],
        n_boot=stats["n_boot"],
        random_state=stats["seed"],
    )
    paired = bool(getattr(result, "paired", False))
    setup = [
        f"Compared: the arms of column {columns['by']!r} of {table.name}, on "
        f"{columns['outcome']!r}; "
        + ("paired (the arms share identities)." if paired else "unpaired."),
    ]
    cmp = StudyComparison(result, frame, out=out, paired=paired, setup=setup)
    cmp.report_html = write_report(
        cmp, title=f"Comparison by {columns['by']}", single_file=single_file
    )
    return cmp


def _print(cmp) -> None:
    """The answer's sentences, then where the report is."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # captured or piped: a fixed width instead of the terminal's
        console = Console(width=120)
    for line in cmp.summary:
        console.print(f"- {line}", highlight=False, soft_wrap=True)
    where = cmp.report_html if cmp.report_html is not None else cmp.out
    console.print(f"report: {where}", highlight=False, soft_wrap=True)

"""`attrimp study ...`: `analyze` runs the statistical battery on any result table.

`analyze` is the Python API's ``studies.analyze(table, ...).save(out)`` (studies/api.py) plus a
printed summary, so the command and the API cannot drift; `study run` is registered beside it by
`attrimp.cli.study_run_cmd`. Heavy imports (pandas, statsmodels, scikit-learn, ...) happen
inside the command so that `attrimp --help` stays instant. A user's mistake is raised, and
`attrimp.cli` turns it into one sentence and exit code 2 (the one error path of every command).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from attrimp.cli import study_compare_cmd
from attrimp.io import run_output
from studies.errors import StudyInputError

app = typer.Typer(no_args_is_help=True)

# The options of `study analyze`, one line each in the command's signature below.
_Table = Annotated[
    Path, typer.Argument(help="Result table: .csv, .tsv, .parquet or .jsonl (.gz ok).")
]
_Outcome = Annotated[
    list[str],
    typer.Option("--outcome", "-y", help="Outcome column (repeatable), e.g. ap, rank1, first_hit."),
]
_Cluster = Annotated[
    str | None,
    typer.Option("--cluster", help="Rows sharing this column are not independent (ReID: pid)."),
]
_Exclude = Annotated[
    list[str],
    typer.Option("--exclude", help="Column that is neither outcome nor attribute (repeatable)."),
]
_Schema = Annotated[
    Path | None,
    typer.Option("--schema", help="Grouping TOML (e.g. one-hot colour columns -> one group)."),
]
_PairedBy = Annotated[
    str | None,
    typer.Option("--paired-by", help="Paired designs: the unit measured under every condition."),
]
_Condition = Annotated[
    str | None,
    typer.Option(
        "--condition",
        help="The column naming the condition. With --paired-by: a paired design; alone: a "
        "crossed design (every query under every configuration), tested across conditions.",
    ),
]
_Randomized = Annotated[
    list[str],
    typer.Option(
        "--randomized",
        help="Crossed designs: a condition value whose assignment the design drew at random "
        "(repeatable; @FILE reads one value per line). Default: every condition.",
    ),
]
_Margin = Annotated[
    float | None,
    typer.Option(
        "--margin",
        help="Equivalence margin of the 'negligible' verdict, on the outcome's scale "
        "(default: 0.01 for an outcome in [0, 1] such as AP, else 0.1 x its SD).",
    ),
]
_Alpha = Annotated[float, typer.Option("--alpha", help="Family-wise / FDR level.")]
_Family = Annotated[
    str,
    typer.Option(
        "--family",
        help="GLM family: auto (0/1 -> logit, [0, 1] -> fractional_logit, counts -> poisson; "
        "an outcome that looks like a proportion but is not one is refused), or one of "
        "logit, fractional_logit, poisson, negative_binomial, gaussian.",
    ),
]
_Seed = Annotated[
    int, typer.Option("--seed", help="Seed of every random step (same seed, same report).")
]
_Out = Annotated[Path, typer.Option("--out", help="Folder for the report.")]
_Repeats = Annotated[
    int | None,
    typer.Option(
        "--repeats", help="Permutation repeats per group and fold (default 5; --quick 2)."
    ),
]
_Folds = Annotated[
    int | None,
    typer.Option(
        "--folds", help="Cross-validation folds of the tree models (default 5; --quick 3)."
    ),
]
_ShapRows = Annotated[
    int | None,
    typer.Option(
        "--shap-rows",
        help="SHAP explains at most this many distinct attribute rows (default 20000).",
    ),
]
_Bootstrap = Annotated[
    int | None,
    typer.Option(
        "--bootstrap", help="Cluster-bootstrap replicates for rank stability (default 50)."
    ),
]
_Model = Annotated[
    list[str], typer.Option("--model", help="Tree model(s) for importance and SHAP: rf, xgb.")
]
_Quick = Annotated[
    bool, typer.Option("--quick", help="Fewer repeats/folds/bootstraps: a fast first look.")
]
_Jobs = Annotated[int, typer.Option("--jobs", help="Threads for the tree models' folds.")]
_NoFigures = Annotated[bool, typer.Option("--no-figures", help="Skip the PNG figures.")]
_Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]
_SingleFile = Annotated[
    bool,
    typer.Option(
        "--single-file",
        help="Also write report-single.html: the page with every figure inside, for sharing.",
    ),
]


@app.command("analyze")
def analyze(
    table: _Table,
    outcome: _Outcome,
    cluster: _Cluster = None,
    exclude: _Exclude = [],  # noqa: B006 (typer reads the default; it is never mutated)
    schema: _Schema = None,
    paired_by: _PairedBy = None,
    condition: _Condition = None,
    randomized: _Randomized = [],  # noqa: B006
    margin: _Margin = None,
    alpha: _Alpha = 0.05,
    family: _Family = "auto",
    seed: _Seed = 0,
    out: _Out = Path("runs/analyze"),
    repeats: _Repeats = None,
    folds: _Folds = None,
    shap_rows: _ShapRows = None,
    bootstrap: _Bootstrap = None,
    model: _Model = ["rf", "xgb"],  # noqa: B006
    quick: _Quick = False,
    jobs: _Jobs = 1,
    no_figures: _NoFigures = False,
    progress: _Progress = True,
    single_file: _SingleFile = False,
) -> None:
    """Run the statistical battery on a result table and write report.json/.md/.html + CSVs.

    Example: attrimp study analyze studies/examples/market_like.csv --outcome ap --cluster pid --exclude query --schema studies/examples/market_like_schema.toml --out runs/example
    """
    _check_flags(paired_by, condition, alpha, family)
    options = dict(
        outcome=outcome,
        cluster=cluster,
        schema=schema,
        exclude=exclude,
        paired_by=paired_by,
        condition=condition,
        randomized=_randomized_values(randomized),
        margin=margin,
        alpha=alpha,
        seed=seed,
        family=family,
        models=model,
        n_repeats=repeats,
        cv=folds,
        shap_rows=shap_rows,
        n_bootstrap=bootstrap,
        quick=quick,
        n_jobs=jobs,
        figures=not no_figures,
        progress=progress,
    )
    _analyze(table, out, options, single_file=single_file)


def _check_flags(paired_by, condition, alpha: float, family: str) -> None:
    """The flags that need no table, in the command line's words (``studies.analyze`` checks
    them again in Python's): a paired design names both columns, alpha in (0, 1), a known
    GLM family."""
    from studies.glm import FAMILIES

    if paired_by is not None and condition is None:
        raise StudyInputError(
            "--paired-by needs --condition as well: a paired design names both "
            "(--condition alone is a crossed design)."
        )
    if not 0.0 < alpha < 1.0:
        raise StudyInputError(f"--alpha must lie strictly between 0 and 1, not {alpha}.")
    if family not in ("auto", *FAMILIES):
        raise StudyInputError(f"--family {family!r} is unknown; use auto or one of {FAMILIES}.")


def _randomized_values(given: list[str]) -> list[str] | None:
    """--randomized values (None when not given); ``@FILE`` reads one value per line (blank
    lines and ``#`` comments skipped), for designs with many random configurations."""
    if not given:
        return None
    out: list[str] = []
    for v in given:
        if not v.startswith("@"):
            out.append(v)
            continue
        path = Path(v[1:])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise StudyInputError(
                f"--randomized {v}: cannot read {path}: {exc.strerror}."
            ) from None
        out.extend(ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#"))
    return out


def _analyze(table: Path, out: Path, options: dict, *, single_file: bool = False) -> None:
    """``studies.analyze(table, **options).save(out)`` — the Python API itself, so the command
    and the API cannot drift — then the summary printed; ``single_file`` adds
    report-single.html. The table file is checked first (there, a known format, not empty),
    then --out is checked and locked; a table refused later (its columns) leaves no --out
    behind either (`attrimp.io.output_folder` removes a folder it made for a failed run)."""
    import studies
    from studies.io import check_table_file

    check_table_file(table)
    with run_output(out):
        report = studies.analyze(table, **options)
        files = report.save(out)
        if single_file:
            from studies.report import write_single_file

            write_single_file(out)
    _print_summary(report, files)


def _print_summary(report, files) -> None:
    """The consensus table(s), the row and warning counts, and where the report is."""
    console = Console()
    if not console.is_terminal:  # piped or captured: no terminal width to respect
        console = Console(width=120)
    result, frame = report.result, report.result.frame
    _summary(console, result, result.settings.alpha)
    n_warn = len(result.warnings)
    console.print(
        f"{frame.rows_used} of {frame.rows_read} rows used, {len(frame.groups)} attribute groups, "
        f"{n_warn} warning{'s' if n_warn != 1 else ''} (see the report); "
        f"{result.timings.get('total', 0.0):.1f} s."
    )
    console.print(
        escape(
            f"Report: {files.html}  ({files.json}, {files.markdown}, {files.out_dir / 'tables'})"
        ),
        soft_wrap=True,
    )


def _fmt_p(p) -> str:
    if p is None or p != p:
        return "-"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _fmt(x, digits: int = 3) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:.{digits}g}"


def _test_column(o) -> tuple[str, Any]:
    """The second p-value column: the randomisation test on a crossed design (the verdicts'
    primary test there), else the rank tests."""
    rand = o.table("randomization")
    if "p_holm" in rand:
        return "randomisation p_holm", rand.set_index("attribute")["p_holm"]
    tests = o.table("tests")
    if "p_holm" not in tests:
        return "test p_holm", {}
    return "test p_holm", tests.drop_duplicates("attribute").set_index("attribute")["p_holm"]


def _summary(console: Console, result, alpha: float) -> None:
    """One table per outcome: consensus rank, score, the key adjusted p-values, and each
    group's verdict and minimum detectable effect."""
    for o in result.outcomes:
        cons = o.table("consensus")
        if cons.empty:
            console.print(f"[yellow]No consensus ranking for {o.outcome}.[/]")
            continue
        glm = o.table("glm_group_tests")
        imp = o.table("permutation_importance")
        glm_p = glm.set_index("attribute")["p_holm"] if "p_holm" in glm else {}
        test_label, test_p = _test_column(o)
        verdicts = "verdict" in cons.columns and bool(cons["verdict"].notna().any())
        title = f"Which attributes matter for {o.outcome}"
        if o.family:
            title += f" (GLM: {o.family})"
        title = escape(title)
        t = Table(title=title, title_justify="left")
        t.add_column("rank", justify="right")
        t.add_column("attribute", no_wrap=True)
        t.add_column("score", justify="right")
        has_ci = {"rank_ci_low", "rank_ci_high"} <= set(cons.columns) and bool(
            cons[["rank_ci_low", "rank_ci_high"]].notna().any().all()
        )
        if has_ci:
            t.add_column("boot rank CI", justify="right")
        t.add_column("GLM p_holm", justify="right")
        t.add_column(test_label, justify="right")
        if verdicts:
            t.add_column("verdict", no_wrap=True)
            t.add_column("MDE", justify="right")
        models = list(dict.fromkeys(imp["model"])) if "model" in imp else []
        for m in models:
            t.add_column(f"{m} imp", justify="right")
        for _, row in cons.iterrows():
            a = row["attribute"]
            cells = [_fmt(row.get("rank"), 3), escape(str(a)), _fmt(row.get("score"))]
            if has_ci:
                cells.append(f"{_fmt(row['rank_ci_low'])}-{_fmt(row['rank_ci_high'])}")
            for ps in (glm_p, test_p):
                p = ps.get(a) if hasattr(ps, "get") else None
                s = _fmt_p(p)
                cells.append(f"[bold]{s}[/]" if p is not None and p == p and p < alpha else s)
            if verdicts:
                cells += [escape(str(row.get("verdict") or "-")), _fmt(row.get("mde"), 2)]
            for m in models:
                v = imp[(imp["model"] == m) & (imp["attribute"] == a)]["importance"]
                cells.append(_fmt(float(v.iloc[0]), 2) if len(v) else "-")
            t.add_row(*cells)
        console.print(t)
        if o.kendall_w is not None:
            console.print(
                f"Agreement between methods: Kendall's W = {o.kendall_w:.2f} "
                f"(p = {_fmt_p(o.kendall_w_p)})."
            )


study_compare_cmd.register(app)  # `attrimp study compare`, beside analyze

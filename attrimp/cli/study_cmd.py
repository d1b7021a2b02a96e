"""`attrimp study ...`: `analyze` runs the statistical battery on any result table.

(`study run`, the whole model-to-report study, is added by a later issue beside `analyze`.)
Heavy imports (pandas, statsmodels, scikit-learn, ...) happen inside the command so that
`attrimp --help` stays instant. A user's mistake is caught here too, not only in
`attrimp.cli.main`, so that the command behaves the same when invoked through typer's runner.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from attrimp.errors import AttrimpError
from attrimp.io import run_output
from studies.errors import StudyInputError

app = typer.Typer(no_args_is_help=True)

#: settings of --quick: a first look in seconds (fewer repeats, folds, SHAP rows, bootstraps)
QUICK = {"n_repeats": 2, "cv": 3, "shap_rows": 5000, "n_bootstrap": 20}


@app.command("analyze")
def analyze(
    table: Path = typer.Argument(
        ..., help="Result table: .csv, .tsv, .parquet or .jsonl (.gz ok)."
    ),
    outcome: list[str] = typer.Option(
        ..., "--outcome", "-y", help="Outcome column (repeatable), e.g. ap, rank1, first_hit."
    ),
    cluster: str | None = typer.Option(
        None, "--cluster", help="Rows sharing this column are not independent (ReID: pid)."
    ),
    exclude: list[str] = typer.Option(
        [], "--exclude", help="Column that is neither outcome nor attribute (repeatable)."
    ),
    schema: Path | None = typer.Option(
        None, "--schema", help="Grouping TOML (e.g. one-hot colour columns -> one group)."
    ),
    paired_by: str | None = typer.Option(
        None, "--paired-by", help="Paired designs: the unit measured under every condition."
    ),
    condition: str | None = typer.Option(
        None, "--condition", help="Paired designs: the column naming the condition."
    ),
    alpha: float = typer.Option(0.05, "--alpha", help="Family-wise / FDR level."),
    family: str = typer.Option(
        "auto",
        "--family",
        help="GLM family: auto (0/1 -> logit, [0, 1] -> fractional_logit, counts -> poisson; "
        "an outcome that looks like a proportion but is not one is refused), or one of "
        "logit, fractional_logit, poisson, negative_binomial, gaussian.",
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed of every random step (same seed, same report)."
    ),
    out: Path = typer.Option(Path("runs/analyze"), "--out", help="Folder for the report."),
    repeats: int | None = typer.Option(
        None, "--repeats", help="Permutation repeats per group and fold (default 5; --quick 2)."
    ),
    folds: int | None = typer.Option(
        None, "--folds", help="Cross-validation folds of the tree models (default 5; --quick 3)."
    ),
    shap_rows: int | None = typer.Option(
        None,
        "--shap-rows",
        help="SHAP explains at most this many distinct attribute rows (default 20000).",
    ),
    bootstrap: int | None = typer.Option(
        None, "--bootstrap", help="Cluster-bootstrap replicates for rank stability (default 50)."
    ),
    model: list[str] = typer.Option(
        ["rf", "xgb"], "--model", help="Tree model(s) for importance and SHAP: rf, xgb."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Fewer repeats/folds/bootstraps: a fast first look."
    ),
    jobs: int = typer.Option(1, "--jobs", help="Threads for the tree models' folds."),
    no_figures: bool = typer.Option(False, "--no-figures", help="Skip the PNG figures."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Run the statistical battery on a result table and write report.json/.md/.html + CSVs.

    Example: attrimp study analyze studies/examples/market_like.csv --outcome ap --cluster pid --exclude query --schema studies/examples/market_like_schema.toml --out runs/example
    """
    err = Console(stderr=True)
    try:
        _analyze(
            table=table,
            outcomes=outcome,
            cluster=cluster,
            exclude=exclude,
            schema=schema,
            paired_by=paired_by,
            condition=condition,
            alpha=alpha,
            family=family,
            seed=seed,
            out=out,
            overrides={
                "n_repeats": repeats,
                "cv": folds,
                "shap_rows": shap_rows,
                "n_bootstrap": bootstrap,
            },
            models=model,
            quick=quick,
            jobs=jobs,
            figures=not no_figures,
            progress=progress,
        )
    except (StudyInputError, AttrimpError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=getattr(exc, "exit_code", 2)) from None


def _analyze(
    *,
    table,
    outcomes,
    cluster,
    exclude,
    schema,
    paired_by,
    condition,
    alpha,
    family,
    seed,
    out,
    overrides,
    models,
    quick,
    jobs,
    figures,
    progress,
) -> None:
    if (paired_by is None) != (condition is None):
        given, missing = (
            ("--paired-by", "--condition") if paired_by else ("--condition", "--paired-by")
        )
        raise StudyInputError(f"{given} needs {missing} as well: a paired design names both.")
    if not 0.0 < alpha < 1.0:
        raise StudyInputError(f"--alpha must lie strictly between 0 and 1, not {alpha}.")
    from studies.glm import FAMILIES

    if family not in ("auto", *FAMILIES):
        raise StudyInputError(f"--family {family!r} is unknown; use auto or one of {FAMILIES}.")
    for name, value in overrides.items():
        if value is not None and value < (0 if name == "n_bootstrap" else 1):
            raise StudyInputError(f"The option for {name} cannot be {value}.")

    from studies.battery import run_battery
    from studies.design import build_analysis_frame, load_group_spec
    from studies.io import read_table, table_format
    from studies.report import write_report

    console = Console()
    if not console.is_terminal:  # piped or captured: no terminal width to respect
        console = Console(width=120)
    df = read_table(table)
    spec = load_group_spec(schema) if schema is not None else None
    frame = build_analysis_frame(
        df,
        outcomes=outcomes,
        cluster=cluster,
        exclude=exclude,
        spec=spec,
        paired_by=paired_by,
        condition=condition,
        source=str(table),
    )
    settings = dict(QUICK) if quick else {}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    # --out is checked and locked once the input is known good, before the battery (minutes)
    with run_output(out):
        result = run_battery(
            frame,
            alpha=alpha,
            seed=seed,
            models=tuple(dict.fromkeys(models)),
            n_jobs=jobs,
            progress=progress,
            glm_family=family,
            **settings,
        )
        files = write_report(
            result,
            out,
            input_info={
                "path": str(table),
                "format": table_format(table),
                "excluded": list(exclude),
                "schema": str(schema) if schema is not None else None,
            },
            figures=figures,
        )
    _summary(console, result, alpha)
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


def _summary(console: Console, result, alpha: float) -> None:
    """One table per outcome: consensus rank, score, and the key adjusted p-values."""
    for o in result.outcomes:
        cons = o.table("consensus")
        if cons.empty:
            console.print(f"[yellow]No consensus ranking for {o.outcome}.[/]")
            continue
        glm = o.table("glm_group_tests")
        tests = o.table("tests")
        imp = o.table("permutation_importance")
        glm_p = glm.set_index("attribute")["p_holm"] if "p_holm" in glm else {}
        test_p = (
            tests.drop_duplicates("attribute").set_index("attribute")["p_holm"]
            if "p_holm" in tests
            else {}
        )
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
        t.add_column("test p_holm", justify="right")
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

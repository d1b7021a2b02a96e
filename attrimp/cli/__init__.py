"""The `attrimp` command line: typer + rich.

Sub-command groups live one per module so that each stays small; heavy libraries (torch,
statsmodels, ...) are imported inside the commands, not here, so `attrimp --help` is instant.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from attrimp import __version__
from attrimp.cli import backbones_cmd, data_cmd, model_cmd, study_cmd, study_run_cmd
from attrimp.errors import AttrimpError
from studies.errors import StudyInputError

err_console = Console(stderr=True)

app = typer.Typer(
    name="attrimp",
    help="Which semantic attributes does a person re-identification model rely on?",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
app.add_typer(study_cmd.app, name="study", help="Run a whole study, or analyse a result table.")
app.add_typer(data_cmd.app, name="data", help="Datasets, attribute files, priors, synthetic data.")
app.add_typer(backbones_cmd.app, name="backbones", help="The registered ViT backbones.")
model_cmd.register(app)
study_run_cmd.register(study_cmd.app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"attrimp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """attrimp: measure which attributes a ReID model relies on (MoSAIC-ReID)."""


def main() -> None:
    """Console entry point: user errors become one sentence and exit code 2."""
    try:
        app(standalone_mode=True)
    except (AttrimpError, StudyInputError) as exc:
        err_console.print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        sys.exit(getattr(exc, "exit_code", 2))


if __name__ == "__main__":  # pragma: no cover
    main()

"""The `attrimp` command line: typer + rich.

Sub-command groups live one per module so that each stays small; heavy libraries (torch,
statsmodels, ...) are imported inside the commands, not here, so `attrimp --help` is instant.

One error path: a user's mistake (an `attrimp.errors.AttrimpError` or a
`studies.errors.StudyInputError`, raised anywhere below) becomes one sentence on stderr and the
error's exit code (2) in `_ErrorSentence.invoke`, the root group every command runs under, so
the commands raise and never print errors themselves, and the console entry point and typer's
test runner behave the same.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from attrimp import __version__
from attrimp.cli import backbones_cmd, data_cmd, model_cmd, study_cmd, study_run_cmd
from attrimp.errors import AttrimpError
from studies.errors import StudyInputError

err_console = Console(stderr=True)

#: the errors that are a user's mistake, not a bug: one sentence, never a traceback
USER_ERRORS = (AttrimpError, StudyInputError)


def report_error(exc: BaseException) -> int:
    """Print ``exc`` as the one-sentence error on stderr and return its exit code.

    Under ``torchrun`` every rank reports its own error with its rank: torchrun stops the other
    ranks as soon as one fails, so a message left to rank 0 alone could be lost."""
    rank = int(os.environ.get("RANK", "0") or 0)
    where = f" (rank {rank})" if rank else ""
    err_console.print(
        f"[bold red]error{where}:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
    )
    return int(getattr(exc, "exit_code", 2))


class _ErrorSentence(TyperGroup):
    """The root group: every command runs inside its `invoke`, so this is where a user error
    from any of them becomes `report_error`'s sentence and exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            raise typer.Exit(code=report_error(exc)) from None


app = typer.Typer(
    name="attrimp",
    cls=_ErrorSentence,
    help="Which semantic attributes does a person re-identification model rely on?\n\n"
    "Example: attrimp study run --out runs/study",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
app.add_typer(
    study_cmd.app,
    name="study",
    help="Run a whole study, or analyse a result table.\n\n"
    "Example: attrimp study analyze studies/examples/market_like.csv --outcome ap --cluster pid",
)
app.add_typer(
    data_cmd.app,
    name="data",
    help="Datasets, attribute files, priors, synthetic data.\n\n"
    "Example: attrimp data synth --out runs/world",
)
app.add_typer(
    backbones_cmd.app,
    name="backbones",
    help="The registered ViT backbones.\n\nExample: attrimp backbones list --family clip",
)
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
    """Console entry point. User errors become one sentence and exit code 2 in the root group
    (`_ErrorSentence`); the same handler here catches one raised outside a command (while the
    command line itself is being read)."""
    try:
        app(standalone_mode=True)
    except USER_ERRORS as exc:
        sys.exit(report_error(exc))


if __name__ == "__main__":  # pragma: no cover
    main()

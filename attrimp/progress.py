"""The one progress bar of the engine: a transient rich ``Progress`` on stderr, or a no-op.

Why one helper: results go to stdout and progress to stderr, a library call prints nothing,
and a bar leaves no trace in a log once it is done. Written at each call site those three
rules drifted (bars on stdout, bars that stayed on screen, one that checked for a terminal and
others that did not); here they are decided once. A disabled rich ``Progress`` draws nothing
and accepts every call, so callers use the same code whether the bar is shown or not.

A leaf module: every stage may import it (``tests/test_architecture.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich is imported only when a bar is built
    from rich.console import Console
    from rich.progress import Progress, ProgressColumn


def progress_bar(
    show: bool, *columns: str | ProgressColumn, console: Console | None = None
) -> Progress:
    """A transient progress bar on ``console`` (stderr by default), drawing nothing unless
    ``show``.

    ``columns`` are rich columns or format strings (``"{task.description}"``); none given, the
    bar shows the task's description, a bar, done/total and the elapsed time. On a console that
    is not a terminal (a log file, a pipe) the bar is off too (a transient one would still leave
    a blank line there), so output captured from a run holds its results and log lines only.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    if not columns:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
    console = console if console is not None else Console(stderr=True)
    return Progress(
        *columns, console=console, disable=not (show and console.is_terminal), transient=True
    )


def track(items: Any, description: str, *, show: bool, total: int | None = None) -> Any:
    """Iterate over ``items`` with a `progress_bar` (``show=False``: the items as they are)."""
    if not show:
        yield from items
        return
    with progress_bar(True) as bar:
        yield from bar.track(items, total=total, description=description)

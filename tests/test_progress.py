"""`attrimp.progress`: the one progress bar draws on stderr (never stdout), only when shown,
leaves nothing behind, and the engine builds every bar through it."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from attrimp.progress import progress_bar, track

REPO = Path(__file__).resolve().parents[1]


def _terminal() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=80), buffer


def test_a_shown_bar_draws_and_a_hidden_one_draws_nothing():
    for show in (True, False):
        console, buffer = _terminal()
        with progress_bar(show, console=console) as bar:
            task = bar.add_task("counting sheep", total=3)
            for _ in range(3):
                bar.advance(task)
            bar.refresh()
        assert ("counting sheep" in buffer.getvalue()) is show


def test_the_default_bar_goes_to_stderr_not_stdout(capsys):
    with progress_bar(True) as bar:
        assert bar.console.stderr
        bar.add_task("on stderr", total=1)
    assert capsys.readouterr().out == ""


def test_a_bar_on_a_pipe_prints_nothing():
    """Output captured from a run (a log file) holds results, not the bar's frames."""
    buffer = io.StringIO()
    with progress_bar(True, console=Console(file=buffer, force_terminal=False)) as bar:
        task = bar.add_task("hidden", total=2)
        bar.advance(task, 2)
    assert buffer.getvalue() == ""


def test_track_yields_every_item_shown_or_not():
    items = [3, 1, 2]
    assert list(track(iter(items), "x", show=False)) == items
    assert list(track(items, "x", show=True)) == items


ENGINE_BARS = (
    "attrimp/evaluate/evaluation.py",
    "attrimp/train/training.py",
    "attrimp/data/annotations.py",
    "attrimp/data/summary.py",
    "attrimp/data/synth/world.py",
    "attrimp/study/clock.py",
    "attrimp/study/run.py",
    "attrimp/cli/backbones_cmd.py",
    "attrimp/cli/ablate_cmd.py",
    "studies/battery.py",
    "studies/importance.py",
)


def test_the_engine_builds_no_bar_of_its_own():
    """Every bar of the engine, its CLI and the battery comes from `attrimp.progress` (the one
    rule: stderr, transient, drawn only on a terminal and only when asked for)."""
    direct = re.compile(r"\bProgress\(|\brich\.progress import [^\n]*\b(Progress|track)\b")
    found = [f for f in ENGINE_BARS if direct.search((REPO / f).read_text(encoding="utf-8"))]
    assert not found, f"rich progress built directly in {found}"
    users = [f for f in ENGINE_BARS if "attrimp.progress" in (REPO / f).read_text("utf-8")]
    assert set(users) == set(ENGINE_BARS) - {"attrimp/study/run.py"}

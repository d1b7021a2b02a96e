"""How long each stage of a study took and how much memory it held, and the stage lines.

Why a module of its own: timing is not orchestration. `StageClock` is used by the study run,
by its analyses (each battery a nested stage) and by ``benchmarks/bench_study_analyses.py``,
which times the analyses again on a finished run's tables without running the rest. Its
records are the ``timings`` section of report.json, the only part of the report that differs
between two runs of one config.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from attrimp.progress import progress_bar

#: the stage lines are the study run's log: they keep the run module's logger name, which is
#: what a user filters on (``logging.getLogger("attrimp.study.run")``)
logger = logging.getLogger("attrimp.study.run")


def _status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status (``VmHWM``, ``VmRSS``) in MB; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's resident high-water mark (Linux: ``/proc/self/clear_refs``), so a
    stage's peak is its own; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class StageClock:
    """Wall seconds and peak memory of each stage of a run, in the order they ran.

    Why: at full size the question is always "which stage is slow, which one is big", and the
    answer must come from the run itself, not from a rerun under a profiler. Peak resident
    memory is the stage's own where the OS lets us reset the high-water mark (Linux); elsewhere
    it is the process's peak so far (``peak_rss_scope = "process"``). Nested stages (each battery
    inside the analyses) report their own peak and still count in their parent's. On CUDA the
    peak GPU memory torch allocated during the stage is kept as well.
    """

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        #: stages still open: [record, peak of finished nested stages, scoped, cuda, start]
        self._open: list[list[Any]] = []

    def begin(self, stage: str, **info: Any) -> dict[str, Any]:
        """Start timing ``stage``; returns its record (add counts to it); `end` closes it."""
        record: dict[str, Any] = {"stage": stage, **info}
        before = _status_mb("VmHWM")
        if self._open and before is not None:
            self._open[-1][1] = max(self._open[-1][1], before)
        scoped = _reset_peak_rss()
        torch = sys.modules.get("torch")
        cuda = torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        self._open.append([record, 0.0, scoped, cuda, time.perf_counter()])
        return record

    def end(self) -> dict[str, Any]:
        """Close the innermost open stage and return its finished record."""
        record, nested_peak, scoped, cuda, start = self._open.pop()
        record["seconds"] = time.perf_counter() - start
        if cuda:
            record["peak_gpu_mb"] = sys.modules["torch"].cuda.max_memory_allocated() / 2**20
        hwm = _status_mb("VmHWM") if scoped else None
        if hwm is None:
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        record["peak_rss_mb"] = max(hwm, nested_peak)
        record["peak_rss_scope"] = "stage" if scoped else "process"
        if self._open:
            self._open[-1][1] = max(self._open[-1][1], record["peak_rss_mb"])
        self.records.append(record)
        return record

    @contextmanager
    def __call__(self, stage: str, **info: Any) -> Iterator[dict[str, Any]]:
        record = self.begin(stage, **info)
        try:
            yield record
        finally:
            self.end()

    def to_dict(self) -> dict[str, Any]:
        """The ``timings`` section of report.json (stages in the order they finished)."""
        return {
            "total_seconds": sum(r["seconds"] for r in self.records if "." not in r["stage"]),
            "stages": [dict(r) for r in self.records],
        }


class Stages:
    """Progress + a log of what each stage did (computed or taken from the cache).

    Every line goes to the study run's logger (``attrimp.study.run``); it is also printed (with
    the progress bars) only when ``progress`` is on, which the CLI does and a library call does
    not. `StageClock` times each stage; `end` prints what it cost."""

    def __init__(self, progress: bool, console=None) -> None:
        from rich.console import Console

        self.enabled = progress
        self.console = console or Console(stderr=True)
        self.cached: dict[str, int] = {}
        self.clock = StageClock()

    def begin(self, stage: str, **info: Any) -> dict[str, Any]:
        """Start timing ``stage`` (`StageClock`); `end` closes it and prints its cost."""
        return self.clock.begin(stage, **info)

    def end(self) -> dict[str, Any]:
        record = self.clock.end()
        gpu = f", GPU peak {record['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in record else ""
        note = f" ({record['note']})" if record.get("note") else ""
        stage, _, part = record["stage"].partition(".")
        self.say(
            stage,
            f"{part + ': ' if part else ''}{record['seconds']:.1f} s, peak RSS "
            f"{record['peak_rss_mb']:.0f} MB{gpu}{note}",
            style="dim",
        )
        return record

    @contextmanager
    def stage(self, stage: str, **info: Any) -> Iterator[dict[str, Any]]:
        """`begin` ... `end` around a block; yields the stage's record."""
        record = self.begin(stage, **info)
        try:
            yield record
        finally:
            self.end()

    def say(self, stage: str, message: str, *, style: str | None = None) -> None:
        """One line about ``stage``: logged, and printed when progress is on."""
        logger.info("%s: %s", stage, message)
        if self.enabled:
            from rich.markup import escape

            text = f"[{style}]{escape(message)}[/]" if style else escape(message)
            self.console.print(f"[bold cyan]{stage:>10}[/] {text}", highlight=False)

    def bar(self, description: str):
        """A transient progress bar (shown only when progress is on; `attrimp.progress`)."""
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        return progress_bar(
            self.enabled,
            TextColumn(f"[bold cyan]{description:>10}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
        )

"""The battery is a quiet library call: no progress bar unless asked for, its steps go to
``logging`` (logger ``studies.battery``)."""

from __future__ import annotations

import logging

import pytest
import rich.progress

from studies.battery import run_battery
from studies.design import build_analysis_frame
from studies.simulate import simulate_small_cluster_table

QUICK = {"models": ("xgb",), "n_repeats": 1, "cv": 2, "n_bootstrap": 0, "strict": True}


@pytest.fixture(scope="module")
def frame():
    df = simulate_small_cluster_table(20, seed=4, effects={"gender": 1.0})
    return build_analysis_frame(df, outcomes=["ap"], cluster="pid", source="small.csv")


@pytest.fixture
def bars(monkeypatch):
    """Every rich progress bar started during the test."""
    started = []
    original = rich.progress.Progress.start

    def start(self):
        started.append(self)
        return original(self)

    monkeypatch.setattr(rich.progress.Progress, "start", start)
    return started


def test_battery_by_default_shows_no_bar_and_logs_each_step(frame, bars, caplog):
    with caplog.at_level(logging.INFO, logger="studies.battery"):
        res = run_battery(frame, **QUICK)
    assert bars == []
    steps = [r.getMessage() for r in caplog.records if r.name == "studies.battery"]
    assert any(m.startswith("ap: GLM took ") for m in steps)
    assert any(m.startswith("ap: consensus took ") for m in steps)
    assert not res.outcome("ap").table("consensus").empty


def test_battery_shows_a_bar_when_asked(frame, bars):
    run_battery(frame, progress=True, **QUICK)
    assert len(bars) == 1

"""Shared fixtures. Tests never download: tiny random-initialised models, generated data, and
the real annotation files read from ../shared/data (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ATTRIMP_SHARED_DATA points elsewhere where ../shared is not beside the checkout (a GPU box).
SHARED_DATA = Path(os.environ.get("ATTRIMP_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder with the real Market-1501 / DukeMTMC-reID attribute files."""
    if not (SHARED_DATA / "market_attribute.mat").exists():
        pytest.fail(f"The real annotation files are expected in {SHARED_DATA}.")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach a model hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

"""Shared fixtures. Tests never download: tiny random-initialised models, generated data, and
the real annotation files read from ../shared/data (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ATTRIMP_SHARED_DATA points elsewhere where ../shared is not beside the checkout (a GPU box);
# .ci/run sets it and ATTRIMP_REQUIRE_SHARED_DATA=1, so CI fails rather than skips without them.
SHARED_DATA = Path(os.environ.get("ATTRIMP_SHARED_DATA", REPO.parent / "shared" / "data"))
#: the real identity-level annotation files the `shared_data` tests read
SHARED_FILES = ("market_attribute.mat", "duke_attribute.mat")


def missing_shared_data(folder: Path) -> str | None:
    """Why the real annotation files cannot be used from ``folder`` (None when they can)."""
    missing = [name for name in SHARED_FILES if not (folder / name).is_file()]
    if not missing:
        return None
    return (
        f"the real annotation files ({', '.join(missing)}) are not in {folder}; fetch them with "
        "`attrimp data fetch-attributes market1501 --out DIR` (and dukemtmc), then set "
        "ATTRIMP_SHARED_DATA=DIR"
    )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder with the real Market-1501 / DukeMTMC-reID attribute files.

    A fresh clone has no such folder: the tests that need it skip with the reason and the way
    to get the files. Where they must run (CI), ATTRIMP_REQUIRE_SHARED_DATA=1 makes it a failure.
    """
    reason = missing_shared_data(SHARED_DATA)
    if reason is not None:
        if os.environ.get("ATTRIMP_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(f"ATTRIMP_REQUIRE_SHARED_DATA=1 but {reason}.")
        pytest.skip(reason)
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach a model hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

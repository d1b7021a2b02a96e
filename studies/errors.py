"""The studies layer's user-facing error (studies/ must not import the torch-based engine)."""

from __future__ import annotations


class StudyInputError(ValueError):
    """A result table or option the battery cannot use: one sentence naming file, column, value."""

    exit_code = 2

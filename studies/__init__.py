"""The statistical battery of attrimp; reads any result table and never imports torch."""

from studies.errors import StudyInputError

__all__ = ["StudyInputError"]

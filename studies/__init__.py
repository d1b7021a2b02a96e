"""The statistical battery of attrimp; reads any result table and never imports torch.

    >>> import studies
    >>> report = studies.analyze("results.csv", outcome="ap", cluster="pid")  # doctest: +SKIP
    >>> report.consensus                                                      # doctest: +SKIP

`analyze` and `StudyReport` (studies/api.py) load on first use, so ``import studies`` stays
instant and pulls in neither pandas' analysis stack nor anything else until it is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from studies.errors import StudyInputError

if TYPE_CHECKING:
    from studies.api import StudyReport, analyze
    from studies.comparison import ComparisonResult, compare
    from studies.comparison_report import write_comparison_report

#: public names served lazily from studies.api (PEP 562)
_LAZY = {
    "analyze": "studies.api",
    "StudyReport": "studies.api",
    "compare": "studies.comparison",
    "ComparisonResult": "studies.comparison",
    "write_comparison_report": "studies.comparison_report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'studies' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ComparisonResult",
    "StudyInputError",
    "StudyReport",
    "analyze",
    "compare",
    "write_comparison_report",
]

"""attrimp: which semantic attributes does a person re-identification model rely on?

    >>> import attrimp
    >>> model = attrimp.create_model("clip:ViT-B-16", schema="market1501", pretrained="openai")
    >>> result = attrimp.run_study(out="runs/study")        # the built-in synthetic study
    >>> cmp = attrimp.compare_studies(["runs/vit", "runs/dinov2"], out="runs/cmp")

The package root stays light (no torch import) so that `attrimp --help` and the studies layer
start fast: `create_model`, `run_study` and `study_config` (attrimp/api.py) and
`compare_studies` (attrimp/study/compare.py) load on first use (PEP 562); import the
submodules you need for the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from attrimp.errors import AttrimpError  # noqa: E402

if TYPE_CHECKING:
    from attrimp.api import create_model, run_study, study_config
    from attrimp.study.compare import compare_studies

#: public names served lazily, and the module each comes from
_LAZY = {
    "create_model": "attrimp.api",
    "run_study": "attrimp.api",
    "study_config": "attrimp.api",
    "compare_studies": "attrimp.study.compare",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'attrimp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AttrimpError",
    "__version__",
    "compare_studies",
    "create_model",
    "run_study",
    "study_config",
]

"""attrimp in a few lines of Python: ``create_model`` and ``run_study``.

    >>> import attrimp
    >>> model = attrimp.create_model("clip:ViT-B-16", schema="market1501", pretrained="openai")
    >>> result = attrimp.run_study("studies/configs/market1501_clip_vitb16.toml", out="runs/m")

`create_model` is this project's ``timm.create_model``: one call from a backbone name to a
`MoSAICReID`, its options the fields of `attrimp.model.mosaic.MoSAICConfig` (the names the
checkpoint's config.json uses). `run_study` is `attrimp study run` without the printing: the same
config loading (a TOML path, a `StudyConfig`, a dict, or nothing for the built-in synthetic
study), the same `attrimp.study.run.run_study`, quiet unless ``progress=True``.

Both are served lazily from ``attrimp`` (PEP 562), so ``import attrimp`` stays torch-free.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attrimp.config import StudyConfig, config_from_dict, load_config
from attrimp.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from attrimp.model.mosaic import MoSAICReID
    from attrimp.model.schema import AttributeSchema
    from attrimp.study.compare import StudyComparison
    from attrimp.study.run import StudyResult

log = logging.getLogger(__name__)

#: the study `attrimp study run` runs without a CONFIG (a file of the `studies` package)
BUILTIN_STUDY = "synthetic_study.toml"


# --------------------------------------------------------------------------- create_model


def create_model(
    backbone: str,
    schema: str | Path | AttributeSchema = "market1501",
    pretrained: str | Path | bool | None = "default",
    **options: Any,
) -> MoSAICReID:
    """A MoSAIC-ReID model: ``backbone`` (``family:model``, e.g. ``"clip:ViT-B-16"``,
    ``"timm:vit_base_patch16_224"``) with one expert per attribute value of ``schema``.

    Args:
        backbone: a name `attrimp backbones list` shows.
        schema: a built-in schema name (``"market1501"``, ``"dukemtmc"``), a schema TOML file,
            or an `AttributeSchema`.
        pretrained: a weight tag (``"openai"``), a local weight file, ``"default"``/True (the
            family's default weights) or False/None (random initialisation, no download).
        **options: any other field of `MoSAICConfig` (``img_size``, ``stride``, ``rank``,
            ``alpha``, ``site``, ``pooling``, ``num_classes``, ``router``, ``backbone_kwargs``,
            ...). For a router or backbone object of your own, build `MoSAICReID` directly.

    Raises:
        ConfigError: an unknown option (the sentence lists the valid ones) or a bad value.
    """
    from attrimp.model.mosaic import MoSAICConfig, MoSAICReID
    from attrimp.model.schema import AttributeSchema

    valid = [f.name for f in dataclasses.fields(MoSAICConfig)]
    _check_options(options, valid)
    built_schema = schema if isinstance(schema, AttributeSchema) else None
    config = MoSAICConfig(
        backbone=backbone,
        pretrained=_pretrained(pretrained),
        schema=built_schema.name if built_schema is not None else str(schema),
        **options,
    )
    log.info("building %s with schema %s", backbone, config.schema)
    return MoSAICReID(config, schema=built_schema)


def _check_options(options: Mapping[str, Any], valid: list[str]) -> None:
    """Every option is a `MoSAICConfig` field; else one sentence naming it and the valid ones."""
    settable = [n for n in valid if n not in ("backbone", "schema", "pretrained")]
    for name in options:
        if name in ("backbone", "schema", "pretrained"):
            continue  # python already refuses a second value for these
        if name not in settable:
            raise ConfigError(
                f"create_model has no option {name!r}; valid options are "
                f"{', '.join(settable)} (the fields of MoSAICConfig). Backbone builder "
                "arguments such as tiny or depth go in backbone_kwargs={...}."
            )


def _pretrained(value: str | Path | bool | None) -> str | None:
    """The config's spelling of ``pretrained``: True -> "default", False -> None, a path -> str
    (the config is written into checkpoints as JSON)."""
    if value is True:
        return "default"
    if value is False or value is None:
        return None
    return str(value)


# --------------------------------------------------------------------------- run_study


@dataclass
class StudyRun:
    """What `run_study` made: where the report is, and its main answer as DataFrames."""

    out: Path
    #: the study's result (configs, per-query and delta tables, report dictionary)
    result: StudyResult

    @property
    def report_html(self) -> Path:
        return self.out / "report.html"

    @property
    def report_json(self) -> Path:
        return self.out / "report.json"

    @property
    def report(self) -> dict[str, Any]:
        """The report.json dictionary."""
        return self.result.report

    @property
    def consensus(self) -> pd.DataFrame:
        """The consensus ranking of attribute groups, most important first."""
        import pandas as pd

        return pd.DataFrame(self.result.report.get("consensus") or [])

    @property
    def leave_one_out(self) -> pd.DataFrame:
        """mAP lost when each group's experts are switched off (leave-one-group-out)."""
        return self.result.importance

    @property
    def configs(self) -> pd.DataFrame:
        """One row per tested configuration: its gates and mAP, rank-k, mINP."""
        return self.result.configs

    @property
    def per_query(self) -> pd.DataFrame:
        """One row per query per configuration (the ReID result table of docs/evaluation.md)."""
        return self.result.per_query

    def __repr__(self) -> str:
        top = ", ".join(
            f"{r.get('rank', '?'):g}. {r.get('attribute')}"
            for r in (self.result.report.get("consensus") or [])[:5]
        )
        return f"StudyRun(out={str(self.out)!r}; consensus: {top or 'none'})"


def study_config(
    config_or_path: StudyConfig | Mapping[str, Any] | str | Path | None = None,
    *,
    overrides_source: str = "run_study overrides",
    **overrides: Any,
) -> StudyConfig:
    """The `StudyConfig` a study runs: ``config_or_path`` (a TOML file, a dict of TOML content,
    a `StudyConfig`, or None for the built-in synthetic study), then ``overrides``.

    An override is a top-level key (``device="cpu"``), a section of keys merged into the
    config's (``train={"epochs": 2}``), or a dotted key (``**{"train.epochs": 2}``). The result
    is validated like a TOML file; a mistake is a `ConfigError` naming ``overrides_source``.
    """
    cfg = _base_config(config_or_path)
    if not overrides:
        return cfg
    merged = cfg.to_dict()
    for key, value in overrides.items():
        _merge(merged, key.split("."), value)
    return config_from_dict(merged, source=overrides_source)


def builtin_study_text() -> str:
    """The TOML of the built-in synthetic study (`attrimp study run` without a CONFIG)."""
    return resources.files("studies").joinpath(f"configs/{BUILTIN_STUDY}").read_text("utf-8")


def _base_config(
    config_or_path: StudyConfig | Mapping[str, Any] | str | Path | None,
) -> StudyConfig:
    if config_or_path is None:
        return config_from_dict(tomllib.loads(builtin_study_text()), source="built-in study")
    if isinstance(config_or_path, StudyConfig):
        return config_or_path
    if isinstance(config_or_path, Mapping):
        return config_from_dict(dict(config_or_path), source="study config")
    if isinstance(config_or_path, (str, Path)):
        return load_config(config_or_path)
    raise ConfigError(
        "run_study takes a config file path, a StudyConfig, a dict or None (the built-in "
        f"study), not a {type(config_or_path).__name__}."
    )


def _merge(target: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``value`` at ``path`` in nested ``target``; a dict merges into a section's dict."""
    head, rest = path[0], path[1:]
    if rest:
        section = target.setdefault(head, {})
        if not isinstance(section, dict):
            raise ConfigError(
                f"{head} is a setting, not a section: {'.'.join(path)} cannot be set."
            )
        _merge(section, rest, value)
    elif isinstance(value, Mapping) and isinstance(target.get(head), dict):
        for key, inner in value.items():
            _merge(target[head], [key], inner)
    else:
        target[head] = value


def run_study(
    config_or_path: StudyConfig | Mapping[str, Any] | str | Path | None = None,
    *,
    out: str | Path = "runs/study",
    resume: bool = True,
    progress: bool = False,
    **overrides: Any,
) -> StudyRun | StudyComparison | None:
    """Run a whole study (data, model, training, ablations, battery, report) into ``out``.

    ``config_or_path`` and ``overrides`` as in `study_config` (None = the built-in synthetic
    study). ``resume`` reuses finished stages in ``out/cache``; ``progress`` shows the stages
    and progress bars on stderr (off: quiet, logging only). Returns None on `torchrun` ranks
    other than 0, which end after the sweep.

    A config with a ``[compare]`` table runs one study per arm and seed into
    ``out/arms/<arm>/seed-<s>`` (the synthetic world drawn once), compares them into ``out``
    and returns the `attrimp.study.compare.StudyComparison` (``.summary``, ``.differences``,
    ``.effects``, ``.agreement``, ``.report_html``) instead of a `StudyRun`
    (`attrimp.study.arms`)::

        cmp = attrimp.run_study("studies/configs/compare_synthetic.toml", out="runs/cmp")
        cmp.differences[["attribute", "difference", "ci_low", "ci_high", "verdict"]]
    """
    from attrimp.study.run import run_study as _run

    cfg = study_config(config_or_path, **overrides)
    if cfg.compare is not None:
        from attrimp.study.arms import run_comparison

        log.info("comparison study %r into %s", cfg.name, out)
        return run_comparison(cfg, out, resume=resume, progress=progress)
    log.info("study %r into %s", cfg.name, out)
    result = _run(cfg, out, resume=resume, progress=progress)
    if result is None:
        return None
    return StudyRun(out=Path(out), result=result)


__all__ = [
    "BUILTIN_STUDY",
    "StudyRun",
    "builtin_study_text",
    "create_model",
    "run_study",
    "study_config",
]

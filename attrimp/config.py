"""Study and training configuration: TOML in, validated dataclasses out.

One file describes a whole study (data, model, experts, router, training, ablations, analysis);
`attrimp train` reads the same file and uses the sections it needs. The model's own config,
`MoSAICConfig`, is made of the ``[model]`` and ``[experts]`` sections under their TOML names. Every key is checked: a
typo or a wrong type is one sentence naming the section and key, never a silently ignored
setting. `StudyConfig.fingerprint()` hashes everything that determines a result, for caching.
A ``[compare]`` table (`CompareConfig`) turns the file into several studies, one per arm and
training seed, each arm's overrides merged in by `arm_config` (run by `attrimp.study.arms`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from attrimp.errors import ConfigError


def _default_designs() -> list[str]:
    """The test-time designs a study runs by default, in order: the ``attrimp.designs``
    registry's built-ins (`attrimp.evaluate.designs`; imported on first use)."""
    from attrimp.evaluate.designs import default_designs

    return default_designs()


def __getattr__(name: str) -> tuple[str, ...]:
    """``DESIGNS`` / ``RETRAIN_DESIGNS``, kept for callers of the old constants, read from the
    design registry when asked for (a plug-in design module may import this one)."""
    from attrimp.evaluate import designs

    if name == "DESIGNS":
        return tuple(d.name for d in designs.ordered())
    if name == "RETRAIN_DESIGNS":
        return tuple(designs.retrainable_designs())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class SyntheticConfig:
    identities: int = 48
    cameras: int = 3
    images_per_camera: int = 2
    size: tuple[int, int] = (64, 32)
    seed: int = 0
    #: visibility of each attribute group in the pixels, 1 = fully drawn, 0 = invisible
    visibility: dict[str, float] = field(default_factory=dict)
    #: how identities' attribute vectors are drawn: "independent" (group by group from
    #: Market-1501's priors: more unique vectors than real ones, so a larger identity leak) or
    #: "joint" (whole real vectors resampled from attributes_file: real correlations, real leak)
    attributes: str = "independent"
    #: the Market-1501 attribute file (.mat or CSV) the joint draw resamples; joint only
    attributes_file: str | None = None


@dataclass
class DataConfig:
    #: a name in the dataset registry (attrimp.data.datasets.DATASETS): "synthetic",
    #: "market1501", "dukemtmc", "manifest" or a plug-in's
    dataset: str = "synthetic"
    #: dataset folder (Market layout) or manifest CSV; for "synthetic", where the world is written
    root: str | None = None
    #: identity-level attribute file (.mat or CSV); None = the dataset's default place
    attributes: str | None = None
    #: built-in schema name or a TOML schema file; None = the dataset's own
    schema: str | None = None
    #: what to do with identities that have images but no attributes: "error" or "skip" (counted)
    missing_policy: str = "error"
    num_workers: int = 0
    #: what the model sees: "rgb" or "grayscale" (every image turned to luminance, three equal
    #: channels, before normalisation; the annotations and the drawn world are unchanged)
    color: str = "rgb"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    #: the dataset's own options (``[data.options]``), checked against its options dataclass;
    #: for "synthetic" the same keys as ``[data.synthetic]``, moved there when read
    options: dict[str, Any] = field(default_factory=dict)


def config_section(cls: type, data: dict[str, Any], where: str) -> Any:
    """``data`` as the dataclass ``cls`` (a plug-in's options table), with the config's
    one-sentence errors: unknown keys, wrong types, and whatever its ``__post_init__`` refuses
    (a ValueError or TypeError there is reported as ``where: message``)."""
    try:
        return _from_dict(cls, data, where)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {str(e).rstrip('.')}.") from None


@dataclass
class ModelConfig:
    backbone: str = "clip:ViT-B-16"
    #: pretrained tag (e.g. "openai"), "default" (the family's default weights: "openai" for
    #: clip models, timm's default tag for timm ones), or a local weights file; None = random
    pretrained: str | None = "default"
    img_size: tuple[int, int] = (256, 128)
    #: overlapping patch stride (e.g. 12); None = the patch size
    stride: int | None = None
    camera_embedding: bool = False
    #: "full", "frozen" or "lora"
    adapt: str = "full"
    #: extra keyword arguments for the backbone builder (tiny test configurations use them)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExpertConfig:
    #: a name in the expert-bank registry (`attrimp.registry.BANKS`, entry-point group
    #: ``attrimp.banks``): "adapter" (a gated LoRA branch beside the sub-layer,
    #: attrimp/model/experts.py), "lora" (a gated LoRA update of the sub-layer's own linear
    #: weights, attrimp/model/weight_lora.py) or a plug-in's
    bank: str = "adapter"
    #: last K blocks carry experts; 2 keeps ViT-B/16 + Market adapter experts at rank 8 near 1%
    #: of the backbone (4 blocks would reach the 2% budget; see attrimp/model/experts.py)
    blocks: int = 2
    rank: int = 8
    alpha: float = 16.0
    site: str = "mlp"
    pooling: str = "mean"
    dropout: float = 0.0
    #: the bank's own options (``[experts.options]``), read through its ``Options`` dataclass
    #: when the bank is built (and when the config is read, if any are set); the built-in banks
    #: take none
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.options:  # only then is the bank imported to read them (it brings torch)
            from attrimp.registry import BANKS, plugin_options

            what = f"expert bank {self.bank!r}"
            plugin_options(BANKS.load(self.bank), self.options, where="experts.options", what=what)


class _RegistryNames:
    """The choices of a config key that names a plug-in: the names of a registry, asked when a
    config is read (listing them imports no plug-in)."""

    def __init__(self, module: str, attr: str) -> None:
        self.module, self.attr = module, attr

    def _registry(self) -> Any:
        import importlib

        return getattr(importlib.import_module(self.module), self.attr)

    def __contains__(self, name: object) -> bool:
        return name in self._registry()

    def __iter__(self):
        return iter(self._registry().names())


@dataclass
class MoSAICConfig(ExpertConfig, ModelConfig):
    """The model's config: the ``[model]`` and ``[experts]`` keys under their TOML names, plus
    what the data and the router decide. Everything needed to rebuild the architecture; a
    checkpoint's ``config.json`` stores `to_dict` (JSON round-trips exactly).

    One definition of each setting: the fields are inherited from `ModelConfig` and
    `ExpertConfig`, and checked against the same `CHOICES` and `RANGES` as the TOML file.
    """

    #: size of the camera (SIE) embedding table; 0 = none. ``camera_embedding`` follows it: the
    #: TOML switch asks for a table sized from the data, this is that size
    camera_count: int = 0
    #: built-in schema name or TOML file (checkpoints store the schema itself)
    schema: str = "market1501"
    #: identities of the training set; 0 = no identity classifier (retrieval only)
    num_classes: int = 0
    #: router name in the `routers` registry and its options
    router: str = "oracle"
    router_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.img_size = tuple(int(v) for v in self.img_size)  # type: ignore[assignment]
        try:
            for section in ("model", "experts"):
                _check_fields(self, section)
        except ConfigError as e:
            raise ConfigError(f"Model config: {e}") from None
        if self.camera_count < 0 or self.num_classes < 0:
            raise ConfigError(
                "Model config: camera_count and num_classes must be 0 or more "
                f"(got {self.camera_count} and {self.num_classes})."
            )
        if self.camera_count > 0:
            self.camera_embedding = True  # a camera table is a camera embedding
        elif self.camera_embedding:
            raise ConfigError(
                "Model config: camera_embedding = true needs camera_count, the number of "
                "cameras to size the table for."
            )

    @classmethod
    def from_study(
        cls, study: StudyConfig, *, schema: str, num_classes: int, num_cameras: int
    ) -> MoSAICConfig:
        """The model a study config asks for, on data with these identities and cameras.

        ``[model]`` and ``[experts]`` pass through under their own names; the router section
        becomes the router's name and options.
        """
        r = study.router
        return cls(
            **dataclasses.asdict(study.model),
            **dataclasses.asdict(study.experts),
            camera_count=num_cameras if study.model.camera_embedding else 0,
            schema=schema,
            num_classes=num_classes,
            router=r.name,
            router_kwargs=r.router_kwargs(),
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.img_size)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "model config") -> MoSAICConfig:
        """From `to_dict`'s form; an unknown key or a wrong type is a `ConfigError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source} has the unknown key {unknown[0]!r}; known keys: {sorted(known)}."
            )
        try:
            return _from_dict(cls, data, "")
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "model config") -> MoSAICConfig:
        return cls.from_dict(json.loads(text), source=source)


@dataclass
class RouterConfig:
    #: a name in the router registry (`routers.ROUTERS`, entry-point group ``attrimp.routers``):
    #: "oracle", "learned" or any registered router (its settings in ``[router.options]``);
    #: the study's ablation routers are built by the study itself
    name: str = "oracle"
    #: for "learned": "hard" or "soft" gates
    gates: str = "hard"
    #: for "learned": the normalisation before its attribute heads, "layer" (LayerNorm, the
    #: MoSAIC-ReID design) or "batch" (BatchNorm across images; for a backbone trained from
    #: scratch, whose CLS token at the decision point is nearly the same for every image)
    norm: str = "layer"
    attribute_loss_weight: float = 1.0
    #: for "learned": the attribute heads read a detached copy of the CLS token, so their loss
    #: (and a soft gate's gradient) trains the heads only and never reaches the backbone
    detach: bool = False

    #: the router's own options (``[router.options]``), read through its ``Options`` dataclass
    #: (when the config is read, if any are set, and when the model is built); the learned
    #: router's settings stay the keys above
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.options:  # only then is the router imported to read them (it brings torch)
            self.parsed_options()

    def parsed_options(self) -> Any:
        """``[router.options]`` as an instance of the router's ``Options`` dataclass."""
        import routers
        from attrimp.registry import plugin_options

        what = f"router {self.name!r}"
        cls = routers.ROUTERS.load(self.name)
        return plugin_options(cls, self.options, where="router.options", what=what)

    def router_kwargs(self) -> dict[str, Any]:
        """The model router's constructor options: the learned router's `learned_kwargs`, then
        the fields of ``[router.options]`` (none for the built-in oracle and learned routers,
        so their checkpoint configs are what they were)."""
        from attrimp.registry import option_kwargs

        kwargs = self.learned_kwargs() if self.name == "learned" else {}
        return {**kwargs, **option_kwargs(self.parsed_options())}

    def learned_kwargs(self) -> dict[str, Any]:
        """The learned router's constructor options; ``detach`` only when on, so a model
        trained without it keeps the checkpoint config it had before the option existed."""
        kwargs: dict[str, Any] = {"gates": self.gates, "norm": self.norm}
        if self.detach:
            kwargs["detach"] = True
        return kwargs


@dataclass
class TrainConfig:
    epochs: int = 60
    #: P identities × K images per batch
    identities_per_batch: int = 16
    images_per_identity: int = 4
    optimizer: str = "adamw"
    lr: float = 5e-6
    expert_lr_scale: float = 100.0
    weight_decay: float = 1e-4
    warmup_epochs: int = 5
    label_smoothing: float = 0.1
    triplet_margin: float | None = 0.3
    #: weights of the identity and triplet losses in the total; 1 and 1 is the bag of tricks,
    #: CLIP-ReID's image-encoder stage uses 0.25 and 1
    id_loss_weight: float = 1.0
    triplet_loss_weight: float = 1.0
    center_loss_weight: float = 0.0
    #: "auto" (bf16 on CUDA, off on CPU), "bf16" or "off"
    amp: str = "auto"
    #: the training step (forward + losses + backward): "auto" (compiled with CUDA graphs on a
    #: single CUDA device, eager elsewhere), "eager", "default" (torch.compile without CUDA
    #: graphs) or "reduce-overhead" (torch.compile with CUDA graphs)
    compile: str = "auto"
    grad_clip: float | None = 5.0
    seed: int = 0
    eval_every: int = 0
    #: stop after this many optimiser steps per epoch (0 = a full pass); for smoke runs
    max_steps_per_epoch: int = 0
    #: per sample and attribute group, the probability that the group's experts are switched off
    #: during training ("group dropout"). 0 trains with every annotated expert on, as MoSAIC-ReID
    #: does; > 0 teaches the model to work with any subset of groups, so that test-time ablations
    #: are in-distribution and the backbone cannot lean on the attribute tags alone.
    group_dropout: float = 0.0
    #: scheduled sampling for a learned router: per sample and training step, the probability
    #: that the experts are gated from the router's prediction instead of the annotation. 0 is
    #: teacher forcing (the experts always see the true attributes in training, predicted ones
    #: at test time); > 0 shows them the router's errors while they train.
    predicted_gates_p: float = 0.0

    def weighted_losses_off(self) -> bool:
        """Whether the ID, triplet and centre losses are all switched off (weight 0): then only
        a learned router's attribute loss is left to train anything."""
        return (
            self.id_loss_weight <= 0
            and self.triplet_loss_weight <= 0
            and self.center_loss_weight <= 0
        )


@dataclass
class AblationConfig:
    #: test-time designs run on the trained model, in this order
    designs: list[str] = field(default_factory=_default_designs)
    random_subsets: int = 16
    noisy_p: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5])
    #: retrain one model per configuration of these designs (train-time ablation; expensive)
    retrain: list[str] = field(default_factory=list)
    seed: int = 0


@dataclass
class AnalysisConfig:
    alpha: float = 0.05
    seed: int = 0
    repeats: int = 5
    #: the equivalence margin of the verdicts, in mAP (fraction): a group whose leave-one-out
    #: ΔmAP lies within ±margin by two one-sided tests is "negligible" (``--margin``)
    margin: float = 0.01


@dataclass
class EvalConfig:
    metric: str = "euclidean"
    rerank: bool = False
    max_rank: int = 50
    batch_size: int = 64


#: the sections an arm of ``[compare]`` may override
ARM_SECTIONS = ("data", "model", "experts", "router", "train", "eval", "ablation", "analysis")

#: a name that is safe as one folder name on every platform
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass
class CompareArm:
    """One arm of ``[compare]``: its name (the reports'), its folder name under ``OUT/arms``
    and its overrides, nested tables by section (``{"data": {"color": "grayscale"}}``)."""

    name: str
    folder: str
    overrides: dict[str, Any]


@dataclass
class CompareConfig:
    """``[compare]``: run one study per arm and training seed, then compare them.

    Arms are given either as ``backbones = [...]`` (one arm per backbone, named by it) or as
    ``[[compare.arms]]`` tables, each a ``name`` plus override tables for any section
    (`ARM_SECTIONS`). ``seeds`` are the ``train.seed`` of each replicate; empty means the
    study's own ``train.seed``. The fields are the TOML as written (``to_dict`` round-trips);
    `arm_list` gives the checked arms.
    """

    #: train.seed of each replicate of every arm; empty = [train.seed]
    seeds: list[int] = field(default_factory=list)
    #: the short form: one arm per backbone (``model.backbone``), named by it
    backbones: list[str] = field(default_factory=list)
    #: the long form (``[[compare.arms]]``): ``name`` plus override tables
    arms: list[dict[str, Any]] = field(default_factory=list)

    def seed_list(self, train_seed: int) -> list[int]:
        """The replicates' training seeds (the study's own when ``seeds`` is empty)."""
        return list(self.seeds) or [train_seed]

    def arm_list(self) -> list[CompareArm]:
        """The arms, checked: one form, at least two arms, names unique and safe as folder
        names (a backbone's name is turned into one: ``timm:vit_s`` -> ``timm-vit_s``), each
        override a table of a known section, and no ``train.seed`` (seeds are ``[compare]``'s)."""
        if self.backbones and self.arms:
            raise ConfigError(
                "[compare] gives both backbones and [[compare.arms]]; keep one of the two forms."
            )
        if self.backbones:
            arms = [
                CompareArm(b, _folder_name(b), {"model": {"backbone": b}}) for b in self.backbones
            ]
        else:
            arms = [_compare_arm(i, table) for i, table in enumerate(self.arms)]
        if len(arms) < 2:
            raise ConfigError(
                f"[compare] needs at least two arms to compare, not {len(arms)}; list them in "
                "compare.backbones or as [[compare.arms]] tables."
            )
        _check_unique(arms)
        _check_seeds(self.seeds)
        return arms


def _folder_name(name: str) -> str:
    """A backbone's name as a folder name: each run of other characters than letters, digits,
    '.', '_' and '-' becomes one '-' (``timm:vit_small`` -> ``timm-vit_small``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:100] or "arm"


def _compare_arm(i: int, table: dict[str, Any]) -> CompareArm:
    """``[[compare.arms]]`` table ``i`` as a `CompareArm` (its keys checked)."""
    where = f"compare.arms[{i}]"
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f'{where} needs a name, a string such as name = "grayscale".')
    if not _SAFE_NAME.fullmatch(name):
        raise ConfigError(
            f"{where} has the name {name!r}, which cannot be a folder name; use letters, "
            "digits, '.', '_' and '-' (up to 100, starting with a letter or digit)."
        )
    where = f"compare arm {name!r}"
    overrides = {k: v for k, v in table.items() if k != "name"}
    for key, value in overrides.items():
        if key not in ARM_SECTIONS:
            raise ConfigError(
                f"{where} has the unknown key {key!r}; an arm takes name and override tables "
                f"for {', '.join(ARM_SECTIONS)}."
            )
        if not isinstance(value, dict):
            raise ConfigError(
                f"{where}: {key} must be a table of settings (e.g. {key} = {{ ... }}), "
                f"not {value!r}."
            )
    if "seed" in overrides.get("train", {}):
        raise ConfigError(
            f"{where} sets train.seed; the training seeds of every arm belong to "
            "[compare] seeds = [...]."
        )
    return CompareArm(name, name, overrides)


def _check_unique(arms: list[CompareArm]) -> None:
    seen: set[str] = set()
    for arm in arms:
        key = arm.folder.lower()  # case-insensitive file systems
        if key in seen:
            raise ConfigError(
                f"[compare] has two arms named {arm.name!r} (folder {arm.folder!r}); give each "
                "arm its own name."
            )
        seen.add(key)


def _check_seeds(seeds: list[int]) -> None:
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"compare.seeds lists a seed twice: {seeds}; each must be distinct.")
    for s in seeds:
        if not 0 <= s < 2**32:
            raise ConfigError(f"compare.seeds must be from 0 to 2**32 - 1, not {s!r}.")


def merge_overrides(base: dict[str, Any], overrides: dict[str, Any], cls: type) -> dict[str, Any]:
    """``base`` (a config as `StudyConfig.to_dict`) with ``overrides`` merged in: a table
    merges into a section (a dataclass of ``cls``), any other value — a dict-valued setting
    such as ``visibility`` or ``backbone_kwargs`` included — replaces the setting whole."""
    hints = typing.get_type_hints(cls)
    merged = dict(base)
    for key, value in overrides.items():
        tp = hints.get(key)
        section = dataclasses.is_dataclass(tp) and isinstance(merged.get(key), dict)
        if section and isinstance(value, dict):
            merged[key] = merge_overrides(merged[key], value, tp)
        else:
            merged[key] = value
    return merged


def arm_config(cfg: StudyConfig, arm: CompareArm, seed: int) -> StudyConfig:
    """The ordinary study one arm runs with one training seed: ``cfg`` without ``[compare]``,
    the arm's overrides merged in, ``train.seed = seed``, validated like a TOML file (a bad
    override is one sentence naming the arm)."""
    base = {k: v for k, v in cfg.to_dict().items() if k != "compare"}
    merged = merge_overrides(base, arm.overrides, StudyConfig)
    merged = merge_overrides(merged, {"train": {"seed": seed}}, StudyConfig)
    return config_from_dict(merged, source=f"compare arm {arm.name!r}")


@dataclass
class StudyConfig:
    name: str = "study"
    description: str = ""
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    experts: ExpertConfig = field(default_factory=ExpertConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    #: ``[compare]``: arms and seeds run as one study each, then compared; None = one study
    compare: CompareConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        """The config as TOML-shaped dictionaries; ``compare`` only when set, so a study
        without it writes the config.json (and hashes to the fingerprint) it always did."""
        d = dataclasses.asdict(self)
        if d["compare"] is None:
            del d["compare"]
        return d

    def fingerprint(self, *sections: str) -> str:
        """A short hash of the named sections (all when none): the cache key of a result.

        An empty plug-in options table (``[router.options]``, ``[experts.options]``, …),
        ``[data] color = "rgb"`` and an absent ``[compare]`` are left out, so a config that sets
        none of them hashes as it did before they existed (cached results and report
        fingerprints stay valid)."""
        data = {
            name: {k: v for k, v in section.items() if (k, v) not in _UNHASHED_DEFAULTS}
            if isinstance(section, dict)
            else section
            for name, section in self.to_dict().items()
        }
        if sections:
            data = {k: data[k] for k in sections}
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


#: (key, value) pairs a section's hash leaves out: settings added later, at their defaults
_UNHASHED_DEFAULTS = (("options", {}), ("color", "rgb"))

CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": _RegistryNames("attrimp.data.datasets", "DATASETS"),  # type: ignore[dict-item]
    "data.missing_policy": ("error", "skip"),
    "data.color": ("rgb", "grayscale"),
    "data.synthetic.attributes": ("independent", "joint"),
    "model.adapt": ("full", "frozen", "lora"),
    "experts.bank": _RegistryNames("attrimp.registry", "BANKS"),  # type: ignore[dict-item]
    "experts.site": ("mlp", "attn"),
    "experts.pooling": ("mean", "max", "sum"),
    "router.name": _RegistryNames("routers", "ROUTERS"),  # type: ignore[dict-item]
    "router.gates": ("hard", "soft"),
    "router.norm": ("layer", "batch"),
    "train.optimizer": ("adamw", "sgd"),
    "train.amp": ("auto", "bf16", "off"),
    "train.compile": ("auto", "eager", "default", "reduce-overhead"),
    "eval.metric": ("euclidean", "cosine"),
    "device": ("auto", "cpu", "cuda"),
}


#: designs that can be retrained per configuration are those whose `Design.retrainable` is set (a
#: counterfactual or learned-router run is a test-time intervention on one trained model, not a
#: way to train one)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (TOML types only), converting lists to tuples."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        # TOML has no null: `false` switches an optional setting off (pretrained = false is a
        # random initialisation, triplet_margin = false the soft margin, grad_clip = false none).
        if value is False and type(None) in args and bool not in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where} must not be empty.")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"[{where}] must be a table, not {type(value).__name__}.")
        return _from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values, not {value!r}.")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, not {value!r}.")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, not {value!r}.")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {list(args)}, not {value!r}.")
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where} must be a whole number, not {value!r}.")
    if not isinstance(value, tp):
        raise ConfigError(f"{where} must be {tp.__name__}, not {value!r}.")
    return value


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"Unknown setting {prefix}{unknown[0]}; the known ones are: {', '.join(sorted(names))}."
        )
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        value = _coerce(value, hints[key], path)
        if path in CHOICES and value not in CHOICES[path]:
            raise ConfigError(f"{path} must be one of {list(CHOICES[path])}, not {value!r}.")
        kwargs[key] = value
    return cls(**kwargs)


def _finite(v: float) -> bool:
    return math.isfinite(v)


#: the range of every numeric setting: ``(key, test, what the test asks)``. Checked when the
#: config is read, before any data are made or any model is built, so a value that would fail
#: hours later (an analysis alpha of 1.5 after the training and the sweep) or poison every
#: gradient (lr = nan) stops the run at once with the key named.
RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("data.num_workers", lambda v: v >= 0, "0 or more"),
    ("data.synthetic.identities", lambda v: 2 <= v <= 9999, "from 2 to 9999"),
    ("data.synthetic.cameras", lambda v: 2 <= v <= 9, "from 2 to 9"),
    ("data.synthetic.images_per_camera", lambda v: 1 <= v <= 99, "from 1 to 99"),
    ("data.synthetic.size", lambda v: v[0] >= 32 and v[1] >= 16, "at least [32, 16]"),
    ("data.synthetic.seed", lambda v: v >= 0, "0 or more"),
    ("model.img_size", lambda v: v[0] >= 1 and v[1] >= 1, "two positive numbers"),
    ("model.stride", lambda v: v is None or v >= 1, "1 or more (or false)"),
    ("experts.blocks", lambda v: v >= 0, "0 or more"),
    ("experts.rank", lambda v: v >= 1, "at least 1"),
    ("experts.alpha", lambda v: _finite(v) and v > 0, "a finite number above 0"),
    ("experts.dropout", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    ("router.attribute_loss_weight", lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    ("train.lr", lambda v: _finite(v) and v > 0, "a finite number above 0"),
    ("train.expert_lr_scale", lambda v: _finite(v) and v > 0, "a finite number above 0"),
    ("train.weight_decay", lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    ("train.warmup_epochs", lambda v: v >= 0, "0 or more"),
    ("train.label_smoothing", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    ("train.triplet_margin", lambda v: v is None or _finite(v) and v >= 0, "a finite number >= 0"),
    ("train.grad_clip", lambda v: v is None or _finite(v) and v > 0, "a finite number above 0"),
    ("train.seed", lambda v: 0 <= v < 2**32, "from 0 to 2**32 - 1"),
    ("train.eval_every", lambda v: v >= 0, "0 or more"),
    ("train.max_steps_per_epoch", lambda v: v >= 0, "0 or more"),
    ("train.predicted_gates_p", lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]"),
    ("ablation.random_subsets", lambda v: v >= 0, "0 or more"),
    ("ablation.seed", lambda v: 0 <= v < 2**32, "from 0 to 2**32 - 1"),
    ("analysis.alpha", lambda v: 0.0 < v < 1.0, "strictly between 0 and 1"),
    ("analysis.seed", lambda v: 0 <= v < 2**32, "from 0 to 2**32 - 1"),
    ("analysis.repeats", lambda v: v >= 1, "1 or more"),
    ("analysis.margin", lambda v: _finite(v) and v > 0, "a finite number above 0"),
    ("eval.max_rank", lambda v: v >= 1, "1 or more"),
    ("eval.batch_size", lambda v: v >= 1, "1 or more"),
)


def _check_ranges(cfg: StudyConfig) -> None:
    for key, test, what in RANGES:
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        _check_range(key, value, test, what)


def _check_range(key: str, value: Any, test: Callable[[Any], bool], what: str) -> None:
    if not test(value):
        shown = list(value) if isinstance(value, tuple) else value
        raise ConfigError(f"{key} must be {what}, not {shown!r}.")


def _check_fields(obj: Any, section: str) -> None:
    """The `CHOICES` and `RANGES` of one TOML section, on an object that has its keys as
    attributes (`MoSAICConfig` holds ``[model]`` and ``[experts]``)."""
    prefix = f"{section}."
    for key, allowed in CHOICES.items():
        if key.startswith(prefix) and (value := getattr(obj, key[len(prefix) :])) not in allowed:
            raise ConfigError(f"{key} must be one of {list(allowed)}, not {value!r}.")
    for key, test, what in RANGES:
        if key.startswith(prefix) and "." not in key[len(prefix) :]:
            _check_range(key, getattr(obj, key[len(prefix) :]), test, what)


def _validate(cfg: StudyConfig) -> None:
    _check_data_options(cfg.data)
    if cfg.compare is not None:
        _check_compare(cfg)
    _check_ranges(cfg)
    from attrimp.evaluate.designs import DESIGNS, ordered, retrainable_designs

    bad = [d for d in cfg.ablation.designs if d not in DESIGNS]
    if bad:
        known = [d.name for d in ordered()]
        raise ConfigError(f"ablation.designs has unknown design {bad[0]!r}; known: {known}.")
    for name, value in (
        ("train.epochs", cfg.train.epochs),
        ("train.identities_per_batch", cfg.train.identities_per_batch),
        ("train.images_per_identity", cfg.train.images_per_identity),
    ):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, not {value}.")
    retrainable = retrainable_designs()
    bad = [d for d in cfg.ablation.retrain if d not in retrainable]
    if bad:
        raise ConfigError(
            f"ablation.retrain cannot retrain the design {bad[0]!r}; retrainable: {retrainable}."
        )
    for name, value in (
        ("train.id_loss_weight", cfg.train.id_loss_weight),
        ("train.triplet_loss_weight", cfg.train.triplet_loss_weight),
        ("train.center_loss_weight", cfg.train.center_loss_weight),
    ):
        # a negative weight would train the model to *increase* that loss; nan or inf would
        # poison every gradient from the first step
        if not (math.isfinite(value) and value >= 0.0):
            raise ConfigError(f"{name} must be a finite number of 0 or more, not {value}.")
    if cfg.train.weighted_losses_off() and cfg.router.name != "learned":
        raise ConfigError(
            "train.id_loss_weight and train.triplet_loss_weight are both 0 and no other loss is "
            "on, so nothing would train the model."
        )
    if cfg.router.name != "learned" and (cfg.train.predicted_gates_p > 0 or cfg.router.detach):
        what = "train.predicted_gates_p" if cfg.train.predicted_gates_p > 0 else "router.detach"
        raise ConfigError(
            f"{what} applies to the learned router only; set router.name = 'learned'."
        )
    if not 0.0 <= cfg.train.group_dropout < 1.0:
        raise ConfigError(f"train.group_dropout must lie in [0, 1), not {cfg.train.group_dropout}.")
    if not all(0.0 <= p <= 1.0 for p in cfg.ablation.noisy_p):
        raise ConfigError(
            f"ablation.noisy_p values must lie in [0, 1], not {cfg.ablation.noisy_p}."
        )
    if not all(0.0 <= v <= 1.0 for v in cfg.data.synthetic.visibility.values()):
        raise ConfigError("data.synthetic.visibility values must lie in [0, 1].")
    _check_synthetic_draw(cfg.data.synthetic)
    _check_data_schema(cfg.data)


def _check_compare(cfg: StudyConfig) -> None:
    """``[compare]``: its arms (`CompareConfig.arm_list`), and every arm's merged config
    validated like a file of its own (the first seed stands for all: only train.seed differs)."""
    compare = cfg.compare
    assert compare is not None
    seed = compare.seed_list(cfg.train.seed)[0]
    for arm in compare.arm_list():
        arm_config(dataclasses.replace(cfg, compare=None), arm, seed)


def _check_data_options(d: DataConfig) -> None:
    """``[data.options]`` through the dataset's own options dataclass. For ``synthetic`` the
    table is ``[data.synthetic]`` under another name: it is moved there (giving both is
    refused), so either spelling makes the same world and the same fingerprint."""
    from attrimp.data.datasets import DATASETS

    ds = DATASETS.load(d.dataset)
    if d.dataset == "synthetic" and d.options:
        if d.synthetic != SyntheticConfig():
            raise ConfigError(
                "data.options and data.synthetic both set the synthetic world; keep one."
            )
        d.synthetic, d.options = ds.options_of(d), {}
    else:
        ds.options_of(d)


def _check_data_schema(d: DataConfig) -> None:
    """A dataset with its own schema takes no other; the others need a root."""
    from attrimp.data.datasets import DATASETS

    ds = DATASETS.load(d.dataset)
    own = ds.schema
    if own is not None and d.schema not in (None, own):
        raise ConfigError(
            f"data.schema = {d.schema!r} cannot be used with dataset {d.dataset!r}, "
            "which has its own built-in schema; data.schema is for manifest datasets."
        )
    if ds.needs_root and d.root is None:
        raise ConfigError(f"data.root is required for dataset {d.dataset!r}.")


def _check_synthetic_draw(s: SyntheticConfig) -> None:
    """attributes_file goes with the joint draw and only with it (the file itself is read, and
    its schema checked, when the world is drawn)."""
    if s.attributes == "joint" and not s.attributes_file:
        raise ConfigError(
            'data.synthetic.attributes = "joint" needs data.synthetic.attributes_file, a '
            "Market-1501 attribute file (market_attribute.mat) to resample identities from."
        )
    if s.attributes != "joint" and s.attributes_file:
        raise ConfigError(
            "data.synthetic.attributes_file is read only by the joint draw; add "
            'data.synthetic.attributes = "joint" or drop it.'
        )


def config_from_dict(data: dict[str, Any], *, source: str = "config") -> StudyConfig:
    try:
        cfg = _from_dict(StudyConfig, data, "")
        _validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def load_config(path: str | Path) -> StudyConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Config file {str(path)!r} does not exist.") from None
    except OSError as e:
        raise ConfigError(f"Config file {str(path)!r} cannot be read: {e.strerror}.") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"Config file {str(path)!r} is not valid TOML: {e}.") from None
    return config_from_dict(data, source=f"config file {str(path)!r}")

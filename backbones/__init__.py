"""Pluggable ViT backbones, built by ``family:model`` name.

    >>> bb = build("timm:vit_tiny_patch16_224", tiny=True)           # random, 2 blocks, 256x128
    >>> bb = build("clip:ViT-B-16", pretrained="openai", stride=12, camera_count=6)
    >>> bb = build("timm:deit_small_patch16_224", pretrained="ckpt.safetensors", adapt="lora")

Families live in `FAMILIES`, an `attrimp.registry.Registry` over the ``attrimp.backbones``
entry-point group. The built-ins (``clip``, ``timm``) are declared there by attrimp's own
``pyproject.toml`` exactly as a third-party package declares its family, and are imported only
when asked for::

    [project.entry-points."attrimp.backbones"]
    mine = "my_pkg.backbone:MyFamily"      # a BackboneFamily subclass (or instance, or a module
                                           # that calls register_family on import)

`register_family` (a class decorator) registers a family in the running process.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

from attrimp.errors import AttrimpError, CheckpointError, ConfigError
from attrimp.registry import Registry
from backbones.base import (
    BackboneFamily,
    PretrainedCfg,
    ViTBackbone,
    as_size,
    resample_pos_embed,
)
from backbones.weights import load_weights, read_state_dict, save_weights

__all__ = [
    "FAMILIES",
    "BackboneFamily",
    "PretrainedCfg",
    "ViTBackbone",
    "build",
    "check",
    "get_family",
    "list_backbones",
    "list_families",
    "load_weights",
    "parse_name",
    "read_state_dict",
    "register_family",
    "resample_pos_embed",
    "save_weights",
    "set_adapt_mode",
]

ENTRY_POINT_GROUP = "attrimp.backbones"


def _as_family(name: str, obj: Any) -> BackboneFamily:
    """A registered object as a family instance named ``name`` (a class is instantiated once)."""
    family = obj() if isinstance(obj, type) and issubclass(obj, BackboneFamily) else obj
    if not isinstance(family, BackboneFamily):
        raise TypeError(f"{obj!r} is not a BackboneFamily (nor a module that registers one)")
    family.name = name
    return family


#: every backbone family by name; the built-ins as pyproject.toml declares them (for a checkout
#: without installed metadata)
FAMILIES: Registry[BackboneFamily] = Registry(
    ENTRY_POINT_GROUP,
    kind="backbone family",
    plural="families",
    builtins={"clip": "backbones.clip:ClipFamily", "timm": "backbones.timm_vit:TimmFamily"},
    coerce=_as_family,
)

_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")

#: ``pretrained = "default"``: the family's default weights (clip: "openai" where open_clip has
#: it, timm: timm's default tag), so one default config value fits every family
DEFAULT_PRETRAINED = "default"

#: seconds to wait for a weight host to answer before calling the network unreachable
PROBE_TIMEOUT = 5.0

#: how to get out of a failed download, said in every such error
_WAY_OUT = (
    'download the weights where there is a network and set pretrained = "<local file>" '
    "(a .safetensors/.pth file) in [model], or pretrained = false for random weights"
)


def register_family(name: str):
    """Class decorator: register a `BackboneFamily` subclass (instantiated once) under ``name``."""
    return FAMILIES.register(name)


def list_families() -> list[str]:
    """Names of every family that loads (built-ins and plug-ins; a broken plug-in warns)."""
    return sorted(FAMILIES.load_all())


def get_family(name: str) -> BackboneFamily:
    """The family registered under ``name``; unknown -> ConfigError listing the known ones."""
    return FAMILIES.load(name)


def parse_name(name: str) -> tuple[str, str]:
    """``"clip:ViT-B-16"`` -> ``("clip", "ViT-B-16")``; a name without a family is an error."""
    family, sep, model = str(name).partition(":")
    if not sep or not family or not model:
        raise AttrimpError(
            f"backbone name {name!r} must be 'family:model' (e.g. 'clip:ViT-B-16' or "
            f"'timm:vit_base_patch16_224'); known families: {', '.join(list_families())}."
        )
    return family, model


def list_backbones(family: str | None = None, *, all: bool = False) -> list[str]:  # noqa: A002
    """``family:model`` names: the featured ones of each family, or every one with ``all=True``."""
    names = []
    for fam in [family] if family else list_families():
        f = get_family(fam)
        models = f.list_models() if all else f.featured_models()
        names += [f"{fam}:{m}" for m in models]
    return names


def _unknown_model(family: BackboneFamily, model: str) -> AttrimpError:
    reason = family.unsupported_reason(model)
    if reason is not None:
        return ConfigError(
            f"{family.name}:{model} is a known {family.name} model, but not supported because "
            f"{reason}."
        )
    known = family.list_models()
    close = difflib.get_close_matches(model, known, n=8, cutoff=0.6)
    shown = close or family.featured_models()
    return AttrimpError(
        f"unknown {family.name} model {model!r}; "
        + ("closest: " if close else "for example: ")
        + ", ".join(shown)
        + f" ({len(known)} known; `attrimp backbones list --family {family.name} --all` lists them)."
    )


def _looks_like_file(value: str | Path) -> bool:
    if isinstance(value, Path):
        return True
    return (
        value.endswith(_WEIGHT_SUFFIXES) or os.sep in value or "/" in value or Path(value).is_file()
    )


def _resolve_pretrained(
    family: BackboneFamily, model: str, pretrained: str | Path | bool | None
) -> tuple[str | None, Path | None]:
    """``(tag, file)`` from the user's ``pretrained``; checks the tag before any download."""
    if pretrained is None or pretrained is False:
        return None, None
    if (
        not isinstance(pretrained, (bool, str))
        or isinstance(pretrained, str)
        and _looks_like_file(pretrained)
    ):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise AttrimpError(f"weight file {path} does not exist.")
        return None, path
    if isinstance(pretrained, Path):  # pragma: no cover - handled above
        return None, pretrained
    tags = family.list_pretrained(model)
    name_tag = model.split(".", 1)[1] if family.name == "timm" and "." in model else None
    if pretrained is True or pretrained == DEFAULT_PRETRAINED:
        if name_tag or tags:
            return name_tag or tags[0], None
        raise AttrimpError(
            f"{family.name} model {model!r} has no pretrained weights to load; set "
            'pretrained = false (random weights) or pretrained = "<local file>".'
        )
    if name_tag and pretrained != name_tag:
        raise AttrimpError(
            f"the name {family.name}:{model} already says pretrained tag {name_tag!r} but "
            f"pretrained={pretrained!r} was given."
        )
    if pretrained not in tags:
        known = ", ".join(tags) if tags else "none"
        raise AttrimpError(
            f"unknown pretrained tag {pretrained!r} for {family.name}:{model}; known tags: {known} "
            "(or pass a local .safetensors/.pt file)."
        )
    return pretrained, None


def build(
    name: str,
    *,
    pretrained: str | Path | bool | None = None,
    img_size: int | tuple[int, int] = (256, 128),
    stride: int | None = None,
    camera_count: int = 0,
    adapt: Literal["full", "frozen", "lora"] = "full",
    lora_rank: int = 8,
    lora_alpha: float | None = None,
    lora_targets: tuple[str, ...] = ("attn", "mlp"),
    lora_dropout: float = 0.0,
    tiny: bool = False,
    pretrained_grid: tuple[int, int] | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    **kwargs: Any,
) -> ViTBackbone:
    """Build a ViT backbone at the ReID input size.

    Args:
        name: ``family:model`` (``clip:ViT-B-16``, ``timm:deit_small_patch16_224``).
        pretrained: ``None`` (random init), a hub tag (``"openai"``; checked before any
            download, an unknown one lists the known tags), ``True`` (the default tag), or a
            local weight file (.safetensors first; .pt/.pth/.bin with ``weights_only=True``),
            adapted to this model by `backbones.weights.load_weights`.
        img_size: ``(height, width)`` of the input; the position embedding is resampled to it.
        stride: overlapping patch stride (e.g. 12 for 16-pixel patches, as in TransReID);
            ``None`` = non-overlapping.
        camera_count: size of the camera (SIE) embedding table; 0 = none. Zero-initialised.
        adapt: ``full`` fine-tune, ``frozen`` (no backbone parameter trains; the new camera
            table still does), or ``lora`` (peft LoRA on the blocks' attention / MLP linears;
            only LoRA and the camera table train).
        lora_rank, lora_alpha, lora_targets, lora_dropout: the LoRA options (alpha defaults to
            the rank, i.e. scale 1).
        tiny: a tiny random configuration (2 blocks, width 48) for tests; ``**kwargs`` still win.
        pretrained_grid: the position grid of a weight file when neither its metadata nor its
            token count tells it.
        mean, std: override the normalisation recorded in ``backbone.pretrained_cfg``.
        **kwargs: passed to the family's model constructor (user kwargs win over defaults).
    """
    family, model, size, tag, file = _validated(name, pretrained, img_size, stride, adapt, tiny)
    options = _family_options(size, stride, camera_count, tiny, kwargs)
    backbone = _construct(family, model, tag=tag, **options)
    _finish_weights(backbone, file, pretrained_grid=pretrained_grid, mean=mean, std=std)
    set_adapt_mode(
        backbone,
        adapt,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_targets=lora_targets,
        lora_dropout=lora_dropout,
    )
    return backbone


def _family_options(
    size: tuple[int, int], stride: int | None, camera_count: int, tiny: bool, kwargs: dict
) -> dict[str, Any]:
    """The keyword arguments of `BackboneFamily.build` (the user's ``kwargs`` last, so they win)."""
    return {
        "img_size": size,
        "stride": stride,
        "camera_count": int(camera_count),
        "tiny": tiny,
        **kwargs,
    }


def _construct(
    family: BackboneFamily, model: str, *, tag: str | None, **options: Any
) -> ViTBackbone:
    """The family's model with hub weights ``tag``; a download that cannot happen is one
    sentence with the way out, found in seconds before the hub client's minute of retries."""
    name = f"{family.name}:{model}"
    if tag is not None:
        problem = _fetch_problem(family, model, tag)
        if problem is not None:
            raise CheckpointError(
                f"Could not download the {tag!r} weights of {name}: {problem}; {_WAY_OUT}."
            )
    try:
        return family.build(model, tag=tag, **options)
    except AttrimpError:
        raise
    except Exception as exc:
        if tag is None or not _is_network_error(exc):
            raise
        raise CheckpointError(
            f"Could not download the {tag!r} weights of {name} ({_innermost(exc)}); {_WAY_OUT}."
        ) from None


def _finish_weights(
    backbone: ViTBackbone,
    file: Path | None,
    *,
    pretrained_grid: tuple[int, int] | None,
    mean: tuple[float, float, float] | None,
    std: tuple[float, float, float] | None,
) -> None:
    """Load a local weight file and record it and the user's normalisation (the user wins)."""
    if file is not None:
        load_weights(backbone, file, pretrained_grid=pretrained_grid)
        backbone.pretrained_cfg = backbone.pretrained_cfg.with_overrides(file=str(file))
    backbone.pretrained_cfg = backbone.pretrained_cfg.with_overrides(
        mean=tuple(mean) if mean is not None else None, std=tuple(std) if std is not None else None
    )


def check(
    name: str,
    *,
    pretrained: str | Path | bool | None = None,
    img_size: int | tuple[int, int] = (256, 128),
    stride: int | None = None,
    camera_count: int = 0,
    adapt: str = "full",
    tiny: bool = False,
    **kwargs: Any,
) -> None:
    """Raise the error `build` would raise for these settings, without weights or a download.

    Checks the name (unknown, or known but unsupported), adapt mode, size, stride and pretrained
    tag or file, then constructs the architecture at the ReID size on the meta device (no memory,
    no network), so that the class-token, pooling and patch-grid checks run too. Commands call it
    before long work (a synthetic world, a dataset scan): a bad backbone costs seconds, not that.
    """
    import torch

    family, model, size, _, _ = _validated(name, pretrained, img_size, stride, adapt, tiny)
    with torch.device("meta"):
        family.build(model, tag=None, **_family_options(size, stride, camera_count, tiny, kwargs))


def _validated(
    name: str,
    pretrained: str | Path | bool | None,
    img_size: int | tuple[int, int],
    stride: int | None,
    adapt: str,
    tiny: bool,
) -> tuple[BackboneFamily, str, tuple[int, int], str | None, Path | None]:
    """``(family, model, size, tag, file)`` after every check that needs no model."""
    family_name, model = parse_name(name)
    family = get_family(family_name)
    if not family.has_model(model):
        raise _unknown_model(family, model)
    if adapt not in ("full", "frozen", "lora"):
        raise ConfigError(f"unknown adapt mode {adapt!r}; known modes: full, frozen, lora.")
    size = as_size(img_size)
    if stride is not None and (not isinstance(stride, int) or stride <= 0):
        raise ConfigError(f"stride must be a positive int or None, got {stride!r}.")
    tag, file = _resolve_pretrained(family, model, pretrained)
    if tiny and tag is not None:
        raise ConfigError(
            "tiny=True builds a random tiny architecture; it cannot load hub weights "
            "(set pretrained = false)."
        )
    return family, model, size, tag, file


# ------------------------------------------------------------------ weights from the network


def _fetch_problem(family: BackboneFamily, model: str, tag: str) -> str | None:
    """Why ``tag``'s weights cannot be fetched now, found in seconds; None: cached or reachable.

    Without it, no network costs a minute of the hub client's retries and ends in a traceback
    of hundreds of lines.
    """
    repo, url = family.weight_source(model, tag)
    if repo is not None:
        if _hf_cached(repo):
            return None
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            return f"HF_HUB_OFFLINE is set and {repo} is not in the local Hugging Face cache"
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
        if not _reachable(endpoint):
            return f"{endpoint} (for {repo}) cannot be reached"
        return None
    if url is not None:
        if _torch_hub_cached(url):
            return None
        if not _reachable(url):
            return f"{url} cannot be reached"
    return None


def _hf_cached(repo: str) -> bool:
    """Whether a snapshot of the hub repo ``repo`` is in the local Hugging Face cache."""
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--")) / "snapshots"
    return folder.is_dir() and any(folder.iterdir())


def _torch_hub_cached(url: str) -> bool:
    import torch

    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file()


def _reachable(url: str) -> bool:
    """One HEAD request without retries: any HTTP answer means the host is there."""
    import urllib.error
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    root = f"{parts.scheme}://{parts.netloc}/"
    try:
        urllib.request.urlopen(urllib.request.Request(root, method="HEAD"), timeout=PROBE_TIMEOUT)
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def _is_network_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a failed download."""
    seen = 0
    while exc is not None and seen < 20:
        module = type(exc).__module__
        if isinstance(exc, OSError) or module.startswith(
            ("huggingface_hub", "httpx", "httpcore", "requests", "urllib3")
        ):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _innermost(exc: BaseException) -> str:
    """The first line of the deepest exception in the chain (the actual network error)."""
    while exc.__cause__ or exc.__context__:
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def set_adapt_mode(
    backbone: ViTBackbone,
    adapt: str,
    *,
    lora_rank: int = 8,
    lora_alpha: float | None = None,
    lora_targets: tuple[str, ...] = ("attn", "mlp"),
    lora_dropout: float = 0.0,
) -> ViTBackbone:
    """Set which backbone parameters train: ``full``, ``frozen`` or ``lora`` (see `build`)."""
    from backbones.base import freeze

    if adapt == "full":
        for p in backbone.parameters():
            p.requires_grad_(True)
    elif adapt == "frozen":
        freeze(backbone, keep=("camera_embed",))
    elif adapt == "lora":
        from backbones.lora import apply_lora

        apply_lora(
            backbone, rank=lora_rank, alpha=lora_alpha, targets=lora_targets, dropout=lora_dropout
        )
    else:
        raise ConfigError(f"unknown adapt mode {adapt!r}; known modes: full, frozen, lora.")
    backbone.adapt_mode = adapt
    return backbone

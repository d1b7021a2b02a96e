"""Routers: attribute annotations (or predictions) -> expert gates ``[batch, n_experts]``.

The registry is lazy: names map to ``module:Class`` strings and a module is imported only when
its router is built, so ``import routers`` stays cheap and the learned router (which pulls in
its own heads) is loaded on demand.

    build_router("oracle")
    build_router("mask", groups_on={"gender", "hat"})          # every other group off
    build_router("noisy", p=0.2, seed=0, base="oracle")
    build_router("counterfactual", group="gender", value="female")
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from attrimp.errors import ConfigError

if TYPE_CHECKING:
    from attrimp.model.interfaces import Router

_TARGETS: dict[str, str | type] = {
    "oracle": "routers.oracle:OracleRouter",
    "mask": "routers.mask:MaskRouter",
    "counterfactual": "routers.counterfactual:CounterfactualRouter",
    "noisy": "routers.noisy:NoisyRouter",
    "learned": "routers.learned:LearnedRouter",
}


class _Registry(Mapping[str, type]):
    """``ROUTERS[name]`` -> the router class, imported on first use; iteration lists names."""

    def __getitem__(self, name: str) -> type:
        target = _TARGETS[name]
        if isinstance(target, type):
            return target
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            raise ConfigError(
                f"The router {name!r} is registered but its module {module_name!r} is not installed."
            ) from None
        try:
            cls = getattr(module, attr)
        except AttributeError:
            raise ConfigError(
                f"The router {name!r} expects {attr!r} in module {module_name!r}, which lacks it."
            ) from None
        _TARGETS[name] = cls
        return cls

    def __contains__(self, name: object) -> bool:  # without importing the router's module
        return name in _TARGETS

    def __iter__(self) -> Iterator[str]:
        return iter(list(_TARGETS))

    def __len__(self) -> int:
        return len(_TARGETS)


ROUTERS: Mapping[str, type] = _Registry()


def register_router(name: str, target: str | type | None = None) -> Callable[[type], type] | type:
    """Register a router class (or a lazy ``"module:Class"`` string) under ``name``.

    Used as ``@register_router("mine")`` on a class, or ``register_router("mine", "pkg.mod:Cls")``.
    """

    def add(cls: type) -> type:
        _TARGETS[name] = cls
        return cls

    if target is None:
        return add
    _TARGETS[name] = target
    return target if isinstance(target, type) else None  # type: ignore[return-value]


def build_router(name: str, **kwargs: Any) -> Router:
    """A router by registered name; user kwargs go to its constructor unchanged.

    A ``base`` given as a name (``"oracle"``) or as a mapping ``{"name": ..., **kwargs}`` is built
    first, so configuration files can nest routers.
    """
    if name not in _TARGETS:
        raise ConfigError(
            f"Unknown router {name!r}; the registered routers are {sorted(_TARGETS)}."
        )
    base = kwargs.get("base")
    if isinstance(base, str):
        kwargs["base"] = build_router(base)
    elif isinstance(base, Mapping):
        spec = dict(base)
        if "name" not in spec:
            raise ConfigError(f"The base router of {name!r} needs a 'name'.")
        kwargs["base"] = build_router(spec.pop("name"), **spec)
    cls = ROUTERS[name]
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        raise ConfigError(f"Router {name!r} does not accept these options: {e}.") from None
    return cls(**kwargs)


def __getattr__(name: str):
    if name == "Router":  # re-exported lazily: attrimp.model.interfaces imports torch
        from attrimp.model.interfaces import Router

        return Router
    raise AttributeError(name)


__all__ = ["ROUTERS", "Router", "build_router", "register_router"]

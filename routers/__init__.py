"""Routers: attribute annotations (or predictions) -> expert gates ``[batch, n_experts]``.

`ROUTERS` is an `attrimp.registry.Registry` over the ``attrimp.routers`` entry-point group: the
built-ins are declared in attrimp's own ``pyproject.toml`` exactly as a third party declares a
router, and a module is imported only when its router is built, so ``import routers`` stays
cheap and the learned router (which pulls in its own heads) is loaded on demand.

    build_router("oracle")
    build_router("mask", groups_on={"gender", "hat"})          # every other group off
    build_router("noisy", p=0.2, seed=0, base="oracle")
    build_router("counterfactual", group="gender", value="female")

A third-party package adds a router in its ``pyproject.toml``::

    [project.entry-points."attrimp.routers"]
    mine = "my_pkg.routers:MyRouter"       # a Router subclass

and a study then names it (``router.name = "mine"``) and hands it ``[router.options]``, read
through the dataclass the router declares as its ``Options`` class attribute (one-sentence
errors naming ``router.options.<key>``; no ``Options`` = no options) and passed to its
constructor as keywords (`attrimp.registry.plugin_options`, `option_kwargs`)::

    class MyRouter(Router):
        @dataclass
        class Options:
            level: float = 1.0

        def __init__(self, level: float = 1.0) -> None: ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from attrimp.errors import ConfigError
from attrimp.registry import Registry

if TYPE_CHECKING:
    from attrimp.model.interfaces import Router

ENTRY_POINT_GROUP = "attrimp.routers"


def _as_router_class(name: str, obj: Any) -> type:
    """A registered router must be a class (built with the user's options per use)."""
    if not isinstance(obj, type):
        raise TypeError(f"{obj!r} is not a router class")
    return obj


#: every router class by name; the built-ins as pyproject.toml declares them (for a checkout
#: without installed metadata)
ROUTERS: Registry[type] = Registry(
    ENTRY_POINT_GROUP,
    kind="router",
    plural="routers",
    builtins={
        "oracle": "routers.oracle:OracleRouter",
        "mask": "routers.mask:MaskRouter",
        "counterfactual": "routers.counterfactual:CounterfactualRouter",
        "noisy": "routers.noisy:NoisyRouter",
        "learned": "routers.learned:LearnedRouter",
    },
    coerce=_as_router_class,
)


def register_router(name: str, target: str | type | None = None) -> Callable[[type], type] | type:
    """Register a router class (or a lazy ``"module:Class"`` string) under ``name``.

    Used as ``@register_router("mine")`` on a class, or ``register_router("mine", "pkg.mod:Cls")``.
    """
    return ROUTERS.register(name, target)


def build_router(name: str, **kwargs: Any) -> Router:
    """A router by registered name; user kwargs go to its constructor unchanged.

    A ``base`` given as a name (``"oracle"``) or as a mapping ``{"name": ..., **kwargs}`` is built
    first, so configuration files can nest routers.
    """
    cls = ROUTERS.load(name)  # an unknown name: one sentence listing the known ones
    base = kwargs.get("base")
    if isinstance(base, str):
        kwargs["base"] = build_router(base)
    elif isinstance(base, Mapping):
        spec = dict(base)
        if "name" not in spec:
            raise ConfigError(f"The base router of {name!r} needs a 'name'.")
        kwargs["base"] = build_router(spec.pop("name"), **spec)
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


__all__ = ["ENTRY_POINT_GROUP", "ROUTERS", "Router", "build_router", "register_router"]

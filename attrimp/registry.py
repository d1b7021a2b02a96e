"""One plug-in mechanism for every registry of attrimp (backbone families, routers, expert banks, …).

A `Registry` maps names to objects of one kind. Its entries come from three places, later ones
winning on a name:

1. the package's *built-in list* (``name -> "module:attr"``): the same declarations that
   ``pyproject.toml`` makes as entry points, kept so that a plain checkout on ``sys.path``
   (no installed distribution metadata) still finds the built-ins; a test keeps the two equal;
2. the *entry-point group* (``attrimp.backbones``, ``attrimp.routers``) of every installed
   distribution: attrimp registers its own built-ins there exactly as a third party does::

       [project.entry-points."attrimp.routers"]
       mine = "my_pkg.routers:MyRouter"

3. `Registry.register` in this process (a decorator; for notebooks and tests).

Nothing is imported until an entry is asked for: listing names reads metadata only, so
``"learned" in routers.ROUTERS`` does not import torch. A plug-in that fails to import is a
one-sentence `ConfigError` when asked for by name, and a warning (not a crash) when every entry
is loaded for a listing. The module is torch-free.

**Options.** A plug-in that a config names (a router, an expert bank, a dataset) declares the
settings it takes from its config table (``[router.options]``, ``[experts.options]``) as a
dataclass, its ``Options`` class attribute::

    class MyBank(ExpertBank):
        @dataclass
        class Options:
            scale: float = 1.0

`plugin_options` reads a table through that dataclass with the config's one-sentence errors
(``experts.options.scale must be float, not 'x'.``); `option_kwargs` turns the result into the
keyword arguments the plug-in is built with. A plug-in without ``Options`` takes no options.

`BANKS` (group ``attrimp.banks``) is the expert-bank registry; it lives here, torch-free, so the
config can list its names without importing a bank.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Generic, TypeVar

from attrimp.errors import ConfigError

T = TypeVar("T")

#: turns a loaded entry-point object into the registry's kind (e.g. a class into an instance);
#: raises TypeError when the object is not of that kind
Coerce = Callable[[str, Any], Any]


def _identity(name: str, obj: Any) -> Any:
    return obj


class Registry(Mapping[str, T], Generic[T]):
    """Names -> objects of one kind, from built-ins, an entry-point group and `register`.

    ``registry[name]`` loads the entry (KeyError when unknown, as a Mapping does);
    `load` is the same with a `ConfigError` that lists the known names.
    """

    def __init__(
        self,
        group: str,
        *,
        kind: str,
        plural: str,
        builtins: Mapping[str, str],
        coerce: Coerce = _identity,
    ) -> None:
        self.group = group
        self.kind = kind
        self.plural = plural
        self.builtins = dict(builtins)
        self._coerce = coerce
        self._declared: dict[str, importlib.metadata.EntryPoint] | None = None
        self._registered: dict[str, T] = {}  # in-process registrations and loaded entries
        self._broken: dict[str, str] = {}  # name -> why it failed to load

    # ----- declarations ---------------------------------------------------------------------
    def _declarations(self) -> dict[str, importlib.metadata.EntryPoint]:
        """Built-ins, then the group's entry points (read once; `refresh` reads them again)."""
        if self._declared is None:
            declared = {
                name: importlib.metadata.EntryPoint(name=name, value=value, group=self.group)
                for name, value in self.builtins.items()
            }
            for ep in importlib.metadata.entry_points(group=self.group):
                declared[ep.name] = ep
            self._declared = declared
        return self._declared

    def refresh(self) -> None:
        """Read the entry points again and forget what was loaded from them (not `register`ed
        objects); for a package installed while the process runs, and for tests."""
        self._declared = None
        self._broken.clear()

    def names(self) -> list[str]:
        """Every known name, sorted; nothing is imported."""
        return sorted(set(self._declarations()) | set(self._registered))

    # ----- registration ---------------------------------------------------------------------
    def register(self, name: str, obj: Any = None) -> Any:
        """Register ``obj`` under ``name`` in this process; without ``obj``, a decorator.

        ``obj`` may be a ``"module:attr"`` string, loaded on first use like an entry point.
        Returns ``obj`` unchanged, so the decorated class stays a class.
        """

        def add(target: Any) -> Any:
            if isinstance(target, str):
                ep = importlib.metadata.EntryPoint(name=name, value=target, group=self.group)
                self._declarations()[name] = ep
                self._registered.pop(name, None)
            else:
                self._registered[name] = self._coerce(name, target)
            self._broken.pop(name, None)
            return target

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a plug-in of a test); unknown names are ignored."""
        self._registered.pop(name, None)
        self._declarations().pop(name, None)
        self._broken.pop(name, None)

    @contextmanager
    def isolated(self) -> Iterator[Registry[T]]:
        """Within the block, registrations and entry-point changes are undone afterwards.

        The entry points are read on entering, so fake ones for a test go in *inside* the block
        (then `refresh`).
        """
        declared = dict(self._declarations())
        registered, broken = dict(self._registered), dict(self._broken)
        try:
            yield self
        finally:
            self._declared, self._registered, self._broken = declared, registered, broken

    # ----- loading --------------------------------------------------------------------------
    def load(self, name: str) -> T:
        """The object registered under ``name``, imported on first use.

        An unknown name, or a plug-in that fails to import or is not of this registry's kind,
        is a `ConfigError` of one sentence (listing the known names for an unknown one).
        """
        if name in self._registered:
            return self._registered[name]
        declared = self._declarations()
        if name not in declared:
            known = ", ".join(self.names()) or "none"
            raise ConfigError(f"unknown {self.kind} {name!r}; known {self.plural}: {known}.")
        if name in self._broken:
            raise ConfigError(self._broken[name])
        ep = declared[name]
        try:
            obj = ep.load()
            if name in self._registered:  # the module registered itself while importing
                return self._registered[name]
            if isinstance(obj, ModuleType):
                raise TypeError(f"module {obj.__name__!r} registers nothing under {name!r}")
            self._registered[name] = self._coerce(name, obj)
        except Exception as exc:  # a broken plug-in must not look like a bug of ours
            self._broken[name] = (
                f"The {self.kind} {name!r} ({ep.value}) could not be loaded: "
                f"{type(exc).__name__}: {exc}."
            )
            raise ConfigError(self._broken[name]) from None
        return self._registered[name]

    def load_all(self) -> dict[str, T]:
        """Every entry that loads, by name; each one that does not is a warning, not an error."""
        loaded: dict[str, T] = {}
        for name in self.names():
            try:
                loaded[name] = self.load(name)
            except ConfigError as exc:
                warnings.warn(str(exc), stacklevel=2)
        return loaded

    # ----- Mapping --------------------------------------------------------------------------
    def __getitem__(self, name: str) -> T:
        if name not in self:
            raise KeyError(name)
        return self.load(name)

    def __contains__(self, name: object) -> bool:  # without importing anything
        return name in self._registered or name in self._declarations()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.group!r}, {self.names()})"


# ----- plug-in options --------------------------------------------------------------------------
@dataclasses.dataclass
class NoOptions:
    """The options of a plug-in that declares none: its options table must be empty."""


def options_type(plugin: Any) -> type:
    """The dataclass that ``plugin`` (a class, or a factory) declares as its ``Options``;
    `NoOptions` when it declares none. A non-dataclass ``Options`` is the plug-in's bug, said
    in one sentence."""
    declared = getattr(plugin, "Options", NoOptions)
    if not (isinstance(declared, type) and dataclasses.is_dataclass(declared)):
        raise ConfigError(
            f"{getattr(plugin, '__qualname__', plugin)!r} declares Options = {declared!r}, "
            "which is not a dataclass; a plug-in's options are a dataclass."
        )
    return declared


def plugin_options(plugin: Any, table: Mapping[str, Any], *, where: str, what: str) -> Any:
    """``table`` read through ``plugin``'s options dataclass: an instance of it.

    ``where`` is the table's config path (``"router.options"``) and ``what`` names the plug-in
    (``"router 'mask'"``): an unknown key, a wrong type or a missing required option is a
    `ConfigError` of one sentence naming ``<where>.<key>``, as for every other config key.
    """
    from attrimp.config import _from_dict  # the config's own parser and its error sentences

    cls = options_type(plugin)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    unknown = sorted(set(table) - set(names))
    if unknown:
        takes = f"its options are: {', '.join(names)}" if names else "it takes no options"
        raise ConfigError(f"{where}.{unknown[0]} is not an option of the {what}; {takes}.")
    required = [
        f.name
        for f in fields
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in table]
    if missing:
        raise ConfigError(f"{where}.{missing[0]} is required by the {what}.")
    try:
        return _from_dict(cls, dict(table), where)
    except (TypeError, ValueError) as e:  # what the dataclass's own __post_init__ refuses
        raise ConfigError(f"{where}: {str(e).rstrip('.')}.") from None


def option_kwargs(options: Any) -> dict[str, Any]:
    """The fields of an options instance as the keyword arguments the plug-in is built with
    (one level deep: a field that is itself a dataclass is passed as that object)."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.init}


# ----- the expert-bank registry ------------------------------------------------------------------
def _as_class(name: str, obj: Any) -> type:
    """A registered bank is a class, built per model with the common arguments and its options."""
    if not isinstance(obj, type):
        raise TypeError(f"{obj!r} is not a class")
    return obj


#: every expert bank by its ``experts.bank`` name: ``cls(backbone, n_experts, *, blocks, rank,
#: alpha, site, pooling, dropout, **options)``. The built-ins as pyproject.toml declares them
#: (for a checkout without installed metadata); a test keeps the two equal.
BANKS: Registry[type] = Registry(
    "attrimp.banks",
    kind="expert bank",
    plural="expert banks",
    builtins={
        "adapter": "attrimp.model.experts:ParallelAdapterBank",
        "lora": "attrimp.model.weight_lora:WeightLoRABank",
    },
    coerce=_as_class,
)

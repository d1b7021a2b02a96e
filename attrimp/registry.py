"""One plug-in mechanism for every registry of attrimp (backbone families, routers).

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
"""

from __future__ import annotations

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

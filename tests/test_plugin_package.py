"""The proof that attrimp's extension points are open: a package that is not attrimp.

``tests/plugin_example`` is a third party's plug-in package with its own ``pyproject.toml``. It
adds one plug-in of each kind (a router, an expert bank, a named dataset, an ablation design and a
battery analysis), each one file plus one entry-point line. The tests install it with pip (no
network, no wheel download: ``--no-deps --no-build-isolation`` into a temporary folder), build
each plug-in by name through attrimp's registries, run a study whose TOML uses all of them, and
check that the report shows them, while no file of attrimp's four packages names any of them.
docs/extending.md walks through the same package; a test keeps its entry-point lines true.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

PLUGIN = REPO / "tests" / "plugin_example"
PACKAGE = "attrimp_plugin_example"
#: the registries of the plug-in kinds, by entry-point group ("module:attribute")
REGISTRIES = {
    "attrimp.routers": "routers:ROUTERS",
}
#: every kind the issue asks the package to add; a group whose registry has not landed in the
#: engine is skipped by name (never faked)
KINDS = (
    "attrimp.routers",
    "attrimp.banks",
    "attrimp.datasets",
    "attrimp.designs",
    "attrimp.analyses",
)


def _entry_points() -> dict[str, dict[str, str]]:
    """The plug-in's own declarations: group -> {name: "module:attr"}."""
    data = tomllib.loads((PLUGIN / "pyproject.toml").read_text(encoding="utf-8"))
    return data["project"]["entry-points"]


def _entry_name(group: str) -> str:
    """The one entry the package declares in ``group`` (skips when the kind is not there yet)."""
    declared = _entry_points().get(group)
    if not declared:
        pytest.skip(
            f"the engine has no {group!r} registry yet, so the example adds no such plug-in"
        )
    (name,) = declared
    return name


def _registry(group: str):
    module, _, attr = REGISTRIES[group].partition(":")
    return getattr(importlib.import_module(module), attr)


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory) -> Iterator[Path]:
    """The example package installed with pip into a temporary folder put first on sys.path.

    Installed from a copy, so pip's build folders never land in the checkout. The registries
    read their entry points again (`Registry.refresh`) on the way in and on the way out.
    """
    if shutil.which("pip") is None and importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not available in this environment, so the plug-in cannot be installed")
    work = tmp_path_factory.mktemp("plugin")
    source, target = work / "src", work / "site"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "--target", str(target), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    for group in REGISTRIES:
        _registry(group).refresh()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]
        importlib.invalidate_caches()
        for group in REGISTRIES:
            _registry(group).refresh()


def _library_files() -> Iterator[Path]:
    for package in ("attrimp", "backbones", "routers", "studies"):
        for path in sorted((REPO / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                yield path


# ----- the package's shape ----------------------------------------------------------------------
def test_attrimp_names_none_of_the_plugins():
    """Nothing in attrimp's four packages lists the plug-in or its entries: the engine finds
    them through the entry points alone."""
    names = {PACKAGE, "attrimp-plugin-example"}
    for declared in _entry_points().values():
        names.update(declared)
    assert len(names) >= 3
    found = []
    for path in _library_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            text = path.read_bytes().decode("latin-1")
        found += [f"{path.relative_to(REPO)}: {n}" for n in sorted(names) if n in text]
    assert not found, found


def test_each_plugin_is_one_file_and_one_entry_point_line():
    """Every group declares exactly one entry, each in its own module of the package, and
    docs/extending.md shows each entry-point line as the package writes it."""
    declared = _entry_points()
    assert set(declared) <= set(KINDS)
    modules = []
    text = (PLUGIN / "pyproject.toml").read_text(encoding="utf-8")
    docs = (REPO / "docs" / "extending.md").read_text(encoding="utf-8")
    for group, entries in declared.items():
        assert len(entries) == 1, (group, entries)
        ((name, value),) = entries.items()
        module, _, attr = value.partition(":")
        assert module.startswith(PACKAGE + ".") and attr, value
        path = PLUGIN / Path(*module.split(".")).with_suffix(".py")
        assert path.is_file(), value
        source = path.read_text(encoding="utf-8")
        assert f"class {attr}(" in source or f"\n{attr} = " in source, value
        modules.append(module)
        line = f'{name} = "{value}"'
        assert f'[project.entry-points."{group}"]\n{line}\n' in text
        assert f'[project.entry-points."{group}"]' in docs and line in docs, group
    assert len(set(modules)) == len(modules)  # one file per kind


# ----- each plug-in by name through the installed metadata --------------------------------------
def test_the_router_is_built_by_name_from_the_installed_package(plugin_path):
    import torch

    import routers
    from attrimp.errors import ConfigError
    from attrimp.model.schema import load_schema

    name = _entry_name("attrimp.routers")
    assert name in routers.ROUTERS.names() and "oracle" in routers.ROUTERS
    schema = load_schema("market1501")
    attributes = torch.ones(4, schema.n_slots)  # every value marked: every expert on
    router = routers.build_router(name, group="hat")
    gates = router.route(attributes, schema)
    oracle = routers.build_router("oracle").route(attributes, schema)
    hat = torch.tensor(schema.expert_group) == schema.group_index("hat")
    assert bool(hat.any()) and bool((gates[:, hat] == 0).all())
    assert torch.equal(gates[:, ~hat], oracle[:, ~hat]) and bool((oracle[:, hat] == 1).all())
    with pytest.raises(ConfigError, match="does not accept"):
        routers.build_router(name, p=0.1)

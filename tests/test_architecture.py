"""The shape of the code, checked: imports point down the data flow, the plug-in packages and
the battery keep to the contracts, no import cycles, no function a person cannot read at once,
no probing of plug-ins for undeclared capabilities, and docs/architecture.md names what it maps.

These read the source with ``ast``; they fail with the offending module or function named, so a
change that breaks the layout of docs/architecture.md is caught in review, not discovered by a
newcomer.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("attrimp", "studies", "backbones", "routers")
#: longest library function, docstring included (the issue's "about 80 lines")
MAX_FUNCTION_LINES = 80

#: the data flow of docs/architecture.md: a module may import from its own stage or an earlier one
STAGES = {
    # contracts and leaves every stage may use
    "attrimp.errors": 0,
    "attrimp.io": 0,
    "attrimp.threads": 0,
    "attrimp.devices": 0,
    "attrimp.registry": 0,
    "attrimp.config": 0,
    "attrimp.model.schema": 0,
    "attrimp.model.interfaces": 0,
    "attrimp.interfaces": 0,
    "attrimp.progress": 0,
    "attrimp.data": 1,
    "attrimp.model": 2,
    "attrimp.train": 3,
    "attrimp.evaluate": 4,
    "attrimp.metrics": 4,
    "attrimp.study": 5,
    "attrimp.api": 6,
    "attrimp.cli": 7,
    "attrimp.__main__": 7,
}


def _modules(package: str) -> dict[str, Path]:
    root = REPO / package
    return {
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
        for p in sorted(root.rglob("*.py"))
    }


def _imports(path: Path, roots: tuple[str, ...] = ("attrimp",)) -> set[str]:
    """Every module under ``roots`` a file imports, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found.update(n for n in names if n.split(".")[0] in roots)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in roots)
    return found


def _stage(module: str) -> int | None:
    """The stage of the longest prefix of ``module`` in STAGES (None for ``attrimp`` itself)."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        stage = STAGES.get(".".join(parts[:i]))
        if stage is not None:
            return stage
    return None


def _registry_modules(package: str = "attrimp") -> set[str]:
    """Modules that hold an extension point: a module-level ``NAME = Registry(...)``."""
    found = set()
    for name, path in _modules(package).items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
            call = value.func if isinstance(value, ast.Call) else None
            if isinstance(call, ast.Name) and call.id == "Registry":
                found.add(name)
    return found


#: the one module below a registry that consults it: a config's choices (dataset, design, bank
#: names and their option types) come from the registries, read when the config is validated
CONSULTS_REGISTRIES = "attrimp.config"


def _lazy_registry_imports(path: Path, registries: set[str]) -> set[str]:
    """What a file imports inside functions (at call time, not import time) from a registry
    module: the config's way of asking a registry for its choices without an import cycle."""
    lazy: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                names = {a.name for a in node.names}
            else:
                continue
            if any(_within(n, tuple(registries)) for n in names):
                lazy |= names
    return lazy


def _flow_exemptions(name: str, path: Path) -> set[str]:
    if name != CONSULTS_REGISTRIES:
        return set()
    return _lazy_registry_imports(path, _registry_modules())


def test_engine_imports_point_down_the_data_flow():
    modules = _modules("attrimp")
    wrong = []
    for name, path in modules.items():
        own = _stage(name)
        if own is None:
            continue
        for target in _imports(path) - _flow_exemptions(name, path):
            stage = _stage(target)
            if stage is not None and stage > own:
                wrong.append(f"{name} (stage {own}) imports {target} (stage {stage})")
    assert not wrong, "imports against the data flow:\n" + "\n".join(wrong)


#: what the battery may take from attrimp: the error type, the atomic writers, the schema it
#: reads a table's groups from and the registry its analyses declare themselves in -- none of
#: them imports torch (checked below, by importing)
STUDIES_MAY_IMPORT = (
    "attrimp.errors",
    "attrimp.io",
    "attrimp.model.schema",
    "attrimp.progress",
    "attrimp.registry",
)
OTHER_ROOTS = ("attrimp", "studies", "backbones", "routers", "torch")


def _within(module: str, allowed: tuple[str, ...]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("package", ["backbones", "routers"])
def test_plugin_packages_import_only_the_engines_contracts(package):
    """The built-in backbones and routers are plug-ins like a third party's: from attrimp they
    take only the contracts and leaves of stage 0 (interfaces, schema, errors, registry, ...),
    never the data, model, training, evaluation or study stages; and never the battery."""
    wrong = []
    for name, path in _modules(package).items():
        for target in _imports(path, OTHER_ROOTS):
            root = target.split(".")[0]
            if root == "attrimp" and _stage(target) != 0 or root == "studies":
                wrong.append(f"{name} imports {target}")
    assert not wrong, "a plug-in package reaching into the engine:\n" + "\n".join(wrong)


def test_studies_imports_neither_the_engine_nor_torch():
    """The battery reads any result table: from attrimp only `STUDIES_MAY_IMPORT`, nothing of
    torch, the backbones or the routers -- in its source, and in what importing it loads."""
    wrong = []
    for name, path in _modules("studies").items():
        for target in _imports(path, OTHER_ROOTS):
            root = target.split(".")[0]
            if root in ("torch", "backbones", "routers") or (
                root == "attrimp" and not _within(target, STUDIES_MAY_IMPORT)
            ):
                wrong.append(f"{name} imports {target}")
    assert not wrong, "studies/ reaching into the engine:\n" + "\n".join(wrong)
    modules = sorted(n for n in _modules("studies") if n != "studies.__main__")
    probe = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'backbones', "
        "'routers') or m.startswith(('attrimp.data', 'attrimp.train', 'attrimp.evaluate', "
        "'attrimp.study', 'attrimp.cli'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]", f"importing studies/ loads {loaded}"


def test_no_module_reaches_into_the_evaluators_private_parts():
    """The study reads the condition evaluator through its public methods (``learned_logits``,
    ``learned_accuracy``, ``splits``, ``table``), not ``evaluator._batches``/``_camids``."""
    probe = re.compile(r"\bevaluator\._\w+")
    found = [
        f"{name}: {m.group(0)}"
        for package in LIBRARY
        for name, path in _modules(package).items()
        for m in probe.finditer(path.read_text(encoding="utf-8"))
    ]
    assert not found, "private evaluator calls:\n" + "\n".join(found)


def test_engine_has_no_import_cycles():
    modules = _modules("attrimp")
    graph = {
        name: {
            t for t in _imports(path) - _flow_exemptions(name, path) if t in modules and t != name
        }
        for name, path in modules.items()
    }
    # a package's __init__ re-exporting its own modules is not a cycle of design
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _long_functions() -> list[str]:
    long = []
    for package in LIBRARY:
        for name, path in _modules(package).items():
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{name}.{node.name}: {lines} lines")
    return long


def test_no_library_function_is_longer_than_a_screen():
    long = _long_functions()
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


CAPABILITIES = ("needs_features", "route_with_logits", "reset", "forward_prefix", "splits_forward")


@pytest.mark.parametrize("package", LIBRARY)
def test_declared_capabilities_are_not_probed(package):
    """``getattr(router, "needs_features", False)`` would hide a plug-in that forgot to declare
    it; the interfaces declare every optional capability with its default instead."""
    names = "|".join(CAPABILITIES)
    probe = re.compile(rf"(getattr|hasattr)\([^)]*[\"']({names})[\"']")
    found = [
        f"{name}: {m.group(0)}"
        for name, path in _modules(package).items()
        for m in probe.finditer(path.read_text(encoding="utf-8"))
    ]
    assert not found, "capability probes:\n" + "\n".join(found)


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_architecture_document_names_every_package_and_extension_point():
    """docs/architecture.md is the map: it names every top-level package pyproject installs,
    every stage subpackage of attrimp, and every entry-point group a plug-in can declare."""
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    project = _pyproject()
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    groups = [g for g in project["project"]["entry-points"] if g.startswith("attrimp.")]
    stages = sorted(p.parent.name for p in (REPO / "attrimp").glob("*/__init__.py"))
    assert set(packages) >= set(LIBRARY) and groups and stages
    missing = [f"package {p}" for p in packages if f"`{p}" not in doc]
    missing += [f"entry-point group {g}" for g in groups if f"`{g}`" not in doc]
    missing += [
        f"stage attrimp.{s}" for s in stages if f"attrimp.{s}" not in doc and f"{s}/" not in doc
    ]
    assert not missing, "docs/architecture.md does not name:\n" + "\n".join(missing)


def test_no_document_points_to_a_missing_design_file():
    """The design lives in docs/architecture.md; no source or doc points to a DESIGN.md that
    the repository does not contain."""
    assert not (REPO / "DESIGN.md").exists()
    files = [p for pkg in (*LIBRARY, "docs", "tests") for p in (REPO / pkg).rglob("*.py")]
    files += list((REPO / "docs").rglob("*.md")) + [REPO / "README.md"]
    this = Path(__file__).resolve()
    found = [
        str(p.relative_to(REPO))
        for p in files
        if p.resolve() != this and "DESIGN.md" in p.read_text(encoding="utf-8")
    ]
    assert not found, "files pointing to DESIGN.md:\n" + "\n".join(found)


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The checks themselves: a long function, an upward import and a probe are all seen."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    src = f"from attrimp.cli import main\n\ndef f():\n{body}\n"
    path = tmp_path / "m.py"
    path.write_text(src + "getattr(r, 'needs_features', False)\n")
    assert "attrimp.cli" in _imports(path)
    tree = ast.parse(path.read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
    assert fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES
    assert _stage("attrimp.cli.main") > _stage("attrimp.data.synth")
    assert _stage("attrimp.model.schema") == 0 and _stage("attrimp.model.mosaic") == 2
    path.write_text("import torch\nfrom attrimp.train.training import train\n")
    assert _imports(path, OTHER_ROOTS) == {
        "torch",
        "attrimp.train.training",
        "attrimp.train.training.train",
    }
    assert not _within("attrimp.train.training", STUDIES_MAY_IMPORT)
    assert _within("attrimp.model.schema.load_schema", STUDIES_MAY_IMPORT)
    assert _stage("attrimp.train.training") != 0
    path.write_text(
        "from attrimp.data.datasets import DATASETS\n"
        "def f():\n    from attrimp.evaluate.designs import DESIGNS\n"
    )
    registries = {"attrimp.data.datasets", "attrimp.evaluate.designs"}
    lazy = _lazy_registry_imports(path, registries)
    assert lazy == {"attrimp.evaluate.designs", "attrimp.evaluate.designs.DESIGNS"}
    assert {"attrimp.data.datasets", "attrimp.evaluate.designs"} <= _registry_modules()

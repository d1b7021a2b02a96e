"""The shape of the code, checked: imports point down the data flow, no import cycles, no
function a person cannot read at once, and no probing of plug-ins for undeclared capabilities.

These read the source with ``ast``; they fail with the offending module or function named, so a
change that breaks the layout of DESIGN.md is caught in review, not discovered by a newcomer.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("attrimp", "studies", "backbones", "routers")
#: longest library function, docstring included (the issue's "about 80 lines")
MAX_FUNCTION_LINES = 80

#: the data flow of DESIGN.md: a module may import from its own stage or an earlier one
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


def _imports(path: Path) -> set[str]:
    """Every ``attrimp`` module a file imports, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found.update(n for n in names if n.split(".")[0] == "attrimp")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "attrimp")
    return found


def _stage(module: str) -> int | None:
    """The stage of the longest prefix of ``module`` in STAGES (None for ``attrimp`` itself)."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        stage = STAGES.get(".".join(parts[:i]))
        if stage is not None:
            return stage
    return None


def test_engine_imports_point_down_the_data_flow():
    modules = _modules("attrimp")
    wrong = []
    for name, path in modules.items():
        own = _stage(name)
        if own is None:
            continue
        for target in _imports(path):
            stage = _stage(target)
            if stage is not None and stage > own:
                wrong.append(f"{name} (stage {own}) imports {target} (stage {stage})")
    assert not wrong, "imports against the data flow:\n" + "\n".join(wrong)


def test_engine_has_no_import_cycles():
    modules = _modules("attrimp")
    graph = {
        name: {t for t in _imports(path) if t in modules and t != name}
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

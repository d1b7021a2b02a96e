"""The repository's promises: the README's two commands, CI calling the same test command, the
CLI skeleton, and the studies layer importing without torch."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

from typer.testing import CliRunner

from attrimp import __version__
from attrimp.cli import app
from tests.conftest import REPO


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0].startswith("# "), "README.md starts with its title"
    assert lines[1].startswith("```"), "the command block comes right after the title"
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert "attrimp study" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert _readme_commands()[1] in ci.splitlines()
    assert "set -euo pipefail" in ci


def test_cli_version_and_groups():
    runner = CliRunner()
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for group in ("study", "data", "backbones"):
        assert group in result.output


def test_studies_import_without_torch():
    """A user with only a CSV of results gets the whole battery: studies/ must not need torch."""
    code = textwrap.dedent(
        """
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, _Block())
        import pkgutil, importlib, studies
        for mod in pkgutil.iter_modules(studies.__path__):
            importlib.import_module("studies." + mod.name)
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_constraints_pin_a_set_inside_the_declared_ranges():
    """constraints.txt (the tested set the README installs) must satisfy pyproject's ranges, and
    pyproject must declare a torch range, not one version, so attrimp installs beside any torch
    of the last four minor releases."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}
    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    for name, req in declared.items():
        assert name in pins, f"constraints.txt does not pin {name}"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {req}"
    torch_range = declared["torch"].specifier
    for minor in ("2.11.0", "2.12.0", "2.13.0", "2.14.1"):
        assert torch_range.contains(minor), f"torch {minor} should be supported"
    assert pins["torch"] == "2.14.1"
    for command in _readme_commands():
        assert "-c constraints.txt" in command

"""Every command's --help shows its help text whole: typer renders help as Rich markup, and an
unescaped ``[data]`` or ``[model] pretrained`` is eaten as a markup tag ("Study TOML: ,  and
are used."). Each command also carries a usage example."""

from __future__ import annotations

import re

import pytest
import typer
import typer.rich_utils
from typer.testing import CliRunner

from attrimp.cli import app

#: ``[text]`` as written in a help string, with or without the ``\\[`` escape that keeps it
BRACKETED = re.compile(r"\\?\[([^\[\]]+)\]")


def _commands(group, path: tuple[str, ...] = ()):
    """``(path, command)`` of every leaf command under ``group`` (typer vendors its own click,
    so a group is recognised by its ``commands``, not by click's class)."""
    subs = getattr(group, "commands", None)
    if subs:
        for name, sub in subs.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path, group


ROOT = typer.main.get_command(app)
COMMANDS = sorted(_commands(ROOT))


def _help_output(path: tuple[str, ...], monkeypatch) -> str:
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 240)
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    # drop panel borders and re-join wrapped lines: only the words and their order matter
    return " ".join(result.output.replace("│", " ").split())


def _texts(command) -> list[str]:
    texts = [command.help or ""]
    texts += [getattr(p, "help", None) or "" for p in command.params]
    return [t for t in texts if t]


def test_every_command_is_covered():
    names = {" ".join(p) for p, _ in COMMANDS}
    for expected in ("ablate", "train", "evaluate", "study run", "study analyze", "data synth"):
        assert expected in names


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_keeps_bracketed_text(path, command, monkeypatch):
    shown = _help_output(path, monkeypatch)
    for text in _texts(command):
        for inner in BRACKETED.findall(text):
            assert f"[{inner}]" in shown, f"`attrimp {' '.join(path)} --help` lost [{inner}]"


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_has_a_usage_example(path, command, monkeypatch):
    shown = _help_output(path, monkeypatch)
    assert re.search(rf"Example: attrimp {' '.join(path)}\b", shown), shown


def _groups(group, path: tuple[str, ...] = ()):
    """``path`` of every group (the root included) under ``group``."""
    subs = getattr(group, "commands", None)
    if subs:
        yield path
        for name, sub in subs.items():
            yield from _groups(sub, (*path, name))


GROUPS = sorted(_groups(ROOT))


def test_every_group_is_covered():
    assert {" ".join(p) for p in GROUPS} >= {"", "study", "data", "backbones"}


@pytest.mark.parametrize("path", GROUPS, ids=[" ".join(p) or "attrimp" for p in GROUPS])
def test_group_help_has_a_usage_example(path, monkeypatch):
    """`attrimp --help`, `attrimp study --help` ... show an example of a command of the group."""
    shown = _help_output(path, monkeypatch)
    prefix = " ".join(("attrimp", *path))
    assert re.search(rf"Example: {prefix} \S", shown), shown


def test_ablate_help_names_the_sections(monkeypatch):
    """The reported case, word for word."""
    shown = _help_output(("ablate",), monkeypatch)
    assert "Study TOML: [data], [ablation] and [eval] are used." in shown

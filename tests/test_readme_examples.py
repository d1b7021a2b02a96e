"""The README's Python examples run as written: every ```python block is executed, each in a
fresh namespace, from an empty temporary folder (so they may write `runs/...` and must not
depend on files of the checkout). The study example trains a model and runs the battery four
times, so it is marked slow; the others take seconds."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

README = REPO / "README.md"


def python_blocks(text: str) -> list[str]:
    """The code of every ```python fenced block, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def _params():
    for i, code in enumerate(BLOCKS):
        slow = "run_study(" in code
        marks = [pytest.mark.slow] if slow else []
        yield pytest.param(code, id=f"block{i}", marks=marks)


def test_readme_has_the_api_examples():
    joined = "\n".join(BLOCKS)
    for call in ("studies.analyze(", "attrimp.create_model(", "attrimp.run_study("):
        assert call in joined, call


def test_block_extraction_finds_only_python_blocks():
    text = "x\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = 2\nc = 3\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = 2\nc = 3\n"]


@pytest.mark.parametrize("code", list(_params()))
def test_readme_python_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})

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


#: options whose value a command writes, not reads
WRITES = {"--out", "-o", "--table", "--summary"}


def _tour_commands() -> list[list[str]]:
    """The ``attrimp ...`` lines of the README's quick tour, as argument lists (comments cut)."""
    text = README.read_text(encoding="utf-8")
    tour = text[text.index("## A quick tour") :]
    block = re.search(r"```bash\n(.*?)```", tour, re.S).group(1)
    return [line.split("#")[0].split() for line in block.splitlines() if line.startswith("attrimp")]


def _reads(args: list[str]) -> list[str]:
    """The file arguments a command line reads: path-like values not given to a writing option."""
    found = []
    for prev, arg in zip(["", *args], args, strict=False):
        if prev in WRITES or arg.startswith("-"):
            continue
        if "/" in arg or re.search(r"\.(csv|npz|toml|mat|parquet)$", arg):
            found.append(arg)
    return found


def test_quick_tour_reads_only_what_exists_or_an_earlier_line_wrote():
    """Run in order, every file a quick-tour command reads is in the checkout or under a folder
    an earlier command wrote (`attrimp evaluate features.npz` once read a file nothing made)."""
    written: list[str] = []
    commands = _tour_commands()
    assert any(c[1] == "evaluate" for c in commands)
    for args in commands:
        for path in _reads(args):
            made = any(path.rstrip("/").startswith(w.rstrip("/")) for w in written)
            assert (REPO / path).exists() or made, f"{' '.join(args)}: nothing makes {path}"
        written += [v for k, v in zip(args, args[1:], strict=False) if k in WRITES]


def test_reads_finds_inputs_and_skips_outputs():
    args = [
        "attrimp",
        "evaluate",
        "f.npz",
        "--table",
        "t/x.csv",
        "--data",
        "c/d.toml",
        "--out",
        "runs/a",
    ]
    assert _reads(args) == ["f.npz", "c/d.toml"]

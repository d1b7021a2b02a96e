"""`attrimp backbones list`: the table, the family filter, and a clean error for a bad family."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from attrimp.cli import app, main

runner = CliRunner()


def _row(output: str, name: str) -> list[str]:
    line = next(line for line in output.splitlines() if f" {name} " in line)
    return [cell.strip() for cell in line.strip("│┃ ").split("│")]


def test_list_clip_shows_tags_size_width_depth():
    result = runner.invoke(app, ["backbones", "list", "--family", "clip"])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "pretrained tags" in line)
    for col in ("name", "pretrained tags", "input", "width", "depth"):
        assert col in header
    name, tags, size, width, depth = _row(result.output, "clip:ViT-B-16")
    assert tags.startswith("openai") and size == "224x224"
    assert (width, depth) == ("768", "12")
    assert _row(result.output, "clip:ViT-L-14")[3:] == ["1024", "24"]
    assert "timm:" not in result.output


def test_list_timm_reads_the_architecture():
    result = runner.invoke(app, ["backbones", "list", "--family", "timm"])
    assert result.exit_code == 0, result.output
    assert _row(result.output, "timm:deit_small_patch16_224")[1:] == [
        "fb_in1k",
        "224x224",
        "384",
        "12",
    ]
    assert _row(result.output, "timm:vit_small_patch14_dinov2")[2] == "518x518"


def test_list_fits_100_columns_and_names_the_api():
    """Every featured backbone, in a pipe: no line wider than 100 columns, no name cut short,
    and the footer names the public builder (attrimp.create_model), not an internal one."""
    result = runner.invoke(app, ["backbones", "list"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
    import backbones

    for name in backbones.list_backbones():
        assert any(f" {name} " in line for line in lines), name
    assert "attrimp.create_model(" in result.stdout and "backbones.build" not in result.stdout


def test_unknown_family_is_one_sentence_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["attrimp", "backbones", "list", "--family", "nope"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown backbone family 'nope'" in err and "clip, timm" in err
    assert "Traceback" not in err

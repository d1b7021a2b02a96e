"""`attrimp data synth` and `attrimp data summary` through the real entry point (exit codes,
one-sentence errors)."""

from __future__ import annotations

import json
import sys

import pytest

from attrimp.cli import main


def _run(argv, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["attrimp", *map(str, argv)])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err


@pytest.fixture
def world(tmp_path, monkeypatch, capsys):
    out = tmp_path / "world"
    code, stdout, err = _run(
        [
            "data",
            "synth",
            "--out",
            out,
            "--identities",
            6,
            "--cameras",
            2,
            "--images-per-camera",
            2,
            "--size",
            "64x32",
            "--visibility",
            "hat=0",
            "--visibility",
            "upcolor=0.5",
            "--distractors",
            2,
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert "6 identities × 2 cameras, 12 train / 6 query / 8 gallery" in stdout
    assert "hat=0, upcolor=0.5" in stdout
    return out


def test_synth_then_summary(world, monkeypatch, capsys, tmp_path):
    design = json.loads((world / "synth.json").read_text())
    assert design["visibility"]["hat"] == 0.0 and design["visibility"]["upcolor"] == 0.5
    code, out, err = _run(
        ["data", "summary", world, "--verify", "--json", tmp_path / "s.json"], monkeypatch, capsys
    )
    assert code == 0, err
    assert "using its attribute file" in out and "Every image decodes." in out
    assert "upcolor" in out and "distractor" in out
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["splits"]["train"] == {
        "images": 12,
        "identities": 3,
        "cameras": 2,
        "distractor_images": 0,
    }
    assert s["splits"]["gallery"]["distractor_images"] == 2
    assert s["identities"] == 6 and s["cameras"] == 2
    assert s["coverage"]["hat"] == {"annotated": 6, "unknown": 0, "multiple": 0}
    assert s["verified"] and s["bad_images"] == []


def test_summary_verify_names_a_broken_image(world, monkeypatch, capsys):
    broken = sorted((world / "query").iterdir())[0]
    broken.write_bytes(b"not a jpeg")
    code, out, err = _run(["data", "summary", world, "--verify"], monkeypatch, capsys)
    assert code == 2
    assert "1 images cannot be decoded" in err and broken.name in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--visibility", "hats=0"], "no attribute group 'hats'"),
        (["--visibility", "hat"], "is not GROUP=VALUE"),
        (["--size", "128"], "is not HEIGHTxWIDTH"),
        (["--priors", "flat"], "priors must be one of market, uniform"),
    ],
)
def test_synth_bad_options_exit_2_with_one_sentence(tmp_path, monkeypatch, capsys, args, message):
    code, _, err = _run(["data", "synth", "--out", tmp_path / "w", *args], monkeypatch, capsys)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_summary_errors(tmp_path, monkeypatch, capsys):
    code, _, err = _run(["data", "summary", tmp_path / "none"], monkeypatch, capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = _run(["data", "summary", tmp_path, "--dataset", "cuhk"], monkeypatch, capsys)
    assert code == 2 and "Unknown dataset 'cuhk'" in err
    code, _, err = _run(["data", "summary", tmp_path, "--dataset", "manifest"], monkeypatch, capsys)
    assert code == 2 and "needs --schema" in err
